"""Diagrams of a recurrent cell in the style of the original DARTS ``rnn/visualize.py`` (graphviz): ``x_{t}`` and
``h_{t-1}`` feed node 0, the nodes, and ``h_{t}`` the mean of the concatenated states."""
from __future__ import annotations

import os
import warnings

import graphviz

from darts_jax.rnn.genotypes import Genotype, validate_genotype


def _cell_graph(genotype: Genotype, format: str) -> graphviz.Digraph:
  g = graphviz.Digraph(
      format=format, graph_attr=dict(rankdir='LR'), edge_attr=dict(fontsize='20', fontname='times'),
      node_attr=dict(style='filled', shape='rect', align='center', fontsize='20', height='0.5', width='0.5',
                     penwidth='2', fontname='times'),
      engine='dot')
  g.node('x_{t}', fillcolor='darkseagreen2')
  g.node('h_{t-1}', fillcolor='darkseagreen2')
  g.node('0', fillcolor='lightblue')
  g.edge('x_{t}', '0', fillcolor='gray')
  g.edge('h_{t-1}', '0', fillcolor='gray')
  for i in range(1, len(genotype.recurrent) + 1):
    g.node(str(i), fillcolor='lightblue')
  for i, (op, j) in enumerate(genotype.recurrent):
    g.edge(str(j), str(i + 1), label=op, fillcolor='gray')
  g.node('h_{t}', fillcolor='palegoldenrod')
  for c in genotype.concat:
    g.edge(str(c), 'h_{t}', fillcolor='gray')
  return g


def plot_genotype(genotype: Genotype, path_prefix: str, format: str = 'png') -> list[str]:
  """Draws a recurrent cell: writes ``{path_prefix}recurrent.dot`` and, when graphviz's ``dot`` is installed,
  renders ``{path_prefix}recurrent.{format}`` (else warns that only the source was written).

  Returns:
    The paths written.

  Raises:
    ValueError: for an unknown format or an invalid genotype.
  """
  if format not in graphviz.FORMATS:
    raise ValueError(f'unknown graphviz format {format!r}; use e.g. png, pdf or svg')
  graph = _cell_graph(validate_genotype(genotype), format)
  os.makedirs(os.path.dirname(path_prefix) or '.', exist_ok=True)
  written = [graph.save(f'{path_prefix}recurrent.dot')]
  try:
    written.append(graphviz.render('dot', format, written[0], outfile=f'{path_prefix}recurrent.{format}'))
  except graphviz.ExecutableNotFound:
    warnings.warn(f'graphviz executable "dot" not found: wrote {written[0]} only; install graphviz (e.g. '
                  f'`apt-get install graphviz`) or render it with `dot -T{format}`.', stacklevel=2)
  return written
