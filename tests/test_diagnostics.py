"""Tests of the search diagnostics: the Hessian eigenvalue against a dense Hessian, and the host-side diagnostics of
alphas and genotypes (darts_jax.dynamics)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import dynamics
from darts_jax.cnn import genotypes


def _dense_dominant(loss_fn, alphas):
  flat, unravel = jax.flatten_util.ravel_pytree(alphas)
  eigenvalues = np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(lambda x: loss_fn(unravel(x))))(flat), np.float64))
  return eigenvalues[np.argmax(np.abs(eigenvalues))]


def _eigenvalue(loss_fn, alphas, **kwargs):
  # Jitted: eager Lanczos would dispatch (and compile) its ops one by one.
  return jax.jit(lambda a: dynamics.dominant_hessian_eigenvalue(loss_fn, a, **kwargs))(alphas)


def _softmax_problem(seed, shapes={'normal': (5, 4), 'reduce': (5, 4)}):
  """A small DARTS-like loss: cross-entropy of a linear model whose features are mixed by softmax(alpha)."""
  keys = jax.random.split(jax.random.key(seed), 4)
  alphas = {k: jax.random.normal(key, shape) for (k, shape), key in zip(shapes.items(), keys[:2])}
  x = jax.random.normal(keys[2], (16, 5, 4))
  labels = jax.random.randint(keys[3], (16,), 0, 5)

  def loss_fn(a):
    mixed = jnp.einsum('nek,ek->ne', x, jax.nn.softmax(a['normal'], -1) + jax.nn.softmax(a['reduce'], -1) ** 2)
    return -jnp.mean(jax.nn.log_softmax(3 * mixed)[jnp.arange(16), labels])

  return loss_fn, alphas


@pytest.mark.parametrize('seed', [0, 1])
def test_dominant_eigenvalue_matches_the_dense_hessian(seed):
  loss_fn, alphas = _softmax_problem(seed)
  expected = _dense_dominant(loss_fn, alphas)
  # num_iterations >= the 40 parameters: Lanczos spans the whole space, so its Ritz values are the eigenvalues up
  # to float32 rounding of the Hessian-vector products (~1e-6 relative; 1e-4 leaves room for the reorthogonalised
  # basis).
  full = _eigenvalue(loss_fn, alphas, num_iterations=64)
  np.testing.assert_allclose(full, expected, rtol=1e-4)
  # 15 steps on 40 parameters: the extreme eigenvalue has converged (these spectra have a clear top gap), to
  # within 1%.
  few = _eigenvalue(loss_fn, alphas, num_iterations=15, rng=jax.random.key(seed))
  np.testing.assert_allclose(few, expected, rtol=1e-2)
  # Central differences of gradients at ε = 1e-2: O(ε²) truncation plus float32 rounding / 2ε, ~1e-4 relative.
  fd = _eigenvalue(loss_fn, alphas, num_iterations=64, method='fd')
  np.testing.assert_allclose(fd, expected, rtol=1e-3)


@pytest.mark.parametrize('method', ['exact', 'fd'])
def test_the_gradient_comes_with_the_eigenvalue(method):
  loss_fn, alphas = _softmax_problem(0)
  _, gradient = jax.jit(lambda a: dynamics.hessian_eigenvalue_and_gradient(loss_fn, a, num_iterations=3,
                                                                               method=method))(alphas)
  # fd: the mean of gradients at α ± εv, O(ε²) = 1e-4 from the gradient at α.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), gradient, jax.grad(loss_fn)(alphas))


def test_dominant_eigenvalue_keeps_the_sign_of_the_largest_magnitude():
  # A quadratic with eigenvalues -5, 1, 2 (rotated): the dominant one is negative.
  q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
  h = jnp.asarray(q @ np.diag([-5.0, 1.0, 2.0]) @ q.T, jnp.float32)
  loss_fn = lambda a: 0.5 * a['x'] @ h @ a['x'] + jnp.sum(a['y'] ** 2)  # noqa: E731 (second leaf: eigenvalue 2)
  value = _eigenvalue(loss_fn, {'x': jnp.ones(3), 'y': jnp.zeros(2)}, num_iterations=5)
  np.testing.assert_allclose(value, -5.0, rtol=1e-5)
  # An invariant start (a Hessian that is a multiple of the identity) stops Lanczos after one step without NaNs.
  value = _eigenvalue(lambda a: 1.5 * jnp.sum(a ** 2), jnp.ones(4), num_iterations=4)
  np.testing.assert_allclose(value, 3.0, rtol=1e-6)


def test_ritz_values_hold_the_largest_and_the_smallest_eigenvalue():
  # Eigenvalues -5, 1, 2 (rotated) and 2, 2 (the second leaf): after 5 steps on 5 parameters the Ritz values are the
  # spectrum; R-DARTS's quantity is the largest (2), not the dominant one (-5).
  q = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
  h = jnp.asarray(q @ np.diag([-5.0, 1.0, 2.0]) @ q.T, jnp.float32)
  loss_fn = lambda a: 0.5 * a['x'] @ h @ a['x'] + jnp.sum(a['y'] ** 2)  # noqa: E731
  ritz, gradient = jax.jit(lambda a: dynamics.hessian_ritz_values_and_gradient(loss_fn, a, num_iterations=5))(
      {'x': jnp.ones(3), 'y': jnp.ones(2)})
  np.testing.assert_allclose(ritz[0], -5.0, rtol=1e-5)
  np.testing.assert_allclose(ritz[-1], 2.0, rtol=1e-5)
  np.testing.assert_allclose(gradient['y'], 2 * np.ones(2), rtol=1e-6)


def test_dominant_eigenvalue_averages_hessians_over_a_named_axis():
  """Under pmap (vmap with an axis name here), each device's loss is its share; the eigenvalue is that of the mean
  loss's Hessian."""
  losses = [_softmax_problem(seed)[0] for seed in (3, 4)]
  _, alphas = _softmax_problem(3)
  expected = _dense_dominant(lambda a: (losses[0](a) + losses[1](a)) / 2, alphas)

  def per_device(i):
    loss_fn = lambda a: jax.lax.switch(i, losses, a)  # noqa: E731
    return dynamics.dominant_hessian_eigenvalue(loss_fn, alphas, num_iterations=40, axis_name='d')

  values = jax.jit(jax.vmap(per_device, axis_name='d'))(jnp.arange(2))
  np.testing.assert_allclose(values, [expected] * 2, rtol=1e-4)


def test_entropy_and_max_weight():
  alphas = {'normal': np.zeros((14, 8)), 'reduce': np.eye(14, 8) * 100}
  assert dynamics.alpha_entropy(alphas)['normal'] == pytest.approx(np.log(8))
  weights = dynamics.alpha_max_weight(alphas)
  assert weights['normal'] == pytest.approx(1 / 8)
  assert weights['reduce'] == pytest.approx((8 * 1.0 + 6 / 8) / 14)  # 8 committed rows, 6 uniform


def _genotype(normal, reduce=None):
  reduce = reduce or normal
  return genotypes.Genotype(normal=normal, normal_concat=[2, 3], reduce=reduce, reduce_concat=[2, 3])


A = [('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_5x5', 2), ('skip_connect', 0)]
SWAPPED = [A[1], A[0], A[2], A[3]]  # node 0's choices in the other order: the same cell
B = [('sep_conv_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_5x5', 2), ('dil_conv_3x3', 1)]


def test_stability_compares_each_nodes_choices_as_a_set():
  assert dynamics.genotype_stability(_genotype(A), _genotype(SWAPPED)) == {'normal': 1.0, 'reduce': 1.0}
  assert dynamics.genotype_stability(_genotype(A), _genotype(B, A)) == {'normal': 0.5, 'reduce': 1.0}
  assert dynamics.same_architecture(_genotype(A), _genotype(SWAPPED))
  assert not dynamics.same_architecture(_genotype(A), _genotype(B, A))


def test_unchanged_epochs_and_skip_count():
  history = [_genotype(B), _genotype(A), _genotype(SWAPPED), _genotype(A)]
  assert [dynamics.unchanged_epochs(history[:n]) for n in range(1, 5)] == [0, 0, 1, 2]
  assert dynamics.skip_count(_genotype(A)) == 2 and dynamics.skip_count(_genotype(B, A), 'normal') == 0
  entries = dynamics.epoch_diagnostics({'normal': np.zeros((5, 8)), 'reduce': np.zeros((5, 8))}, history)
  assert entries['unchanged_epochs'] == 2 and entries['skip_connect_normal'] == 2
  assert entries['stability_normal'] == 1.0 and entries['alpha_max_weight_reduce'] == pytest.approx(1 / 8)


def test_edge_labels_follow_the_supernet_edge_order():
  assert dynamics.edge_labels(2) == ['(0, 0)', '(0, 1)', '(1, 0)', '(1, 1)', '(1, 2)']
  assert len(dynamics.edge_labels(4)) == genotypes.num_edges(4) == 14
