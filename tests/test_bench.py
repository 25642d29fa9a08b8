"""`python -m darts_jax.bench` runs end to end and reports what docs/benchmarks.md quotes."""
import json
import os
import subprocess
import sys
from pathlib import Path

from darts_jax import bench


def test_bench_reports_one_json_line(capsys):
  bench.main(['--C', '2', '--layers', '1', '--nodes', '1', '--batch', '4', '--image', '8', '--channels', '1',
              '--mode', 'forward_backward', '--steps', '2', '--warmup', '1'])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result['finite'] and result['mode'] == 'forward_backward'
  assert result['params'] > 0 and result['compile_s'] > 0
  assert result['images_per_s'] == 4 / result['median_step_s']


def test_profile_reports_kernel_time_by_operation(tmp_path):
  # A subprocess: XLA:CPU's per-kernel trace events need a flag read when the backend is created.
  command = [sys.executable, '-m', 'darts_jax.bench', '--C', '2', '--layers', '1', '--nodes', '1', '--batch', '4',
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
