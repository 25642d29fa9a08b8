"""Side-by-side summaries of search runs: one table row per workdir and an overlay of their per-epoch curves; and
the accuracy-cost ranking of search and retrain runs: MnasNet's score, the Pareto front and its scatter plot."""
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

from darts_jax.cnn import cost, genotype_formats, genotypes
from darts_jax.data import DATASETS
from darts_jax.analysis import run_files
from darts_jax.dynamics.diagnostics import CELL_TYPES

COLUMNS = ('run', 'method', 'epochs', 'val_acc', 'best_val_acc', 'entropy', 'converged', 'stability',
           'eigenvalue', 'early_stop', 'params', 'macs')
RANK_COLUMNS = ('run', 'accuracy', 'params', 'macs', 'score', 'pareto')
RESULTS_FILE = 'results.json'  # a retrain workdir's (tasks.retrain.RESULTS_FILE)


def _mean_entropy(record: dict[str, Any]) -> float:
  return float(np.mean([record[f'alpha_entropy_{k}'] for k in CELL_TYPES]))


def genotype_cost(genotype: genotypes.Genotype, config: dict[str, Any]) -> cost.Cost:
  """Parameters (without the auxiliary head) and multiply-adds of `genotype`'s `NetworkCIFAR` at the run's
  ``model.init_channels``, ``model.layers`` and image size (`darts_jax.cnn.cost`: from shapes, nothing compiled)."""
  spec = DATASETS[config['data']['name']]
  size = config['data'].get('image_size') or spec.image_shape[0]
  return cost.network_cost(genotype, C=config['model']['init_channels'], layers=config['model']['layers'],
                           num_classes=spec.num_classes, image_size=size, in_channels=spec.image_shape[2])


def summarize(workdir: str | os.PathLike[str], *, entropy_threshold: float = 1.85, last: int = 5) -> dict[str, Any]:
  """One run's row: ``method`` (hypergradient, arch learning rate, early-stopping rule), ``epochs`` (done/planned),
  final and best supernet ``val_acc``, final mean alpha ``entropy`` of the two cells, ``converged`` (the first
  epoch with both cells' entropy below `entropy_threshold`, None if none), ``stability`` (mean over both cells and
  the `last` epochs), the final Hessian ``eigenvalue``, ``early_stop`` (the rule that stopped the run) and
  ``params`` and ``macs`` (`genotype_cost` of its genotype). Values the run has not logged are None.

  Raises:
    NotADirectoryError, ValueError: `workdir` is not a search workdir.
  """
  workdir = run_files.check_search_workdir(workdir)
  config = run_files.read_config(workdir)
  records = run_files.read_epoch_records(workdir)
  genotype = run_files.final_genotype(workdir)
  stop = run_files.read_early_stop(workdir)
  rule = config.get('early_stopping', {}).get('rule', 'none')
  accuracies = [r['valid_accuracy'] for r in records]
  recent = records[-last:]
  genotype_total = genotype_cost(genotype, config) if genotype is not None else None
  return {
      'run': workdir.name,
      'method': f'{config["hypergradient"]} lr_a={config["arch_learning_rate"]:g}'
                + ('' if rule == 'none' else f' es={rule}'),
      'epochs': f'{len(records)}/{config["num_epochs"]}',
      'val_acc': accuracies[-1] if records else None,
      'best_val_acc': max(accuracies) if records else None,
      'entropy': _mean_entropy(records[-1]) if records else None,
      'converged': next((r['epoch'] for r in records
                         if all(r[f'alpha_entropy_{k}'] < entropy_threshold for k in CELL_TYPES)), None),
      'stability': float(np.mean([r[f'stability_{k}'] for r in recent for k in CELL_TYPES]))
                   if recent and 'stability_normal' in recent[0] else None,
      'eigenvalue': records[-1].get('hessian_eigenvalue') if records else None,
      'early_stop': None if stop is None else f'{stop["rule"]}@{stop["stop_epoch"]}->{stop["kept_epoch"]}',
      'params': genotype_total and genotype_total.params,
      'macs': genotype_total and genotype_total.macs,
  }


def _cell(key: str, value: Any) -> str:
  if value is None:
    return '-'
  if key in ('val_acc', 'best_val_acc', 'accuracy'):
    return f'{100 * value:.1f}%'
  if key == 'params':
    return f'{value / 1e6:.3f}M'
  if key == 'macs':
    return f'{value / 1e6:.1f}M' if value >= 1e6 else f'{value / 1e3:.1f}K'
  if key == 'pareto':
    return '*' if value else ''
  if isinstance(value, float):
    return f'{value:.3f}'
  return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
  """`summarize` rows (or `rank` rows with ``columns=RANK_COLUMNS``) as a plain-text table, columns aligned."""
  cells = [list(columns)] + [[_cell(k, row[k]) for k in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def overlay_figure(workdirs: Sequence[str | os.PathLike[str]]) -> Figure:
  """Per-epoch curves of several runs in four panels: validation accuracy, mean alpha entropy, mean stability,
  Hessian eigenvalue; one colour per run."""
  fig = Figure(figsize=(11, 7), layout='constrained')
  FigureCanvasAgg(fig)
  panels = [('supernet validation accuracy', lambda r: r['valid_accuracy']),
            ('mean alpha entropy (nats)', _mean_entropy),
            ('mean stability', lambda r: np.mean([r[f'stability_{k}'] for k in CELL_TYPES])),
            ('Hessian eigenvalue', lambda r: r['hessian_eigenvalue'])]
  axes = list(fig.subplots(2, 2).flat)
  for workdir in workdirs:
    workdir = run_files.check_search_workdir(workdir)
    records = run_files.read_epoch_records(workdir)
    for ax, (title, value) in zip(axes, panels):
      points = []
      for r in records:
        try:
          points.append((r['epoch'], value(r)))
        except KeyError:  # not logged by this run (e.g. no eigenvalue)
          pass
      if points:
        ax.plot(*zip(*points), marker='o', markersize=3, label=workdir.name)
  for ax, (title, _) in zip(fig.axes, panels):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_lines():
      ax.legend(fontsize=8)
  return fig


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy against cost: search runs and retrained genotypes.


def is_retrain_workdir(workdir: str | os.PathLike[str]) -> bool:
  return (Path(workdir) / RESULTS_FILE).is_file()


def summarize_retrain(workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """A finished retrain run's ranking entries: ``accuracy`` (test), ``params`` and ``macs`` (from its results, or
  counted from its genotype and config for results written before multiply-adds were)."""
  workdir = Path(workdir)
  results = json.loads((workdir / RESULTS_FILE).read_text())
  macs = results.get('macs')
  if macs is None:
    config = run_files.read_config(workdir)
    genotype = genotype_formats.parse_genotype(json.dumps(results['genotype']))
    if config['data']['name'] == 'imagenet':  # NetworkImageNet (configs/retrain_imagenet.py)
      macs = cost.network_cost(genotype, network='imagenet', C=config['model']['init_channels'],
                               layers=config['model']['layers'], num_classes=config['data']['num_classes'],
                               image_size=config['data']['image_size']).macs
    else:
      macs = genotype_cost(genotype, config).macs
  return {'run': workdir.name, 'accuracy': results['test_accuracy'], 'params': results['params'], 'macs': macs}


def rank(rows: Sequence[dict[str, Any]], *, cost_key: str = 'macs', target: float | None = None,
         alpha: float = -0.07, beta: float = -0.07) -> tuple[list[dict[str, Any]], float]:
  """Rows (``run``, ``accuracy``, ``params``, ``macs``) with MnasNet's ``score`` (`cost.mnasnet_score` of
  `cost_key` against `target`, by default the median cost of the rows) and ``pareto`` (on the accuracy-cost Pareto
  front), best score first; rows without an accuracy or a cost are left out. Returns (rows, target)."""
  rows = [r for r in rows if r.get('accuracy') is not None and r.get(cost_key)]
  if not rows:
    raise ValueError(f'no run has both an accuracy and a {cost_key} count to rank')
  target = float(np.median([r[cost_key] for r in rows])) if target is None else target
  if not target > 0:
    raise ValueError(f'the cost target must be positive, got {target}')
  front = cost.pareto_front([(r['accuracy'], r[cost_key]) for r in rows])
  ranked = [{**r, 'score': cost.mnasnet_score(r['accuracy'], r[cost_key], target, alpha, beta), 'pareto': on_front}
            for r, on_front in zip(rows, front)]
  return sorted(ranked, key=lambda r: -r['score']), target


def pareto_figure(rows: Sequence[dict[str, Any]], cost_key: str = 'macs') -> Figure:
  """Accuracy against cost, one labelled point per run, the Pareto front (`rank`'s ``pareto``) joined by a line."""
  fig = Figure(figsize=(7, 5), layout='constrained')
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  scale, unit = (1e6, 'M') if max(r[cost_key] for r in rows) >= 1e6 else (1e3, 'K')
  for r in rows:
    ax.scatter(r[cost_key] / scale, 100 * r['accuracy'], color='tab:red' if r['pareto'] else 'tab:gray', zorder=3)
    ax.annotate(r['run'], (r[cost_key] / scale, 100 * r['accuracy']), fontsize=8, xytext=(4, 4),
                textcoords='offset points')
  front = sorted((r[cost_key] / scale, 100 * r['accuracy']) for r in rows if r['pareto'])
  ax.plot(*zip(*front), color='tab:red', alpha=0.5, label='Pareto front')
  ax.set_xlabel(f'{"multiply-adds" if cost_key == "macs" else "parameters"} ({unit})')
  ax.set_ylabel('accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig
