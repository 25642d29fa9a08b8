"""DARTS's recurrent language models: the search supernet and the model of a genotype (the original ``rnn/``).

Both are one recurrent cell (DARTS, Sec. 2.1 and App. A.1.2) over a tied embedding:

* the initial state: ``c0, h0 = split([x_t, h_{t-1}] @ W0)``, ``s0 = h_{t-1} + σ(c0)·(tanh(h0) − h_{t-1})``;
* node ``i`` has one matrix ``W_i`` (nhid → 2·nhid) shared by its predecessors: for predecessor ``s_j``,
  ``c, h = split(s_j @ W_i)`` and activation ``f`` gives ``s_j + σ(c)·(f(h) − s_j)``. The search cell's node sums
  these over its predecessors ``j <= i`` and the activations, weighted by ``softmax(alphas)`` (``none`` gives 0);
  a retrain cell's node computes its genotype's one (activation, predecessor) pair;
* the output ``h_t``: the mean of the last `genotypes.CONCAT` states (search) or of the genotype's ``concat``.
* In search only, an affine-free BatchNorm over the batch normalises ``s0`` and every node's output (one set of
  running statistics shared by the 9 calls, updated at every call, as the original's single ``self.bn``).

The model around the cell (the original ``RNNModel``, from AWD-LSTM): embedding (uniform ±0.04), embedding dropout
(whole words: rows of the embedding matrix, ``dropoute``), locked (variational) dropout on the embedded input
(``dropouti``, one mask per sequence over all time steps), the cell with per-sequence masks on its input ``x_t``
(``dropoutx``) and on ``h_{t-1}`` and the states it multiplies (``dropouth``), locked dropout on the output
(``dropout``), and a decoder tied to the embedding (plus a bias) with log-softmax. The time loop is one
``lax.scan``: one compiled cell whatever the sequence length.

PC-DARTS's two changes to the supernet, carried over to the recurrent cell (this project's extension of PC-DARTS,
whose paper searches CNN cells only), are options of `RNNModelSearch`, off by default:

* ``partial_channels`` K > 1: node ``i`` reads the first nhid/K units of each predecessor ``s_j`` (``W_i`` is
  nhid/K → 2·nhid/K), mixes its activations on them as above, passes the other units of ``s_j`` unchanged (PC-DARTS's
  bypass) and shuffles the units of the concatenation in K groups (ShuffleNet's channel shuffle);
* ``edge_normalization``: node ``i`` weighs predecessor ``j``'s term by entry ``j`` of its array of edge weights
  (``softmax`` of a β per predecessor, `init_alphas`), and the genotype rule ranks predecessors by weight × β.

Batches are ``(B, T)`` token ids, batch-major (as the data-parallel steps split them); ``length <= T`` marks the
real time steps of a padded batch: the hidden state and the BN statistics stop at ``length``, so variable BPTT
lengths share one program.

The models follow the dtype of the hidden state: ``init`` creates parameters and statistics in it, at least float32
(float64 for a float64 state with ``jax_enable_x64``), and ``apply`` computes in the common dtype of state and
parameters.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from darts_jax.rnn import genotypes
from darts_jax.rnn.genotypes import PRIMITIVES, Genotype

INIT_RANGE = 0.04  # the original's uniform init range of every weight
BN_MOMENTUM = 0.1  # PyTorch's BatchNorm1d defaults
BN_EPSILON = 1e-5

ACTIVATIONS = {'tanh': jnp.tanh, 'relu': jax.nn.relu, 'sigmoid': jax.nn.sigmoid, 'identity': lambda x: x}


def _uniform(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  return jax.random.uniform(key, shape, dtype, -INIT_RANGE, INIT_RANGE)


def num_params(ntoken: int, ninp: int, nhid: int, genotype: Genotype | None = None, partial_channels: int = 1) -> int:
  """Parameters of the search model (``genotype=None``) or of a genotype's model, without building it.

  ``ntoken·ninp`` (embedding, tied to the decoder) ``+ ntoken`` (decoder bias) ``+ (ninp + nhid)·2nhid`` (W0)
  ``+ steps·nhid·2nhid`` (one W_i per node; 8 in search, ``len(genotype.recurrent)`` otherwise). The search cell's
  BatchNorm has no affine parameters. With 10,000 tokens: 4,810,000 for the search model at 300 units, 22,960,000
  for DARTS_V2 at 850 (the paper's "23M"). The search model's `partial_channels` K makes each ``W_i``
  nhid/K · 2nhid/K.
  """
  _check_sizes(ninp, nhid)
  steps = genotypes.STEPS if genotype is None else len(genotypes.validate_genotype(genotype).recurrent)
  units = nhid // partial_channels
  return ntoken * ninp + ntoken + (ninp + nhid) * 2 * nhid + steps * units * 2 * units


def _check_sizes(ninp: int, nhid: int) -> None:
  if ninp != nhid:
    raise ValueError(f'the decoder is tied to the embedding, so ninp ({ninp}) must equal nhid ({nhid})')


def _bernoulli_mask(key: jax.Array, rate: float, shape: Sequence[int], dtype: Any) -> jax.Array:
  """Inverted dropout's mask: 0 with probability `rate`, else ``1 / (1 − rate)``."""
  if rate == 0.0:
    return jnp.ones(shape, dtype)
  return jax.random.bernoulli(key, 1.0 - rate, shape).astype(dtype) / (1.0 - rate)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle over the last axis, as PC-DARTS's: unit ``g·(n/G) + i`` moves to ``i·G + g``."""
  n = x.shape[-1]
  return x.reshape(x.shape[:-1] + (groups, n // groups)).swapaxes(-1, -2).reshape(x.shape)


def _highway(s: jax.Array, ch: jax.Array, activation: str) -> jax.Array:
  """``s + σ(c)·(f(h) − s)`` for ``c, h = split(ch)``."""
  c, h = jnp.split(ch, 2, axis=-1)
  return s + jax.nn.sigmoid(c) * (ACTIVATIONS[activation](h) - s)


class _RNNLanguageModel(nn.Module):
  """What both models share: parameters, dropouts, the scan over time, the tied decoder. Subclasses define
  `_steps` and `_cell` (one time step)."""
  ntoken: int
  ninp: int
  nhid: int
  dropout: float = 0.75
  dropouth: float = 0.25
  dropoutx: float = 0.75
  dropouti: float = 0.2
  dropoute: float = 0.0

  def _steps(self) -> int:
    raise NotImplementedError

  def _node_units(self) -> int:
    """The units a node's matrix ``W_i`` reads (it writes twice as many)."""
    return self.nhid

  def _cell(self, x, h_prev, x_mask, h_mask, W0, Ws, context, bn_stats, valid, train):
    """One time step: ``(h_t, bn_stats')`` from ``x_t`` (B, ninp) and ``h_{t-1}`` (B, nhid)."""
    raise NotImplementedError

  def _bn_stats(self, dtype: Any):
    return None

  def _forward(self, tokens: jax.Array, hidden: jax.Array, context: Any, length: jax.Array | None, train: bool):
    _check_sizes(self.ninp, self.nhid)
    param_dtype = jnp.promote_types(hidden.dtype, jnp.float32)
    param = lambda name, init, shape: self.param(name, init, shape, param_dtype)
    embedding = param('embedding', _uniform, (self.ntoken, self.ninp))
    bias = param('decoder_bias', nn.initializers.zeros, (self.ntoken,))
    W0 = param('W0', _uniform, (self.ninp + self.nhid, 2 * self.nhid))
    Ws = param('Ws', _uniform, (self._steps(), self._node_units(), 2 * self._node_units()))
    # The scan carries the state: it must enter in the dtype the cell computes in.
    dtype = jnp.result_type(hidden, embedding, W0, Ws)
    hidden = hidden.astype(dtype)
    context = jax.tree.map(lambda leaf: leaf.astype(dtype), context)
    batch, time = tokens.shape
    length = jnp.asarray(time if length is None else length)

    emb = jnp.take(embedding, tokens, axis=0)  # (B, T, ninp)
    ones = lambda d: jnp.ones((batch, 1, d), dtype)
    word_mask = in_mask = out_mask = ones(self.ninp)
    x_mask, h_mask = ones(self.ninp)[:, 0], ones(self.nhid)[:, 0]
    if train:
      keys = jax.random.split(self.make_rng('dropout'), 5)
      # Embedding dropout drops words of the vocabulary (rows of the matrix), the same words wherever they occur.
      word_mask = jnp.take(_bernoulli_mask(keys[0], self.dropoute, (self.ntoken, 1), dtype), tokens, axis=0)
      in_mask = _bernoulli_mask(keys[1], self.dropouti, (batch, 1, self.ninp), dtype)
      out_mask = _bernoulli_mask(keys[2], self.dropout, (batch, 1, self.nhid), dtype)
      x_mask = _bernoulli_mask(keys[3], self.dropoutx, (batch, self.ninp), dtype)
      h_mask = _bernoulli_mask(keys[4], self.dropouth, (batch, self.nhid), dtype)
    emb = emb.astype(dtype) * word_mask * in_mask

    bn_variable = self._bn_stats(param_dtype)
    bn_stats = None if bn_variable is None else jax.tree.map(lambda x: x.astype(dtype), bn_variable.value)

    def step(carry, inputs):
      h_prev, stats = carry
      x, t = inputs
      valid = t < length
      h, new_stats = self._cell(x, h_prev, x_mask, h_mask, W0, Ws, context, stats, valid, train)
      # Past `length` (padding) the state and the statistics stay as they were.
      h_kept = jnp.where(valid, h, h_prev)
      return (h_kept, new_stats), h

    (hidden, bn_stats), raw = jax.lax.scan(step, (hidden, bn_stats),
                                           (jnp.swapaxes(emb, 0, 1), jnp.arange(time)))
    raw = jnp.swapaxes(raw, 0, 1)  # (B, T, nhid)
    if bn_variable is not None and train and not self.is_initializing():
      # Statistics keep their dtype, so a state carried through a loop keeps its type.
      bn_variable.value = jax.tree.map(lambda new, old: new.astype(old.dtype), bn_stats, bn_variable.value)
    dropped = raw * out_mask
    log_probs = jax.nn.log_softmax(dropped @ embedding.T + bias)
    return log_probs, hidden, raw, dropped


MIXINGS = ('softmax', 'weights')
"""How `RNNModelSearch` turns its architecture argument into mixing weights: ``'softmax'`` of the alphas (DARTS), or
``'weights'``: the argument already is the weights (a relaxation's output, `darts_jax.dynamics.relaxations`)."""


class RNNModelSearch(_RNNLanguageModel):
  """The search supernet (the original ``RNNModelSearch``): every activation on every (node, predecessor) pair,
  mixed by ``softmax(alphas)``, alphas of shape ``(num_edges(steps), len(PRIMITIVES))`` passed in at call time.

  Call ``model.apply({'params': p, 'batch_stats': s}, tokens, hidden, alphas, train=..., length=...,
  rngs={'dropout': key}, mutable=['batch_stats'])`` (mutable only in training) →
  ``(log_probs (B, T, ntoken), h_T (B, nhid), raw outputs (B, T, nhid), dropped outputs (B, T, nhid))``.
  Under ``pmap`` with `axis_name` the BatchNorm statistics are those of the global batch.

  ``mixing='weights'`` takes the mixing weights themselves (same shapes as the alphas) in place of the alphas
  (`MIXINGS`), so that any relaxation can compute them; the parameters are the same either way. PC-DARTS's options
  (module docstring): ``partial_channels`` K, a divisor of nhid, and ``edge_normalization``, with which the alphas
  (or weights) are ``{OPS_KEY: (num_edges, 5), EDGES_KEY: [(1,), (2,), ..., (steps,)]}`` (`init_alphas`).
  """
  steps: int = genotypes.STEPS
  axis_name: Any = None
  mixing: str = 'softmax'
  partial_channels: int = 1
  edge_normalization: bool = False

  def _steps(self) -> int:
    return self.steps

  def _node_units(self) -> int:
    return self.nhid // self.partial_channels

  def _bn_stats(self, dtype: Any):
    return self.variable('batch_stats', 'bn', lambda: {'mean': jnp.zeros((self.nhid,), dtype),
                                                       'var': jnp.ones((self.nhid,), dtype)})

  def _batch_norm(self, x, stats, valid, train):
    """Affine-free BatchNorm1d over the batch: batch statistics in training (running ones updated, unbiased
    variance, momentum 0.1), the running statistics in evaluation."""
    if not train:
      return (x - stats['mean']) * jax.lax.rsqrt(stats['var'] + BN_EPSILON), stats
    moments = jnp.stack([jnp.mean(x, 0), jnp.mean(jnp.square(x), 0)])
    count = x.shape[0]
    if self.axis_name is not None:
      moments = jax.lax.pmean(moments, self.axis_name)
      count *= jax.lax.psum(1, self.axis_name)
    mean, var = moments[0], jnp.maximum(moments[1] - jnp.square(moments[0]), 0.0)
    unbiased = var * count / jnp.maximum(count - 1, 1)
    updated = {'mean': (1 - BN_MOMENTUM) * stats['mean'] + BN_MOMENTUM * mean,
               'var': (1 - BN_MOMENTUM) * stats['var'] + BN_MOMENTUM * unbiased}
    stats = jax.tree.map(lambda new, old: jnp.where(valid, new, old), updated, stats)
    return (x - mean) * jax.lax.rsqrt(var + BN_EPSILON), stats

  def _cell(self, x, h_prev, x_mask, h_mask, W0, Ws, weights, stats, valid, train):
    probs, edge_weights = weights
    units, groups = self._node_units(), self.partial_channels
    c0, h0 = jnp.split(jnp.concatenate([x * x_mask, h_prev * h_mask], -1) @ W0, 2, axis=-1)
    s0 = h_prev + jax.nn.sigmoid(c0) * (jnp.tanh(h0) - h_prev)
    s0, stats = self._batch_norm(s0, stats, valid, train)
    states = s0[None]  # (i + 1, B, nhid)
    offset = 0
    for i in range(self.steps):
      # PC-DARTS: the ops read the first nhid/K units of each predecessor; the rest bypass them.
      inputs = states[..., :units] if groups > 1 else states
      input_mask = h_mask[..., :units] if groups > 1 else h_mask
      c, h = jnp.split(jnp.einsum('sbh,hk->sbk', inputs * input_mask, Ws[i]), 2, axis=-1)
      c = jax.nn.sigmoid(c)
      w = probs[offset:offset + i + 1, :, None, None]  # (i + 1, K, 1, 1)
      # Σ_k p_k (s + c(f_k(h) − s)) = P s + c (Σ_k p_k f_k(h) − P s), P = Σ_{k != none} p_k.
      mixed_f = sum(w[:, k] * ACTIVATIONS[name](h) for k, name in enumerate(PRIMITIVES) if name != 'none')
      weight = sum(w[:, k] for k, name in enumerate(PRIMITIVES) if name != 'none')
      terms = weight * inputs + c * (mixed_f - weight * inputs)  # (i + 1, B, units): one per predecessor
      if groups > 1:
        terms = channel_shuffle(jnp.concatenate([terms, states[..., units:]], -1), groups)
      if edge_weights is not None:
        terms = edge_weights[i].astype(terms.dtype)[:, None, None] * terms
      s = jnp.sum(terms, axis=0)
      s, stats = self._batch_norm(s, stats, valid, train)
      states = jnp.concatenate([states, s[None]], 0)
      offset += i + 1
    return jnp.mean(states[-genotypes.CONCAT:], axis=0), stats

  @nn.compact
  def __call__(self, tokens: jax.Array, hidden: jax.Array, alphas: jax.Array | dict[str, Any], *, train: bool,
               length: jax.Array | None = None):
    if self.mixing not in MIXINGS:
      raise ValueError(f'unknown mixing {self.mixing!r}; choose one of {MIXINGS}')
    if self.partial_channels < 1 or self.nhid % self.partial_channels:
      raise ValueError(f'partial_channels ({self.partial_channels}) must be a positive divisor of nhid ({self.nhid})')
    if self.edge_normalization and not (isinstance(alphas, Mapping) and genotypes.EDGES_KEY in alphas):
      raise ValueError(f'edge normalisation needs the alphas {{{genotypes.OPS_KEY!r}: ..., {genotypes.EDGES_KEY!r}: '
                       '...}} (init_alphas(..., edge_normalization=True))')
    expected = (genotypes.num_edges(self.steps), len(PRIMITIVES))
    if genotypes.ops_alphas(alphas).shape != expected:
      raise ValueError(f'alphas has shape {genotypes.ops_alphas(alphas).shape}; expected {expected}')
    weights = alphas if self.mixing == 'weights' else jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), alphas)
    edge_weights = weights[genotypes.EDGES_KEY] if self.edge_normalization else None
    return self._forward(tokens, hidden, (genotypes.ops_alphas(weights), edge_weights), length, train)


class RNNModel(_RNNLanguageModel):
  """The language model of a recurrent genotype (the original ``RNNModel`` with ``DARTSCell``), for retraining.

  Call ``model.apply({'params': p}, tokens, hidden, train=..., length=..., rngs={'dropout': key})`` →
  ``(log_probs, h_T, raw outputs, dropped outputs)`` as `RNNModelSearch`.
  """
  genotype: Genotype = genotypes.DARTS_V2

  def _steps(self) -> int:
    return len(self.genotype.recurrent)

  def _cell(self, x, h_prev, x_mask, h_mask, W0, Ws, context, stats, valid, train):
    del context, valid, train
    c0, h0 = jnp.split(jnp.concatenate([x * x_mask, h_prev * h_mask], -1) @ W0, 2, axis=-1)
    states = [h_prev + jax.nn.sigmoid(c0) * (jnp.tanh(h0) - h_prev)]
    for i, (name, j) in enumerate(self.genotype.recurrent):
      states.append(_highway(states[j], (states[j] * h_mask) @ Ws[i], name))
    return jnp.mean(jnp.stack([states[i] for i in self.genotype.concat]), axis=0), stats

  @nn.compact
  def __call__(self, tokens: jax.Array, hidden: jax.Array, *, train: bool, length: jax.Array | None = None):
    genotypes.validate_genotype(self.genotype)
    return self._forward(tokens, hidden, None, length, train)


def init_alphas(key: jax.Array, steps: int = genotypes.STEPS, dtype: jax.typing.DTypeLike = jnp.float32,
                edge_normalization: bool = False) -> jax.Array | dict[str, Any]:
  """The original's initial architecture weights: ``1e-3·N(0, 1)`` of shape ``(num_edges(steps), 5)``.

  With `edge_normalization` (PC-DARTS) ``{OPS_KEY: those, EDGES_KEY: [(1,), (2,), ..., (steps,)]}``: one array per
  node with an entry per predecessor, drawn the same way from a stream of their own (the ops' are those without them).
  """
  alphas = 1e-3 * jax.random.normal(key, (genotypes.num_edges(steps), len(PRIMITIVES)), dtype)
  if not edge_normalization:
    return alphas
  node_keys = jax.random.split(jax.random.fold_in(key, 1), steps)
  return {genotypes.OPS_KEY: alphas,
          genotypes.EDGES_KEY: [1e-3 * jax.random.normal(k, (node + 1,), dtype) for node, k in enumerate(node_keys)]}


def sequence_losses(log_probs: jax.Array, targets: jax.Array, raw: jax.Array, dropped: jax.Array,
                    length: jax.Array | None = None, *, tar: float = 0.0, ar: float = 0.0
                    ) -> tuple[jax.Array, jax.Array]:
  """``(nll, loss)``: the mean NLL over the first `length` time steps, and ``nll + AR + TAR``.

  TAR (temporal activation regularisation, "slowness") is ``tar · mean((h_{t+1} − h_t)²)`` over the raw cell
  outputs, AR ``ar · mean(dropped²)`` over the dropped-out outputs, both over the real time steps (AWD-LSTM; the
  original's ``beta`` and ``alpha``).
  """
  time = targets.shape[1]
  length = jnp.asarray(time if length is None else length)
  steps = jnp.arange(time)
  valid = (steps < length).astype(jnp.float32)[None, :]  # (1, T)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  batch = targets.shape[0]
  mean_nll = jnp.sum(nll * valid) / (batch * length)
  loss = mean_nll
  if ar:
    loss += ar * jnp.sum(jnp.square(dropped) * valid[..., None]) / (batch * length * dropped.shape[-1])
  if tar:
    pairs = (steps[1:] < length).astype(jnp.float32)[None, :, None]
    diffs = jnp.square(raw[:, 1:] - raw[:, :-1]) * pairs
    loss += tar * jnp.sum(diffs) / (batch * jnp.maximum(length - 1, 1) * raw.shape[-1])
  return mean_nll, loss


EVAL_BLOCK = 32
"""Chunks per evaluation program: a split is read in blocks of this many chunks, the last padded with empty ones,
so every split of a batch size shares one compiled program."""


def split_log_likelihood(apply_fn, inputs: jax.Array, targets: jax.Array, lengths: jax.Array, hidden: jax.Array
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Sums over chunks of a split, the hidden state carried from chunk to chunk (the original's ``evaluate``).

  Args:
    apply_fn: ``apply_fn(tokens, hidden, length) -> (log_probs, h_T, ...)``, the model in evaluation mode.
    inputs, targets: int32 ``(chunks, batch, bptt)`` (`darts_jax.data.text.eval_chunks`).
    lengths: the chunks' real lengths ``(chunks,)``; a chunk of length 0 changes nothing (padding).
    hidden: ``(batch, nhid)``, the state before the first chunk.

  Returns:
    The hidden state after the last chunk, and ``nll_sum``, ``correct`` (next-word argmax hits) and ``count``
    (predicted tokens) over the chunks.
  """
  batch, bptt = inputs.shape[1:]

  def chunk(hidden, xs):
    tokens, target, length = xs
    log_probs, hidden, *_ = apply_fn(tokens, hidden, length)
    valid = (jnp.arange(bptt) < length)[None, :]
    nll = -jnp.take_along_axis(log_probs, target[..., None], axis=-1)[..., 0]
    hits = jnp.argmax(log_probs, -1) == target
    return hidden, jnp.stack([jnp.sum(nll * valid), jnp.sum(hits * valid), jnp.sum(valid) * batch])

  hidden, sums = jax.lax.scan(chunk, hidden, (inputs, targets, lengths))
  nll_sum, correct, count = jnp.sum(sums, 0)
  return hidden, {'nll_sum': nll_sum, 'correct': correct, 'count': count}


def eval_blocks(chunks: tuple[np.ndarray, np.ndarray, np.ndarray]
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """A split's ``(inputs, targets, lengths)`` chunks (`darts_jax.data.text.eval_chunks`) in blocks of `EVAL_BLOCK`
  chunks, the last padded with empty chunks (length 0: no effect), so that one compiled program reads them all."""
  inputs, targets, lengths = chunks
  pad = -len(lengths) % EVAL_BLOCK
  inputs, targets = (np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) for x in (inputs, targets))
  lengths = np.concatenate([lengths, np.zeros(pad, lengths.dtype)])
  for start in range(0, len(lengths), EVAL_BLOCK):
    block = slice(start, start + EVAL_BLOCK)
    yield inputs[block], targets[block], lengths[block]


def evaluate_split(evaluate_block, chunks: tuple, nhid: int, dtype: jnp.dtype = jnp.float32) -> tuple[float, float]:
  """``(mean NLL, next-word accuracy)`` of a split: `evaluate_block(inputs, targets, lengths, hidden) -> (hidden,
  sums)` (a jitted `split_log_likelihood`) over its `eval_blocks`. The hidden state starts as zeros of `dtype` (the
  model's: float64 for a float64 model)."""
  hidden = jnp.zeros((chunks[0].shape[1], nhid), dtype)
  totals = []
  for block in eval_blocks(chunks):
    hidden, sums = evaluate_block(*block, hidden)
    totals.append(sums)
  totals = jax.device_get(totals)
  nll, correct, count = (float(sum(np.float64(t[k]) for t in totals)) for k in ('nll_sum', 'correct', 'count'))
  return nll / count, correct / count
