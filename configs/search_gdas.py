"""GDAS (Dong & Yang, "Searching for a Robust Neural Architecture in Four GPU Hours", CVPR 2019) on the DARTS
CIFAR-10 search: hard Gumbel-softmax sampling.

Every step draws one op per edge: the forward pass uses the one-hot argmax of a Gumbel-softmax sample
``softmax((alpha + g) / tau)``, the backward pass the soft sample's gradient (straight-through). As in the paper,
the temperature falls linearly from 10 to 0.1 over the search.

What differs from the paper: everything but the relaxation is `configs/search_cifar10.py` (DARTS's 50 epochs, batch
64, exact second-order hypergradient; the paper searches longer with its own schedule); GDAS's speed-up — running
only the sampled op of each edge — is not reproduced: every op is computed and weighted by the one-hot sample, so a
step costs what a DARTS step does; both cells are searched (the paper's best result fixes a hand-designed reduction
cell); the cell is derived from the noise-free ``softmax(alpha / tau)`` by DARTS's top-2 rule.

    python run_search.py --config configs/search_gdas.py --workdir runs/gdas
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.relaxation.name = 'gumbel_softmax'
  config.relaxation.hard = True
  config.relaxation.temperature = 10.0
  config.relaxation.final_temperature = 0.1
  config.relaxation.temperature_schedule = 'linear'
  return config
