"""Helpers for ml_collections configs given on the command line.

The CLIs define their configuration flax-examples style::

  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.')
  flags.mark_flags_as_required(['config'])
  ...
  app.run(main, flags_parser=config_utils.parse_flags)

and are run as ``run_search.py --config=configs/search.py
--config.model.layers=5``. ml_collections fails on an override of a key the
config does not have with an uncaught ``AttributeError: "'foo'"`` traceback
(at best with a "did you mean" hint); `parse_flags` checks the overrides first
and fails with a usage error listing the valid keys instead.

``DEFINE_config_file`` locks the config (``lock_config=True``, its default):
overrides and code can change existing fields, but assigning a misspelt field
raises ``AttributeError`` instead of silently adding it, as does reading one.
"""

import re
import sys
from collections.abc import Iterable, Sequence

from absl import app, flags
from ml_collections import ConfigDict


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
                      name: str) -> tuple[str | None, list[str]]:
  """The config file path and overridden keys in `argv`.

  Recognises the forms ml_collections accepts: ``--config=path``,
  ``--config path``, ``--config.key=value``, ``--config.key value`` and
  ``--noconfig.key`` (booleans), with one or two leading dashes.
  """
  path_re = re.compile(rf'^--?{name}(?:=(.*))?$')
  override_re = re.compile(rf'^--?(?:no)?{name}\.([^=]+)')
  path, keys = None, []
  for i, arg in enumerate(argv):
    if arg == '--':
      break
    if match := path_re.match(arg):
      path = match.group(1)
      if path is None and i + 1 < len(argv):
        path = argv[i + 1]
    elif match := override_re.match(arg):
      keys.append(match.group(1))
  return path, keys


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
  expanded = flag_values.read_flags_from_files(argv, force_gnu=False)
  path, keys = _config_arguments(expanded[1:], config_flag)
  if path is not None:
    try:
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
