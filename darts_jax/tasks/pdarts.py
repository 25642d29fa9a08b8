"""P-DARTS (Chen et al., "Progressive Differentiable Architecture Search: Bridging the Depth Gap between Search and
Evaluation", ICCV 2019): the search in stages of growing depth on shrinking op sets, one run in one workdir.

`pdarts(config, workdir)` runs ``len(config.pdarts.layers)`` searches of the CNN space with the one search task,
stage ``i`` in ``<workdir>/stage_<i>/`` (a search workdir of its own, resumable as any):

* stage ``i``'s supernet has ``pdarts.layers[i]`` cells (``init_channels + pdarts.add_width[i]`` channels) and on
  every edge the ``pdarts.num_ops[i]`` ops that survived the earlier stages (`prune_op_sets`: the ops of the
  smallest ``softmax(alpha)`` over the edge's ops dropped; ``none`` is dropped first before the last stage, as the
  code's ``get_min_k_no_zero``), written to the stage's config as ``model.edge_ops``;
* dropout on the skip connections at ``pdarts.skip_dropout[i]``, decayed per epoch as the code
  (`darts_jax.dynamics.relaxations.skip_dropout_schedule`, which the space applies), and the first
  ``pdarts.arch_warmup_epochs`` epochs train the weights only;
* a finished stage (its ``genotype.json`` written) is not run again: running `pdarts` again on the workdir resumes
  the first unfinished stage from its checkpoint.

The final genotype (``<workdir>/genotype.json``) is DARTS's rule on the last stage's ``softmax(alpha)`` over each
edge's ops, ``none`` excluded, with at most ``pdarts.max_skips`` skip connections in the normal cell
(`limit_skips`: the code's ``delete_min_sk_prob``, the selected skip of the smallest weight set to 0 and the cell
derived again, until the count is reached). ``<workdir>/pdarts.json`` holds every stage's op sets and the genotypes
before and after the limit.

The stages need a space with per-edge op sets, skip dropout and a weight-only warm-up: the config keys
``model.edge_ops``, ``model.skip_dropout`` and ``arch_warmup_epochs`` (`STAGE_KEYS`), which the CNN space's configs
define (`darts_jax.spaces.cnn`); `pdarts` refuses a config without them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from darts_jax import spaces
from darts_jax.analysis import run_files
from darts_jax.cnn.genotypes import CELL_TYPES, PRIMITIVES, Genotype
from darts_jax.tasks import search
from darts_jax.training import reporting

OpSets = dict[str, list[list[str]]]
"""Per cell type, the op names of every edge (the columns of its row of alphas)."""
STAGE_KEYS = ('model.edge_ops', 'model.skip_dropout', 'arch_warmup_epochs')
"""The search config's keys a stage sets besides ``model.layers`` and ``model.init_channels``."""
PDARTS_FILE = 'pdarts.json'

__all__ = ['PDARTS_FILE', 'STAGE_KEYS', 'OpSets', 'limit_skips', 'parse_cell', 'pdarts', 'prune_op_sets',
           'stage_config', 'stage_dir']


def stage_dir(workdir: str | os.PathLike[str], stage: int) -> Path:
  """The search workdir of `stage` (from 0) in a P-DARTS workdir."""
  return Path(workdir) / f'stage_{stage}'


def _softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def prune_op_sets(op_sets: OpSets, probs: Mapping[str, np.ndarray], keep: int, drop_none: bool = False) -> OpSets:
  """Every edge's `keep` ops of the largest weights (``probs[kind][e]``, one per op of ``op_sets[kind][e]``), in
  their order; with `drop_none` ``none`` goes first whatever its weight (P-DARTS's last pruning). Ties drop the
  first op of the smallest weight, as the code's ``argmin``."""
  pruned = {}
  for kind, edges in op_sets.items():
    pruned[kind] = []
    for ops, p in zip(edges, probs[kind]):
      if len(p) != len(ops):
        raise ValueError(f'{kind}: {len(ops)} ops on an edge but {len(p)} weights.')
      weights = list(np.asarray(p, np.float64))
      alive = list(range(len(ops)))
      if drop_none and 'none' in ops:
        alive.remove(ops.index('none'))
      while len(alive) > keep:
        alive.remove(min(alive, key=lambda k: (weights[k], k)))
      pruned[kind].append([ops[k] for k in alive])
  return pruned


def parse_cell(probs: np.ndarray, edge_ops: Sequence[Sequence[str]], steps: int) -> list[tuple[str, int]]:
  """DARTS's rule on one cell's weights over per-edge op sets: on each node the two inputs whose best non-``none``
  weight is largest (ties: the lower input), each with that op (ties: the first)."""
  gene, start = [], 0
  for node in range(steps):
    n = 2 + node
    best = [max((p, -k, ops[k]) for k, p in enumerate(probs[start + j]) if ops[k] != 'none')
            for j, ops in enumerate(edge_ops[start:start + n])]
    for j in sorted(range(n), key=lambda j: -best[j][0])[:2]:
      gene.append((best[j][2], j))
    start += n
  return gene


def limit_skips(probs: np.ndarray, edge_ops: Sequence[Sequence[str]], steps: int, max_skips: int
                ) -> list[tuple[str, int]]:
  """`parse_cell` with at most `max_skips` ``skip_connect`` ops: while there are more, the selected skip edge of the
  smallest skip weight loses its skip (weight 0) and the cell is derived again (the code's ``delete_min_sk_prob``,
  ``keep_1_on``, ``keep_2_branches``)."""
  probs = np.array(probs, np.float64)
  while True:
    gene = parse_cell(probs, edge_ops, steps)
    edges = _selected_edges(gene, steps)
    skips = [e for (op, _), e in zip(gene, edges) if op == 'skip_connect']
    if len(skips) <= max_skips:
      return gene
    weakest = min(skips, key=lambda e: (probs[e][list(edge_ops[e]).index('skip_connect')], e))
    probs[weakest][list(edge_ops[weakest]).index('skip_connect')] = 0.0


def _selected_edges(gene: list[tuple[str, int]], steps: int) -> list[int]:
  """The edge index (the alphas' row) of every (op, input) of a parsed cell."""
  offsets = np.cumsum([0] + [2 + node for node in range(steps)])
  return [int(offsets[i // 2]) + j for i, (_, j) in enumerate(gene)]


def stage_config(config: ml_collections.ConfigDict, stage: int, op_sets: OpSets) -> ml_collections.ConfigDict:
  """Stage `stage`'s search config: the P-DARTS `config` without ``pdarts``, with the stage's cells, width, op sets
  and skip dropout, and the weight-only warm-up."""
  p = config.pdarts
  single = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != 'pdarts'})
  single.model.layers = p.layers[stage]
  single.model.init_channels = config.model.init_channels + p.add_width[stage]
  single.model.edge_ops = json.dumps(op_sets)
  single.model.skip_dropout = p.skip_dropout[stage]
  single.arch_warmup_epochs = p.arch_warmup_epochs
  return single


def _check_config(config: ml_collections.ConfigDict) -> None:
  p = config.pdarts
  stages = len(p.layers)
  if stages < 1 or not len(p.num_ops) == len(p.skip_dropout) == len(p.add_width) == stages:
    raise ValueError(f'pdarts.layers, num_ops, skip_dropout and add_width need one entry per stage, got {p.layers}, '
                     f'{p.num_ops}, {p.skip_dropout} and {p.add_width}.')
  if p.num_ops[0] != len(PRIMITIVES) or any(b > a for a, b in zip(p.num_ops, p.num_ops[1:])) or p.num_ops[-1] < 2:
    raise ValueError(f'pdarts.num_ops ({p.num_ops}) must start at the {len(PRIMITIVES)} ops of the space, never grow, '
                     'and end at 2 or more (the final rule keeps one).')
  if p.max_skips < 0 or p.arch_warmup_epochs < 0:
    raise ValueError(f'pdarts.max_skips ({p.max_skips}) and pdarts.arch_warmup_epochs ({p.arch_warmup_epochs}) must '
                     'be >= 0.')
  missing = [key for key in STAGE_KEYS if not _has(config, key)]
  if missing:
    raise ValueError(f'P-DARTS needs the search config keys {", ".join(missing)} (the space\'s per-edge op sets, '
                     'skip dropout and weight-only warm-up): this space\'s config has none.')


def _has(config: ml_collections.ConfigDict, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def _final_probs(directory: Path, space: spaces.SearchSpace) -> dict[str, np.ndarray]:
  """``softmax(alpha)`` of a finished stage's last epoch, per cell type."""
  alphas = space.alphas_from_record(reporting.read_jsonl(directory / run_files.ALPHAS_FILE)[-1])
  return {kind: _softmax(alphas[kind]) for kind in CELL_TYPES}


def pdarts(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str],
           run_stage: Callable[[ml_collections.ConfigDict, Path], Any] = search.search) -> Genotype:
  """Runs (or resumes) the staged search of `config` (``configs/search_pdarts.py``) in `workdir` (module
  docstring); ``run_stage(config, directory)`` is one stage's search. Returns the final genotype.

  Raises:
    ValueError: an invalid ``config.pdarts`` or a space without per-edge op sets.
  """
  _check_config(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  p, steps = config.pdarts, config.model.steps
  space = spaces.get_space(config)
  op_sets: OpSets = {kind: [list(PRIMITIVES) for _ in range(sum(2 + i for i in range(steps)))]
                     for kind in CELL_TYPES}
  stages = []
  for stage in range(len(p.layers)):
    if stage:  # the weakest ops of the last stage go; before the last stage 'none' first
      op_sets = prune_op_sets(op_sets, probs, p.num_ops[stage], drop_none=stage == len(p.layers) - 1)
    directory = stage_dir(workdir, stage)
    stages.append({'stage': stage, 'layers': p.layers[stage], 'op_sets': op_sets})
    reporting.write_json(workdir / PDARTS_FILE, {'stages': stages})
    if (directory / 'genotype.json').is_file():
      logging.info('P-DARTS stage %d: finished earlier, kept.', stage)
    else:
      logging.info('P-DARTS stage %d: %d cells, %d ops per edge.', stage, p.layers[stage], p.num_ops[stage])
      run_stage(stage_config(config, stage, op_sets), directory)
    probs = _final_probs(directory, space)
  concat = list(range(2 + steps - config.model.multiplier, 2 + steps))
  unlimited = Genotype(normal=parse_cell(probs['normal'], op_sets['normal'], steps), normal_concat=concat,
                       reduce=parse_cell(probs['reduce'], op_sets['reduce'], steps), reduce_concat=concat)
  genotype = unlimited._replace(normal=limit_skips(probs['normal'], op_sets['normal'], steps, p.max_skips))
  reporting.write_json(workdir / 'genotype.json', space.genotype_to_json(genotype))
  reporting.write_json(workdir / PDARTS_FILE, {'stages': stages, 'genotype_without_skip_limit':
                                               space.genotype_to_json(unlimited),
                                               'genotype': space.genotype_to_json(genotype)})
  logging.info('P-DARTS genotype: %s', space.genotype_text(genotype))
  return genotype
