"""Cell genotypes: the discrete architectures DARTS searches for.

A ``Genotype`` has the format of the original DARTS code (quark0/darts,
``cnn/genotypes.py``), so genotypes printed by the PyTorch implementation paste
in unchanged. ``normal`` and ``reduce`` list two ``(op_name, input_index)``
pairs per intermediate node; node ``i`` (0-based) may read state ``0``
(``c_{k-2}``), state ``1`` (``c_{k-1}``) or the output of nodes ``0..i-1``
(states ``2..i+1``). ``*_concat`` lists the states concatenated into the cell
output.

This module is pure Python/NumPy: deriving a genotype from architecture
weights, the published genotypes, and (de)serialization with validation.
"""

import ast
import collections
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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

_CELL_TYPES = ('normal', 'reduce')


def num_edges(steps: int) -> int:
  """Number of mixed edges in a search cell: ``sum_{i<steps} (2 + i)``."""
  return sum(2 + i for i in range(steps))


def _softmax(x: np.ndarray) -> np.ndarray:
  """Row-wise softmax, shifted by the row max for stability."""
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _parse_cell(
    weights: np.ndarray, steps: int, primitives: Sequence[str]
) -> list[tuple[str, int]]:
  """Discretizes one cell's softmaxed weights, as in the original ``_parse``."""
  candidates = np.ones(len(primitives), dtype=bool)
  if 'none' in primitives:
    candidates[primitives.index('none')] = False
  # 'none' never wins: mask it to -inf so argmax returns the first best
  # non-none op, like the original's loop with a strict '>'.
  masked = np.where(candidates, weights, -np.inf)
  gene = []
  start = 0
  for i in range(steps):
    n = 2 + i
    w = masked[start : start + n]
    strength = w.max(axis=1)
    # Python's sort is stable: equally strong edges keep the lower input first.
    edges = sorted(range(n), key=lambda j: -strength[j])[:2]
    for j in edges:
      gene.append((primitives[int(np.argmax(w[j]))], j))
    start += n
  return gene


def derive_genotype(
    alphas: Mapping[str, Any],
    steps: int = 4,
    primitives: Sequence[str] = PRIMITIVES,
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
  computed in float64 on the host.

  Args:
    alphas: ``{'normal': a, 'reduce': a}`` with ``a`` of shape
      ``(num_edges(steps), len(primitives))`` (NumPy or JAX arrays).
    steps: number of intermediate nodes per cell.
    primitives: op names of the weight columns.
    multiplier: number of trailing states concatenated into the cell output;
      defaults to ``steps`` (all intermediate nodes, as in DARTS).
    from_weights: ``alphas`` already holds the mixing weights ``w`` (a
      relaxation's, e.g. independent sigmoid gates): ranked as they are,
      without the softmax.

  Returns:
    The derived ``Genotype``; concat lists are ``[2 + steps - multiplier, ...,
    steps + 1]``.
  """
  multiplier = steps if multiplier is None else multiplier
  if not 1 <= multiplier <= steps:
    raise ValueError(f'multiplier must be in 1..steps={steps}, got {multiplier}')
  if not any(p != 'none' for p in primitives):
    raise ValueError(f"primitives need an op other than 'none': {primitives}")
  primitives = tuple(primitives)
  expected = (num_edges(steps), len(primitives))
  genes = {}
  for cell_type in _CELL_TYPES:
    if cell_type not in alphas:
      raise ValueError(
          f"alphas needs keys 'normal' and 'reduce', got {sorted(alphas)}"
      )
    a = np.asarray(alphas[cell_type], dtype=np.float64)
    if a.shape != expected:
      raise ValueError(
          f"alphas['{cell_type}'] has shape {a.shape}; expected {expected} "
          f'(edges of a {steps}-step cell, len(primitives))'
      )
    if not np.all(np.isfinite(a)):
      raise ValueError(
          f"alphas['{cell_type}'] contains NaN or inf; the search diverged"
      )
    genes[cell_type] = _parse_cell(a if from_weights else _softmax(a), steps, primitives)
  concat = list(range(2 + steps - multiplier, steps + 2))
  return Genotype(
      normal=genes['normal'],
      normal_concat=concat,
      reduce=genes['reduce'],
      reduce_concat=list(concat),
  )


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


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
    if not _is_int(j) or not 0 <= j <= node + 1:
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
    if not _is_int(c) or not 2 <= c < 2 + num_nodes:
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
    genotype: Genotype, primitives: Sequence[str] = EVAL_PRIMITIVES
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
  for cell_type in _CELL_TYPES:
    cell = _validate_cell(getattr(genotype, cell_type), cell_type, primitives)
    fields[cell_type] = cell
    concat_name = f'{cell_type}_concat'
    fields[concat_name] = _validate_concat(
        getattr(genotype, concat_name), concat_name, len(cell) // 2
    )
  return Genotype(**fields)


def genotype_to_json(genotype: Genotype) -> str:
  """Serializes a genotype to JSON.

  Schema: ``{"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4,
  5], "reduce": [...], "reduce_concat": [...]}``.
  """
  g = validate_genotype(genotype)
  return json.dumps({
      'normal': [list(p) for p in g.normal],
      'normal_concat': g.normal_concat,
      'reduce': [list(p) for p in g.reduce],
      'reduce_concat': g.reduce_concat,
  })


def _flatten_nodes(ops: Any, name: str) -> Any:
  """pt.darts's cells (one list of pairs per node) as the original's flat list
  of pairs; anything else is returned as is, for `validate_genotype`."""
  is_pair = lambda p: (isinstance(p, Sequence) and len(p) == 2
                       and isinstance(p[0], str))
  if (isinstance(ops, Sequence) and not isinstance(ops, (str, bytes)) and ops
      and all(isinstance(node, Sequence) and not isinstance(node, (str, bytes))
              and not is_pair(node) for node in ops)):
    for i, node in enumerate(ops):
      if len(node) != 2:
        raise ValueError(
            f'{name}[{i}] (node {i}) has {len(node)} (op, input) pairs; a '
            'DARTS node has 2'
        )
    return [pair for node in ops for pair in node]
  return ops


def _genotype_from_fields(fields: Mapping[str, Any], source: str) -> Genotype:
  """Builds and validates a genotype from a field-name -> value mapping.

  Cells may be flat lists of pairs (the original) or lists of per-node lists
  of pairs (pt.darts).
  """
  unknown = sorted(set(fields) - set(Genotype._fields))
  if unknown:
    raise ValueError(
        f'unknown field {unknown[0]!r} in {source}; expected fields '
        f'{", ".join(Genotype._fields)}'
    )
  missing = [f for f in Genotype._fields if f not in fields]
  if missing:
    raise ValueError(f'missing field {missing[0]!r} in {source}')
  fields = {k: _flatten_nodes(v, k) if k in _CELL_TYPES else v
            for k, v in fields.items()}
  return validate_genotype(Genotype(**fields))


def genotype_from_json(text: str) -> Genotype:
  """Parses and validates JSON written by ``genotype_to_json``.

  Raises:
    ValueError: if ``text`` is not JSON of that schema or the genotype is
      invalid (see ``validate_genotype``).
  """
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'invalid genotype JSON: {e}') from None
  if not isinstance(obj, dict):
    raise ValueError(
        f'genotype JSON must be an object with fields '
        f'{", ".join(Genotype._fields)}, got {type(obj).__name__}'
    )
  if _is_nni(obj):
    return genotype_from_nni(obj)
  # A search's genotype.json also records what the genotype costs (darts_jax.cnn.cost): not part of the genotype.
  return _genotype_from_fields({k: v for k, v in obj.items() if k != 'cost'}, 'genotype JSON')


def _is_nni(obj: Mapping[str, Any]) -> bool:
  return any(isinstance(k, str) and '/' in k for k in obj)


def _genotype_from_dict_text(text: str) -> Genotype:
  """JSON (this project's or an NNI dict), else a Python dict literal as NNI
  prints its architecture dicts (single quotes)."""
  try:
    json.loads(text)
  except json.JSONDecodeError:
    try:
      obj = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
      return genotype_from_json(text)  # raises with the JSON error
    if isinstance(obj, dict) and _is_nni(obj):
      return genotype_from_nni(obj)
    if isinstance(obj, dict):
      return _genotype_from_fields(obj, 'genotype dict')
  return genotype_from_json(text)


def _literal(node: ast.expr, name: str) -> Any:
  """Evaluates a literal AST node; ``range(...)`` of int literals is allowed.

  Only literal nodes are interpreted (``ast.literal_eval``), so no code from
  the text ever runs.
  """
  if (
      isinstance(node, ast.Call)
      and isinstance(node.func, ast.Name)
      and node.func.id == 'range'
      and not node.keywords
  ):
    args = [_literal(a, name) for a in node.args]
    if not 1 <= len(args) <= 3 or not all(_is_int(a) for a in args):
      raise ValueError(f'{name}: range() takes 1 to 3 integer literals')
    if args[-1] == 0 and len(args) == 3:
      raise ValueError(f'{name}: range() step must not be zero')
    return range(*args)
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    raise ValueError(
        f'{name} must be a literal (lists, tuples, strings, ints or range()), '
        f'got: {ast.unparse(node)[:80]}'
    ) from None


def _repr_fields(text: str, field_names: Sequence[str], example: str) -> dict[str, Any]:
  """The literal fields of one ``Genotype(...)`` call in `text` (keyword or positional, an optional module prefix or
  ``NAME = `` assignment), parsed with ``ast``, never executed; `example` names the expected form in errors. Shared
  by the CNN and the recurrent genotypes."""
  try:
    stmts = ast.parse(text.strip(), mode='exec').body
  except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
    raise ValueError(f'not a Genotype(...) repr: {e}') from None
  node = stmts[0].value if len(stmts) == 1 and isinstance(stmts[0], (ast.Expr, ast.Assign)) else None
  if not (isinstance(node, ast.Call) and (
      (isinstance(node.func, ast.Name) and node.func.id == 'Genotype')
      or (isinstance(node.func, ast.Attribute) and node.func.attr == 'Genotype'))):
    raise ValueError(f'not a Genotype(...) repr: expected one expression {example}')
  if len(node.args) > len(field_names):
    raise ValueError(f'Genotype(...) takes {len(field_names)} fields, got {len(node.args)} positional arguments')
  fields = {}
  for name, value in list(zip(field_names, node.args)) + [(kw.arg, kw.value) for kw in node.keywords]:
    if name is None:
      raise ValueError('Genotype(...) repr must not use **kwargs')
    if name in fields:
      raise ValueError(f'field {name!r} given twice in Genotype(...) repr')
    fields[name] = _literal(value, name)
  return fields


def genotype_from_repr(text: str) -> Genotype:
  """Parses the ``Genotype(...)`` repr the original DARTS code prints.

  Accepts keyword or positional fields, ``range(2, 6)`` or lists for concats,
  an optional module prefix (``genotypes.Genotype(...)``) and an optional
  assignment (``DARTS_V2 = Genotype(...)``, as lines of ``genotypes.py`` read).
  The text is parsed with ``ast`` and only literals are interpreted; it is
  never executed.

  Raises:
    ValueError: if ``text`` is not such a repr or the genotype is invalid.
  """
  fields = _repr_fields(text, Genotype._fields, "'Genotype(normal=[...], normal_concat=[...], reduce=[...], "
                                              "reduce_concat=[...])'")
  return _genotype_from_fields(fields, 'Genotype(...) repr')


def parse_genotype(text_or_name: str) -> Genotype:
  """Parses a genotype given by name or as text in any `GENOTYPE_FORMATS`.

  Args:
    text_or_name: a key of ``KNOWN_GENOTYPES`` (e.g. ``'DARTS_V2'``), JSON
      from ``genotype_to_json``, a ``Genotype(...)`` repr printed by the
      original code or by pt.darts (pairs grouped per node), or an NNI
      architecture dict (as JSON or as Python prints it).

  Returns:
    The validated, normalized ``Genotype``.

  Raises:
    ValueError: naming what is wrong with the input.
  """
  text = text_or_name.strip()
  if text in KNOWN_GENOTYPES:
    return validate_genotype(KNOWN_GENOTYPES[text])
  if text.startswith('{'):
    return _genotype_from_dict_text(text)
  if text.isidentifier():
    raise ValueError(
        f'unknown genotype name {text!r}; known names: '
        f'{", ".join(KNOWN_GENOTYPES)} (or pass JSON, a Genotype(...) repr or '
        'an NNI architecture dict)'
    )
  try:
    return genotype_from_repr(text)
  except ValueError as e:
    if str(e).startswith('not a Genotype(...) repr'):
      raise ValueError(
          f'not a known genotype name, JSON, nor a Genotype(...) repr: '
          f'{text[:80]!r}'
      ) from None
    raise


# ---------------------------------------------------------------------------
# Other tools' formats.

GENOTYPE_FORMATS = ('original', 'json', 'nni', 'pt_darts')
"""The formats `format_genotype` writes and `parse_genotype` reads."""

_NNI_KEY = re.compile(r'(normal|reduce)/(op|input)_(\d+)_([01])$')


def genotype_to_nni(genotype: Genotype) -> dict[str, str | int]:
  """NNI's architecture dict of its DARTS space (``nni.nas.hub.pytorch.DARTS``).

  Node ``i`` is numbered as a state, ``2 .. 1 + steps``; its two inputs ``j =
  0, 1`` are ``'{cell}/op_{i}_{j}'`` (the op name) and ``'{cell}/input_{i}_{j}'``
  (the state it reads: 0 = ``c_{k-2}``, 1 = ``c_{k-1}``, ``2 + n`` = node
  ``n``, as in the original), normal cell first, as NNI prints it. NNI's cells
  output all their nodes, so the concats must be ``2 .. 1 + steps``.

  Raises:
    ValueError: for an invalid genotype or one whose concat leaves out a node.
  """
  g = validate_genotype(genotype)
  out = {}
  for cell_type in _CELL_TYPES:
    ops, concat = getattr(g, cell_type), getattr(g, f'{cell_type}_concat')
    steps = len(ops) // 2
    if sorted(concat) != list(range(2, 2 + steps)):
      raise ValueError(
          f"NNI's DARTS cells concatenate all their nodes; {cell_type}_concat="
          f'{concat} leaves out some of 2..{steps + 1}'
      )
    for k, (op, index) in enumerate(ops):
      node, j = 2 + k // 2, k % 2
      out[f'{cell_type}/op_{node}_{j}'] = op
      out[f'{cell_type}/input_{node}_{j}'] = index
  return out


def genotype_from_nni(arch: Mapping[str, Any]) -> Genotype:
  """The genotype of an NNI architecture dict (`genotype_to_nni`'s format).

  Input values may also be one-element lists (``[1]``), as some NNI versions
  export them. The concats are all nodes (NNI's DARTS cells).

  Raises:
    ValueError: naming an unknown key, a missing op or input, or an invalid
      op or input index.
  """
  if not isinstance(arch, Mapping):
    raise ValueError(
        f'an NNI architecture dict must be a mapping, got {type(arch).__name__}'
    )
  cells: dict[str, dict[tuple[int, int], dict[str, Any]]] = {
      'normal': {}, 'reduce': {}
  }
  for key, value in arch.items():
    match = _NNI_KEY.match(str(key))
    if not match:
      raise ValueError(
          f"unknown key {key!r} in the NNI architecture dict; expected "
          "'normal/op_I_J', 'normal/input_I_J', 'reduce/op_I_J' and "
          "'reduce/input_I_J' with node I >= 2 and J = 0 or 1"
      )
    cell_type, kind, node, j = match.groups()
    if kind == 'input' and isinstance(value, (list, tuple)) and len(value) == 1:
      value = value[0]
    cells[cell_type].setdefault((int(node), int(j)), {})[kind] = value
  fields = {}
  for cell_type, entries in cells.items():
    nodes = sorted({node for node, _ in entries})
    if nodes != list(range(2, 2 + len(nodes))) or not nodes:
      raise ValueError(
          f'the NNI architecture dict must number the {cell_type} nodes '
          f'2, 3, ...; got {nodes}'
      )
    ops = []
    for node in nodes:
      for j in (0, 1):
        entry = entries.get((node, j), {})
        for kind in ('op', 'input'):
          if kind not in entry:
            raise ValueError(
                f"the NNI architecture dict has no '{cell_type}/{kind}_"
                f"{node}_{j}'"
            )
        ops.append((entry['op'], entry['input']))
    fields[cell_type] = ops
    fields[f'{cell_type}_concat'] = list(range(2, 2 + len(nodes)))
  return validate_genotype(Genotype(**fields))


def _concat_text(concat: Sequence[int]) -> str:
  """``range(a, b)`` for a contiguous concat, as the original prints it."""
  concat = list(concat)
  if concat == list(range(concat[0], concat[0] + len(concat))):
    return f'range({concat[0]}, {concat[0] + len(concat)})'
  return repr(concat)


def genotype_to_repr(genotype: Genotype) -> str:
  """The original's ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat
  =range(2, 6), ...)``: one flat list of pairs per cell, as its search logs."""
  g = validate_genotype(genotype)
  return (
      f'Genotype(normal={g.normal!r}, '
      f'normal_concat={_concat_text(g.normal_concat)}, reduce={g.reduce!r}, '
      f'reduce_concat={_concat_text(g.reduce_concat)})'
  )


def genotype_to_pt_darts(genotype: Genotype) -> str:
  """pt.darts's (khanrc/pt.darts) genotype text: the original's, with each
  cell's pairs grouped per node, ``normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5',
  1)], ...]``. `parse_genotype` reads it."""
  g = validate_genotype(genotype)
  nodes = lambda ops: [ops[k:k + 2] for k in range(0, len(ops), 2)]
  return (
      f'Genotype(normal={nodes(g.normal)!r}, '
      f'normal_concat={_concat_text(g.normal_concat)}, '
      f'reduce={nodes(g.reduce)!r}, '
      f'reduce_concat={_concat_text(g.reduce_concat)})'
  )


def format_genotype(genotype: Genotype, fmt: str) -> str:
  """`genotype` as text in `fmt`, one of `GENOTYPE_FORMATS` (``'nni'``: the
  architecture dict as Python prints it, as NNI shows it)."""
  if fmt == 'original':
    return genotype_to_repr(genotype)
  if fmt == 'json':
    return genotype_to_json(genotype)
  if fmt == 'nni':
    return repr(genotype_to_nni(genotype))
  if fmt == 'pt_darts':
    return genotype_to_pt_darts(genotype)
  raise ValueError(
      f'unknown genotype format {fmt!r}; known: {", ".join(GENOTYPE_FORMATS)}'
  )
