"""The one training loop: every task (search, retraining, ...) plugs its step, batches and evaluation into `train`.

A task is a `Task`: a jittable (usually data-parallel) step, the batches of an epoch from any position, an end-of-epoch
evaluation and, optionally, artifacts written after each epoch. `train` owns everything else, the same for every
task:

* epochs and the resume position (epoch, step in the epoch, the epoch's running sums, the unlogged part of the
  interval), restored from the latest checkpoint of ``workdir/checkpoints``;
* prefetching, the progress bar, interval records every ``log_every_steps`` steps (``images_per_s`` added) and one
  epoch record per epoch (``epoch``, ``train_loss``, ``train_accuracy``, the task's evaluation, ``epoch_time_s``) in
  ``metrics.jsonl``/TensorBoard, and the task's own JSONL logs truncated on resume;
* checkpoints after every epoch and every ``checkpoint_every_minutes`` (at a log step, once its metrics are known to
  be finite), all processes agreeing;
* early stopping: the task's `should_stop` may end the run after an epoch (`Outcome.stop_reason`);
* divergence (`NonFiniteLossError`, the last checkpoint left intact) and preemption: on SIGTERM or SIGINT the current
  step finishes, a checkpoint of it is saved, and `Preempted` is raised (the CLIs exit with `PREEMPTED_EXIT_CODE`);
  a second signal exits at once.

Before anything is written, `prepare_workdir` refuses a workdir that is a file or whose ``config.json`` differs from
the new configuration in a key that may not change on resume (`RESUMABLE_KEYS` may).

Since data order depends only on (seed, epoch) and random draws only on (seed, step), a run resumed from any
checkpoint, including a preemption's, computes exactly what an uninterrupted one does (bit for bit on CPU), metrics
included.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from darts_jax.data import Prefetcher, eval_batches
from darts_jax.training import config_utils, parallel, reporting
from darts_jax.training.checkpointing import Checkpointer

PyTree = Any
Metrics = dict[str, jax.Array]
EvalBatch = tuple[np.ndarray, np.ndarray, np.ndarray]  # (images, labels, float mask: 1 for real examples)

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; running the command again continues.
RESUMABLE_KEYS = frozenset({'log_every_steps', 'progress', 'checkpoint_every_minutes', 'keep_checkpoints', 'data.dir',
                            'compilation_cache_dir', 'parallel_impl'})
"""Config keys that may differ between a run and its resumption: they change how a run is logged, saved, found or
run in parallel, never what it computes."""
EVAL_IN_FLIGHT = 2
"""How many evaluation programs may be queued behind the running one (see `evaluate_batches`)."""


class NonFiniteLossError(FloatingPointError):
  """Training diverged: a loss, gradient or parameter is NaN or infinite."""


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint of its last step; running it again resumes there."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f'{signal_name} received: stopped after step {step} and saved a checkpoint of it; run the same '
                     'command again to resume.')
    self.step = step


class ConfigMismatchError(ValueError):
  """A workdir is resumed with a configuration that would change what the run computes."""


# ---------------------------------------------------------------------------------------------------------------------
# The workdir.


def _flat_json(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      flat.update(_flat_json(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def prepare_workdir(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict,
                    resumable_keys: frozenset[str] = RESUMABLE_KEYS) -> Path:
  """Checks that `workdir` can hold (or resume) the run of `config`, and creates it if needed.

  Nothing else is written, and nothing at all when a check fails.

  Raises:
    NotADirectoryError: `workdir` exists and is not a directory.
    ConfigMismatchError: ``workdir/config.json`` differs from `config` in keys outside `resumable_keys`; the
      message lists each key with its old and new value.
    ValueError: ``config.json`` is unreadable.
    OSError: the workdir cannot be created (e.g. `PermissionError`), with a message naming it.
  """
  workdir = Path(workdir).expanduser()
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(f'--workdir {workdir} is a file, not a directory; pass a new or an existing run '
                             'directory.')
  path = workdir / CONFIG_FILE
  if path.is_file():
    _check_same_config(path, config, resumable_keys)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise type(e)(f'cannot create the workdir {workdir}: {e.strerror}') from None
  return workdir


def _check_same_config(path: Path, config: ml_collections.ConfigDict, resumable_keys: frozenset[str]) -> None:
  workdir = path.parent
  try:
    old = _flat_json(json.loads(path.read_text()))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} cannot be read ({e}); restore it or use a new workdir.') from None
  new = _flat_json(json.loads(config_utils.config_to_json(config)))
  changed = sorted(k for k in old.keys() | new.keys()
                   if k not in resumable_keys and (k not in old or k not in new or old[k] != new[k]))

  def shown(flat: dict[str, Any], key: str) -> str:
    return json.dumps(flat[key]) if key in flat else '(absent)'

  if changed:
    diffs = '; '.join(f'{k}: {shown(old, k)} -> {shown(new, k)}' for k in changed)
    raise ConfigMismatchError(
        f'{workdir} holds a run with another configuration ({diffs}). Resume it with its configuration ({path}) '
        f'or use a new workdir; only {", ".join(sorted(resumable_keys))} may change on resume.')


# ---------------------------------------------------------------------------------------------------------------------
# Metrics between logs.


class EpochMetrics:
  """The per-step metrics of an epoch, kept on device until they are fetched.

  Reading them every ``log_every_steps`` steps instead of every step keeps the host from waiting on the device.
  `flush` fetches the interval's steps and returns their means; `fetch` only checks them (before a checkpoint
  between log steps). The epoch's running sums of loss and accuracy and the fetched values of the current interval
  go into checkpoints (`position`), so a resumed epoch reports the same means as an uninterrupted one. Step metrics
  must hold ``loss``, ``accuracy`` and the boolean ``finite``; pmean'd metrics are equal on every device, so device
  0's are read.
  """

  def __init__(self, loss_sum: float = 0.0, accuracy_sum: float = 0.0, steps: int = 0,
               interval: Mapping[str, list[float]] | None = None, *,
               divergence_advice: str = 'Lower the learning rate or change the seed.'):
    self.loss_sum, self.accuracy_sum, self.steps = loss_sum, accuracy_sum, steps
    self._advice = divergence_advice
    self._pending: list[Metrics] = []
    # float32, as fetched, so that means over an interval split by a resume round as the uninterrupted ones.
    self._interval = {k: np.asarray(v, np.float32) for k, v in (interval or {}).items()}

  def add(self, metrics: Metrics) -> None:
    self._pending.append(metrics)

  def fetch(self, last_step: int) -> None:
    """Fetches the pending steps (the last being global step `last_step`) into the interval.

    Raises:
      NonFiniteLossError: naming the first step whose metrics are not ``finite``.
    """
    if not self._pending:
      return
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
    for k, v in values.items():
      self._interval[k] = np.concatenate([self._interval[k], v]) if k in self._interval else v

  def flush(self, last_step: int) -> dict[str, float]:
    """Fetches the pending steps and returns the means over the interval since the last flush (`fetch` raises)."""
    self.fetch(last_step)
    interval, self._interval = self._interval, {}
    self.loss_sum += float(interval['loss'].sum())
    self.accuracy_sum += float(interval['accuracy'].sum())
    self.steps += len(interval['loss'])
    return {k: float(v.mean()) for k, v in interval.items()}

  def means(self) -> dict[str, float]:
    """``train_loss`` and ``train_accuracy``: the means over the epoch's flushed steps."""
    return {'train_loss': self.loss_sum / self.steps, 'train_accuracy': self.accuracy_sum / self.steps}

  def position(self) -> dict[str, Any]:
    return {'loss_sum': self.loss_sum, 'accuracy_sum': self.accuracy_sum, 'steps': self.steps,
            'interval': {k: v.tolist() for k, v in self._interval.items()}}


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation over a split and multi-host agreement.


def evaluate(p_eval: Callable[[Any, EvalBatch], Metrics], replicated_state: Any, images: np.ndarray,
             labels: np.ndarray, batch_size: int, axis_name: str) -> dict[str, float]:
  """Mean ``loss`` and ``accuracy`` over all of (`images`, `labels`), split over processes and devices.

  `p_eval` is a data-parallel (`parallel.data_parallel`) eval step returning the psum'd ``loss_sum``, ``correct`` and ``count`` of a masked batch,
  each a scalar per device, or an array per device (e.g. one value per seed of a k-seed search): then the
  means are numpy arrays of that shape.
  """
  batches = eval_batches(images, labels, batch_size, jax.process_index(), jax.process_count())
  return evaluate_batches(p_eval, replicated_state, batches, axis_name)


def evaluate_batches(p_eval: Callable[[Any, EvalBatch], Metrics], replicated_state: Any, batches: Iterable[EvalBatch],
                     axis_name: str) -> dict[str, float]:
  """Mean ``loss`` and ``accuracy`` over this process's masked `batches` (as `eval_batches` gives them; streamed,
  e.g. decoded JPEGs), and ``X`` for every further ``correct_X`` sum of `p_eval` (``top5``: top-5 accuracy)."""
  sums = []
  for batch in batches:
    sums.append(p_eval(replicated_state, parallel.shard(batch, axis_name)))
    # Dispatching every batch before reading any can starve XLA:CPU's collectives: with many programs queued on
    # more simulated devices than cores, an all-reduce rendezvous waits for a participant that never gets to run
    # and the process aborts after 40 s. Waiting (without a transfer) for the program EVAL_IN_FLIGHT back bounds
    # the queue and still keeps the devices busy.
    if len(sums) > EVAL_IN_FLIGHT:
      jax.block_until_ready(sums[-1 - EVAL_IN_FLIGHT])
  # psum'd over devices, so every device holds the totals; device 0's are read, all in one transfer.
  totals = {k: np.sum([np.asarray(s[k])[0] for s in jax.device_get(sums)], axis=0).astype(np.float64)
            for k in sums[0]}
  means = {'loss': totals['loss_sum'] / totals['count'], 'accuracy': totals['correct'] / totals['count']}
  means.update({k[len('correct_'):]: v / totals['count'] for k, v in totals.items()
                if k.startswith('correct_')})
  return {k: float(v) if np.ndim(v) == 0 else v for k, v in means.items()}


def agree(decision: bool) -> bool:
  """Process 0's `decision`, on every process (checkpoint saves are collective)."""
  if jax.process_count() == 1:
    return decision
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(decision)))


# ---------------------------------------------------------------------------------------------------------------------
# Preemption.


class PreemptionSignals:
  """While active, SIGTERM and SIGINT request a stop instead of killing the process; a second signal exits at once.

  `requested` is polled between steps; in a multi-process run a signal to any process stops them all at the same
  step. Handlers can only be installed from the main thread; elsewhere (e.g. a loop run in a worker thread) the
  default handlers stay.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: str | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:
      sys.stderr.write(f'{name} received again: exiting at once, without a checkpoint of the current step.\n')
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.received = name
    sys.stderr.write(f'{name} received: finishing the current step and saving a checkpoint; send it again to exit '
                     'at once.\n')

  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self.received is not None
    # Any process's signal stops all of them: saving is collective.
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.received is not None))))

  def __enter__(self) -> PreemptionSignals:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------------------------------
# The task interface and the loop.


@dataclasses.dataclass(frozen=True)
class Task:
  """What a training task plugs into `train`.

  Attributes:
    state: the freshly initialised state on the host: where a new run starts, and the target a checkpoint is
      restored into. It holds the step counter as ``state.step``.
    step: ``step(replicated_state, device_batch, epoch) -> (replicated_state, metrics)``, usually data-parallel; metrics
      hold at least ``loss``, ``accuracy`` and the boolean ``finite``.
    batches: ``batches(epoch, start) -> device batches``, the epoch's batches from index `start` on (prefetched by
      the loop).
    steps_per_epoch: the number of batches `batches` yields from 0; a function of the epoch where it varies (the
      language models' random BPTT lengths).
    evaluate: ``evaluate(epoch, step, replicated_state, state) -> entries`` of the epoch record after the training
      means (validation/test metrics, ``lr``, ...); called on every process (evaluation is collective), `state`
      being the host copy.
    after_epoch: ``after_epoch(epoch, step, state, record)`` writes the task's per-epoch artifacts; process 0 only,
      after the record is logged.
    should_stop: ``should_stop(epoch, step, state, record) -> reason or None``, early stopping: a reason ends the
      run after this epoch, on every process. Process 0 only, after `after_epoch`; the reason is saved with the
      epoch's checkpoint, so running the run again does not train on.
    interval_entries: ``interval_entries(epoch) -> entries`` added to every interval record.
    update_state: ``update_state(epoch, state, record) -> state``, the host state to go on with after the epoch's
      evaluation (e.g. NT-ASGD's switch to averaging in the language-model retraining); called on every process,
      so it must be a pure function of its arguments. The epoch's checkpoint holds its result.
    compile_ahead: ``compile_ahead(replicated_state)`` starts compiling the programs of `evaluate` in the
      background (`parallel.DataParallel.compile_in_background`); called once per run, after the first step is
      dispatched, so that they compile while the first epoch's steps run instead of after them.
    logs: the task's own JSONL files in the workdir (records with a ``step``); on resume the records after the
      restored checkpoint are dropped, as from ``metrics.jsonl``.
    divergence_advice: the last sentence of the divergence error.
  """
  state: PyTree
  step: Callable[[PyTree, Any, int], tuple[PyTree, Metrics]]
  batches: Callable[[int, int], Iterable[Any]]
  steps_per_epoch: int | Callable[[int], int]
  evaluate: Callable[[int, int, PyTree, PyTree], dict[str, Any]]
  after_epoch: Callable[[int, int, PyTree, dict[str, Any]], None] = lambda epoch, step, state, record: None
  should_stop: Callable[[int, int, PyTree, dict[str, Any]], str | None] = lambda epoch, step, state, record: None
  interval_entries: Callable[[int], dict[str, Any]] = lambda epoch: {}
  update_state: Callable[[int, PyTree, dict[str, Any]], PyTree] | None = None
  compile_ahead: Callable[[PyTree], None] = lambda replicated_state: None
  logs: tuple[str, ...] = ()
  divergence_advice: str = 'Lower the learning rate or change the seed.'


@dataclasses.dataclass(frozen=True)
class Outcome:
  """The end of `train`: the final host `state`, its `step`, the last epoch `record` (None if no epoch ran),
  `wall_time_s`, the time spent training over all resumes, and `stop_reason`, the reason the task's `should_stop`
  gave to stop early (None: all epochs ran)."""
  state: PyTree
  step: int
  record: dict[str, Any] | None
  wall_time_s: float
  stop_reason: str | None = None


def seconds_since_process_start() -> float | None:
  """Seconds since this process started (Linux: ``/proc``; None elsewhere), imports and setup included: what a user
  waits from the command."""
  try:
    with open('/proc/self/stat') as stat, open('/proc/uptime') as uptime:
      start_ticks = int(stat.read().rsplit(')', 1)[1].split()[19])  # field 22, `starttime`, in clock ticks
      return float(uptime.read().split()[0]) - start_ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    return None


def train(task: Task, config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> Outcome:
  """Runs (or resumes) `task` for ``config.num_epochs`` epochs in `workdir` (see the module docstring).

  Reads ``config.num_epochs``, ``batch_size``, ``log_every_steps``, ``checkpoint_every_minutes`` (0: only after
  epochs), ``keep_checkpoints`` and ``progress``. Call `prepare_workdir` first.

  Raises:
    NonFiniteLossError: training diverged; the checkpoints hold the last good state.
    Preempted: a signal stopped the run after saving a checkpoint.
  """
  run_start = time.monotonic()
  workdir = Path(workdir)
  is_main = jax.process_index() == 0
  batch_size = config.batch_size
  with Checkpointer(workdir / CHECKPOINT_DIR, max_to_keep=config.keep_checkpoints,
                    save_interval_minutes=config.checkpoint_every_minutes or None) as checkpointer, \
       PreemptionSignals() as signals:
    position = {'epoch': 0, 'step_in_epoch': 0, 'wall_time_s': 0.0, 'record': None, 'stop_reason': None,
                **EpochMetrics().position()}
    state, last_saved = task.state, 0
    if (restored := checkpointer.restore_latest(state)) is not None:
      last_saved, state, meta = restored
      position.update(meta)
      logging.info('Resuming from step %d (epoch %d, step %d of the epoch).', last_saved, position['epoch'],
                   position['step_in_epoch'])
    wall_time_before, record, stop_reason = position['wall_time_s'], position['record'], position['stop_reason']

    writer = None
    if is_main:
      workdir.mkdir(parents=True, exist_ok=True)
      (workdir / CONFIG_FILE).write_text(config_utils.config_to_json(config) + '\n')
      writer = reporting.MetricsWriter(workdir, resume_step=last_saved)
      for name in task.logs:
        reporting.truncate_jsonl(workdir / name, last_saved)

    def checkpoint(host_state: PyTree, step: int, epoch: int, step_in_epoch: int, metrics: EpochMetrics) -> None:
      meta = {'epoch': epoch, 'step_in_epoch': step_in_epoch, **metrics.position(), 'record': record,
              'stop_reason': stop_reason, 'wall_time_s': wall_time_before + time.monotonic() - run_start}
      if checkpointer.save(step, jax.device_get(host_state), meta):
        logging.info('Saved checkpoint of step %d.', step)

    def stop(host_state: PyTree, step: int, epoch: int, step_in_epoch: int, metrics: EpochMetrics) -> None:
      metrics.fetch(step)  # never checkpoint a diverged state
      checkpoint(host_state, step, epoch, step_in_epoch, metrics)  # a no-op if this step is saved already
      raise Preempted(step, signals.received or 'a signal to another process')

    r_state = parallel.replicate(state, parallel.AXIS_NAME)
    step = int(state.step)
    try:
      epochs = range(position['epoch'], config.num_epochs) if stop_reason is None else ()  # stopped early: stays so
      for epoch in epochs:
        steps_per_epoch = task.steps_per_epoch(epoch) if callable(task.steps_per_epoch) else task.steps_per_epoch
        resumed = epoch == position['epoch']
        start = position['step_in_epoch'] if resumed else 0
        sums = {k: position[k] for k in EpochMetrics().position()} if resumed else {}
        metrics = EpochMetrics(**sums, divergence_advice=task.divergence_advice)
        epoch_start = interval_start = time.monotonic()
        interval_images = 0
        previous = None
        bar = reporting.progress_bar(steps_per_epoch * batch_size, f'epoch {epoch + 1}/{config.num_epochs}',
                                     enabled=None if config.progress else False)
        bar.update(start * batch_size)
        with bar, Prefetcher(task.batches(epoch, start)) as batches:
          for step_in_epoch, batch in enumerate(batches, start + 1):
            r_state, step_metrics = task.step(r_state, batch, epoch)
            if previous is None and epoch == epochs[0]:  # the step's program is compiled (or loaded) and running
              since_start = seconds_since_process_start()
              logging.info('First step started %.1f s into the run%s.', time.monotonic() - run_start,
                           '' if since_start is None else f' ({since_start:.1f} s after the command started)')
              task.compile_ahead(r_state)
            step += 1
            metrics.add(step_metrics)
            # Waiting for the previous step (finished, or about to) keeps one step queued behind the running one:
            # the device never idles, and the bar shows real progress.
            if previous is not None:
              jax.block_until_ready(previous)
            previous = step_metrics
            bar.update(batch_size)
            interval_images += batch_size
            last_of_epoch = step_in_epoch == steps_per_epoch
            if step % config.log_every_steps == 0 or last_of_epoch:
              summary = metrics.flush(step)
              now = time.monotonic()
              summary['images_per_s'] = interval_images / (now - interval_start)
              summary.update(task.interval_entries(epoch))
              interval_start, interval_images = now, 0
              bar.set_postfix(loss=f'{summary["loss"]:.3f}', acc=f'{summary["accuracy"]:.3f}')
              if writer:
                writer.write(step, summary)
              # Only after a flush: the metrics up to this step are known to be finite.
              if not last_of_epoch and agree(checkpointer.should_save_by_time()):
                checkpoint(parallel.unreplicate(r_state), step, epoch, step_in_epoch, metrics)
            if signals.requested():
              stop(parallel.unreplicate(r_state), step, epoch, step_in_epoch, metrics)

        state = parallel.unreplicate(r_state)
        record = {'epoch': epoch + 1, **metrics.means(), **task.evaluate(epoch, step, r_state, state),
                  'epoch_time_s': time.monotonic() - epoch_start}
        if task.update_state is not None:
          state = task.update_state(epoch, state, record)
          r_state = parallel.replicate(state, parallel.AXIS_NAME)
        logging.info('Epoch %d/%d: %s', epoch + 1, config.num_epochs,
                     ', '.join(f'{k} {v:.4g}' for k, v in record.items() if k != 'epoch'))
        reason = None
        if writer:
          writer.write(step, record)
          task.after_epoch(epoch, step, state, record)
          reason = task.should_stop(epoch, step, state, record)
        if agree(reason is not None):
          # Only process 0 knows the reason; its checkpoint metadata is the one saved.
          stop_reason = reason or 'stopped early by process 0'
          logging.info('Stopping after epoch %d: %s', epoch + 1, stop_reason)
        checkpoint(state, step, epoch + 1, 0, EpochMetrics())
        if stop_reason is not None:
          break
        if signals.requested():  # received during the evaluation: the epoch's checkpoint is the one to resume
          stop(state, step, epoch + 1, 0, EpochMetrics())
    except Preempted as e:
      logging.warning('%s', e)
      raise
    finally:
      if writer:
        writer.close()
  return Outcome(state=parallel.unreplicate(r_state), step=step, record=record,
                 wall_time_s=wall_time_before + time.monotonic() - run_start, stop_reason=stop_reason)
