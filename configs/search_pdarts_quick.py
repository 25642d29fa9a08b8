"""A quick, offline P-DARTS search (configs/search_quick.py's Fashion-MNIST run, first order): three stages of 3, 4 and
5 cells of 4 initial channels on 8, 5 and 3 ops per edge, 3 epochs each (the first training the weights only), dropout
on the skip connections 0.1, 0.4, 0.7 per stage, at most 2 skip connections in the final normal cell.

    darts-pdarts --config configs/search_pdarts_quick.py --workdir runs/pdarts_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_pdarts = load_config_module('search_pdarts', __file__)
search_quick = load_config_module('search_quick', __file__)


def get_config() -> ml_collections.ConfigDict:
  return search_pdarts.add_stages(search_quick.get_config(), [3, 4, 5], warmup_epochs=1)
