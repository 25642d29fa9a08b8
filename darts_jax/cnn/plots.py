"""Cell diagrams of a CNN genotype: ``plot_genotype`` draws each cell in the style of the original DARTS
``cnn/visualize.py`` with graphviz."""

import os
import warnings

import graphviz

from darts_jax.cnn.genotypes import Genotype, validate_genotype

_CELL_TYPES = ('normal', 'reduce')


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
