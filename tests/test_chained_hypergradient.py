"""`hypergradient(..., passes='chained')`: the passes of 'fd' and 'exact' through one compiled gradient give the
direct form's hypergradient, on a small smooth problem (against autodiff through the virtual step too) and on a
one-cell supernet; 'auto' chains only where it can; a caller appends a pass of its own to `one_step_stages`."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax.bilevel.hypergradient import PASSES, hypergradient, one_step_stages, resolve_passes, virtual_step
from darts_jax.cnn.supernet import SearchNetwork, init_alphas

_KEYS = jax.random.split(jax.random.key(0), 7)
W = {'a': jax.random.normal(_KEYS[0], (5, 3)), 'b': jax.random.normal(_KEYS[1], (3,))}
ALPHA = {'s': jax.random.normal(_KEYS[2], (3,))}
TRAIN = (jax.random.normal(_KEYS[3], (6, 5)), jax.random.normal(_KEYS[4], (6,)))
VAL = (jax.random.normal(_KEYS[5], (6, 5)), jax.random.normal(_KEYS[6], (6,)))
MOMENTUM_BUFFER = jax.tree.map(lambda x: 0.1 * x, W)
OPTIONS = dict(eta=0.1, momentum_buffer=MOMENTUM_BUFFER, weight_decay=0.01, fd_epsilon=0.1)


def loss(w, alpha, batch):
  """Smooth, and α enters both the data term and the penalty: a non-zero mixed term."""
  x, y = batch
  h = jnp.tanh(x @ w['a'] * jax.nn.softplus(alpha['s'])) + w['b']
  return jnp.mean((h.sum(-1) - y) ** 2) + jnp.sum(jnp.exp(alpha['s']) * w['b'] ** 2)


def other_loss(w, alpha, batch):
  return loss(w, alpha, batch)


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope='module')
def small():
  """{(method, grad_clip, passes): flat hypergradient}, one compilation for all."""
  keys = [(method, clip, passes) for method in ('fd', 'exact') for clip in (None, 0.5)
          for passes in ('direct', 'chained')]

  @jax.jit
  def run(w, alpha):
    return [hypergradient(loss, loss, w, alpha, TRAIN, VAL, method=method, grad_clip=clip, passes=passes, **OPTIONS)
            for method, clip, passes in keys]

  return {key: _flat(h) for key, h in zip(keys, run(W, ALPHA))}


@pytest.mark.parametrize('clip', [None, 0.5])  # 0.5: the training gradient's norm is ~10, so the clip is active
@pytest.mark.parametrize('method', ['fd', 'exact'])
def test_chained_equals_direct(small, method, clip):
  # The same float32 arithmetic in another order: ~1e-7 of the result's scale for 'exact'; the central difference
  # divides the gradients' rounding by 2R (R = 0.1/|v|, |v| ~ 10), hence 1e-5 of it for 'fd'. A wrong stencil
  # point, R, eta or clip coefficient changes the result at the 1e-2 level.
  direct, chained = small[method, clip, 'direct'], small[method, clip, 'chained']
  scale = np.max(np.abs(direct))
  np.testing.assert_allclose(chained, direct, rtol=0, atol=(1e-5 if method == 'fd' else 1e-6) * scale)


def test_chained_exact_is_the_derivative_through_the_virtual_step(small):
  # An independent reference: jax.grad of L_val(w'(α), α) through the virtual step, in float32 (rounding ~1e-6).
  def through_step(alpha):
    grad_w = jax.grad(loss)(W, alpha, TRAIN)
    w_prime = virtual_step(W, grad_w, MOMENTUM_BUFFER, eta=OPTIONS['eta'], momentum=0.9,
                           weight_decay=OPTIONS['weight_decay'])
    return loss(w_prime, alpha, VAL)

  expected = _flat(jax.jit(jax.grad(through_step))(ALPHA))
  np.testing.assert_allclose(small['exact', None, 'chained'], expected, rtol=1e-5, atol=1e-6)
  # The second-order part is far above that tolerance: a first-order answer would fail.
  first_order = _flat(jax.grad(loss, argnums=1)(W, ALPHA, VAL))
  assert np.max(np.abs(first_order - expected)) > 1e-2


def test_chained_is_one_loop_and_auto_chains_only_one_loss():
  def program(train_loss, val_loss, passes, val=VAL):
    return str(jax.make_jaxpr(lambda w, a: hypergradient(train_loss, val_loss, w, a, TRAIN, val, method='exact',
                                                         passes=passes, **OPTIONS))(W, ALPHA))

  # The chained passes are one loop with a switch between passes; the direct form has no branch.
  assert 'cond[' in program(loss, loss, 'chained') and 'cond[' not in program(loss, loss, 'direct')
  assert resolve_passes('auto', backend='cpu') == 'chained' and resolve_passes('auto', backend='gpu') == 'direct'
  if jax.default_backend() == 'cpu':
    assert 'cond[' in program(loss, loss, 'auto')
  # Two loss functions, or batches of another shape: 'auto' falls back to the direct form, 'chained' says why not.
  short_val = (VAL[0][:4], VAL[1][:4])
  assert 'cond[' not in program(loss, other_loss, 'auto')
  assert 'cond[' not in program(loss, loss, 'auto', val=short_val)
  for train_loss, val in ((other_loss, VAL), (loss, short_val)):
    with pytest.raises(ValueError, match="passes='chained' needs one loss function"):
      program(train_loss, loss, 'chained', val=val)
  with pytest.raises(ValueError, match=f"Unknown passes 'fast'; expected one of {', '.join(PASSES)}"):
    program(loss, loss, 'fast')


@pytest.mark.parametrize('method', ['fd', 'exact'])
def test_chained_data_parallel_equals_the_global_batch(method):
  # Two shards of both batches under vmap with axis_name (as pmap): every chained gradient pass is averaged, so the
  # result is the single-device hypergradient on the whole batches (the loss is a mean over equal shards). The
  # shards' means are summed in another order: ~1e-6 of the result's scale for 'exact', and for 'fd' that rounding
  # divided by 2R (measured 2e-5): 1e-4.
  shard = lambda batch: jax.tree.map(lambda x: x.reshape((2, -1) + x.shape[1:]), batch)  # noqa: E731

  def loss_mean(w, alpha, batch):  # the data term only: the penalty would be counted once per device
    x, y = batch
    return jnp.mean((jnp.tanh(x @ w['a'] * jax.nn.softplus(alpha['s'])).sum(-1) + w['b'].sum() - y) ** 2)

  @jax.jit
  def run(w, alpha):
    per_device = jax.vmap(lambda t, v: hypergradient(loss_mean, loss_mean, w, alpha, t, v, method=method,
                                                     passes='chained', axis_name='d', **OPTIONS),
                          axis_name='d')(shard(TRAIN), shard(VAL))
    return per_device, hypergradient(loss_mean, loss_mean, w, alpha, TRAIN, VAL, method=method, passes='direct',
                                     **OPTIONS)

  per_device, expected = run(W, ALPHA)
  expected = _flat(expected)
  for device in range(2):
    np.testing.assert_allclose(_flat(jax.tree.map(lambda x: x[device], per_device)), expected, rtol=0,
                               atol=(1e-4 if method == 'fd' else 1e-5) * np.max(np.abs(expected)))


IMAGES = jax.random.normal(jax.random.key(10), (2, 8, 8, 8, 1))
LABELS = jax.random.randint(jax.random.key(11), (2, 8), 0, 5)
ALPHAS = jax.tree.map(lambda a: a * 300, init_alphas(jax.random.key(12), steps=1))  # a non-uniform softmax


# 'fd' only (its chain has the most passes: four gradients at three points, under the highest precision): a supernet
# program costs ~15 s to compile here, and 'exact''s chain differs from the tiny problem's only in the network.
# Slow (a ~15 s supernet compile): the default run covers the same loop on the supernet through the search step
# (test_second_order_impl.py, chained vs direct) and the API's chaining on the tiny problem above.
@pytest.mark.slow
@pytest.mark.parametrize('method', ['fd'])
def test_chained_equals_direct_on_supernet(method):
  net = SearchNetwork(C=4, num_classes=5, layers=1, steps=1, multiplier=1)
  variables = jax.jit(net.init, static_argnames='train')(jax.random.key(13), IMAGES[0], ALPHAS, train=False)

  def supernet_loss(params, alphas, batch):
    logits, _ = net.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch[0], alphas,
                          train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  @jax.jit
  def run(params, alphas):
    # fd_epsilon 1e-4: no ReLU or max-pool kink inside the stencil on this data (test_hypergradient_supernet).
    kwargs = dict(eta=0.025, weight_decay=3e-4, momentum_buffer=jax.tree.map(jnp.ones_like, params), method=method,
                  fd_epsilon=1e-4)
    train, val = (IMAGES[0], LABELS[0]), (IMAGES[1], LABELS[1])
    return [_flat_jnp(hypergradient(supernet_loss, supernet_loss, params, alphas, train, val, passes=passes,
                                    **kwargs)) for passes in ('direct', 'chained')]

  direct, chained = (np.asarray(x) for x in run(variables['params'], ALPHAS))
  # 'exact': the same float32 arithmetic in another order (~1e-6 relative). 'fd': the gradients' rounding divided
  # by 2R at fd_epsilon=1e-4 (fd is 6e-5 from exact here, test_hypergradient_supernet), so 1e-3 relative in norm.
  # The second-order part is ~2/3 of the result: a lost mixed term or a wrong stencil would be far outside.
  relative = np.linalg.norm(chained - direct) / np.linalg.norm(direct)
  assert relative < (1e-3 if method == 'fd' else 1e-5)


def _flat_jnp(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize('method, clip', [('fd', None), ('exact', 0.5)])
def test_a_pass_appended_to_the_one_step_stages(method, clip):
  # A caller's step as the search step's: the hypergradient, a gradient step of α in the method's last stage, and
  # one more pass at (w, α') through the same compiled gradient. float64: the comparisons below are then at 1e-12.
  with jax.enable_x64(True):
    w, alpha, train, val, buffer = (jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
                                    for tree in (W, ALPHA, TRAIN, VAL, MOMENTUM_BUFFER))
    options = dict(OPTIONS, momentum_buffer=buffer, grad_clip=clip)
    arch_lr = 0.3

    @jax.jit
    def run(w, alpha):
      plan = one_step_stages(method, loss, w, alpha, train, val, **options)
      *head, last = plan.stages

      def arch(carry, out):
        carry, _ = last(carry, out)
        new_alpha = jax.tree.map(lambda a, g: a - arch_lr * g, alpha, plan.finish(carry))
        return dict(carry, new_alpha=new_alpha), (w, new_alpha, train)

      def after_last_pass(carry, out):
        return carry, (w, carry['new_alpha'], train)

      def gradient_pass(i, inputs):
        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(*inputs)
        return grads, value

      carry, (grads, value) = plan.chain(gradient_pass, [*head, arch, after_last_pass],
                                         dict(plan.carry_shapes, new_alpha=jax.eval_shape(lambda: alpha)))
      chained = hypergradient(loss, loss, w, alpha, train, val, method=method, passes='chained', **options)
      return plan.finish(carry), carry['new_alpha'], grads, value, chained

    appended, new_alpha, grads, value, chained = run(w, alpha)
    # The method's stages and carry as passes='chained' uses them; the appended pass reads, never writes, them: the
    # same arithmetic, float64 rounding only. A stage out of order or a lost clip coefficient is off at 1e-2.
    np.testing.assert_allclose(_flat(appended), _flat(chained), rtol=1e-12)
    np.testing.assert_allclose(_flat(new_alpha), _flat(alpha) - arch_lr * _flat(chained), rtol=1e-12)
    # The last pass, and what chain returns, is the appended one, at α': against autodiff there (and not at α).
    expected_value, expected_grads = jax.value_and_grad(loss, argnums=(0, 1))(w, new_alpha, train)
    np.testing.assert_allclose(_flat(grads), _flat(expected_grads), rtol=1e-12)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12)
    assert np.max(np.abs(_flat(grads) - _flat(jax.grad(loss, argnums=(0, 1))(w, alpha, train)))) > 1e-3


def test_one_step_stages_are_for_fd_and_exact():
  with pytest.raises(ValueError, match="one_step_stages is for the methods fd, exact, not 'unrolled'"):
    one_step_stages('unrolled', loss, W, ALPHA, TRAIN, VAL, eta=0.1)
