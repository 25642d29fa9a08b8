"""Training a genotype from scratch and evaluating it, for every search space: the `retrain` task.

`retrain(config, workdir)` finds the space of ``config.space`` (`darts_jax.spaces.get_space`; ``'cnn'`` when
absent), loads ``config.genotype`` through it (a known name such as ``DARTS_V2``, a search workdir, a
``genotype.json`` or the genotype as text) and trains the space's network of that genotype on the loop
(`training.loop.train`). The space gives the model, the data, the steps, the end-of-epoch evaluation and its final
measures (`SearchSpace.retraining`): the CNN space's test accuracy (`darts_jax.spaces.cnn_retraining`), the recurrent
space's perplexity after NT-ASGD (`darts_jax.spaces.rnn_retraining`).

It writes to `workdir`:

* ``config.json``, ``genotype.json`` (the genotype trained) and the space's cell diagrams (``normal.png`` and
  ``reduce.png``, ``recurrent.png``, with their ``.dot``);
* ``metrics.jsonl`` and ``tensorboard/``: the space's interval and epoch records; ``curves.png``;
* ``checkpoints/``: the space's state and the position in the data after every epoch and every
  ``checkpoint_every_minutes``;
* at the end ``results.json``: the space's measures (e.g. ``test_accuracy``, ``params``, ``dataset``) and
  ``epochs``, ``steps``, ``wall_time_s`` (over all resumes) and ``genotype``.

Running `retrain` again on the same workdir resumes from the latest checkpoint (refused if the configuration or the
genotype changed), and SIGTERM/SIGINT stop it after a checkpoint of the current step.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

from darts_jax import spaces
from darts_jax.spaces.base import SearchSpace
from darts_jax.training import curves, loop, reporting

GENOTYPE_FILE = 'genotype.json'
RESULTS_FILE = 'results.json'


def _check_same_genotype(space: SearchSpace, workdir: Path, genotype: Any) -> None:
  """Refuses a workdir of another genotype's run: its checkpoints might even restore into the new network."""
  path = workdir / GENOTYPE_FILE
  if path.is_file() and space.load_genotype(str(path)) != genotype:
    raise ValueError(f'{workdir} holds a retraining of another genotype ({path}); resume it with that genotype or '
                     'use a new workdir.')


def retrain(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """Trains (or resumes training) ``config.genotype`` from scratch in `workdir` (see the module docstring).

  Args:
    config: a retrain config (``configs/retrain_cifar10.py``, ``configs/retrain_quick.py``,
      ``configs/retrain_ptb.py``).
    workdir: the run directory; an existing one with checkpoints is resumed.

  Returns:
    The results (the content of ``results.json``).

  Raises:
    ValueError: for an invalid config or genotype (e.g. a batch size not divisible by the device count), or one
      that differs from the workdir's (`loop.ConfigMismatchError`).
    FileNotFoundError: when the genotype's directory has no genotype.json; `data.DatasetNotFoundError` when the
      dataset is not found (the message says how to get it).
    NotADirectoryError: `workdir` is a file.
    loop.NonFiniteLossError: when training diverges; the checkpoints hold the last good state.
    loop.Preempted: a signal stopped the training after a checkpoint.
  """
  space = spaces.get_space(config)
  workdir = loop.prepare_workdir(workdir, config, loop.RESUMABLE_KEYS | space.retrain_resumable_keys)
  space.check_retrain_config()
  genotype = space.load_genotype(config.genotype)
  _check_same_genotype(space, workdir, genotype)
  genotype_json = space.genotype_to_json(genotype)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_json(workdir / GENOTYPE_FILE, genotype_json)
    space.plot_genotype(genotype, f'{workdir}{os.sep}')

  retraining = space.retraining(workdir, genotype)

  def after_epoch(epoch: int, step: int, state: Any, record: dict[str, Any]) -> None:
    retraining.task.after_epoch(epoch, step, state, record)
    curves.plot_curves(str(workdir / reporting.METRICS_FILE), str(workdir / 'curves.png'))

  try:
    outcome = loop.train(dataclasses.replace(retraining.task, after_epoch=after_epoch), config, workdir)
  finally:
    retraining.close()
  results = {**retraining.results(outcome), 'epochs': config.num_epochs, 'steps': outcome.step,
             'wall_time_s': outcome.wall_time_s, 'genotype': genotype_json}
  if jax.process_index() == 0:
    reporting.write_json(workdir / RESULTS_FILE, results)
    logging.info('Results of %d epochs in %s.', config.num_epochs, workdir / RESULTS_FILE)
  return results
