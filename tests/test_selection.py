"""DARTS-PT selection, the magnitude rule and the random baselines (random genotypes, random search with weight
sharing) on a finished search workdir of the example space (tests/example_space.py), through
`darts_jax.tasks.selection`, `darts_jax.tasks.random_search` and the ``darts-select`` command line."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import example_space
from example_space import EDGES, OPS, ExampleSpace
from darts_jax.dynamics import relaxations
from darts_jax.tasks import random_search, retrain, search, selection


def _config(**overrides):
  config = example_space.search_config()
  config.update_from_flattened_dict(overrides)
  return config


def _accuracy(params, weights, config):
  """The supernet's validation accuracy with `weights`, in float64 numpy: an independent forward pass."""
  d = config.data
  x, labels = example_space.make_data(d.seed, d.train_size + d.valid_size, d.dim)
  x, labels = x[d.train_size:].astype(np.float64), labels[d.train_size:]
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  ops = {'zero': lambda h, e: 0 * h, 'identity': lambda h, e: h, 'tanh': lambda h, e: np.tanh(h),
         'relu': lambda h, e: np.maximum(h, 0),
         'dense': lambda h, e: h @ p['edges'][f'edge_{e}']['kernel'] + p['edges'][f'edge_{e}']['bias']}
  nodes = {'x': x}
  for node in example_space.NODES:
    nodes[node] = sum(sum(weights[e, k] * ops[name](nodes[src], e) for k, name in enumerate(OPS))
                      for e, (src, dst) in enumerate(EDGES) if dst == node)
  h = np.concatenate([nodes[n] for n in example_space.NODES], -1)
  logits = h @ p['readout']['kernel'] + p['readout']['bias']
  return np.mean(np.argmax(logits, -1) == labels)


@pytest.fixture(scope='module')
def searched(tmp_path_factory):
  """A first-order search of the example space (4 epochs of 16 steps)."""
  workdir = tmp_path_factory.mktemp('searched')
  return workdir, search.search(_config(), workdir)


def test_magnitude_selection_is_the_searchs_genotype(searched):
  workdir, _ = searched
  genotype = selection.select(workdir, selection.selection_config('magnitude'))
  assert genotype == ExampleSpace(_config()).load_genotype(str(workdir))
  assert json.loads((workdir / 'selection_magnitude' / 'genotype.json').read_text())['ops'] == list(genotype)


def test_pt_keeps_the_op_whose_removal_hurts_most(searched):
  workdir, state = searched
  options = selection.selection_config('pt')
  options.update(tune_steps=2, eval_batches=0)
  genotype = selection.select(workdir, options)
  record = json.loads((workdir / 'selection_pt' / 'selection.json').read_text())
  assert len(record['edges']) == len(EDGES) and sorted(record['order']) == sorted(record['edge_drops'])
  for edge in record['edges']:  # every edge keeps the op of the largest drop, never 'zero' (excluded)
    drops = {int(k): v for k, v in edge['drops'].items()}
    assert set(drops) == set(range(1, len(OPS))) and edge['kept'] == max(drops, key=drops.get)
  # The first decision is on the restored supernet, before any tuning: its accuracies recomputed independently
  # (float64 numpy; an argmax on 512 examples: equal unless a logit sits within float32 rounding of a tie).
  first = record['edges'][0]
  e = int(first['edge'].strip('[]'))
  weights = np.asarray(jax.nn.softmax(state.alphas), np.float64)
  assert first['valid_accuracy'] == pytest.approx(_accuracy(state.params, weights, _config()), abs=1 / 512)
  for k, drop in first['drops'].items():
    removed = weights.copy()
    removed[e, int(k)] = 0
    assert drop == pytest.approx(first['valid_accuracy'] - _accuracy(state.params, removed, _config()), abs=1 / 512)
  # The data reward relu on x→h1 (tests/example_space.py): removing it costs the most.
  assert genotype[0] == 'relu'
  assert json.loads((workdir / 'selection_pt' / 'genotype.json').read_text())['ops'] == list(genotype)


def test_random_genotypes_are_uniform_and_retrain(tmp_path):
  space = ExampleSpace(_config())
  samples = list(random_search.sample_genotypes(space, np.zeros((len(EDGES), len(OPS)), np.float32), 400, seed=0))
  counts = np.array([[sum(g[e] == op for g in samples) for op in OPS[1:]] for e in range(len(EDGES))])
  # Uniform over the 4 ops the rule chooses from: 100 ± 8.7 (binomial sd) each; 5 sd bounds.
  assert np.all(np.abs(counts - 100) < 44), counts
  genotypes = random_search.random_genotypes(_config(), tmp_path / 'random', 3, seed=1)
  assert genotypes == list(random_search.sample_genotypes(space, np.zeros((3, 5)), 3, seed=1))
  config = example_space.retrain_config()
  config.genotype = str(tmp_path / 'random' / 'random_2')
  config.num_epochs = 1
  results = retrain.retrain(config, tmp_path / 'retrained')
  assert results['genotype'] == {'ops': list(genotypes[2])}


def test_uniform_path_draws_one_uniform_op_per_row():
  alphas = np.zeros((4000, len(OPS)), np.float32)
  alphas[:, 0] = 10  # the alphas play no part
  sample = np.asarray(relaxations.Relaxation('uniform_path').sample(jax.random.key(0), alphas))
  assert np.all(sample.sum(-1) == 1) and set(np.unique(sample)) == {0.0, 1.0}
  # 800 ± 25 (binomial sd) per op; 5 sd bounds.
  assert np.all(np.abs(sample.sum(0) - 800) < 125), sample.sum(0)


@pytest.mark.slow
def test_random_search_with_weight_sharing_keeps_the_best_sample(tmp_path):
  workdir = tmp_path / 'rsws'
  config = _config(**{'relaxation.name': 'uniform_path', 'num_epochs': 2})
  state = search.search(config, workdir)
  initial = example_space.create_search_state(jax.random.key(0), 8, state.weight_tx, state.arch_tx).alphas
  # No gradient reaches the alphas: Adam at zero gradient leaves them (a gradient would move them by ~0.1 per step;
  # the tolerance is the rounding of the initialisation, jitted in the search).
  np.testing.assert_allclose(state.alphas, initial, rtol=1e-6, atol=0)
  # The command line, as a user runs it (the example space's module on the path).
  env = {**__import__('os').environ, 'PYTHONPATH': str(__import__('pathlib').Path(example_space.__file__).parent)}
  done = subprocess.run([sys.executable, '-m', 'darts_jax.cli.select', '--workdir', str(workdir), '--selection',
                         'best_of_n', '--num_samples', '6'], env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  record = json.loads((workdir / 'selection_best_of_n' / 'selection.json').read_text())
  accuracies = [s['valid_accuracy'] for s in record['samples']]
  assert len(accuracies) == 6 and record['best'] == int(np.argmax(accuracies))
  space = ExampleSpace(config)
  expected = list(random_search.sample_genotypes(space, np.zeros((3, 5)), 6, seed=0))
  assert [tuple(s['genotype']['ops']) for s in record['samples']] == expected
  for s in record['samples'][:2]:  # scored with the genotype's ops alone (float64 reference, as above)
    weights = space.genotype_weights(tuple(s['genotype']['ops']), np.zeros((3, 5), np.float32))
    assert s['valid_accuracy'] == pytest.approx(_accuracy(state.params, weights, config), abs=1 / 512)
  assert space.load_genotype(str(workdir / 'selection_best_of_n')) == expected[record['best']]


def test_search_command_line_derives_by_the_configs_selection(tmp_path):
  """``darts-search --config.selection=pt`` (DARTS-PT after the search) writes ``selection_pt/`` beside the search's
  genotype, with the quick options of ``--config.selection_quick``; an unknown selection is one line before any
  search."""
  config_file = tmp_path / 'example_config.py'
  config_file.write_text('from example_space import search_config\n\n\ndef get_config():\n'
                         '  config = search_config()\n  config.selection = "magnitude"\n'
                         '  config.selection_quick = False\n  return config\n')
  env = {**__import__('os').environ, 'PYTHONPATH': str(__import__('pathlib').Path(example_space.__file__).parent)}
  command = [sys.executable, '-m', 'darts_jax.cli.search', '--config', str(config_file), '--workdir',
             str(tmp_path / 'run'), '--config.num_epochs=1']
  bad = subprocess.run(command + ['--config.selection=largest'], env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert "Unknown config.selection 'largest'" in bad.stderr and not (tmp_path / 'run' / 'genotype.json').exists()
  done = subprocess.run(command + ['--config.selection=pt', '--config.selection_quick=True'], env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  record = json.loads((tmp_path / 'run' / 'selection_pt' / 'selection.json').read_text())
  assert record['method'] == 'pt' and record['options']['tune_steps'] == 10
  assert len(record['order']) == len(EDGES)
  assert (tmp_path / 'run' / 'genotype.json').is_file()


@pytest.mark.slow
def test_pt_and_best_of_n_on_a_nas_bench_201_search(data_dir, tmp_path):
  """DARTS-PT and best of N on a tiny NAS-Bench-201 search with PC-DARTS's edge normalisation (its β leaves are no
  edges; `NB201Space.genotype_weights` scores the samples): PT decides the 6 edges, never on ``none``, and its
  genotype keeps each edge's kept op; best of N keeps the sample of the best accuracy, drawn as
  `random_search.sample_genotypes` draws them; both genotypes load from their directories."""
  from test_nb201 import _packaged
  from darts_jax.nb201 import genotypes as nb201_genotypes
  config = _packaged('search_nb201_quick', **{
      'num_epochs': 1, 'max_steps_per_epoch': 2, 'batch_size': 8, 'data.dir': str(data_dir), 'data.subset': 0,
      'data.image_size': 8, 'diagnostics.hessian_iterations': 0, 'checkpoint_every_minutes': 0.0, 'progress': False,
      'compilation_cache_dir': '', 'model.edge_normalization': True})
  workdir = tmp_path / 'search'
  state = search.search(config, workdir)
  pt_options = selection.selection_config('pt', quick=True)
  pt_options.update(tune_steps=1, eval_batches=1)
  genotype = selection.select(workdir, pt_options)
  record = json.loads((workdir / 'selection_pt' / selection.SELECTION_FILE).read_text())
  assert len(record['edges']) == len(nb201_genotypes.EDGES) and all(e['kept'] != 0 for e in record['edges'])
  kept = {e['edge']: nb201_genotypes.OPS[e['kept']] for e in record['edges']}
  assert [kept[f"['cell'][{e}]"] for e in range(len(nb201_genotypes.EDGES))] == list(genotype)
  space = selection.restore_supernet(workdir).space
  assert space.load_genotype(str(workdir / 'selection_pt')) == genotype
  best_options = selection.selection_config('best_of_n', quick=True)
  best_options.update(num_samples=3, eval_batches=1)
  best = selection.select(workdir, best_options)
  record = json.loads((workdir / 'selection_best_of_n' / selection.SELECTION_FILE).read_text())
  alphas = jax.tree.map(np.asarray, state.alphas)
  expected = list(random_search.sample_genotypes(space, alphas, 3, seed=0))
  assert [space.load_genotype(json.dumps(s['genotype'])) for s in record['samples']] == expected
  assert record['best'] == int(np.argmax([s['valid_accuracy'] for s in record['samples']]))
  assert best == expected[record['best']] == space.load_genotype(str(workdir / 'selection_best_of_n'))
