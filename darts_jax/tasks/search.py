"""The DARTS architecture search loop (the original `train_search.py`): data, pmapped steps, logs, checkpoints.

`search(config, workdir)` runs the search described by an ml_collections config (see ``configs/search_*.py``) and
writes to `workdir`:

* ``config.json``: the configuration;
* ``metrics.jsonl`` and ``tensorboard/``: every ``log_every_steps`` steps the interval means of the supernet's
  training ``loss`` and ``accuracy``, ``grad_norm``, ``arch_grad_norm``, ``lr`` and ``images_per_s``; after every
  epoch (records with an ``epoch`` key, 1 = after the first) the running means over the epoch's steps
  ``train_loss``/``train_accuracy``, the supernet's ``valid_loss``/``valid_accuracy`` on the whole validation split,
  the diagnostics of the search's dynamics (`darts_jax.dynamics.diagnostics`; per cell type ``_normal``/``_reduce``):
  ``alpha_entropy_*`` (mean entropy of the softmaxed alphas), ``alpha_max_weight_*`` (mean largest softmax weight
  per edge), ``stability_*`` (fraction of the genotype's choices unchanged since the previous epoch),
  ``unchanged_epochs``, ``skip_connect_normal``, and with ``diagnostics.hessian_iterations > 0``
  ``hessian_eigenvalue`` (dominant eigenvalue of ``∇²_α L_val`` on ``diagnostics.hessian_batches`` fixed
  validation batches, `darts_jax.dynamics.hessian`) and ``alpha_grad_norm`` (``‖∇_α L_val‖`` on the same batches);
  the parameters and multiply-adds of the derived genotype's network at the search's C, cells and image size
  (``genotype_params``, ``genotype_macs``) and at the retrain network's ``cost.eval_init_channels`` and
  ``cost.eval_layers`` on the dataset's image size (``genotype_params_eval``, ``genotype_macs_eval``), and
  ``expected_<cost.metric>``, the cost term's expected cost under the current alphas (`darts_jax.cnn.cost`);
  then ``lr`` and ``epoch_time_s``;
* ``genotypes.jsonl`` and ``alphas.jsonl``: the genotype derived (with its ``cost`` as in ``genotype.json``) and the
  alphas after every epoch;
* ``cost_model.json``: the cost of every choice of the supernet in ``cost.metric`` (`cost.ArchitectureCost`);
* at the end ``genotype.json`` (the final genotype, and under ``cost`` its network's parameters and multiply-adds
  at the search's and the retrain network's size), ``alphas.npz`` (``normal``, ``reduce``), the cell plots
  ``normal.png``/``reduce.png`` (and their graphviz ``.dot`` sources), ``curves.png`` and the plots of the
  dynamics ``convergence.png``, ``alphas.png`` and ``alphas_evolution.png`` (`darts_jax.dynamics.plots`);
* after an early stop (``early_stopping.rule``, `darts_jax.dynamics.early_stopping`) ``early_stop.json`` (rule,
  reason, the epoch of the stop and the epoch whose architecture is kept); the final artifacts then describe the
  kept architecture;
* ``checkpoints/``: the `SearchState` and the position in the data after every epoch and every
  ``checkpoint_every_minutes``.

The relaxation (``config.relaxation``, `darts_jax.relaxations`) turns the alphas into mixing weights: the steps
draw its sample once per step; the evaluation, the entropy and largest-weight diagnostics use its deterministic
weights (noise off, hard → one-hot argmax, Dirichlet → mean), the genotype and the Hessian its noise-free soft
weights (the same but for the hard rounding, which leaves nothing to rank or differentiate). Regularisers
(``config.regularizer``, `darts_jax.dynamics.regularizers`) join the validation loss; with a temperature schedule the
epoch records hold ``temperature``, with regularisers the interval records ``arch_penalty``.

The loop is `training.loop.train`: running `search` again on the same workdir resumes from the latest checkpoint
(refused if the configuration changed), and SIGTERM/SIGINT stop it after a checkpoint of the current step. Data
order depends only on (seed, epoch) and augmentation only on (seed, step), so a resumed run computes exactly what an
uninterrupted one does (bit for bit on CPU).

Data parallelism: the steps run on every device (`parallel.data_parallel`, ``config.parallel_impl``); each process
of a multi-host run loads its own slice of every global batch. The search is the original's for any number of
devices, with the global batch ``config.batch_size``.

Several seeds: with ``config.num_seeds = k > 1`` `search` runs k searches (seeds ``seed .. seed + k - 1``) as one
step vmapped over the seeds, each seed's artifacts in ``workdir/seed_<s>/`` (`darts_jax.tasks.search_seeds`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from darts_jax import data
from darts_jax.bilevel.search_step import (HYPERGRADIENT_METHODS, SECOND_ORDER_IMPLS, SearchState, WeightPerturbation,
                                          arch_optimizer, create_search_state, make_eval_step, make_search_step)
from darts_jax.cnn import cost, genotypes, plots
from darts_jax.cnn.ops import DEPTHWISE_IMPLS
from darts_jax.cnn.supernet import DTYPES, SearchNetwork
from darts_jax.dynamics import diagnostics, early_stopping, hessian, regularizers, relaxations, run_files
from darts_jax.dynamics import plots as dynamics_plots
from darts_jax.training import curves, loop, optimizers, parallel, reporting
from darts_jax.training.parallel import AXIS_NAME

GENOTYPES_FILE = 'genotypes.jsonl'
ALPHAS_FILE = run_files.ALPHAS_FILE
EARLY_STOP_FILE = run_files.EARLY_STOP_FILE
DIVERGENCE_ADVICE = 'Lower the learning rates (learning_rate, arch_learning_rate) or change the seed.'
COST_MODEL_FILE = 'cost_model.json'


def _write_final_artifacts(workdir: Path, alphas: dict[str, np.ndarray], genotype: genotypes.Genotype,
                           genotype_cost: dict[str, Any]) -> None:
  reporting.write_json(workdir / 'genotype.json',
                       {**json.loads(genotypes.genotype_to_json(genotype)), 'cost': genotype_cost})
  np.savez(workdir / 'alphas.npz', normal=alphas['normal'], reduce=alphas['reduce'])
  plots.plot_genotype(genotype, f'{workdir}{os.sep}')
  curves.plot_curves(str(workdir / reporting.METRICS_FILE), str(workdir / 'curves.png'))
  dynamics_plots.plot_search(workdir)


def _check_dynamics_config(config: ml_collections.ConfigDict) -> None:
  rule = config.early_stopping.rule
  if rule not in early_stopping.RULES:
    raise ValueError(f'Unknown early_stopping.rule {rule!r}; expected one of {", ".join(early_stopping.RULES)}.')
  if config.diagnostics.hessian_iterations < 0 or config.diagnostics.hessian_batches < 1:
    raise ValueError(f'diagnostics.hessian_iterations ({config.diagnostics.hessian_iterations}) must be >= 0 and '
                     f'diagnostics.hessian_batches ({config.diagnostics.hessian_batches}) positive.')
  if config.diagnostics.hessian_method not in hessian.HVP_METHODS:
    raise ValueError(f'Unknown diagnostics.hessian_method {config.diagnostics.hessian_method!r}; expected one of '
                     f'{", ".join(hessian.HVP_METHODS)}.')
  if config.early_stopping.window < 1:
    raise ValueError(f'early_stopping.window ({config.early_stopping.window}) must be positive.')
  if rule == 'darts_es' and not config.diagnostics.hessian_iterations:
    raise ValueError('early_stopping.rule darts_es needs the Hessian eigenvalue: set diagnostics.hessian_iterations '
                     '> 0.')


def _check_relaxation_config(config: ml_collections.ConfigDict) -> None:
  relax, reg = config.relaxation, config.regularizer
  if relax.name not in relaxations.RELAXATIONS:
    raise ValueError(f'Unknown relaxation.name {relax.name!r}; expected one of {", ".join(relaxations.RELAXATIONS)}.')
  if relax.temperature_schedule not in relaxations.SCHEDULES:
    raise ValueError(f'Unknown relaxation.temperature_schedule {relax.temperature_schedule!r}; expected one of '
                     f'{", ".join(relaxations.SCHEDULES)}.')
  if relax.temperature <= 0 or relax.final_temperature <= 0:
    raise ValueError(f'relaxation.temperature ({relax.temperature}) and relaxation.final_temperature '
                     f'({relax.final_temperature}) must be positive.')
  if relax.name == 'dirichlet' and (relax.temperature != 1 or relax.temperature_schedule != 'constant'):
    raise ValueError('relaxation.name dirichlet has no temperature: leave relaxation.temperature at 1.0 and '
                     'relaxation.temperature_schedule constant.')
  if relax.hard and relax.name == 'sigmoid':
    raise ValueError('relaxation.hard needs weights that compete: not with relaxation.name sigmoid.')
  if relax.noise_scale < 0 or (relax.noise_scale and relax.name != 'gaussian_softmax'):
    raise ValueError(f'relaxation.noise_scale ({relax.noise_scale}) must be >= 0, and is only used by '
                     'relaxation.name gaussian_softmax.')
  if relax.concentration not in relaxations.CONCENTRATIONS:
    raise ValueError(f'Unknown relaxation.concentration {relax.concentration!r}; expected one of '
                     f'{", ".join(relaxations.CONCENTRATIONS)}.')
  if reg.schedule not in ('constant', 'linear'):
    raise ValueError(f'Unknown regularizer.schedule {reg.schedule!r}; expected one of constant, linear.')
  if reg.random_smoothing < 0 or reg.random_smoothing_start < 0:
    raise ValueError(f'regularizer.random_smoothing ({reg.random_smoothing}) and regularizer.random_smoothing_start '
                     f'({reg.random_smoothing_start}) must be >= 0.')


def relaxation_terms(config: ml_collections.ConfigDict, steps_per_epoch: int
                     ) -> tuple[relaxations.Relaxation, regularizers.Penalty | None, WeightPerturbation | None]:
  """What ``config.relaxation`` and ``config.regularizer`` add to the search step: the relaxation, the architecture
  penalty (None without regularisers) and SDARTS-RS's perturbation of the weight step's weights (None when off).
  Schedules run per epoch over ``config.num_epochs`` epochs of `steps_per_epoch` steps."""
  relax, reg = config.relaxation, config.regularizer
  # A constant temperature stays a number: the default then equals `Relaxation()`, DARTS's softmax.
  temperature = relax.temperature if relax.temperature_schedule == 'constant' else relaxations.make_schedule(
      relax.temperature_schedule, relax.temperature, relax.final_temperature, config.num_epochs, steps_per_epoch)
  relaxation = relaxations.Relaxation(name=relax.name, temperature=temperature, hard=relax.hard,
                                      noise_scale=relax.noise_scale, concentration=relax.concentration)
  penalty = regularizers.sum_penalties(regularizers.make_penalties(
      {name: reg[name] for name in regularizers.REGULARIZERS}, relaxation, reg.schedule, num_epochs=config.num_epochs,
      steps_per_epoch=steps_per_epoch))
  if not reg.random_smoothing:
    return relaxation, penalty, None
  epsilon = relaxations.make_schedule('linear', reg.random_smoothing_start, reg.random_smoothing, config.num_epochs,
                                      steps_per_epoch)

  def perturbation(key, weights, step):
    return relaxations.uniform_perturbation(key, weights, epsilon(step))

  return relaxation, penalty, perturbation


def _check_cost_config(config: ml_collections.ConfigDict) -> None:
  c = config.cost
  if c.metric not in cost.METRICS or c.form not in cost.PENALTY_FORMS:
    raise ValueError(f'cost.metric ({c.metric!r}) must be one of {", ".join(cost.METRICS)} and cost.form '
                     f'({c.form!r}) one of {", ".join(cost.PENALTY_FORMS)}.')
  if c.weight < 0 or (c.weight > 0 and not c.target > 0):
    raise ValueError(f'cost.weight ({c.weight}) must be >= 0, and with a cost term cost.target ({c.target}) positive '
                     f'(in the metric\'s unit: {c.metric}).')
  if c.eval_init_channels < 1 or c.eval_layers < 1:
    raise ValueError(f'cost.eval_init_channels ({c.eval_init_channels}) and cost.eval_layers ({c.eval_layers}) must '
                     'be positive.')


def _genotype_cost(genotype: genotypes.Genotype, config: ml_collections.ConfigDict, num_classes: int,
                   image_shape: tuple[int, ...], native_size: int) -> dict[str, Any]:
  """Parameters and multiply-adds of the genotype's network at the search network's C, cells and image size, and
  at the retrain network's (``cost.eval_*``, on the dataset's own image size)."""
  def at(C, layers, size, stem_multiplier=3):
    total = cost.network_cost(genotype, C=C, layers=layers, num_classes=num_classes, image_size=size,
                              in_channels=image_shape[-1], stem_multiplier=stem_multiplier)
    return {'C': C, 'layers': layers, 'image_size': size, 'params': total.params, 'macs': total.macs}
  return {'search': at(config.model.init_channels, config.model.layers, image_shape[0], config.model.stem_multiplier),
          'eval': at(config.cost.eval_init_channels, config.cost.eval_layers, native_size)}


def _architecture_cost(config: ml_collections.ConfigDict, workdir: Path, num_classes: int,
                       image_shape: tuple[int, ...]) -> cost.ArchitectureCost:
  """The cost of every choice of the supernet in ``cost.metric`` (`cost.architecture_cost`). Saved in the workdir
  and read back on resume, so that a resumed run uses the latencies its start measured; with several processes,
  process 0's."""
  path = workdir / COST_MODEL_FILE
  if path.is_file():
    saved = json.loads(path.read_text())
    return cost.ArchitectureCost({k: np.asarray(v) for k, v in saved['tables'].items()}, np.asarray(saved['keep']),
                                 saved['fixed'])
  network = dict(C=config.model.init_channels, layers=config.model.layers, num_classes=num_classes,
                 image_size=tuple(image_shape[:2]), in_channels=image_shape[-1], steps=config.model.steps,
                 multiplier=config.model.multiplier, stem_multiplier=config.model.stem_multiplier)
  if config.cost.metric == 'latency':
    from darts_jax.cnn import latency  # pylint: disable=import-outside-toplevel
    table = latency.LatencyTable(config.cost.latency_cache or None, depthwise_impl=config.model.depthwise_impl)
    arch = latency.architecture_latency(table, **network)
    table.save()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      tables, fixed = multihost_utils.broadcast_one_to_all((dict(arch.tables), np.float64(arch.fixed)))
      arch = cost.ArchitectureCost({k: np.asarray(v) for k, v in tables.items()}, arch.keep, float(fixed))
  else:
    arch = cost.architecture_cost(lambda unit: getattr(cost.unit_cost(unit), config.cost.metric), **network)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_json(path, {'metric': config.cost.metric, 'fixed': arch.fixed, 'keep': arch.keep.tolist(),
                                'tables': {k: v.tolist() for k, v in arch.tables.items()}})
  return arch


def rare_compiler_options(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """XLA options of the programs that run a few times per epoch (the end-of-epoch evaluation and Hessian), whose
  results do not feed back into the search: ``compile.rare_programs_opt_level``. The step and the initialisation
  keep XLA's default."""
  return parallel.compiler_options(config.compile.rare_programs_opt_level)


def _check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an invalid search config, before any work."""
  parallel.check_batch_size(config.batch_size)
  if config.hypergradient not in HYPERGRADIENT_METHODS:
    raise ValueError(f'Unknown hypergradient {config.hypergradient!r}; expected one of '
                     f'{", ".join(HYPERGRADIENT_METHODS)}.')
  if config.model.dtype not in DTYPES:
    raise ValueError(f'Unknown model.dtype {config.model.dtype!r}; expected one of {", ".join(DTYPES)}.')
  if config.model.depthwise_impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'Unknown model.depthwise_impl {config.model.depthwise_impl!r}; expected one of '
                     f'{", ".join(DEPTHWISE_IMPLS)}.')
  if config.second_order_impl not in SECOND_ORDER_IMPLS:
    raise ValueError(f'Unknown second_order_impl {config.second_order_impl!r}; expected one of '
                     f'{", ".join(SECOND_ORDER_IMPLS)}.')
  if config.unroll_steps < 1 or config.implicit_iterations < 1:
    raise ValueError(f'unroll_steps ({config.unroll_steps}) and implicit_iterations ({config.implicit_iterations}) '
                     'must be positive.')
  if config.compile.rare_programs_opt_level not in (0, 1, 2, 3):
    raise ValueError(f'compile.rare_programs_opt_level must be an XLA optimisation level 0-3, got '
                     f'{config.compile.rare_programs_opt_level!r}.')
  if config.get('num_seeds', 1) < 1:
    raise ValueError(f'num_seeds must be positive, got {config.num_seeds}.')
  _check_dynamics_config(config)
  _check_relaxation_config(config)
  _check_cost_config(config)


def _fixed_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, count: int) -> tuple[np.ndarray, ...]:
  """This process's slices of the first `count` full global batches of (images, labels), stacked with the example
  index first (the layout of `hessian.make_hessian_step`)."""
  full = [(x, y) for x, y, mask in loop.eval_batches(images, labels, batch_size, jax.process_index(),
                                                      jax.process_count()) if mask.all()][:count]
  return tuple(np.stack(arrays, axis=1) for arrays in zip(*full))


def _host_alphas(alphas: Any) -> dict[str, np.ndarray]:
  return {kind: np.asarray(a, np.float32) for kind, a in jax.device_get(alphas).items()}


def _model_and_init(config: ml_collections.ConfigDict, ds: data.Dataset, image_shape: tuple[int, ...],
                    steps_per_epoch: int) -> tuple[SearchNetwork, optax.Schedule, Callable[[jax.Array], SearchState]]:
  """The supernet, the weights' learning-rate schedule and ``init(key) -> SearchState``.

  The initialisation runs once but keeps XLA's default level: at level 0 its weights round differently (by an ulp),
  and the search would no longer compute what it did, nor a seed of `search_seeds` what a single run does."""
  # The supernet takes the mixing weights: the step computes them with the configured relaxation.
  model = SearchNetwork(
      C=config.model.init_channels, num_classes=ds.num_classes, layers=config.model.layers,
      steps=config.model.steps, multiplier=config.model.multiplier, stem_multiplier=config.model.stem_multiplier,
      depthwise_impl=config.model.depthwise_impl, axis_name=AXIS_NAME, dtype=config.model.dtype,
      remat=config.model.remat, mixing='weights')
  schedule = optimizers.epoch_cosine_schedule(config.learning_rate, config.learning_rate_min, config.num_epochs,
                                              steps_per_epoch)
  weight_tx = optimizers.weight_optimizer(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                                          grad_clip=config.grad_clip)
  # The alphas stay fixed for the first arch_warmup_epochs while the weights train (DARTS+, PC-DARTS): the
  # architecture gradient of untrained weights favours the parameter-free ops. A zero learning rate, not a skipped
  # step: one program for the whole run.
  arch_lr = config.arch_learning_rate if not config.arch_warmup_epochs else optax.join_schedules(
      [optax.constant_schedule(0.0), optax.constant_schedule(config.arch_learning_rate)],
      [config.arch_warmup_epochs * steps_per_epoch])
  arch_tx = arch_optimizer(arch_lr, weight_decay=config.arch_weight_decay)
  return model, schedule, lambda key: create_search_state(key, model, image_shape, weight_tx, arch_tx)


def _create_model_and_state(config: ml_collections.ConfigDict, ds: data.Dataset, image_shape: tuple[int, ...],
                            steps_per_epoch: int) -> tuple[SearchNetwork, optax.Schedule, SearchState]:
  model, schedule, init = _model_and_init(config, ds, image_shape, steps_per_epoch)
  return model, schedule, init(jax.random.key(config.seed))


def _search_terms(config: ml_collections.ConfigDict, workdir: Path, ds: data.Dataset, image_shape: tuple[int, ...],
                  steps_per_epoch: int) -> tuple[Any, Any, Any, cost.ArchitectureCost | None, Callable[..., Any]]:
  """``(relaxation, arch_penalty, weight_perturbation, arch_cost, genotype_cost)``: the relaxation and regularisers
  (`relaxation_terms`) with the cost term joined into one penalty of the validation loss, the supernet's cost table
  (None for latency without a cost term: E[cost] is logged every epoch, latency only with a cost term, which
  measures its table) and the genotypes' cost."""
  relaxation, arch_penalty, weight_perturbation = relaxation_terms(config, steps_per_epoch)
  with_cost_term = config.cost.weight > 0
  arch_cost = (_architecture_cost(config, workdir, ds.num_classes, image_shape)
               if with_cost_term or config.cost.metric != 'latency' else None)
  genotype_cost = lambda genotype: _genotype_cost(genotype, config, ds.num_classes, image_shape,
                                                  ds.train_images.shape[1])
  cost_term = None if not with_cost_term else cost.make_cost_penalty(
      arch_cost, target=config.cost.target, form=config.cost.form, weight=config.cost.weight,
      mnasnet_alpha=config.cost.mnasnet_alpha, mnasnet_beta=config.cost.mnasnet_beta)
  # One penalty of the validation loss: the regularisers and the expected cost (a function of the alphas).
  arch_penalty = regularizers.sum_penalties(([arch_penalty] if arch_penalty else []) + (
      [lambda alphas, weights, step: cost_term(weights)] if cost_term else []))
  return relaxation, arch_penalty, weight_perturbation, arch_cost, genotype_cost


def _make_steps(config: ml_collections.ConfigDict, model: SearchNetwork, schedule: optax.Schedule, ds: data.Dataset,
                relaxation: Any, arch_penalty: Any, weight_perturbation: Any
                ) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any] | None]:
  """The search step, the evaluation step and the Hessian step (None without ``diagnostics.hessian_iterations``)
  of `config` with `_search_terms`'s terms, before ``pmap``: `search` runs them as they are, `search_seeds`
  vmapped over seeds."""
  train_preprocess, eval_preprocess = (
      data.make_preprocess(ds.mean, ds.std, augment=augment, image_size=config.data.image_size, axis_name=AXIS_NAME)
      for augment in (config.data.augment, False))
  search_step = make_search_step(
      model, schedule, train_preprocess, hypergradient_method=config.hypergradient, momentum=config.momentum,
      weight_decay=config.weight_decay, fd_epsilon=config.fd_epsilon, unroll_steps=config.unroll_steps,
      implicit_iterations=config.implicit_iterations, implicit_damping=config.implicit_damping,
      relaxation=relaxation, arch_penalty=arch_penalty, weight_perturbation=weight_perturbation,
      second_order_impl=config.second_order_impl)
  hessian_step = None
  if config.diagnostics.hessian_iterations:
    hessian_step = hessian.make_hessian_step(model, eval_preprocess, config.diagnostics.hessian_iterations,
                                             config.diagnostics.hessian_method, relaxation.probabilities)
  return search_step, make_eval_step(model, eval_preprocess, relaxation.deterministic), hessian_step


def search(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> SearchState:
  """Runs (or resumes) the DARTS search of `config` in `workdir` and writes its artifacts (module docstring).

  Args:
    config: a search config (``configs/search_cifar10.py``, ``configs/search_quick.py``).
    workdir: the run directory; an existing one with checkpoints is resumed.

  Returns:
    The final search state, on the host.

  Raises:
    ValueError: for an invalid config (e.g. a batch size not divisible by the device count), or one that differs
      from the workdir's (`loop.ConfigMismatchError`).
    NotADirectoryError: `workdir` is a file.
    data.DatasetNotFoundError: when the dataset is not found (the message says how to get it).
    loop.NonFiniteLossError: when the search diverges; the checkpoints hold the last good state.
    loop.Preempted: a signal stopped the search after a checkpoint.
  """
  if config.get('num_seeds', 1) != 1:
    from darts_jax.tasks import search_seeds  # pylint: disable=import-outside-toplevel  (it builds on this module)
    return search_seeds.search_seeds(config, workdir)
  workdir = loop.prepare_workdir(workdir, config)
  _check_config(config)
  batch_size = config.batch_size
  ds = data.load_dataset(config.data.name, config.data.dir or None)
  train_images, train_labels, valid_images, valid_labels = data.search_split(ds, config.data.subset)
  steps_per_epoch = data.num_batches(len(train_images), batch_size, config.max_steps_per_epoch)
  logging.info('%s: %d training / %d validation images, %d steps of %d per epoch, %d devices.', ds.name,
               len(train_images), len(valid_images), steps_per_epoch, batch_size, jax.device_count())
  size = config.data.image_size
  image_shape = (size, size, train_images.shape[-1]) if size else train_images.shape[1:]
  model, schedule, init_state = _model_and_init(config, ds, image_shape, steps_per_epoch)
  relaxation, arch_penalty, weight_perturbation, arch_cost, genotype_cost = _search_terms(
      config, workdir, ds, image_shape, steps_per_epoch)
  search_step, eval_step, hessian_step = _make_steps(config, model, schedule, ds, relaxation, arch_penalty,
                                                     weight_perturbation)
  impl, rare_options = config.get('parallel_impl', parallel.DEFAULT_IMPL), rare_compiler_options(config)
  p_step = parallel.data_parallel(search_step, AXIS_NAME, impl=impl, donate_argnums=(0,))
  p_eval = parallel.data_parallel(eval_step, AXIS_NAME, impl=impl, compiler_options=rare_options)
  hessian_iterations = config.diagnostics.hessian_iterations
  if hessian_iterations:
    p_hessian = parallel.data_parallel(hessian_step, AXIS_NAME, impl=impl, compiler_options=rare_options)
    hessian_batches = parallel.shard(
        _fixed_batches(valid_images, valid_labels, batch_size, config.diagnostics.hessian_batches), AXIS_NAME)

  def epoch_batches(epoch: int, start: int) -> Iterator[tuple[Any, Any]]:
    """(train, validation) batches from two separately shuffled streams, sharded over the local devices."""
    streams = [data.epoch_batches(images, labels, batch_size=batch_size, seed=config.seed, epoch=epoch,
                                  stream=stream, start_step=start, max_steps=steps_per_epoch,
                                  process_index=jax.process_index(), process_count=jax.process_count())
               for stream, (images, labels) in enumerate([(train_images, train_labels),
                                                          (valid_images, valid_labels)])]
    return ((parallel.shard(train, AXIS_NAME), parallel.shard(val, AXIS_NAME)) for train, val in zip(*streams))

  # The step compiles in the background while the state initialises (and a checkpoint is restored): it needs
  # only the state's shapes.
  key = jax.random.key(config.seed)
  p_step.compile_in_background(parallel.replicated_shapes(jax.eval_shape(init_state, key), AXIS_NAME),
                               *next(epoch_batches(0, 0)))
  state = init_state(key)

  # DARTS's softmax is measured from the alphas in float64, as ever; other relaxations by their weights at the step.
  softmax = relaxation == relaxations.Relaxation()
  host_weights = jax.jit(lambda alphas, step: (relaxation.deterministic(alphas, step),
                                               relaxation.probabilities(alphas, step)))

  def derive(alphas: dict[str, np.ndarray], step: int) -> genotypes.Genotype:
    if softmax:
      return genotypes.derive_genotype(alphas, steps=model.steps, multiplier=model.multiplier)
    return genotypes.derive_genotype(_host_alphas(host_weights(alphas, step)[1]), steps=model.steps,
                                     multiplier=model.multiplier, from_weights=True)

  # The genotypes from epoch 0 (the initial alphas) on, for the stability diagnostics. A resumed run reads the
  # epochs before its first evaluation from the alphas log: only records of earlier steps, which the run that
  # wrote them had checkpointed past.
  initial_alphas = _host_alphas(state.alphas)
  history: list[genotypes.Genotype] = []

  def evaluate(epoch: int, step: int, r_state: SearchState, state: SearchState) -> dict[str, Any]:
    del epoch
    valid = loop.evaluate(p_eval, r_state, valid_images, valid_labels, batch_size, AXIS_NAME)
    if not history:
      history.append(derive(initial_alphas, 0))
      history.extend(derive(r['alphas'], r['step']) for r in run_files.read_alphas_log(workdir) if r['step'] < step)
    history.append(derive(_host_alphas(state.alphas), step))
    weights = None if softmax else _host_alphas(host_weights(state.alphas, step)[0])
    entries = {'valid_loss': valid['loss'], 'valid_accuracy': valid['accuracy'],
               **diagnostics.epoch_diagnostics(state.alphas, history, weights)}
    costs = genotype_cost(history[-1])
    entries.update({f'genotype_{k}{suffix}': costs[net][k] for net, suffix in (('search', ''), ('eval', '_eval'))
                    for k in ('params', 'macs')})
    if arch_cost is not None:  # the cost term's E[cost] under the current alphas (also without the term)
      entries[f'expected_{config.cost.metric}'] = float(cost.expected_cost(
          diagnostics.softmax_weights(_host_alphas(state.alphas)), arch_cost))
    if callable(relaxation.temperature):
      entries['temperature'] = float(relaxation.temperature_at(step - 1))
    if hessian_iterations:
      values = jax.device_get(p_hessian(r_state, hessian_batches))  # equal on every device: device 0's
      entries.update({k: float(np.asarray(v)[0]) for k, v in values.items()})
    return {**entries, 'lr': float(schedule(step - 1))}

  def after_epoch(epoch: int, step: int, state: SearchState, record: dict[str, Any]) -> None:
    del record
    genotype = derive(_host_alphas(state.alphas), step)
    logging.info('Genotype: %s', genotype)
    reporting.append_jsonl(workdir / GENOTYPES_FILE, {
        'step': step, 'epoch': epoch + 1, 'genotype': json.loads(genotypes.genotype_to_json(genotype)),
        'cost': genotype_cost(genotype)})
    reporting.append_jsonl(workdir / ALPHAS_FILE, {
        'step': step, 'epoch': epoch + 1, **{k: v.tolist() for k, v in _host_alphas(state.alphas).items()}})

  def should_stop(epoch: int, step: int, state: SearchState, record: dict[str, Any]) -> str | None:
    del epoch, step, state, record
    return early_stopping.stop_reason(curves.read_epoch_records(workdir / reporting.METRICS_FILE),
                                      **config.early_stopping)

  def compile_evaluation(r_state: SearchState) -> None:
    p_eval.compile_in_background(r_state, parallel.shard(next(loop.eval_batches(
        valid_images, valid_labels, batch_size, jax.process_index(), jax.process_count())), AXIS_NAME))
    if hessian_iterations:
      p_hessian.compile_in_background(r_state, hessian_batches)

  task = loop.Task(state=state, step=lambda r_state, batch, epoch: p_step(r_state, *batch), batches=epoch_batches,
                   steps_per_epoch=steps_per_epoch, evaluate=evaluate, after_epoch=after_epoch,
                   should_stop=should_stop, compile_ahead=compile_evaluation, logs=(GENOTYPES_FILE, ALPHAS_FILE),
                   divergence_advice=DIVERGENCE_ADVICE)
  outcome = loop.train(task, config, workdir)
  if jax.process_index() == 0:
    alphas, final_step = _host_alphas(outcome.state.alphas), outcome.step
    if outcome.stop_reason is not None:
      stop_epoch = outcome.record['epoch']
      kept = early_stopping.kept_epoch(config.early_stopping.rule, stop_epoch, config.early_stopping.window)
      alphas, final_step = next((r['alphas'], r['step']) for r in run_files.read_alphas_log(workdir)
                                if r['epoch'] == kept)
      logging.info('Stopped early after epoch %d (%s); keeping the architecture of epoch %d.', stop_epoch,
                   outcome.stop_reason, kept)
      reporting.write_json(workdir / EARLY_STOP_FILE, {
          'rule': config.early_stopping.rule, 'reason': outcome.stop_reason, 'stop_epoch': stop_epoch,
          'step': outcome.step, 'kept_epoch': kept})
    genotype = derive(alphas, final_step)
    _write_final_artifacts(workdir, alphas, genotype, genotype_cost(genotype))
    logging.info('Final genotype: %s', genotype)
  return outcome.state
