"""Times the recurrent search step on random tokens: ``python -m darts_jax.cli.bench_rnn``.

    python -m darts_jax.cli.bench_rnn --ntoken 10000 --nhid 300 --batch 256 --bptt 35 --mode fd

The step is the one ``run_search.py`` runs for ``space = 'rnn'`` (`bilevel.step.make_search_step` on the recurrent space's problem:
architecture step, then weight step, hidden states carried), jitted once; ``compile_s`` is its ahead-of-time compile,
``median_step_s`` the median over ``--steps`` timed steps after ``--warmup`` untimed ones, ``tokens_per_s`` the
training tokens per second (batch × bptt / step), ``fusions`` the compiled step's fused kernels and ``max_rss_mb``
the process's peak resident memory. The last line printed is one JSON object (docs/results.md).
"""
from __future__ import annotations

import argparse
import json
import resource

import jax
import numpy as np

from darts_jax.cli.bench_step import time_step
from darts_jax.bilevel import step as bilevel_step
from darts_jax.rnn.model import RNNModelSearch
from darts_jax.spaces import rnn as rnn_space
from darts_jax.training import optimizers


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--ntoken', type=int, default=10_000, help='vocabulary size')
  parser.add_argument('--nhid', type=int, default=300, help='embedding and hidden units')
  parser.add_argument('--nodes', type=int, default=8, help='intermediate nodes of the search cell')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--bptt', type=int, default=35, help='time steps per batch')
  parser.add_argument('--mode', choices=list(bilevel_step.METHODS) + list(bilevel_step.OLD_METHOD_NAMES), default='fd')
  parser.add_argument('--steps', type=int, default=5, help='timed steps')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps after compilation')
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
  model = RNNModelSearch(args.ntoken, args.nhid, args.nhid, steps=args.nodes)
  state = rnn_space.create_search_state(jax.random.key(args.seed), model, args.batch,
                                        optimizers.clipped_sgd(weight_decay=5e-7, grad_clip=0.25),
                                        optimizers.arch_optimizer(3e-3, b1=0.9, b2=0.999))
  step = jax.jit(bilevel_step.make_search_step(rnn_space.search_problem(model, learning_rate=20.0, bptt=args.bptt),
                                               method=bilevel_step.method_name(args.mode)), donate_argnums=(0,))
  rng = np.random.default_rng(args.seed)

  def batch():
    tokens = rng.integers(0, args.ntoken, (args.batch, args.bptt + 1), dtype=np.int32)
    return (tokens[:, :-1], tokens[:, 1:], np.full(args.batch, args.bptt, np.int32), np.zeros(args.batch, np.int32))

  train, val = batch(), batch()
  compiled, compile_s, times, metrics = time_step(step, state, (train, val), args.warmup, args.steps)
  median = float(np.median(times))
  return {'mode': args.mode, 'ntoken': args.ntoken, 'nhid': args.nhid, 'nodes': args.nodes, 'batch': args.batch,
          'bptt': args.bptt, 'compile_s': round(compile_s, 2), 'median_step_s': round(median, 4),
          'tokens_per_s': round(args.batch * args.bptt / median, 1),
          'fusions': compiled.as_text().count(' fusion('), 'finite': bool(metrics['finite']),
          'backend': jax.default_backend(), 'max_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main(argv: list[str] | None = None) -> None:
  print(json.dumps(run(_parse_args(argv))))


if __name__ == '__main__':
  main()
