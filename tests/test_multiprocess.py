"""A real multi-process search: 2 processes on 127.0.0.1 connected by jax.distributed (CPU collectives between the
processes by gloo, jax's default on CPU), 2 local CPU devices each, on test_search's TinySupernet.

The processes are started as the README's multi-host template starts them (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; `training.parallel.maybe_initialize_distributed`). The run must equal a
1-process run with the same global batch, and resume correctly after both processes are killed mid-epoch. The global
batch is split over 4 devices instead of 1, which changes the order of float32 sums (the batch statistics and the
mean gradients): agreement to rtol 1e-4 after 6 steps, not bit for bit.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from darts_jax.spaces import cnn as cnn_space
from darts_jax.tasks import search
from darts_jax.training import reporting
from test_search import TinySupernet, tiny_config

ROOT = Path(__file__).resolve().parent.parent
# Small programs: the first-order step and no Hessian eigenvalue (its own tests run it on several devices).
OVERRIDES = {'hypergradient': 'first_order', 'diagnostics.hessian_iterations': 0, 'compilation_cache_dir': ''}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_two_processes(workdir, data_dir, kill_after_step=None):
  """Starts the 2 processes, waits for both; returns their (returncode, stderr)."""
  port = _free_port()
  flags = [f'--config.{key}={value}' for key, value in OVERRIDES.items()] + [
      f'--config.data.dir={data_dir}', '--config.data.subset=0', '--config.batch_size=8', '--config.num_epochs=1',
      '--config.log_every_steps=2', '--config.checkpoint_every_minutes=1e-9', '--config.progress=False']
  processes = []
  try:
    for i in range(2):
      env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
                 JAX_PROCESS_ID=str(i), JAX_PLATFORMS='cpu',
                 XLA_FLAGS=os.environ['XLA_FLAGS'] + ' --xla_force_host_platform_device_count=2',
                 PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / 'tests')]), KILL_AFTER_STEP=str(kill_after_step or ''))
      processes.append(subprocess.Popen(
          [sys.executable, str(ROOT / 'tests' / 'multiprocess_search.py'), '--config', 'configs/search_quick.py',
           '--workdir', str(workdir), *flags], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
          text=True))
    stderrs = [p.communicate(timeout=240)[1] for p in processes]
    return [(p.returncode, stderr) for p, stderr in zip(processes, stderrs)]
  finally:
    for p in processes:  # a process whose peer died waits in a collective: never leave it behind
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cnn_space, 'SearchNetwork', TinySupernet)
    config = tiny_config(data_dir, num_epochs=1, checkpoint_every_minutes=0.0, **OVERRIDES)
    workdir = tmp_path_factory.mktemp('one_process')
    return workdir, search.search(config, workdir)


def _epoch_records(workdir):
  return [r for r in reporting.read_jsonl(workdir / 'metrics.jsonl') if 'epoch' in r]


def test_two_processes_equal_one_and_resume_after_both_are_killed(reference, data_dir, tmp_path):
  ref_dir, ref_state = reference
  workdir = tmp_path / 'two_processes'
  # Killed right after the checkpoint of step 4 (mid epoch 1), then started again.
  killed = _run_two_processes(workdir, data_dir, kill_after_step=4)
  assert [code for code, _ in killed] == [-9, -9], killed
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())[-1] == 4
  assert not (workdir / 'alphas.npz').exists()
  resumed = _run_two_processes(workdir, data_dir)
  assert [code for code, _ in resumed] == [0, 0], resumed
  assert 'Resuming from step 4' in resumed[1][1]  # every process restored the checkpoint

  alphas = np.load(workdir / 'alphas.npz')
  for kind in ('normal', 'reduce'):
    np.testing.assert_allclose(alphas[kind], ref_state.alphas[kind], rtol=1e-4, atol=1e-6)
  ours, theirs = _epoch_records(workdir), _epoch_records(ref_dir)
  assert [r['step'] for r in ours] == [r['step'] for r in theirs] == [6]
  for a, b in zip(ours, theirs):
    for key in ('train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy'):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, err_msg=key)
  assert (workdir / 'genotype.json').read_text() == (ref_dir / 'genotype.json').read_text()
  assert json.loads((workdir / 'config.json').read_text())['batch_size'] == 8
