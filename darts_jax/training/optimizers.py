"""The network weights' optimizers and learning-rate schedules, shared by the search and retraining (the original
uses the same SGD recipe for both), and the retraining's: its schedule choice and freezing (`create_optimizer`) and
the recurrent space's NT-ASGD (`asgd_average`, `nt_asgd_update`)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import ml_collections
import numpy as np
import optax
from absl import logging

from darts_jax.bilevel.hypergradient import clip_coefficient


def _quotient(count: jax.Array, divisor: int) -> jax.Array:
  """``count // divisor`` for a step count ``>= 0``, where truncating division is floor division. XLA copies a
  schedule's scalar arithmetic into each of the hundreds of per-parameter update kernels that read the learning
  rate, and ``//`` (floor division of signed integers) would add ~10 instructions to each."""
  count = jnp.asarray(count)
  return lax.div(count, jnp.asarray(divisor, count.dtype))


def epoch_cosine_schedule(lr_max: float, lr_min: float, num_epochs: int, steps_per_epoch: int) -> optax.Schedule:
  r"""Cosine annealing stepped once per epoch, as PyTorch's ``CosineAnnealingLR`` in the original.

  .. math:: \eta(t) = \eta_{min} + \tfrac12 (\eta_{max} - \eta_{min}) (1 + \cos(\pi e / E)),
     \quad e = \lfloor t / S \rfloor,

  for step ``t``, ``S`` steps per epoch and ``E`` epochs: constant within an epoch, ``lr_max`` in the first and
  ``lr_min + (lr_max - lr_min)(1 + cos(pi (E-1)/E))/2`` in the last.
  """
  if steps_per_epoch <= 0 or num_epochs <= 0:
    raise ValueError(f'steps_per_epoch ({steps_per_epoch}) and num_epochs ({num_epochs}) must be positive.')

  def schedule(count: jax.Array) -> jax.Array:
    epoch = _quotient(count, steps_per_epoch).astype(jnp.float32)
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + jnp.cos(jnp.pi * epoch / num_epochs))

  return schedule


def epoch_step_schedule(lr_init: float, gamma: float, decay_epochs: int, steps_per_epoch: int) -> optax.Schedule:
  r"""Step decay once every `decay_epochs` epochs, as PyTorch's ``StepLR(period, gamma)`` in the original's
  ``train_imagenet.py`` (0.1, ×0.97 every epoch).

  .. math:: \eta(t) = \eta_0 \, \gamma^{\lfloor e / P \rfloor}, \quad e = \lfloor t / S \rfloor,

  for step ``t``, ``S`` steps per epoch and period ``P``: ``lr_init`` in the first epoch, ``lr_init · gamma`` after
  the first decay.
  """
  if steps_per_epoch <= 0 or decay_epochs <= 0 or gamma <= 0:
    raise ValueError(f'steps_per_epoch ({steps_per_epoch}), decay_epochs ({decay_epochs}) and gamma ({gamma}) must be '
                     'positive.')
  log_gamma = math.log(gamma)  # in float64: gamma ** 249 in float32 would be off by 249 roundings of gamma (7e-6)

  def schedule(count: jax.Array) -> jax.Array:
    decays = _quotient(count, steps_per_epoch * decay_epochs).astype(jnp.float32)
    return lr_init * jnp.exp(decays * log_gamma)

  return schedule


def weight_optimizer(learning_rate: optax.ScalarOrSchedule, *, momentum: float = 0.9, weight_decay: float = 3e-4,
                     grad_clip: float = 5.0) -> optax.GradientTransformation:
  """The network weights' optimizer: the original's ``clip_grad_norm`` then ``SGD(momentum, weight_decay)``.

  Raw gradients are clipped to global norm `grad_clip`, then ``weight_decay·w`` is added (coupled L2, as PyTorch's
  SGD) and heavy-ball momentum applied. The momentum trace therefore equals PyTorch's ``momentum_buffer``, which the
  second-order virtual step reads (`bilevel.step.momentum_buffer`).
  """
  return optax.chain(
      optax.clip_by_global_norm(grad_clip),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum),
  )


def arch_optimizer(learning_rate: optax.ScalarOrSchedule = 3e-4, *, b1: float = 0.5, b2: float = 0.999,
                   weight_decay: float = 1e-3) -> optax.GradientTransformation:
  """The architecture optimizer: ``Adam(lr, betas=(b1, b2), weight_decay)`` as in PyTorch (decay added first)."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate, b1=b1, b2=b2))


def clip_by_global_norm_as_pytorch(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping as PyTorch's ``clip_grad_norm``: ``g · min(1, max_norm / (‖g‖₂ + 1e-6))`` (the 1e-6 makes
  it differ from `optax.clip_by_global_norm` near the threshold; the recurrent original clips so)."""
  def update(updates, state, params=None):
    del params
    c = clip_coefficient(updates, max_norm)
    return jax.tree.map(lambda g: c * g, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_step_learning_rate() -> optax.GradientTransformationExtraArgs:
  """``-learning_rate · u`` with the learning rate passed to ``update(..., learning_rate=eta)``: for a learning
  rate that depends on the batch (the recurrent search scales it with the sequence length), not on a step count."""
  def update(updates, state, params=None, *, learning_rate, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda u: -learning_rate * u, updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def clipped_sgd(*, weight_decay: float, grad_clip: float) -> optax.GradientTransformationExtraArgs:
  """The recurrent original's weight update ``w − η(c·g + λw)`` (no momentum; ``c`` the PyTorch clip coefficient),
  ``η`` passed to ``update(..., learning_rate=eta)``."""
  return optax.chain(clip_by_global_norm_as_pytorch(grad_clip), optax.add_decayed_weights(weight_decay),
                     scale_by_step_learning_rate())


# ---------------------------------------------------------------------------------------------------------------------
# Retraining.


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, trained_when_frozen: Sequence[str] = ()
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The retraining's optimizer of `config` (`weight_optimizer`) and its learning-rate schedule: cosine per epoch,
  or with ``lr_schedule='step'`` decayed by ``lr_decay`` every ``lr_decay_epochs`` epochs (ImageNet).

  With ``freeze_epochs`` = N > 0, the gradients and updates of every top-level parameter but `trained_when_frozen`
  (for the CNN: the stem and cells) are zeroed (an `optax.masked` scale by 0) for the first ``N · steps_per_epoch``
  steps: zeroing the gradients keeps them out of the global-norm clipping and the momentum, zeroing the updates
  keeps weight decay from moving frozen weights.
  """
  kind = config.get('lr_schedule', 'cosine')
  if kind == 'step':
    schedule = epoch_step_schedule(config.learning_rate, config.lr_decay, config.lr_decay_epochs, steps_per_epoch)
  elif kind == 'cosine':
    schedule = epoch_cosine_schedule(config.learning_rate, config.learning_rate_min, config.num_epochs,
                                     steps_per_epoch)
  else:
    raise ValueError(f"lr_schedule must be 'cosine' or 'step', got {kind!r}.")
  tx = weight_optimizer(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                        grad_clip=config.grad_clip)
  frozen_steps = config.get('freeze_epochs', 0) * steps_per_epoch
  if frozen_steps:
    def frozen(params):
      return {name: jax.tree.map(lambda _, name=name: name not in trained_when_frozen, subtree)
              for name, subtree in params.items()}

    freeze = lambda: optax.masked(optax.scale_by_schedule(lambda count: (count >= frozen_steps).astype(jnp.float32)),
                                  frozen)
    tx = optax.chain(freeze(), tx, freeze())
  return tx, schedule


def asgd_average(average: jax.Array, iterate: jax.Array, k: jax.Array) -> jax.Array:
  """PyTorch ASGD's (``t0=0, lambd=0``) running mean after its `k`-th step: ``ax + mu·(w − ax)`` with
  ``mu = 1 / max(1, k − 1)``, so ``ax`` is the `k`-th iterate for ``k <= 2`` and then the mean of iterates
  ``2..k`` (PyTorch updates ``mu`` after using it)."""
  mu = 1.0 / jnp.maximum(1, k - 1).astype(jnp.float32)
  return average + mu * (iterate - average)


def nt_asgd_update(state: Any, valid_loss: float, nonmono: int) -> Any:
  """NT-ASGD's (non-monotonically triggered averaged SGD, AWD-LSTM) end-of-epoch bookkeeping on the host, as the
  recurrent original's ``train.py``: keep the evaluated weights if they are the best so far; before the switch,
  switch to averaging when `valid_loss` is worse than the best loss of the evaluations more than `nonmono` epochs
  back, and record it.

  Args:
    state: a retraining state with ``params``, ``averaging``, ``averaged_steps``, ``avg_params``, ``best_params``,
      ``best_valid_loss``, ``valid_history``, ``history_length`` and ``evaluated_params()`` (e.g. the recurrent
      space's `RNNTrainState`).
    valid_loss: the validation loss of ``state.evaluated_params()``.
    nonmono: how many epochs back the comparison reaches.
  """
  evaluated = state.evaluated_params()
  if valid_loss < float(state.best_valid_loss):
    state = state.replace(best_params=evaluated, best_valid_loss=np.asarray(valid_loss, np.float32))
  if bool(state.averaging):
    return state
  count = int(state.history_length)
  history = np.asarray(state.valid_history)
  if count > nonmono and valid_loss > history[:count - nonmono].min():
    logging.info('Validation loss %.4f is worse than %d epochs ago: switching to averaged SGD.', valid_loss, nonmono)
    state = state.replace(averaging=np.asarray(True), averaged_steps=np.asarray(0, np.int32),
                          avg_params=jax.tree.map(np.array, state.params))
  history = history.copy()
  history[count] = valid_loss
  return state.replace(valid_history=history, history_length=np.asarray(count + 1, np.int32))
