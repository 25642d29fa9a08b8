"""The DARTS architecture search loop (the original `train_search.py`): data, pmapped steps, logs, checkpoints.

`search(config, workdir)` runs the search described by an ml_collections config (see ``configs/search_*.py``) and
writes to `workdir`:

* ``config.json``: the configuration;
* ``metrics.jsonl`` and ``tensorboard/``: every ``log_every_steps`` steps the interval means of the supernet's
  training ``loss`` and ``accuracy``, ``grad_norm``, ``arch_grad_norm``, ``lr`` and ``images_per_s``; after every
  epoch (records with an ``epoch`` key, 1 = after the first) the running means over the epoch's steps
  ``train_loss``/``train_accuracy``, the supernet's ``valid_loss``/``valid_accuracy`` on the whole validation split,
  the mean entropy of the softmaxed alphas ``alpha_entropy_normal``/``alpha_entropy_reduce``, ``lr`` and
  ``epoch_time_s``;
* ``genotypes.jsonl``: the genotype derived after every epoch;
* at the end ``genotype.json`` (the final genotype), ``alphas.npz`` (``normal``, ``reduce``), the cell plots
  ``normal.png``/``reduce.png`` (and their graphviz ``.dot`` sources) and ``curves.png``;
* ``checkpoints/``: the `SearchState` and the position in the data after every epoch and every
  ``checkpoint_every_minutes``.

Running `search` again on the same workdir resumes from the latest checkpoint. Data order depends only on
(seed, epoch) and augmentation only on (seed, step), so a resumed run computes exactly what an uninterrupted one
does (bit for bit on CPU).

Data parallelism: the steps are ``pmap``-ed over the local devices; each process of a multi-host run loads its own
slice of every global batch. The search is the original's for any number of devices, with the global batch
``config.batch_size``.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from darts_jax import config_utils, data, genotypes, parallel, plots, reporting
from darts_jax.loop import EpochMetrics, agree, evaluate
from darts_jax.checkpointing import Checkpointer
from darts_jax.search import (HYPERGRADIENT_METHODS, SearchState, alpha_entropy, arch_optimizer, create_search_state,
                              epoch_cosine_schedule, make_eval_step, make_preprocess, make_search_step,
                              weight_optimizer)
from darts_jax.search_network import SearchNetwork

AXIS_NAME = 'batch'
GENOTYPES_FILE = 'genotypes.jsonl'
DIVERGENCE_ADVICE = 'Lower the learning rates (learning_rate, arch_learning_rate) or change the seed.'


def _truncate_jsonl(path: Path, max_step: int) -> None:
  """Drops the records of `path` logged after step `max_step` (by a run that is being resumed)."""
  if not path.exists():
    return
  kept = [r for r in reporting.read_jsonl(path) if r['step'] <= max_step]
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(''.join(json.dumps(r) + '\n' for r in kept))
  os.replace(tmp, path)


def _write_final_artifacts(workdir: Path, alphas: dict[str, np.ndarray], genotype: genotypes.Genotype) -> None:
  reporting.write_json(workdir / 'genotype.json', json.loads(genotypes.genotype_to_json(genotype)))
  np.savez(workdir / 'alphas.npz', normal=alphas['normal'], reduce=alphas['reduce'])
  plots.plot_genotype(genotype, f'{workdir}{os.sep}')
  plots.plot_curves(str(workdir / reporting.METRICS_FILE), str(workdir / 'curves.png'))


def _create_model_and_state(config: ml_collections.ConfigDict, ds: data.Dataset, image_shape: tuple[int, ...],
                            steps_per_epoch: int) -> tuple[SearchNetwork, optax.Schedule, SearchState]:
  model = SearchNetwork(
      C=config.model.init_channels, num_classes=ds.num_classes, layers=config.model.layers,
      steps=config.model.steps, multiplier=config.model.multiplier, stem_multiplier=config.model.stem_multiplier,
      depthwise_impl=config.model.depthwise_impl, axis_name=AXIS_NAME)
  schedule = epoch_cosine_schedule(config.learning_rate, config.learning_rate_min, config.num_epochs, steps_per_epoch)
  weight_tx = weight_optimizer(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                               grad_clip=config.grad_clip)
  arch_tx = arch_optimizer(config.arch_learning_rate, weight_decay=config.arch_weight_decay)
  return model, schedule, create_search_state(jax.random.key(config.seed), model, image_shape, weight_tx, arch_tx)


def search(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> SearchState:
  """Runs (or resumes) the DARTS search of `config` in `workdir` and writes its artifacts (module docstring).

  Args:
    config: a search config (``configs/search_cifar10.py``, ``configs/search_quick.py``).
    workdir: the run directory; an existing one with checkpoints is resumed.

  Returns:
    The final search state, on the host.

  Raises:
    ValueError: for an invalid config (e.g. a batch size not divisible by the device count).
    data.DatasetNotFoundError: when the dataset is not found (the message says how to get it).
    loop.NonFiniteLossError: when the search diverges; the checkpoints hold the last good state.
  """
  workdir = Path(workdir)
  is_main = jax.process_index() == 0
  batch_size = config.batch_size
  parallel.check_batch_size(batch_size)
  if config.hypergradient not in HYPERGRADIENT_METHODS:
    raise ValueError(f'Unknown hypergradient {config.hypergradient!r}; expected one of '
                     f'{", ".join(HYPERGRADIENT_METHODS)}.')

  ds = data.load_dataset(config.data.name, config.data.dir or None)
  train_images, train_labels, valid_images, valid_labels = data.search_split(ds, config.data.subset)
  steps_per_epoch = data.num_batches(len(train_images), batch_size, config.max_steps_per_epoch)
  logging.info('%s: %d training / %d validation images, %d steps of %d per epoch, %d devices.', ds.name,
               len(train_images), len(valid_images), steps_per_epoch, batch_size, jax.device_count())
  size = config.data.image_size
  image_shape = (size, size, train_images.shape[-1]) if size else train_images.shape[1:]
  model, schedule, state = _create_model_and_state(config, ds, image_shape, steps_per_epoch)

  checkpointer = Checkpointer(workdir / 'checkpoints', max_to_keep=config.keep_checkpoints,
                              save_interval_minutes=config.checkpoint_every_minutes or None)
  position = {'epoch': 0, 'step_in_epoch': 0, **EpochMetrics().position()}
  last_saved = 0
  if (restored := checkpointer.restore_latest(state)) is not None:
    last_saved, state, meta = restored
    position.update(meta)
    logging.info('Resuming from step %d (epoch %d, step %d of the epoch).', last_saved, position['epoch'],
                 position['step_in_epoch'])

  writer = None
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config_utils.config_to_json(config) + '\n')
    writer = reporting.MetricsWriter(workdir, resume_step=last_saved)
    _truncate_jsonl(workdir / GENOTYPES_FILE, last_saved)

  train_preprocess, eval_preprocess = (
      make_preprocess(ds.mean, ds.std, augment=augment, image_size=size, axis_name=AXIS_NAME)
      for augment in (config.data.augment, False))
  p_step = jax.pmap(make_search_step(
      model, schedule, train_preprocess, hypergradient_method=config.hypergradient, momentum=config.momentum,
      weight_decay=config.weight_decay, fd_epsilon=config.fd_epsilon), axis_name=AXIS_NAME, donate_argnums=(0,))
  p_eval = jax.pmap(make_eval_step(model, eval_preprocess), axis_name=AXIS_NAME)

  def checkpoint(host_state: SearchState, step: int, meta: dict[str, Any]) -> None:
    nonlocal last_saved
    if checkpointer.save(step, host_state, meta):
      last_saved = step
      logging.info('Saved checkpoint of step %d.', step)

  def epoch_batches(epoch: int, start: int) -> Iterator[tuple[Any, Any]]:
    """(train, validation) batches from two separately shuffled streams, sharded over the local devices."""
    streams = [data.epoch_batches(images, labels, batch_size=batch_size, seed=config.seed, epoch=epoch,
                                  stream=stream, start_step=start, max_steps=steps_per_epoch,
                                  process_index=jax.process_index(), process_count=jax.process_count())
               for stream, (images, labels) in enumerate([(train_images, train_labels),
                                                          (valid_images, valid_labels)])]
    return ((parallel.shard(train, AXIS_NAME), parallel.shard(val, AXIS_NAME)) for train, val in zip(*streams))

  r_state = parallel.replicate(state, AXIS_NAME)
  step = int(state.step)
  try:
    for epoch in range(position['epoch'], config.num_epochs):
      resumed = epoch == position['epoch']
      start = position['step_in_epoch'] if resumed else 0
      sums = {k: position[k] for k in EpochMetrics().position()} if resumed else {}
      metrics = EpochMetrics(**sums, divergence_advice=DIVERGENCE_ADVICE)
      epoch_start = interval_start = time.monotonic()
      interval_images = 0
      previous = None
      bar = reporting.progress_bar(steps_per_epoch * batch_size, f'epoch {epoch + 1}/{config.num_epochs}',
                                   enabled=None if config.progress else False)
      bar.update(start * batch_size)
      with bar, data.Prefetcher(epoch_batches(epoch, start)) as batches:
        for step_in_epoch, (train_batch, val_batch) in enumerate(batches, start + 1):
          r_state, step_metrics = p_step(r_state, train_batch, val_batch)
          step += 1
          metrics.add(step_metrics)
          # Waiting for the previous step (finished, or about to) keeps one step queued behind the running one:
          # the device never idles, and the bar shows real progress.
          if previous is not None:
            jax.block_until_ready(previous)
          previous = step_metrics
          bar.update(batch_size)
          interval_images += batch_size
          last_of_epoch = step_in_epoch == steps_per_epoch
          if step % config.log_every_steps and not last_of_epoch:
            continue
          summary = metrics.flush(step)
          now = time.monotonic()
          summary['images_per_s'] = interval_images / (now - interval_start)
          interval_start, interval_images = now, 0
          bar.set_postfix(loss=f'{summary["loss"]:.3f}', acc=f'{summary["accuracy"]:.3f}')
          if writer:
            writer.write(step, summary)
          # Only after a flush: the metrics up to this step are known to be finite.
          if not last_of_epoch and agree(checkpointer.should_save_by_time()):
            checkpoint(parallel.unreplicate(r_state), step,
                       {'epoch': epoch, 'step_in_epoch': step_in_epoch, **metrics.position()})

      valid = evaluate(p_eval, r_state, valid_images, valid_labels, batch_size, AXIS_NAME)
      state = parallel.unreplicate(r_state)
      genotype = genotypes.derive_genotype(state.alphas, steps=model.steps, multiplier=model.multiplier)
      entropy = alpha_entropy(state.alphas)
      record = {
          'epoch': epoch + 1,
          'train_loss': metrics.loss_sum / metrics.steps,
          'train_accuracy': metrics.accuracy_sum / metrics.steps,
          'valid_loss': valid['loss'],
          'valid_accuracy': valid['accuracy'],
          'alpha_entropy_normal': entropy['normal'],
          'alpha_entropy_reduce': entropy['reduce'],
          'lr': summary['lr'],
          'epoch_time_s': time.monotonic() - epoch_start,
      }
      logging.info('Epoch %d/%d: %s', epoch + 1, config.num_epochs,
                   ', '.join(f'{k} {v:.4g}' for k, v in record.items() if k != 'epoch'))
      logging.info('Genotype: %s', genotype)
      if writer:
        writer.write(step, record)
        reporting.append_jsonl(workdir / GENOTYPES_FILE, {
            'step': step, 'epoch': epoch + 1, 'genotype': json.loads(genotypes.genotype_to_json(genotype))})
      checkpoint(state, step, {'epoch': epoch + 1, 'step_in_epoch': 0, **EpochMetrics().position()})
  finally:
    checkpointer.close()
    if writer:
      writer.close()

  state = parallel.unreplicate(r_state)
  if is_main:
    genotype = genotypes.derive_genotype(state.alphas, steps=model.steps, multiplier=model.multiplier)
    _write_final_artifacts(workdir, state.alphas, genotype)
    logging.info('Final genotype: %s', genotype)
  return state
