"""Retraining a NAS-Bench-201 architecture with the benchmark's recipe (its 200-epoch ``hp``): the network at C=16,
N=5 with affine cells on CIFAR-10, batch 256, SGD (momentum 0.9, weight decay 5e-4; the benchmark's is Nesterov),
learning rate cosine from 0.1 to 0, random crop and flip, no cutout.

    darts-retrain --config retrain_nb201 --workdir runs/nb201_retrain --config.genotype=runs/nb201
    darts-retrain --config retrain_nb201 --workdir runs/best --config.genotype='|nor_conv_3x3~0|+|...|'

``data.name``: cifar10, cifar100 or imagenet16_120 (16×16 images, the benchmark's first 120 classes).
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

retrain_cifar10 = load_config_module('retrain_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = retrain_cifar10.get_config()
  del config.model, config.init_from, config.freeze_epochs, config.auxiliary_weight  # the DARTS space's keys
  config.space = 'nb201'
  config.genotype = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'
  config.num_epochs = 200
  config.batch_size = 256
  config.learning_rate = 0.1
  config.learning_rate_min = 0.0
  config.weight_decay = 5e-4
  config.model = ml_collections.ConfigDict()
  config.model.init_channels = 16
  config.model.cells = 5  # N: cells per stage
  config.data.cutout = 0
  return config
