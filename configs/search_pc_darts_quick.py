"""A quick, offline PC-DARTS search (configs/search_quick.py's Fashion-MNIST run): half of the 4 initial channels
through the mixed ops (K = 2: the fewest channels a reducing skip connection takes), edge normalisation, the alphas held
for the first epoch.

    python run_search.py --config configs/search_pc_darts_quick.py --workdir runs/pc_darts_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_quick = load_config_module('search_quick', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_quick.get_config()
  config.arch_warmup_epochs = 1
  config.model.partial_channels = 2
  config.model.edge_normalization = True
  return config
