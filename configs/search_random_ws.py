"""Random search with weight sharing (Li & Talwalkar, "Random Search and Reproducibility for Neural Architecture
Search", UAI 2019) on the DARTS CIFAR-10 space: the supernet's training, then the best of N sampled architectures.

Every weight step trains one path: one op per edge drawn uniformly (``relaxation.name = 'uniform_path'``); the
alphas play no part (the architecture learning rate is 0, no Hessian diagnostics). After the search,

    darts-select --workdir runs/random_ws --selection best_of_n

scores random genotypes by the supernet's validation accuracy with their ops alone and keeps the best
(`darts_jax.tasks.selection`); the search's own ``genotype.json`` is no selection (the uniform weights tie).

What differs from the paper: the paper samples whole architectures of the DARTS space (two inputs per node, no
``none``) for each step; here each of the 14 edges draws its op among all 8, ``none`` included, and every edge
trains at once. The search's other settings are `configs/search_cifar10.py` (first order).

    darts-search --config configs/search_random_ws.py --workdir runs/random_ws
    darts-search --config configs/search_random_ws.py:quick --workdir runs/random_ws_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)
search_quick = load_config_module('search_quick', __file__)


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The paper's search; ``:quick`` the quick search (`configs/search_quick.py`) with uniform paths."""
  if variant not in ('', 'quick'):
    raise ValueError(f'Unknown variant {variant!r} of search_random_ws; expected quick or none.')
  config = search_quick.get_config() if variant == 'quick' else search_cifar10.get_config()
  config.relaxation.name = 'uniform_path'
  config.hypergradient = 'first_order'
  config.arch_learning_rate = 0.0
  config.arch_weight_decay = 0.0
  config.diagnostics.hessian_iterations = 0
  return config
