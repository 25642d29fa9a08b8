"""DARTS architecture search.

    python run_search.py --config configs/search_quick.py --workdir runs/quick [--config.KEY=VALUE ...]

Running the same command on an existing workdir resumes the search from its latest checkpoint; SIGTERM or SIGINT
stop it after saving one (exit status 75). See `darts_jax.tasks.search` for what lands in the workdir and
`darts_jax.training.parallel` for multi-host runs.
"""
from absl import app, flags
from ml_collections import config_flags

from darts_jax.tasks import search
from darts_jax.training import cli, config_utils

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Search configuration file, e.g. configs/search_quick.py.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory; an existing one is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.start(_CONFIG.value)
  cli.run('run_search.py', lambda: search.search(_CONFIG.value, _WORKDIR.value))


if __name__ == '__main__':
  app.run(main, flags_parser=config_utils.parse_flags)
