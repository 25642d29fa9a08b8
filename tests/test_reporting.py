"""Tests for darts_jax.training.reporting."""

import io
import json
import struct
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from darts_jax.training import reporting


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def _write_steps(workdir, steps, **kwargs):
  with reporting.MetricsWriter(workdir, tensorboard=False, **kwargs) as w:
    for s in steps:
      w.write(s, {'loss': 1.0 / s})


def test_metrics_jsonl_records_are_python_numbers(tmp_path):
  with reporting.MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write(10, {'epoch': np.int64(0), 'loss': jnp.float32(0.5),
                 'acc': np.array(0.25), 'lr': 0.025})
    # Flushed at each write: readable while the writer is still open.
    assert _lines(tmp_path / 'metrics.jsonl') == [
        {'step': 10, 'epoch': 0, 'loss': 0.5, 'acc': 0.25, 'lr': 0.025}]
    w.write(20, {'epoch': 1, 'loss': 0.25})
  records = reporting.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records] == [10, 20]
  assert type(records[0]['epoch']) is int
  assert type(records[0]['loss']) is float


def test_metrics_reject_non_scalars_and_step_key(tmp_path):
  with reporting.MetricsWriter(tmp_path, tensorboard=False) as w:
    with pytest.raises(ValueError, match='scalar'):
      w.write(1, {'loss': np.zeros(3)})
    with pytest.raises(ValueError, match='reserved'):
      w.write(1, {'step': 3})


def test_reopening_without_resume_step_appends(tmp_path):
  _write_steps(tmp_path, [1, 2])
  _write_steps(tmp_path, [3])
  assert [r['step'] for r in _lines(tmp_path / 'metrics.jsonl')] == [1, 2, 3]


def test_resume_drops_records_after_resume_step(tmp_path):
  _write_steps(tmp_path, [1, 2, 3, 4])
  _write_steps(tmp_path, [3], resume_step=2)
  records = _lines(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records] == [1, 2, 3]
  assert records[2]['loss'] == pytest.approx(1.0 / 3)


def test_truncated_last_line_is_skipped(tmp_path):
  _write_steps(tmp_path, [1, 2])
  path = tmp_path / 'metrics.jsonl'
  with open(path, 'a') as f:
    f.write('{"step": 3, "lo')  # A write killed half-way.
  assert [r['step'] for r in reporting.read_jsonl(path)] == [1, 2]
  _write_steps(tmp_path, [3])
  assert [r['step'] for r in _lines(path)] == [1, 2, 3]


def test_complete_last_line_without_newline_is_kept(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}')
  _write_steps(tmp_path, [3])
  assert [r['step'] for r in _lines(path)] == [1, 2, 3]


def test_malformed_line_in_the_middle_raises(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
  with pytest.raises(ValueError, match='metrics.jsonl:2'):
    reporting.read_jsonl(path)


def _tensorboard_events(workdir):
  """Events of the TFRecord files in workdir/tensorboard.

  A record is: uint64 length, uint32 crc, `length` bytes of data, uint32 crc.
  """
  events = []
  for path in sorted((workdir / 'tensorboard').glob('events.out.tfevents*')):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (length,) = struct.unpack('<Q', data[i:i + 8])
      events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
      i += 12 + length + 4
  return events


def test_tensorboard_event_file_is_written(tmp_path):
  with reporting.MetricsWriter(tmp_path) as w:
    w.write(1, {'epoch': 0, 'loss': 0.5})
  files = list((tmp_path / 'tensorboard').glob('events.out.tfevents*'))
  assert len(files) == 1 and files[0].stat().st_size > 0
  scalars = {(e.step, v.tag): v.simple_value
             for e in _tensorboard_events(tmp_path) for v in e.summary.value}
  assert scalars == {(1, 'epoch'): 0.0, (1, 'loss'): 0.5}


def test_resume_purges_later_tensorboard_steps(tmp_path):
  with reporting.MetricsWriter(tmp_path, resume_step=2) as w:
    w.write(3, {'loss': 0.5})
  # TensorBoard hides the events of steps >= the step of a SessionLog START.
  starts = [e.step for e in _tensorboard_events(tmp_path)
            if e.HasField('session_log')
            and e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [3]


def test_write_json_is_atomic_and_converts_numpy(tmp_path):
  path = tmp_path / 'results.json'
  path.write_text('old')
  reporting.write_json(path, {'acc': np.float32(0.5), 'w': jnp.arange(2)})
  assert json.loads(path.read_text()) == {'acc': 0.5, 'w': [0, 1]}
  assert [p.name for p in tmp_path.iterdir()] == ['results.json']
  with pytest.raises(TypeError, match='not JSON serializable'):
    reporting.write_json(path, {'x': object()})
  assert json.loads(path.read_text()) == {'acc': 0.5, 'w': [0, 1]}


def test_append_jsonl(tmp_path):
  path = tmp_path / 'log.jsonl'
  reporting.append_jsonl(path, {'a': 1})
  reporting.append_jsonl(path, {'a': np.int32(2)})
  assert _lines(path) == [{'a': 1}, {'a': 2}]


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_is_silent_when_stderr_is_not_a_tty(monkeypatch):
  stderr = io.StringIO()
  monkeypatch.setattr(sys, 'stderr', stderr)
  with reporting.progress_bar(100, 'train') as bar:
    assert bar.disable
    bar.update(32)
    bar.set_postfix(loss=0.5)
  assert stderr.getvalue() == ''


def test_progress_bar_shows_rate_on_a_tty(monkeypatch):
  stderr = _Terminal()
  monkeypatch.setattr(sys, 'stderr', stderr)
  with reporting.progress_bar(100, 'train') as bar:
    assert not bar.disable
    bar.update(64)
  assert 'train' in stderr.getvalue()
  assert 'img/s' in stderr.getvalue()


def test_progress_bar_enabled_overrides_tty_detection(monkeypatch):
  monkeypatch.setattr(sys, 'stderr', _Terminal())
  with reporting.progress_bar(10, 'eval', enabled=False) as bar:
    assert bar.disable
  monkeypatch.setattr(sys, 'stderr', io.StringIO())
  with reporting.progress_bar(10, 'eval', enabled=True) as bar:
    assert not bar.disable
