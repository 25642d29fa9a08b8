"""Tests for darts_jax.bilevel.hypergradient."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.bilevel.hypergradient import METHODS, hypergradient

ETA = 0.3
MOMENTUM = 0.9
WEIGHT_DECAY = 0.05


@pytest.fixture(autouse=True)
def x64():
  # A context manager, so float64 never leaks into other test files.
  with jax.enable_x64(True):
    yield


def _random(rng, shape):
  # NumPy keeps test setup out of JAX's per-shape eager compilation.
  return jnp.asarray(rng.standard_normal(shape))


# Quadratic bilevel problem with a closed-form one-step hypergradient:
#   L_train = ½ wᵀAw + wᵀBα + aᵀw,  L_val = ½ wᵀPw + wᵀQα + ½ αᵀSα + pᵀw.
def _quadratic_train(w, alpha, batch):
  return 0.5 * w @ batch['A'] @ w + w @ batch['B'] @ alpha + batch['a'] @ w


def _quadratic_val(w, alpha, batch):
  return (0.5 * w @ batch['P'] @ w + w @ batch['Q'] @ alpha
          + 0.5 * alpha @ batch['S'] @ alpha + batch['p'] @ w)


def _spd(rng, n):
  m = _random(rng, (n, n))
  return m @ m.T / n + jnp.eye(n)


def _quadratic_problem():
  n, k = 6, 3
  rng = np.random.default_rng(0)
  train = dict(A=_spd(rng, n), B=_random(rng, (n, k)), a=_random(rng, (n,)))
  val = dict(P=_spd(rng, n), Q=_random(rng, (n, k)), S=_spd(rng, k),
             p=_random(rng, (n,)))
  w = _random(rng, (n,))
  alpha = _random(rng, (k,))
  m = _random(rng, (n,))
  return train, val, w, alpha, m


def test_quadratic_closed_form():
  train, val, w, alpha, m = _quadratic_problem()
  # w' = w − η(μm + Aw + Bα + a + λw), so dw'/dα = −ηB and
  # d/dα L_val(w'(α), α) = Qᵀw' + Sα − ηBᵀ(Pw' + Qα + p).
  w_prime = w - ETA * (MOMENTUM * m + train['A'] @ w + train['B'] @ alpha
                       + train['a'] + WEIGHT_DECAY * w)
  v = val['P'] @ w_prime + val['Q'] @ alpha + val['p']
  unrolled = val['Q'].T @ w_prime + val['S'] @ alpha - ETA * train['B'].T @ v
  first_order = val['Q'].T @ w + val['S'] @ alpha
  expected = {'first_order': first_order, 'fd': unrolled, 'exact': unrolled}
  for method in expected:  # the other methods: tests/test_hypergradient_family.py
    got = hypergradient(
        _quadratic_train, _quadratic_val, w, alpha, train, val, eta=ETA,
        method=method, momentum_buffer=m, momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY)
    # float64 rounding only: the central difference is exact on quadratics
    # (∇α L_train is affine in w).
    np.testing.assert_allclose(got, expected[method], rtol=1e-10,
                               err_msg=method)


# Small nonlinear model with pytree weights and architecture: a mixture of
# two activations weighted by softmax(alpha['mix']), scaled by alpha['gain'].
def _model(w, alpha, x):
  hidden = x @ w['hidden'][0] + w['hidden'][1]
  mix = jax.nn.softmax(alpha['mix'])
  hidden = mix[0] * jnp.tanh(hidden) + mix[1] * jnp.sin(hidden)
  return alpha['gain'][0] * hidden @ w['out']['kernel']


def _loss(w, alpha, batch):
  x, y = batch
  return jnp.mean((_model(w, alpha, x) - y) ** 2)


def _nonlinear_problem(num_examples: int = 8):
  rng = np.random.default_rng(1)
  w = {'hidden': (_random(rng, (4, 5)), _random(rng, (5,))),
       'out': {'kernel': _random(rng, (5, 2))}}
  alpha = {'mix': _random(rng, (2,)), 'gain': 1.0 + _random(rng, (1,))}
  train = (_random(rng, (num_examples, 4)), _random(rng, (num_examples, 2)))
  val = (_random(rng, (num_examples, 4)), _random(rng, (num_examples, 2)))
  return w, alpha, train, val


def _unrolled_grad(w, alpha, train, val, momentum_buffer, momentum,
                   weight_decay):
  """jax.grad of α ↦ L_val(w'(α), α), with w' written out by hand."""

  def unrolled(alpha):
    grad_w = jax.grad(_loss)(w, alpha, train)
    w_prime = jax.tree.map(
        lambda p, g, m: p - ETA * (momentum * m + g + weight_decay * p),
        w, grad_w, momentum_buffer)
    return _loss(w_prime, alpha, val)

  return jax.grad(unrolled)(alpha)


def _assert_trees_close(actual, expected, rtol, atol=0.0):
  jax.tree.map(
      lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol),
      actual, expected)


def _max_abs_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_exact_equals_autodiff_through_unrolled_step():
  w, alpha, train, val = _nonlinear_problem()
  zeros = jax.tree.map(jnp.zeros_like, w)
  got = hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA)
  expected = _unrolled_grad(w, alpha, train, val, zeros, MOMENTUM, 0.0)
  # Both are exact derivatives of the same function computed in a different
  # order, so they differ only by float64 rounding (~1e-16 per op).
  _assert_trees_close(got, expected, rtol=1e-10)


def test_momentum_and_weight_decay_enter_the_virtual_step():
  w, alpha, train, val = _nonlinear_problem()
  buffer = jax.tree.map(lambda p: 0.5 * jnp.cos(p), w)
  kwargs = dict(eta=ETA, momentum_buffer=buffer, momentum=MOMENTUM,
                weight_decay=WEIGHT_DECAY)
  expected = _unrolled_grad(w, alpha, train, val, buffer, MOMENTUM,
                            WEIGHT_DECAY)
  exact = hypergradient(_loss, _loss, w, alpha, train, val, **kwargs)
  _assert_trees_close(exact, expected, rtol=1e-10)  # rounding only, as above

  # The terms must matter here, or the check above would prove nothing.
  plain = hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA)
  assert _max_abs_diff(exact, plain) > 1e-3

  # 'fd' differs from 'exact' only in its mixed term, which is evaluated at w
  # and does not see the buffer or the decay: O(ε²) apart for small ε.
  fd = hypergradient(_loss, _loss, w, alpha, train, val, method='fd',
                     fd_epsilon=1e-4, **kwargs)
  _assert_trees_close(fd, expected, rtol=1e-6)


def test_no_momentum_buffer_means_zeros():
  w, alpha, train, val = _nonlinear_problem()
  zeros = jax.tree.map(jnp.zeros_like, w)
  for method in METHODS:
    got = hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA,
                        method=method, momentum_buffer=None)
    expected = hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA,
                             method=method, momentum_buffer=zeros)
    _assert_trees_close(got, expected, rtol=1e-12)  # identical computation


def test_fd_error_is_second_order_in_epsilon():
  w, alpha, train, val = _nonlinear_problem()
  exact = hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA)

  def fd_error(epsilon):
    fd = hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA,
                       method='fd', fd_epsilon=epsilon)
    return _max_abs_diff(fd, exact)

  # Central differences: error = c·ε² + O(ε⁴). At ε ≤ 1e-2 the truncation
  # error (≳1e-8 here) dwarfs float64 rounding (~1e-16/ε ≈ 1e-13), so a
  # tenfold smaller ε must shrink the error about a hundredfold.
  coarse, fine = fd_error(1e-2), fd_error(1e-3)
  assert fine > 0
  assert 50 < coarse / fine < 200, (coarse, fine)


def test_fd_step_size_is_epsilon_over_global_norm_of_v():
  # ∇α L_train = Σ w⁴/24 is quartic in w, so the central difference has the
  # closed-form error (R²/6)·Σ w v³ with no higher-order terms, and v = c is
  # constant: fd − exact = −η (ε/‖c‖)²/6 · Σ w c³, ‖c‖ over both leaves.
  rng = np.random.default_rng(2)
  w = (_random(rng, (3,)), {'b': _random(rng, (2, 2))})
  c = (_random(rng, (3,)), {'b': _random(rng, (2, 2))})
  alpha = jnp.ones(1)
  epsilon = 0.5

  def train_loss(w, alpha, batch):
    del batch
    leaves = jax.tree.leaves(w)
    return (alpha[0] * sum(jnp.sum(x ** 4) for x in leaves) / 24
            + sum(jnp.sum(x ** 2) for x in leaves) / 2)

  def val_loss(w, alpha, batch):
    del batch
    return (sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(w),
                                                jax.tree.leaves(c)))
            + jnp.sum(alpha ** 2))

  kwargs = dict(eta=ETA, fd_epsilon=epsilon)
  fd = hypergradient(train_loss, val_loss, w, alpha, None, None,
                     method='fd', **kwargs)
  exact = hypergradient(train_loss, val_loss, w, alpha, None, None, **kwargs)
  dot = lambda f, a, b: sum(jnp.sum(f(x, y)) for x, y in zip(
      jax.tree.leaves(a), jax.tree.leaves(b)))
  squared_norm = dot(lambda x, y: x * y, c, c)
  expected = -ETA * epsilon ** 2 / squared_norm / 6 * dot(
      lambda x, y: x * y ** 3, w, c)
  # The difference is ~1e-2; float64 rounding of both results is ~1e-15.
  np.testing.assert_allclose(fd - exact, [expected], rtol=1e-9)


def test_fd_with_zero_validation_gradient_in_w():
  # v = 0 (L_val independent of w): the mixed term must vanish, not be 0/0.
  w, alpha, train, val = _nonlinear_problem()

  def val_loss(w, alpha, batch):
    del w, batch
    return jnp.sum(alpha['mix'] ** 2)

  got = hypergradient(_loss, val_loss, w, alpha, train, val, eta=ETA,
                      method='fd')
  expected = {'mix': 2 * alpha['mix'], 'gain': jnp.zeros(1)}
  _assert_trees_close(got, expected, rtol=1e-12)  # exact arithmetic


@pytest.mark.parametrize('method', METHODS)
def test_jit_matches_eager_with_traced_eta(method):
  w, alpha, train, val = _nonlinear_problem()

  def fn(w, alpha, train, val, eta):
    return hypergradient(_loss, _loss, w, alpha, train, val, eta=eta,
                         method=method, weight_decay=WEIGHT_DECAY)

  eager = fn(w, alpha, train, val, ETA)
  jitted = jax.jit(fn)(w, alpha, train, val, jnp.asarray(ETA))
  # XLA may fuse and reorder float64 ops; 'fd' divides a difference by 2R,
  # which amplifies that rounding by ~1/ε, and undamped CG on this
  # indefinite Hessian divides by small curvatures pᵀHp (measured 1.3e-9).
  rtol = 1e-7 if method == 'implicit_cg' else 1e-9
  _assert_trees_close(jitted, eager, rtol=rtol, atol=1e-12)


def test_invalid_method():
  w, alpha, train, val = _nonlinear_problem()
  with pytest.raises(ValueError, match="'first_order', 'fd', 'exact'"):
    hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA,
                  method='second_order')


_DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from darts_jax.bilevel.hypergradient import METHODS, hypergradient

    def loss(w, alpha, batch):
      x, y = batch
      mix = jax.nn.softmax(alpha)
      h = x @ w['hidden']
      h = mix[0] * jnp.tanh(h) + mix[1] * jnp.sin(h)
      return jnp.mean((h @ w['out'] - y) ** 2)

    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
    w = {'hidden': normal(3, 4), 'out': normal(4, 2)}
    alpha = normal(2)
    buffer = jax.tree.map(lambda p: 0.1 * p, w)
    train = (normal(8, 3), normal(8, 2))
    val = (normal(8, 3), normal(8, 2))
    shard = lambda batch: jax.tree.map(lambda x: x.reshape(4, 2, -1), batch)
    mesh = Mesh(np.array(jax.devices()), ('batch',))

    def global_mean(loss):
      return lambda *args: jax.lax.pmean(loss(*args), 'batch')

    def run_shard_map(fn, check_vma):
      return jax.jit(jax.shard_map(
          fn, mesh=mesh, in_specs=(P(), P(), P('batch'), P('batch')),
          out_specs=P(), check_vma=check_vma))(w, alpha, train, val)

    def every_method(loss, **options):
      # One program for all methods: four compilations instead of 24.
      kwargs = dict(eta=0.1, momentum_buffer=buffer, weight_decay=3e-4, **options)
      return lambda *args: {method: hypergradient(loss, loss, *args, method=method, **kwargs)
                            for method in METHODS}

    single = jax.jit(every_method(loss))(w, alpha, train, val)
    pmapped = jax.pmap(every_method(loss, axis_name='batch'), axis_name='batch',
                       in_axes=(None, None, 0, 0))(w, alpha, shard(train), shard(val))
    # Without VMA checks, shard_map gradients are per-device, as in pmap.
    unchecked = run_shard_map(every_method(loss, axis_name='batch'), check_vma=False)
    # With them, JAX already psums gradients of replicated inputs: global
    # mean losses and no axis_name give the global hypergradient.
    checked = run_shard_map(every_method(global_mean(loss)), check_vma=True)
    for method in METHODS:
      # float32: the sharded runs average per-device means, a different
      # summation order than the global mean (rounding ~1e-7 relative per op,
      # accumulated over a few passes; 'fd' also divides by 2R ~ 1e-2).
      for got in [*pmapped[method], unchecked[method], checked[method]]:
        np.testing.assert_allclose(got, single[method], rtol=1e-5, atol=1e-5,
                                   err_msg=method)
    print('ok')
""")


def test_axis_name_data_parallel_matches_global_batch():
  # The host device count is fixed when jax initialises, hence the subprocess.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ,
             XLA_FLAGS=os.environ['XLA_FLAGS'] + ' --xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(
                 [repo, os.environ.get('PYTHONPATH', '')]))
  result = subprocess.run([sys.executable, '-c', _DATA_PARALLEL_SCRIPT],
                          env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'ok'


def test_exact_with_clipped_virtual_step_equals_autodiff():
  """The RNN search's virtual step, ``w' = w − η(c·g + λw)`` with the clip coefficient ``c`` a constant."""
  w, alpha, train, val = _nonlinear_problem()

  def norm(tree):
    return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))

  max_norm = 0.3 * float(jax.jit(lambda: norm(jax.grad(_loss)(w, alpha, train)))())  # c ≈ 0.3: the clip is active

  def unrolled(alpha):
    grad_w = jax.grad(_loss)(w, alpha, train)
    c = jax.lax.stop_gradient(jnp.minimum(1.0, max_norm / (norm(grad_w) + 1e-6)))
    w_prime = jax.tree.map(lambda p, g: p - ETA * (c * g + WEIGHT_DECAY * p), w, grad_w)
    return _loss(w_prime, alpha, val)

  @jax.jit
  def results():
    kwargs = dict(eta=ETA, momentum=0.0, weight_decay=WEIGHT_DECAY)
    return (hypergradient(_loss, _loss, w, alpha, train, val, grad_clip=max_norm, **kwargs),
            hypergradient(_loss, _loss, w, alpha, train, val, **kwargs),
            hypergradient(_loss, _loss, w, alpha, train, val, method='fd', grad_clip=max_norm, fd_epsilon=1e-4,
                          **kwargs),
            jax.grad(unrolled)(alpha))

  exact, unclipped, fd, expected = results()
  # Exact derivatives of one function in a different order: float64 rounding only (XLA may reorder: 1e-10).
  _assert_trees_close(exact, expected, rtol=1e-10)
  assert _max_abs_diff(exact, unclipped) > 1e-3  # the clip changed the result
  _assert_trees_close(fd, exact, rtol=1e-6, atol=1e-9)  # fd: the same up to its O(ε²) difference error
  with pytest.raises(ValueError, match='grad_clip'):
    hypergradient(_loss, _loss, w, alpha, train, val, eta=ETA, method='unrolled', grad_clip=1.0)
