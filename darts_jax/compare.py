"""Compare search runs, finished or running.

    python -m darts_jax.compare DIR [DIR ...] [--out compare.png] [--entropy_threshold 1.85] [--last 5]

prints one row per run: method (hypergradient, architecture learning rate, early-stopping rule), epochs done of
planned, final and best supernet validation accuracy, final mean alpha entropy, the convergence epoch (the first
with both cells' entropy below the threshold), the mean stability over the last epochs, the final Hessian
eigenvalue, the early stop (rule@stop epoch->kept epoch) and the parameter count of the run's genotype at its C and
layers; and writes an overlay of the runs' per-epoch curves to ``--out``. `darts_jax.dynamics.compare` does the work.
"""
from __future__ import annotations

import argparse

from darts_jax.training import cli

PROG = 'darts_jax.compare'


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog=f'python -m {PROG}', description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+', metavar='DIR', help='search workdirs (run_search.py --workdir)')
  parser.add_argument('--out', default='compare.png', help='the overlay plot (default: compare.png)')
  parser.add_argument('--entropy_threshold', type=float, default=1.85,
                      help='entropy (nats) below which a run counts as converged (uniform over 8 ops: 2.079)')
  parser.add_argument('--last', type=int, default=5, help='epochs over which stability is averaged')
  args = parser.parse_args(argv)
  from darts_jax.dynamics import compare  # matplotlib and the networks: only once the arguments are valid

  def run() -> str:
    rows = [compare.summarize(w, entropy_threshold=args.entropy_threshold, last=args.last) for w in args.workdirs]
    compare.overlay_figure(args.workdirs).savefig(args.out, dpi=90)
    return compare.format_table(rows)

  print(cli.run(PROG, run))
  print(f'overlay: {args.out}')


if __name__ == '__main__':
  main()
