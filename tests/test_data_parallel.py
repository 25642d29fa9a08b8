"""`parallel.data_parallel` on 1, 4 and 8 simulated devices: both implementations, and evaluation over many batches.

Each device count runs in its own subprocess (the host device count is fixed when jax initialises). The script trains
a linear model with batch-normalised inputs (statistics and gradients averaged over the devices, as the search and
retraining steps do) for a few steps, and evaluates it with `loop.evaluate` on a validation set of 96 global batches,
every one split over all devices: dispatching all of them before reading any made XLA:CPU abort in an all-reduce
rendezvous (`loop.evaluate_batches` bounds the programs in flight).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from darts_jax.training import parallel

ROOT = Path(__file__).resolve().parent.parent
BATCH, FEATURES, STEPS, EVAL_BATCHES = 16, 3, 4, 96

_SCRIPT = f'''
import json
import jax, jax.numpy as jnp, numpy as np
from darts_jax.training import loop, parallel

BATCH, FEATURES, STEPS, EVAL_BATCHES = {BATCH}, {FEATURES}, {STEPS}, {EVAL_BATCHES}
rng = np.random.default_rng(0)
x = rng.normal(size=(STEPS * BATCH, FEATURES)).astype(np.float32)
y = rng.normal(size=STEPS * BATCH).astype(np.float32)
eval_x = rng.normal(size=(EVAL_BATCHES * BATCH - 5, FEATURES)).astype(np.float32)  # the last batch padded
eval_y = rng.normal(size=len(eval_x)).astype(np.float32)

def loss(w, x, y, learning_rate):
  mean = jax.lax.pmean(x.mean(0), 'batch')  # the global batch's statistics, as BN under data parallelism
  return jnp.mean((jnp.tanh(x - mean) @ w - y) ** 2)

def step(w, batch, learning_rate):
  g = jax.lax.pmean(jax.grad(loss)(w, *batch, learning_rate), 'batch')
  return w - learning_rate * g, {{'loss': jax.lax.pmean(loss(w, *batch, learning_rate), 'batch')}}

def eval_step(w, batch):
  x, y, mask = batch
  error = (x @ w - y) ** 2
  return {{'loss_sum': jax.lax.psum(jnp.sum(error * mask), 'batch'),
          'correct': jax.lax.psum(jnp.sum((error < 1) * mask), 'batch'),
          'count': jax.lax.psum(jnp.sum(mask), 'batch')}}

out = {{}}
for impl in parallel.IMPLS:
  p_step = parallel.data_parallel(step, 'batch', impl=impl, in_axes=(0, 0, None), donate_argnums=(0,))
  p_eval = parallel.data_parallel(eval_step, 'batch', impl=impl)
  w = parallel.replicate(np.ones(FEATURES, np.float32), 'batch')
  losses = []
  for i in range(STEPS):
    batch = parallel.shard((x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]), 'batch')
    w, metrics = p_step(w, batch, np.float32(0.1))
    losses.append(parallel.unreplicate(metrics)['loss'].tolist())
  w_host = parallel.unreplicate(w)
  out[impl] = {{'w': w_host.tolist(), 'losses': losses,
               'eval': loop.evaluate(p_eval, parallel.replicate(w_host, 'batch'), eval_x, eval_y, BATCH, 'batch')}}
print(json.dumps({{'devices': jax.device_count(), **out}}))
'''


def _run(devices):
  # Deprecations are errors here too (pyproject.toml's filters do not reach subprocesses).
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT), PYTHONWARNINGS='error::DeprecationWarning',
             XLA_FLAGS=f'{os.environ["XLA_FLAGS"]} --xla_force_host_platform_device_count={devices}')
  result = subprocess.run([sys.executable, '-c', _SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope='module')
def one_device():
  return _run(1)


def _reference_eval(w):
  """The evaluation in float64 numpy, from the same data (the script's generator and order)."""
  rng = np.random.default_rng(0)
  rng.normal(size=(STEPS * BATCH, FEATURES))
  rng.normal(size=STEPS * BATCH)
  eval_x = rng.normal(size=(EVAL_BATCHES * BATCH - 5, FEATURES)).astype(np.float32).astype(np.float64)
  eval_y = rng.normal(size=len(eval_x)).astype(np.float32).astype(np.float64)
  error = (eval_x @ np.asarray(w, np.float64) - eval_y) ** 2
  return {'loss': error.mean(), 'accuracy': (error < 1).mean()}


@pytest.mark.parametrize('devices', [4, 8])
def test_shard_map_and_pmap_agree_on_many_devices_and_equal_one_device(devices, one_device):
  result = _run(devices)
  assert result['devices'] == devices
  # pmap is itself jit of shard_map: the same program, the same bits.
  assert result['shard_map'] == result['pmap']
  for impl in parallel.IMPLS:
    # Only the order of float32 sums over the batch (statistics, gradient means) differs from one device.
    np.testing.assert_allclose(result[impl]['w'], one_device[impl]['w'], rtol=1e-5)
    np.testing.assert_allclose(result[impl]['losses'], one_device[impl]['losses'], rtol=1e-5)
    # Every example once (the padding of the last batch masked): float64 means of the float32 errors, summed in
    # float32 per batch (96 batches of 16): rtol 1e-5.
    reference = _reference_eval(result[impl]['w'])
    assert result[impl]['eval']['loss'] == pytest.approx(reference['loss'], rel=1e-5)
    assert result[impl]['eval']['accuracy'] == pytest.approx(reference['accuracy'], abs=1e-12)


def test_one_device_implementations_agree(one_device):
  assert one_device['devices'] == 1
  assert one_device['shard_map'] == one_device['pmap']


def test_unknown_implementation_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown parallel_impl 'vmap'; use one of shard_map, pmap"):
    parallel.data_parallel(lambda x: x, 'batch', impl='vmap')


def test_replicated_arguments_and_outputs_keep_the_device_axis():
  count = jax.local_device_count()
  add = parallel.data_parallel(lambda x, y: {'sum': jax.lax.psum(x, 'batch') + y}, 'batch', in_axes=(0, None))
  out = add(parallel.shard(np.arange(2 * count, dtype=np.float32), 'batch'), np.float32(1.0))
  total = np.arange(2 * count, dtype=np.float32).reshape(count, 2).sum(0) + 1
  np.testing.assert_array_equal(np.asarray(out['sum']), np.broadcast_to(total, (count, 2)))
