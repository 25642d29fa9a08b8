"""The recurrent search step (the original ``rnn/train_search.py`` inner loop and ``rnn/architect.py``).

One step, on a training batch and a validation batch of the PTB streams (``(tokens, targets, length, first)``,
`darts_jax.data.text.lm_batches`), with ``lr = learning_rate · length / bptt`` (the original scales the learning
rate with the drawn sequence length):

1. **architecture step**: ``alpha <- Adam(alpha, h + 1e-3·alpha)`` (betas 0.9, 0.999), with ``h`` the
   hypergradient of the validation NLL (`darts_jax.bilevel.hypergradient`): first order, or second order through
   the original's virtual step, plain SGD on the *clipped* training gradient ``w' = w − lr·(c·∇_w L_train + λw)``
   (``c`` the clip coefficient, a constant; ``grad_clip`` of `hypergradient`, momentum 0). The architecture losses
   are the NLL alone, as the original's ``model._loss``; the validation pass starts from the validation stream's
   hidden state;
2. **weight step** on the same training batch with the updated alphas: the loss is NLL + TAR (+ AR),
   ``w <- w − lr·(clip_{0.25}(∇_w) + λw)`` (SGD without momentum).

Both streams' hidden states are carried from batch to batch (detached: nothing is differentiated through earlier
batches) and reset at the start of every epoch (``first``). The validation stream's next hidden state is its
forward pass at ``w`` with the step's dropout masks; the original's second-order step takes it from the pass at
``w'``, which would need the hypergradient to return it.

The hidden states live in the state with the *global* batch as leading axis, equal on every device: under ``pmap``
each device reads its rows (``axis_index``) and the new rows are gathered back, so a checkpoint of device 0's copy
holds all of them. BatchNorm statistics are over the global batch; the architecture step's passes discard their
updates of the running statistics (as the CNN search), only the weight step's forward updates them. Dropout masks
come from ``(state.rng, step, device index)``: a resumed run on the same devices draws the same ones.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from darts_jax.bilevel.hypergradient import clip_coefficient, hypergradient
from darts_jax.rnn.model import RNNModelSearch, init_alphas, sequence_losses

PyTree = Any
Batch = tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # tokens (b, T), targets (b, T), length (b,), first (b,)
Metrics = dict[str, jax.Array]

HYPERGRADIENT_METHODS = {'first_order': 'first_order', 'second_order_fd': 'fd', 'second_order_exact': 'exact'}
"""Config name -> `hypergradient` method; the recurrent search has the original's one-step variants."""


class RNNSearchState(flax.struct.PyTreeNode):
  """Everything the recurrent search step reads and writes (checkpointable as is).

  Attributes:
    step: int32 scalar, search steps taken.
    params: the supernet's weights.
    batch_stats: the search cell's BatchNorm running statistics (evaluation only).
    alphas: ``(36, 5)`` architecture weights.
    arch_opt_state: Adam's state.
    hidden: ``(batch_size, nhid)`` the training stream's hidden state, global batch.
    hidden_valid: ``(batch_size, nhid)`` the validation stream's.
    rng: base key of the dropout masks.
    arch_tx: the alphas' optimizer (static).
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  alphas: jax.Array
  arch_opt_state: optax.OptState
  hidden: jax.Array
  hidden_valid: jax.Array
  rng: jax.Array
  arch_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_rnn_search_state(rng: jax.Array, model: RNNModelSearch, batch_size: int,
                            arch_tx: optax.GradientTransformation) -> RNNSearchState:
  """Weights uniform in ±0.04 (the original), alphas ``1e-3·N(0, 1)``, zero hidden states."""

  @jax.jit
  def init(rng):
    params_key, alphas_key, dropout_key = jax.random.split(rng, 3)
    alphas = init_alphas(alphas_key, model.steps)
    variables = model.init(params_key, jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, model.nhid)), alphas,
                           train=False)
    zeros = jnp.zeros((batch_size, model.nhid), jnp.float32)
    return RNNSearchState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                          batch_stats=variables['batch_stats'], alphas=alphas, arch_opt_state=arch_tx.init(alphas),
                          hidden=zeros, hidden_valid=zeros, rng=dropout_key, arch_tx=arch_tx)

  return init(rng)


def sgd_step(params: PyTree, grads: PyTree, lr: jax.Array, *, grad_clip: float, weight_decay: float) -> PyTree:
  """The original's weight update: ``w − lr·(c·g + λw)``, ``c`` PyTorch's ``clip_grad_norm`` coefficient."""
  c = clip_coefficient(grads, grad_clip)
  return jax.tree.map(lambda w, g: w - lr * (c * g + weight_decay * w), params, grads)


def device_rows(global_rows: jax.Array, rows: int, axis_name: Any) -> jax.Array:
  """This device's `rows` rows of an array over the global batch (all of it without `axis_name`)."""
  if axis_name is None:
    return global_rows
  return jax.lax.dynamic_slice_in_dim(global_rows, jax.lax.axis_index(axis_name) * rows, rows)


def gather_rows(rows: jax.Array, axis_name: Any) -> jax.Array:
  """The global batch's rows from every device's (`device_rows`'s inverse)."""
  return rows if axis_name is None else jax.lax.all_gather(rows, axis_name, tiled=True)


def step_key(rng: jax.Array, step: jax.Array, axis_name: Any) -> jax.Array:
  """The dropout key of a step on this device."""
  key = jax.random.fold_in(rng, step)
  return key if axis_name is None else jax.random.fold_in(key, jax.lax.axis_index(axis_name))


def masked_accuracy(log_probs: jax.Array, targets: jax.Array, length: jax.Array) -> jax.Array:
  """Next-word accuracy over the first `length` time steps."""
  valid = jnp.arange(targets.shape[1])[None, :] < length
  return jnp.sum((jnp.argmax(log_probs, -1) == targets) * valid) / (targets.shape[0] * length)


def make_rnn_search_step(model: RNNModelSearch, *, learning_rate: float, bptt: int, hypergradient_method: str,
                         grad_clip: float = 0.25, weight_decay: float = 5e-7, fd_epsilon: float = 0.01,
                         tar: float = 1e-3, ar: float = 0.0
                         ) -> Callable[[RNNSearchState, Batch, Batch], tuple[RNNSearchState, Metrics]]:
  """Builds ``step(state, train_batch, val_batch) -> (state, metrics)`` (module docstring).

  Jit it, or pmap it with ``axis_name=model.axis_name`` (batches split over devices along their rows).

  Returns:
    The step. ``metrics`` (equal on all devices): the weight step's ``loss`` (NLL) and ``accuracy`` (next word),
    ``grad_norm`` (before clipping), ``arch_grad_norm``, ``lr``, ``seq_len`` and ``finite``.
  """
  if hypergradient_method not in HYPERGRADIENT_METHODS:
    raise ValueError(f'Unknown hypergradient {hypergradient_method!r} for the recurrent search; expected one of '
                     f'{", ".join(HYPERGRADIENT_METHODS)}.')
  method = HYPERGRADIENT_METHODS[hypergradient_method]
  axis_name = model.axis_name

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def step(state: RNNSearchState, train_batch: Batch, val_batch: Batch) -> tuple[RNNSearchState, Metrics]:
    tokens, targets, length, first = train_batch
    val_tokens, val_targets, val_length, val_first = val_batch
    rows = tokens.shape[0]
    length, val_length = length[0], val_length[0]
    hidden = jnp.where(first[0] > 0, 0.0, device_rows(state.hidden, rows, axis_name))
    hidden_valid = jnp.where(val_first[0] > 0, 0.0, device_rows(state.hidden_valid, rows, axis_name))
    lr = learning_rate * length.astype(jnp.float32) / bptt
    train_key, val_key, weight_key = jax.random.split(step_key(state.rng, state.step, axis_name), 3)

    def forward(params, alphas, tokens, hidden, key, length):
      outputs, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, tokens, hidden, alphas,
                                     train=True, length=length, rngs={'dropout': key}, mutable=['batch_stats'])
      return outputs, updates['batch_stats']

    def nll_and_hidden(params, alphas, batch):
      tokens, targets, hidden, key, length = batch
      (log_probs, hidden_next, raw, dropped), _ = forward(params, alphas, tokens, hidden, key, length)
      return sequence_losses(log_probs, targets, raw, dropped, length)[0], hidden_next

    def nll(params, alphas, batch):
      return nll_and_hidden(params, alphas, batch)[0]

    train = (tokens, targets, hidden, train_key, length)
    val = (val_tokens, val_targets, hidden_valid, val_key, val_length)
    if method == 'first_order':
      arch_grads, hidden_valid = jax.grad(nll_and_hidden, argnums=1, has_aux=True)(state.params, state.alphas, val)
      arch_grads = pmean(arch_grads)
    else:
      arch_grads = hypergradient(nll, nll, state.params, state.alphas, train, val, eta=lr, method=method,
                                 momentum=0.0, weight_decay=weight_decay, grad_clip=grad_clip, fd_epsilon=fd_epsilon,
                                 axis_name=axis_name)
      hidden_valid = nll_and_hidden(state.params, state.alphas, val)[1]
    arch_updates, arch_opt_state = state.arch_tx.update(arch_grads, state.arch_opt_state, state.alphas)
    alphas = optax.apply_updates(state.alphas, arch_updates)

    def weight_loss(params):
      (log_probs, hidden_next, raw, dropped), batch_stats = forward(params, alphas, tokens, hidden, weight_key, length)
      nll_value, loss = sequence_losses(log_probs, targets, raw, dropped, length, tar=tar, ar=ar)
      return loss, (nll_value, log_probs, hidden_next, batch_stats)

    (_, (loss, log_probs, hidden, batch_stats)), grads = jax.value_and_grad(weight_loss, has_aux=True)(state.params)
    grads = pmean(grads)
    params = sgd_step(state.params, grads, lr, grad_clip=grad_clip, weight_decay=weight_decay)

    metrics = pmean({'loss': loss, 'accuracy': masked_accuracy(log_probs, targets, length)})
    metrics.update(grad_norm=optax.tree.norm(grads), arch_grad_norm=optax.tree.norm(arch_grads), lr=lr,
                   seq_len=length.astype(jnp.float32))
    metrics['finite'] = jnp.all(jnp.stack(
        [jnp.isfinite(metrics['loss']), jnp.isfinite(metrics['grad_norm']), jnp.isfinite(metrics['arch_grad_norm'])]
        + [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((params, alphas))]))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, alphas=alphas,
                              arch_opt_state=arch_opt_state, hidden=gather_rows(hidden, axis_name),
                              hidden_valid=gather_rows(hidden_valid, axis_name))
    return new_state, metrics

  return step
