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

**Relaxations and penalties** (`darts_jax.relaxations`, `darts_jax.dynamics.regularizers`). With a `relaxation`,
every loss of the step mixes the ops with ``relaxation.sample(key, alpha, step)`` instead of the network's own
softmax; ``key = fold_in(fold_in(rng, step), 1)`` is drawn once per step, so the virtual step, the validation
gradient, the mixed term and the weight step all see the same sample, and ``h`` is the exact derivative of one
well-defined one-step objective (reproducible from the seed and the step: resume stays bit-identical). An
`arch_penalty` ``P(alpha, weights, step)`` joins the validation loss: it does not depend on ``w``, so it adds
``∇_alpha P`` to ``h`` for every method. A `weight_perturbation` (SDARTS-RS) perturbs the weights of the weight
step's forward pass only.

Batch normalisation uses batch statistics in every forward pass, as the original's `model.train()`. The losses of
the architecture step (all hypergradient passes) read the running statistics but discard their updates; only the
weight step updates them. The original updates them on every forward pass, including those of the architecture
step; the running statistics only matter for evaluation (`make_eval_step`, the original's `infer` in `model.eval()`
mode), and one update per step keeps their momentum a per-step quantity.

**Two implementations of the second-order steps** (``'second_order_fd'``, ``'second_order_exact'``,
`SECOND_ORDER_IMPLS`), equal up to float32 rounding: ``'chained'`` (`_chained_step`) takes every full gradient pass of
the supernet with one compiled copy of it, which cuts XLA:CPU's compile time; ``'direct'`` composes the public
`hypergradient` with the weight step, which leaves XLA free to fuse and schedule across the passes. ``'auto'`` picks
per backend (`resolve_second_order_impl`).

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

from darts_jax.bilevel.hypergradient import (PASSES, chain_gradient_passes, exact_mixed_term, fd_mixed_term,
                                             hypergradient, resolve_passes, virtual_step)
from darts_jax.cnn import ops
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

SECOND_ORDER_IMPLS = PASSES
"""How the second-order steps are built (module docstring); the other methods have one implementation. What
``'auto'`` picks per backend is `darts_jax.bilevel.hypergradient.AUTO_PASSES`."""


def resolve_second_order_impl(impl: str, backend: str | None = None) -> str:
  """``impl``, with ``'auto'`` replaced by the implementation for `backend` (default: `jax.default_backend()`).

  Raises:
    ValueError: ``impl`` is not in `SECOND_ORDER_IMPLS`.
  """
  return resolve_passes(impl, backend, name='second_order_impl')


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
    # Weights are drawn with `ops.INIT_PRNG`: one fused kernel per parameter tensor to compile (the bench supernet's
    # init: 374 kernels and ~22 s against 3,595 kernels and 53 s with an 'rbg' key; docs/benchmarks.md).
    params_key = ops.init_key(params_key)
    variables = model.init(params_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), alphas, train=False)
    params = variables['params']
    return SearchState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'], alphas=alphas,
        weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(alphas), rng=augment_key,
        weight_tx=weight_tx, arch_tx=arch_tx)

  return init(rng)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# An architecture penalty ``P(alphas, mixing weights, step) -> scalar`` (`darts_jax.dynamics.regularizers`).
ArchPenalty = Callable[[PyTree, PyTree, jax.Array], jax.Array]
# A perturbation of the weight step's mixing weights ``(key, weights, step) -> weights`` (SDARTS-RS).
WeightPerturbation = Callable[[jax.Array, PyTree, jax.Array], PyTree]


def make_search_step(model: SearchNetwork, schedule: optax.Schedule, preprocess: Preprocess, *,
                     hypergradient_method: str, momentum: float = 0.9, weight_decay: float = 3e-4,
                     fd_epsilon: float = 0.01, unroll_steps: int = 1, implicit_iterations: int = 10,
                     implicit_damping: float = 0.0, relaxation: Any = None, arch_penalty: ArchPenalty | None = None,
                     weight_perturbation: WeightPerturbation | None = None, second_order_impl: str = 'auto'
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
    relaxation: None: the model mixes the alphas itself (its softmax). Otherwise an object whose
      ``sample(key, alphas, step)`` gives the mixing weights (`darts_jax.relaxations.Relaxation`), and the model
      takes those weights in place of the alphas (``SearchNetwork(mixing='weights')``).
    arch_penalty: ``P(alphas, weights, step)`` added to the validation loss besides the cross-entropy, ``weights``
      the step's sample (the alphas themselves without a `relaxation`): the regularisers
      (`darts_jax.dynamics.regularizers`), the expected cost (`darts_jax.cnn.cost.make_cost_penalty`). It depends
      on the alphas only, so every method's hypergradient of ``L_val + P`` is its hypergradient of ``L_val`` plus
      ``∇_α P``.
    weight_perturbation: ``(key, weights, step) -> weights`` applied to the weight step's mixing weights only
      (needs a `relaxation`).
    second_order_impl: for ``'second_order_fd'`` / ``'second_order_exact'``: a key of `SECOND_ORDER_IMPLS`;
      ``'auto'`` is resolved here, for the default backend.

  Returns:
    The step function. ``metrics`` (equal on all devices) are the weight step's ``loss`` and ``accuracy``, the
    global norms ``grad_norm`` (weights, before clipping) and ``arch_grad_norm`` (hypergradient, penalty included),
    ``lr``, with an `arch_penalty` its value ``arch_penalty``, and ``finite``: whether the loss, both gradients and
    the new weights and alphas are all finite.
  """
  if hypergradient_method not in HYPERGRADIENT_METHODS:
    raise ValueError(f'Unknown hypergradient {hypergradient_method!r}; expected one of '
                     f'{", ".join(HYPERGRADIENT_METHODS)}.')
  method = HYPERGRADIENT_METHODS[hypergradient_method]
  chained = method in _CHAINED_METHODS and resolve_second_order_impl(second_order_impl) == 'chained'
  if relaxation is None and weight_perturbation is not None:
    raise ValueError('A weight perturbation needs a relaxation (the mixing weights).')
  axis_name = model.axis_name

  def forward(params, batch_stats, alphas, images):
    return model.apply({'params': params, 'batch_stats': batch_stats}, images, alphas, train=True,
                       mutable=['batch_stats'])

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def search_step(state: SearchState, train_batch: Batch, val_batch: Batch) -> tuple[SearchState, Metrics]:
    step_key = jax.random.fold_in(state.rng, state.step)
    train_key, val_key = jax.random.split(step_key)
    train = (preprocess(train_key, train_batch[0]), train_batch[1])
    val = (preprocess(val_key, val_batch[0]), val_batch[1])
    lr = schedule(state.step)
    m = momentum_buffer(state.weight_opt_state)
    # The relaxation's noise: one draw per step, its own stream beside the augmentation's.
    sample_key, perturbation_key = jax.random.split(jax.random.fold_in(step_key, 1))

    def mixing(alphas):  # what the model takes: the alphas, or the step's sample of the mixing weights
      return alphas if relaxation is None else relaxation.sample(sample_key, alphas, state.step)

    # The BN-statistics updates of the architecture step's passes are discarded (see the module docstring).
    def loss_fn(params, alphas, batch):
      return loss_and_aux(params, alphas, batch)[0]

    def loss_and_aux(params, alphas, batch, weight_step=False):
      weights = mixing(alphas)
      if weight_perturbation is not None:  # a select: the architecture passes differentiate the unperturbed weights
        perturbed = weight_perturbation(perturbation_key, weights, state.step)
        weights = jax.tree.map(lambda p, w: jnp.where(weight_step, p, w), perturbed, weights)
      logits, updates = forward(params, state.batch_stats, weights, batch[0])
      return _cross_entropy(logits, batch[1]), (logits, updates['batch_stats'])

    def gradient_pass(params, alphas, batch, weight_step=False):
      (loss, aux), grads = jax.value_and_grad(loss_and_aux, argnums=(0, 1), has_aux=True)(params, alphas, batch,
                                                                                           weight_step)
      return pmean(grads), (loss, aux)

    if arch_penalty is None:
      penalty_grads = None
    else:  # independent of the weights: its gradient joins every method's hypergradient as it is
      penalty, penalty_grads = jax.value_and_grad(lambda a: arch_penalty(a, mixing(a), state.step))(state.alphas)

    def with_penalty(hypergrads):
      return hypergrads if penalty_grads is None else jax.tree.map(jnp.add, hypergrads, penalty_grads)

    def arch_step(hypergrads):
      arch_updates, arch_opt_state = state.arch_tx.update(with_penalty(hypergrads), state.arch_opt_state,
                                                          state.alphas)
      return optax.apply_updates(state.alphas, arch_updates), arch_opt_state

    if chained:
      arch_grads, (alphas, arch_opt_state), ((grads, _), (loss, (logits, batch_stats))) = _chained_step(
          method, gradient_pass, loss_fn, arch_step, state.params, state.alphas, train, val, lr=lr, momentum=momentum,
          momentum_buffer=m, weight_decay=weight_decay, fd_epsilon=fd_epsilon, pmean=pmean)
    else:
      arch_grads = hypergradient(
          loss_fn, loss_fn, state.params, state.alphas, train, val, eta=lr, method=method, momentum_buffer=m,
          momentum=momentum, weight_decay=weight_decay, fd_epsilon=fd_epsilon, unroll_steps=unroll_steps,
          implicit_iterations=implicit_iterations, implicit_damping=implicit_damping, axis_name=axis_name,
          passes='direct')
      alphas, arch_opt_state = arch_step(arch_grads)
      # Weight step with the updated alphas; it also advances the BN running statistics.
      (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_and_aux, has_aux=True)(state.params, alphas, train,
                                                                                            True)
      grads = pmean(grads)
    arch_grads = with_penalty(arch_grads)

    updates, weight_opt_state = state.weight_tx.update(grads, state.weight_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    metrics = pmean({
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == train_batch[1]),
    })
    metrics.update(grad_norm=optax.tree.norm(grads), arch_grad_norm=optax.tree.norm(arch_grads), lr=lr)
    if arch_penalty is not None:
      metrics['arch_penalty'] = pmean(penalty)
    metrics['finite'] = jnp.all(jnp.stack(
        [jnp.isfinite(metrics['loss']), jnp.isfinite(metrics['grad_norm']), jnp.isfinite(metrics['arch_grad_norm'])]
        + [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((params, alphas))]))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, alphas=alphas,
                              weight_opt_state=weight_opt_state, arch_opt_state=arch_opt_state)
    return new_state, metrics

  return search_step


# The methods whose passes run as one chain of the same compiled gradient (`_chained_step`). First order is not one:
# its validation pass needs only the α-gradient, and computing the weight gradient there too (as the shared pass
# does) cost 39% more CPU time per step for 17% fewer kernels to compile (docs/benchmarks.md).
_CHAINED_METHODS = ('fd', 'exact')


def _chained_step(method, gradient_pass, loss_fn, arch_step, params, alphas, train, val, *, lr, momentum,
                  momentum_buffer, weight_decay, fd_epsilon, pmean):
  """The architecture step and the weight step's gradient, with every full gradient pass of the supernet
  (``gradient_pass(params, alphas, batch) -> ((g_w, g_alpha), aux)``) taken by ONE compiled copy of it.

  The passes are the iterations of `chain_gradient_passes` (XLA compiles every call site of a function separately,
  and on CPU code generation dominates compile time); between passes, a ``lax.switch`` branch (compiled once) turns
  the last pass's output into the next pass's inputs:

  ``(w, α, train)`` → ``w'`` → ``(w', α, val)`` → the mixed term (``'fd'``: the central difference of two
  α-gradients; ``'exact'``: one ``jax.jvp`` of the α-gradient, `exact_mixed_term`), Adam → ``(w, α', train)``.

  The same arithmetic as `darts_jax.bilevel.hypergradient` followed by the weight step's gradient (the ``'direct'``
  implementation; tests/test_second_order_impl.py compares them). The first pass needs only ``g_w`` and computes
  ``g_α`` too, which costs little: the α-gradient is a few small contractions. ``gradient_pass`` takes a fourth
  argument, true for the weight step's pass (SDARTS-RS perturbs only that one).

  Returns ``(arch_grads, (alphas', arch_opt_state'), last pass output)``.
  """
  def update_alphas(arch_grads):
    return arch_grads, arch_step(arch_grads)

  def virtual(carry, out):
    w_prime = virtual_step(params, out[0][0], momentum_buffer, eta=lr, momentum=momentum, weight_decay=weight_decay)
    return carry, (w_prime, alphas, val)

  def arch(carry, out):
    (v, grad_alpha), _ = out
    if method == 'fd':
      mixed = fd_mixed_term(loss_fn, params, alphas, train, v, fd_epsilon)
    else:
      mixed = exact_mixed_term(loss_fn, params, alphas, train, v)
    result = update_alphas(jax.tree.map(lambda g, h: g - lr * h, grad_alpha, pmean(mixed)))
    return result, (params, result[1][0], train)

  def last(carry, out):
    del out
    return carry, (params, carry[1][0], train)  # unused: the loop ends

  stages = [virtual, arch, last]
  arch_result, out = chain_gradient_passes(
      lambda i, inputs: gradient_pass(*inputs, i == len(stages) - 1),  # the last pass is the weight step's
      stages, jax.eval_shape(update_alphas, alphas), (params, alphas, train))
  return arch_result[0], arch_result[1], out


def make_eval_step(model: SearchNetwork, preprocess: Preprocess,
                   mixing: Callable[[PyTree, jax.Array], PyTree] | None = None
                   ) -> Callable[[SearchState, tuple[jax.Array, jax.Array, jax.Array]], Metrics]:
  """Builds ``eval_step(state, (images, labels, mask)) -> sums`` for the supernet with the current alphas.

  As the original's ``infer`` (``model.eval()``), BN normalises with the running statistics. Images are uint8,
  prepared by `preprocess` without augmentation (the original's ``infer`` reads the training transform's augmented
  images; an unaugmented measure is the more useful one); ``mask`` (float, 1 for real examples, 0 for padding) lets
  the last batch be padded to the common shape. Returns the (device-summed under pmap) ``loss_sum``, ``correct``
  and ``count``. ``mixing(alphas, step)``, if given, computes what the model takes from the alphas: a relaxation's
  deterministic weights (`darts_jax.relaxations.Relaxation.deterministic`).
  """
  axis_name = model.axis_name

  def eval_step(state: SearchState, batch: tuple[jax.Array, jax.Array, jax.Array]) -> Metrics:
    images, labels, mask = batch
    architecture = state.alphas if mixing is None else mixing(state.alphas, state.step)
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, preprocess(None, images),
                         architecture, train=False)
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
