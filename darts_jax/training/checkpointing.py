"""Checkpointing of a training run with orbax.

A checkpoint of step ``s`` lives in ``<directory>/<s>`` and holds two items:

* ``state``: a pytree of arrays -- params, batch_stats, architecture
  parameters, optimizer states (optax namedtuples), the step, PRNG keys.
  It is restored into the tree structure of a *target* state (typically the
  freshly initialised one), so optax namedtuples come back as the same
  namedtuples. Typed PRNG keys (``jax.random.key``) are stored as their raw
  ``jax.random.key_data`` and rewrapped with the target key's implementation.
* ``meta``: a small JSON-able dict with the position in the data stream, e.g.
  ``{'epoch': 3, 'step_in_epoch': 120}``.

The checkpoint holds the *single-device* state: a caller training with
``jax.pmap`` unreplicates it (``jax.tree.map(lambda x: x[0], state)``) before
saving and replicates it again after restoring.

Saving is synchronous and atomic: orbax writes into a temporary directory
(``<s>.orbax-checkpoint-tmp-*``) and renames it to ``<s>`` once complete, so a
process killed during ``save`` leaves at most a temporary directory, which is
never taken for a checkpoint and is removed when the directory is next opened
for writing (a ``read_only`` Checkpointer, e.g. evaluating a run in progress,
leaves it alone).
A checkpoint damaged afterwards (a file truncated or deleted) is detected when
restoring, and the previous checkpoint is used instead.

In a multi-host run every process creates the ``Checkpointer`` and calls
``save``/``restore_latest`` with the same arguments; orbax lets only the
primary process write.
"""

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


def _is_prng_key(x: Any) -> bool:
  return hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(state: PyTree) -> PyTree:
  """Replaces typed PRNG keys by their raw uint32 data.

  Recent orbax stores typed keys itself, but orbax 0.11 cannot restore them
  (google/orbax#2540); raw data keeps checkpoints portable across versions.
  """
  # On the host: orbax refuses to save a process's device-local jax.Array in a multi-process run.
  return jax.tree.map(
      lambda x: np.asarray(jax.random.key_data(x)) if _is_prng_key(x) else x,
      state)


def _abstract(target: PyTree) -> PyTree:
  """Shape/dtype/sharding description of the stored form of `target`."""

  def leaf(x):
    if _is_prng_key(x):
      if isinstance(x, jax.ShapeDtypeStruct):
        raise TypeError(
            'The restore target holds an abstract PRNG key; pass a concrete '
            'key (e.g. the freshly initialised state) so that its '
            'implementation can be read from it.')
      x = jax.random.key_data(x)
    return ocp.utils.to_shape_dtype_struct(x)

  return jax.tree.map(leaf, target)


def _data_to_keys(restored: PyTree, target: PyTree) -> PyTree:
  """Inverse of `_keys_to_data`, using the key implementations in `target`."""
  return jax.tree.map(
      lambda t, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
      if _is_prng_key(t) else r, target, restored)


class Checkpointer:
  """Saves and restores ``(step, state, meta)`` checkpoints of one run.

  Typical use in a training loop::

    ckpt = Checkpointer(workdir / 'checkpoints', save_interval_minutes=10)
    restored = ckpt.restore_latest(init_state)
    if restored is not None:
      step, state, meta = restored
    ...
    if ckpt.should_save_by_time() or end_of_epoch:
      ckpt.save(step, state, {'epoch': epoch, 'step_in_epoch': i})
    ...
    ckpt.close()
  """

  def __init__(self,
               directory: str | Path,
               *,
               max_to_keep: int = 3,
               save_interval_minutes: float | None = None,
               read_only: bool = False,
               clock: Callable[[], float] = time.monotonic):
    """Opens (creating it if needed) the checkpoint directory.

    Args:
      directory: where the step directories are written.
      max_to_keep: number of most recent checkpoints kept; older ones are
        deleted after each save.
      save_interval_minutes: period of `should_save_by_time`; None disables
        time-based saving.
      read_only: only restore: nothing in `directory` is created, cleaned up
        or deleted (neither temporary directories nor unreadable
        checkpoints), so a run that is still training there is left alone;
        `save` raises.
      clock: monotonic clock in seconds (replaceable in tests).
    """
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1, got {max_to_keep}.')
    if save_interval_minutes is not None and save_interval_minutes <= 0:
      raise ValueError('save_interval_minutes must be positive or None, got '
                       f'{save_interval_minutes}.')
    self.directory = Path(directory).resolve()
    self.read_only = read_only
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,
        # Synchronous saves: when save() returns the checkpoint is complete
        # and renamed into place, so a later SIGKILL cannot damage it.
        enable_async_checkpointing=False,
        # Leftovers of a save killed before its atomic rename (or, seen by a
        # reader, of a save in progress: left alone).
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._save_interval_s = (None if save_interval_minutes is None else
                             60.0 * save_interval_minutes)
    self._clock = clock
    self._last_save_time = clock()

  def should_save_by_time(self) -> bool:
    """True when `save_interval_minutes` have passed since the last save.

    The interval is counted from the creation of the Checkpointer until the
    first save. In a multi-host run the processes must agree on the decision
    (e.g. take process 0's answer), since `save` is a collective operation.
    """
    return (self._save_interval_s is not None and
            self._clock() - self._last_save_time >= self._save_interval_s)

  def save(self, step: int, state: PyTree, meta: Mapping[str, Any]) -> bool:
    """Writes the checkpoint of `step` and returns once it is complete.

    Args:
      step: the global training step; checkpoint directories are named by it.
      state: single-device pytree of arrays (see the module docstring).
      meta: JSON-able dict, e.g. ``{'epoch': 3, 'step_in_epoch': 120}``.

    Returns:
      True if written; False (nothing written) when a checkpoint of a step
      >= `step` already exists, e.g. an end-of-epoch save at the step a
      time-based save has just written.

    Raises:
      PermissionError: the Checkpointer was opened `read_only`.
    """
    if self.read_only:
      raise PermissionError(f'{self.directory} was opened read-only.')
    saved = self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_keys_to_data(state)),
            meta=ocp.args.JsonSave(dict(meta))))
    if saved:
      self._last_save_time = self._clock()
    return saved

  def restore_latest(
      self, target: PyTree) -> tuple[int, PyTree, dict[str, Any]] | None:
    """Restores the newest readable checkpoint.

    A checkpoint that cannot be read (a file truncated or deleted in it) is
    skipped with a warning and the previous one is tried. Once an older
    checkpoint has been restored the unreadable newer ones are deleted (not
    when `read_only`): the resumed run will save those steps again, and orbax
    refuses to save a step that is not newer than the latest existing one.

    Args:
      target: a state with the structure, shapes and dtypes of the saved one,
        typically the freshly initialised state. Leaves may be
        `jax.ShapeDtypeStruct` leaves, except typed PRNG keys, whose implementation
        is read from the concrete key. Arrays are restored with the target's
        sharding.

    Returns:
      ``(step, state, meta)``, or None if the directory has no checkpoint.

    Raises:
      ValueError: checkpoints exist but none can be restored into `target`
        (e.g. the model configuration differs from the saved run's).
    """
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target)),
        meta=ocp.args.JsonRestore())
    unreadable = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(step, args=args)
      # orbax/tensorstore report damaged files with many exception types
      # (ValueError, OSError, KeyError, json.JSONDecodeError, ...).
      except Exception as e:  # pylint: disable=broad-exception-caught
        logging.warning(
            'Checkpoint %s/%d cannot be restored (%s: %.300s); trying the '
            'previous one.', self.directory, step, type(e).__name__, e)
        unreadable.append((step, e))
        continue
      for bad_step, _ in [] if self.read_only else unreadable:
        logging.warning('Deleting unreadable checkpoint %s/%d.',
                        self.directory, bad_step)
        self._manager.delete(bad_step)
      return step, _data_to_keys(restored.state, target), dict(restored.meta)
    if unreadable:
      steps = [s for s, _ in unreadable]
      raise ValueError(
          f'None of the checkpoints {steps} in {self.directory} can be '
          'restored into the given target state; check that the run '
          'configuration matches the one that wrote them, or use a new '
          'directory to start afresh.') from unreadable[0][1]
    return None

  def close(self) -> None:
    """Releases orbax resources; call once when training ends."""
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
