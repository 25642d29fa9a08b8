"""Early-stopping rules for a DARTS search: pure functions of the per-epoch metric history.

Each rule reads the epoch records of a search (``metrics.jsonl``'s lines with an ``epoch``, oldest first, the last
being the epoch just finished) and returns the reason to stop after that epoch, or None:

* ``darts_es`` (Zela et al., "Understanding and Robustifying DARTS", ICLR 2020): the largest eigenvalue ``λ`` of
  ``∇²_α L_val`` (the records' ``hessian_eigenvalue``, their ``max(eigvals(H))``) grows as the search degrades. Stop after epoch ``t >= start_epoch`` when
  ``mean(λ_{t-w+1..t}) > factor · mean(λ_{t-2w+1..t-w})`` (window ``w``); the architecture kept is the one of epoch
  ``t - w``, from before the growth (`kept_epoch`). R-DARTS: ``w = 5``, ``factor = 1.3`` (their ratio 0.75),
  ``start_epoch = 10``.
* ``darts_plus`` (Liang et al., "DARTS+", 2019): stop when the normal cell's genotype has ``max_skip`` or more
  ``skip_connect`` ops (DARTS+: 2), the sign of collapse; the architecture kept is the current one.
* ``stability``: stop when the derived architecture has not changed for ``patience`` epochs (the search has
  decided); the architecture kept is the current one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RULES = ('none', 'darts_es', 'darts_plus', 'stability')
EIGENVALUE, SKIPS, UNCHANGED = 'hessian_eigenvalue', 'skip_connect_normal', 'unchanged_epochs'
"""The epoch-record entries the rules read."""


def darts_es(eigenvalues: Sequence[float], *, window: int, factor: float, start_epoch: int) -> str | None:
  """DARTS-ES on the per-epoch largest Hessian eigenvalues (epoch 1 first; see the module docstring)."""
  epoch = len(eigenvalues)
  if epoch < max(start_epoch, 2 * window):
    return None
  recent, before = np.mean(eigenvalues[-window:]), np.mean(eigenvalues[-2 * window:-window])
  if recent > factor * before:
    return (f'darts_es: the mean Hessian eigenvalue of epochs {epoch - window + 1}-{epoch} ({recent:.4g}) exceeds '
            f'{factor:g} x that of epochs {epoch - 2 * window + 1}-{epoch - window} ({before:.4g})')
  return None


def darts_plus(skip_counts: Sequence[int], *, max_skip: int) -> str | None:
  """DARTS+ on the per-epoch number of ``skip_connect`` ops in the normal cell."""
  if skip_counts and skip_counts[-1] >= max_skip:
    return f'darts_plus: {skip_counts[-1]} skip_connect ops in the normal cell (max_skip {max_skip})'
  return None


def stability(unchanged: Sequence[int], *, patience: int) -> str | None:
  """Stop when the last epoch's architecture has been unchanged for `patience` epochs."""
  if unchanged and unchanged[-1] >= patience:
    return f'stability: the architecture has not changed for {unchanged[-1]} epochs (patience {patience})'
  return None


def stop_reason(records: Sequence[Mapping[str, Any]], *, rule: str, window: int = 5, factor: float = 1.3,
                start_epoch: int = 10, max_skip: int = 2, patience: int = 10) -> str | None:
  """Why `rule` stops the search after the last of `records` (epoch records, oldest first), or None.

  Raises:
    ValueError: an unknown rule.
  """
  if rule == 'none':
    return None
  if rule == 'darts_es':
    return darts_es([r[EIGENVALUE] for r in records], window=window, factor=factor, start_epoch=start_epoch)
  if rule == 'darts_plus':
    return darts_plus([r[SKIPS] for r in records], max_skip=max_skip)
  if rule == 'stability':
    return stability([r[UNCHANGED] for r in records], patience=patience)
  raise ValueError(f'Unknown early_stopping.rule {rule!r}; expected one of {", ".join(RULES)}.')


def kept_epoch(rule: str, stop_epoch: int, window: int) -> int:
  """The epoch whose architecture a search stopped by `rule` after `stop_epoch` keeps: DARTS-ES goes back
  `window` epochs, to before the eigenvalue grew; the other rules keep the last one."""
  return stop_epoch - window if rule == 'darts_es' else stop_epoch
