"""DARTS on RobustDARTS's reduced spaces S1-S4 (Zela et al., 2020), with the paper's search settings.

The spaces were built to make DARTS fail: S2 = {skip_connect, sep_conv_3x3} on every edge, S3 = {none, skip_connect,
sep_conv_3x3}, S4 = {noise, sep_conv_3x3} (standard normal noise of the input's shape), S1 = two ops per edge as
published with RobustDARTS (``darts_jax.cnn.genotypes.edge_primitives``). DARTS's settings otherwise (8 cells of 16
channels, batch 64, 50 epochs, SGD 0.025 → 0.001, Adam 3e-4 on the alphas) and the first-order hypergradient, the
default of RobustDARTS's code. Every epoch record holds ``skip_connect_normal`` and the Hessian's dominant eigenvalue
``hessian_eigenvalue``, whose rise the paper ties to the collapse; ``--config.early_stopping.rule=darts_es`` stops
on it (DARTS-ES).

    python run_search.py --config configs/search_robust_darts.py --config.model.search_space=s2 --workdir runs/s2
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.model.search_space = 's3'
  config.hypergradient = 'first_order'
  return config
