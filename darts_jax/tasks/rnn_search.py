"""The recurrent architecture search on Penn Treebank (the original ``rnn/train_search.py``).

`rnn_search(config, workdir)` runs the search of a config with ``space = 'rnn'`` (``configs/search_ptb.py``,
``configs/search_ptb_quick.py``; ``run_search.py`` dispatches here) and writes to `workdir`:

* ``config.json``; ``metrics.jsonl`` and ``tensorboard/``: every ``log_every_steps`` steps the interval means of the
  training NLL ``loss``, next-word ``accuracy``, ``grad_norm``, ``arch_grad_norm``, ``lr`` and ``seq_len``; after
  every epoch ``train_loss``/``train_accuracy`` (means over the epoch), ``valid_loss``, ``valid_ppl`` and
  ``valid_accuracy`` of the supernet on the whole validation split (batch ``eval_batch_size``, read ``bptt`` tokens
  at a time, the hidden state carried), ``alpha_entropy`` (mean entropy of the softmaxed alphas, nats; log 5 = 1.61
  at the start) and ``alpha_max_weight``, ``stability`` (fraction of the genotype's nodes unchanged since the
  previous epoch), and ``epoch_time_s``;
* ``genotypes.jsonl`` and ``alphas.jsonl``: the genotype derived and the alphas after every epoch;
* at the end ``genotype.json``, ``alphas.npz`` (``recurrent``), the cell plot ``recurrent.png`` (and its ``.dot``)
  and ``curves.png``;
* ``checkpoints/``: the `RNNSearchState` (hidden states included) and the position in the data.

The training split is read as ``batch_size`` streams in batches of ``bptt`` tokens (35, with probability 0.05 half
of it; ``bptt_jitter > 0`` adds the retraining's N(·, jitter) lengths), the validation split as ``batch_size``
streams at the same positions (modulo its length), as the original. An epoch's lengths depend only on (seed, epoch),
so a resumed run is bit-identical to an uninterrupted one on CPU. Batches are padded to the longest length: one
compiled step.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from darts_jax.bilevel import rnn_search_step
from darts_jax.bilevel.rnn_search_step import HYPERGRADIENT_METHODS, RNNSearchState
from darts_jax.bilevel.search_step import arch_optimizer
from darts_jax.data import text
from darts_jax.rnn import genotypes, plots
from darts_jax.rnn.model import RNNModelSearch, evaluate_split, split_log_likelihood
from darts_jax.training import curves, loop, parallel, reporting
from darts_jax.training.parallel import AXIS_NAME

GENOTYPES_FILE = 'genotypes.jsonl'
ALPHAS_FILE = 'alphas.jsonl'
DIVERGENCE_ADVICE = 'Lower the learning rates (learning_rate, arch_learning_rate) or change the seed.'


def check_lm_config(config: ml_collections.ConfigDict) -> None:
  """The checks of a language-model config shared by the search and the retraining (one line each)."""
  if config.data.name not in text.TEXT_DATASETS:
    raise ValueError(f'Unknown data.name {config.data.name!r} for the recurrent space; expected one of '
                     f'{", ".join(text.TEXT_DATASETS)}.')
  for key in ('bptt', 'eval_batch_size', 'test_batch_size', 'model.emsize', 'model.nhid'):
    value = config[key] if '.' not in key else config.model[key.split('.')[1]]
    if value < 1:
      raise ValueError(f'{key} ({value}) must be positive.')
  if config.model.emsize != config.model.nhid:
    raise ValueError(f'model.emsize ({config.model.emsize}) must equal model.nhid ({config.model.nhid}): the decoder '
                     'is tied to the embedding.')
  for key in ('dropout', 'dropouth', 'dropoutx', 'dropouti', 'dropoute'):
    if not 0.0 <= config.model[key] < 1.0:
      raise ValueError(f'model.{key} ({config.model[key]}) must be in [0, 1).')


def epoch_lengths(config: ml_collections.ConfigDict, stream_length: int, epoch: int) -> list[int]:
  """The epoch's BPTT lengths (`text.bptt_lengths`), at most ``max_steps_per_epoch`` of them (if > 0)."""
  lengths = text.bptt_lengths(stream_length, config.bptt, seed=config.seed, epoch=epoch, jitter=config.bptt_jitter,
                              max_delta=config.max_seq_len_delta)
  return lengths[:config.max_steps_per_epoch] if config.max_steps_per_epoch > 0 else lengths


def shard_lm_batch(batch: tuple[np.ndarray, ...]) -> Any:
  return parallel.shard(batch, AXIS_NAME)


def perplexity(loss: float) -> float:
  return float(np.exp(min(loss, 700.0)))  # exp overflows float64 past ~709


def _alpha_diagnostics(alphas: np.ndarray, history: list[genotypes.Genotype]) -> dict[str, float]:
  a = np.asarray(alphas, np.float64)
  log_p = a - a.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  p = np.exp(log_p)
  entries = {'alpha_entropy': float(-(p * log_p).sum(-1).mean()), 'alpha_max_weight': float(p.max(-1).mean())}
  if len(history) > 1:  # a node has one (activation, predecessor) choice: same or changed
    entries['stability'] = float(np.mean([x == y for x, y in zip(history[-2].recurrent, history[-1].recurrent)]))
  return entries


def rnn_search(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> RNNSearchState:
  """Runs (or resumes) the recurrent DARTS search of `config` in `workdir` (module docstring).

  Returns:
    The final state, on the host.

  Raises:
    ValueError: an invalid config, or one that differs from the workdir's.
    data.DatasetNotFoundError: the corpus is not found (the message says where its files go).
    loop.NonFiniteLossError: the search diverged; the checkpoints hold the last good state.
    loop.Preempted: a signal stopped the search after a checkpoint.
  """
  workdir = loop.prepare_workdir(workdir, config)
  batch_size = config.batch_size
  parallel.check_batch_size(batch_size)
  if config.hypergradient not in HYPERGRADIENT_METHODS:
    raise ValueError(f'Unknown hypergradient {config.hypergradient!r} for the recurrent search; expected one of '
                     f'{", ".join(HYPERGRADIENT_METHODS)}.')
  check_lm_config(config)
  corpus = text.load_text_corpus(config.data.name, config.data.dir or None)
  train_streams = text.batchify(corpus.train, batch_size)
  search_streams = text.batchify(corpus.valid, batch_size)
  valid_chunks = text.eval_chunks(corpus.valid, config.eval_batch_size, config.bptt)
  max_length = text.max_bptt_length(config.bptt, config.bptt_jitter, config.max_seq_len_delta)
  lengths = lambda epoch: epoch_lengths(config, train_streams.shape[1], epoch)
  logging.info('%s: %d words (%d / %d / %d tokens), %d steps of %d x ~%d in the first epoch, %d devices.',
               corpus.name, len(corpus.vocab), len(corpus.train), len(corpus.valid), len(corpus.test),
               len(lengths(0)), batch_size, config.bptt, jax.device_count())

  m = config.model
  model = RNNModelSearch(ntoken=len(corpus.vocab), ninp=m.emsize, nhid=m.nhid, steps=m.steps, dropout=m.dropout,
                         dropouth=m.dropouth, dropoutx=m.dropoutx, dropouti=m.dropouti, dropoute=m.dropoute,
                         axis_name=AXIS_NAME)
  arch_tx = arch_optimizer(config.arch_learning_rate, b1=0.9, b2=0.999, weight_decay=config.arch_weight_decay)
  state = rnn_search_step.create_rnn_search_state(jax.random.key(config.seed), model, batch_size, arch_tx)
  logging.info('Supernet: %d parameters.', sum(x.size for x in jax.tree.leaves(state.params)))
  p_step = parallel.data_parallel(rnn_search_step.make_rnn_search_step(
      model, learning_rate=config.learning_rate, bptt=config.bptt, hypergradient_method=config.hypergradient,
      grad_clip=config.grad_clip, weight_decay=config.weight_decay, fd_epsilon=config.fd_epsilon, tar=config.tar,
      ar=config.ar), AXIS_NAME, impl=config.get('parallel_impl', parallel.DEFAULT_IMPL), donate_argnums=(0,))

  @jax.jit
  def evaluate_block(params, batch_stats, alphas, inputs, targets, chunk_lengths, hidden):
    apply = lambda tokens, hidden, length: model.apply({'params': params, 'batch_stats': batch_stats}, tokens,
                                                       hidden, alphas, train=False, length=length)
    return split_log_likelihood(apply, inputs, targets, chunk_lengths, hidden)

  def batches(epoch: int, start: int) -> Iterator[Any]:
    epoch_lengths_ = lengths(epoch)
    where = dict(max_length=max_length, start_step=start, process_index=jax.process_index(),
                 process_count=jax.process_count())
    train = text.lm_batches(train_streams, epoch_lengths_, **where)
    # The original reads validation batches at the training position, bptt long.
    val = text.lm_batches(search_streams, epoch_lengths_, read_length=config.bptt, **where)
    return ((shard_lm_batch(t), shard_lm_batch(v)) for t, v in zip(train, val))

  def host_alphas(state: RNNSearchState) -> np.ndarray:
    return np.asarray(jax.device_get(state.alphas), np.float32)

  history = [genotypes.derive_genotype(host_alphas(state), m.steps)]

  def evaluate(epoch: int, step: int, r_state: RNNSearchState, state: RNNSearchState) -> dict[str, Any]:
    del epoch, r_state
    if len(history) == 1 and (workdir / ALPHAS_FILE).is_file():  # resumed: the genotypes of the epochs before
      history.extend(genotypes.derive_genotype(np.asarray(r['alphas']), m.steps)
                     for r in reporting.read_jsonl(workdir / ALPHAS_FILE) if r['step'] < step)
    valid_loss, valid_accuracy = evaluate_split(
        lambda *block: evaluate_block(state.params, state.batch_stats, state.alphas, *block), valid_chunks, m.nhid)
    history.append(genotypes.derive_genotype(host_alphas(state), m.steps))
    return {'valid_loss': valid_loss, 'valid_ppl': perplexity(valid_loss), 'valid_accuracy': valid_accuracy,
            **_alpha_diagnostics(host_alphas(state), history)}

  def after_epoch(epoch: int, step: int, state: RNNSearchState, record: dict[str, Any]) -> None:
    del record
    genotype = genotypes.derive_genotype(host_alphas(state), m.steps)
    logging.info('Genotype: %s', genotypes.genotype_to_repr(genotype))
    reporting.append_jsonl(workdir / GENOTYPES_FILE, {'step': step, 'epoch': epoch + 1,
                                                      'genotype': json.loads(genotypes.genotype_to_json(genotype))})
    reporting.append_jsonl(workdir / ALPHAS_FILE, {'step': step, 'epoch': epoch + 1,
                                                   'alphas': host_alphas(state).tolist()})

  task = loop.Task(state=state, step=lambda r_state, batch, epoch: p_step(r_state, *batch), batches=batches,
                   steps_per_epoch=lambda epoch: len(lengths(epoch)), evaluate=evaluate, after_epoch=after_epoch,
                   logs=(GENOTYPES_FILE, ALPHAS_FILE), divergence_advice=DIVERGENCE_ADVICE)
  outcome = loop.train(task, config, workdir)
  if jax.process_index() == 0:
    alphas = host_alphas(outcome.state)
    genotype = genotypes.derive_genotype(alphas, m.steps)
    reporting.write_json(workdir / 'genotype.json', json.loads(genotypes.genotype_to_json(genotype)))
    np.savez(workdir / 'alphas.npz', recurrent=alphas)
    plots.plot_genotype(genotype, f'{workdir}{os.sep}')
    curves.plot_curves(str(workdir / reporting.METRICS_FILE), str(workdir / 'curves.png'))
    logging.info('Final genotype: %s', genotypes.genotype_to_repr(genotype))
  return outcome.state
