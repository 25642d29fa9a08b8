"""DARTS- (Chu et al., 2021) on CIFAR-10: an auxiliary skip connection on every edge, outside the softmax, whose weight
falls linearly from 1 at the first epoch towards 0 (``1 - e/50`` at epoch e, as DARTS-'s code), so that the skip
connections among the ops need not win to carry the gradient; DARTS's settings otherwise, first-order as DARTS-'s
scripts.

    python run_search.py --config configs/search_darts_minus.py --workdir runs/darts_minus
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.hypergradient = 'first_order'
  config.model.aux_skip_weight = 1.0
  config.model.aux_skip_decay = 'linear'
  return config
