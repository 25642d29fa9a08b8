"""A genotype derived from a finished search's supernet: DARTS-PT, magnitude, or the best of N random architectures.

    darts-select --workdir runs/search [--selection pt|magnitude|best_of_n] [--quick] [--tune_steps N]
                 [--eval_batches N] [--num_samples N] [--seed S]

Restores the search workdir's latest checkpoint and writes ``<workdir>/selection_<selection>/genotype.json`` and
``selection.json`` (`darts_jax.tasks.selection`); retrain it with
``darts-retrain --config.genotype=<workdir>/selection_<selection>``. The defaults are the papers' settings
(`selection.selection_config`), ``--quick`` a demonstration's; the other flags override single options.
"""
from __future__ import annotations

import argparse

from darts_jax.tasks import selection
from darts_jax.training import cli

PROG = 'darts-select'


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a finished single-seed search workdir')
  parser.add_argument('--selection', choices=selection.SELECTIONS, default='pt', help='the derivation (default pt)')
  parser.add_argument('--quick', action='store_true', help="the quick options instead of the papers' settings")
  for name, help_text in (('tune_steps', 'pt: search steps between two edge decisions'),
                          ('eval_batches', 'validation batches per evaluation (0: all)'),
                          ('num_samples', 'best_of_n: random architectures scored'),
                          ('seed', 'pt: the order of the edges; best_of_n: the samples')):
    parser.add_argument(f'--{name}', type=int, default=None, help=help_text)
  args = parser.parse_args(argv)
  options = selection.selection_config(args.selection, quick=args.quick)
  for name in ('tune_steps', 'eval_batches', 'num_samples', 'seed'):
    if getattr(args, name) is not None:
      options[name] = getattr(args, name)
  cli.start()
  genotype = cli.run(PROG, lambda: selection.select(args.workdir, options))
  print(selection.selection_dir(args.workdir, args.selection) / 'genotype.json', genotype)


if __name__ == '__main__':
  main()
