"""The network weights' optimizer and learning-rate schedule, shared by the search and retraining (the original
uses the same SGD recipe for both)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


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
    epoch = (jnp.asarray(count) // steps_per_epoch).astype(jnp.float32)
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
    decays = (jnp.asarray(count) // (steps_per_epoch * decay_epochs)).astype(jnp.float32)
    return lr_init * jnp.exp(decays * log_gamma)

  return schedule


def weight_optimizer(learning_rate: optax.ScalarOrSchedule, *, momentum: float = 0.9, weight_decay: float = 3e-4,
                     grad_clip: float = 5.0) -> optax.GradientTransformation:
  """The network weights' optimizer: the original's ``clip_grad_norm`` then ``SGD(momentum, weight_decay)``.

  Raw gradients are clipped to global norm `grad_clip`, then ``weight_decay·w`` is added (coupled L2, as PyTorch's
  SGD) and heavy-ball momentum applied. The momentum trace therefore equals PyTorch's ``momentum_buffer``, which the
  second-order virtual step reads (`bilevel.search_step.momentum_buffer`).
  """
  return optax.chain(
      optax.clip_by_global_norm(grad_clip),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum),
  )
