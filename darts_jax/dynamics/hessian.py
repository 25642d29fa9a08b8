"""The extreme eigenvalues of the Hessian of a loss w.r.t. the architecture parameters (Zela et al., ICLR 2020).

R-DARTS observed that the largest eigenvalue of ``∇²_α L_val`` grows while a DARTS search degrades: the alphas
settle into a sharp region, and discretising them (rounding every edge to one op) then costs much validation
accuracy. The alphas are a few hundred numbers, but their Hessian passes through the whole network, so it is never
formed: Lanczos iterations need only Hessian-vector products, computed forward over reverse (the tangent of
``jax.grad``, linearised once, then applied per iteration) or, where compile time matters more than the last digits,
by a central difference of gradients (`HVP_METHODS`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

PyTree = Any
HVP_METHODS = ('exact', 'fd')
"""How Hessian-vector products are computed: ``'exact'``, forward over reverse (the tangent of the gradient: a
program about twice the gradient's, which on XLA:CPU takes about as long again to compile as the gradient); ``'fd'``,
``(∇f(α + εv) − ∇f(α − εv)) / 2ε`` with both gradients from one compiled copy (``lax.map``), accurate to ``O(ε²)``
plus the gradients' rounding divided by ``2ε``."""


def _lanczos_ritz_values(matvec: Callable[[jax.Array], tuple[jax.Array, Any]], size: int, dtype: Any,
                         num_iterations: int, rng: jax.Array) -> tuple[jax.Array, Any]:
  r"""The Ritz values (ascending) after `num_iterations` Lanczos steps on a symmetric ``size × size`` operator.

  Lanczos builds an orthonormal basis ``V`` of the Krylov space ``{v, Hv, ..., H^{k-1} v}`` in which
  ``T = Vᵀ H V`` is tridiagonal (``T_jj = v_jᵀ H v_j``, ``T_{j,j+1} = ‖residual_j‖``); the extreme eigenvalues of
  ``T`` converge to those of ``H`` much faster than power iteration's Rayleigh quotient (at a rate set by the gap
  relative to the whole spectrum, not by ``|λ₂/λ₁|``). Every new vector is orthogonalised against all previous ones,
  twice (cheap: ``size`` is small), so rounding does not bring back converged directions. At ``k = size`` the
  eigenvalues of ``T`` are those of ``H``. A residual of exactly zero (an invariant subspace) leaves the next vectors
  0, which only adds zero eigenvalues to ``T``.

  ``matvec(v) -> (Hv, aux)`` takes and returns vectors of `dtype`; the `aux` of the first product is returned with
  the Ritz values. The basis and ``T`` are kept in `dtype`, at least float32.
  """
  k = min(num_iterations, size)
  basis_dtype = jnp.promote_types(dtype, jnp.float32)
  v0 = jax.random.normal(rng, (size,), basis_dtype)
  basis = jnp.zeros((k + 1, size), basis_dtype).at[0].set(v0 / jnp.linalg.norm(v0))
  # Orthogonality is what keeps Lanczos from finding converged eigenvalues again: the projections are matmuls, which
  # TPUs compute in bfloat16 passes by default (and GPUs in TF32), far coarser than the vectors' own precision.
  project = lambda a, b: jnp.matmul(a, b, precision=lax.Precision.HIGHEST)  # noqa: E731

  def body(carry, j):
    basis, diagonal, off_diagonal = carry
    w, aux = matvec(basis[j].astype(dtype))
    w = w.astype(basis_dtype)
    diagonal = diagonal.at[j].set(project(basis[j], w))
    for _ in range(2):  # classical Gram-Schmidt, repeated: orthogonal to the basis' precision
      w = w - project(basis.T, project(basis, w))
    norm = jnp.linalg.norm(w)
    off_diagonal = off_diagonal.at[j].set(norm)
    basis = basis.at[j + 1].set(jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), 0.0))
    return (basis, diagonal, off_diagonal), aux

  # The products' `aux` leave the loop stacked (small: the operator's size): a carry would need their shapes first,
  # which only tracing `matvec` once more (a network's gradient) would give.
  (_, diagonal, off_diagonal), auxes = lax.scan(
      body, (basis, jnp.zeros(k, basis_dtype), jnp.zeros(k, basis_dtype)), jnp.arange(k))
  first_aux = jax.tree.map(lambda stacked: stacked[0], auxes)
  tridiagonal = jnp.diag(diagonal) + jnp.diag(off_diagonal[:-1], 1) + jnp.diag(off_diagonal[:-1], -1)
  return jnp.linalg.eigvalsh(tridiagonal), first_aux


def _dominant(ritz_values: jax.Array) -> jax.Array:
  return ritz_values[jnp.argmax(jnp.abs(ritz_values))]


def hessian_ritz_values_and_gradient(loss_fn: Callable[[PyTree], jax.Array], alphas: PyTree, *,
                                     num_iterations: int = 20, rng: jax.Array | None = None,
                                     axis_name: str | None = None, method: str = 'exact',
                                     fd_epsilon: float = 1e-2) -> tuple[jax.Array, PyTree]:
  """The Lanczos Ritz values of the Hessian (ascending, ``min(num_iterations, size)`` of them; the first and the
  last converge to its smallest and largest eigenvalues) and the gradient ``∇ loss_fn(alphas)``, which its
  Hessian-vector products compute anyway (with ``'fd'``: the mean of the first central difference's two gradients,
  exact up to ``O(ε²)``). Arguments as `dominant_hessian_eigenvalue`'s."""
  if num_iterations < 1:
    raise ValueError(f'num_iterations must be positive, got {num_iterations}.')
  if method not in HVP_METHODS:
    raise ValueError(f'Unknown Hessian-vector product method {method!r}; expected one of {", ".join(HVP_METHODS)}.')
  rng = jax.random.key(0) if rng is None else rng
  pmean = (lambda tree: tree) if axis_name is None else (lambda tree: lax.pmean(tree, axis_name))
  flat, unravel = ravel_pytree(alphas)

  def gradient(x):
    return pmean(ravel_pytree(jax.grad(loss_fn)(unravel(x)))[0])

  if method == 'exact':
    # One forward and backward pass; the Lanczos loop then applies only their tangent (∇² loss · v).
    grad, hvp = jax.linearize(gradient, flat)
    matvec = lambda v: (hvp(v), grad)  # noqa: E731
  else:
    def matvec(v):  # v has norm 1 (a Lanczos vector)
      # The difference of two gradients is divided by 2ε: they need their dtype's full precision, which matmuls on
      # TPU (bfloat16 passes) and GPU (TF32) do not give by default.
      with jax.default_matmul_precision('highest'):
        plus, minus = lax.map(gradient, jnp.stack([flat + fd_epsilon * v, flat - fd_epsilon * v]))
      return (plus - minus) / (2 * fd_epsilon), (plus + minus) / 2
  ritz_values, grad = _lanczos_ritz_values(matvec, flat.size, flat.dtype, num_iterations, rng)
  return ritz_values, unravel(grad)


def hessian_eigenvalue_and_gradient(loss_fn: Callable[[PyTree], jax.Array], alphas: PyTree, *,
                                    num_iterations: int = 20, rng: jax.Array | None = None,
                                    axis_name: str | None = None, method: str = 'exact',
                                    fd_epsilon: float = 1e-2) -> tuple[jax.Array, PyTree]:
  """`dominant_hessian_eigenvalue` and the gradient ``∇ loss_fn(alphas)`` (`hessian_ritz_values_and_gradient`)."""
  ritz_values, grad = hessian_ritz_values_and_gradient(loss_fn, alphas, num_iterations=num_iterations, rng=rng,
                                                       axis_name=axis_name, method=method, fd_epsilon=fd_epsilon)
  return _dominant(ritz_values), grad


def dominant_hessian_eigenvalue(loss_fn: Callable[[PyTree], jax.Array], alphas: PyTree, *, num_iterations: int = 20,
                                rng: jax.Array | None = None, axis_name: str | None = None, method: str = 'exact',
                                fd_epsilon: float = 1e-2) -> jax.Array:
  r"""The eigenvalue of largest magnitude of the Hessian :math:`\nabla^2 f(\alpha)` of ``f = loss_fn``.

  Computed by `num_iterations` Lanczos steps over Hessian-vector products
  :math:`\nabla^2 f\, v = \frac{d}{dt} \nabla f(\alpha + t v)|_{t=0}` (forward over reverse: ``jax.linearize`` of
  ``jax.grad(loss_fn)``), so the Hessian is never formed: each step costs about one more backward pass. With
  ``num_iterations`` at least the number of parameters the result is exact up to rounding; with fewer it converges from
  below in magnitude, fast when the dominant eigenvalue is separated from the rest of the spectrum. Jittable and
  pmappable.

  Args:
    loss_fn: ``loss_fn(alphas) -> scalar``; under ``pmap`` with `axis_name`, each device's share of a loss whose
      gradient is the mean of the devices' (as in the search step).
    alphas: the point, any pytree of float arrays.
    num_iterations: Lanczos steps (Hessian-vector products); capped at the number of parameters.
    rng: PRNG key of the random start vector; ``jax.random.key(0)`` by default.
    axis_name: the pmap axis over which gradients and Hessian-vector products are averaged; None outside pmap.
    method: how Hessian-vector products are computed, ``'exact'`` or ``'fd'`` (`HVP_METHODS`).
    fd_epsilon: for ``'fd'``: the step ``ε`` along the unit Lanczos vector.

  Returns:
    A scalar in the alphas' dtype, at least float32 (float64 for float64 alphas), with its sign (negative when the
    loss curves down most strongly).
  """
  return hessian_eigenvalue_and_gradient(loss_fn, alphas, num_iterations=num_iterations, rng=rng,
                                         axis_name=axis_name, method=method, fd_epsilon=fd_epsilon)[0]
