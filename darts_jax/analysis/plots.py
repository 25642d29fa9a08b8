"""Plots of a search's dynamics, from its workdir (`run_files`), with matplotlib's Agg canvas (no pyplot state):

* ``convergence.png``: per epoch, the alpha entropy of both cells, the validation accuracy, the stability of the
  derived cells, the Hessian's largest and smallest eigenvalues and, where recorded, the skip connections of the
  derived normal cell; an early stop is marked;
* ``alphas.png``: the softmax weights of the final alphas as two heatmaps, edges × ops, edges labelled by
  (node, input);
* ``alphas_evolution.png``: the same weights at up to `EVOLUTION_PANELS` epochs, one column per epoch.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from darts_jax.analysis import run_files
from darts_jax.cnn.genotypes import PRIMITIVES, edge_primitives, num_edges
from darts_jax.dynamics.diagnostics import CELL_TYPES, edge_labels, softmax_weights

EVOLUTION_PANELS = 8


def _steps(num_rows: int) -> int:
  steps = 1
  while num_edges(steps) < num_rows:
    steps += 1
  if num_edges(steps) != num_rows:
    raise ValueError(f'{num_rows} alpha rows are not the edges of a cell (2, 5, 9, 14, ...)')
  return steps


def _figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
  """(epochs, values) of the records that hold `key`."""
  points = [(r['epoch'], r[key]) for r in records if r.get(key) is not None]
  return [e for e, _ in points], [v for _, v in points]


def convergence_figure(records: Sequence[dict[str, Any]], early_stop: dict[str, Any] | None = None,
                       num_ops: int = len(PRIMITIVES)) -> Figure:
  """Panels over epochs: alpha entropy (normal, reduce; ``log num_ops``, the uniform weights', dotted), supernet
  accuracy (train, valid), stability (normal, reduce), the Hessian's eigenvalues and, where the records hold
  ``skip_connect_normal``, the skip connections of the derived normal cell."""
  panels = [('alpha entropy (nats)', [(f'alpha_entropy_{k}', k) for k in CELL_TYPES]),
            ('supernet accuracy', [('train_accuracy', 'train'), ('valid_accuracy', 'valid')]),
            ('stability (choices kept from the previous epoch)', [(f'stability_{k}', k) for k in CELL_TYPES]),
            ('eigenvalues of the Hessian of L_val w.r.t. alpha',
             [('hessian_eigenvalue', 'largest'), ('hessian_eigenvalue_min', 'smallest')])]
  if any('skip_connect_normal' in r for r in records):
    panels.append(('skip connections in the derived normal cell', [('skip_connect_normal', None)]))
  rows = (len(panels) + 1) // 2
  fig = _figure(11, 3.5 * rows)
  axes = list(fig.subplots(rows, 2).flat)
  for ax, (title, lines) in zip(axes, panels):
    for key, label in lines:
      epochs, values = _series(records, key)
      if epochs:
        ax.plot(epochs, values, marker='o', markersize=3, label=label)
    if title.startswith('alpha entropy'):
      ax.axhline(np.log(num_ops), color='gray', linestyle=':', label='uniform')
    if title.startswith('skip connections'):
      ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if early_stop is not None:
      ax.axvline(early_stop['stop_epoch'], color='red', linestyle='--', label='early stop')
      if early_stop['kept_epoch'] != early_stop['stop_epoch']:
        ax.axvline(early_stop['kept_epoch'], color='green', linestyle='--', label='kept')
    if not ax.get_lines():
      ax.text(0.5, 0.5, 'not computed', ha='center', va='center', transform=ax.transAxes, color='gray')
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if any(line.get_label() and not line.get_label().startswith('_') for line in ax.get_lines()):
      ax.legend(fontsize=8)
  for ax in axes[len(panels):]:  # an odd number of panels leaves one empty
    ax.set_visible(False)
  return fig


def column_labels(config: dict[str, Any], num_ops: int) -> list[str]:
  """The op names of the alphas' columns of a search's `config` (``config.json``): its ``model.edge_ops`` or
  ``model.search_space``'s where every edge has the same ops, else ``op 0``, ``op 1``, ... (RobustDARTS's S1,
  P-DARTS's pruned stages: the columns hold other ops on other edges)."""
  model = config.get('model', {})
  try:
    if model.get('edge_ops'):
      edges = [tuple(ops) for kind in CELL_TYPES for ops in json.loads(model['edge_ops'])[kind]]
    else:
      ops = edge_primitives(model.get('search_space', 'darts'), model.get('steps', 4))
      edges = [tuple(e) for kind in CELL_TYPES for e in ops[kind]]
  except (ValueError, KeyError, TypeError):
    edges = []
  if edges and len(set(edges)) == 1 and len(edges[0]) == num_ops:
    return list(edges[0])
  return [f'op {k}' for k in range(num_ops)]


def _heatmap(ax: Any, weights: np.ndarray, title: str, *, vmax: float, ops: Sequence[str] | None = None) -> Any:
  """Edges × ops; `ops` labels the columns (None: no labels)."""
  image = ax.imshow(weights, cmap='viridis', vmin=0.0, vmax=vmax, aspect='auto')
  ax.set_title(title, fontsize=9)
  if ops is not None:
    ax.set_xticks(range(weights.shape[1]), ops, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(weights.shape[0]), edge_labels(_steps(weights.shape[0])), fontsize=8)
    ax.set_ylabel('edge (node, input)')
  else:
    ax.set_xticks([])
    ax.set_yticks([])
  return image


def alphas_figure(alphas: dict[str, np.ndarray], description: str = 'final', ops: Sequence[str] = PRIMITIVES
                  ) -> Figure:
  """The softmax weights of `alphas`, one heatmap (edges × ops, columns named by `ops`) per cell type, each weight
  written in its cell."""
  weights = softmax_weights(alphas)
  vmax = max(float(w.max()) for w in weights.values())
  fig = _figure(11, 6)
  for ax, kind in zip(fig.subplots(1, 2), CELL_TYPES):
    image = _heatmap(ax, weights[kind], f'{kind} cell: softmax(alpha), {description}', vmax=vmax, ops=ops)
    for (row, col), w in np.ndenumerate(weights[kind]):
      ax.text(col, row, f'{w:.2f}', ha='center', va='center', fontsize=6,
              color='black' if w > 0.6 * vmax else 'white')
  fig.colorbar(image, ax=fig.axes, shrink=0.8, label='weight')
  return fig


def evolution_figure(log: Sequence[dict[str, Any]], panels: int = EVOLUTION_PANELS, ops: Sequence[str] = PRIMITIVES
                     ) -> Figure:
  """Heatmaps of the softmax weights at up to `panels` evenly spaced epochs of an alphas log (first and last
  included), normal cell above, reduction cell below, one colour scale."""
  shown = [log[i] for i in sorted({round(i) for i in np.linspace(0, len(log) - 1, min(panels, len(log)))})]
  weights = [softmax_weights(r['alphas']) for r in shown]
  vmax = max(float(w[kind].max()) for w in weights for kind in CELL_TYPES)
  fig = _figure(max(1.3 * len(shown) + 1.5, 6.0), 5.5)
  axes = np.asarray(fig.subplots(2, len(shown), squeeze=False))
  for col, (record, w) in enumerate(zip(shown, weights)):
    for row, kind in enumerate(CELL_TYPES):
      image = _heatmap(axes[row, col], w[kind], f'epoch {record["epoch"]}', vmax=vmax)
  for row, kind in enumerate(CELL_TYPES):
    axes[row, 0].set_ylabel(f'{kind}: edges (node, input)', fontsize=8)
  fig.supxlabel('ops: ' + ', '.join(ops[:4]) + (',\n' + ', '.join(ops[4:]) if len(ops) > 4 else ''), fontsize=7)
  fig.colorbar(image, ax=fig.axes, shrink=0.8, label='softmax weight')
  return fig


def plot_search(workdir: str | os.PathLike[str]) -> list[str]:
  """Writes ``convergence.png``, ``alphas.png`` and ``alphas_evolution.png`` of a search workdir (finished or
  running) into it, and returns their paths.

  Raises:
    NotADirectoryError, ValueError: `workdir` is not a search workdir, or it has not finished an epoch.
  """
  workdir, records = run_files.finished_epoch_records(workdir)
  alphas, description = run_files.final_alphas(workdir)
  num_ops = alphas[CELL_TYPES[0]].shape[-1]
  ops = column_labels(run_files.read_config(workdir), num_ops)
  figures = {'convergence.png': convergence_figure(records, run_files.read_early_stop(workdir), num_ops),
             'alphas.png': alphas_figure(alphas, description, ops)}
  if log := run_files.read_alphas_log(workdir):
    figures['alphas_evolution.png'] = evolution_figure(log, ops=ops)
  written = []
  for name, fig in figures.items():
    fig.savefig(Path(workdir) / name, dpi=90)
    written.append(str(Path(workdir) / name))
  return written
