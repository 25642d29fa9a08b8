"""The early-stopping rules (darts_jax.dynamics.early_stopping) on synthetic per-epoch metric histories; the end-to-end
stop through `search.search` is in test_search_dynamics.py, the loop's stop hook here on the toy task."""
import pytest
from test_loop import STEPS_PER_EPOCH, toy_config, toy_task

from darts_jax.dynamics import early_stopping
from darts_jax.training import loop, reporting

SETTINGS = dict(window=2, factor=1.3, start_epoch=5, max_skip=2, patience=3)


def _records(**series):
  length = len(next(iter(series.values())))
  return [{'epoch': i + 1, **{k: v[i] for k, v in series.items()}} for i in range(length)]


def _stop_epoch(rule, **series):
  """The first epoch after which `rule` stops, given the whole history (None: it never does)."""
  records = _records(**series)
  return next((i for i in range(1, len(records) + 1)
               if early_stopping.stop_reason(records[:i], rule=rule, **SETTINGS)), None)


def test_darts_es_compares_the_mean_eigenvalue_of_the_last_window_with_the_window_before():
  # Windows of 2: epochs 5-6 average 1.5 > 1.3 x 1.0, the mean of 3-4; no earlier pair of windows grew 30%.
  eigenvalues = [1.0, 1.0, 1.0, 1.0, 1.4, 1.6, 3.0]
  assert _stop_epoch('darts_es', hessian_eigenvalue=eigenvalues) == 6
  reason = early_stopping.stop_reason(_records(hessian_eigenvalue=eigenvalues[:6]), rule='darts_es', **SETTINGS)
  assert reason == ('darts_es: the mean Hessian eigenvalue of epochs 5-6 (1.5) exceeds 1.3 x that of epochs 3-4 (1)')
  assert early_stopping.kept_epoch('darts_es', 6, window=2) == 4


def test_darts_es_waits_for_start_epoch_and_two_windows():
  # A 10x jump at epoch 2 would stop at once without start_epoch; growth of exactly the factor does not stop.
  assert _stop_epoch('darts_es', hessian_eigenvalue=[1.0, 10.0, 10.0, 10.0, 10.0, 13.0, 13.0]) is None
  assert early_stopping.darts_es([1.0, 5.0], window=2, factor=1.3, start_epoch=1) is None  # one window only
  assert early_stopping.darts_es([1.0, 5.0], window=1, factor=1.3, start_epoch=1) is not None


def test_darts_plus_stops_at_max_skip_connections_in_the_normal_cell():
  assert _stop_epoch('darts_plus', skip_connect_normal=[0, 1, 1, 2, 3]) == 4
  assert _stop_epoch('darts_plus', skip_connect_normal=[0, 1, 1, 1]) is None
  assert early_stopping.kept_epoch('darts_plus', 4, window=2) == 4


def test_stability_stops_after_patience_epochs_without_a_change():
  assert _stop_epoch('stability', unchanged_epochs=[0, 1, 0, 1, 2, 3, 4]) == 6
  assert _stop_epoch('stability', unchanged_epochs=[0, 1, 2, 0, 1, 2]) is None
  assert 'not changed for 3 epochs (patience 3)' in early_stopping.stability([0, 1, 2, 3], patience=3)


def test_rule_none_never_stops_and_unknown_rules_are_errors():
  assert _stop_epoch('none', hessian_eigenvalue=[1.0, 100.0] * 5) is None
  with pytest.raises(ValueError, match="Unknown early_stopping.rule 'es'"):
    early_stopping.stop_reason([], rule='es')


def test_the_loop_stops_after_the_epoch_should_stop_names_and_stays_stopped(tmp_path):
  config = toy_config(num_epochs=4)
  calls = []

  def should_stop(epoch, step, state, record):
    calls.append(epoch)
    return 'enough' if epoch == 1 else None

  task = toy_task(config)
  task = loop.Task(**{**task.__dict__, 'should_stop': should_stop})
  outcome = loop.train(task, config, loop.prepare_workdir(tmp_path, config))
  assert outcome.stop_reason == 'enough' and outcome.step == 2 * STEPS_PER_EPOCH and calls == [0, 1]
  assert [r['epoch'] for r in reporting.read_jsonl(tmp_path / 'metrics.jsonl') if 'epoch' in r] == [1, 2]
  again = loop.train(task, config, loop.prepare_workdir(tmp_path, config))
  assert again.stop_reason == 'enough' and again.step == outcome.step and calls == [0, 1]
  assert again.record['epoch'] == 2
