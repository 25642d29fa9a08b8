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

With ``--config.selection=pt`` (DARTS-PT) or ``best_of_n``, the finished search's supernet is also derived by that
rule (`darts_jax.tasks.selection`, at the papers' settings or, with ``--config.selection_quick``, the quick ones):
``<workdir>/selection_<name>/genotype.json`` beside the magnitude rule's ``<workdir>/genotype.json``; a workdir whose
selection is written is not derived again. ``darts-select`` runs the same on any finished workdir.
"""
import ml_collections
from absl import flags

from darts_jax.tasks import search, selection
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
    method = config.get('selection', 'magnitude')
    if method not in selection.SELECTIONS:
      raise ValueError(f'Unknown config.selection {method!r}; expected one of {", ".join(selection.SELECTIONS)}.')
    if method != 'magnitude' and config.get('num_seeds', 1) > 1:
      raise ValueError(f'config.selection={method} derives a single-seed search: set num_seeds=1, or run darts-select '
                       'on each seed_<s>/ workdir.')
    result = search.search(config, workdir)
    if method != 'magnitude' and not (selection.selection_dir(workdir, method) / 'genotype.json').is_file():
      selection.select(workdir, selection.selection_config(method, quick=config.get('selection_quick', False)))
    return result

  cli.main(prog, task, example_config='search_quick')


if __name__ == '__main__':
  main('python -m darts_jax.cli.search')
