"""Fair DARTS (Chu et al., "Fair DARTS: Eliminating Unfair Advantages in Differentiable Architecture Search",
ECCV 2020) on the DARTS CIFAR-10 search: independent sigmoid gates and the zero-one loss.

Each op's weight is ``sigmoid(alpha)``, so ops do not compete for a share of one softmax (the paper's remedy for
the skip-connection collapse), and the zero-one loss ``-mean((sigmoid(alpha) - 0.5)^2)`` with the paper's weight
``w_{0-1} = 10`` pushes every gate to 0 or 1.

What differs from the paper: everything but the relaxation and the regulariser is `configs/search_cifar10.py`
(exact second-order hypergradient; the paper uses the first order: ``--config.hypergradient=first_order``). The
paper keeps the edges whose gate exceeds a threshold (0.85); here the cell is derived from the gates by DARTS's top-2
rule (the two strongest inputs per node, the strongest op per edge), so the derived cells have DARTS's shape.

    python run_search.py --config configs/search_fairdarts.py --workdir runs/fairdarts
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.relaxation.name = 'sigmoid'
  config.regularizer.zero_one = 10.0
  return config
