"""Training a recurrent genotype on Penn Treebank and its perplexity (the original ``rnn/train.py``).

`rnn_retrain(config, workdir)` trains `rnn.RNNModel` of ``config.genotype`` (a name such as ``DARTS_V2``, a search
workdir, a ``genotype.json`` or the genotype as text) with the original's recipe (``configs/retrain_ptb.py``;
``run_retrain.py`` dispatches here on ``space = 'rnn'``):

* batches of ``batch_size`` streams, lengths ``max(5, int(N(bptt', 5)))`` capped at ``bptt + 20``, ``bptt'`` =
  ``bptt`` or, with probability 0.05, half of it; the learning rate scaled by ``length / bptt``;
* loss NLL + TAR (``tar``·mean((h_{t+1} − h_t)²)) + AR; SGD without momentum, coupled weight decay, gradients
  clipped to global norm ``grad_clip``;
* **NT-ASGD** (non-monotonically triggered averaged SGD, AWD-LSTM): after every epoch the validation loss is
  computed (batch ``eval_batch_size``); once it is worse than the best of the evaluations more than ``nonmono``
  epochs back, training switches to averaged SGD: the same updates, and the evaluated weights are the running mean
  of the iterates since the switch (as PyTorch's ``ASGD(t0=0, lambd=0)``, whose mean starts at the second iterate).
  The weights of the best validation loss so far are kept (the original saves them) and evaluated on the test split
  with batch ``test_batch_size`` at the end.

It writes ``config.json``, ``genotype.json``, ``recurrent.png`` (and ``.dot``), ``metrics.jsonl`` (interval means
of the training NLL ``loss``, next-word ``accuracy``, ``grad_norm``, ``lr``, ``seq_len``; per epoch
``train_loss``, ``valid_loss``, ``valid_ppl``, ``valid_accuracy`` of the evaluated weights, ``averaging`` (1 once
averaged SGD runs) and ``best_valid_ppl``), ``curves.png`` and at the end ``results.json``: ``valid_loss``,
``valid_ppl``, ``test_loss``, ``test_ppl`` (of the best weights), ``params``, ``epochs``, ``steps``,
``switched_at_epoch``, ``wall_time_s``, ``dataset``, ``genotype``. Checkpoints hold the whole `RNNTrainState`
(averages, best weights, validation history, hidden state), so a resumed run is bit-identical on CPU.
"""
from __future__ import annotations

import json
import os
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

from darts_jax.bilevel.rnn_search_step import (device_rows, gather_rows, masked_accuracy, sgd_step, step_key)
from darts_jax.data import text
from darts_jax.rnn import genotypes, plots
from darts_jax.rnn.model import RNNModel, count_params, evaluate_split, sequence_losses, split_log_likelihood
from darts_jax.tasks.rnn_search import check_lm_config, epoch_lengths, perplexity, shard_lm_batch
from darts_jax.training import curves, loop, parallel, reporting
from darts_jax.training.parallel import AXIS_NAME

PyTree = Any
Metrics = dict[str, jax.Array]
GENOTYPE_FILE = 'genotype.json'
RESULTS_FILE = 'results.json'
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


def load_genotype(spec: str) -> genotypes.Genotype:
  """The recurrent genotype of `spec`: a name (``DARTS_V2``), a workdir holding ``genotype.json``, a file with
  JSON or a ``Genotype(...)`` repr, or the JSON or repr text itself.

  Raises:
    ValueError: for an empty, malformed or invalid genotype; FileNotFoundError: a directory without genotype.json.
  """
  spec = spec.strip()
  if not spec:
    raise ValueError('no genotype given: pass --config.genotype=NAME (e.g. DARTS_V2), a search workdir, a '
                     'genotype.json file, or the genotype as JSON or Genotype(...) text.')
  try:
    path = Path(spec).expanduser()
    exists = len(spec) < 4096 and path.exists()
  except OSError:
    exists = False
  if not exists:
    return genotypes.parse_genotype(spec)
  if path.is_dir():
    if not (path / GENOTYPE_FILE).is_file():
      raise FileNotFoundError(f'{path} holds no {GENOTYPE_FILE} (a finished recurrent search writes one).')
    path = path / GENOTYPE_FILE
  return genotypes.parse_genotype(path.read_text())


def asgd_average(average: jax.Array, iterate: jax.Array, k: jax.Array) -> jax.Array:
  """PyTorch ASGD's (``t0=0, lambd=0``) running mean after its `k`-th step: ``ax + mu·(w − ax)`` with
  ``mu = 1 / max(1, k − 1)``, so ``ax`` is the `k`-th iterate for ``k <= 2`` and then the mean of iterates
  ``2..k`` (PyTorch updates ``mu`` after using it)."""
  mu = 1.0 / jnp.maximum(1, k - 1).astype(jnp.float32)
  return average + mu * (iterate - average)


def make_train_step(model: RNNModel, *, learning_rate: float, bptt: int, grad_clip: float, weight_decay: float,
                    tar: float, ar: float, axis_name: Any = AXIS_NAME) -> Callable[..., tuple[RNNTrainState, Metrics]]:
  """``step(state, (tokens, targets, length, first)) -> (state, metrics)``: one (averaged) SGD step, pmappable."""

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
    params = sgd_step(state.params, grads, lr, grad_clip=grad_clip, weight_decay=weight_decay)
    averaged_steps = state.averaged_steps + state.averaging.astype(jnp.int32)
    avg_params = jax.tree.map(lambda avg, w: jnp.where(state.averaging, asgd_average(avg, w, averaged_steps), avg),
                              state.avg_params, params)
    metrics = pmean({'loss': nll, 'accuracy': masked_accuracy(log_probs, targets, length)})
    metrics.update(grad_norm=optax.tree.norm(grads), lr=lr, seq_len=length.astype(jnp.float32))
    metrics['finite'] = jnp.all(jnp.stack([jnp.isfinite(metrics['loss']), jnp.isfinite(metrics['grad_norm'])]
                                          + [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
    return state.replace(step=state.step + 1, params=params, averaged_steps=averaged_steps, avg_params=avg_params,
                         hidden=gather_rows(hidden, axis_name)), metrics

  return step


def nt_asgd_update(state: RNNTrainState, valid_loss: float, nonmono: int) -> RNNTrainState:
  """The end-of-epoch bookkeeping of the original ``train.py`` on the host: keep the evaluated weights if they are
  the best so far; before the switch, switch to averaging when `valid_loss` is worse than the best loss of the
  evaluations more than `nonmono` epochs back, and record it."""
  evaluated = state.evaluated_params()
  if valid_loss < float(state.best_valid_loss):
    state = state.replace(best_params=evaluated, best_valid_loss=np.asarray(valid_loss, np.float32))
  if bool(state.averaging):
    return state
  count = int(state.history_length)
  history = np.asarray(state.valid_history)
  if count > nonmono and valid_loss > history[:count - nonmono].min():
    logging.info('Validation loss %.4f is worse than %d epochs ago: switching to averaged SGD.', valid_loss, nonmono)
    state = state.replace(averaging=np.asarray(True), averaged_steps=np.asarray(0, np.int32),
                          avg_params=jax.tree.map(np.array, state.params))
  history = history.copy()
  history[count] = valid_loss
  return state.replace(valid_history=history, history_length=np.asarray(count + 1, np.int32))


def rnn_retrain(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """Trains (or resumes) ``config.genotype`` on the corpus of ``config.data`` (module docstring).

  Returns:
    The results (``results.json``).

  Raises:
    ValueError: an invalid config or genotype, or a workdir of another run.
    data.DatasetNotFoundError: the corpus is not found (the message says where its files go).
    loop.NonFiniteLossError: training diverged; the checkpoints hold the last good state.
    loop.Preempted: a signal stopped training after a checkpoint.
  """
  genotype = genotypes.validate_genotype(load_genotype(config.genotype))
  workdir = loop.prepare_workdir(workdir, config)
  batch_size = config.batch_size
  parallel.check_batch_size(batch_size)
  check_lm_config(config)
  if config.nonmono < 0:
    raise ValueError(f'nonmono ({config.nonmono}) must be >= 0.')
  genotype_path = workdir / GENOTYPE_FILE
  if genotype_path.is_file() and genotypes.parse_genotype(genotype_path.read_text()) != genotype:
    raise ValueError(f'{workdir} holds a retraining of another genotype ({genotype_path}); resume it with that '
                     'genotype or use a new workdir.')
  corpus = text.load_text_corpus(config.data.name, config.data.dir or None)
  train_streams = text.batchify(corpus.train, batch_size)
  valid_chunks = text.eval_chunks(corpus.valid, config.eval_batch_size, config.bptt)
  max_length = text.max_bptt_length(config.bptt, config.bptt_jitter, config.max_seq_len_delta)
  lengths = lambda epoch: epoch_lengths(config, train_streams.shape[1], epoch)
  m = config.model
  model = RNNModel(ntoken=len(corpus.vocab), ninp=m.emsize, nhid=m.nhid, genotype=genotype, dropout=m.dropout,
                   dropouth=m.dropouth, dropoutx=m.dropoutx, dropouti=m.dropouti, dropoute=m.dropoute)
  num_params = count_params(len(corpus.vocab), m.emsize, m.nhid, genotype)
  logging.info('%s: %d words; %s with %d parameters; %d devices.', corpus.name, len(corpus.vocab),
               genotypes.genotype_to_repr(genotype), num_params, jax.device_count())

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
    return map(shard_lm_batch, text.lm_batches(train_streams, lengths(epoch), max_length=max_length, start_step=start,
                                               process_index=jax.process_index(), process_count=jax.process_count()))

  def evaluate(epoch: int, step: int, r_state: RNNTrainState, state: RNNTrainState) -> dict[str, Any]:
    del epoch, step, r_state
    valid_loss, valid_accuracy = split_loss(state.evaluated_params(), valid_chunks)
    best = min(valid_loss, float(state.best_valid_loss))
    return {'valid_loss': valid_loss, 'valid_ppl': perplexity(valid_loss), 'valid_accuracy': valid_accuracy,
            'averaging': int(state.averaging), 'best_valid_ppl': perplexity(best)}

  def after_epoch(epoch: int, step: int, state: RNNTrainState, record: dict[str, Any]) -> None:
    del epoch, step, state, record
    curves.plot_curves(str(workdir / reporting.METRICS_FILE), str(workdir / 'curves.png'))

  if jax.process_index() == 0:
    reporting.write_json(genotype_path, json.loads(genotypes.genotype_to_json(genotype)))
    plots.plot_genotype(genotype, f'{workdir}{os.sep}')
  task = loop.Task(state=state, step=lambda r_state, batch, epoch: p_step(r_state, batch), batches=batches,
                   steps_per_epoch=lambda epoch: len(lengths(epoch)), evaluate=evaluate, after_epoch=after_epoch,
                   update_state=lambda epoch, state, record: nt_asgd_update(state, record['valid_loss'],
                                                                             config.nonmono),
                   divergence_advice=DIVERGENCE_ADVICE)
  outcome = loop.train(task, config, workdir)
  final = outcome.state
  best = final.best_params if np.isfinite(final.best_valid_loss) else final.evaluated_params()
  valid_loss, _ = split_loss(best, valid_chunks)
  test_loss, test_accuracy = split_loss(best, text.eval_chunks(corpus.test, config.test_batch_size, config.bptt))
  switches = [r['epoch'] for r in curves.read_epoch_records(workdir / reporting.METRICS_FILE) if r.get('averaging')]
  results = {'valid_loss': valid_loss, 'valid_ppl': perplexity(valid_loss), 'test_loss': test_loss,
             'test_ppl': perplexity(test_loss), 'test_accuracy': test_accuracy, 'params': num_params,
             'epochs': config.num_epochs, 'steps': outcome.step, 'switched_at_epoch': switches[0] - 1 if switches
             else None, 'wall_time_s': outcome.wall_time_s, 'dataset': corpus.name,
             'genotype': json.loads(genotypes.genotype_to_json(genotype))}
  logging.info('Best weights: valid perplexity %.2f, test perplexity %.2f.', results['valid_ppl'], results['test_ppl'])
  if jax.process_index() == 0:
    reporting.write_json(workdir / RESULTS_FILE, results)
  return results
