"""Operations of the DARTS search space, as pure functions and small Linen modules.

Layout is NHWC. Operations that run the *same* op on the same input for several edges at once (the supernet's
"wide" formulation, see `search_network.py`) carry extra leading axes: a tensor of shape (B, N, H, W, C) holds B
independent feature maps, and a kernel of shape (B, ...) holds one kernel per map. A leading axis of size 1 on the
input broadcasts against B kernels, which is how several edges leaving one node share their input.

Depthwise convolutions have two formulations (`DEPTHWISE_IMPLS`), chosen by measurement:

* ``'shift'``: k² shifted multiply-adds. XLA fuses them into one loop; on CPU this is ~8x faster than XLA's grouped
  convolution (forward+backward of a 5x5 depthwise conv at batch 16, 28², 16 channels: 6.3 ms vs 48 ms). It is a
  JAX primitive (`depthwise_p`) whose derivatives are written in the same shifted-window form (see there).
* ``'xla'``: ``lax.conv_general_dilated`` with ``feature_group_count``: cuDNN's depthwise kernels on GPU.
* ``'auto'`` (the default): ``'shift'`` on CPU, ``'xla'`` elsewhere (`resolve_depthwise_impl`; docs/results.md).

Everything follows its inputs' dtype (float64 with ``jax_enable_x64``): parameters and BN statistics are created in
the modules' ``param_dtype``, by default `default_param_dtype` of the input: its dtype, at least float32.
Activations may be bfloat16 (`SearchNetwork`'s ``dtype``): parameters stay at least float32 and are cast where they
are used, BN statistics and the depthwise kernel gradient's reductions are at least float32.

Initialisation follows PyTorch's defaults (uniform in ±1/sqrt(fan_in)), so runs start like the original's.
"""
from __future__ import annotations

import functools
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
from jax import core, lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

DepthwiseImpl = Literal['auto', 'shift', 'xla']
DEPTHWISE_IMPLS = ('auto', 'shift', 'xla')
# What 'auto' picks per backend (`jax.default_backend()`): the measurements behind it are in docs/results.md.
AUTO_DEPTHWISE_IMPL = {'cpu': 'shift'}
AUTO_DEPTHWISE_IMPL_ELSEWHERE = 'xla'


def resolve_depthwise_impl(impl: DepthwiseImpl) -> str:
  """``impl``, with ``'auto'`` replaced by the formulation measured fastest on the default backend."""
  if impl == 'auto':
    return AUTO_DEPTHWISE_IMPL.get(jax.default_backend(), AUTO_DEPTHWISE_IMPL_ELSEWHERE)
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'unknown depthwise impl {impl!r}; choose one of {DEPTHWISE_IMPLS}')
  return impl

# PyTorch's default conv/linear init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _hash_fold_in(key: jax.Array, data) -> jax.Array:
  data = jnp.asarray(data).astype(jnp.uint32)
  return jnp.stack([_fmix32(key[0] ^ _fmix32(data + jnp.uint32(0x632BE5AB))),
                    _fmix32(key[1] + data * jnp.uint32(0x9E3779B9))])


def _hash_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  size = int(np.prod(shape, dtype=np.int64))
  words = 2 * size if bit_width == 64 else size
  bits = _fmix32(_fmix32(lax.iota(jnp.uint32, words) * jnp.uint32(0x9E3779B9) + key[0]) ^ key[1])
  if bit_width == 64:
    high, low = bits.reshape(2, size).astype(jnp.uint64)
    return ((high << 32) | low).reshape(shape)
  return bits.astype(jnp.dtype(f'uint{bit_width}')).reshape(shape)


# Weight initialisation draws one tensor per parameter, and XLA:CPU code-generates a kernel for each draw and each
# key derivation: with threefry's 20 unrolled rounds or rbg's separate bit-generator calls, initialising the
# supernet compiles for tens of seconds. This counter-based hash (two rounds of `_fmix32` over counter and key) is a
# few integer ops that fuse into the kernel converting bits to floats: one kernel per parameter. It has no
# cryptographic strength and needs none to draw initial weights; everything else uses JAX's default PRNG.
INIT_PRNG = jax.extend.random.define_prng_impl(
    key_shape=(2,),
    seed=lambda seed: _hash_fold_in(jnp.zeros(2, jnp.uint32), seed),
    split=lambda key, shape: jax.vmap(lambda i: _hash_fold_in(key, i))(
        lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64)))).reshape(tuple(shape) + (2,)),
    random_bits=_hash_bits,
    fold_in=_hash_fold_in,
    name='darts_jax_init_hash')


def init_key(key: jax.Array) -> jax.Array:
  """A key of `INIT_PRNG` seeded from a JAX key, for ``module.init``."""
  return jax.random.key(jax.random.bits(key, (), jnp.uint32), impl=INIT_PRNG)


def default_param_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype of parameters and statistics created for input `x`: its dtype, at least float32 (bfloat16 or integer
  inputs get float32 parameters, float64 inputs float64 ones)."""
  return jnp.promote_types(x.dtype, jnp.float32)


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
  """Yields ((i, j), window) for each kernel tap: the strided window of the padded input that tap (i, j) reads.

  One `lax.slice` per window, not one per axis nor jnp indexing: XLA simplifies all three to the same program, but
  the supernet's convolutions take thousands of taps, and this is the fastest to trace.
  """
  start, limit, strides = [0] * x_padded.ndim, list(x_padded.shape), [1] * x_padded.ndim
  strides[-3] = strides[-2] = stride
  for i in range(kernel):
    for j in range(kernel):
      start[-3], start[-2] = i * dilation, j * dilation
      limit[-3], limit[-2] = start[-3] + stride * (out_h - 1) + 1, start[-2] + stride * (out_w - 1) + 1
      yield (i, j), lax.slice(x_padded, start, limit, strides)


def _kernel_taps(kernel: jax.Array) -> dict[tuple[int, int], jax.Array]:
  """The taps (i, j) of (B, rows, columns, C) kernels, each (B, 1, 1, 1, C) to scale (B, N, H, W, C) windows: one
  slice each of one reshaped kernel (jnp indexing and a reshape per tap give XLA the same program, slower to
  trace)."""
  maps, rows, columns, channels = kernel.shape
  flat = kernel.reshape(maps, 1, 1, 1, rows * columns * channels)
  return {(i, j): lax.slice_in_dim(flat, (i * columns + j) * channels, (i * columns + j + 1) * channels, axis=-1)
          for i in range(rows) for j in range(columns)}


def _depthwise_fused(x: jax.Array, kernel: jax.Array, stride: int, dilation: int, padding: int) -> jax.Array:
  """Σ over taps of (strided window of the padded input) · kernel[tap]: one fused elementwise loop under XLA."""
  k = kernel.shape[1]
  out_h, out_w = (conv_output_size(n, k, stride, padding, dilation) for n in x.shape[-3:-1])
  out, taps = None, _kernel_taps(kernel)
  for (i, j), window in _taps(_spatial_pad(x, padding), k, stride, dilation, out_h, out_w):
    term = window * taps[i, j]
    out = term if out is None else out + term
  return out


# The 'shift' depthwise convolution is a primitive so that we choose its transposes. Left to autodiff, the
# transpose of each shifted slice is a full-size pad: k² pads per conv in the backward pass, slow kernels that
# XLA:CPU also compiles slowly. As a bilinear primitive its input transpose is a correlation of the cotangent with
# the flipped kernel and its kernel transpose a loop of windowed reductions, both written as shifted windows.
# Forward mode differentiates those as they are (the tangent of a window is a window), so forward-over-reverse,
# the exact hypergradient, keeps the fast forms. (Reverse-over-reverse is correct but meets the pads again.)
depthwise_p = Primitive('darts_depthwise_conv')
depthwise_p.def_impl(_depthwise_fused)
mlir.register_lowering(depthwise_p, mlir.lower_fun(_depthwise_fused, multiple_results=False))


@depthwise_p.def_abstract_eval
def _depthwise_abstract_eval(x, kernel, *, stride, dilation, padding):
  k = kernel.shape[1]
  out_h, out_w = (conv_output_size(n, k, stride, padding, dilation) for n in x.shape[-3:-1])
  return core.ShapedArray((kernel.shape[0],) + x.shape[1:-3] + (out_h, out_w, x.shape[-1]), x.dtype)


def _input_phases(size: int, k: int, stride: int, dilation: int, padding: int):
  """Per input phase r (inputs i = s·a + r): its length and the (tap, cotangent offset) pairs that reach it.

  out[o] = Σ_t k[t]·x[s·o + d·t - p], so input s·a + r receives k[t]·ct[a + c] with c = (r + p - d·t)/s for every
  tap t that makes c an integer.
  """
  phases = []
  for r in range(stride):
    taps = [(t, (r + padding - dilation * t) // stride) for t in range(k) if (r + padding - dilation * t) % stride == 0]
    phases.append((len(range(r, size, stride)), taps))
  return phases


def _entry(table: jax.Array, n: jax.Array) -> jax.Array:
  """``table[n]`` for a loop counter ``n >= 0``. The loops' indices are never negative, and JAX's wrapping of negative
  indices would put a select into every kernel of a loop body that reads the index."""
  return lax.dynamic_index_in_dim(table, n, keepdims=False, allow_negative_indices=False)


def _depthwise_input_transpose(ct, x, kernel, *, stride, dilation, padding):
  # Per input phase, a stride-1 correlation of the cotangent with the taps that reach it, as shifted windows (never
  # one pad per tap); the phases are interleaved back by zero-interior pads. At stride 1 this is the correlation
  # with the flipped kernel; at stride 2 it skips the 3/4 zero products of correlating a zero-dilated cotangent.
  # One kernel row per loop iteration: a loop's result is materialised once, where XLA would fuse an unrolled
  # correlation into every consumer of the node's cotangent (one per edge group reading it), computing it
  # several times over; the loop body is also one small kernel to compile.
  k = kernel.shape[1]
  in_shape = x.aval.shape
  phases = [_input_phases(in_shape[axis], k, stride, dilation, padding) for axis in (-3, -2)]
  pads = [(0, 0, 0)] * ct.ndim
  for axis, axis_phases in zip((-3, -2), phases):
    offsets = [(length, c) for length, taps in axis_phases for _, c in taps]
    pads[axis] = (max(0, -min(c for _, c in offsets)),
                  max(0, max(length - 1 + c for length, c in offsets) - (ct.shape[axis] - 1)), 0)
  ct = lax.pad(ct, jnp.zeros((), ct.dtype), pads)
  # A shared input (one map, several kernels) receives the sum over the maps, summed inside the same loop: a
  # separate reduction over maps becomes a library call that materialises every product.
  maps = [(b, b + 1) for b in range(ct.shape[0])] if in_shape[0] == 1 < ct.shape[0] else [(0, ct.shape[0])]
  dx = jnp.zeros(in_shape, ct.dtype)
  for r_h, (len_h, taps_h) in enumerate(phases[0]):
    for r_w, (len_w, taps_w) in enumerate(phases[1]):
      if not taps_h or not taps_w:
        continue
      rows = jnp.array([i for i, _ in taps_h])
      row_starts = jnp.array([pads[-3][0] + c for _, c in taps_h])

      def add_row(n, phase, len_h=len_h, len_w=len_w, taps_w=taps_w, rows=rows, row_starts=row_starts):
        band = lax.dynamic_slice_in_dim(ct, _entry(row_starts, n), len_h, axis=-3, allow_negative_indices=False)
        kernel_row = _kernel_taps(lax.dynamic_slice_in_dim(kernel, _entry(rows, n), 1, axis=1,
                                                           allow_negative_indices=False))  # taps (0, j) of the row
        for j, c_w in taps_w:
          window = lax.slice_in_dim(band, pads[-2][0] + c_w, pads[-2][0] + c_w + len_w, axis=-2)
          for start, stop in maps:
            phase = phase + lax.slice_in_dim(window, start, stop) * lax.slice_in_dim(kernel_row[0, j], start, stop)
        return phase

      phase = lax.fori_loop(0, len(taps_h), add_row, jnp.zeros(in_shape[:-3] + (len_h, len_w, in_shape[-1]),
                                                                  ct.dtype))
      interleave = [(0, 0, 0)] * (ct.ndim - 3) + [
          (r_h, in_shape[-3] - r_h - stride * (len_h - 1) - 1, stride - 1),
          (r_w, in_shape[-2] - r_w - stride * (len_w - 1) - 1, stride - 1), (0, 0, 0)]
      dx = dx + lax.pad(phase, jnp.zeros((), ct.dtype), interleave)
  return dx


def _depthwise_kernel_transpose(ct, x, kernel, *, stride, dilation, padding):
  # dk[i, j] = Σ_{n,h,w} ct·window_ij(x). One kernel row per loop iteration: its k taps are reduced while the band
  # of input rows they share is in cache (~1.5-2x faster than one tap per iteration on CPU); unrolled, XLA would
  # materialise all k² windows.
  k = kernel.aval.shape[1]
  out_h, out_w = ct.shape[-3:-1]
  x_padded = _spatial_pad(x, padding)
  span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
  reduce_axes = tuple(range(1, ct.ndim - 1))
  # Sums over N·H·W products: float32 even for bfloat16 activations, whose 8-bit mantissa would lose the sum.
  accumulate = jnp.promote_types(ct.dtype, jnp.float32)

  def row_gradient(i, dk):
    band = lax.slice_in_dim(lax.dynamic_slice_in_dim(x_padded, i * dilation, span_h, axis=-3,
                                                     allow_negative_indices=False), 0, span_h, stride,
                            axis=-3)
    row = jnp.stack([jnp.sum(lax.slice_in_dim(band, j * dilation, j * dilation + span_w, stride, axis=-2) * ct,
                             reduce_axes, dtype=accumulate) for j in range(k)], axis=1)
    return lax.dynamic_update_slice(dk, row[:, None], (0, i, 0, 0), allow_negative_indices=False)

  return lax.fori_loop(0, k, row_gradient, jnp.zeros(kernel.aval.shape, accumulate)).astype(kernel.aval.dtype)


ad.defbilinear(depthwise_p, _depthwise_input_transpose, _depthwise_kernel_transpose)


def _vmapped_axis_first(args, dims):
  """The operands of a batching rule with the vmapped axis in front (broadcast where an operand is unmapped)."""
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  return [jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]


def _depthwise_batch(args, dims, **params):
  # Fold the vmapped axis into the maps axis: (V, B, ...) -> (V·B, ...).
  x, kernel = _vmapped_axis_first(args, dims)
  size = x.shape[0]
  num_maps = kernel.shape[1]
  x = jnp.broadcast_to(x, x.shape[:1] + (num_maps,) + x.shape[2:])
  out = depthwise_p.bind(x.reshape((-1,) + x.shape[2:]), kernel.reshape((-1,) + kernel.shape[2:]), **params)
  return out.reshape((size, num_maps) + out.shape[1:]), 0


batching.primitive_batchers[depthwise_p] = _depthwise_batch


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, stride: int = 1, dilation: int = 1, padding: int = 0,
                   impl: DepthwiseImpl = 'auto') -> jax.Array:
  """Depthwise convolution of B maps with B kernels.

  Args:
    x: (B, N, H, W, C) or (1, N, H, W, C) to share one input among all B kernels.
    kernel: (B, k, k, C).
    stride, dilation, padding: as in ``torch.nn.Conv2d`` (zero padding on both sides).
    impl: ``'auto'``, ``'shift'`` or ``'xla'`` (see the module docstring).

  Returns:
    (B, N, H', W', C) with H' = (H + 2p - d(k-1) - 1) // s + 1.
  """
  dtype = jnp.promote_types(x.dtype, kernel.dtype)  # the primitive's operands share one dtype
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  num_maps, k = kernel.shape[0], kernel.shape[1]
  _, n, h, w, c = x.shape
  out_h = conv_output_size(h, k, stride, padding, dilation)
  out_w = conv_output_size(w, k, stride, padding, dilation)
  impl = resolve_depthwise_impl(impl)
  if impl == 'shift':
    return depthwise_p.bind(x, kernel, stride=stride, dilation=dilation, padding=padding)
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


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1x1 convolution of B maps with B kernels: x (B or 1, N, H, W, C_in), kernel (B, C_in, C_out)."""
  return jnp.einsum('bnhwc,bco->bnhwo', jnp.broadcast_to(x, (kernel.shape[0],) + x.shape[1:]), kernel.astype(x.dtype))


def _pool_windows(x: jax.Array, stride: int, pad_value: float) -> list[jax.Array]:
  """The 9 strided windows of a 3x3, padding-1 pool, in row-major tap order."""
  out_h, out_w = (conv_output_size(n, 3, stride, 1) for n in x.shape[-3:-1])
  return [window for _, window in _taps(_spatial_pad(x, 1, pad_value), 3, stride, 1, out_h, out_w)]


# Max pooling routes each output's gradient to the first maximal tap of its window (PyTorch's choice on ties).
# As with the depthwise conv, two linear primitives that are each other's transpose keep both directions in the
# fast "read shifted windows" form: `route` gathers an input tangent through the argmax taps, `scatter` sends an
# output cotangent back to the argmax inputs.
_pool_route_p = Primitive('darts_max_pool_route')
_pool_scatter_p = Primitive('darts_max_pool_scatter')


def _pool_route(x_dot, argmax, *, stride, in_hw):
  del in_hw
  out = jnp.zeros(argmax.shape, x_dot.dtype)
  for tap, window in enumerate(_pool_windows(x_dot, stride, 0.0)):
    out = jnp.where(argmax == tap, window, out)
  return out


def _pool_scatter(ct, argmax, *, stride, in_hw):
  # Output o reads input i = s·o + t - 1 at tap t (per axis), so input i receives ct[o] from o = (i + 1 - t)/s:
  # on the cotangent dilated by s and padded by 1 in front, that is the window at offset 2 - t.
  pads = [(0, 0, 0)] * ct.ndim
  for axis, size in zip((-3, -2), in_hw):
    pads[axis] = (1, size + 1 - stride * (ct.shape[axis] - 1) - 1, stride - 1)
  ct = lax.pad(ct, jnp.zeros((), ct.dtype), pads)
  argmax = lax.pad(argmax, jnp.array(-1, argmax.dtype), pads)
  dx = jnp.zeros(ct.shape[:-3] + tuple(in_hw) + ct.shape[-1:], ct.dtype)
  for ((i, j), ct_window), (_, argmax_window) in zip(_taps(ct, 3, 1, 1, *in_hw), _taps(argmax, 3, 1, 1, *in_hw)):
    dx = dx + jnp.where(argmax_window == (2 - i) * 3 + (2 - j), ct_window, 0)
  return dx


def _define_linear_pool_primitive(prim, impl, transpose_prim, out_shape):
  """`prim(tangent, argmax)` is linear in `tangent`; `argmax` (integer taps) is a constant of the derivative."""
  prim.def_impl(impl)
  mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=False))
  prim.def_abstract_eval(lambda t, argmax, **params: core.ShapedArray(out_shape(t, argmax, **params), t.dtype))

  def jvp(primals, tangents, **params):
    out = prim.bind(*primals, **params)
    if type(tangents[0]) is ad.Zero:
      return out, ad.Zero.from_primal_value(out)
    return out, prim.bind(tangents[0], primals[1], **params)

  def transpose(ct, t, argmax, **params):
    if type(ct) is ad.Zero:
      return ad.Zero(t.aval.to_ct_aval()), None
    return transpose_prim.bind(ct, argmax, **params), None

  def batch(args, dims, **params):
    return prim.bind(*_vmapped_axis_first(args, dims), **params), 0

  ad.primitive_jvps[prim] = jvp
  ad.primitive_transposes[prim] = transpose
  batching.primitive_batchers[prim] = batch


_define_linear_pool_primitive(_pool_route_p, _pool_route, _pool_scatter_p,
                              lambda t, argmax, **_: argmax.shape)
_define_linear_pool_primitive(_pool_scatter_p, _pool_scatter, _pool_route_p,
                              lambda t, argmax, in_hw, **_: t.shape[:-3] + tuple(in_hw) + t.shape[-1:])


def _max_and_argmax(x: jax.Array, stride: int) -> tuple[jax.Array, jax.Array]:
  best, argmax = None, None
  for tap, window in enumerate(_pool_windows(x, stride, -jnp.inf)):
    if best is None:
      best, argmax = window, jnp.zeros(window.shape, jnp.int32)
    else:
      better = window > best  # strict: ties keep the earlier tap
      best, argmax = jnp.where(better, window, best), jnp.where(better, tap, argmax)
  return best, argmax


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """``nn.MaxPool2d(3, stride, padding=1)`` on (..., H, W, C)."""
  return functools.reduce(jnp.maximum, _pool_windows(x, stride, -jnp.inf))


@max_pool_3x3.defjvp
def _max_pool_jvp(stride, primals, tangents):
  (x,), (x_dot,) = primals, tangents
  out, argmax = _max_and_argmax(x, stride)
  return out, _pool_route_p.bind(x_dot, argmax, stride=stride, in_hw=x.shape[-3:-1])


def avg_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """``nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)`` on (..., H, W, C).

  The window sum is a depthwise conv with a ones kernel (so its gradient takes the fast transposed form). The
  divisor counts only the in-image pixels of each window (4 in a corner, 6 on an edge, 9 inside); it is a
  constant of the shapes, computed at trace time.
  """
  lead = x.shape[:-3]
  x = x.reshape((1, -1) + x.shape[-3:])
  total = depthwise_p.bind(x, jnp.ones((1, 3, 3, x.shape[-1]), x.dtype), stride=stride, dilation=1, padding=1)
  total = total.reshape(lead + total.shape[-3:])
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
  h, w = x.shape[-3:-1]
  if h % 2 or w % 2:
    raise ValueError(f'a reduction cell needs even feature maps, got {h}x{w}: the network halves the image at each '
                     'reduction, so the image size must be divisible by 2 per reduction cell (by 4 for the usual '
                     'two, e.g. 28 or 32).')
  x = jax.nn.relu(x)
  even = jnp.einsum('nhwc,bco->bnhwo', x[:, ::2, ::2], kernel1.astype(x.dtype))
  odd = jnp.einsum('nhwc,bco->bnhwo', x[:, 1::2, 1::2], kernel2.astype(x.dtype))
  return jnp.concatenate([even, odd], axis=-1)


class BatchNorm(nn.Module):
  """Batch normalisation with PyTorch semantics over all axes except `feature_axes`.

  Training normalises with the biased batch variance and updates running statistics with momentum 0.1 and the
  *unbiased* variance, as ``torch.nn.BatchNorm2d`` does, so evaluation behaves like the original. With `axis_name`
  the statistics are averaged over that mapped axis (BN over the global batch under ``pmap``). Affine-free by
  default: DARTS cells have no learnable scale/shift during search. Statistics, normalisation and affine parameters
  are in `param_dtype` (by default `default_param_dtype`: float32 for bfloat16 inputs, float64 for float64 ones); the
  output has the input's dtype.
  """
  feature_axes: tuple[int, ...] = (-1,)
  affine: bool = False
  momentum: float = 0.1
  epsilon: float = 1e-5
  axis_name: str | None = None
  param_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    feature_axes = tuple(a % x.ndim for a in self.feature_axes)
    reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    stat_shape = tuple(x.shape[a] for a in feature_axes)
    broadcast_shape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
    dtype, x = x.dtype, x.astype(self.param_dtype or default_param_dtype(x))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, stat_shape, x.dtype)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, stat_shape, x.dtype)
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
        # Statistics keep their dtype, so a state carried through a loop keeps its type.
        ra_mean.value = ((1 - self.momentum) * ra_mean.value + self.momentum * mean).astype(ra_mean.value.dtype)
        ra_var.value = ((1 - self.momentum) * ra_var.value + self.momentum * unbiased).astype(ra_var.value.dtype)
    else:
      mean, var = ra_mean.value.astype(x.dtype), ra_var.value.astype(x.dtype)
    y = (x - mean.reshape(broadcast_shape)) * lax.rsqrt(var.reshape(broadcast_shape) + self.epsilon)
    if self.affine:
      scale = self.param('scale', nn.initializers.ones, stat_shape, x.dtype)
      bias = self.param('bias', nn.initializers.zeros, stat_shape, x.dtype)
      y = y * scale.reshape(broadcast_shape) + bias.reshape(broadcast_shape)
    return y.astype(dtype)


class ReLUConvBN(nn.Module):
  """ReLU → k×k conv (no bias) → BN. The 1x1 version preprocesses cell inputs."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  affine: bool = False
  axis_name: str | None = None
  param_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    param_dtype = self.param_dtype or default_param_dtype(x)
    x = jax.nn.relu(x)
    if self.kernel_size == 1 and self.stride == 1:
      kernel = self.param('kernel', _pointwise_init, (x.shape[-1], self.features), param_dtype)
      x = x @ kernel.astype(x.dtype)
    else:
      x = nn.Conv(self.features, (self.kernel_size,) * 2, self.stride, [(self.padding, self.padding)] * 2,
                  use_bias=False, kernel_init=torch_default_init, dtype=x.dtype, param_dtype=param_dtype)(x)
    return BatchNorm(affine=self.affine, axis_name=self.axis_name, param_dtype=param_dtype)(x, train)


class FactorizedReduce(nn.Module):
  """The original's ``FactorizedReduce``: halves H and W with two shifted 1x1 stride-2 convs, then BN."""
  features: int
  affine: bool = False
  axis_name: str | None = None
  param_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.features % 2:
      raise ValueError(f'FactorizedReduce needs an even number of channels, got {self.features}')
    shape, dtype = (1, x.shape[-1], self.features // 2), self.param_dtype or default_param_dtype(x)
    y = factorized_reduce(x, self.param('kernel1', _pointwise_init, shape, dtype),
                          self.param('kernel2', _pointwise_init, shape, dtype))
    return BatchNorm(affine=self.affine, axis_name=self.axis_name, param_dtype=dtype)(y[0], train)
