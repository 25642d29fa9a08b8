"""The exactness check of the supernet variants' tests: the exact hypergradient against autodiff through DARTS's
virtual step (PyTorch SGD with momentum and coupled weight decay), both under one `jax.jit`."""
import jax

from darts_jax.bilevel.hypergradient import hypergradient


def exact_and_autodiff(train_loss, val_loss, w, a, train, val, *, eta, momentum, weight_decay, buffer):
  """(`hypergradient(..., method='exact')`, ``∇_a val_loss(w - eta·(momentum·buffer + ∇_w train_loss + λw), a)``)."""
  @jax.jit
  def both(w, a):
    exact = hypergradient(train_loss, val_loss, w, a, train, val, eta=eta, method='exact', momentum_buffer=buffer,
                          momentum=momentum, weight_decay=weight_decay)

    def unrolled(a):
      grads = jax.grad(train_loss)(w, a, train)
      w_prime = jax.tree.map(lambda p, g, m: p - eta * (momentum * m + g + weight_decay * p), w, grads, buffer)
      return val_loss(w_prime, a, val)
    return exact, jax.grad(unrolled)(a)

  return both(w, a)
