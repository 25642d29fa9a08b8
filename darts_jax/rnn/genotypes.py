"""Recurrent cell genotypes: the discrete RNN cells DARTS searches for on Penn Treebank.

A ``Genotype`` has the format of the original DARTS code (quark0/darts, ``rnn/genotypes.py``), so genotypes printed
by its ``train_search.py`` paste in unchanged: ``recurrent`` lists one ``(activation, predecessor)`` pair per
intermediate node; node ``i`` (0-based, state ``i + 1``) reads state ``j`` for ``0 <= j <= i`` (state 0 is the
cell's initial state ``s0``, computed from ``x_t`` and ``h_{t-1}``). ``concat`` lists the states averaged into the
cell output ``h_t``.

Pure Python/NumPy: the published genotypes, `derive_genotype` from architecture weights, and JSON / repr
(de)serialisation with validation, by the text rules both spaces share (`darts_jax.genotype_text`).
"""
from __future__ import annotations

import collections
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darts_jax.genotype_text import concat_text, is_int, repr_fields, softmax

# The recurrent search space, in the order of the original; the columns of the architecture weights follow it.
PRIMITIVES = ('none', 'tanh', 'relu', 'sigmoid', 'identity')
STEPS = 8    # intermediate nodes of the search cell
CONCAT = 8   # the last CONCAT states are averaged into the search cell's output

Genotype = collections.namedtuple('Genotype', 'recurrent concat')

# The published genotypes, as in the original rnn/genotypes.py.
ENAS = Genotype(
    recurrent=[
        ('tanh', 0),
        ('tanh', 1),
        ('relu', 1),
        ('tanh', 3),
        ('tanh', 3),
        ('relu', 3),
        ('relu', 4),
        ('relu', 7),
        ('relu', 8),
        ('relu', 8),
        ('relu', 8),
    ],
    concat=[2, 5, 6, 9, 10, 11],
)
DARTS_V1 = Genotype(recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1),
                               ('relu', 5), ('relu', 1)], concat=range(1, 9))
DARTS_V2 = Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2),
                               ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))
DARTS = DARTS_V2

KNOWN_GENOTYPES = {'ENAS': ENAS, 'DARTS_V1': DARTS_V1, 'DARTS_V2': DARTS_V2, 'DARTS': DARTS}

_ACTIVATIONS = PRIMITIVES[1:]  # what a discrete cell may use: every primitive but 'none'

OPS_KEY = 'recurrent'
"""With PC-DARTS's edge normalisation the alphas (and mixing weights) are a dict: the ops' ``(num_edges, 5)`` array
under this key, the predecessors' under `EDGES_KEY`."""
EDGES_KEY = 'edges_recurrent'
"""The key of the edge-normalisation parameters: one array per node ``i``, an entry per predecessor ``j = 0..i``."""


def ops_alphas(alphas: Any) -> Any:
  """The ops' array of `alphas` (or of mixing weights): the array itself, or its `OPS_KEY` with edge normalisation."""
  return alphas[OPS_KEY] if isinstance(alphas, Mapping) else alphas


def num_edges(steps: int = STEPS) -> int:
  """Rows of the architecture weights: node ``i`` has ``i + 1`` predecessors, ``steps (steps + 1) / 2`` in all."""
  return steps * (steps + 1) // 2


def derive_genotype(alphas: Any, steps: int = STEPS, from_weights: bool = False) -> Genotype:
  """The discrete recurrent cell of architecture weights, as the original ``RNNModelSearch.genotype()``.

  With ``w = softmax(alphas)`` row-wise (in float64 on the host; node ``i``'s rows are ``i (i + 1) / 2 ..`` one per
  predecessor ``j = 0..i``), node ``i`` keeps the single predecessor ``j`` with the largest
  ``max_{o != none} w[j, o]`` (ties: the lowest ``j``) and on it the op ``argmax_{o != none} w[j, o]`` (ties: the
  first op). ``concat`` is the last ``CONCAT`` states, what the search cell averages: ``range(1, 9)`` for 8 nodes.
  With PC-DARTS's edge normalisation (a dict of `OPS_KEY` and `EDGES_KEY`) predecessor ``j``'s weights are first
  scaled by entry ``j`` of ``softmax`` of its node's array, as PC-DARTS's rule on DARTS's CNN cells (this project's
  extension of PC-DARTS to the recurrent cell).

  Args:
    alphas: array of shape ``(num_edges(steps), len(PRIMITIVES))``, or ``{OPS_KEY: that array, EDGES_KEY: [b_0,
      ..., b_{steps-1}]}`` with ``b_i`` of shape ``(i + 1,)``.
    steps: intermediate nodes.
    from_weights: `alphas` already holds the mixing weights ``w`` (a relaxation's), edge weights included: ranked as
      they are, without the softmax.

  Raises:
    ValueError: for a wrong shape or non-finite weights.
  """
  a = np.asarray(ops_alphas(alphas), dtype=np.float64)
  expected = (num_edges(steps), len(PRIMITIVES))
  if a.shape != expected:
    raise ValueError(f'alphas has shape {a.shape}; expected {expected} (rows of a {steps}-node recurrent cell, '
                     'len(PRIMITIVES))')
  edge_weights = None
  if isinstance(alphas, Mapping) and EDGES_KEY in alphas:
    edge_weights = [np.asarray(b, np.float64) for b in alphas[EDGES_KEY]]
    if [b.shape for b in edge_weights] != [(i + 1,) for i in range(steps)]:
      raise ValueError(f"alphas['{EDGES_KEY}'] needs one array of shape (i + 1,) per node i of {steps}")
  if not all(np.all(np.isfinite(x)) for x in [a] + (edge_weights or [])):
    raise ValueError('alphas contains NaN or inf; the search diverged')
  weights = a.copy() if from_weights else softmax(a)
  if edge_weights is not None and not from_weights:
    edge_weights = [softmax(b) for b in edge_weights]
  recurrent, start = [], 0
  for i in range(steps):
    w = weights[start:start + i + 1]
    if edge_weights is not None:
      w = w * edge_weights[i][:, None]
    w[:, PRIMITIVES.index('none')] = -np.inf  # 'none' never wins
    j = int(np.argmax(w.max(axis=1)))  # first of equally strong predecessors, as the original's stable sort
    recurrent.append((PRIMITIVES[int(np.argmax(w[j]))], j))
    start += i + 1
  return Genotype(recurrent=recurrent, concat=list(range(steps + 1))[-CONCAT:])


def validate_genotype(genotype: Genotype) -> Genotype:
  """Checks a recurrent genotype and returns it normalised (lists of ``(str, int)`` tuples and of ints).

  Raises:
    ValueError: naming the first problem: a malformed pair, an unknown activation (``none`` included: a discrete
      cell computes every node), a predecessor out of range for its node, a concat index out of range or repeated.
  """
  if not isinstance(genotype, tuple) or len(genotype) != 2:
    raise ValueError(f'a recurrent genotype is Genotype(recurrent=[...], concat=[...]), got {genotype!r:.80}')
  ops, concat = genotype
  if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, Sequence) or not ops:
    raise ValueError(f'recurrent must be a non-empty list of (activation, predecessor) pairs, got {ops!r:.80}')
  recurrent = []
  for i, pair in enumerate(ops):
    where = f'recurrent[{i}]'
    if isinstance(pair, (str, bytes, Mapping)) or not isinstance(pair, Sequence) or len(pair) != 2:
      raise ValueError(f'{where} must be an (activation, predecessor) pair, got {pair!r}')
    op, j = pair
    if not isinstance(op, str) or op not in _ACTIVATIONS:
      raise ValueError(f'unknown activation {op!r} at {where}; known: {", ".join(_ACTIVATIONS)}')
    if not is_int(j) or not 0 <= j <= i:
      raise ValueError(f'predecessor {j!r} at {where} is out of range: node {i} may read states 0..{i}')
    recurrent.append((op, int(j)))
  if isinstance(concat, (str, bytes, Mapping)) or not isinstance(concat, (Sequence, range)):
    raise ValueError(f'concat must be a list of state indices, got {type(concat).__name__}')
  out = []
  for c in concat:  # lazily: a huge range() fails within len(ops) + 2 items
    if not is_int(c) or not 0 <= c <= len(recurrent):
      raise ValueError(f'concat index {c!r} is out of range: the states of a {len(recurrent)}-node cell are '
                       f'0..{len(recurrent)}')
    if c in out:
      raise ValueError(f'concat index {c} repeated')
    out.append(int(c))
  if not out:
    raise ValueError('concat is empty; the cell output needs a state')
  return Genotype(recurrent=recurrent, concat=out)


def genotype_to_json(genotype: Genotype) -> str:
  """``{"recurrent": [["relu", 0], ...], "concat": [1, ..., 8]}``."""
  g = validate_genotype(genotype)
  return json.dumps({'recurrent': [list(p) for p in g.recurrent], 'concat': g.concat})


def _from_fields(fields: Mapping[str, Any], source: str) -> Genotype:
  unknown = sorted(set(fields) - set(Genotype._fields))
  if unknown:
    raise ValueError(f'unknown field {unknown[0]!r} in {source}; a recurrent genotype has fields recurrent, concat')
  missing = [f for f in Genotype._fields if f not in fields]
  if missing:
    raise ValueError(f'missing field {missing[0]!r} in {source}')
  return validate_genotype(Genotype(**fields))


def genotype_from_json(text: str) -> Genotype:
  """Parses and validates `genotype_to_json`'s JSON.

  Raises:
    ValueError: for invalid JSON, another schema or an invalid genotype.
  """
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'invalid genotype JSON: {e}') from None
  if not isinstance(obj, dict):
    raise ValueError(f'recurrent genotype JSON must be an object with fields recurrent, concat, got '
                     f'{type(obj).__name__}')
  return _from_fields(obj, 'genotype JSON')


def genotype_from_repr(text: str) -> Genotype:
  """Parses ``Genotype(recurrent=[...], concat=range(1, 9))`` as the original prints it (keyword or positional
  fields, an optional module prefix or ``NAME =`` assignment). Only literals are interpreted.

  Raises:
    ValueError: if `text` is not such a repr or the genotype is invalid.
  """
  fields = repr_fields(text, Genotype._fields, "'Genotype(recurrent=[...], concat=[...])'")
  return _from_fields(fields, 'Genotype(...) repr')


def genotype_to_repr(genotype: Genotype) -> str:
  """The original's ``Genotype(recurrent=[('relu', 0), ...], concat=range(1, 9))``."""
  g = validate_genotype(genotype)
  return f'Genotype(recurrent={g.recurrent!r}, concat={concat_text(g.concat)})'


def parse_genotype(text_or_name: str) -> Genotype:
  """A recurrent genotype by name (`KNOWN_GENOTYPES`), as JSON, or as the original's repr.

  Raises:
    ValueError: naming what is wrong with the input.
  """
  text = text_or_name.strip()
  if text in KNOWN_GENOTYPES:
    return validate_genotype(KNOWN_GENOTYPES[text])
  if text.startswith('{'):
    return genotype_from_json(text)
  if text.isidentifier():
    raise ValueError(f'unknown recurrent genotype name {text!r}; known names: {", ".join(KNOWN_GENOTYPES)} (or '
                     'pass JSON or a Genotype(recurrent=..., concat=...) repr)')
  try:
    return genotype_from_repr(text)
  except ValueError as e:
    if str(e).startswith('not a Genotype(...) repr'):
      raise ValueError(f'not a known recurrent genotype name, JSON, nor a Genotype(...) repr: {text[:80]!r}') from None
    raise


GENOTYPE_FILE = 'genotype.json'
"""The file a search or retrain workdir holds its genotype in (`genotype_to_json`)."""


def load_genotype(spec: str) -> Genotype:
  """The recurrent genotype of `spec`: a name (``DARTS_V2``), a workdir holding ``genotype.json``, a file with
  JSON or a ``Genotype(...)`` repr, or the JSON or repr text itself.

  Raises:
    ValueError: for an empty, malformed or invalid genotype; FileNotFoundError: a directory without genotype.json.
  """
  spec = spec.strip()
  if not spec:
    raise ValueError('no genotype given: pass --config.genotype=NAME (e.g. DARTS_V2), a search workdir, a '
                     'genotype.json file, or the genotype as JSON or Genotype(...) text.')
  try:
    path = Path(spec).expanduser()
    exists = len(spec) < 4096 and path.exists()
  except OSError:
    exists = False
  if not exists:
    return parse_genotype(spec)
  if path.is_dir():
    if not (path / GENOTYPE_FILE).is_file():
      raise FileNotFoundError(f'{path} holds no {GENOTYPE_FILE} (a finished recurrent search writes one).')
    path = path / GENOTYPE_FILE
  return parse_genotype(path.read_text())
