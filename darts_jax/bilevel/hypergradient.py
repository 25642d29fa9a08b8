"""Architecture gradients of the bilevel problem: one-step (DARTS), k-step unrolled and implicit hypergradients.

Generic over parameter pytrees and losses: nothing here knows about the DARTS
supernet. Pure and jittable.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
Loss = Callable[[PyTree, PyTree, Any], jax.Array]

METHODS = ('first_order', 'fd', 'exact', 'unrolled', 'implicit_cg',
           'implicit_neumann')

PASSES = ('auto', 'chained', 'direct')
"""How ``'fd'`` and ``'exact'`` arrange their gradient passes (`hypergradient`'s ``passes``; the search step's
``second_order_impl``)."""
# What 'auto' picks per backend (`jax.default_backend()`). On XLA:CPU code generation dominates compile time; the
# chained passes compile the gradient once instead of once per pass: 37-43% fewer kernels in the search step and less
# temporary memory (docs/benchmarks.md). Elsewhere compiling weighs less, and the direct form leaves XLA free to fuse
# across the passes, which the loop and its switch prevent (not yet measured on a GPU).
AUTO_PASSES = {'cpu': 'chained'}
AUTO_PASSES_ELSEWHERE = 'direct'
_CHAINED_METHODS = ('fd', 'exact')


def resolve_passes(passes: str, backend: str | None = None, *, name: str = 'passes') -> str:
  """``passes``, with ``'auto'`` replaced by the arrangement for `backend` (default: `jax.default_backend()`).

  Raises:
    ValueError: ``passes`` is not in `PASSES` (the message names the argument ``name``).
  """
  if passes not in PASSES:
    raise ValueError(f'Unknown {name} {passes!r}; expected one of {", ".join(PASSES)}.')
  if passes != 'auto':
    return passes
  return AUTO_PASSES.get(backend or jax.default_backend(), AUTO_PASSES_ELSEWHERE)


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
  def body(i, loop_state):
    carry, inputs, _ = loop_state
    out = gradient_pass(i, inputs)
    carry, inputs = jax.lax.switch(i, stages, carry, out)
    return carry, inputs, out

  no_output = _zeros(jax.eval_shape(gradient_pass, 0, inputs))
  carry, _, out = jax.lax.fori_loop(0, len(stages), body, (_zeros(carry_shapes), inputs, no_output))
  return carry, out


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


def fd_mixed_term(train_loss: Loss, w: PyTree, alpha: PyTree,
                  train_batch: Any, v: PyTree, fd_epsilon) -> PyTree:
  r"""The paper's central difference for :math:`\nabla^2_{\alpha w} L_{train}\, v`.

  :math:`(\nabla_\alpha L_{train}(w^+) - \nabla_\alpha L_{train}(w^-)) / 2R`
  with :math:`w^\pm = w \pm R v`, :math:`R = \epsilon / \lVert v \rVert_2`
  (per device: the caller averages it over devices). Its gradients are
  computed at the highest matmul precision (float32 or float64 as their
  inputs, never bfloat16 passes or TF32).
  """
  norm = _global_norm(v)
  # v == 0 gives w± = w and a zero mixed term for any finite R.
  r = fd_epsilon / jnp.where(norm > 0, norm, 1.0)
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
  docs/benchmarks.md): 40% less time per search step, 66% less temporary
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
    passes: str = 'direct',
) -> PyTree:
  r"""Gradient of the validation loss w.r.t. ``alpha`` through the weights' dependence on it.

  The bilevel problem is :math:`\min_\alpha L_{val}(w^*(\alpha), \alpha)` with
  :math:`w^*(\alpha)` minimising :math:`L_{train}(\cdot, \alpha)` (plus the
  coupled L2 term :math:`\frac\lambda2\lVert w\rVert^2` of the weight
  optimiser). The methods differ in what stands in for :math:`w^*`.

  **One virtual step** (DARTS, Liu et al., 2019, Sec. 2.3): one step of the
  weight optimiser (heavy-ball SGD with L2 decay, as in PyTorch ``SGD`` and
  the reference ``architect.py``):

  .. math::

    w'(\alpha) = w - \eta \, (\mu m + \nabla_w L_{train}(w, \alpha) + \lambda w),

  where :math:`m` is the momentum buffer (the trace kept by ``optax.trace``;
  zeros if ``None``), :math:`\mu` the momentum and :math:`\lambda` the weight
  decay. With ``grad_clip`` (the RNN search of the original, ``architect.py``:
  plain SGD, :math:`\mu = 0`), the training gradient is first clipped to
  global norm ``grad_clip``: :math:`w' = w - \eta\,(\mu m + c\,\nabla_w
  L_{train} + \lambda w)` with :math:`c = \min(1, \text{grad\_clip} /
  (\lVert \nabla_w L_{train} \rVert_2 + 10^{-6}))` treated as a constant,
  so the mixed term below is scaled by :math:`c` too and ``'exact'`` is still
  ``jax.grad`` through this step (with :math:`c` under ``stop_gradient``).
  Without it no clipping is applied to virtual steps. With
  :math:`v = \nabla_{w'} L_{val}(w', \alpha)`:

  * ``'first_order'``: :math:`\nabla_\alpha L_{val}(w, \alpha)` (DARTS 1st
    order, i.e. :math:`\eta = 0`; no virtual step).
  * ``'exact'``: :math:`\nabla_\alpha L_{val}(w', \alpha) - \eta\,
    \nabla^2_{\alpha, w} L_{train}(w, \alpha)\, v`, with the mixed term by
    forward-over-reverse differentiation (the tangent of
    :math:`w \mapsto \nabla_\alpha L_{train}(w, \alpha)` in direction
    :math:`v`). This *is* the total derivative
    :math:`\frac{d}{d\alpha} L_{val}(w'(\alpha), \alpha)`, i.e. what
    ``jax.grad`` through the unrolled step gives: by the chain rule it equals
    :math:`\partial_\alpha L_{val}(w', \alpha) + (\partial w' / \partial
    \alpha)^\top v`; :math:`\mu m` and :math:`\lambda w` do not depend on
    :math:`\alpha`, so :math:`\partial w' / \partial \alpha = -\eta\,
    \partial_\alpha \nabla_w L_{train}`, and by symmetry of mixed partials its
    transpose applied to :math:`v` is :math:`-\eta\, \nabla^2_{\alpha, w}
    L_{train}\, v`.
  * ``'fd'``: as ``'exact'`` with the mixed term replaced by the paper's
    central difference at :math:`w` (Eq. 8),
    :math:`(\nabla_\alpha L_{train}(w^+, \alpha) - \nabla_\alpha
    L_{train}(w^-, \alpha)) / 2R`, :math:`w^\pm = w \pm R v`,
    :math:`R = \epsilon / \lVert v \rVert_2` (global norm over all leaves;
    :math:`v = 0` gives a zero mixed term). Its error is
    :math:`O(\epsilon^2)`; it is exact on quadratics.

  **k virtual steps** (``'unrolled'``, truncated back-propagation; Betty's
  DARTS example uses k = 3): :math:`k` = ``unroll_steps`` steps of the same
  optimiser, the momentum buffer evolving with them,

  .. math::

    m_{i+1} = \mu m_i + \nabla_w L_{train}(w_i, \alpha; b_i) + \lambda w_i,
    \qquad w_{i+1} = w_i - \eta\, m_{i+1},

  from :math:`(w_0, m_0) = (w, m)`, and the exact
  :math:`\frac{d}{d\alpha} L_{val}(w_k(\alpha), \alpha)` by reverse-mode
  differentiation through the steps. The training batch :math:`b_i` is
  ``train_batch`` at every step, or its ``i``-th slice along the leading
  axis with ``per_step_batches``. The reverse pass is written out as a
  reverse ``lax.scan``: the forward scan stores only the weight iterates
  :math:`w_i`, :math:`i < k` (:math:`k` times the weights' memory; the
  momentum enters linearly, so its iterates are not needed), and each
  backward step recomputes its training gradient's tangent at :math:`w_i`
  in the direction of the incoming cotangent :math:`c`, which gives both
  :math:`\nabla^2_{ww} L_{train}\, c` (the Hessian is symmetric: its
  vector-Jacobian product is its Jacobian-vector product) and
  :math:`\nabla^2_{\alpha w} L_{train}\, c`. So only one step's
  activations are alive at once, and nothing is differentiated reverse over
  reverse (on the supernet that is the slow path: 5.5x the step time of
  ``'exact'`` at k = 3 when left to ``jax.grad`` through a checkpointed
  scan). ``unroll_steps=1`` equals ``'exact'``.

  **Implicit** (the implicit function theorem at an inner optimum: iDARTS,
  Zhang et al., 2021; hypertorch; TorchOpt's ``custom_root``): ``w`` itself is
  treated as :math:`w^*(\alpha)`, where
  :math:`\nabla_w L_{train} + \lambda w = 0`, hence
  :math:`dw^*/d\alpha = -H^{-1} \nabla^2_{w, \alpha} L_{train}` and

  .. math::

    \nabla_\alpha L_{val}(w, \alpha) - \nabla^2_{\alpha, w} L_{train}\,
    H^{-1} \nabla_w L_{val}(w, \alpha), \qquad
    H = \nabla^2_{ww} L_{train}(w, \alpha) + \lambda I.

  :math:`H^{-1}` is applied to :math:`u = \nabla_w L_{val}` approximately,
  with Hessian-vector products by forward-over-reverse differentiation (the
  training gradient is linearised once and its tangent reused):

  * ``'implicit_cg'``: ``implicit_iterations`` conjugate-gradient iterations
    on :math:`(H + \delta I) z = u` from :math:`z = 0` (Hestenes-Stiefel;
    :math:`\delta` = ``implicit_damping`` makes an indefinite or
    ill-conditioned :math:`H` tractable; at a direction of non-positive
    curvature the iteration stops with its current iterate). On a positive
    definite :math:`H` of dimension :math:`n`, :math:`n` iterations are
    exact.
  * ``'implicit_neumann'``: the truncated Neumann series
    :math:`z = \eta \sum_{i<K} (I - \eta (H + \delta I))^i u`,
    :math:`K` = ``implicit_iterations``, with the inner learning rate
    ``eta`` as the series' step (iDARTS). It converges to
    :math:`(H + \delta I)^{-1} u` as :math:`K \to \infty` when
    :math:`0 < \eta < 2 / \lambda_{max}`, the error shrinking like
    :math:`\max_i |1 - \eta \lambda_i|^K`.

  Momentum does not move an optimum, so the implicit methods ignore
  ``momentum_buffer`` and ``momentum``.

  **Passes** (``'fd'`` and ``'exact'``, when the training and validation
  losses are one function, as in DARTS). ``passes='direct'`` composes the
  gradients as written above; XLA compiles each call site separately, and on
  CPU code generation dominates compile time, so a network's gradient is
  compiled once per pass. ``passes='chained'`` evaluates the full gradients
  :math:`(\nabla_w, \nabla_\alpha) L` as the iterations of one loop over one
  compiled copy (`chain_gradient_passes`, as the search step's
  ``second_order_impl='chained'``): ``'fd'`` at
  :math:`(w, b_{train})`, :math:`(w', b_{val})`,
  :math:`(w^+, b_{train})`, :math:`(w^-, b_{train})`, all four at the
  highest matmul precision; ``'exact'`` at :math:`(w, b_{train})` and
  :math:`(w', b_{val})`, then the mixed term's ``jax.jvp``. The same
  arithmetic in another order: equal up to rounding. It needs
  ``train_loss is val_loss`` and batches of one structure, shape and dtype;
  ``'auto'`` chains where it can on CPU (`AUTO_PASSES`) and is direct
  elsewhere. The other methods ignore ``passes``: their repeated passes are
  already loops (``lax.scan``, ``lax.fori_loop``) with one compiled body.

  Cost in forward+backward (F+B) passes of the losses: ``'first_order'`` 1;
  ``'fd'`` 4 (the training gradient for the virtual step, the validation
  gradient at :math:`w'`, two :math:`\alpha`-gradients at :math:`w^\pm`);
  ``'exact'`` about the same: the training gradient for the virtual step,
  the validation gradient at :math:`w'`, and the mixed term by one
  ``jax.jvp`` of the :math:`\alpha`-gradient (`exact_mixed_term`: a primal
  and a tangent pass, at most about 2 F+B), each pass's memory freed before
  the next. Under ``jit`` on a one-cell supernet (CPU) a search step with it
  took 0.6x the time and 0.34x the temporary memory of one that linearised
  the training gradient to share its primal pass. ``'unrolled'``: :math:`k`
  training gradients forward, the validation gradient, and per step backward
  one tangent pass of the training gradient (about 2 F+B). Implicit: the
  validation gradient, the linearised training gradient, and one tangent
  pass per iteration. docs/benchmarks.md has measured times.

  Args:
    train_loss: ``train_loss(w, alpha, batch) -> scalar``.
    val_loss: ``val_loss(w, alpha, batch) -> scalar``.
    w: weights (any pytree).
    alpha: architecture parameters (any pytree).
    train_batch: batch passed to ``train_loss`` (for ``'unrolled'`` with
      ``per_step_batches``, ``unroll_steps`` batches stacked on a leading
      axis).
    val_batch: batch passed to ``val_loss``.
    eta: learning rate of the virtual steps, and the Neumann series' step;
      may be a traced scalar (e.g. a schedule value).
    method: one of :data:`METHODS`.
    momentum_buffer: momentum buffer :math:`m` of the weight optimiser, a
      pytree like ``w``; ``None`` means zeros.
    momentum: :math:`\mu`.
    weight_decay: :math:`\lambda` (coupled L2 decay, added to the gradient).
    fd_epsilon: :math:`\epsilon` for ``'fd'`` (DARTS uses 0.01).
    unroll_steps: :math:`k` for ``'unrolled'``.
    per_step_batches: for ``'unrolled'``: ``train_batch`` holds one batch
      per step, stacked on a leading axis of length ``unroll_steps``.
    implicit_iterations: conjugate-gradient iterations, or Neumann terms.
    implicit_damping: :math:`\delta` added to the diagonal of :math:`H`.
    grad_clip: for ``'fd'`` and ``'exact'``: clip the virtual step's training
      gradient to this global norm (see above); ``None``: no clipping.
    axis_name: for data parallelism where each device holds a shard of both
      batches and the losses are per-device means: every gradient is
      ``pmean``-ed over this axis, so the result equals the single-device
      hypergradient on the global batches. This is for per-device gradients,
      i.e. ``jax.pmap`` or ``jax.shard_map(..., check_vma=False)``. Under
      ``shard_map`` with ``check_vma=True`` JAX already sums gradients of
      replicated inputs over devices; there, make the losses global means
      (``jax.lax.pmean`` of the per-device mean) and leave ``axis_name=None``.
    passes: one of `PASSES`: ``'direct'``, ``'chained'`` (one compiled
      gradient for the passes of ``'fd'`` and ``'exact'``; needs one loss
      function and like batches) or ``'auto'`` (chained on CPU where
      possible, else direct). See "Passes" above.

  Returns:
    The hypergradient, a pytree like ``alpha``.

  Raises:
    ValueError: if ``method`` is not in :data:`METHODS`, a step or
      iteration count is not positive, ``grad_clip`` is given to a method
      other than ``'first_order'``, ``'fd'`` or ``'exact'``, ``passes`` is
      not in `PASSES`, or ``passes='chained'`` meets two loss functions or
      unlike batches.
  """
  if method not in METHODS:
    raise ValueError(
        f'Unknown hypergradient method {method!r}; expected one of {METHODS}.'
    )
  if unroll_steps < 1 or implicit_iterations < 1:
    raise ValueError(
        f'unroll_steps ({unroll_steps}) and implicit_iterations '
        f'({implicit_iterations}) must be positive.'
    )

  if grad_clip is not None and method not in ('first_order', 'fd', 'exact'):
    raise ValueError(f'grad_clip applies to the one-step methods first_order, fd and exact, not {method!r}.')

  chained = resolve_passes(passes) == 'chained' and method in _CHAINED_METHODS
  if chained and not (train_loss is val_loss and _alike(train_batch, val_batch)):
    if passes == 'chained':
      raise ValueError("passes='chained' needs one loss function (train_loss is val_loss) and training and "
                       'validation batches of one structure, shape and dtype.')
    chained = False  # 'auto': the direct form handles two losses

  def pmean(tree):
    if axis_name is None:
      return tree
    return jax.lax.pmean(tree, axis_name)

  if method == 'first_order':
    return pmean(jax.grad(val_loss, argnums=1)(w, alpha, val_batch))
  if momentum_buffer is None:
    momentum_buffer = jax.tree.map(jnp.zeros_like, w)
  if chained:
    return _one_step_chained(train_loss, w, alpha, train_batch, val_batch, method=method, eta=eta,
                             momentum_buffer=momentum_buffer, momentum=momentum, weight_decay=weight_decay,
                             fd_epsilon=fd_epsilon, grad_clip=grad_clip, pmean=pmean)
  if method == 'unrolled':
    return _unrolled(train_loss, val_loss, w, alpha, train_batch, val_batch,
                     eta=eta, momentum_buffer=momentum_buffer,
                     momentum=momentum, weight_decay=weight_decay,
                     steps=unroll_steps, per_step_batches=per_step_batches,
                     pmean=pmean)

  def train_grads(w_):
    return jax.grad(train_loss, argnums=(0, 1))(w_, alpha, train_batch)

  if method.startswith('implicit'):
    u, grad_alpha = pmean(
        jax.grad(val_loss, argnums=(0, 1))(w, alpha, val_batch))
    # One linearisation serves every Hessian-vector product: its tangent maps
    # z to (∇²_ww L_train z, ∇²_αw L_train z). The mixed term is linear in
    # the solution, so the solvers accumulate it from the tangents they
    # compute anyway: one compiled tangent pass, no extra one at the end.
    _, train_grads_jvp = jax.linearize(train_grads, w)

    def hessian_and_mixed(z):  # ((H + δI) z, ∇²_αw L_train z)
      hessian_z, mixed_z = pmean(train_grads_jvp(z))
      return _axpy(weight_decay + implicit_damping, z, hessian_z), mixed_z

    solve = (_conjugate_gradient if method == 'implicit_cg' else
             lambda matvec, b, k: _neumann(matvec, b, eta, k))
    mixed = solve(hessian_and_mixed, u, implicit_iterations)
    return jax.tree.map(lambda g, h: g - h, grad_alpha, mixed)

  grad_w = pmean(jax.grad(train_loss)(w, alpha, train_batch))
  mixed_scale = eta
  if grad_clip is not None:
    clip = jax.lax.stop_gradient(clip_coefficient(grad_w, grad_clip))
    grad_w = jax.tree.map(lambda g: clip * g, grad_w)
    mixed_scale = eta * clip  # w' moves along c·∇_w L_train: so does its α-derivative

  w_prime = virtual_step(w, grad_w, momentum_buffer, eta=eta,
                         momentum=momentum, weight_decay=weight_decay)

  v, grad_alpha = pmean(
      jax.grad(val_loss, argnums=(0, 1))(w_prime, alpha, val_batch)
  )

  if method == 'exact':
    mixed = exact_mixed_term(train_loss, w, alpha, train_batch, v)
  else:
    mixed = fd_mixed_term(train_loss, w, alpha, train_batch, v,
                          fd_epsilon)
  mixed = pmean(mixed)

  return jax.tree.map(lambda g, h: g - mixed_scale * h, grad_alpha, mixed)


def _alike(x: PyTree, y: PyTree) -> bool:
  """Whether two pytrees have one structure and leaves of one shape and dtype (one loop carry holds either)."""
  x, y = jax.eval_shape(lambda: (x, y))
  return jax.tree.structure(x) == jax.tree.structure(y) and all(
      a.shape == b.shape and a.dtype == b.dtype for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def _one_step_chained(loss, w, alpha, train_batch, val_batch, *, method, eta, momentum_buffer, momentum,
                      weight_decay, fd_epsilon, grad_clip, pmean):
  """``'fd'`` / ``'exact'`` with ``passes='chained'``: the full gradient of ``loss`` compiled once.

  The passes of `chain_gradient_passes`, each turning the last gradient into the next pass's point:

  0. at ``(w, b_train)``: ``∇_w L_train`` (clipped) gives the virtual step ``w'``;
  1. at ``(w', b_val)``: ``v, ∇_α L_val(w')``; ``'exact'``: the mixed term ``∇²_{αw} L_train · v`` by
     `exact_mixed_term` (the loop ends); ``'fd'``: ``R = ε/‖v‖``, next ``w⁺ = w + Rv``;
  2. ``'fd'``, at ``(w⁺, b_train)``: keep ``∇_α L_train(w⁺)``, next ``w⁻ = w − Rv``;
  3. ``'fd'``, at ``(w⁻, b_train)``: the mixed term ``(∇_α L_train(w⁺) − ∇_α L_train(w⁻)) / 2R``.

  The hypergradient is then ``∇_α L_val(w') − η·c·mixed`` (``c``: the clip coefficient, 1 without clipping).
  """
  def gradient_pass(i, point):
    del i  # every pass is the same gradient
    w_, batch = point
    return pmean(jax.grad(loss, argnums=(0, 1))(w_, alpha, batch))

  # What passes on between passes: ∇_α L_val(w'), the mixed term, the clip coefficient; for 'fd' also R, the
  # stencil's offset Rv and ∇_α L_train(w⁺).
  grad_shapes = jax.eval_shape(gradient_pass, 0, (w, train_batch))
  carry_shapes = {'grad_alpha': grad_shapes[1], 'mixed': grad_shapes[1]}
  if grad_clip is not None:
    carry_shapes['clip'] = jax.eval_shape(clip_coefficient, grad_shapes[0], grad_clip)
  if method == 'fd':
    carry_shapes.update(r=jax.eval_shape(_global_norm, grad_shapes[0]), offset=grad_shapes[0], plus=grad_shapes[1])

  def virtual(carry, grads):
    grad_w = grads[0]
    if grad_clip is not None:
      carry = dict(carry, clip=jax.lax.stop_gradient(clip_coefficient(grad_w, grad_clip)))
      grad_w = jax.tree.map(lambda g: carry['clip'] * g, grad_w)
    w_prime = virtual_step(w, grad_w, momentum_buffer, eta=eta, momentum=momentum, weight_decay=weight_decay)
    return carry, (w_prime, val_batch)

  def at_w_prime(carry, grads):
    v, grad_alpha = grads
    if method == 'exact':  # the last pass
      return dict(carry, grad_alpha=grad_alpha, mixed=pmean(exact_mixed_term(loss, w, alpha, train_batch, v))), (
          w, train_batch)
    norm = _global_norm(v)
    r = fd_epsilon / jnp.where(norm > 0, norm, 1.0)  # v == 0: w± = w, a zero mixed term
    offset = jax.tree.map(lambda v_: r * v_, v)
    return dict(carry, grad_alpha=grad_alpha, r=r, offset=offset), (jax.tree.map(jnp.add, w, offset), train_batch)

  def at_w_plus(carry, grads):
    return dict(carry, plus=grads[1]), (jax.tree.map(jnp.subtract, w, carry['offset']), train_batch)

  def at_w_minus(carry, grads):
    mixed = jax.tree.map(lambda p, m: (p - m) / (2 * carry['r']), carry['plus'], grads[1])
    return dict(carry, mixed=mixed), (w, train_batch)  # the last pass

  if method == 'exact':
    carry, _ = chain_gradient_passes(gradient_pass, [virtual, at_w_prime], carry_shapes, (w, train_batch))
  else:
    # The central difference divides the gradients' rounding by 2R: every pass at the dtype's full precision
    # (as `fd_mixed_term`), where TPUs default to bfloat16 passes and GPUs to TF32.
    with jax.default_matmul_precision('highest'):
      carry, _ = chain_gradient_passes(gradient_pass, [virtual, at_w_prime, at_w_plus, at_w_minus],
                                       carry_shapes, (w, train_batch))
  scale = eta if grad_clip is None else eta * carry['clip']
  return jax.tree.map(lambda g, h: g - scale * h, carry['grad_alpha'], carry['mixed'])


def _unrolled(train_loss, val_loss, w, alpha, train_batch, val_batch, *, eta,
              momentum_buffer, momentum, weight_decay, steps,
              per_step_batches, pmean):
  """``'unrolled'``: reverse mode through ``steps`` SGD steps, written out.

  Forward, a scan of the steps keeps each iterate ``w_i``. Backward, a
  reverse scan carries the cotangents ``(w̄, m̄, ᾱ)``: with
  ``c = m̄ − η w̄`` the cotangent of ``m_{i+1}``, step i sends
  ``w̄ ← w̄ + λc + H_i c``, ``m̄ ← μc``, ``ᾱ ← ᾱ + ∇²_{αw} L_train(w_i)·c``.
  The Hessian is symmetric, so both products are the forward-mode tangent of
  the training gradient at ``w_i`` in direction ``c`` (as in ``'exact'``):
  nothing is differentiated reverse over reverse.
  """

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
  (w_k, _), iterates = jax.lax.scan(forward, (w, momentum_buffer), batches,
                                    length=steps)
  w_bar, alpha_bar = pmean(
      jax.grad(val_loss, argnums=(0, 1))(w_k, alpha, val_batch))

  def backward(carry, xs):
    w_bar, m_bar, alpha_bar = carry
    w_i, step_batch = xs
    c = _axpy(-eta, w_bar, m_bar)
    _, (hessian_c, mixed_c) = pmean(jax.jvp(
        lambda w_: train_grads(w_, batch_of(step_batch)), (w_i,), (c,)))
    w_bar = jax.tree.map(lambda wb, c_, hc: wb + weight_decay * c_ + hc,
                         w_bar, c, hessian_c)
    m_bar = jax.tree.map(lambda c_: momentum * c_, c)
    return (w_bar, m_bar, jax.tree.map(jnp.add, alpha_bar, mixed_c)), None

  zeros = jax.tree.map(jnp.zeros_like, w)
  (_, _, alpha_bar), _ = jax.lax.scan(
      backward, (w_bar, zeros, alpha_bar), (iterates, batches), length=steps,
      reverse=True)
  return alpha_bar


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
