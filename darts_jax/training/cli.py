"""What the command-line entry points share: process start-up, and one line and a non-zero exit for every error a
user can act on (a traceback only with ``--verbosity=1``)."""
from __future__ import annotations

import logging as python_logging
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from darts_jax.training import config_utils, loop, parallel

USER_ERRORS = (OSError, ValueError, loop.NonFiniteLossError)
"""What a bad input or a diverged run raises: missing, unreadable or misplaced files and directories (`OSError`:
`FileNotFoundError` incl. `data.DatasetNotFoundError`, `NotADirectoryError`, `PermissionError`, ...), invalid config
values, genotypes or checkpoints (`ValueError`, incl. `loop.ConfigMismatchError`), and divergence."""


def _is_not_orbax_info(record: python_logging.LogRecord) -> bool:
  # Orbax logs every stage of every save at INFO; keep the log to the run's own lines and any warnings.
  return record.levelno >= python_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def start(config: ml_collections.ConfigDict | None = None) -> None:
  """Start-up of a training process: quieter orbax logs, multi-host connection (`parallel`), and the persistent
  compilation cache of ``config.compilation_cache_dir``, so that a rerun or a resume of the same programs compiles
  none of them: every program is cached, also the host's small ones (the epoch record's learning rate) that JAX by
  default leaves out (they compile in under a second each, ~0.3 s together per run)."""
  logging.get_absl_logger().addFilter(_is_not_orbax_info)
  parallel.maybe_initialize_distributed()
  if config is not None and config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.compilation_cache_dir))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def run(prog: str, fn: Callable[[], Any]) -> Any:
  """Returns ``fn()``; exits with one line ``<prog>: error: ...`` and status 1 on a `USER_ERRORS` exception, and
  with `loop.PREEMPTED_EXIT_CODE` when a signal stopped the run after a checkpoint."""
  try:
    return fn()
  except loop.Preempted as e:
    sys.stderr.write(f'{prog}: {e}\n')
    sys.exit(loop.PREEMPTED_EXIT_CODE)
  except USER_ERRORS as e:
    logging.debug('Traceback:', exc_info=True)
    sys.exit(f'{prog}: error: {e}')


def main(prog: str, task: Callable[[ml_collections.ConfigDict, str], Any], example_config: str) -> None:
  """The whole command line of a training task: ``prog --config NAME|FILE --workdir DIR [--config.KEY=VALUE ...]``.

  Defines the flags, resolves a packaged config's name to its file, rejects unknown config names and keys and
  unloadable config files in one line (`config_utils.parse_flags`), then runs ``task(config, workdir)`` under `start`
  and `run`.
  """
  config_flag = config_flags.DEFINE_config_file(
      'config', None, f'A packaged config by name (e.g. {example_config}; available: '
      f'{", ".join(config_utils.config_names())}) or a config file.')
  workdir_flag = flags.DEFINE_string('workdir', None, 'Run directory; an existing one is resumed.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def run_main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    start(config_flag.value)
    run(prog, lambda: task(config_flag.value, workdir_flag.value))

  app.run(run_main, flags_parser=config_utils.parse_flags)
