"""Plots of a search's dynamics, for a finished or a running search.

    python -m darts_jax.cli.plots --workdir DIR

writes ``convergence.png`` (entropy, validation accuracy, stability and Hessian eigenvalue per epoch), ``alphas.png``
(the final softmax weights, edges × ops, per cell type) and ``alphas_evolution.png`` (the weights over the epochs)
into DIR; `darts_jax.analysis.plots` draws them.
"""
from __future__ import annotations

import argparse

from darts_jax.training import cli

PROG = 'darts-plots'


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a search workdir (run_search.py --workdir)')
  args = parser.parse_args(argv)
  from darts_jax.analysis import plots  # matplotlib: only once the arguments are valid
  for path in cli.run(PROG, lambda: plots.plot_search(args.workdir)):
    print(path)


if __name__ == '__main__':
  main()
