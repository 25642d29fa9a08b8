"""Shared test set-up: a persistent XLA compilation cache for the whole run, and a tiny Fashion-MNIST directory.

Supernet programs take tens of seconds to compile on CPU. Tests that compile the same program (a tiny search run
started again to test resume, the same step in a subprocess) then reuse it, in this process and in subprocesses,
which inherit the cache directory through the environment.
"""
import os
import tempfile

import jax
import pytest

# XLA:CPU's backend (LLVM) optimisation level 0 for every program the tests compile, here and in subprocesses (which
# add their flags to this variable): the suite is bound by compile time, which this about halves (measured on
# test_hypergradient_supernet.py: 102 -> 55 s CPU), and the tiny test shapes run in milliseconds at any level. The
# CLIs and the benchmarks keep XLA's default. The flags are part of the compilation cache key.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()
# The tests hold on any machine. On a GPU: float32 matmuls and convolutions in float32 (JAX's default there is
# TensorFloat-32, 10 mantissa bits, far outside the float32 tolerances of the reference checks); reductions in a
# fixed order, so that a resumed run equals the uninterrupted one bit for bit as on a CPU; and memory allocated on
# demand, so that the CLI runs in subprocesses share the device with this process. No effect on a CPU's results.
os.environ['XLA_FLAGS'] += ' --xla_gpu_deterministic_ops=true'
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ['JAX_DEFAULT_MATMUL_PRECISION'] = 'highest'
jax.config.update('jax_default_matmul_precision', 'highest')

_CACHE_DIR = os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                                   os.path.join(tempfile.gettempdir(), 'darts_jax_test_compilation_cache'))
# Every program, however quick to compile (JAX's default keeps those over a second): the CLI tests' subprocesses
# compile the same small programs again otherwise (test_search_cli.py + test_retrain.py, cold: 53-55 s against
# 56-59 s with the default).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
jax.config.update('jax_compilation_cache_dir', _CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A tiny Fashion-MNIST in the official IDX format (`test_search.write_fashion_mnist`), one per test module."""
  from test_search import write_fashion_mnist  # imported here: the test module needs the cache set up first
  directory = tmp_path_factory.mktemp('fashion_mnist')
  write_fashion_mnist(directory)
  return directory


@pytest.fixture(scope='session')
def run_cli_cases():
  """``run_cli_cases(cases) -> [{'returncode', 'stdout', 'stderr'}]``: many CLI command lines in separate processes forked from
  one interpreter that imported the CLIs once (tests/cli_harness.py), for the tests of one-line errors."""
  import json
  import subprocess
  import sys
  from pathlib import Path

  harness = Path(__file__).with_name('cli_harness.py')

  def run(cases):
    process = subprocess.run([sys.executable, str(harness)], input=json.dumps(cases), capture_output=True, text=True,
                             timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout)

  return run
