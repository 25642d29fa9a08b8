"""A quick, offline DARTS search on RobustDARTS's S3 = {none, skip_connect, sep_conv_3x3} (configs/search_quick.py's
Fashion-MNIST run, a few minutes on a 2-core CPU); ``--config.model.search_space=s2`` for S2.

The epoch records show what the space is for: ``skip_connect_normal`` (skip connections in the derived normal cell)
and ``hessian_eigenvalue`` as DARTS commits to parameter-free ops.

    python run_search.py --config configs/search_robust_darts_quick.py --workdir runs/s3_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_quick = load_config_module('search_quick', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_quick.get_config()
  config.model.search_space = 's3'
  return config
