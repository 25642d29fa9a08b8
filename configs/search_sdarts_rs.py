"""SDARTS-RS (Chen & Hsieh, "Stabilizing Differentiable Architecture Search via Perturbation-based
Regularization", ICML 2020) on the DARTS CIFAR-10 search: random smoothing.

The weight step trains the network on perturbed mixing weights: ``softmax(alpha) + u``, ``u ~ U[-eps, eps]``
per weight, clipped to [0, 1] and renormalised per edge (as the released code), so the weights learn to do well in
a neighbourhood of the architecture and the validation loss becomes smoother in alpha. ``eps`` grows linearly from
0.03 at the first epoch to 0.3 at the last (the code's ``0.03 + 0.27 · epoch / epochs``, which stops one step
short of 0.3). The architecture step sees the unperturbed weights.

What differs from the paper: everything but the perturbation is `configs/search_cifar10.py` (exact second-order
hypergradient; the released code's default is the first order: ``--config.hypergradient=first_order``).

    python run_search.py --config configs/search_sdarts_rs.py --workdir runs/sdarts_rs
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.regularizer.random_smoothing = 0.3
  config.regularizer.random_smoothing_start = 0.03
  return config
