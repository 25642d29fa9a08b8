"""SDARTS-ADV's step and DARTS-PT's selection on the CNN space, with tests/test_search.py's TinySupernet (slow: the
CNN programs compile for tens of seconds; the example-space tests check the same in seconds)."""
import json

import jax
import numpy as np
import pytest
from test_search import LR, MEAN, STD, TinySupernet, _batches, tiny_config

from darts_jax import data, dynamics
from darts_jax.bilevel import step as bilevel_step
from darts_jax.cnn import genotype_formats, genotypes
from darts_jax.spaces import cnn as cnn_space
from darts_jax.tasks import search, selection
from darts_jax.training import optimizers

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module', autouse=True)
def tiny_supernet():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cnn_space, 'SearchNetwork', TinySupernet)
    yield


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
