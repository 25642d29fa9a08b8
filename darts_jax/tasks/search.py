"""The architecture search of every space (the original ``train_search.py``): data, the bilevel step, k seeds as one
program, logs, checkpoints, early stopping.

`search(config, workdir)` runs the search described by an ml_collections config (``configs/search_*.py``) on the
space its ``space`` key names (`darts_jax.spaces`; ``'cnn'`` by default) and writes to `workdir`:

* ``config.json``: the configuration;
* ``metrics.jsonl`` and ``tensorboard/``: every ``log_every_steps`` steps the interval means of the supernet's
  training ``loss`` and ``accuracy``, ``grad_norm``, ``arch_grad_norm``, ``lr`` and ``images_per_s`` (and the space's
  own, e.g. ``seq_len``); after every epoch (records with an ``epoch`` key, 1 = after the first) the running means over
  the epoch's steps ``train_loss``/``train_accuracy``, the supernet's validation measures on the whole validation
  split (``valid_loss``, ``valid_accuracy``, ...), the space's diagnostics of the search's dynamics (entropy and
  largest weight of the mixing weights, stability of the genotype, ...), with ``diagnostics.hessian_iterations > 0``
  ``hessian_eigenvalue`` and ``hessian_eigenvalue_min`` (the largest and the smallest eigenvalue of ``∇²_α L_val`` on
  ``diagnostics.hessian_batches`` fixed validation batches, `darts_jax.dynamics.hessian`) and ``alpha_grad_norm`` (``‖∇_α L_val‖`` on the same batches), the space's
  cost entries, ``temperature`` under a temperature schedule, ``lr`` and ``epoch_time_s``;
* ``genotypes.jsonl`` and ``alphas.jsonl``: the genotype derived and the alphas after every epoch;
* at the end ``genotype.json`` (the final genotype, with the space's cost entries), ``curves.png`` and the space's
  artifacts (``alphas.npz``, cell diagrams, plots of the dynamics);
* after an early stop (``early_stopping.rule``, `darts_jax.dynamics.early_stopping`) ``early_stop.json`` (rule,
  reason, the epoch of the stop and the epoch whose architecture is kept); the final artifacts then describe the
  kept architecture;
* ``checkpoints/``: the `SearchState` and the position in the data after every epoch and every
  ``checkpoint_every_minutes``.

The relaxation (``config.relaxation``, `darts_jax.dynamics.relaxations`) turns the alphas into mixing weights: the
steps draw its sample once per step; the evaluation, the entropy and largest-weight diagnostics use its deterministic
weights (noise off, hard → one-hot argmax, Dirichlet → mean), the genotype and the Hessian its noise-free soft
weights. Regularisers (``config.regularizer``, `darts_jax.dynamics.regularizers`) and the space's cost term join the
validation loss; with them the interval records hold ``arch_penalty``.

The loop is `training.loop.train`: running `search` again on the same workdir resumes from the latest checkpoint
(refused if the configuration changed), and SIGTERM/SIGINT stop it after a checkpoint of the current step. Data
order depends only on (seed, epoch) and random draws only on (seed, step), so a resumed run computes exactly what an
uninterrupted one does (bit for bit on CPU). The steps run on every device (`parallel.data_parallel`,
``config.parallel_impl``) with the global batch ``config.batch_size``; each process of a multi-host run loads its
own slice of every global batch.

**Several seeds**: with ``config.num_seeds = k > 1`` the search runs k searches (seeds ``seed .. seed + k - 1``) as
one step, ``jax.vmap``-ed over a leading seed axis of the state. Each seed has its own weights, alphas, optimizer
states, random draws and data order, those of a single run with its seed, so seed s of a k-seed run is that single
run up to the float rounding of the vmapped program. The workdir then holds ``seed_<s>/`` with what a single run
writes (its ``config.json``, ``metrics.jsonl``, logs, final artifacts, ``early_stop.json``), ``checkpoints/`` of the
stacked state, a ``metrics.jsonl`` whose entries are the means over seeds plus each seed's as ``seed_<s>/KEY``
(``images_per_s`` counts one seed's images), TensorBoard with every seed, and at the end ``summary.json`` (per seed
its directory, seed, genotype, final validation measures and diagnostics, early stop; the steps, wall time and
images/s summed over seeds). Early stopping is per seed: a seed whose rule fires stops logging there and keeps its
architecture as a single run would; the program stops when every seed has stopped.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from darts_jax import spaces
from darts_jax.bilevel.step import STEP_PASSES, SearchState, WeightPerturbation, make_search_step, method_name
from darts_jax.analysis import run_files
from darts_jax.dynamics import early_stopping, hessian, regularizers, relaxations
from darts_jax.training import config_utils, curves, loop, parallel, reporting
from darts_jax.training.parallel import AXIS_NAME

GENOTYPES_FILE = 'genotypes.jsonl'
ALPHAS_FILE = run_files.ALPHAS_FILE
EARLY_STOP_FILE = run_files.EARLY_STOP_FILE
SUMMARY_FILE = 'summary.json'
DIVERGENCE_ADVICE = 'Lower the learning rates (learning_rate, arch_learning_rate) or change the seed.'

__all__ = ['ALPHAS_FILE', 'EARLY_STOP_FILE', 'GENOTYPES_FILE', 'SUMMARY_FILE', 'SeedsState', 'relaxation_terms',
           'search', 'seed_config', 'seed_dir', 'seed_state']


class SeedsState(flax.struct.PyTreeNode):
  """The loop's state of a k-seed search: the step counter the loop reads, and the seeds' states (`SearchState`) stacked
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


# ---------------------------------------------------------------------------------------------------------------------
# The configuration.


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
  if reg.get('adversarial_epsilon', 0.0):
    if reg.random_smoothing:
      raise ValueError('regularizer.random_smoothing (SDARTS-RS) and regularizer.adversarial_epsilon (SDARTS-ADV) '
                       'perturb the same weights: set one of them to 0.')
    if reg.adversarial_epsilon < 0 or reg.adversarial_epsilon_start < 0 or reg.adversarial_steps < 1 \
        or reg.adversarial_step_size < 0:
      raise ValueError(f'regularizer.adversarial_epsilon ({reg.adversarial_epsilon}), adversarial_epsilon_start '
                       f'({reg.adversarial_epsilon_start}) and adversarial_step_size ({reg.adversarial_step_size}) '
                       f'must be >= 0 and adversarial_steps ({reg.adversarial_steps}) positive.')


def _check_config(config: ml_collections.ConfigDict, space: spaces.SearchSpace) -> str:
  """Raises ValueError for an invalid search config, before any work; returns the hypergradient method."""
  parallel.check_batch_size(config.batch_size)
  method = method_name(config.hypergradient)
  if config.get('second_order_impl', 'auto') not in STEP_PASSES:
    raise ValueError(f'Unknown second_order_impl {config.second_order_impl!r}; expected one of '
                     f'{", ".join(STEP_PASSES)}.')
  if config.get('unroll_steps', 1) < 1 or config.get('implicit_iterations', 1) < 1:
    raise ValueError(f'unroll_steps ({config.unroll_steps}) and implicit_iterations ({config.implicit_iterations}) '
                     'must be positive.')
  if 'compile' in config and config.compile.rare_programs_opt_level not in (0, 1, 2, 3):
    raise ValueError(f'compile.rare_programs_opt_level must be an XLA optimisation level 0-3, got '
                     f'{config.compile.rare_programs_opt_level!r}.')
  num_seeds = config.get('num_seeds', 1)
  if num_seeds < 1:
    raise ValueError(f'num_seeds must be positive, got {config.num_seeds}.')
  if num_seeds > 1 and not space.supports_seeds:
    raise ValueError(f'num_seeds > 1 is not available for space {space.name!r}: its steps per epoch depend on the '
                     'seed; run one seed per search.')
  if 'early_stopping' in config:
    _check_dynamics_config(config)
    if config.early_stopping.rule not in space.early_stopping_rules:
      raise ValueError(f'early_stopping.rule {config.early_stopping.rule!r} reads records that space {space.name!r} '
                       f'does not write; its rules: {", ".join(space.early_stopping_rules)}.')
  if 'relaxation' in config:
    if not space.relaxations:
      raise ValueError(f'space {space.name!r} mixes its ops by the softmax of the alphas: remove config.relaxation '
                       'and config.regularizer.')
    _check_relaxation_config(config)
  space.check_search_config()
  return method


def relaxation_terms(config: ml_collections.ConfigDict, steps_per_epoch: int, mixing_weights: bool = True
                     ) -> tuple[relaxations.Relaxation | None, regularizers.Penalty | None, WeightPerturbation | None]:
  """What ``config.relaxation`` and ``config.regularizer`` add to the search step: the relaxation, the architecture
  penalty (None without regularisers) and the perturbation of the weight step's weights (None when off):
  SDARTS-RS's ``regularizer.random_smoothing`` or SDARTS-ADV's ``regularizer.adversarial_*`` (ε, PGD steps, step size).
  Without ``config.relaxation`` the relaxation is DARTS's softmax for a network that takes mixing weights
  (`mixing_weights`), else None (the network softmaxes the alphas itself). Schedules run per epoch over
  ``config.num_epochs`` epochs of `steps_per_epoch` steps."""
  if 'relaxation' not in config:
    return (relaxations.Relaxation() if mixing_weights else None), None, None
  relax, reg = config.relaxation, config.regularizer
  # A constant temperature stays a number: the default then equals `Relaxation()`, DARTS's softmax.
  temperature = relax.temperature if relax.temperature_schedule == 'constant' else relaxations.make_schedule(
      relax.temperature_schedule, relax.temperature, relax.final_temperature, config.num_epochs, steps_per_epoch)
  relaxation = relaxations.Relaxation(name=relax.name, temperature=temperature, hard=relax.hard,
                                      noise_scale=relax.noise_scale, concentration=relax.concentration)
  penalty = regularizers.sum_penalties(regularizers.make_penalties(
      {name: reg[name] for name in regularizers.REGULARIZERS}, relaxation, reg.schedule, num_epochs=config.num_epochs,
      steps_per_epoch=steps_per_epoch))
  adversarial = reg.get('adversarial_epsilon', 0.0)
  if not (reg.random_smoothing or adversarial):
    return relaxation, penalty, None
  start, end = ((reg.random_smoothing_start, reg.random_smoothing) if reg.random_smoothing
                else (reg.adversarial_epsilon_start, adversarial))
  epsilon = relaxations.make_schedule('linear', start, end, config.num_epochs, steps_per_epoch)

  def random_smoothing(key, weights, step, loss_and_grad):
    del loss_and_grad
    return relaxations.uniform_perturbation(key, weights, epsilon(step))

  def adversarial_attack(key, weights, step, loss_and_grad):
    return relaxations.adversarial_perturbation(
        key, weights, epsilon(step), loss_and_grad, steps=reg.adversarial_steps,
        step_size=reg.adversarial_step_size or None, simplex=relax.name != 'sigmoid')

  return relaxation, penalty, (random_smoothing if reg.random_smoothing else adversarial_attack)


def rare_compiler_options(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """XLA options of the programs that run a few times per epoch (the end-of-epoch evaluation and Hessian), whose
  results do not feed back into the search: ``compile.rare_programs_opt_level``. The step and the initialisation
  keep XLA's default."""
  return parallel.compiler_options(config.compile.rare_programs_opt_level) if 'compile' in config else None


# ---------------------------------------------------------------------------------------------------------------------
# Records of k seeds.


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


# ---------------------------------------------------------------------------------------------------------------------
# The search.


def _host(tree: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(tree))


def _alphas_log(directory: Path) -> list[dict[str, Any]]:
  """The records of a run's alphas log (`ALPHAS_FILE`), oldest first; none before its first epoch."""
  path = directory / ALPHAS_FILE
  return reporting.read_jsonl(path) if path.is_file() else []


def search(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> SearchState:
  """Runs (or resumes) the search of `config` in `workdir` and writes its artifacts (module docstring).

  Args:
    config: a search config (``configs/search_cifar10.py``, ``configs/search_quick.py``, ``configs/search_ptb.py``).
    workdir: the run directory; an existing one with checkpoints is resumed.

  Returns:
    The final search state, on the host; with ``num_seeds > 1`` the seeds' states stacked with the seed first
    (`seed_state` takes one out).

  Raises:
    ValueError: for an invalid config (e.g. a batch size not divisible by the device count), or one that differs
      from the workdir's (`loop.ConfigMismatchError`).
    NotADirectoryError: `workdir` is a file.
    data.DatasetNotFoundError: when the dataset is not found (the message says how to get it).
    loop.NonFiniteLossError: when the search diverges; the checkpoints hold the last good state.
    loop.Preempted: a signal stopped the search after a checkpoint.
  """
  workdir = loop.prepare_workdir(workdir, config)
  space = spaces.get_space(config)
  method = _check_config(config, space)
  num_seeds = config.get('num_seeds', 1)
  single = num_seeds == 1
  seeds = [config.seed + s for s in range(num_seeds)]
  dirs = [workdir] if single else [seed_dir(workdir, s) for s in range(num_seeds)]
  setup = space.search_setup(workdir, AXIS_NAME)
  logging.info('%s, %d seed(s), %d devices.', setup.summary, num_seeds, jax.device_count())
  steps_per_epoch = setup.steps_per_epoch
  # The relaxation's schedules run per step: a space with a fixed number of steps per epoch has them.
  relaxation, arch_penalty, weight_perturbation = relaxation_terms(
      config, steps_per_epoch if isinstance(steps_per_epoch, int) else 0, space.relaxations)
  if not single and (relaxation not in (None, relaxations.Relaxation()) or weight_perturbation is not None
                     or arch_penalty is not None):
    # The per-seed records and genotypes here are those of DARTS's softmax of the alphas.
    raise ValueError('num_seeds > 1 runs the softmax relaxation without regularisers; run other relaxations and '
                     'regularisers with num_seeds = 1.')
  # One penalty of the validation loss: the regularisers and the space's own term (the expected cost).
  arch_penalty = regularizers.sum_penalties([p for p in (arch_penalty, setup.arch_penalty) if p is not None])
  search_step = make_search_step(
      setup.problem, method=method, fd_epsilon=config.fd_epsilon,
      unroll_steps=config.get('unroll_steps', 1), implicit_iterations=config.get('implicit_iterations', 10),
      implicit_damping=config.get('implicit_damping', 0.0), relaxation=relaxation, arch_penalty=arch_penalty,
      weight_perturbation=weight_perturbation, passes=config.get('second_order_impl', 'auto'))

  def deterministic(alphas, step):  # what evaluation mixes by
    return alphas if relaxation is None else relaxation.deterministic(alphas, step)

  def probabilities(alphas, step):  # the noise-free soft weights: the genotype's and the Hessian's
    return alphas if relaxation is None else relaxation.probabilities(alphas, step)

  def eval_step(state, carry, batch):
    return setup.eval_step(state, deterministic(state.alphas, state.step), carry, batch)

  hessian_iterations = config.diagnostics.hessian_iterations if 'diagnostics' in config else 0
  if hessian_iterations and setup.validation_loss is None:
    raise ValueError(f'space {space.name!r} has no Hessian diagnostics: set diagnostics.hessian_iterations=0.')

  def hessian_step(state, batches):
    ritz_values, gradient = hessian.hessian_ritz_values_and_gradient(
        lambda alphas: setup.validation_loss(state.params, state.batch_stats, probabilities(alphas, state.step),
                                             batches),
        state.alphas, num_iterations=hessian_iterations, rng=jax.random.fold_in(state.rng, state.step),
        axis_name=AXIS_NAME, method=config.diagnostics.hessian_method)
    # The largest eigenvalue, as R-DARTS tracks it (``max(eigvals(H))``, DARTS-ES's), and the smallest.
    return {'hessian_eigenvalue': ritz_values[-1], 'hessian_eigenvalue_min': ritz_values[0],
            'alpha_grad_norm': optax.tree.norm(gradient)}

  def seeds_step(state: SeedsState, train_batch, val_batch):
    # Batches carry the seed axis second: (examples, seed, ...), so that `parallel.shard` splits examples.
    stepped, metrics = jax.vmap(search_step, in_axes=(0, 1, 1))(state.seeds, train_batch, val_batch)
    return SeedsState(step=state.step + 1, seeds=stepped), _loop_metrics(metrics, num_seeds)

  def seeds_of(fn):  # a per-seed function of the search state, vmapped over the seeds, the other arguments shared
    return lambda state, *args: jax.vmap(fn, in_axes=(0,) + (None,) * len(args))(state.seeds, *args)

  def seeds_eval(state: SeedsState, carry, batch):
    return jax.vmap(eval_step, in_axes=(0, 0, None))(state.seeds, carry, batch)

  impl, rare_options = config.get('parallel_impl', parallel.DEFAULT_IMPL), rare_compiler_options(config)
  p_step = parallel.data_parallel(search_step if single else seeds_step, AXIS_NAME, impl=impl, donate_argnums=(0,))
  p_eval = parallel.data_parallel(eval_step if single else seeds_eval, AXIS_NAME, impl=impl,
                                  compiler_options=rare_options)
  if hessian_iterations:
    p_hessian = parallel.data_parallel(hessian_step if single else seeds_of(hessian_step), AXIS_NAME, impl=impl,
                                       compiler_options=rare_options)
    hessian_batches = parallel.shard(setup.hessian_batches(config.diagnostics.hessian_batches), AXIS_NAME)
  put_eval = (lambda tree: parallel.shard(tree, AXIS_NAME)) if setup.eval_sharded else (
      lambda tree: parallel.replicate(tree, AXIS_NAME))
  eval_carry = setup.eval_carry if single else jax.tree.map(lambda x: jnp.stack([x] * num_seeds), setup.eval_carry)

  def epoch_batches(epoch: int, start: int) -> Iterator[tuple[Any, Any]]:
    """(train, validation) batches of every seed, sharded over the local devices; k seeds' stacked on axis 1."""
    if single:
      return ((parallel.shard(train, AXIS_NAME), parallel.shard(val, AXIS_NAME))
              for train, val in setup.batches(epoch, start, config.seed))
    per_seed = [setup.batches(epoch, start, seed) for seed in seeds]
    return (tuple(parallel.shard(jax.tree.map(lambda *xs: np.stack(xs, axis=1), *[b[split] for b in batches]),
                                 AXIS_NAME) for split in (0, 1))
            for batches in zip(*per_seed))

  # The step compiles in the background while the state initialises (and a checkpoint is restored): it needs only
  # the state's shapes.
  keys = [jax.random.key(seed) for seed in seeds]

  def init_state():
    states = [setup.init(key) for key in keys]
    if single:
      return states[0]
    return SeedsState(step=states[0].step, seeds=jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))

  p_step.compile_in_background(parallel.replicated_shapes(jax.eval_shape(init_state), AXIS_NAME),
                               *next(epoch_batches(0, 0)))
  state = init_state()

  def seed_search_state(state: Any, s: int) -> SearchState:
    return state if single else seed_state(state.seeds, s)

  # The mixing weights on the host, from the alphas (a relaxation's deterministic and noise-free soft weights).
  host_weights = jax.jit(lambda alphas, step: (deterministic(alphas, step), probabilities(alphas, step)))
  softmax = relaxation is None or relaxation == relaxations.Relaxation()

  def derive(alphas: Any, step: int) -> Any:
    # DARTS's softmax is measured from the alphas in float64, as ever; other relaxations by their weights at the step.
    return space.derive_genotype(alphas) if softmax else space.derive_genotype(
        alphas, _host(host_weights(alphas, step)[1]))

  # The genotypes from epoch 0 (the initial alphas) on, for the stability diagnostics. A resumed run reads the
  # epochs before its first evaluation from the alphas log: only records of earlier steps, which the run that
  # wrote them had checkpointed past.
  initial_alphas = [_host(seed_search_state(state, s).alphas) for s in range(num_seeds)]
  histories: list[list[Any]] = [[] for _ in range(num_seeds)]

  def evaluate_split(r_state) -> list[dict[str, float]]:
    """The validation entries of every seed (the space's `eval_entries` of the sums over all batches)."""
    carry, sums = put_eval(eval_carry), []
    for batch in setup.eval_batches():
      carry, batch_sums = p_eval(r_state, carry, put_eval(batch))
      sums.append(batch_sums)
      # Bounded in flight, as `loop.evaluate_batches` (XLA:CPU's collectives starve behind a long queue).
      if len(sums) > loop.EVAL_IN_FLIGHT:
        jax.block_until_ready(sums[-1 - loop.EVAL_IN_FLIGHT])
    # Summed over devices (or computed whole on each): device 0's, all in one transfer.
    totals = {k: np.sum([np.asarray(s[k])[0] for s in jax.device_get(sums)], axis=0).astype(np.float64)
              for k in sums[0]}
    if single:
      return [setup.eval_entries(totals)]
    return [setup.eval_entries({k: v[s] for k, v in totals.items()}) for s in range(num_seeds)]

  def evaluate(epoch: int, step: int, r_state: Any, state: Any) -> dict[str, Any]:
    del epoch
    valid = evaluate_split(r_state)
    eigen = {}
    if hessian_iterations:  # equal on every device: device 0's
      eigen = {k: np.asarray(v)[0] for k, v in jax.device_get(p_hessian(r_state, hessian_batches)).items()}
    lr = {} if setup.learning_rate is None else {'lr': setup.learning_rate(step - 1)}
    per_seed = []
    for s in range(num_seeds):
      alphas = _host(seed_search_state(state, s).alphas)
      if not histories[s]:
        histories[s].append(derive(initial_alphas[s], 0))
        histories[s].extend(derive(space.alphas_from_record(r), r['step'])
                            for r in _alphas_log(dirs[s]) if r['step'] < step)
      histories[s].append(derive(alphas, step))
      weights = None if softmax else _host(host_weights(alphas, step)[0])
      own = {**valid[s], **space.diagnostics(alphas, histories[s], weights),
             **space.genotype_entries(histories[s][-1]), **space.architecture_entries(alphas)}
      if relaxation is not None and callable(relaxation.temperature):
        own['temperature'] = float(relaxation.temperature_at(step - 1))
      own.update({k: float(v if single else v[s]) for k, v in eigen.items()})
      per_seed.append({**own, **lr})
    if single:
      return per_seed[0]
    entries = {'valid_loss': float(np.mean([e['valid_loss'] for e in per_seed])),
               'valid_accuracy': float(np.mean([e['valid_accuracy'] for e in per_seed]))}
    entries.update({f'seed_{s}/{k}': v for s, own in enumerate(per_seed) for k, v in own.items()})
    return {**entries, **lr}

  rules = config.get('early_stopping')

  def stopped(s: int) -> tuple[int, str] | None:
    """(epoch, reason) of seed `s`'s early stop so far, or None."""
    path = dirs[s] / reporting.METRICS_FILE
    if rules is None or rules.rule == 'none' or not path.is_file():  # not yet written before the first epoch's end
      return None
    return _stop(reporting.read_jsonl(path), rules)

  def write_seed_metrics(last_steps: list[int | None]) -> None:
    records = reporting.read_jsonl(workdir / reporting.METRICS_FILE)
    for s, last_step in enumerate(last_steps):
      lines = [json.dumps(r) + '\n' for r in _seed_records(records, s, steps_per_epoch, last_step)]
      (dirs[s] / reporting.METRICS_FILE).write_text(''.join(lines))

  def log_epoch(directory: Path, epoch: int, step: int, alphas: Any) -> None:
    genotype = derive(alphas, step)
    if single:
      logging.info('Genotype: %s', space.genotype_text(genotype))
    reporting.append_jsonl(directory / GENOTYPES_FILE, {
        'step': step, 'epoch': epoch + 1, 'genotype': space.genotype_to_json(genotype),
        **space.genotype_record(genotype)})
    reporting.append_jsonl(directory / ALPHAS_FILE, {'step': step, 'epoch': epoch + 1,
                                                     **space.alphas_record(alphas)})

  def after_epoch(epoch: int, step: int, state: Any, record: dict[str, Any]) -> None:
    del record
    if single:
      log_epoch(workdir, epoch, step, _host(state.alphas))
      return
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
      log_epoch(dirs[s], epoch, step, _host(seed_state(state.seeds, s).alphas))
    write_seed_metrics(last_steps)

  def should_stop(epoch: int, step: int, state: Any, record: dict[str, Any]) -> str | None:
    del epoch, step, state, record
    if single:
      return None if rules is None else early_stopping.stop_reason(
          curves.read_epoch_records(workdir / reporting.METRICS_FILE), **rules)
    stops = [stopped(s) for s in range(num_seeds)]
    if any(stop is None for stop in stops):
      return None
    return 'every seed stopped early: ' + '; '.join(f'seed_{s} after epoch {e} ({reason})'
                                                     for s, (e, reason) in enumerate(stops))

  # The end-of-epoch programs with arguments of their first call's shapes (the state's by its shapes), traced while
  # the step compiles in the background (after its own tracing, which they would slow) rather than beside the first
  # epoch's steps; they compile once the step runs (`compile_evaluation`), their lowering cached.
  r_state_shapes = parallel.replicated_shapes(state, AXIS_NAME)
  evaluation_programs = [(p_eval, (r_state_shapes, put_eval(eval_carry), put_eval(next(iter(setup.eval_batches())))))]
  if hessian_iterations:
    evaluation_programs.append((p_hessian, (r_state_shapes, hessian_batches)))
  p_step.wait_lowered()
  for program, args in evaluation_programs:
    program.lower_ahead(*args)

  def compile_evaluation(r_state: Any) -> None:
    del r_state  # compiled for its shapes, which `r_state_shapes` are
    for program, args in evaluation_programs:
      program.compile_in_background(*args)

  logs = (GENOTYPES_FILE, ALPHAS_FILE) if single else tuple(
      f'seed_{s}/{name}' for s in range(num_seeds) for name in (GENOTYPES_FILE, ALPHAS_FILE, reporting.METRICS_FILE))
  task = loop.Task(state=state, step=lambda r_state, batch, epoch: p_step(r_state, *batch), batches=epoch_batches,
                   steps_per_epoch=steps_per_epoch, evaluate=evaluate, after_epoch=after_epoch,
                   should_stop=should_stop, compile_ahead=compile_evaluation, logs=logs,
                   divergence_advice=DIVERGENCE_ADVICE)
  try:
    outcome = loop.train(task, config, workdir)
  finally:
    setup.close()
  if jax.process_index() == 0:
    _write_final_artifacts(config, space, workdir, dirs, outcome, seed_search_state, derive, stopped,
                           steps_per_epoch)
  return outcome.state if single else outcome.state.seeds


def _write_final_artifacts(config: ml_collections.ConfigDict, space: spaces.SearchSpace, workdir: Path,
                           dirs: list[Path], outcome: loop.Outcome, seed_search_state: Callable[[Any, int], Any],
                           derive: Callable[[Any, int], Any], stopped: Callable[[int], Any],
                           steps_per_epoch: Any) -> None:
  """Each seed's final artifacts, and with several seeds ``summary.json``."""
  single = len(dirs) == 1
  runs = []
  for s, directory in enumerate(dirs):
    alphas, final_step = _host(seed_search_state(outcome.state, s).alphas), outcome.step
    early_stop = None
    stop = ((outcome.record['epoch'], outcome.stop_reason) if outcome.stop_reason is not None else None) if single \
        else stopped(s)
    if stop is not None:
      stop_epoch, reason = stop
      rules = config.early_stopping
      kept = early_stopping.kept_epoch(rules.rule, stop_epoch, rules.window)
      alphas, final_step = next((space.alphas_from_record(r), r['step']) for r in _alphas_log(directory)
                                if r['epoch'] == kept)
      logging.info('%s stopped early after epoch %d (%s); keeping the architecture of epoch %d.', directory,
                   stop_epoch, reason, kept)
      early_stop = {'rule': rules.rule, 'reason': reason, 'stop_epoch': stop_epoch,
                    'step': outcome.step if single else stop_epoch * steps_per_epoch, 'kept_epoch': kept}
      reporting.write_json(directory / EARLY_STOP_FILE, early_stop)
    genotype = derive(alphas, final_step)
    reporting.write_json(directory / 'genotype.json', {**space.genotype_to_json(genotype),
                                                       **space.genotype_record(genotype)})
    space.write_search_artifacts(directory, alphas, genotype)
    curves.plot_curves(str(directory / reporting.METRICS_FILE), str(directory / 'curves.png'))
    logging.info('%s: final genotype %s', directory, space.genotype_text(genotype))
    if single:
      return
    for name in space.run_files:  # the space's tables a single run keeps in its workdir (the cost model)
      if (workdir / name).is_file():
        shutil.copy(workdir / name, directory / name)
    last = [r for r in reporting.read_jsonl(directory / reporting.METRICS_FILE) if 'epoch' in r][-1]
    runs.append({'workdir': directory.name, 'seed': config.seed + s, 'genotype': space.genotype_to_json(genotype),
                 **{k: v for k, v in last.items() if k == 'epoch' or k.startswith('valid_') or k in space.summary_keys},
                 'early_stop': early_stop})
  intervals = [r['images_per_s'] for r in reporting.read_jsonl(workdir / reporting.METRICS_FILE)
               if 'epoch' not in r]
  reporting.write_json(workdir / SUMMARY_FILE, {
      'num_seeds': len(dirs), 'steps': outcome.step, 'wall_time_s': outcome.wall_time_s,
      'images_per_s': len(dirs) * float(np.median(intervals)) if intervals else None, 'runs': runs})
