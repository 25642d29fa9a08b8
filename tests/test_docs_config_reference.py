"""The docs' config-key reference (docs/_ext/config_reference.py) covers every key of every packaged config.

The reference is generated when the docs are built; these tests call its generator directly (no Sphinx, no docs
build) and check it against the configs themselves: every config has a page, every key's default can be read from
the page or from the pages of the configs it is built on, and the comment on a key's line is its description.
"""
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'docs' / '_ext'))

import config_reference  # noqa: E402  pylint: disable=wrong-import-position

from darts_jax.training.config_utils import config_names, load_config_module  # noqa: E402


@pytest.fixture(scope='module')
def pages():
  return {page.name: page for page in config_reference.config_reference()}


def _flat(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _shown(pages, name, key):
  """The default the reference shows for `key` of config `name`, following the configs it is built on."""
  page = pages[name]
  rows = {row.key: row.value for row in page.rows}
  if key in rows:
    return rows[key]
  for prefix, base in page.inherits:  # the page says where its other keys come from
    if not prefix:
      return _shown(pages, base, key)
    if key.startswith(prefix + '.'):
      return _shown(pages, base, key[len(prefix) + 1:])
  return None


def test_every_config_has_a_page(pages):
  assert set(pages) == set(config_names())


def test_every_key_and_its_default_is_in_the_reference(pages):
  missing = []
  for name in config_names():
    values = _flat(load_config_module(name).get_config())
    for key, value in values.items():
      if _shown(pages, name, key) != repr(value):
        missing.append(f'{name}: {key} = {value!r} (shown: {_shown(pages, name, key)!r})')
  assert not missing, '\n'.join(missing)


def test_a_base_config_lists_every_key(pages):
  for page in pages.values():
    if not page.bases:
      assert {row.key for row in page.rows} == set(_flat(load_config_module(page.name).get_config())), page.name


def test_the_comment_on_a_keys_line_is_its_description(pages):
  checked = 0
  for name, page in pages.items():
    rows = {row.key: row.comment for row in page.rows}
    for line in (REPO / 'configs' / f'{name}.py').read_text().splitlines():
      match = re.match(r"\s*config\.([\w.]+)\s*=\s*[^#'\"]*?(?:'[^']*'|\"[^\"]*\")?[^#'\"]*#\s*(.+)$", line)
      if match and match.group(1) in rows:
        assert rows[match.group(1)] == match.group(2).strip(), (name, match.group(1))
        checked += 1
  assert checked > 50  # the configs comment most of their keys: the regex found them


def test_the_notes_describe_keys_that_exist_and_have_no_line_comment():
  keys = set()
  for name in config_names():
    for key in _flat(load_config_module(name).get_config()):
      keys |= {key, key.split('.', 1)[-1]}  # the protocol's search.KEY is a search config's KEY
  comments = config_reference.line_comments()
  for key in config_reference.KEY_NOTES:
    assert key in keys, f'{key}: no config has it'
    assert key not in comments, f'{key}: a config comments it; the note is not used'


def test_every_key_has_a_description(pages):
  assert not [(page.name, row.key) for page in pages.values() for row in page.rows if not row.comment]
