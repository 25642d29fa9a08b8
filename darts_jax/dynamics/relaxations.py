r"""Continuous relaxations of the architecture: from alphas to the mixing weights of every edge's candidate ops.

DARTS mixes the ops of an edge with :math:`w = \mathrm{softmax}(\alpha)`; the variants since change only this map.
Every function here is pure and generic: ``alphas`` is any array whose last axis is the ops (one row per edge), or a
pytree of them (e.g. ``{'normal': (14, 8), 'reduce': (14, 8)}``); stochastic ones take a PRNG key and draw an
independent sample for every row (and every leaf). With noise :math:`g` fixed, each is a differentiable function of
the alphas, so drawing the key once per search step gives one well-defined objective that every pass of the
hypergradient differentiates.

* `softmax`: :math:`\mathrm{softmax}(\alpha / \tau)` (DARTS at :math:`\tau = 1`). :math:`\tau \to \infty` gives
  uniform weights, :math:`\tau \to 0` the one-hot argmax.
* `gumbel_softmax`: :math:`\mathrm{softmax}((\alpha + g) / \tau)`, :math:`g_k \sim \mathrm{Gumbel}(0, 1)` i.i.d.
  (SNAS, Xie et al. 2019; its argmax is a sample of the categorical :math:`\mathrm{softmax}(\alpha)`). With
  ``hard=True`` the forward value is that argmax as a one-hot vector and the gradient is the soft sample's
  (straight-through; GDAS, Dong & Yang 2019).
* `gaussian_softmax`: :math:`\mathrm{softmax}((\alpha + \sigma \epsilon) / \tau)`, :math:`\epsilon \sim N(0, 1)`:
  noise on the alphas before the softmax.
* `sigmoid`: :math:`\sigma(\alpha / \tau)` per op, independent gates that do not compete (FairDARTS, Chu et al. 2020).
* `dirichlet`: a sample of :math:`\mathrm{Dir}(c(\alpha))` with concentration :math:`c = \mathrm{elu}(\alpha) + 1`
  (DrNAS's code) or :math:`\mathrm{softplus}(\alpha)`, reparameterised (implicit gradients of the gamma samples;
  DrNAS, Chen et al. 2021). Its mean :math:`c / \sum c` is `dirichlet_mean`.
* `uniform_perturbation`: :math:`\mathrm{clip}(w + u, 0, 1)`, renormalised, :math:`u \sim U[-\epsilon, \epsilon]`:
  SDARTS-RS's random smoothing of the weights for the weight step (Chen & Hsieh 2020).
* `adversarial_perturbation`: the worst case of the weight step's loss within :math:`\epsilon` of the weights, by
  projected gradient ascent (`project_to_ball`): SDARTS-ADV's.
* `uniform_path`: one op per row drawn uniformly, one-hot (random search with weight sharing, Li & Talwalkar 2019):
  the alphas play no part.

`Relaxation` bundles one choice with its temperature schedule, as the search step uses it: `Relaxation.sample` for
training, `Relaxation.deterministic` for evaluation (noise off, hard → argmax, Dirichlet → mean) and
`Relaxation.probabilities` (the same without the hard rounding) for the genotype and the regularisers.

Schedules are optax-style functions of the step, from ``init`` to ``end`` over ``transition_steps`` and constant
after: `constant_schedule`, `linear_schedule`, `exponential_schedule`
(:math:`\mathrm{init} \cdot (\mathrm{end} / \mathrm{init})^{t / T}`, what most papers anneal the temperature with),
`cosine_schedule`; `per_epoch` makes any of them change at epoch boundaries only, as the papers' per-epoch schedules.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
Schedule = Callable[[jax.Array | int], jax.Array]

RELAXATIONS = ('softmax', 'gumbel_softmax', 'gaussian_softmax', 'sigmoid', 'dirichlet', 'uniform_path')
"""The names `Relaxation` accepts."""
CONCENTRATIONS = ('elu', 'softplus')
"""The Dirichlet concentrations of `dirichlet`: ``elu(α) + 1`` (DrNAS's code) or ``softplus(α)``."""
SCHEDULES = ('constant', 'linear', 'exponential', 'cosine')
"""The schedule kinds of `make_schedule`."""


def _map_with_keys(fn: Callable[[jax.Array, jax.Array], jax.Array], rng: jax.Array, tree: PyTree) -> PyTree:
  """``fn(key, leaf)`` for every leaf, each with its own key split from `rng`."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(treedef, [fn(key, leaf) for key, leaf in zip(keys, leaves)])


@jax.custom_jvp
def _straight_through_one_hot(soft: jax.Array) -> jax.Array:
  return jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)


@_straight_through_one_hot.defjvp
def _straight_through_jvp(primals, tangents):
  # The identity on tangents: the derivative of the soft weights passes through the rounding. A custom rule rather
  # than ``hard + soft - stop_gradient(soft)``, whose forward value is one-hot only up to rounding.
  (soft,), (tangent,) = primals, tangents
  return _straight_through_one_hot(soft), tangent


def one_hot_argmax(weights: PyTree) -> PyTree:
  """The one-hot argmax of every row (ties: the first op), without gradient."""
  return jax.tree.map(lambda w: jax.lax.stop_gradient(_straight_through_one_hot(w)), weights)


def straight_through(weights: PyTree) -> PyTree:
  """The one-hot argmax of every row forward; the gradient of `weights` backward (straight-through estimator)."""
  return jax.tree.map(_straight_through_one_hot, weights)


def _maybe_hard(weights: PyTree, hard: bool) -> PyTree:
  return straight_through(weights) if hard else weights


def softmax(alphas: PyTree, temperature: float | jax.Array = 1.0, hard: bool = False) -> PyTree:
  r""":math:`\mathrm{softmax}(\alpha / \tau)` over the last axis; ``hard``: its one-hot argmax with its gradient."""
  return _maybe_hard(jax.tree.map(lambda a: jax.nn.softmax(a / temperature, axis=-1), alphas), hard)


def gumbel_softmax(rng: jax.Array, alphas: PyTree, temperature: float | jax.Array = 1.0, hard: bool = False
                   ) -> PyTree:
  r"""A Gumbel-softmax sample :math:`\mathrm{softmax}((\alpha + g) / \tau)`, :math:`g \sim \mathrm{Gumbel}(0, 1)`.

  ``hard=True``: the sample's one-hot argmax forward (a sample of the categorical :math:`\mathrm{softmax}(\alpha)`)
  and the soft sample's gradient backward (GDAS).
  """
  soft = _map_with_keys(
      lambda key, a: jax.nn.softmax((a + jax.random.gumbel(key, a.shape, a.dtype)) / temperature, axis=-1),
      rng, alphas)
  return _maybe_hard(soft, hard)


def gaussian_softmax(rng: jax.Array, alphas: PyTree, noise_scale: float | jax.Array,
                     temperature: float | jax.Array = 1.0, hard: bool = False) -> PyTree:
  r""":math:`\mathrm{softmax}((\alpha + \sigma \epsilon) / \tau)`, :math:`\epsilon \sim N(0, 1)`,
  :math:`\sigma` = ``noise_scale``."""
  soft = _map_with_keys(
      lambda key, a: jax.nn.softmax((a + noise_scale * jax.random.normal(key, a.shape, a.dtype)) / temperature,
                                    axis=-1),
      rng, alphas)
  return _maybe_hard(soft, hard)


def sigmoid(alphas: PyTree, temperature: float | jax.Array = 1.0) -> PyTree:
  r"""Independent gates :math:`\sigma(\alpha / \tau)` (FairDARTS): each op's weight in (0, 1), rows not
  normalised."""
  return jax.tree.map(lambda a: jax.nn.sigmoid(a / temperature), alphas)


def concentration(alphas: PyTree, kind: str = 'elu') -> PyTree:
  """The Dirichlet concentration of `dirichlet`: ``elu(α) + 1`` or ``softplus(α)`` (`CONCENTRATIONS`)."""
  if kind not in CONCENTRATIONS:
    raise ValueError(f'Unknown concentration {kind!r}; expected one of {", ".join(CONCENTRATIONS)}.')
  fn = (lambda a: jax.nn.elu(a) + 1) if kind == 'elu' else jax.nn.softplus
  return jax.tree.map(fn, alphas)


def dirichlet(rng: jax.Array, alphas: PyTree, concentration_kind: str = 'elu', hard: bool = False) -> PyTree:
  r"""A reparameterised sample of :math:`\mathrm{Dir}(c(\alpha))` per row (DrNAS); differentiable in the alphas
  through the implicit gradients of ``jax.random.gamma``."""
  soft = _map_with_keys(lambda key, c: jax.random.dirichlet(key, c, dtype=c.dtype), rng,
                        concentration(alphas, concentration_kind))
  return _maybe_hard(soft, hard)


def dirichlet_mean(alphas: PyTree, concentration_kind: str = 'elu') -> PyTree:
  r"""The mean :math:`c / \sum_k c_k` of `dirichlet`'s distribution."""
  return jax.tree.map(lambda c: c / jnp.sum(c, axis=-1, keepdims=True), concentration(alphas, concentration_kind))


def uniform_perturbation(rng: jax.Array, weights: PyTree, epsilon: float | jax.Array) -> PyTree:
  r"""SDARTS-RS's random smoothing: :math:`\mathrm{clip}(w + u, 0, 1)` with :math:`u \sim U[-\epsilon, \epsilon]`
  i.i.d., each row renormalised to sum 1 (a row clipped to all zeros keeps its largest weight, as SDARTS's code)."""
  def perturb(key, w):
    noisy = jnp.clip(w + jax.random.uniform(key, w.shape, w.dtype, -epsilon, epsilon), 0.0, 1.0)
    noisy = jnp.where(jnp.sum(noisy, axis=-1, keepdims=True) > 0, noisy, one_hot_argmax(w))
    return noisy / jnp.sum(noisy, axis=-1, keepdims=True)

  return _map_with_keys(perturb, rng, weights)


def project_to_ball(weights: PyTree, center: PyTree, epsilon: float | jax.Array, simplex: bool = True,
                    iterations: int = 40) -> PyTree:
  r"""The Euclidean projection of every row of `weights` onto :math:`\{v : |v - c|_\infty \le \epsilon,
  0 \le v \le 1\}` around the row `center` c, with ``simplex`` also :math:`\sum_k v_k = 1` (c's rows must sum to
  1, so the set holds c). On the simplex the projection is ``clip(u - tau, lo, hi)`` with the scalar ``tau`` found by
  bisection (`iterations` halvings: float32's resolution of the row's range after ~30)."""
  def project(u, c):
    lo, hi = jnp.maximum(c - epsilon, 0.0), jnp.minimum(c + epsilon, 1.0)
    if not simplex:
      return jnp.clip(u, lo, hi)
    # sum(clip(u - tau, lo, hi)) falls from sum(hi) >= 1 to sum(lo) <= 1 as tau runs over [min(u - hi), max(u - lo)].
    low = jnp.min(u - hi, axis=-1, keepdims=True)
    high = jnp.max(u - lo, axis=-1, keepdims=True)

    def halve(_, bounds):
      low, high = bounds
      tau = (low + high) / 2
      above = jnp.sum(jnp.clip(u - tau, lo, hi), axis=-1, keepdims=True) > 1
      return jnp.where(above, tau, low), jnp.where(above, high, tau)

    low, high = jax.lax.fori_loop(0, iterations, halve, (low, high))
    return jnp.clip(u - (low + high) / 2, lo, hi)

  return jax.tree.map(project, weights, center)


def adversarial_perturbation(rng: jax.Array, weights: PyTree, epsilon: float | jax.Array,
                             loss_and_grad: Callable[[PyTree], tuple[jax.Array, PyTree]], *, steps: int = 7,
                             step_size: float | jax.Array | None = None, simplex: bool = True) -> PyTree:
  r"""SDARTS-ADV's worst-case mixing weights: projected gradient ascent (PGD, :math:`L_\infty`) of the weight step's
  loss in the :math:`\epsilon`-ball around `weights` (Chen & Hsieh 2020, the released ``Linf_PGD_alpha``).

  A uniform random start in the ball, then `steps` signed ascent steps of `step_size` (default
  :math:`2\epsilon / \mathrm{steps}`, the code's), each followed by the projection onto the ball intersected with
  :math:`[0, 1]` and, with ``simplex``, the rows' simplex (`project_to_ball`; the code clamps to the ball and then
  renormalises, which can leave it). If the loss at the result is below the loss at `weights`, `weights` are kept
  (as the code). ``loss_and_grad(weights) -> (loss, d loss / d weights)`` is the weight step's loss at the step's
  network weights. The result is a constant of the weight step (no gradient flows through the attack).
  """
  weights = jax.lax.stop_gradient(weights)
  if step_size is None:
    step_size = 2 * epsilon / steps
  start = _map_with_keys(lambda key, w: w + jax.random.uniform(key, w.shape, w.dtype, -epsilon, epsilon), rng,
                         weights)

  def ascend(_, current):
    grads = loss_and_grad(current)[1]
    moved = jax.tree.map(lambda w, g: w + step_size * jnp.sign(g), current, grads)
    return project_to_ball(moved, weights, epsilon, simplex)

  attacked = jax.lax.fori_loop(0, steps, ascend, project_to_ball(start, weights, epsilon, simplex))
  better = loss_and_grad(attacked)[0] >= loss_and_grad(weights)[0]
  return jax.lax.stop_gradient(jax.tree.map(lambda a, w: jnp.where(better, a, w), attacked, weights))


def uniform_path(rng: jax.Array, alphas: PyTree) -> PyTree:
  """One op per row drawn uniformly, as a one-hot row: the single path of random search with weight sharing (Li &
  Talwalkar 2019); independent of the alphas (no gradient reaches them)."""
  return _map_with_keys(
      lambda key, a: jax.nn.one_hot(jax.random.randint(key, a.shape[:-1], 0, a.shape[-1]), a.shape[-1],
                                    dtype=a.dtype), rng, alphas)


# ---------------------------------------------------------------------------------------------------------------
# Schedules.


def constant_schedule(value: float) -> Schedule:
  return lambda step: jnp.asarray(value, jnp.float32)


def _progress(step, transition_steps: int) -> jax.Array:
  """``min(step / transition_steps, 1)`` (1 when there is no transition)."""
  if transition_steps <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.clip(jnp.asarray(step, jnp.float32) / transition_steps, 0.0, 1.0)


def linear_schedule(init: float, end: float, transition_steps: int) -> Schedule:
  r""":math:`\mathrm{init} + (\mathrm{end} - \mathrm{init}) \min(t / T, 1)` (exactly ``end`` from step T on)."""
  def schedule(step):
    progress = _progress(step, transition_steps)
    return init * (1 - progress) + end * progress

  return schedule


def exponential_schedule(init: float, end: float, transition_steps: int) -> Schedule:
  r""":math:`\mathrm{init} \cdot (\mathrm{end} / \mathrm{init})^{\min(t / T, 1)}`: a constant factor per step;
  ``init`` and ``end`` positive."""
  if init <= 0 or end <= 0:
    raise ValueError(f'An exponential schedule needs positive values, got {init} and {end}.')
  return lambda step: init * (end / init) ** _progress(step, transition_steps)


def cosine_schedule(init: float, end: float, transition_steps: int) -> Schedule:
  r""":math:`\mathrm{end} + (\mathrm{init} - \mathrm{end}) \frac12 (1 + \cos(\pi \min(t / T, 1)))`."""
  return lambda step: end + (init - end) * 0.5 * (1 + jnp.cos(jnp.pi * _progress(step, transition_steps)))


def per_epoch(schedule: Schedule, steps_per_epoch: int) -> Schedule:
  """`schedule` evaluated at the epoch of the step (``step // steps_per_epoch``): it changes at epoch boundaries."""
  return lambda step: schedule(jnp.asarray(step) // steps_per_epoch)


def make_schedule(kind: str, init: float, end: float, num_epochs: int, steps_per_epoch: int) -> Schedule:
  """A per-epoch schedule of the search's steps from `init` at the first epoch to `end` at the last (`SCHEDULES`;
  ``'constant'`` is `init` throughout)."""
  if kind not in SCHEDULES:
    raise ValueError(f'Unknown schedule {kind!r}; expected one of {", ".join(SCHEDULES)}.')
  if kind == 'constant':
    return constant_schedule(init)
  make = {'linear': linear_schedule, 'exponential': exponential_schedule, 'cosine': cosine_schedule}[kind]
  return per_epoch(make(init, end, num_epochs - 1), steps_per_epoch)


def skip_dropout_schedule(rate: float, num_epochs: int, warmup_epochs: int, steps_per_epoch: int,
                          decay: float = 0.2) -> Schedule:
  r"""P-DARTS's dropout rate on the skip connections at a step, per epoch :math:`e` of a stage of :math:`E`: during
  the weight-only warm-up of :math:`W` epochs ``rate`` :math:`\cdot (E - e - 1) / E`, then ``rate``
  :math:`\cdot \exp(-\mathrm{decay} \cdot (e - W))` (the released code's)."""
  def schedule(step):
    epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
    return jnp.where(epoch < warmup_epochs, rate * (num_epochs - epoch - 1) / num_epochs,
                     rate * jnp.exp(-decay * (epoch - warmup_epochs)))

  return schedule


# ---------------------------------------------------------------------------------------------------------------
# The relaxation of a search.


@dataclasses.dataclass(frozen=True)
class Relaxation:
  """One relaxation with its parameters, as the search step and the evaluation use it.

  Attributes:
    name: one of `RELAXATIONS`.
    temperature: τ as a function of the step (a schedule), or a constant; not used by ``'dirichlet'``.
    hard: one-hot argmax forward, straight-through gradient (not for ``'sigmoid'``, whose gates are independent).
    noise_scale: ``'gaussian_softmax'``: σ of the noise on the alphas.
    concentration: ``'dirichlet'``: one of `CONCENTRATIONS`.
  """
  name: str = 'softmax'
  temperature: Schedule | float = 1.0
  hard: bool = False
  noise_scale: float = 0.0
  concentration: str = 'elu'

  def __post_init__(self):
    if self.name not in RELAXATIONS:
      raise ValueError(f'Unknown relaxation {self.name!r}; expected one of {", ".join(RELAXATIONS)}.')
    if self.hard and self.name == 'sigmoid':
      raise ValueError('A hard (one-hot) relaxation needs weights that compete; sigmoid gates do not.')
    if self.concentration not in CONCENTRATIONS:
      raise ValueError(f'Unknown concentration {self.concentration!r}; expected one of {", ".join(CONCENTRATIONS)}.')

  @property
  def stochastic(self) -> bool:
    """Whether `sample` draws noise (and needs a key)."""
    return self.name in ('gumbel_softmax', 'gaussian_softmax', 'dirichlet', 'uniform_path')

  def temperature_at(self, step: jax.Array | int) -> jax.Array:
    return self.temperature(step) if callable(self.temperature) else jnp.asarray(self.temperature, jnp.float32)

  def sample(self, rng: jax.Array | None, alphas: PyTree, step: jax.Array | int = 0) -> PyTree:
    """The mixing weights of a training step: stochastic ones drawn with `rng` (None for deterministic
    relaxations), at the temperature of `step`; differentiable in `alphas`."""
    if self.stochastic and rng is None:
      raise ValueError(f'The {self.name} relaxation needs a PRNG key.')
    tau = self.temperature_at(step)
    if self.name == 'softmax':
      return softmax(alphas, tau, self.hard)
    if self.name == 'gumbel_softmax':
      return gumbel_softmax(rng, alphas, tau, self.hard)
    if self.name == 'gaussian_softmax':
      return gaussian_softmax(rng, alphas, self.noise_scale, tau, self.hard)
    if self.name == 'sigmoid':
      return sigmoid(alphas, tau)
    if self.name == 'uniform_path':
      return uniform_path(rng, alphas)
    return dirichlet(rng, alphas, self.concentration, self.hard)

  def probabilities(self, alphas: PyTree, step: jax.Array | int = 0) -> PyTree:
    """The noise-free soft weights: ``softmax(α/τ)`` for the softmax family, ``sigmoid(α/τ)``, the Dirichlet
    mean, for ``'uniform_path'`` the uniform mean of its one-hot samples. What the genotype is derived from and the
    built-in regularisers measure."""
    if self.name == 'uniform_path':
      return jax.tree.map(lambda a: jnp.full_like(a, 1 / a.shape[-1]), alphas)
    if self.name == 'sigmoid':
      return sigmoid(alphas, self.temperature_at(step))
    if self.name == 'dirichlet':
      return dirichlet_mean(alphas, self.concentration)
    return softmax(alphas, self.temperature_at(step))

  def deterministic(self, alphas: PyTree, step: jax.Array | int = 0) -> PyTree:
    """The weights at evaluation: `probabilities` (noise off, Dirichlet → mean), rounded to the one-hot argmax
    when the relaxation is hard."""
    weights = self.probabilities(alphas, step)
    return one_hot_argmax(weights) if self.hard else weights
