"""Tests for darts_jax.cnn.networks: parameter counts, each evaluation op against a direct reference, cells (drop path),
scanned vs unrolled cells, the auxiliary heads and train/eval behaviour of the networks."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from darts_jax.cnn import genotypes, networks
from darts_jax.cnn.genotypes import Genotype

# float32 sums of a few dozen O(1) products and a BN over 2·8·8 values: 1e-4 is rounding; a wrong tap, stride,
# padding or missing ReLU/BN changes outputs by O(1).
TOL = dict(rtol=1e-4, atol=1e-4)

# Jitted inits use 'rbg' keys: threefry's hash, unrolled once per parameter, compiles ~3x slower.
INIT_KEY = jax.random.key(1, impl='rbg')

# One node per cell: networks that compile in seconds for the tests that need compiled forward/backward passes.
SMALL = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2],
                 reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], reduce_concat=[2])


def _abstract_params(net, image_shape):
  """Parameter shapes of `net` by `jax.eval_shape` of its init: no compilation, even for the 20-cell network."""
  x = jnp.zeros((2,) + image_shape)
  return jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))['params']


# ---------------------------------------------------------------------------------------------------------------------
# Parameter counts (the original's utils.count_parameters_in_MB, which leaves out the auxiliary head).


@pytest.mark.parametrize('genotype,expected', [(genotypes.DARTS_V2, 3_349_342), (genotypes.DARTS_V1, 3_169_414)])
def test_cifar_parameter_count_matches_the_original(genotype, expected):
  params = _abstract_params(networks.NetworkCIFAR(genotype, 36, 10, 20, auxiliary=True), (32, 32, 3))
  assert networks.count_params(params) == expected
  # The auxiliary head: 1x1 conv C→128, BN, 2x2 conv 128→768, BN, dense 768→10; C = 4·4·36 channels at cell 13.
  aux = 576 * 128 + 2 * 128 + 4 * 128 * 768 + 2 * 768 + 768 * 10 + 10
  assert networks.count_params(params, exclude='@') == expected + aux


def test_scanned_cells_are_stacked_and_counted_like_unrolled_ones():
  kw = dict(genotype=genotypes.DARTS_V2, C=36, num_classes=10, layers=20)
  scanned = _abstract_params(networks.NetworkCIFAR(**kw), (32, 32, 3))
  unrolled = _abstract_params(networks.NetworkCIFAR(**kw, scan=False), (32, 32, 3))
  assert set(scanned['cells']) == {'cell_0', 'cell_1', 'cells_2_5', 'cell_6', 'cell_7', 'cells_8_12', 'cell_13',
                                   'cell_14', 'cells_15_19'}
  stacked = scanned['cells']['cells_8_12']['preprocess0']['kernel']
  assert stacked.shape == (5,) + unrolled['cells']['cell_8']['preprocess0']['kernel'].shape
  assert networks.count_params(scanned) == networks.count_params(unrolled) == 3_349_342


def test_count_params_excludes_top_level_auxiliary_entries_only():
  params = {'stem': {'kernel': jnp.zeros((3, 4))}, 'auxiliary_head': {'w': jnp.zeros(100)},
            'cells': {'auxiliary_like': jnp.zeros((2, 5))}}
  assert networks.count_params(params) == 12 + 10


# ---------------------------------------------------------------------------------------------------------------------
# Cell plans.


def test_cell_runs_group_identical_shape_keeping_cells():
  specs = networks.cell_specs(genotypes.DARTS_V2, 36, 20, (108, 108))
  assert [s.reduction for s in specs] == [i in (6, 13) for i in range(20)]
  assert [s.channels for s in specs] == [36] * 6 + [72] * 7 + [144] * 7
  assert networks.cell_runs(specs, break_after=13) == [(0, 0), (1, 1), (2, 5), (6, 6), (7, 7), (8, 12), (13, 13),
                                                       (14, 14), (15, 19)]
  # The auxiliary head's cell ends a run.
  assert networks.cell_runs(specs, break_after=10) == [(0, 0), (1, 1), (2, 5), (6, 6), (7, 7), (8, 10), (11, 12),
                                                       (13, 13), (14, 14), (15, 19)]
  imagenet = networks.cell_specs(genotypes.DARTS_V2, 48, 14, (48, 48), reduction_prev=True)
  assert networks.cell_runs(imagenet, break_after=9) == [(0, 0), (1, 1), (2, 3), (4, 4), (5, 5), (6, 8), (9, 9),
                                                         (10, 10), (11, 13)]


# ---------------------------------------------------------------------------------------------------------------------
# Each operation against a direct reference.


def _bn(x, p):
  """Training-mode BN over (N, H, W) with the biased variance, then the affine transform."""
  mean = x.mean((0, 1, 2))
  var = x.var((0, 1, 2))
  return (x - mean) / jnp.sqrt(var + 1e-5) * p['scale'] + p['bias']


def _conv(x, kernel, stride, padding, dilation=(1, 1), groups=1):
  return lax.conv_general_dilated(x, kernel, stride, padding, rhs_dilation=dilation,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def _relu_dw_pw_bn(x, p, stride, padding, dilation):
  c = x.shape[-1]
  x = _conv(jax.nn.relu(x), p['depthwise'], (stride,) * 2, [(padding, padding)] * 2, (dilation,) * 2, groups=c)
  return _bn(x @ p['pointwise'], p['BatchNorm_0'])


def _reference(name, p, x, stride):
  """The original's OPS[name](C, stride, affine=True) in training mode, written with XLA convolutions."""
  relu = jax.nn.relu(x)
  window = lambda init, op: lax.reduce_window(x, init, op, (1, 3, 3, 1), (1, stride, stride, 1),
                                              [(0, 0), (1, 1), (1, 1), (0, 0)])
  if name == 'none':
    return jnp.zeros_like(x[:, ::stride, ::stride])
  if name == 'max_pool_3x3':
    return window(-jnp.inf, lax.max)
  if name == 'avg_pool_3x3':  # count_include_pad=False: divide by the in-image pixels of each window
    counts = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1),
                               [(0, 0), (1, 1), (1, 1), (0, 0)])
    return window(0.0, lax.add) / counts
  if name == 'skip_connect':
    if stride == 1:
      return x
    out = jnp.concatenate([relu[:, ::2, ::2] @ p['kernel1'][0], relu[:, 1::2, 1::2] @ p['kernel2'][0]], -1)
    return _bn(out, p['BatchNorm_0'])
  if name.startswith('sep_conv'):
    k = int(name[-1])
    return _relu_dw_pw_bn(_relu_dw_pw_bn(x, p['unit1'], stride, k // 2, 1), p['unit2'], 1, k // 2, 1)
  if name.startswith('dil_conv'):
    k = int(name[-1])
    return _relu_dw_pw_bn(x, p['unit'], stride, k - 1, 2)
  if name == 'conv_7x1_1x7':
    out = _conv(relu, p['conv_1x7']['kernel'], (1, stride), [(0, 0), (3, 3)])
    out = _conv(out, p['conv_7x1']['kernel'], (stride, 1), [(3, 3), (0, 0)])
    return _bn(out, p['BatchNorm_0'])
  raise AssertionError(name)


@pytest.mark.parametrize('name,stride', itertools.product(genotypes.EVAL_PRIMITIVES, (1, 2)))
def test_op_matches_reference(name, stride):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  op = networks.make_op(name, 4, stride)
  variables = op.init(jax.random.key(1), x, train=False)
  # Random BN scales and shifts, so that a missing affine transform shows.
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape),
                        variables.get('params', {}))
  out, _ = op.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
  assert out.shape == (2, 8 // stride, 8 // stride, 4)
  np.testing.assert_allclose(out, _reference(name, params, x, stride), **TOL)


@pytest.mark.parametrize('name', ['sep_conv_5x5', 'dil_conv_3x3'])
def test_depthwise_implementations_agree(name):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  shift, xla = (networks.make_op(name, 4, 2, depthwise_impl=impl) for impl in ('shift', 'xla'))
  variables = shift.init(jax.random.key(1), x, train=False)
  np.testing.assert_allclose(xla.apply(variables, x, train=False), shift.apply(variables, x, train=False), **TOL)


def test_pooling_ops_have_no_parameters_or_statistics():
  x = jnp.ones((1, 4, 4, 2))
  for name in ('max_pool_3x3', 'avg_pool_3x3', 'none', 'skip_connect'):
    assert networks.make_op(name, 2, 1).init(jax.random.key(0), x, train=False) == {}


def test_unknown_op_is_an_error():
  with pytest.raises(ValueError, match="unknown operation 'conv_9x9'"):
    networks.make_op('conv_9x9', 4, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Drop path.


def test_drop_path_drops_whole_examples_and_rescales_by_keep():
  x = jnp.ones((4000, 2, 2, 3))
  out = networks.drop_path(jax.random.key(0), x, 0.25)
  per_example = out.reshape(4000, -1)
  assert np.all(per_example == per_example[:, :1])  # one mask entry per example
  assert set(np.unique(per_example).tolist()) == {0.0, float(np.float32(1) / np.float32(0.75))}
  # 4000 Bernoulli(0.75) draws: the kept fraction has standard deviation 0.007; 0.03 is > 4 sigma.
  assert abs(np.mean(per_example[:, 0] > 0) - 0.75) < 0.03


def test_drop_path_masks_do_not_depend_on_the_number_of_devices():
  x = jax.random.normal(jax.random.key(1), (8, 3, 3, 2))
  key = jax.random.key(2)
  whole = networks.drop_path(key, x, 0.5)
  # Two "devices" emulated by vmap: each holds 4 examples and draws the global mask with the same key.
  split = jax.vmap(lambda xs: networks.drop_path(key, xs, 0.5, axis_name='d'), axis_name='d')(x.reshape(2, 4, 3, 3, 2))
  np.testing.assert_array_equal(split.reshape(x.shape), whole)


def _cell(ops, concat, reduction=False):
  return networks.Cell(ops=tuple(ops), concat=tuple(concat), channels=4, reduction=reduction, reduction_prev=False)


def _run_cell(cell, drop_path_prob, seed=0):
  s0 = jax.random.normal(jax.random.key(10), (6, 8, 8, 4))
  s1 = jax.random.normal(jax.random.key(11), (6, 8, 8, 4))
  variables = cell.init(jax.random.key(0), s0, s1, 0.0, train=False)
  out, _ = cell.apply(variables, s0, s1, drop_path_prob, train=True, rngs={'dropout': jax.random.key(seed)},
                      mutable=['batch_stats'])
  return out


def test_drop_path_skips_identity_ops():
  cell = _cell([('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 2), ('skip_connect', 0)], [2, 3])
  np.testing.assert_array_equal(_run_cell(cell, jnp.float32(0.9)), _run_cell(cell, 0.0))


def test_drop_path_applies_to_every_other_op_output():
  # Node 0 = max_pool(s0) + none(s1): with drop path each example is either dropped (0) or max_pool(s0) / keep.
  cell = _cell([('max_pool_3x3', 0), ('none', 1), ('avg_pool_3x3', 2), ('skip_connect', 1)], [2])
  reference = np.asarray(_run_cell(cell, 0.0))
  dropped = np.asarray(_run_cell(cell, jnp.float32(0.5)))
  kept = [np.allclose(d, r / 0.5, rtol=1e-6) for d, r in zip(dropped, reference)]  # float32 division
  zero = [np.all(d == 0) for d in dropped]
  assert all(k != z for k, z in zip(kept, zero)) and any(kept) and any(zero)
  # Outside training drop path is off.
  variables = cell.init(jax.random.key(0), jnp.ones((6, 8, 8, 4)), jnp.ones((6, 8, 8, 4)), 0.0, train=False)
  np.testing.assert_array_equal(cell.apply(variables, jnp.ones((6, 8, 8, 4)), jnp.ones((6, 8, 8, 4)), 0.5, train=False),
                                cell.apply(variables, jnp.ones((6, 8, 8, 4)), jnp.ones((6, 8, 8, 4)), 0.0, train=False))


# ---------------------------------------------------------------------------------------------------------------------
# Networks.


def test_scanned_cells_compute_the_unrolled_network():
  # SMALL's cells output C channels, so with stem_multiplier 1 cells 0 and 1 (before the reductions at 2 and 4 of 6
  # layers) keep their input shape: one scan.
  kw = dict(genotype=SMALL, C=2, num_classes=10, layers=6, stem_multiplier=1)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  unrolled_net, scanned_net = networks.NetworkCIFAR(**kw, scan=False), networks.NetworkCIFAR(**kw)
  unrolled = jax.jit(unrolled_net.init, static_argnames='train')(INIT_KEY, x, train=False)

  def stack(collection):  # cell_0 and cell_1 -> cells_0_1 with a leading axis of 2
    cells = dict(collection['cells'])
    cells['cells_0_1'] = jax.tree.map(lambda a, b: jnp.stack([a, b]), cells.pop('cell_0'), cells.pop('cell_1'))
    return {**collection, 'cells': cells}

  run = lambda net, v: jax.jit(lambda v: net.apply(v, x, train=True, mutable=['batch_stats']))(v)
  (expected, _), expected_updates = run(unrolled_net, unrolled)
  (got, _), got_updates = run(scanned_net, {name: stack(c) for name, c in unrolled.items()})
  np.testing.assert_allclose(got, expected, **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got_updates,
               {'batch_stats': stack(expected_updates['batch_stats'])})


@pytest.fixture(scope='module')
def tiny_cifar():
  """A 3-cell NetworkCIFAR with the auxiliary head on 32x32 images (its head reads the 8x8 map of cell 2)."""
  net = networks.NetworkCIFAR(SMALL, C=2, num_classes=10, layers=3, auxiliary=True)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  return net, jax.jit(net.init, static_argnames='train')(INIT_KEY, x, train=False), x


def test_auxiliary_head_runs_only_in_training(tiny_cifar):
  net, variables, x = tiny_cifar
  assert networks.AUXILIARY in variables['params']  # created at init, whatever the mode
  train = jax.jit(lambda v: net.apply(v, x, train=True, drop_path_prob=jnp.float32(0.2),
                                      rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats']))
  (logits, logits_aux), updates = train(variables)
  assert logits.shape == logits_aux.shape == (4, 10)
  assert not np.allclose(logits, logits_aux)
  logits, logits_aux = jax.jit(lambda v: net.apply(v, x, train=False))(variables)
  assert logits.shape == (4, 10) and logits_aux is None
  # Training updates the running statistics, of the auxiliary head's BN too.
  for path in (('stem_bn', 'mean'), (networks.AUXILIARY, 'BatchNorm_0', 'mean')):
    before, after = variables['batch_stats'], updates['batch_stats']
    for key in path:
      before, after = before[key], after[key]
    assert not np.allclose(before, after)


def test_evaluation_uses_running_statistics_and_training_batch_statistics(tiny_cifar):
  net, variables, x = tiny_cifar
  apply = jax.jit(lambda v, x, train: net.apply(v, x, train=train, mutable=['batch_stats'])[0][0],
                  static_argnums=2)
  # In evaluation an example's logits do not depend on the rest of the batch; in training (BN) they do.
  np.testing.assert_allclose(apply(variables, x, False)[:2], apply(variables, x[:2], False), **TOL)
  assert not np.allclose(apply(variables, x, True)[:2], apply(variables, x[:2], True), **TOL)


def test_auxiliary_head_needs_a_large_enough_map():
  net = networks.NetworkCIFAR(genotypes.DARTS_V2, C=2, num_classes=10, layers=3, auxiliary=True)
  with pytest.raises(ValueError, match='auxiliary head of NetworkCIFAR needs a feature map of at least 8x8.*got 7x7'):
    _abstract_params(net, (28, 28, 1))


def test_imagenet_network_parameter_count_and_shapes():
  net = networks.NetworkImageNet(genotypes.DARTS_V2, C=48, num_classes=1000, layers=14, auxiliary=True)
  x = jnp.zeros((2, 224, 224, 3))
  variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
  assert networks.count_params(variables['params']) == 4_718_752  # the original's, without the auxiliary head
  # Without the second BN (commented out in the original) the head has one BN: 1x1 conv 768→128 reads cell 9's
  # 4·4·96 channels at 7x7.
  assert set(variables['params'][networks.AUXILIARY]) == {'Conv_0', 'BatchNorm_0', 'Conv_1', 'classifier'}
  (logits, logits_aux), _ = jax.eval_shape(
      lambda v: net.apply(v, x, train=True, drop_path_prob=0.1, rngs={'dropout': jax.random.key(1)},
                          mutable=['batch_stats']), variables)
  assert logits.shape == logits_aux.shape == (2, 1000)
  logits, logits_aux = jax.eval_shape(lambda v: net.apply(v, x, train=False), variables)
  assert logits.shape == (2, 1000) and logits_aux is None


def test_networks_build_every_published_genotype():
  # NASNet and AmoebaNet use sep_conv_7x7, conv_7x1_1x7 and cells that concatenate 5 or 3 states.
  for genotype in (genotypes.NASNet, genotypes.AmoebaNet, genotypes.DARTS_V1):
    net = networks.NetworkCIFAR(genotype, C=4, num_classes=10, layers=5)
    logits, _ = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0), jnp.zeros((2, 16, 16, 3)),
                                                            train=False)[0])
    assert logits.shape == (2, 10)


def test_invalid_genotype_is_an_error():
  bad = Genotype(normal=[('sep_conv_3x3', 0), ('warp_9x9', 1)], normal_concat=[2],
                 reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])
  with pytest.raises(ValueError, match='warp_9x9'):
    _abstract_params(networks.NetworkCIFAR(bad, C=4, num_classes=10, layers=3), (16, 16, 3))
