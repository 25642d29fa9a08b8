"""Each primitive against a direct reference (XLA convolutions and windowed reductions) on small inputs."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from darts_jax.cnn import ops

# float32 sums of <= 25 products of O(1) values: agreement to 1e-5 is rounding, a wrong tap or offset is O(1).
TOL = dict(rtol=1e-5, atol=1e-5)


def _reference_depthwise(x, kernel, stride, dilation, padding):
  """Per-map depthwise conv with XLA's grouped convolution: x (B, N, H, W, C), kernel (B, k, k, C)."""
  def one(xb, kb):
    return lax.conv_general_dilated(xb, kb[:, :, None, :], (stride, stride), [(padding, padding)] * 2,
                                    rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    feature_group_count=xb.shape[-1])
  return jax.vmap(one)(x, kernel)


# (kernel, dilation, padding) of sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5; both strides.
CONV_CASES = [c + (s,) for c, s in itertools.product([(3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 2, 4)], [1, 2])]


@pytest.mark.parametrize('k,dilation,padding,stride', CONV_CASES)
@pytest.mark.parametrize('impl', ops.DEPTHWISE_IMPLS)
def test_depthwise_matches_grouped_conv(k, dilation, padding, stride, impl):
  x = jax.random.normal(jax.random.key(0), (1, 2, 8, 8, 3))  # one input shared by 2 kernels
  kernel = jax.random.normal(jax.random.key(1), (2, k, k, 3))
  out = ops.depthwise_conv(x, kernel, stride=stride, dilation=dilation, padding=padding, impl=impl)
  ref = _reference_depthwise(jnp.broadcast_to(x, (2,) + x.shape[1:]), kernel, stride, dilation, padding)
  assert out.shape == ref.shape == (2, 2, 8 // stride, 8 // stride, 3)
  np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize('k,dilation,padding,stride', CONV_CASES)
@pytest.mark.parametrize('num_inputs,size', [(1, 8), (2, 7)])  # a shared input; one per kernel, odd size
def test_depthwise_derivatives_match_grouped_conv(k, dilation, padding, stride, num_inputs, size):
  """The primitive's transposes (per-phase input correlation, row-looped kernel gradient) give the reference's first
  derivatives, and forward-over-reverse (as the exact hypergradient uses it) its second derivatives."""
  x = jax.random.normal(jax.random.key(0), (num_inputs, 2, size, size, 3))
  kernel = jax.random.normal(jax.random.key(1), (2, k, k, 3))
  ours = lambda x, w: jnp.sum(jnp.sin(ops.depthwise_conv(x, w, stride=stride, dilation=dilation, padding=padding)))
  ref = lambda x, w: jnp.sum(jnp.sin(_reference_depthwise(jnp.broadcast_to(x, (2,) + x.shape[1:]), w, stride,
                                                          dilation, padding)))
  directions = (jax.random.normal(jax.random.key(2), x.shape), jax.random.normal(jax.random.key(3), kernel.shape))
  second = lambda f: jax.jvp(jax.grad(f, (0, 1)), (x, kernel), directions)[1]
  # One program for all of it: eagerly, every primitive would compile on its own (twice the time).
  got, want = jax.jit(lambda: [(jax.grad(f, (0, 1))(x, kernel), second(f)) for f in (ours, ref)])()
  for got, want in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_depthwise_under_vmap():
  x = jax.random.normal(jax.random.key(0), (3, 1, 2, 8, 8, 4))
  kernel = jax.random.normal(jax.random.key(1), (2, 3, 3, 4))
  conv = lambda x, w: ops.depthwise_conv(x, w, stride=2, padding=1)
  np.testing.assert_allclose(jax.vmap(conv, (0, None))(x, kernel), jnp.stack([conv(xi, kernel) for xi in x]), **TOL)
  grads = jax.vmap(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), 1), (0, None))(x, kernel)
  np.testing.assert_allclose(grads[1], jax.grad(lambda w: jnp.sum(conv(x[1], w) ** 2))(kernel), **TOL)


@pytest.mark.parametrize('stride', [1, 2])
def test_pools_match_reduce_window(stride):
  x = jax.random.normal(jax.random.key(0), (2, 7, 8, 3))
  window, strides, pads = (1, 3, 3, 1), (1, stride, stride, 1), [(0, 0), (1, 1), (1, 1), (0, 0)]
  ref_max = lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pads)
  np.testing.assert_allclose(ops.max_pool_3x3(x, stride), ref_max, **TOL)
  ref_sum = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
  ref_count = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, window, strides, pads)
  np.testing.assert_allclose(ops.avg_pool_3x3(x, stride), ref_sum / ref_count, **TOL)


@pytest.mark.parametrize('stride,size', [(1, 7), (2, 8), (2, 7)])
def test_pool_derivatives_match_reduce_window(stride, size):
  """First and forward-over-reverse second derivatives of both pools (max: through its route/scatter primitives),
  also under vmap. Random normal inputs have no ties in a window, where the max-pool gradient is defined."""
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
  window, strides, pads = (1, 3, 3, 1), (1, stride, stride, 1), [(0, 0), (1, 1), (1, 1), (0, 0)]
  pools = {
      'max': (lambda x: ops.max_pool_3x3(x, stride), lambda x: lax.reduce_window(x, -jnp.inf, lax.max, window,
                                                                                   strides, pads)),
      'avg': (lambda x: ops.avg_pool_3x3(x, stride), lambda x: lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
              / lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, window, strides, pads)),
  }
  direction = jax.random.normal(jax.random.key(1), x.shape)
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(3 * pool(x)) * pool(x))
  second = lambda pool: jax.jvp(jax.grad(loss(pool)), (x,), (direction,))[1]

  @jax.jit  # one program: eagerly, every primitive would compile on its own (twice the time)
  def derivatives():
    return {name: (jax.grad(loss(ours))(x), jax.vmap(jax.grad(loss(ours)))(x[:, None])[:, 0], second(ours),
                   jax.grad(loss(ref))(x), second(ref)) for name, (ours, ref) in pools.items()}

  for grad, vmapped_grad, second_ours, grad_ref, second_ref in derivatives().values():
    np.testing.assert_allclose(grad, grad_ref, **TOL)
    np.testing.assert_allclose(vmapped_grad, grad_ref, **TOL)
    np.testing.assert_allclose(second_ours, second_ref, rtol=1e-4, atol=1e-4)


def test_avg_pool_excludes_padding():
  out = ops.avg_pool_3x3(jnp.ones((1, 4, 4, 1)), 1)
  # count_include_pad=False: an all-ones image stays all ones, also in corners (4 pixels) and edges (6 pixels).
  np.testing.assert_allclose(out, 1.0)
  ramp = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(ops.avg_pool_3x3(ramp, 1)[0, 0, 0, 0], (0 + 1 + 4 + 5) / 4)


def test_factorized_reduce_shift():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  k1 = jax.random.normal(jax.random.key(1), (1, 4, 3))
  k2 = jax.random.normal(jax.random.key(2), (1, 4, 3))
  out = ops.factorized_reduce(x, k1, k2)[0]
  conv = lambda x, k: lax.conv_general_dilated(x, k[0][None, None], (2, 2), 'VALID',
                                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  relu = jax.nn.relu(x)
  # The original: cat([conv_1(x), conv_2(x[:, :, 1:, 1:])]) after ReLU, both 1x1 stride 2.
  ref = jnp.concatenate([conv(relu, k1), conv(relu[:, 1:, 1:], k2)], axis=-1)
  assert out.shape == (2, 3, 3, 6)
  np.testing.assert_allclose(out, ref, **TOL)


def test_batch_norm_torch_semantics():
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2)) * 3 + 1
  bn = ops.BatchNorm()
  variables = bn.init(jax.random.key(0), x, False)
  y, updates = bn.apply(variables, x, True, mutable=['batch_stats'])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / jnp.sqrt(var + 1e-5), **TOL)
  n = x.size // 2
  # PyTorch: running stats with momentum 0.1 and the *unbiased* batch variance.
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * mean, **TOL)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * var * n / (n - 1), **TOL)
  y_eval = bn.apply({'batch_stats': updates['batch_stats']}, x, False)
  np.testing.assert_allclose(y_eval, (x - 0.1 * mean) / jnp.sqrt(0.9 + 0.1 * var * n / (n - 1) + 1e-5), **TOL)
  assert 'params' not in variables  # affine-free by default, like every BN inside DARTS search cells
