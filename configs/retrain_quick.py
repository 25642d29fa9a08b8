"""A quick, offline retraining: DARTS_V2 as a small network on Fashion-MNIST, a few minutes on a laptop CPU.

It exercises the whole pipeline (data, drop path, cutout, checkpoints, test evaluation, artifacts) with the paper's
optimizer; the accuracy is that of a small network trained briefly, not a record.

    python run_retrain.py --config configs/retrain_quick.py --workdir runs/retrain_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

retrain_cifar10 = load_config_module('retrain_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = retrain_cifar10.get_config()
  config.num_epochs = 3
  config.batch_size = 64
  config.model.init_channels = 8
  config.model.layers = 5
  config.model.auxiliary = False  # 28x28 images leave too small a map for the auxiliary head
  config.data.name = 'fashion_mnist'
  config.data.subset = 6400
  config.data.augment = False
  config.data.cutout = 8
  config.log_every_steps = 20
  config.checkpoint_every_minutes = 1.0
  return config
