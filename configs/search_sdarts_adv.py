"""SDARTS-ADV (Chen & Hsieh, "Stabilizing Differentiable Architecture Search via Perturbation-based
Regularization", ICML 2020) on the DARTS CIFAR-10 search: adversarial training of the weights.

Before every weight step, projected gradient ascent (7 signed steps of ``2·eps/7`` from a uniform random start, as
the released ``Linf_PGD_alpha``) finds the mixing weights within ``eps`` (L∞) of ``softmax(alpha)`` that maximise
the weight step's training loss; the weight step trains at them. ``eps`` grows linearly from 0.03 at the first epoch
to 0.3 at the last (the code's schedule). The architecture step and its hypergradient see the unperturbed weights.

What differs from the paper: the attack's iterates are projected onto the ball intersected with the simplex (the
code clamps to the ball and renormalises, which can leave the ball); batch normalisation runs in training mode
during the attack (the code switches the network to evaluation mode); everything else is
`configs/search_cifar10.py` (exact second-order hypergradient; the released code's default is the first order:
``--config.hypergradient=first_order``).

    darts-search --config configs/search_sdarts_adv.py --workdir runs/sdarts_adv
    darts-search --config configs/search_sdarts_adv.py:quick --workdir runs/sdarts_adv_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)
search_quick = load_config_module('search_quick', __file__)


def add_adversary(config: ml_collections.ConfigDict, steps: int = 7) -> ml_collections.ConfigDict:
  """`config` with SDARTS-ADV's attack of the weight step (the paper's ε schedule, `steps` PGD steps)."""
  config.regularizer.random_smoothing = 0.0
  config.regularizer.adversarial_epsilon = 0.3  # at the last epoch; 0: off
  config.regularizer.adversarial_epsilon_start = 0.03  # at the first epoch (linear in between)
  config.regularizer.adversarial_steps = steps  # PGD steps per weight step
  config.regularizer.adversarial_step_size = 0.0  # 0: 2·eps/steps (the code's)
  return config


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The paper's settings; ``:quick`` the quick search (`configs/search_quick.py`) with a 2-step attack."""
  if variant == 'quick':
    return add_adversary(search_quick.get_config(), steps=2)
  if variant:
    raise ValueError(f'Unknown variant {variant!r} of search_sdarts_adv; expected quick or none.')
  return add_adversary(search_cifar10.get_config())
