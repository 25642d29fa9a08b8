"""What the recurrent space's search and retraining share: the language-model config checks, the epochs' BPTT
lengths and perplexity."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from darts_jax.bilevel.hypergradient import clip_coefficient
from darts_jax.data import text


def check_lm_config(config: ml_collections.ConfigDict) -> None:
  """The checks of a language-model config shared by the search and the retraining (one line each)."""
  if config.data.name not in text.TEXT_DATASETS:
    raise ValueError(f'Unknown data.name {config.data.name!r} for the recurrent space; expected one of '
                     f'{", ".join(text.TEXT_DATASETS)}.')
  for key in ('bptt', 'eval_batch_size', 'test_batch_size', 'model.emsize', 'model.nhid'):
    value = config[key] if '.' not in key else config.model[key.split('.')[1]]
    if value < 1:
      raise ValueError(f'{key} ({value}) must be positive.')
  if config.model.emsize != config.model.nhid:
    raise ValueError(f'model.emsize ({config.model.emsize}) must equal model.nhid ({config.model.nhid}): the decoder '
                     'is tied to the embedding.')
  for key in ('dropout', 'dropouth', 'dropoutx', 'dropouti', 'dropoute'):
    if not 0.0 <= config.model[key] < 1.0:
      raise ValueError(f'model.{key} ({config.model[key]}) must be in [0, 1).')


def epoch_lengths(config: ml_collections.ConfigDict, stream_length: int, epoch: int, seed: int | None = None
                  ) -> list[int]:
  """The epoch's BPTT lengths (`text.bptt_lengths`) for `seed` (default ``config.seed``), at most
  ``max_steps_per_epoch`` of them (if > 0)."""
  lengths = text.bptt_lengths(stream_length, config.bptt, seed=config.seed if seed is None else seed, epoch=epoch,
                              jitter=config.bptt_jitter, max_delta=config.max_seq_len_delta)
  return lengths[:config.max_steps_per_epoch] if config.max_steps_per_epoch > 0 else lengths


def perplexity(loss: float) -> float:
  """``exp(loss)``, capped where float64 overflows."""
  return float(np.exp(min(loss, 700.0)))  # exp overflows float64 past ~709


def device_rows(global_rows: jax.Array, rows: int, axis_name: Any) -> jax.Array:
  """This device's `rows` rows of an array over the global batch (all of it without `axis_name`)."""
  if axis_name is None:
    return global_rows
  return jax.lax.dynamic_slice_in_dim(global_rows, jax.lax.axis_index(axis_name) * rows, rows)


def gather_rows(rows: jax.Array, axis_name: Any) -> jax.Array:
  """The global batch's rows from every device's (`device_rows`'s inverse)."""
  return rows if axis_name is None else jax.lax.all_gather(rows, axis_name, tiled=True)


def step_key(rng: jax.Array, step: jax.Array, axis_name: Any) -> jax.Array:
  """The dropout key of a step on this device."""
  key = jax.random.fold_in(rng, step)
  return key if axis_name is None else jax.random.fold_in(key, jax.lax.axis_index(axis_name))


def masked_accuracy(log_probs: jax.Array, targets: jax.Array, length: jax.Array) -> jax.Array:
  """Next-word accuracy over the first `length` time steps."""
  valid = jnp.arange(targets.shape[1])[None, :] < length
  return jnp.sum((jnp.argmax(log_probs, -1) == targets) * valid) / (targets.shape[0] * length)


def sgd_step(params: Any, grads: Any, lr: jax.Array, *, grad_clip: float, weight_decay: float) -> Any:
  """The recurrent original's weight update: ``w − lr·(c·g + λw)``, ``c`` PyTorch's ``clip_grad_norm`` coefficient."""
  c = clip_coefficient(grads, grad_clip)
  return jax.tree.map(lambda w, g: w - lr * (c * g + weight_decay * w), params, grads)
