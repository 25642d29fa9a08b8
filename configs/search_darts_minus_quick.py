"""A quick, offline DARTS- search (configs/search_quick.py's Fashion-MNIST run) with the auxiliary skip's weight
falling linearly from 1 over the 3 epochs.

    python run_search.py --config configs/search_darts_minus_quick.py --workdir runs/darts_minus_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_quick = load_config_module('search_quick', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_quick.get_config()
  config.model.aux_skip_weight = 1.0
  config.model.aux_skip_decay = 'linear'
  return config
