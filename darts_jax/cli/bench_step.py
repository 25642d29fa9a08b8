"""Times the full DARTS search step on random data: ``python -m darts_jax.cli.bench`` (``--suite step``, the default).

For example::

  python -m darts_jax.cli.bench --C 8 --layers 5 --batch 16 --image 28 --channels 1 --mode exact

The step is the one `run_search.py` runs (`bilevel.step.make_search_step` on the CNN space's problem: the
architecture step, then the weight step), jitted
once (``--seeds K``: K independent searches vmapped in one step, as ``--config.num_seeds``; ``images_per_s`` is summed
over them); `compile_s` is its ahead-of-time compile, `median_step_s` the median over `--steps` timed steps after
`--warmup` untimed ones; `fusions` counts the compiled step's fused kernels (on CPU, compile time is about
proportional to it); `temp_mb`/`argument_mb` are XLA's memory plan of the step and `max_rss_mb` the process's
peak resident memory. The last line printed is one JSON object. Imports only jax, flax, optax, numpy and the
darts_jax core, so it runs as is on an accelerator host.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import data
from darts_jax.bilevel import step as bilevel_step
from darts_jax.cnn.ops import DEPTHWISE_IMPLS, resolve_depthwise_impl
from darts_jax.cnn.supernet import DTYPES, SearchNetwork
from darts_jax.spaces import cnn as cnn_space
from darts_jax.training import optimizers, parallel

def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--C', type=int, default=16, help='initial channels')
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--image', type=int, default=32, help='image height and width')
  parser.add_argument('--channels', type=int, default=3, help='input channels')
  parser.add_argument('--classes', type=int, default=10)
  parser.add_argument('--nodes', type=int, default=4, help="intermediate nodes per cell (the original's `steps`)")
  parser.add_argument('--mode', choices=list(bilevel_step.METHODS) + list(bilevel_step.OLD_METHOD_NAMES) +
                      ['forward_backward'], default='exact',
                      help="a search step's hypergradient, or 'forward_backward': one gradient of the supernet's "
                           'training loss w.r.t. weights and alphas')
  parser.add_argument('--unroll-steps', type=int, default=3, help="virtual steps of '--mode unrolled'")
  parser.add_argument('--implicit-iterations', type=int, default=5,
                      help="CG iterations or Neumann terms of '--mode implicit_*'")
  parser.add_argument('--steps', type=int, default=5,
                      help="timed steps; 0 compiles only and reports XLA's memory plan (for steps that would not fit)")
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  parser.add_argument('--second-order-impl', choices=bilevel_step.STEP_PASSES, default='auto',
                      help="'--mode second_order_*': the chained or the direct step (auto: by backend)")
  parser.add_argument('--depthwise-impl', choices=DEPTHWISE_IMPLS, default='auto')
  parser.add_argument('--dtype', choices=DTYPES, default='float32', help='activations and convolutions')
  parser.add_argument('--remat', action='store_true', help="rematerialise each cell's elementwise work")
  parser.add_argument('--partial-channels', type=int, default=1,
                      help="PC-DARTS's K: 1/K of each node's channels through the mixed ops (1: all)")
  parser.add_argument('--edge-normalization', action='store_true', help="PC-DARTS's edge normalisation")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--profile', metavar='DIR',
                      help='trace one more step into DIR (XLA:CPU per-kernel events, TensorBoard/Perfetto) and report '
                           'kernel time by operation (`kernel_profile`)')
  parser.add_argument('--opt-level', type=int, choices=range(4), default=None,
                      help="XLA:CPU's backend (LLVM) optimisation level of the step (default: XLA's, 3)")
  parser.add_argument('--seeds', type=int, default=1,
                      help='independent searches vmapped in one step, as --config.num_seeds (images_per_s sums them)')
  return parser.parse_args(argv)


def _forward_backward_step(model: SearchNetwork, preprocess: data.Preprocess):
  """A step that only takes the gradient of the training loss (the unit of work every search pass repeats)."""
  def step(state, train_batch, val_batch):
    del val_batch
    def loss(params, alphas):
      logits, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, preprocess(None, train_batch[0]),
                              alphas, train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, train_batch[1]).mean()
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(state.params, state.alphas)
    return state, {'loss': value, 'finite': jnp.isfinite(value), 'grads': grads}
  return step


def time_step(step, state, batches: tuple, warmup: int, steps: int, profile_dir: str | None = None,
              opt_level: int | None = None):
  """Compiles ``step(state, *batches) -> (state, metrics)`` ahead of time (at XLA:CPU's `opt_level`), runs it
  ``warmup`` times, then times
  ``steps`` calls (each to completion), then, with `profile_dir`, traces one more into it (`jax.profiler`).
  Returns (compiled, compile seconds, sorted step seconds, last metrics)."""
  start = time.perf_counter()
  compiled = step.lower(state, *batches).compile(parallel.compiler_options(opt_level))
  compile_s = time.perf_counter() - start
  metrics = None
  for _ in range(warmup):
    state, metrics = compiled(state, *batches)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, *batches)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  if profile_dir:
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      jax.block_until_ready(compiled(state, *batches))
  return compiled, compile_s, sorted(times), metrics


def kernel_profile(trace_dir: str, hlo_text: str, top: int = 15) -> dict[str, float]:
  """Seconds of kernel time in a traced step by what each top-level kernel computes: forward or backward (an
  ``op_name`` under ``transpose(...)``) and the JAX operation at the end of its ``op_name`` (a fusion is named after
  its root, so fused elementwise work shows under the op that ends it). The backward loops of the depthwise
  convolution are told apart by what they carry: the kernel gradient a 4-D (maps, k, k, C) array, the input gradient
  (and the pools') a 5-D one. Kernels inside a loop count towards the loop."""
  kernels = {}  # HLO instruction -> (result shape, opcode, op_name)
  for match in re.finditer(r'^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w-]+)\(.*?metadata=\{op_name="([^"]*)"', hlo_text, re.M):
    kernels[match[1]] = match.group(2, 3, 4)
  trace, = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)
  threads = collections.defaultdict(list)
  for event in json.load(gzip.open(trace))['traceEvents']:
    if event.get('ph') == 'X':
      threads[event.get('pid'), event.get('tid')].append(event)
  seconds = collections.Counter()
  for events in threads.values():
    events.sort(key=lambda e: (e['ts'], -e.get('dur', 0)))
    open_kernels = []  # end times of the enclosing kernel events
    for event in events:
      open_kernels = [end for end in open_kernels if end > event['ts']]
      if event['name'] not in kernels:
        continue
      if not open_kernels:
        shape, opcode, op_name = kernels[event['name']]
        operation = op_name.rsplit('/', 1)[-1]
        if opcode == 'while':
          carried = re.search(r'\[([\d,]+)\]', shape.split(',', 1)[1] if ',' in shape else shape)
          rank = carried[1].count(',') + 1 if carried else 0
          operation = 'loop: depthwise kernel gradient' if rank == 4 else 'loop: depthwise/pool input gradient'
        seconds[('backward: ' if 'transpose(' in op_name else 'forward: ') + operation] += event.get('dur', 0) / 1e6
      open_kernels.append(event['ts'] + event.get('dur', 0))
  profile = {'kernel_total_s': sum(seconds.values())}
  profile.update(seconds.most_common(top))
  return profile


def build(args: argparse.Namespace):
  """The jitted step that `args` describe (its state donated) and its initial state; returns (step, state, seconds
  the initialisation took)."""
  model = SearchNetwork(args.C, args.classes, args.layers, steps=args.nodes, multiplier=args.nodes,
                        depthwise_impl=args.depthwise_impl, dtype=args.dtype, remat=args.remat,
                        partial_channels=args.partial_channels, edge_normalization=args.edge_normalization)
  schedule = optimizers.epoch_cosine_schedule(0.025, 0.001, num_epochs=50, steps_per_epoch=1000)
  start = time.perf_counter()
  weight_tx, arch_tx = optimizers.weight_optimizer(schedule), optimizers.arch_optimizer()
  states = [cnn_space.create_search_state(jax.random.key(args.seed + s), model,
                                          (args.image, args.image, args.channels), weight_tx, arch_tx)
            for s in range(args.seeds)]
  state = states[0] if args.seeds == 1 else jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  preprocess = data.make_preprocess(np.full(args.channels, 0.5), np.full(args.channels, 0.25))
  if args.mode == 'forward_backward':
    step_fn = _forward_backward_step(model, preprocess)
  else:
    step_fn = bilevel_step.make_search_step(cnn_space.search_problem(model, schedule, preprocess),
                                            method=bilevel_step.method_name(args.mode), unroll_steps=args.unroll_steps,
                                            implicit_iterations=args.implicit_iterations,
                                            passes=args.second_order_impl)
  step = jax.jit(step_fn if args.seeds == 1 else jax.vmap(step_fn), donate_argnums=0)
  return step, state, init_s


def run(args: argparse.Namespace) -> dict:
  """Builds, compiles and times the search step; returns the measurements."""
  step, state, init_s = build(args)
  rng = np.random.default_rng(args.seed)
  seeds_axis = () if args.seeds == 1 else (args.seeds,)
  def batch():
    return (jnp.asarray(rng.integers(0, 256, seeds_axis + (args.batch, args.image, args.image, args.channels),
                                     np.uint8)),
            jnp.asarray(rng.integers(0, args.classes, seeds_axis + (args.batch,), np.int32)))
  train_batch, val_batch = batch(), batch()

  compiled, compile_s, times, metrics = time_step(step, state, (train_batch, val_batch),
                                                  args.warmup if args.steps else 0, args.steps, args.profile,
                                                  args.opt_level)
  median = times[len(times) // 2] if times else None
  device = jax.devices()[0]
  result = {
      'impl': 'darts_jax', 'mode': args.mode, 'depthwise_impl': resolve_depthwise_impl(args.depthwise_impl),
      'second_order_impl': bilevel_step.resolve_passes(args.second_order_impl),
      'dtype': args.dtype, 'remat': args.remat, 'seeds': args.seeds, 'partial_channels': args.partial_channels,
      'edge_normalization': args.edge_normalization, 'opt_level': args.opt_level,
      'params': int(sum(x.size for x in jax.tree.leaves(state.params))) // args.seeds,
      'median_step_s': median, 'min_step_s': times[0] if times else None,
      'images_per_s': args.seeds * args.batch / median if times else None,
      'compile_s': compile_s, 'init_s': init_s, 'finite': bool(np.all(metrics['finite'])) if times else None,
      'device': device.device_kind, 'jax': jax.__version__,
  }
  # Fused kernels in the compiled step (loop bodies included): on CPU each is code-generated separately, so their
  # number drives compile time.
  result['fusions'] = compiled.as_text().count(' fusion(')
  analysis = compiled.memory_analysis()
  if analysis is not None:  # XLA's plan for the step: buffers live during it, and its inputs
    result['temp_mb'] = analysis.temp_size_in_bytes / 2**20
    result['argument_mb'] = analysis.argument_size_in_bytes / 2**20
  memory = device.memory_stats() or {}
  if 'peak_bytes_in_use' in memory:
    result['peak_mem_gb'] = memory['peak_bytes_in_use'] / 2**30
  result['max_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
  if args.profile:
    result['kernel_profile'] = kernel_profile(args.profile, compiled.as_text())
  return result


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.profile:  # XLA:CPU emits per-kernel trace events only with this flag, read when the backend is created
    os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_enable_xprof_traceme=true'
  print(json.dumps(run(args)))


if __name__ == '__main__':
  main()
