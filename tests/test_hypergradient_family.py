"""The k-step unrolled and implicit hypergradients against closed forms and autodiff (float64)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.bilevel.hypergradient import (METHODS, exact_hypergradient, fd_hypergradient, first_order_hypergradient,
                                             hypergradient, implicit_cg_hypergradient, implicit_neumann_hypergradient,
                                             unrolled_hypergradient)
from test_hypergradient import (ETA, MOMENTUM, WEIGHT_DECAY, _assert_trees_close, _loss, _max_abs_diff,
                                _nonlinear_problem, _quadratic_problem, _quadratic_train, _quadratic_val, _random, _spd)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


# ---------------------------------------------------------------------------------------------------------------------
# k-step unrolled.


def _unrolled_closed_form(trains, val, w, alpha, m):
  """Quadratic L_train = ½wᵀAw + wᵀBα + aᵀw per step: the k steps are affine in α, so their Jacobians follow
  J_m ← μJ_m + (A + λI)J_w + B, J_w ← J_w − ηJ_m, and d/dα L_val(w_k, α) = Qᵀw_k + Sα + J_wᵀ ∇_w L_val(w_k)."""
  n, k = trains[0]['B'].shape
  jac_w, jac_m = np.zeros((n, k)), np.zeros((n, k))
  w, m = np.asarray(w), np.asarray(m)
  for t in trains:
    grad = t['A'] @ w + t['B'] @ alpha + t['a']
    m = MOMENTUM * m + grad + WEIGHT_DECAY * w
    jac_m = MOMENTUM * jac_m + (t['A'] + WEIGHT_DECAY * np.eye(n)) @ jac_w + t['B']
    w, jac_w = w - ETA * m, jac_w - ETA * jac_m
  u = val['P'] @ w + val['Q'] @ alpha + val['p']
  return val['Q'].T @ w + val['S'] @ alpha + jac_w.T @ u


@pytest.mark.parametrize('steps', [1, 2, 5])
def test_unrolled_equals_the_closed_form_of_k_steps(steps):
  train, val, w, alpha, m = _quadratic_problem()
  got = hypergradient(_quadratic_train, _quadratic_val, w, alpha, train, val, eta=ETA, method='unrolled',
                      unroll_steps=steps, momentum_buffer=m, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  # float64 rounding only: the same affine maps in another order.
  np.testing.assert_allclose(got, _unrolled_closed_form([train] * steps, val, w, alpha, m), rtol=1e-10)


def test_unrolled_takes_one_training_batch_per_step():
  train, val, w, alpha, m = _quadratic_problem()
  rng = np.random.default_rng(5)
  trains = [dict(A=_spd(rng, 6), B=_random(rng, (6, 3)), a=_random(rng, (6,))) for _ in range(3)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *trains)
  got = hypergradient(_quadratic_train, _quadratic_val, w, alpha, stacked, val, eta=ETA, method='unrolled',
                      unroll_steps=3, per_step_batches=True, momentum_buffer=m, momentum=MOMENTUM,
                      weight_decay=WEIGHT_DECAY)
  np.testing.assert_allclose(got, _unrolled_closed_form(trains, val, w, alpha, m), rtol=1e-10)
  same = _unrolled_closed_form([trains[0]] * 3, val, w, alpha, m)
  assert np.abs(np.asarray(got) - same).max() > 1e-3  # the batches do differ


def _explicit_steps_grad(w, alpha, train, val, m, steps):
  """jax.grad of α ↦ L_val(w_k(α), α) with the k steps written out as a Python loop."""
  def objective(alpha):
    w_, m_ = w, m
    for _ in range(steps):
      g = jax.grad(_loss)(w_, alpha, train)
      m_ = jax.tree.map(lambda mi, gi, wi: MOMENTUM * mi + gi + WEIGHT_DECAY * wi, m_, g, w_)
      w_ = jax.tree.map(lambda wi, mi: wi - ETA * mi, w_, m_)
    return _loss(w_, alpha, val)
  return jax.grad(objective)(alpha)


def test_unrolled_equals_autodiff_through_explicit_steps_on_a_nonlinear_model():
  w, alpha, train, val = _nonlinear_problem()
  m = jax.tree.map(lambda x: 0.1 * x, w)
  got = hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA, method='unrolled', unroll_steps=3,
                      momentum_buffer=m, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  # Both are exact derivatives of the same function (the scan recomputes each checkpointed step): float64 rounding.
  _assert_trees_close(got, _explicit_steps_grad(w, alpha, train, val, m, 3), rtol=1e-10)


def test_one_unrolled_step_is_the_exact_method():
  w, alpha, train, val = _nonlinear_problem()
  m = jax.tree.map(lambda x: 0.1 * x, w)
  kwargs = dict(eta=ETA, momentum_buffer=m, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  _assert_trees_close(hypergradient(_loss, _loss, w, alpha, train, val, method='unrolled', unroll_steps=1, **kwargs),
                      hypergradient(_loss, _loss, w, alpha, train, val, method='exact', **kwargs), rtol=1e-10)


def test_unrolled_memory_grows_by_the_iterates_only():
  """Per extra step the compiled program keeps one weight iterate, not the step's activations."""
  with jax.enable_x64(False):
    rng = np.random.default_rng(0)
    w = {'kernel': jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)}
    alpha = jnp.ones((2,), jnp.float32)
    # Activations of one step (4096 x 64 floats per layer, several layers' worth) dwarf w (64 x 64).
    x = jnp.asarray(rng.standard_normal((4096, 64)), jnp.float32)

    def loss(w, alpha, x):
      h = x
      for _ in range(4):
        h = jnp.tanh(alpha[0] * h @ w['kernel'] + alpha[1])
      return jnp.mean(h ** 2)

    def temp_bytes(steps):
      fn = jax.jit(lambda w, alpha, x: hypergradient(loss, loss, w, alpha, x, x, eta=0.1, method='unrolled',
                                                     unroll_steps=steps))
      return fn.lower(w, alpha, x).compile().memory_analysis().temp_size_in_bytes

    w_bytes = 64 * 64 * 4
    activation_bytes = 4096 * 64 * 4
    growth = (temp_bytes(16) - temp_bytes(8)) / 8
  # Stated: the weight iterate w_i of every step, |w| per step; measured exactly |w| (16 KB) here. Keeping each
  # step's activations (jax.grad through the scan of the steps) measured 31 MB per step.
  assert growth <= 1.25 * w_bytes, (growth, w_bytes, activation_bytes)


# ---------------------------------------------------------------------------------------------------------------------
# Implicit.


def _inner_optimum_problem():
  """The quadratic problem at w* = argmin L_train + λ/2 |w|², i.e. (A + λI)w* + Bα + a = 0, and the closed-form
  implicit hypergradient there: dw*/dα = −H⁻¹B with H = A + λI, so d/dα L_val = Qᵀw* + Sα − BᵀH⁻¹∇_w L_val."""
  train, val, _, alpha, _ = _quadratic_problem()
  hessian = np.asarray(train['A']) + WEIGHT_DECAY * np.eye(6)
  w_star = -np.linalg.solve(hessian, train['B'] @ alpha + train['a'])
  u = val['P'] @ w_star + val['Q'] @ alpha + val['p']
  first_order = val['Q'].T @ w_star + val['S'] @ alpha
  return train, val, jnp.asarray(w_star), alpha, hessian, u, first_order


def test_implicit_cg_with_n_iterations_is_the_closed_form_at_the_inner_optimum():
  train, val, w_star, alpha, hessian, u, first_order = _inner_optimum_problem()
  expected = first_order - train['B'].T @ np.linalg.solve(hessian, u)
  got = hypergradient(_quadratic_train, _quadratic_val, w_star, alpha, train, val, eta=ETA, method='implicit_cg',
                      implicit_iterations=6, weight_decay=WEIGHT_DECAY)
  # CG is exact after n = 6 iterations on a 6-dimensional SPD system, up to float64 rounding.
  np.testing.assert_allclose(got, expected, rtol=1e-8)
  # The total derivative of L_val(w*(α), α), by autodiff through the solve.
  def outer(alpha):
    w = -jnp.linalg.solve(hessian, train['B'] @ alpha + train['a'])
    return _quadratic_val(w, alpha, val)
  np.testing.assert_allclose(got, jax.grad(outer)(alpha), rtol=1e-8)
  fewer = hypergradient(_quadratic_train, _quadratic_val, w_star, alpha, train, val, eta=ETA, method='implicit_cg',
                        implicit_iterations=2, weight_decay=WEIGHT_DECAY)
  assert np.abs(np.asarray(fewer) - expected).max() > 1e-6  # the iteration count is honoured


def test_implicit_cg_damping_solves_the_damped_system():
  train, val, w_star, alpha, hessian, u, first_order = _inner_optimum_problem()
  got = hypergradient(_quadratic_train, _quadratic_val, w_star, alpha, train, val, eta=ETA, method='implicit_cg',
                      implicit_iterations=6, implicit_damping=0.5, weight_decay=WEIGHT_DECAY)
  expected = first_order - train['B'].T @ np.linalg.solve(hessian + 0.5 * np.eye(6), u)
  np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_implicit_neumann_converges_to_the_implicit_hypergradient_at_the_theoretical_rate():
  train, val, w_star, alpha, hessian, u, first_order = _inner_optimum_problem()
  implicit = first_order - train['B'].T @ np.linalg.solve(hessian, u)
  eigenvalues = np.linalg.eigvalsh(hessian)
  eta = 1.0 / eigenvalues[-1]  # < 2 / λmax
  rate = np.max(np.abs(1 - eta * eigenvalues))
  errors = {}
  for terms in (1, 10, 20, 40):
    got = np.asarray(hypergradient(_quadratic_train, _quadratic_val, w_star, alpha, train, val, eta=eta,
                                   method='implicit_neumann', implicit_iterations=terms, weight_decay=WEIGHT_DECAY))
    # η Σ_{i<K} (I − ηH)^i = H⁻¹(I − (I − ηH)^K): the truncated series has a closed form too.
    residual = np.linalg.matrix_power(np.eye(6) - eta * hessian, terms)
    np.testing.assert_allclose(got, first_order - train['B'].T @ np.linalg.solve(hessian, u - residual @ u),
                               rtol=1e-9)
    errors[terms] = np.linalg.norm(got - implicit)
  # The error is Bᵀ H⁻¹ (I − ηH)^K u: it shrinks by at most `rate` per term, and asymptotically by about `rate`.
  for k in (10, 20):
    assert errors[2 * k] <= errors[k] * rate ** k * (1 + 1e-6)
  assert errors[40] / errors[20] > rate ** 20 / 10  # no faster than theory allows (the slowest mode dominates)
  assert errors[40] < 1e-2 * errors[1]


def test_implicit_methods_under_jit_with_traced_eta():
  w, alpha, train, val = _nonlinear_problem()
  for method in ('implicit_cg', 'implicit_neumann', 'unrolled'):
    def fn(w, alpha, eta):
      return hypergradient(_loss, _loss, w, alpha, train, val, eta=eta, method=method, implicit_iterations=4,
                           implicit_damping=1.0, unroll_steps=2, weight_decay=WEIGHT_DECAY)
    _assert_trees_close(jax.jit(fn)(w, alpha, jnp.asarray(ETA)), fn(w, alpha, ETA), rtol=1e-9, atol=1e-12)


def test_counts_must_be_positive():
  w, alpha, train, val = _nonlinear_problem()
  with pytest.raises(ValueError, match='must be positive'):
    hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA, method='unrolled', unroll_steps=0)


# ---------------------------------------------------------------------------------------------------------------------
# The non-NAS example (examples/learn_l2_penalty.py).


@pytest.mark.parametrize('method, options', [('implicit_cg', {'implicit_iterations': 20}),
                                             ('unrolled', {'unroll_steps': 10})])
def test_example_learns_larger_penalties_for_noise_features(method, options):
  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'examples'))
  try:
    import learn_l2_penalty as example  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  with jax.enable_x64(False):
    alpha, loss = example.learn_penalties(method, outer_steps=100, **options)
    _, unlearned = example.learn_penalties('first_order', outer_steps=1)  # first order cannot move the penalties
  informative, noise = alpha[:example.NUM_INFORMATIVE], alpha[example.NUM_INFORMATIVE:]
  assert float(noise.mean()) > float(informative.mean()) + 1.0
  assert loss < 0.8 * unlearned


# ---------------------------------------------------------------------------------------------------------------------
# One function per method behind `hypergradient`.


def test_each_method_function_is_the_entry_with_its_method():
  # Every option away from its default, so that an option the entry dropped or passed to another name would change
  # the result (the last assertion checks that they do). Both sides run the same operations: equal up to float64
  # rounding (1e-12), where a lost option is off by far more.
  w, alpha, train, val = _nonlinear_problem()
  buffer = jax.tree.map(lambda x: 0.1 * x, w)
  options = dict(eta=ETA, momentum_buffer=buffer, momentum=0.5, weight_decay=WEIGHT_DECAY, fd_epsilon=0.05,
                 unroll_steps=2, implicit_iterations=3, implicit_damping=0.5, passes='chained')
  one_step = dict(eta=ETA, momentum_buffer=buffer, momentum=0.5, weight_decay=WEIGHT_DECAY, grad_clip=0.5,
                  passes='chained')
  implicit = dict(implicit_iterations=3, implicit_damping=0.5, weight_decay=WEIGHT_DECAY)
  functions = {
      'first_order': lambda w, a: first_order_hypergradient(_loss, w, a, val),
      'fd': lambda w, a: fd_hypergradient(_loss, _loss, w, a, train, val, fd_epsilon=0.05, **one_step),
      'exact': lambda w, a: exact_hypergradient(_loss, _loss, w, a, train, val, **one_step),
      'unrolled': lambda w, a: unrolled_hypergradient(_loss, _loss, w, a, train, val, eta=ETA, unroll_steps=2,
                                                      momentum_buffer=buffer, momentum=0.5,
                                                      weight_decay=WEIGHT_DECAY),
      'implicit_cg': lambda w, a: implicit_cg_hypergradient(_loss, _loss, w, a, train, val, **implicit),
      'implicit_neumann': lambda w, a: implicit_neumann_hypergradient(_loss, _loss, w, a, train, val, eta=ETA,
                                                                      **implicit),
  }
  assert set(functions) == set(METHODS)

  @jax.jit
  def run(w, alpha):
    clipped = ('first_order', 'fd', 'exact')  # the methods that take a grad_clip
    entry = {method: hypergradient(_loss, _loss, w, alpha, train, val, method=method,
                                   **dict(options, grad_clip=0.5 if method in clipped else None))
             for method in functions}
    defaults = {method: hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA, method=method)
                for method in functions}
    return entry, {method: fn(w, alpha) for method, fn in functions.items()}, defaults

  entry, per_method, defaults = run(w, alpha)
  for method in functions:
    _assert_trees_close(per_method[method], entry[method], rtol=1e-12, atol=1e-14)
    if method != 'first_order':  # first order reads none of the options
      assert _max_abs_diff(entry[method], defaults[method]) > 1e-4, method
