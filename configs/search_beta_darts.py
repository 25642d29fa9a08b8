"""β-DARTS (Ye et al., "β-DARTS: Beta-Decay Regularization for Differentiable Architecture Search", CVPR 2022) on
the DARTS CIFAR-10 search: the Beta-Decay regulariser.

The validation loss gets ``lambda · mean_edges logsumexp(alpha)``, the smooth maximum of each edge's alphas, which
keeps the values and the spread of the softmaxed alphas from growing (the paper's remedy for the collapse). As in
the released code, ``lambda`` grows linearly by 0.5 per epoch from 0: 24.5 at the last of the 50 epochs.

What differs from the paper: everything but the regulariser is `configs/search_cifar10.py`, so the hypergradient is
the exact second order; the released code takes the first-order step (``--config.hypergradient=first_order``).

    python run_search.py --config configs/search_beta_darts.py --workdir runs/beta_darts
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.regularizer.beta_decay = 0.5 * (config.num_epochs - 1)
  config.regularizer.schedule = 'linear'
  return config
