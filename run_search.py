"""DARTS architecture search.

    python run_search.py --config configs/search_quick.py --workdir runs/quick [--config.KEY=VALUE ...]

Running the same command on an existing workdir resumes the search from its latest checkpoint. See
`darts_jax.train_search` for what lands in the workdir and `darts_jax.parallel` for multi-host runs.
"""
import logging as python_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from darts_jax import config_utils, parallel, train_search
from darts_jax.data import DatasetNotFoundError
from darts_jax.loop import NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Search configuration file, e.g. configs/search_quick.py.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory; an existing one is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


def _is_not_orbax_info(record: python_logging.LogRecord) -> bool:
  # Orbax logs every stage of every save at INFO; keep the log to the search's own lines and any warnings.
  return record.levelno >= python_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_logger().addFilter(_is_not_orbax_info)
  parallel.maybe_initialize_distributed()
  config = _CONFIG.value
  if config.compilation_cache_dir:
    # Runs and resumes with the same program reuse its compilation: restarts skip most of the compile time.
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.compilation_cache_dir))
  try:
    train_search.search(config, _WORKDIR.value)
  except (DatasetNotFoundError, NonFiniteLossError, ValueError) as e:
    logging.debug('Traceback:', exc_info=True)
    sys.exit(f'run_search.py: error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_utils.parse_flags)
