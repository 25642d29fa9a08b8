"""P-DARTS's stages (`darts_jax.tasks.pdarts`): the pruning between stages, the final rule with its skip limit, the
skip-dropout schedule, the staged run in one workdir, resumable across stages (the stage's search stubbed: it
writes the alphas a search would), and two stages of real searches of the CNN space on a TinySupernet with the
P-DARTS hooks (`StagedTinySupernet`)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_search import TinySupernet, tiny_config

from darts_jax.cnn import genotypes
from darts_jax.cnn.ops import BatchNorm
from darts_jax.dynamics import relaxations
from darts_jax.spaces import cnn as cnn_space
from darts_jax.tasks import pdarts, search
from darts_jax.training import reporting
from darts_jax.training.config_utils import load_config_module


class StagedTinySupernet(TinySupernet):
  """TinySupernet with the interface of the CNN space's P-DARTS hooks: explicit `edge_ops` (the alphas' columns:
  ``supernet.supernet_edge_ops``) and the skip dropout's rate and key, which here drop hidden units in training (it
  has no identity op)."""
  edge_ops: tuple | None = None

  @nn.compact
  def __call__(self, x, alphas, train=True, skip_dropout_rate=None, dropout_key=None):
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    h = jnp.tanh(BatchNorm(axis_name=self.axis_name)(nn.Dense(self.C, dtype=self.dtype)(x), train))
    if train and dropout_key is not None:
      h = jnp.where(jax.random.bernoulli(dropout_key, 1 - skip_dropout_rate, h.shape), h / (1 - skip_dropout_rate), 0)
    weights = alphas if self.mixing == 'weights' else jax.tree.map(lambda a: jax.nn.softmax(a, -1), alphas)
    mix = (weights['normal'] + weights['reduce'] ** 2).sum(0)  # (ops per edge,)
    features = (h[:, :, None] * mix.astype(self.dtype)).reshape(x.shape[0], -1).astype(jnp.float32)
    return nn.Dense(self.num_classes)(features)

STEPS = 4
EDGES = genotypes.num_edges(STEPS)


def test_pruning_keeps_the_strongest_ops_of_each_edge_and_drops_none_first():
  op_sets = {'normal': [['none', 'skip_connect', 'sep_conv_3x3', 'max_pool_3x3']], 'reduce': [['a', 'b', 'c']]}
  probs = {'normal': np.array([[0.7, 0.1, 0.15, 0.05]]), 'reduce': np.array([[0.2, 0.2, 0.6]])}
  assert pdarts.prune_op_sets(op_sets, probs, 2) == {'normal': [['none', 'sep_conv_3x3']],
                                                     'reduce': [['b', 'c']]}  # a tie drops the first
  assert pdarts.prune_op_sets(op_sets, probs, 2, drop_none=True)['normal'] == [['skip_connect', 'sep_conv_3x3']]
  with pytest.raises(ValueError, match='4 ops on an edge but 3 weights'):
    pdarts.prune_op_sets(op_sets, {'normal': np.ones((1, 3)), 'reduce': probs['reduce']}, 2)


def test_final_rule_is_dartss_and_the_skip_limit_drops_the_weakest_selected_skip():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(len(genotypes.PRIMITIVES)), size=EDGES)
  ops = [genotypes.PRIMITIVES] * EDGES
  # Independent reference: the original's rule (cnn.genotypes.derive_genotype) on the same weights.
  reference = genotypes.derive_genotype({'normal': probs, 'reduce': probs}, from_weights=True).normal
  assert pdarts.parse_cell(probs, ops, STEPS) == [tuple(g) for g in reference]
  # A cell of skips everywhere, each edge's skip weight its own: the limit keeps the 2 strongest selected skips.
  skip = genotypes.PRIMITIVES.index('skip_connect')
  probs = np.full((EDGES, len(genotypes.PRIMITIVES)), 0.01)
  probs[:, skip] = np.linspace(0.5, 0.9, EDGES)
  probs[:, genotypes.PRIMITIVES.index('sep_conv_3x3')] = 0.3
  gene = pdarts.limit_skips(probs, ops, STEPS, max_skips=2)
  assert sum(op == 'skip_connect' for op, _ in gene) == 2
  assert pdarts.parse_cell(probs, ops, STEPS) == [('skip_connect', j) for j in (1, 0, 2, 1, 3, 2, 4, 3)]
  # The 8 selected edges' skips by weight: the last node's (rows 13, 12) are the strongest; the others became
  # sep_conv_3x3 (their next best), and the topology follows the new strengths (0.3 everywhere but the skips).
  assert [g for g in gene if g[0] == 'skip_connect'] == [('skip_connect', 4), ('skip_connect', 3)]
  assert gene[:6] == [('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
                      ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]


def test_skip_dropout_decays_per_epoch_as_the_code():
  schedule = relaxations.skip_dropout_schedule(0.1, num_epochs=25, warmup_epochs=10, steps_per_epoch=7)
  rates = np.asarray([schedule(step) for step in (0, 6, 7, 70, 105)])
  np.testing.assert_allclose(rates, [0.1 * 24 / 25, 0.1 * 24 / 25, 0.1 * 23 / 25, 0.1, 0.1 * np.exp(-1)], rtol=1e-6)


def _config():
  return load_config_module('search_pdarts_quick').get_config()


class _StubSearch:
  """A stage's search: records its config, writes the alphas of its last epoch (skip strongest everywhere, then
  the ops in their order) and its genotype.json; fails at stage `fail_at` once."""

  def __init__(self, fail_at=None):
    self.configs, self.fail_at = [], fail_at

  def __call__(self, config, directory):
    self.configs.append(config)
    if len(self.configs) - 1 == self.fail_at:
      self.fail_at = None
      raise KeyboardInterrupt
    directory.mkdir(parents=True, exist_ok=True)
    op_sets = json.loads(config.model.edge_ops)
    alphas = {}
    for kind, edges in op_sets.items():
      alphas[kind] = [[3.0 if op == 'skip_connect' else -0.1 * k for k, op in enumerate(ops)] for ops in edges]
    reporting.append_jsonl(directory / 'alphas.jsonl', {'step': 1, 'epoch': 1, **alphas})
    (directory / 'genotype.json').write_text('{}')


def test_stages_prune_carry_the_op_sets_and_resume(tmp_path):
  config = _config()
  stub = _StubSearch(fail_at=1)
  with pytest.raises(KeyboardInterrupt):
    pdarts.pdarts(config, tmp_path, run_stage=stub)
  genotype = pdarts.pdarts(config, tmp_path, run_stage=stub)
  # Stage 0 ran once; stage 1 ran twice (interrupted, then resumed); stage 2 once.
  assert [c.model.layers for c in stub.configs] == [3, 4, 4, 5]
  assert all('pdarts' not in c for c in stub.configs)
  assert [c.model.skip_dropout for c in stub.configs] == [0.1, 0.4, 0.4, 0.7]
  sets = [json.loads(c.model.edge_ops) for c in stub.configs]
  assert sets[0]['normal'][0] == list(genotypes.PRIMITIVES)
  # The stub's alphas: skip first, then the ops in order: the 5 kept are skip and the first 4 others.
  assert sets[1]['normal'][0] == ['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3']
  # Before the last stage 'none' goes first whatever its weight.
  assert sets[3]['reduce'][5] == ['max_pool_3x3', 'avg_pool_3x3', 'skip_connect']
  assert sum(op == 'skip_connect' for op, _ in genotype.normal) == 2
  assert all(op == 'skip_connect' for op, _ in genotype.reduce)  # no limit in the reduction cell
  record = json.loads((tmp_path / pdarts.PDARTS_FILE).read_text())
  assert [s['op_sets'] for s in record['stages']] == [sets[0], sets[1], sets[3]]
  saved = json.loads((tmp_path / 'genotype.json').read_text())
  assert [tuple(g) for g in saved['normal']] == [tuple(g) for g in genotype.normal]
  # Done: a third run runs no stage.
  pdarts.pdarts(config, tmp_path, run_stage=stub)
  assert len(stub.configs) == 4


def test_a_space_without_per_edge_op_sets_is_refused(tmp_path):
  config = _config()
  for key in ('edge_ops', 'skip_dropout'):
    if key in config.model:
      del config.model[key]
  with pytest.raises(ValueError, match='P-DARTS needs the search config keys model.edge_ops, model.skip_dropout'):
    pdarts.pdarts(config, tmp_path, run_stage=_StubSearch())


def test_two_stages_of_cnn_searches_carry_the_pruned_op_sets(tmp_path, data_dir, monkeypatch):
  """The staged run with the one search task on the CNN space: stage 1's supernet, alphas and genotype have the 4 ops
  per edge that stage 0's alphas kept ('none' dropped before the last stage), and the final genotype picks from them,
  with at most `max_skips` skips in the normal cell."""
  monkeypatch.setattr(cnn_space, 'SearchNetwork', StagedTinySupernet)
  for module, name in ((cnn_space.plots, 'plot_genotype'), (cnn_space.run_plots, 'plot_search'),
                       (search.curves, 'plot_curves')):  # tested elsewhere; matplotlib takes seconds per figure
    monkeypatch.setattr(module, name, lambda *args, **kwargs: None)
  config = load_config_module('search_pdarts').add_stages(
      tiny_config(data_dir, hypergradient='first_order', max_steps_per_epoch=2, log_every_steps=2,
                  **{'diagnostics.hessian_iterations': 0}), [1, 2], warmup_epochs=1)
  config.pdarts.update(num_ops=[8, 4], skip_dropout=[0.1, 0.4], add_width=[0, 0], max_skips=1)
  genotype = pdarts.pdarts(config, tmp_path)
  op_sets = json.loads((tmp_path / pdarts.PDARTS_FILE).read_text())['stages'][1]['op_sets']
  assert all(len(ops) == 4 and 'none' not in ops for kind in op_sets for ops in op_sets[kind])
  stage = pdarts.stage_dir(tmp_path, 1)
  alphas = reporting.read_jsonl(stage / 'alphas.jsonl')
  assert np.asarray(alphas[-1]['normal']).shape == (EDGES, 4)
  # After the weight-only first epoch the alphas move.
  start = reporting.read_jsonl(pdarts.stage_dir(tmp_path, 0) / 'alphas.jsonl')
  assert np.abs(np.asarray(start[-1]['normal']) - np.asarray(start[0]['normal'])).max() > 1e-3
  offsets = np.cumsum([0] + [2 + node for node in range(STEPS)])
  for kind in ('normal', 'reduce'):
    stage_genotype = json.loads((stage / 'genotype.json').read_text())[kind]
    for cell in (stage_genotype, getattr(genotype, kind)):
      assert all(op in op_sets[kind][offsets[i // 2] + j] for i, (op, j) in enumerate(cell))
  assert sum(op == 'skip_connect' for op, _ in genotype.normal) <= 1
