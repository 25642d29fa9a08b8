"""The CNN genotypes as text: this project's JSON, the original's ``Genotype(...)`` repr, pt.darts's per-node repr
and NNI's architecture dict, read by `parse_genotype` and written by `format_genotype`; `load_genotype` finds a
genotype by name, file, workdir or text (what ``--config.genotype`` takes).

Pure Python/NumPy; the space's rule (the published genotypes, derivation, validation) is `darts_jax.cnn.genotypes`.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from darts_jax.cnn.genotypes import CELL_TYPES, KNOWN_GENOTYPES, Genotype, validate_genotype
from darts_jax.genotype_text import concat_text, repr_fields

GENOTYPE_FILE = 'genotype.json'
"""The file a search or retrain workdir holds its genotype in (`genotype_to_json`)."""


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
  fields = {k: _flatten_nodes(v, k) if k in CELL_TYPES else v
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
  fields = repr_fields(text, Genotype._fields, "'Genotype(normal=[...], normal_concat=[...], reduce=[...], "
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
  for cell_type in CELL_TYPES:
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


def genotype_to_repr(genotype: Genotype) -> str:
  """The original's ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat
  =range(2, 6), ...)``: one flat list of pairs per cell, as its search logs."""
  g = validate_genotype(genotype)
  return (
      f'Genotype(normal={g.normal!r}, '
      f'normal_concat={concat_text(g.normal_concat)}, reduce={g.reduce!r}, '
      f'reduce_concat={concat_text(g.reduce_concat)})'
  )


def genotype_to_pt_darts(genotype: Genotype) -> str:
  """pt.darts's (khanrc/pt.darts) genotype text: the original's, with each
  cell's pairs grouped per node, ``normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5',
  1)], ...]``. `parse_genotype` reads it."""
  g = validate_genotype(genotype)
  nodes = lambda ops: [ops[k:k + 2] for k in range(0, len(ops), 2)]
  return (
      f'Genotype(normal={nodes(g.normal)!r}, '
      f'normal_concat={concat_text(g.normal_concat)}, '
      f'reduce={nodes(g.reduce)!r}, '
      f'reduce_concat={concat_text(g.reduce_concat)})'
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


def load_genotype(spec: str) -> Genotype:
  """The genotype named or given by `spec`.

  Args:
    spec: one of

      * a name in `genotypes.KNOWN_GENOTYPES` (``'DARTS_V2'``);
      * a directory holding a ``genotype.json``: a search workdir (its final genotype) or a retrain workdir;
      * a file holding a genotype as JSON (``genotype.json``) or as the ``Genotype(...)`` repr the original prints;
      * the JSON or repr text itself.

  Raises:
    ValueError: for a malformed or invalid genotype, or an empty `spec` (the message says which).
    FileNotFoundError: for a directory without ``genotype.json``.
  """
  text = (spec or '').strip()
  if not text:
    raise ValueError('no genotype given: pass --config.genotype=NAME (e.g. DARTS_V2), a search workdir, a '
                     'genotype.json file, or the genotype as JSON or Genotype(...) text.')
  path = _existing_path(text)
  if path is None:
    return parse_genotype(text)
  if path.is_dir():
    path = path / GENOTYPE_FILE
    if not path.is_file():
      raise FileNotFoundError(f'{path} does not exist: {text} is a directory without a genotype.json (a search '
                              'writes it after its last epoch).')
  try:
    return parse_genotype(path.read_text())
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None


def _existing_path(text: str) -> Path | None:
  try:
    path = Path(text).expanduser()
    return path if path.exists() else None
  except OSError:  # e.g. genotype JSON longer than a file name may be
    return None
