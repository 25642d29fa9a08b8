"""Per-program compiler options and background compilation (`parallel.DataParallel`), and the search's choice of
options for its rarely run programs (``compile.rare_programs_opt_level``)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import spaces
from darts_jax.tasks import search
from darts_jax.training import config_utils, parallel
from darts_jax.training.parallel import AXIS_NAME


def _quick_config():
  return config_utils.load_config_module('search_quick').get_config()


def _softmax_loss(state, batch):
  """A tiny program with the reductions, exponentials and matmuls whose rounding an optimisation level may change."""
  logits = jnp.tanh(batch @ state['w']) @ state['v']
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])
  return {'loss': jax.lax.pmean(loss, AXIS_NAME), 'probabilities': jax.nn.softmax(logits)}


def _inputs():
  rng = np.random.default_rng(0)
  state = {'w': rng.normal(size=(16, 32)).astype(np.float32), 'v': rng.normal(size=(32, 10)).astype(np.float32)}
  batch = rng.normal(size=(jax.local_device_count() * 4, 16)).astype(np.float32)
  return parallel.replicate(state, AXIS_NAME), parallel.shard(batch, AXIS_NAME)


class _CompileCounter:
  """Counts XLA backend compilations (not persistent-cache hits) while active."""

  EVENT = '/jax/core/compile/backend_compile_duration'

  def __init__(self):
    self.count = 0

  def _listen(self, event, duration, **kwargs):
    del duration, kwargs
    self.count += event == self.EVENT

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc_info):
    jax.monitoring.unregister_event_duration_listener(self._listen)


def test_compiler_options_name_the_backend_level():
  assert parallel.compiler_options(None) is None
  assert parallel.compiler_options(0) == {'xla_backend_optimization_level': 0}


def test_search_chooses_the_configured_level_for_rare_programs():
  config = _quick_config()
  assert search.rare_compiler_options(config) == {'xla_backend_optimization_level': 3}  # the configs' default
  config.compile.rare_programs_opt_level = 0
  assert search.rare_compiler_options(config) == {'xla_backend_optimization_level': 0}
  config.compile.rare_programs_opt_level = 7
  with pytest.raises(ValueError, match='rare_programs_opt_level'):
    search._check_config(config, spaces.get_space(config))  # pylint: disable=protected-access


def test_options_reach_the_compiler():
  # XLA rejects an option it does not know: the error shows the options are passed to the compile.
  state, batch = _inputs()
  p_loss = parallel.data_parallel(_softmax_loss, AXIS_NAME, compiler_options={'xla_no_such_option': 1})
  with pytest.raises(Exception, match='xla_no_such_option'):
    p_loss(state, batch)


def test_backend_levels_agree():
  # The levels reorder and fuse float32 arithmetic differently, not the maths: a few float32 ulps of O(1) values.
  state, batch = _inputs()
  results = [jax.device_get(parallel.data_parallel(_softmax_loss, AXIS_NAME,
                                                   compiler_options=parallel.compiler_options(level))(state, batch))
             for level in (0, 3)]
  for key in results[0]:
    np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_background_compilation_is_the_first_calls_program():
  state, batch = _inputs()
  with _CompileCounter() as counter:  # the control: a first call compiles
    expected = jax.device_get(parallel.data_parallel(_softmax_loss, AXIS_NAME)(state, batch))
  assert counter.count == 1
  p_loss = parallel.data_parallel(_softmax_loss, AXIS_NAME, compiler_options=parallel.compiler_options(0))
  # The state by its shapes only, as `search` gives the step's before the state exists; the batch as arrays.
  p_loss.compile_in_background(parallel.replicated_shapes(parallel.unreplicate(state), AXIS_NAME), batch)
  p_loss.wait()
  with _CompileCounter() as counter:
    result = jax.device_get(p_loss(state, batch))
  assert counter.count == 0
  for key in expected:
    np.testing.assert_allclose(result[key], expected[key], rtol=1e-5, atol=1e-6)


def test_lowering_ahead_leaves_the_background_only_the_compile():
  traces = []

  def loss(state, batch):
    traces.append(None)  # runs once per trace
    return _softmax_loss(state, batch)

  state, batch = _inputs()
  p_loss = parallel.data_parallel(loss, AXIS_NAME)
  shapes = parallel.replicated_shapes(parallel.unreplicate(state), AXIS_NAME)
  p_loss.lower_ahead(shapes, batch)
  assert len(traces) == 1
  with _CompileCounter() as counter:
    p_loss.compile_in_background(shapes, batch)
    p_loss.wait_lowered()
    p_loss.wait()
    p_loss(state, batch)
  assert (len(traces), counter.count) == (1, 1)  # traced once, ahead; compiled once, in the background
