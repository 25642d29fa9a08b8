"""Relaxations and regularisers in the search (config.relaxation, config.regularizer) on `TinySupernet`
(tests/test_search.py): one sample per step through every pass, the variant configs, resume with a stochastic
relaxation, and config errors."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_search import (LR, MEAN, STD, TinySupernet, _batches, _epoch_records, tiny_config,
                         tiny_supernet)  # noqa: F401 (an autouse fixture: these runs use TinySupernet)

from darts_jax.training.config_utils import load_config_module
from darts_jax import data, dynamics
from darts_jax.bilevel import step as bilevel_step
from darts_jax.spaces import cnn as cnn_space
from darts_jax.bilevel.hypergradient import hypergradient
from darts_jax.cnn import genotype_formats, genotypes
from darts_jax.tasks import search
from darts_jax.training import optimizers, reporting
from darts_jax.training.checkpointing import Checkpointer

search_cifar10 = load_config_module('search_cifar10')
VARIANTS = ('gdas', 'snas', 'fairdarts', 'drnas', 'beta_darts', 'sdarts_rs')


def _variant(name):
  return load_config_module(f'search_{name}').get_config()


def variant_config(name, data_dir, **overrides):
  """The variant's relaxation and regularisers on the tiny search of test_search, first order and without the
  Hessian (cheap: both are tested on the default relaxation, through the same functions)."""
  config = tiny_config(data_dir, hypergradient='first_order', **{'diagnostics.hessian_iterations': 0, **overrides})
  variant = _variant(name)
  config.relaxation.update(variant.relaxation)
  config.regularizer.update(variant.regularizer)
  return config


# ----------------------------------------------------------------------------------------------------------------
# The step.


def test_step_uses_one_sample_for_every_pass_the_penalty_and_the_perturbed_weight_step():
  """Hard Gumbel sampling, all three regularisers and SDARTS-RS's perturbation at once: the architecture step is the
  gradient of the penalised validation loss with the step's sample (first order; SGD at 1, so the alphas move by
  it), and the weight step trains on the perturbed sample of the new alphas. The second-order methods run the same
  loss functions (test_search checks each against `hypergradient`; the next test the perturbation's pass)."""
  model = TinySupernet(mixing='weights')
  schedule = optimizers.epoch_cosine_schedule(LR, 0.001, num_epochs=3, steps_per_epoch=100)
  relaxation = dynamics.Relaxation('gumbel_softmax', temperature=0.7, hard=True)
  penalty = dynamics.sum_penalties(dynamics.make_penalties(
      {'entropy': 0.3, 'zero_one': 0.5, 'beta_decay': 0.2}, relaxation))
  perturb = lambda key, weights, step, loss=None: dynamics.uniform_perturbation(key, weights, 0.2)  # noqa: E731
  state = cnn_space.create_search_state(jax.random.key(0), model, (8, 8, 1), optimizers.weight_optimizer(schedule),
                                          optax.sgd(1.0))
  state = state.replace(alphas=jax.tree.map(lambda a: a * 1000, state.alphas))  # O(1) alphas: a non-uniform softmax
  preprocess = data.make_preprocess(MEAN, STD)
  step = bilevel_step.make_search_step(cnn_space.search_problem(model, schedule, preprocess), method='first_order',
                                      relaxation=relaxation, arch_penalty=penalty, weight_perturbation=perturb)
  (train, val), = _batches(1)

  def reference(state):
    sample_key, perturbation_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(state.rng, 0), 1))
    x_train, x_val = (preprocess(None, train[0]), train[1]), (preprocess(None, val[0]), val[1])

    def loss(params, alphas, batch, perturbed=False):
      weights = relaxation.sample(sample_key, alphas, 0)
      weights = perturb(perturbation_key, weights, 0) if perturbed else weights
      logits, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch[0], weights, train=True,
                              mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    def objective(alphas):
      return loss(state.params, alphas, x_val) + penalty(alphas, relaxation.sample(sample_key, alphas, 0), 0)

    alphas = jax.tree.map(lambda a, h: a - h, state.alphas, jax.grad(objective)(state.alphas))
    updates, _ = state.weight_tx.update(jax.grad(loss)(state.params, alphas, x_train, True), state.weight_opt_state,
                                        state.params)
    return (alphas, optax.apply_updates(state.params, updates),
            penalty(state.alphas, relaxation.sample(sample_key, state.alphas, 0), 0))

  # One program for the step and its reference: one compilation.
  (new_state, metrics), (alphas, params, penalty_value) = jax.jit(lambda s: (step(s, train, val), reference(s)))(state)
  # float32 arithmetic in another order (jit fuses differently): ~1e-6 relative, as test_search's step test. A sample
  # drawn per pass, a penalty left out or a perturbation in the wrong pass changes the result at O(1e-2).
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)  # noqa: E731
  jax.tree.map(close, new_state.alphas, alphas)
  jax.tree.map(close, new_state.params, params)
  assert bool(metrics['finite'])
  np.testing.assert_allclose(metrics['arch_penalty'], penalty_value, rtol=1e-6)


def test_chained_passes_flag_only_the_weight_steps_pass():
  """In `_chained_step` every pass is one gradient function; its fourth argument (SDARTS-RS perturbs the weights when
  it is true) must be true in the last pass, the weight step's, only. fd, whose loop has the most passes (two
  architecture passes, then the weight step); exact takes the same index test. A quadratic stands in for the
  supernet: its gradient jumps by 100 under the flag, so a flagged architecture pass would change the
  hypergradient."""
  method = 'fd'
  w, alphas, batch = jnp.array([0.5, -1.0, 2.0]), jnp.array([0.3, -0.2]), jnp.array([1.0, 2.0, -1.0])

  def loss_fn(w, alphas, batch, flagged=False):
    return jnp.sum(batch * w) * jnp.sum(alphas ** 2) + jnp.sum(w ** 2) * alphas[0] + 100.0 * flagged * jnp.sum(w)

  def gradient_pass(w, alphas, batch, weight_step=False):
    loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1))(w, alphas, batch, weight_step)
    return grads, (loss, jnp.asarray(weight_step, jnp.float32))

  kwargs = dict(lr=0.1, momentum=0.9, momentum_buffer=jnp.zeros(3), weight_decay=0.0)
  arch_grads, _, (weight_grads, (_, flagged)) = jax.jit(lambda: bilevel_step._chained_step(
      method, gradient_pass, loss_fn, lambda h: (alphas - h, None), w, alphas, batch, 2 * batch, fd_epsilon=1e-3,
      grad_clip=None, pmean=lambda tree: tree, **kwargs))()
  expected = hypergradient(loss_fn, loss_fn, w, alphas, batch, 2 * batch, eta=0.1, method=method, fd_epsilon=1e-3,
                           momentum_buffer=kwargs['momentum_buffer'], momentum=0.9)
  # float32; the central difference of a quadratic is exact up to rounding divided by 2R.
  np.testing.assert_allclose(arch_grads, expected, rtol=1e-4, atol=1e-4)
  assert float(flagged) == 1.0
  np.testing.assert_allclose(weight_grads[0], jax.grad(loss_fn)(w, alphas - arch_grads, batch, True), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The variant configs.


@pytest.mark.parametrize('name', VARIANTS)
def test_variant_config_changes_only_the_relaxation_and_runs(name, data_dir, tmp_path):
  base, variant = search_cifar10.get_config().to_dict(), _variant(name).to_dict()
  assert {k for k in base if base[k] != variant[k]} <= {'relaxation', 'regularizer'}
  assert variant['relaxation'] != base['relaxation'] or variant['regularizer'] != base['regularizer']
  if name == 'gdas':
    return  # its whole search: test_gdas_search_runs_end_to_end
  # A few steps of the search with the variant's relaxation and regularisers, end to end on the tiny data.
  config = variant_config(name, data_dir, num_epochs=1, max_steps_per_epoch=3, log_every_steps=1,
                          checkpoint_every_minutes=0.0)
  state = search.search(config, tmp_path)
  assert int(state.step) == 3
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(jax.device_get(state.alphas)))
  records = reporting.read_jsonl(tmp_path / 'metrics.jsonl')
  epoch, = [r for r in records if 'epoch' in r]
  assert np.isfinite(epoch['valid_loss'])
  with_penalty = search.relaxation_terms(config, steps_per_epoch=3)[1] is not None
  assert any('arch_penalty' in r for r in records) == with_penalty
  assert (tmp_path / 'genotype.json').is_file()


@pytest.fixture(scope='module')
def gdas_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('gdas')
  state = search.search(variant_config('gdas', data_dir, checkpoint_every_minutes=0.0), workdir)
  return workdir, state


def test_gdas_search_runs_end_to_end(gdas_run):
  workdir, state = gdas_run
  records = reporting.read_jsonl(workdir / 'metrics.jsonl')
  epochs = [r for r in records if 'epoch' in r]
  # τ falls linearly from 10 at the first epoch to 0.1 at the last (of 2); the record holds the epoch's last τ.
  assert [r['temperature'] for r in epochs] == pytest.approx([10.0, 0.1])
  # Evaluation and diagnostics see the hard relaxation's one-hot argmax: entropy 0, every edge's weight 1.
  assert all(r['alpha_entropy_normal'] == 0.0 and r['alpha_max_weight_reduce'] == 1.0 for r in epochs)
  assert int(state.step) == 12 and (workdir / 'genotype.json').is_file()
  # The genotype ranks the noise-free softmax(α/τ) at the final τ.
  weights = dynamics.softmax(state.alphas, 0.1)
  assert genotypes.derive_genotype(jax.device_get(weights), from_weights=True) == \
      genotype_formats.genotype_from_json((workdir / 'genotype.json').read_text())


def test_resume_with_a_stochastic_relaxation_is_exact(gdas_run, data_dir, tmp_path, monkeypatch, caplog):
  workdir, state = gdas_run
  save = Checkpointer.save

  def interrupted_save(self, step, *args, **kwargs):
    if step == 10:  # the latest checkpoint is step 8, mid epoch 2
      raise KeyboardInterrupt
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(Checkpointer, 'save', interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    search.search(variant_config('gdas', data_dir), tmp_path)
  monkeypatch.setattr(Checkpointer, 'save', save)
  with caplog.at_level(logging.INFO):
    resumed = search.search(variant_config('gdas', data_dir), tmp_path)
  assert 'Resuming from step 8' in caplog.text
  jax.tree.map(np.testing.assert_array_equal, resumed.alphas, state.alphas)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)
  assert _epoch_records(tmp_path) == _epoch_records(workdir)
  assert (tmp_path / 'genotypes.jsonl').read_text() == (workdir / 'genotypes.jsonl').read_text()


def test_relaxation_config_errors_are_one_line_before_any_work(data_dir, tmp_path):
  cases = [({'relaxation.name': 'gumbel'}, r"relaxation.name 'gumbel'; expected one of softmax, gumbel_softmax"),
           ({'relaxation.temperature_schedule': 'step'}, r"temperature_schedule 'step'; expected one of constant"),
           ({'relaxation.final_temperature': 0.0}, r'final_temperature \(0.0\) must be positive'),
           ({'relaxation.name': 'sigmoid', 'relaxation.hard': True}, 'not with relaxation.name sigmoid'),
           ({'relaxation.noise_scale': 0.5}, r'only used by relaxation.name gaussian_softmax'),
           ({'relaxation.name': 'dirichlet', 'relaxation.temperature': 2.0}, 'dirichlet has no temperature'),
           ({'relaxation.concentration': 'exp'}, r"concentration 'exp'; expected one of elu, softplus"),
           ({'regularizer.schedule': 'cosine'}, r"regularizer.schedule 'cosine'; expected one of constant, linear"),
           ({'regularizer.random_smoothing': -0.1}, r'random_smoothing \(-0.1\).*must be >= 0')]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      search.search(tiny_config(data_dir, **overrides), tmp_path)
  assert not (tmp_path / 'config.json').exists()
