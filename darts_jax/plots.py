"""Figures: cell diagrams of a genotype and training curves of a run.

``plot_genotype`` draws each cell in the style of the original DARTS
``cnn/visualize.py`` with graphviz; ``plot_curves`` draws loss and accuracy per
epoch from a ``metrics.jsonl`` with matplotlib's Agg canvas, without touching
pyplot's global state.
"""

import json
import os
import warnings

import graphviz
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from darts_jax.genotypes import Genotype, validate_genotype

_CELL_TYPES = ('normal', 'reduce')
_SPLITS = ('train', 'valid', 'test')


def _cell_graph(
    ops: list[tuple[str, int]], concat: list[int], format: str
) -> graphviz.Digraph:
  """The graph of one cell, with the node and edge attributes of visualize.py."""
  g = graphviz.Digraph(
      format=format,
      graph_attr=dict(rankdir='LR'),
      edge_attr=dict(fontsize='20', fontname='times'),
      node_attr=dict(
          style='filled',
          shape='rect',
          align='center',
          fontsize='20',
          height='0.5',
          width='0.5',
          penwidth='2',
          fontname='times',
      ),
      engine='dot',
  )
  g.node('c_{k-2}', fillcolor='darkseagreen2')
  g.node('c_{k-1}', fillcolor='darkseagreen2')
  steps = len(ops) // 2
  for i in range(steps):
    g.node(str(i), fillcolor='lightblue')
  state_names = ['c_{k-2}', 'c_{k-1}'] + [str(i) for i in range(steps)]
  for k, (op, j) in enumerate(ops):
    g.edge(state_names[j], str(k // 2), label=op, fillcolor='gray')
  g.node('c_{k}', fillcolor='palegoldenrod')
  # Unlike visualize.py, which wires every node to c_{k}, only the
  # concatenated states feed the output (they differ for NASNet/AmoebaNet).
  for c in concat:
    g.edge(state_names[c], 'c_{k}', fillcolor='gray')
  return g


def plot_genotype(
    genotype: Genotype, path_prefix: str, format: str = 'png'
) -> list[str]:
  """Draws the normal and the reduction cell of a genotype.

  Writes the graphviz sources ``{path_prefix}normal.dot`` and
  ``{path_prefix}reduce.dot`` always, and renders them to
  ``{path_prefix}normal.{format}`` and ``{path_prefix}reduce.{format}`` when
  graphviz's ``dot`` executable is installed; otherwise warns once that only the
  sources were written. ``path_prefix`` is a directory ending in ``/`` (e.g.
  ``'out/'``) or a file-name prefix (e.g. ``'out/final_'``); missing
  directories are created.

  Args:
    genotype: the genotype to draw; any number of nodes per cell.
    path_prefix: prefix of the written files.
    format: graphviz output format, e.g. ``'png'``, ``'pdf'``, ``'svg'``.

  Returns:
    The paths written, per cell type the source then the rendering.

  Raises:
    ValueError: for an unknown format or an invalid genotype.
  """
  if format not in graphviz.FORMATS:
    raise ValueError(
        f'unknown graphviz format {format!r}; use e.g. png, pdf or svg'
    )
  genotype = validate_genotype(genotype)
  os.makedirs(os.path.dirname(path_prefix) or '.', exist_ok=True)
  written = []
  can_render = True
  for cell_type in _CELL_TYPES:
    graph = _cell_graph(
        getattr(genotype, cell_type),
        getattr(genotype, f'{cell_type}_concat'),
        format,
    )
    source = graph.save(f'{path_prefix}{cell_type}.dot')
    written.append(source)
    if not can_render:
      continue
    try:
      written.append(
          graphviz.render(
              'dot', format, source, outfile=f'{path_prefix}{cell_type}.{format}'
          )
      )
    except graphviz.ExecutableNotFound:
      can_render = False
      warnings.warn(
          f'graphviz executable "dot" not found: wrote the sources '
          f'{path_prefix}{{normal,reduce}}.dot only; install graphviz (e.g. '
          f'`apt-get install graphviz`) or render them with `dot -T{format}`.',
          stacklevel=2,
      )
  return written


def _read_epoch_records(path: str) -> list[dict]:
  """Epoch records of a metrics.jsonl, one per epoch (the last wins), sorted."""
  by_epoch = {}
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{line_no} is not valid JSON: {e}') from None
      # Step records carry 'step' but no 'epoch'; a resumed run may log an
      # epoch again, and its latest record is the one that counts.
      if isinstance(record, dict) and 'epoch' in record:
        by_epoch[record['epoch']] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


def _curves_figure(records: list[dict]) -> Figure:
  """Loss and accuracy panels, one line per split present in the records."""
  fig = Figure(figsize=(11, 4), layout='constrained')
  FigureCanvasAgg(fig)
  for ax, metric in zip(fig.subplots(1, 2), ('loss', 'accuracy')):
    for split in _SPLITS:
      key = f'{split}_{metric}'
      points = [(r['epoch'], r[key]) for r in records if r.get(key) is not None]
      if points:
        epochs, values = zip(*points)
        ax.plot(epochs, values, marker='o', markersize=3, label=split)
    ax.set_xlabel('epoch')
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend()
  return fig


def plot_curves(metrics_jsonl_path: str, out_path: str) -> str:
  """Plots loss and accuracy per epoch from a metrics.jsonl.

  Reads the records that have an ``epoch`` key and draws two panels, loss and
  accuracy against epoch, with one line per split among ``train``, ``valid``
  and ``test`` for which ``{split}_loss`` / ``{split}_accuracy`` keys exist.
  The image format follows the extension of ``out_path`` (PNG for ``.png``).

  Args:
    metrics_jsonl_path: a JSON-lines file, one JSON object per line.
    out_path: where to write the figure; missing directories are created.

  Returns:
    ``out_path``.

  Raises:
    FileNotFoundError: if the metrics file does not exist.
    ValueError: if a line is not JSON or no record has an ``epoch`` key.
  """
  records = _read_epoch_records(metrics_jsonl_path)
  if not records:
    raise ValueError(
        f'{metrics_jsonl_path} has no epoch records (JSON lines with an '
        f"'epoch' key); has the run finished an epoch?"
    )
  fig = _curves_figure(records)
  os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
  fig.savefig(out_path, dpi=100)
  return out_path
