"""Compile and run time of the README's library example: the supernet's `hypergradient` by each method.

    python examples/api_compile_time.py                            # as the README calls it: outside jax.jit
    python examples/api_compile_time.py --passes auto              # each method under jax.jit
    python examples/api_compile_time.py --cache-dir /tmp/jc        # twice: the second run is the warm rerun

As a researcher would run it (README, "The API in ten lines"): `SearchNetwork(C=4, num_classes=10, layers=3)`,
batches of 8 16x16x3 images, `jax.jit(net.init)` with an `ops.init_key` (`--init-key threefry`: JAX's default key,
whose initialisation has several times the kernels; `--depthwise-impl xla`: XLA's own depthwise convolutions), then
`'first_order'`, `'fd'` and `'exact'`, each for every `--passes`. ``separate`` calls `hypergradient` directly, outside
`jax.jit`, as the README does: its passes are compiled programs shared by the methods; per method it prints the
seconds of the first call (compiling what it is the first to need, and running) and of a second call. The others
call it under `jax.jit`, one program per method and arrangement (first order has one pass and is timed once): per
program the fused kernels (XLA:CPU code-generates each separately, so they drive compile time), the seconds to trace
and lower, to compile (with a cache hit: to load), and to run once compiled. Every row has the wall time since the
start, with `--cache-dir` the persistent cache's hits. Then the largest difference of each arrangement from the
direct one, and the machine's load average (the timings assume a quiet machine).
"""
import argparse
import json
import os
import time

START = time.perf_counter()

import jax  # noqa: E402  (imported after the clock starts: the import is part of a researcher's wait)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from darts_jax import SearchNetwork, hypergradient, init_alphas  # noqa: E402
from darts_jax.cnn import ops  # noqa: E402

CACHE_EVENTS = {'/jax/compilation_cache/cache_hits': 'cache_hits',
                '/jax/compilation_cache/compile_requests_use_cache': 'cache_requests'}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--passes', nargs='+', default=['separate'], choices=['separate', 'direct', 'chained', 'auto'])
  parser.add_argument('--methods', nargs='+', default=['first_order', 'fd', 'exact'])
  parser.add_argument('--cache-dir', help='persistent compilation cache (the README line); default: none')
  parser.add_argument('--depthwise-impl', choices=ops.DEPTHWISE_IMPLS, default='auto',
                      help="the network's depthwise convolutions (ops.DEPTHWISE_IMPLS; 'auto': 'shift' on CPU)")
  parser.add_argument('--init-key', choices=['hash', 'threefry'], default='hash',
                      help="the weights' PRNG: ops.init_key's hash (the README) or JAX's default threefry")
  args = parser.parse_args()
  if args.cache_dir:
    jax.config.update('jax_compilation_cache_dir', args.cache_dir)
  counts = dict.fromkeys(CACHE_EVENTS.values(), 0)

  def count(event, **kwargs):
    if event in CACHE_EVENTS:
      counts[CACHE_EVENTS[event]] += 1

  jax.monitoring.register_event_listener(count)

  images = jax.random.uniform(jax.random.key(2), (8, 16, 16, 3))
  labels = jax.random.randint(jax.random.key(3), (8,), 0, 10)
  train_batch = val_batch = (images, labels)

  def row(program, passes, hits_before, **times):
    entry = {'program': program, 'passes': passes, **times, 'since_start_s': round(time.perf_counter() - START, 1)}
    if args.cache_dir:
      entry['cache_hits'] = counts['cache_hits'] - hits_before
    print(json.dumps(entry), flush=True)

  def record(program, jitted, *call_args, passes=None):
    hits_before = counts['cache_hits']
    start = time.perf_counter()
    lowered = jitted.lower(*call_args)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(*call_args))
    start = time.perf_counter()
    jax.block_until_ready(compiled(*call_args))
    row(program, passes, hits_before, kernels=compiled.as_text().count(' fusion('), lower_s=round(lower_s, 2),
        compile_s=round(compile_s, 2), run_s=round(time.perf_counter() - start, 4))
    return out

  def call_separately(method, *call_args):
    hits_before = counts['cache_hits']
    start = time.perf_counter()
    out = jax.block_until_ready(call(method, 'separate', *call_args))
    first_call_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(call(method, 'separate', *call_args))
    row(method, 'separate', hits_before, first_call_s=round(first_call_s, 2),
        run_s=round(time.perf_counter() - start, 4))
    return out

  net = SearchNetwork(C=4, num_classes=10, layers=3, depthwise_impl=args.depthwise_impl)
  alphas = init_alphas(jax.random.key(0))
  key = jax.random.key(1)
  variables = record(f'init ({args.init_key})', jax.jit(lambda key, x, a: net.init(key, x, a, train=False)),
                     ops.init_key(key) if args.init_key == 'hash' else key, images, alphas)

  def loss(params, alphas, batch):
    logits, _ = net.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch[0], alphas,
                          train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  def call(method, passes, params, alphas):
    return hypergradient(loss, loss, params, alphas, train_batch, val_batch, eta=0.025, method=method, passes=passes)

  results = {}
  for method in args.methods:
    for passes in args.passes:
      if passes == 'separate':
        results[method, passes] = call_separately(method, variables['params'], alphas)
      elif method in ('fd', 'exact') or (method, 'direct') not in results:  # first order: one pass, one form
        jitted = jax.jit(lambda params, alphas, method=method, passes=passes: call(method, passes, params, alphas))
        results[method, passes if method in ('fd', 'exact') else 'direct'] = record(
            method, jitted, variables['params'], alphas, passes=passes if method in ('fd', 'exact') else None)
  for (method, passes), result in results.items():
    if passes != 'direct' and (method, 'direct') in results:
      direct, other = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(r)])
                       for r in (results[method, 'direct'], result))
      print(json.dumps({'method': method, 'passes': passes, 'max_abs': float(jnp.max(jnp.abs(direct))),
                        'max_abs_difference_from_direct': float(jnp.max(jnp.abs(direct - other)))}))
  print(json.dumps({'total_s': round(time.perf_counter() - START, 1), 'loadavg': os.getloadavg(),
                    **({'cache_requests': counts['cache_requests'], 'cache_hits': counts['cache_hits']}
                       if args.cache_dir else {})}))


if __name__ == '__main__':
  main()
