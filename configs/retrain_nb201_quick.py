"""A quick, offline retraining of a NAS-Bench-201 architecture: a small network (C=8, N=1) on Fashion-MNIST,
minutes on a 2-core CPU, the benchmark's optimizer.

    darts-retrain --config retrain_nb201_quick --workdir runs/nb201_retrain_quick --config.genotype=runs/nb201_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

retrain_nb201 = load_config_module('retrain_nb201', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = retrain_nb201.get_config()
  config.num_epochs = 2
  config.batch_size = 64
  config.model.init_channels = 8
  config.model.cells = 1
  config.data.name = 'fashion_mnist'
  config.data.subset = 6400
  config.data.augment = False
  config.log_every_steps = 20
  config.checkpoint_every_minutes = 1.0
  return config
