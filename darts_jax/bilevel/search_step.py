"""The DARTS search step: state, optimizers, and the jittable search and evaluation steps.

One search step (the original `train_search.py`'s inner loop, `Architect.step` then the weight update) is

1. **architecture step** on a training batch and a validation batch:
   ``alpha <- Adam(alpha, h + 1e-3·alpha)``, with ``h`` the hypergradient of `darts_jax.bilevel.hypergradient`: first
   order, or second order through the one-step virtual update
   ``w' = w - eta·(mu·m + grad_w L_train(w, alpha) + lambda·w)`` with ``eta`` the current learning rate, ``m`` the
   SGD momentum buffer of the weight optimizer, ``mu = 0.9`` and ``lambda = 3e-4`` (or through k such steps, or
   implicitly at the current weights: `HYPERGRADIENT_METHODS`);
2. **weight step** on the *same* training batch with the updated alphas:
   ``w <- SGD_momentum(w, clip_5(grad_w L_train(w, alpha)) + 3e-4·w)``.

(The constants are the paper's, the defaults of `arch_optimizer` and
`training.optimizers.weight_optimizer`.)

Batch normalisation uses batch statistics in every forward pass, as the original's `model.train()`. The losses of
the architecture step (all hypergradient passes) read the running statistics but discard their updates; only the
weight step updates them. The original updates them on every forward pass, including those of the architecture
step; the running statistics only matter for evaluation (`make_eval_step`, the original's `infer` in `model.eval()`
mode), and one update per step keeps their momentum a per-step quantity.

Everything is a pure function of the `SearchState`, so the step can be ``jax.jit``-ed or ``jax.pmap``-ed (with the
network's ``axis_name``) once and run for the whole search: the learning rate is a function of the step counter, so
nothing recompiles between steps or epochs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax.bilevel.hypergradient import hypergradient
from darts_jax.cnn.supernet import SearchNetwork, init_alphas
from darts_jax.data.augment import Preprocess

PyTree = Any
Batch = tuple[jax.Array, jax.Array]  # (uint8 images (N, H, W, C), int32 labels (N,))
Metrics = dict[str, jax.Array]

HYPERGRADIENT_METHODS = {
    'first_order': 'first_order',
    'second_order_fd': 'fd',
    'second_order_exact': 'exact',
    'unrolled': 'unrolled',
    'implicit_cg': 'implicit_cg',
    'implicit_neumann': 'implicit_neumann',
}
"""Config name of each hypergradient variant -> the `method` of `darts_jax.bilevel.hypergradient`."""


def arch_optimizer(learning_rate: float = 3e-4, *, b1: float = 0.5, b2: float = 0.999,
                   weight_decay: float = 1e-3) -> optax.GradientTransformation:
  """The architecture optimizer: ``Adam(lr, betas=(b1, b2), weight_decay)`` as in PyTorch (decay added first)."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate, b1=b1, b2=b2))


def momentum_buffer(weight_opt_state: optax.OptState) -> PyTree:
  """The SGD momentum trace ``m`` inside a `training.optimizers.weight_optimizer` state (PyTorch's
  ``momentum_buffer``)."""
  return optax.tree_utils.tree_get(weight_opt_state, 'trace')


class SearchState(flax.struct.PyTreeNode):
  """Everything a search step reads and writes; a pytree (checkpointable as is).

  Attributes:
    step: int32 scalar, the number of search steps taken.
    params: network weights w.
    batch_stats: BN running statistics (used by evaluation only).
    alphas: architecture parameters ``{'normal': (E, K), 'reduce': (E, K)}``.
    weight_opt_state: state of `weight_tx`.
    arch_opt_state: state of `arch_tx`.
    rng: base PRNG key of the data augmentation; step ``t`` uses ``fold_in(rng, t)``, so a resumed run draws the
      same augmentations as an uninterrupted one.
    weight_tx: the weights' optimizer (static).
    arch_tx: the alphas' optimizer (static).
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  alphas: PyTree
  weight_opt_state: optax.OptState
  arch_opt_state: optax.OptState
  rng: jax.Array
  weight_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  arch_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_search_state(rng: jax.Array, model: SearchNetwork, image_shape: tuple[int, int, int],
                        weight_tx: optax.GradientTransformation,
                        arch_tx: optax.GradientTransformation) -> SearchState:
  """Initialises weights (PyTorch's default init), alphas (``1e-3·N(0, 1)``) and both optimizers.

  Args:
    rng: PRNG key; split into the weights', the alphas' and the augmentation keys.
    model: the supernet.
    image_shape: (H, W, C) of one input image.
    weight_tx: e.g. `training.optimizers.weight_optimizer`.
    arch_tx: e.g. `arch_optimizer`.
  """

  @jax.jit  # One compilation; eager Linen init of the supernet would dispatch thousands of small ops.
  def init(rng):
    params_key, alphas_key, augment_key = jax.random.split(rng, 3)
    alphas = init_alphas(alphas_key, steps=model.steps)
    # Weights are drawn with an 'rbg' key seeded from `params_key`: threefry unrolls its hash once per parameter
    # tensor, which makes the init compile ~4x slower on CPU (29 s vs 8 s for a one-cell supernet).
    params_key = jax.random.key(jax.random.bits(params_key, (), jnp.uint32), impl='rbg')
    variables = model.init(params_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), alphas, train=False)
    params = variables['params']
    return SearchState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'], alphas=alphas,
        weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(alphas), rng=augment_key,
        weight_tx=weight_tx, arch_tx=arch_tx)

  return init(rng)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_search_step(model: SearchNetwork, schedule: optax.Schedule, preprocess: Preprocess, *,
                     hypergradient_method: str, momentum: float = 0.9, weight_decay: float = 3e-4,
                     fd_epsilon: float = 0.01, unroll_steps: int = 1, implicit_iterations: int = 10,
                     implicit_damping: float = 0.0
                     ) -> Callable[[SearchState, Batch, Batch], tuple[SearchState, Metrics]]:
  """Builds ``search_step(state, train_batch, val_batch) -> (state, metrics)`` (see the module docstring).

  Batches are ``(uint8 images (N, H, W, C), int32 labels (N,))``, preprocessed inside the step. Jit it, or pmap it
  with ``axis_name=model.axis_name``: then each device holds a shard of both batches, BN statistics are taken over
  the global batch (by the network), the hypergradient and the weight gradients are averaged over devices, and the
  step equals a single-device step on the global batch.

  Args:
    model: the supernet (any Linen module called as ``model(x, alphas, train)`` with a ``batch_stats`` collection);
      its ``axis_name`` is the pmap axis (None under plain jit).
    schedule: learning rate of the weight optimizer as a function of the step
      (`training.optimizers.epoch_cosine_schedule`); it is also the virtual step's ``eta``.
    preprocess: `make_preprocess`'s function, applied to both batches with keys drawn from ``(state.rng, step)``.
      With CIFAR augmentation, validation batches are augmented too: the original draws them from the training
      set with the training transform.
    hypergradient_method: a key of `HYPERGRADIENT_METHODS`.
    momentum: the weight optimizer's momentum (enters the virtual step).
    weight_decay: the weight optimizer's weight decay (enters the virtual step).
    fd_epsilon: for ``'second_order_fd'``: ``R = fd_epsilon / ||v||``.
    unroll_steps: for ``'unrolled'``: the number of virtual steps, all on the step's training batch.
    implicit_iterations: for ``'implicit_cg'`` / ``'implicit_neumann'``: CG iterations or Neumann terms.
    implicit_damping: for the implicit methods: added to the diagonal of the training Hessian.

  Returns:
    The step function. ``metrics`` (equal on all devices) are the weight step's ``loss`` and ``accuracy``, the
    global norms ``grad_norm`` (weights, before clipping) and ``arch_grad_norm`` (hypergradient), ``lr``, and
    ``finite``: whether the loss, both gradients and the new weights and alphas are all finite.
  """
  if hypergradient_method not in HYPERGRADIENT_METHODS:
    raise ValueError(f'Unknown hypergradient {hypergradient_method!r}; expected one of '
                     f'{", ".join(HYPERGRADIENT_METHODS)}.')
  method = HYPERGRADIENT_METHODS[hypergradient_method]
  axis_name = model.axis_name

  def forward(params, batch_stats, alphas, images):
    return model.apply({'params': params, 'batch_stats': batch_stats}, images, alphas, train=True,
                       mutable=['batch_stats'])

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def search_step(state: SearchState, train_batch: Batch, val_batch: Batch) -> tuple[SearchState, Metrics]:
    train_key, val_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    train_images = preprocess(train_key, train_batch[0])
    val_images = preprocess(val_key, val_batch[0])
    lr = schedule(state.step)

    # Architecture step. The BN-statistics updates of these passes are discarded (see the module docstring).
    def loss_fn(params, alphas, batch):
      images, labels = batch
      logits, _ = forward(params, state.batch_stats, alphas, images)
      return _cross_entropy(logits, labels)

    arch_grads = hypergradient(
        loss_fn, loss_fn, state.params, state.alphas, (train_images, train_batch[1]), (val_images, val_batch[1]),
        eta=lr, method=method, momentum_buffer=momentum_buffer(state.weight_opt_state), momentum=momentum,
        weight_decay=weight_decay, fd_epsilon=fd_epsilon, unroll_steps=unroll_steps,
        implicit_iterations=implicit_iterations, implicit_damping=implicit_damping, axis_name=axis_name)
    arch_updates, arch_opt_state = state.arch_tx.update(arch_grads, state.arch_opt_state, state.alphas)
    alphas = optax.apply_updates(state.alphas, arch_updates)

    # Weight step with the updated alphas; it also advances the BN running statistics.
    def weight_loss(params):
      logits, updates = forward(params, state.batch_stats, alphas, train_images)
      return _cross_entropy(logits, train_batch[1]), (logits, updates['batch_stats'])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(weight_loss, has_aux=True)(state.params)
    grads = pmean(grads)
    updates, weight_opt_state = state.weight_tx.update(grads, state.weight_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    metrics = pmean({
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == train_batch[1]),
    })
    metrics.update(grad_norm=optax.tree.norm(grads), arch_grad_norm=optax.tree.norm(arch_grads), lr=lr)
    metrics['finite'] = jnp.all(jnp.stack(
        [jnp.isfinite(metrics['loss']), jnp.isfinite(metrics['grad_norm']), jnp.isfinite(metrics['arch_grad_norm'])]
        + [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((params, alphas))]))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, alphas=alphas,
                              weight_opt_state=weight_opt_state, arch_opt_state=arch_opt_state)
    return new_state, metrics

  return search_step


def make_eval_step(model: SearchNetwork, preprocess: Preprocess
                   ) -> Callable[[SearchState, tuple[jax.Array, jax.Array, jax.Array]], Metrics]:
  """Builds ``eval_step(state, (images, labels, mask)) -> sums`` for the supernet with the current alphas.

  As the original's ``infer`` (``model.eval()``), BN normalises with the running statistics. Images are uint8,
  prepared by `preprocess` without augmentation (the original's ``infer`` reads the training transform's augmented
  images; an unaugmented measure is the more useful one); ``mask`` (float, 1 for real examples, 0 for padding) lets
  the last batch be padded to the common shape. Returns the (device-summed under pmap) ``loss_sum``, ``correct``
  and ``count``.
  """
  axis_name = model.axis_name

  def eval_step(state: SearchState, batch: tuple[jax.Array, jax.Array, jax.Array]) -> Metrics:
    images, labels, mask = batch
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, preprocess(None, images),
                         state.alphas, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {
        'loss_sum': jnp.sum(losses * mask),
        'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        'count': jnp.sum(mask),
    }
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)

  return eval_step


def alpha_entropy(alphas: Mapping[str, Any]) -> dict[str, float]:
  r"""Mean entropy (nats) of the rows of ``softmax(alpha)`` per cell type: :math:`-\frac1E \sum_e \sum_k p_{ek}
  \log p_{ek}`. ``log K`` (8 ops: 2.08) at initialisation; it falls as the search commits to operations."""
  entropies = {}
  for kind, a in alphas.items():
    a = np.asarray(a, np.float64)
    log_p = a - a.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    entropies[kind] = float(-(np.exp(log_p) * log_p).sum(-1).mean())
  return entropies
