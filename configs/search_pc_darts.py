"""PC-DARTS's search on CIFAR-10 (Xu et al., 2020): partial channel connections (K = 4: a quarter of each node's
channels through the mixed ops, the rest bypass them, then a channel shuffle) and edge normalisation (each node sums
its inputs weighted by the softmax of their parameters, which also rank the edges of the derived cell).

The settings of PC-DARTS's ``train_search.py``: 8 cells of 16 channels, batch 256, 50 epochs, SGD from 0.1 to 0 (cosine,
momentum 0.9, weight decay 3e-4, clip 5), Adam on the architecture at 6e-4 (weight decay 1e-3), held for the first 15
epochs, first-order hypergradient.

    python run_search.py --config configs/search_pc_darts.py --workdir runs/pc_darts
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.batch_size = 256
  config.learning_rate = 0.1
  config.learning_rate_min = 0.0
  config.arch_learning_rate = 6e-4
  config.arch_weight_decay = 1e-3
  config.arch_warmup_epochs = 15
  config.hypergradient = 'first_order'
  config.model.partial_channels = 4
  config.model.edge_normalization = True
  return config
