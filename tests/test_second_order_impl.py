"""The two implementations of the second-order search step (`bilevel_step.PASSES`): the chained step and
the direct composition of `hypergradient` give the same search, and 'auto' picks one per backend. On `TinySupernet`
(tests/test_search.py): the implementations differ in how the passes are arranged, not in what the network is."""
import jax
import numpy as np
import optax
import pytest
from test_search import LR, MEAN, STD, TinySupernet, _batches, tiny_config

from darts_jax import data, dynamics
from darts_jax.bilevel import step as bilevel_step
from darts_jax.spaces import cnn as cnn_space
from darts_jax import spaces
from darts_jax.tasks import search
from darts_jax.training import optimizers


def test_auto_resolves_per_backend():
  assert bilevel_step.resolve_passes('auto', backend='cpu') == 'chained'
  for backend in ('gpu', 'cuda', 'rocm', 'tpu'):
    assert bilevel_step.resolve_passes('auto', backend=backend) == 'direct'
  for impl in ('chained', 'direct'):  # an explicit choice holds on every backend
    assert bilevel_step.resolve_passes(impl, backend='cpu') == impl
    assert bilevel_step.resolve_passes(impl, backend='gpu') == impl
  with pytest.raises(ValueError, match="Unknown passes 'fast'; expected one of auto, chained, direct"):
    bilevel_step.resolve_passes('fast')


def test_unknown_impl_is_a_config_error(data_dir):
  with pytest.raises(ValueError, match="Unknown second_order_impl 'fast'"):
    config = tiny_config(data_dir, second_order_impl='fast')
    search._check_config(config, spaces.get_space(config))


# Far from the default 0.01: a step that dropped fd_epsilon would differ at O(1e-3) in the hypergradients; and a
# wide stencil divides the gradients' float32 rounding by a larger 2R.
FD_EPSILON = 0.5


def _setup(variant, fd_epsilon=FD_EPSILON):
  """(model, state, make_step(method, impl)): the default softmax, or hard Gumbel samples with a penalty and
  SDARTS-RS's perturbation of the weight step (the arguments that the two implementations pass differently)."""
  schedule = optimizers.epoch_cosine_schedule(LR, 0.001, num_epochs=3, steps_per_epoch=100)
  options = {}
  if variant == 'relaxed':
    relaxation = dynamics.Relaxation('gumbel_softmax', temperature=0.7, hard=True)
    options = dict(relaxation=relaxation, arch_penalty=dynamics.sum_penalties(dynamics.make_penalties(
        {'entropy': 0.3, 'beta_decay': 0.2}, relaxation)),
        weight_perturbation=lambda key, weights, step, loss: dynamics.uniform_perturbation(key, weights, 0.2))
  model = TinySupernet(mixing='weights' if variant == 'relaxed' else 'softmax')
  state = cnn_space.create_search_state(jax.random.key(0), model, (8, 8, 1), optimizers.weight_optimizer(schedule),
                                          optimizers.arch_optimizer(0.3))
  state = state.replace(alphas=jax.tree.map(lambda a: a * 1000, state.alphas))  # O(1) alphas: a non-uniform softmax
  preprocess = data.make_preprocess(MEAN, STD)

  def make_step(method, impl):
    return bilevel_step.make_search_step(cnn_space.search_problem(model, schedule, preprocess), method=method,
                                        passes=impl, fd_epsilon=fd_epsilon, **options)

  return state, make_step


@pytest.mark.parametrize('method,variant', [('fd', 'softmax'), ('exact', 'softmax'), ('exact', 'relaxed'),
                                            pytest.param('fd', 'relaxed', marks=pytest.mark.slow)])
def test_chained_and_direct_steps_give_the_same_search(method, variant):
  state, make_step = _setup(variant)
  chained, direct, first_order = (make_step(m, impl) for m, impl in
                                  ((method, 'chained'), (method, 'direct'), ('first_order', 'auto')))
  # The chained step is one loop of passes with a switch between them; the direct one has no such branch: the two
  # really are different programs.
  (train, val), = _batches(1)
  assert 'cond[' in str(jax.make_jaxpr(chained)(state, train, val))
  assert 'cond[' not in str(jax.make_jaxpr(direct)(state, train, val))

  steps = jax.jit(lambda a, b, c, train, val: (chained(a, train, val), direct(b, train, val),
                                                first_order(c, train, val)))  # one compilation for both steps
  a = b = c = state
  for train, val in _batches(2):  # the second step has a momentum buffer and Adam moments
    (a, metrics_a), (b, metrics_b), (c, _) = steps(a, b, c, train, val)
    # The same float32 arithmetic in another order (the loop keeps XLA from fusing across passes): ~1e-6 relative,
    # as test_search's step test. The central difference divides the gradients' rounding by 2R, and Adam's
    # normalised second step passes on relative errors of the hypergradient, hence fd's looser atol.
    atol = 1e-5 if method == 'fd' else 1e-6
    close = lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=atol)  # noqa: E731
    jax.tree.map(close, (a.params, a.alphas, a.batch_stats, a.weight_opt_state, a.arch_opt_state),
                 (b.params, b.alphas, b.batch_stats, b.weight_opt_state, b.arch_opt_state))
    jax.tree.map(close, metrics_a, metrics_b)
    assert bool(metrics_a['finite'])
  # The tolerance separates the second-order step from the first-order one: Adam's first moment holds the
  # hypergradients, and the mixed term moves them by O(1e-2), far more than the tolerance.
  mu = lambda s: optax.tree_utils.tree_get(s.arch_opt_state, 'mu')  # noqa: E731
  assert max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(mu(b)), jax.tree.leaves(mu(c)))) > 1e-3
