r"""Architecture regularisers: penalties on the alphas or the mixing weights, added to the validation loss.

The search minimises :math:`L_{val}(w'(\alpha), \alpha) + P(\alpha)` over the alphas, with :math:`P` a weighted sum
of terms ``penalty(alphas, weights, step) -> scalar`` of the alphas and of the mixing weights the step's relaxation
sample gives them (`Penalty`, the search step's ``arch_penalty``). :math:`P` does not depend on the
network weights, so its derivative through :math:`w'(\alpha)` is zero and every hypergradient method gives
:math:`h + \nabla_\alpha P`. Each term is pure and generic over pytrees of ``(..., ops)`` arrays: a mean over the
rows (edges) of each leaf (cell type), summed over the leaves.

* `entropy`: :math:`-\sum_k p_k \log p_k` of each row normalised to sum 1. A positive weight pushes every edge to
  commit to one op; a negative one keeps the distribution spread.
* `zero_one_loss`: :math:`-\mathrm{mean}_k (w_k - \frac12)^2`, FairDARTS's zero-one loss (Chu et al. 2020): pushes
  independent sigmoid gates towards 0 or 1 (paper weight :math:`w_{0-1} = 10`).
* `beta_decay`: :math:`\log \sum_k \exp \alpha_k`, β-DARTS's Beta-Decay regularisation (Ye et al. 2022): the smooth
  maximum of the alphas, which keeps their values and spread (hence the softmax's) from growing.

L2 on the alphas needs no term: it is the architecture optimizer's weight decay (``arch_weight_decay``).
`make_penalties` turns ``config.regularizer`` into such terms; any other term can join them (`sum_penalties`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from darts_jax.dynamics import relaxations

PyTree = Any


Penalty = Callable[[PyTree, PyTree, jax.Array], jax.Array]
"""``penalty(alphas, weights, step) -> scalar``: ``weights`` are the mixing weights the supernet computes with at
this step (the relaxation's sample, the validation loss's noise), ``step`` the search step (for schedules)."""


def _mean_over_rows(fn: Callable[[jax.Array], jax.Array], tree: PyTree) -> jax.Array:
  return sum(jnp.mean(fn(leaf)) for leaf in jax.tree.leaves(tree))


def entropy(weights: PyTree) -> jax.Array:
  r"""Mean over rows of :math:`-\sum_k p_k \log p_k`, :math:`p` the row normalised to sum 1 (zeros contribute 0,
  with a finite gradient), summed over leaves."""
  def row_entropy(w):
    p = w / jnp.sum(w, axis=-1, keepdims=True)
    return -jnp.sum(p * jnp.log(jnp.where(p > 0, p, 1.0)), axis=-1)

  return _mean_over_rows(row_entropy, weights)


def zero_one_loss(weights: PyTree) -> jax.Array:
  r"""FairDARTS's zero-one loss :math:`-\frac1K \sum_k (w_k - \frac12)^2`, meaned over rows, summed over leaves:
  lowest (:math:`-\frac14`) when every weight is 0 or 1."""
  return _mean_over_rows(lambda w: -jnp.mean(jnp.square(w - 0.5), axis=-1), weights)


def beta_decay(alphas: PyTree) -> jax.Array:
  r"""β-DARTS's Beta-Decay regularisation: :math:`\log \sum_k e^{\alpha_k}` meaned over rows, summed over leaves."""
  return _mean_over_rows(lambda a: jax.nn.logsumexp(a, axis=-1), alphas)


def weighted(term: Penalty, weight: relaxations.Schedule | float) -> Penalty:
  """``weight(step) · term(alphas, weights, step)``; `weight` a schedule of the step or a constant."""
  schedule = weight if callable(weight) else relaxations.constant_schedule(weight)
  return lambda alphas, weights, step: schedule(step) * term(alphas, weights, step)


def sum_penalties(penalties: Sequence[Penalty]) -> Penalty | None:
  """The sum of `penalties`, or None for none."""
  if not penalties:
    return None
  return lambda alphas, weights, step: sum(penalty(alphas, weights, step) for penalty in penalties)


REGULARIZERS = ('entropy', 'zero_one', 'beta_decay')
"""The built-in terms of `make_penalties` by config name."""


def make_penalties(weights: dict[str, float], relaxation: relaxations.Relaxation, schedule: str = 'constant', *,
                   num_epochs: int = 1, steps_per_epoch: int = 1) -> list[Penalty]:
  """The built-in terms with a non-zero weight in `weights` (keys of `REGULARIZERS`), each times its weight.

  `entropy` and `zero_one_loss` measure the relaxation's noise-free soft weights (`Relaxation.probabilities`: the
  distribution the alphas define, whatever the step's sample), `beta_decay` the alphas. With ``schedule='linear'``
  each weight grows linearly per epoch from 0 at the first epoch to its value at the last (β-DARTS), with
  ``'constant'`` it is its value throughout.
  """
  terms = {
      'entropy': lambda alphas, weights, step: entropy(relaxation.probabilities(alphas, step)),
      'zero_one': lambda alphas, weights, step: zero_one_loss(relaxation.probabilities(alphas, step)),
      'beta_decay': lambda alphas, weights, step: beta_decay(alphas),
  }
  unknown = sorted(set(weights) - set(REGULARIZERS))
  if unknown:
    raise ValueError(f'Unknown regularizer {unknown[0]!r}; expected one of {", ".join(REGULARIZERS)}.')
  if schedule not in ('constant', 'linear'):
    raise ValueError(f"Unknown regularizer schedule {schedule!r}; expected one of constant, linear.")
  return [weighted(terms[name], relaxations.make_schedule(schedule, 0.0 if schedule == 'linear' else weight, weight,
                                                         num_epochs, steps_per_epoch))
          for name, weight in weights.items() if weight]
