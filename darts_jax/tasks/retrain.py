"""Training a genotype from scratch (the original `train.py`): state, pmapped steps, and the `retrain` loop.

`retrain(config, workdir)` trains `networks.NetworkCIFAR` built from ``config.genotype`` on the whole training set
and evaluates it on the test set after every epoch, with the paper's recipe (``configs/retrain_cifar10.py``; with
``evaluate_on='search_valid'``, for model selection, it trains on the search split's training half and evaluates on
its validation half, ``valid_*`` replacing ``test_*``):

* SGD, momentum 0.9, weight decay 3e-4 (coupled, as PyTorch), gradients clipped to global norm 5, learning rate
  cosine-annealed per epoch from 0.025 towards 0 (`training.optimizers.epoch_cosine_schedule`, the same optimizer as search);
* loss ``CE(logits) + auxiliary_weight · CE(logits_aux)`` with the auxiliary head;
* drop path with probability ``drop_path_prob · e / E`` in epoch ``e = 0 .. E-1`` (an argument of the compiled
  step, so the ramp never recompiles);
* augmentation on device: random crop (padding 4) and horizontal flip, normalisation, then cutout.

With ``data.name='imagenet'`` (``configs/retrain_imagenet.py``, the original ``train_imagenet.py``) it trains
`networks.NetworkImageNet` on JPEGs read by `data.imagenet` (grain; random-resized crop, flip and colour jitter on
the host, normalisation on the device), with a step-decayed learning rate (``lr_schedule='step'``), label smoothing,
and top-1 and top-5 accuracy on the validation images (``test_accuracy``, ``test_top5``). `open_data` is the one
place where the kind of dataset is chosen.

It writes to `workdir`:

* ``config.json`` and ``genotype.json`` (the genotype trained);
* ``metrics.jsonl`` and ``tensorboard/``: every ``log_every_steps`` steps the interval means of ``loss`` (with the
  auxiliary term) and ``accuracy``, ``grad_norm``, ``lr``, ``drop_path_prob`` and ``images_per_s``; after every
  epoch (records with an ``epoch`` key, 1 = after the first) ``train_loss``/``train_accuracy`` (means over the
  epoch's steps), ``test_loss``/``test_accuracy`` (whole test set, BN with running statistics), ``lr``,
  ``drop_path_prob`` and ``epoch_time_s``;
* ``curves.png`` (updated every epoch) and, at the end, ``results.json``: ``test_accuracy``, ``test_loss``,
  ``params`` (without the auxiliary head, like the original's count), ``macs`` (multiply-adds of one image,
  `darts_jax.cnn.cost`), ``epochs``, ``steps``, ``wall_time_s`` (over all resumes), ``dataset``, ``genotype``;
* ``checkpoints/``: the `TrainState` and the position in the data after every epoch and every
  ``checkpoint_every_minutes``.

**Fine-tuning.** With ``init_from`` (the original's PyTorch checkpoint, see `darts_jax.convert`, or a retrain
workdir of this project) the weights and BN statistics start from that network's instead of PyTorch's
initialisation; classifiers whose number of classes differs from the data's (the main and the auxiliary one) and an
auxiliary head the source lacks are re-initialised, everything else must match in shape. With ``freeze_epochs`` =
N > 0, only the classifiers and the auxiliary head train in the first N epochs (the stem and cells, the features,
stay as loaded; their BN statistics still follow the new data). ``data.classes`` trains on some classes of a
dataset only (relabelled 0, 1, ...), e.g. to pre-train on some classes and fine-tune on the others.

The loop is `training.loop.train`: running `retrain` again on the same workdir resumes from the latest checkpoint
(refused if the configuration or the genotype changed), and SIGTERM/SIGINT stop it after a checkpoint of the current
step. Data order depends only on (seed, epoch) and every random draw (augmentation, cutout, drop path) only on
(seed, step, example), so a resumed run computes what an uninterrupted one does, and so does a run on another number
of devices, up to float rounding.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from darts_jax import convert, data
from darts_jax.cnn import cost, genotypes, ops
from darts_jax.cnn.networks import AUXILIARY, NetworkCIFAR, NetworkImageNet, count_params
from darts_jax.data import imagenet
from darts_jax.data.augment import Preprocess
from darts_jax.training import curves, loop, optimizers, parallel, reporting
from darts_jax.training.checkpointing import Checkpointer
from darts_jax.training.parallel import AXIS_NAME

PyTree = Any
Batch = tuple[jax.Array, jax.Array]  # (uint8 images (N, H, W, C), int32 labels (N,))
EvalBatch = tuple[jax.Array, jax.Array, jax.Array]  # (images, labels, float mask: 1 for real examples)
Metrics = dict[str, jax.Array]
Network = NetworkCIFAR | NetworkImageNet

GENOTYPE_FILE = 'genotype.json'
RESUMABLE_KEYS = frozenset({'genotype', 'data.workers', 'data.threads'})
"""Keys besides `loop.RESUMABLE_KEYS` that may change on resume: the genotype is compared as parsed, and the input
pipeline's parallelism does not change its batches."""
IMAGENET = 'imagenet'  # data.name of ImageNet (data.imagenet); every other name is a dataset of data.load_dataset
RESULTS_FILE = 'results.json'


# ---------------------------------------------------------------------------------------------------------------------
# Genotype and model.


def load_genotype(spec: str) -> genotypes.Genotype:
  """The genotype named or given by `spec`.

  Args:
    spec: one of

      * a name in `genotypes.KNOWN_GENOTYPES` (``'DARTS_V2'``);
      * a directory holding a ``genotype.json``: a search workdir (its final genotype) or a retrain workdir;
      * a file holding a genotype as JSON (``genotype.json``) or as the ``Genotype(...)`` repr the original prints;
      * the JSON or repr text itself.

  Raises:
    ValueError: for a malformed or invalid genotype, or an empty `spec` (the message says which).
    FileNotFoundError: for a directory without ``genotype.json``.
  """
  text = (spec or '').strip()
  if not text:
    raise ValueError('no genotype given: pass --config.genotype=NAME (e.g. DARTS_V2), a search workdir, a '
                     'genotype.json file, or the genotype as JSON or Genotype(...) text.')
  path = _existing_path(text)
  if path is None:
    return genotypes.parse_genotype(text)
  if path.is_dir():
    path = path / GENOTYPE_FILE
    if not path.is_file():
      raise FileNotFoundError(f'{path} does not exist: {text} is a directory without a genotype.json (a search '
                              'writes it after its last epoch).')
  try:
    return genotypes.parse_genotype(path.read_text())
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None


def _existing_path(text: str) -> Path | None:
  try:
    path = Path(text).expanduser()
    return path if path.exists() else None
  except OSError:  # e.g. genotype JSON longer than a file name may be
    return None


def is_imagenet(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` trains on ImageNet (`NetworkImageNet`, JPEGs through `data.imagenet`)."""
  return config.data.name == IMAGENET


def create_model(config: ml_collections.ConfigDict, genotype: genotypes.Genotype, num_classes: int,
                 axis_name: str | None = AXIS_NAME) -> Network:
  """The network of ``config.model`` for `genotype` (`NetworkImageNet` on ImageNet, else `NetworkCIFAR`), with BN
  over the pmapped `axis_name`."""
  network = NetworkImageNet if is_imagenet(config) else NetworkCIFAR
  return network(genotype, C=config.model.init_channels, num_classes=num_classes, layers=config.model.layers,
                 auxiliary=config.model.auxiliary, depthwise_impl=config.model.depthwise_impl, axis_name=axis_name)


TRAINED_WHEN_FROZEN = ('classifier', AUXILIARY)
"""Top-level parameters that train while ``freeze_epochs`` holds the others (the stem and the cells)."""


def _frozen(params: PyTree) -> PyTree:
  return {name: jax.tree.map(lambda _, name=name: name not in TRAINED_WHEN_FROZEN, subtree)
          for name, subtree in params.items()}


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of `config` (`training.optimizers.weight_optimizer`) and its learning-rate schedule: cosine per
  epoch, or with ``lr_schedule='step'`` decayed by ``lr_decay`` every ``lr_decay_epochs`` epochs (ImageNet).

  With ``freeze_epochs`` = N > 0, the gradients and updates of the stem and cells are zeroed (an `optax.masked`
  scale by 0) for the first ``N · steps_per_epoch`` steps: zeroing the gradients keeps them out of the global-norm
  clipping and the momentum, zeroing the updates keeps weight decay from moving frozen weights.
  """
  kind = config.get('lr_schedule', 'cosine')
  if kind == 'step':
    schedule = optimizers.epoch_step_schedule(config.learning_rate, config.lr_decay, config.lr_decay_epochs,
                                              steps_per_epoch)
  elif kind == 'cosine':
    schedule = optimizers.epoch_cosine_schedule(config.learning_rate, config.learning_rate_min, config.num_epochs,
                                                steps_per_epoch)
  else:
    raise ValueError(f"lr_schedule must be 'cosine' or 'step', got {kind!r}.")
  tx = optimizers.weight_optimizer(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                                   grad_clip=config.grad_clip)
  frozen_steps = config.get('freeze_epochs', 0) * steps_per_epoch
  if frozen_steps:
    freeze = lambda: optax.masked(optax.scale_by_schedule(lambda count: (count >= frozen_steps).astype(jnp.float32)),
                                  _frozen)
    tx = optax.chain(freeze(), tx, freeze())
  return tx, schedule


def dataset_classes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The labels of ``config.data.classes`` (``'6,7,8,9'``); empty for all classes."""
  spec = str(config.data.get('classes', '') or '').strip()
  try:
    return tuple(int(c) for c in spec.split(',')) if spec else ()
  except ValueError:
    raise ValueError(f"data.classes must be comma-separated labels such as '0,1,2', got {spec!r}") from None


def load_data(config: ml_collections.ConfigDict, data_dir: str | None = None) -> data.Dataset:
  """The dataset of ``config.data`` (from `data_dir` if given), restricted to ``data.classes`` if set."""
  ds = data.load_dataset(config.data.name, data_dir or config.data.dir or None)
  classes = dataset_classes(config)
  return data.select_classes(ds, classes) if classes else ds


def num_classes(config: ml_collections.ConfigDict) -> int:
  """The number of classes the network of `config` predicts."""
  if is_imagenet(config):
    return config.data.num_classes
  return len(dataset_classes(config)) or data.DATASETS[config.data.name].num_classes


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
    train_preprocess: the device half of the training augmentation and normalisation (`data.make_preprocess`).
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


def open_data(config: ml_collections.ConfigDict, data_dir: str | None = None, *, train: bool = True) -> RetrainData:
  """The data of `config` (from `data_dir` if given, else ``data.dir``): ImageNet's JPEGs through `data.imagenet`
  (grain, augmented on the host), any other dataset held in memory (`data.load_dataset`, augmented on the device).
  With `train` False only the test side is prepared (``train_batches`` yields nothing).

  Raises:
    data.DatasetNotFoundError: no such dataset (the message says how to get it). ValueError: invalid ``data`` keys
      or a malformed dataset.
  """
  if is_imagenet(config):
    return _imagenet_data(config, data_dir, train)
  ds = load_data(config, data_dir)
  images, labels = ds.train_images, ds.train_labels
  if not 0 <= config.data.subset <= len(images):
    raise ValueError(f'data.subset={config.data.subset} must be in [0, {len(images)}] (the {ds.name} training '
                     'set size); 0 means all.')
  if config.get('evaluate_on', 'test') == 'search_valid':  # model selection: the search split, never the test set
    images, labels, held_out_images, held_out_labels = data.search_split(ds, config.data.subset)
  else:
    if config.data.subset:
      images, labels = images[:config.data.subset], labels[:config.data.subset]
    held_out_images, held_out_labels = ds.test_images, ds.test_labels
  steps = data.num_batches(len(images), config.batch_size, config.max_steps_per_epoch) if train else 0
  size = config.data.image_size

  def train_batches(epoch: int, start: int) -> Iterator[Batch]:
    return data.epoch_batches(images, labels, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
                              start_step=start, max_steps=steps, process_index=jax.process_index(),
                              process_count=jax.process_count())

  def test_batches(batch_size: int) -> Iterator[EvalBatch]:
    return loop.eval_batches(held_out_images, held_out_labels, batch_size, jax.process_index(), jax.process_count())

  train_preprocess, eval_preprocess = (
      data.make_preprocess(ds.mean, ds.std, augment=augment, image_size=size, axis_name=AXIS_NAME)
      for augment in (config.data.augment, False))
  return RetrainData(name=ds.name, num_classes=ds.num_classes,
                     image_shape=(size, size, images.shape[-1]) if size else images.shape[1:],
                     num_train=len(images), num_test=len(held_out_images), steps_per_epoch=steps,
                     train_preprocess=train_preprocess, eval_preprocess=eval_preprocess, train_batches=train_batches,
                     test_batches=test_batches)


def _imagenet_data(config: ml_collections.ConfigDict, data_dir: str | None, train: bool) -> RetrainData:
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
  preprocess = data.make_preprocess(imagenet.MEAN, imagenet.STD, axis_name=AXIS_NAME)
  return RetrainData(name=IMAGENET, num_classes=cfg.num_classes, image_shape=image_shape(config),
                     num_train=num_train, num_test=len(val), steps_per_epoch=steps, train_preprocess=preprocess,
                     eval_preprocess=preprocess, train_batches=pipeline or (lambda epoch, start: iter(())),
                     test_batches=test_batches, top5=True, close=pipeline.close if pipeline else lambda: None)


def class_names(config: ml_collections.ConfigDict) -> list[str]:
  """The names of the classes the network of `config` predicts, by output index (ImageNet: their indices; the
  class directories name them)."""
  if is_imagenet(config):
    return [str(i) for i in range(config.data.num_classes)]
  names = data.class_names(config.data.name)
  return [names[c] for c in dataset_classes(config)] or names


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the network's input: the dataset's images, resized to ``data.image_size`` if set (ImageNet: the
  crop)."""
  if is_imagenet(config):
    return config.data.image_size, config.data.image_size, 3
  h, w, c = data.DATASETS[config.data.name].image_shape
  size = config.data.image_size
  return (size, size, c) if size else (h, w, c)


@dataclasses.dataclass(frozen=True)
class Restored:
  """A retrain workdir's run: its config, genotype, network (without an axis name) and latest checkpoint."""
  config: ml_collections.ConfigDict
  genotype: genotypes.Genotype
  model: Network
  state: TrainState
  step: int
  epoch: int


def restore_workdir(workdir: str | os.PathLike[str]) -> Restored:
  """The latest checkpoint of the retrain run in `workdir`, with what it takes to use it (no data is read).

  Raises:
    FileNotFoundError: when `workdir` has no ``config.json`` or no checkpoint.
    ValueError: when `workdir` is not a retrain workdir or its files are damaged.
  """
  workdir = Path(workdir)
  config_path = workdir / loop.CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f'{config_path} does not exist: {workdir} is not a retrain workdir (run_retrain.py '
                            'writes config.json, genotype.json and checkpoints/ there).')
  try:
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  except ValueError as e:
    raise ValueError(f'{config_path} is not valid JSON ({e}).') from None
  if 'genotype' not in config or 'auxiliary' not in config.get('model', {}):
    raise ValueError(f'{workdir} is not a retrain workdir: its config.json has no genotype (a search workdir? '
                     'retrain its genotype with run_retrain.py --config.genotype=WORKDIR).')
  genotype = load_genotype(str(workdir))
  model = create_model(config, genotype, num_classes(config), axis_name=None)
  tx, _ = create_optimizer(config, steps_per_epoch=1)  # only the optimizer state's structure matters
  # The restore target needs shapes only, except for the PRNG key, whose implementation orbax reads from it.
  rng = jax.random.key(config.seed)
  target = jax.eval_shape(lambda: create_train_state(rng, model, image_shape(config), tx))
  with Checkpointer(workdir / loop.CHECKPOINT_DIR, read_only=True) as checkpointer:
    restored = checkpointer.restore_latest(target.replace(rng=rng))
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir / loop.CHECKPOINT_DIR}: the retraining has not saved one yet.')
  step, state, meta = restored
  return Restored(config, genotype, model, state, step, meta['epoch'])


def _merge_pretrained(fresh: Mapping[str, PyTree], loaded: Mapping[str, PyTree], source: str) -> dict[str, PyTree]:
  """`loaded` where it fits `fresh`: classifiers of another number of classes and an auxiliary head `loaded` lacks
  keep their fresh initialisation, parts `fresh` lacks are dropped; any other difference is an error."""
  merged, kept, mismatched = {}, [], []
  for name, subtree in fresh.items():
    if name not in loaded:
      if name != AUXILIARY:
        mismatched.append(f'{name} (missing)')
      merged[name] = subtree
      kept.append(name)
      continue
    loaded_leaves = dict(jax.tree_util.tree_flatten_with_path(loaded[name])[0])
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(subtree)[0]:
      where, other = name + jax.tree_util.keystr(path), loaded_leaves.get(path)
      if other is not None and other.shape == leaf.shape:
        leaves.append(jnp.asarray(other, leaf.dtype))
      elif other is not None and (name == 'classifier' or where.startswith(f"{AUXILIARY}['classifier']")):
        leaves.append(leaf)  # another number of classes
        kept.append(where)
      else:
        mismatched.append(f'{where} {None if other is None else tuple(other.shape)} (expected {tuple(leaf.shape)})')
    if not mismatched:
      merged[name] = jax.tree.unflatten(jax.tree.structure(subtree), leaves)
  if mismatched:
    shown = ', '.join(mismatched[:6]) + (f' (and {len(mismatched) - 6} more)' if len(mismatched) > 6 else '')
    raise ValueError(f'init_from={source} does not fit this network (genotype, model.init_channels, model.layers and '
                     f'the image channels must be those of the source): {shown}')
  if kept:
    logging.info('init_from=%s: kept the fresh initialisation of %s.', source, ', '.join(kept))
  return merged


def load_initial_weights(spec: str, config: ml_collections.ConfigDict, genotype: genotypes.Genotype,
                         params: PyTree, batch_stats: PyTree) -> tuple[PyTree, PyTree]:
  """``(params, batch_stats)`` of the network of `config` started from `spec` (``config.init_from``): the
  original's PyTorch checkpoint (a file; converted by `darts_jax.convert` with this config's genotype, C and
  layers) or a retrain workdir (a directory; its latest checkpoint). `params` and `batch_stats` are the fresh ones,
  kept where the source has no counterpart (see the module docstring).

  Raises:
    FileNotFoundError: `spec` does not exist. ImportError: a ``.pt`` file without PyTorch installed.
    ValueError: the source does not fit this network (naming the tensors and their shapes).
  """
  path = Path(spec).expanduser()
  if path.is_dir():
    source = restore_workdir(path).state
    loaded = {'params': source.params, 'batch_stats': source.batch_stats}
  elif path.is_file():
    loaded = convert.from_torch_state_dict(convert.load_torch_checkpoint(path), genotype=genotype,
                                           C=config.model.init_channels, layers=config.model.layers,
                                           network='imagenet' if is_imagenet(config) else 'cifar')
  else:
    raise FileNotFoundError(f'init_from={spec} does not exist: pass a PyTorch checkpoint (.pt) of the original code '
                            'or a retrain workdir.')
  return (_merge_pretrained(params, loaded['params'], spec),
          _merge_pretrained(batch_stats, loaded['batch_stats'], spec))


# ---------------------------------------------------------------------------------------------------------------------
# State and steps.


class TrainState(flax.struct.PyTreeNode):
  """Everything a training step reads and writes; a pytree (checkpointable as is).

  Attributes:
    step: int32 scalar, the number of steps taken.
    params: network weights (incl. the auxiliary head's).
    batch_stats: BN running statistics.
    opt_state: state of `tx`.
    rng: base PRNG key of the random draws; step ``t`` uses ``fold_in(rng, t)``.
    tx: the optimizer (static).
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_train_state(rng: jax.Array, model: Network, image_shape: tuple[int, int, int],
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises the weights (PyTorch's default init), BN statistics and optimizer state.

  Args:
    rng: PRNG key, split into the initialisation key and the base key of the steps' random draws.
    model: the network.
    image_shape: (H, W, C) of one input image.
    tx: e.g. `training.optimizers.weight_optimizer`.
  """
  params_key, step_key = jax.random.split(rng)
  params_key = ops.init_key(params_key)  # compiles fast: one fused kernel per parameter tensor
  variables = jax.jit(model.init, static_argnames='train')(
      params_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params), rng=step_key, tx=tx)


def _cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def make_train_step(model: Network, schedule: optax.Schedule, preprocess: Preprocess, *, cutout: int,
                    auxiliary_weight: float, label_smoothing: float = 0.0
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Builds ``train_step(state, batch, drop_path_prob) -> (state, metrics)``.

  The step prepares the uint8 batch on device with `preprocess` (`data.make_preprocess`: augmentation,
  resizing, normalisation) and cutout of side `cutout` if > 0 (`make_cutout`), computes
  ``CE(logits) + auxiliary_weight · CE(logits_aux)`` in training mode with drop path ``drop_path_prob`` (a traced
  scalar), and applies ``state.tx``. With `label_smoothing` ε > 0 both cross-entropies are against the smoothed
  targets ``(1 - ε) onehot + ε / K`` (the original's ``CrossEntropyLabelSmooth`` on ImageNet). Jit it, or pmap it with ``axis_name=model.axis_name`` and
  ``in_axes=(0, 0, None)`` (and `preprocess` built with the same axis name): BN statistics and gradients are then
  global, random draws per example, and the step equals a single-device step on the global batch.

  Returns:
    The step function. ``metrics`` (equal on all devices): ``loss``, ``accuracy`` (of the main logits),
    ``grad_norm`` (before clipping), ``lr``, and ``finite``: whether the loss, the gradient norm and the new
    parameters are all finite.
  """
  axis_name = model.axis_name
  apply_cutout = data.make_cutout(cutout, axis_name) if cutout else None

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def train_step(state: TrainState, batch: Batch, drop_path_prob: jax.Array) -> tuple[TrainState, Metrics]:
    images, labels = batch
    augment_key, cutout_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    x = preprocess(augment_key, images)
    if apply_cutout is not None:
      x = apply_cutout(cutout_key, x)

    def loss_fn(params):
      (logits, logits_aux), updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x, train=True, drop_path_prob=drop_path_prob,
          rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      loss = _cross_entropy(logits, labels, label_smoothing)
      if logits_aux is not None:
        loss += auxiliary_weight * _cross_entropy(logits_aux, labels, label_smoothing)
      return loss, (logits, updates['batch_stats'])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = pmean(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = pmean({'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)})
    metrics.update(grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    metrics['finite'] = jnp.all(jnp.stack(
        [jnp.isfinite(metrics['loss']), jnp.isfinite(metrics['grad_norm'])]
        + [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: Network, preprocess: Preprocess, top5: bool = False) -> Callable[[TrainState, EvalBatch], Metrics]:
  """Builds ``eval_step(state, (images, labels, mask)) -> sums``: the network in evaluation mode (BN with running
  statistics, no drop path, no auxiliary head) on uint8 images prepared by `preprocess` (built without
  augmentation). ``mask`` (1 for real examples, 0 for padding) lets the last batch be padded. Returns ``loss_sum``,
  ``correct``, ``count`` and with `top5` ``correct_top5`` (label among the 5 largest logits), summed over devices
  under ``pmap``."""
  axis_name = model.axis_name

  def eval_step(state: TrainState, batch: EvalBatch) -> Metrics:
    images, labels, mask = batch
    logits, _ = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                            preprocess(None, images), train=False)
    sums = {
        'loss_sum': jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask),
        'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        'count': jnp.sum(mask),
    }
    if top5:
      top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
      sums['correct_top5'] = jnp.sum(jnp.any(top == labels[:, None], axis=-1) * mask)
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)

  return eval_step


# ---------------------------------------------------------------------------------------------------------------------
# The loop.


def _check_config(config: ml_collections.ConfigDict) -> None:
  parallel.check_batch_size(config.batch_size)
  if not 0 <= config.model.drop_path_prob < 1:
    raise ValueError(f'model.drop_path_prob must be in [0, 1), got {config.model.drop_path_prob}.')
  if config.num_epochs <= 0:
    raise ValueError(f'num_epochs must be positive, got {config.num_epochs}.')
  if not 0 <= config.get('freeze_epochs', 0) <= config.num_epochs:
    raise ValueError(f'freeze_epochs must be in [0, num_epochs={config.num_epochs}], got {config.freeze_epochs}.')
  if config.get('evaluate_on', 'test') not in ('test', 'search_valid'):
    raise ValueError(f"evaluate_on must be 'test' or 'search_valid', got {config.evaluate_on!r}.")
  if config.get('evaluate_on', 'test') == 'search_valid' and is_imagenet(config):
    raise ValueError("evaluate_on='search_valid' needs a dataset held in memory, not ImageNet's JPEGs.")
  if config.get('freeze_epochs', 0) and not config.get('init_from'):
    raise ValueError('freeze_epochs needs init_from: freezing freshly initialised cells trains a random-feature model.')


def _check_same_genotype(workdir: Path, genotype: genotypes.Genotype) -> None:
  """Refuses a workdir of another genotype's run: its checkpoints might even restore into the new network."""
  path = workdir / GENOTYPE_FILE
  if path.is_file() and genotypes.parse_genotype(path.read_text()) != genotype:
    raise ValueError(f'{workdir} holds a retraining of another genotype ({path}); resume it with that genotype or '
                     'use a new workdir.')


def retrain(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """Trains (or resumes training) ``config.genotype`` from scratch in `workdir` (see the module docstring).

  Args:
    config: a retrain config (``configs/retrain_cifar10.py``, ``configs/retrain_quick.py``).
    workdir: the run directory; an existing one with checkpoints is resumed.

  Returns:
    The results (the content of ``results.json``).

  Raises:
    ValueError: for an invalid config or genotype (e.g. a batch size not divisible by the device count), or one
      that differs from the workdir's (`loop.ConfigMismatchError`).
    FileNotFoundError: when the genotype's directory has no genotype.json; `data.DatasetNotFoundError` when the
      dataset is not found (the message says how to get it).
    NotADirectoryError: `workdir` is a file.
    loop.NonFiniteLossError: when training diverges; the checkpoints hold the last good state.
    loop.Preempted: a signal stopped the training after a checkpoint.
  """
  # The genotype is compared as parsed (below), not as the text that named it.
  workdir = loop.prepare_workdir(workdir, config, loop.RESUMABLE_KEYS | RESUMABLE_KEYS)
  _check_config(config)
  genotype = load_genotype(config.genotype)
  _check_same_genotype(workdir, genotype)

  inputs = open_data(config)
  split = 'valid' if config.get('evaluate_on', 'test') == 'search_valid' else 'test'  # the held-out images
  batch_size, steps_per_epoch = config.batch_size, inputs.steps_per_epoch
  logging.info('%s: %d training / %d %s images, %d steps of %d per epoch, %d devices.', inputs.name,
               inputs.num_train, inputs.num_test, split, steps_per_epoch, batch_size, jax.device_count())

  model = create_model(config, genotype, inputs.num_classes)
  tx, schedule = create_optimizer(config, steps_per_epoch)
  state = create_train_state(jax.random.key(config.seed), model, inputs.image_shape, tx)
  if config.get('init_from'):  # on resume the checkpoint replaces it, as any initial state
    params, batch_stats = load_initial_weights(config.init_from, config, genotype, state.params, state.batch_stats)
    state = state.replace(params=params, batch_stats=batch_stats, opt_state=tx.init(params))
  num_params = count_params(state.params)
  macs = cost.network_cost(genotype, network='imagenet' if is_imagenet(config) else 'cifar',
                           C=config.model.init_channels, layers=config.model.layers, num_classes=inputs.num_classes,
                           image_size=tuple(inputs.image_shape[:2]), in_channels=inputs.image_shape[-1]).macs
  logging.info('Genotype %s: %d parameters (%.3f MB) without the auxiliary head, %.1fM multiply-adds.', genotype,
               num_params, num_params / 1e6, macs / 1e6)

  impl = config.get('parallel_impl', parallel.DEFAULT_IMPL)
  p_step = parallel.data_parallel(
      make_train_step(model, schedule, inputs.train_preprocess, cutout=config.data.get('cutout', 0),
                      auxiliary_weight=config.auxiliary_weight, label_smoothing=config.get('label_smoothing', 0.0)),
      AXIS_NAME, impl=impl, in_axes=(0, 0, None), donate_argnums=(0,))
  p_eval = parallel.data_parallel(make_eval_step(model, inputs.eval_preprocess, top5=inputs.top5), AXIS_NAME, impl=impl)

  def drop_path_prob(epoch: int) -> float:
    # The original sets model.drop_path_prob = drop_path_prob * epoch / epochs before each epoch.
    return config.model.drop_path_prob * epoch / config.num_epochs

  def epoch_batches(epoch: int, start: int) -> Iterator[Any]:
    return (parallel.shard(b, AXIS_NAME) for b in inputs.train_batches(epoch, start))

  def evaluate(epoch: int, step: int, r_state: TrainState, state: TrainState) -> dict[str, Any]:
    del state
    test = loop.evaluate_batches(p_eval, r_state, inputs.test_batches(batch_size), AXIS_NAME)
    top5 = {'test_top5': test['top5']} if inputs.top5 else {}
    return {f'{split}_loss': test['loss'], f'{split}_accuracy': test['accuracy'], **top5,
            'lr': float(schedule(step - 1)),
            'drop_path_prob': drop_path_prob(epoch)}

  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_json(workdir / GENOTYPE_FILE, json.loads(genotypes.genotype_to_json(genotype)))
  task = loop.Task(
      state=state,
      step=lambda r_state, batch, epoch: p_step(r_state, batch, np.float32(drop_path_prob(epoch))),
      batches=epoch_batches, steps_per_epoch=steps_per_epoch, evaluate=evaluate,
      after_epoch=lambda *_: curves.plot_curves(str(workdir / reporting.METRICS_FILE), str(workdir / 'curves.png')),
      interval_entries=lambda epoch: {'drop_path_prob': drop_path_prob(epoch)},
      divergence_advice='Lower the learning_rate or change the seed.')
  try:
    outcome = loop.train(task, config, workdir)
  finally:
    inputs.close()

  results = {
      f'{split}_accuracy': outcome.record[f'{split}_accuracy'],
      f'{split}_loss': outcome.record[f'{split}_loss'],
      'params': num_params,
      'macs': macs,  # of an image at inference (darts_jax.cnn.cost: convolutions and the classifier)
      'epochs': config.num_epochs,
      'steps': outcome.step,
      'wall_time_s': outcome.wall_time_s,
      'dataset': inputs.name,
      'genotype': json.loads(genotypes.genotype_to_json(genotype)),
  }
  if inputs.top5:
    results['test_top5'] = outcome.record['test_top5']
  if jax.process_index() == 0:
    reporting.write_json(workdir / RESULTS_FILE, results)
    logging.info('%s accuracy %.4f after %d epochs; results in %s.', split, results[f'{split}_accuracy'],
                 config.num_epochs, workdir / RESULTS_FILE)
  return results
