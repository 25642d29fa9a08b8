"""Tests for fine-tuning (retrain's init_from, freeze_epochs, data.classes), evaluating a pretrained PyTorch
checkpoint (darts_jax.cli.evaluate --pretrained) and the inference export (darts_jax.export).

One tiny network is pre-trained on Fashion-MNIST classes 0-5 (the synthetic 8x8 files of conftest's data_dir) and
shared: it is exported and served, written back as the original's PyTorch checkpoint, evaluated from that checkpoint,
and fine-tuned from it on classes 6-9 with the cells frozen.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax.training.config_utils import load_config_module
from darts_jax import convert, data, export
from darts_jax.cli import evaluate
from darts_jax.cnn import genotype_formats, genotypes, train_step
from darts_jax.cnn.genotypes import Genotype
from darts_jax.spaces import cnn_retraining
from darts_jax.tasks import retrain

retrain_quick = load_config_module('retrain_quick')
REPO = Path(__file__).resolve().parents[1]
SMALL = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2],
                 reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], reduce_concat=[2])


def _config(data_dir, **overrides):
  config = retrain_quick.get_config()
  config.update(dict(genotype=genotype_formats.genotype_to_json(SMALL), batch_size=16, num_epochs=1,
                     max_steps_per_epoch=2, progress=False, compilation_cache_dir='', log_every_steps=1))
  config.model.update(init_channels=2, layers=3)
  config.data.update(dir=str(data_dir), subset=0, cutout=0, classes='0,1,2,3,4,5')
  for key, value in overrides.items():
    target, name = (config.data, key[5:]) if key.startswith('data_') else (config, key)
    target[name] = value
  return config


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, data_dir):
  """A retrain workdir on classes 0-5 and its restored run."""
  workdir = tmp_path_factory.mktemp('pretrained') / 'run'
  retrain.retrain(_config(data_dir), workdir)
  return workdir, cnn_retraining.restore_workdir(workdir)


@pytest.fixture(scope='module')
def checkpoint(pretrained):
  """The pre-trained network as the original's PyTorch checkpoint (a bare state_dict, as utils.save writes it)."""
  pytest.importorskip('torch', reason="writing a .pt file needs PyTorch: pip install -e '.[torch]'")
  workdir, restored = pretrained
  state_dict = convert.to_torch_state_dict({'params': restored.state.params, 'batch_stats': restored.state.batch_stats},
                                           genotype=SMALL, layers=3, auxiliary=False)
  path = workdir.parent / 'model.pt'
  convert.save_torch_state_dict(state_dict, path)
  return path


def test_select_classes_keeps_and_relabels_only_those_classes():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  ds = data.Dataset('mnist', images, np.arange(10, dtype=np.int32), images[:4], np.array([9, 6, 0, 7], np.int32), 10,
                    np.zeros(1, np.float32), np.ones(1, np.float32))
  subset = data.select_classes(ds, [9, 7, 6])
  assert subset.num_classes == 3
  assert subset.train_images.ravel().tolist() == [6, 7, 9] and subset.train_labels.tolist() == [2, 1, 0]
  assert subset.test_labels.tolist() == [0, 2, 1]
  with pytest.raises(ValueError, match=r'classes \[10\] are not labels of mnist'):
    data.select_classes(ds, [1, 10])


def test_export_serves_the_networks_logits_for_any_batch_size(pretrained, tmp_path):
  workdir, restored = pretrained
  output = export.export_workdir(workdir, tmp_path / 'export')
  served = export.load(output)  # no model code: the artifact and jax
  assert served.spec['class_names'] == ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal']
  assert served.spec['input_shape'] == [None, 28, 28, 1] and served.spec['input_dtype'] == 'uint8'
  assert genotype_formats.genotype_from_json(json.dumps(served.spec['genotype'])) == genotypes.validate_genotype(SMALL)
  spec = data.DATASETS['fashion_mnist']
  preprocess = data.make_preprocess(np.asarray(spec.mean), np.asarray(spec.std))
  variables = {'params': restored.state.params, 'batch_stats': restored.state.batch_stats}
  apply = jax.jit(lambda images: restored.model.apply(variables, preprocess(None, images), train=False)[0])
  for n in (1, 3):
    images = np.random.default_rng(n).integers(0, 256, (n, 28, 28, 1), np.uint8)
    expected = apply(images)
    # The same program up to XLA's fusion choices: float32 rounding.
    np.testing.assert_allclose(served(images), expected, rtol=1e-5, atol=1e-6)
  # Each platform lowers its own depthwise formulation, whatever the exporting host: 'auto' is the shifted
  # multiply-adds on CPU and XLA's grouped convolution elsewhere. The CPU lowering has no grouped convolution, so
  # those of the two-platform artifact are its CUDA branch's.
  assert served.spec['depthwise_impl'] == {'cpu': 'shift', 'cuda': 'xla'}
  grouped = lambda served: sum(int(g) > 1 for g in re.findall(r'feature_group_count = (\d+)',  # noqa: E731
                                                              served.exported.mlir_module()))
  cpu, cuda = (export.load(export.export_workdir(workdir, tmp_path / p, platforms=(p,))) for p in ('cpu', 'cuda'))
  assert grouped(cpu) == 0 and grouped(cuda) > 0 and grouped(served) > 0
  with pytest.raises(FileNotFoundError, match='export a retrain workdir'):
    export.load(tmp_path / 'nothing')


def test_pretrained_checkpoint_evaluates_like_the_workdir(pretrained, checkpoint, data_dir):
  workdir, _ = pretrained
  expected = evaluate.evaluate_workdir(workdir)
  results = evaluate.evaluate_pretrained(checkpoint, genotype_formats.genotype_to_pt_darts(SMALL), _config(data_dir))
  assert (results['network'], results['C'], results['layers'], results['num_classes']) == ('cifar', 2, 3, 6)
  assert results['test_accuracy'] == expected['test_accuracy'] and results['num_test'] == expected['num_test']
  np.testing.assert_allclose(results['test_loss'], expected['test_loss'], rtol=1e-5)
  assert results['test_top5'] >= results['test_accuracy']
  with pytest.raises(ValueError, match='into 6 classes; fashion_mnist has 1-channel images of 10 classes'):
    evaluate.evaluate_pretrained(checkpoint, genotype_formats.genotype_to_json(SMALL),
                                 _config(data_dir, data_classes=''))


def test_finetune_from_the_pytorch_checkpoint_on_other_classes_with_frozen_cells(pretrained, checkpoint, data_dir,
                                                                                  tmp_path):
  _, source = pretrained
  workdir = tmp_path / 'finetuned'
  config = _config(data_dir, init_from=str(checkpoint), freeze_epochs=1, data_classes='6,7,8,9')
  results = retrain.retrain(config, workdir)
  assert results['steps'] == 2 and 0 <= results['test_accuracy'] <= 1
  tuned = cnn_retraining.restore_workdir(workdir).state
  # Frozen: the stem and cells are the pre-trained ones, bit for bit; the new 4-class classifier trained.
  for name in ('stem_conv', 'stem_bn', 'cells'):
    jax.tree.map(np.testing.assert_array_equal, tuned.params[name], source.state.params[name])
  assert tuned.params['classifier']['kernel'].shape == (source.state.params['classifier']['kernel'].shape[0], 4)
  # BN statistics follow the new data even while frozen, as in PyTorch's training mode.
  assert not np.array_equal(tuned.batch_stats['stem_bn']['mean'], source.state.batch_stats['stem_bn']['mean'])


def test_freezing_zeroes_the_features_updates_for_the_first_epochs_only():
  config = retrain_quick.get_config()
  config.freeze_epochs = 1
  tx, _ = cnn_retraining.create_optimizer(config, steps_per_epoch=2)
  params = {'cells': {'w': jnp.ones(3)}, 'stem_conv': {'kernel': jnp.ones(2)}, 'classifier': {'kernel': jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  moved = []
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    moved.append({name: any(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves(u)) for name, u in updates.items()})
  assert [m['cells'] or m['stem_conv'] for m in moved] == [False, False, True]
  assert all(m['classifier'] for m in moved)


def test_init_from_a_workdir_keeps_all_but_a_new_classifier(pretrained, data_dir):
  workdir, source = pretrained
  config = _config(data_dir, data_classes='6,7,8,9', init_from=str(workdir))
  model = cnn_retraining.create_model(config, SMALL, 4, axis_name=None)
  tx, _ = cnn_retraining.create_optimizer(config, 1)
  fresh = train_step.create_train_state(jax.random.key(5), model, (8, 8, 1), tx)
  params, batch_stats = cnn_retraining.load_initial_weights(str(workdir), config, SMALL, fresh.params,
                                                            fresh.batch_stats)
  jax.tree.map(np.testing.assert_array_equal, params['cells'], source.state.params['cells'])
  jax.tree.map(np.testing.assert_array_equal, batch_stats, source.state.batch_stats)
  jax.tree.map(np.testing.assert_array_equal, params['classifier'], fresh.params['classifier'])
  deeper = _config(data_dir, init_from=str(workdir))
  deeper.model.layers = 4
  deeper_model = cnn_retraining.create_model(deeper, SMALL, 6, axis_name=None)
  deeper_state = jax.eval_shape(lambda: train_step.create_train_state(jax.random.key(5), deeper_model, (8, 8, 1), tx))
  with pytest.raises(ValueError, match=r"does not fit this network .*: cells\['cell_3'\]"):
    cnn_retraining.load_initial_weights(str(workdir), deeper, SMALL, deeper_state.params, deeper_state.batch_stats)


def test_cli_bad_pretrained_input_is_one_error_line_and_the_package_never_imports_torch(tmp_path):
  # A `torch` that fails on import: the CLI's whole import graph (convert, retrain, data, training; tensorboardX, which
  # imports torch when it can, only once a run writes events) must get by without it.
  (tmp_path / 'fake').mkdir()
  (tmp_path / 'fake' / 'torch.py').write_text('raise RuntimeError("torch imported")')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join([str(tmp_path / 'fake'), str(REPO)]))
  process = subprocess.run([sys.executable, '-m', 'darts_jax.cli.evaluate', '--config', 'configs/retrain_quick.py',
                            '--pretrained', str(tmp_path / 'missing.pt')], cwd=REPO, capture_output=True, text=True,
                           timeout=300, env=env)
  assert process.returncode == 1, process.stderr
  assert process.stderr.strip().splitlines()[-1].startswith(
      f'darts-evaluate: error: {tmp_path}/missing.pt does not exist (expected a PyTorch checkpoint')
  assert 'Traceback' not in process.stderr


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
  pytest.importorskip('torch')
  (tmp_path / 'notes.pt').write_text('not a checkpoint')
  with pytest.raises(ValueError, match=f'{tmp_path}/notes.pt is not a readable PyTorch checkpoint'):
    convert.load_torch_checkpoint(tmp_path / 'notes.pt')
