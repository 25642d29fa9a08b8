"""`python -m darts_jax.cli.bench` runs end to end and reports what docs/results.md quotes."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from darts_jax.cli import bench, bench_accelerator
from darts_jax.bilevel import step as bilevel_step


def test_bench_reports_one_json_line(capsys):
  bench.main(['--C', '2', '--layers', '1', '--nodes', '1', '--batch', '4', '--image', '8', '--channels', '1',
              '--mode', 'forward_backward', '--steps', '2', '--warmup', '1'])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result['finite'] and result['mode'] == 'forward_backward'
  assert result['params'] > 0 and result['compile_s'] > 0
  assert result['images_per_s'] == 4 / result['median_step_s']


# Slow (a profiled run of the step in a process of its own): `pytest -m slow`; the bench's JSON line is checked above.
@pytest.mark.slow
def test_profile_reports_kernel_time_by_operation(tmp_path):
  # A subprocess: XLA:CPU's per-kernel trace events need a flag read when the backend is created.
  command = [sys.executable, '-m', 'darts_jax.cli.bench', '--C', '2', '--layers', '1', '--nodes', '1', '--batch', '4',
             '--image', '8', '--channels', '1', '--mode', 'forward_backward', '--steps', '1', '--warmup', '0',
             '--profile', str(tmp_path)]
  process = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert process.returncode == 0, process.stderr
  profile = json.loads(process.stdout.strip().splitlines()[-1])['kernel_profile']
  parts = {key: value for key, value in profile.items() if key != 'kernel_total_s'}
  # The supernet's backward pass runs the depthwise convolutions' transposes as loops, forward and backward both run.
  assert {'backward: loop: depthwise kernel gradient', 'backward: loop: depthwise/pool input gradient'} <= set(parts)
  assert any(key.startswith('forward: ') for key in parts)
  assert 0 < sum(parts.values()) <= profile['kernel_total_s'] * (1 + 1e-9)


# Slow (~55 s: every part in a process of its own, each compiling): `python -m darts_jax.cli.bench --suite accelerator
# --out DIR` is the same dry run by hand; the budget test below stays in the default run.
@pytest.mark.slow
def test_accelerator_check_dry_run_reports_every_part(tmp_path):
  # As on an accelerator host: `--suite accelerator` in a process of its own, which on CPU shrinks itself to a dry
  # run. A budget well above the default: on a loaded machine a part must not be stopped before it reports.
  # Two methods of six keep the test's compile time down; the default is every method (checked below).
  assert bench_accelerator._parse_args(['--out', str(tmp_path)]).methods == list(bilevel_step.METHODS)
  methods = ['first_order', 'exact']
  command = [sys.executable, '-m', 'darts_jax.cli.bench', '--suite', 'accelerator', '--out', str(tmp_path),
             '--budget-s', '1800', '--methods', *methods]
  process = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                           timeout=1800, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert process.returncode == 0, process.stderr
  report = json.loads((tmp_path / 'accelerator_check.json').read_text())
  assert report['dry_run'] and report['dry_run_reason'] == 'the backend is cpu'
  assert report['config'] == bench_accelerator.DRY_RUN_CONFIG and report['environment']['backend'] == 'cpu'
  assert 0 < report['wall_s'] < report['budget_s']

  records = report['parts']['hypergradients']['methods']
  assert list(records) == methods
  for method, record in records.items():
    result = record['result']
    assert record['status'] == 'ok' and result['mode'] == method and result['finite']
    assert min(result[key] for key in ('median_step_s', 'images_per_s', 'compile_s', 'temp_mb', 'argument_mb')) > 0
    assert result['depthwise_impl'] == 'xla'

  forward_backward = report['parts']['forward_backward']
  ours = forward_backward['darts_jax']['result']
  assert ours['mode'] == 'forward_backward' and ours['median_step_s'] > 0 and ours['compile_s'] > 0
  if importlib.util.find_spec('torch') is None:
    assert forward_backward['pytorch']['status'] == 'skipped'
  else:
    original = forward_backward['pytorch']['result']
    assert original['finite'] and original['median_step_s'] > 0 and original['device'] == 'cpu'
    assert original['params'] == ours['params']  # both sides time the same supernet
    assert forward_backward['darts_jax_over_pytorch'] == ours['median_step_s'] / original['median_step_s']

  search = report['parts']['search']['result']
  assert search['steps'] == 3 and search['mode'] == 'fd' and search['finite']
  assert min(search['mean_step_s'], search['loss_first'], search['loss_last']) > 0
  assert search['genotype'].startswith('Genotype(normal=[')

  tests = report['parts']['tests']
  assert tests['status'] == 'ok' and tests['node_ids'] == list(bench_accelerator.DRY_RUN_TESTS)
  assert (tests['passed'], tests['failed'], tests['errors']) == (1, 0, 0)

  table = (tmp_path / 'accelerator_check.md').read_text()
  assert '**Dry run** (the backend is cpu)' in table
  for heading in ('## Hypergradient methods', '## Forward+backward against the PyTorch original', '## Short search',
                  '## Tests'):
    assert heading in table
  for method in methods:
    assert f'| {method} | ok | ' in table


def test_a_part_that_outlasts_its_budget_is_stopped_and_recorded():
  start = time.monotonic()
  run = bench_accelerator._run_process([sys.executable, '-c', 'import time; time.sleep(60)'], 0.5, dict(os.environ))
  assert run['status'] == 'timed_out' and run['budget_s'] == 0.5
  assert time.monotonic() - start < 30
