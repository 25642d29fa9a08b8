"""The recurrent space (DARTS's RNN cell on Penn Treebank and other corpora) behind `SearchSpace`.

The search (the original ``rnn/train_search.py``) reads the training split as ``batch_size`` streams in batches of
``bptt`` tokens (35, with probability 0.05 half of it; ``bptt_jitter > 0`` adds the retraining's N(·, jitter)
lengths) and the validation split as ``batch_size`` streams at the same positions (modulo its length), as the
original. An epoch's lengths depend only on (seed, epoch); batches are padded to the longest length: one compiled
step. The learning rate scales with the length drawn, ``lr = learning_rate · length / bptt``.

The bilevel problem: the architecture losses are the NLL alone (the original's ``model._loss``), the weight step's
NLL + TAR (+ AR); the virtual step is plain SGD on the *clipped* training gradient
``w' = w − lr·(c·∇_w L_train + λw)`` (``c`` the clip coefficient, a constant; momentum 0), the weight step
``w <- w − lr·(clip_{0.25}(∇_w) + λw)``. The validation pass starts from the validation stream's hidden state. Both
streams' hidden states are carried in the state's ``carry`` from batch to batch (detached) and reset at the start
of every epoch; they hold the *global* batch, equal on every device: each device reads its rows and the new rows
are gathered back, so a checkpoint holds all of them. Dropout masks come from ``(state.rng, step, device index)``.

Epoch records: ``valid_loss``, ``valid_ppl`` and ``valid_accuracy`` of the supernet on the whole validation split
(batch ``eval_batch_size``, read ``bptt`` tokens at a time, the hidden state carried), ``alpha_entropy`` (log 5 =
1.61 at the start), ``alpha_max_weight`` and ``stability`` (fraction of the genotype's nodes unchanged since the
previous epoch); interval records add ``seq_len``. The workdir: ``alphas.npz`` (``recurrent``) and the cell plot
``recurrent.png``.

The supernet takes its mixing weights from the search's relaxation (``config.relaxation``, DARTS's softmax by
default), so every relaxation, regulariser and weight perturbation (SDARTS-RS, SDARTS-ADV) works here as on the other
spaces. PC-DARTS's options, carried over to the recurrent cell by this project (`darts_jax.rnn.model`), are ``model``
keys: ``partial_channels`` K (1/K of a predecessor's units through a node's activations, the rest bypassing them,
then shuffled) and ``edge_normalization`` (a β per predecessor of every node; the alphas become ``{'recurrent':
(36, 5), 'edges_recurrent': [(1,), ..., (8,)]}``, which the relaxation maps like the ops' rows and every
hypergradient differentiates; the genotype picks each node's predecessor by weight × β). Records and ``alphas.npz``
hold the ops' array (``alphas.jsonl`` the β too).
"""
from __future__ import annotations

import json
import operator
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax.bilevel.step import BilevelProblem, SearchState
from darts_jax.data import text
from darts_jax.dynamics import diagnostics
from darts_jax.rnn import genotypes, plots
from darts_jax.rnn.model import RNNModelSearch, eval_blocks, init_alphas, sequence_losses, split_log_likelihood
from darts_jax.spaces.base import Retraining, SearchSetup, SearchSpace
from darts_jax.spaces.language_model import (check_lm_config, device_rows, epoch_lengths, gather_rows, masked_accuracy,
                                             perplexity, step_key)
from darts_jax.spaces import rnn_retraining
from darts_jax.training import optimizers

PyTree = Any


def _select_key(flag: Any, if_true: jax.Array, if_false: jax.Array) -> jax.Array:
  """`if_true` where `flag` (a Python or traced bool) holds, else `if_false`."""
  if isinstance(flag, bool):
    return if_true if flag else if_false
  data = jnp.where(flag, jax.random.key_data(if_true), jax.random.key_data(if_false))
  return jax.random.wrap_key_data(data, impl=jax.random.key_impl(if_true))


def create_search_state(rng: jax.Array, model: RNNModelSearch, batch_size: int,
                        weight_tx: optax.GradientTransformation, arch_tx: optax.GradientTransformation) -> SearchState:
  """Weights uniform in ±0.04 (the original), alphas ``1e-3·N(0, 1)`` (`init_alphas`, with the model's edge
  normalisation), zero hidden states (the carry) of the global batch."""

  @jax.jit
  def init(rng):
    params_key, alphas_key, dropout_key = jax.random.split(rng, 3)
    alphas = init_alphas(alphas_key, model.steps, edge_normalization=model.edge_normalization)
    variables = model.init(params_key, jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, model.nhid)), alphas, train=False)
    zeros = jnp.zeros((batch_size, model.nhid), jnp.float32)
    params = variables['params']
    return SearchState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'],
                       alphas=alphas, weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(alphas),
                       rng=dropout_key, carry={'hidden': zeros, 'hidden_valid': zeros}, weight_tx=weight_tx,
                       arch_tx=arch_tx)

  return init(rng)


def search_problem(model: RNNModelSearch, *, learning_rate: float, bptt: int, weight_decay: float = 5e-7,
                   grad_clip: float = 0.25, tar: float = 1e-3, ar: float = 0.0) -> BilevelProblem:
  """The recurrent space's side of the bilevel step (module docstring) for batches ``(tokens (b, T), targets (b, T),
  length (b,), first (b,))`` of `darts_jax.data.text.lm_batches`, under ``model.axis_name``; the weight optimizer
  is `darts_jax.training.optimizers.clipped_sgd`."""
  axis_name = model.axis_name

  def prepare(state, train_batch, val_batch):
    train_key, val_key, weight_key = jax.random.split(step_key(state.rng, state.step, axis_name), 3)

    def lm_batch(batch, hidden, key, weight_key):
      tokens, targets, length, first = batch
      hidden = jnp.where(first[0] > 0, 0.0, device_rows(hidden, tokens.shape[0], axis_name))
      return {'tokens': tokens, 'targets': targets, 'hidden': hidden, 'length': length[0], 'key': key,
              'weight_key': weight_key}
    # The validation batch is never a weight step's: its weight key only keeps the two batches one structure.
    return (lm_batch(train_batch, state.carry['hidden'], train_key, weight_key),
            lm_batch(val_batch, state.carry['hidden_valid'], val_key, val_key))

  def loss(params, batch_stats, alphas, batch, weight_step):
    key = _select_key(weight_step, batch['weight_key'], batch['key'])
    (log_probs, hidden_next, raw, dropped), updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, batch['tokens'], batch['hidden'], alphas, train=True,
        length=batch['length'], rngs={'dropout': key}, mutable=['batch_stats'])
    nll, regularised = sequence_losses(log_probs, batch['targets'], raw, dropped, batch['length'], tar=tar, ar=ar)
    # The architecture passes take the NLL alone (the original's ``model._loss``), the weight step adds TAR/AR.
    value = (regularised if weight_step else nll) if isinstance(weight_step, bool) else jnp.where(
        weight_step, regularised, nll)
    return value, {'nll': nll, 'log_probs': log_probs, 'hidden': hidden_next, 'batch_stats': updates['batch_stats']}

  def metrics(train, aux):
    return {'loss': aux['nll'], 'accuracy': masked_accuracy(aux['log_probs'], train['targets'], train['length']),
            'seq_len': train['length'].astype(jnp.float32)}

  def next_carry(state, train, weight_aux, validation_aux):
    del state, train
    return {'hidden': gather_rows(weight_aux['hidden'], axis_name),
            'hidden_valid': gather_rows(validation_aux()['hidden'], axis_name)}

  return BilevelProblem(
      loss=loss, prepare=prepare,
      learning_rate=lambda step, train: learning_rate * train['length'].astype(jnp.float32) / bptt,
      metrics=metrics, momentum=0.0, weight_decay=weight_decay, grad_clip=grad_clip, next_carry=next_carry,
      axis_name=axis_name)


class RNNSpace(SearchSpace):
  """DARTS's recurrent cell: ``steps`` nodes, each an activation of one earlier node."""

  name: ClassVar[str] = 'rnn'
  supports_seeds: ClassVar[bool] = False  # the steps per epoch follow the seed's BPTT lengths
  # Next-word accuracy ties across architectures of an early supernet (the most frequent word): rank by the loss.
  selection_metric: ClassVar[str] = 'valid_loss'
  selection_sign: ClassVar[float] = -1.0

  # ---- the search

  def check_search_config(self) -> None:
    check_lm_config(self.config)
    groups, nhid = self.config.model.get('partial_channels', 1), self.config.model.nhid
    if groups < 1 or nhid % groups:
      raise ValueError(f'model.partial_channels ({groups}) must divide model.nhid ({nhid}) (1: every unit through '
                       'the activations).')

  def search_setup(self, workdir: Path, axis_name: Any) -> SearchSetup:
    del workdir
    config, m = self.config, self.config.model
    batch_size = config.batch_size
    corpus = text.load_text_corpus(config.data.name, config.data.dir or None)
    train_streams = text.batchify(corpus.train, batch_size)
    search_streams = text.batchify(corpus.valid, batch_size)
    valid_chunks = text.eval_chunks(corpus.valid, config.eval_batch_size, config.bptt)
    max_length = text.max_bptt_length(config.bptt, config.bptt_jitter, config.max_seq_len_delta)
    lengths = lambda epoch, seed=None: epoch_lengths(config, train_streams.shape[1], epoch, seed)
    model = RNNModelSearch(ntoken=len(corpus.vocab), ninp=m.emsize, nhid=m.nhid, steps=m.steps, dropout=m.dropout,
                           dropouth=m.dropouth, dropoutx=m.dropoutx, dropouti=m.dropouti, dropoute=m.dropoute,
                           axis_name=axis_name, mixing='weights', partial_channels=m.get('partial_channels', 1),
                           edge_normalization=m.get('edge_normalization', False))
    weight_tx = optimizers.clipped_sgd(weight_decay=config.weight_decay, grad_clip=config.grad_clip)
    arch_tx = optimizers.arch_optimizer(config.arch_learning_rate, b1=0.9, b2=0.999, weight_decay=config.arch_weight_decay)
    init = lambda rng: create_search_state(rng, model, batch_size, weight_tx, arch_tx)
    problem = search_problem(model, learning_rate=config.learning_rate, bptt=config.bptt,
                             weight_decay=config.weight_decay, grad_clip=config.grad_clip, tar=config.tar, ar=config.ar)

    def batches(epoch: int, start: int, seed: int):
      epoch_lengths_ = lengths(epoch, seed)
      where = dict(max_length=max_length, start_step=start, process_index=jax.process_index(),
                   process_count=jax.process_count())
      train = text.lm_batches(train_streams, epoch_lengths_, **where)
      # The original reads validation batches at the training position, bptt long.
      val = text.lm_batches(search_streams, epoch_lengths_, read_length=config.bptt, **where)
      return zip(train, val)

    def eval_step(state: SearchState, weights: PyTree, hidden: jax.Array, block):
      apply = lambda tokens, hidden, length: model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                                                         tokens, hidden, weights, train=False, length=length)
      return split_log_likelihood(apply, *block, hidden)

    def eval_entries(totals):
      valid_loss = float(totals['nll_sum'] / totals['count'])
      return {'valid_loss': valid_loss, 'valid_ppl': perplexity(valid_loss),
              'valid_accuracy': float(totals['correct'] / totals['count'])}

    return SearchSetup(
        summary=(f'{corpus.name}: {len(corpus.vocab)} words ({len(corpus.train)} / {len(corpus.valid)} / '
                 f'{len(corpus.test)} tokens), {len(lengths(0))} steps of {batch_size} x ~{config.bptt} in the first '
                 'epoch'),
        steps_per_epoch=lambda epoch: len(lengths(epoch)), batches=batches, init=init, problem=problem,
        eval_step=eval_step, eval_carry=jnp.zeros((config.eval_batch_size, m.nhid), jnp.float32),
        eval_batches=lambda: eval_blocks(valid_chunks), eval_entries=eval_entries, eval_sharded=False)

  def derive_genotype(self, alphas: PyTree, weights: PyTree | None = None) -> genotypes.Genotype:
    if weights is None:
      return genotypes.derive_genotype(alphas, self.config.model.steps)
    return genotypes.derive_genotype(weights, self.config.model.steps, from_weights=True)

  def genotype_weights(self, genotype: genotypes.Genotype, alphas: PyTree) -> PyTree:
    """The supernet's mixing weights that run `genotype` alone, in the dtype of `alphas`: node ``i``'s rows are its
    predecessors ``j = 0..i`` (rows ``i (i + 1) / 2 + j``); the genotype's ``(activation, j)`` sets that row one-hot at
    the activation, the node's other rows stay 0 (their terms vanish: weight 0 on the state and on the activations).

    With ``model.edge_normalization`` node ``i``'s edge weights are one-hot at ``j`` too: the genotype's node reads
    one predecessor unscaled, and the zeros also remove PC-DARTS's bypassed units of the other predecessors, which
    the ops' rows cannot. The supernet then computes the genotype's cell (`darts_jax.rnn.model.RNNModel`) with the
    search cell's affine-free BatchNorm on every state; with ``model.partial_channels`` K > 1 the kept predecessor
    still passes nhid − nhid/K units around its activation and shuffles them (the search's supernet).

    Raises:
      ValueError: a genotype the supernet cannot compute: not ``model.steps`` nodes, or a ``concat`` other than the
        last `genotypes.CONCAT` states (what the search cell averages).
    """
    genotype = genotypes.validate_genotype(genotype)
    steps = self.config.model.steps
    averaged = list(range(steps + 1))[-genotypes.CONCAT:]
    if len(genotype.recurrent) != steps or list(genotype.concat) != averaged:
      raise ValueError(f'the {steps}-node supernet averages states {averaged}; it cannot run a genotype of '
                       f'{len(genotype.recurrent)} nodes averaging {list(genotype.concat)}.')
    ops_alphas = np.asarray(genotypes.ops_alphas(alphas))
    weights = np.zeros_like(ops_alphas)
    for i, (activation, j) in enumerate(genotype.recurrent):
      weights[i * (i + 1) // 2 + j, genotypes.PRIMITIVES.index(activation)] = 1
    if not isinstance(alphas, Mapping):
      return weights
    edge_weights = [np.zeros_like(np.asarray(b)) for b in alphas[genotypes.EDGES_KEY]]
    for (_, j), b in zip(genotype.recurrent, edge_weights):
      b[j] = 1
    return {genotypes.OPS_KEY: weights, genotypes.EDGES_KEY: edge_weights}

  def row_ops(self, weights: PyTree) -> list[tuple[str, ...]]:
    # The ops' array is the one leaf of two dimensions (edge normalisation's are one per node): `PRIMITIVES` on
    # every (node, predecessor) row.
    del weights
    return [genotypes.PRIMITIVES] * genotypes.num_edges(self.config.model.steps)

  def alphas_record(self, alphas: PyTree) -> dict[str, Any]:
    record = {'alphas': np.asarray(genotypes.ops_alphas(alphas)).tolist()}
    if isinstance(alphas, Mapping):  # edge normalisation's one list per node
      record[genotypes.EDGES_KEY] = [np.asarray(b).tolist() for b in alphas[genotypes.EDGES_KEY]]
    return record

  def alphas_from_record(self, record: dict[str, Any]) -> PyTree:
    alphas = np.asarray(record['alphas'], np.float32)
    if genotypes.EDGES_KEY not in record:
      return alphas
    return {genotypes.OPS_KEY: alphas,
            genotypes.EDGES_KEY: [np.asarray(b, np.float32) for b in record[genotypes.EDGES_KEY]]}

  def diagnostics(self, alphas: PyTree, history: list[Any], weights: PyTree | None) -> dict[str, float]:
    # The ops' weights (edge normalisation's are not rows of ops).
    if weights is None:
      alphas = genotypes.ops_alphas(alphas)
      entries = {'alpha_entropy': diagnostics.alpha_entropy({'': alphas})[''],
                 'alpha_max_weight': diagnostics.alpha_max_weight({'': alphas})['']}
    else:
      weights = genotypes.ops_alphas(weights)
      entries = {'alpha_entropy': diagnostics.weights_entropy({'': weights})[''],
                 'alpha_max_weight': diagnostics.weights_max({'': weights})['']}
    if len(history) > 1:  # a node has one (activation, predecessor) choice: same or changed
      entries['stability'] = float(np.mean([x == y for x, y in zip(history[-2].recurrent, history[-1].recurrent)]))
    entries['unchanged_epochs'] = diagnostics.unchanged_epochs(history, operator.eq)
    return entries

  def genotype_text(self, genotype: genotypes.Genotype) -> str:
    return genotypes.genotype_to_repr(genotype)

  def write_search_artifacts(self, workdir: Path, alphas: PyTree, genotype: genotypes.Genotype) -> None:
    np.savez(workdir / 'alphas.npz', recurrent=np.asarray(genotypes.ops_alphas(alphas)))
    plots.plot_genotype(genotype, f'{workdir}{os.sep}')

  # ---- genotypes

  def load_genotype(self, spec: str) -> genotypes.Genotype:
    return genotypes.validate_genotype(genotypes.load_genotype(spec))

  def genotype_to_json(self, genotype: genotypes.Genotype) -> dict[str, Any]:
    return json.loads(genotypes.genotype_to_json(genotype))

  def plot_genotype(self, genotype: genotypes.Genotype, prefix: str) -> None:
    plots.plot_genotype(genotype, prefix)

  # ---- retraining

  def check_retrain_config(self) -> None:
    rnn_retraining.check_config(self.config)

  def retraining(self, workdir: Path, genotype: genotypes.Genotype) -> Retraining:
    return rnn_retraining.retraining(self.config, workdir, genotype)
