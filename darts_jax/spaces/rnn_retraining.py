"""The recurrent space's retraining (the original ``rnn/train.py``): `rnn.RNNModel` of a genotype trained on a
corpus, evaluated by its perplexity.

The recipe (``configs/retrain_ptb.py``):

* batches of ``batch_size`` streams, lengths ``max(5, int(N(bptt', 5)))`` capped at ``bptt + 20``, ``bptt'`` =
  ``bptt`` or, with probability 0.05, half of it; the learning rate scaled by ``length / bptt``;
* loss NLL + TAR (``tar``·mean((h_{t+1} − h_t)²)) + AR; SGD without momentum, coupled weight decay, gradients
  clipped to global norm ``grad_clip``;
* **NT-ASGD** (`training.optimizers.nt_asgd_update`): after every epoch the validation loss is computed (batch
  ``eval_batch_size``); once it is worse than the best of the evaluations more than ``nonmono`` epochs back,
  training switches to averaged SGD: the same updates, and the evaluated weights are the running mean of the
  iterates since the switch (as PyTorch's ``ASGD(t0=0, lambd=0)``, whose mean starts at the second iterate). The
  weights of the best validation loss so far are kept (the original saves them) and evaluated on the test split with
  batch ``test_batch_size`` at the end.

What lands in the workdir besides the retrain task's common files (`darts_jax.tasks.retrain`): ``metrics.jsonl``
(interval means of the training NLL ``loss``, next-word ``accuracy``, ``grad_norm``, ``lr``, ``seq_len``; per epoch
``train_loss``, ``valid_loss``, ``valid_ppl``, ``valid_accuracy`` of the evaluated weights, ``averaging`` (1 once
averaged SGD runs) and ``best_valid_ppl``), ``curves.png``, and in ``results.json``: ``valid_loss``, ``valid_ppl``,
``test_loss``, ``test_ppl``, ``test_accuracy`` (of the best weights), ``params``, ``switched_at_epoch``,
``dataset``. Checkpoints hold the whole `RNNTrainState` (averages, best weights, validation history, hidden state),
so a resumed run is bit-identical on CPU.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from darts_jax.data import text
from darts_jax.rnn import genotypes
from darts_jax.rnn.model import RNNModel, num_params, evaluate_split, sequence_losses, split_log_likelihood
from darts_jax.spaces.base import Retraining
from darts_jax.spaces.language_model import (check_lm_config, device_rows, epoch_lengths, gather_rows, masked_accuracy,
                                             perplexity, step_key)
from darts_jax.training import curves, loop, optimizers, parallel, reporting
from darts_jax.training.parallel import AXIS_NAME

PyTree = Any
Metrics = dict[str, jax.Array]
DIVERGENCE_ADVICE = 'Lower learning_rate or grad_clip, or change the seed.'


class RNNTrainState(flax.struct.PyTreeNode):
  """The retraining's state.

  Attributes:
    step: steps taken.
    params: the SGD iterate.
    averaging: whether NT-ASGD has switched to averaging (bool scalar).
    averaged_steps: steps since the switch.
    avg_params: the running mean of the iterates since the switch (ASGD's ``ax``).
    best_params: the evaluated weights of the best validation loss so far.
    best_valid_loss: that loss (inf before the first evaluation).
    valid_history: the validation losses of the epochs before the switch (``num_epochs`` slots).
    history_length: how many of them are filled.
    hidden: ``(batch_size, nhid)`` the hidden state carried between batches, global batch.
    rng: base key of the dropout masks.
  """
  step: jax.Array
  params: PyTree
  averaging: jax.Array
  averaged_steps: jax.Array
  avg_params: PyTree
  best_params: PyTree
  best_valid_loss: jax.Array
  valid_history: jax.Array
  history_length: jax.Array
  hidden: jax.Array
  rng: jax.Array

  def evaluated_params(self) -> PyTree:
    """The weights NT-ASGD evaluates: the average once it averages."""
    return jax.tree.map(lambda avg, p: np.where(self.averaging, avg, p), self.avg_params, self.params)


def make_train_step(model: RNNModel, *, learning_rate: float, bptt: int, grad_clip: float, weight_decay: float,
                    tar: float, ar: float, axis_name: Any = AXIS_NAME) -> Callable[..., tuple[RNNTrainState, Metrics]]:
  """``step(state, (tokens, targets, length, first)) -> (state, metrics)``: one (averaged) SGD step
  (`training.optimizers.clipped_sgd`, the learning rate scaled by the batch's length), pmappable."""
  tx = optimizers.clipped_sgd(weight_decay=weight_decay, grad_clip=grad_clip)

  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def step(state: RNNTrainState, batch) -> tuple[RNNTrainState, Metrics]:
    tokens, targets, length, first = batch
    length = length[0]
    hidden = jnp.where(first[0] > 0, 0.0, device_rows(state.hidden, tokens.shape[0], axis_name))
    lr = learning_rate * length.astype(jnp.float32) / bptt
    key = step_key(state.rng, state.step, axis_name)

    def loss_fn(params):
      log_probs, hidden_next, raw, dropped = model.apply({'params': params}, tokens, hidden, train=True,
                                                         length=length, rngs={'dropout': key})
      nll, loss = sequence_losses(log_probs, targets, raw, dropped, length, tar=tar, ar=ar)
      return loss, (nll, log_probs, hidden_next)

    (_, (nll, log_probs, hidden)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = pmean(grads)
    updates, _ = tx.update(grads, tx.init(state.params), state.params, learning_rate=lr)
    params = optax.apply_updates(state.params, updates)
    averaged_steps = state.averaged_steps + state.averaging.astype(jnp.int32)
    avg_params = jax.tree.map(
        lambda avg, w: jnp.where(state.averaging, optimizers.asgd_average(avg, w, averaged_steps), avg),
        state.avg_params, params)
    metrics = pmean({'loss': nll, 'accuracy': masked_accuracy(log_probs, targets, length)})
    metrics.update(grad_norm=optax.tree.norm(grads), lr=lr, seq_len=length.astype(jnp.float32))
    metrics['finite'] = jnp.all(jnp.stack([jnp.isfinite(metrics['loss']), jnp.isfinite(metrics['grad_norm'])]
                                          + [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
    return state.replace(step=state.step + 1, params=params, averaged_steps=averaged_steps, avg_params=avg_params,
                         hidden=gather_rows(hidden, axis_name)), metrics

  return step


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) for a retrain config the recurrent space cannot run."""
  parallel.check_batch_size(config.batch_size)
  check_lm_config(config)
  if config.nonmono < 0:
    raise ValueError(f'nonmono ({config.nonmono}) must be >= 0.')


def retraining(config: ml_collections.ConfigDict, workdir: Path, genotype: genotypes.Genotype) -> Retraining:
  """The retraining of `genotype` under `config` writing to `workdir` (module docstring).

  Raises:
    data.DatasetNotFoundError: the corpus is not found (the message says where its files go).
  """
  batch_size = config.batch_size
  corpus = text.load_text_corpus(config.data.name, config.data.dir or None)
  train_streams = text.batchify(corpus.train, batch_size)
  valid_chunks = text.eval_chunks(corpus.valid, config.eval_batch_size, config.bptt)
  max_length = text.max_bptt_length(config.bptt, config.bptt_jitter, config.max_seq_len_delta)
  lengths = lambda epoch: epoch_lengths(config, train_streams.shape[1], epoch)
  m = config.model
  model = RNNModel(ntoken=len(corpus.vocab), ninp=m.emsize, nhid=m.nhid, genotype=genotype, dropout=m.dropout,
                   dropouth=m.dropouth, dropoutx=m.dropoutx, dropouti=m.dropouti, dropoute=m.dropoute)
  parameter_count = num_params(len(corpus.vocab), m.emsize, m.nhid, genotype)
  logging.info('%s: %d words; %s with %d parameters; %d devices.', corpus.name, len(corpus.vocab),
               genotypes.genotype_to_repr(genotype), parameter_count, jax.device_count())

  @jax.jit
  def init(rng):
    params_key, dropout_key = jax.random.split(rng)
    params = model.init(params_key, jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, m.nhid)), train=False)['params']
    return RNNTrainState(step=jnp.zeros((), jnp.int32), params=params, averaging=jnp.zeros((), bool),
                         averaged_steps=jnp.zeros((), jnp.int32), avg_params=params, best_params=params,
                         best_valid_loss=jnp.full((), jnp.inf, jnp.float32),
                         valid_history=jnp.zeros((config.num_epochs,), jnp.float32),
                         history_length=jnp.zeros((), jnp.int32), hidden=jnp.zeros((batch_size, m.nhid), jnp.float32),
                         rng=dropout_key)

  state = init(jax.random.key(config.seed))
  p_step = parallel.data_parallel(
      make_train_step(model, learning_rate=config.learning_rate, bptt=config.bptt, grad_clip=config.grad_clip,
                      weight_decay=config.weight_decay, tar=config.tar, ar=config.ar),
      AXIS_NAME, impl=config.get('parallel_impl', parallel.DEFAULT_IMPL), donate_argnums=(0,))

  @jax.jit
  def evaluate_block(params, inputs, targets, chunk_lengths, hidden):
    apply = lambda tokens, hidden, length: model.apply({'params': params}, tokens, hidden, train=False,
                                                       length=length)
    return split_log_likelihood(apply, inputs, targets, chunk_lengths, hidden)

  def split_loss(params, chunks) -> tuple[float, float]:
    return evaluate_split(lambda *block: evaluate_block(params, *block), chunks, m.nhid)

  def batches(epoch: int, start: int) -> Iterator[Any]:
    host_batches = text.lm_batches(train_streams, lengths(epoch), max_length=max_length, start_step=start,
                                   process_index=jax.process_index(), process_count=jax.process_count())
    return (parallel.shard(batch, AXIS_NAME) for batch in host_batches)

  def evaluate(epoch: int, step: int, r_state: RNNTrainState, state: RNNTrainState) -> dict[str, Any]:
    del epoch, step, r_state
    valid_loss, valid_accuracy = split_loss(state.evaluated_params(), valid_chunks)
    best = min(valid_loss, float(state.best_valid_loss))
    return {'valid_loss': valid_loss, 'valid_ppl': perplexity(valid_loss), 'valid_accuracy': valid_accuracy,
            'averaging': int(state.averaging), 'best_valid_ppl': perplexity(best)}

  def results(outcome: loop.Outcome) -> dict[str, Any]:
    final = outcome.state
    best = final.best_params if np.isfinite(final.best_valid_loss) else final.evaluated_params()
    valid_loss, _ = split_loss(best, valid_chunks)
    test_loss, test_accuracy = split_loss(best, text.eval_chunks(corpus.test, config.test_batch_size, config.bptt))
    switches = [r['epoch'] for r in curves.read_epoch_records(workdir / reporting.METRICS_FILE) if r.get('averaging')]
    entries = {'valid_loss': valid_loss, 'valid_ppl': perplexity(valid_loss), 'test_loss': test_loss,
               'test_ppl': perplexity(test_loss), 'test_accuracy': test_accuracy, 'params': parameter_count,
               'switched_at_epoch': switches[0] - 1 if switches else None, 'dataset': corpus.name}
    logging.info('Best weights: valid perplexity %.2f, test perplexity %.2f.', entries['valid_ppl'],
                 entries['test_ppl'])
    return entries

  task = loop.Task(state=state, step=lambda r_state, batch, epoch: p_step(r_state, batch), batches=batches,
                   steps_per_epoch=lambda epoch: len(lengths(epoch)), evaluate=evaluate,
                   update_state=lambda epoch, state, record: optimizers.nt_asgd_update(state, record['valid_loss'],
                                                                                        config.nonmono),
                   divergence_advice=DIVERGENCE_ADVICE)
  return Retraining(task=task, results=results)
