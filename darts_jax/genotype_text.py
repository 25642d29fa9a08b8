"""What the CNN and the recurrent genotypes share: the float64 softmax their derivations rank by and the safe-literal
text rules of their ``Genotype(...)`` reprs (parsed with ``ast``, never executed), so both spaces read text alike.

Pure Python/NumPy; it imports nothing of the package, so every space's genotype module can build on it.
"""
from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
  """Row-wise softmax, shifted by the row max for stability: the weights both spaces' derivations rank edges by
  (float64 on the host)."""
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def is_int(x: Any) -> bool:
  """Whether `x` is an integer (NumPy's included) and not a bool."""
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


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
    if not 1 <= len(args) <= 3 or not all(is_int(a) for a in args):
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


def repr_fields(text: str, field_names: Sequence[str], example: str) -> dict[str, Any]:
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


def concat_text(concat: Sequence[int]) -> str:
  """``range(a, b)`` for a contiguous concat, as the original prints it."""
  concat = list(concat)
  if concat == list(range(concat[0], concat[0] + len(concat))):
    return f'range({concat[0]}, {concat[0] + len(concat)})'
  return repr(concat)
