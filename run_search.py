"""DARTS architecture search: the CNN space (CIFAR-10) or, with ``config.space = 'rnn'``, the recurrent one (PTB).

    python run_search.py --config configs/search_quick.py --workdir runs/quick [--config.KEY=VALUE ...]
    python run_search.py --config configs/search_ptb_quick.py --workdir runs/ptb_quick

Running the same command on an existing workdir resumes the search from its latest checkpoint; SIGTERM or SIGINT
stop it after saving one (exit status 75). See `darts_jax.tasks.search` and `darts_jax.tasks.rnn_search` for what
lands in the workdir and `darts_jax.training.parallel` for multi-host runs.
"""
from darts_jax.tasks import rnn_search, search
from darts_jax.training import cli


def run(config, workdir):
  return (rnn_search.rnn_search if config.get('space') == 'rnn' else search.search)(config, workdir)


if __name__ == '__main__':
  cli.main('run_search.py', run, example_config='configs/search_quick.py')
