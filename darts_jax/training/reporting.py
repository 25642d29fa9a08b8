"""Run reporting: metrics (JSON lines + TensorBoard), JSON files, progress bars.

``<workdir>/metrics.jsonl`` holds one JSON object per line, each with the
global ``step`` and the scalars logged at that step (big_vision style), e.g.
``{"step": 390, "epoch": 1, "train_loss": 1.52, "train_acc": 0.43}``.
The same scalars go to TensorBoard event files in ``<workdir>/tensorboard``.

In a multi-host run only process 0 should create a `MetricsWriter` or write
files.
"""

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tqdm

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def _to_builtin(x: Any) -> Any:
  """`json` fallback for numpy/jax scalars and arrays."""
  if hasattr(x, '__array__'):
    return np.asarray(x).tolist()
  raise TypeError(f'Object of type {type(x).__name__} is not JSON '
                  'serializable.')


def _dumps(obj: Any, **kwargs) -> str:
  return json.dumps(obj, default=_to_builtin, **kwargs)


def _write_atomically(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())  # Content on disk before the rename makes it visible.
  os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically.

  The file is written next to `path` and renamed over it, so a reader (or a
  process killed mid-write) sees either the old or the new content, never a
  partial one. Numpy/jax scalars and arrays are converted to Python numbers
  and lists.
  """
  _write_atomically(Path(path), _dumps(obj, indent=2) + '\n')


def append_jsonl(path: str | Path, obj: Any) -> None:
  """Appends `obj` as one JSON line to `path` and flushes it to the OS."""
  with open(path, 'a') as f:
    f.write(_dumps(obj) + '\n')


def truncate_jsonl(path: str | Path, max_step: int | None = None) -> None:
  """Rewrites a JSON-lines file without a truncated last line and, given `max_step`, without the records logged after
  it (by a run that is being resumed from the checkpoint of `max_step`); atomically, and only if needed."""
  path = Path(path)
  if not path.exists():
    return
  text = path.read_text()
  kept = [r for r in read_jsonl(path) if max_step is None or r['step'] <= max_step]
  # A last line without its newline would be glued to the next record.
  if len(kept) != len(text.splitlines()) or not text.endswith('\n'):
    _write_atomically(path, ''.join(_dumps(r) + '\n' for r in kept))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
  """Reads a JSON-lines file, skipping a truncated last line.

  A process killed while appending can leave a partial last line; it is
  dropped. A malformed line elsewhere means the file is damaged and raises.

  Raises:
    ValueError: a line other than the last is not valid JSON.
  """
  lines = Path(path).read_text().splitlines()
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f'{path}:{i + 1} is not valid JSON ({e}); fix or '
                       'remove that line.') from e
  return records


def _scalar(name: str, value: Any) -> int | float:
  arr = np.asarray(value)
  if arr.shape != ():
    raise ValueError(f'Metric {name!r} must be a scalar, got shape '
                     f'{arr.shape}.')
  if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
    return int(arr)
  if np.issubdtype(arr.dtype, np.floating):
    return float(arr)
  raise TypeError(f'Metric {name!r} must be a number, got {value!r}.')



def _summary_writer_class():
  """tensorboardX's ``SummaryWriter``, imported without torch.

  tensorboardX imports torch whenever it is installed, only to accept torch tensors as values (~1.4 s of every
  run's start-up here); we log Python floats. So unless torch is already loaded, ``import torch`` is made to fail
  for the duration of the import (a ``None`` entry in ``sys.modules``), and tensorboardX takes its numpy-only path.
  """
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter

class MetricsWriter:
  """Appends scalar metrics to ``metrics.jsonl`` and TensorBoard.

  Usage::

    writer = MetricsWriter(workdir, resume_step=restored_step)
    writer.write(step, {'epoch': epoch, 'train_loss': loss})
    writer.close()

  Resuming: pass the step of the restored checkpoint as `resume_step`.
  Records with a larger step -- logged after that checkpoint by the run that
  was killed, and about to be logged again -- are dropped from
  ``metrics.jsonl`` (the file is rewritten atomically) and hidden in
  TensorBoard (``purge_step``). Without `resume_step` existing records are
  kept and new ones appended. A truncated last line is dropped in both cases.
  """

  def __init__(self,
               workdir: str | Path,
               *,
               tensorboard: bool = True,
               resume_step: int | None = None):
    """Opens the writers.

    Args:
      workdir: run directory (created if missing).
      tensorboard: also write TensorBoard event files.
      resume_step: step of the checkpoint a resumed run starts from.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.path = workdir / METRICS_FILE
    truncate_jsonl(self.path, resume_step)
    self._tb = None
    if tensorboard:
      self._tb = _summary_writer_class()(
          logdir=str(workdir / TENSORBOARD_DIR),
          purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs `scalars` at `step`.

    Args:
      step: global training step.
      scalars: name -> scalar (Python, numpy or jax number); an ``epoch``
        entry is customary. Integers are written as ints, others as floats.
    """
    if 'step' in scalars:
      raise ValueError("'step' is reserved; pass it as the step argument.")
    record = {'step': int(step)}
    record.update((k, _scalar(k, v)) for k, v in scalars.items())
    append_jsonl(self.path, record)
    if self._tb is not None:
      for name, value in record.items():
        if name != 'step':
          self._tb.add_scalar(name, value, global_step=record['step'])
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer."""
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def progress_bar(total: int,
                 desc: str,
                 *,
                 enabled: bool | None = None,
                 unit: str = 'img') -> tqdm.tqdm:
  """A tqdm bar showing throughput (e.g. img/s) and ETA on stderr.

  Advance it by the number of items processed, e.g.
  ``bar.update(batch_size)``, and show the loss with
  ``bar.set_postfix(loss=...)``.

  Args:
    total: number of items (images) the bar counts to.
    desc: label in front of the bar.
    enabled: None shows the bar only when stderr is a terminal (not in log
      files); a disabled bar accepts the same calls and does nothing.
    unit: item name used in the rate, e.g. ``'img'`` gives ``img/s``.
  """
  return tqdm.tqdm(
      total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
      file=sys.stderr, disable=None if enabled is None else not enabled)
