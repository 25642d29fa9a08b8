"""Tests for darts_jax.data.imagenet (the grain pipeline) and ImageNet retraining (configs/retrain_imagenet.py).

The data are tiny ImageFolder trees of JPEGs of varied sizes written here (3 classes); the network is a 1-cell
NetworkImageNet of 4 channels (one reduction cell) on 32x32 crops. One run of the ImageNet config is the
reference; it is resumed and evaluated again, sharing compiled programs through the persistent cache of
tests/conftest.py. (run_retrain.py is retrain.retrain behind the CLI start-up that tests/test_retrain.py covers.)
"""
import json
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from darts_jax.training.config_utils import load_config_module
from darts_jax.cli import evaluate
from darts_jax.cnn import genotype_formats, train_step
from darts_jax.cnn.genotypes import Genotype
from darts_jax.data import imagenet, retrain_data
from darts_jax.tasks import retrain
from darts_jax.training import optimizers, reporting

retrain_imagenet = load_config_module('retrain_imagenet')
SMALL = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2],
                 reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], reduce_concat=[2])
CLASSES = ('n01440764', 'n01443537', 'n01484850')
CROP, RESIZE = 32, 36


def write_tree(root, per_class=None, seed=0):
  """An ImageFolder tree of JPEGs (quality 90) of varied sizes, landscape and portrait, each class its own tint."""
  rng = np.random.default_rng(seed)
  for split, count in (per_class or {'train': 4, 'val': 2}).items():
    for label, name in enumerate(CLASSES):
      directory = root / split / name
      directory.mkdir(parents=True)
      for i in range(count):
        w, h = (int(s) for s in rng.integers(40, 90, 2))
        pixels = rng.integers(0, 160, (h, w, 3)) + 90 * np.eye(3, dtype=int)[label]
        Image.fromarray(pixels.astype(np.uint8)).save(directory / f'{name}_{i}.JPEG', quality=90)
  return root


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return write_tree(tmp_path_factory.mktemp('imagenet'))


def _pipeline(tree, **overrides):
  kwargs = dict(batch_size=4, steps_per_epoch=3, num_epochs=3, seed=0, image_size=CROP, resize=RESIZE, threads=0)
  kwargs.update(overrides)
  return imagenet.TrainBatches(imagenet.open_split(tree, 'train'), **kwargs)


def _epochs(pipeline, epochs):
  return [batch for epoch in epochs for batch in pipeline(epoch, 0)]


def _same(a, b):
  return len(a) == len(b) and all(all(np.array_equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline.


def test_training_batches_are_augmented_crops_of_every_image_once_per_epoch(tree):
  batches = _epochs(_pipeline(tree), range(2))
  assert len(batches) == 6
  for images, labels in batches:
    assert images.shape == (4, CROP, CROP, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and set(labels) <= {0, 1, 2}
    assert images.std() > 10  # image content, not padding
  for epoch in (batches[:3], batches[3:]):  # 12 images, batch 4: each image once per epoch
    assert np.bincount(np.concatenate([labels for _, labels in epoch]), minlength=3).tolist() == [4, 4, 4]
  # Each epoch draws another order and other crops.
  assert not _same(batches[:3], batches[3:])
  # Without augmentation, a training image is its evaluation crop (resize 36, centre crop 32).
  plain = _epochs(_pipeline(tree, augment=False), [0])
  crops = {c.tobytes() for images, _, _ in imagenet.eval_batches(
      imagenet.open_split(tree, 'train'), 4, image_size=CROP, resize=RESIZE) for c in images}
  assert all(c.tobytes() in crops for images, _ in plain for c in images)


def test_batches_depend_only_on_the_seed_and_position(tree):
  uninterrupted = _epochs(_pipeline(tree), range(3))
  resumed = _pipeline(tree, threads=2)  # decoding threads do not change the batches
  assert _same(list(resumed(1, 2)) + _epochs(resumed, [2]), uninterrupted[5:])
  assert not _same(_epochs(_pipeline(tree, seed=1), range(3)), uninterrupted)


def test_each_process_reads_its_slice_of_the_same_global_batches(tree):
  train = imagenet.open_split(tree, 'train')
  whole = _epochs(_pipeline(tree), range(2))
  halves = [_epochs(_pipeline(tree, process_index=p, process_count=2), range(2)) for p in range(2)]
  for step, (images, labels) in enumerate(whole):
    assert np.array_equal(np.concatenate([halves[0][step][0], halves[1][step][0]]), images)
    assert np.array_equal(np.concatenate([halves[0][step][1], halves[1][step][1]]), labels)
  # Evaluation: 12 images in global batches of 8, the last padded; each image counted once over the processes.
  parts = [list(imagenet.eval_batches(train, 8, image_size=CROP, resize=RESIZE, process_index=p, process_count=2))
           for p in range(2)]
  assert [len(p) for p in parts] == [2, 2]
  masks = np.concatenate([parts[p][b][2] for b in range(2) for p in range(2)])
  labels = np.concatenate([parts[p][b][1] for b in range(2) for p in range(2)])
  assert masks.tolist() == [1] * 12 + [0] * 4
  assert labels[:12].tolist() == train.labels.tolist()


def test_worker_processes_give_the_same_batches(tree):
  with _pipeline(tree, workers=1) as pipeline:
    assert _same(list(pipeline(1, 1)), _epochs(_pipeline(tree), range(2))[4:])


def test_random_resized_crop_and_colour_jitter_follow_torchvision():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, w, h = imagenet.random_resized_crop_box(500, 375, rng)
    assert 0 <= left <= 500 - w and 0 <= top <= 375 - h
    assert 0.08 * 500 * 375 * 0.97 <= w * h <= 500 * 375 and 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03  # rounding
  # A strip no crop of ratio 3/4..4/3 fits in: the fallback, its largest centred crop of ratio 4/3.
  assert imagenet.random_resized_crop_box(400, 20, rng) == (186, 0, 27, 20)
  red = Image.new('RGB', (8, 8), (255, 0, 0))
  assert np.abs(np.asarray(imagenet.adjust_hue(red, 0.0)).astype(int) - [255, 0, 0]).max() <= 2  # HSV round trip
  assert np.abs(np.asarray(imagenet.adjust_hue(red, 1 / 3)).astype(int) - [0, 255, 0]).max() <= 6  # 120 degrees
  assert np.abs(np.asarray(imagenet.adjust_hue(red, -1 / 3)).astype(int) - [0, 0, 255]).max() <= 6
  grey = Image.new('RGB', (8, 8), (100, 100, 100))
  factors = [np.asarray(imagenet.color_jitter(grey, np.random.default_rng(s), 0.4, 0, 0, 0)).mean() / 100
             for s in range(20)]
  assert 0.6 <= min(factors) < 0.9 and 1.1 < max(factors) <= 1.4


def _config(tree, **data):
  config = retrain_imagenet.get_config()
  config.data.update({'dir': str(tree), 'num_classes': 3, 'image_size': CROP, 'resize': RESIZE, 'workers': 0, **data})
  config.batch_size = 4
  return config


def test_missing_or_malformed_trees_are_one_line_errors(tree, tmp_path):
  cases = [(tmp_path / 'absent', 'ImageNet directory .*absent does not exist'),
           (tmp_path, 'has no val/ directory')]
  empty_class = write_tree(tmp_path / 'empty', {'train': 1, 'val': 1})
  for path in (empty_class / 'train' / CLASSES[1]).iterdir():
    path.unlink()
  cases.append((empty_class, f'class directories without images: {CLASSES[1]}'))
  mismatched = write_tree(tmp_path / 'mismatched', {'train': 1, 'val': 1})
  shutil.rmtree(mismatched / 'val' / CLASSES[2])
  cases.append((mismatched, 'the train and val splits have different classes .*n01484850'))
  for path, message in cases:
    with pytest.raises((FileNotFoundError, ValueError), match=message) as error:
      retrain_data.open_data(_config(path))
    assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='holds 3 classes but data.num_classes=1000; set --config.data.num_classes=3'):
    retrain_data.open_data(_config(tree, num_classes=1000))
  broken = write_tree(tmp_path / 'broken', {'train': 1, 'val': 1})
  (broken / 'train' / CLASSES[0] / f'{CLASSES[0]}_0.JPEG').write_bytes(b'not a jpeg')
  config = _config(broken)
  config.batch_size = 3  # one batch of all three images
  with pytest.raises(ValueError, match=f'{CLASSES[0]}_0.JPEG is not a readable image'):
    next(iter(retrain_data.open_data(config).train_batches(0, 0)))


# ---------------------------------------------------------------------------------------------------------------------
# The recipe.


def test_imagenet_config_is_the_paper_recipe():
  c = retrain_imagenet.get_config()
  assert (c.batch_size, c.learning_rate, c.momentum, c.weight_decay, c.num_epochs) == (128, 0.1, 0.9, 3e-5, 250)
  assert (c.lr_schedule, c.lr_decay, c.lr_decay_epochs, c.label_smoothing, c.grad_clip) == ('step', 0.97, 1, 0.1, 5.0)
  assert (c.model.init_channels, c.model.layers, c.model.auxiliary, c.auxiliary_weight) == (48, 14, True, 0.4)
  assert (c.model.drop_path_prob, c.data.image_size, c.data.resize, c.data.num_classes) == (0.0, 224, 256, 1000)
  # StepLR(1, 0.97), stepped before each epoch as the original: epoch e trains at 0.1 * 0.97^e.
  schedule = optimizers.epoch_step_schedule(0.1, 0.97, 1, steps_per_epoch=10)
  np.testing.assert_allclose(schedule(np.array([0, 9, 10, 2499])), [0.1, 0.1, 0.097, 0.1 * 0.97 ** 249],
                             rtol=1e-6)  # float32
  # Label smoothing as the original's CrossEntropyLabelSmooth: (-((1 - eps) onehot + eps / K) * log_softmax).
  logits, labels = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32), np.array([0, 3, 6, 2, 2])
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = 0.9 * np.eye(7)[labels] + 0.1 / 7
  np.testing.assert_allclose(train_step.cross_entropy(logits, labels, 0.1), (-targets * log_p).sum(-1).mean(),
                             rtol=1e-6)  # float32


# ---------------------------------------------------------------------------------------------------------------------
# End to end.


@pytest.fixture(scope='module')
def reference(tree, tmp_path_factory):
  """A finished tiny retraining with configs/retrain_imagenet.py: 2 epochs of 2 steps, checkpoints at every step."""
  workdir = tmp_path_factory.mktemp('runs') / 'imagenet'
  config = _config(tree, threads=2)
  config.genotype = genotype_formats.genotype_to_json(SMALL)
  config.model.update({'init_channels': 4, 'layers': 1, 'auxiliary': False})
  config.update({'num_epochs': 2, 'max_steps_per_epoch': 2, 'log_every_steps': 1, 'checkpoint_every_minutes': 1e-9,
                 'progress': False, 'compilation_cache_dir': ''})
  retrain.retrain(config, workdir)
  return workdir


def _records(workdir):
  return [{k: v for k, v in r.items() if k not in ('epoch_time_s', 'images_per_s')}
          for r in reporting.read_jsonl(workdir / 'metrics.jsonl')]


def test_trains_and_evaluates_top1_and_top5(reference):
  results = json.loads((reference / 'results.json').read_text())
  assert (results['dataset'], results['epochs'], results['steps']) == ('imagenet', 2, 4)
  assert 0 <= results['test_accuracy'] <= results['test_top5'] <= 1 and np.isfinite(results['test_loss'])
  epochs = [r for r in _records(reference) if 'epoch' in r]
  assert [r['epoch'] for r in epochs] == [1, 2]
  np.testing.assert_allclose([r['lr'] for r in epochs], [0.1, 0.097], rtol=1e-6)  # float32
  assert epochs[-1]['test_top5'] == results['test_top5']
  assert all(np.isfinite(r['train_loss']) for r in epochs)


def test_resumed_run_is_bit_identical(reference, tmp_path):
  workdir = tmp_path / 'resumed'
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / 'checkpoints' / '4')  # as if killed after step 3, the first step of the second epoch
  (workdir / 'results.json').unlink()
  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  config.data.threads = 0  # the pipeline's parallelism may change on resume: the batches are the same
  results = retrain.retrain(config, workdir)
  assert results == {**json.loads((reference / 'results.json').read_text()), 'wall_time_s': results['wall_time_s']}
  assert _records(workdir) == _records(reference)


def test_evaluate_reproduces_the_final_metrics(reference):
  results = json.loads((reference / 'results.json').read_text())
  evaluation = evaluate.evaluate_workdir(reference)
  assert (evaluation['step'], evaluation['num_test']) == (4, 6)
  assert (evaluation['test_accuracy'], evaluation['test_top5']) == (results['test_accuracy'], results['test_top5'])
  np.testing.assert_allclose(evaluation['test_loss'], results['test_loss'], rtol=1e-6)  # same program, float32
