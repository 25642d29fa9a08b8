"""The finite-difference and exact hypergradients agree on a real (small) DARTS supernet in float32."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax.hypergradient import hypergradient
from darts_jax.search_network import SearchNetwork, init_alphas


def test_fd_and_exact_agree_on_supernet():
  net = SearchNetwork(C=4, num_classes=5, layers=1)  # one reduction cell: every primitive, both strides
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 1))
  labels = jax.random.randint(jax.random.key(1), (2, 8), 0, 5)
  alphas = jax.tree.map(lambda a: a * 300, init_alphas(jax.random.key(2)))  # away from uniform: non-trivial softmax
  variables = jax.jit(net.init, static_argnames='train')(jax.random.key(3), images[0], alphas, train=False)

  def loss(params, alphas, batch):
    logits, _ = net.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch[0], alphas,
                          train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  @jax.jit
  def both(params, alphas):
    kwargs = dict(eta=0.025, weight_decay=3e-4, momentum_buffer=jax.tree.map(jnp.ones_like, params))
    train, val = (images[0], labels[0]), (images[1], labels[1])
    return (hypergradient(loss, loss, params, alphas, train, val, method='fd', **kwargs),
            hypergradient(loss, loss, params, alphas, train, val, method='exact', **kwargs),
            hypergradient(loss, loss, params, alphas, train, val, method='first_order', **kwargs))

  fd, exact, first = both(variables['params'], alphas)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  fd, exact, first = flat(fd), flat(exact), flat(first)
  relative = np.linalg.norm(fd - exact) / np.linalg.norm(exact)
  # Central differences with R = 0.01/||v|| err by O(R²) plus float32 rounding of O(eps·|grad|/R): ~1e-3 here.
  # A missing eta, a sign flip or a wrong R moves the second-order term, which is itself several % of the result.
  assert relative < 2e-2, relative
  second_order_term = np.linalg.norm(exact - first) / np.linalg.norm(exact)
  assert second_order_term > 5 * relative, (second_order_term, relative)
