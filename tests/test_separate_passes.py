"""`hypergradient` called outside ``jax.jit``: every pass a compiled program of its own, shared by the methods."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.bilevel.hypergradient import METHODS, hypergradient, resolve_passes
from test_hypergradient import ETA, MOMENTUM, WEIGHT_DECAY, _assert_trees_close, _loss, _nonlinear_problem

GRADIENT_PROGRAM = 'jit(_gradient_program)'


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _val_loss(w, alpha, batch):  # a second loss: the validation loss differs from the training loss
  return _loss(w, alpha, batch) + 0.1 * jnp.sum(jnp.tanh(alpha['mix']) ** 2)


@pytest.fixture
def compiled_programs():
  """The names of the programs compiled while the test runs (JAX's compile event fires once per new program)."""
  names = []

  def listen(event, duration, **kwargs):
    del duration
    if event == '/jax/core/compile/backend_compile_duration':
      names.append(kwargs.get('fun_name'))

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield names
  jax.monitoring.unregister_event_duration_listener(listen)


def _options(method):
  options = dict(eta=ETA, method=method, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, unroll_steps=2,
                 implicit_iterations=4, implicit_damping=0.5, fd_epsilon=1e-4)
  if method in ('fd', 'exact'):
    options['grad_clip'] = 0.5  # binding: the training gradient's norm is 1.5
  return options


@pytest.mark.parametrize('method', METHODS)
def test_separate_passes_equal_the_jitted_direct_form(method):
  """With two losses, a momentum buffer, weight decay and (fd, exact) a binding clip. float64: exact, unrolled and
  implicit agree to rounding (rtol 1e-10); fd's two forms take the same central difference (rtol 1e-8: its
  rounding is divided by 2R)."""
  w, alpha, train, val = _nonlinear_problem()
  m = jax.tree.map(lambda x: 0.3 * x, w)
  options = _options(method)
  got = hypergradient(_loss, _val_loss, w, alpha, train, val, momentum_buffer=m, **options)
  expected = jax.jit(lambda w, alpha, m: hypergradient(_loss, _val_loss, w, alpha, train, val, momentum_buffer=m,
                                                       passes='direct', **options))(w, alpha, m)
  _assert_trees_close(got, expected, rtol=1e-8 if method == 'fd' else 1e-10, atol=1e-14)


@pytest.mark.parametrize('method', ['fd', 'exact'])
def test_separate_passes_without_a_momentum_buffer_take_zeros(method):
  w, alpha, train, val = _nonlinear_problem()
  options = _options(method)
  got = hypergradient(_loss, _loss, w, alpha, train, val, **options)
  zeros = jax.tree.map(jnp.zeros_like, w)
  expected = jax.jit(lambda w, alpha: hypergradient(_loss, _loss, w, alpha, train, val, momentum_buffer=zeros,
                                                    passes='direct', **options))(w, alpha)
  _assert_trees_close(got, expected, rtol=1e-8 if method == 'fd' else 1e-10, atol=1e-14)


def test_the_methods_share_one_compiled_gradient(compiled_programs):
  """first_order compiles the full gradient; fd then compiles only its vector arithmetic, exact its mixed term, and
  repeated calls nothing."""
  w, alpha, train, val = _nonlinear_problem(num_examples=7)  # shapes no other test compiles
  def call(method):
    return jax.block_until_ready(hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA, method=method))

  call('first_order')
  assert compiled_programs.count(GRADIENT_PROGRAM) == 1
  for method in ('fd', 'exact', 'first_order', 'fd', 'exact'):
    call(method)
  assert compiled_programs.count(GRADIENT_PROGRAM) == 1, compiled_programs
  assert compiled_programs.count('jit(_exact_mixed_program)') == 1
  compiled_programs.clear()
  for method in ('first_order', 'fd', 'exact'):
    call(method)
  assert compiled_programs == []


def test_auto_is_separate_outside_a_program_and_by_backend_inside():
  assert resolve_passes('auto', 'cpu', traced=False) == 'separate'
  assert resolve_passes('auto', 'cpu') == 'chained'
  assert resolve_passes('auto', 'gpu') == 'direct'
  with pytest.raises(ValueError, match="passes='separate' compiles each gradient pass"):
    resolve_passes('separate')


def test_separate_inside_a_program_or_with_an_axis_name_is_an_error():
  w, alpha, train, val = _nonlinear_problem()
  with pytest.raises(ValueError, match="passes='separate'"):
    jax.jit(lambda w: hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA, method='fd',
                                    passes='separate'))(w)
  with pytest.raises(ValueError, match='axis_name averages over a mapped axis'):
    hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA, method='exact', axis_name='batch')


def test_separate_first_order_is_the_validation_gradient():
  """First order by the shared full gradient is ∇_α L_val at w (float64, to rounding)."""
  w, alpha, train, val = _nonlinear_problem()
  got = hypergradient(_loss, _val_loss, w, alpha, train, val, eta=ETA, method='first_order')
  _assert_trees_close(got, jax.grad(_val_loss, argnums=1)(w, alpha, val), rtol=1e-12)
  assert all(np.asarray(x).dtype == np.float64 for x in jax.tree.leaves(got))
