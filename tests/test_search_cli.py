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


def run_search(workdir, data_dir, *overrides, devices=1, wait=True, log=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{os.environ["XLA_FLAGS"]} --xla_force_host_platform_device_count={devices}')
  command = [sys.executable, 'run_search.py', '--config', 'configs/search_quick.py', '--workdir', str(workdir),
             f'--config.data.dir={data_dir}',
             f'--config.compilation_cache_dir={os.environ.get("JAX_COMPILATION_CACHE_DIR", "")}', *TINY, *overrides]
  log = open(log or Path(str(workdir) + '.log'), 'a')
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
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


def test_batch_size_not_divisible_by_devices_is_an_error(data_dir, tmp_path):
  returncode, log = run_search(tmp_path / 'run', data_dir, '--config.batch_size=6', devices=4)
  assert returncode == 1
  assert 'batch_size 6 is not divisible by the 4 devices' in log


@pytest.mark.parametrize('override, message', [
    ('--config.model.chanels=4', "unknown config key 'model.chanels'; valid keys: "),
    ('--config.hypergradient=second_order', "Unknown hypergradient 'second_order'; expected one of first_order"),
])
def test_config_errors_exit_with_one_message(data_dir, tmp_path, override, message):
  returncode, log = run_search(tmp_path / 'run', data_dir, override)
  assert returncode == 1
  assert message in log and 'Traceback' not in log


def _checkpoint_steps(workdir):
  directory = workdir / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _wait_for_checkpoint(process, workdir, step):
  while not any(s >= step for s in _checkpoint_steps(workdir)):
    assert process.poll() is None, Path(str(workdir) + '.log').read_text()
    time.sleep(0.01)


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


def test_resuming_with_another_config_is_refused_in_one_line(reference, data_dir, tmp_path):
  workdir = tmp_path / 'finished'
  shutil.copytree(reference, workdir)
  before = _snapshot(workdir)
  returncode, log = run_search(workdir, data_dir, '--config.model.init_channels=8', '--config.log_every_steps=5')
  assert returncode == 1
  error, = [line for line in log.splitlines() if 'error' in line.lower()]
  assert error.startswith(f'run_search.py: error: {workdir} holds a run with another configuration '
                          '(model.init_channels: 2 -> 8). Resume it with its configuration')
  assert 'Traceback' not in log and 'Event loop' not in log
  assert _snapshot(workdir) == before


@pytest.mark.parametrize('case', ['missing_config', 'broken_config', 'workdir_is_a_file', 'workdir_not_creatable',
                                  'missing_dataset'])
def test_bad_inputs_exit_with_one_line(case, data_dir, tmp_path):
  (tmp_path / 'file').write_text('')
  (tmp_path / 'broken.py').write_text('def get_config(:\n')
  args = {
      'missing_config': (['--config', str(tmp_path / 'nope.py')], tmp_path / 'run',
                         f'cannot load the config file {tmp_path}/nope.py: [Errno 2] No such file or directory'),
      'broken_config': (['--config', str(tmp_path / 'broken.py')], tmp_path / 'run',
                        f'cannot load the config file {tmp_path}/broken.py: syntax error at line 1'),
      'workdir_is_a_file': ([], tmp_path / 'file', f'--workdir {tmp_path}/file is a file, not a directory'),
      'workdir_not_creatable': ([], tmp_path / 'file' / 'run',
                                f'cannot create the workdir {tmp_path}/file/run: Not a directory'),
      'missing_dataset': (['--config.data.dir=' + str(tmp_path / 'no_data')], tmp_path / 'run',
                          f'fashion_mnist not found. Looked in directories: {tmp_path}/no_data'),
  }
  extra, workdir, message = args[case]
  returncode, log = run_search(workdir, data_dir, *extra, log=tmp_path / 'run.log')
  assert returncode == 1
  assert message in log and 'Traceback' not in log
  lines = [line for line in log.splitlines() if not line.startswith(('I', 'W'))]  # absl INFO/WARNING lines
  assert len(lines) <= 2, log  # the error, and for flag errors absl's "--helpshort" hint
