"""Operations of the DARTS search space, as pure functions and small Linen modules.

Layout is NHWC. Operations that run the *same* op on the same input for several edges at once (the supernet's
"wide" formulation, see `search_network.py`) carry extra leading axes: a tensor of shape (B, N, H, W, C) holds B
independent feature maps, and a kernel of shape (B, ...) holds one kernel per map. A leading axis of size 1 on the
input broadcasts against B kernels, which is how several edges leaving one node share their input.

Depthwise convolutions have two formulations (`DEPTHWISE_IMPLS`), chosen by measurement:

* ``'shift'``: k² shifted multiply-adds. XLA fuses them into one loop; on CPU this is ~8x faster than XLA's grouped
  convolution (forward+backward of a 5x5 depthwise conv at batch 16, 28², 16 channels: 6.3 ms vs 48 ms).
* ``'xla'``: ``lax.conv_general_dilated`` with ``feature_group_count``, which cuDNN may prefer on GPU.

Initialisation follows PyTorch's defaults (uniform in ±1/sqrt(fan_in)), so runs start like the original's.
"""
from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DepthwiseImpl = Literal['shift', 'xla']
DEPTHWISE_IMPLS = ('shift', 'xla')

# PyTorch's default conv/linear init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _depthwise_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """PyTorch's init for a depthwise kernel of shape (B, k, k, C): fan_in = k*k."""
  bound = 1.0 / (shape[1] * shape[2]) ** 0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _pointwise_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """PyTorch's init for stacked 1x1 kernels of shape (..., C_in, C_out): fan_in = C_in."""
  bound = 1.0 / shape[-2] ** 0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
  return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _spatial_pad(x: jax.Array, padding: int, value: float = 0.0) -> jax.Array:
  pads = [(0, 0)] * x.ndim
  pads[-3] = pads[-2] = (padding, padding)
  return jnp.pad(x, pads, constant_values=value)


def _taps(x_padded: jax.Array, kernel: int, stride: int, dilation: int, out_h: int, out_w: int):
  """Yields ((i, j), window) for each kernel tap: the strided window of the padded input that tap (i, j) reads."""
  for i in range(kernel):
    for j in range(kernel):
      window = lax.slice_in_dim(x_padded, i * dilation, i * dilation + stride * (out_h - 1) + 1, stride, axis=-3)
      window = lax.slice_in_dim(window, j * dilation, j * dilation + stride * (out_w - 1) + 1, stride, axis=-2)
      yield (i, j), window


def _depthwise_fused(x: jax.Array, kernel: jax.Array, stride: int, dilation: int, padding: int) -> jax.Array:
  """Σ over taps of (strided window of the padded input) · kernel[tap]: one fused elementwise loop under XLA."""
  k = kernel.shape[1]
  out_h, out_w = (conv_output_size(n, k, stride, padding, dilation) for n in x.shape[-3:-1])
  out = None
  for (i, j), window in _taps(_spatial_pad(x, padding), k, stride, dilation, out_h, out_w):
    term = window * kernel[:, i, j][:, None, None, None, :]
    out = term if out is None else out + term
  return out


def _depthwise_looped(x: jax.Array, kernel: jax.Array, stride: int, dilation: int, padding: int) -> jax.Array:
  """The same sum as `_depthwise_fused`, one tap per loop iteration.

  Only used where the result is linear in `kernel` (the kernel tangent). Its transpose, the kernel gradient, is then
  a loop of per-tap reductions over one window at a time; transposing the unrolled form instead makes XLA
  materialise all k² shifted copies of the input (~3x slower on CPU at search sizes, and a bigger graph).
  `jax.checkpoint` keeps the windows out of the loop's saved residuals: they are re-sliced in the backward loop.
  """
  k = kernel.shape[1]
  out_h, out_w = (conv_output_size(n, k, stride, padding, dilation) for n in x.shape[-3:-1])
  x_padded = _spatial_pad(x, padding)
  span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1

  def add_tap(t, acc):
    i, j = t // k, t % k
    window = lax.dynamic_slice_in_dim(x_padded, i * dilation, span_h, axis=-3)
    window = lax.dynamic_slice_in_dim(window, j * dilation, span_w, axis=-2)[..., ::stride, ::stride, :]
    tap = lax.dynamic_index_in_dim(lax.dynamic_index_in_dim(kernel, i, 1, keepdims=False), j, 1, keepdims=False)
    return acc + window * tap[:, None, None, None, :]

  shape = (kernel.shape[0],) + x.shape[1:-3] + (out_h, out_w, x.shape[-1])
  return lax.fori_loop(0, k * k, jax.checkpoint(add_tap, prevent_cse=False), jnp.zeros(shape, x.dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _depthwise_shift(x: jax.Array, kernel: jax.Array, stride: int, dilation: int, padding: int) -> jax.Array:
  return _depthwise_fused(x, kernel, stride, dilation, padding)


@_depthwise_shift.defjvp
def _depthwise_shift_jvp(stride, dilation, padding, primals, tangents):
  # Bilinear in (x, kernel): d(out) = conv(dx, kernel) + conv(x, dkernel). Reverse mode transposes this; forward
  # over reverse (the exact hypergradient) differentiates the transposed loop, so every order stays efficient.
  (x, kernel), (x_dot, kernel_dot) = primals, tangents
  out = _depthwise_shift(x, kernel, stride, dilation, padding)
  return out, (_depthwise_shift(x_dot, kernel, stride, dilation, padding)
               + _depthwise_looped(x, kernel_dot, stride, dilation, padding))


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, stride: int = 1, dilation: int = 1, padding: int = 0,
                   impl: DepthwiseImpl = 'shift') -> jax.Array:
  """Depthwise convolution of B maps with B kernels.

  Args:
    x: (B, N, H, W, C) or (1, N, H, W, C) to share one input among all B kernels.
    kernel: (B, k, k, C).
    stride, dilation, padding: as in ``torch.nn.Conv2d`` (zero padding on both sides).
    impl: ``'shift'`` or ``'xla'`` (see the module docstring).

  Returns:
    (B, N, H', W', C) with H' = (H + 2p - d(k-1) - 1) // s + 1.
  """
  num_maps, k = kernel.shape[0], kernel.shape[1]
  _, n, h, w, c = x.shape
  out_h = conv_output_size(h, k, stride, padding, dilation)
  out_w = conv_output_size(w, k, stride, padding, dilation)
  if impl == 'shift':
    # Broadcast a shared input explicitly: its gradient is then one sum over maps, not one per tap.
    x = jnp.broadcast_to(x, (num_maps,) + x.shape[1:])
    return _depthwise_shift(x, kernel, stride, dilation, padding)
  if impl == 'xla':
    shared = x.shape[0] == 1
    # Grouped conv wants maps in channels: (N, H, W, C*B) with channel index c*B + b (B outputs per input channel)
    # when the input is shared, else (N, H, W, B*C) with one group per (map, channel).
    if shared:
      lhs = x[0]
      rhs = jnp.transpose(kernel, (1, 2, 3, 0)).reshape(k, k, 1, c * num_maps)
      groups = c
    else:
      lhs = jnp.transpose(x, (1, 2, 3, 0, 4)).reshape(n, h, w, num_maps * c)
      rhs = jnp.transpose(kernel, (1, 2, 0, 3)).reshape(k, k, 1, num_maps * c)
      groups = num_maps * c
    out = lax.conv_general_dilated(lhs, rhs, (stride, stride), [(padding, padding)] * 2,
                                   rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                   feature_group_count=groups)
    if shared:
      return jnp.transpose(out.reshape(n, out_h, out_w, c, num_maps), (4, 0, 1, 2, 3))
    return jnp.transpose(out.reshape(n, out_h, out_w, num_maps, c), (3, 0, 1, 2, 4))
  raise ValueError(f'unknown depthwise impl {impl!r}; choose one of {DEPTHWISE_IMPLS}')


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1x1 convolution of B maps with B kernels: x (B or 1, N, H, W, C_in), kernel (B, C_in, C_out)."""
  return jnp.einsum('bnhwc,bco->bnhwo', jnp.broadcast_to(x, (kernel.shape[0],) + x.shape[1:]), kernel)


def _pool_windows(x: jax.Array, stride: int, pad_value: float) -> list[jax.Array]:
  """The 9 strided windows of a 3x3, padding-1 pool. Written as slices (not `reduce_window`) because XLA:CPU
  compiles `reduce_window`'s gradient slowly (0.8 s for one avg pool) and runs it no faster."""
  out_h, out_w = (conv_output_size(n, 3, stride, 1) for n in x.shape[-3:-1])
  return [window for _, window in _taps(_spatial_pad(x, 1, pad_value), 3, stride, 1, out_h, out_w)]


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """``nn.MaxPool2d(3, stride, padding=1)`` on (..., H, W, C)."""
  return functools.reduce(jnp.maximum, _pool_windows(x, stride, -jnp.inf))


def avg_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """``nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)`` on (..., H, W, C).

  The divisor counts only the in-image pixels of each window (4 in a corner, 6 on an edge, 9 inside); it is a
  constant of the shapes, computed at trace time.
  """
  total = functools.reduce(jnp.add, _pool_windows(x, stride, 0.0))
  return total / jnp.asarray(_window_counts(x.shape[-3], x.shape[-2], stride), x.dtype)


@functools.lru_cache(maxsize=None)
def _window_counts(h: int, w: int, stride: int) -> np.ndarray:
  def counts(size):
    starts = np.arange(conv_output_size(size, 3, stride, 1)) * stride - 1
    return np.minimum(starts + 3, size) - np.maximum(starts, 0)
  return np.outer(counts(h), counts(w))[:, :, None].astype(np.float32)


def factorized_reduce(x: jax.Array, kernel1: jax.Array, kernel2: jax.Array) -> jax.Array:
  """ReLU, then two 1x1 stride-2 convolutions, the second on the input shifted by one pixel, concatenated.

  ``x``: (N, H, W, C_in) with H, W even; kernels: (B, C_in, C_out/2) for B stacked reductions of the same input.
  Returns (B, N, H/2, W/2, C_out) before BN (the caller normalises). The shift is the original's ``x[:, :, 1:, 1:]``.
  """
  x = jax.nn.relu(x)
  even = jnp.einsum('nhwc,bco->bnhwo', x[:, ::2, ::2], kernel1)
  odd = jnp.einsum('nhwc,bco->bnhwo', x[:, 1::2, 1::2], kernel2)
  return jnp.concatenate([even, odd], axis=-1)


class BatchNorm(nn.Module):
  """Batch normalisation with PyTorch semantics over all axes except `feature_axes`.

  Training normalises with the biased batch variance and updates running statistics with momentum 0.1 and the
  *unbiased* variance, as ``torch.nn.BatchNorm2d`` does, so evaluation behaves like the original. With `axis_name`
  the statistics are averaged over that mapped axis (BN over the global batch under ``pmap``). Affine-free by
  default: DARTS cells have no learnable scale/shift during search.
  """
  feature_axes: tuple[int, ...] = (-1,)
  affine: bool = False
  momentum: float = 0.1
  epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    feature_axes = tuple(a % x.ndim for a in self.feature_axes)
    reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    stat_shape = tuple(x.shape[a] for a in feature_axes)
    broadcast_shape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, stat_shape, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, stat_shape, jnp.float32)
    if train:
      mean = jnp.mean(x, reduce_axes)
      mean_sq = jnp.mean(jnp.square(x), reduce_axes)
      count = x.size // mean.size
      if self.axis_name is not None:
        mean, mean_sq = lax.pmean((mean, mean_sq), self.axis_name)
        count = count * lax.psum(1, self.axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      if not self.is_initializing():
        unbiased = var * (count / jnp.maximum(count - 1, 1))
        ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
        ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x - mean.reshape(broadcast_shape)) * lax.rsqrt(var.reshape(broadcast_shape) + self.epsilon)
    if self.affine:
      scale = self.param('scale', nn.initializers.ones, stat_shape, jnp.float32)
      bias = self.param('bias', nn.initializers.zeros, stat_shape, jnp.float32)
      y = y * scale.reshape(broadcast_shape) + bias.reshape(broadcast_shape)
    return y


class ReLUConvBN(nn.Module):
  """ReLU → k×k conv (no bias) → BN. The 1x1 version preprocesses cell inputs."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  affine: bool = False
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = jax.nn.relu(x)
    if self.kernel_size == 1 and self.stride == 1:
      kernel = self.param('kernel', _pointwise_init, (x.shape[-1], self.features))
      x = x @ kernel
    else:
      x = nn.Conv(self.features, (self.kernel_size,) * 2, self.stride, [(self.padding, self.padding)] * 2,
                  use_bias=False, kernel_init=torch_default_init)(x)
    return BatchNorm(affine=self.affine, axis_name=self.axis_name)(x, train)


class FactorizedReduce(nn.Module):
  """The original's ``FactorizedReduce``: halves H and W with two shifted 1x1 stride-2 convs, then BN."""
  features: int
  affine: bool = False
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.features % 2:
      raise ValueError(f'FactorizedReduce needs an even number of channels, got {self.features}')
    shape = (1, x.shape[-1], self.features // 2)
    y = factorized_reduce(x, self.param('kernel1', _pointwise_init, shape), self.param('kernel2', _pointwise_init, shape))
    return BatchNorm(affine=self.affine, axis_name=self.axis_name)(y[0], train)
