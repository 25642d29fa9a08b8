"""The config-key reference of the docs, generated from ``configs/*.py`` at build time so that it cannot drift.

Every config's ``get_config()`` is called and flattened to its keys. A base config (one that loads no other config)
gets a table of all its keys with their defaults; a config built on others (``load_config_module``) gets a table
of the keys it adds or changes. A key's description is the comment on the line that assigns it (else the comment
lines right above), in the config itself or, where it only inherits the key, in the config it builds on.

`config_reference()` is plain Python (tests/test_docs_config_reference.py checks its coverage without Sphinx); the
``config-reference`` directive renders it as docutils tables.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import io
import re
import tokenize
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs'

# Descriptions of the keys that no config comments on its line (tests/test_docs_config_reference.py checks that each
# is a key of some config and that none has a line comment, which would take precedence).
KEY_NOTES = {
    'seed': 'random seed of the weights, the alphas, the data order and the augmentation',
    'num_epochs': 'epochs of training',
    'learning_rate_min': "the weights' learning rate at the end of the cosine schedule",
    'momentum': "SGD momentum of the weights (the second-order methods' virtual step uses it too)",
    'weight_decay': "L2 weight decay of the weights, added to the gradient",
    'grad_clip': "global norm the weights' gradient is clipped to",
    'arch_weight_decay': "weight decay of the alphas' Adam (L2 on the alphas)",
    'auxiliary_weight': "weight of the auxiliary head's loss",
    'log_every_steps': 'steps between interval records (loss, accuracy, learning rate, images/s) in metrics.jsonl',
    'keep_checkpoints': 'checkpoints kept in the workdir (the oldest are deleted)',
    'eval_batch_size': 'batch size of the validation passes',
    'test_batch_size': 'batch size of the test pass',
    'lr_decay': "step schedule: the factor applied every lr_decay_epochs epochs",
    'lr_decay_epochs': 'step schedule: epochs between two decays',
    'repeats': "final retrainings of the selected genotype (seeds final.seed + r); more repeats train only the new ones",
    'model.init_channels': 'C: the channels of the first cells (doubled at each reduction cell)',
    'model.layers': 'cells in the network (reduction cells at 1/3 and 2/3 of them)',
    'model.steps': "intermediate nodes per cell (the original's steps)",
    'model.multiplier': "nodes concatenated into a cell's output",
    'model.stem_multiplier': "the stem's output channels: stem_multiplier x init_channels",
    'model.emsize': 'size of the word embedding',
    'model.nhid': 'units of the recurrent cell',
    'cost.mnasnet_beta': 'mnasnet: the exponent w above the target (mnasnet_alpha at or below it)',
}
_BASE_LOAD = re.compile(r"load_config_module\('(\w+)'")


@dataclasses.dataclass(frozen=True)
class KeyRow:
  key: str
  value: str
  comment: str


@dataclasses.dataclass(frozen=True)
class ConfigPage:
  name: str
  summary: str  # the first paragraph of the config's docstring
  bases: tuple[str, ...]  # the configs it is built on
  rows: tuple[KeyRow, ...]  # every key for a base config; the added or changed keys otherwise
  inherits: tuple[tuple[str, str], ...] = ()  # (key prefix, base config): where its other keys come from


def flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  """``{'model.layers': 8, ...}`` of a ConfigDict (or dict), leaves only."""
  items = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      items.update(flatten(value, f'{prefix}{key}.'))
    else:
      items[f'{prefix}{key}'] = value
  return items


def _inline_comment(line: str) -> str:
  """The comment at the end of one line of Python ('' if none), found by the tokenizer (not fooled by quotes)."""
  try:
    tokens = list(tokenize.generate_tokens(io.StringIO(line).readline))
  except (tokenize.TokenError, SyntaxError):
    return ''
  return next((token.string.lstrip('#').strip() for token in tokens if token.type == tokenize.COMMENT), '')


@functools.cache  # each config file is read once per build
def _comments(path: Path) -> dict[str, str]:
  """Key -> the comment of the line assigning ``config.KEY`` (else the comment lines right above it)."""
  lines = path.read_text().splitlines()
  comments = {}
  for i, line in enumerate(lines):
    match = re.match(r'\s*config\.([\w.]+)\s*=(.*)$', line)
    if not match:
      continue
    key, rest = match.groups()
    inline = _inline_comment(line)
    if inline:
      text = inline
    else:
      above, j = [], i - 1
      while j >= 0 and lines[j].strip().startswith('#'):
        above.insert(0, lines[j].strip().lstrip('#').strip())
        j -= 1
      text = ' '.join(above)
    if 'ConfigDict({' in rest:  # a group written as one literal: its comment describes each of its keys
      for inner in ast.literal_eval(rest[rest.index('{'):rest.rindex('}') + 1]):
        comments.setdefault(f'{key}.{inner}', text)
    elif text:
      comments.setdefault(key, text)
  return comments


def _bases(path: Path) -> tuple[str, ...]:
  return tuple(_BASE_LOAD.findall(path.read_text()))


def _chain_comment(name: str, key: str) -> str:
  """The comment on `key`'s line in config `name` or in the configs it is built on."""
  path = CONFIG_DIR / f'{name}.py'
  own = _comments(path).get(key)
  if own:
    return own
  for base in _bases(path):
    found = _chain_comment(base, key) or (_chain_comment(base, key.split('.', 1)[1]) if '.' in key else '')
    if found:
      return found
  return ''


def line_comments() -> dict[str, str]:
  """Every key any config comments on its line, with the first such comment (configs in name order)."""
  comments = {}
  for name in config_names():
    for key, text in _comments(CONFIG_DIR / f'{name}.py').items():
      comments.setdefault(key, text)
  return comments


def _comment(name: str, key: str) -> str:
  """`key`'s description in config `name`: its line comment there or in the configs it is built on, else the same
  key's line comment in another config (the same key means the same thing in every config), else `KEY_NOTES`."""
  found = _chain_comment(name, key)
  if found:
    return found
  others = line_comments()
  for candidate in (key, key.split('.', 1)[-1]):
    if candidate in others:
      return others[candidate]
    if candidate in KEY_NOTES:
      return KEY_NOTES[candidate]
  return ''


def _summary(module: Any) -> str:
  doc = (module.__doc__ or '').strip()
  return ' '.join(doc.split('\n\n')[0].split())


@functools.cache  # each config module is loaded once; get_config() builds a fresh ConfigDict per call
def _load(name: str) -> Any:
  from darts_jax.training.config_utils import load_config_module  # pylint: disable=import-outside-toplevel
  return load_config_module(name, CONFIG_DIR / f'{name}.py')


def _inheritance(values: dict[str, Any], bases: tuple[str, ...]) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
  """The keys a derived config inherits and from where: its single base's keys or, with several bases, each
  sub-config's from the base with the same keys (the protocol's ``search.*`` from a search config, ``selection.*``
  and ``final.*`` from a retrain config)."""
  base_values = {base: flatten(_load(base).get_config()) for base in bases}
  if len(bases) == 1:
    return base_values[bases[0]], (('', bases[0]),)
  inherited, sources = {}, []
  for prefix in sorted({key.split('.', 1)[0] for key in values if '.' in key}):
    sub = {key.split('.', 1)[1]: value for key, value in values.items() if key.startswith(prefix + '.')}
    for base, base_flat in base_values.items():
      if set(base_flat) == set(sub):
        inherited.update({f'{prefix}.{key}': value for key, value in base_flat.items()})
        sources.append((prefix, base))
        break
  return inherited, tuple(sources)


def config_names() -> list[str]:
  return sorted(path.stem for path in CONFIG_DIR.glob('*.py') if not path.name.startswith('_'))


def config_reference() -> list[ConfigPage]:
  """One `ConfigPage` per config: base configs first (their tables list every key), then the derived ones."""
  pages = []
  for name in config_names():
    module = _load(name)
    values = flatten(module.get_config())
    bases = _bases(CONFIG_DIR / f'{name}.py')
    inherited, sources = _inheritance(values, bases)
    rows = tuple(KeyRow(key, repr(value), _comment(name, key)) for key, value in values.items()
                 if key not in inherited or repr(inherited[key]) != repr(value))
    pages.append(ConfigPage(name, _summary(module), bases, rows, sources))
  return sorted(pages, key=lambda page: (bool(page.bases), page.name))


def _table(rows: tuple[KeyRow, ...]):
  from docutils import nodes  # pylint: disable=import-outside-toplevel
  table = nodes.table(classes=['config-keys'])
  group = nodes.tgroup(cols=3)
  table += group
  for width in (30, 20, 50):
    group += nodes.colspec(colwidth=width)
  head = nodes.thead()
  group += head
  header = nodes.row()
  for title in ('key', 'default', 'what'):
    header += nodes.entry('', nodes.paragraph(text=title))
  head += header
  body = nodes.tbody()
  group += body
  for row in rows:
    line = nodes.row()
    line += nodes.entry('', nodes.paragraph('', '', nodes.literal(text=row.key)))
    line += nodes.entry('', nodes.paragraph('', '', nodes.literal(text=row.value)))
    line += nodes.entry('', nodes.paragraph(text=row.comment))
    body += line
  return table


def setup(app):
  from docutils import nodes  # pylint: disable=import-outside-toplevel
  from sphinx.util.docutils import SphinxDirective  # pylint: disable=import-outside-toplevel

  class ConfigReference(SphinxDirective):
    """``.. config-reference::``: a section per config with its table of keys."""

    def run(self):
      for path in CONFIG_DIR.glob('*.py'):
        self.env.note_dependency(str(path))
      sections = []
      for page in config_reference():
        section = nodes.section(ids=[f'config-{page.name}'], names=[page.name])
        section += nodes.title(text=page.name)
        section += nodes.paragraph('', '', nodes.literal(text=f'--config {page.name}'), nodes.Text(
            f' (configs/{page.name}.py)' + (f', built on {", ".join(page.bases)}' if page.bases else '') + '.'))
        if page.summary:
          section += nodes.paragraph(text=page.summary)
        if page.inherits:
          origin = '; '.join(f'{prefix}.* as in {base}' if prefix else f'as in {base}' for prefix, base in page.inherits)
          section += nodes.paragraph(text=f'The keys it adds or changes; every other key {origin}.')
        section += _table(page.rows)
        sections.append(section)
      return sections

  app.add_directive('config-reference', ConfigReference)
  return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True}
