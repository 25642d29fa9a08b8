"""SDARTS-ADV's step and DARTS-PT's selection on the CNN space, with tests/test_search.py's TinySupernet (slow: the
CNN programs compile for tens of seconds; the example-space tests check the same in seconds); the CNN space's hooks of
P-DARTS: explicit per-edge op sets (``model.edge_ops``) and dropout on the identity ops (``model.skip_dropout``), on
tiny modules, and the exact hypergradient with them on against autodiff in float64 (slow)."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from hypergradient_reference import exact_and_autodiff
from test_pdarts import StagedTinySupernet
from test_search import LR, MEAN, STD, TinySupernet, _batches, search_quick, tiny_config
from test_search_network import _random_variables

from darts_jax import data, dynamics
from darts_jax.bilevel import step as bilevel_step
from darts_jax.cnn import genotype_formats, genotypes
from darts_jax.cnn.supernet import MixedEdges, SearchNetwork, edge_index, init_alphas, supernet_edge_ops
from darts_jax.dynamics import relaxations
from darts_jax.spaces import cnn as cnn_space
from darts_jax.tasks import search, selection
from darts_jax.training import optimizers

EDGES = genotypes.num_edges(4)


@pytest.fixture(scope='module', autouse=True)
def tiny_supernet():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cnn_space, 'SearchNetwork', TinySupernet)
    yield


@pytest.mark.slow
@pytest.mark.parametrize('passes', ['direct', 'chained'])
def test_sdarts_adv_step_on_the_cnn_space_attacks_the_weight_step_only(passes):
  model = TinySupernet(mixing='weights')
  schedule = optimizers.epoch_cosine_schedule(LR, 0.001, num_epochs=3, steps_per_epoch=100)
  state = cnn_space.create_search_state(jax.random.key(0), model, (8, 8, 1), optimizers.weight_optimizer(schedule),
                                        optimizers.arch_optimizer(0.3))
  state = state.replace(alphas=jax.tree.map(lambda a: a * 1000, state.alphas))
  problem = cnn_space.search_problem(model, schedule, data.make_preprocess(MEAN, STD))
  (train, val), = _batches(1)

  def attack(key, weights, step, loss_and_grad):
    return dynamics.relaxations.adversarial_perturbation(key, weights, 0.3, loss_and_grad, steps=3)

  def run(perturbation):
    step = bilevel_step.make_search_step(problem, method='exact', relaxation=dynamics.Relaxation(),
                                        weight_perturbation=perturbation, passes=passes)
    return jax.jit(step)(state, train, val)

  (attacked, attacked_metrics), (plain, plain_metrics) = run(attack), run(None)
  # The same architecture step (float32 rounding of two programs), a weight step at a worse point.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), attacked.alphas, plain.alphas)
  assert attacked_metrics['loss'] > plain_metrics['loss']


@pytest.mark.slow
def test_pt_selection_on_a_cnn_search_workdir(tmp_path, data_dir):
  workdir = tmp_path / 'search'
  search.search(tiny_config(data_dir, hypergradient='first_order', num_epochs=1), workdir)
  options = selection.selection_config('pt', quick=True)
  options.update(tune_steps=1, eval_batches=1)
  genotype = selection.select(workdir, options)
  record = json.loads((workdir / 'selection_pt' / 'selection.json').read_text())
  assert len(record['edges']) == 2 * genotypes.num_edges(4)
  # 'none' (column 0) is never a candidate; every other op's drop is measured.
  assert all(sorted(map(int, e['drops'])) == list(range(1, len(genotypes.PRIMITIVES))) for e in record['edges'])
  assert genotype_formats.load_genotype(str(workdir / 'selection_pt')) == genotype
  assert all(op != 'none' for op, _ in genotype.normal + genotype.reduce)


def test_pt_candidates_are_named_per_edge_so_none_is_excluded_wherever_its_column_is():
  """DARTS-PT's candidates come from the space's op names (`SearchSpace.row_ops`), in the order of the rows it
  visits: an edge whose ``none`` is not column 0 (P-DARTS's pruned stages, RobustDARTS's S3) still never keeps it."""
  op_sets = {'normal': [['sep_conv_3x3', 'none'] if e % 2 else ['skip_connect', 'sep_conv_3x3'] for e in range(EDGES)],
             'reduce': [['none', 'skip_connect']] * EDGES}
  space = cnn_space.CNNSpace(_edge_ops_config(op_sets))
  weights = {kind: np.zeros((EDGES, 2), np.float32) for kind in op_sets}
  names = selection._edge_names(weights)
  assert names[0] == "['normal'][0]" and names[EDGES] == "['reduce'][0]"
  assert space.row_ops(weights) == [tuple(ops) for kind in ('normal', 'reduce') for ops in op_sets[kind]]


# ---- P-DARTS's hooks: explicit per-edge op sets, dropout on the identity ops.


def _edge_ops_config(op_sets):
  config = search_quick.get_config()
  config.model.edge_ops = json.dumps(op_sets)
  return config


# Per edge 2 ops: the normal cell alternates (skip, sep 3x3) and (max pool, dil 3x3), the reduction cell (none, skip).
OP_SETS = {'normal': [['skip_connect', 'sep_conv_3x3'] if e % 2 else ['max_pool_3x3', 'dil_conv_3x3']
                      for e in range(EDGES)],
           'reduce': [['none', 'skip_connect']] * EDGES}


def test_explicit_edge_ops_build_only_the_listed_ops_and_the_genotype_honours_them(tmp_path):
  config = _edge_ops_config(OP_SETS)
  space = cnn_space.CNNSpace(config)
  space.check_search_config()
  net = SearchNetwork(C=4, num_classes=10, layers=3, **cnn_space._variants(config))  # cells: normal, reduce, reduce
  assert supernet_edge_ops(net) == {kind: tuple(map(tuple, edges)) for kind, edges in OP_SETS.items()}
  alphas = init_alphas(jax.random.key(1), num_ops=2)
  variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), alphas, train=False))
  # Every op of the normal cell's edges from state j has parameters (or, for the pools, BN statistics) stacked over
  # exactly the edges from j that list it; the ops no edge lists have none.
  flat = traverse_util.flatten_dict(variables['params']['cell_0'])
  stats = traverse_util.flatten_dict(variables['batch_stats']['cell_0'])
  for source in range(5):
    rows = [edge_index(node, source) for node in range(max(0, source - 1), 4)]
    count = lambda op: sum(op in OP_SETS['normal'][row] for row in rows)
    module = f'edges_from_{source}'
    for op in ('sep_conv_3x3', 'dil_conv_3x3'):
      assert flat.get((module, f'{op}_depthwise1'), jnp.zeros((0,))).shape[0] == count(op)
    assert not any(path[1].startswith(('sep_conv_5x5', 'dil_conv_5x5', 'skip')) for path in flat if path[0] == module)
    assert stats.get((module, 'pool_bn', 'mean'), jnp.zeros((0,))).shape[:1] == ((1,) if count('max_pool_3x3') else (0,))
  # The reduction cells' skips from the inputs reduce (parameters), on every edge; nothing else has parameters.
  reduce_params = {path[1] for path in traverse_util.flatten_dict(variables['params']['cell_1'])
                   if path[0].startswith('edges_from')}
  assert reduce_params == {'skip_conv1', 'skip_conv2'}
  # The state's alphas have a column per op; the genotype rule and its one-hot weights pick ops of each edge only.
  state = cnn_space.create_search_state(jax.random.key(0), StagedTinySupernet(**cnn_space._variants(config)),
                                        (8, 8, 1), optax.sgd(0.1), optax.adam(0.1))
  assert {kind: state.alphas[kind].shape for kind in ('normal', 'reduce')} == {'normal': (EDGES, 2),
                                                                               'reduce': (EDGES, 2)}
  rng = np.random.default_rng(0)
  for _ in range(10):
    alphas = {kind: 3 * rng.normal(size=(EDGES, 2)).astype(np.float32) for kind in ('normal', 'reduce')}
    genotype = space.derive_genotype(alphas)
    for kind in ('normal', 'reduce'):
      assert all(op in OP_SETS[kind][edge_index(i // 2, j)] and op != 'none'
                 for i, (op, j) in enumerate(getattr(genotype, kind)))
    assert dynamics.same_architecture(space.derive_genotype(space.genotype_weights(genotype, alphas)), genotype)
  assert all(op == 'skip_connect' for op, _ in genotype.reduce)
  # The cost tables too: a column per op of each edge, the identity and 'none' free, the convolutions not.
  tables = cnn_space._architecture_cost(config, tmp_path, 10, (16, 16, 1)).tables
  normal = tables['normal']
  assert normal.shape == (EDGES, 2) and tables['reduce'].shape == (EDGES, 2)
  assert np.all(normal[1::2, 0] == 0) and np.all(normal[1::2, 1] > 0) and np.all(normal[::2, 1] > 0)
  assert np.all(tables['reduce'][:, 0] == 0)


@pytest.mark.parametrize('edge_ops, message', [
    ('{"normal": [', r'model.edge_ops is not valid JSON'),
    ('[]', r'must be a JSON object'),
    (json.dumps({**OP_SETS, 'normal': OP_SETS['normal'][:-1]}), r'one list of ops per edge: 14 .* got 13'),
    (json.dumps({**OP_SETS, 'normal': [['skip', 'sep_conv_3x3']] * EDGES}), r"\[0\]: unknown op 'skip'"),
    (json.dumps({**OP_SETS, 'normal': OP_SETS['normal'][:-1] + [['skip_connect']]}), r'same number of ops.* 1, 2'),
    (json.dumps({**OP_SETS, 'reduce': [['none', 'none']] * EDGES}), r'each op once and one other than none'),
], ids=['json', 'object', 'edges', 'unknown', 'ragged', 'repeated'])
def test_malformed_edge_ops_are_refused_in_one_line(edge_ops, message):
  config = search_quick.get_config()
  config.model.edge_ops = edge_ops
  with pytest.raises(ValueError, match=message) as error:
    cnn_space.CNNSpace(config).check_search_config()
  assert '\n' not in str(error.value)


def test_edge_ops_replace_a_search_space_and_skip_dropout_is_a_rate():
  config = _edge_ops_config(OP_SETS)
  config.model.search_space = 's2'
  with pytest.raises(ValueError, match='set one of them'):
    cnn_space.CNNSpace(config).check_search_config()
  config = search_quick.get_config()
  config.model.skip_dropout = 1.0
  with pytest.raises(ValueError, match=r'model.skip_dropout \(1.0\) must be in \[0, 1\)'):
    cnn_space.CNNSpace(config).check_search_config()


# Three edges leaving one node, skip on two of them.
DROPOUT_EDGE_OPS = (('skip_connect', 'sep_conv_3x3'), ('max_pool_3x3', 'skip_connect'), ('sep_conv_3x3', 'max_pool_3x3'))


def _dropout_edges(dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4), dtype)
  module = MixedEdges(channels=4, num_edges=3, stride=1, edge_ops=DROPOUT_EDGE_OPS)
  weights = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype)  # edges 0 and 1: their skip alone
  variables = _random_variables(module, x, weights)
  variables['batch_stats'] = jax.tree.map(jnp.abs, variables['batch_stats'])  # variances >= 0

  @functools.partial(jax.jit, static_argnames='train')
  def run(weights, rate, key, train=True):
    return module.apply(variables, x, weights, train=train, mutable=['batch_stats'], skip_dropout_rate=rate,
                        dropout_key=key)[0]
  return x, weights, run


def test_skip_dropout_masks_each_edges_identity_with_its_own_draw_and_rescales():
  x, weights, run = _dropout_edges()
  key, rate = jax.random.key(3), 0.4
  out, plain = run(weights, rate, key), run(weights, rate, None)
  # The mask by hand from the same key: one draw per edge with the skip (edges 0, 1), torch's inverted dropout.
  keep = np.asarray(jax.random.bernoulli(key, 1 - rate, (2,) + x.shape))
  expected = np.where(keep, np.asarray(x)[None] / (1 - rate), 0)
  # float32, the same products in another arrangement (one-hot weights); a wrong mask or scale is O(1).
  np.testing.assert_allclose(out[:2], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(plain[:2], np.stack([x, x]), rtol=1e-6, atol=1e-6)
  assert 0.3 < 1 - keep.mean() < 0.5 and (keep[0] != keep[1]).any()
  np.testing.assert_allclose(out[2], plain[2], rtol=1e-6, atol=1e-6)  # the edge without a skip: untouched
  # Evaluation (train=False) ignores the key: the same program as without one.
  np.testing.assert_array_equal(run(weights, rate, key, train=False), run(weights, rate, None, train=False))


def test_skip_dropout_at_rate_zero_is_no_dropout():
  """Every weight nonzero, float64: a rate of 0 keeps every element unscaled; the mixture with the identity on its
  own per edge equals the shared one to rounding (~1e-16; a dropped element would be O(1))."""
  with jax.enable_x64(True):
    _, weights, run = _dropout_edges(jnp.float64)
    weights = jax.nn.softmax(jnp.arange(6.0, dtype=jnp.float64).reshape(3, 2) / 5, -1)
    np.testing.assert_allclose(run(weights, 0.0, jax.random.key(3)), run(weights, 0.0, None), rtol=1e-12,
                               atol=1e-12)


def test_skip_dropout_rate_and_key_reach_the_training_passes_only():
  """The prepared batches carry the step's rate (the schedule's) and a key per batch and step; the loss of a
  prepared batch uses them, the evaluation's and the Hessian's options (no extras) have no dropout."""
  model = StagedTinySupernet(mixing='weights')
  schedule = optimizers.epoch_cosine_schedule(LR, 0.001, num_epochs=3, steps_per_epoch=5)
  rate = relaxations.skip_dropout_schedule(0.4, num_epochs=3, warmup_epochs=1, steps_per_epoch=5)
  state = cnn_space.create_search_state(jax.random.key(0), model, (8, 8, 1), optimizers.weight_optimizer(schedule),
                                        optimizers.arch_optimizer(0.3))
  problem = cnn_space.search_problem(model, schedule, data.make_preprocess(MEAN, STD), skip_dropout=rate)
  (train, val), = _batches(1)
  prepare = problem.prepare
  at_7 = state.replace(step=jnp.asarray(7, jnp.int32))
  (*_, train_extras), (*_, val_extras) = prepare(at_7, train, val)
  again, = prepare(at_7, train, val)[:1]
  (*_, next_extras), _ = prepare(state.replace(step=jnp.asarray(8, jnp.int32)), train, val)
  assert float(train_extras['skip_dropout_rate']) == pytest.approx(float(rate(7)))
  data_of = jax.random.key_data
  assert not np.array_equal(data_of(train_extras['dropout']), data_of(val_extras['dropout']))
  np.testing.assert_array_equal(data_of(again[2]['dropout']), data_of(train_extras['dropout']))
  assert not np.array_equal(data_of(next_extras['dropout']), data_of(train_extras['dropout']))
  assert cnn_space._apply_options(model, None) == {}
  weights = jax.tree.map(lambda a: jax.nn.softmax(a, -1), state.alphas)
  loss = jax.jit(lambda batch: problem.loss(state.params, state.batch_stats, weights, batch, True)[0])
  prepared, _ = prepare(at_7, train, val)
  assert float(loss(prepared)) != float(loss(prepared[:2]))


@pytest.mark.slow  # ~30-60 s: forward-over-reverse of the supernet compiled in float64
def test_exact_hypergradient_is_autodiff_through_the_virtual_step_with_edge_ops_and_skip_dropout():
  """Per-edge op sets and skip dropout at 0.3 (a fixed key per batch: every pass over it sees one mask), float64: the
  exact hypergradient equals ∇_α L_val(w - η(μ·m + ∇_w L_train(w, α) + λ·w), α) by reverse-mode autodiff."""
  # One reduction cell of two nodes: edge 4 (node 0 into node 1) is an identity at stride 1.
  edge_ops = (('skip_connect', 'sep_conv_3x3', 'max_pool_3x3'), ('none', 'skip_connect', 'dil_conv_3x3'),
              ('skip_connect', 'avg_pool_3x3', 'sep_conv_5x5'), ('none', 'skip_connect', 'sep_conv_3x3'),
              ('skip_connect', 'sep_conv_3x3', 'dil_conv_5x5'))
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 4, 8, 8, 1))
    labels = rng.integers(0, 5, (2, 4))
    alphas = {kind: jnp.asarray(0.3 * rng.normal(size=(5, 3))) for kind in ('normal', 'reduce')}
    net = SearchNetwork(C=4, num_classes=5, layers=1, steps=2, multiplier=1, edge_ops=(edge_ops, edge_ops))
    variables = jax.jit(lambda: net.init(jax.random.key(0), jnp.asarray(images[0]), alphas, train=False))()
    params = variables['params']
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype('float64')}
    eta, momentum, weight_decay = 0.1, 0.9, 3e-4
    buffer = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)

    def loss_with(key, rate=0.3):
      def loss(w, a, batch):
        logits, _ = net.apply({'params': w, 'batch_stats': variables['batch_stats']}, batch[0], a, train=True,
                              mutable=['batch_stats'], skip_dropout_rate=rate, dropout_key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
      return loss

    train_loss, val_loss = loss_with(jax.random.key(1)), loss_with(jax.random.key(2))
    train, val = ((jnp.asarray(images[i]), jnp.asarray(labels[i])) for i in range(2))

    exact, reference = exact_and_autodiff(train_loss, val_loss, params, alphas, train, val, eta=eta, momentum=momentum,
                                          weight_decay=weight_decay, buffer=buffer)
    # The dropout acts: the loss differs from that at rate 0.
    dropped = float(val_loss(params, alphas, val))
    assert dropped != pytest.approx(float(loss_with(jax.random.key(2), 0.0)(params, alphas, val)), rel=1e-6)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    assert np.all(np.asarray(exact['reduce']) != 0)  # every op of the (only, reduction) cell has a gradient
    # float64: the two orders of the same derivatives agree to rounding (~1e-13); an error would be O(1).
    np.testing.assert_allclose(flat(exact), flat(reference), rtol=1e-9, atol=1e-12)


def test_noise_edges_draw_per_example_of_the_global_batch_whatever_the_devices():
  """RobustDARTS's ``noise`` in the supernet: N(0, 1) of the input's shape on each noise edge, one key per example of
  the global batch, so a batch split over 2 devices (a named vmap axis stands for them) draws what one device does."""
  x = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))
  module = MixedEdges(channels=2, num_edges=2, stride=1, edge_ops=(('noise', 'sep_conv_3x3'),) * 2, axis_name='batch')
  weights = jnp.array([[1.0, 0.0], [1.0, 0.0]])  # the noise alone
  variables = jax.eval_shape(lambda: module.init({'params': jax.random.key(1), 'noise': jax.random.key(2)},
                                                 x, weights, train=False))
  variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), variables)
  key = jax.random.key(5)

  def run(part):
    return module.apply(variables, part, weights, train=False, rngs={'noise': key})

  whole = jax.vmap(run, axis_name='batch')(x[None])[0]
  split = jax.vmap(run, axis_name='batch')(x.reshape(2, 3, 4, 4, 2))
  np.testing.assert_array_equal(np.concatenate([split[0], split[1]], axis=1), whole)  # the same draws, bit for bit
  assert whole.shape == (2, 6, 4, 4, 2)
  assert not np.allclose(whole[0], whole[1])  # each edge its own draw
  # Standard normal: 192 draws; the mean within 4 standard errors (0.29), the std within 25%.
  assert abs(float(whole.mean())) < 0.29 and 0.75 < float(whole.std()) < 1.25
