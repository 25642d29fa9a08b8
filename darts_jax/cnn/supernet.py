"""The DARTS supernet: mixed operations, search cells and the search network, as in the original `model_search.py`.

Every edge of a cell carries the 8 `PRIMITIVES`, mixed by the softmax of its row of alphas:
``edge(x) = Σ_k softmax(alpha_edge)_k · op_k(x)``. Normal cells share ``alphas['normal']`` and reduction cells share
``alphas['reduce']``; alphas are an argument of ``apply``, not a parameter, so the bilevel optimiser can
differentiate the two separately. With ``mixing='weights'`` the argument is the mixing weights themselves, as a
relaxation (`darts_jax.dynamics`: temperature, Gumbel-softmax, sigmoid, Dirichlet, ...) computes them from the
alphas.

**Wide formulation.** The original builds a separate module for each of the 14 edges. Here all edges *leaving* one
node are computed together (`MixedEdges`): they apply the same 8 ops to the same input, so their weights are stacked
along a leading edge axis and each op runs once for all of them. This is the same function with the same
parameters, but the traced graph is ~3x smaller (faster compiles) and the kernels are larger (faster steps).
Parameter-free ops (pools, identity) are computed once per node: with an identical input their outputs and, since
BN in cells is affine-free and uses batch statistics, their BN outputs and running statistics are identical on every
edge, so one copy of those statistics per node stands for the original's one per edge.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from darts_jax.cnn.genotypes import PRIMITIVES
from darts_jax.cnn.ops import (BatchNorm, DepthwiseImpl, FactorizedReduce, ReLUConvBN, _depthwise_init, _pointwise_init,
                           avg_pool_3x3, default_param_dtype, depthwise_conv, factorized_reduce, max_pool_3x3,
                           pointwise_conv, torch_default_init)

# The parametric ops, in PRIMITIVES order, with (kernel, dilation, padding) of their first depthwise conv.
# sep convs repeat ReLU → depthwise → pointwise → BN twice (second time with stride 1); dil convs do it once.
_CONV_OPS = {
    'sep_conv_3x3': (3, 1, 1),
    'sep_conv_5x5': (5, 1, 2),
    'dil_conv_3x3': (3, 2, 2),
    'dil_conv_5x5': (5, 2, 4),
}
_SEP_OPS = ('sep_conv_3x3', 'sep_conv_5x5')
_OP_INDEX = {name: i for i, name in enumerate(PRIMITIVES)}


def num_edges(steps: int = 4) -> int:
  """Edges of a cell with `steps` intermediate nodes: node i has 2 + i inputs."""
  return sum(2 + i for i in range(steps))


def edge_index(node: int, source: int) -> int:
  """Row of alphas for the edge from state `source` (0, 1 = cell inputs, 2 + i = node i) into node `node`."""
  return sum(2 + i for i in range(node)) + source


def init_alphas(rng: jax.Array, steps: int = 4, num_ops: int = len(PRIMITIVES), scale: float = 1e-3,
                dtype: jax.typing.DTypeLike = jnp.float32) -> dict[str, jax.Array]:
  """Architecture parameters ``{'normal': (E, num_ops), 'reduce': (E, num_ops)}``, ``scale · N(0, 1)`` like the original."""
  normal_key, reduce_key = jax.random.split(rng)
  shape = (num_edges(steps), num_ops)
  return {'normal': scale * jax.random.normal(normal_key, shape, dtype),
          'reduce': scale * jax.random.normal(reduce_key, shape, dtype)}


class MixedEdges(nn.Module):
  """The mixed ops of every edge leaving one node, computed together.

  ``__call__(x, weights, train)`` takes the node's state ``x`` (N, H, W, C) and the mixing weights of its
  ``num_edges`` outgoing edges (num_edges, 8) and returns (num_edges, N, H', W', C): edge e's mixed output.
  Parameters and BN statistics are created in `param_dtype` (None: `ops.default_param_dtype` of ``x``).
  """
  channels: int
  num_edges: int
  stride: int
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None
  param_dtype: Any = None

  def _bn(self, x: jax.Array, train: bool, name: str) -> jax.Array:
    # One BN over stacked (op/edge, channel) features == a separate affine-free BN per op and edge.
    return BatchNorm(feature_axes=(0, -1), axis_name=self.axis_name, param_dtype=self.param_dtype, name=name)(x, train)

  @nn.compact
  def __call__(self, x: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
    c, s, n_edges = self.channels, self.stride, self.num_edges
    weights = weights.astype(x.dtype)
    # Parameters in `param_dtype` (float32 for bfloat16 activations), used in the activations' dtype (their gradients
    # come back in the parameters' dtype through the cast).
    param_dtype = self.param_dtype or default_param_dtype(x)
    stacked = lambda name, init, shape: self.param(name, init, (n_edges,) + shape, param_dtype).astype(x.dtype)
    # Named for `SearchNetwork.remat`'s policy, which keeps convolution outputs.
    conv = lambda inp, kernel, **kw: checkpoint_name(depthwise_conv(inp, kernel, impl=self.depthwise_impl, **kw),
                                                     'depthwise_conv')

    # Pools: parameter-free, so one computation (and one BN) serves every edge.
    pooled = self._bn(jnp.stack([max_pool_3x3(x, s), avg_pool_3x3(x, s)]), train, 'pool_bn')
    if s == 1:
      skip = x[None]
    else:
      half = (c, c // 2)
      skip = self._bn(factorized_reduce(x, stacked('skip_conv1', _pointwise_init, half),
                                        stacked('skip_conv2', _pointwise_init, half)), train, 'skip_bn')

    # First ReLU → depthwise → pointwise → BN of all four conv ops, on the shared input.
    relu_x = jax.nn.relu(x)[None]
    stage1 = jnp.concatenate([
        conv(relu_x, stacked(f'{op}_depthwise1', _depthwise_init, (k, k, c)), stride=s, dilation=d, padding=p)
        for op, (k, d, p) in _CONV_OPS.items()])
    pointwise1 = jnp.concatenate([stacked(f'{op}_pointwise1', _pointwise_init, (c, c)) for op in _CONV_OPS])
    stage1 = self._bn(pointwise_conv(stage1, pointwise1), train, 'stage1_bn')

    # Second ReLU → depthwise (stride 1) → pointwise → BN of the two separable convs.
    # Splits, not slices: the transpose of a split is one concatenation, that of each slice a full-size pad.
    sep_stage1, dil_out = jnp.split(stage1, [len(_SEP_OPS) * n_edges])
    stage2 = jnp.concatenate([
        conv(relu_in, stacked(f'{op}_depthwise2', _depthwise_init, (_CONV_OPS[op][0],) * 2 + (c,)),
             padding=_CONV_OPS[op][2])
        for op, relu_in in zip(_SEP_OPS, jnp.split(jax.nn.relu(sep_stage1), len(_SEP_OPS)))])
    pointwise2 = jnp.concatenate([stacked(f'{op}_pointwise2', _pointwise_init, (c, c)) for op in _SEP_OPS])
    stage2 = self._bn(pointwise_conv(stage2, pointwise2), train, 'stage2_bn')

    conv_out = jnp.concatenate([stage2, dil_out])
    conv_out = conv_out.reshape((len(_CONV_OPS), n_edges) + conv_out.shape[1:])
    # 'none' contributes zeros, so it only enters through the softmax normalisation of the other weights.
    # Outputs shared by all edges (pools; identity at stride 1) are mixed by one matmul over their stack: its
    # gradient is a matmul too, where broadcasting them over edges would need a reduction over edges.
    shared_ops, shared = ['max_pool_3x3', 'avg_pool_3x3'], pooled
    if s == 1:
      shared_ops.append('skip_connect')
      shared = jnp.concatenate([pooled, skip])
    index = lambda names: jnp.array([_OP_INDEX[name] for name in names])
    mixed = (jnp.einsum('ek,knhwc->enhwc', weights[:, index(shared_ops)], shared)
             + jnp.einsum('ek,kenhwc->enhwc', weights[:, index(_CONV_OPS)], conv_out))
    if s == 2:  # one factorized reduction per edge
      mixed = mixed + weights[:, _OP_INDEX['skip_connect'], None, None, None, None] * skip
    return mixed


class SearchCell(nn.Module):
  """A DARTS search cell: two preprocessed inputs, `steps` nodes, each summing mixed ops over all earlier states."""
  channels: int
  reduction: bool
  reduction_prev: bool
  steps: int = 4
  multiplier: int = 4
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None
  param_dtype: Any = None  # of parameters and BN statistics; None: `ops.default_param_dtype` of the inputs

  @nn.compact
  def __call__(self, s0: jax.Array, s1: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
    c, kw = self.channels, dict(axis_name=self.axis_name, param_dtype=self.param_dtype)
    if self.reduction_prev:
      s0 = FactorizedReduce(c, **kw, name='preprocess0')(s0, train)
    else:
      s0 = ReLUConvBN(c, **kw, name='preprocess0')(s0, train)
    s1 = ReLUConvBN(c, **kw, name='preprocess1')(s1, train)
    states = [s0, s1]
    incoming = [[] for _ in range(self.steps)]  # mixed-op outputs arriving at each node
    # State j feeds nodes max(0, j-1) .. steps-1; the last node feeds none.
    for source in range(self.steps + 1):
      if source >= 2:
        states.append(sum(incoming[source - 2]))
      targets = range(max(0, source - 1), self.steps)
      rows = [edge_index(node, source) for node in targets]
      stride = 2 if self.reduction and source < 2 else 1
      outputs = MixedEdges(c, len(rows), stride, self.depthwise_impl, **kw, name=f'edges_from_{source}')(
          states[source], weights[jnp.array(rows)], train)
      for node, output in zip(targets, jnp.split(outputs, len(rows))):  # a split: see MixedEdges
        incoming[node].append(output[0])
    states.append(sum(incoming[-1]))
    return jnp.concatenate(states[-self.multiplier:], axis=-1)


DTYPES = ('float32', 'bfloat16')
"""`SearchNetwork`'s ``dtype``: ``'float32'``, full precision (float32, or float64 for float64 inputs), or
``'bfloat16'`` activations."""
MIXINGS = ('softmax', 'weights')
"""How `SearchNetwork` turns its architecture argument into per-edge mixing weights: ``'softmax'`` of the alphas
(DARTS), or ``'weights'``: the argument already is the weights (a relaxation's output)."""
# What a rematerialised cell keeps for the backward pass: the outputs of matmuls (pointwise convs, the mixing) and
# of depthwise convolutions, the expensive ops; everything elementwise is recomputed.
REMAT_POLICY = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_saveable, jax.checkpoint_policies.save_only_these_names('depthwise_conv'))


def _torch_bias_init(fan_in: int):
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class SearchNetwork(nn.Module):
  """The DARTS search network (``model_search.Network``).

  Stem (3x3 conv to ``stem_multiplier·C`` channels + affine BN), `layers` search cells with reductions (channels
  doubled) at ``layers // 3`` and ``2 * layers // 3``, global average pooling and a dense classifier.

  Usage::

    net = SearchNetwork(C=16, num_classes=10, layers=8)
    variables = net.init(rng, x, alphas, train=False)           # {'params', 'batch_stats'}
    logits, updates = net.apply(variables, x, alphas, train=True, mutable=['batch_stats'])

  ``alphas`` is ``{'normal': (14, 8), 'reduce': (14, 8)}`` (see `init_alphas`). `depthwise_impl` picks the depthwise
  formulation (`ops.DEPTHWISE_IMPLS`); `axis_name` makes BN use global-batch statistics under ``pmap``.

  The network follows its input's dtype: with the default ``dtype='float32'`` it computes in the input's precision,
  at least float32 (a float64 input, with ``jax_enable_x64``, gives float64 activations, and ``init`` float64
  parameters and statistics). ``dtype='bfloat16'`` computes activations and convolutions in bfloat16 (tensor cores
  on GPU); parameters, alphas, BN statistics, the logits and everything downstream of them (losses, gradients, the
  hypergradient) stay in the full precision.
  ``remat=True`` rematerialises each cell in the backward pass, keeping only the outputs of its matrix
  multiplications and depthwise convolutions (`REMAT_POLICY`): less memory for every gradient pass, and for the
  exact hypergradient's tangent pass, at the price of recomputing the elementwise work (ReLU, BN, pools, sums).
  ``mixing='weights'`` takes the per-edge mixing weights (same shapes as the alphas) in place of the alphas
  (`MIXINGS`); parameters are the same either way.
  """
  C: int
  num_classes: int
  layers: int
  steps: int = 4
  multiplier: int = 4
  stem_multiplier: int = 3
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None
  dtype: str = 'float32'
  remat: bool = False
  mixing: str = 'softmax'

  @nn.compact
  def __call__(self, x: jax.Array, alphas: dict[str, jax.Array], train: bool = True) -> jax.Array:
    if self.dtype not in DTYPES:
      raise ValueError(f'unknown dtype {self.dtype!r}; choose one of {DTYPES}')
    if self.mixing not in MIXINGS:
      raise ValueError(f'unknown mixing {self.mixing!r}; choose one of {MIXINGS}')
    stem_channels = self.stem_multiplier * self.C
    full = default_param_dtype(x)
    dtype = jnp.bfloat16 if self.dtype == 'bfloat16' else full
    x = nn.Conv(stem_channels, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False, kernel_init=torch_default_init,
                dtype=dtype, param_dtype=full, name='stem_conv')(x.astype(dtype))
    cell_type = nn.remat(SearchCell, static_argnums=(4,), policy=REMAT_POLICY) if self.remat else SearchCell
    s0 = s1 = BatchNorm(affine=True, axis_name=self.axis_name, param_dtype=full, name='stem_bn')(x, train)
    weights = alphas if self.mixing == 'weights' else {kind: jax.nn.softmax(a, axis=-1) for kind, a in alphas.items()}
    channels, reduction_prev = self.C, False
    for i in range(self.layers):
      reduction = i in (self.layers // 3, 2 * self.layers // 3)
      if reduction:
        channels *= 2
      cell = cell_type(channels, reduction, reduction_prev, self.steps, self.multiplier, self.depthwise_impl,
                        self.axis_name, full, name=f'cell_{i}')
      s0, s1 = s1, cell(s0, s1, weights['reduce' if reduction else 'normal'], train)
      reduction_prev = reduction
    features = jnp.mean(s1.astype(full), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=torch_default_init, bias_init=_torch_bias_init(features.shape[-1]),
                    param_dtype=full, name='classifier')(features)
