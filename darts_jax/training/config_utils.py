"""Helpers for ml_collections configs given on the command line.

The CLIs define their configuration flax-examples style::

  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.')
  flags.mark_flags_as_required(['config'])
  ...
  app.run(main, flags_parser=config_utils.parse_flags)

and are run as ``run_search.py --config=configs/search_quick.py
--config.model.layers=5``, or with a packaged config by name
(``--config=search_quick``, `resolve_config`). ml_collections fails on an override of a key the
config does not have with an uncaught ``AttributeError: "'foo'"`` traceback
(at best with a "did you mean" hint); `parse_flags` checks the overrides first
and fails with a usage error listing the valid keys instead.

``DEFINE_config_file`` locks the config (``lock_config=True``, its default):
overrides and code can change existing fields, but assigning a misspelt field
raises ``AttributeError`` instead of silently adding it, as does reading one.

A config that extends another loads it with `load_config_module`, so that it
loads from any directory, installed or copied, not only from the repository root.
"""

import importlib.util
import os
import re
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path

from absl import app, flags
from ml_collections import ConfigDict


def config_dir() -> Path:
  """The directory of the packaged configs: ``darts_jax/configs`` in an
  installed wheel, the repository's top-level ``configs/`` in a source tree."""
  package = Path(__file__).resolve().parents[1]
  installed = package / 'configs'
  return installed if installed.is_dir() else package.parent / 'configs'


def config_names() -> list[str]:
  """The names of the packaged configs (``search_quick``, ...)."""
  return sorted(path.stem for path in config_dir().glob('*.py')
                if not path.name.startswith('_'))


def _unknown_config(name: str) -> ValueError:
  return ValueError(f'unknown config {name!r}; available: '
                    f'{", ".join(config_names())}')


def resolve_config(value: str) -> str:
  """The config file that ``--config=value`` names.

  An existing file, or anything with a directory in it, is a path and returned
  as given; a bare name (``search_quick`` or ``search_quick.py``) that is not a
  file in the working directory is the packaged config of that name. A
  ``:ARGUMENT`` suffix (ml_collections passes it to ``get_config``) is kept.

  Raises:
    ValueError: for a bare name that is not a packaged config.
  """
  file, colon, argument = value.partition(':')
  separators = (os.sep, os.altsep or os.sep)
  if os.path.exists(file) or any(s in file for s in separators):
    return value
  name = file.removesuffix('.py')
  packaged = config_dir() / f'{name}.py'
  if not packaged.is_file():
    raise _unknown_config(name)
  return f'{packaged}{colon}{argument}'


def load_config_module(name: str,
                       near: str | os.PathLike[str] | None = None
                       ) -> types.ModuleType:
  """The config `name` (e.g. ``'search_cifar10'``) as a fresh module.

  The file ``name.py`` beside the file `near` comes first (a config passes its
  own ``__file__``, so a copied directory of configs extends its own copies),
  else the packaged config. This replaces ``from configs import name``, which
  only works with the repository root on ``sys.path``.

  Raises:
    ValueError: when neither file exists.
  """
  candidates = [config_dir() / f'{name}.py']
  if near is not None:
    candidates.insert(0, Path(near).parent / f'{name}.py')
  path = next((path for path in candidates if path.is_file()), None)
  if path is None:
    raise _unknown_config(name)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def flatten_keys(config: ConfigDict) -> list[str]:
  """Dotted keys of the leaves of `config`, e.g. ``['model.layers', 'seed']``.

  Nested ConfigDicts are descended into; any other value (including tuples,
  lists and None) is a leaf.
  """
  keys = []
  for name, value in config.items():
    if isinstance(value, ConfigDict):
      keys.extend(f'{name}.{key}' for key in flatten_keys(value))
    else:
      keys.append(name)
  return keys


def _has_key(config: ConfigDict, key: str) -> bool:
  node = config
  for part in key.split('.'):
    if not isinstance(node, ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def check_keys(config: ConfigDict, keys: Iterable[str]) -> None:
  """Checks that each dotted key names a field (leaf or sub-config).

  Raises:
    ValueError: listing the unknown keys and all valid leaf keys.
  """
  unknown = [key for key in keys if not _has_key(config, key)]
  if unknown:
    names = ', '.join(repr(key) for key in unknown)
    raise ValueError(
        f"unknown config key{'s' if len(unknown) > 1 else ''} {names}; "
        f"valid keys: {', '.join(flatten_keys(config))}")


def _config_arguments(argv: Sequence[str],
                      name: str) -> tuple[int | None, list[str]]:
  """The index in `argv` of the config file's value, and the overridden keys.

  Recognises the forms ml_collections accepts: ``--config=path``,
  ``--config path``, ``--config.key=value``, ``--config.key value`` and
  ``--noconfig.key`` (booleans), with one or two leading dashes. The index
  points at ``--config=path`` itself in the first form, at ``path`` in the
  second.
  """
  path_re = re.compile(rf'^--?{name}(=.*)?$')
  override_re = re.compile(rf'^--?(?:no)?{name}\.([^=]+)')
  path_index, keys = None, []
  for i, arg in enumerate(argv):
    if arg == '--':
      break
    if match := path_re.match(arg):
      if match.group(1) is not None:
        path_index = i
      elif i + 1 < len(argv):
        path_index = i + 1
    elif match := override_re.match(arg):
      keys.append(match.group(1))
  return path_index, keys


def parse_flags(argv: Sequence[str], *, config_flag: str = 'config'
                ) -> list[str]:
  """absl flags parser that rejects unknown ``--config.<key>`` overrides.

  Use as ``app.run(main, flags_parser=parse_flags)``. Loads the config file
  named by ``--config``, checks every override key against it, and on a file
  that cannot be loaded or an unknown key prints one line (``FATAL Flags
  parsing error: unknown config key 'model.foo'; valid keys: ...``) and exits
  with status 1, like absl does for other flag errors. Then parses the flags as
  absl does by default.

  The config flag must be defined without a default and given on the command
  line: with a default, ml_collections applies the overrides when the flag is
  defined, at import time, before this parser runs.

  Args:
    argv: the command line, including the program name.
    config_flag: name of the flag defined with ``DEFINE_config_file``.

  Returns:
    The remaining (non-flag) arguments, as `absl.app.parse_flags_with_usage`.
  """
  flag_values = flags.FLAGS
  # ml_collections expands --flagfile before looking for overrides; so do we.
  argv = flag_values.read_flags_from_files(argv, force_gnu=False)
  path_index, keys = _config_arguments(argv, config_flag)
  if path_index is not None:
    try:
      # A packaged config's name becomes its file, so the flag loads a path.
      argument = argv[path_index]
      flag, equals, value = (argument.partition('=') if argument.startswith('-')
                             else ('', '', argument))
      path = resolve_config(value)
      argv = [*argv[:path_index], flag + equals + path, *argv[path_index + 1:]]
      try:
        config = flag_values[config_flag].parser.parse(path)
      except Exception as e:  # pylint: disable=broad-except  # whatever the file's code raises
        raise ValueError(_load_error(path, e)) from None
      if not isinstance(config, ConfigDict):
        raise ValueError(_load_error(path, getattr(config, '_error', None)))
      check_keys(config, keys)
    except ValueError as e:
      sys.stderr.write(f'FATAL Flags parsing error: {e}\n'
                       'Pass --helpshort or --helpfull to see help on '
                       'flags.\n')
      sys.exit(1)
  return app.parse_flags_with_usage(argv)


def _load_error(path: str, error: BaseException | None) -> str:
  """One line saying why the config file at `path` could not be loaded.

  ml_collections reports a missing file with a placeholder whose error is
  chained and multi-line; the innermost cause is what the user can act on.
  """
  while error is not None and error.__cause__ is not None:
    error = error.__cause__
  if isinstance(error, SyntaxError):
    reason = f'syntax error at line {error.lineno}: {error.msg}'
  elif isinstance(error, OSError) and error.strerror:
    reason = error.strerror
  elif error is not None:
    # Wrapped errors put the cause on their last line (`Attempted ... [Errno 2] No such file`).
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
  else:
    reason = 'it does not define get_config() returning a ConfigDict'
  return f'cannot load the config file {path}: {reason}'


def config_to_json(config: ConfigDict) -> str:
  """Indented JSON of `config` with sorted keys, e.g. for ``config.json``.

  Tuples become lists; values JSON cannot represent are written as their
  string form.
  """
  return config.to_json_best_effort(indent=2, sort_keys=True)
