"""Several DARTS searches in one compiled program: ``config.num_seeds = k`` (`darts_jax.tasks.search` dispatches).

One search leaves most of an accelerator idle; k searches with seeds ``seed, seed + 1, ..., seed + k - 1`` run as
one step, the search step ``jax.vmap``-ed over a leading seed axis of the `SearchState` (inside the ``pmap`` over
devices). Each seed has its own weights, alphas, optimizer states, augmentation key (its state is the one a single
run with ``seed + s`` initialises) and data order (the host draws seed ``s``'s batches exactly as a single run with
``seed + s`` does), so seed s of a k-seed run is that single run, up to the float rounding of the vmapped program.

The workdir:

* ``seed_<s>/``: what a single search with ``seed + s`` writes (`darts_jax.tasks.search`): ``config.json`` (that
  run's configuration), ``metrics.jsonl`` (its interval and epoch records), ``genotypes.jsonl``, ``alphas.jsonl``,
  ``genotype.json``, ``alphas.npz``, the cell diagrams, ``curves.png`` and the dynamics plots, ``early_stop.json``
  after its early stop; TensorBoard holds every seed in the top-level ``tensorboard/`` (tags ``seed_<s>/...``);
* ``config.json``, ``checkpoints/`` (one checkpoint of the stacked state: every seed resumes from the same step);
* ``metrics.jsonl``: the loop's records, every entry as the mean over seeds plus each seed's as ``seed_<s>/KEY``
  (``images_per_s`` counts one seed's images: the k-seed throughput is k times it);
* at the end ``summary.json``: per seed its directory, seed, genotype, final validation accuracy and diagnostics,
  early stop; the steps, wall time and images/s summed over seeds.

Early stopping is per seed: a seed whose rule fires stops logging there, keeps its architecture as a single run
would, and the program stops when every seed has stopped. A non-finite value in any seed stops the run (one
program), with the last checkpoint intact.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from darts_jax import data
from darts_jax.bilevel.search_step import SearchState, create_search_state
from darts_jax.cnn import cost, genotypes
from darts_jax.dynamics import diagnostics, early_stopping, regularizers, relaxations, run_files
from darts_jax.tasks import search
from darts_jax.training import config_utils, loop, parallel, reporting
from darts_jax.training.parallel import AXIS_NAME

SUMMARY_FILE = 'summary.json'


class SeedsState(flax.struct.PyTreeNode):
  """The loop's state of a k-seed search: the step counter the loop reads, and the seeds' `SearchState`s stacked
  with the seed first (every seed takes the same steps)."""
  step: jax.Array
  seeds: SearchState


def seed_dir(workdir: str | os.PathLike[str], index: int) -> Path:
  """The directory of the `index`-th seed (``seed + index``) of a k-seed search in `workdir`."""
  return Path(workdir) / f'seed_{index}'


def seed_state(state: SearchState, index: int) -> SearchState:
  """Seed `index`'s state out of the stacked state of a k-seed search."""
  return jax.tree.map(lambda x: x[index], state)


def seed_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
  """The single-run configuration that seed `index` of the k-seed `config` equals."""
  single = ml_collections.ConfigDict(config.to_dict())
  single.seed = config.seed + index
  single.num_seeds = 1
  return single


def _loop_metrics(metrics: dict[str, jax.Array], num_seeds: int) -> dict[str, jax.Array]:
  """The vmapped step's metrics (each (k,)) for the loop: every entry's mean over seeds and each seed's value as
  ``seed_<s>/KEY``; ``finite`` is whether every seed is."""
  out = {key: jnp.mean(value) for key, value in metrics.items() if key != 'finite'}
  out.update({f'seed_{s}/{key}': value[s] for s in range(num_seeds) for key, value in metrics.items()
              if key != 'finite'})
  out['finite'] = jnp.all(metrics['finite'])
  return out


def _seed_records(records: list[dict[str, Any]], index: int, steps_per_epoch: int,
                  last_step: int | None) -> list[dict[str, Any]]:
  """Seed `index`'s records (as a single run writes them) out of the k-seed run's `records`, up to `last_step`.

  Interval records keep the seed's entries and ``images_per_s``; epoch records the seed's entries, its
  ``train_loss``/``train_accuracy`` (the mean of its interval means weighted by their steps: the mean over the
  epoch's steps) and ``epoch_time_s``.
  """
  prefix = f'seed_{index}/'
  out, intervals = [], []
  for record in records:
    if last_step is not None and record['step'] > last_step:
      break
    own = {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}
    if 'epoch' not in record:
      intervals.append(record)
      out.append({'step': record['step'], **own, 'images_per_s': record['images_per_s']})
      continue
    start = (record['epoch'] - 1) * steps_per_epoch
    epoch_intervals = [r for r in intervals if start < r['step'] <= record['step']]
    counts = np.diff([start] + [r['step'] for r in epoch_intervals])
    means = {name: float(np.dot(counts, [r[prefix + key] for r in epoch_intervals]) / counts.sum())
             for name, key in (('train_loss', 'loss'), ('train_accuracy', 'accuracy'))}
    out.append({'step': record['step'], 'epoch': record['epoch'], **means, **own,
                'epoch_time_s': record['epoch_time_s']})
  return out


def _stop(records: list[dict[str, Any]], rules: ml_collections.ConfigDict) -> tuple[int, str] | None:
  """(epoch, reason) of the first epoch after which the early-stopping `rules` stop a run with these epoch
  records, or None."""
  epochs = [r for r in records if 'epoch' in r]
  for end in range(1, len(epochs) + 1):
    if (reason := early_stopping.stop_reason(epochs[:end], **rules)) is not None:
      return epochs[end - 1]['epoch'], reason
  return None


def search_seeds(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> SearchState:
  """Runs (or resumes) ``config.num_seeds`` searches in one program in `workdir` (see the module docstring).

  Returns:
    The final states, stacked with the seed first, on the host (`seed_state` takes one out).

  Raises:
    As `darts_jax.tasks.search.search`.
  """
  workdir = loop.prepare_workdir(workdir, config)
  search._check_config(config)  # pylint: disable=protected-access
  num_seeds, batch_size = config.num_seeds, config.batch_size
  ds = data.load_dataset(config.data.name, config.data.dir or None)
  train_images, train_labels, valid_images, valid_labels = data.search_split(ds, config.data.subset)
  steps_per_epoch = data.num_batches(len(train_images), batch_size, config.max_steps_per_epoch)
  logging.info('%s: %d training / %d validation images, %d steps of %d per epoch, %d seeds, %d devices.', ds.name,
               len(train_images), len(valid_images), steps_per_epoch, batch_size, num_seeds, jax.device_count())
  size = config.data.image_size
  image_shape = (size, size, train_images.shape[-1]) if size else train_images.shape[1:]
  model, schedule, first = search._create_model_and_state(  # pylint: disable=protected-access
      config, ds, image_shape, steps_per_epoch)
  # Seed s's state is the one a single run with seed + s initialises.
  states = [first] + [create_search_state(jax.random.key(config.seed + s), model, image_shape, first.weight_tx,
                                          first.arch_tx) for s in range(1, num_seeds)]
  state = SeedsState(step=first.step, seeds=jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))

  terms = search._search_terms(config, workdir, ds, image_shape, steps_per_epoch)  # pylint: disable=protected-access
  relaxation, arch_penalty, weight_perturbation, arch_cost, genotype_cost = terms
  if relaxation != relaxations.Relaxation() or weight_perturbation is not None or any(
      config.regularizer[name] for name in regularizers.REGULARIZERS):
    # The per-seed records and genotypes here are those of DARTS's softmax of the alphas (`search` derives others
    # from the relaxation's weights).
    raise ValueError('num_seeds > 1 runs the softmax relaxation without regularisers; run other relaxations and '
                     'regularisers with num_seeds = 1.')
  search_step, eval_step, hessian_step = search._make_steps(  # pylint: disable=protected-access
      config, model, schedule, ds, relaxation, arch_penalty, weight_perturbation)

  def seeds_step(state: SeedsState, train_batch, val_batch):
    # Batches carry the seed axis second: (examples, seed, ...), so that `parallel.shard` splits examples.
    seeds, metrics = jax.vmap(search_step, in_axes=(0, 1, 1))(state.seeds, train_batch, val_batch)
    return SeedsState(step=state.step + 1, seeds=seeds), _loop_metrics(metrics, num_seeds)

  def seeds_of(step_fn):  # a per-seed step of the search state, vmapped over the seeds, the batch shared
    return lambda state, batch: jax.vmap(step_fn, in_axes=(0, None))(state.seeds, batch)

  impl, rare_options = config.get('parallel_impl', parallel.DEFAULT_IMPL), search.rare_compiler_options(config)
  p_step = parallel.data_parallel(seeds_step, AXIS_NAME, impl=impl, donate_argnums=(0,))
  p_eval = parallel.data_parallel(seeds_of(eval_step), AXIS_NAME, impl=impl, compiler_options=rare_options)
  if hessian_step is not None:
    p_hessian = parallel.data_parallel(seeds_of(hessian_step), AXIS_NAME, impl=impl, compiler_options=rare_options)
    hessian_batches = parallel.shard(search._fixed_batches(  # pylint: disable=protected-access
        valid_images, valid_labels, batch_size, config.diagnostics.hessian_batches), AXIS_NAME)

  def epoch_batches(epoch: int, start: int) -> Iterator[tuple[Any, Any]]:
    """Seed s's (train, validation) batches are a single run's with seed + s; stacked on axis 1 and sharded."""
    def stream(seed: int, stream_id: int, images: np.ndarray, labels: np.ndarray):
      return data.epoch_batches(images, labels, batch_size=batch_size, seed=seed, epoch=epoch, stream=stream_id,
                                start_step=start, max_steps=steps_per_epoch, process_index=jax.process_index(),
                                process_count=jax.process_count())

    per_seed = [zip(stream(config.seed + s, 0, train_images, train_labels),
                    stream(config.seed + s, 1, valid_images, valid_labels)) for s in range(num_seeds)]
    for batches in zip(*per_seed):  # batches[s] = (train, val), each (images, labels)
      yield tuple(parallel.shard(tuple(np.stack([b[split][i] for b in batches], axis=1) for i in (0, 1)), AXIS_NAME)
                  for split in (0, 1))

  def derive(alphas: dict[str, np.ndarray]) -> genotypes.Genotype:
    return genotypes.derive_genotype(alphas, steps=model.steps, multiplier=model.multiplier)

  dirs = [seed_dir(workdir, s) for s in range(num_seeds)]
  initial_alphas = [search._host_alphas(s.alphas) for s in states]  # pylint: disable=protected-access
  histories: list[list[genotypes.Genotype]] = [[] for _ in range(num_seeds)]

  def evaluate(epoch: int, step: int, r_state: SeedsState, state: SeedsState) -> dict[str, Any]:
    del epoch
    valid = loop.evaluate(p_eval, r_state, valid_images, valid_labels, batch_size, AXIS_NAME)
    eigen = {}
    if hessian_step is not None:
      eigen = {k: np.asarray(v)[0] for k, v in jax.device_get(p_hessian(r_state, hessian_batches)).items()}
    lr = float(schedule(step - 1))
    entries = {'valid_loss': float(valid['loss'].mean()), 'valid_accuracy': float(valid['accuracy'].mean())}
    for s in range(num_seeds):
      alphas = search._host_alphas(seed_state(state.seeds, s).alphas)  # pylint: disable=protected-access
      if not histories[s]:  # as `search`: a resumed run reads the earlier epochs from the alphas log
        histories[s].extend(derive(a) for a in [initial_alphas[s]] + [
            r['alphas'] for r in run_files.read_alphas_log(dirs[s]) if r['step'] < step])
      histories[s].append(derive(alphas))
      own = {'valid_loss': float(valid['loss'][s]), 'valid_accuracy': float(valid['accuracy'][s]),
             **diagnostics.epoch_diagnostics(alphas, histories[s])}
      costs = genotype_cost(histories[s][-1])  # as `search`'s records
      own.update({f'genotype_{k}{suffix}': costs[net][k] for net, suffix in (('search', ''), ('eval', '_eval'))
                  for k in ('params', 'macs')})
      if arch_cost is not None:
        weights = diagnostics.softmax_weights(alphas)
        own[f'expected_{config.cost.metric}'] = float(cost.expected_cost(weights, arch_cost))
      own.update({**{k: float(v[s]) for k, v in eigen.items()}, 'lr': lr})
      entries.update({f'seed_{s}/{k}': v for k, v in own.items()})
    return {**entries, 'lr': lr}

  def stopped(s: int) -> tuple[int, str] | None:
    if config.early_stopping.rule == 'none':
      return None
    return _stop(reporting.read_jsonl(dirs[s] / reporting.METRICS_FILE), config.early_stopping)

  def write_seed_metrics(last_steps: list[int | None]) -> None:
    records = reporting.read_jsonl(workdir / reporting.METRICS_FILE)
    for s, last_step in enumerate(last_steps):
      lines = [json.dumps(r) + '\n' for r in _seed_records(records, s, steps_per_epoch, last_step)]
      (dirs[s] / reporting.METRICS_FILE).write_text(''.join(lines))

  def after_epoch(epoch: int, step: int, state: SeedsState, record: dict[str, Any]) -> None:
    del record
    last_steps = []
    for s in range(num_seeds):
      dirs[s].mkdir(exist_ok=True)
      stop = stopped(s)
      if stop is not None and stop[0] <= epoch:  # stopped after an earlier epoch: its files end there
        last_steps.append(stop[0] * steps_per_epoch)
        continue
      last_steps.append(None)
      if not (dirs[s] / loop.CONFIG_FILE).is_file():
        (dirs[s] / loop.CONFIG_FILE).write_text(config_utils.config_to_json(seed_config(config, s)) + '\n')
      alphas = search._host_alphas(seed_state(state.seeds, s).alphas)  # pylint: disable=protected-access
      reporting.append_jsonl(dirs[s] / search.GENOTYPES_FILE, {
          'step': step, 'epoch': epoch + 1, 'genotype': json.loads(genotypes.genotype_to_json(derive(alphas))),
          'cost': genotype_cost(derive(alphas))})
      reporting.append_jsonl(dirs[s] / search.ALPHAS_FILE, {
          'step': step, 'epoch': epoch + 1, **{k: v.tolist() for k, v in alphas.items()}})
    write_seed_metrics(last_steps)

  def should_stop(epoch: int, step: int, state: SeedsState, record: dict[str, Any]) -> str | None:
    del epoch, step, state, record
    stops = [stopped(s) for s in range(num_seeds)]
    if any(stop is None for stop in stops):
      return None
    return 'every seed stopped early: ' + '; '.join(f'seed_{s} after epoch {e} ({reason})'
                                                     for s, (e, reason) in enumerate(stops))

  def compile_evaluation(r_state: SeedsState) -> None:  # as `search`'s
    p_eval.compile_in_background(r_state, parallel.shard(next(loop.eval_batches(
        valid_images, valid_labels, batch_size, jax.process_index(), jax.process_count())), AXIS_NAME))
    if hessian_step is not None:
      p_hessian.compile_in_background(r_state, hessian_batches)

  logs = tuple(f'seed_{s}/{name}' for s in range(num_seeds)
               for name in (search.GENOTYPES_FILE, search.ALPHAS_FILE, reporting.METRICS_FILE))
  task = loop.Task(state=state, step=lambda r_state, batch, epoch: p_step(r_state, *batch), batches=epoch_batches,
                   steps_per_epoch=steps_per_epoch, evaluate=evaluate, after_epoch=after_epoch,
                   should_stop=should_stop, compile_ahead=compile_evaluation, logs=logs,
                   divergence_advice=search.DIVERGENCE_ADVICE)
  outcome = loop.train(task, config, workdir)
  if jax.process_index() == 0:
    _write_final_artifacts(config, workdir, outcome, num_seeds, steps_per_epoch, derive, genotype_cost, stopped)
  return outcome.state.seeds


def _write_final_artifacts(config, workdir, outcome, num_seeds, steps_per_epoch, derive, genotype_cost,
                           stopped) -> None:
  """Each seed's final artifacts as a single run writes them, and ``summary.json``."""
  runs = []
  for s in range(num_seeds):
    directory = seed_dir(workdir, s)
    alphas = search._host_alphas(seed_state(outcome.state.seeds, s).alphas)  # pylint: disable=protected-access
    early_stop = None
    if (stop := stopped(s)) is not None:
      stop_epoch, reason = stop
      kept = early_stopping.kept_epoch(config.early_stopping.rule, stop_epoch, config.early_stopping.window)
      alphas = next(r['alphas'] for r in run_files.read_alphas_log(directory) if r['epoch'] == kept)
      early_stop = {'rule': config.early_stopping.rule, 'reason': reason, 'stop_epoch': stop_epoch,
                    'step': stop_epoch * steps_per_epoch, 'kept_epoch': kept}
      reporting.write_json(directory / search.EARLY_STOP_FILE, early_stop)
    genotype = derive(alphas)
    search._write_final_artifacts(  # pylint: disable=protected-access
        directory, alphas, genotype, genotype_cost(genotype))
    if (workdir / search.COST_MODEL_FILE).is_file():  # the cost table a single run keeps in its workdir
      shutil.copy(workdir / search.COST_MODEL_FILE, directory / search.COST_MODEL_FILE)
    last = [r for r in reporting.read_jsonl(directory / reporting.METRICS_FILE) if 'epoch' in r][-1]
    runs.append({'workdir': directory.name, 'seed': config.seed + s,
                 'genotype': json.loads(genotypes.genotype_to_json(genotype)),
                 **{k: last[k] for k in ('epoch', 'valid_accuracy', 'valid_loss', 'alpha_entropy_normal',
                                         'alpha_entropy_reduce', 'skip_connect_normal') if k in last},
                 'early_stop': early_stop})
    logging.info('Seed %d (%s): final genotype %s', config.seed + s, directory, genotype)
  intervals = [r['images_per_s'] for r in reporting.read_jsonl(workdir / reporting.METRICS_FILE)
               if 'epoch' not in r]
  reporting.write_json(workdir / SUMMARY_FILE, {
      'num_seeds': num_seeds, 'steps': outcome.step, 'wall_time_s': outcome.wall_time_s,
      'images_per_s': num_seeds * float(np.median(intervals)) if intervals else None,
      'runs': runs})
