"""Tests for darts_jax.cnn.plots: cell diagrams and training curves."""

import json
import os
import re
import shutil
import warnings

import pytest

from darts_jax.cnn import genotypes, plots
from darts_jax.training import curves

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
needs_dot = pytest.mark.skipif(
    shutil.which('dot') is None, reason='graphviz "dot" executable not installed'
)


def _edges(dot_path):
  """(tail, head, label) of every edge in a .dot source."""
  with open(dot_path) as f:
    text = f.read()
  pattern = r'^\s*("[^"]+"|\w+) -> ("[^"]+"|\w+)(?: \[(?:label=(\w+) )?[^\]]*\])?'
  return [
      (a.strip('"'), b.strip('"'), label or None)
      for a, b, label in re.findall(pattern, text, flags=re.M)
  ]


def _is_png(path):
  with open(path, 'rb') as f:
    return f.read(8) == PNG_MAGIC


@needs_dot
def test_plot_genotype_writes_sources_and_renderings(tmp_path):
  prefix = f'{tmp_path}/cells/'
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    paths = plots.plot_genotype(genotypes.DARTS_V2, prefix)
  assert paths == [prefix + p for p in ('normal.dot', 'normal.png', 'reduce.dot', 'reduce.png')]
  assert all(_is_png(p) for p in paths if p.endswith('.png'))
  with open(prefix + 'normal.dot') as f:
    source = f.read()
  for attr in ('rankdir=LR', 'darkseagreen2', 'lightblue', 'palegoldenrod', 'fontname=times'):
    assert attr in source
  edges = _edges(prefix + 'normal.dot')
  # Two labelled input edges per node, then every node feeds the output.
  assert edges[:2] == [('c_{k-2}', '0', 'sep_conv_3x3'), ('c_{k-1}', '0', 'sep_conv_3x3')]
  assert edges[7] == ('0', '3', 'dil_conv_3x3')
  assert edges[8:] == [(str(i), 'c_{k}', None) for i in range(4)]


@needs_dot
def test_plot_genotype_file_prefix_and_format(tmp_path):
  prefix = str(tmp_path / 'out' / 'final_')
  paths = plots.plot_genotype(genotypes.DARTS_V1, prefix, format='svg')
  assert [os.path.basename(p) for p in paths] == [
      'final_normal.dot', 'final_normal.svg', 'final_reduce.dot', 'final_reduce.svg',
  ]
  with open(paths[1]) as f:
    assert '<svg' in f.read()


def test_plot_genotype_any_node_count_and_concat(tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))  # sources only: fast
  with pytest.warns(UserWarning):
    plots.plot_genotype(genotypes.AmoebaNet, f'{tmp_path}/')
  normal = _edges(tmp_path / 'normal.dot')
  reduce = _edges(tmp_path / 'reduce.dot')
  # Five nodes; only the concatenated states [3, 4, 6] (nodes 1, 2, 4) feed c_{k}.
  assert len(normal) == 10 + 3
  assert [e for e in reduce if e[1] == 'c_{k}'] == [('1', 'c_{k}', None), ('2', 'c_{k}', None), ('4', 'c_{k}', None)]
  assert reduce[8] == ('c_{k-2}', '4', 'conv_7x1_1x7')
  assert reduce[9] == ('3', '4', 'sep_conv_3x3')


def test_plot_genotype_without_dot_writes_sources_and_warns_once(tmp_path, monkeypatch):
  # No directory on PATH holds `dot`, so graphviz cannot render.
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  with pytest.warns(UserWarning, match='apt-get install graphviz') as record:
    paths = plots.plot_genotype(genotypes.DARTS_V2, f'{tmp_path}/')
  assert len(record) == 1
  assert paths == [f'{tmp_path}/normal.dot', f'{tmp_path}/reduce.dot']
  assert sorted(os.listdir(tmp_path)) == ['normal.dot', 'reduce.dot']


def test_plot_genotype_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="unknown graphviz format 'jpeg2'"):
    plots.plot_genotype(genotypes.DARTS_V2, f'{tmp_path}/', format='jpeg2')
  bad = genotypes.DARTS_V2._replace(normal=genotypes.DARTS_V2.normal[:3])
  with pytest.raises(ValueError, match='pairs per node'):
    plots.plot_genotype(bad, f'{tmp_path}/')
  assert os.listdir(tmp_path) == []


def _write_jsonl(path, records):
  with open(path, 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')


def _epoch(e, *splits):
  r = {'epoch': e}
  for s in splits:
    r[f'{s}_loss'] = 2.0 / (e + 1)
    r[f'{s}_accuracy'] = 1.0 - 1.0 / (e + 2)
  return r


@pytest.mark.parametrize('num_epochs', [1, 5])
def test_plot_curves_writes_png(tmp_path, num_epochs):
  records = []
  for e in range(num_epochs):
    records += [{'step': 10 * e, 'train_loss': 9.0}, _epoch(e, 'train', 'valid')]
  _write_jsonl(tmp_path / 'metrics.jsonl', records)
  out = str(tmp_path / 'plots' / 'curves.png')
  assert curves.plot_curves(str(tmp_path / 'metrics.jsonl'), out) == out
  assert _is_png(out)


def test_curves_draw_each_available_split_per_epoch(tmp_path):
  records = [
      _epoch(0, 'train', 'test'),
      {'step': 5, 'train_loss': 9.0},
      {'epoch': 2, 'train_loss': 7.0},
      _epoch(1, 'train', 'test'),
      {'epoch': 2, 'train_loss': 0.5},  # a resumed run re-logs epoch 2
  ]
  _write_jsonl(tmp_path / 'm.jsonl', records)
  fig = curves._curves_figure(curves.read_epoch_records(tmp_path / 'm.jsonl'))
  loss_ax, acc_ax = fig.axes[:2]
  lines = {line.get_label(): line for line in loss_ax.get_lines()}
  assert set(lines) == {'train', 'test'}
  # Step records are ignored, epochs are sorted and the last record of an epoch
  # wins; epoch 2 only has a train loss.
  assert list(lines['train'].get_xdata()) == [0, 1, 2]
  assert list(lines['train'].get_ydata()) == [2.0, 1.0, 0.5]
  assert list(lines['test'].get_xdata()) == [0, 1]
  assert {line.get_label() for line in acc_ax.get_lines()} == {'train', 'test'}


def test_plot_curves_errors(tmp_path):
  _write_jsonl(tmp_path / 'steps.jsonl', [{'step': 1, 'train_loss': 1.0}])
  with pytest.raises(ValueError, match='has no epoch records'):
    curves.plot_curves(str(tmp_path / 'steps.jsonl'), str(tmp_path / 'c.png'))
  (tmp_path / 'bad.jsonl').write_text(json.dumps(_epoch(0, 'train')) + '\n{oops\n')
  with pytest.raises(ValueError, match=r'bad.jsonl:2 is not valid JSON'):
    curves.plot_curves(str(tmp_path / 'bad.jsonl'), str(tmp_path / 'c.png'))
  with pytest.raises(FileNotFoundError):
    curves.plot_curves(str(tmp_path / 'missing.jsonl'), str(tmp_path / 'c.png'))
