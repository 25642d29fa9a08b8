"""SDARTS-ADV: the PGD attack on the weight step's mixing weights (`relaxations.adversarial_perturbation`) and its
place in the bilevel step: the weight step trains at the attacked weights, the architecture step is untouched."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import example_space
from darts_jax.bilevel.step import make_search_step
from darts_jax.training.optimizers import arch_optimizer
from darts_jax.dynamics import relaxations
from darts_jax.tasks import search
from darts_jax.training import optimizers

EPSILON = 0.2


def _example_setup():
  """The example space's problem, a state with O(1) alphas (a non-uniform softmax) and one batch pair."""
  problem = example_space.search_problem(learning_rate=0.1, momentum=0.9, weight_decay=3e-4, axis_name=None)
  state = example_space.create_search_state(jax.random.key(0), 8, optimizers.weight_optimizer(0.1, momentum=0.9),
                                            arch_optimizer(0.1))
  state = state.replace(alphas=state.alphas * 1000)
  x, labels = example_space.make_data(0, 64, 8)
  return problem, state, (x[:32], labels[:32]), (x[32:], labels[32:])


def _loss_and_grad(problem, state, batch):
  return jax.value_and_grad(lambda w: problem.loss(state.params, {}, w, batch, True)[0])


def test_attack_raises_the_loss_and_stays_in_the_ball_on_the_simplex():
  """On a smooth loss of the weights (cross-entropy of fixed logits mixed by them: any loss of the weights will do,
  the attack is generic)."""
  rng = np.random.default_rng(0)
  weights = jax.nn.softmax(jnp.asarray(rng.normal(size=(3, 5)), jnp.float32))
  features, labels = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32), jnp.array([0, 2, 1])
  loss_and_grad = jax.value_and_grad(lambda w: optax.softmax_cross_entropy_with_integer_labels(
      jnp.einsum('ek,ekc->ec', w, features), labels).mean())
  attacked, clean, worst = jax.jit(lambda w: (
      lambda a: (a, loss_and_grad(w)[0], loss_and_grad(a)[0]))(
          relaxations.adversarial_perturbation(jax.random.key(1), w, EPSILON, loss_and_grad, steps=7)))(weights)
  # The attack must find a strictly worse point (the fallback to the clean weights would give equality).
  assert worst > clean + 1e-2
  # Within the ball and on the simplex up to float32 rounding of the bisection (1e-6 of values <= 1).
  assert np.max(np.abs(attacked - weights)) <= EPSILON + 1e-6
  assert np.all(attacked >= 0) and np.allclose(np.sum(attacked, -1), 1, atol=1e-5)


def test_projection_is_the_nearest_point_of_the_ball_on_the_simplex():
  """The variational inequality that characterises the projection p of u onto a convex set C:
  <u - p, v - p> <= 0 for every v in C (checked on random feasible v, tolerance float32 rounding)."""
  rng = np.random.default_rng(0)
  center = jax.nn.softmax(3 * rng.normal(size=(6, 5))).astype(np.float32)
  u = (center + rng.normal(size=center.shape)).astype(np.float32)
  p = np.asarray(relaxations.project_to_ball(u, center, EPSILON), np.float64)
  assert np.max(np.abs(p - center)) <= EPSILON + 1e-6 and np.all(p >= 0) and np.allclose(p.sum(-1), 1, atol=1e-5)
  c = np.asarray(center, np.float64)
  for _ in range(200):  # feasible v = c + s·d, d zero-sum, s up to the first constraint it meets
    d = rng.normal(size=c.shape)
    d -= d.mean(-1, keepdims=True)
    limit = np.min(np.where(d > 0, np.minimum(EPSILON, 1 - c) / np.where(d > 0, d, 1),
                            np.minimum(EPSILON, c) / np.where(d < 0, -d, 1)), -1, keepdims=True)
    v = c + rng.uniform(size=(c.shape[0], 1)) * limit * d
    assert np.all(np.sum((u - p) * (v - p), -1) <= 1e-5)
  # Points of the set stay where they are.
  np.testing.assert_allclose(relaxations.project_to_ball(center, center, EPSILON), center, atol=1e-6)


@pytest.mark.parametrize('method,passes', [
    ('first_order', 'auto'), pytest.param('exact', 'chained', marks=pytest.mark.slow),
    pytest.param('exact', 'direct', marks=pytest.mark.slow)])
def test_weight_step_trains_at_the_attack_and_the_hypergradient_is_the_plain_one(method, passes):
  problem, state, train, val = _example_setup()
  relaxation = relaxations.Relaxation()

  def attack(key, weights, step, loss_and_grad):
    return relaxations.adversarial_perturbation(key, weights, EPSILON, loss_and_grad, steps=3)

  def run(perturbation):
    step = make_search_step(problem, method=method, relaxation=relaxation, weight_perturbation=perturbation,
                            passes=passes)
    return jax.jit(step)(state, train, val)

  (attacked, attacked_metrics), (plain, plain_metrics) = run(attack), run(None)
  # The architecture step never sees the attack: same alphas, same hypergradient (float32 rounding of two
  # differently fused programs).
  np.testing.assert_allclose(attacked.alphas, plain.alphas, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(attacked_metrics['arch_grad_norm'], plain_metrics['arch_grad_norm'], rtol=1e-5)
  # The weight step: the gradient at the attack of the new alphas' weights, the attack recomputed here with the
  # step's key (bilevel.step: split(fold_in(fold_in(rng, step), 1))[1]).
  key = jax.random.split(jax.random.fold_in(jax.random.fold_in(state.rng, 0), 1))[1]
  loss_and_grad = _loss_and_grad(problem, state, train)
  worst = jax.jit(lambda w: relaxations.adversarial_perturbation(key, w, EPSILON, loss_and_grad, steps=3))(
      jax.nn.softmax(plain.alphas))
  np.testing.assert_allclose(attacked_metrics['loss'], loss_and_grad(worst)[0], rtol=1e-5)
  assert attacked_metrics['loss'] > plain_metrics['loss'] + 1e-3
  grads = jax.grad(lambda p: problem.loss(p, {}, worst, train, True)[0])(state.params)
  updates, _ = state.weight_tx.update(grads, state.weight_opt_state, state.params)
  expected = optax.apply_updates(state.params, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), attacked.params, expected)


@pytest.mark.slow
def test_search_runs_sdarts_adv_from_its_config_keys(tmp_path):
  """The search task end to end with the attack (1 epoch of the example space); the keys' checks."""
  config = example_space.search_config()
  config.num_epochs = 1
  config.regularizer.update({'adversarial_epsilon': 0.3, 'adversarial_epsilon_start': 0.03, 'adversarial_steps': 2,
                             'adversarial_step_size': 0.0})
  state = search.search(config, tmp_path / 'adv')
  assert int(state.step) == 16 and (tmp_path / 'adv' / 'genotype.json').is_file()
  config.regularizer.random_smoothing = 0.3
  with pytest.raises(ValueError, match='perturb the same weights'):
    search._check_relaxation_config(config)
  config.regularizer.update({'random_smoothing': 0.0, 'adversarial_steps': 0})
  with pytest.raises(ValueError, match=r'adversarial_steps \(0\) positive'):
    search._check_relaxation_config(config)
