"""DrNAS (Chen et al., "DrNAS: Dirichlet Neural Architecture Search", ICLR 2021) on the DARTS CIFAR-10 search:
Dirichlet-distributed mixing weights.

Every step mixes the ops by a sample of ``Dir(elu(alpha) + 1)`` per edge (the concentration of DrNAS's code),
reparameterised, so the hypergradient differentiates through the sample (implicit gradients of the gamma draws);
evaluation, diagnostics and the derived cell use the distribution's mean. L2 on the concentration's parameters is
the alphas' weight decay (``arch_weight_decay``, as the code's default ``reg_type='l2'``).

What differs from the paper: everything but the relaxation is `configs/search_cifar10.py` (DARTS's architecture
optimizer: the paper uses Adam at 6e-4; exact second-order hypergradient). The paper's progressive learning
(partial channel connections with progressive widening and pruning of the op set) and its optional KL anchor
regulariser are not included.

    python run_search.py --config configs/search_drnas.py --workdir runs/drnas
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.relaxation.name = 'dirichlet'
  config.relaxation.concentration = 'elu'
  return config
