"""The data of a retraining (and of evaluating a trained network): one `RetrainData` whatever the source.

`open_data` is the one place where the kind of dataset is chosen: ImageNet's JPEGs (``data.name='imagenet'``,
`imagenet`: decoded and augmented on the host by grain, normalised on the device) or a dataset held in memory
(`sources.load_dataset`: augmented, cut out and normalised on the device inside the step). ``data.classes`` keeps
some classes of a dataset (relabelled 0, 1, ...); ``evaluate_on='search_valid'`` trains on the search split's
training half and holds out its validation half instead of the test set (model selection).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np

from darts_jax.data import augment, batching, imagenet, sources
from darts_jax.data.augment import Preprocess

Batch = tuple[np.ndarray, np.ndarray]  # (uint8 images (N, H, W, C), int32 labels (N,))
EvalBatch = tuple[np.ndarray, np.ndarray, np.ndarray]  # (images, labels, float mask: 1 for real examples)

IMAGENET = 'imagenet'  # data.name of ImageNet (data.imagenet); every other name is a dataset of sources.load_dataset


def is_imagenet(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` trains on ImageNet (`NetworkImageNet`, JPEGs through `imagenet`)."""
  return config.data.name == IMAGENET


def dataset_classes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The labels of ``config.data.classes`` (``'6,7,8,9'``); empty for all classes."""
  spec = str(config.data.get('classes', '') or '').strip()
  try:
    return tuple(int(c) for c in spec.split(',')) if spec else ()
  except ValueError:
    raise ValueError(f"data.classes must be comma-separated labels such as '0,1,2', got {spec!r}") from None


def load_data(config: ml_collections.ConfigDict, data_dir: str | None = None) -> sources.Dataset:
  """The dataset of ``config.data`` (from `data_dir` if given), restricted to ``data.classes`` if set."""
  ds = sources.load_dataset(config.data.name, data_dir or config.data.dir or None)
  classes = dataset_classes(config)
  return sources.select_classes(ds, classes) if classes else ds


def num_classes(config: ml_collections.ConfigDict) -> int:
  """The number of classes the network of `config` predicts."""
  if is_imagenet(config):
    return config.data.num_classes
  return len(dataset_classes(config)) or sources.DATASETS[config.data.name].num_classes


@dataclasses.dataclass(frozen=True)
class RetrainData:
  """A retraining's data, whatever the source: this process's host batches and their preparation on the device.

  Attributes:
    name: ``config.data.name``.
    num_classes: classes the network predicts.
    image_shape: (H, W, C) of the network's input.
    num_train: training images (``data.subset`` applied).
    num_test: test images (ImageNet: the validation images, the paper's test set).
    steps_per_epoch: global batches per epoch.
    train_preprocess: the device half of the training augmentation and normalisation (`augment.make_preprocess`).
    eval_preprocess: the same without augmentation.
    train_batches: ``(epoch, start) -> (uint8 images, int32 labels)`` of this process, steps ``start`` to the
      epoch's end; they depend only on (seed, epoch, step).
    test_batches: ``(batch_size) -> (images, labels, mask)`` of this process covering the test set once.
    top5: whether the evaluation counts top-5 hits.
    close: stops the pipeline's worker processes, if any.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  steps_per_epoch: int
  train_preprocess: Preprocess
  eval_preprocess: Preprocess
  train_batches: Callable[[int, int], Iterator[Batch]]
  test_batches: Callable[[int], Iterator[EvalBatch]]
  top5: bool = False
  close: Callable[[], None] = lambda: None


def open_data(config: ml_collections.ConfigDict, data_dir: str | None = None, *, train: bool = True,
              axis_name: str | None = None) -> RetrainData:
  """The data of `config` (from `data_dir` if given, else ``data.dir``): ImageNet's JPEGs through `imagenet`
  (grain, augmented on the host), any other dataset held in memory (`sources.load_dataset`, augmented on the device).
  With `train` False only the test side is prepared (``train_batches`` yields nothing). The device preparation draws
  its random numbers per example over the pmapped `axis_name` (the steps' axis).

  Raises:
    sources.DatasetNotFoundError: no such dataset (the message says how to get it). ValueError: invalid ``data`` keys
      or a malformed dataset.
  """
  if is_imagenet(config):
    return _imagenet_data(config, data_dir, train, axis_name)
  ds = load_data(config, data_dir)
  images, labels = ds.train_images, ds.train_labels
  if not 0 <= config.data.subset <= len(images):
    raise ValueError(f'data.subset={config.data.subset} must be in [0, {len(images)}] (the {ds.name} training '
                     'set size); 0 means all.')
  if config.get('evaluate_on', 'test') == 'search_valid':  # model selection: the search split, never the test set
    images, labels, held_out_images, held_out_labels = batching.search_split(ds, config.data.subset)
  else:
    if config.data.subset:
      images, labels = images[:config.data.subset], labels[:config.data.subset]
    held_out_images, held_out_labels = ds.test_images, ds.test_labels
  steps = batching.num_batches(len(images), config.batch_size, config.max_steps_per_epoch) if train else 0
  size = config.data.image_size

  def train_batches(epoch: int, start: int) -> Iterator[Batch]:
    return batching.epoch_batches(images, labels, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                              start_step=start, max_steps=steps, process_index=jax.process_index(),
                              process_count=jax.process_count())

  def test_batches(batch_size: int) -> Iterator[EvalBatch]:
    return batching.eval_batches(held_out_images, held_out_labels, batch_size, jax.process_index(), jax.process_count())

  train_preprocess, eval_preprocess = (
      augment.make_preprocess(ds.mean, ds.std, augment=augmented, image_size=size, axis_name=axis_name)
      for augmented in (config.data.augment, False))
  return RetrainData(name=ds.name, num_classes=ds.num_classes,
                     image_shape=(size, size, images.shape[-1]) if size else images.shape[1:],
                     num_train=len(images), num_test=len(held_out_images), steps_per_epoch=steps,
                     train_preprocess=train_preprocess, eval_preprocess=eval_preprocess, train_batches=train_batches,
                     test_batches=test_batches)


def _imagenet_data(config: ml_collections.ConfigDict, data_dir: str | None, train: bool,
                   axis_name: str | None) -> RetrainData:
  cfg = config.data
  if not 0 < cfg.image_size <= cfg.resize:
    raise ValueError(f'data.image_size ({cfg.image_size}) must be positive and at most data.resize ({cfg.resize}).')
  if cfg.workers < 0 or cfg.threads < 0:
    raise ValueError(f'data.workers ({cfg.workers}) and data.threads ({cfg.threads}) must be non-negative.')
  root = imagenet.data_root(data_dir or cfg.dir or None)
  val = imagenet.open_split(root, 'val')
  pipeline, steps, num_train = None, 0, 0
  if train:
    train_split = imagenet.open_split(root, 'train')
    imagenet.check_classes(train_split, val, root, cfg.num_classes)
    num_train = len(train_split)
    steps = imagenet.num_train_batches(num_train, config.batch_size, config.max_steps_per_epoch)
    pipeline = imagenet.TrainBatches(
        train_split, batch_size=config.batch_size, steps_per_epoch=steps, num_epochs=config.num_epochs,
        seed=config.seed, image_size=cfg.image_size, resize=cfg.resize, augment=cfg.augment,
        process_index=jax.process_index(), process_count=jax.process_count(), workers=cfg.workers,
        threads=cfg.threads)
  elif len(val.class_names) != cfg.num_classes:
    raise ValueError(f'{root} holds {len(val.class_names)} classes but data.num_classes={cfg.num_classes}.')

  def test_batches(batch_size: int) -> Iterator[EvalBatch]:
    return imagenet.eval_batches(val, batch_size, image_size=cfg.image_size, resize=cfg.resize,
                                 process_index=jax.process_index(), process_count=jax.process_count(),
                                 workers=cfg.workers, threads=cfg.threads)

  # Augmented on the host: the device only normalises.
  preprocess = augment.make_preprocess(imagenet.MEAN, imagenet.STD, axis_name=axis_name)
  return RetrainData(name=IMAGENET, num_classes=cfg.num_classes, image_shape=image_shape(config),
                     num_train=num_train, num_test=len(val), steps_per_epoch=steps, train_preprocess=preprocess,
                     eval_preprocess=preprocess, train_batches=pipeline or (lambda epoch, start: iter(())),
                     test_batches=test_batches, top5=True, close=pipeline.close if pipeline else lambda: None)


def class_names(config: ml_collections.ConfigDict) -> list[str]:
  """The names of the classes the network of `config` predicts, by output index (ImageNet: their indices; the
  class directories name them)."""
  if is_imagenet(config):
    return [str(i) for i in range(config.data.num_classes)]
  names = sources.class_names(config.data.name)
  return [names[c] for c in dataset_classes(config)] or names


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the network's input: the dataset's images, resized to ``data.image_size`` if set (ImageNet: the
  crop)."""
  if is_imagenet(config):
    return config.data.image_size, config.data.image_size, 3
  h, w, c = sources.DATASETS[config.data.name].image_shape
  size = config.data.image_size
  return (size, size, c) if size else (h, w, c)
