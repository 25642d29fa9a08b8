"""The recurrent search space: genotypes, parameter counts, and the cells against a direct re-implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import rnn
from darts_jax.rnn import genotypes as rnn_genotypes

NTOKEN, NHID, BATCH, TIME = 50, 8, 2, 5
STEPS = 3  # search cells of 3 nodes compile in a fraction of the 8-node cell's time; the code is the same


# ---------------------------------------------------------------------------------------------------------------------
# Genotypes.

def _original_parse(probs, steps=8):
  """The original's ``RNNModelSearch.genotype()._parse``, transcribed (sorted() by the strongest non-none op)."""
  none = rnn.PRIMITIVES.index('none')
  gene, start = [], 0
  for i in range(steps):
    end = start + i + 1
    W = probs[start:end].copy()
    j = sorted(range(i + 1), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none))[0]
    k_best = None
    for k in range(len(W[j])):
      if k != none and (k_best is None or W[j][k] > W[j][k_best]):
        k_best = k
    gene.append((rnn.PRIMITIVES[k_best], j))
    start = end
  return gene


@pytest.mark.parametrize('seed', range(20))
def test_derive_matches_original_rule_on_random_alphas(seed):
  rng = np.random.default_rng(seed)
  alphas = rng.normal(size=(36, 5)) * (1e-3 if seed % 2 else 1.0)
  if seed % 5 == 0:
    alphas = np.round(alphas, 1)  # ties between predecessors and ops
  probs = np.exp(alphas - alphas.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  genotype = rnn.derive_genotype(alphas)
  assert genotype.recurrent == _original_parse(probs)
  assert genotype.concat == list(range(1, 9))


def test_derive_ignores_none():
  alphas = np.zeros((36, 5))
  alphas[:, 0] = 10.0  # 'none' strongest everywhere
  alphas[2, 3] = 1.0   # node 1, predecessor 1: sigmoid
  assert rnn.derive_genotype(alphas).recurrent[1] == ('sigmoid', 1)
  assert rnn.derive_genotype(alphas).recurrent[0] == ('tanh', 0)  # all equal: first predecessor, first op


@pytest.mark.parametrize('alphas, match', [(np.zeros((35, 5)), 'shape'), (np.full((36, 5), np.nan), 'NaN')])
def test_derive_rejects_bad_alphas(alphas, match):
  with pytest.raises(ValueError, match=match):
    rnn.derive_genotype(alphas)


@pytest.mark.parametrize('seed', range(5))
def test_derive_with_edge_normalization_ranks_predecessors_by_weight_times_beta(seed):
  """PC-DARTS's rule carried over to the recurrent cell: the original's parse of the weights scaled by each node's
  softmax(β); the mixing weights themselves (``from_weights``) give the same."""
  rng = np.random.default_rng(seed)
  alphas = rng.normal(size=(rnn_genotypes.num_edges(), 5))
  betas = [rng.normal(size=i + 1) for i in range(8)]
  softmax = lambda a: np.exp(a) / np.exp(a).sum(-1, keepdims=True)
  probs, edge_probs = softmax(alphas), [softmax(b) for b in betas]
  scaled = probs * np.concatenate(edge_probs)[:, None]  # row offset + j belongs to predecessor j of its node
  expected = _original_parse(scaled)
  tree = {rnn_genotypes.OPS_KEY: alphas, rnn_genotypes.EDGES_KEY: betas}
  assert rnn.derive_genotype(tree).recurrent == expected
  assert rnn.derive_genotype({rnn_genotypes.OPS_KEY: probs, rnn_genotypes.EDGES_KEY: edge_probs},
                             from_weights=True).recurrent == expected


def test_derive_with_edge_normalization_follows_beta_over_the_ops():
  """Node 1's ops favour predecessor 0 a little, its β favours predecessor 1 a lot: β decides."""
  alphas = np.zeros((rnn_genotypes.num_edges(2), 5))
  alphas[1, 1], alphas[2, 2] = 1.0, 0.5  # node 1: tanh on s0 strongest, relu on s1 next
  betas = [np.zeros(1), np.array([0.0, 3.0])]
  assert rnn.derive_genotype(alphas, steps=2).recurrent[1] == ('tanh', 0)
  tree = {rnn_genotypes.OPS_KEY: alphas, rnn_genotypes.EDGES_KEY: betas}
  assert rnn.derive_genotype(tree, steps=2).recurrent[1] == ('relu', 1)


def test_published_genotypes():
  assert rnn.PRIMITIVES == ('none', 'tanh', 'relu', 'sigmoid', 'identity')
  assert rnn.DARTS is rnn.DARTS_V2
  assert rnn.DARTS_V2.recurrent == [('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2),
                                    ('sigmoid', 5), ('tanh', 3), ('relu', 5)]
  assert rnn.DARTS_V1.recurrent == [('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4),
                                    ('identity', 1), ('relu', 5), ('relu', 1)]
  assert list(rnn.DARTS_V1.concat) == list(rnn.DARTS_V2.concat) == list(range(1, 9))
  assert len(rnn.ENAS.recurrent) == 11 and rnn.ENAS.concat == [2, 5, 6, 9, 10, 11]


@pytest.mark.parametrize('name', ['DARTS_V1', 'DARTS_V2', 'ENAS'])
def test_round_trips(name):
  genotype = rnn_genotypes.validate_genotype(rnn.KNOWN_GENOTYPES[name])
  assert rnn.genotype_from_json(rnn.genotype_to_json(genotype)) == genotype
  text = rnn.genotype_to_repr(genotype)
  assert rnn.genotype_from_repr(text) == genotype
  assert rnn.parse_genotype(text) == rnn.parse_genotype(name) == genotype
  assert rnn.parse_genotype(repr(rnn.KNOWN_GENOTYPES[name])) == genotype  # as the original prints it
  assert rnn.parse_genotype(f'genotypes.{text}') == genotype


@pytest.mark.parametrize('text, match', [
    ('DARTS_V3', 'unknown recurrent genotype name'),
    ('{"recurrent": [["relu", 0]]}', "missing field 'concat'"),
    ('{"recurrent": [["relu", 0]], "concat": [1], "x": 1}', "unknown field 'x'"),
    ('{"recurrent": [["relu", 1]], "concat": [1]}', 'node 0 may read states 0..0'),
    ('{"recurrent": [["none", 0]], "concat": [1]}', "unknown activation 'none'"),
    ('{"recurrent": [["relu", 0]], "concat": [2]}', 'out of range'),
    ('{"recurrent": [["relu", 0]], "concat": [1, 1]}', 'repeated'),
    ('{"recurrent": [["relu", 0]], "concat": []}', 'empty'),
    ('{"recurrent": [], "concat": [0]}', 'non-empty'),
    ('{"recurrent": [["relu"]], "concat": [0]}', 'pair'),
    ('{bad json', 'invalid genotype JSON'),
    ("Genotype(recurrent=[('relu', 0)], concat=range(1, 2), x=1)", "unknown field 'x'"),
    ("Genotype(recurrent=[('relu', 0)], concat=__import__('os'))", 'must be a literal'),
    ('print(1)', 'not a known recurrent genotype'),
])
def test_rejects_malformed(text, match):
  with pytest.raises(ValueError, match=match):
    rnn.parse_genotype(text)


def test_json_must_be_an_object():
  with pytest.raises(ValueError, match='must be an object'):
    rnn.genotype_from_json('[1, 2]')


def test_plot_genotype(tmp_path):
  written = rnn.plot_genotype(rnn.DARTS_V2, f'{tmp_path}/')
  source = (tmp_path / 'recurrent.dot').read_text()
  assert written[0].endswith('recurrent.dot')
  for label in ('x_{t}', 'h_{t-1}', 'h_{t}', 'sigmoid', 'identity'):
    assert label in source


# ---------------------------------------------------------------------------------------------------------------------
# Models.

def test_published_parameter_counts():
  assert rnn.num_params(10000, 300, 300) == 4_810_000
  assert rnn.num_params(10000, 850, 850, rnn.DARTS_V2) == 22_960_000
  with pytest.raises(ValueError, match='tied'):
    rnn.num_params(10000, 300, 200)


def _num_params(variables):
  return sum(x.size for x in jax.tree.leaves(variables['params']))


@pytest.fixture(scope='module')
def tiny():
  tokens = jax.random.randint(jax.random.key(0), (BATCH, TIME), 0, NTOKEN)
  hidden = 0.5 * jax.random.normal(jax.random.key(1), (BATCH, NHID))
  alphas = jax.random.normal(jax.random.key(2), (rnn_genotypes.num_edges(STEPS), 5))
  search = rnn.RNNModelSearch(NTOKEN, NHID, NHID, steps=STEPS)
  search_vars = jax.jit(lambda key: search.init(key, tokens, hidden, alphas, train=False))(jax.random.key(3))
  return tokens, hidden, alphas, search, search_vars


def test_num_params_matches_the_parameter_trees(tiny):
  *_, search_vars = tiny
  assert _num_params(search_vars) == rnn.num_params(NTOKEN, NHID, NHID) - (8 - STEPS) * NHID * 2 * NHID
  variables = jax.eval_shape(lambda: rnn.RNNModelSearch(NTOKEN, NHID, NHID).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, NHID)), jnp.zeros((36, 5)), train=False))
  assert _num_params(variables) == rnn.num_params(NTOKEN, NHID, NHID)
  variables = jax.eval_shape(lambda: rnn.RNNModelSearch(NTOKEN, NHID, NHID, partial_channels=2).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, NHID)), jnp.zeros((36, 5)), train=False))
  assert _num_params(variables) == rnn.num_params(NTOKEN, NHID, NHID, partial_channels=2)
  for genotype in (rnn.DARTS_V1, rnn.ENAS):
    variables = jax.eval_shape(lambda: rnn.RNNModel(NTOKEN, NHID, NHID, genotype=genotype).init(
        jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, NHID)), train=False))
    assert _num_params(variables) == rnn.num_params(NTOKEN, NHID, NHID, genotype)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


_NP_ACTS = {'tanh': np.tanh, 'relu': lambda x: np.maximum(x, 0), 'sigmoid': _sigmoid, 'identity': lambda x: x}


def _reference_outputs(params, tokens, hidden, cell):
  """Evaluation-mode forward pass step by step in float64 NumPy, as the original's loops write it."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  h = np.asarray(hidden, np.float64)
  outputs = []
  for t in range(tokens.shape[1]):
    x = p['embedding'][np.asarray(tokens[:, t])]
    c0, h0 = np.split(np.concatenate([x, h], -1) @ p['W0'], 2, axis=-1)
    s0 = h + _sigmoid(c0) * (np.tanh(h0) - h)
    h = cell(s0, p['Ws'])
    outputs.append(h)
  logits = np.stack(outputs, 1) @ p['embedding'].T + p['decoder_bias']
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True)), h


def _search_cell(alphas, bn):
  """The original search cell (``DARTSCellSearch.cell``) without dropout, `bn` its ``self.bn``."""
  probs = np.asarray(jax.nn.softmax(alphas), np.float64)

  def cell(s0, Ws):
    states, offset = [bn(s0)], 0
    for i in range(STEPS):
      s = 0
      for j in range(i + 1):
        c, hh = np.split(states[j] @ Ws[i], 2, axis=-1)
        for k, name in enumerate(rnn.PRIMITIVES[1:], 1):
          s = s + probs[offset + j, k] * (states[j] + _sigmoid(c) * (_NP_ACTS[name](hh) - states[j]))
      states.append(bn(s))
      offset += i + 1
    return np.mean(states[-8:], 0)

  return cell


def test_search_model_matches_reference(tiny):
  tokens, hidden, alphas, search, variables = tiny
  cell = _search_cell(alphas, lambda s: s / np.sqrt(1 + 1e-5))  # initial running statistics: mean 0, variance 1

  log_probs, h_last, *_ = jax.jit(lambda: search.apply(variables, tokens, hidden, alphas, train=False))()
  ref_log_probs, ref_h = _reference_outputs(variables['params'], tokens, hidden, cell)
  # float32 through 5 steps of 9 normalised states: agreement to ~1e-5.
  np.testing.assert_allclose(log_probs, ref_log_probs, atol=1e-4)
  np.testing.assert_allclose(h_last, ref_h, atol=1e-4)


def test_mixing_weights_are_the_softmax_supernet_bit_for_bit(tiny):
  """``mixing='weights'`` given softmax(alphas), as the search's default relaxation computes them, is the supernet
  that softmaxes the alphas itself (with ``partial_channels=1``): the same bits on one machine, in training."""
  tokens, hidden, alphas, search, variables = tiny
  by_weights = rnn.RNNModelSearch(NTOKEN, NHID, NHID, steps=STEPS, mixing='weights', partial_channels=1)
  rngs = {'dropout': jax.random.key(0)}
  plain, mixed = jax.jit(lambda alphas: (
      search.apply(variables, tokens, hidden, alphas, train=True, rngs=rngs, mutable=['batch_stats']),
      by_weights.apply(variables, tokens, hidden, jax.nn.softmax(alphas), train=True, rngs=rngs,
                       mutable=['batch_stats'])))(alphas)
  jax.tree.map(np.testing.assert_array_equal, mixed, plain)


def _pc_search_cell(probs, betas, groups, bn):
  """The search cell with PC-DARTS's options as this project carries them over (rnn.model's docstring), written out:
  node i reads the first NHID/K units of each predecessor, mixes its activations on them, joins the other units
  unchanged, shuffles the units in K groups (`channel_shuffle_reference`) and weighs predecessor j by β_i[j]."""
  from test_nb201 import channel_shuffle_reference
  units = NHID // groups

  def cell(s0, Ws):
    states, offset = [bn(s0)], 0
    for i in range(STEPS):
      s = 0
      for j in range(i + 1):
        part = states[j][:, :units]
        c, hh = np.split(part @ Ws[i], 2, axis=-1)
        mixed = sum(probs[offset + j, k] * (part + _sigmoid(c) * (_NP_ACTS[name](hh) - part))
                    for k, name in enumerate(rnn.PRIMITIVES[1:], 1))
        s = s + betas[i][j] * channel_shuffle_reference(np.concatenate([mixed, states[j][:, units:]], -1), groups)
      states.append(bn(s))
      offset += i + 1
    return np.mean(states[-8:], 0)

  return cell


@pytest.mark.parametrize('groups', [2, 1])
def test_pc_darts_search_model_matches_reference(tiny, groups):
  """PC-DARTS's partial channels (K groups of units) and edge normalisation against the cell written out in float64
  NumPy, in evaluation mode, from mixing weights: random ones, and at K=2 all on ``none`` (each node then sums the
  shuffled bypass of its predecessors, weighted by β, zeros where the activations' units go). Tolerance as the plain
  cell's."""
  tokens, hidden, *_ = tiny
  rng = np.random.default_rng(groups)
  search = rnn.RNNModelSearch(NTOKEN, NHID, NHID, steps=STEPS, mixing='weights', partial_channels=groups,
                              edge_normalization=True)
  as_tree = lambda probs, betas: {rnn_genotypes.OPS_KEY: jnp.asarray(probs, jnp.float32),
                                  rnn_genotypes.EDGES_KEY: [jnp.asarray(b, jnp.float32) for b in betas]}
  betas = [rng.dirichlet(np.ones(i + 1)) for i in range(STEPS)]
  cases = [rng.dirichlet(np.ones(5), rnn_genotypes.num_edges(STEPS))]
  if groups > 1:
    cases.append(np.eye(5)[np.zeros(rnn_genotypes.num_edges(STEPS), int)])
  variables = jax.jit(lambda key: search.init(key, tokens, hidden, as_tree(cases[0], betas), train=False))(
      jax.random.key(3))
  assert variables['params']['Ws'].shape == (STEPS, NHID // groups, 2 * NHID // groups)
  apply = jax.jit(lambda tree: search.apply(variables, tokens, hidden, tree, train=False))
  for probs in cases:
    log_probs, h_last, *_ = apply(as_tree(probs, betas))
    cell = _pc_search_cell(probs, betas, groups, lambda s: s / np.sqrt(1 + 1e-5))
    ref_log_probs, ref_h = _reference_outputs(variables['params'], tokens, hidden, cell)
    np.testing.assert_allclose(log_probs, ref_log_probs, atol=1e-4)
    np.testing.assert_allclose(h_last, ref_h, atol=1e-4)


def test_search_model_in_training_matches_reference(tiny):
  """Training mode as PyTorch's ``BatchNorm1d(affine=False).train()``: every call (s0 and each node, at every time
  step) normalised by its own batch's mean and biased variance; the one set of running statistics updated at every
  call with momentum 0.1 and the unbiased variance."""
  tokens, hidden, alphas, _, variables = tiny
  search = rnn.RNNModelSearch(NTOKEN, NHID, NHID, steps=STEPS, dropout=0.0, dropouth=0.0, dropoutx=0.0,
                              dropouti=0.0, dropoute=0.0)
  running = {'mean': np.zeros(NHID), 'var': np.ones(NHID)}

  def bn(s):
    mean, var = s.mean(0), s.var(0)
    running['mean'] = 0.9 * running['mean'] + 0.1 * mean
    running['var'] = 0.9 * running['var'] + 0.1 * var * BATCH / (BATCH - 1)
    return (s - mean) / np.sqrt(var + 1e-5)

  (log_probs, h_last, *_), updates = jax.jit(lambda: search.apply(
      variables, tokens, hidden, alphas, train=True, rngs={'dropout': jax.random.key(0)},
      mutable=['batch_stats']))()
  ref_log_probs, ref_h = _reference_outputs(variables['params'], tokens, hidden, _search_cell(alphas, bn))
  # float32, states normalised over a batch of 2 (|s| <= 1): agreement to ~1e-5.
  np.testing.assert_allclose(log_probs, ref_log_probs, atol=1e-4)
  np.testing.assert_allclose(h_last, ref_h, atol=1e-4)
  for key in ('mean', 'var'):
    np.testing.assert_allclose(updates['batch_stats']['bn'][key], running[key], atol=1e-4)


def test_retrain_model_matches_reference(tiny):
  genotype = rnn.ENAS  # 11 nodes, a concat that skips states
  tokens, hidden, *_ = tiny
  model = rnn.RNNModel(NTOKEN, NHID, NHID, genotype=genotype)
  variables = jax.jit(lambda key: model.init(key, tokens, hidden, train=False))(jax.random.key(4))

  def cell(s0, Ws):
    states = [s0]
    for i, (name, j) in enumerate(genotype.recurrent):
      c, hh = np.split(states[j] @ Ws[i], 2, axis=-1)
      states.append(states[j] + _sigmoid(c) * (_NP_ACTS[name](hh) - states[j]))
    return np.mean([states[i] for i in genotype.concat], 0)

  log_probs, h_last, *_ = jax.jit(lambda: model.apply(variables, tokens, hidden, train=False))()
  ref_log_probs, ref_h = _reference_outputs(variables['params'], tokens, hidden, cell)
  np.testing.assert_allclose(log_probs, ref_log_probs, atol=1e-5)
  np.testing.assert_allclose(h_last, ref_h, atol=1e-5)


def test_padding_past_length_changes_nothing(tiny):
  """A batch padded past `length` gives the unpadded batch's hidden state, BN statistics and losses."""
  tokens, hidden, *_ = tiny
  search = rnn.RNNModelSearch(NTOKEN, NHID, NHID, steps=1)
  alphas = jnp.ones((1, 5))
  variables = jax.jit(lambda key: search.init(key, tokens, hidden, alphas, train=False))(jax.random.key(3))
  key = {'dropout': jax.random.key(5)}
  padded = jnp.concatenate([tokens, tokens[:, :2]], 1)
  apply = jax.jit(lambda tokens, length: search.apply(variables, tokens, hidden, alphas, train=True, length=length,
                                                      rngs=key, mutable=['batch_stats']))
  short, short_stats = apply(tokens, TIME)
  long, long_stats = apply(padded, TIME)
  np.testing.assert_allclose(long[1], short[1], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), long_stats, short_stats)
  targets = jnp.roll(tokens, -1, 1)
  losses = jax.jit(lambda outputs, targets, length: rnn.sequence_losses(outputs[0], targets, outputs[2], outputs[3],
                                                                        length, tar=1e-3, ar=1e-2))
  short_losses = losses(short, targets, TIME)
  long_losses = losses(long, jnp.concatenate([targets, targets[:, :2]], 1), TIME)
  np.testing.assert_allclose(long_losses, short_losses, rtol=1e-6)
  assert not np.allclose(short_stats['batch_stats']['bn']['mean'], 0)  # training updates the running statistics


# ---------------------------------------------------------------------------------------------------------------------
# A genotype's mixing weights (the selections that score architectures on the supernet).


def _space(**model):
  from darts_jax.spaces.rnn import RNNSpace
  from darts_jax.training.config_utils import load_config_module
  config = load_config_module('search_ptb_quick').get_config()
  config.model.update(steps=STEPS, **model)
  return RNNSpace(config)


def _sampled_genotype(space, alphas):
  """A random genotype (`random_search.sample_genotypes`, the space's rule on normal alphas) that reads some node
  other than the cell's first state and uses two activations or more, so that picking a wrong row would show."""
  from darts_jax.tasks import random_search
  sampled = list(random_search.sample_genotypes(space, alphas, 4, seed=0))
  assert all(rnn_genotypes.validate_genotype(g) == g for g in sampled) and len(set(map(repr, sampled))) > 1
  genotype = next(g for g in sampled if any(j for _, j in g.recurrent) and len({op for op, _ in g.recurrent}) > 1)
  return genotype


def test_genotype_weights_make_the_supernet_the_genotypes_model(tiny):
  """The supernet mixed by `RNNSpace.genotype_weights` of a random genotype is the genotype's own language model
  (`RNNModel`, a separate module) with the same parameters, in evaluation mode with running statistics that make the
  search cell's BatchNorm the identity (variance 1 − eps). Tolerance: float32 rounding over 5 time steps (the
  supernet adds the other predecessors' exact zeros and groups its sums differently). A genotype of another size
  than the supernet's is one line."""
  tokens, hidden, alphas, _, variables = tiny
  space = _space()
  genotype = _sampled_genotype(space, np.zeros(alphas.shape, np.float32))
  weights = space.genotype_weights(genotype, np.zeros(alphas.shape, np.float32))
  assert weights.dtype == np.float32 and weights.sum() == STEPS and np.all(weights[:, 0] == 0)
  # DARTS-PT's op names of the rows (`row_ops`) name the genotype's activations on its rows.
  chosen = [ops[k] for ops, row, k in zip(space.row_ops(weights), weights, weights.argmax(-1)) if row.any()]
  assert chosen == [op for op, _ in genotype.recurrent]
  search = rnn.RNNModelSearch(NTOKEN, NHID, NHID, steps=STEPS, mixing='weights')
  model = rnn.RNNModel(NTOKEN, NHID, NHID, genotype=genotype)
  identity_bn = {'bn': {'mean': jnp.zeros(NHID), 'var': jnp.full(NHID, 1 - 1e-5)}}
  supernet_out, model_out = jax.jit(lambda: (
      search.apply({'params': variables['params'], 'batch_stats': identity_bn}, tokens, hidden, weights,
                   train=False),
      model.apply({'params': variables['params']}, tokens, hidden, train=False)))()
  for got, expected in zip(supernet_out[:2], model_out[:2]):
    np.testing.assert_allclose(got, expected, atol=1e-5)
  with pytest.raises(ValueError, match='cannot run a genotype of 8 nodes'):
    space.genotype_weights(rnn.DARTS_V2, alphas)


def test_genotype_weights_with_partial_channels_keep_the_genotypes_path_alone(tiny):
  """With PC-DARTS's options (K=2, edge normalisation) the weights' one-hot edge weights also drop the bypassed
  units of the predecessors the genotype does not read: the supernet is the genotype's cell with PC-DARTS's split
  and shuffle on its one predecessor per node, written out in float64 NumPy (evaluation mode, initial running
  statistics). Tolerance as the plain cell's reference."""
  from test_nb201 import channel_shuffle_reference
  tokens, hidden, *_ = tiny
  space = _space(partial_channels=2, edge_normalization=True)
  alphas = jax.tree.map(np.asarray, rnn.init_alphas(jax.random.key(0), STEPS, edge_normalization=True))
  genotype = _sampled_genotype(space, alphas)
  weights = space.genotype_weights(genotype, alphas)
  assert [list(b) for b in weights[rnn_genotypes.EDGES_KEY]] == [
      [float(k == j) for k in range(i + 1)] for i, (_, j) in enumerate(genotype.recurrent)]
  search = rnn.RNNModelSearch(NTOKEN, NHID, NHID, steps=STEPS, mixing='weights', partial_channels=2,
                              edge_normalization=True)
  variables = jax.jit(lambda key: search.init(key, tokens, hidden, weights, train=False))(jax.random.key(3))
  log_probs, h_last, *_ = jax.jit(lambda: search.apply(variables, tokens, hidden, weights, train=False))()
  units, bn = NHID // 2, lambda s: s / np.sqrt(1 + 1e-5)

  def cell(s0, Ws):
    states = [bn(s0)]
    for i, (name, j) in enumerate(genotype.recurrent):
      part = states[j][:, :units]
      c, hh = np.split(part @ Ws[i], 2, axis=-1)
      node = part + _sigmoid(c) * (_NP_ACTS[name](hh) - part)
      states.append(bn(channel_shuffle_reference(np.concatenate([node, states[j][:, units:]], -1), 2)))
    return np.mean([states[i] for i in genotype.concat], 0)

  ref_log_probs, ref_h = _reference_outputs(variables['params'], tokens, hidden, cell)
  np.testing.assert_allclose(log_probs, ref_log_probs, atol=1e-4)
  np.testing.assert_allclose(h_last, ref_h, atol=1e-4)
