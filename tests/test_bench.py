"""`python -m darts_jax.bench` runs end to end and reports what docs/benchmarks.md quotes."""
import json

from darts_jax import bench


def test_bench_reports_one_json_line(capsys):
  bench.main(['--C', '2', '--layers', '1', '--nodes', '1', '--batch', '4', '--image', '8', '--channels', '1',
              '--mode', 'forward_backward', '--steps', '2', '--warmup', '1'])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result['finite'] and result['mode'] == 'forward_backward'
  assert result['params'] > 0 and result['compile_s'] > 0
  assert result['images_per_s'] == 4 / result['median_step_s']
