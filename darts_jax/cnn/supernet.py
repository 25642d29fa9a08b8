"""The DARTS supernet: mixed operations, search cells and the search network, as in the original `model_search.py`.

Every edge of a cell carries the 8 `PRIMITIVES` (or the ops of its edge: RobustDARTS's reduced spaces,
`genotypes.edge_primitives`, or any explicit per-edge lists such as P-DARTS's pruned ones), mixed by the softmax of its
row of alphas: ``edge(x) = Σ_k softmax(alpha_edge)_k · op_k(x)``. PC-DARTS's partial channels and edge normalisation,
DARTS-'s auxiliary skip and P-DARTS's dropout on the skip connections are options of `SearchNetwork`, off by
default. Normal cells share ``alphas['normal']`` and reduction cells share
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

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from darts_jax.cnn.genotypes import CELL_TYPES, PRIMITIVES, SEARCH_ONLY_PRIMITIVES, edge_primitives, edges_key
from darts_jax.cnn.ops import (BatchNorm, DepthwiseImpl, FactorizedReduce, ReLUConvBN, _depthwise_init, _pointwise_init,
                           avg_pool_3x3, default_param_dtype, depthwise_conv, factorized_reduce, max_pool_3x3,
                           pointwise_conv, torch_default_init)
from darts_jax.data.augment import example_keys

# The parametric ops, in PRIMITIVES order, with (kernel, dilation, padding) of their first depthwise conv.
# sep convs repeat ReLU → depthwise → pointwise → BN twice (second time with stride 1); dil convs do it once.
_CONV_OPS = {
    'sep_conv_3x3': (3, 1, 1),
    'sep_conv_5x5': (5, 1, 2),
    'dil_conv_3x3': (3, 2, 2),
    'dil_conv_5x5': (5, 2, 4),
}
_SEP_OPS = ('sep_conv_3x3', 'sep_conv_5x5')
_POOL_OPS = {'max_pool_3x3': max_pool_3x3, 'avg_pool_3x3': avg_pool_3x3}
_ALL_OPS = PRIMITIVES + SEARCH_ONLY_PRIMITIVES


def num_edges(steps: int = 4) -> int:
  """Edges of a cell with `steps` intermediate nodes: node i has 2 + i inputs."""
  return sum(2 + i for i in range(steps))


def edge_index(node: int, source: int) -> int:
  """Row of alphas for the edge from state `source` (0, 1 = cell inputs, 2 + i = node i) into node `node`."""
  return sum(2 + i for i in range(node)) + source


def init_alphas(rng: jax.Array, steps: int = 4, num_ops: int = len(PRIMITIVES), scale: float = 1e-3,
                dtype: jax.typing.DTypeLike = jnp.float32, edge_normalization: bool = False) -> dict[str, Any]:
  """Architecture parameters ``{'normal': (E, num_ops), 'reduce': (E, num_ops)}``, ``scale · N(0, 1)`` like the original.

  With `edge_normalization` (PC-DARTS) also ``{edges_key(kind): [(2,), (3,), ..., (steps + 1,)]}``: one array per node
  with an entry per input, drawn the same way from a stream of their own (the alphas are those without them).
  """
  normal_key, reduce_key = jax.random.split(rng)
  shape = (num_edges(steps), num_ops)
  alphas = {'normal': scale * jax.random.normal(normal_key, shape, dtype),
            'reduce': scale * jax.random.normal(reduce_key, shape, dtype)}
  if edge_normalization:
    for kind, key in zip(CELL_TYPES, jax.random.split(jax.random.fold_in(rng, 1))):
      alphas[edges_key(kind)] = [scale * jax.random.normal(node_key, (2 + node,), dtype)
                                 for node, node_key in enumerate(jax.random.split(key, steps))]
  return alphas


def supernet_edge_ops(network: Any) -> dict[str, tuple[tuple[str, ...], ...]]:
  """The ops of every edge of `network` (a `SearchNetwork`) per cell type, the columns of its alphas: its
  ``edge_ops`` where set, else those of its ``search_space`` (DARTS's for a network without these fields)."""
  explicit = getattr(network, 'edge_ops', None)
  if explicit is not None:
    return dict(zip(CELL_TYPES, explicit))
  return edge_primitives(getattr(network, 'search_space', 'darts'), network.steps)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle over the last axis (PC-DARTS's ``channel_shuffle``): channel ``g·(C/G) + i`` moves to
  ``i·G + g``."""
  c = x.shape[-1]
  return x.reshape(x.shape[:-1] + (groups, c // groups)).swapaxes(-1, -2).reshape(x.shape)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.MaxPool2d(2, 2)`` on (N, H, W, C), H and W even: PC-DARTS's bypass at stride 2."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class MixedEdges(nn.Module):
  """The mixed ops of every edge leaving one node, computed together.

  ``__call__(x, weights, train, aux_skip_weight, skip_dropout_rate, dropout_key)`` takes the node's state ``x``
  (N, H, W, C) and the mixing weights of its ``num_edges`` outgoing edges (num_edges, ops per edge) and returns
  (num_edges, N, H', W', C): edge e's mixed output. Parameters and BN statistics are created in `param_dtype`
  (None: `ops.default_param_dtype` of ``x``).

  ``edge_ops[e]`` names the ops of edge e's weight columns (None: `PRIMITIVES` on every edge); an op is computed for
  the edges that have it only, and its parameters are stacked over those edges. ``partial_channels`` K > 1 is
  PC-DARTS's partial channel connection: the first C/K channels go through the ops (built at C/K channels), the rest
  bypass them (max-pooled 2x2 at stride 2), and the concatenation is channel-shuffled in K groups. ``aux_skip`` adds
  DARTS-'s auxiliary skip outside the mixture: ``aux_skip_weight · skip(x)`` (a factorized reduction of its own at
  stride 2) on the whole input. A `dropout_key` in training (``train=True``) is P-DARTS's dropout on the identity
  (``skip_connect`` at stride 1): each edge's identity output is masked by its own Bernoulli draw of
  ``bernoulli(dropout_key, 1 - skip_dropout_rate, (edges with the skip,) + x.shape)`` and scaled by
  ``1 / (1 - skip_dropout_rate)``, as an ``nn.Dropout`` after the ``Identity`` of each ``MixedOp`` in the released code.
  """
  channels: int
  num_edges: int
  stride: int
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None
  param_dtype: Any = None
  edge_ops: tuple[tuple[str, ...], ...] | None = None
  partial_channels: int = 1
  aux_skip: bool = False

  def _bn(self, x: jax.Array, train: bool, name: str) -> jax.Array:
    # One BN over stacked (op/edge, channel) features == a separate affine-free BN per op and edge.
    return BatchNorm(feature_axes=(0, -1), axis_name=self.axis_name, param_dtype=self.param_dtype, name=name)(x, train)

  @nn.compact
  def __call__(self, x: jax.Array, weights: jax.Array, train: bool, aux_skip_weight: jax.Array | None = None,
               skip_dropout_rate: jax.Array | float | None = None, dropout_key: jax.Array | None = None) -> jax.Array:
    s, n_edges, groups = self.stride, self.num_edges, self.partial_channels
    edge_ops = self.edge_ops or (PRIMITIVES,) * n_edges
    op_edges = {op: tuple(e for e, names in enumerate(edge_ops) if op in names) for op in _ALL_OPS}
    full_x, c = x, self.channels // groups
    x = x[..., :c] if groups > 1 else x
    weights = weights.astype(x.dtype)
    # Parameters in `param_dtype` (float32 for bfloat16 activations), used in the activations' dtype (their gradients
    # come back in the parameters' dtype through the cast).
    param_dtype = self.param_dtype or default_param_dtype(x)

    def stacked(name, init, shape, op=None):  # one parameter per edge (per edge that has `op`)
      count = n_edges if op is None else len(op_edges[op])
      return self.param(name, init, (count,) + shape, param_dtype).astype(x.dtype)

    # Named for `SearchNetwork.remat`'s policy, which keeps convolution outputs.
    conv = lambda inp, kernel, **kw: checkpoint_name(depthwise_conv(inp, kernel, impl=self.depthwise_impl, **kw),
                                                     'depthwise_conv')

    uniform = all(names == edge_ops[0] for names in edge_ops)

    def columns(names):  # (num_edges, len(names)): each edge's weight of each op, 0 where the edge has not the op
      if uniform:
        return weights[:, jnp.array([edge_ops[0].index(name) for name in names])]
      index = np.array([[ops.index(name) if name in ops else 0 for name in names] for ops in edge_ops])
      present = np.array([[name in ops for name in names] for ops in edge_ops])
      return jnp.where(present, jnp.take_along_axis(weights, jnp.asarray(index), axis=1), 0)

    def per_edge(rows, op):  # an op's rows (one per edge that has it) -> one per edge, zeros where it is absent
      edges = op_edges[op]
      if len(edges) == n_edges:
        return rows
      row_of = dict(zip(edges, jnp.split(rows, len(edges))))
      zero = jnp.zeros((1,) + rows.shape[1:], rows.dtype)
      return jnp.concatenate([row_of.get(e, zero) for e in range(n_edges)])

    # Pools: parameter-free, so one computation (and one BN) serves every edge.
    pools = [op for op in _POOL_OPS if op_edges[op]]
    shared_ops, shared = list(pools), []
    if pools:
      shared.append(self._bn(jnp.stack([_POOL_OPS[op](x, s) for op in pools]), train, 'pool_bn'))
    skip = None
    per_edge_skip = s == 2 or (train and dropout_key is not None)
    if op_edges['skip_connect']:
      if s == 1 and per_edge_skip:  # P-DARTS's dropout: each edge's identity with a mask of its own
        rate = jnp.asarray(skip_dropout_rate, jnp.promote_types(x.dtype, jnp.float32))  # drawn at >= float32
        keep = jax.random.bernoulli(dropout_key, 1 - rate, (len(op_edges['skip_connect']),) + x.shape)
        skip = jnp.where(keep, x / (1 - rate).astype(x.dtype), 0)
      elif s == 1:
        skip = x[None]
        shared_ops.append('skip_connect')
        shared.append(skip)
      else:
        half = (c, c // 2)
        skip = self._bn(factorized_reduce(x, stacked('skip_conv1', _pointwise_init, half, 'skip_connect'),
                                          stacked('skip_conv2', _pointwise_init, half, 'skip_connect')),
                        train, 'skip_bn')

    # Ops with an output per edge, mixed by one contraction over their (op, edge) grid.
    grid_ops, grid = [], []
    conv_ops = [op for op in _CONV_OPS if op_edges[op]]
    if conv_ops:
      sep_ops = [op for op in _SEP_OPS if op_edges[op]]
      # First ReLU → depthwise → pointwise → BN of all conv ops, on the shared input.
      relu_x = jax.nn.relu(x)[None]
      stage1 = jnp.concatenate([
          conv(relu_x, stacked(f'{op}_depthwise1', _depthwise_init, (k, k, c), op), stride=s, dilation=d, padding=p)
          for op in conv_ops for k, d, p in [_CONV_OPS[op]]])
      pointwise1 = jnp.concatenate([stacked(f'{op}_pointwise1', _pointwise_init, (c, c), op) for op in conv_ops])
      stage1 = self._bn(pointwise_conv(stage1, pointwise1), train, 'stage1_bn')
      # Second ReLU → depthwise (stride 1) → pointwise → BN of the separable convs.
      # Splits, not slices: the transpose of a split is one concatenation, that of each slice a full-size pad.
      sep_rows = np.cumsum([len(op_edges[op]) for op in sep_ops])
      sep_stage1, dil_out = jnp.split(stage1, [sep_rows[-1] if sep_ops else 0])
      parts = []
      if sep_ops:
        stage2 = jnp.concatenate([
            conv(relu_in, stacked(f'{op}_depthwise2', _depthwise_init, (_CONV_OPS[op][0],) * 2 + (c,), op),
                 padding=_CONV_OPS[op][2])
            for op, relu_in in zip(sep_ops, jnp.split(jax.nn.relu(sep_stage1), sep_rows[:-1]))])
        pointwise2 = jnp.concatenate([stacked(f'{op}_pointwise2', _pointwise_init, (c, c), op) for op in sep_ops])
        parts.append(self._bn(pointwise_conv(stage2, pointwise2), train, 'stage2_bn'))
      if len(conv_ops) > len(sep_ops):
        parts.append(dil_out)
      conv_out = jnp.concatenate(parts)
      if all(len(op_edges[op]) == n_edges for op in conv_ops):
        grid.append(conv_out.reshape((len(conv_ops), n_edges) + conv_out.shape[1:]))
      else:
        blocks = jnp.split(conv_out, np.cumsum([len(op_edges[op]) for op in conv_ops])[:-1])
        grid.append(jnp.stack([per_edge(block, op) for block, op in zip(blocks, conv_ops)]))
      grid_ops += conv_ops
    if op_edges['noise']:  # RobustDARTS's: standard normal noise of the (strided) input's shape, per edge
      strided = x[:, ::s, ::s].shape
      # One key per example of the global batch (`example_keys`): the draws do not depend on the number of devices.
      # `init` runs outside the mapped step, where the axis is unbound; its draws only give shapes.
      keys = example_keys(self.make_rng('noise'), strided[0], None if self.is_initializing() else self.axis_name)
      draws = jax.vmap(lambda key: jax.random.normal(key, (len(op_edges['noise']),) + strided[1:], x.dtype))(keys)
      grid.append(per_edge(jnp.moveaxis(draws, 0, 1), 'noise')[None])
      grid_ops.append('noise')

    # 'none' contributes zeros, so it only enters through the softmax normalisation of the other weights.
    # Outputs shared by all edges (pools; identity at stride 1) are mixed by one matmul over their stack: its
    # gradient is a matmul too, where broadcasting them over edges would need a reduction over edges.
    terms = []
    if shared_ops:
      terms.append(jnp.einsum('ek,knhwc->enhwc', columns(shared_ops), jnp.concatenate(shared)))
    if grid_ops:
      terms.append(jnp.einsum('ek,kenhwc->enhwc', columns(grid_ops), jnp.concatenate(grid)))
    if per_edge_skip and skip is not None:  # one factorized reduction, or one dropped identity, per edge
      terms.append(columns(['skip_connect'])[:, 0, None, None, None, None] * per_edge(skip, 'skip_connect'))
    mixed = functools.reduce(jnp.add, terms)

    if groups > 1:  # PC-DARTS: the bypassed channels join the mixed ones, then the groups are shuffled
      bypass = full_x[..., c:]
      bypass = _max_pool_2x2(bypass) if s == 2 else bypass
      mixed = channel_shuffle(jnp.concatenate([mixed, jnp.broadcast_to(bypass, (n_edges,) + bypass.shape)], -1),
                              groups)
    if self.aux_skip:  # DARTS-: outside the mixture, on the whole input
      if s == 1:
        aux = full_x[None]
      else:
        half = (self.channels, self.channels // 2)
        aux = self._bn(factorized_reduce(full_x, stacked('aux_skip_conv1', _pointwise_init, half),
                                         stacked('aux_skip_conv2', _pointwise_init, half)), train, 'aux_skip_bn')
      mixed = mixed + jnp.asarray(aux_skip_weight).astype(mixed.dtype) * aux
    return mixed


class SearchCell(nn.Module):
  """A DARTS search cell: two preprocessed inputs, `steps` nodes, each summing mixed ops over all earlier states.

  ``edge_ops``: the ops of each of the cell's edges (`MixedEdges`; None: `PRIMITIVES`). ``edge_weights`` (PC-DARTS's
  edge normalisation), one array per node, weigh the node's inputs in its sum. ``dropout_key`` (training only):
  P-DARTS's skip dropout at ``skip_dropout_rate``, the `MixedEdges` from state j drawing with
  ``fold_in(dropout_key, j)``.
  """
  channels: int
  reduction: bool
  reduction_prev: bool
  steps: int = 4
  multiplier: int = 4
  depthwise_impl: DepthwiseImpl = 'auto'
  axis_name: str | None = None
  param_dtype: Any = None  # of parameters and BN statistics; None: `ops.default_param_dtype` of the inputs
  edge_ops: tuple[tuple[str, ...], ...] | None = None
  partial_channels: int = 1
  aux_skip: bool = False

  @nn.compact
  def __call__(self, s0: jax.Array, s1: jax.Array, weights: jax.Array, train: bool,
               edge_weights: list[jax.Array] | None = None, aux_skip_weight: jax.Array | None = None,
               skip_dropout_rate: jax.Array | float | None = None, dropout_key: jax.Array | None = None) -> jax.Array:
    c, kw = self.channels, dict(axis_name=self.axis_name, param_dtype=self.param_dtype)
    if self.reduction_prev:
      s0 = FactorizedReduce(c, **kw, name='preprocess0')(s0, train)
    else:
      s0 = ReLUConvBN(c, **kw, name='preprocess0')(s0, train)
    s1 = ReLUConvBN(c, **kw, name='preprocess1')(s1, train)
    states = [s0, s1]
    incoming = [[] for _ in range(self.steps)]  # mixed-op outputs arriving at each node

    def node_sum(node):
      if edge_weights is None:
        return sum(incoming[node])
      node_weights = edge_weights[node].astype(s1.dtype)
      return sum(node_weights[j] * output for j, output in enumerate(incoming[node]))

    # State j feeds nodes max(0, j-1) .. steps-1; the last node feeds none.
    for source in range(self.steps + 1):
      if source >= 2:
        states.append(node_sum(source - 2))
      targets = range(max(0, source - 1), self.steps)
      rows = [edge_index(node, source) for node in targets]
      stride = 2 if self.reduction and source < 2 else 1
      edge_ops = None if self.edge_ops is None else tuple(self.edge_ops[row] for row in rows)
      outputs = MixedEdges(c, len(rows), stride, self.depthwise_impl, **kw, edge_ops=edge_ops,
                           partial_channels=self.partial_channels, aux_skip=self.aux_skip,
                           name=f'edges_from_{source}')(
                               states[source], weights[jnp.array(rows)], train, aux_skip_weight, skip_dropout_rate,
                               None if dropout_key is None else jax.random.fold_in(dropout_key, source))
      for node, output in zip(targets, jnp.split(outputs, len(rows))):  # a split: see MixedEdges
        incoming[node].append(output[0])
    states.append(node_sum(-1))
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

  Variants of the supernet (all off by default):

  * ``search_space``: the ops of every edge (`genotypes.SEARCH_SPACES`: DARTS's, or RobustDARTS's S1-S4, whose
    alphas have a column per op of the edge: ``(14, 2)`` or ``(14, 3)``). S4's ``noise`` draws from the ``'noise'``
    RNG stream (``apply(..., rngs={'noise': key})``), in training and evaluation as RobustDARTS's.
  * ``edge_ops``: the ops of every edge given explicitly, ``(normal, reduce)``, each a tuple of one tuple of op names
    per edge (`PRIMITIVES` or ``noise``), the same number on every edge: the alphas have that many columns
    (P-DARTS's stages). In place of ``search_space``'s (`supernet_edge_ops`), which must then be ``'darts'``.
  * P-DARTS's dropout on the skip connections: ``apply(..., skip_dropout_rate=p, dropout_key=key)`` in training
    drops the output of every identity op (``skip_connect`` at stride 1) of every edge, each edge with its own mask
    (`MixedEdges`; cell i draws with ``fold_in(key, i)``). Without a key, or with ``train=False``, no dropout.
  * ``partial_channels`` K > 1: PC-DARTS's partial channel connections (`MixedEdges`); C/K must be even where a
    skip connection reduces.
  * ``edge_normalization``: PC-DARTS's edge normalisation: the alphas also hold ``edges_key(kind)`` (`init_alphas`),
    and each node sums its inputs weighted by their softmax (or, with ``mixing='weights'``, by the weights given).
  * ``aux_skip``: DARTS-'s auxiliary skip connection on every edge, weighted by ``aux_skip_weight`` outside the
    mixture. The network keeps the weight of the last training pass in ``batch_stats['aux_skip_weight']`` (initialised
    to the weight ``init`` is given, else 1): a call without ``aux_skip_weight`` (evaluation, the Hessian of the
    validation loss) uses it, so the supernet is evaluated as it was last trained.
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
  search_space: str = 'darts'
  partial_channels: int = 1
  edge_normalization: bool = False
  aux_skip: bool = False
  edge_ops: tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, alphas: dict[str, Any], train: bool = True,
               aux_skip_weight: jax.Array | float | None = None, skip_dropout_rate: jax.Array | float | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
    if self.dtype not in DTYPES:
      raise ValueError(f'unknown dtype {self.dtype!r}; choose one of {DTYPES}')
    if self.mixing not in MIXINGS:
      raise ValueError(f'unknown mixing {self.mixing!r}; choose one of {MIXINGS}')
    if self.partial_channels < 1 or self.C % self.partial_channels:
      raise ValueError(f'partial_channels ({self.partial_channels}) must be a positive divisor of C ({self.C})')
    if self.edge_normalization and any(edges_key(kind) not in alphas for kind in CELL_TYPES):
      raise ValueError(f'edge normalisation needs the alphas {edges_key("normal")!r} and {edges_key("reduce")!r} '
                       '(init_alphas(..., edge_normalization=True))')
    if self.edge_ops is not None and (self.search_space != 'darts' or len(self.edge_ops) != len(CELL_TYPES)
                                      or any(len(cell) != num_edges(self.steps) for cell in self.edge_ops)):
      raise ValueError(f'edge_ops must list the ops of the {num_edges(self.steps)} edges of the normal and the '
                       f'reduction cell, with search_space darts (got {self.search_space!r})')
    cell_ops = None if self.edge_ops is None and self.search_space == 'darts' else supernet_edge_ops(self)
    stem_channels = self.stem_multiplier * self.C
    full = default_param_dtype(x)
    dtype = jnp.bfloat16 if self.dtype == 'bfloat16' else full
    if self.aux_skip:
      stored = self.variable('batch_stats', 'aux_skip_weight',
                             lambda: jnp.asarray(1.0 if aux_skip_weight is None else aux_skip_weight, full))
      if aux_skip_weight is None:
        aux_skip_weight = stored.value
      elif train and not self.is_initializing():
        stored.value = jnp.asarray(aux_skip_weight, full)
    x = nn.Conv(stem_channels, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False, kernel_init=torch_default_init,
                dtype=dtype, param_dtype=full, name='stem_conv')(x.astype(dtype))
    cell_type = nn.remat(SearchCell, static_argnums=(4,), policy=REMAT_POLICY) if self.remat else SearchCell
    s0 = s1 = BatchNorm(affine=True, axis_name=self.axis_name, param_dtype=full, name='stem_bn')(x, train)
    weights = alphas if self.mixing == 'weights' else jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), alphas)
    channels, reduction_prev = self.C, False
    for i in range(self.layers):
      reduction = i in (self.layers // 3, 2 * self.layers // 3)
      if reduction:
        channels *= 2
      kind = 'reduce' if reduction else 'normal'
      cell = cell_type(channels, reduction, reduction_prev, self.steps, self.multiplier, self.depthwise_impl,
                       self.axis_name, full, None if cell_ops is None else tuple(map(tuple, cell_ops[kind])),
                       self.partial_channels, self.aux_skip, name=f'cell_{i}')
      edge_weights = weights[edges_key(kind)] if self.edge_normalization else None
      cell_key = None if dropout_key is None or not train else jax.random.fold_in(dropout_key, i)
      s0, s1 = s1, cell(s0, s1, weights[kind], train, edge_weights, aux_skip_weight if self.aux_skip else None,
                        skip_dropout_rate, cell_key)
      reduction_prev = reduction
    features = jnp.mean(s1.astype(full), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=torch_default_init, bias_init=_torch_bias_init(features.shape[-1]),
                    param_dtype=full, name='classifier')(features)
