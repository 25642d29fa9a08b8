"""DARTS architecture search: the CNN space (CIFAR-10) or, with ``config.space = 'rnn'``, the recurrent one (PTB).

    darts-search --config search_quick --workdir runs/quick [--config.KEY=VALUE ...]
    darts-search --config configs/search_ptb_quick.py --workdir runs/ptb_quick
    darts-search --config search_nb201 --workdir runs/nb201 --benchmark NAS-Bench-201-v1_1-096897.pth

``--config`` takes a packaged config by name (``search_quick``, ``search_cifar10``, ...) or a config file's path;
``python -m darts_jax.cli.search`` and ``python run_search.py`` are the same command. Running it on an existing workdir
resumes the search from its latest checkpoint; SIGTERM or SIGINT stop it after saving one (exit status 75). See
`darts_jax.tasks.search` and the spaces (`darts_jax.spaces`) for what lands in the workdir and
`darts_jax.training.parallel` for multi-host runs. ``--benchmark PATH`` is ``--config.benchmark.path=PATH`` (the
NAS-Bench-201 space: the derived architectures' benchmark accuracies in the epoch records).
"""
import ml_collections
from absl import flags

from darts_jax.tasks import search
from darts_jax.training import cli


def main(prog: str = 'darts-search') -> None:
  """The command line (the ``darts-search`` console script); `prog` names the command in its messages."""
  benchmark = flags.DEFINE_string('benchmark', None, 'The benchmark file of the NAS-Bench-201 space (NAS-Bench-201 '
                                  '.pth or NATS-Bench topology): sets config.benchmark.path.')

  def task(config: ml_collections.ConfigDict, workdir: str):
    if benchmark.value:
      if 'benchmark' not in config:
        raise ValueError(f'--benchmark needs a config with benchmark keys (the nb201 space), not space '
                         f'{config.get("space", "cnn")!r}.')
      config.benchmark.path = benchmark.value
    return search.search(config, workdir)

  cli.main(prog, task, example_config='search_quick')


if __name__ == '__main__':
  main('python -m darts_jax.cli.search')
