"""The one bilevel search step of every search space: state, the architecture optimizer, the method table.

One search step (the original ``train_search.py``'s inner loop: ``Architect.step``, then the weight update) is

1. **architecture step** on a training batch and a validation batch: ``alpha <- arch_tx(alpha, h)`` (Adam with
   coupled weight decay, `training.optimizers.arch_optimizer`), with ``h`` the hypergradient of the validation loss
   (`darts_jax.bilevel.hypergradient`; the method is one of `METHODS`): first order, or second order through the
   virtual step ``w' = w - eta·(mu·m + c·grad_w L_train(w, alpha) + lambda·w)`` of the space's weight optimizer
   (``eta`` the step's learning rate, ``m`` its momentum buffer, ``c`` the clip coefficient where the space clips
   inside the virtual step, as the recurrent original), through k such steps, or implicitly at the current weights;
2. **weight step** on the *same* training batch with the updated alphas: ``w <- weight_tx(w, grad_w L_weight)``.

The space supplies its side as a `BilevelProblem`: its loss as a function of the weights, the mixing weights and a
batch, how the batches are prepared on the device (augmentation, carried hidden states, dropout keys), the learning
rate of a step, the virtual step's constants and the metrics of the weight step. Everything else is the same for
every space, here, once.

**Relaxations and penalties** (`darts_jax.dynamics.relaxations`, `darts_jax.dynamics.regularizers`). With a
`relaxation`, every loss of the step mixes the ops with ``relaxation.sample(key, alpha, step)`` instead of the
alphas; ``key = fold_in(fold_in(rng, step), 1)`` is drawn once per step, so the virtual step, the validation
gradient, the mixed term and the weight step all see the same sample, and ``h`` is the exact derivative of one
well-defined one-step objective (reproducible from the seed and the step: resume stays bit-identical). An
`arch_penalty` ``P(alpha, weights, step)`` joins the validation loss: it does not depend on ``w``, so it adds
``∇_alpha P`` to ``h`` for every method. A `weight_perturbation` perturbs the weight step's mixing weights only:
at random (SDARTS-RS) or at the worst case of the weight step's loss near them (SDARTS-ADV), for which it gets that
loss as a function of the mixing weights; the architecture step, and so ``h``, is the unperturbed one.

Batch normalisation uses batch statistics in every forward pass, as the original's ``model.train()``; the losses of
the architecture step read the running statistics and discard their updates, only the weight step updates them (one
update per step keeps their momentum a per-step quantity; they matter for evaluation only).

**Two arrangements of the second-order steps** (``'fd'``, ``'exact'``; ``passes``, `STEP_PASSES`), equal up to
float rounding: ``'chained'`` (`_chained_step`) takes every full gradient pass of the network, the weight step's
included, with ONE compiled copy of it, which cuts XLA:CPU's compile time; ``'direct'`` composes the public
`hypergradient` with the weight step, which leaves XLA free to fuse and schedule across the passes. ``'auto'``
picks per backend (`resolve_passes`).

Everything is a pure function of the `SearchState`, so the step is jitted (or mapped over devices with the
problem's ``axis_name``) once and runs for the whole search: the learning rate is a function of the step counter and
the batch, so nothing recompiles between steps or epochs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax
import optax
from absl import logging

from darts_jax.bilevel.hypergradient import (METHODS, PASSES, chain_gradient_passes, clip_coefficient,
                                             exact_mixed_term, fd_mixed_term, hypergradient, resolve_passes,
                                             virtual_step)

PyTree = Any
Metrics = dict[str, jax.Array]

STEP_PASSES = tuple(p for p in PASSES if p != 'separate')
"""The arrangements of a search step's passes (``passes``, the config's ``second_order_impl``): `PASSES` but
``'separate'``, which is for calls of `hypergradient` outside a program."""

OLD_METHOD_NAMES = {'second_order_fd': 'fd', 'second_order_exact': 'exact'}
"""Earlier config spellings of `METHODS`, still accepted (`method_name` logs a one-line notice)."""

__all__ = ['METHODS', 'OLD_METHOD_NAMES', 'PASSES', 'STEP_PASSES', 'ArchPenalty', 'BilevelProblem',
           'SearchState', 'WeightPerturbation', 'make_search_step', 'method_name', 'momentum_buffer',
           'resolve_passes']


def method_name(name: str) -> str:
  """The hypergradient method a config's ``hypergradient`` names: a key of `METHODS`, or an earlier spelling
  (`OLD_METHOD_NAMES`, with a one-line deprecation notice in the log).

  Raises:
    ValueError: an unknown name.
  """
  if name in OLD_METHOD_NAMES:
    logging.warning("hypergradient=%r is deprecated: write %r (the same method).", name, OLD_METHOD_NAMES[name])
    return OLD_METHOD_NAMES[name]
  if name not in METHODS:
    raise ValueError(f'Unknown hypergradient {name!r}; expected one of {", ".join(METHODS)}.')
  return name


def momentum_buffer(weight_opt_state: optax.OptState) -> PyTree | None:
  """The SGD momentum trace ``m`` inside a weight optimizer's state (PyTorch's ``momentum_buffer``), None for an
  optimizer without momentum."""
  return optax.tree_utils.tree_get(weight_opt_state, 'trace')


class SearchState(flax.struct.PyTreeNode):
  """Everything a search step reads and writes; a pytree (checkpointable as is).

  Attributes:
    step: int32 scalar, the number of search steps taken.
    params: network weights w.
    batch_stats: BN running statistics (used by evaluation only).
    alphas: the architecture parameters (the space's pytree).
    weight_opt_state: state of `weight_tx`.
    arch_opt_state: state of `arch_tx`.
    rng: base PRNG key of the step's random draws; step ``t`` uses ``fold_in(rng, t)``, so a resumed run draws
      what an uninterrupted one does.
    carry: what the space carries from batch to batch (the recurrent space's hidden states; ``()`` for none).
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
  carry: PyTree
  weight_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  arch_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


# An architecture penalty ``P(alphas, mixing weights, step) -> scalar`` (`darts_jax.dynamics.regularizers`).
ArchPenalty = Callable[[PyTree, PyTree, jax.Array], jax.Array]
# A perturbation of the weight step's mixing weights ``(key, weights, step, loss_and_grad) -> weights``:
# ``loss_and_grad(weights) -> (loss, d loss / d weights)`` is the weight step's loss at the step's network weights and
# training batch, averaged over devices (SDARTS-ADV's attack reads it; SDARTS-RS's noise does not).
WeightPerturbation = Callable[[jax.Array, PyTree, jax.Array, Callable[[PyTree], tuple[jax.Array, PyTree]]], PyTree]


def _no_carry(state, train, weight_aux, validation_aux):
  del train, weight_aux, validation_aux
  return state.carry


@dataclasses.dataclass(frozen=True)
class BilevelProblem:
  """A search space's side of the bilevel step.

  Attributes:
    loss: ``loss(params, batch_stats, weights, batch, weight_step) -> (loss, aux)``: the network's loss with the
      ops mixed by ``weights`` (the alphas, or a relaxation's weights) on a prepared batch, BN in training mode.
      ``aux`` is the space's (a pytree) and holds the BN statistics' update under ``'batch_stats'``.
      ``weight_step`` is true for the weight step's pass (a Python bool or a traced one: the chained passes decide
      it inside a loop); a space may add terms there (the recurrent TAR/AR) that the architecture passes leave out.
    prepare: ``prepare(state, train_batch, val_batch) -> (train, val)``: the batches as `loss` takes them, on the
      device (augmentation from ``(state.rng, state.step)``, the carried hidden states, dropout keys).
    learning_rate: ``learning_rate(step, train) -> eta``: the weight step's learning rate, also the virtual step's.
    metrics: ``metrics(train, aux) -> entries`` of the weight step (``accuracy``, ...) from its ``aux``, per device
      (the step averages them over devices).
    momentum, weight_decay: the weight optimizer's, as the virtual step takes them.
    grad_clip: the clip norm of the training gradient inside the virtual step (None: unclipped, as the CNN
      original; the weight optimizer clips on its own).
    next_carry: ``next_carry(state, train, weight_aux, validation_aux) -> carry``, the state's ``carry`` after the
      step; ``validation_aux()`` gives the validation pass's ``aux`` at the step's weights and alphas.
    axis_name: the device axis of data parallelism (None under plain jit).
  """
  loss: Callable[..., tuple[jax.Array, PyTree]]
  prepare: Callable[[SearchState, Any, Any], tuple[Any, Any]]
  learning_rate: Callable[[jax.Array, Any], jax.Array]
  metrics: Callable[[Any, PyTree], Metrics]
  momentum: float = 0.0
  weight_decay: float = 0.0
  grad_clip: float | None = None
  next_carry: Callable[..., PyTree] = _no_carry
  axis_name: Any = None


def make_search_step(problem: BilevelProblem, *, method: str, fd_epsilon: float = 0.01, unroll_steps: int = 1,
                     implicit_iterations: int = 10, implicit_damping: float = 0.0, relaxation: Any = None,
                     arch_penalty: ArchPenalty | None = None, weight_perturbation: WeightPerturbation | None = None,
                     passes: str = 'auto') -> Callable[[SearchState, Any, Any], tuple[SearchState, Metrics]]:
  """Builds ``search_step(state, train_batch, val_batch) -> (state, metrics)`` (see the module docstring).

  Jit it, or map it over devices with ``axis_name=problem.axis_name``: then each device holds a shard of both
  batches, the hypergradient and the weight gradients are averaged over devices, and the step equals a
  single-device step on the global batch.

  Args:
    problem: the space's losses and constants.
    method: a key of `METHODS` (`method_name` reads a config's).
    fd_epsilon: for ``'fd'``: ``R = fd_epsilon / ||v||``.
    unroll_steps: for ``'unrolled'``: the number of virtual steps, all on the step's training batch.
    implicit_iterations: for ``'implicit_cg'`` / ``'implicit_neumann'``: CG iterations or Neumann terms.
    implicit_damping: for the implicit methods: added to the diagonal of the training Hessian.
    relaxation: None: the loss mixes the alphas as they are. Otherwise an object whose
      ``sample(key, alphas, step)`` gives the mixing weights (`darts_jax.dynamics.relaxations.Relaxation`).
    arch_penalty: ``P(alphas, weights, step)`` added to the validation loss, ``weights`` the step's sample (the
      alphas themselves without a `relaxation`): the regularisers, the expected cost.
    weight_perturbation: ``(key, weights, step, loss_and_grad) -> weights`` applied to the weight step's mixing
      weights only (needs a `relaxation`); a constant of the weight step (no gradient flows through it).
    passes: for ``'fd'`` / ``'exact'``: one of `STEP_PASSES`; ``'auto'`` is resolved here, for the default
      backend.

  Returns:
    The step function. ``metrics`` (equal on all devices) are the weight step's ``loss`` and the problem's metrics,
    the global norms ``grad_norm`` (weights, before the optimizer) and ``arch_grad_norm`` (hypergradient, penalty
    included), ``lr``, with an `arch_penalty` its value ``arch_penalty``, and ``finite``: whether the loss, both
    gradients and the new weights and alphas are all finite.
  """
  if method not in METHODS:
    raise ValueError(f'Unknown hypergradient method {method!r}; expected one of {", ".join(METHODS)}.')
  chained = method in _CHAINED_METHODS and resolve_passes(passes, name='passes') == 'chained'
  if relaxation is None and weight_perturbation is not None:
    raise ValueError('A weight perturbation needs a relaxation (the mixing weights).')
  if method == 'unrolled' and problem.grad_clip is not None:
    raise ValueError("hypergradient 'unrolled' takes unclipped SGD steps, and this space clips its virtual step "
                     '(grad_clip): use first_order, fd, exact or an implicit method.')
  # The clip is the virtual step's: the implicit methods take none.
  grad_clip = problem.grad_clip if method in ('fd', 'exact') else None
  axis_name = problem.axis_name

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def search_step(state: SearchState, train_batch: Any, val_batch: Any) -> tuple[SearchState, Metrics]:
    train, val = problem.prepare(state, train_batch, val_batch)
    lr = problem.learning_rate(state.step, train)
    # The relaxation's noise: one draw per step, its own stream beside the space's.
    sample_key, perturbation_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1))

    def mixing(alphas):  # what the network takes: the alphas, or the step's sample of the mixing weights
      return alphas if relaxation is None else relaxation.sample(sample_key, alphas, state.step)

    def perturbed(params, weights, batch):  # the weight step's mixing weights
      def loss_and_grad(w):  # the weight step's loss at these network weights, as the attack sees it
        value, grads = jax.value_and_grad(
            lambda w: problem.loss(params, state.batch_stats, w, batch, True)[0])(w)
        return pmean((value, grads))

      return jax.lax.stop_gradient(weight_perturbation(perturbation_key, weights, state.step, loss_and_grad))

    def loss_and_aux(params, alphas, batch, weight_step=False):
      weights = mixing(alphas)
      if weight_perturbation is not None:  # only the weight step's pass: the architecture passes see the unperturbed
        if isinstance(weight_step, bool):
          weights = perturbed(jax.lax.stop_gradient(params), weights, batch) if weight_step else weights
        else:  # the chained passes decide at run time: the attack runs in the weight step's pass only
          weights = jax.lax.cond(weight_step, lambda w: perturbed(jax.lax.stop_gradient(params), w, batch),
                                 lambda w: w, weights)
      return problem.loss(params, state.batch_stats, weights, batch, weight_step)

    def loss_fn(params, alphas, batch):  # the architecture passes' loss
      return loss_and_aux(params, alphas, batch)[0]

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

    m = momentum_buffer(state.weight_opt_state)
    if m is None:  # an optimizer without momentum: the virtual step's buffer is zero
      m = jax.tree.map(jnp.zeros_like, state.params)
    validation_aux = None
    if chained:
      arch_grads, (alphas, arch_opt_state), ((grads, _), (loss, aux)) = _chained_step(
          method, gradient_pass, loss_fn, arch_step, state.params, state.alphas, train, val, lr=lr,
          momentum=problem.momentum, momentum_buffer=m, weight_decay=problem.weight_decay,
          grad_clip=problem.grad_clip, fd_epsilon=fd_epsilon, pmean=pmean)
    else:
      if method == 'first_order':  # ∇_α L_val at w: the validation pass's aux comes with it
        arch_grads, validation_aux = jax.grad(loss_and_aux, argnums=1, has_aux=True)(state.params, state.alphas, val)
        arch_grads = pmean(arch_grads)
      else:
        arch_grads = hypergradient(
            loss_fn, loss_fn, state.params, state.alphas, train, val, eta=lr, method=method, momentum_buffer=m,
            momentum=problem.momentum, weight_decay=problem.weight_decay, fd_epsilon=fd_epsilon,
            unroll_steps=unroll_steps, implicit_iterations=implicit_iterations, implicit_damping=implicit_damping,
            grad_clip=grad_clip, axis_name=axis_name, passes='direct')
      alphas, arch_opt_state = arch_step(arch_grads)
      # The weight step with the updated alphas; it also advances the BN running statistics.
      (loss, aux), grads = jax.value_and_grad(loss_and_aux, has_aux=True)(state.params, alphas, train, True)
      grads = pmean(grads)
    arch_grads = with_penalty(arch_grads)

    updates, weight_opt_state = state.weight_tx.update(grads, state.weight_opt_state, state.params,
                                                       learning_rate=lr)
    params = optax.apply_updates(state.params, updates)

    def validation_pass_aux():  # at the step's weights and alphas, with the step's sample
      return validation_aux if validation_aux is not None else loss_and_aux(state.params, state.alphas, val)[1]

    metrics = pmean({'loss': loss, **problem.metrics(train, aux)})
    metrics.update(grad_norm=optax.tree.norm(grads), arch_grad_norm=optax.tree.norm(arch_grads), lr=lr)
    if arch_penalty is not None:
      metrics['arch_penalty'] = pmean(penalty)
    # The new state is finite iff the sum of all its entries is (weights and alphas are far from overflowing): one
    # reduction over their concatenation, where a check per tensor would be a kernel each to compile on CPU.
    # (The barrier keeps XLA from splitting the reduction back into one per tensor.)
    new_entries = lax.optimization_barrier(jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves((params, alphas))]))
    metrics['finite'] = (jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
                         & jnp.isfinite(metrics['arch_grad_norm']) & jnp.isfinite(jnp.sum(new_entries)))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=aux['batch_stats'], alphas=alphas,
                              weight_opt_state=weight_opt_state, arch_opt_state=arch_opt_state,
                              carry=problem.next_carry(state, train, aux, validation_pass_aux))
    return new_state, metrics

  return search_step


# The methods whose passes run as one chain of the same compiled gradient (`_chained_step`). First order is not one:
# its validation pass needs only the α-gradient, and computing the weight gradient there too (as the shared pass
# does) cost 39% more CPU time per step for 17% fewer kernels to compile (docs/archive/measurements.md).
_CHAINED_METHODS = ('fd', 'exact')


def _chained_step(method, gradient_pass, loss_fn, arch_step, params, alphas, train, val, *, lr, momentum,
                  momentum_buffer, weight_decay, grad_clip, fd_epsilon, pmean):
  """The architecture step and the weight step's gradient, with every full gradient pass of the network
  (``gradient_pass(params, alphas, batch, weight_step) -> ((g_w, g_alpha), aux)``) taken by ONE compiled copy of it.

  The passes are the iterations of `chain_gradient_passes` (XLA compiles every call site of a function separately,
  and on CPU code generation dominates compile time); between passes, a ``lax.switch`` branch (compiled once) turns
  the last pass's output into the next pass's inputs:

  ``(w, α, train)`` → ``w'`` → ``(w', α, val)`` → the mixed term (``'fd'``: the central difference of two
  α-gradients; ``'exact'``: one ``jax.jvp`` of the α-gradient, `exact_mixed_term`), Adam → ``(w, α', train)``.

  The same arithmetic as `darts_jax.bilevel.hypergradient` followed by the weight step's gradient (the ``'direct'``
  passes; tests/test_second_order_impl.py compares them). The first pass needs only ``g_w`` and computes ``g_α``
  too, which costs little: the α-gradient is a few small contractions. The last pass is the weight step's
  (``weight_step`` true).

  Returns ``(arch_grads, (alphas', arch_opt_state'), last pass output)``.
  """
  def update_alphas(arch_grads):
    return arch_grads, arch_step(arch_grads)

  clip_shape = jax.ShapeDtypeStruct((), jnp.result_type(*jax.tree.leaves(params)))
  carry_shapes = (jax.eval_shape(update_alphas, alphas), clip_shape)

  def virtual(carry, out):
    grad_w = out[0][0]
    clip = jnp.ones((), clip_shape.dtype)
    if grad_clip is not None:  # the clip coefficient is a constant of the virtual step (`hypergradient`)
      clip = jax.lax.stop_gradient(clip_coefficient(grad_w, grad_clip)).astype(clip_shape.dtype)
      grad_w = jax.tree.map(lambda g: clip * g, grad_w)
    w_prime = virtual_step(params, grad_w, momentum_buffer, eta=lr, momentum=momentum, weight_decay=weight_decay)
    return (carry[0], clip), (w_prime, alphas, val)

  def arch(carry, out):
    (v, grad_alpha), _ = out
    if method == 'fd':
      mixed = fd_mixed_term(loss_fn, params, alphas, train, v, fd_epsilon)
    else:
      mixed = exact_mixed_term(loss_fn, params, alphas, train, v)
    scale = lr if grad_clip is None else lr * carry[1]
    result = update_alphas(jax.tree.map(lambda g, h: g - scale * h, grad_alpha, pmean(mixed)))
    return (result, carry[1]), (params, result[1][0], train)

  def last(carry, out):
    del out
    return carry, (params, carry[0][1][0], train)  # unused: the loop ends

  stages = [virtual, arch, last]
  (arch_result, _), out = chain_gradient_passes(
      lambda i, inputs: gradient_pass(*inputs, i == len(stages) - 1),  # the last pass is the weight step's
      stages, carry_shapes, (params, alphas, train))
  return arch_result[0], arch_result[1], out
