r"""Hypergradients of the bilevel problem: DARTS's architecture gradient and its family.

Generic over parameter pytrees and losses ``loss(w, alpha, batch) -> scalar``: nothing here knows about the DARTS
supernet. Pure and jittable.

**The problem.** Differentiable architecture search (DARTS, Liu et al., 2019, Eqs. 3-4) is the bilevel problem

.. math::

  \min_\alpha L_{val}(w^*(\alpha), \alpha) \quad \text{where} \quad
  w^*(\alpha) = \arg\min_w L_{train}(w, \alpha) + \tfrac\lambda2 \lVert w \rVert^2,

:math:`\lambda` the weight optimiser's coupled L2 decay. Its hypergradient
:math:`\frac{d}{d\alpha} L_{val}(w^*(\alpha), \alpha)` needs :math:`w^*` and its derivative in :math:`\alpha`, which
no search computes. Each method puts something computable in their place; one function per method, each with its
mathematics, behind the one entry `hypergradient` (``method=`` selects):

======================  ==================================  ======================================================
``method``              function                            what stands in for :math:`w^*(\alpha)`
======================  ==================================  ======================================================
``'first_order'``       `first_order_hypergradient`         :math:`w`, constant in :math:`\alpha` (DARTS 1st order)
``'fd'``                `fd_hypergradient`                  one virtual step :math:`w'(\alpha)` of the weight
                                                            optimiser; the mixed term by a central difference
                                                            (DARTS 2nd order)
``'exact'``             `exact_hypergradient`               the same step; the mixed term by forward-over-reverse
                                                            autodiff: the exact derivative through the step
``'unrolled'``          `unrolled_hypergradient`            :math:`k` virtual steps, reverse mode through them
``'implicit_cg'``       `implicit_cg_hypergradient`         :math:`w` as an inner optimum (implicit function
                                                            theorem); :math:`H^{-1}` by conjugate gradients
``'implicit_neumann'``  `implicit_neumann_hypergradient`    the same; :math:`H^{-1}` by a Neumann series (iDARTS)
======================  ==================================  ======================================================

Every function takes ``axis_name`` for data parallelism (each device holds a shard of the batches; every gradient is
averaged over the axis, see `hypergradient`).

**Building blocks**, public for research code that composes its own step: `virtual_step` (the one-step weights),
`clip_coefficient` (global-norm clipping's factor), `fd_mixed_term` and `exact_mixed_term` (the two mixed
second-order terms), `chain_gradient_passes` (several gradient passes through one compiled gradient),
`one_step_stages` (the passes of ``'fd'`` and ``'exact'`` as stages of that chain, to which a caller appends its own,
as the search step appends its weight step) and `resolve_passes`.

**Called outside** ``jax.jit`` (concrete arrays), `hypergradient` does not run op by op: with ``passes='auto'`` (the
default) every gradient pass is a compiled program of its own (``'separate'``), cached per loss function, shapes and
dtypes, so that all the methods and every later call reuse one compiled gradient of the network (see
`hypergradient`).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
Loss = Callable[[PyTree, PyTree, Any], jax.Array]

METHODS = ('first_order', 'fd', 'exact', 'unrolled', 'implicit_cg',
           'implicit_neumann')

PASSES = ('auto', 'chained', 'direct', 'separate')
"""How the methods arrange their gradient passes (`hypergradient`'s ``passes``). Inside one program (a jitted call,
the search step's ``second_order_impl``) ``'fd'`` and ``'exact'`` compose them ``'direct'`` or ``'chained'`` (one
compiled gradient in a loop); outside ``jax.jit``, ``'separate'`` makes every pass a compiled program of its own,
shared by all the methods and calls."""
# What 'auto' picks per backend (`jax.default_backend()`) inside a program. On XLA:CPU code generation dominates
# compile time; the chained passes compile the gradient once instead of once per pass: 37-43% fewer kernels in the
# search step and less temporary memory (docs/results.md). Elsewhere compiling weighs less, and the direct form
# leaves XLA free to fuse across the passes, which the loop and its switch prevent (not yet measured on a GPU).
AUTO_PASSES = {'cpu': 'chained'}
AUTO_PASSES_ELSEWHERE = 'direct'
_CHAINED_METHODS = ('fd', 'exact')


def resolve_passes(passes: str, backend: str | None = None, *, name: str = 'passes', traced: bool = True) -> str:
  """``passes``, with ``'auto'`` replaced by the arrangement for `backend` (default: `jax.default_backend()`) inside
  a program (`traced`), or by ``'separate'`` outside one.

  Raises:
    ValueError: ``passes`` is not in `PASSES` (the message names the argument ``name``), or is ``'separate'``
      inside a program.
  """
  if passes not in PASSES:
    raise ValueError(f'Unknown {name} {passes!r}; expected one of {", ".join(PASSES)}.')
  if passes == 'separate' and traced:
    raise ValueError(f"{name}='separate' compiles each gradient pass as a program of its own, for calls outside "
                     "jax.jit; inside a jitted or mapped function use 'auto', 'chained' or 'direct'.")
  if passes != 'auto':
    return passes
  if not traced:
    return 'separate'
  return AUTO_PASSES.get(backend or jax.default_backend(), AUTO_PASSES_ELSEWHERE)


def _traced(*trees: PyTree) -> bool:
  """Whether any leaf is a tracer: the call is part of a program being traced (``jax.jit``, ``jax.grad``, ...)."""
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def chain_gradient_passes(gradient_pass: Callable[[jax.Array, Any], Any], stages: list[Callable], carry_shapes: Any,
                          inputs: Any) -> tuple[Any, Any]:
  """``len(stages)`` calls of ``gradient_pass`` as the iterations of one loop, so that XLA compiles it once.

  XLA compiles every call site of a function separately, and on CPU code generation dominates compile time: a
  hypergradient that takes a network's gradient three times compiles it three times. Here pass ``i`` computes
  ``out = gradient_pass(i, inputs)`` and then a ``lax.switch`` branch (each compiled once) turns it into the next
  pass's inputs and updates the ``carry``: ``carry, inputs = stages[i](carry, out)``. The carry starts as zeros of
  ``carry_shapes`` (``jax.ShapeDtypeStruct`` leaves, e.g. from ``jax.eval_shape``). ``inputs`` keep one structure,
  shape and dtype through the passes (the loop's carry); ``i`` is traced.

  Returns ``(carry, out)``: the carry after the last stage and the last pass's output.
  """
  def body(loop_state, i):
    carry, inputs = loop_state
    out = gradient_pass(i, inputs)
    carry, inputs = jax.lax.switch(i, stages, carry, out)
    return (carry, inputs), out

  # Every pass's output leaves the loop stacked (one gradient each) and the last is kept: a loop carry would need
  # the output's shapes first, which only tracing the gradient once more would give.
  (carry, _), outs = jax.lax.scan(body, (_zeros(carry_shapes), inputs), jnp.arange(len(stages)))
  return carry, jax.tree.map(lambda stacked: stacked[-1], outs)


def _zeros(shapes: PyTree) -> PyTree:
  """Zeros shaped as ``jax.ShapeDtypeStruct`` leaves."""
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)


def _global_norm(tree: PyTree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _axpy(a: jax.Array, x: PyTree, y: PyTree) -> PyTree:
  """``a·x + y`` leaf by leaf."""
  return jax.tree.map(lambda x_, y_: a * x_ + y_, x, y)


def _sgd_direction(m: PyTree, g: PyTree, w: PyTree, momentum, weight_decay) -> PyTree:
  """The weight optimiser's new momentum ``μm + g + λw`` (PyTorch SGD with coupled decay); the step is ``−η`` times
  it."""
  return jax.tree.map(lambda m_, g_, w_: momentum * m_ + g_ + weight_decay * w_, m, g, w)


def clip_coefficient(grad: PyTree, max_norm: float | jax.Array) -> jax.Array:
  """The factor ``c = min(1, max_norm / (‖grad‖₂ + 1e-6))`` by which global-norm clipping (PyTorch's
  ``clip_grad_norm``, the original RNN ``architect.py``'s ``_clip``) scales a gradient."""
  return jnp.minimum(1.0, max_norm / (_global_norm(grad) + 1e-6))


def virtual_step(w: PyTree, grad_w: PyTree, momentum_buffer: PyTree, *,
                 eta, momentum, weight_decay) -> PyTree:
  """The one-step unrolled weights ``w' = w − η(μm + g + λw)``."""
  return _axpy(-eta, _sgd_direction(momentum_buffer, grad_w, w, momentum,
                                    weight_decay), w)


def _fd_radius(v: PyTree, fd_epsilon) -> jax.Array:
  """The stencil's ``R = ε/‖v‖``; ``v = 0`` gives ``w± = w`` and a zero mixed term for any finite R."""
  norm = _global_norm(v)
  return fd_epsilon / jnp.where(norm > 0, norm, 1.0)


def _clipped_virtual_step(w, grad_w, momentum_buffer, eta, momentum, weight_decay, grad_clip):
  """The virtual step ``w'`` from the unclipped training gradient (``momentum_buffer`` None: zeros) and the mixed
  term's factor ``η·c``: ``w'`` moves along ``c·∇_w L_train``, so does its α-derivative (``c`` the clip
  coefficient, a constant; 1 without ``grad_clip``)."""
  if momentum_buffer is None:
    momentum_buffer = jax.tree.map(jnp.zeros_like, w)
  scale = eta
  if grad_clip is not None:
    clip = jax.lax.stop_gradient(clip_coefficient(grad_w, grad_clip))
    grad_w = jax.tree.map(lambda g: clip * g, grad_w)
    scale = eta * clip
  return virtual_step(w, grad_w, momentum_buffer, eta=eta, momentum=momentum, weight_decay=weight_decay), scale


def fd_mixed_term(train_loss: Loss, w: PyTree, alpha: PyTree,
                  train_batch: Any, v: PyTree, fd_epsilon) -> PyTree:
  r"""The paper's central difference for :math:`\nabla^2_{\alpha w} L_{train}\, v`.

  :math:`(\nabla_\alpha L_{train}(w^+) - \nabla_\alpha L_{train}(w^-)) / 2R`
  with :math:`w^\pm = w \pm R v`, :math:`R = \epsilon / \lVert v \rVert_2`
  (per device: the caller averages it over devices). Its gradients are
  computed at the highest matmul precision (float32 or float64 as their
  inputs, never bfloat16 passes or TF32).
  """
  r = _fd_radius(v, fd_epsilon)
  # Both points of the stencil through one loop body: the α-gradient is
  # compiled once instead of twice.
  stencil = jax.tree.map(lambda w_, v_: jnp.stack([w_ + r * v_, w_ - r * v_]),
                         w, v)
  # The two gradients differ by O(R) and their difference is divided by 2R,
  # which multiplies their rounding by 1/2R: their matmuls need the dtype's
  # full precision, where TPUs default to bfloat16 passes and GPUs to TF32.
  with jax.default_matmul_precision('highest'):
    plus_minus = jax.lax.map(
        lambda w_: jax.grad(train_loss, argnums=1)(w_, alpha, train_batch),
        stencil)
  return jax.tree.map(lambda g: (g[0] - g[1]) / (2 * r), plus_minus)


def exact_mixed_term(train_loss: Loss, w: PyTree, alpha: PyTree,
                     train_batch: Any, v: PyTree) -> PyTree:
  r""":math:`\nabla^2_{\alpha w} L_{train}\, v` by forward-over-reverse: the
  tangent of :math:`w \mapsto \nabla_\alpha L_{train}(w, \alpha)` in
  direction :math:`v` (per device: the caller averages it over devices).

  A fresh ``jax.jvp`` of the :math:`\alpha`-gradient, not the tangent of a
  linearisation of the training gradient kept from the virtual step: that
  shared the primal pass but kept its residuals (forward and backward
  activations) alive across the validation pass and carried the tangents of
  the weight gradient. Measured on a one-cell supernet under ``jit`` (CPU,
  docs/archive/measurements.md): 40% less time per search step, 66% less temporary
  memory and a third fewer kernels to compile, for the same values.
  """
  return jax.jvp(lambda w_: jax.grad(train_loss, argnums=1)(w_, alpha, train_batch),
                 (w,), (v,))[1]


def hypergradient(
    train_loss: Loss,
    val_loss: Loss,
    w: PyTree,
    alpha: PyTree,
    train_batch: Any,
    val_batch: Any,
    *,
    eta: float | jax.Array,
    method: str = 'exact',
    momentum_buffer: PyTree | None = None,
    momentum: float | jax.Array = 0.9,
    weight_decay: float | jax.Array = 0.0,
    fd_epsilon: float = 0.01,
    unroll_steps: int = 1,
    per_step_batches: bool = False,
    implicit_iterations: int = 10,
    implicit_damping: float | jax.Array = 0.0,
    grad_clip: float | jax.Array | None = None,
    axis_name: Any = None,
    passes: str = 'auto',
) -> PyTree:
  r"""Gradient of the validation loss w.r.t. ``alpha`` through the weights' dependence on it, by ``method``.

  The one entry to the methods of this module (its docstring has the problem and the table of methods): it checks
  the options and calls the method's function with the options that method uses; the others are ignored. Each
  function's docstring has its mathematics and cost.

  Args:
    train_loss: ``train_loss(w, alpha, batch) -> scalar``.
    val_loss: ``val_loss(w, alpha, batch) -> scalar``.
    w: weights (any pytree).
    alpha: architecture parameters (any pytree).
    train_batch: batch passed to ``train_loss`` (for ``'unrolled'`` with ``per_step_batches``, ``unroll_steps``
      batches stacked on a leading axis).
    val_batch: batch passed to ``val_loss``.
    eta: learning rate :math:`\eta` of the virtual steps, and the Neumann series' step; may be a traced scalar
      (e.g. a schedule value).
    method: one of :data:`METHODS`.
    momentum_buffer: momentum buffer :math:`m` of the weight optimiser (the trace kept by ``optax.trace``), a pytree
      like ``w``; ``None`` means zeros.
    momentum: :math:`\mu`.
    weight_decay: :math:`\lambda` (coupled L2 decay, added to the gradient).
    fd_epsilon: :math:`\epsilon` for ``'fd'`` (DARTS uses 0.01).
    unroll_steps: :math:`k` for ``'unrolled'``.
    per_step_batches: for ``'unrolled'``: ``train_batch`` holds one batch per step, stacked on a leading axis of
      length ``unroll_steps``.
    implicit_iterations: conjugate-gradient iterations, or Neumann terms.
    implicit_damping: :math:`\delta` added to the diagonal of :math:`H`.
    grad_clip: for ``'fd'`` and ``'exact'``: clip the virtual step's training gradient to this global norm
      (`fd_hypergradient`); ``None``: no clipping.
    axis_name: for data parallelism where each device holds a shard of both batches and the losses are per-device
      means: every gradient is ``pmean``-ed over this axis, so the result equals the single-device hypergradient
      on the global batches. This is for per-device gradients, i.e. ``jax.pmap`` or
      ``jax.shard_map(..., check_vma=False)``. Under ``shard_map`` with ``check_vma=True`` JAX already sums
      gradients of replicated inputs over devices; there, make the losses global means (``jax.lax.pmean`` of the
      per-device mean) and leave ``axis_name=None``.
    passes: one of `PASSES`: how the gradient passes run. Inside a jitted or mapped function, for ``'fd'`` and
      ``'exact'``: ``'direct'``, ``'chained'`` (one compiled gradient for all their passes; needs one loss function
      and like batches) or ``'auto'`` (chained on CPU where possible, else direct); see `fd_hypergradient`. The
      other methods' repeated passes are already loops with one compiled body. Called outside ``jax.jit``:
      ``'auto'`` (or ``'separate'``) runs every method as compiled programs instead of op by op: for
      ``'first_order'``, ``'fd'`` and ``'exact'`` every gradient pass is the full gradient
      :math:`(\nabla_w, \nabla_\alpha)` of the loss, compiled once per loss function, shapes and dtypes and shared
      by the three methods and every later call (``'exact'`` adds its mixed term's program, ``'fd'`` only small
      ones for its vector arithmetic); every pass at the highest matmul precision, which the finite differences
      need, so that one program serves all three. The other methods compile as one program each, also cached.
      Define the loss once: a new function object (a ``lambda`` written inside a loop) compiles anew, and JAX's
      cache keeps each one's programs. ``'chained'`` and ``'direct'`` outside ``jax.jit`` run op by op.

  Returns:
    The hypergradient, a pytree like ``alpha``.

  Raises:
    ValueError: if ``method`` is not in :data:`METHODS`, a step or iteration count is not positive, ``grad_clip``
      is given to a method other than ``'first_order'``, ``'fd'`` or ``'exact'``, ``passes`` is not in `PASSES`,
      ``passes='chained'`` meets two loss functions or unlike batches, ``passes='separate'`` is traced, or the
      separate passes meet an ``axis_name`` (they run outside any mapped program).
  """
  if method not in METHODS:
    raise ValueError(f'Unknown hypergradient method {method!r}; expected one of {METHODS}.')
  if unroll_steps < 1 or implicit_iterations < 1:
    raise ValueError(f'unroll_steps ({unroll_steps}) and implicit_iterations ({implicit_iterations}) must be '
                     'positive.')
  if grad_clip is not None and method not in ('first_order', 'fd', 'exact'):
    raise ValueError(f'grad_clip applies to the one-step methods first_order, fd and exact, not {method!r}.')
  traced = _traced(w, alpha, train_batch, val_batch, eta, momentum_buffer, momentum, weight_decay,
                   implicit_damping, grad_clip)
  separate = resolve_passes(passes, traced=traced) == 'separate'

  losses_and_batches = (train_loss, val_loss, w, alpha, train_batch, val_batch)
  optimizer = dict(eta=eta, momentum_buffer=momentum_buffer, momentum=momentum, weight_decay=weight_decay)
  implicit = dict(implicit_iterations=implicit_iterations, implicit_damping=implicit_damping,
                  weight_decay=weight_decay, axis_name=axis_name)
  if separate and method not in _CHAINED_METHODS:  # fd and exact take their separate passes in `_one_step`
    _check_separate(axis_name)
    if method == 'first_order':
      with jax.default_matmul_precision('highest'):
        return _gradient_program(val_loss, w, alpha, val_batch)[1]
    if method == 'unrolled':
      return _method_program(unrolled_hypergradient, train_loss, val_loss, w, alpha, train_batch, val_batch,
                             unroll_steps=unroll_steps, per_step_batches=per_step_batches, **optimizer)
    if method in ('implicit_cg', 'implicit_neumann'):
      neumann = method == 'implicit_neumann'
      return _method_program(implicit_neumann_hypergradient if neumann else implicit_cg_hypergradient, train_loss,
                             val_loss, w, alpha, train_batch, val_batch, implicit_iterations=implicit_iterations,
                             implicit_damping=implicit_damping, weight_decay=weight_decay,
                             **({'eta': eta} if neumann else {}))
  if method == 'first_order':
    return first_order_hypergradient(val_loss, w, alpha, val_batch, axis_name=axis_name)
  if method == 'fd':
    return fd_hypergradient(*losses_and_batches, fd_epsilon=fd_epsilon, grad_clip=grad_clip, axis_name=axis_name,
                            passes=passes, **optimizer)
  if method == 'exact':
    return exact_hypergradient(*losses_and_batches, grad_clip=grad_clip, axis_name=axis_name, passes=passes,
                               **optimizer)
  if method == 'unrolled':
    return unrolled_hypergradient(*losses_and_batches, unroll_steps=unroll_steps, per_step_batches=per_step_batches,
                                  axis_name=axis_name, **optimizer)
  if method == 'implicit_cg':
    return implicit_cg_hypergradient(*losses_and_batches, **implicit)
  return implicit_neumann_hypergradient(*losses_and_batches, eta=eta, **implicit)


def first_order_hypergradient(val_loss: Loss, w: PyTree, alpha: PyTree, val_batch: Any, *,
                              axis_name: Any = None) -> PyTree:
  r"""DARTS first order: :math:`\nabla_\alpha L_{val}(w, \alpha)`, the weights held constant.

  :math:`w` stands in for :math:`w^*(\alpha)` with :math:`dw^*/d\alpha = 0`: the one-step methods with
  :math:`\eta = 0`. Cost: one forward+backward (F+B) pass of the validation loss. ``axis_name``: as in
  `hypergradient`.
  """
  return _pmean(axis_name)(jax.grad(val_loss, argnums=1)(w, alpha, val_batch))


def fd_hypergradient(train_loss: Loss, val_loss: Loss, w: PyTree, alpha: PyTree, train_batch: Any, val_batch: Any,
                     *, eta: float | jax.Array, momentum_buffer: PyTree | None = None,
                     momentum: float | jax.Array = 0.9, weight_decay: float | jax.Array = 0.0,
                     fd_epsilon: float = 0.01, grad_clip: float | jax.Array | None = None, axis_name: Any = None,
                     passes: str = 'auto') -> PyTree:
  r"""DARTS second order (Liu et al., 2019, Sec. 2.3, Eq. 8): through one virtual step, the mixed term by a central
  difference.

  **The virtual step** (`virtual_step`): one step of the weight optimiser, heavy-ball SGD with coupled L2 decay as
  in PyTorch ``SGD`` and the reference ``architect.py``,

  .. math::

    w'(\alpha) = w - \eta \, (\mu m + c \, \nabla_w L_{train}(w, \alpha) + \lambda w),

  :math:`m` the momentum buffer (zeros if ``None``), :math:`\mu` the momentum, :math:`\lambda` the weight decay.
  :math:`c = 1`, or with ``grad_clip`` (the RNN search of the original ``architect.py``: plain SGD, :math:`\mu = 0`)
  the global-norm clipping factor :math:`c = \min(1, \text{grad\_clip} / (\lVert \nabla_w L_{train} \rVert_2 +
  10^{-6}))` (`clip_coefficient`), treated as a constant.

  **The hypergradient** is the derivative of :math:`L_{val}(w'(\alpha), \alpha)`: with
  :math:`v = \nabla_{w'} L_{val}(w', \alpha)`, by the chain rule
  (:math:`\mu m` and :math:`\lambda w` do not depend on :math:`\alpha`, so
  :math:`\partial w' / \partial \alpha = -\eta c\, \partial_\alpha \nabla_w L_{train}`, and by the symmetry of mixed
  partials its transpose applied to :math:`v` is :math:`-\eta c\, \nabla^2_{\alpha w} L_{train}\, v`)

  .. math::

    \nabla_\alpha L_{val}(w', \alpha) - \eta c\, \nabla^2_{\alpha w} L_{train}(w, \alpha)\, v.

  Here the mixed term is the paper's central difference at :math:`w` (`fd_mixed_term`),

  .. math::

    \nabla^2_{\alpha w} L_{train}\, v \approx \frac{\nabla_\alpha L_{train}(w^+, \alpha) - \nabla_\alpha
    L_{train}(w^-, \alpha)}{2R}, \qquad w^\pm = w \pm R v, \quad R = \epsilon / \lVert v \rVert_2

  (global norm over all leaves; :math:`v = 0` gives a zero mixed term), at the highest matmul precision. Its error
  is :math:`O(\epsilon^2)`; it is exact on quadratics. `exact_hypergradient` takes the term by autodiff instead.

  **Passes.** ``passes='direct'`` composes the gradients as written; XLA compiles each call site separately, and on
  CPU code generation dominates compile time, so a network's gradient is compiled once per pass.
  ``passes='chained'`` evaluates the full gradients :math:`(\nabla_w, \nabla_\alpha) L` as the iterations of one
  loop over one compiled copy (`one_step_stages`, `chain_gradient_passes`): at :math:`(w, b_{train})`,
  :math:`(w', b_{val})`, :math:`(w^+, b_{train})`, :math:`(w^-, b_{train})`, all four at the highest matmul
  precision. The same arithmetic in another order: equal up to rounding. It needs ``train_loss is val_loss`` and
  batches of one structure, shape and dtype; ``'auto'`` chains where it can on CPU (`AUTO_PASSES`) and is direct
  elsewhere. Outside ``jax.jit``, ``'auto'`` is ``'separate'``: the direct form's passes, each a call of one shared
  compiled gradient (`hypergradient`).

  Cost: 4 forward+backward passes (the training gradient for the virtual step, the validation gradient at
  :math:`w'`, two :math:`\alpha`-gradients at :math:`w^\pm`). docs/results.md has measured times.

  Arguments as `hypergradient`'s.
  """
  return _one_step('fd', train_loss, val_loss, w, alpha, train_batch, val_batch, eta=eta,
                   momentum_buffer=momentum_buffer, momentum=momentum, weight_decay=weight_decay,
                   fd_epsilon=fd_epsilon, grad_clip=grad_clip, axis_name=axis_name, passes=passes)


def exact_hypergradient(train_loss: Loss, val_loss: Loss, w: PyTree, alpha: PyTree, train_batch: Any,
                        val_batch: Any, *, eta: float | jax.Array, momentum_buffer: PyTree | None = None,
                        momentum: float | jax.Array = 0.9, weight_decay: float | jax.Array = 0.0,
                        grad_clip: float | jax.Array | None = None, axis_name: Any = None,
                        passes: str = 'auto') -> PyTree:
  r"""The exact derivative through DARTS's virtual step: :math:`\frac{d}{d\alpha} L_{val}(w'(\alpha), \alpha)`.

  With the virtual step :math:`w'` and :math:`v = \nabla_{w'} L_{val}(w', \alpha)` of `fd_hypergradient`,

  .. math::

    \nabla_\alpha L_{val}(w', \alpha) - \eta c\, \nabla^2_{\alpha w} L_{train}(w, \alpha)\, v,

  the mixed term by forward-over-reverse differentiation (`exact_mixed_term`: the tangent of
  :math:`w \mapsto \nabla_\alpha L_{train}(w, \alpha)` in direction :math:`v`). This *is* what ``jax.grad`` through
  the virtual step gives (with the clip coefficient :math:`c` under ``stop_gradient``); `fd_hypergradient` derives
  it, and approximates the mixed term instead.

  ``passes='chained'``: the full gradients at :math:`(w, b_{train})` and :math:`(w', b_{val})` through one compiled
  copy, then the mixed term's ``jax.jvp`` (`one_step_stages`; conditions as in `fd_hypergradient`).

  Cost: about 4 forward+backward passes: the training gradient for the virtual step, the validation gradient at
  :math:`w'`, and the mixed term's primal and tangent passes, each pass's memory freed before the next. Under
  ``jit`` on a one-cell supernet (CPU) a search step with it took 0.6x the time and 0.34x the temporary memory of
  one that linearised the training gradient to share its primal pass.

  Arguments as `hypergradient`'s.
  """
  return _one_step('exact', train_loss, val_loss, w, alpha, train_batch, val_batch, eta=eta,
                   momentum_buffer=momentum_buffer, momentum=momentum, weight_decay=weight_decay, fd_epsilon=None,
                   grad_clip=grad_clip, axis_name=axis_name, passes=passes)


def unrolled_hypergradient(train_loss: Loss, val_loss: Loss, w: PyTree, alpha: PyTree, train_batch: Any,
                           val_batch: Any, *, eta: float | jax.Array, unroll_steps: int = 1,
                           per_step_batches: bool = False, momentum_buffer: PyTree | None = None,
                           momentum: float | jax.Array = 0.9, weight_decay: float | jax.Array = 0.0,
                           axis_name: Any = None) -> PyTree:
  r"""Through :math:`k` virtual steps (truncated back-propagation; Betty's DARTS example uses k = 3).

  :math:`k` = ``unroll_steps`` steps of the weight optimiser of `fd_hypergradient`, the momentum buffer evolving
  with them,

  .. math::

    m_{i+1} = \mu m_i + \nabla_w L_{train}(w_i, \alpha; b_i) + \lambda w_i,
    \qquad w_{i+1} = w_i - \eta\, m_{i+1},

  from :math:`(w_0, m_0) = (w, m)`, and the exact :math:`\frac{d}{d\alpha} L_{val}(w_k(\alpha), \alpha)` by
  reverse-mode differentiation through the steps. The training batch :math:`b_i` is ``train_batch`` at every step,
  or its ``i``-th slice along the leading axis with ``per_step_batches``. ``unroll_steps=1`` equals
  `exact_hypergradient`.

  The reverse pass is written out as a reverse ``lax.scan``: the forward scan stores only the weight iterates
  :math:`w_i`, :math:`i < k` (:math:`k` times the weights' memory; the momentum enters linearly, so its iterates are
  not needed), and each backward step recomputes its training gradient's tangent at :math:`w_i` in the direction of
  the incoming cotangent :math:`c`, which gives both :math:`\nabla^2_{ww} L_{train}\, c` (the Hessian is symmetric:
  its vector-Jacobian product is its Jacobian-vector product) and :math:`\nabla^2_{\alpha w} L_{train}\, c`. So
  only one step's activations are alive at once, and nothing is differentiated reverse over reverse (on the
  supernet that is the slow path: 5.5x the step time of ``'exact'`` at k = 3 when left to ``jax.grad`` through a
  checkpointed scan).

  Cost: :math:`k` training gradients forward, the validation gradient, and per step backward one tangent pass of
  the training gradient (about 2 forward+backward passes).

  Arguments as `hypergradient`'s.

  Raises:
    ValueError: ``unroll_steps`` is not positive.
  """
  if unroll_steps < 1:
    raise ValueError(f'unroll_steps ({unroll_steps}) must be positive.')
  pmean = _pmean(axis_name)
  if momentum_buffer is None:
    momentum_buffer = jax.tree.map(jnp.zeros_like, w)

  def batch_of(step_batch):
    return step_batch if per_step_batches else train_batch

  def train_grads(w_, batch):
    return jax.grad(train_loss, argnums=(0, 1))(w_, alpha, batch)

  def forward(carry, step_batch):
    w_, m = carry
    g = pmean(jax.grad(train_loss)(w_, alpha, batch_of(step_batch)))
    m = _sgd_direction(m, g, w_, momentum, weight_decay)
    return (_axpy(-eta, m, w_), m), w_

  batches = train_batch if per_step_batches else None
  (w_k, _), iterates = jax.lax.scan(forward, (w, momentum_buffer), batches, length=unroll_steps)
  w_bar, alpha_bar = pmean(jax.grad(val_loss, argnums=(0, 1))(w_k, alpha, val_batch))

  # Backward, the reverse scan carries the cotangents (w̄, m̄, ᾱ): with c = m̄ − ηw̄ the cotangent of m_{i+1}, step i
  # sends w̄ ← w̄ + λc + H_i c, m̄ ← μc, ᾱ ← ᾱ + ∇²_{αw} L_train(w_i)·c.
  def backward(carry, xs):
    w_bar, m_bar, alpha_bar = carry
    w_i, step_batch = xs
    c = _axpy(-eta, w_bar, m_bar)
    _, (hessian_c, mixed_c) = pmean(jax.jvp(lambda w_: train_grads(w_, batch_of(step_batch)), (w_i,), (c,)))
    w_bar = jax.tree.map(lambda wb, c_, hc: wb + weight_decay * c_ + hc, w_bar, c, hessian_c)
    m_bar = jax.tree.map(lambda c_: momentum * c_, c)
    return (w_bar, m_bar, jax.tree.map(jnp.add, alpha_bar, mixed_c)), None

  zeros = jax.tree.map(jnp.zeros_like, w)
  (_, _, alpha_bar), _ = jax.lax.scan(backward, (w_bar, zeros, alpha_bar), (iterates, batches),
                                      length=unroll_steps, reverse=True)
  return alpha_bar


def implicit_cg_hypergradient(train_loss: Loss, val_loss: Loss, w: PyTree, alpha: PyTree, train_batch: Any,
                              val_batch: Any, *, implicit_iterations: int = 10,
                              implicit_damping: float | jax.Array = 0.0, weight_decay: float | jax.Array = 0.0,
                              axis_name: Any = None) -> PyTree:
  r"""Implicit, at an inner optimum, with :math:`H^{-1}` by conjugate gradients.

  The implicit function theorem (iDARTS, Zhang et al., 2021; hypertorch; TorchOpt's ``custom_root``): ``w`` itself
  is taken as :math:`w^*(\alpha)`, where :math:`\nabla_w L_{train} + \lambda w = 0`, hence
  :math:`dw^*/d\alpha = -H^{-1} \nabla^2_{w \alpha} L_{train}` and

  .. math::

    \nabla_\alpha L_{val}(w, \alpha) - \nabla^2_{\alpha w} L_{train}\, H^{-1} u, \qquad
    u = \nabla_w L_{val}(w, \alpha), \quad H = \nabla^2_{ww} L_{train}(w, \alpha) + \lambda I.

  :math:`H^{-1} u` by :math:`K` = ``implicit_iterations`` conjugate-gradient iterations on
  :math:`(H + \delta I) z = u` from :math:`z = 0` (Hestenes-Stiefel; :math:`\delta` = ``implicit_damping`` makes
  an indefinite or ill-conditioned :math:`H` tractable; at a direction of non-positive curvature the iteration
  stops with its current iterate). On a positive definite :math:`H` of dimension :math:`n`, :math:`n` iterations
  are exact. Momentum does not move an optimum: no momentum buffer.

  Hessian-vector products by forward-over-reverse differentiation: the training gradient is linearised once and
  its tangent reused; it maps :math:`z` to :math:`(\nabla^2_{ww} L_{train} z, \nabla^2_{\alpha w} L_{train} z)`,
  and the mixed term, linear in the solution, accumulates from the tangents the solver computes anyway.

  Cost: the validation gradient, the linearised training gradient, and one tangent pass per iteration.

  Arguments as `hypergradient`'s.

  Raises:
    ValueError: ``implicit_iterations`` is not positive.
  """
  return _implicit(lambda matvecs, u: _conjugate_gradient(matvecs, u, implicit_iterations), train_loss, val_loss,
                   w, alpha, train_batch, val_batch, implicit_iterations=implicit_iterations,
                   implicit_damping=implicit_damping, weight_decay=weight_decay, axis_name=axis_name)


def implicit_neumann_hypergradient(train_loss: Loss, val_loss: Loss, w: PyTree, alpha: PyTree, train_batch: Any,
                                   val_batch: Any, *, eta: float | jax.Array, implicit_iterations: int = 10,
                                   implicit_damping: float | jax.Array = 0.0, weight_decay: float | jax.Array = 0.0,
                                   axis_name: Any = None) -> PyTree:
  r"""Implicit, at an inner optimum, with :math:`H^{-1}` by a truncated Neumann series (iDARTS).

  The hypergradient of `implicit_cg_hypergradient`, with :math:`H^{-1} u` approximated by

  .. math::

    z = \eta \sum_{i<K} (I - \eta (H + \delta I))^i u,

  :math:`K` = ``implicit_iterations``, the inner learning rate ``eta`` as the series' step, :math:`\delta` =
  ``implicit_damping``. It converges to :math:`(H + \delta I)^{-1} u` as :math:`K \to \infty` when
  :math:`0 < \eta < 2 / \lambda_{max}`, the error shrinking like :math:`\max_i |1 - \eta \lambda_i|^K`.

  Cost: the validation gradient, the linearised training gradient, and one tangent pass per term.

  Arguments as `hypergradient`'s.

  Raises:
    ValueError: ``implicit_iterations`` is not positive.
  """
  return _implicit(lambda matvecs, u: _neumann(matvecs, u, eta, implicit_iterations), train_loss, val_loss, w,
                   alpha, train_batch, val_batch, implicit_iterations=implicit_iterations,
                   implicit_damping=implicit_damping, weight_decay=weight_decay, axis_name=axis_name)


class OneStepStages(NamedTuple):
  """The passes of ``'fd'`` or ``'exact'`` as stages of `chain_gradient_passes` (`one_step_stages`).

  Attributes:
    stages: the stages, one per gradient pass (``'exact'`` 2, ``'fd'`` 4). Stage ``i`` reads pass ``i``'s gradients
      ``out[0] = (g_w, g_alpha)``, keeps what the hypergradient needs in the carry and gives the next pass's inputs
      ``(w, alpha, batch)``. The last stage gives ``(w, alpha, train_batch)``: a caller that appends passes wraps
      it to give its own next inputs.
    carry_shapes: the carry of the stages, a dict of ``jax.ShapeDtypeStruct``; a caller's stages may add entries
      under other keys (the stages keep entries they do not know).
    chain: ``chain(gradient_pass, stages, carry_shapes) -> (carry, out)``: `chain_gradient_passes` from the first
      inputs ``(w, alpha, train_batch)`` at the matmul precision the method needs (``'fd'``: the highest, for every
      pass, appended ones included; they are one compiled gradient).
    finish: ``finish(carry) -> hypergradient``, a pytree like ``alpha``, from a carry that has been through the
      stages.
  """
  stages: list[Callable]
  carry_shapes: dict[str, Any]
  chain: Callable[[Callable, list[Callable], dict[str, Any]], tuple[Any, Any]]
  finish: Callable[[dict[str, Any]], PyTree]


def one_step_stages(method: str, loss: Loss, w: PyTree, alpha: PyTree, train_batch: Any, val_batch: Any, *,
                    eta: float | jax.Array, momentum_buffer: PyTree | None = None, momentum: float | jax.Array = 0.9,
                    weight_decay: float | jax.Array = 0.0, fd_epsilon: float | None = 0.01,
                    grad_clip: float | jax.Array | None = None, axis_name: Any = None) -> OneStepStages:
  r"""``'fd'`` / ``'exact'`` (`fd_hypergradient`, `exact_hypergradient`) as stages of `chain_gradient_passes`.

  Every pass takes the full gradient of ``loss`` (the training and the validation loss in one) with one compiled
  copy of it; a caller can append passes of its own. The passes, each stage turning the last gradient into the next
  pass's point:

  0. at ``(w, alpha, train_batch)``: ``∇_w L_train`` (clipped) gives the virtual step ``w'``;
  1. at ``(w', alpha, val_batch)``: ``v, ∇_α L_val(w')``; ``'exact'``: the mixed term ``∇²_{αw} L_train · v`` by
     `exact_mixed_term` (the last stage); ``'fd'``: ``R = ε/‖v‖``, next ``w⁺ = w + Rv``;
  2. ``'fd'``, at ``(w⁺, alpha, train_batch)``: keep ``∇_α L_train(w⁺)``, next ``w⁻ = w − Rv``;
  3. ``'fd'``, at ``(w⁻, alpha, train_batch)``: the mixed term ``(∇_α L_train(w⁺) − ∇_α L_train(w⁻)) / 2R``.

  ``finish(carry)`` is then ``∇_α L_val(w') − η·c·mixed`` (``c``: the clip coefficient, 1 without clipping).

  The caller's ``gradient_pass(i, (w, alpha, batch))`` returns ``((g_w, g_alpha), aux)``: the gradients of
  ``loss`` (averaged over ``axis_name`` where there is one) and anything else (``aux``; ``None`` will do), and may
  use ``i`` (traced) to tell an appended pass from the method's. The stages average the mixed term over
  ``axis_name`` themselves (``'exact'``'s ``jax.jvp`` is theirs).

  Example, the search step's (`darts_jax.bilevel.search_step`): the hypergradient, an Adam step of ``alpha``, and
  the weight step's gradient at the updated ``alpha``, all through one compiled gradient::

    plan = one_step_stages(method, loss_fn, params, alphas, train, val, eta=lr, momentum_buffer=m,
                           momentum=momentum, weight_decay=weight_decay, fd_epsilon=fd_epsilon,
                           axis_name=axis_name)
    *head, last = plan.stages

    def arch(carry, out):  # the method's last stage, then Adam: the next pass is the weight step's, at alpha'
      carry, _ = last(carry, out)
      arch_grads = plan.finish(carry)
      new_alphas, arch_opt_state = arch_step(arch_grads)
      return (dict(carry, arch_grads=arch_grads, alphas=new_alphas, arch_opt_state=arch_opt_state),
              (params, new_alphas, train))

    def after_weight_step(carry, out):  # after the last pass (the weight step's): nothing follows
      return carry, (params, carry['alphas'], train)

    stages = [*head, arch, after_weight_step]
    mine = jax.eval_shape(lambda g: dict(zip(('alphas', 'arch_opt_state'), arch_step(g)), arch_grads=g), alphas)
    carry, ((grads, _), aux) = plan.chain(lambda i, inputs: gradient_pass(*inputs, i == len(stages) - 1),
                                          stages, {**plan.carry_shapes, **mine})
    # carry['arch_grads'], carry['alphas'], carry['arch_opt_state']; grads, aux: the weight step's pass

  Args:
    method: ``'fd'`` or ``'exact'``.
    loss: ``loss(w, alpha, batch) -> scalar``, the training and the validation loss.
    w, alpha, train_batch, val_batch, eta, momentum_buffer, momentum, weight_decay, fd_epsilon, grad_clip,
      axis_name: as `hypergradient`'s (``fd_epsilon`` is for ``'fd'`` only). ``train_batch`` and ``val_batch``
      have one structure, shape and dtype (the loop carries either).

  Raises:
    ValueError: ``method`` is neither ``'fd'`` nor ``'exact'``.
  """
  if method not in _CHAINED_METHODS:
    raise ValueError(f'one_step_stages is for the methods {", ".join(_CHAINED_METHODS)}, not {method!r}.')
  pmean = _pmean(axis_name)
  if momentum_buffer is None:
    momentum_buffer = jax.tree.map(jnp.zeros_like, w)

  # What passes on between passes: ∇_α L_val(w'), the mixed term, the clip coefficient; for 'fd' also R, the
  # stencil's offset Rv and ∇_α L_train(w⁺). Gradients have their parameters' shapes and dtypes.
  w_shapes, alpha_shapes = jax.eval_shape(lambda: (w, alpha))
  carry_shapes = {'grad_alpha': alpha_shapes, 'mixed': alpha_shapes}
  if grad_clip is not None:
    carry_shapes['clip'] = jax.eval_shape(clip_coefficient, w_shapes, grad_clip)
  if method == 'fd':
    carry_shapes.update(r=jax.eval_shape(_global_norm, w_shapes), offset=w_shapes, plus=alpha_shapes)

  def virtual(carry, out):
    grad_w = out[0][0]
    if grad_clip is not None:
      carry = dict(carry, clip=jax.lax.stop_gradient(clip_coefficient(grad_w, grad_clip)))
      grad_w = jax.tree.map(lambda g: carry['clip'] * g, grad_w)
    w_prime = virtual_step(w, grad_w, momentum_buffer, eta=eta, momentum=momentum, weight_decay=weight_decay)
    return carry, (w_prime, alpha, val_batch)

  def at_w_prime(carry, out):
    v, grad_alpha = out[0]
    if method == 'exact':  # the last stage
      return dict(carry, grad_alpha=grad_alpha, mixed=pmean(exact_mixed_term(loss, w, alpha, train_batch, v))), (
          w, alpha, train_batch)
    r = _fd_radius(v, fd_epsilon)
    offset = jax.tree.map(lambda v_: r * v_, v)
    return (dict(carry, grad_alpha=grad_alpha, r=r, offset=offset),
            (jax.tree.map(jnp.add, w, offset), alpha, train_batch))

  def at_w_plus(carry, out):
    return dict(carry, plus=out[0][1]), (jax.tree.map(jnp.subtract, w, carry['offset']), alpha, train_batch)

  def at_w_minus(carry, out):
    mixed = jax.tree.map(lambda p, m: (p - m) / (2 * carry['r']), carry['plus'], out[0][1])
    return dict(carry, mixed=mixed), (w, alpha, train_batch)  # the last stage

  def chain(gradient_pass, stages, carry_shapes):
    if method == 'exact':
      return chain_gradient_passes(gradient_pass, stages, carry_shapes, (w, alpha, train_batch))
    # The central difference divides the gradients' rounding by 2R: every pass at the dtype's full precision
    # (as `fd_mixed_term`), where TPUs default to bfloat16 passes and GPUs to TF32.
    with jax.default_matmul_precision('highest'):
      return chain_gradient_passes(gradient_pass, stages, carry_shapes, (w, alpha, train_batch))

  def finish(carry):
    scale = eta if grad_clip is None else eta * carry['clip']
    return jax.tree.map(lambda g, h: g - scale * h, carry['grad_alpha'], carry['mixed'])

  stages = [virtual, at_w_prime] if method == 'exact' else [virtual, at_w_prime, at_w_plus, at_w_minus]
  return OneStepStages(stages, carry_shapes, chain, finish)


def _pmean(axis_name: Any) -> Callable[[PyTree], PyTree]:
  """The average over ``axis_name`` (the identity without one)."""
  if axis_name is None:
    return lambda tree: tree
  return lambda tree: jax.lax.pmean(tree, axis_name)


def _alike(x: PyTree, y: PyTree) -> bool:
  """Whether two pytrees have one structure and leaves of one shape and dtype (one loop carry holds either)."""
  x, y = jax.eval_shape(lambda: (x, y))
  return jax.tree.structure(x) == jax.tree.structure(y) and all(
      a.shape == b.shape and a.dtype == b.dtype for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def _one_step(method, train_loss, val_loss, w, alpha, train_batch, val_batch, *, eta, momentum_buffer, momentum,
              weight_decay, fd_epsilon, grad_clip, axis_name, passes):
  """`fd_hypergradient` (``method='fd'``) or `exact_hypergradient`: the passes direct, chained or separate."""
  arrangement = resolve_passes(passes, traced=_traced(w, alpha, train_batch, val_batch, eta, momentum_buffer,
                                                      momentum, weight_decay, fd_epsilon, grad_clip))
  if arrangement == 'separate':
    _check_separate(axis_name)
    return _separate_one_step(method, train_loss, val_loss, w, alpha, train_batch, val_batch, eta=eta,
                              momentum_buffer=momentum_buffer, momentum=momentum, weight_decay=weight_decay,
                              fd_epsilon=fd_epsilon, grad_clip=grad_clip)
  chained = arrangement == 'chained'
  if chained and not (train_loss is val_loss and _alike(train_batch, val_batch)):
    if passes == 'chained':
      raise ValueError("passes='chained' needs one loss function (train_loss is val_loss) and training and "
                       'validation batches of one structure, shape and dtype.')
    chained = False  # 'auto': the direct form handles two losses
  pmean = _pmean(axis_name)
  if momentum_buffer is None:
    momentum_buffer = jax.tree.map(jnp.zeros_like, w)

  if chained:
    plan = one_step_stages(method, train_loss, w, alpha, train_batch, val_batch, eta=eta,
                           momentum_buffer=momentum_buffer, momentum=momentum, weight_decay=weight_decay,
                           fd_epsilon=fd_epsilon, grad_clip=grad_clip, axis_name=axis_name)

    def gradient_pass(i, inputs):
      del i  # every pass is the same gradient
      return pmean(jax.grad(train_loss, argnums=(0, 1))(*inputs)), None

    carry, _ = plan.chain(gradient_pass, plan.stages, plan.carry_shapes)
    return plan.finish(carry)

  grad_w = pmean(jax.grad(train_loss)(w, alpha, train_batch))
  w_prime, mixed_scale = _clipped_virtual_step(w, grad_w, momentum_buffer, eta, momentum, weight_decay, grad_clip)
  v, grad_alpha = pmean(jax.grad(val_loss, argnums=(0, 1))(w_prime, alpha, val_batch))
  if method == 'exact':
    mixed = exact_mixed_term(train_loss, w, alpha, train_batch, v)
  else:
    mixed = fd_mixed_term(train_loss, w, alpha, train_batch, v, fd_epsilon)
  mixed = pmean(mixed)
  return jax.tree.map(lambda g, h: g - mixed_scale * h, grad_alpha, mixed)


# The separate passes: programs jitted at module level, the losses static arguments, so that JAX's cache of compiled
# programs (per function, shapes, dtypes and matmul precision) hands every method and every call the same gradient.
@functools.partial(jax.jit, static_argnums=0)
def _gradient_program(loss: Loss, w: PyTree, alpha: PyTree, batch: Any) -> tuple[PyTree, PyTree]:
  """``(∇_w, ∇_α) loss(w, alpha, batch)``: every pass of the separate ``'first_order'``, ``'fd'`` and ``'exact'``."""
  return jax.grad(loss, argnums=(0, 1))(w, alpha, batch)


@functools.partial(jax.jit, static_argnums=0)
def _exact_mixed_program(loss: Loss, w: PyTree, alpha: PyTree, batch: Any, v: PyTree) -> PyTree:
  return exact_mixed_term(loss, w, alpha, batch, v)


_virtual_step_program = jax.jit(_clipped_virtual_step)


@jax.jit
def _stencil_program(w, v, fd_epsilon):
  """``w ± Rv`` and ``R = ε/‖v‖`` (`fd_mixed_term`'s stencil)."""
  r = _fd_radius(v, fd_epsilon)
  return jax.tree.map(lambda w_, v_: w_ + r * v_, w, v), jax.tree.map(lambda w_, v_: w_ - r * v_, w, v), r


@jax.jit
def _combine_program(grad_alpha, scale, mixed=None, plus=None, minus=None, r=None):
  """``∇_α L_val(w') − η·c·mixed``, the mixed term given or the central difference ``(plus − minus) / 2R``."""
  if mixed is None:
    mixed = jax.tree.map(lambda p, m: (p - m) / (2 * r), plus, minus)
  return jax.tree.map(lambda g, h: g - scale * h, grad_alpha, mixed)


def _separate_one_step(method, train_loss, val_loss, w, alpha, train_batch, val_batch, *, eta, momentum_buffer,
                       momentum, weight_decay, fd_epsilon, grad_clip):
  """``'fd'`` or ``'exact'`` as the direct form computes them, each pass a call of the shared programs."""
  with jax.default_matmul_precision('highest'):
    grad_w, _ = _gradient_program(train_loss, w, alpha, train_batch)
    w_prime, scale = _virtual_step_program(w, grad_w, momentum_buffer, eta, momentum, weight_decay, grad_clip)
    v, grad_alpha = _gradient_program(val_loss, w_prime, alpha, val_batch)
    if method == 'exact':
      return _combine_program(grad_alpha, scale, mixed=_exact_mixed_program(train_loss, w, alpha, train_batch, v))
    w_plus, w_minus, r = _stencil_program(w, v, fd_epsilon)
    plus = _gradient_program(train_loss, w_plus, alpha, train_batch)[1]
    minus = _gradient_program(train_loss, w_minus, alpha, train_batch)[1]
    return _combine_program(grad_alpha, scale, plus=plus, minus=minus, r=r)


@functools.partial(jax.jit, static_argnums=(0, 1, 2),
                   static_argnames=('unroll_steps', 'per_step_batches', 'implicit_iterations'))
def _method_program(function, train_loss, val_loss, w, alpha, train_batch, val_batch, **options):
  """A method's function as one program, cached per function, losses and static options."""
  return function(train_loss, val_loss, w, alpha, train_batch, val_batch, **options)


def _check_separate(axis_name: Any) -> None:
  if axis_name is not None:
    raise ValueError('axis_name averages over a mapped axis (jax.pmap, shard_map): call hypergradient inside the '
                     "mapped function, where passes 'auto' is chained or direct, not separate.")


def _implicit(solve, train_loss, val_loss, w, alpha, train_batch, val_batch, *, implicit_iterations,
              implicit_damping, weight_decay, axis_name):
  """``∇_α L_val − S z`` with ``S z = solve(matvecs, u)``, ``z`` ≈ ``(H + δI)⁻¹ u`` (`implicit_cg_hypergradient`)."""
  if implicit_iterations < 1:
    raise ValueError(f'implicit_iterations ({implicit_iterations}) must be positive.')
  pmean = _pmean(axis_name)
  u, grad_alpha = pmean(jax.grad(val_loss, argnums=(0, 1))(w, alpha, val_batch))
  # One linearisation serves every Hessian-vector product: its tangent maps z to (∇²_ww L_train z, ∇²_αw L_train z).
  # The mixed term is linear in the solution, so the solvers accumulate it from the tangents they compute anyway:
  # one compiled tangent pass, no extra one at the end.
  _, train_grads_jvp = jax.linearize(lambda w_: jax.grad(train_loss, argnums=(0, 1))(w_, alpha, train_batch), w)

  def hessian_and_mixed(z):  # ((H + δI) z, ∇²_αw L_train z)
    hessian_z, mixed_z = pmean(train_grads_jvp(z))
    return _axpy(weight_decay + implicit_damping, z, hessian_z), mixed_z

  mixed = solve(hessian_and_mixed, u)
  return jax.tree.map(lambda g, h: g - h, grad_alpha, mixed)


def _tree_dot(x: PyTree, y: PyTree) -> jax.Array:
  return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def _conjugate_gradient(matvecs, b, iterations):
  """``S z`` for ``z`` after ``iterations`` conjugate-gradient steps on ``A z = b`` from ``z = 0``.

  ``matvecs(x) = (A x, S x)`` for linear maps ``A`` and ``S``; ``S z`` accumulates as ``z`` does. The iterate is
  kept from the first step whose curvature ``pᵀAp`` is not positive on: the residual is zero (solved; in float32
  ``pᵀAp`` underflows there), or ``A`` is not positive definite along ``p`` (damping avoids that).
  """
  def iterate(_, carry):
    side, r, p, rr = carry
    ap, sp = matvecs(p)
    curvature = _tree_dot(p, ap)
    active = curvature > 0
    step = rr / jnp.where(active, curvature, 1.0)
    side_next, r_next = _axpy(step, sp, side), _axpy(-step, ap, r)
    rr_next = _tree_dot(r_next, r_next)
    p_next = _axpy(rr_next / jnp.where(active, rr, 1.0), p, r_next)
    return jax.tree.map(lambda new, old: jnp.where(active, new, old), (side_next, r_next, p_next, rr_next),
                        (side, r, p, rr))

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: matvecs(b)[1]))  # S z for z = 0
  side, *_ = jax.lax.fori_loop(0, iterations, iterate, (zeros, b, b, _tree_dot(b, b)))
  return side


def _neumann(matvecs, u, eta, terms):
  """``S z`` for ``z = eta · Σ_{i<terms} (I − eta·A)^i u``, where ``matvecs(x) = (A x, S x)``."""

  def add_term(_, carry):
    power, side = carry  # power = (I − ηA)^i u; side = Σ_{j<i} S (I − ηA)^j u
    a_power, s_power = matvecs(power)
    return _axpy(-eta, a_power, power), jax.tree.map(jnp.add, side, s_power)

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: matvecs(u)[1]))
  _, side = jax.lax.fori_loop(0, terms, add_term, (u, zeros))
  return jax.tree.map(lambda x: eta * x, side)
