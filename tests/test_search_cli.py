"""End-to-end tests of ``run_search.py`` on the real supernet, in subprocesses.

One tiny search (a one-cell supernet of two nodes on 8x8 synthetic Fashion-MNIST files, 3 epochs of 6 steps) is the reference.
It is run again killed with SIGKILL and resumed, and on 4 host devices; the outputs must match the reference. The
runs share a persistent compilation cache (tests/conftest.py), so only the first run and the 4-device run compile
the supernet.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from darts_jax.training import reporting

REPO = Path(__file__).resolve().parents[1]
# First order compiles in half the time of second order; the step's other paths are the same (and every
# hypergradient method is checked under data parallelism in test_search.py). The paper's architecture optimizer:
# the quick config's Adam at 0.1 would turn float32 rounding differences between device counts into steps of 0.1.
# No Hessian eigenvalue: another supernet program to compile (test_search_dynamics.py runs it on a tiny network).
TINY = ['--config.data.subset=0', '--config.data.image_size=0', '--config.batch_size=8', '--config.num_epochs=3',
        '--config.log_every_steps=2', '--config.checkpoint_every_minutes=0', '--config.model.init_channels=2',
        '--config.model.layers=1', '--config.model.steps=2', '--config.model.multiplier=2',
        '--config.hypergradient=first_order', '--config.arch_learning_rate=3e-4', '--config.arch_weight_decay=1e-3',
        '--config.diagnostics.hessian_iterations=0', '--config.data.augment=true', '--config.progress=false']


def _devices_flags(devices):
  return f'{os.environ["XLA_FLAGS"]} --xla_force_host_platform_device_count={devices}'


def _arguments(workdir, data_dir, *overrides):
  return ['run_search.py', '--config', 'configs/search_quick.py', '--workdir', str(workdir),
          f'--config.data.dir={data_dir}',
          f'--config.compilation_cache_dir={os.environ.get("JAX_COMPILATION_CACHE_DIR", "")}', *TINY, *overrides]


def run_search(workdir, data_dir, *overrides, devices=1, wait=True, log=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=_devices_flags(devices))
  log = open(log or Path(str(workdir) + '.log'), 'a')
  process = subprocess.Popen([sys.executable, *_arguments(workdir, data_dir, *overrides)], cwd=REPO, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
  if not wait:
    return process
  process.wait(timeout=900)
  return process.returncode, Path(log.name).read_text()


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('runs') / 'reference'
  returncode, log = run_search(workdir, data_dir)
  assert returncode == 0, log
  return workdir


def _epoch_records(workdir):
  return [{k: v for k, v in r.items() if k not in ('epoch_time_s', 'images_per_s')}
          for r in reporting.read_jsonl(workdir / 'metrics.jsonl') if 'epoch' in r]


def test_search_writes_genotype_alphas_plots_and_curves(reference):
  for name in ('config.json', 'metrics.jsonl', 'genotypes.jsonl', 'genotype.json', 'alphas.npz', 'normal.png',
               'reduce.png', 'curves.png'):
    assert (reference / name).is_file(), name
  assert [r['epoch'] for r in _epoch_records(reference)] == [1, 2, 3]
  assert len(reporting.read_jsonl(reference / 'genotypes.jsonl')) == 3
  assert sorted(p.name for p in (reference / 'checkpoints').iterdir()) == ['12', '18', '6']


# Slow (the CLI in a 4-device process, compiling its own programs): `pytest -m slow`. The default run checks the
# data-parallel step against the global batch in-process (tests/test_search.py) and 1/4/8 devices in
# tests/test_data_parallel.py.
@pytest.mark.slow
def test_four_devices_match_one_device(reference, data_dir, tmp_path):
  returncode, log = run_search(tmp_path / 'pmap', data_dir, devices=4)
  assert returncode == 0, log
  assert '4 devices' in log
  sharded, single = np.load(tmp_path / 'pmap' / 'alphas.npz'), np.load(reference / 'alphas.npz')
  # 18 steps; only the summation order of BN statistics and gradient means differs (float32 rounding), and
  # Adam's per-step change of alphas is ~3e-4.
  for kind in ('normal', 'reduce'):
    np.testing.assert_allclose(sharded[kind], single[kind], rtol=0, atol=1e-5)
  for sharded_record, single_record in zip(_epoch_records(tmp_path / 'pmap'), _epoch_records(reference)):
    for key, value in single_record.items():
      assert sharded_record[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def _checkpoint_steps(workdir):
  directory = workdir / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _wait_for_checkpoint(process, workdir, step):
  while not any(s >= step for s in _checkpoint_steps(workdir)):
    assert process.poll() is None, Path(str(workdir) + '.log').read_text()
    time.sleep(0.01)


# Slow (three CLI processes compiling the step): `pytest -m slow`. The default run keeps the in-process resume
# (tests/test_search.py), the retrain CLI's SIGTERM (tests/test_retrain.py) and two processes killed with SIGKILL
# (tests/test_multiprocess.py).
@pytest.mark.slow
def test_sigterm_then_sigkill_mid_epoch_resume_identically(reference, data_dir, tmp_path):
  """Preempted (SIGTERM: save, exit 75), resumed, killed (SIGKILL, possibly mid-save), resumed: the run ends as the
  uninterrupted reference. One run takes both interruptions, so the supernet is started three times, not four."""
  workdir = tmp_path / 'preempted'
  # A checkpoint at every log step (every 2 steps) slows the run enough for the signals to land mid-run.
  process = run_search(workdir, data_dir, '--config.checkpoint_every_minutes=1e-9', wait=False)
  try:
    _wait_for_checkpoint(process, workdir, 8)  # in epoch 2 (steps 7-12)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 75
  finally:
    process.kill()
  log = Path(str(workdir) + '.log').read_text()
  stopped = int(re.search(r'run_search.py: SIGTERM received: stopped after step (\d+) and saved a checkpoint of it; '
                          r'run the same command again to resume\.', log).group(1))
  assert 8 <= stopped < 18 and _checkpoint_steps(workdir)[-1] == stopped
  assert 'Traceback' not in log and not (workdir / 'alphas.npz').exists()

  process = run_search(workdir, data_dir, '--config.checkpoint_every_minutes=1e-9', wait=False)
  try:
    _wait_for_checkpoint(process, workdir, stopped + 2)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  log = Path(str(workdir) + '.log').read_text()
  assert f'Resuming from step {stopped} ' in log
  killed_after = _checkpoint_steps(workdir)[-1]
  assert not (workdir / 'alphas.npz').exists() or killed_after == 18  # killed before the end, unless it won the race

  returncode, log = run_search(workdir, data_dir, '--config.checkpoint_every_minutes=1e-9')
  assert returncode == 0, log
  assert log.count('Resuming from step') == 2
  resumed, uninterrupted = np.load(workdir / 'alphas.npz'), np.load(reference / 'alphas.npz')
  for kind in ('normal', 'reduce'):
    np.testing.assert_array_equal(resumed[kind], uninterrupted[kind])
  assert (workdir / 'genotype.json').read_text() == (reference / 'genotype.json').read_text()
  assert _epoch_records(workdir) == _epoch_records(reference)


def _snapshot(directory):
  return sorted((str(p.relative_to(directory)), p.stat().st_mtime_ns) for p in directory.rglob('*'))


# Command lines that must stop with one error line, run in one harness (conftest.run_cli_cases: one interpreter's
# imports, a forked process per command line) instead of ~3 s of start-up each.
_CONFIG_ERRORS = {
    'unknown_key': ('--config.model.chanels=4', "unknown config key 'model.chanels'; valid keys: "),
    'unknown_hypergradient': ('--config.hypergradient=second_order',
                              "Unknown hypergradient 'second_order'; expected one of first_order"),
}
_BAD_INPUTS = ['missing_config', 'broken_config', 'workdir_is_a_file', 'workdir_not_creatable', 'missing_dataset']


@pytest.fixture(scope='module')
def errors(reference, data_dir, tmp_path_factory, run_cli_cases):
  """{case: (returncode, output, expected message)} for every error case, and the finished run's snapshot around the
  refused resume."""
  tmp = tmp_path_factory.mktemp('errors')
  (tmp / 'file').write_text('')
  (tmp / 'broken.py').write_text('def get_config(:\n')
  finished = tmp / 'finished'
  shutil.copytree(reference, finished)
  cases = {
      'batch_size_not_divisible': (_arguments(tmp / 'run', data_dir, '--config.batch_size=6'), 4,
                                   'batch_size 6 is not divisible by the 4 devices'),
      'resume_with_another_config': (
          _arguments(finished, data_dir, '--config.model.init_channels=8', '--config.log_every_steps=5'), 1,
          f'run_search.py: error: {finished} holds a run with another configuration (model.init_channels: 2 -> 8). '
          'Resume it with its configuration'),
      'missing_config': (_arguments(tmp / 'run', data_dir, '--config', str(tmp / 'nope.py')), 1,
                         f'cannot load the config file {tmp}/nope.py: [Errno 2] No such file or directory'),
      'broken_config': (_arguments(tmp / 'run', data_dir, '--config', str(tmp / 'broken.py')), 1,
                        f'cannot load the config file {tmp}/broken.py: syntax error at line 1'),
      'workdir_is_a_file': (_arguments(tmp / 'file', data_dir), 1, f'--workdir {tmp}/file is a file, not a directory'),
      'workdir_not_creatable': (_arguments(tmp / 'file' / 'run', data_dir), 1,
                                f'cannot create the workdir {tmp}/file/run: Not a directory'),
      'missing_dataset': (_arguments(tmp / 'run', data_dir, '--config.data.dir=' + str(tmp / 'no_data')), 1,
                          f'fashion_mnist not found. Looked in directories: {tmp}/no_data'),
  }
  for name, (override, message) in _CONFIG_ERRORS.items():
    cases[name] = (_arguments(tmp / 'run', data_dir, override), 1, message)
  before = _snapshot(finished)
  results = run_cli_cases([{'argv': argv, 'cwd': str(REPO), 'env': {'XLA_FLAGS': _devices_flags(devices)}}
                           for argv, devices, _ in cases.values()])
  outcomes = {name: (result['returncode'], result['stdout'] + result['stderr'], message)
              for (name, (_, _, message)), result in zip(cases.items(), results)}
  return outcomes, (before, _snapshot(finished), finished)


def _assert_one_error_line(returncode, log, message):
  assert returncode == 1, log
  assert message in log and 'Traceback' not in log
  lines = [line for line in log.splitlines() if not line.startswith(('I', 'W'))]  # absl INFO/WARNING lines
  assert len(lines) <= 2, log  # the error, and for flag errors absl's "--helpshort" hint


def test_batch_size_not_divisible_by_devices_is_an_error(errors):
  _assert_one_error_line(*errors[0]['batch_size_not_divisible'])


@pytest.mark.parametrize('case', sorted(_CONFIG_ERRORS))
def test_config_errors_exit_with_one_message(errors, case):
  _assert_one_error_line(*errors[0][case])


def test_resuming_with_another_config_is_refused_in_one_line(errors):
  returncode, log, message = errors[0]['resume_with_another_config']
  assert returncode == 1
  error, = [line for line in log.splitlines() if 'error' in line.lower()]
  assert error.startswith(message)
  assert 'Traceback' not in log and 'Event loop' not in log
  before, after, _ = errors[1]
  assert after == before  # nothing in the workdir touched


@pytest.mark.parametrize('case', _BAD_INPUTS)
def test_bad_inputs_exit_with_one_line(errors, case):
  _assert_one_error_line(*errors[0][case])
