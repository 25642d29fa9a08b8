"""Side-by-side summaries of search runs: one table row per workdir and an overlay of their per-epoch curves."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from darts_jax.cnn import genotypes
from darts_jax.cnn.networks import NetworkCIFAR, count_params
from darts_jax.data import DATASETS
from darts_jax.dynamics import run_files
from darts_jax.dynamics.diagnostics import CELL_TYPES

COLUMNS = ('run', 'method', 'epochs', 'val_acc', 'best_val_acc', 'entropy', 'converged', 'stability',
           'eigenvalue', 'early_stop', 'params')


def _mean_entropy(record: dict[str, Any]) -> float:
  return float(np.mean([record[f'alpha_entropy_{k}'] for k in CELL_TYPES]))


def genotype_params(genotype: genotypes.Genotype, config: dict[str, Any]) -> int:
  """Parameters of `genotype`'s `NetworkCIFAR` at the run's ``model.init_channels`` and ``model.layers``, without
  the auxiliary head (shapes only: nothing is compiled)."""
  spec = DATASETS[config['data']['name']]
  size = config['data']['image_size'] or spec.image_shape[0]
  net = NetworkCIFAR(genotype, C=config['model']['init_channels'], num_classes=spec.num_classes,
                     layers=config['model']['layers'])
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, size, size, spec.image_shape[2])),
                                           train=False))
  return count_params(shapes['params'])


def summarize(workdir: str | os.PathLike[str], *, entropy_threshold: float = 1.85, last: int = 5) -> dict[str, Any]:
  """One run's row: ``method`` (hypergradient, arch learning rate, early-stopping rule), ``epochs`` (done/planned),
  final and best supernet ``val_acc``, final mean alpha ``entropy`` of the two cells, ``converged`` (the first
  epoch with both cells' entropy below `entropy_threshold`, None if none), ``stability`` (mean over both cells and
  the `last` epochs), the final Hessian ``eigenvalue``, ``early_stop`` (the rule that stopped the run) and
  ``params`` (`genotype_params` of its genotype). Values the run has not logged are None.

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
      'params': genotype_params(genotype, config) if genotype is not None else None,
  }


def _cell(key: str, value: Any) -> str:
  if value is None:
    return '-'
  if key in ('val_acc', 'best_val_acc'):
    return f'{100 * value:.1f}%'
  if key == 'params':
    return f'{value / 1e6:.3f}M'
  if isinstance(value, float):
    return f'{value:.3f}'
  return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """`summarize` rows as a plain-text table, columns aligned."""
  cells = [list(COLUMNS)] + [[_cell(k, row[k]) for k in COLUMNS] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
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
