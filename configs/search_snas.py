"""SNAS (Xie et al., "SNAS: Stochastic Neural Architecture Search", ICLR 2019) on the DARTS CIFAR-10 search: soft
Gumbel-softmax sampling with an annealed temperature.

Every step mixes the ops by a soft Gumbel-softmax sample ``softmax((alpha + g) / tau)``, one sample for every pass
of the step; the temperature starts at 1 (as the paper) and is annealed exponentially, here to 0.03 at the last
epoch (a factor of 0.93 per epoch over 50 epochs).

What differs from the paper: everything but the relaxation is `configs/search_cifar10.py`. SNAS trains the weights
and the architecture distribution in the same back-propagation on the training data (single level) and searches
for longer; here the search stays DARTS's bilevel one (alphas on the validation half, exact second-order
hypergradient, 50 epochs). SNAS's resource constraint (a cost term in the loss) is not included; the cell is derived
from the noise-free ``softmax(alpha / tau)`` by DARTS's top-2 rule rather than by sampling.

    python run_search.py --config configs/search_snas.py --workdir runs/snas
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.relaxation.name = 'gumbel_softmax'
  config.relaxation.temperature = 1.0
  config.relaxation.final_temperature = 0.03
  config.relaxation.temperature_schedule = 'exponential'
  return config
