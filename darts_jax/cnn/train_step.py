"""The discrete network's training state and its jittable steps (the original ``train.py``'s inner loop): the loss
with the auxiliary head and label smoothing, drop path as a traced argument, and the masked evaluation sums.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from darts_jax.cnn import ops
from darts_jax.cnn.networks import AUXILIARY, NetworkCIFAR, NetworkImageNet, eval_rngs
from darts_jax.data.augment import Preprocess, make_cutout

PyTree = Any
Batch = tuple[jax.Array, jax.Array]  # (uint8 images (N, H, W, C), int32 labels (N,))
EvalBatch = tuple[jax.Array, jax.Array, jax.Array]  # (images, labels, float mask: 1 for real examples)
Metrics = dict[str, jax.Array]
Network = NetworkCIFAR | NetworkImageNet
_NOISE_STREAM = 3  # the noise op's key, a fold_in of the step's key: its split into the other three keys stays as is

TRAINED_WHEN_FROZEN = ('classifier', AUXILIARY)
"""Top-level parameters that train while ``freeze_epochs`` holds the others (the stem and the cells)."""


class TrainState(flax.struct.PyTreeNode):
  """Everything a training step reads and writes; a pytree (checkpointable as is).

  Attributes:
    step: int32 scalar, the number of steps taken.
    params: network weights (incl. the auxiliary head's).
    batch_stats: BN running statistics.
    opt_state: state of `tx`.
    rng: base PRNG key of the random draws; step ``t`` uses ``fold_in(rng, t)``.
    tx: the optimizer (static).
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_train_state(rng: jax.Array, model: Network, image_shape: tuple[int, int, int],
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises the weights (PyTorch's default init), BN statistics and optimizer state.

  Args:
    rng: PRNG key, split into the initialisation key and the base key of the steps' random draws.
    model: the network.
    image_shape: (H, W, C) of one input image.
    tx: e.g. `training.optimizers.weight_optimizer`.
  """
  params_key, step_key = jax.random.split(rng)
  params_key = ops.init_key(params_key)  # compiles fast: one fused kernel per parameter tensor
  variables = jax.jit(model.init, static_argnames='train')(
      params_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params), rng=step_key, tx=tx)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy of `logits` against integer `labels`, against ``(1 - ε) onehot + ε / K`` with
  `label_smoothing` ε > 0."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def make_train_step(model: Network, schedule: optax.Schedule, preprocess: Preprocess, *, cutout: int,
                    auxiliary_weight: float, label_smoothing: float = 0.0
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Builds ``train_step(state, batch, drop_path_prob) -> (state, metrics)``.

  The step prepares the uint8 batch on device with `preprocess` (`darts_jax.data.make_preprocess`: augmentation,
  resizing, normalisation) and cutout of side `cutout` if > 0 (`make_cutout`), computes
  ``CE(logits) + auxiliary_weight · CE(logits_aux)`` in training mode with drop path ``drop_path_prob`` (a traced
  scalar) and a fresh key per step for RobustDARTS's ``noise`` op, and applies ``state.tx``. With `label_smoothing`
  ε > 0 both cross-entropies are against the smoothed targets ``(1 - ε) onehot + ε / K`` (the original's
  ``CrossEntropyLabelSmooth`` on ImageNet). Jit it, or pmap it with ``axis_name=model.axis_name`` and
  ``in_axes=(0, 0, None)`` (and `preprocess` built with the same axis name): BN statistics and gradients are then
  global, random draws per example, and the step equals a single-device step on the global batch.

  Returns:
    The step function. ``metrics`` (equal on all devices): ``loss``, ``accuracy`` (of the main logits),
    ``grad_norm`` (before clipping), ``lr``, and ``finite``: whether the loss, the gradient norm and the new
    parameters are all finite.
  """
  axis_name = model.axis_name
  apply_cutout = make_cutout(cutout, axis_name) if cutout else None

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def train_step(state: TrainState, batch: Batch, drop_path_prob: jax.Array) -> tuple[TrainState, Metrics]:
    images, labels = batch
    step_key = jax.random.fold_in(state.rng, state.step)
    augment_key, cutout_key, dropout_key = jax.random.split(step_key, 3)
    noise_key = jax.random.fold_in(step_key, _NOISE_STREAM)
    x = preprocess(augment_key, images)
    if apply_cutout is not None:
      x = apply_cutout(cutout_key, x)

    def loss_fn(params):
      (logits, logits_aux), updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x, train=True, drop_path_prob=drop_path_prob,
          rngs={'dropout': dropout_key, 'noise': noise_key}, mutable=['batch_stats'])
      loss = cross_entropy(logits, labels, label_smoothing)
      if logits_aux is not None:
        loss += auxiliary_weight * cross_entropy(logits_aux, labels, label_smoothing)
      return loss, (logits, updates['batch_stats'])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = pmean(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = pmean({'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)})
    metrics.update(grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    metrics['finite'] = jnp.all(jnp.stack(
        [jnp.isfinite(metrics['loss']), jnp.isfinite(metrics['grad_norm'])]
        + [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: Network, preprocess: Preprocess, top5: bool = False
                   ) -> Callable[[TrainState, EvalBatch], Metrics]:
  """Builds ``eval_step(state, (images, labels, mask)) -> sums``: the network in evaluation mode (BN with running
  statistics, no drop path, no auxiliary head, the ``noise`` op's fixed key `networks.eval_rngs`) on uint8 images
  prepared by `preprocess` (built without augmentation). ``mask`` (1 for real examples, 0 for padding) lets the
  last batch be padded. Returns ``loss_sum``, ``correct``, ``count`` and with `top5` ``correct_top5`` (label among
  the 5 largest logits), summed over devices under ``pmap``."""
  axis_name = model.axis_name

  def eval_step(state: TrainState, batch: EvalBatch) -> Metrics:
    images, labels, mask = batch
    logits, _ = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                            preprocess(None, images), train=False, rngs=eval_rngs())
    sums = {
        'loss_sum': jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask),
        'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        'count': jnp.sum(mask),
    }
    if top5:
      top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
      sums['correct_top5'] = jnp.sum(jnp.any(top == labels[:, None], axis=-1) * mask)
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)

  return eval_step
