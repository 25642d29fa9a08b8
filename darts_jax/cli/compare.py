"""Compare search runs, finished or running, and rank runs and retrained genotypes by accuracy and cost.

    python -m darts_jax.cli.compare DIR [DIR ...] [--out compare.png] [--entropy_threshold 1.85] [--last 5]
        [--cost macs|params] [--target N] [--mnasnet_alpha -0.07] [--mnasnet_beta -0.07] [--pareto_out pareto.png]

For the search workdirs among DIR it prints one row per run: method (hypergradient, architecture learning rate,
early-stopping rule), epochs done of planned, final and best supernet validation accuracy, final mean alpha
entropy, the convergence epoch (the first with both cells' entropy below the threshold), the mean stability over the
last epochs, the final Hessian eigenvalue, the early stop (rule@stop epoch->kept epoch) and the parameters and
multiply-adds of the run's genotype at its C, layers and image size; and writes an overlay of the runs' per-epoch
curves to ``--out``.

Then it ranks every DIR, search runs (by their supernet's final validation accuracy) and retrain workdirs (by their
test accuracy, ``results.json``), by MnasNet's score ``accuracy · (cost / target)^w`` (w = ``--mnasnet_alpha`` at or
below the target, ``--mnasnet_beta`` above; the target defaults to the median cost), marks the accuracy-cost Pareto
front (``*``) and draws accuracy against cost to ``--pareto_out``. `darts_jax.analysis.compare` does the work.
"""
from __future__ import annotations

import argparse

from darts_jax.training import cli

PROG = 'darts-compare'


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+', metavar='DIR',
                      help='search workdirs (run_search.py --workdir) or retrain workdirs (run_retrain.py)')
  parser.add_argument('--out', default='compare.png', help='the overlay plot of the searches (default: compare.png)')
  parser.add_argument('--entropy_threshold', type=float, default=1.85,
                      help='entropy (nats) below which a run counts as converged (uniform over 8 ops: 2.079)')
  parser.add_argument('--last', type=int, default=5, help='epochs over which stability is averaged')
  parser.add_argument('--cost', choices=('macs', 'params'), default='macs', help='the cost of the ranking')
  parser.add_argument('--target', type=float, help="MnasNet's target cost (default: the median of the runs')")
  parser.add_argument('--mnasnet_alpha', type=float, default=-0.07, help='the exponent at or below the target')
  parser.add_argument('--mnasnet_beta', type=float, default=-0.07, help='the exponent above the target')
  parser.add_argument('--pareto_out', default='pareto.png', help='accuracy against cost (default: pareto.png)')
  args = parser.parse_args(argv)
  from darts_jax.analysis import compare  # matplotlib: only once the arguments are valid

  def run() -> str:
    searches, rows, entries = [], [], []
    for workdir in args.workdirs:
      if compare.is_retrain_workdir(workdir):
        entries.append(compare.summarize_retrain(workdir))
        continue
      row = compare.summarize(workdir, entropy_threshold=args.entropy_threshold, last=args.last)
      searches.append(workdir)
      rows.append(row)
      entries.append({'run': row['run'], 'accuracy': row['val_acc'], 'params': row['params'], 'macs': row['macs']})
    lines = []
    if searches:
      compare.overlay_figure(searches).savefig(args.out, dpi=90)
      lines += [compare.format_table(rows), f'overlay: {args.out}']
    ranked, target = compare.rank(entries, cost_key=args.cost, target=args.target, alpha=args.mnasnet_alpha,
                                  beta=args.mnasnet_beta)
    compare.pareto_figure(ranked, args.cost).savefig(args.pareto_out, dpi=90)
    lines += [compare.format_table(ranked, compare.RANK_COLUMNS),
              f'score = accuracy * ({args.cost} / {target:g})^w, w = {args.mnasnet_alpha:g} at or below the target, '
              f'{args.mnasnet_beta:g} above; * = on the Pareto front; plot: {args.pareto_out}']
    return '\n'.join(lines)

  print(cli.run(PROG, run))


if __name__ == '__main__':
  main()
