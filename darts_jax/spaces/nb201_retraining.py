"""NAS-Bench-201's retraining: a genotype's network (`darts_jax.nb201.model.Network`, affine cells) trained from
scratch and evaluated on the held-out images after every epoch, with the CNN retraining's step and evaluation
(`darts_jax.cnn.train_step`: no auxiliary head, no drop path, no cutout unless ``data.cutout``).

The benchmark's recipe (``configs/retrain_nb201.py``): 200 epochs, batch 256, SGD with momentum 0.9 (the benchmark's
is Nesterov's), weight decay 5e-4, learning rate cosine from 0.1 to 0, random crop and flip. ``results.json``:
``test_accuracy``, ``test_loss``, ``params`` and ``macs`` (`darts_jax.nb201.model.network_cost`, as the benchmark
counts them), ``arch`` and ``dataset``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from darts_jax.cnn.train_step import create_train_state, make_eval_step, make_train_step
from darts_jax.data import retrain_data
from darts_jax.nb201.genotypes import Genotype, to_arch_str
from darts_jax.nb201.model import Network, count_params, network_cost
from darts_jax.spaces.base import Retraining
from darts_jax.training import loop, optimizers, parallel
from darts_jax.training.parallel import AXIS_NAME

RESUMABLE_KEYS = frozenset({'genotype'})


class RetrainNetwork(Network):
  """`Network` of a genotype with the CNN retraining's calling convention: ``(x, train, drop_path_prob)`` ->
  ``(logits, None)`` (no drop path, no auxiliary head)."""

  def __call__(self, x, train: bool = False, drop_path_prob: Any = 0.0):  # pylint: disable=arguments-renamed
    del drop_path_prob
    return super().__call__(x, None, train), None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) for a retrain config the NAS-Bench-201 space cannot run."""
  parallel.check_batch_size(config.batch_size)
  if config.num_epochs <= 0:
    raise ValueError(f'num_epochs must be positive, got {config.num_epochs}.')
  if config.model.init_channels < 1 or config.model.cells < 1:
    raise ValueError(f'model.init_channels ({config.model.init_channels}) and model.cells ({config.model.cells}) '
                     'must be positive.')
  if config.data.image_size % 4:
    raise ValueError(f'data.image_size ({config.data.image_size}) must be divisible by 4 (two reductions).')
  if retrain_data.is_imagenet(config):
    raise ValueError("the NAS-Bench-201 space trains on in-memory datasets (e.g. imagenet16_120), not 'imagenet'.")


def retraining(config: ml_collections.ConfigDict, workdir: Path, genotype: Genotype) -> Retraining:
  """The retraining of `genotype` under `config` (module docstring)."""
  del workdir  # no files of its own
  inputs = retrain_data.open_data(config, axis_name=AXIS_NAME)
  batch_size = config.batch_size
  logging.info('%s: %d training / %d test images, %d steps of %d per epoch, %d devices.', inputs.name,
               inputs.num_train, inputs.num_test, inputs.steps_per_epoch, batch_size, jax.device_count())
  model = RetrainNetwork(C=config.model.init_channels, N=config.model.cells, num_classes=inputs.num_classes,
                         genotype=genotype, affine=True, axis_name=AXIS_NAME)
  tx, schedule = optimizers.create_optimizer(config, inputs.steps_per_epoch, ('classifier',))
  state = create_train_state(jax.random.key(config.seed), model, inputs.image_shape, tx)
  num_params = count_params(state.params)
  macs = network_cost(genotype, C=config.model.init_channels, N=config.model.cells, num_classes=inputs.num_classes,
                      image_size=inputs.image_shape[0], in_channels=inputs.image_shape[-1]).macs
  logging.info('Architecture %s: %d parameters (%.3f MB), %.2fM multiply-adds.', to_arch_str(genotype), num_params,
               num_params / 1e6, macs / 1e6)

  impl = config.get('parallel_impl', parallel.DEFAULT_IMPL)
  p_step = parallel.data_parallel(
      make_train_step(model, schedule, inputs.train_preprocess, cutout=config.data.get('cutout', 0),
                      auxiliary_weight=0.0),
      AXIS_NAME, impl=impl, in_axes=(0, 0, None), donate_argnums=(0,))
  p_eval = parallel.data_parallel(make_eval_step(model, inputs.eval_preprocess), AXIS_NAME, impl=impl)

  def batches(epoch: int, start: int) -> Iterator[Any]:
    return (parallel.shard(b, AXIS_NAME) for b in inputs.train_batches(epoch, start))

  def evaluate(epoch: int, step: int, r_state, state) -> dict[str, Any]:
    del epoch, state
    test = loop.evaluate_batches(p_eval, r_state, inputs.test_batches(batch_size), AXIS_NAME)
    return {'test_loss': test['loss'], 'test_accuracy': test['accuracy'], 'lr': float(schedule(step - 1))}

  def results(outcome: loop.Outcome) -> dict[str, Any]:
    return {'test_accuracy': outcome.record['test_accuracy'], 'test_loss': outcome.record['test_loss'],
            'params': num_params, 'macs': macs, 'arch': to_arch_str(genotype), 'dataset': inputs.name}

  task = loop.Task(state=state, step=lambda r_state, batch, epoch: p_step(r_state, batch, np.float32(0.0)),
                   batches=batches, steps_per_epoch=inputs.steps_per_epoch, evaluate=evaluate,
                   divergence_advice='Lower the learning_rate or change the seed.')
  return Retraining(task=task, results=results, close=inputs.close)
