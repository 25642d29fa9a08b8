"""NAS-Bench-201's cell as data: the candidate ops, the edges, a genotype, the benchmark's architecture string.

The cell has nodes 0 (its input) to 3 (its output); node ``i`` sums one op applied to every earlier node ``j``, so the
edges ``j → i`` are, in the benchmark's order (its ``edge2index``, the sorted ``'i<-j'`` names, which is also the
string's order): 1←0, 2←0, 2←1, 3←0, 3←1, 3←2. A genotype is the op of each edge in that order; the alphas are one
``(6, 5)`` array, shared by every cell, its columns in the order of `OPS` (the benchmark's).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from darts_jax.cnn.genotypes import edges_key

OPS = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
"""The candidate ops in the benchmark's order (its ``NAS_BENCH_201`` list): the alphas' columns."""
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
"""The edges ``(node, input node)`` in the alphas' row order."""
NUM_NODES = 4
CELL_KEY = 'cell'
"""With PC-DARTS's edge normalisation the alphas (and mixing weights) are a dict: the ops' (6, 5) array under this
key, the edges' under `EDGES_KEY`."""
EDGES_KEY = edges_key(CELL_KEY)
"""The key of the edge-normalisation parameters: one array per node 1..3, an entry per incoming edge (from nodes
``0..i-1``), as DARTS's space's ``edges_key``."""
Genotype = tuple[str, ...]
"""One op of `OPS` per edge of `EDGES`."""


def check_genotype(genotype: Genotype) -> Genotype:
  """`genotype` as a tuple; ValueError (one line) unless it names one op of `OPS` for each of the 6 edges."""
  genotype = tuple(genotype)
  if len(genotype) != len(EDGES) or any(op not in OPS for op in genotype):
    raise ValueError(f'a NAS-Bench-201 genotype names one op of {", ".join(OPS)} for each of the {len(EDGES)} edges, '
                     f'got {genotype}.')
  return genotype


def to_arch_str(genotype: Genotype) -> str:
  """The benchmark's architecture string, e.g. ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|...|``: node
  by node, each edge as ``op~input``."""
  genotype = check_genotype(genotype)
  nodes = []
  for node in range(1, NUM_NODES):
    nodes.append('|' + '|'.join(f'{op}~{source}' for (dst, source), op in zip(EDGES, genotype) if dst == node) + '|')
  return '+'.join(nodes)


def from_arch_str(text: str) -> Genotype:
  """`to_arch_str`'s inverse. Raises ValueError (one line) for a string that is not a NAS-Bench-201 architecture."""
  error = ValueError(f'{text!r} is not a NAS-Bench-201 architecture string like '
                     f'{to_arch_str(("nor_conv_3x3",) * len(EDGES))!r}.')
  nodes = text.strip().split('+')
  if len(nodes) != NUM_NODES - 1:
    raise error
  genotype = []
  for node, part in enumerate(nodes, start=1):
    if not (part.startswith('|') and part.endswith('|')):
      raise error
    edges = part[1:-1].split('|')
    if len(edges) != node:
      raise error
    for source, edge in enumerate(edges):
      op, _, index = edge.partition('~')
      if op not in OPS or index != str(source):
        raise error
      genotype.append(op)
  return tuple(genotype)


def ops_alphas(alphas: Any) -> Any:
  """The ops' (6, 5) array of `alphas` (or of mixing weights): the array itself, or its `CELL_KEY` with edge
  normalisation."""
  return alphas[CELL_KEY] if isinstance(alphas, Mapping) else alphas


def derive_genotype(strength: np.ndarray) -> Genotype:
  """The benchmark's DARTS rule: each edge's op of the largest alpha (or mixing weight), ``none`` included (its
  ``genotype()`` takes the argmax over all ops), for host `strength` of shape ``(6, 5)``. The genotype keeps every
  edge, so PC-DARTS's edge weights (`EDGES_KEY`) do not enter it."""
  strength = np.asarray(strength)
  if strength.shape != (len(EDGES), len(OPS)):
    raise ValueError(f'NAS-Bench-201 alphas have shape {(len(EDGES), len(OPS))}, got {strength.shape}.')
  return tuple(OPS[k] for k in np.argmax(strength, -1))
