"""Derivations of the genotype from a finished search's supernet, apart from the search: magnitude, DARTS-PT, best of N.

`select(workdir, options)` restores the `SearchState` of the search workdir's latest checkpoint (a single-seed run of
`darts_jax.tasks.search`, any space) and writes ``<workdir>/selection_<method>/``: ``genotype.json`` (with the
space's cost entries; retrain it with ``--config.genotype=<workdir>/selection_<method>``) and ``selection.json``
(what decided it). ``options`` is `selection_config`'s:

* ``'magnitude'``: DARTS's rule, the space's `derive_genotype` of the final alphas (the search's own genotype).
* ``'pt'``: perturbation-based selection (DARTS-PT; Wang et al., "Rethinking Architecture Selection in
  Differentiable NAS", ICLR 2021). The edges (the rows of the mixing weights' leaves of two or more dimensions) are
  decided one at a time in a random order (``seed``): for each candidate op of the edge, its mixing weight is
  zeroed (the others unchanged) and the supernet's accuracy on the validation split is measured; the op whose
  removal lowers the accuracy most is kept, and the edge is fixed to it (a one-hot row) from then on. Between two
  edges the supernet trains ``tune_steps`` search steps of the search's own bilevel step (alphas too, as the paper's
  code) with the decided edges fixed.
  The space's rule then makes the genotype from weights that hold, on each edge, its kept op at a weight that ranks
  the edge by the accuracy lost when the edge is removed from the discretised supernet (the CNN rule keeps the two
  strongest inputs of a node). ``selection.json`` holds the order, each edge's accuracy and per-op drops and the edges'
  drops. Ops named in ``excluded_ops`` (``none``) are never candidates, as the paper's space has none: by name where
  the space names each edge's columns (`SearchSpace.row_ops`; an edge's columns may hold other ops, as in
  RobustDARTS's spaces and P-DARTS's pruned stages), else the columns in ``excluded_columns`` (column 0).
* ``'best_of_n'``: random search with weight sharing's selection (Li & Talwalkar 2019), after a search with
  ``relaxation.name = 'uniform_path'``: ``num_samples`` random genotypes (`random_search.sample_genotypes`), each
  scored by the supernet's validation accuracy with its ops alone (`SearchSpace.genotype_weights`); the best is
  kept; ``selection.json`` lists every sample's genotype and accuracy.

"Accuracy" is the space's `SearchSpace.selection_metric` (``valid_accuracy``; the recurrent space's ``valid_loss``,
lower is better, since next-word accuracy ties across the architectures of an early supernet); the drops are in the
score ``selection_sign · metric``.

Evaluations use the space's evaluation step on the validation split (at most ``eval_batches`` batches; 0: all).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from darts_jax import spaces
from darts_jax.bilevel.step import SearchState, make_search_step, method_name
from darts_jax.dynamics import regularizers, relaxations
from darts_jax.tasks import random_search, search
from darts_jax.training import loop, parallel, reporting
from darts_jax.training.checkpointing import Checkpointer
from darts_jax.training.parallel import AXIS_NAME

PyTree = Any
SELECTIONS = ('magnitude', 'pt', 'best_of_n')
"""The derivations `select` runs."""
SELECTION_FILE = 'selection.json'

__all__ = ['SELECTIONS', 'SELECTION_FILE', 'Supernet', 'restore_supernet', 'select', 'selection_config',
           'selection_dir']


def selection_config(method: str = 'pt', quick: bool = False) -> ml_collections.ConfigDict:
  """The options of `select` for `method`, at the papers' settings: DARTS-PT tunes 5 epochs between edges on
  CIFAR-10 (``tune_steps`` counts steps: 5 · 391 at batch 64 there, the DARTS search's) and evaluates on the whole
  validation split; random search with weight sharing scores 1000 samples. ``quick``: 10 tuning steps, 4
  evaluation batches, 20 samples (a demonstration's minute)."""
  if quick:
    return ml_collections.ConfigDict({'method': method, 'seed': 0, 'eval_batches': 4, 'tune_steps': 10,
                                      'excluded_ops': ['none'], 'excluded_columns': [0], 'num_samples': 20})
  return ml_collections.ConfigDict({'method': method, 'seed': 0, 'eval_batches': 0, 'tune_steps': 1955,
                                    'excluded_ops': ['none'], 'excluded_columns': [0], 'num_samples': 1000})


def selection_dir(workdir: str | os.PathLike[str], method: str) -> Path:
  """Where `select` writes the `method`'s genotype in a search workdir."""
  return Path(workdir) / f'selection_{method}'


@dataclasses.dataclass
class Supernet:
  """A finished search's supernet, restored: its config, space, setup, relaxation, the search's step options and the
  state replicated over the local devices (`r_state`)."""
  config: ml_collections.ConfigDict
  space: spaces.SearchSpace
  setup: spaces.SearchSetup
  relaxation: relaxations.Relaxation | None
  search_options: dict[str, Any]
  r_state: SearchState

  @property
  def state(self) -> SearchState:
    """The state on the host (one device's copy)."""
    return _unreplicated(self.r_state)

  def weights(self, state: SearchState) -> PyTree:
    """The mixing weights of evaluation: the relaxation's deterministic weights (the alphas without one), host."""
    alphas = state.alphas
    return _host(alphas if self.relaxation is None else self.relaxation.deterministic(alphas, state.step))

  def probabilities(self, state: SearchState) -> PyTree:
    """The noise-free soft weights the search derives its genotype from (None: DARTS's softmax of the alphas)."""
    if self.relaxation is None or self.relaxation == relaxations.Relaxation():
      return None
    return _host(self.relaxation.probabilities(state.alphas, state.step))


def _host(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(tree))


def _unreplicated(r_state: SearchState) -> SearchState:
  """One device's copy of a replicated state, on the host."""
  return parallel.unreplicate(r_state)


def restore_supernet(workdir: str | os.PathLike[str]) -> Supernet:
  """The supernet of the search workdir's latest checkpoint.

  Raises:
    FileNotFoundError: `workdir` has no ``config.json`` or no checkpoint.
    ValueError: a k-seed search (select on one seed's search instead).
  """
  workdir = Path(workdir)
  if not (workdir / loop.CONFIG_FILE).is_file():
    raise FileNotFoundError(f'{workdir / loop.CONFIG_FILE} does not exist: pass a search workdir.')
  config = ml_collections.ConfigDict(json.loads((workdir / loop.CONFIG_FILE).read_text()))
  if config.get('num_seeds', 1) > 1:
    raise ValueError(f'{workdir} holds a {config.num_seeds}-seed search: select from a single-seed search.')
  space = spaces.get_space(config)
  setup = space.search_setup(workdir, AXIS_NAME)
  steps_per_epoch = setup.steps_per_epoch if isinstance(setup.steps_per_epoch, int) else 0
  relaxation, penalty, perturbation = search.relaxation_terms(config, steps_per_epoch, space.relaxations)
  penalty = regularizers.sum_penalties([p for p in (penalty, setup.arch_penalty) if p is not None])
  options = dict(method=method_name(config.hypergradient), fd_epsilon=config.fd_epsilon,
                 unroll_steps=config.get('unroll_steps', 1), implicit_iterations=config.get('implicit_iterations', 10),
                 implicit_damping=config.get('implicit_damping', 0.0), arch_penalty=penalty,
                 weight_perturbation=perturbation, passes=config.get('second_order_impl', 'auto'))
  with Checkpointer(workdir / loop.CHECKPOINT_DIR, read_only=True) as checkpointer:
    restored = checkpointer.restore_latest(setup.init(jax.random.key(config.seed)))
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir / loop.CHECKPOINT_DIR}: the search has not saved one yet.')
  return Supernet(config=config, space=space, setup=setup, relaxation=relaxation, search_options=options,
                  r_state=parallel.replicate(restored[1], AXIS_NAME))


class _Evaluator:
  """The supernet's validation measures with given mixing weights: one compiled program for any weights."""

  def __init__(self, supernet: Supernet, eval_batches: int):
    setup = supernet.setup
    self._setup, self._eval_batches = setup, eval_batches
    self._p_eval = parallel.data_parallel(setup.eval_step, AXIS_NAME,
                                          impl=supernet.config.get('parallel_impl', parallel.DEFAULT_IMPL))
    self._put = (lambda tree: parallel.shard(tree, AXIS_NAME)) if setup.eval_sharded else (
        lambda tree: parallel.replicate(tree, AXIS_NAME))
    self.count = 0

  def __call__(self, r_state: SearchState, weights: PyTree) -> dict[str, float]:
    r_weights = parallel.replicate(jax.tree.map(jnp.asarray, weights), AXIS_NAME)
    carry, sums = self._put(self._setup.eval_carry), []
    batches = self._setup.eval_batches()
    for batch in itertools.islice(batches, self._eval_batches or None):
      carry, batch_sums = self._p_eval(r_state, r_weights, carry, self._put(batch))
      sums.append(batch_sums)
    self.count += 1
    # Summed over devices (or computed whole on each): device 0's, as the search's evaluation.
    totals = {k: np.sum([np.asarray(s[k])[0] for s in jax.device_get(sums)], axis=0).astype(np.float64)
              for k in sums[0]}
    return self._setup.eval_entries(totals)


# ---------------------------------------------------------------------------------------------------------------------
# The rows of the mixing weights: the edges.


def _rows(weights: PyTree) -> list[tuple[int, tuple[int, ...]]]:
  """Every edge as (leaf index, row index) of the weights' leaves of shape ``(edges..., ops)``, in leaf order; leaves
  of one dimension (PC-DARTS's edge normalisation: one weight per input of a node) hold no edges."""
  return [(i, row) for i, leaf in enumerate(jax.tree.leaves(weights)) if np.ndim(leaf) >= 2
          for row in np.ndindex(leaf.shape[:-1])]


def _edge_names(weights: PyTree) -> list[str]:
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(weights)[0]]
  return [f'{paths[i]}{list(row)}' for i, row in _rows(weights)]


def _set_rows(weights: PyTree, values: dict[tuple[int, tuple[int, ...]], np.ndarray]) -> PyTree:
  """`weights` (host) with the given rows replaced."""
  leaves, treedef = jax.tree.flatten(weights)
  leaves = [np.array(leaf) for leaf in leaves]
  for (i, row), value in values.items():
    leaves[i][row] = value
  return jax.tree.unflatten(treedef, leaves)


def _one_hot(num_ops: int, op: int, dtype: Any = np.float32) -> np.ndarray:
  return np.eye(num_ops, dtype=dtype)[op]


@dataclasses.dataclass(frozen=True)
class _Projected:
  """A relaxation with some edges fixed: rows where ``mask`` holds get ``one_hot``, the rest the base relaxation's
  weights (the alphas where there is none). ``mask`` and ``one_hot`` are arrays of a traced program, so one program
  serves every set of decided edges."""
  base: Any
  mask: PyTree
  one_hot: PyTree

  def sample(self, rng: jax.Array, alphas: PyTree, step: jax.Array) -> PyTree:
    weights = alphas if self.base is None else self.base.sample(rng, alphas, step)
    return jax.tree.map(lambda m, h, w: jnp.where(m, h, w), self.mask, self.one_hot, weights)


def _tuning(supernet: Supernet, steps: int) -> Any:
  """``tune(r_state, mask, one_hot) -> r_state``: `steps` search steps with the decided edges fixed, on batches of
  the epochs after the search's (a new order each call)."""
  config, setup, options = supernet.config, supernet.setup, supernet.search_options

  def step(state, train, val, mask, one_hot):
    return make_search_step(setup.problem, relaxation=_Projected(supernet.relaxation, mask, one_hot),
                            **options)(state, train, val)[0]

  p_step = parallel.data_parallel(step, AXIS_NAME, impl=config.get('parallel_impl', parallel.DEFAULT_IMPL))

  def batches() -> Iterator[Any]:
    for epoch in itertools.count(config.num_epochs):
      yield from setup.batches(epoch, 0, config.seed)

  stream = batches()

  def tune(r_state, mask, one_hot):
    r_mask, r_one_hot = (parallel.replicate(jax.tree.map(jnp.asarray, t), AXIS_NAME) for t in (mask, one_hot))
    for train, val in itertools.islice(stream, steps):
      r_state = p_step(r_state, parallel.shard(train, AXIS_NAME), parallel.shard(val, AXIS_NAME), r_mask, r_one_hot)
    return r_state

  return tune


# ---------------------------------------------------------------------------------------------------------------------
# The derivations.


def _magnitude(supernet: Supernet, options: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
  del options
  state = supernet.state
  return supernet.space.derive_genotype(_host(state.alphas), supernet.probabilities(state)), {'step': int(state.step)}


def _pt(supernet: Supernet, options: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
  evaluate = _Evaluator(supernet, options.eval_batches)
  tune = _tuning(supernet, options.tune_steps)
  weights = supernet.weights(supernet.state)
  rows, names = _rows(weights), _edge_names(weights)
  num_ops = jax.tree.leaves(weights)[rows[0][0]].shape[-1]
  row_ops = supernet.space.row_ops(weights)
  if row_ops is None:
    candidates = {row: [k for k in range(num_ops) if k not in set(options.excluded_columns)] for row in rows}
  else:  # by name: an edge's columns may hold other ops (RobustDARTS's spaces, P-DARTS's pruned stages)
    candidates = {row: [k for k, op in enumerate(ops) if op not in set(options.excluded_ops)]
                  for row, ops in zip(rows, row_ops)}
  order = np.random.default_rng(options.seed).permutation(len(rows))
  decided: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
  r_state, edges = supernet.r_state, []
  metric, score = supernet.space.selection_metric, _score(supernet.space)
  for position, index in enumerate(order):
    row = rows[index]
    current = _set_rows(supernet.weights(_unreplicated(r_state)), decided)
    entries = evaluate(r_state, current)
    base = score(entries)
    leaf = jax.tree.leaves(current)[row[0]]
    drops = {}
    for k in candidates[row]:
      removed = leaf[row[1]].copy()
      removed[k] = 0
      drops[k] = base - score(evaluate(r_state, _set_rows(current, {row: removed})))
    kept = max(candidates[row], key=lambda k: drops[k])  # ties: the first candidate
    decided[row] = _one_hot(num_ops, kept)
    edges.append({'edge': names[index], metric: entries[metric], 'drops': {str(k): d for k, d in drops.items()},
                  'kept': kept})
    logging.info('DARTS-PT %d/%d: %s keeps op %d (%s drop %.4f).', position + 1, len(rows), names[index], kept,
                 metric, drops[kept])
    if position + 1 < len(rows):
      mask = _set_rows(jax.tree.map(lambda w: np.zeros(w.shape[:-1] + (1,), bool), weights),
                       {r: np.ones(1, bool) for r in decided})
      one_hot = _set_rows(jax.tree.map(np.zeros_like, weights), decided)
      r_state = tune(r_state, mask, one_hot)
  # The discretised supernet; each edge ranked by the score lost without it.
  discrete = _set_rows(weights, decided)
  entries = evaluate(r_state, discrete)
  base = score(entries)
  removed = {row: np.zeros(num_ops, np.float32) for row in rows}
  edge_drops = [base - score(evaluate(r_state, _set_rows(discrete, {row: removed[row]}))) for row in rows]
  offset = 1 - min(edge_drops)  # positive strengths, in the order of the drops
  strengths = _set_rows(weights, {row: decided[row] * (offset + drop) for row, drop in zip(rows, edge_drops)})
  genotype = supernet.space.derive_genotype(_host(_unreplicated(r_state).alphas), strengths)
  return genotype, {'order': [names[i] for i in order], 'edges': edges, f'discrete_{metric}': entries[metric],
                    'edge_drops': dict(zip(names, edge_drops)), 'tune_steps': options.tune_steps,
                    'evaluations': evaluate.count}


def _best_of_n(supernet: Supernet, options: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
  evaluate = _Evaluator(supernet, options.eval_batches)
  alphas = _host(supernet.state.alphas)
  metric, score = supernet.space.selection_metric, _score(supernet.space)
  samples = []
  for genotype in random_search.sample_genotypes(supernet.space, alphas, options.num_samples, options.seed):
    samples.append((evaluate(supernet.r_state, supernet.space.genotype_weights(genotype, alphas)), genotype))
  best = max(range(len(samples)), key=lambda i: score(samples[i][0]))  # ties: the first sample
  return samples[best][1], {'best': best, 'samples': [
      {'genotype': supernet.space.genotype_to_json(g), metric: entries[metric]} for entries, g in samples]}


def _score(space: spaces.SearchSpace) -> Any:
  """``score(entries)``: the space's selection metric, higher is better."""
  return lambda entries: space.selection_sign * entries[space.selection_metric]


def select(workdir: str | os.PathLike[str], options: ml_collections.ConfigDict | None = None) -> Any:
  """Derives the genotype of the search in `workdir` by ``options.method`` (`SELECTIONS`; options from
  `selection_config`) and writes it to ``selection_dir(workdir, method)`` (module docstring). Returns the genotype.

  Raises:
    ValueError: an unknown method or a k-seed workdir.
    FileNotFoundError: `workdir` is no search workdir or has no checkpoint.
  """
  options = selection_config() if options is None else options
  if options.method not in SELECTIONS:
    raise ValueError(f'Unknown selection {options.method!r}; expected one of {", ".join(SELECTIONS)}.')
  if options.tune_steps < 0 or options.num_samples < 1 or options.eval_batches < 0:
    raise ValueError(f'tune_steps ({options.tune_steps}) and eval_batches ({options.eval_batches}) must be >= 0 '
                     f'and num_samples ({options.num_samples}) positive.')
  supernet = restore_supernet(workdir)
  if options.method != 'magnitude' and supernet.relaxation is None:
    supernet.setup.close()
    raise ValueError(f'space {supernet.space.name!r} mixes its ops by the softmax of the alphas itself: only the '
                     'magnitude selection applies.')
  try:
    derive = {'magnitude': _magnitude, 'pt': _pt, 'best_of_n': _best_of_n}[options.method]
    genotype, record = derive(supernet, options)
  finally:
    supernet.setup.close()
  space, directory = supernet.space, selection_dir(workdir, options.method)
  directory.mkdir(exist_ok=True)
  reporting.write_json(directory / 'genotype.json', {**space.genotype_to_json(genotype),
                                                     **space.genotype_record(genotype)})
  reporting.write_json(directory / SELECTION_FILE, {'method': options.method, 'options': options.to_dict(),
                                                    'genotype': space.genotype_to_json(genotype), **record})
  logging.info('%s selection: %s', options.method, space.genotype_text(genotype))
  return genotype
