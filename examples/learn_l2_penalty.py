"""`darts_jax.hypergradient` outside NAS: learning per-feature L2 penalties on a validation set.

Ridge regression with one penalty per feature, ``exp(alpha_j)``, on data where a few features are pure noise: the
inner problem fits the weights ``w`` to the training set, the outer problem tunes ``alpha`` so that the fitted
weights do well on a validation set. Every hypergradient method drives the same outer loop; the implicit ones treat
the current weights as the inner optimum, the unrolled ones differentiate through a few steps of plain gradient
descent. Noise features should end up with large penalties.

    python examples/learn_l2_penalty.py              # all methods, a few seconds on a CPU
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import hypergradient

NUM_FEATURES, NUM_INFORMATIVE = 20, 5


def make_data(seed: int = 0) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  rng = np.random.default_rng(seed)
  true_w = np.zeros(NUM_FEATURES, np.float32)
  true_w[:NUM_INFORMATIVE] = rng.normal(size=NUM_INFORMATIVE)

  def split(n):
    x = rng.normal(size=(n, NUM_FEATURES)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(x @ true_w + 0.5 * rng.normal(size=n).astype(np.float32))

  return split(30), split(200)  # few training examples: the noise features overfit without penalties


def train_loss(w: jax.Array, alpha: jax.Array, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  x, y = batch
  return 0.5 * jnp.mean((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(alpha) * w ** 2)


def val_loss(w: jax.Array, alpha: jax.Array, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  del alpha  # the penalties act on the validation loss only through the weights
  x, y = batch
  return 0.5 * jnp.mean((x @ w - y) ** 2)


def learn_penalties(method: str, *, outer_steps: int = 200, inner_steps: int = 20, eta: float = 0.1,
                    **method_options) -> tuple[jax.Array, float]:
  """Alternates `inner_steps` of gradient descent on the weights with one Adam step on the penalties, as DARTS
  alternates its two steps. Returns the learned log-penalties and the final validation loss."""
  train, val = make_data()
  outer = optax.adam(0.02)  # at most 0.02 per step: exp(alpha) stays where the inner steps are stable

  @jax.jit
  def step(w, alpha, opt_state):
    for _ in range(inner_steps):
      w = w - eta * jax.grad(train_loss)(w, alpha, train)
    h = hypergradient(train_loss, val_loss, w, alpha, train, val, eta=eta, method=method, momentum=0.0,
                      **method_options)
    updates, opt_state = outer.update(h, opt_state)
    return w, optax.apply_updates(alpha, updates), opt_state

  w, alpha = jnp.zeros(NUM_FEATURES), jnp.full(NUM_FEATURES, -2.0)
  opt_state = outer.init(alpha)
  for _ in range(outer_steps):
    w, alpha, opt_state = step(w, alpha, opt_state)
  return alpha, float(val_loss(w, alpha, val))


METHOD_OPTIONS = {
    'first_order': {},  # ∇α L_val(w) is 0 here (L_val does not read α): it cannot learn anything
    'exact': {},
    'unrolled': {'unroll_steps': 10},
    'implicit_cg': {'implicit_iterations': 20},
    'implicit_neumann': {'implicit_iterations': 50},
}


def main() -> None:
  baseline = learn_penalties('first_order')[1]
  print(f'{"method":18} {"val loss":>9} {"mean log-penalty informative / noise":>38}')
  for method, options in METHOD_OPTIONS.items():
    alpha, loss = learn_penalties(method, **options)
    informative, noise = float(alpha[:NUM_INFORMATIVE].mean()), float(alpha[NUM_INFORMATIVE:].mean())
    print(f'{method:18} {loss:9.4f} {informative:19.2f} / {noise:.2f}')
  print(f'(no learning, penalties fixed at exp(-2): val loss {baseline:.4f})')


if __name__ == '__main__':
  main()
