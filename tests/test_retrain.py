"""Tests for darts_jax.tasks.retrain, darts_jax.cli.evaluate and run_retrain.py.

One tiny retraining through the CLI (a 3-cell network of a one-node genotype on 8x8 synthetic Fashion-MNIST files,
2 epochs of 2 steps) is the reference; it is resumed, diverged and evaluated again in process. The runs share the
persistent compilation cache of tests/conftest.py.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from darts_jax.training.config_utils import load_config_module
from darts_jax import data
from darts_jax.cli import evaluate
from darts_jax.cnn import genotype_formats, genotypes, networks, train_step
from darts_jax.training import loop, parallel, reporting
from darts_jax.cnn.genotype_formats import load_genotype
from darts_jax.spaces import cnn_retraining
from darts_jax.tasks import retrain
from darts_jax.training.checkpointing import Checkpointer
from darts_jax.cnn.genotypes import Genotype

retrain_cifar10 = load_config_module('retrain_cifar10')
REPO = Path(__file__).resolve().parents[1]
SMALL = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2],
                 reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], reduce_concat=[2])
# Checkpoints at every step (time-based ones in the middle of epochs), so resumes start mid-epoch.
TINY = ['--config.batch_size=16', '--config.num_epochs=2', '--config.max_steps_per_epoch=2',
        '--config.model.init_channels=2', '--config.model.layers=3', '--config.data.augment=true',
        '--config.data.cutout=4', '--config.log_every_steps=1', '--config.checkpoint_every_minutes=1e-9',
        '--config.progress=false', '--config.data.subset=0']


def _arguments(workdir, *overrides):
  return ['run_retrain.py', '--config', 'configs/retrain_quick.py', '--workdir', str(workdir),
          f'--config.compilation_cache_dir={os.environ.get("JAX_COMPILATION_CACHE_DIR", "")}', *overrides]


def _cli_environment():
  """The CLI runs on this process's backend: the tests compare its results with in-process runs bit for bit, which
  holds on one backend only. On a CPU host, naming the platform spares the CLI probing for accelerators."""
  return dict(os.environ, JAX_PLATFORMS='cpu') if jax.default_backend() == 'cpu' else dict(os.environ)


def run_retrain(workdir, *overrides):
  process = subprocess.run([sys.executable, *_arguments(workdir, *overrides)], cwd=REPO, env=_cli_environment(),
                           capture_output=True, text=True, timeout=900)
  return process.returncode, process.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Genotype inputs.


def _genotype_file(directory, text, name='genotype.json'):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / name).write_text(text)
  return directory / name


def test_load_genotype_accepts_names_workdirs_files_and_text(tmp_path):
  as_json, as_repr = genotype_formats.genotype_to_json(SMALL), repr(SMALL)
  search_workdir = _genotype_file(tmp_path / 'search', as_json).parent
  inputs = [as_json, as_repr, str(search_workdir), str(search_workdir / 'genotype.json'),
            str(_genotype_file(tmp_path, as_repr, 'cell.txt'))]
  for spec in inputs:
    assert load_genotype(spec) == genotypes.validate_genotype(SMALL), spec
  darts_v2 = genotypes.validate_genotype(genotypes.DARTS_V2)
  assert load_genotype(' DARTS_V2 ') == darts_v2
  assert load_genotype(genotype_formats.genotype_to_json(darts_v2)) == darts_v2  # longer than a file name can be


@pytest.mark.parametrize('spec,error,message', [
    ('', ValueError, 'no genotype given'),
    ('DARTS_V3', ValueError, "unknown genotype name 'DARTS_V3'"),
    ("Genotype(normal=[('sep_conv_3x3', 0)", ValueError, 'not a known genotype name, JSON, nor a Genotype'),
    ('{"normal": [["sep_conv_3x3", 0]]}', ValueError, "missing field 'normal_concat'"),
])
def test_load_genotype_rejects_malformed_input(spec, error, message):
  with pytest.raises(error, match=message):
    load_genotype(spec)


def test_load_genotype_names_a_bad_file_or_a_directory_without_genotype(tmp_path):
  bad = _genotype_file(tmp_path / 'bad', '{"normal": 3}')
  with pytest.raises(ValueError, match=f'{bad}: '):
    load_genotype(str(bad))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='without a genotype.json'):
    load_genotype(str(tmp_path / 'empty'))


# ---------------------------------------------------------------------------------------------------------------------
# Configs.


def test_cifar10_config_is_the_paper_recipe():
  config = retrain_cifar10.get_config()
  assert (config.batch_size, config.num_epochs, config.learning_rate, config.learning_rate_min) == (96, 600, 0.025, 0)
  assert (config.momentum, config.weight_decay, config.grad_clip, config.auxiliary_weight) == (0.9, 3e-4, 5.0, 0.4)
  assert (config.model.init_channels, config.model.layers, config.model.auxiliary) == (36, 20, True)
  assert (config.model.drop_path_prob, config.data.cutout, config.data.augment) == (0.2, 16, True)
  # The search config's keys mean the same here.
  assert config.data.name == 'cifar10' and config.max_steps_per_epoch == 0 and config.data.subset == 0


# ---------------------------------------------------------------------------------------------------------------------
# The training step.


AUXILIARY_WEIGHT = 0.4


@pytest.fixture(scope='module')
def cifar_step():
  """``(make_step, state, step)``: the training step of a 3-cell NetworkCIFAR with the auxiliary head on 32x32 RGB
  batches of 8 (augmentation, cutout, drop path), built by ``make_step(axis_name) -> (model, step)``; ``step`` is the
  jitted one-device step, one compilation for the tests of the step."""
  tx, schedule = cnn_retraining.create_optimizer(retrain_cifar10.get_config(), steps_per_epoch=10)

  def make_step(axis_name):
    model = networks.NetworkCIFAR(SMALL, C=2, num_classes=10, layers=3, auxiliary=True, axis_name=axis_name)
    preprocess = data.make_preprocess(np.full(3, 0.5), np.full(3, 0.25), augment=True, axis_name=axis_name)
    return model, train_step.make_train_step(model, schedule, preprocess, cutout=8, auxiliary_weight=AUXILIARY_WEIGHT)

  model, single = make_step(None)
  state = train_step.create_train_state(jax.random.key(0), model, (32, 32, 3), tx)  # axis_name does not change params
  return make_step, state, jax.jit(single)


# Slow (the CIFAR network's step compiled for two devices): `pytest -m slow`; data parallelism's equality with one
# device is checked in the default run by tests/test_data_parallel.py and tests/test_search.py.
@pytest.mark.slow
def test_train_step_on_two_devices_matches_one_device(cifar_step):
  """Augmentation, cutout, drop path and BN statistics are per example or global, so a step on a batch split over two
  devices (emulated by vmap with the axis name) equals the step on the whole batch; the auxiliary loss is on."""
  make_step, state, single = cifar_step
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8))
  labels = jnp.arange(8) % 10
  split = jax.jit(jax.vmap(make_step(parallel.AXIS_NAME)[1], in_axes=(None, 0, None), axis_name=parallel.AXIS_NAME))
  new_single, metrics_single = single(state, (images, labels), jnp.float32(0.3))
  new_split, metrics_split = split(state, (images.reshape(2, 4, 32, 32, 3), labels.reshape(2, 4)), jnp.float32(0.3))
  # float32 reductions in another order: 1e-5 relative; different augmentations or masks would differ by O(1).
  for a, b in zip(jax.tree.leaves((new_single.params, new_single.batch_stats)),
                  jax.tree.leaves((new_split.params, new_split.batch_stats))):
    np.testing.assert_allclose(b[0], a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics_split['loss'][0], metrics_single['loss'], rtol=1e-5)
  assert bool(metrics_single['finite'])
  # Drop path is random: another probability gives another update.
  other, _ = single(state, (images, labels), jnp.float32(0.0))
  assert not np.allclose(other.params['classifier']['kernel'], new_single.params['classifier']['kernel'])


def test_auxiliary_loss_has_its_weight(cifar_step):
  """With both classifiers zeroed every logit is 0, whatever the features (so whatever the augmentation, cutout and
  drop path drew): the gradient of ``CE(logits)`` by the classifier's bias is ``softmax(0) - onehot`` averaged,
  ``0.1 - freq(label)`` per class, and that of ``w · CE(logits_aux)`` by the auxiliary classifier's bias ``w`` times
  it. The first SGD step (momentum buffer empty, biases 0 so no weight decay) moves each bias by ``-lr · clip ·
  gradient``, one factor for both: the auxiliary bias moves by exactly ``w`` times the main bias."""
  _, state, step = cifar_step
  zero = lambda head: jax.tree.map(jnp.zeros_like, head)  # noqa: E731
  params = {**state.params, 'classifier': zero(state.params['classifier']),
            'auxiliary_head': {**state.params['auxiliary_head'],
                               'classifier': zero(state.params['auxiliary_head']['classifier'])}}
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), np.uint8))
  labels = jnp.arange(8) % 10  # classes 0-7 once (frequency 1/8), 8 and 9 never
  new, metrics = step(state.replace(params=params), (images, labels), jnp.float32(0.0))
  main, auxiliary = (np.asarray(b, np.float64) for b in (new.params['classifier']['bias'],
                                                          new.params['auxiliary_head']['classifier']['bias']))
  # The same float32 factor on both: rounding only (1e-6 relative); a weight of 1 - w, swapped heads (1 / w) or an
  # auxiliary loss of the main logits (0) are off by O(1).
  np.testing.assert_allclose(auxiliary, AUXILIARY_WEIGHT * main, rtol=1e-5)
  # The main bias: -c · (0.1 - freq), with c = lr · clip scale in (0, lr].
  frequency = np.bincount(np.asarray(labels), minlength=10) / 8
  c = main / (frequency - 0.1)
  np.testing.assert_allclose(c, c.mean(), rtol=1e-5)
  assert 0 < c.mean() <= float(metrics['lr']) * (1 + 1e-6)
  # Both heads' logits are 0: the loss is (1 + w) · log 10.
  np.testing.assert_allclose(metrics['loss'], (1 + AUXILIARY_WEIGHT) * np.log(10), rtol=1e-6)


def test_training_lowers_the_loss_on_fashion_mnist(cifar_step):
  """40 steps of the step on 32 real Fashion-MNIST images (4 batches, 10 epochs; zero-padded to 32x32 and repeated
  over the 3 channels the compiled step takes) fit them: a step that does not learn (no update, a wrong sign, a
  gradient of something else) leaves the loss near its start, (1 + w) · log 10 ≈ 3.2."""
  try:
    ds = data.load_dataset('fashion_mnist')
  except data.DatasetNotFoundError:
    pytest.skip('Fashion-MNIST is not installed (Debian/Ubuntu: apt-get install dataset-fashion-mnist)')
  _, state, step = cifar_step
  images = np.repeat(np.pad(ds.train_images[:32], ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
  batches = [(images[i:i + 8], ds.train_labels[i:i + 8]) for i in range(0, 32, 8)]
  losses = []
  for _ in range(10):
    for batch in batches:
      state, metrics = step(state, batch, jnp.float32(0.0))
      losses.append(metrics['loss'])
  per_epoch = np.asarray(losses).reshape(10, 4).mean(axis=1)
  assert np.all(np.isfinite(per_epoch))
  # Measured: 3.56 in the first epoch, 2.45 in the last two (augmentation and cutout keep it from fitting faster).
  assert per_epoch[-2:].mean() < 0.8 * per_epoch[0]


# ---------------------------------------------------------------------------------------------------------------------
# End to end.


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """A finished tiny retraining of SMALL, read from a search workdir, through the CLI."""
  search_workdir = tmp_path_factory.mktemp('search')
  (search_workdir / 'genotype.json').write_text(genotype_formats.genotype_to_json(SMALL))
  workdir = tmp_path_factory.mktemp('runs') / 'reference'
  returncode, stderr = run_retrain(workdir, f'--config.genotype={search_workdir}', f'--config.data.dir={data_dir}',
                                   *TINY)
  assert returncode == 0, stderr
  return workdir


def _epoch_records(workdir):
  return [{k: v for k, v in r.items() if k != 'epoch_time_s'}
          for r in reporting.read_jsonl(workdir / 'metrics.jsonl') if 'epoch' in r]


def test_cli_writes_results_metrics_curves_and_checkpoints(reference):
  results = json.loads((reference / 'results.json').read_text())
  assert results['epochs'] == 2 and results['steps'] == 4 and results['dataset'] == 'fashion_mnist'
  assert 0 <= results['test_accuracy'] <= 1 and np.isfinite(results['test_loss']) and results['wall_time_s'] > 0
  assert genotype_formats.genotype_from_json(json.dumps(results['genotype'])) == genotypes.validate_genotype(SMALL)
  assert (genotype_formats.parse_genotype((reference / 'genotype.json').read_text())
          == genotypes.validate_genotype(SMALL))
  records = _epoch_records(reference)
  assert [r['epoch'] for r in records] == [1, 2]
  assert [r['drop_path_prob'] for r in records] == [0.0, 0.1]  # 0.2 · epoch / 2, as the original
  assert records[-1]['test_accuracy'] == results['test_accuracy']
  for key in ('train_loss', 'train_accuracy', 'test_loss', 'lr'):
    assert all(np.isfinite(r[key]) for r in records), key
  steps = [r for r in reporting.read_jsonl(reference / 'metrics.jsonl') if 'epoch' not in r]
  assert [r['step'] for r in steps] == [1, 2, 3, 4] and all('images_per_s' in r for r in steps)
  assert (reference / 'curves.png').stat().st_size > 0
  assert any((reference / 'tensorboard').iterdir())
  assert sorted(int(p.name) for p in (reference / 'checkpoints').iterdir() if p.name.isdigit()) == [2, 3, 4]
  # The parameter count of the same network, counted independently.
  model = networks.NetworkCIFAR(SMALL, C=2, num_classes=10, layers=3)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))['params']
  assert results['params'] == networks.count_params(params)


def _config(workdir, **overrides):
  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  config.update(overrides)
  return config


def test_resumed_run_ends_like_the_uninterrupted_one(reference, tmp_path):
  workdir = tmp_path / 'resumed'
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / 'checkpoints' / '4')  # as if killed in the middle of the last epoch (after step 3)
  (workdir / 'results.json').unlink()
  results = retrain.retrain(_config(workdir), workdir)
  expected = json.loads((reference / 'results.json').read_text())
  assert results['test_loss'] == expected['test_loss'] and results['test_accuracy'] == expected['test_accuracy']
  assert _epoch_records(workdir) == _epoch_records(reference)


def test_resuming_with_another_genotype_is_an_error(reference, tmp_path):
  workdir = tmp_path / 'other'
  shutil.copytree(reference, workdir)
  with pytest.raises(ValueError, match='holds a retraining of another genotype'):
    retrain.retrain(_config(workdir, genotype='DARTS_V2'), workdir)


def test_divergence_stops_with_the_step_and_keeps_the_checkpoints(reference, tmp_path):
  workdir = tmp_path / 'diverged'
  shutil.copytree(reference, workdir)
  diverging = _config(workdir, num_epochs=3, learning_rate=4e30, checkpoint_every_minutes=0.0)
  (workdir / 'config.json').unlink()  # resuming with another configuration is refused otherwise
  # A third epoch at a learning rate of ~1e30 overflows at its second step (step 6).
  with pytest.raises(loop.NonFiniteLossError, match='at step 6 .*last checkpoint is intact'):
    retrain.retrain(diverging, workdir)
  checkpoints = workdir / 'checkpoints'
  assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [2, 3, 4]
  model = networks.NetworkCIFAR(SMALL, C=2, num_classes=10, layers=3, axis_name=parallel.AXIS_NAME)
  tx, _ = cnn_retraining.create_optimizer(_config(workdir), steps_per_epoch=2)
  with Checkpointer(checkpoints) as checkpointer:
    step, state, _ = checkpointer.restore_latest(train_step.create_train_state(jax.random.key(0), model, (8, 8, 1), tx))
  assert step == 4 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_evaluate_reproduces_the_final_test_metrics(reference):
  results = json.loads((reference / 'results.json').read_text())
  evaluation = evaluate.evaluate_workdir(reference)
  assert (evaluation['step'], evaluation['epoch'], evaluation['params']) == (4, 2, results['params'])
  assert evaluation['num_test'] == 16
  assert evaluation['test_accuracy'] == results['test_accuracy']
  np.testing.assert_allclose(evaluation['test_loss'], results['test_loss'], rtol=1e-6)  # same program, float32


def test_evaluate_needs_a_retrain_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match='is not a retrain workdir'):
    evaluate.evaluate_workdir(tmp_path)


def test_sigterm_mid_epoch_saves_exits_75_and_resumes_identically(reference, data_dir, tmp_path):
  search_workdir = tmp_path / 'search'
  _genotype_file(search_workdir, genotype_formats.genotype_to_json(SMALL))
  workdir = tmp_path / 'preempted'
  command = [sys.executable, 'run_retrain.py', '--config', 'configs/retrain_quick.py', '--workdir', str(workdir),
             f'--config.compilation_cache_dir={os.environ.get("JAX_COMPILATION_CACHE_DIR", "")}',
             f'--config.genotype={search_workdir}', f'--config.data.dir={data_dir}', *TINY]
  process = subprocess.Popen(command, cwd=REPO, env=_cli_environment(), stderr=subprocess.PIPE,
                             text=True)
  checkpoints = workdir / 'checkpoints'
  try:
    while not (checkpoints.is_dir() and any(p.name == '1' for p in checkpoints.iterdir())):
      assert process.poll() is None, process.stderr.read()
      time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=300)[1]
  finally:
    process.kill()
  assert process.returncode == 75, stderr
  stopped = int(re.search(r'SIGTERM received: stopped after step (\d+) and saved a checkpoint', stderr).group(1))
  assert stopped < 4 and str(stopped) in {p.name for p in checkpoints.iterdir()}
  assert not (workdir / 'results.json').exists()
  returncode, stderr = run_retrain(workdir, f'--config.genotype={search_workdir}', f'--config.data.dir={data_dir}',
                                   *TINY)
  assert returncode == 0, stderr
  results, expected = (json.loads((w / 'results.json').read_text()) for w in (workdir, reference))
  assert (results['test_loss'], results['test_accuracy']) == (expected['test_loss'], expected['test_accuracy'])
  assert _epoch_records(workdir) == _epoch_records(reference)


# Command lines that must stop with one error line: one harness run (conftest.run_cli_cases: the CLIs imported once,
# a forked process per command line) instead of ~3 s of interpreter start-up each.


@pytest.fixture(scope='module')
def errors(reference, tmp_path_factory, run_cli_cases):
  """{case: (returncode, output, the line the output must end with, a message it must contain)}."""
  tmp = tmp_path_factory.mktemp('errors')
  (tmp / 'file').write_text('')
  other = tmp / 'other'
  shutil.copytree(reference, other)
  config = json.loads((other / 'config.json').read_text())
  search_like = tmp / 'search'
  search_like.mkdir()
  (search_like / 'config.json').write_text('{"seed": 0, "model": {"layers": 3}}')
  (search_like / 'genotype.json').write_text(genotype_formats.genotype_to_json(SMALL))
  damaged = tmp / 'damaged'
  shutil.copytree(reference, damaged)
  (damaged / 'config.json').write_text('{"seed": ')
  evaluate_error = 'darts-evaluate: error: '
  cases = {
      'malformed_genotype': (_arguments(tmp / 'run', "--config.genotype=Genotype(normal=[('sep_conv_3x3', 0)"),
                             'run_retrain.py: error: not a known genotype name', ''),
      'resume_with_another_config': (
          _arguments(other, f'--config.genotype={config["genotype"]}', f'--config.data.dir={config["data"]["dir"]}',
                     *TINY, '--config.num_epochs=3'),
          f'run_retrain.py: error: {other} holds a run with another configuration (num_epochs: 2 -> 3).', ''),
      'missing_config': (_arguments(tmp / 'run', '--config', str(tmp / 'nope.py')), '',
                         f'FATAL Flags parsing error: cannot load the config file {tmp}/nope.py: [Errno 2]'),
      'workdir_is_a_file': (_arguments(tmp / 'file', '--config.genotype=DARTS_V2'),
                            f'run_retrain.py: error: --workdir {tmp}/file is a file, not a directory', ''),
      'evaluate_missing_workdir': (['-m', 'darts_jax.cli.evaluate', '--workdir', str(tmp / 'missing')], evaluate_error,
                                   'config.json does not exist'),
      'evaluate_search_workdir': (['-m', 'darts_jax.cli.evaluate', '--workdir', str(search_like)], evaluate_error,
                                  'is not a retrain workdir: its config.json has no genotype'),
      'evaluate_damaged_config': (['-m', 'darts_jax.cli.evaluate', '--workdir', str(damaged)], evaluate_error,
                                  'config.json is not valid JSON'),
  }
  results = run_cli_cases([{'argv': argv, 'cwd': str(REPO)} for argv, _, _ in cases.values()])
  return {name: (result['returncode'], result['stdout'] + result['stderr'], last, contains)
          for (name, (_, last, contains)), result in zip(cases.items(), results)}


@pytest.mark.parametrize('case', ['malformed_genotype', 'resume_with_another_config', 'missing_config',
                                  'workdir_is_a_file', 'evaluate_missing_workdir', 'evaluate_search_workdir',
                                  'evaluate_damaged_config'])
def test_cli_errors_are_one_line(errors, case):
  returncode, output, last, contains = errors[case]
  assert returncode == 1, output
  assert output.strip().splitlines()[-1].startswith(last) and contains in output, output
  assert 'Traceback' not in output
