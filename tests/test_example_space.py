"""The example space of tests/example_space.py searches and retrains through the tasks of every space.

Everything runs through `darts_jax.tasks.search.search`, `darts_jax.tasks.retrain.retrain` and the ``darts-search``
command line, the space named by ``config.space = 'example_space:ExampleSpace'``: what these tests check of the
records, artifacts, resume, k seeds, hypergradients and diagnostics is what the pipeline does for any space.

The example's data reward one op (the label is even in ``x``, and only ``relu`` carries an even part to the
read-out), so a search that follows the hypergradient must give the edge ``x→h1`` the op ``relu``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import example_space
from example_space import EDGES, OPS, ExampleSpace
from darts_jax.bilevel.step import make_search_step, momentum_buffer
from darts_jax.dynamics import relaxations
from darts_jax.tasks import retrain, search
from darts_jax.training import reporting
from darts_jax.training.checkpointing import Checkpointer

RELU = OPS.index('relu')
COMMON_EPOCH_KEYS = {'epoch', 'step', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy', 'lr',
                     'epoch_time_s'}
COMMON_INTERVAL_KEYS = {'step', 'loss', 'accuracy', 'grad_norm', 'arch_grad_norm', 'lr', 'images_per_s'}
EXAMPLE_KEYS = {'alpha_entropy', 'alpha_max_weight', 'unchanged_epochs', 'genotype_params'}


def _config(**overrides):
  """`example_space.search_config` (4 epochs of 16 steps: 512 examples per half, batch 32), the given keys changed
  (dotted names for nested ones)."""
  config = example_space.search_config()
  config.update_from_flattened_dict(overrides)
  return config


def _softmax(alphas):
  a = np.asarray(alphas, np.float64)
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _records(workdir):
  """The records of ``metrics.jsonl`` without the timings."""
  return [{k: v for k, v in r.items() if k not in ('epoch_time_s', 'images_per_s')}
          for r in reporting.read_jsonl(workdir / 'metrics.jsonl')]


@pytest.fixture(scope='module')
def first_order_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('first_order')
  return workdir, search.search(_config(), workdir)


@pytest.fixture(scope='module')
def exact_run(tmp_path_factory):
  """Second order, with the Hessian diagnostics: 15 Lanczos steps for the 15 alphas (exact up to rounding)."""
  workdir = tmp_path_factory.mktemp('exact')
  config = _config(hypergradient='exact', **{'diagnostics.hessian_iterations': 15})
  return workdir, search.search(config, workdir)


def test_search_writes_the_common_records_and_the_spaces_own(exact_run):
  workdir, state = exact_run
  records = reporting.read_jsonl(workdir / 'metrics.jsonl')
  epochs = [r for r in records if 'epoch' in r]
  assert [r['step'] for r in epochs] == [16, 32, 48, 64]
  for r in epochs:
    assert COMMON_EPOCH_KEYS | EXAMPLE_KEYS | {'hessian_eigenvalue', 'alpha_grad_norm'} <= r.keys()
  assert all('stability' in r for r in epochs[1:])  # against the previous epoch's genotype (epoch 0: the start)
  intervals = [r for r in records if 'epoch' not in r]
  assert [r['step'] for r in intervals] == list(range(4, 65, 4))
  assert all(COMMON_INTERVAL_KEYS <= r.keys() and 0 < r['arch_grad_norm'] < np.inf for r in intervals)
  # The diagnostics are of the alphas after the epoch (float64, from the log-softmax).
  alphas = np.asarray(state.alphas)
  weights = _softmax(alphas)
  assert epochs[-1]['alpha_entropy'] == pytest.approx(-np.sum(weights * np.log(weights), -1).mean(), rel=1e-6)
  assert epochs[-1]['alpha_max_weight'] == pytest.approx(weights.max(-1).mean(), rel=1e-6)

  space = ExampleSpace(_config())
  genotype = space.derive_genotype(alphas)
  assert json.loads((workdir / 'genotype.json').read_text()) == {
      'ops': list(genotype), 'params': example_space.num_params(genotype, 8)}
  assert space.load_genotype(str(workdir)) == genotype
  np.testing.assert_array_equal(np.load(workdir / 'alphas.npz')['alphas'], alphas)
  lines = reporting.read_jsonl(workdir / 'genotypes.jsonl')
  assert [r['epoch'] for r in lines] == [1, 2, 3, 4] and tuple(lines[-1]['genotype']['ops']) == genotype
  # The genotype diagnostics against the logged genotypes (epoch 0: the initial alphas', not logged).
  ops = [r['genotype']['ops'] for r in lines]
  for e in range(1, 4):
    assert epochs[e]['stability'] == np.mean([a == b for a, b in zip(ops[e - 1], ops[e])])
    assert epochs[e]['unchanged_epochs'] == (0 if ops[e] != ops[e - 1] else epochs[e - 1]['unchanged_epochs'] + 1)
  assert all(r['genotype_params'] == example_space.num_params(o, 8) for r, o in zip(epochs, ops))
  logged = reporting.read_jsonl(workdir / 'alphas.jsonl')
  np.testing.assert_array_equal(space.alphas_from_record(logged[-1]), alphas)
  dot = (workdir / 'cell.dot').read_text()
  assert all(f'{src} -> {dst} [label="{op}"]' in dot for (src, dst), op in zip(EDGES, genotype))
  assert (workdir / 'curves.png').is_file()


def test_hessian_eigenvalue_is_that_of_the_validation_loss_in_the_alphas(exact_run, tmp_path):
  """The task's Hessian diagnostics at the last epoch: the largest and the smallest eigenvalue of
  ∇²_α L_val(w, softmax(α)) on the space's fixed validation batches, here against a dense Hessian and its
  eigen-decomposition (15 alphas, 15 Lanczos steps: the whole spectrum). float32 Lanczos against float32 autodiff:
  1e-3 of the spectrum's scale."""
  workdir, state = exact_run
  setup = ExampleSpace(_config()).search_setup(tmp_path, axis_name=None)
  batches = setup.hessian_batches(2)
  loss = lambda alphas: setup.validation_loss(state.params, {}, jax.nn.softmax(alphas, -1), batches)
  hessian = np.asarray(jax.jit(jax.hessian(loss))(jnp.asarray(state.alphas)), np.float64).reshape(15, 15)
  eigenvalues = np.linalg.eigvalsh(hessian)
  last = [r for r in reporting.read_jsonl(workdir / 'metrics.jsonl') if 'epoch' in r][-1]
  scale = np.max(np.abs(eigenvalues))
  assert last['hessian_eigenvalue'] == pytest.approx(eigenvalues[-1], abs=1e-3 * scale)
  assert last['hessian_eigenvalue_min'] == pytest.approx(eigenvalues[0], abs=1e-3 * scale)
  gradient = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(state.alphas)))
  assert last['alpha_grad_norm'] == pytest.approx(np.linalg.norm(gradient), rel=1e-3)


@pytest.mark.parametrize('method', ['first_order', 'fd', 'exact'])
def test_search_gives_the_rewarded_edge_the_rewarded_op(method, first_order_run, exact_run, tmp_path):
  """Every hypergradient method must find what the data reward: ``relu`` on ``x→h1``, clearly (its weight from
  1/5 to above 1/2), while the supernet learns (validation accuracy from 1/2, chance, to above 0.7). An alpha step
  in the wrong direction, or one that ignores the validation batch, fails here (measured: relu's weight 0.81 to
  0.91, accuracy 0.85 to 0.87)."""
  if method == 'first_order':
    workdir, state = first_order_run
  elif method == 'exact':
    workdir, state = exact_run
  else:
    workdir, state = tmp_path, search.search(_config(hypergradient=method), tmp_path)
  weights = _softmax(state.alphas)
  assert ExampleSpace(_config()).derive_genotype(np.asarray(state.alphas))[0] == 'relu'
  assert np.argmax(weights[0]) == RELU and weights[0, RELU] > 0.5
  epochs = [r for r in reporting.read_jsonl(workdir / 'metrics.jsonl') if 'epoch' in r]
  assert epochs[-1]['valid_accuracy'] > 0.7 and epochs[-1]['alpha_entropy'] < epochs[0]['alpha_entropy']


def test_exact_hypergradient_is_autodiff_through_the_virtual_step_in_float64(tmp_path):
  """The step built from the space's `BilevelProblem` (softmax relaxation) against ``jax.grad`` of
  ``L_val(w − η(μm + ∇_w L_train(w, α) + λw), α)`` written out here, in float64: with an SGD(1) architecture
  optimizer the step's alpha update is ``−h``. Both arrangements of the passes; equal to rtol 1e-10 (float64
  rounding of a few passes). ``'fd'`` with ε = 1e-4: O(ε²) truncation, rtol 1e-6."""
  with jax.enable_x64(True):
    config = _config()
    setup = ExampleSpace(config).search_setup(tmp_path, axis_name=None)
    state = setup.init(jax.random.key(0))
    to64 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating)
                                     else x, tree)
    rng = np.random.default_rng(0)
    alphas = jnp.asarray(0.5 * rng.normal(size=state.alphas.shape))  # away from uniform
    sgd = optax.sgd(1.0)
    state = to64(state).replace(alphas=alphas, arch_tx=sgd, arch_opt_state=sgd.init(alphas))
    batches = [to64(jax.tree.map(jnp.asarray, b)) for b in next(setup.batches(0, 0, config.seed))]
    # A momentum buffer m that is not zero, as after a few steps.
    m = jax.tree.map(lambda w: jnp.asarray(0.1 * rng.normal(size=w.shape)), state.params)
    state = state.replace(weight_opt_state=optax.tree_utils.tree_set(state.weight_opt_state, trace=m))
    jax.tree.map(np.testing.assert_array_equal, momentum_buffer(state.weight_opt_state), m)

    def loss(params, alphas, batch):
      logits = example_space.supernet_logits(params, jax.nn.softmax(alphas, -1), batch[0])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    def validation_after_virtual_step(alphas):
      w = state.params
      g = jax.grad(loss)(w, alphas, batches[0])
      w_prime = jax.tree.map(lambda w_, m_, g_: w_ - config.learning_rate * (
          config.momentum * m_ + g_ + config.weight_decay * w_), w, m, g)
      return loss(w_prime, alphas, batches[1])

    expected = jax.jit(jax.grad(validation_after_virtual_step))(state.alphas)
    for method, passes, rtol in [('exact', 'chained', 1e-10), ('exact', 'direct', 1e-10), ('fd', 'direct', 1e-6)]:
      step = jax.jit(make_search_step(setup.problem, method=method, passes=passes, fd_epsilon=1e-4,
                                      relaxation=relaxations.Relaxation()))
      stepped, metrics = step(state, *batches)
      assert stepped.alphas.dtype == jnp.float64
      np.testing.assert_allclose(state.alphas - stepped.alphas, expected, rtol=rtol, atol=1e-14,
                                 err_msg=f'{method}, {passes}')
      assert float(metrics['arch_grad_norm']) == pytest.approx(float(jnp.linalg.norm(expected)), rel=rtol)


def test_resume_after_a_stop_is_bit_identical(first_order_run, tmp_path, monkeypatch):
  workdir, state = first_order_run
  save = Checkpointer.save

  def interrupted_save(self, step, *args, **kwargs):
    if step == 24:  # the records of step 24 are logged; the latest checkpoint is step 20, mid epoch 2
      raise KeyboardInterrupt
    return save(self, step, *args, **kwargs)

  config = _config(checkpoint_every_minutes=1e-9)  # a checkpoint at every log step (a key that may change)
  monkeypatch.setattr(Checkpointer, 'save', interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    search.search(config, tmp_path)
  assert reporting.read_jsonl(tmp_path / 'metrics.jsonl')[-1]['step'] == 24
  monkeypatch.setattr(Checkpointer, 'save', save)
  resumed = search.search(config, tmp_path)
  np.testing.assert_array_equal(resumed.alphas, state.alphas)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)
  assert _records(tmp_path) == _records(workdir)  # step 24 dropped and logged again, once
  for name in ('genotypes.jsonl', 'alphas.jsonl', 'genotype.json'):
    assert (tmp_path / name).read_text() == (workdir / name).read_text(), name


def test_two_seeds_run_as_two_single_runs(first_order_run, tmp_path):
  """Seed 0 of a 2-seed search is the single run with the config's seed. The vmapped step is another XLA program
  (batched products and reductions may be fused and ordered otherwise), so they agree to float32 rounding grown
  over 64 steps, not bit for bit: rtol 1e-4."""
  workdir, state = first_order_run
  # An early-stopping rule that never fires reads each seed's records from the first epoch on.
  stacked = search.search(_config(num_seeds=2, **{'early_stopping.rule': 'stability', 'early_stopping.patience': 100}),
                          tmp_path)
  assert stacked.alphas.shape == (2, len(EDGES), len(OPS))
  np.testing.assert_allclose(search.seed_state(stacked, 0).alphas, state.alphas, rtol=1e-4, atol=1e-5)
  assert not np.allclose(stacked.alphas[0], stacked.alphas[1], atol=1e-2)  # seed 1 is another search
  # ... which finds the rewarded op too (measured: relu's weight 0.72 on x→h1).
  assert np.argmax(stacked.alphas[1][0]) == RELU
  for s in (0, 1):
    directory = search.seed_dir(tmp_path, s)
    assert {'config.json', 'metrics.jsonl', 'genotypes.jsonl', 'alphas.jsonl', 'genotype.json', 'alphas.npz',
            'cell.dot', 'curves.png'} <= {p.name for p in directory.iterdir()}
    epochs = [r for r in reporting.read_jsonl(directory / 'metrics.jsonl') if 'epoch' in r]
    assert len(epochs) == 4 and all(COMMON_EPOCH_KEYS | EXAMPLE_KEYS <= r.keys() for r in epochs)
  assert (search.seed_dir(tmp_path, 0) / 'genotype.json').read_text() == (workdir / 'genotype.json').read_text()
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert [r['seed'] for r in summary['runs']] == [0, 1]


def test_relaxation_weights_reach_the_loss_and_the_diagnostics(tmp_path):
  """Hard Gumbel-softmax (GDAS) under a temperature schedule: evaluation and diagnostics measure its deterministic
  weights, the one-hot argmax, whose entropy is 0 and largest weight 1 (the softmax of these alphas would give
  ~1.6 nats and ~0.2), and the record holds the temperature (the schedule's, from 2 to 0.5)."""
  config = _config(num_epochs=1, **{'relaxation.name': 'gumbel_softmax', 'relaxation.hard': True,
                                    'relaxation.temperature': 2.0, 'relaxation.final_temperature': 0.5,
                                    'relaxation.temperature_schedule': 'linear'})
  state = search.search(config, tmp_path)
  (record,) = [r for r in reporting.read_jsonl(tmp_path / 'metrics.jsonl') if 'epoch' in r]
  assert record['alpha_entropy'] == 0 and record['alpha_max_weight'] == 1 and 0.5 <= record['temperature'] <= 2
  assert np.isfinite(np.asarray(state.alphas)).all()
  assert json.loads((tmp_path / 'genotype.json').read_text())['ops'] == list(
      ExampleSpace(config).derive_genotype(np.asarray(state.alphas)))


def test_retrain_trains_the_searched_genotype_and_writes_its_results(first_order_run, tmp_path):
  """The searched cell (relu from x) learns the even label; the all-linear cell cannot beat chance by much: the
  retraining builds the genotype it is given (measured: test accuracy 0.80 and 0.49)."""
  workdir, _ = first_order_run
  config = example_space.retrain_config()
  config.genotype = str(workdir)
  results = retrain.retrain(config, tmp_path / 'searched')
  genotype = ExampleSpace(config).load_genotype(str(workdir))
  written = json.loads((tmp_path / 'searched' / 'results.json').read_text())
  assert written == results
  assert results['genotype'] == {'ops': list(genotype)} and results['params'] == example_space.num_params(genotype, 8)
  assert results['epochs'] == 3 and results['steps'] == 3 * 16 and results['wall_time_s'] > 0
  assert (tmp_path / 'searched' / 'cell.dot').is_file() and (tmp_path / 'searched' / 'genotype.json').is_file()
  config.genotype = 'LINEAR'
  linear = retrain.retrain(config, tmp_path / 'linear')
  assert results['test_accuracy'] > 0.7 and linear['test_accuracy'] < 0.6


def test_genotype_formats_round_trip(tmp_path):
  space = ExampleSpace(_config())
  genotype = ('relu', 'dense', 'tanh')
  text = json.dumps(space.genotype_to_json(genotype))
  assert space.load_genotype(text) == genotype
  (tmp_path / 'genotype.json').write_text(text)
  assert space.load_genotype(str(tmp_path / 'genotype.json')) == space.load_genotype(str(tmp_path)) == genotype
  assert space.load_genotype('RELU') == ('relu',) * 3
  for bad in ('NOPE', '{"ops": ["relu", "zero", "relu"]}', '{"ops": ["relu"]}'):
    with pytest.raises(ValueError) as error:
      space.load_genotype(bad)
    assert '\n' not in str(error.value)


def test_command_line_search_loads_the_space_by_module_and_class(first_order_run, tmp_path):
  """``python -m darts_jax.cli.search`` with a config file and ``--config.space=module:Class``: its first epoch is
  the library run's, bit for bit (one machine, the same XLA flags through the environment)."""
  workdir, _ = first_order_run
  config_file = tmp_path / 'example_config.py'
  config_file.write_text('from example_space import search_config as get_config  # noqa: F401\n')
  tests = str(Path(__file__).parent)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  process = subprocess.run(
      [sys.executable, '-m', 'darts_jax.cli.search', '--config', str(config_file), '--workdir', str(tmp_path / 'run'),
       '--config.space=example_space:ExampleSpace', '--config.num_epochs=1'],
      capture_output=True, text=True, timeout=300, env=env)
  assert process.returncode == 0, process.stderr[-3000:]
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['space'] == 'example_space:ExampleSpace'
  ours = reporting.read_jsonl(tmp_path / 'run' / 'alphas.jsonl')
  assert ours == reporting.read_jsonl(workdir / 'alphas.jsonl')[:1]
  assert (tmp_path / 'run' / 'genotype.json').is_file() and (tmp_path / 'run' / 'cell.dot').is_file()
