"""The search's dynamics end to end on `TinySupernet` (tests/test_search.py): per-epoch diagnostics in the logs,
early stopping through `search.search` (and its resume), the plots and the compare CLI on real (tiny) workdirs."""
import json

import numpy as np
import pytest
from test_search import tiny_config, tiny_supernet  # noqa: F401 (an autouse fixture: these runs use TinySupernet)

from darts_jax.cli import compare as compare_cli
from darts_jax import dynamics
from darts_jax.cli import plots as plots_cli
from darts_jax.cnn import genotype_formats, genotypes
from darts_jax.analysis import compare, plots, run_files
from darts_jax.dynamics import early_stopping
from darts_jax.tasks import search
from darts_jax.training import reporting

DIAGNOSTICS = ('alpha_entropy_normal', 'alpha_entropy_reduce', 'alpha_max_weight_normal', 'alpha_max_weight_reduce',
               'stability_normal', 'stability_reduce', 'unchanged_epochs', 'skip_connect_normal',
               'hessian_eigenvalue', 'alpha_grad_norm')


def dynamics_config(data_dir, **overrides):
  # First order and a large arch learning rate: a cheap step whose genotypes move.
  return tiny_config(data_dir, hypergradient='first_order', arch_learning_rate=0.05, checkpoint_every_minutes=0.0,
                     **{'diagnostics.hessian_batches': 2, 'diagnostics.hessian_iterations': 4, **overrides})


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
  """Two finished tiny searches: 3 epochs without early stopping, and one stopped by DARTS-ES."""
  root = tmp_path_factory.mktemp('dynamics')
  full = search.search(dynamics_config(data_dir, num_epochs=3), root / 'full')
  # factor 0, window 1 from epoch 1: DARTS-ES stops after epoch 2 if the eigenvalues are positive.
  stopped_config = dynamics_config(data_dir, num_epochs=3, **{'early_stopping.rule': 'darts_es',
                                                             'early_stopping.window': 1, 'early_stopping.factor': 0.0,
                                                             'early_stopping.start_epoch': 1})
  stopped = search.search(stopped_config, root / 'stopped')
  return root, full, stopped, stopped_config


def _epochs(workdir):
  return run_files.read_epoch_records(workdir)


def test_every_epoch_logs_the_diagnostics_and_the_alphas(runs):
  root, full, _, _ = runs
  records = _epochs(root / 'full')
  assert [r['epoch'] for r in records] == [1, 2, 3]
  for r in records:
    assert set(DIAGNOSTICS) <= r.keys()
    assert 1 / 8 < r['alpha_max_weight_normal'] <= 1 and 0 <= r['stability_reduce'] <= 1
    assert np.isfinite(r['hessian_eigenvalue']) and r['alpha_grad_norm'] > 0
  # The stability and unchanged-epoch counts agree with the logged genotypes.
  logged = [genotype_formats.genotype_from_json(json.dumps(r['genotype']))
            for r in reporting.read_jsonl(root / 'full' / 'genotypes.jsonl')]
  for i in range(1, 3):
    stability = dynamics.genotype_stability(logged[i - 1], logged[i])
    assert [records[i]['stability_normal'], records[i]['stability_reduce']] == [stability['normal'],
                                                                                stability['reduce']]
    assert (records[i]['unchanged_epochs'] > 0) == dynamics.same_architecture(logged[i - 1], logged[i])
  log = run_files.read_alphas_log(root / 'full')
  assert [r['epoch'] for r in log] == [1, 2, 3]
  np.testing.assert_array_equal(log[-1]['alphas']['normal'], full.alphas['normal'])  # float32 through JSON exactly
  for name in ('convergence.png', 'alphas.png', 'alphas_evolution.png'):
    assert (root / 'full' / name).read_bytes().startswith(b'\x89PNG'), name
  assert not (root / 'full' / 'early_stop.json').exists()


def test_darts_es_stops_and_keeps_the_architecture_from_window_epochs_before(runs, data_dir):
  root, _, stopped, config = runs
  workdir = root / 'stopped'
  records = _epochs(workdir)
  eigenvalues = [r['hessian_eigenvalue'] for r in records]
  assert eigenvalues[0] > 0 and eigenvalues[1] > 0  # what makes factor 0 stop at the first chance
  assert [r['epoch'] for r in records] == [1, 2] and int(stopped.step) == 12
  stop = json.loads((workdir / 'early_stop.json').read_text())
  assert stop['rule'] == 'darts_es' and stop['stop_epoch'] == 2 and stop['kept_epoch'] == 1 and stop['step'] == 12
  assert stop['reason'] == early_stopping.stop_reason(records, **config.early_stopping)
  kept = run_files.read_alphas_log(workdir)[0]['alphas']
  final = np.load(workdir / 'alphas.npz')
  np.testing.assert_array_equal(final['normal'], kept['normal'])
  assert genotype_formats.genotype_from_json((workdir / 'genotype.json').read_text()) == genotypes.derive_genotype(kept)
  # Running it again does not train on: the stop is part of the last checkpoint.
  again = search.search(config, workdir)
  assert int(again.step) == 12 and [r['epoch'] for r in _epochs(workdir)] == [1, 2]
  assert json.loads((workdir / 'early_stop.json').read_text()) == stop


def test_darts_es_without_the_eigenvalue_is_a_config_error(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r'darts_es needs the Hessian eigenvalue'):
    search.search(dynamics_config(data_dir, **{'early_stopping.rule': 'darts_es',
                                               'diagnostics.hessian_iterations': 0}), tmp_path)
  with pytest.raises(ValueError, match=r"Unknown early_stopping.rule 'darts'"):
    search.search(dynamics_config(data_dir, **{'early_stopping.rule': 'darts'}), tmp_path)
  assert not (tmp_path / 'config.json').exists()


def test_plots_cli_redraws_a_workdir(runs, capsys):
  root, _, _, _ = runs
  for name in ('convergence.png', 'alphas.png', 'alphas_evolution.png'):
    (root / 'stopped' / name).unlink()
  plots_cli.main(['--workdir', str(root / 'stopped')])
  assert len(capsys.readouterr().out.splitlines()) == 3
  assert (root / 'stopped' / 'alphas.png').read_bytes().startswith(b'\x89PNG')


def test_compare_cli_prints_one_row_per_run_and_writes_the_overlay(runs, capsys, tmp_path):
  root, _, _, _ = runs
  compare_cli.main([str(root / 'full'), str(root / 'stopped'), '--out', str(tmp_path / 'overlay.png'),
                    '--pareto_out', str(tmp_path / 'pareto.png')])
  header, full, stopped, overlay, rank_header, *ranked, legend = capsys.readouterr().out.splitlines()
  assert header.split() == list(compare.COLUMNS)
  assert rank_header.split() == list(compare.RANK_COLUMNS) and len(ranked) == 2 and 'Pareto' in legend
  assert (tmp_path / 'pareto.png').read_bytes().startswith(b'\x89PNG')
  assert full.split()[:3] == ['full', 'first_order', 'lr_a=0.05'] and '3/3' in full
  assert 'es=darts_es' in stopped and '2/3' in stopped and 'darts_es@2->1' in stopped
  assert overlay == f'overlay: {tmp_path / "overlay.png"}'
  assert (tmp_path / 'overlay.png').read_bytes().startswith(b'\x89PNG')


@pytest.mark.parametrize('make, message', [
    (lambda tmp: tmp, 'is not a search workdir'),
    (lambda tmp: tmp / 'missing', 'is not a directory'),
])
def test_compare_and_plots_refuse_a_directory_that_is_not_a_search(tmp_path, make, message):
  for main, argv in ((compare_cli.main, [str(make(tmp_path)), '--out', str(tmp_path / 'o.png')]),
                     (plots_cli.main, ['--workdir', str(make(tmp_path))])):
    with pytest.raises(SystemExit, match=message) as exit_info:
      main(argv)
    assert str(exit_info.value).count('\n') == 0


def test_column_labels_follow_the_spaces_ops():
  """The heatmaps' columns are named by the space's ops where every edge has the same ones (RobustDARTS's S2/S3,
  uniform P-DARTS op sets), by position where edges differ (S1), and DARTS's by default."""
  assert plots.column_labels({'model': {'search_space': 'darts', 'steps': 4}}, 8) == list(genotypes.PRIMITIVES)
  assert plots.column_labels({'model': {'search_space': 's3', 'steps': 4}}, 3) == ['none', 'skip_connect',
                                                                                   'sep_conv_3x3']
  assert plots.column_labels({'model': {'search_space': 's1', 'steps': 4}}, 2) == ['op 0', 'op 1']
  uniform = json.dumps({kind: [['skip_connect', 'max_pool_3x3']] * 14 for kind in ('normal', 'reduce')})
  assert plots.column_labels({'model': {'edge_ops': uniform, 'steps': 4}}, 2) == ['skip_connect', 'max_pool_3x3']
