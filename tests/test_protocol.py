"""The protocol's orchestration (darts_jax.tasks.protocol) with the search and the retraining replaced by stand-ins
that write what the real ones write: which runs it starts with which configs, the selection, resume by skipping
finished runs, the summaries. The real stages are tested in test_search*.py and test_retrain.py; the quick protocol
runs them end to end (README)."""
import json

import numpy as np
import pytest

from darts_jax.training.config_utils import load_config_module
from darts_jax.cnn import genotype_formats, genotypes
from darts_jax.tasks import protocol, retrain, search
from darts_jax.training import reporting

protocol_quick = load_config_module('protocol_quick')
CANDIDATES = [genotypes.DARTS_V1, genotypes.DARTS_V2, genotypes.DARTS_V1]  # seed 2 finds seed 0's genotype
ACCURACY = {genotype_formats.genotype_to_json(genotypes.DARTS_V1): 0.5,
            genotype_formats.genotype_to_json(genotypes.DARTS_V2): 0.7}


class StandIns:
  """`search.search` and `retrain.retrain` stand-ins logging their calls."""

  def __init__(self):
    self.calls = []

  def search(self, config, workdir):
    self.calls.append(('search', config.num_seeds))
    for s in range(config.num_seeds):
      search.seed_dir(workdir, s).mkdir(parents=True)
      (search.seed_dir(workdir, s) / 'genotype.json').write_text(genotype_formats.genotype_to_json(CANDIDATES[s]))
    reporting.append_jsonl(workdir / 'metrics.jsonl', {'step': 6, 'epoch': 1, 'epoch_time_s': 30.0})
    reporting.write_json(workdir / search.SUMMARY_FILE, {})

  def retrain(self, config, workdir):
    genotype = genotype_formats.genotype_to_json(genotype_formats.parse_genotype(config.genotype))
    self.calls.append((config.evaluate_on, config.seed, genotype, workdir.name))
    split = 'valid' if config.evaluate_on == 'search_valid' else 'test'
    accuracy = ACCURACY[genotype] + (0.01 * config.seed if split == 'test' else 0.0)
    results = {f'{split}_accuracy': accuracy, f'{split}_loss': 1.0, 'params': 1000, 'wall_time_s': 60.0}
    workdir.mkdir(parents=True)
    reporting.write_json(workdir / retrain.RESULTS_FILE, results)
    return results


@pytest.fixture
def stand_ins(monkeypatch):
  stand_ins = StandIns()
  monkeypatch.setattr(search, 'search', stand_ins.search)
  monkeypatch.setattr(retrain, 'retrain', stand_ins.retrain)
  return stand_ins


def _config(**overrides):
  config = protocol_quick.get_config()
  config.search.num_seeds, config.repeats = 3, 3
  config.update(overrides)
  return config


def test_selects_on_validation_then_tests_the_winner_over_repeats(stand_ins, tmp_path):
  config = _config()
  summary = protocol.protocol(config, tmp_path)
  v2 = genotype_formats.genotype_to_json(genotypes.DARTS_V2)
  selection = [c for c in stand_ins.calls if c[0] == 'search_valid']
  final = [c for c in stand_ins.calls if c[0] == 'test']
  assert stand_ins.calls[0] == ('search', 3)
  # Seed 2's genotype is seed 0's: trained once. Never the test set for selection.
  assert [c[3] for c in selection] == ['seed_0', 'seed_1'] and all(c[1] == config.selection.seed for c in selection)
  assert summary['winner'] == 1 and summary['candidates'][2]['same_as'] == 0
  assert [c[1:] for c in final] == [(config.final.seed + r, v2, f'repeat_{r}') for r in range(3)]
  errors = 100 * (1 - (0.7 + 0.01 * (config.final.seed + np.arange(3))))
  assert summary['test_error_mean'] == pytest.approx(errors.mean())
  assert summary['test_error_std'] == pytest.approx(errors.std(ddof=1))
  assert summary['wall_time_s'] == {'search': 30.0, 'selection': 120.0, 'final': 180.0}
  assert json.loads((tmp_path / 'summary.json').read_text()) == summary
  table = (tmp_path / 'summary.md').read_text()
  assert '70.00%' in table and '(winner)' in table and f'{summary["test_error_mean"]:.2f} ± ' in table

  # Running again skips everything finished; a run without its results is run again.
  stand_ins.calls.clear()
  (tmp_path / 'final' / 'repeat_1' / 'results.json').unlink()
  (tmp_path / 'final' / 'repeat_1').rmdir()
  assert protocol.protocol(config, tmp_path) == summary
  assert stand_ins.calls == [('test', config.final.seed + 1, v2, 'repeat_1')]


def test_bad_configs_stop_before_any_run(stand_ins, tmp_path):
  config = _config()
  config.selection.evaluate_on = 'test'
  with pytest.raises(ValueError, match="selection.evaluate_on must be 'search_valid'"):
    protocol.protocol(config, tmp_path / 'a')
  assert not (tmp_path / 'a').exists()
  protocol.protocol(_config(), tmp_path / 'b')
  changed = _config()
  changed.final.num_epochs = 4
  with pytest.raises(ValueError, match=r'another configuration \(final.num_epochs: 3 -> 4\)'):
    protocol.protocol(changed, tmp_path / 'b')
  assert stand_ins.calls.count(('search', 3)) == 1
  stand_ins.calls.clear()
  assert len(protocol.protocol(_config(repeats=4), tmp_path / 'b')['final']) == 4  # one more repeat, the rest kept
  assert [c[3] for c in stand_ins.calls] == ['repeat_3']


def test_selection_retraining_trains_and_scores_on_the_search_split_only(data_dir, tmp_path, monkeypatch):
  """`retrain` with ``evaluate_on='search_valid'``: batches from the search split's training half, evaluation on its
  validation half (the loop is replaced: only where the data goes is checked)."""
  retrain_quick = load_config_module('retrain_quick')
  from darts_jax import data
  from darts_jax.training import loop
  from test_retrain import SMALL

  seen = {}

  def evaluate_batches(p_eval, r_state, batches, axis_name):
    seen['evaluated'] = np.concatenate([images[mask > 0] for images, _, mask in batches])
    return {'loss': 1.0, 'accuracy': 0.5}

  def train(task, config, workdir):
    seen['trained'] = np.concatenate([np.asarray(images).reshape((-1,) + images.shape[-3:])
                                      for images, _ in task.batches(0, 0)])
    record = {'epoch': 1, **task.evaluate(0, 1, None, task.state)}
    return loop.Outcome(state=task.state, step=1, record=record, wall_time_s=1.0)

  monkeypatch.setattr(loop, 'evaluate_batches', evaluate_batches)
  monkeypatch.setattr(loop, 'train', train)
  config = retrain_quick.get_config()
  config.update({'genotype': genotype_formats.genotype_to_json(SMALL), 'evaluate_on': 'search_valid', 'batch_size': 16,
                 'num_epochs': 1, 'progress': False})
  config.data.update({'dir': str(data_dir), 'subset': 0, 'cutout': 0})
  config.model.update({'init_channels': 2, 'layers': 3})
  results = retrain.retrain(config, tmp_path)
  train_half, _, valid_half, _ = data.search_split(data.load_dataset('fashion_mnist', str(data_dir)))
  assert results['valid_accuracy'] == 0.5 and 'test_accuracy' not in results
  np.testing.assert_array_equal(seen['evaluated'], valid_half)
  assert len(seen['trained']) == 48 and all((train_half == image).all(axis=(1, 2, 3)).any() for image in seen['trained'])
