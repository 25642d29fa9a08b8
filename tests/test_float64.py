"""float64 in, float64 out: the networks, the hypergradient and the Hessian monitor follow their inputs' dtype.

Each test enables x64 in a context (`jax.enable_x64`), so float64 never leaks into other test files. "No float32
anywhere" is checked on the traced programs (`_float_dtypes`), which costs tracing only; the numbers are checked
against independent float64 references: PyTorch's original DARTS, the float64 NumPy cell of test_rnn, a dense
eigen-decomposition, and the O(ε²) convergence of the finite difference.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import dominant_hessian_eigenvalue, hypergradient, rnn
from darts_jax.cnn.genotypes import Genotype
from darts_jax.cnn.networks import NetworkCIFAR, NetworkImageNet
from darts_jax.cnn.supernet import SearchNetwork, init_alphas
from darts_jax.dynamics.hessian import hessian_eigenvalue_and_gradient

SMALL = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2],
                 reduce=[('dil_conv_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])
# One reduction cell of one node: every primitive at stride 2 and the preprocessing at stride 1 (as
# test_hypergradient_supernet).
SUPERNET = dict(C=4, num_classes=5, layers=1, steps=1, multiplier=1)
HYPER = dict(eta=0.025, momentum=0.9, weight_decay=3e-4)
NEEDS_TORCH = "the comparison with the original needs PyTorch: pip install -e '.[torch]'"


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _float_dtypes(closed_jaxpr) -> set:
  """The floating dtypes of every value in a traced program, sub-programs (scan, remat, custom rules) included."""
  found = set()

  def visit(jaxpr):
    for var in list(jaxpr.invars) + list(jaxpr.constvars):
      found.add(var.aval.dtype)
    for eqn in jaxpr.eqns:
      found.update(v.aval.dtype for v in eqn.outvars)
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if hasattr(sub, 'eqns'):
            visit(sub)
          elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            visit(sub.jaxpr)

  visit(closed_jaxpr.jaxpr)
  return {np.dtype(d) for d in found if jnp.issubdtype(d, jnp.floating)}


def _leaf_dtypes(tree) -> set:
  return {np.dtype(x.dtype) for x in jax.tree.leaves(tree)}


def _supernet_data():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 4, 8, 8, 1))  # (train, val) batches of 4 8x8 grey images
  labels = rng.integers(0, 5, (2, 4))
  # Away from uniform, so the softmax is not trivial (as test_hypergradient_supernet).
  alphas = {kind: 0.3 * rng.normal(size=(2, 8)) for kind in ('normal', 'reduce')}
  return images, labels, alphas


def _supernet_loss(net, batch_stats):
  def loss(params, alphas, batch):
    logits, _ = net.apply({'params': params, 'batch_stats': batch_stats}, batch[0], alphas, train=True,
                          mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
  return loss


def test_supernet_and_its_hypergradients_are_float64_throughout():
  images, labels, alphas = _supernet_data()
  x, alphas = jnp.asarray(images[0]), jax.tree.map(jnp.asarray, alphas)
  for dtype in ('float32', 'bfloat16'):
    net = SearchNetwork(**SUPERNET, dtype=dtype)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, alphas, train=False))
    if dtype == 'float32':
      # The default follows the input: float64 parameters and statistics, and nothing computed in float32.
      assert _leaf_dtypes(variables) == {np.dtype('float64')}
      batches = (x, jnp.asarray(labels[0])), (x, jnp.asarray(labels[1]))

      def hypergradient_of(variables, alphas, method):
        loss = _supernet_loss(net, variables['batch_stats'])
        return hypergradient(loss, loss, variables['params'], alphas, *batches, method=method, **HYPER)

      for method in ('first_order', 'fd', 'exact'):
        program = jax.make_jaxpr(hypergradient_of, static_argnums=2)(variables, alphas, method)
        assert _float_dtypes(program) == {np.dtype('float64')}, method
        assert {np.dtype(out.dtype) for out in program.out_avals} == {np.dtype('float64')}, method
    else:
      # bfloat16 stays an explicit choice: bfloat16 activations, everything else in the input's float64.
      assert _leaf_dtypes(variables) == {np.dtype('float64')}
      program = jax.make_jaxpr(lambda v: net.apply(v, x, alphas, train=False))(variables)
      assert _float_dtypes(program) == {np.dtype('float64'), np.dtype(jnp.bfloat16)}
      assert jax.eval_shape(lambda v: net.apply(v, x, alphas, train=False), variables).dtype == jnp.float64
  assert _leaf_dtypes(init_alphas(jax.random.key(0), steps=1, dtype=jnp.float64)) == {np.dtype('float64')}


@pytest.fixture(scope='module')
def supernet_hypergradients():
  """``run(variables, alphas, fd_epsilon) -> {method: flat hypergradient}`` for first_order, exact and fd on the real
  supernet, float64: one compiled program (the ε is traced) for every test of this module."""
  images, labels, _ = _supernet_data()
  net = SearchNetwork(**SUPERNET)

  @jax.jit
  def hypergradients(variables, alphas, fd_epsilon):
    loss = _supernet_loss(net, variables['batch_stats'])
    train, val = ((images[i], labels[i]) for i in range(2))
    kwargs = dict(HYPER, momentum_buffer=jax.tree.map(jnp.ones_like, variables['params']))
    return {method: hypergradient(loss, loss, variables['params'], alphas, train, val, method=method,
                                  fd_epsilon=fd_epsilon, **kwargs) for method in ('first_order', 'exact', 'fd')}

  def run(variables, alphas, fd_epsilon=1e-4):
    results = hypergradients(variables, jax.tree.map(jnp.asarray, alphas), fd_epsilon)
    assert {x.dtype for x in jax.tree.leaves(results)} == {np.dtype('float64')}
    return {method: np.concatenate([np.ravel(h[k]) for k in ('normal', 'reduce')]) for method, h in results.items()}

  return run


def _relative(a, b):
  return np.linalg.norm(a - b) / np.linalg.norm(b)


# Slow (float64 fd programs at three epsilons): `pytest -m slow`; fd against exact at the default epsilon is in the
# default run (tests/test_hypergradient_supernet.py).
@pytest.mark.slow
def test_fd_hypergradient_converges_to_exact_as_epsilon_squared(supernet_hypergradients):
  images, _, alphas = _supernet_data()
  variables = jax.jit(SearchNetwork(**SUPERNET).init, static_argnames='train')(
      jax.random.key(0), jnp.asarray(images[0]), jax.tree.map(jnp.asarray, alphas), train=False)
  coarse, fine = (supernet_hypergradients(variables, alphas, eps) for eps in (1.6e-4, 4e-5))
  coarse_error, fine_error = _relative(coarse['fd'], coarse['exact']), _relative(fine['fd'], fine['exact'])
  # A central difference errs by O(ε²) where the gradient is smooth: ε / 4 divides the error by 16 (measured 1.25e-10
  # -> 7.6e-12). ReLU and max-pool kinks make the gradient only piecewise smooth: from ε ≈ 3e-4 on, this stencil
  # crosses one and the error jumps to ~1e-4. Below, float64 rounding (~1e-16/ε, measured floor ~1e-12) stays under
  # the O(ε²) term; float32 rounding (~1e-7/ε ≈ 1e-3) would dominate and grow as ε shrinks, as would a float32 step
  # anywhere in the program. [11, 21] allows the rounding floor and the O(ε⁴) term.
  assert 11 < coarse_error / fine_error < 21, (coarse_error, fine_error)
  assert fine_error < 1e-10
  # The second-order part is a large share of the result, so fd ≈ exact says something (measured 0.38).
  assert _relative(fine['first_order'], fine['exact']) > 0.1


def test_hypergradients_match_the_original_darts_in_float64(supernet_hypergradients):
  """The original network (darts_jax.torch_reference) in float64, hypergradients by PyTorch autograd: first order
  ∇_α L_val(w), and exact as the derivative through the virtual step w' = w − η(μm + ∇_w L_train + λw)."""
  torch = pytest.importorskip('torch', reason=NEEDS_TORCH)
  import torch.nn.functional as F
  from darts_jax import convert
  from darts_jax import torch_reference as torch_darts

  torch.manual_seed(0)
  net = torch_darts.SearchNetwork(4, 5, 1, steps=1, multiplier=1, in_channels=1)
  variables, _ = convert.search_from_torch_state_dict({k: v.numpy() for k, v in net.state_dict().items()}, steps=1,
                                                      multiplier=1)
  # PyTorch's float32 initial values, exact in float64 on both sides.
  variables = jax.tree.map(lambda v: v.astype(jnp.float64), variables)
  images, labels, alphas = _supernet_data()
  expected = supernet_hypergradients(variables, alphas)

  net = net.double().train()
  names, weights = zip(*[(name, p.detach().clone().requires_grad_()) for name, p in net.named_parameters()])
  alpha_tensors = [torch.tensor(alphas[k], requires_grad=True) for k in ('normal', 'reduce')]
  batch = lambda i: (torch.from_numpy(images[i].transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels[i]))

  def loss(ws, data):
    logits = torch.func.functional_call(net, dict(zip(names, ws)), (data[0], *alpha_tensors))
    return F.cross_entropy(logits, data[1])

  # One reduction cell: alphas['normal'] is unused (its gradient is zero).
  alpha_grad = lambda value: torch.autograd.grad(value, alpha_tensors, allow_unused=True, materialize_grads=True)
  first_order = alpha_grad(loss(weights, batch(1)))
  grads = torch.autograd.grad(loss(weights, batch(0)), weights, create_graph=True)
  virtual = [w - HYPER['eta'] * (HYPER['momentum'] * torch.ones_like(w) + g + HYPER['weight_decay'] * w)
             for w, g in zip(weights, grads)]
  exact = alpha_grad(loss(virtual, batch(1)))
  flat = lambda ts: np.concatenate([t.detach().numpy().ravel() for t in ts])
  # The same float64 arithmetic in another order (measured 4e-15 and 5e-15); in float32, or with any float32 step
  # inside, the difference would be ~1e-7 or more.
  assert _relative(expected['first_order'], flat(first_order)) < 1e-10
  assert _relative(expected['exact'], flat(exact)) < 1e-10


def test_retrain_networks_follow_float64_inputs():
  for network, size in ((NetworkCIFAR, 8), (NetworkImageNet, 32)):
    net = network(SMALL, C=4, num_classes=3, layers=3, auxiliary=False)
    x = jnp.zeros((2, size, size, 3), jnp.float64)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
    assert _leaf_dtypes(variables) == {np.dtype('float64')}

    def train_loss(params, batch_stats, drop_path_prob):
      (logits, _), _ = net.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                 drop_path_prob=drop_path_prob, rngs={'dropout': jax.random.key(1)},
                                 mutable=['batch_stats'])
      return jnp.sum(logits)

    program = jax.make_jaxpr(jax.value_and_grad(train_loss))(variables['params'], variables['batch_stats'], 0.2)
    assert _float_dtypes(program) == {np.dtype('float64')}, network.__name__


def test_retrain_network_matches_the_original_in_float64():
  torch = pytest.importorskip('torch', reason=NEEDS_TORCH)
  from darts_jax import torch_reference as torch_darts
  from darts_jax import convert
  torch.manual_seed(1)
  torch_net = torch_darts.randomize_(torch_darts.NetworkCIFAR(4, 3, 3, False, SMALL))
  variables = convert.from_torch_state_dict({k: v.numpy() for k, v in torch_net.state_dict().items()},
                                            genotype=SMALL)
  variables = jax.tree.map(lambda v: v.astype(jnp.float64), variables)  # float32 values: exact in float64
  x = np.random.default_rng(1).normal(size=(2, 3, 8, 8))
  with torch.no_grad():
    expected, _ = torch_net.double().train()(torch.from_numpy(x))
  net = NetworkCIFAR(SMALL, C=4, num_classes=3, layers=3)
  (logits, _), _ = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert logits.dtype == jnp.float64
  # float64 on both sides in different orders (BN over 2 examples amplifies rounding); float32 anywhere: ~1e-6.
  np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-10, atol=1e-12)


def test_recurrent_models_follow_float64_inputs():
  from test_rnn import NHID, NTOKEN, STEPS, _reference_outputs, _search_cell
  tokens = jax.random.randint(jax.random.key(0), (2, 5), 0, NTOKEN)
  hidden = 0.1 * jax.random.normal(jax.random.key(1), (2, NHID), jnp.float64)
  alphas = rnn.init_alphas(jax.random.key(2), STEPS, jnp.float64) * 300
  search = rnn.RNNModelSearch(NTOKEN, NHID, NHID, steps=STEPS)
  variables = search.init({'params': jax.random.key(3), 'dropout': jax.random.key(4)}, tokens, hidden, alphas,
                          train=False)
  assert _leaf_dtypes(variables) == {np.dtype('float64')}

  def train_loss(params, alphas):
    log_probs, *_ = search.apply({**variables, 'params': params}, tokens, hidden, alphas, train=True,
                                 rngs={'dropout': jax.random.key(5)}, mutable=['batch_stats'])[0]
    return -jnp.mean(log_probs[..., 0])

  program = jax.make_jaxpr(jax.grad(train_loss, argnums=(0, 1)))(variables['params'], alphas)
  assert _float_dtypes(program) == {np.dtype('float64')}
  retrain = rnn.RNNModel(NTOKEN, NHID, NHID)
  retrain_variables = jax.eval_shape(lambda: retrain.init(jax.random.key(0), tokens, hidden, train=False))
  assert _leaf_dtypes(retrain_variables) == {np.dtype('float64')}
  program = jax.make_jaxpr(lambda v: retrain.apply(v, tokens, hidden, train=True, rngs={'dropout': jax.random.key(5)})
                           )(retrain_variables)
  assert _float_dtypes(program) == {np.dtype('float64')}

  # The numbers: the float64 NumPy cell of test_rnn (initial running statistics: mean 0, variance 1).
  log_probs, h_last, *_ = jax.jit(lambda v: search.apply(v, tokens, hidden, alphas, train=False))(variables)
  cell = _search_cell(alphas, lambda s: s / np.sqrt(1 + 1e-5))
  ref_log_probs, ref_h = _reference_outputs(variables['params'], tokens, hidden, cell)
  # float64 in another order; float32 anywhere would give ~1e-6 (test_rnn's float32 tolerance is 1e-4).
  np.testing.assert_allclose(log_probs, ref_log_probs, rtol=0, atol=1e-12)
  np.testing.assert_allclose(h_last, ref_h, rtol=0, atol=1e-12)

  # A split's evaluation carries a float64 hidden state (a float32 start would fail the scan's carry type); its mean
  # NLL over one 5-token chunk is the per-token mean of the model's own log-probabilities.
  targets = jnp.roll(tokens, -1, axis=1)
  chunks = tuple(np.asarray(x) for x in (tokens[None], targets[None], np.array([5], np.int32)))
  evaluate_block = jax.jit(lambda *block: rnn.split_log_likelihood(
      lambda t, h, length: search.apply(variables, t, h, alphas, train=False, length=length), *block))
  nll, _ = rnn.evaluate_split(evaluate_block, chunks, NHID, jnp.float64)
  step_log_probs, *_ = search.apply(variables, tokens, jnp.zeros((2, NHID), jnp.float64), alphas, train=False)
  expected = -np.mean(np.take_along_axis(np.asarray(step_log_probs), np.asarray(targets)[..., None], -1))
  np.testing.assert_allclose(nll, expected, rtol=1e-12)


def _tiny_loss(alphas):
  """A smooth, non-quadratic loss of a pytree of 2x3 + 4 parameters with a spread spectrum."""
  rng = np.random.default_rng(0)
  a, b = jnp.asarray(rng.normal(size=(5, 6))), jnp.asarray(rng.normal(size=(4, 4)))
  x = jnp.concatenate([alphas['normal'].ravel(), alphas['reduce']])
  return jax.nn.logsumexp(a @ x[:6]) + 0.5 * x[6:] @ (b @ b.T) @ x[6:] + jnp.sum(jnp.sin(x)) ** 2


def test_hessian_eigenvalue_in_float64_matches_dense_eigendecomposition():
  alphas = {'normal': jnp.asarray(np.random.default_rng(1).normal(size=(2, 3))),
            'reduce': jnp.asarray(np.random.default_rng(2).normal(size=4))}
  flat, unravel = jax.flatten_util.ravel_pytree(alphas)
  eigenvalues = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda x: _tiny_loss(unravel(x)))(flat)))
  expected = eigenvalues[np.argmax(np.abs(eigenvalues))]
  exact = jax.jit(lambda a: dominant_hessian_eigenvalue(_tiny_loss, a, num_iterations=10))(alphas)
  assert exact.dtype == jnp.float64
  # 10 Lanczos steps on a 10-dimensional operator: exact up to float64 rounding (~1e-15); the float32 basis it had
  # gave ~1e-7.
  np.testing.assert_allclose(exact, expected, rtol=1e-11)
  eigenvalue, gradient = jax.jit(lambda a: hessian_eigenvalue_and_gradient(_tiny_loss, a, num_iterations=10,
                                                                           method='fd', fd_epsilon=1e-4))(alphas)
  assert eigenvalue.dtype == jnp.float64 and _leaf_dtypes(gradient) == {np.dtype('float64')}
  # Central differences of gradients: O(ε²) ≈ 1e-8 times third derivatives of order 1, plus rounding 1e-16/ε.
  np.testing.assert_allclose(eigenvalue, expected, rtol=1e-6)
  np.testing.assert_allclose(np.concatenate([np.ravel(gradient['normal']), gradient['reduce']]),
                             jax.grad(lambda x: _tiny_loss(unravel(x)))(flat), rtol=1e-7)
