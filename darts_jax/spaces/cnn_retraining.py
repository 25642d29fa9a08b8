"""The CNN space's retraining (the original ``train.py`` and ``train_imagenet.py``): `NetworkCIFAR` (or
`NetworkImageNet`) of a genotype trained from scratch, evaluated on the held-out images after every epoch.

The recipe (``configs/retrain_cifar10.py``; with ``evaluate_on='search_valid'``, for model selection, it trains on
the search split's training half and evaluates on its validation half, ``valid_*`` replacing ``test_*``):

* SGD, momentum 0.9, weight decay 3e-4 (coupled, as PyTorch), gradients clipped to global norm 5, learning rate
  cosine-annealed per epoch from 0.025 towards 0 (`training.optimizers.create_optimizer`, the search's optimizer);
* loss ``CE(logits) + auxiliary_weight · CE(logits_aux)`` with the auxiliary head (`cnn.train_step`);
* drop path with probability ``drop_path_prob · e / E`` in epoch ``e = 0 .. E-1`` (an argument of the compiled
  step, so the ramp never recompiles);
* augmentation on device: random crop (padding 4) and horizontal flip, normalisation, then cutout.

With ``data.name='imagenet'`` (``configs/retrain_imagenet.py``) it trains `NetworkImageNet` on JPEGs read by
`data.imagenet` (`data.retrain_data.open_data`), with a step-decayed learning rate (``lr_schedule='step'``), label
smoothing, and top-1 and top-5 accuracy on the validation images (``test_accuracy``, ``test_top5``).

What lands in the workdir besides the retrain task's common files (`darts_jax.tasks.retrain`):

* ``metrics.jsonl``: every ``log_every_steps`` steps the interval means of ``loss`` (with the auxiliary term) and
  ``accuracy``, ``grad_norm``, ``lr``, ``drop_path_prob`` and ``images_per_s``; after every epoch
  ``train_loss``/``train_accuracy``, ``test_loss``/``test_accuracy`` (whole test set, BN with running statistics),
  ``lr``, ``drop_path_prob`` and ``epoch_time_s``;
* ``curves.png`` (every epoch); in ``results.json``: ``test_accuracy``, ``test_loss``, ``params`` (without the
  auxiliary head, like the original's count), ``macs`` (multiply-adds of one image, `darts_jax.cnn.cost`),
  ``dataset`` (and ``test_top5`` on ImageNet);
* ``checkpoints/``: the `cnn.train_step.TrainState` and the position in the data.

**Fine-tuning.** With ``init_from`` (the original's PyTorch checkpoint, see `darts_jax.convert`, or a retrain
workdir of this project) the weights and BN statistics start from that network's instead of PyTorch's
initialisation (`load_initial_weights`); classifiers whose number of classes differs from the data's and an
auxiliary head the source lacks are re-initialised, everything else must match in shape. With ``freeze_epochs`` =
N > 0, only the classifiers and the auxiliary head train in the first N epochs (the stem and cells stay as loaded;
their BN statistics still follow the new data).

Data order depends only on (seed, epoch) and every random draw (augmentation, cutout, drop path, RobustDARTS's
``noise`` op) only on (seed, step, example), so a resumed run computes what an uninterrupted one does, and so does a run on another number
of devices, up to float rounding.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from darts_jax import convert
from darts_jax.cnn import cost, genotype_formats
from darts_jax.cnn.genotypes import Genotype
from darts_jax.cnn.networks import NetworkCIFAR, NetworkImageNet, count_params
from darts_jax.cnn.pretrained import merge_pretrained
from darts_jax.cnn.train_step import (TRAINED_WHEN_FROZEN, Network, TrainState, create_train_state, make_eval_step,
                                      make_train_step)
from darts_jax.data import retrain_data
from darts_jax.spaces.base import Retraining
from darts_jax.training import loop, optimizers, parallel
from darts_jax.training.checkpointing import Checkpointer
from darts_jax.training.parallel import AXIS_NAME

PyTree = Any

RESUMABLE_KEYS = frozenset({'genotype', 'data.workers', 'data.threads'})
"""Keys besides `loop.RESUMABLE_KEYS` that may change on resume: the genotype is compared as parsed, and the input
pipeline's parallelism does not change its batches."""


def create_model(config: ml_collections.ConfigDict, genotype: Genotype, num_classes: int,
                 axis_name: str | None = AXIS_NAME) -> Network:
  """The network of ``config.model`` for `genotype` (`NetworkImageNet` on ImageNet, else `NetworkCIFAR`), with BN
  over the pmapped `axis_name`."""
  network = NetworkImageNet if retrain_data.is_imagenet(config) else NetworkCIFAR
  return network(genotype, C=config.model.init_channels, num_classes=num_classes, layers=config.model.layers,
                 auxiliary=config.model.auxiliary, depthwise_impl=config.model.depthwise_impl, axis_name=axis_name)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """`training.optimizers.create_optimizer` with the CNN's classifiers and auxiliary head training while
  ``freeze_epochs`` holds the stem and cells."""
  return optimizers.create_optimizer(config, steps_per_epoch, TRAINED_WHEN_FROZEN)


@dataclasses.dataclass(frozen=True)
class Restored:
  """A retrain workdir's run: its config, genotype, network (without an axis name) and latest checkpoint."""
  config: ml_collections.ConfigDict
  genotype: Genotype
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
  genotype = genotype_formats.load_genotype(str(workdir))
  model = create_model(config, genotype, retrain_data.num_classes(config), axis_name=None)
  tx, _ = create_optimizer(config, steps_per_epoch=1)  # only the optimizer state's structure matters
  # The restore target needs shapes only, except for the PRNG key, whose implementation orbax reads from it.
  rng = jax.random.key(config.seed)
  target = jax.eval_shape(lambda: create_train_state(rng, model, retrain_data.image_shape(config), tx))
  with Checkpointer(workdir / loop.CHECKPOINT_DIR, read_only=True) as checkpointer:
    restored = checkpointer.restore_latest(target.replace(rng=rng))
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir / loop.CHECKPOINT_DIR}: the retraining has not saved one yet.')
  step, state, meta = restored
  return Restored(config, genotype, model, state, step, meta['epoch'])


def load_initial_weights(spec: str, config: ml_collections.ConfigDict, genotype: Genotype,
                         params: PyTree, batch_stats: PyTree) -> tuple[PyTree, PyTree]:
  """``(params, batch_stats)`` of the network of `config` started from `spec` (``config.init_from``): the
  original's PyTorch checkpoint (a file; converted by `darts_jax.convert` with this config's genotype, C and
  layers) or a retrain workdir (a directory; its latest checkpoint). `params` and `batch_stats` are the fresh ones,
  kept where the source has no counterpart (`cnn.pretrained.merge_pretrained`).

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
                                           network='imagenet' if retrain_data.is_imagenet(config) else 'cifar')
  else:
    raise FileNotFoundError(f'init_from={spec} does not exist: pass a PyTorch checkpoint (.pt) of the original code '
                            'or a retrain workdir.')
  merged = []
  for fresh, name in ((params, 'params'), (batch_stats, 'batch_stats')):
    tree, kept = merge_pretrained(fresh, loaded[name], spec)
    if kept:
      logging.info('init_from=%s: kept the fresh initialisation of %s.', spec, ', '.join(kept))
    merged.append(tree)
  return merged[0], merged[1]


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) for a retrain config the CNN space cannot run."""
  parallel.check_batch_size(config.batch_size)
  if not 0 <= config.model.drop_path_prob < 1:
    raise ValueError(f'model.drop_path_prob must be in [0, 1), got {config.model.drop_path_prob}.')
  if config.num_epochs <= 0:
    raise ValueError(f'num_epochs must be positive, got {config.num_epochs}.')
  if not 0 <= config.get('freeze_epochs', 0) <= config.num_epochs:
    raise ValueError(f'freeze_epochs must be in [0, num_epochs={config.num_epochs}], got {config.freeze_epochs}.')
  if config.get('evaluate_on', 'test') not in ('test', 'search_valid'):
    raise ValueError(f"evaluate_on must be 'test' or 'search_valid', got {config.evaluate_on!r}.")
  if config.get('evaluate_on', 'test') == 'search_valid' and retrain_data.is_imagenet(config):
    raise ValueError("evaluate_on='search_valid' needs a dataset held in memory, not ImageNet's JPEGs.")
  if config.get('freeze_epochs', 0) and not config.get('init_from'):
    raise ValueError('freeze_epochs needs init_from: freezing freshly initialised cells trains a random-feature model.')


def retraining(config: ml_collections.ConfigDict, workdir: Path, genotype: Genotype) -> Retraining:
  """The retraining of `genotype` under `config` writing to `workdir` (module docstring).

  Raises:
    data.DatasetNotFoundError: the dataset is not found (the message says how to get it). ValueError: invalid
      ``data`` keys or ``init_from`` weights that do not fit.
  """
  inputs = retrain_data.open_data(config, axis_name=AXIS_NAME)
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
  macs = cost.network_cost(genotype, network='imagenet' if retrain_data.is_imagenet(config) else 'cifar',
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

  def results(outcome: loop.Outcome) -> dict[str, Any]:
    entries = {
        f'{split}_accuracy': outcome.record[f'{split}_accuracy'],
        f'{split}_loss': outcome.record[f'{split}_loss'],
        'params': num_params,
        'macs': macs,  # of an image at inference (darts_jax.cnn.cost: convolutions and the classifier)
        'dataset': inputs.name,
    }
    if inputs.top5:
      entries['test_top5'] = outcome.record['test_top5']
    logging.info('%s accuracy %.4f after %d epochs.', split, entries[f'{split}_accuracy'], config.num_epochs)
    return entries

  task = loop.Task(
      state=state,
      step=lambda r_state, batch, epoch: p_step(r_state, batch, np.float32(drop_path_prob(epoch))),
      batches=epoch_batches, steps_per_epoch=steps_per_epoch, evaluate=evaluate,
      interval_entries=lambda epoch: {'drop_path_prob': drop_path_prob(epoch)},
      divergence_advice='Lower the learning_rate or change the seed.')
  return Retraining(task=task, results=results, close=inputs.close)
