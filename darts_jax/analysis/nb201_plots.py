"""The picture of a NAS-Bench-201 search (``benchmark.png``): per epoch, the supernet's validation accuracy beside
the benchmark's test accuracies of the derived architectures (when the search had the benchmark's file), and the
skip connections of the derived cell, whose rise is DARTS's collapse."""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from darts_jax.analysis import run_files

BENCHMARK_KEYS = (('benchmark_cifar10', 'CIFAR-10 (benchmark)'), ('benchmark_cifar100', 'CIFAR-100 (benchmark)'),
                  ('benchmark_imagenet16_120', 'ImageNet16-120 (benchmark)'))
FILE = 'benchmark.png'


def benchmark_figure(records: list[dict]) -> Figure:
  """Two panels over epochs: accuracies (supernet validation; benchmark test accuracies of the derived cells),
  skip connections of the derived cell."""
  fig = Figure(figsize=(10, 4), layout='constrained')
  FigureCanvasAgg(fig)
  accuracy, skips = fig.subplots(1, 2)
  for key, label in (('valid_accuracy', 'supernet (validation)'),) + BENCHMARK_KEYS:
    points = [(r['epoch'], r[key]) for r in records if r.get(key) is not None]
    if points:
      accuracy.plot(*zip(*points), marker='o', markersize=3, label=label)
  accuracy.set(title='accuracy', xlabel='epoch', ylim=(0, 1))
  accuracy.legend(fontsize=8)
  points = [(r['epoch'], r['skip_connect_normal']) for r in records if 'skip_connect_normal' in r]
  if points:
    skips.plot(*zip(*points), marker='o', markersize=3)
  skips.set(title='skip connections in the derived cell (of 6 edges)', xlabel='epoch', ylim=(-0.2, 6.2))
  for ax in (accuracy, skips):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  return fig


def plot_benchmark(workdir: str | os.PathLike[str]) -> str:
  """Writes ``benchmark.png`` of a NAS-Bench-201 search workdir and returns its path.

  Raises:
    NotADirectoryError, ValueError: `workdir` is not a search workdir, or it has no epoch record yet.
  """
  workdir, records = run_files.finished_epoch_records(workdir)
  path = Path(workdir) / FILE
  benchmark_figure(records).savefig(path, dpi=90)
  return str(path)
