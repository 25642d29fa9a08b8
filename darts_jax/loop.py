"""Pieces shared by the search and retrain loops: metrics between logs, evaluation over a split, divergence, and
multi-host agreement."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from darts_jax import parallel

EvalBatch = tuple[np.ndarray, np.ndarray, np.ndarray]  # (images, labels, float mask: 1 for real examples)


class NonFiniteLossError(FloatingPointError):
  """Training diverged: a loss, gradient or parameter is NaN or infinite."""


class EpochMetrics:
  """The per-step metrics of an epoch, kept on device until `flush` fetches them.

  Reading them every ``log_every_steps`` steps instead of every step keeps the host from waiting on the device.
  The epoch's running sums of loss and accuracy live on the host and go into checkpoints (`position`), so a resumed
  epoch reports the same means as an uninterrupted one. Step metrics must hold ``loss``, ``accuracy`` and the
  boolean ``finite``; pmean'd metrics are equal on every device, so device 0's are read.
  """

  def __init__(self, loss_sum: float = 0.0, accuracy_sum: float = 0.0, steps: int = 0, *,
               divergence_advice: str = 'Lower the learning rate or change the seed.'):
    self.loss_sum, self.accuracy_sum, self.steps = loss_sum, accuracy_sum, steps
    self._advice = divergence_advice
    self._pending: list[dict[str, jax.Array]] = []

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self._pending.append(metrics)

  def flush(self, last_step: int) -> dict[str, float]:
    """Fetches the pending steps (the last being global step `last_step`) and returns their means.

    Raises:
      NonFiniteLossError: naming the first step whose metrics are not ``finite``.
    """
    fetched = jax.device_get(self._pending)  # one transfer for the whole interval
    self._pending = []
    values = {k: np.asarray([np.asarray(m[k]).reshape(-1)[0] for m in fetched]) for k in fetched[0]}
    finite = values.pop('finite')
    if not finite.all():
      first = int(np.argmin(finite))
      shown = ', '.join(f'{k}={values[k][first]:.4g}' for k in ('loss', 'grad_norm', 'arch_grad_norm') if k in values)
      raise NonFiniteLossError(
          f'Non-finite loss, gradient or parameters at step {last_step - len(finite) + 1 + first} ({shown}): '
          f'training diverged. This state was not checkpointed; the last checkpoint is intact. {self._advice}')
    self.loss_sum += float(values['loss'].sum())
    self.accuracy_sum += float(values['accuracy'].sum())
    self.steps += len(finite)
    return {k: float(v.mean()) for k, v in values.items()}

  def position(self) -> dict[str, float]:
    return {'loss_sum': self.loss_sum, 'accuracy_sum': self.accuracy_sum, 'steps': self.steps}


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[EvalBatch]:
  """This process's slices of global batches covering every example once, in order.

  The last global batch is padded to `batch_size` by repeating the last example, with ``mask`` 0 for the padding.
  """
  local = batch_size // process_count
  for start in range(0, len(images), batch_size):
    index = start + process_index * local + np.arange(local)
    mask = (index < len(images)).astype(np.float32)
    index = np.minimum(index, len(images) - 1)
    yield images[index], labels[index], mask


def evaluate(p_eval: Callable[[Any, EvalBatch], dict[str, jax.Array]], replicated_state: Any, images: np.ndarray,
             labels: np.ndarray, batch_size: int, axis_name: str) -> dict[str, float]:
  """Mean ``loss`` and ``accuracy`` over all of (`images`, `labels`), split over processes and devices.

  `p_eval` is a pmapped eval step returning the psum'd ``loss_sum``, ``correct`` and ``count`` of a masked batch.
  """
  sums = [p_eval(replicated_state, parallel.shard(batch, axis_name))
          for batch in eval_batches(images, labels, batch_size, jax.process_index(), jax.process_count())]
  # psum'd over devices, so every device holds the totals; device 0's are read.
  totals = {k: float(np.sum([np.asarray(s[k]).reshape(-1)[0] for s in jax.device_get(sums)])) for k in sums[0]}
  return {'loss': totals['loss_sum'] / totals['count'], 'accuracy': totals['correct'] / totals['count']}


def agree(decision: bool) -> bool:
  """Process 0's `decision`, on every process (checkpoint saves are collective)."""
  if jax.process_count() == 1:
    return decision
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(decision)))
