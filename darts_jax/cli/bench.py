"""Benchmarks: ``python -m darts_jax.cli.bench`` (the ``darts-bench`` console script).

    python -m darts_jax.cli.bench [--suite step] --C 8 --layers 5 --batch 16 --image 28 --channels 1 --mode exact
    python -m darts_jax.cli.bench --suite accelerator --out DIR

``--suite step`` (the default) times one search step (`darts_jax.cli.bench_step`, its flags); ``--suite accelerator``
runs the prepared check of a GPU/TPU host (`darts_jax.cli.bench_accelerator`, its flags). docs/results.md has the
results.
"""
from __future__ import annotations

import argparse

from darts_jax.cli import bench_accelerator, bench_step

SUITES = {'step': bench_step.main, 'accelerator': bench_accelerator.main}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument('--suite', choices=list(SUITES), default='step')
  suite, rest = parser.parse_known_args(argv)
  SUITES[suite.suite](rest)


if __name__ == '__main__':
  main()
