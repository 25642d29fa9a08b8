"""Random genotypes of a search space, each written as a ``genotype.json`` for the retrain task (the random baseline
of Li & Talwalkar 2019; `darts_jax.tasks.random_search`).

    darts-random --config search_cifar10 --workdir runs/random --num_samples 10 [--seed S] [--config.KEY=VALUE ...]

``--config`` is a search config (it names the space); ``<workdir>/random_<i>/genotype.json`` are the genotypes,
``darts-retrain --config retrain_cifar10 --workdir runs/random_0 --config.genotype=runs/random/random_0`` retrains
one.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from darts_jax.tasks import random_search
from darts_jax.training import cli, config_utils

PROG = 'darts-random'


def main() -> None:
  config_flag = config_flags.DEFINE_config_file(
      'config', None, f'A search config by name (available: {", ".join(config_utils.config_names())}) or file.')
  workdir_flag = flags.DEFINE_string('workdir', None, 'Where the genotypes are written.')
  samples_flag = flags.DEFINE_integer('num_samples', 10, 'How many genotypes.')
  seed_flag = flags.DEFINE_integer('seed', 0, 'The seed of the draws.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def run_main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    cli.start(config_flag.value)
    cli.run(PROG, lambda: random_search.random_genotypes(config_flag.value, workdir_flag.value, samples_flag.value,
                                                         seed_flag.value))

  app.run(run_main, flags_parser=config_utils.parse_flags)


if __name__ == '__main__':
  main()
