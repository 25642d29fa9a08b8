"""Cell genotypes: the discrete architectures DARTS searches for.

A ``Genotype`` has the format of the original DARTS code (quark0/darts,
``cnn/genotypes.py``), so genotypes printed by the PyTorch implementation paste
in unchanged. ``normal`` and ``reduce`` list two ``(op_name, input_index)``
pairs per intermediate node; node ``i`` (0-based) may read state ``0``
(``c_{k-2}``), state ``1`` (``c_{k-1}``) or the output of nodes ``0..i-1``
(states ``2..i+1``). ``*_concat`` lists the states concatenated into the cell
output.

This module is the space's rule, pure Python/NumPy: the published genotypes,
deriving a genotype from architecture weights, and validation. The text formats
(JSON, the original's repr, pt.darts, NNI) and `load_genotype` are
`darts_jax.cnn.genotype_formats`.
"""

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from darts_jax.genotype_text import is_int, softmax

# The DARTS search space, in the order of the original; the columns of the
# architecture weights follow this order.
PRIMITIVES = (
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5',
)

# Every op a retrained network can build: the search space plus the extra ops
# of the published NASNet and AmoebaNet cells.
EVAL_PRIMITIVES = PRIMITIVES + ('sep_conv_7x7', 'conv_7x1_1x7')

# Ops of RobustDARTS's spaces beside DARTS's, which the retrained networks build
# too: 'noise' (S4), standard normal noise of its input's shape.
SEARCH_ONLY_PRIMITIVES = ('noise',)

Genotype = collections.namedtuple(
    'Genotype', 'normal normal_concat reduce reduce_concat'
)

# The published genotypes, copied verbatim from the original cnn/genotypes.py.
NASNet = Genotype(
    normal=[
        ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 0),
        ('sep_conv_5x5', 0),
        ('sep_conv_3x3', 0),
        ('avg_pool_3x3', 1),
        ('skip_connect', 0),
        ('avg_pool_3x3', 0),
        ('avg_pool_3x3', 0),
        ('sep_conv_3x3', 1),
        ('skip_connect', 1),
    ],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[
        ('sep_conv_5x5', 1),
        ('sep_conv_7x7', 0),
        ('max_pool_3x3', 1),
        ('sep_conv_7x7', 0),
        ('avg_pool_3x3', 1),
        ('sep_conv_5x5', 0),
        ('skip_connect', 3),
        ('avg_pool_3x3', 2),
        ('sep_conv_3x3', 2),
        ('max_pool_3x3', 1),
    ],
    reduce_concat=[4, 5, 6],
)

AmoebaNet = Genotype(
    normal=[
        ('avg_pool_3x3', 0),
        ('max_pool_3x3', 1),
        ('sep_conv_3x3', 0),
        ('sep_conv_5x5', 2),
        ('sep_conv_3x3', 0),
        ('avg_pool_3x3', 3),
        ('sep_conv_3x3', 1),
        ('skip_connect', 1),
        ('skip_connect', 0),
        ('avg_pool_3x3', 1),
    ],
    normal_concat=[4, 5, 6],
    reduce=[
        ('avg_pool_3x3', 0),
        ('sep_conv_3x3', 1),
        ('max_pool_3x3', 0),
        ('sep_conv_7x7', 2),
        ('sep_conv_7x7', 0),
        ('avg_pool_3x3', 1),
        ('max_pool_3x3', 0),
        ('max_pool_3x3', 1),
        ('conv_7x1_1x7', 0),
        ('sep_conv_3x3', 5),
    ],
    reduce_concat=[3, 4, 6],
)

# DARTS first-order (V1) and second-order (V2) cells found on CIFAR-10.
DARTS_V1 = Genotype(
    normal=[
        ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0),
        ('skip_connect', 0),
        ('sep_conv_3x3', 1),
        ('skip_connect', 0),
        ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0),
        ('skip_connect', 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0),
        ('max_pool_3x3', 1),
        ('skip_connect', 2),
        ('max_pool_3x3', 0),
        ('max_pool_3x3', 0),
        ('skip_connect', 2),
        ('skip_connect', 2),
        ('avg_pool_3x3', 0),
    ],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_V2 = Genotype(
    normal=[
        ('sep_conv_3x3', 0),
        ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0),
        ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1),
        ('skip_connect', 0),
        ('skip_connect', 0),
        ('dil_conv_3x3', 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0),
        ('max_pool_3x3', 1),
        ('skip_connect', 2),
        ('max_pool_3x3', 1),
        ('max_pool_3x3', 0),
        ('skip_connect', 2),
        ('skip_connect', 2),
        ('max_pool_3x3', 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)

DARTS = DARTS_V2

KNOWN_GENOTYPES = {
    'NASNet': NASNet,
    'AmoebaNet': AmoebaNet,
    'DARTS_V1': DARTS_V1,
    'DARTS_V2': DARTS_V2,
    'DARTS': DARTS,
}

CELL_TYPES = ('normal', 'reduce')
"""The cell types of a genotype, in its fields' order."""


def num_edges(steps: int) -> int:
  """Number of mixed edges in a search cell: ``sum_{i<steps} (2 + i)``."""
  return sum(2 + i for i in range(steps))


SEARCH_SPACES = ('darts', 's1', 's2', 's3', 's4')
"""The supernet's cell spaces: DARTS's 8 ops on every edge, and RobustDARTS's
reduced spaces S1-S4 (Zela et al. 2020), built to make DARTS fail."""

# S1: two ops per edge, per cell type, in the supernet's edge order (node 0's
# two inputs, node 1's three, ...); RobustDARTS's src/spaces.py, verbatim.
_S1 = {
    'normal': (
        ('skip_connect', 'dil_conv_3x3'), ('skip_connect', 'dil_conv_5x5'),
        ('skip_connect', 'dil_conv_5x5'), ('skip_connect', 'sep_conv_3x3'),
        ('skip_connect', 'dil_conv_3x3'), ('max_pool_3x3', 'skip_connect'),
        ('skip_connect', 'sep_conv_3x3'), ('skip_connect', 'sep_conv_3x3'),
        ('skip_connect', 'dil_conv_3x3'), ('skip_connect', 'sep_conv_3x3'),
        ('max_pool_3x3', 'skip_connect'), ('skip_connect', 'dil_conv_3x3'),
        ('dil_conv_3x3', 'dil_conv_5x5'), ('dil_conv_3x3', 'dil_conv_5x5'),
    ),
    'reduce': (
        ('max_pool_3x3', 'avg_pool_3x3'), ('max_pool_3x3', 'dil_conv_3x3'),
        ('max_pool_3x3', 'avg_pool_3x3'), ('max_pool_3x3', 'avg_pool_3x3'),
        ('skip_connect', 'dil_conv_5x5'), ('max_pool_3x3', 'avg_pool_3x3'),
        ('max_pool_3x3', 'sep_conv_3x3'), ('skip_connect', 'dil_conv_3x3'),
        ('skip_connect', 'dil_conv_5x5'), ('max_pool_3x3', 'avg_pool_3x3'),
        ('max_pool_3x3', 'avg_pool_3x3'), ('skip_connect', 'dil_conv_5x5'),
        ('skip_connect', 'dil_conv_5x5'), ('skip_connect', 'dil_conv_5x5'),
    ),
}
# S2-S4: the same ops on every edge.
_UNIFORM_SPACES = {
    'darts': PRIMITIVES,
    's2': ('skip_connect', 'sep_conv_3x3'),
    's3': ('none', 'skip_connect', 'sep_conv_3x3'),
    's4': ('noise', 'sep_conv_3x3'),
}

EdgePrimitives = Mapping[str, Sequence[Sequence[str]]]
"""Per cell type, the op names of every edge: the columns of its row of
alphas."""


def edge_primitives(
    space: str = 'darts', steps: int = 4
) -> dict[str, tuple[tuple[str, ...], ...]]:
  """The ops of every edge of `space` (`SEARCH_SPACES`), per cell type: the
  columns of that edge's row of alphas, in order."""
  if space not in SEARCH_SPACES:
    raise ValueError(
        f'Unknown search space {space!r}; expected one of '
        f'{", ".join(SEARCH_SPACES)}.'
    )
  if space == 's1':
    if steps != 4:
      raise ValueError(
          f'RobustDARTS S1 is defined for cells of 4 nodes, got steps={steps}.'
      )
    return dict(_S1)
  edge = _UNIFORM_SPACES[space]
  return {kind: (edge,) * num_edges(steps) for kind in CELL_TYPES}


def edges_key(cell_type: str) -> str:
  """The alphas' key of a cell type's edge-normalisation parameters (PC-DARTS):
  one array per node, one entry per input of the node."""
  return f'edges_{cell_type}'


def _parse_cell(
    weights: np.ndarray,
    steps: int,
    primitives: Sequence[Sequence[str]],
    edge_weights: Sequence[np.ndarray] | None = None,
) -> list[tuple[str, int]]:
  """Discretizes one cell's softmaxed weights, as in the original ``_parse``;
  ``primitives[e]``: the ops of edge e's columns; ``edge_weights[i]``: node
  i's edge-normalisation weights, which scale its edges (PC-DARTS)."""
  # 'none' never wins: mask it to -inf so argmax returns the first best
  # non-none op, like the original's loop with a strict '>'.
  candidates = np.array([[op != 'none' for op in ops] for ops in primitives])
  masked = np.where(candidates, weights, -np.inf)
  gene = []
  start = 0
  for i in range(steps):
    n = 2 + i
    w = masked[start : start + n]
    if edge_weights is not None:
      w = w * edge_weights[i][:, None]
    strength = w.max(axis=1)
    # Python's sort is stable: equally strong edges keep the lower input first.
    edges = sorted(range(n), key=lambda j: -strength[j])[:2]
    for j in edges:
      gene.append((primitives[start + j][int(np.argmax(w[j]))], j))
    start += n
  return gene


def derive_genotype(
    alphas: Mapping[str, Any],
    steps: int = 4,
    primitives: Sequence[str] | EdgePrimitives = PRIMITIVES,
    multiplier: int | None = None,
    from_weights: bool = False,
) -> Genotype:
  """Derives the discrete cell from architecture weights (DARTS, Sec. 2.4).

  For each cell type the weights are ``w = softmax(alpha)`` row-wise, one row
  per edge ``(j -> i)``; node ``i``'s edges are rows
  ``sum_{k<i}(2 + k) .. + (2 + i)``. Node ``i`` keeps the two inputs ``j`` with
  the largest ``max_{o != none} w[j, o]`` (strongest first; ties keep the lower
  input first) and, on each, the op ``argmax_{o != none} w[j, o]`` (ties keep
  the first op). This reproduces ``Network.genotype()`` of the original code,
  computed in float64 on the host. With PC-DARTS's edge normalisation (alphas
  key `edges_key`, one array of its inputs per node) each edge's weights are
  first scaled by ``softmax`` of its node's array (PC-DARTS's rule).

  Args:
    alphas: ``{'normal': a, 'reduce': a}`` with ``a`` of shape
      ``(num_edges(steps), ops per edge)`` (NumPy or JAX arrays), and
      optionally ``{edges_key(kind): [b_0, ..., b_{steps-1}]}`` with ``b_i``
      of shape ``(2 + i,)``.
    steps: number of intermediate nodes per cell.
    primitives: op names of the weight columns, the same on every edge, or per
      cell type one sequence per edge (`edge_primitives`: RobustDARTS's
      spaces).
    multiplier: number of trailing states concatenated into the cell output;
      defaults to ``steps`` (all intermediate nodes, as in DARTS).
    from_weights: ``alphas`` already holds the mixing weights ``w`` (a
      relaxation's, e.g. independent sigmoid gates), edge weights included:
      ranked as they are, without the softmax.

  Returns:
    The derived ``Genotype``; concat lists are ``[2 + steps - multiplier, ...,
    steps + 1]``.
  """
  multiplier = steps if multiplier is None else multiplier
  if not 1 <= multiplier <= steps:
    raise ValueError(f'multiplier must be in 1..steps={steps}, got {multiplier}')
  if isinstance(primitives, Mapping):
    per_edge = {kind: tuple(map(tuple, primitives[kind])) for kind in CELL_TYPES}
  else:
    per_edge = {kind: (tuple(primitives),) * num_edges(steps) for kind in CELL_TYPES}
  genes = {}
  for cell_type in CELL_TYPES:
    if cell_type not in alphas:
      raise ValueError(
          f"alphas needs keys 'normal' and 'reduce', got {sorted(alphas)}"
      )
    ops = per_edge[cell_type]
    if len(ops) != num_edges(steps) or len({len(o) for o in ops}) != 1:
      raise ValueError(
          f'primitives of {cell_type!r} cells need {num_edges(steps)} edges '
          'with the same number of ops each'
      )
    if not all(any(p != 'none' for p in o) for o in ops):
      raise ValueError(f"primitives need an op other than 'none': {ops}")
    a = np.asarray(alphas[cell_type], dtype=np.float64)
    expected = (num_edges(steps), len(ops[0]))
    if a.shape != expected:
      raise ValueError(
          f"alphas['{cell_type}'] has shape {a.shape}; expected {expected} "
          f'(edges of a {steps}-step cell, len(primitives))'
      )
    edge_weights = None
    if edges_key(cell_type) in alphas:
      edge_weights = [np.asarray(b, np.float64)
                      for b in alphas[edges_key(cell_type)]]
      if [b.shape for b in edge_weights] != [(2 + i,) for i in range(steps)]:
        raise ValueError(
            f"alphas['{edges_key(cell_type)}'] needs one array of shape "
            f'(2 + i,) per node i of {steps}'
        )
      if not from_weights:
        edge_weights = [softmax(b) for b in edge_weights]
    if not all(np.all(np.isfinite(x)) for x in [a] + (edge_weights or [])):
      raise ValueError(
          f"alphas['{cell_type}'] contains NaN or inf; the search diverged"
      )
    genes[cell_type] = _parse_cell(
        a if from_weights else softmax(a), steps, ops, edge_weights
    )
  concat = list(range(2 + steps - multiplier, steps + 2))
  return Genotype(
      normal=genes['normal'],
      normal_concat=concat,
      reduce=genes['reduce'],
      reduce_concat=list(concat),
  )


def _validate_cell(
    ops: Any, name: str, primitives: Sequence[str]
) -> list[tuple[str, int]]:
  """Checks one cell's ``(op, input)`` list and returns it as a list of tuples."""
  if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, Sequence):
    raise ValueError(
        f'{name} must be a list of (op_name, input_index) pairs, got '
        f'{type(ops).__name__}'
    )
  if not ops or len(ops) % 2:
    raise ValueError(
        f'{name} must hold 2 (op_name, input_index) pairs per node, got '
        f'{len(ops)} pairs'
    )
  cell = []
  for k, pair in enumerate(ops):
    where = f'{name}[{k}]'
    if isinstance(pair, (str, bytes, Mapping)) or not isinstance(
        pair, Sequence
    ) or len(pair) != 2:
      raise ValueError(
          f'{where} must be an (op_name, input_index) pair, got {pair!r}'
      )
    op, j = pair
    if not isinstance(op, str) or op not in primitives:
      raise ValueError(
          f'unknown op name {op!r} at {where}; known ops: {", ".join(primitives)}'
      )
    node = k // 2
    if not is_int(j) or not 0 <= j <= node + 1:
      raise ValueError(
          f'input index {j!r} at {where} is out of range: node {node} may take '
          f'inputs 0..{node + 1}'
      )
    cell.append((op, int(j)))
  return cell


def _validate_concat(concat: Any, name: str, num_nodes: int) -> list[int]:
  """Checks a concat list (or range) and returns it as a list of ints."""
  if isinstance(concat, (str, bytes, Mapping)) or not isinstance(
      concat, (Sequence, range)
  ):
    raise ValueError(
        f'{name} must be a list of state indices, got {type(concat).__name__}'
    )
  out = []
  # Iterating lazily fails within num_nodes + 1 items, so even a huge range()
  # is rejected without being materialized.
  for c in concat:
    if not is_int(c) or not 2 <= c < 2 + num_nodes:
      raise ValueError(
          f'concat index {c!r} in {name} is out of range: the states of a '
          f'{num_nodes}-node cell are 2..{num_nodes + 1}'
      )
    if c in out:
      raise ValueError(f'concat index {c} repeated in {name}')
    out.append(int(c))
  if not out:
    raise ValueError(f'{name} is empty; the cell output needs a state')
  return out


def validate_genotype(
    genotype: Genotype,
    primitives: Sequence[str] = EVAL_PRIMITIVES + SEARCH_ONLY_PRIMITIVES,
) -> Genotype:
  """Checks a genotype and returns it normalized.

  Normalized means: cells are lists of ``(str, int)`` tuples and concats are
  lists of ints (``range`` objects, as the original prints them, are expanded).

  Args:
    genotype: the genotype to check.
    primitives: op names the genotype may use.

  Returns:
    The normalized ``Genotype``.

  Raises:
    ValueError: naming the first problem found (unknown op, input index out of
      range for its node, odd number of pairs, concat index out of range).
  """
  fields = {}
  for cell_type in CELL_TYPES:
    cell = _validate_cell(getattr(genotype, cell_type), cell_type, primitives)
    fields[cell_type] = cell
    concat_name = f'{cell_type}_concat'
    fields[concat_name] = _validate_concat(
        getattr(genotype, concat_name), concat_name, len(cell) // 2
    )
  return Genotype(**fields)
