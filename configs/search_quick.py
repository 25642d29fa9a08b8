"""A quick, offline DARTS search: Fashion-MNIST on a small supernet, minutes on a laptop CPU.

It exercises the whole pipeline (data, bilevel steps, checkpoints, artifacts) and learns a useful supernet; the
cell it finds is not meant to be retrained for accuracy records.

    python run_search.py --config configs/search_quick.py --workdir runs/quick
"""
import ml_collections

from configs import search_cifar10


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.num_epochs = 4
  config.batch_size = 32
  config.max_steps_per_epoch = 0
  config.hypergradient = 'first_order'
  config.model.init_channels = 4
  config.model.layers = 3
  config.data.name = 'fashion_mnist'
  config.data.subset = 2000
  config.data.augment = False
  config.log_every_steps = 10
  config.checkpoint_every_minutes = 1.0
  return config
