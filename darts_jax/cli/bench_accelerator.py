"""The prepared accelerator check: ``python -m darts_jax.cli.bench --suite accelerator --out DIR``.

Within ``--budget-s`` seconds (480 by default) it

1. runs the tests that exercise the backend (`TESTS`: the ops against lax's convolutions and pools, every
   hypergradient against autodiff and closed forms, the supernet, the search step) with pytest, where the
   repository's tests/ is there;
2. times the search step with every hypergradient method (``python -m darts_jax.cli.bench --mode ...``) at the paper's
   search config (`PAPER_CONFIG`: C=16, 8 cells, 4 nodes, batch 64, 32x32x3, 10 classes);
3. times one forward+backward of the supernet against the PyTorch original (`darts_jax.torch_reference`) on the
   same GPU, where PyTorch sees one;
4. reports each program's compile time and memory: XLA's plan (``compiled.memory_analysis()``) and the device's
   peak (``memory_stats()``, on GPUs);
5. runs a short search at the same config: ``--search-steps`` search steps on fresh synthetic batches (a fixed
   random pattern per class under noise; no dataset is read) and the genotype they derive.

Each part runs in a process of its own, stopped when it outlasts its share of the budget (`PART_SHARES_S`, plus
what earlier parts left unused), which the report records. A process of its own also gives each program its own
peak memory and keeps this one off the device. The processes share one persistent compilation cache, so the short
search loads the program the timing of its method compiled. Writes DIR/accelerator_check.json and
DIR/accelerator_check.md. On a CPU backend, or with ``--dry-run``, every part runs at tiny sizes (`DRY_RUN_CONFIG`)
and the report is marked a dry run: a check of the check, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax.cli import bench_step
from darts_jax.bilevel import step as bilevel_step
from darts_jax.cnn.genotypes import derive_genotype

PAPER_CONFIG = {'C': 16, 'layers': 8, 'nodes': 4, 'batch': 64, 'image': 32, 'channels': 3, 'classes': 10,
                'depthwise_impl': 'auto'}
# The dry run's depthwise convolutions are XLA's grouped convolutions, as on a GPU: on CPU they compile in about
# 0.6x the time of the default shift-and-add loops (a dry run checks the check, its speed does not matter).
DRY_RUN_CONFIG = {'C': 2, 'layers': 1, 'nodes': 1, 'batch': 2, 'image': 8, 'channels': 3, 'classes': 10,
                  'depthwise_impl': 'xla'}
METHODS = bilevel_step.METHODS
# pytest node ids, relative to the repository root.
TESTS = ('tests/test_ops.py', 'tests/test_hypergradient.py', 'tests/test_hypergradient_family.py',
         'tests/test_hypergradient_supernet.py', 'tests/test_search_network.py',
         'tests/test_search.py::test_search_step_is_arch_step_then_weight_step_with_the_new_alphas',
         'tests/test_search.py::test_step_compiles_once_and_the_learning_rate_changes_at_epoch_boundaries',
         'tests/test_search.py::test_eval_step_uses_running_statistics_and_ignores_padding')
DRY_RUN_TESTS = ('tests/test_ops.py::test_avg_pool_excludes_padding',)
# Seconds of each part at the default budget (scaled with --budget-s), in the order they run: the measurements
# first, the tests last (they take what the measurements left).
PART_SHARES_S = {'probe': 20, **{f'method:{m}': s for m, s in zip(METHODS, (35, 45, 45, 60, 40, 40))},
                 'forward_backward:darts_jax': 30, 'forward_backward:pytorch': 25, 'search': 40, 'tests': 75}
DEFAULT_BUDGET_S = 480
_MIN_PART_S = 3  # a part given less is skipped: not even the interpreter would start
_REPO_ROOT = Path(__file__).resolve().parents[1]
_SYNTHETIC_DATA = 'synthetic: a fixed uniform-random pattern per class at half contrast under Gaussian noise (std 64)'


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m darts_jax.cli.bench --suite accelerator', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', metavar='DIR', help='where accelerator_check.json and accelerator_check.md go')
  parser.add_argument('--dry-run', action='store_true', help='tiny sizes on any backend (automatic on CPU)')
  parser.add_argument('--budget-s', type=float, default=DEFAULT_BUDGET_S,
                      help='seconds for the whole check; each part gets its share of them')
  parser.add_argument('--steps', type=int, help='timed steps per program (default 10, dry run 1)')
  parser.add_argument('--warmup', type=int, help='untimed steps after compiling (default 2, dry run 0)')
  parser.add_argument('--search-steps', type=int, help='steps of the short search (default 50, dry run 3)')
  parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS), metavar='METHOD',
                      help=f"the hypergradient methods to time (default: all of {', '.join(METHODS)})")
  parser.add_argument('--search-mode', choices=METHODS, default='fd',
                      help="the short search's hypergradient (default: the original's second order)")
  parser.add_argument('--tests', nargs='*', metavar='NODE_ID',
                      help='pytest node ids to run instead of the default list (none: skip the tests)')
  parser.add_argument('--worker', choices=sorted(_WORKERS), help=argparse.SUPPRESS)  # one part, in its process
  parser.add_argument('--config', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker is None and args.out is None:
    parser.error('--out DIR is required')
  return args


# Workers: each runs in its own process and returns one JSON-able dict.

def _probe(config: dict) -> dict:
  """The backend, the device and the PyTorch beside it."""
  del config
  device = jax.devices()[0]
  result = {'backend': jax.default_backend(), 'device': device.device_kind, 'device_count': jax.device_count(),
            'jax': jax.__version__, 'python': sys.version.split()[0], 'torch': None, 'torch_cuda': False}
  try:
    import torch  # optional: only the forward+backward comparison needs it
  except ImportError:
    return result
  result.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available())
  return result


def synthetic_batches(key: jax.Array, count: int, batch: int, image_shape: tuple[int, int, int],
                      classes: int) -> tuple[jax.Array, jax.Array]:
  """``count`` batches of uint8 images (count, batch, H, W, C) and int32 labels (count, batch): each class a fixed
  uniform-random pattern at half contrast under Gaussian noise, so that a search has something to learn."""
  pattern_key, label_key, noise_key = jax.random.split(key, 3)
  patterns = jax.random.uniform(pattern_key, (classes,) + tuple(image_shape), maxval=255.)
  labels = jax.random.randint(label_key, (count, batch), 0, classes)
  noise = 64. * jax.random.normal(noise_key, (count, batch) + tuple(image_shape))
  images = jnp.clip(64. + 0.5 * patterns[labels] + noise, 0., 255.).astype(jnp.uint8)
  return images, labels.astype(jnp.int32)


def _short_search(config: dict) -> dict:
  """``search_steps`` search steps of `bench_step.build`'s step on fresh synthetic batches; losses and the genotype."""
  args = bench_step.parse_args(_bench_flags(config) + ['--mode', config['mode']])
  step, state, init_s = bench_step.build(args)
  count = config['search_steps']
  images, labels = synthetic_batches(jax.random.key(args.seed), 2 * count, args.batch,
                                     (args.image, args.image, args.channels), args.classes)
  batches = [(images[i], labels[i]) for i in range(2 * count)]  # sliced before the loop: nothing between its steps
  start = time.perf_counter()
  compiled = step.lower(state, batches[0], batches[1]).compile()
  compile_s = time.perf_counter() - start
  metrics = []
  start = time.perf_counter()
  for t in range(count):
    state, step_metrics = compiled(state, batches[2 * t], batches[2 * t + 1])
    metrics.append(step_metrics)
  jax.block_until_ready((state, metrics))
  search_s = time.perf_counter() - start
  metrics = jax.device_get(metrics)
  losses = np.array([m['loss'] for m in metrics])
  head = max(1, count // 5)  # the first and last fifth, so that one noisy batch does not decide
  genotype = derive_genotype(jax.device_get(state.alphas), steps=args.nodes, multiplier=args.nodes)
  return {'mode': args.mode, 'steps': count, 'data': _SYNTHETIC_DATA, 'init_s': init_s, 'compile_s': compile_s,
          'search_s': search_s, 'mean_step_s': search_s / count, 'images_per_s': count * args.batch / search_s,
          'loss_first': float(losses[:head].mean()), 'loss_last': float(losses[-head:].mean()),
          'accuracy_last': float(np.mean([m['accuracy'] for m in metrics[-head:]])),
          'finite': bool(all(m['finite'] for m in metrics)), 'genotype': repr(genotype)}


def _torch_forward_backward(config: dict) -> dict:
  """One forward+backward of the original's supernet (`torch_reference.SearchNetwork`), timed like the
  ``forward_backward`` mode of `darts_jax.cli.bench`: the gradient of the training loss w.r.t. weights and alphas."""
  import torch  # optional dependency, imported only in this part's process

  from darts_jax import torch_reference
  device = torch.device(config['device'])
  torch.backends.cudnn.benchmark = True  # as the original's train_search.py
  torch.manual_seed(0)
  net = torch_reference.SearchNetwork(config['C'], config['classes'], config['layers'], steps=config['nodes'],
                                      multiplier=config['nodes'], in_channels=config['channels']).to(device).train()
  edges = sum(2 + i for i in range(config['nodes']))
  alphas = [(1e-3 * torch.randn(edges, len(torch_reference.PRIMITIVES), device=device)).requires_grad_()
            for _ in range(2)]
  images = torch.randn(config['batch'], config['channels'], config['image'], config['image'], device=device)
  labels = torch.randint(0, config['classes'], (config['batch'],), device=device)
  synchronize = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

  def step():
    net.zero_grad(set_to_none=True)
    for alpha in alphas:
      alpha.grad = None
    loss = torch.nn.functional.cross_entropy(net(images, *alphas), labels)
    loss.backward()
    synchronize()
    return loss

  for _ in range(config['warmup']):
    step()
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats(device)
  times = []
  for _ in range(config['steps']):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  times.sort()
  median = times[len(times) // 2]
  result = {'impl': 'pytorch', 'mode': 'forward_backward', 'median_step_s': median, 'min_step_s': times[0],
            'images_per_s': config['batch'] / median, 'finite': bool(torch.isfinite(loss)),
            'params': sum(p.numel() for p in net.parameters()), 'torch': torch.__version__,
            'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}
  if device.type == 'cuda':
    result['peak_mem_gb'] = torch.cuda.max_memory_allocated(device) / 2**30
  return result


_WORKERS = {'probe': _probe, 'search': _short_search, 'torch_forward_backward': _torch_forward_backward}


# The check: parts in processes under a budget.

class _Budget:
  """A deadline for the whole check, and each part's share of it plus what earlier parts left unused."""

  def __init__(self, total_s: float):
    self.scale = total_s / DEFAULT_BUDGET_S
    self.deadline = time.monotonic() + total_s
    self.banked_s = 0.

  def allot(self, part: str) -> float:
    return min(self.scale * PART_SHARES_S[part] + self.banked_s, self.deadline - time.monotonic())

  def settle(self, part: str, used_s: float) -> None:
    self.banked_s = max(0., self.banked_s + self.scale * PART_SHARES_S[part] - used_s)


def _run_process(command: list[str], timeout_s: float, env: dict[str, str]) -> dict:
  """Runs ``command`` in the repository root, in a process group of its own (killed whole at the timeout).
  Returns status ('ok', 'failed' or 'timed_out'), wall_s, budget_s, returncode, stdout and stderr."""
  start = time.monotonic()
  process = subprocess.Popen(command, cwd=_REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
  try:
    stdout, stderr = process.communicate(timeout=timeout_s)
    status = 'ok' if process.returncode == 0 else 'failed'
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = process.communicate()
    status = 'timed_out'
  return {'status': status, 'wall_s': time.monotonic() - start, 'budget_s': timeout_s,
          'returncode': process.returncode, 'stdout': stdout, 'stderr': stderr}


def _part(budget: _Budget, part: str, command: list[str], env: dict[str, str],
          json_result: bool = True) -> tuple[dict, str]:
  """Runs one part's process within its allotment; returns its record (with `json_result`, its last stdout line,
  a JSON object, as 'result' when it succeeded) and its whole stdout."""
  timeout_s = budget.allot(part)
  if timeout_s < _MIN_PART_S:
    return {'status': 'skipped', 'reason': 'the total budget (--budget-s) was spent'}, ''
  run = _run_process(command, timeout_s, env)
  budget.settle(part, run['wall_s'])
  record = {key: run[key] for key in ('status', 'wall_s', 'budget_s')}
  if run['status'] == 'ok' and json_result:
    try:
      record['result'] = json.loads(run['stdout'].strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
      record.update(status='failed', reason='no JSON line on stdout')
  elif run['status'] == 'timed_out':
    record['reason'] = f"stopped after its budget of {timeout_s:.0f} s"
  elif run['status'] == 'failed':
    record['reason'] = f"exit status {run['returncode']}"
  if record['status'] != 'ok':
    record['stderr_tail'] = run['stderr'][-2000:]
  return record, run['stdout']


def _bench_flags(config: dict) -> list[str]:
  return [str(a) for key in ('C', 'layers', 'nodes', 'batch', 'image', 'channels', 'classes', 'depthwise_impl')
          for a in (f"--{key.replace('_', '-')}", config[key])]


def _worker_command(worker: str, config: dict) -> list[str]:
  return [sys.executable, '-m', 'darts_jax.cli.bench_accelerator', '--worker', worker, '--config', json.dumps(config)]


_TEST_OUTCOME = re.compile(r'^(tests/\S.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b', re.M)
_COLLECTION_ERROR = re.compile(r'^ERROR (tests/\S+)', re.M)
_SUMMARY = re.compile(r'^=+ (.*\d+ \w+.*) in [\d.]+s', re.M)


def _run_tests(budget: _Budget, node_ids: tuple[str, ...], env: dict[str, str]) -> dict:
  """pytest on ``node_ids`` in one process (no xdist: one device); outcome counts and what failed, also when
  stopped at its budget (then counted from the per-test lines printed so far)."""
  if not node_ids:
    return {'status': 'skipped', 'reason': 'no tests selected (--tests with no node ids)'}
  if not (_REPO_ROOT / 'tests').is_dir():
    return {'status': 'skipped', 'reason': f'{_REPO_ROOT / "tests"} is not there: the tests come with a checkout of '
                                           'the repository, not with the installed package'}
  command = [sys.executable, '-m', 'pytest', '-o', 'addopts=', '-m', 'not slow', '-v', '-p', 'no:cacheprovider',
             '--continue-on-collection-errors', *node_ids]
  # The tests start processes of their own: none of them may take most of the device's memory up front.
  record, stdout = _part(budget, 'tests', command, dict(env, XLA_PYTHON_CLIENT_PREALLOCATE='false'),
                         json_result=False)
  record['node_ids'] = list(node_ids)
  outcomes = _TEST_OUTCOME.findall(stdout)
  counts = {name: sum(outcome == name.upper() for _, outcome in outcomes) for name in ('passed', 'failed', 'skipped')}
  counts['errors'] = sum(outcome == 'ERROR' for _, outcome in outcomes)
  summary = _SUMMARY.findall(stdout)
  if summary:  # pytest's own counts, collection errors included
    found = {kind.rstrip('s'): int(n) for n, kind in re.findall(r'(\d+) (\w+)', summary[-1])}
    counts = {name: found.get(name.rstrip('s'), 0) for name in ('passed', 'failed', 'skipped')}
    counts['errors'] = found.get('error', 0)
    record['summary'] = summary[-1]
  record.update(counts)
  failures = [node for node, outcome in outcomes if outcome in ('FAILED', 'ERROR')]
  record['failures'] = list(dict.fromkeys(failures + _COLLECTION_ERROR.findall(stdout)))
  return record


def run_check(args: argparse.Namespace) -> dict:
  """All parts in order under one budget; returns the report."""
  start = time.monotonic()
  budget = _Budget(args.budget_s)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get('PYTHONPATH')])),
             PYTHONUNBUFFERED='1')
  with tempfile.TemporaryDirectory(prefix='darts_jax_accelerator_check_') as cache:
    # One compilation cache for the parts, fresh each check (so compile times are cold), unless one is set.
    env.setdefault('JAX_COMPILATION_CACHE_DIR', cache)
    report = _run_parts(args, budget, env)
  report['wall_s'] = time.monotonic() - start
  return report


def _run_parts(args: argparse.Namespace, budget: _Budget, env: dict[str, str]) -> dict:
  report = {'suite': 'accelerator', 'budget_s': args.budget_s, 'parts': {}}
  probe, _ = _part(budget, 'probe', _worker_command('probe', {}), dict(env, XLA_PYTHON_CLIENT_PREALLOCATE='false'))
  report['environment'] = probe.get('result')
  if probe['status'] != 'ok':
    report['parts']['probe'] = probe
    return report
  dry_run = args.dry_run or probe['result']['backend'] == 'cpu'
  config = dict(DRY_RUN_CONFIG if dry_run else PAPER_CONFIG)
  steps = args.steps if args.steps is not None else (1 if dry_run else 10)
  warmup = args.warmup if args.warmup is not None else (0 if dry_run else 2)
  report.update(dry_run=dry_run, config=config, steps=steps, warmup=warmup)
  if dry_run:
    report['dry_run_reason'] = '--dry-run' if args.dry_run else 'the backend is cpu'

  def bench_command(mode):
    return [sys.executable, '-m', 'darts_jax.cli.bench', *_bench_flags(config), '--mode', mode, '--steps', str(steps),
            '--warmup', str(warmup)]

  methods = {method: _part(budget, f'method:{method}', bench_command(method), env)[0] for method in args.methods}
  report['parts']['hypergradients'] = {'status': _overall(methods.values()), 'methods': methods}

  ours, _ = _part(budget, 'forward_backward:darts_jax', bench_command('forward_backward'), env)
  torch_device = 'cpu' if dry_run else 'cuda'
  if probe['result']['torch'] is None:
    original = {'status': 'skipped', 'reason': "PyTorch is not installed (pip install -e '.[torch]')"}
  elif torch_device == 'cuda' and not probe['result']['torch_cuda']:
    original = {'status': 'skipped', 'reason': 'PyTorch sees no CUDA device'}
  else:
    # At least one untimed step: PyTorch picks its convolution algorithms in the first (cudnn.benchmark).
    torch_config = dict(config, steps=steps, warmup=max(warmup, 1), device=torch_device)
    original, _ = _part(budget, 'forward_backward:pytorch', _worker_command('torch_forward_backward', torch_config),
                        env)
  forward_backward = {'status': _overall([ours, original]), 'darts_jax': ours, 'pytorch': original}
  if ours['status'] == original['status'] == 'ok':
    forward_backward['darts_jax_over_pytorch'] = ours['result']['median_step_s'] / original['result']['median_step_s']
  report['parts']['forward_backward'] = forward_backward

  search_steps = args.search_steps if args.search_steps is not None else (3 if dry_run else 50)
  search_config = dict(config, mode=args.search_mode, search_steps=search_steps)
  report['parts']['search'] = _part(budget, 'search', _worker_command('search', search_config), env)[0]

  node_ids = tuple(args.tests) if args.tests is not None else (DRY_RUN_TESTS if dry_run else TESTS)
  report['parts']['tests'] = _run_tests(budget, node_ids, env)
  return report


def _overall(records) -> str:
  """'ok' when every record is ok or skipped, else the first other status ('failed' before 'timed_out')."""
  statuses = {record['status'] for record in records}
  return next((status for status in ('failed', 'timed_out') if status in statuses), 'ok')


def _number(value, digits: int = 3) -> str:
  return '' if value is None else f'{value:.{digits}g}'


def _status(record: dict) -> str:
  return record['status'] + (f" ({record['reason']})" if record['status'] != 'ok' and 'reason' in record else '')


def markdown(report: dict) -> str:
  """The report as tables."""
  environment = report.get('environment') or {}
  lines = ['# Accelerator check', '']
  if report.get('dry_run'):
    lines += [f"**Dry run** ({report['dry_run_reason']}): tiny sizes, a check of the check, not a measurement.", '']
  lines += [f"Device: {environment.get('device', '?')} ({environment.get('backend', '?')}), jax "
            f"{environment.get('jax', '?')}, PyTorch {environment.get('torch') or 'absent'}. "
            f"Config: {json.dumps(report.get('config'))}; each program timed over {report.get('steps')} step(s) "
            f"after {report.get('warmup')} untimed. Wall time {_number(report.get('wall_s'))} s of a "
            f"{_number(report['budget_s'])} s budget.", '']
  parts = report['parts']
  if 'probe' in parts:
    return '\n'.join(lines + [f"The probe of the backend did not finish: {_status(parts['probe'])}", ''])

  lines += ['## Hypergradient methods: the search step', '',
            '| method | status | step (s) | images/s | compile (s) | XLA temp (MB) | XLA arguments (MB) | '
            'device peak (GB) |', '|---|---|---|---|---|---|---|---|']
  for method, record in parts['hypergradients']['methods'].items():
    result = record.get('result', {})
    lines.append(f"| {method} | {_status(record)} | {_number(result.get('median_step_s'))} | "
                 f"{_number(result.get('images_per_s'))} | {_number(result.get('compile_s'))} | "
                 f"{_number(result.get('temp_mb'))} | {_number(result.get('argument_mb'))} | "
                 f"{_number(result.get('peak_mem_gb'))} |")

  forward_backward = parts['forward_backward']
  lines += ['', '## Forward+backward against the PyTorch original', '',
            '| impl | device | status | step (s) | images/s | compile (s) | device peak (GB) |',
            '|---|---|---|---|---|---|---|']
  for impl in ('darts_jax', 'pytorch'):
    record = forward_backward[impl]
    result = record.get('result', {})
    lines.append(f"| {impl} | {result.get('device', '')} | {_status(record)} | {_number(result.get('median_step_s'))} "
                 f"| {_number(result.get('images_per_s'))} | {_number(result.get('compile_s'))} | "
                 f"{_number(result.get('peak_mem_gb'))} |")
  if 'darts_jax_over_pytorch' in forward_backward:
    lines += ['', f"darts_jax / PyTorch step time: {forward_backward['darts_jax_over_pytorch']:.2f}"]

  search = parts['search']
  result = search.get('result', {})
  lines += ['', '## Short search', '', f"Status: {_status(search)}."]
  if result:
    lines += [f"{result['steps']} steps of `{result['mode']}` on {result['data']}.", '',
              '| compile (s) | step (s) | images/s | loss, first fifth | loss, last fifth | accuracy, last fifth | '
              'finite |', '|---|---|---|---|---|---|---|',
              f"| {_number(result['compile_s'])} | {_number(result['mean_step_s'])} | "
              f"{_number(result['images_per_s'])} | {_number(result['loss_first'])} | {_number(result['loss_last'])} | "
              f"{_number(result['accuracy_last'])} | {result['finite']} |", '', f"Genotype: `{result['genotype']}`"]

  tests = parts['tests']
  lines += ['', '## Tests', '', f"Status: {_status(tests)}."]
  if 'passed' in tests:
    lines += ['', '| passed | failed | skipped | errors | wall (s) |', '|---|---|---|---|---|',
              f"| {tests['passed']} | {tests['failed']} | {tests['skipped']} | {tests['errors']} | "
              f"{_number(tests['wall_s'])} |"]
    lines += [f'- failed: `{node}`' for node in tests['failures']]
  return '\n'.join(lines) + '\n'


def _failed_parts(report: dict) -> list[str]:
  parts = report['parts']
  failed = [name for name, record in parts.items() if record['status'] == 'failed']
  if 'hypergradients' in parts:
    failed += [f'method {m}' for m, r in parts['hypergradients']['methods'].items() if r['status'] == 'failed']
  return failed


def main(argv: list[str] | None = None) -> None:
  args = _parse_args(argv)
  if args.worker:
    print(json.dumps(_WORKERS[args.worker](json.loads(args.config or '{}'))))
    return
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  report = run_check(args)
  (out / 'accelerator_check.json').write_text(json.dumps(report, indent=1) + '\n')
  (out / 'accelerator_check.md').write_text(markdown(report))
  print(f"wrote {out / 'accelerator_check.json'} and {out / 'accelerator_check.md'} in {report['wall_s']:.0f} s"
        + (' (dry run)' if report.get('dry_run') else ''))
  failed = _failed_parts(report)
  if failed:
    sys.exit(f"accelerator check: failed: {', '.join(failed)} (details in {out / 'accelerator_check.md'})")


if __name__ == '__main__':
  main()
