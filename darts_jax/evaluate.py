"""Evaluating a retrained network's latest checkpoint on the test set.

    python -m darts_jax.evaluate --workdir runs/retrain_quick [--data_dir DIR]

Rebuilds the network from the workdir's ``config.json`` and ``genotype.json`` (written by `darts_jax.tasks.retrain`),
restores the latest checkpoint and prints one JSON line: ``test_accuracy``, ``test_loss``, ``num_test``, ``step``,
``epoch`` (epochs completed) and ``params``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import app, flags

from darts_jax import data
from darts_jax.cnn.networks import count_params
from darts_jax.tasks import retrain
from darts_jax.training import cli, loop, parallel
from darts_jax.training.checkpointing import Checkpointer
from darts_jax.training.parallel import AXIS_NAME


def evaluate_workdir(workdir: str | os.PathLike[str], data_dir: str | None = None) -> dict[str, Any]:
  """Evaluates the latest checkpoint of the retrain run in `workdir` on its dataset's whole test set.

  Args:
    workdir: a `retrain.retrain` run directory.
    data_dir: where the dataset is, if not where the run found it (``config.data.dir``, else the defaults of
      `data.load_dataset`).

  Returns:
    ``{'test_accuracy', 'test_loss', 'num_test', 'step', 'epoch', 'params'}``.

  Raises:
    FileNotFoundError: when `workdir` has no ``config.json`` or no checkpoint, or the dataset is not found.
    ValueError: when `workdir` is not a retrain workdir or its files are damaged.
  """
  workdir = Path(workdir)
  config_path = workdir / loop.CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f'{config_path} does not exist: {workdir} is not a retrain workdir (run_retrain.py '
                            'writes config.json, genotype.json and checkpoints/ there).')
  try:
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  except ValueError as e:
    raise ValueError(f'{config_path} is not valid JSON ({e}).') from None
  if 'genotype' not in config or 'auxiliary' not in config.get('model', {}):
    raise ValueError(f'{workdir} is not a retrain workdir: its config.json has no genotype (a search workdir? '
                     'retrain its genotype with run_retrain.py --config.genotype=WORKDIR).')
  genotype = retrain.load_genotype(str(workdir))
  ds = data.load_dataset(config.data.name, data_dir or config.data.dir or None)
  model = retrain.create_model(config, genotype, ds.num_classes)
  tx, _ = retrain.create_optimizer(config, steps_per_epoch=1)  # only the optimizer state's structure matters

  # The restore target needs shapes only, except for the PRNG key, whose implementation orbax reads from it.
  rng = jax.random.key(config.seed)
  size = config.data.image_size
  image_shape = (size, size, ds.test_images.shape[-1]) if size else ds.test_images.shape[1:]
  target = jax.eval_shape(lambda: retrain.create_train_state(rng, model, image_shape, tx))
  with Checkpointer(workdir / loop.CHECKPOINT_DIR, read_only=True) as checkpointer:
    restored = checkpointer.restore_latest(target.replace(rng=rng))
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir / "checkpoints"}: the retraining has not saved one yet.')
  step, state, meta = restored

  devices = jax.local_device_count()
  batch_size = devices * math.ceil(config.batch_size / devices)
  preprocess = data.make_preprocess(ds.mean, ds.std, image_size=size, axis_name=AXIS_NAME)
  p_eval = jax.pmap(retrain.make_eval_step(model, preprocess), axis_name=AXIS_NAME)
  test = loop.evaluate(p_eval, parallel.replicate(state, AXIS_NAME), ds.test_images, ds.test_labels,
                       batch_size, AXIS_NAME)
  return {'test_accuracy': test['accuracy'], 'test_loss': test['loss'], 'num_test': len(ds.test_images),
          'step': step, 'epoch': meta['epoch'], 'params': count_params(state.params)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.start()
  results = cli.run('darts_jax.evaluate', lambda: evaluate_workdir(flags.FLAGS.workdir, flags.FLAGS.data_dir))
  print(json.dumps(results))


if __name__ == '__main__':
  # Defined here, not at import: importing the module (e.g. from run_retrain.py's process) must not claim flags.
  flags.DEFINE_string('workdir', None, 'Retrain run directory (written by run_retrain.py).')
  flags.DEFINE_string('data_dir', None, "Dataset directory, if not the run's config.data.dir.")
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
