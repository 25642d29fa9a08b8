"""Tests of the training skeleton (`darts_jax.training.loop`) on a toy task: linear regression by SGD.

The toy task compiles in milliseconds, so resume, preemption (real signals, in this process and in a subprocess),
divergence and the workdir checks are tested here generically; tests/test_search*.py and tests/test_retrain.py check
the same behaviour through the real tasks and CLIs.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from darts_jax.training import loop, parallel, reporting

STEPS_PER_EPOCH = 5
TRUE_W = np.arange(1.0, 5.0, dtype=np.float32)


class ToyState(flax.struct.PyTreeNode):
  step: jax.Array
  w: jax.Array


def toy_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({
      'seed': 0, 'num_epochs': 3, 'batch_size': 8, 'learning_rate': 0.05, 'log_every_steps': 2,
      'checkpoint_every_minutes': 0.0, 'keep_checkpoints': 3, 'progress': False, 'compilation_cache_dir': '',
      'data': {'dir': ''}})
  config.update(overrides)
  return config


def toy_task(config: ml_collections.ConfigDict, before_step=None, on_evaluate=None) -> loop.Task:
  """SGD on ``0.5·mean((x·w − y)²)``; the batches of (epoch, index) depend only on the seed, as the real tasks'.
  ``before_step(n)`` runs in the main thread before the n-th step of this run, ``on_evaluate(epoch)`` in each
  epoch's evaluation (the tests send signals from them)."""
  def step(state, batch):
    x, y = batch
    loss, grad = jax.value_and_grad(lambda w: 0.5 * jnp.mean((x @ w - y) ** 2))(state.w)
    loss, grad = jax.lax.pmean((loss, grad), parallel.AXIS_NAME)
    w = state.w - config.learning_rate * grad
    metrics = {'loss': loss, 'accuracy': -loss, 'finite': jnp.isfinite(loss) & jnp.all(jnp.isfinite(w))}
    return state.replace(step=state.step + 1, w=w), metrics

  p_step = jax.pmap(step, axis_name=parallel.AXIS_NAME)

  def batches(epoch, start):
    for index in range(start, STEPS_PER_EPOCH):
      rng = np.random.default_rng([config.seed, epoch, index])
      x = rng.normal(size=(config.batch_size, 4)).astype(np.float32)
      yield parallel.shard((x, x @ TRUE_W), parallel.AXIS_NAME)

  def evaluate(epoch, step, r_state, state):
    if on_evaluate is not None:
      on_evaluate(epoch)
    return {'w_error': float(np.abs(state.w - TRUE_W).max())}

  calls = 0

  def run_step(r_state, batch, epoch):
    nonlocal calls
    calls += 1
    if before_step is not None:
      before_step(calls)
    return p_step(r_state, batch)

  state = ToyState(step=jnp.zeros((), jnp.int32), w=jnp.zeros(4, jnp.float32))
  return loop.Task(state=state, step=run_step, batches=batches,
                   steps_per_epoch=STEPS_PER_EPOCH, evaluate=evaluate)


def run_toy(workdir, config=None, before_step=None, on_evaluate=None) -> loop.Outcome:
  config = config or toy_config()
  return loop.train(toy_task(config, before_step, on_evaluate), config, loop.prepare_workdir(workdir, config))


def _records(workdir, *, epochs: bool):
  return [{k: v for k, v in r.items() if k not in ('images_per_s', 'epoch_time_s')}
          for r in reporting.read_jsonl(Path(workdir) / 'metrics.jsonl') if ('epoch' in r) == epochs]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('toy') / 'reference'
  return workdir, run_toy(workdir)


def test_train_logs_intervals_and_epochs_and_checkpoints_every_epoch(reference):
  workdir, outcome = reference
  assert outcome.step == 3 * STEPS_PER_EPOCH
  assert [r['step'] for r in _records(workdir, epochs=False)] == [2, 4, 5, 6, 8, 10, 12, 14, 15]
  epochs = _records(workdir, epochs=True)
  assert [(r['epoch'], r['step']) for r in epochs] == [(1, 5), (2, 10), (3, 15)]
  assert list(epochs[0]) == ['step', 'epoch', 'train_loss', 'train_accuracy', 'w_error']
  assert epochs[-1]['w_error'] < epochs[0]['w_error']
  assert outcome.record['w_error'] == epochs[-1]['w_error']
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()) == [5, 10, 15]
  assert json.loads((workdir / 'config.json').read_text())['num_epochs'] == 3


def test_sigterm_mid_interval_saves_that_step_and_resume_is_exact(reference, tmp_path):
  reference_dir, uninterrupted = reference

  def sigterm_during_step_7(step):
    if step == 7:  # epoch 2, mid-interval (steps 7-8 are logged at 8)
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(loop.Preempted, match='SIGTERM received: stopped after step 7'):
    run_toy(tmp_path, before_step=sigterm_during_step_7)
  assert max(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == 7
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
  resumed = run_toy(tmp_path)
  np.testing.assert_array_equal(resumed.state.w, uninterrupted.state.w)
  # The unlogged step 7 is carried in the checkpoint: the interval record of step 8 is the uninterrupted one.
  assert _records(tmp_path, epochs=False) == _records(reference_dir, epochs=False)
  assert _records(tmp_path, epochs=True) == _records(reference_dir, epochs=True)


def test_signal_at_the_last_step_of_an_epoch_resumes_into_its_evaluation(reference, tmp_path):
  reference_dir, uninterrupted = reference

  def sigint_during_the_last_step_of_epoch_1(step):
    if step == STEPS_PER_EPOCH:
      os.kill(os.getpid(), signal.SIGINT)

  with pytest.raises(loop.Preempted, match='SIGINT received: stopped after step 5'):
    run_toy(tmp_path, before_step=sigint_during_the_last_step_of_epoch_1)
  assert not _records(tmp_path, epochs=True)  # stopped before the epoch's evaluation
  resumed = run_toy(tmp_path)
  np.testing.assert_array_equal(resumed.state.w, uninterrupted.state.w)
  assert _records(tmp_path, epochs=True) == _records(reference_dir, epochs=True)


def test_signal_during_an_evaluation_stops_at_the_epoch_checkpoint(reference, tmp_path):
  reference_dir, uninterrupted = reference

  def sigterm_in_the_second_evaluation(epoch):
    if epoch == 1:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(loop.Preempted, match='stopped after step 10'):
    run_toy(tmp_path, on_evaluate=sigterm_in_the_second_evaluation)
  assert [r['epoch'] for r in _records(tmp_path, epochs=True)] == [1, 2]  # the epoch finished and was logged
  assert max(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == 10
  resumed = run_toy(tmp_path)
  np.testing.assert_array_equal(resumed.state.w, uninterrupted.state.w)
  assert _records(tmp_path, epochs=True) == _records(reference_dir, epochs=True)


_DOUBLE_SIGNAL_SCRIPT = '''
import os, signal, sys
sys.path[:0] = [{tests!r}, {repo!r}]
import test_loop
def two_signals(step):
  if step == 3:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
test_loop.run_toy({workdir!r}, before_step=two_signals)
'''


def test_a_second_signal_exits_at_once(tmp_path):
  script = _DOUBLE_SIGNAL_SCRIPT.format(tests=str(Path(__file__).parent), repo=str(Path(__file__).parents[1]),
                                        workdir=str(tmp_path / 'run'))
  process = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert process.returncode == 128 + signal.SIGINT, process.stderr
  assert 'SIGINT received again: exiting at once' in process.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists() or not any((tmp_path / 'run' / 'checkpoints').iterdir())


def test_divergence_raises_and_keeps_the_last_checkpoint(tmp_path):
  config = toy_config(learning_rate=1e30, num_epochs=1, log_every_steps=1)
  with pytest.raises(loop.NonFiniteLossError, match=r'at step \d+ .*last checkpoint is intact'):
    run_toy(tmp_path, config)
  assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# The workdir checks.


def _snapshot(directory: Path):
  return sorted((str(p.relative_to(directory)), p.stat().st_mtime_ns, p.stat().st_size) for p in directory.rglob('*'))


def test_resuming_with_another_config_is_refused_before_anything_is_written(reference):
  workdir, _ = reference
  before = _snapshot(workdir)
  changed = toy_config(learning_rate=0.1, batch_size=16)
  with pytest.raises(loop.ConfigMismatchError) as error:
    run_toy(workdir, changed)
  message = str(error.value)
  assert 'batch_size: 8 -> 16; learning_rate: 0.05 -> 0.1' in message
  assert '\n' not in message
  assert _snapshot(workdir) == before


def test_logging_checkpointing_and_paths_may_change_on_resume(reference):
  workdir, _ = reference
  allowed = toy_config(log_every_steps=3, progress=True, checkpoint_every_minutes=5.0, keep_checkpoints=1,
                       compilation_cache_dir='/elsewhere', data={'dir': '/data/moved'})
  assert loop.prepare_workdir(workdir, allowed) == workdir
  with pytest.raises(loop.ConfigMismatchError, match=r"new_key: \(absent\) -> 1"):
    loop.prepare_workdir(workdir, toy_config(new_key=1))


def test_workdir_errors(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(NotADirectoryError, match='is a file, not a directory'):
    loop.prepare_workdir(tmp_path / 'file', toy_config())
  with pytest.raises(NotADirectoryError, match=f'cannot create the workdir {tmp_path}/file/run: Not a directory'):
    loop.prepare_workdir(tmp_path / 'file' / 'run', toy_config())
  (tmp_path / 'damaged').mkdir()
  (tmp_path / 'damaged' / 'config.json').write_text('{"seed": ')
  with pytest.raises(ValueError, match='config.json cannot be read'):
    loop.prepare_workdir(tmp_path / 'damaged', toy_config())


# ---------------------------------------------------------------------------------------------------------------------
# Metrics between logs.


def _step_metrics(loss):
  return {'loss': jnp.float32(loss), 'accuracy': jnp.float32(1.0), 'finite': jnp.bool_(np.isfinite(loss))}


def test_epoch_metrics_carried_through_a_checkpoint_give_the_uninterrupted_means():
  losses = [0.1, 0.7, 0.3, 0.9]
  whole = loop.EpochMetrics()
  for x in losses:
    whole.add(_step_metrics(x))
  expected = whole.flush(4)
  first = loop.EpochMetrics()
  first.add(_step_metrics(losses[0]))
  first.flush(1)
  first.add(_step_metrics(losses[1]))
  first.fetch(2)  # a checkpoint between log steps
  position = json.loads(json.dumps(first.position()))  # as the checkpoint's JSON metadata holds it
  resumed = loop.EpochMetrics(**position)
  for x in losses[2:]:
    resumed.add(_step_metrics(x))
  assert resumed.flush(4)['loss'] == np.float32(np.mean(np.float32(losses[1:])))
  assert resumed.means()['train_loss'] == pytest.approx(np.mean(losses))
  assert expected['loss'] == pytest.approx(np.mean(losses))


def test_epoch_metrics_name_the_first_non_finite_step():
  metrics = loop.EpochMetrics(divergence_advice='Try again.')
  for x in (0.5, float('nan'), 0.2):
    metrics.add(_step_metrics(x))
  with pytest.raises(loop.NonFiniteLossError, match=r'at step 12 \(loss=nan\).*Try again\.'):
    metrics.flush(13)


@pytest.mark.skipif(not os.path.exists('/proc/self/stat'), reason='the process start time is read from Linux /proc')
def test_seconds_since_process_start_count_from_the_command():
  # A process that waits 1.5 s before asking: the answer includes the wait (and its interpreter's start-up), within
  # the clock's tick of 10 ms.
  code = ('import time; time.sleep(1.5); import darts_jax.training.loop as loop; '
          'print(loop.seconds_since_process_start())')
  since_start = float(subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout)
  assert 1.5 - 0.01 <= since_start < 60
