"""Several searches in one program (darts_jax.tasks.search with num_seeds = k), on test_search's TinySupernet and tiny data.

Seed s of a k-seed run must be the single run with seed + s. The vmapped program is another XLA program than the
single run's (batched dot products and reductions may be fused and ordered differently), so they agree to float32
rounding grown over a few steps, not bit for bit: rtol 1e-4 (observed differences ~1e-6).
"""
import json

import jax
import numpy as np
import pytest

from darts_jax.spaces import cnn as cnn_space
from darts_jax.tasks import search
from darts_jax.training import reporting
from darts_jax.training.checkpointing import Checkpointer
from test_search import TinySupernet, tiny_config

RTOL = 1e-4


@pytest.fixture(scope='module', autouse=True)
def tiny_supernet():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cnn_space, 'SearchNetwork', TinySupernet)
    yield


def _config(data_dir, **overrides):
  # One epoch of 6 steps; seed 3's single run is also test_search's, so its program comes from the compilation cache.
  return tiny_config(data_dir, **{'num_epochs': 1, 'checkpoint_every_minutes': 0.0, **overrides})


@pytest.fixture(scope='module')
def two_seeds(tmp_path_factory, data_dir):
  """A 2-seed run interrupted mid-epoch (after the checkpoint of step 2 and the records of step 4), then resumed."""
  workdir = tmp_path_factory.mktemp('two_seeds')
  config = _config(data_dir, num_seeds=2, checkpoint_every_minutes=1e-9)  # a checkpoint at every log step
  save = Checkpointer.save

  def interrupted_save(self, step, *args, **kwargs):
    if step == 4:
      raise KeyboardInterrupt
    return save(self, step, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(Checkpointer, 'save', interrupted_save)
    with pytest.raises(KeyboardInterrupt):
      search.search(config, workdir)
  assert [r['step'] for r in reporting.read_jsonl(workdir / 'metrics.jsonl')] == [2, 4]
  return workdir, search.search(config, workdir)


def _without_times(records):
  return [{k: v for k, v in r.items() if k not in ('epoch_time_s', 'images_per_s')} for r in records]


def test_each_seed_is_the_single_run_with_that_seed_through_a_resume(two_seeds, data_dir, tmp_path):
  workdir, state = two_seeds
  assert state.step.shape == (2,)
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['num_seeds'] == 2 and [r['seed'] for r in summary['runs']] == [2, 3]
  assert not np.allclose(state.alphas['normal'][0], state.alphas['normal'][1])  # the seeds differ
  # Seed 1 (config seed 3): its data order, augmentation key and initialisation are offset by one from the
  # config's seed; seed 0's are the config's.
  single_dir = tmp_path / 'single'
  single = search.search(_config(data_dir, seed=3, checkpoint_every_minutes=1e-9), single_dir)
  seed_dir = workdir / 'seed_1'
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6),
               search.seed_state(state, 1).alphas, single.alphas)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6),
               search.seed_state(state, 1).params, single.params)
  # The seed's directory holds what the single run writes, with the same records: those logged after the
  # interruption's checkpoint were dropped on resume and logged again, once.
  expected = sorted(p.name for p in single_dir.iterdir() if p.name not in ('checkpoints', 'tensorboard'))
  assert sorted(p.name for p in seed_dir.iterdir()) == expected
  assert json.loads((seed_dir / 'config.json').read_text()) == json.loads((single_dir / 'config.json').read_text())
  for name in ('metrics.jsonl', 'alphas.jsonl', 'genotypes.jsonl'):
    ours, theirs = (_without_times(reporting.read_jsonl(d / name)) for d in (seed_dir, single_dir))
    assert [sorted(r) for r in ours] == [sorted(r) for r in theirs], name
    assert [r['step'] for r in ours] == [r['step'] for r in theirs], name
  ours, theirs = (_without_times(reporting.read_jsonl(d / 'metrics.jsonl')) for d in (seed_dir, single_dir))
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], rtol=RTOL, atol=1e-6)
  assert (seed_dir / 'genotype.json').read_text() == (single_dir / 'genotype.json').read_text()
  genotype = json.loads((single_dir / 'genotype.json').read_text())
  assert summary['runs'][1]['genotype'] == {k: v for k, v in genotype.items() if k != 'cost'}


def test_a_seed_stops_early_at_its_first_epoch_the_rule_fires():
  rules = {'rule': 'stability', 'window': 5, 'factor': 1.3, 'start_epoch': 10, 'max_skip': 2, 'patience': 2}
  records = [{'step': 3 * e, 'epoch': e, 'unchanged_epochs': u} for e, u in zip(range(1, 6), [0, 1, 2, 3, 0])]
  records.insert(0, {'step': 2, 'loss': 1.0})  # interval records are ignored
  assert search._stop(records, rules) == (3, 'stability: the architecture has not changed for 2 epochs '
                                                   '(patience 2)')
  assert search._stop(records[:3], rules) is None


def test_seed_records_take_the_seeds_entries_and_weigh_interval_means_by_their_steps():
  records = [{'step': 2, 'loss': 0.0, 'seed_1/loss': 1.0, 'seed_1/accuracy': 0.5, 'images_per_s': 9.0},
             {'step': 3, 'loss': 0.0, 'seed_1/loss': 4.0, 'seed_1/accuracy': 0.2, 'images_per_s': 8.0},
             {'step': 3, 'epoch': 1, 'seed_1/valid_accuracy': 0.7, 'valid_accuracy': 0.1, 'epoch_time_s': 5.0}]
  ours = search._seed_records(records, 1, steps_per_epoch=3, last_step=None)
  assert ours[:2] == [{'step': 2, 'loss': 1.0, 'accuracy': 0.5, 'images_per_s': 9.0},
                      {'step': 3, 'loss': 4.0, 'accuracy': 0.2, 'images_per_s': 8.0}]
  assert ours[2] == pytest.approx({'step': 3, 'epoch': 1, 'train_loss': 2.0, 'train_accuracy': 0.4,
                                   'valid_accuracy': 0.7, 'epoch_time_s': 5.0})
  assert search._seed_records(records, 1, steps_per_epoch=3, last_step=2) == ours[:1]
