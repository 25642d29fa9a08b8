"""Tests for darts_jax.training.checkpointing."""

import gc
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax.training.checkpointing import Checkpointer


@jax.jit  # One compilation instead of one per eager op keeps the tests fast.
def _make_arrays(seed):
  """The arrays of a search run's state: nested params, two optax states."""
  k = jax.random.split(jax.random.key(seed), 3)
  params = {
      'stem': {'conv': {'kernel': jax.random.normal(k[0], (3, 3, 1, 4))},
               'bn': {'scale': jnp.ones(4), 'bias': jnp.zeros(4)}},
      'head': {'kernel': jax.random.normal(k[1], (4, 10)),
               'bias': jnp.zeros(10)},
  }
  alphas = {'normal': jax.random.normal(k[2], (14, 8)) * 1e-3,
            'reduce': jnp.zeros((14, 8))}
  w_tx = optax.chain(optax.clip_by_global_norm(5.0),
                     optax.add_decayed_weights(3e-4),
                     optax.sgd(0.025, momentum=0.9))
  a_tx = optax.adam(3e-4, b1=0.5, b2=0.999)
  w_opt, a_opt = w_tx.init(params), a_tx.init(alphas)
  # One update so that momentum buffers, adam moments and counts are non-zero.
  grads_w = jax.tree.map(jnp.ones_like, params)
  grads_a = jax.tree.map(jnp.ones_like, alphas)
  _, w_opt = w_tx.update(grads_w, w_opt, params)
  _, a_opt = a_tx.update(grads_a, a_opt, alphas)
  return {
      'params': params,
      'batch_stats': {'stem': {'bn': {'mean': jnp.full(4, 0.5),
                                      'var': jnp.full(4, 2.0)}}},
      'alphas': alphas,
      'w_opt_state': w_opt,
      'alpha_opt_state': a_opt,
      'rng': jax.random.key(seed),
  }


def _make_state(seed: int):
  return {**_make_arrays(seed), 'step': seed * 100 + 7}


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jnp.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
      assert jax.random.key_impl(x) == jax.random.key_impl(y)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save_steps(directory: Path, steps, **kwargs) -> None:
  with Checkpointer(directory, **kwargs) as ckpt:
    for s in steps:
      assert ckpt.save(s, _make_state(s), {'epoch': s, 'step_in_epoch': 0})


def _restore(directory: Path):
  with Checkpointer(directory) as ckpt:
    return ckpt.restore_latest(_make_state(0))


def test_round_trip_gives_identical_state_and_structure(tmp_path):
  state = _make_state(1)
  meta = {'epoch': 3, 'step_in_epoch': 12, 'data_seed': 5}
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(107, state, meta)
  # A fresh Checkpointer, as after a restart, with a different target state.
  step, restored, restored_meta = _restore(tmp_path)
  assert step == 107
  assert restored_meta == meta
  _assert_same(restored, state)
  assert isinstance(restored['w_opt_state'][2][0], optax.TraceState)
  assert isinstance(restored['alpha_opt_state'][0], optax.ScaleByAdamState)
  assert isinstance(restored['step'], int)
  # The restored key generates the same numbers as the saved one.
  np.testing.assert_array_equal(jax.random.uniform(restored['rng'], (3,)),
                                jax.random.uniform(state['rng'], (3,)))


def test_restore_into_abstract_target(tmp_path):
  _save_steps(tmp_path, [1])
  target = {**jax.eval_shape(_make_arrays, 0), 'step': 0}
  with Checkpointer(tmp_path) as ckpt:
    # A key's implementation cannot be read from its abstract value.
    with pytest.raises(TypeError, match='abstract PRNG key'):
      ckpt.restore_latest(target)
    target['rng'] = jax.random.key(0)
    _, state, _ = ckpt.restore_latest(target)
  _assert_same(state, _make_state(1))


def test_empty_directory_restores_none(tmp_path):
  assert _restore(tmp_path / 'checkpoints') is None


def test_max_to_keep_keeps_the_newest(tmp_path):
  _save_steps(tmp_path, [1, 2, 3, 4], max_to_keep=2)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['3', '4']
  assert _restore(tmp_path)[0] == 4


def test_saving_an_existing_step_is_skipped(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(5, _make_state(5), {'epoch': 1})
    assert not ckpt.save(5, _make_state(6), {'epoch': 2})
  step, state, meta = _restore(tmp_path)
  assert (step, meta) == (5, {'epoch': 1})
  _assert_same(state, _make_state(5))


def _truncate_files(step_dir: Path) -> None:
  files = [p for p in step_dir.rglob('*') if p.is_file()]
  assert files
  for p in files:
    os.truncate(p, p.stat().st_size // 2)


def _delete_state_files(step_dir: Path) -> None:
  files = [p for p in (step_dir / 'state').rglob('*') if p.is_file()]
  assert files
  for p in files:
    p.unlink()


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # as test_mismatched_target_raises
@pytest.mark.parametrize('damage', [_truncate_files, _delete_state_files])
def test_damaged_latest_falls_back_to_previous(tmp_path, caplog, damage):
  _save_steps(tmp_path, [1, 2])
  damage(tmp_path / '2')
  with caplog.at_level(logging.WARNING):
    step, state, meta = _restore(tmp_path)
  assert step == 1 and meta['epoch'] == 1
  _assert_same(state, _make_state(1))
  assert any('cannot be restored' in r.getMessage() for r in caplog.records)
  # The damaged checkpoint is gone, so the resumed run can save step 2 again.
  assert not (tmp_path / '2').exists()
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(2, _make_state(2), {'epoch': 2})
  assert _restore(tmp_path)[0] == 2
  gc.collect()


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # as test_mismatched_target_raises
def test_all_damaged_raises_instead_of_starting_afresh(tmp_path):
  _save_steps(tmp_path, [1, 2])
  _truncate_files(tmp_path / '1')
  _truncate_files(tmp_path / '2')
  with pytest.raises(ValueError, match='None of the checkpoints'):
    _restore(tmp_path)
  gc.collect()


# orbax abandons the reads of the other arrays when one fails; their
# coroutines report the failure when garbage collected.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_mismatched_target_raises(tmp_path):
  _save_steps(tmp_path, [1])
  target = _make_state(0)
  target['params']['head']['kernel'] = jnp.zeros((4, 11))
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match='configuration matches'):
      ckpt.restore_latest(target)
  gc.collect()  # Collect the abandoned coroutines within this test.
  assert (tmp_path / '1').exists()


def test_leftover_temporary_directory_is_ignored(tmp_path):
  _save_steps(tmp_path, [1])
  # What a save of step 2 killed before its atomic rename leaves behind: a
  # temporary directory (orbax's naming) with part of the files.
  tmp_dir = tmp_path / '2.orbax-checkpoint-tmp-1700000000000000'
  (tmp_dir / 'state').mkdir(parents=True)
  (tmp_dir / 'state' / 'manifest.ocdbt').write_bytes(b'\x00' * 10)
  step, _, _ = _restore(tmp_path)
  assert step == 1
  assert not tmp_dir.exists()


# The damaged checkpoint's abandoned reads report when garbage collected (see test_mismatched_target_raises).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_read_only_leaves_a_run_in_progress_alone(tmp_path):
  _save_steps(tmp_path, [1, 2])
  # A writer's save of step 3 in progress, and a damaged step 2: a reader must not touch either.
  tmp_dir = tmp_path / '3.orbax-checkpoint-tmp-1700000000000000'
  (tmp_dir / 'state').mkdir(parents=True)
  _truncate_files(tmp_path / '2')
  with Checkpointer(tmp_path, read_only=True) as ckpt:
    step, state, _ = ckpt.restore_latest(_make_state(0))
    with pytest.raises(PermissionError, match='read-only'):
      ckpt.save(4, _make_state(4), {})
  assert step == 1
  _assert_same(state, _make_state(1))
  assert tmp_dir.exists() and (tmp_path / '2').exists()
  with Checkpointer(tmp_path / 'missing', read_only=True) as ckpt:
    assert ckpt.restore_latest(_make_state(0)) is None
  assert not (tmp_path / 'missing').exists()
  gc.collect()  # Collect the abandoned coroutines within this test.


def test_time_based_saving(tmp_path):
  now = [1000.0]
  with Checkpointer(tmp_path, save_interval_minutes=10,
                    clock=lambda: now[0]) as ckpt:
    assert not ckpt.should_save_by_time()
    now[0] += 599.0
    assert not ckpt.should_save_by_time()
    now[0] += 1.0
    assert ckpt.should_save_by_time()
    assert ckpt.save(1, _make_state(1), {})
    # The interval restarts at each save.
    assert not ckpt.should_save_by_time()
    now[0] += 600.0
    assert ckpt.should_save_by_time()


def test_time_based_saving_disabled(tmp_path):
  now = [0.0]
  with Checkpointer(tmp_path, clock=lambda: now[0]) as ckpt:
    now[0] += 1e9
    assert not ckpt.should_save_by_time()


@pytest.mark.parametrize('kwargs', [{'max_to_keep': 0},
                                    {'save_interval_minutes': 0}])
def test_invalid_arguments(tmp_path, kwargs):
  with pytest.raises(ValueError):
    Checkpointer(tmp_path, **kwargs)
