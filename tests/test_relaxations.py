"""Relaxations, schedules and regularisers (darts_jax.dynamics): their values, limits and gradients, and the
exact hypergradient through each of them (float64).

Every test computes its values in one jitted function: eager JAX compiles each small op separately, which on a
shared CPU costs more than the whole program."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import dynamics
from darts_jax.bilevel.hypergradient import hypergradient, virtual_step
from darts_jax.dynamics import regularizers

ALPHAS = {'normal': np.array([[0.3, -1.2, 0.8, 0.1], [1.5, 0.2, -0.4, 0.0]], np.float32),
          'reduce': np.array([[-0.6, 0.9, 0.05, 0.4]], np.float32)}
KEY = jax.random.key(7)

# Every relaxation of the search, with parameters that make each differ from plain softmax.
RELAXATIONS = {
    'softmax_tau': dynamics.Relaxation('softmax', temperature=0.5),
    'gumbel_soft': dynamics.Relaxation('gumbel_softmax', temperature=0.7),
    'gumbel_hard': dynamics.Relaxation('gumbel_softmax', temperature=0.7, hard=True),
    'gaussian': dynamics.Relaxation('gaussian_softmax', noise_scale=0.5),
    'sigmoid': dynamics.Relaxation('sigmoid', temperature=2.0),
    'dirichlet_elu': dynamics.Relaxation('dirichlet', concentration='elu'),
    'dirichlet_softplus': dynamics.Relaxation('dirichlet', concentration='softplus'),
}


def _close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def _full(value):
  return jax.tree.map(lambda a: np.full(a.shape, value, np.float32), ALPHAS)


# ----------------------------------------------------------------------------------------------------------------
# The relaxations.


def test_temperature_limits_are_uniform_and_one_hot():
  @jax.jit
  def limits(alphas):
    noisy = dynamics.gumbel_softmax(KEY, alphas, temperature=1e-4)
    return (dynamics.softmax(alphas, temperature=1e4), dynamics.softmax(alphas, temperature=1e-4),
            dynamics.one_hot_argmax(alphas), noisy, dynamics.one_hot_argmax(noisy),
            dynamics.sigmoid(alphas, temperature=1e4))

  flat, sharp, argmax, noisy, noisy_argmax, gates = limits(ALPHAS)
  # τ = 1e4 over alphas within 3 of each other: every weight is 1/K to within 3e-4 relative.
  _close(flat, _full(0.25), rtol=1e-3)
  # τ = 1e-4 with gaps of ≥ 0.1: the others' weights are below exp(-1000), i.e. exactly 0 in float32.
  _close(sharp, argmax, atol=0)
  _close(noisy, noisy_argmax, atol=0)  # one-hot, of the perturbed alphas
  _close(gates, _full(0.5), rtol=1e-3)


def test_hard_gumbel_is_one_hot_forward_with_the_soft_samples_gradient():
  # A linear loss has the same cotangent at the soft and the hard sample, so straight-through gives it the
  # gradient of the soft sample exactly.
  c = jax.tree.map(lambda a: np.arange(a.size, dtype=np.float32).reshape(a.shape) ** 2, ALPHAS)

  def linear(alphas, hard):
    weights = dynamics.gumbel_softmax(KEY, alphas, 0.7, hard)
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(weights), jax.tree.leaves(c)))

  @jax.jit
  def run(alphas):
    return (dynamics.gumbel_softmax(KEY, alphas, 0.7), dynamics.gumbel_softmax(KEY, alphas, 0.7, hard=True),
            jax.grad(linear)(alphas, True), jax.grad(linear)(alphas, False))

  soft, hard, hard_grad, soft_grad = run(ALPHAS)
  for s, h in zip(jax.tree.leaves(soft), jax.tree.leaves(hard)):
    np.testing.assert_array_equal(h, np.eye(s.shape[-1])[np.argmax(s, -1)])  # exactly one-hot, the soft argmax
  _close(hard_grad, soft_grad, rtol=1e-6)
  assert max(np.abs(g).max() for g in jax.tree.leaves(hard_grad)) > 0.1


def test_gumbel_argmax_samples_the_softmax_and_dirichlet_samples_its_mean():
  alphas = np.array([0.5, -0.5, 1.0], np.float32)

  @jax.jit
  def run(alphas):
    keys = jax.random.split(KEY, 20000)
    hard = jax.vmap(lambda k: dynamics.gumbel_softmax(k, alphas, hard=True))(keys)
    samples = jax.vmap(lambda k: dynamics.dirichlet(k, alphas))(keys)
    return hard.mean(0), samples.sum(-1), samples.mean(0), dynamics.dirichlet_mean(alphas)

  frequencies, sums, sample_mean, mean = run(alphas)
  # 20000 draws: the standard error of a frequency or a mean of weights is below 0.0036; 4 of them.
  np.testing.assert_allclose(frequencies, jax.nn.softmax(alphas), atol=0.015)
  np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
  np.testing.assert_allclose(sample_mean, mean, atol=0.015)


def test_concentrations_noise_and_deterministic_weights():
  a = np.array([-1.0, 0.0, 2.0], np.float32)

  @jax.jit
  def run(alphas):
    out = {name: (r.probabilities(alphas, 3), r.deterministic(alphas, 3)) for name, r in RELAXATIONS.items()}
    expected = {'softmax_tau': dynamics.softmax(alphas, 0.5), 'gumbel_soft': dynamics.softmax(alphas, 0.7),
                'gumbel_hard': dynamics.softmax(alphas, 0.7), 'gaussian': dynamics.softmax(alphas),
                'sigmoid': dynamics.sigmoid(alphas, 2.0), 'dirichlet_elu': dynamics.dirichlet_mean(alphas),
                'dirichlet_softplus': dynamics.dirichlet_mean(alphas, 'softplus')}
    return (out, expected, dynamics.concentration(a, 'elu'), dynamics.concentration(a, 'softplus'),
            dynamics.gaussian_softmax(KEY, alphas, noise_scale=0.0), dynamics.softmax(alphas))

  out, expected, elu, softplus, noiseless, softmax = run(ALPHAS)
  np.testing.assert_allclose(elu, [np.exp(-1.0), 1.0, 3.0], rtol=1e-6)
  np.testing.assert_allclose(softplus, np.log1p(np.exp([-1.0, 0.0, 2.0])), rtol=1e-6)
  _close(noiseless, softmax, rtol=1e-6)
  for name, relaxation in RELAXATIONS.items():
    probabilities, deterministic = out[name]
    _close(probabilities, expected[name], rtol=1e-6)
    hard = {k: np.eye(4, dtype=np.float32)[np.argmax(v, -1)] for k, v in expected[name].items()}
    _close(deterministic, hard if relaxation.hard else expected[name], rtol=1e-6)
  with pytest.raises(ValueError, match='needs a PRNG key'):
    RELAXATIONS['gumbel_soft'].sample(None, ALPHAS)
  with pytest.raises(ValueError, match="Unknown relaxation 'gumbel'"):
    dynamics.Relaxation('gumbel')


def test_uniform_perturbation_stays_a_distribution_near_the_weights():
  @jax.jit
  def run(alphas):
    weights = dynamics.softmax(alphas)
    return (weights, dynamics.uniform_perturbation(KEY, weights, 0.05),
            dynamics.uniform_perturbation(KEY, weights, 0.0))

  weights, perturbed, unperturbed = run(ALPHAS)
  for w, p in zip(jax.tree.leaves(weights), jax.tree.leaves(perturbed)):
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    # Noise of at most 0.05 per weight, then a renormalisation by a sum within 1 ± 4·0.05.
    assert np.all(p >= 0) and 0 < np.abs(p - w).max() < 0.05 * 2 / (1 - 4 * 0.05)
  _close(unperturbed, weights, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Schedules and regularisers.


def test_schedules_values():
  @jax.jit
  def run(steps):
    per_epoch = dynamics.make_schedule('exponential', 8.0, 1.0, num_epochs=4, steps_per_epoch=3)
    return (dynamics.constant_schedule(2.0)(steps), dynamics.linear_schedule(10.0, 0.1, 10)(steps),
            dynamics.exponential_schedule(1.0, 0.01, 10)(steps), dynamics.cosine_schedule(1.0, 0.0, 10)(steps),
            per_epoch(jnp.arange(13)), dynamics.make_schedule('constant', 3.0, 1.0, 4, 3)(steps))

  constant, linear, exponential, cosine, per_epoch, constant_config = run(np.array([0, 5, 10, 20]))
  np.testing.assert_allclose(constant, 2.0)
  np.testing.assert_allclose(linear, [10.0, 5.05, 0.1, 0.1], rtol=1e-6)
  np.testing.assert_allclose(exponential, [1.0, 0.1, 0.01, 0.01], rtol=1e-5)
  np.testing.assert_allclose(cosine, [1.0, 0.5, 0.0, 0.0], atol=1e-6)
  # Per epoch: 4 epochs of 3 steps from 8 to 1 exponentially: 8, 4, 2, 1, constant within each epoch.
  np.testing.assert_allclose(per_epoch, [8] * 3 + [4] * 3 + [2] * 3 + [1] * 4, rtol=1e-5)
  np.testing.assert_allclose(constant_config, 3.0)
  with pytest.raises(ValueError, match='positive values'):
    dynamics.exponential_schedule(1.0, 0.0, 10)
  with pytest.raises(ValueError, match="Unknown schedule 'step'"):
    dynamics.make_schedule('step', 1.0, 0.1, 4, 3)


def test_regularizer_values():
  relaxation = dynamics.Relaxation()
  # β-DARTS's linear weight: 0 at the first epoch, the value at the last; summed with the entropy term.
  penalty = regularizers.sum_penalties(regularizers.make_penalties(
      {'beta_decay': 2.0, 'entropy': -0.5, 'zero_one': 0.0}, relaxation, 'linear', num_epochs=3, steps_per_epoch=2))
  uniform, one_hot = np.full((3, 4), 0.25, np.float32), np.eye(3, 4, dtype=np.float32)

  @jax.jit
  def run(alphas):
    weights = relaxation.sample(None, alphas)
    return (regularizers.entropy({'a': uniform, 'b': uniform}), regularizers.entropy(one_hot),
            jax.grad(regularizers.entropy)(one_hot), regularizers.zero_one_loss(one_hot),
            regularizers.zero_one_loss(uniform * 2), regularizers.beta_decay(alphas),
            regularizers.entropy(dynamics.softmax(alphas)), [penalty(alphas, weights, s) for s in (0, 3, 5)])

  entropy_uniform, entropy_one_hot, entropy_grad, zero_one, zero_one_half, beta, entropy, penalties = run(ALPHAS)
  np.testing.assert_allclose(entropy_uniform, 2 * np.log(4), rtol=1e-6)
  assert float(entropy_one_hot) == 0.0 and np.all(np.isfinite(entropy_grad))  # log 0 never reaches the gradient
  np.testing.assert_allclose(zero_one, -0.25, rtol=1e-6)
  np.testing.assert_allclose(zero_one_half, 0.0)
  expected_beta = sum(np.mean(np.log(np.exp(a.astype(np.float64)).sum(-1))) for a in ALPHAS.values())
  np.testing.assert_allclose(beta, expected_beta, rtol=1e-6)
  np.testing.assert_allclose(penalties, np.array([0.0, 0.5, 1.0]) * (2.0 * expected_beta - 0.5 * float(entropy)),
                             rtol=1e-5)
  assert regularizers.sum_penalties([]) is None
  with pytest.raises(ValueError, match="Unknown regularizer 'l1'"):
    regularizers.make_penalties({'l1': 1.0}, relaxation)


# ----------------------------------------------------------------------------------------------------------------
# The exact hypergradient through every relaxation, float64.


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _problem():
  rng = np.random.default_rng(0)
  f = lambda *shape: jnp.asarray(rng.standard_normal(shape))
  # One array of edges: every leaf of a pytree is sampled by its own call (tested above), which here would only
  # repeat the program (the Dirichlet's gamma sampler and its gradient compile slowly).
  alphas = jnp.asarray(np.concatenate(list(ALPHAS.values())), jnp.float64)
  return f(5, 4), alphas, f(6, 5), f(6, 5), f(5, 4)


def _loss(relaxation, key):
  """Each op k computes tanh(x w_k); each edge mixes them with its row of weights; a cross-entropy over edges
  (target: edge 0) makes the loss nonlinear in the weights and the alphas together."""
  def loss(w, alphas, x):
    weights = relaxation.sample(key, alphas, 4)  # (edges, ops)
    edges = jnp.tanh(x @ w) @ weights.T
    return jnp.mean(jax.nn.logsumexp(edges, axis=-1) - edges[:, 0])
  return loss


@pytest.mark.usefixtures('x64')
def test_exact_hypergradient_is_autodiff_through_the_unrolled_step_with_the_same_sample():
  """For every relaxation (one Dirichlet concentration: the other differs only in a function of the alphas,
  checked above), with its sample fixed by the key: all in one program, one compilation."""
  w, alphas, train, val, m = _problem()
  kwargs = dict(eta=0.3, momentum=0.9, weight_decay=0.05)
  names = [name for name in RELAXATIONS if name != 'dirichlet_softplus']

  @jax.jit
  def run(w, alphas, m):
    results = {}
    for name in names:
      loss = _loss(RELAXATIONS[name], KEY)
      exact = hypergradient(loss, loss, w, alphas, train, val, method='exact', momentum_buffer=m, **kwargs)
      unrolled = jax.grad(lambda a: loss(virtual_step(w, jax.grad(loss)(w, a, train), m, **kwargs), a, val))(alphas)
      results[name] = exact, unrolled, jax.grad(loss, argnums=1)(w, alphas, val)
    return results

  for name, (exact, unrolled, first_order) in run(w, alphas, m).items():
    # Forward-over-reverse against reverse-over-reverse differentiation of one function: float64 rounding (~1e-15).
    # A relaxation whose derivative rules disagree between the modes (the straight-through rule, the gamma draws'
    # implicit gradients) would be off at O(1e-2), as is the first-order gradient (no mixed term), checked below.
    _close(exact, unrolled, rtol=1e-9, atol=1e-12)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(exact),
                                                           jax.tree.leaves(first_order))) > 1e-4, name
