"""Evaluation networks built from a genotype: `NetworkCIFAR` and `NetworkImageNet`, as in the original `model.py`.

A cell reads the two previous cell outputs, preprocesses them to C channels and computes ``len(genotype.normal) // 2``
nodes; node i is ``op_a(h_a) + op_b(h_b)`` for its two ``(op, input)`` pairs, and the cell outputs the concatenation of
the ``*_concat`` states. Unlike in search, every op's BN is affine (learnable scale and shift) and pooling has no BN.

**Drop path.** In training, each op output except identities is multiplied by ``m / (1 - p)`` with one
``m ~ Bernoulli(1 - p)`` per example (`drop_path`), so its expectation is unchanged. ``p`` is an argument of
``__call__``, so a ramp over epochs does not recompile. Under ``pmap`` the masks are drawn for the global batch, so
they do not depend on the number of devices.

**Compile time.** Consecutive cells that map their input shape to itself (not a reduction, not after one, input and
output channels equal) are identical functions of different weights; they run as one `nn.scan`, so each distinct
cell is traced and compiled once: the 20-cell CIFAR network compiles 9 cell bodies, not 20. The scanned cells'
parameters are stacked along a leading axis under ``cells/cells_{first}_{last}``; `count_params` counts elements, so
the layout does not change the count. ``capture_intermediates`` stacks the scanned cells' intermediates the same way.

**RobustDARTS's noise op** (``noise``, of its space S4) returns standard normal noise of the strided input's shape in
place of the input, in training and evaluation alike, as RobustDARTS's ``NoiseOp``. It draws from the ``'noise'`` RNG
stream: a fresh key per training step, a fixed one (`eval_rngs`) in evaluation, so that evaluation is deterministic.
Drop path applies to it as to every op but identities, as in RobustDARTS's cells.

**Dtypes.** The networks follow their input's dtype: ``init`` creates parameters and BN statistics in the input's
precision, at least float32 (`ops.default_param_dtype`: float64 for a float64 input with ``jax_enable_x64``), and
``apply`` computes in the common dtype of input and parameters.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from darts_jax.cnn.genotypes import Genotype, validate_genotype
from darts_jax.cnn.ops import (BatchNorm, DepthwiseImpl, FactorizedReduce, ReLUConvBN, avg_pool_3x3, depthwise_conv,
                           max_pool_3x3, default_param_dtype, torch_default_init)
from darts_jax.data.augment import example_keys

AUXILIARY = 'auxiliary_head'
"""Name of the auxiliary head's parameters, excluded from `count_params` like the original's count."""


EVAL_NOISE_SEED = 0
"""The seed of the ``'noise'`` RNG stream in evaluation (`eval_rngs`)."""


def eval_rngs() -> dict[str, jax.Array]:
  """The RNG streams of a network's evaluation-mode ``apply``: the ``noise`` op's, fixed so that evaluation is
  deterministic (unused by a genotype without ``noise``)."""
  return {'noise': jax.random.key(EVAL_NOISE_SEED)}


def drop_path(rng: jax.Array, x: jax.Array, drop_prob: float | jax.Array, axis_name: str | None = None) -> jax.Array:
  """Drops whole examples of ``x`` (N, ...) with probability ``p = drop_prob``: ``x · m / (1 - p)``.

  One ``m ~ Bernoulli(1 - p)`` per example (the original's ``utils.drop_path``), so E[output] = x. ``drop_prob``
  may be traced.
  Under ``pmap`` with `axis_name` (and the same `rng` on every device) the mask is drawn for the global batch and each
  device takes its examples' entries, so the masks do not depend on the number of devices.
  """
  keep = 1.0 - drop_prob
  n = x.shape[0]
  if axis_name is None:
    mask = jax.random.bernoulli(rng, keep, (n,))
  else:
    mask = jax.random.bernoulli(rng, keep, (n * lax.axis_size(axis_name),))
    mask = lax.dynamic_slice_in_dim(mask, lax.axis_index(axis_name) * n, n)
  return x / keep * mask.astype(x.dtype).reshape((n,) + (1,) * (x.ndim - 1))


def count_params(params: dict, exclude: str = 'auxiliary') -> int:
  """Number of parameters, without the top-level entries whose name contains ``exclude``.

  Like the original ``utils.count_parameters_in_MB`` (times 1e6), which leaves out the auxiliary head. Counts array
  elements, so stacked (scanned) and unstacked layouts give the same number.
  """
  return sum(leaf.size for name, subtree in params.items() if exclude not in name
             for leaf in jax.tree.leaves(subtree))


def _torch_bias_init(fan_in: int) -> Callable:
  """PyTorch's ``nn.Linear`` bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _dense(x: jax.Array, features: int, name: str) -> jax.Array:
  """``nn.Linear`` with PyTorch's init applied to `x`, its parameters created in `default_param_dtype(x)`."""
  return nn.Dense(features, kernel_init=torch_default_init, bias_init=_torch_bias_init(x.shape[-1]),
                  param_dtype=default_param_dtype(x), name=name)(x)


def _conv(x: jax.Array, features: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
          padding: tuple[int, int] = (0, 0), name: str | None = None) -> jax.Array:
  """A bias-free ``nn.Conv2d`` with PyTorch's init and symmetric zero padding applied to `x`, its kernel created in
  `default_param_dtype(x)`."""
  return nn.Conv(features, kernel, stride, [(p, p) for p in padding], use_bias=False, kernel_init=torch_default_init,
                 param_dtype=default_param_dtype(x), name=name)(x)


# ---------------------------------------------------------------------------------------------------------------------
# Operations. All take (x, train) with x of shape (N, H, W, C) and return (N, H/stride, W/stride, C).


class Identity(nn.Module):
  """``skip_connect`` at stride 1. Drop path never applies to it."""

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return x


class Zero(nn.Module):
  """The ``none`` op: zeros at the output resolution."""
  stride: int

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride])


class Noise(nn.Module):
  """RobustDARTS's ``noise``: N(0, 1) noise of the strided input's shape, in the input's dtype, replacing the input.

  Draws from the ``'noise'`` RNG stream with one key per example of the *global* batch (`data.example_keys`), so
  that under ``pmap`` the draws do not depend on the number of devices.
  """
  stride: int
  axis_name: str | None = None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    shape = x[:, ::self.stride, ::self.stride].shape
    # `init` runs outside the mapped step, where the axis is unbound; its draws only give shapes.
    keys = example_keys(self.make_rng('noise'), shape[0], None if self.is_initializing() else self.axis_name)
    return jax.vmap(lambda key: jax.random.normal(key, shape[1:], x.dtype))(keys)


class Pool(nn.Module):
  """3x3 max or average pooling (padding 1, average over in-image pixels only), without BN."""
  kind: str  # 'max' or 'avg'
  stride: int

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return (max_pool_3x3 if self.kind == 'max' else avg_pool_3x3)(x, self.stride)


class _ReLUDepthwisePointwise(nn.Module):
  """ReLU → depthwise k×k conv (stride, dilation, zero padding) → 1×1 conv → affine BN; the unit of SepConv/DilConv.

  The depthwise kernel is stored as (k, k, 1, C), the layout of a grouped ``nn.Conv``, so PyTorch's init
  (fan_in = k²) applies unchanged.
  """
  features: int
  kernel_size: int
  stride: int
  padding: int
  dilation: int = 1
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    k, c = self.kernel_size, x.shape[-1]
    depthwise = self.param('depthwise', torch_default_init, (k, k, 1, c), default_param_dtype(x))
    pointwise = self.param('pointwise', torch_default_init, (c, self.features), default_param_dtype(x))
    x = depthwise_conv(jax.nn.relu(x)[None], depthwise[None, :, :, 0], stride=self.stride, dilation=self.dilation,
                       padding=self.padding, impl=self.depthwise_impl)[0]
    return BatchNorm(affine=True, axis_name=self.axis_name)(x @ pointwise, train)


class SepConv(nn.Module):
  """``sep_conv_kxk``: the ReLU-depthwise-pointwise-BN unit twice, the first with the op's stride (padding k // 2)."""
  features: int
  kernel_size: int
  stride: int
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    unit = lambda stride, name: _ReLUDepthwisePointwise(
        self.features, self.kernel_size, stride, self.kernel_size // 2, 1, self.depthwise_impl, self.axis_name,
        name=name)
    return unit(1, 'unit2')(unit(self.stride, 'unit1')(x, train), train)


class DilConv(nn.Module):
  """``dil_conv_kxk``: one ReLU-depthwise-pointwise-BN unit with dilation 2 (padding k - 1, so stride 1 keeps H, W)."""
  features: int
  kernel_size: int
  stride: int
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return _ReLUDepthwisePointwise(self.features, self.kernel_size, self.stride, self.kernel_size - 1, 2,
                                   self.depthwise_impl, self.axis_name, name='unit')(x, train)


class Conv7x1x1x7(nn.Module):
  """``conv_7x1_1x7``: ReLU → 1×7 conv (stride (1, s), padding (0, 3)) → 7×1 conv (stride (s, 1), padding (3, 0)) → BN.

  Both convolutions are full (not depthwise), as in the original.
  """
  features: int
  stride: int
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    s = self.stride
    x = _conv(jax.nn.relu(x), self.features, (1, 7), (1, s), (0, 3), name='conv_1x7')
    x = _conv(x, self.features, (7, 1), (s, 1), (3, 0), name='conv_7x1')
    return BatchNorm(affine=True, axis_name=self.axis_name)(x, train)


def make_op(name: str, channels: int, stride: int, depthwise_impl: DepthwiseImpl = 'auto',
            axis_name: str | None = None, module_name: str | None = None) -> nn.Module:
  """The module of primitive ``name`` (one of `genotypes.EVAL_PRIMITIVES` or RobustDARTS's ``noise``), as the
  original's ``OPS[name]``."""
  conv_kw = dict(depthwise_impl=depthwise_impl, axis_name=axis_name, name=module_name)
  if name == 'none':
    return Zero(stride, name=module_name)
  if name in ('max_pool_3x3', 'avg_pool_3x3'):
    return Pool(name[:3], stride, name=module_name)
  if name == 'skip_connect':
    if stride == 1:
      return Identity(name=module_name)
    return FactorizedReduce(channels, affine=True, axis_name=axis_name, name=module_name)
  if name in ('sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7'):
    return SepConv(channels, int(name[-1]), stride, **conv_kw)
  if name in ('dil_conv_3x3', 'dil_conv_5x5'):
    return DilConv(channels, int(name[-1]), stride, **conv_kw)
  if name == 'conv_7x1_1x7':
    return Conv7x1x1x7(channels, stride, axis_name=axis_name, name=module_name)
  if name == 'noise':
    return Noise(stride, axis_name, name=module_name)
  raise ValueError(f'unknown operation {name!r}')


# ---------------------------------------------------------------------------------------------------------------------
# Cells.


class Cell(nn.Module):
  """One evaluation cell (the original ``model.Cell``).

  Attributes:
    ops: ``(op_name, input_state)`` pairs, two per node (``genotype.normal`` or ``genotype.reduce``).
    concat: states concatenated into the output.
    channels: C of the cell's nodes; the output has ``len(concat) · C`` channels.
    reduction: whether ops reading the cell inputs have stride 2.
    reduction_prev: whether the previous cell reduced, so ``s0`` is at twice the resolution of ``s1`` and is
      preprocessed by a `FactorizedReduce` instead of a 1×1 ReLU-conv-BN.
  """
  ops: tuple[tuple[str, int], ...]
  concat: tuple[int, ...]
  channels: int
  reduction: bool
  reduction_prev: bool
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None

  @nn.compact
  def __call__(self, s0: jax.Array, s1: jax.Array, drop_path_prob: float | jax.Array, train: bool) -> jax.Array:
    c = self.channels
    if self.reduction_prev:
      s0 = FactorizedReduce(c, affine=True, axis_name=self.axis_name, name='preprocess0')(s0, train)
    else:
      s0 = ReLUConvBN(c, affine=True, axis_name=self.axis_name, name='preprocess0')(s0, train)
    s1 = ReLUConvBN(c, affine=True, axis_name=self.axis_name, name='preprocess1')(s1, train)
    states = [s0, s1]
    apply_drop_path = train and not _is_static_zero(drop_path_prob)
    for node in range(len(self.ops) // 2):
      node_sum = 0.0
      for k in (2 * node, 2 * node + 1):
        name, index = self.ops[k]
        stride = 2 if self.reduction and index < 2 else 1
        op = make_op(name, c, stride, self.depthwise_impl, self.axis_name, module_name=f'op{k}')
        h = op(states[index], train)
        if apply_drop_path and not isinstance(op, Identity):
          h = drop_path(self.make_rng('dropout'), h, drop_path_prob, self.axis_name)
        node_sum = node_sum + h
      states.append(node_sum)
    return jnp.concatenate([states[i] for i in self.concat], axis=-1)


def _is_static_zero(x: float | jax.Array) -> bool:
  """A literal 0 turns drop path off at trace time, so training without it needs no 'dropout' RNG."""
  return isinstance(x, (int, float)) and x == 0


@dataclasses.dataclass(frozen=True)
class CellSpec:
  """A cell of a network: its `Cell` attributes and input channels. Equal specs are the same function."""
  ops: tuple[tuple[str, int], ...]
  concat: tuple[int, ...]
  channels: int
  reduction: bool
  reduction_prev: bool
  input_channels: tuple[int, int]

  @property
  def output_channels(self) -> int:
    return len(self.concat) * self.channels

  @property
  def keeps_shape(self) -> bool:
    """True when input states and output have one shape, so cells like it can be chained by a scan."""
    return (not self.reduction and not self.reduction_prev
            and self.input_channels == (self.output_channels, self.output_channels))


def cell_specs(genotype: Genotype, C: int, layers: int, stem_channels: tuple[int, int],
               reduction_prev: bool = False) -> list[CellSpec]:
  """The cells of a network: reductions (channels doubled) at ``layers // 3`` and ``2 * layers // 3``."""
  specs, (c_prev_prev, c_prev), channels = [], stem_channels, C
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    channels *= 2 if reduction else 1
    ops, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
    spec = CellSpec(tuple(tuple(p) for p in ops), tuple(concat), channels, reduction, reduction_prev,
                     (c_prev_prev, c_prev))
    specs.append(spec)
    c_prev_prev, c_prev, reduction_prev = c_prev, spec.output_channels, reduction
  return specs


def cell_runs(specs: Sequence[CellSpec], break_after: int) -> list[tuple[int, int]]:
  """Groups cells into runs ``(first, last)`` of identical shape-keeping cells; the others are runs of one.

  A run never continues past cell ``break_after`` (where the auxiliary head reads the state).
  """
  runs = []
  for i, spec in enumerate(specs):
    if runs and spec.keeps_shape and specs[i - 1] == spec and i - 1 != break_after:
      runs[-1] = (runs[-1][0], i)
    else:
      runs.append((i, i))
  return runs


def _scan_body(cell: Cell, carry: tuple[jax.Array, jax.Array], drop_path_prob: float | jax.Array, train: bool):
  s0, s1 = carry
  return (s1, cell(s0, s1, drop_path_prob, train)), None


class CellStack(nn.Module):
  """The cells of a network, identical consecutive ones as one `nn.scan` (see the module docstring).

  ``__call__(s0, s1, drop_path_prob, train)`` returns ``(output of the last cell, output of cell tap)``.
  """
  specs: tuple[CellSpec, ...]
  tap: int
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None
  scan: bool = True

  @nn.compact
  def __call__(self, s0: jax.Array, s1: jax.Array, drop_path_prob: float | jax.Array, train: bool
               ) -> tuple[jax.Array, jax.Array]:
    runs = cell_runs(self.specs, self.tap) if self.scan else [(i, i) for i in range(len(self.specs))]
    tapped = None
    for first, last in runs:
      spec = self.specs[first]
      cell_kw = dict(ops=spec.ops, concat=spec.concat, channels=spec.channels, reduction=spec.reduction,
                     reduction_prev=spec.reduction_prev, depthwise_impl=self.depthwise_impl,
                     axis_name=self.axis_name)
      if first == last:
        s0, s1 = s1, Cell(**cell_kw, name=f'cell_{first}')(s0, s1, drop_path_prob, train)
      else:
        scanned = nn.scan(_scan_body, variable_axes={'params': 0, 'batch_stats': 0, 'intermediates': 0},
                          split_rngs={'params': True, 'dropout': True, 'noise': True},
                          in_axes=(nn.broadcast, nn.broadcast),
                          length=last - first + 1)
        (s0, s1), _ = scanned(Cell(**cell_kw, name=f'cells_{first}_{last}'), (s0, s1), drop_path_prob, train)
      if first <= self.tap <= last:
        tapped = s1
    return s1, tapped


# ---------------------------------------------------------------------------------------------------------------------
# Auxiliary heads and networks.


class AuxiliaryHeadCIFAR(nn.Module):
  """ReLU → 5×5 avg pool (stride 3, no padding) → 1×1 conv to 128 → BN → ReLU → 2×2 conv to 768 → BN → ReLU → dense.

  Expects an 8×8 feature map (pooled to 2×2, then 1×1), as after the second reduction of a 32×32 input.
  """
  num_classes: int
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.avg_pool(jax.nn.relu(x), (5, 5), (3, 3))
    x = jax.nn.relu(BatchNorm(affine=True, axis_name=self.axis_name)(_conv(x, 128, (1, 1)), train))
    x = jax.nn.relu(BatchNorm(affine=True, axis_name=self.axis_name)(_conv(x, 768, (2, 2)), train))
    return _dense(x.reshape(x.shape[0], -1), self.num_classes, 'classifier')


class AuxiliaryHeadImageNet(nn.Module):
  """As `AuxiliaryHeadCIFAR` with a stride-2 pool and no BN after the 2×2 conv (commented out in the original, which
  the paper's ImageNet results used). Expects a 7×7 feature map (pooled to 2×2, then 1×1)."""
  num_classes: int
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.avg_pool(jax.nn.relu(x), (5, 5), (2, 2))
    x = jax.nn.relu(BatchNorm(affine=True, axis_name=self.axis_name)(_conv(x, 128, (1, 1)), train))
    x = jax.nn.relu(_conv(x, 768, (2, 2)))
    return _dense(x.reshape(x.shape[0], -1), self.num_classes, 'classifier')


def _check_auxiliary_input(x: jax.Array, min_size: int, network: str) -> None:
  if min(x.shape[1:3]) < min_size:
    raise ValueError(f'the auxiliary head of {network} needs a feature map of at least {min_size}x{min_size} after '
                     f'its second reduction cell, got {x.shape[1]}x{x.shape[2]}: use larger images '
                     f'(32x32 for NetworkCIFAR, 224x224 for NetworkImageNet) or auxiliary=False')


class NetworkCIFAR(nn.Module):
  """The DARTS CIFAR evaluation network (``model.NetworkCIFAR``).

  Stem: 3×3 conv to 3C channels + BN; `layers` cells (reductions at ``layers // 3`` and ``2 * layers // 3``);
  global average pooling; dense classifier. With `auxiliary`, an `AuxiliaryHeadCIFAR` reads the output of cell
  ``2 * layers // 3`` in training.

  Usage::

    net = NetworkCIFAR(DARTS_V2, C=36, num_classes=10, layers=20, auxiliary=True)
    variables = net.init(rng, x, train=False)                 # {'params', 'batch_stats'}, incl. the auxiliary head
    (logits, logits_aux), updates = net.apply(variables, x, train=True, drop_path_prob=0.1,
                                              rngs={'dropout': key}, mutable=['batch_stats'])
    logits, _ = net.apply(variables, x, train=False)           # logits_aux is None outside training
    # a genotype with RobustDARTS's noise op needs its stream: rngs={'dropout': key, 'noise': key2} in training,
    # rngs=eval_rngs() in evaluation

  ``drop_path_prob`` is an argument of the call, not an attribute (as the original's ``model.drop_path_prob``), so a
  traced value changes without recompiling; drop path needs a ``'dropout'`` RNG unless it is the literal 0.
  `depthwise_impl` picks the depthwise formulation (`ops.DEPTHWISE_IMPLS`), `axis_name` makes BN use global-batch
  statistics under ``pmap``, ``scan=False`` unrolls identical cells (same function, other parameter layout) and
  `stem_multiplier` sets the stem's channels (3C in the original).
  """
  genotype: Genotype
  C: int
  num_classes: int
  layers: int
  auxiliary: bool = False
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None
  scan: bool = True
  stem_multiplier: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, drop_path_prob: float | jax.Array = 0.0
               ) -> tuple[jax.Array, jax.Array | None]:
    genotype = validate_genotype(self.genotype)
    stem_channels = self.stem_multiplier * self.C
    s = BatchNorm(affine=True, axis_name=self.axis_name, name='stem_bn')(
        _conv(x, stem_channels, (3, 3), padding=(1, 1), name='stem_conv'), train)
    tap = 2 * self.layers // 3
    specs = cell_specs(genotype, self.C, self.layers, (stem_channels, stem_channels))
    out, tapped = CellStack(tuple(specs), tap, self.depthwise_impl, self.axis_name, self.scan, name='cells')(
        s, s, drop_path_prob, train)
    logits_aux = None
    if self.auxiliary and (train or self.is_initializing()):
      _check_auxiliary_input(tapped, 8, 'NetworkCIFAR')
      logits_aux = AuxiliaryHeadCIFAR(self.num_classes, self.axis_name, name=AUXILIARY)(tapped, train)
    logits = _dense(jnp.mean(out, axis=(1, 2)), self.num_classes, 'classifier')
    return logits, logits_aux if train else None


class NetworkImageNet(nn.Module):
  """The DARTS ImageNet evaluation network, mobile setting (``model.NetworkImageNet``).

  Stems: ``stem0`` = 3×3 conv stride 2 to C/2 → BN → ReLU → 3×3 conv stride 2 to C → BN, and ``stem1`` = ReLU → 3×3
  conv stride 2 → BN, so the first cell reads maps at 1/4 and 1/8 of the input resolution (it starts with a
  `FactorizedReduce` of ``s0``); `layers` cells with reductions at ``layers // 3`` and ``2 * layers // 3``; global
  average pooling (the original's 7×7 average pool of the 7×7 map of a 224×224 input); dense classifier. With
  `auxiliary`, an `AuxiliaryHeadImageNet` reads cell ``2 * layers // 3`` in training. Call as `NetworkCIFAR`.
  """
  genotype: Genotype
  C: int
  num_classes: int
  layers: int
  auxiliary: bool = False
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None
  scan: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, drop_path_prob: float | jax.Array = 0.0
               ) -> tuple[jax.Array, jax.Array | None]:
    genotype = validate_genotype(self.genotype)
    bn = lambda name: BatchNorm(affine=True, axis_name=self.axis_name, name=name)
    s0 = jax.nn.relu(bn('stem0_bn1')(_conv(x, self.C // 2, (3, 3), (2, 2), (1, 1), name='stem0_conv1'), train))
    s0 = bn('stem0_bn2')(_conv(s0, self.C, (3, 3), (2, 2), (1, 1), name='stem0_conv2'), train)
    s1 = bn('stem1_bn')(_conv(jax.nn.relu(s0), self.C, (3, 3), (2, 2), (1, 1), name='stem1_conv'), train)
    tap = 2 * self.layers // 3
    specs = cell_specs(genotype, self.C, self.layers, (self.C, self.C), reduction_prev=True)
    out, tapped = CellStack(tuple(specs), tap, self.depthwise_impl, self.axis_name, self.scan, name='cells')(
        s0, s1, drop_path_prob, train)
    logits_aux = None
    if self.auxiliary and (train or self.is_initializing()):
      _check_auxiliary_input(tapped, 7, 'NetworkImageNet')
      logits_aux = AuxiliaryHeadImageNet(self.num_classes, self.axis_name, name=AUXILIARY)(tapped, train)
    logits = _dense(jnp.mean(out, axis=(1, 2)), self.num_classes, 'classifier')
    return logits, logits_aux if train else None
