"""DARTS architecture search.

    python run_search.py --config configs/search_quick.py --workdir runs/quick [--config.KEY=VALUE ...]

Running the same command on an existing workdir resumes the search from its latest checkpoint; SIGTERM or SIGINT
stop it after saving one (exit status 75). See `darts_jax.tasks.search` for what lands in the workdir and
`darts_jax.training.parallel` for multi-host runs.
"""
from darts_jax.tasks import search
from darts_jax.training import cli

if __name__ == '__main__':
  cli.main('run_search.py', search.search, example_config='configs/search_quick.py')
