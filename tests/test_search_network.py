"""The supernet: parameter count, shapes, the wide mixed-edge formulation and the cell's wiring."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.cnn import ops
from darts_jax.cnn.genotypes import PRIMITIVES
from darts_jax.cnn.supernet import MixedEdges, SearchCell, SearchNetwork, edge_index, init_alphas, num_edges

TOL = dict(rtol=1e-4, atol=1e-4)  # float32 through two BNs; a wrong weight or op is O(1) off


def _random_variables(module, *args):
  """Variables of `module` (called as ``module(*args, train=False)``) with standard-normal values, from shapes
  alone: `module.init` would compile the module once more just to draw them."""
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), *args)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _shapes(net, image_shape):
  x = jax.ShapeDtypeStruct((2,) + image_shape, jnp.float32)
  return jax.eval_shape(lambda x: net.init(jax.random.key(0), x, init_alphas(jax.random.key(1)), train=False), x)


def test_parameter_count_matches_original():
  variables = _shapes(SearchNetwork(C=16, num_classes=10, layers=8), (32, 32, 3))
  assert _count(variables['params']) == 1_930_618  # model_search.Network(16, 10, 8) without its alphas
  small = _shapes(SearchNetwork(C=8, num_classes=10, layers=5), (28, 28, 1))
  assert _count(small['params']) == 393_778  # ../shared/reference/torch_darts.py --C 8 --layers 5 --in-ch 1


@pytest.mark.parametrize('size', [30, 27])
def test_image_size_not_divisible_by_four_is_a_clear_error(size):
  with pytest.raises(ValueError, match=f'got {size // 2 if size % 2 == 0 else size}x.*divisible by 2 per reduction'):
    _shapes(SearchNetwork(C=4, num_classes=10, layers=5), (size, size, 1))


@pytest.mark.parametrize('layers,image_shape', [(5, (28, 28, 1)), (3, (16, 16, 3)), (8, (32, 32, 3))])
def test_output_shapes(layers, image_shape):
  net = SearchNetwork(C=4, num_classes=7, layers=layers)
  x = jax.ShapeDtypeStruct((2,) + image_shape, jnp.float32)
  alphas = init_alphas(jax.random.key(1))
  variables = _shapes(net, image_shape)
  logits = jax.eval_shape(lambda v, x: net.apply(v, x, alphas, train=False), variables, x)
  assert logits.shape == (2, 7)
  # Reductions at layers // 3 and 2 * layers // 3 double the channels: the classifier sees 4 * 4C inputs.
  assert variables['params']['classifier']['kernel'].shape == (4 * 4 * 4, 7)
  for i in range(layers):
    cell = variables['params'][f'cell_{i}']
    reduction = i in (layers // 3, 2 * layers // 3)
    assert ('skip_conv1' in cell['edges_from_0']) == reduction  # FactorizedReduce skip only on stride-2 edges


def test_init_alphas():
  alphas = init_alphas(jax.random.key(0))
  assert alphas['normal'].shape == alphas['reduce'].shape == (14, len(PRIMITIVES))
  assert 0 < float(jnp.std(alphas['normal'])) < 3e-3  # 1e-3 * N(0, 1)
  assert not np.allclose(alphas['normal'], alphas['reduce'])


def _reference_mixed_op(params, x, weights, edge, stride):
  """One edge of the original MixedOp, built from reference ops with edge `edge`'s slice of the stacked weights."""
  def bn(y):
    mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
    return (y - mean) / jnp.sqrt(var + 1e-5)

  def conv_op(name, k, dilation, padding, double):
    y = ops.depthwise_conv(jax.nn.relu(x)[None], params[f'{name}_depthwise1'][edge][None], stride=stride,
                           dilation=dilation, padding=padding, impl='xla')[0]
    y = bn(y @ params[f'{name}_pointwise1'][edge])
    if double:
      y = ops.depthwise_conv(jax.nn.relu(y)[None], params[f'{name}_depthwise2'][edge][None], padding=padding,
                             impl='xla')[0]
      y = bn(y @ params[f'{name}_pointwise2'][edge])
    return y

  if stride == 1:
    skip = x
  else:
    skip = bn(ops.factorized_reduce(x, params['skip_conv1'][edge][None], params['skip_conv2'][edge][None])[0])
  outputs = {
      'none': 0.0,
      'max_pool_3x3': bn(ops.max_pool_3x3(x, stride)),
      'avg_pool_3x3': bn(ops.avg_pool_3x3(x, stride)),
      'skip_connect': skip,
      'sep_conv_3x3': conv_op('sep_conv_3x3', 3, 1, 1, True),
      'sep_conv_5x5': conv_op('sep_conv_5x5', 5, 1, 2, True),
      'dil_conv_3x3': conv_op('dil_conv_3x3', 3, 2, 2, False),
      'dil_conv_5x5': conv_op('dil_conv_5x5', 5, 2, 4, False),
  }
  return sum(weights[k] * outputs[name] for k, name in enumerate(PRIMITIVES))


@pytest.mark.parametrize('stride', [1, 2])
def test_wide_mixed_edges_equal_separate_mixed_ops(stride):
  """All edges leaving a node computed together == the original's separate MixedOp per edge."""
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(1), (3, 8)), axis=-1)
  module = MixedEdges(channels=4, num_edges=3, stride=stride)
  variables = _random_variables(module, x, weights)
  out, _ = jax.jit(functools.partial(module.apply, train=True, mutable=['batch_stats']))(variables, x, weights)
  assert out.shape == (3, 3, 8 // stride, 8 // stride, 4)
  # One compiled reference for all edges (eagerly, every op would compile on its own).
  reference = jax.jit(lambda params, w, edge: _reference_mixed_op(params, x, w, edge, stride))
  for edge in range(3):
    np.testing.assert_allclose(out[edge], reference(variables['params'], weights[edge], edge), **TOL)


@pytest.fixture(scope='module')
def normal_cell():
  cell = SearchCell(channels=4, reduction=False, reduction_prev=False)
  s0 = jax.random.normal(jax.random.key(0), (2, 6, 6, 5))
  s1 = jax.random.normal(jax.random.key(1), (2, 6, 6, 6))
  variables = _random_variables(cell, s0, s1, jnp.zeros((14, 8)))

  @jax.jit
  def run(logits):
    out, _ = cell.apply(variables, s0, s1, jax.nn.softmax(logits, -1), True, mutable=['batch_stats'])
    return out
  return run


def test_cell_wiring(normal_cell):
  """With one op dominating each edge (softmax weight ~1), node outputs follow the DARTS DAG exactly."""
  run = normal_cell
  big = 30.0  # softmax weight 1 - 7e-13 on the chosen op
  skip, none = PRIMITIVES.index('skip_connect'), PRIMITIVES.index('none')
  # skip_connect on every edge: node i = sum of all earlier states, so n1 = s0' + s1' + n0 = 2 n0, n2 = 4 n0, ...
  logits = jnp.zeros((14, 8)).at[:, skip].set(big)
  out = run(logits)
  n = jnp.split(out, 4, axis=-1)
  for i in range(1, 4):
    np.testing.assert_allclose(n[i], 2 ** i * n[0], **TOL)
  only = lambda *edges: functools.reduce(lambda l, e: l.at[edge_index(*e)].set(0.0).at[edge_index(*e), skip].set(big),
                                         edges, jnp.zeros((14, 8)).at[:, none].set(big))
  # Only the edge (node 3 <- node 1) is a skip, all else 'none': node 3 equals node 1, which is zero.
  np.testing.assert_allclose(run(only((3, 3))), 0.0, atol=1e-6)
  # Edges (node 0 <- s0) and (node 2 <- node 0) skip: node 2 == node 0 == s0', nodes 1 and 3 zero.
  logits = only((0, 0), (2, 2))
  n = jnp.split(run(logits), 4, axis=-1)
  assert float(jnp.abs(n[0]).max()) > 0.1
  np.testing.assert_allclose(n[2], n[0], **TOL)
  np.testing.assert_allclose(n[1], 0.0, atol=1e-6)
  np.testing.assert_allclose(n[3], 0.0, atol=1e-6)


def test_edge_index_matches_original_order():
  # The original enumerates edges node by node, inputs in order: node 0 -> rows 0, 1; node 1 -> 2, 3, 4; ...
  rows = [edge_index(node, source) for node in range(4) for source in range(2 + node)]
  assert rows == list(range(num_edges(4)))
