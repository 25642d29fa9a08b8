"""The supernet's variants: RobustDARTS's spaces S1-S4 (per-edge op sets, the noise op), PC-DARTS's partial channels and
edge normalisation, DARTS-'s auxiliary skip; each checked against the plain supernet it reduces to, and the exact
hypergradient against autodiff through the virtual step in float64 with them on."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from hypergradient_reference import exact_and_autodiff
from test_search_network import _random_variables

from darts_jax.cnn import genotypes
from darts_jax.cnn.genotypes import PRIMITIVES, derive_genotype, edge_primitives, edges_key
from darts_jax.cnn.supernet import MixedEdges, SearchNetwork, channel_shuffle, edge_index
from darts_jax.spaces import cnn as cnn_space

TOL = dict(rtol=1e-5, atol=1e-5)  # float32, the same arithmetic in another arrangement; a wrong op or weight is O(1)


def test_robust_darts_spaces_have_the_published_op_sets():
  spaces = {name: edge_primitives(name) for name in ('s1', 's2', 's3', 's4')}
  for name, ops in (('s2', {'skip_connect', 'sep_conv_3x3'}), ('s3', {'none', 'skip_connect', 'sep_conv_3x3'}),
                    ('s4', {'noise', 'sep_conv_3x3'})):
    assert all(set(edge) == ops for kind in ('normal', 'reduce') for edge in spaces[name][kind])
  s1 = spaces['s1']
  assert all(len(s1[kind]) == 14 for kind in s1)
  assert all(len(set(edge)) == 2 and set(edge) <= set(PRIMITIVES) - {'none'} for kind in s1 for edge in s1[kind])
  assert len(set(s1['normal'])) > 1  # S1's ops differ from edge to edge
  assert edge_primitives('darts')['normal'] == (PRIMITIVES,) * 14
  with pytest.raises(ValueError, match='4 nodes'):
    edge_primitives('s1', steps=3)


@pytest.mark.parametrize('space', ['s1', 's2', 's3', 's4'])
def test_genotype_rule_picks_only_ops_of_each_edge(space):
  primitives = edge_primitives(space)
  rng = np.random.default_rng(0)
  for _ in range(20):
    alphas = {kind: 3 * rng.normal(size=(14, len(primitives['normal'][0]))) for kind in ('normal', 'reduce')}
    genotype = derive_genotype(alphas, primitives=primitives)
    for kind in ('normal', 'reduce'):
      for k, (op, source) in enumerate(getattr(genotype, kind)):
        assert op in primitives[kind][edge_index(k // 2, source)] and op != 'none'
  # An edge whose op wins by far decides it; RobustDARTS ranks by the strongest op other than 'none'.
  alphas = {kind: np.zeros((14, len(primitives['normal'][0]))) for kind in ('normal', 'reduce')}
  alphas['normal'][edge_index(3, 4), -1] = 10.0
  genotype = derive_genotype(alphas, primitives=primitives)
  assert (primitives['normal'][edge_index(3, 4)][-1], 4) == genotype.normal[6]


def test_edge_normalisation_scales_the_edges_in_the_genotype_rule():
  """PC-DARTS's rule: edge strength = softmax(β of the node)_j · max_{op ≠ none} softmax(α_j)."""
  alphas = {kind: np.zeros((5, 8)) for kind in ('normal', 'reduce')}
  alphas['normal'][[0, 1], 4] = 1.0  # node 0: both inputs moderately sure of sep_conv_3x3 ...
  alphas['normal'][[2, 3, 4], 5] = 2.0  # node 1: inputs 0, 1, 2 surer of sep_conv_5x5
  plain = derive_genotype(alphas, steps=2)
  assert sorted(j for _, j in plain.normal[2:]) == [0, 1]  # ties among three: the lower inputs
  # β prefers node 1's input 2 by far: it enters, input 1 (the weakest β) leaves.
  alphas[edges_key('normal')] = [np.zeros(2), np.array([0.0, -3.0, 3.0])]
  alphas[edges_key('reduce')] = [np.zeros(2), np.zeros(3)]
  normalised = derive_genotype(alphas, steps=2)
  assert [j for _, j in normalised.normal[2:]] == [2, 0]
  assert normalised.normal[:2] == plain.normal[:2] and normalised.reduce == plain.reduce


def _full_variables_for(edge_ops, full_variables):
  """The parameters of a MixedEdges of `edge_ops` taken from a full one's: each op's rows of its edges."""
  def rows(op):
    return np.array([e for e, ops in enumerate(edge_ops) if op in ops])
  params = {}
  for name, value in full_variables['params'].items():
    op = next((op for op in PRIMITIVES if name.startswith(op)), 'skip_connect' if name.startswith('skip') else None)
    if len(rows(op)):
      params[name] = value[rows(op)]
  return {'params': params}


@pytest.mark.parametrize('stride', [1, 2])
def test_edges_with_their_own_ops_equal_all_ops_with_the_others_weighted_zero(stride):
  """A MixedEdges whose edges carry different op sets computes, per edge, the full mixture with weight 0 on the ops
  the edge lacks, holds parameters for its own ops only, and none for an op no edge has."""
  edge_ops = (('skip_connect', 'dil_conv_3x3'), ('max_pool_3x3', 'skip_connect'), ('skip_connect', 'sep_conv_3x3'))
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(1), (3, 2)), axis=-1)
  full_weights = np.zeros((3, 8), np.float32)
  for e, ops in enumerate(edge_ops):
    full_weights[e, [PRIMITIVES.index(op) for op in ops]] = weights[e]
  full = MixedEdges(channels=4, num_edges=3, stride=stride)
  full_variables = _random_variables(full, x, jnp.asarray(full_weights))
  own = MixedEdges(channels=4, num_edges=3, stride=stride, edge_ops=edge_ops)
  own_params = jax.eval_shape(functools.partial(own.init, train=False), jax.random.key(0), x, weights)['params']
  variables = _full_variables_for(edge_ops, full_variables)
  assert jax.tree.map(jnp.shape, variables['params']) == jax.tree.map(lambda s: s.shape, dict(own_params))
  assert not any(name.startswith(('sep_conv_5x5', 'dil_conv_5x5')) for name in own_params)
  if stride == 1:
    assert not any(name.startswith('skip') for name in own_params)
  run = lambda module, v, w: module.apply(v, x, w, train=True, mutable=['batch_stats'])[0]
  # BN with batch statistics: running statistics do not enter.
  expected = jax.jit(functools.partial(run, full))(full_variables, jnp.asarray(full_weights))
  actual = jax.jit(functools.partial(run, own))({'params': variables['params'], 'batch_stats': {}}, weights)
  np.testing.assert_allclose(actual, expected, **TOL)


def test_noise_op_is_standard_normal_per_edge_from_its_stream():
  x = 100.0 * jax.random.normal(jax.random.key(0), (16, 8, 8, 4))  # far from unit scale: the noise is not x's
  weights = jnp.array([[1.0, 0.0], [1.0, 0.0]])  # noise only
  module = MixedEdges(channels=4, num_edges=2, stride=2, edge_ops=(('noise', 'sep_conv_3x3'),) * 2)
  variables = _random_variables(module, x, weights)
  variables['batch_stats'] = jax.tree.map(jnp.abs, variables['batch_stats'])  # variances >= 0
  # In evaluation too, as RobustDARTS's.
  run = jax.jit(lambda key: module.apply(variables, x, weights, train=False, rngs={'noise': key}))
  out, again, other = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
  assert out.shape == (2, 16, 4, 4, 4)
  # 2048 draws per edge: mean within 5 standard errors of 0, standard deviation within 10% of 1.
  assert abs(float(out.mean())) < 5 / np.sqrt(out.size) and abs(float(out.std()) - 1) < 0.1
  assert not np.allclose(out[0], out[1])  # each edge draws its own
  np.testing.assert_array_equal(out, again)
  assert not np.allclose(out, other)


def test_partial_channels_mix_a_part_then_shuffle():
  """PC-DARTS: the first C/K channels through the mixed ops (built at C/K), the rest bypass them (2x2 max pool at
  stride 2), concatenated, then channel-shuffled in K groups as PC-DARTS's NCHW view/transpose."""
  stride = 2
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 8))
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(1), (2, 8)), axis=-1)
  partial = MixedEdges(channels=8, num_edges=2, stride=stride, partial_channels=4)
  plain = MixedEdges(channels=2, num_edges=2, stride=stride)
  variables = _random_variables(partial, x, weights)
  run = lambda module, x: module.apply(variables, x, weights, train=True, mutable=['batch_stats'])[0]
  out = np.asarray(jax.jit(functools.partial(run, partial))(x))
  mixed = np.asarray(jax.jit(functools.partial(run, plain))(x[..., :2]))
  bypass = np.asarray(x[..., 2:])
  bypass = bypass.reshape(3, 4, 2, 4, 2, 6).max(axis=(2, 4))
  joined = np.concatenate([mixed, np.broadcast_to(bypass, (2,) + bypass.shape)], -1)
  # torch: view (N, K, C/K, H, W) -> transpose(1, 2) -> view (N, C, H, W): out channel i·K + g = in channel g·C/K + i
  shuffled = np.empty_like(joined)
  for g in range(4):
    for i in range(2):
      shuffled[..., i * 4 + g] = joined[..., g * 2 + i]
  np.testing.assert_allclose(out, shuffled, **TOL)
  np.testing.assert_array_equal(channel_shuffle(jnp.asarray(joined), 4), shuffled)


TINY = dict(C=4, num_classes=5, layers=1, steps=1, multiplier=1)  # one reduction cell of one node (as test_float64)


def _tiny_inputs(dtype=np.float32, edge_normalization=True):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 4, 8, 8, 1)).astype(dtype)  # (train, val) batches
  labels = rng.integers(0, 5, (2, 4))
  alphas = {kind: 0.3 * rng.normal(size=(2, 8)).astype(dtype) for kind in ('normal', 'reduce')}
  if edge_normalization:
    for kind in ('normal', 'reduce'):
      alphas[edges_key(kind)] = [0.5 * rng.normal(size=(2,)).astype(dtype)]
  return images, labels, alphas


def test_edge_normalisation_with_unit_weights_and_aux_skip_at_zero_are_the_plain_supernet():
  images, _, alphas = _tiny_inputs()
  x = jnp.asarray(images[0])
  weights = {kind: jax.nn.softmax(alphas[kind], -1) for kind in ('normal', 'reduce')}
  ones = {**weights, **{edges_key(kind): [jnp.ones(2)] for kind in ('normal', 'reduce')}}
  plain = SearchNetwork(**TINY, mixing='weights')
  variant = SearchNetwork(**TINY, mixing='weights', edge_normalization=True, aux_skip=True)
  variables = _random_variables(variant, x, ones)
  params = variables['params']
  plain_params = traverse_util.unflatten_dict({path: value for path, value in traverse_util.flatten_dict(params).items()
                                               if not path[-1].startswith('aux_skip')})
  run = lambda net, p, w, **kw: net.apply({'params': p, 'batch_stats': {}}, x, w, train=True, mutable=['batch_stats'],
                                          **kw)[0]
  expected = jax.jit(functools.partial(run, plain))(plain_params, weights)
  actual = jax.jit(functools.partial(run, variant, aux_skip_weight=0.0))(params, ones)
  np.testing.assert_allclose(actual, expected, **TOL)


def test_aux_skip_weight_is_stored_by_training_and_used_without_one():
  images, _, alphas = _tiny_inputs(edge_normalization=False)
  x = jnp.asarray(images[0])
  net = SearchNetwork(**TINY, aux_skip=True)
  variables = jax.jit(lambda: net.init(jax.random.key(0), x, alphas, train=False, aux_skip_weight=0.8))()
  assert float(variables['batch_stats']['aux_skip_weight']) == pytest.approx(0.8)
  _, updates = jax.jit(lambda v: net.apply(v, x, alphas, train=True, aux_skip_weight=0.3, mutable=['batch_stats']))(
      variables)
  assert float(updates['batch_stats']['aux_skip_weight']) == pytest.approx(0.3)
  evaluate = jax.jit(lambda v, **kw: net.apply(v, x, alphas, train=False, **kw))
  trained = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
  np.testing.assert_array_equal(evaluate(trained), evaluate(trained, aux_skip_weight=0.3))
  assert not np.allclose(evaluate(trained), evaluate(trained, aux_skip_weight=1.0))


def test_aux_skip_schedule_decays_per_epoch_as_darts_minus():
  linear = cnn_space.aux_skip_schedule(1.0, 'linear', num_epochs=50, steps_per_epoch=10)
  cosine = cnn_space.aux_skip_schedule(2.0, 'cosine', num_epochs=50, steps_per_epoch=10)
  for step, epoch in ((0, 0), (9, 0), (10, 1), (495, 49)):
    assert float(linear(step)) == pytest.approx(1 - epoch / 50)
    assert float(cosine(step)) == pytest.approx(2.0 * (1 + np.cos(np.pi * epoch / 50)) / 2)
  assert float(cnn_space.aux_skip_schedule(0.5, 'constant', 50, 10)(300)) == 0.5


@pytest.mark.slow  # ~20-50 s: forward-over-reverse of the supernet compiled in float64
def test_exact_hypergradient_is_autodiff_through_the_virtual_step_with_pc_darts_and_darts_minus():
  """Partial channels, edge normalisation (its parameters part of the alphas) and the auxiliary skip on, float64: the
  exact hypergradient equals ∇_α L_val(w - η(μ·m + ∇_w L_train(w, α) + λ·w), α) by reverse-mode autodiff."""
  with jax.enable_x64(True):
    images, labels, alphas = _tiny_inputs(np.float64)
    net = SearchNetwork(**TINY, partial_channels=2, edge_normalization=True, aux_skip=True)
    alphas = jax.tree.map(jnp.asarray, alphas)
    variables = jax.jit(lambda: net.init(jax.random.key(0), jnp.asarray(images[0]), alphas, train=False))()
    params = variables['params']
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype('float64')}
    eta, momentum, weight_decay = 0.1, 0.9, 3e-4
    buffer = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)

    def loss(w, a, batch):
      logits, _ = net.apply({'params': w, 'batch_stats': variables['batch_stats']}, batch[0], a, train=True,
                            mutable=['batch_stats'], aux_skip_weight=0.7)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    train, val = ((jnp.asarray(images[i]), jnp.asarray(labels[i])) for i in range(2))

    exact, reference = exact_and_autodiff(loss, loss, params, alphas, train, val, eta=eta, momentum=momentum,
                                          weight_decay=weight_decay, buffer=buffer)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    assert jax.tree.structure(exact) == jax.tree.structure(alphas)
    # Every α and β of the (only, reduction) cell has a gradient.
    assert np.all(flat(jax.tree.map(lambda x: x != 0, [exact['reduce'], exact[edges_key('reduce')]])))
    # float64: the two orders of the same derivatives agree to rounding (~1e-13); an error would be O(1).
    np.testing.assert_allclose(flat(exact), flat(reference), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_search_on_s4_with_pc_darts_and_darts_minus_end_to_end(data_dir, tmp_path):
  """The search task on the real supernet with the variants on together: RobustDARTS's S4 (noise), partial channels,
  edge normalisation and the auxiliary skip; records with the skip count and the Hessian eigenvalue, a genotype of
  S4's ops, the edge parameters in the alphas records, and the auxiliary skip weight of the last epoch stored."""
  from test_search import tiny_config  # pylint: disable=import-outside-toplevel
  from darts_jax.tasks import search  # pylint: disable=import-outside-toplevel
  from darts_jax.training import reporting  # pylint: disable=import-outside-toplevel

  config = tiny_config(data_dir, **{'hypergradient': 'first_order', 'model.search_space': 's4',
                                    'model.partial_channels': 2, 'model.edge_normalization': True,
                                    'model.aux_skip_weight': 1.0, 'data.image_size': 8})
  state = search.search(config, tmp_path)
  records = [r for r in reporting.read_jsonl(tmp_path / 'metrics.jsonl') if 'hessian_eigenvalue' in r]
  assert len(records) == 2 and all(np.isfinite(r['hessian_eigenvalue']) for r in records)
  assert all(r['skip_connect_normal'] == 0 for r in records)  # S4 has no skip connection
  genotype = genotypes.validate_genotype(state_genotype(tmp_path))
  assert {op for op, _ in genotype.normal + genotype.reduce} <= {'noise', 'sep_conv_3x3'}
  last = reporting.read_jsonl(tmp_path / search.ALPHAS_FILE)[-1]
  assert [len(b) for b in last[edges_key('normal')]] == [2, 3, 4, 5]
  # Epoch 1 of 2: the linear schedule's 1 - 1/2.
  assert float(state.batch_stats['aux_skip_weight']) == pytest.approx(0.5)


def state_genotype(workdir):
  from darts_jax.cnn import genotype_formats  # pylint: disable=import-outside-toplevel
  return genotype_formats.load_genotype(str(workdir / 'genotype.json'))
