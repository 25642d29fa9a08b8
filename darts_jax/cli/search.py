"""DARTS architecture search: the CNN space (CIFAR-10) or, with ``config.space = 'rnn'``, the recurrent one (PTB).

    darts-search --config search_quick --workdir runs/quick [--config.KEY=VALUE ...]
    darts-search --config configs/search_ptb_quick.py --workdir runs/ptb_quick

``--config`` takes a packaged config by name (``search_quick``, ``search_cifar10``, ...) or a config file's path;
``python -m darts_jax.cli.search`` and ``python run_search.py`` are the same command. Running it on an existing workdir
resumes the search from its latest checkpoint; SIGTERM or SIGINT stop it after saving one (exit status 75). See
`darts_jax.tasks.search` and the spaces (`darts_jax.spaces`) for what lands in the workdir and
`darts_jax.training.parallel` for multi-host runs.
"""
from darts_jax.tasks import search
from darts_jax.training import cli


def main(prog: str = 'darts-search') -> None:
  """The command line (the ``darts-search`` console script); `prog` names the command in its messages."""
  cli.main(prog, search.search, example_config='search_quick')


if __name__ == '__main__':
  main('python -m darts_jax.cli.search')
