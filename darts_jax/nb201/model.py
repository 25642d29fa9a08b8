"""NAS-Bench-201's networks in Flax: the supernet (every edge mixes its 5 ops by the mixing weights) and the network of
one genotype, from one module (`Network`), so that a genotype's network holds a subset of the supernet's parameters
under the same names.

The definitions are the benchmark's (its ``TinyNetwork``, ``InferCell``, ``NAS201SearchCell``, ``ReLUConvBN``,
``ResNetBasicblock``): images NHWC.

* stem: 3×3 conv (no bias) to C channels, BN (affine);
* 3 stages of N cells at C, 2C, 4C channels; between stages a residual reduction block: ``ReLU-conv3×3(stride 2)-BN``,
  ``ReLU-conv3×3-BN``, plus the shortcut ``avgpool 2×2 → conv1×1`` (no bias, no BN); its BNs affine;
* a cell (channels in = out, stride 1): node ``i`` = ``Σ_j op_{j→i}(node_j)``, the output node 3;
* ops: ``none`` (zeros), ``skip_connect`` (identity), ``nor_conv_1x1``/``nor_conv_3x3`` (ReLU, conv, BN),
  ``avg_pool_3x3`` (stride 1, padding 1, the average over in-image pixels only);
* head: BN (affine), ReLU, global average pooling, a dense classifier with bias.

The cells' ReLU-Conv-BN follows the benchmark's ``affine`` switch: affine BN and a bias-free conv (its trained
networks, ``affine=True``), or BN without scale and shift and a conv *with* bias (its searches, ``affine=False``).
Initialisation is PyTorch's default; BN has PyTorch's semantics (`darts_jax.cnn.ops.BatchNorm`).

PC-DARTS's two changes to the supernet are options of `Network` (off by default), as on DARTS's space
(`darts_jax.cnn.supernet.MixedEdges`): ``partial_channels`` K > 1 sends the first C/K channels of each edge's input
through its mixed ops (convolutions built at C/K channels) and the rest past them unchanged (the identity: every edge
of the cell has stride 1), then shuffles the channels of the concatenation in K groups; ``edge_normalization`` takes
the mixing weights as ``{'cell': (6, 5), 'edges_cell': [(1,), (2,), (3,)]}`` (`genotypes.EDGES_KEY`), node ``i``
weighting its incoming edge from node ``j`` by entry ``j`` of its array (a relaxation's softmax of β).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from darts_jax.cnn.ops import BatchNorm, avg_pool_3x3, default_param_dtype, torch_default_init
from darts_jax.cnn.supernet import channel_shuffle
from darts_jax.nb201.genotypes import CELL_KEY, EDGES, EDGES_KEY, NUM_NODES, OPS, Genotype, check_genotype

CONV_KERNELS = {'nor_conv_1x1': 1, 'nor_conv_3x3': 3}


def _torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _conv(x: jax.Array, features: int, kernel: int, stride: int = 1, use_bias: bool = False,
          name: str | None = None) -> jax.Array:
  """``nn.Conv2d`` with PyTorch's init and padding ``kernel // 2``, its parameters in `default_param_dtype(x)`."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), stride, [(pad, pad)] * 2, use_bias=use_bias,
                 kernel_init=torch_default_init, bias_init=_torch_bias_init(kernel * kernel * x.shape[-1]),
                 dtype=x.dtype, param_dtype=default_param_dtype(x), name=name)(x)


class ReLUConvBN(nn.Module):
  """The benchmark's ``ReLUConvBN``: ReLU, k×k conv (bias exactly when BN is not affine), BN."""
  features: int
  kernel: int
  stride: int = 1
  affine: bool = True
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = _conv(jax.nn.relu(x), self.features, self.kernel, self.stride, use_bias=not self.affine, name='conv')
    return BatchNorm(affine=self.affine, axis_name=self.axis_name, name='bn')(x, train)


class ResidualReduction(nn.Module):
  """The benchmark's ``ResNetBasicblock`` at stride 2: halves H and W, `features` channels out."""
  features: int
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if x.shape[-3] % 2 or x.shape[-2] % 2:
      raise ValueError(f'a NAS-Bench-201 reduction needs even feature maps, got {x.shape[-3]}x{x.shape[-2]}: the '
                       'image size must be divisible by 4.')
    y = ReLUConvBN(self.features, 3, 2, axis_name=self.axis_name, name='conv_a')(x, train)
    y = ReLUConvBN(self.features, 3, 1, axis_name=self.axis_name, name='conv_b')(y, train)
    n, h, w, c = x.shape
    shortcut = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))  # AvgPool2d(2, 2)
    return y + _conv(shortcut, self.features, 1, name='shortcut')


class Cell(nn.Module):
  """A cell: each edge its genotype's op, or (``genotype=None``) the sum of its ops weighted by its row of the
  mixing weights (the benchmark's ``NAS201SearchCell``; ``none`` adds nothing and is not computed).

  The supernet's PC-DARTS options (module docstring): ``partial_channels`` K mixes the ops on the first C/K channels
  of each edge's input, passes the rest unchanged and shuffles the channels in K groups; ``edge_weights`` (one array
  per node 1..3, an entry per incoming edge) scale each edge's output in its node's sum."""
  genotype: Genotype | None = None
  affine: bool = True
  axis_name: str | None = None
  partial_channels: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool,
               edge_weights: list[jax.Array] | None = None) -> jax.Array:
    groups = 1 if self.genotype is not None else self.partial_channels
    # Without PC-DARTS's options the ops add straight into the node's sum (the benchmark's order of the sums).
    plain = groups == 1 and edge_weights is None
    nodes = [x]
    for node in range(1, NUM_NODES):
      total = jnp.zeros_like(x)
      for e, (dst, source) in enumerate(EDGES):
        if dst != node:
          continue
        ops = OPS if self.genotype is None else (self.genotype[e],)
        edge_input = nodes[source]
        mixed_input = edge_input[..., :x.shape[-1] // groups]
        edge = total if plain else jnp.zeros_like(mixed_input)
        for op in ops:
          if op == 'none':
            continue
          y = self._op(op, e, mixed_input, train)
          edge = edge + (y if self.genotype is not None else weights[e, OPS.index(op)].astype(y.dtype) * y)
        if groups > 1:  # PC-DARTS: the bypassed channels join the mixed ones, then the groups are shuffled
          edge = channel_shuffle(jnp.concatenate([edge, edge_input[..., mixed_input.shape[-1]:]], -1), groups)
        if edge_weights is not None:
          edge = edge_weights[node - 1][source].astype(edge.dtype) * edge
        total = edge if plain else total + edge
      nodes.append(total)
    return nodes[-1]

  def _op(self, op: str, edge: int, x: jax.Array, train: bool) -> jax.Array:
    if op == 'skip_connect':
      return x
    if op == 'avg_pool_3x3':
      return avg_pool_3x3(x, 1)
    return ReLUConvBN(x.shape[-1], CONV_KERNELS[op], affine=self.affine, axis_name=self.axis_name,
                      name=f'edge{edge}_{op}')(x, train)


class Network(nn.Module):
  """The benchmark's macro network (module docstring) of C channels, N cells per stage: the supernet
  (``genotype=None``, called with mixing weights of shape (6, 5), the same for every cell) or a genotype's network
  (called without weights). `affine`: the cells' ReLU-Conv-BN (module docstring); the stem, reductions and head are
  affine either way, as the benchmark's.

  The supernet's PC-DARTS options (module docstring; a genotype's network has neither): ``partial_channels`` K, a
  divisor of C, and ``edge_normalization``, with which the mixing weights are ``{CELL_KEY: (6, 5), EDGES_KEY: [(1,),
  (2,), (3,)]}``. NAS-Bench-201's genotype keeps every edge, so the edge weights scale the supernet's sums only and
  play no part in the genotype rule (`genotypes.derive_genotype`)."""
  C: int = 16
  N: int = 5
  num_classes: int = 10
  genotype: Genotype | None = None
  affine: bool = True
  axis_name: str | None = None
  partial_channels: int = 1
  edge_normalization: bool = False

  def __post_init__(self):
    if self.genotype is not None:
      object.__setattr__(self, 'genotype', check_genotype(self.genotype))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, weights: jax.Array | None = None, train: bool = False) -> jax.Array:
    if (weights is None) != (self.genotype is not None):
      raise ValueError('the supernet (genotype=None) takes mixing weights; a genotype\'s network takes none.')
    if self.partial_channels < 1 or self.C % self.partial_channels:
      raise ValueError(f'partial_channels ({self.partial_channels}) must be a positive divisor of C ({self.C}).')
    if self.genotype is not None and (self.partial_channels > 1 or self.edge_normalization):
      raise ValueError('partial_channels and edge_normalization are options of the supernet (genotype=None).')
    edge_weights = None
    if self.edge_normalization:
      if not isinstance(weights, Mapping) or EDGES_KEY not in weights:
        raise ValueError(f'edge normalisation takes the mixing weights {{{CELL_KEY!r}: (6, 5), {EDGES_KEY!r}: '
                         '[(1,), (2,), (3,)]}.')
      weights, edge_weights = weights[CELL_KEY], weights[EDGES_KEY]
    x = _conv(x, self.C, 3, name='stem_conv')
    x = BatchNorm(affine=True, axis_name=self.axis_name, name='stem_bn')(x, train)
    for stage in range(3):
      channels = self.C * 2 ** stage
      if stage:
        x = ResidualReduction(channels, axis_name=self.axis_name, name=f'reduction{stage}')(x, train)
      for i in range(self.N):
        x = Cell(self.genotype, self.affine, self.axis_name, self.partial_channels,
                 name=f'stage{stage}_cell{i}')(x, weights, train, edge_weights)
    x = jax.nn.relu(BatchNorm(affine=True, axis_name=self.axis_name, name='head_bn')(x, train))
    x = jnp.mean(x, axis=(-3, -2))
    return nn.Dense(self.num_classes, kernel_init=torch_default_init, bias_init=_torch_bias_init(x.shape[-1]),
                    param_dtype=default_param_dtype(x), name='classifier')(x)


@dataclasses.dataclass(frozen=True)
class Cost:
  """Parameters and multiply-adds of one image, counted as the benchmark counts them (its ``get_model_infos``:
  every parameter, BN's included, and the convolutions' and the classifier's multiply-adds with their biases;
  pooling, BN and additions not counted). The benchmark reports both in millions (``params`` as "MB")."""
  params: int
  macs: int


def _conv_cost(c_in: int, c_out: int, kernel: int, out_hw: int, bias: bool) -> Cost:
  positions = out_hw * out_hw
  return Cost(kernel * kernel * c_in * c_out + bias * c_out, positions * (kernel * kernel * c_in * c_out + bias * c_out))


def _sum(costs: list[Cost]) -> Cost:
  return Cost(sum(c.params for c in costs), sum(c.macs for c in costs))


def network_cost(genotype: Genotype, *, C: int = 16, N: int = 5, num_classes: int = 10, image_size: int = 32,
                 in_channels: int = 3, affine: bool = True) -> Cost:
  """The cost of `genotype`'s network (`Cost`): the benchmark's figures at its defaults (C=16, N=5, 32×32 CIFAR
  images; ImageNet16-120: ``image_size=16, num_classes=120``)."""
  genotype = check_genotype(genotype)
  bn = lambda c, affine=True: Cost(2 * c * affine, 0)
  parts = [_conv_cost(in_channels, C, 3, image_size, False), bn(C)]
  size = image_size
  for stage in range(3):
    c = C * 2 ** stage
    if stage:
      size //= 2
      parts += [_conv_cost(c // 2, c, 3, size, False), bn(c), _conv_cost(c, c, 3, size, False), bn(c),
                _conv_cost(c // 2, c, 1, size, False)]
    for op in genotype:
      if op in CONV_KERNELS:
        parts += [_conv_cost(c, c, CONV_KERNELS[op], size, not affine), bn(c, affine)] * N
  final = 4 * C
  parts += [bn(final), Cost(final * num_classes + num_classes, final * num_classes + num_classes)]
  return _sum(parts)


def count_params(params: Any) -> int:
  """The number of parameter elements of a parameter tree."""
  return sum(leaf.size for leaf in jax.tree.leaves(params))
