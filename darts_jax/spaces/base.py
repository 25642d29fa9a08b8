"""The search-space interface: what the one search task and the one retrain task need from a space.

A space (the DARTS CNN cells, the recurrent cell, ...) is a subclass of `SearchSpace` built from a config. The tasks
(`darts_jax.tasks.search`, `darts_jax.tasks.retrain`) own everything that does not depend on the space: the
training loop, seeds, the bilevel step (`darts_jax.bilevel.step`), diagnostics, early stopping, logs and artifacts
common to every space. The space gives them its pieces: the supernet's losses and state, its batches, its
evaluation, the genotype rule and formats, its diagnostics, its cost where it has one, and its own artifacts.

Spaces sit between the training infrastructure and the tasks: they build on the space's model and genotype modules
(`darts_jax.cnn`, `darts_jax.rnn`), the data pipeline, the bilevel core and `darts_jax.training`, and the tasks build
on them. `darts_jax.spaces.get_space` finds a space by its config's ``space`` key.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np

from darts_jax.bilevel.step import ArchPenalty, BilevelProblem, SearchState
from darts_jax.training import loop

PyTree = Any


@dataclasses.dataclass(frozen=True)
class SearchSetup:
  """What a space gives the search task for one run (`SearchSpace.search_setup`), for ONE seed: the task runs k
  seeds by vmapping the device functions and calling the host ones per seed.

  Attributes:
    summary: a log line on the data and the sizes.
    steps_per_epoch: the number of steps of an epoch (a function of the epoch where it varies).
    batches: ``batches(epoch, start, seed) -> (train, val)`` host batches of this process, the epoch's from step
      `start` on, their order a function of (seed, epoch) only (resumable).
    init: ``init(key) -> SearchState``: one seed's initial state (weights, alphas, optimizers, carry).
    problem: the space's side of the bilevel step (`darts_jax.bilevel.step.BilevelProblem`); its loss takes the
      mixing weights (the alphas, or a relaxation's).
    eval_step: ``eval_step(state, weights, carry, batch) -> (carry, sums)``: the network in evaluation mode with its
      ops mixed by ``weights`` (the alphas, or a relaxation's deterministic weights) on one evaluation batch;
      ``carry`` passes from batch to batch in order (the recurrent hidden state; None). ``sums`` are summed over
      devices when `eval_sharded`.
    eval_carry: the carry before the first evaluation batch.
    eval_batches: ``eval_batches() -> batches`` of the validation split, this process's slices.
    eval_sharded: whether evaluation batches are split over devices (else every device evaluates all of each).
    eval_entries: ``eval_entries(totals) -> entries`` of the epoch record from the sums over all batches (float64
      numpy): at least ``valid_loss`` and ``valid_accuracy`` (the k-seed records average them).
    validation_loss: ``validation_loss(params, batch_stats, weights, batches) -> scalar``: the validation loss on
      fixed batches (`hessian_batches`) for the Hessian diagnostics; None where the space has none.
    hessian_batches: ``hessian_batches(count) -> batches``: `count` fixed validation batches (host), the layout
      `validation_loss` takes.
    learning_rate: ``learning_rate(step) -> lr`` for the epoch record (None: the rate varies by batch and the
      interval records hold it).
    arch_penalty: the space's own term of the validation loss (``P(alphas, weights, step)``: the expected cost), or
      None.
    close: releases what the data holds.
  """
  summary: str
  steps_per_epoch: int | Callable[[int], int]
  batches: Callable[[int, int, int], Iterator[tuple[Any, Any]]]
  init: Callable[[jax.Array], SearchState]
  problem: BilevelProblem
  eval_step: Callable[[SearchState, PyTree, Any, Any], tuple[Any, dict[str, jax.Array]]]
  eval_carry: PyTree
  eval_batches: Callable[[], Iterable[Any]]
  eval_entries: Callable[[dict[str, np.ndarray]], dict[str, float]]
  eval_sharded: bool = True
  validation_loss: Callable[..., jax.Array] | None = None
  hessian_batches: Callable[[int], Any] | None = None
  learning_rate: Callable[[int], float] | None = None
  arch_penalty: ArchPenalty | None = None
  close: Callable[[], None] = lambda: None


@dataclasses.dataclass(frozen=True)
class Retraining:
  """What a space gives the retrain task for one genotype.

  Attributes:
    task: the loop's task (state, step, batches, end-of-epoch evaluation, per-epoch artifacts).
    results: ``results(outcome) -> dict`` the space's final measures of the trained network (test accuracy or
      perplexity, parameters, ...), after `loop.train` returns; the task adds the common entries (epochs, steps,
      wall time, genotype) and writes ``results.json``.
    close: releases what the data pipeline holds (worker processes), called however training ends.
  """
  task: loop.Task
  results: Callable[[loop.Outcome], dict[str, Any]]
  close: Callable[[], None] = lambda: None


class SearchSpace(abc.ABC):
  """A search space as the tasks see it. ``SearchSpace(config)``: the config is the task's (search or retrain)."""

  name: ClassVar[str]
  """The config's ``space`` value that selects this space."""
  retrain_resumable_keys: ClassVar[frozenset[str]] = frozenset()
  """Retrain config keys that may change on resume besides `loop.RESUMABLE_KEYS`."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  # ---- the search

  supports_seeds: ClassVar[bool] = True
  """Whether k seeds can run as one vmapped step (the steps per epoch must not depend on the seed)."""

  @abc.abstractmethod
  def check_search_config(self) -> None:
    """Raises ValueError (one line) for a search config this space cannot run (its own keys; the task checks the
    common ones)."""

  run_files: ClassVar[tuple[str, ...]] = ()
  """Files the space writes to a search workdir at the start (tables a resumed run reads back); each seed of a
  k-seed search gets a copy."""
  early_stopping_rules: ClassVar[tuple[str, ...]] = ('none', 'stability')
  """The early-stopping rules (`darts_jax.dynamics.early_stopping.RULES`) whose record entries the space's
  diagnostics give: ``stability`` reads ``unchanged_epochs``, ``darts_plus`` ``skip_connect_normal``, ``darts_es``
  the Hessian's ``hessian_eigenvalue``."""
  summary_keys: ClassVar[tuple[str, ...]] = ()
  """Diagnostics of the last epoch record that a k-seed search's ``summary.json`` lists per seed."""
  relaxations: ClassVar[bool] = True
  """Whether the network takes mixing weights from a relaxation (``config.relaxation``); else it mixes by the
  softmax of the alphas itself."""
  selection_metric: ClassVar[str] = 'valid_accuracy'
  """The evaluation entry by which DARTS-PT and best of N rank architectures on the supernet
  (`darts_jax.tasks.selection`), and its sign: 1 where higher is better."""
  selection_sign: ClassVar[float] = 1.0

  @abc.abstractmethod
  def search_setup(self, workdir: Path, axis_name: Any) -> SearchSetup:
    """Loads the data and builds the supernet's pieces; ``axis_name`` is the device axis of the data-parallel
    programs."""

  @abc.abstractmethod
  def derive_genotype(self, alphas: PyTree, weights: PyTree | None = None) -> Any:
    """The genotype of host `alphas` (numpy), or of a relaxation's noise-free mixing `weights` when given."""

  @abc.abstractmethod
  def alphas_record(self, alphas: PyTree) -> dict[str, Any]:
    """Host `alphas` as the JSON entries of an ``alphas.jsonl`` record."""

  @abc.abstractmethod
  def alphas_from_record(self, record: dict[str, Any]) -> PyTree:
    """`alphas_record`'s inverse (numpy)."""

  @abc.abstractmethod
  def diagnostics(self, alphas: PyTree, history: list[Any], weights: PyTree | None) -> dict[str, float]:
    """The epoch record's diagnostics of the search's dynamics (entropy, largest weight, stability, ...) from the
    host `alphas`, the genotypes since epoch 0 (`history`, the current one last) and the relaxation's
    deterministic `weights` (None: the softmax of the alphas)."""

  def genotype_entries(self, genotype: Any) -> dict[str, Any]:
    """Entries of the epoch record about the current genotype (its cost); none by default."""
    del genotype
    return {}

  def architecture_entries(self, alphas: PyTree) -> dict[str, float]:
    """Entries of the epoch record about the current alphas beyond the diagnostics (the expected cost)."""
    del alphas
    return {}

  def genotype_record(self, genotype: Any) -> dict[str, Any]:
    """Extra entries of a genotype's ``genotypes.jsonl`` record and of ``genotype.json`` (its cost)."""
    del genotype
    return {}

  def genotype_weights(self, genotype: Any, alphas: PyTree) -> PyTree:
    """The supernet's mixing weights (the shapes of `alphas`) that run the discrete `genotype` alone: its ops at
    weight 1, every other op and edge at 0 (the selections that score architectures on the supernet,
    `darts_jax.tasks.selection`). Spaces without it cannot score sampled architectures."""
    raise ValueError(f'space {self.name!r} cannot turn a genotype into mixing weights '
                     '(SearchSpace.genotype_weights).')

  def row_ops(self, weights: PyTree) -> list[tuple[str, ...]] | None:
    """The op names of every edge: one tuple per row of the mixing weights' leaves of two or more dimensions, in
    ``jax.tree.leaves`` order, then row order (the edges DARTS-PT decides, `darts_jax.tasks.selection`); None where
    the space does not name its columns (DARTS-PT then excludes columns by index)."""
    del weights
    return None

  def genotype_text(self, genotype: Any) -> str:
    """The genotype for the log."""
    return str(genotype)

  @abc.abstractmethod
  def write_search_artifacts(self, workdir: Path, alphas: PyTree, genotype: Any) -> None:
    """The space's final files beside ``genotype.json`` and ``curves.png`` (``alphas.npz``, the cell diagrams,
    plots of the dynamics)."""

  # ---- genotypes (both tasks)

  @abc.abstractmethod
  def load_genotype(self, spec: str) -> Any:
    """The genotype ``spec`` names: a search workdir, a ``genotype.json``, a known name, JSON or repr text."""

  @abc.abstractmethod
  def genotype_to_json(self, genotype: Any) -> dict[str, Any]:
    """The genotype as the JSON object ``genotype.json`` holds."""

  @abc.abstractmethod
  def plot_genotype(self, genotype: Any, prefix: str) -> None:
    """Writes the cell diagrams of `genotype` to files starting with `prefix` (``workdir/``)."""

  # ---- retraining

  @abc.abstractmethod
  def check_retrain_config(self) -> None:
    """Raises ValueError (one line) for a retrain config this space cannot run."""

  @abc.abstractmethod
  def retraining(self, workdir: Path, genotype: Any) -> Retraining:
    """The retraining of `genotype` under this space's config, writing to `workdir`."""
