"""Host-side diagnostics of a search's architecture parameters: how committed, how stable, how skip-heavy.

All are pure functions of the alphas or of derived genotypes (NumPy, float64), cheap enough to run every epoch.
With ``p_e = softmax(alpha_e)`` the weights of edge ``e`` over the ``K`` ops:

* `alpha_entropy`: ``H = -(1/E) Σ_e Σ_k p_ek log p_ek`` per cell type; ``log K`` (2.079 nats for 8 ops) when the
  alphas are uniform, 0 when every edge has committed to one op;
* `alpha_max_weight`: ``(1/E) Σ_e max_k p_ek``, the mean weight of each edge's strongest op (1/K uniform, 1 committed);
* `genotype_stability`: the fraction of a genotype's (op, input) choices that another genotype shares, per cell type;
* `unchanged_epochs`: for how many epochs the derived architecture has not changed;
* `skip_count`: the number of ``skip_connect`` ops in a cell, the symptom of DARTS's collapse (Zela et al. 2020,
  DARTS+).

With another relaxation than the softmax (`darts_jax.relaxations`), `weights_entropy` and `weights_max` measure its
deterministic weights instead (rows normalised to sum 1 for the entropy: sigmoid gates do not).
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from darts_jax.cnn.genotypes import Genotype

__all__ = ['alpha_entropy', 'alpha_max_weight', 'edge_labels', 'epoch_diagnostics', 'genotype_stability',
           'same_architecture', 'skip_count', 'softmax_weights', 'unchanged_epochs', 'weights_entropy',
           'weights_max']

CELL_TYPES = ('normal', 'reduce')


def softmax_weights(alphas: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """``softmax(alpha)`` row-wise (one row per edge), per cell type, in float64."""
  weights = {}
  for kind, a in alphas.items():
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(-1, keepdims=True))
    weights[kind] = e / e.sum(-1, keepdims=True)
  return weights


def alpha_entropy(alphas: Mapping[str, Any]) -> dict[str, float]:
  r"""Mean entropy (nats) of the rows of ``softmax(alpha)`` per cell type: :math:`-\frac1E \sum_e \sum_k p_{ek}
  \log p_{ek}`. ``log K`` (8 ops: 2.08) at initialisation; it falls as the search commits to operations. Computed
  from the log-softmax in float64 (exact for weights that underflow)."""
  entropies = {}
  for kind, a in alphas.items():
    a = np.asarray(a, np.float64)
    log_p = a - a.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    entropies[kind] = float(-(np.exp(log_p) * log_p).sum(-1).mean())
  return entropies


def alpha_max_weight(alphas: Mapping[str, Any]) -> dict[str, float]:
  r"""Mean over edges of the largest softmax weight, per cell type: :math:`\frac1E \sum_e \max_k p_{ek}`."""
  return {kind: float(w.max(-1).mean()) for kind, w in softmax_weights(alphas).items()}


def weights_entropy(weights: Mapping[str, Any]) -> dict[str, float]:
  """Mean over edges of the entropy (nats) of each row of mixing weights normalised to sum 1, per cell type
  (`alpha_entropy` for ``softmax(alpha)``); zero weights contribute 0."""
  entropies = {}
  for kind, w in weights.items():
    p = np.asarray(w, np.float64)
    p = p / p.sum(-1, keepdims=True)
    entropies[kind] = float(-(p * np.log(np.where(p > 0, p, 1.0))).sum(-1).mean())
  return entropies


def weights_max(weights: Mapping[str, Any]) -> dict[str, float]:
  """Mean over edges of the largest mixing weight, per cell type (`alpha_max_weight` for ``softmax(alpha)``)."""
  return {kind: float(np.asarray(w, np.float64).max(-1).mean()) for kind, w in weights.items()}


def _choices_per_node(genotype: Genotype, kind: str) -> list[collections.Counter]:
  ops = getattr(genotype, kind)
  return [collections.Counter(ops[i:i + 2]) for i in range(0, len(ops), 2)]


def genotype_stability(previous: Genotype, current: Genotype) -> dict[str, float]:
  """The fraction of `current`'s (op, input) choices that `previous` also makes at the same node, per cell type.

  A node's two choices are compared as a set: derive_genotype lists them strongest first, and a swap in strength
  is no change of architecture. 1.0: the cell is unchanged; 0.0: every node changed both inputs or ops.
  """
  stability = {}
  for kind in CELL_TYPES:
    nodes = list(zip(_choices_per_node(previous, kind), _choices_per_node(current, kind), strict=True))
    shared = sum(sum((old & new).values()) for old, new in nodes)
    stability[kind] = shared / sum(sum(new.values()) for _, new in nodes)
  return stability


def same_architecture(a: Genotype, b: Genotype) -> bool:
  """Whether two genotypes describe the same cells (each node's two choices compared as a set)."""
  same_concat = a.normal_concat == b.normal_concat and a.reduce_concat == b.reduce_concat
  return same_concat and all(s == 1.0 for s in genotype_stability(a, b).values())


def unchanged_epochs(genotypes: Sequence[Any], same: Callable[[Any, Any], bool] = same_architecture) -> int:
  """How many of the last transitions of a per-epoch genotype sequence left the architecture unchanged: 0 if the
  last epoch changed it, ``n`` if the last ``n + 1`` genotypes are the same architecture (`same`: by default the
  CNN cells' `same_architecture`; ``operator.eq`` for genotypes that have one form per architecture)."""
  count = 0
  for previous, current in zip(genotypes[-2::-1], genotypes[::-1]):
    if not same(previous, current):
      break
    count += 1
  return count


def skip_count(genotype: Genotype, kind: str = 'normal') -> int:
  """The number of ``skip_connect`` ops in one cell type of `genotype`."""
  return sum(op == 'skip_connect' for op, _ in getattr(genotype, kind))


def edge_labels(steps: int) -> list[str]:
  """``'(node, input)'`` for every row of a cell's alphas, in the supernet's edge order: node ``i`` (0-based) reads
  inputs ``0`` (c_{k-2}), ``1`` (c_{k-1}) and ``2 + n`` (node ``n < i``), as in a genotype."""
  return [f'({node}, {j})' for node in range(steps) for j in range(2 + node)]


def epoch_diagnostics(alphas: Mapping[str, Any], genotypes: Sequence[Genotype],
                      weights: Mapping[str, Any] | None = None) -> dict[str, float | int]:
  """The per-epoch diagnostics of a search (epoch record entries): per cell type ``alpha_entropy_*``,
  ``alpha_max_weight_*`` and ``stability_*`` (against the previous epoch), then ``unchanged_epochs`` and
  ``skip_connect_normal``.

  Args:
    alphas: the alphas after the epoch.
    genotypes: the genotypes derived after every epoch so far, from epoch 0 (the initial alphas) to this one.
    weights: the relaxation's deterministic mixing weights of `alphas`, which the entropy and the largest weight
      then measure; None: ``softmax(alphas)``.
  """
  if weights is None:
    entropy, max_weight = alpha_entropy(alphas), alpha_max_weight(alphas)
  else:
    entropy, max_weight = weights_entropy(weights), weights_max(weights)
  stability = genotype_stability(genotypes[-2], genotypes[-1])
  return {**{f'alpha_entropy_{k}': entropy[k] for k in CELL_TYPES},
          **{f'alpha_max_weight_{k}': max_weight[k] for k in CELL_TYPES},
          **{f'stability_{k}': stability[k] for k in CELL_TYPES},
          'unchanged_epochs': unchanged_epochs(genotypes), 'skip_connect_normal': skip_count(genotypes[-1])}
