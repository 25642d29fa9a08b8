"""Test accuracy of a retrained network's latest checkpoint, or of a pretrained checkpoint of the original code.

    python -m darts_jax.cli.evaluate --workdir runs/retrain_quick [--data_dir DIR]
    python -m darts_jax.cli.evaluate --pretrained cifar10_model.pt --genotype DARTS_V2 \
        --config configs/retrain_cifar10.py [--data_dir DIR]

With ``--workdir``, rebuilds the network from the workdir's ``config.json`` and ``genotype.json`` (written by
`darts_jax.tasks.retrain`), restores the latest checkpoint and prints one JSON line: ``test_accuracy``,
``test_loss``, ``num_test``, ``step``, ``epoch`` (epochs completed) and ``params``.

With ``--pretrained``, converts the original's PyTorch checkpoint (`darts_jax.convert`; needs ``pip install
'darts-jax[torch]'``) of the given genotype, its architecture read from the tensor shapes, and evaluates it as the
original's ``test.py`` / ``test_imagenet.py`` do: a CIFAR network on the test set of ``--config``'s dataset, an
ImageNet network on the validation images in ``--data_dir`` (`data.imagenet`); it prints ``test_accuracy`` (top-1),
``test_top5``, ``test_loss``, ``num_test``, ``params`` and the architecture.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import flax.struct
import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from darts_jax import convert, data
from darts_jax.cnn.networks import count_params
from darts_jax.cnn.genotype_formats import load_genotype
from darts_jax.cnn.train_step import make_eval_step
from darts_jax.data import imagenet, retrain_data
from darts_jax.spaces.cnn_retraining import restore_workdir
from darts_jax.training import cli, loop, parallel
from darts_jax.training.parallel import AXIS_NAME

PROG = 'darts-evaluate'


def _batch_size(config: ml_collections.ConfigDict) -> int:
  devices = jax.local_device_count()
  return devices * math.ceil(config.batch_size / devices)


def evaluate_workdir(workdir: str | os.PathLike[str], data_dir: str | None = None) -> dict[str, Any]:
  """Evaluates the latest checkpoint of the retrain run in `workdir` on its dataset's whole test set.

  Args:
    workdir: a `tasks.retrain.retrain` run directory of the CNN space.
    data_dir: where the dataset is, if not where the run found it (``config.data.dir``, else the defaults of
      `data.load_dataset`).

  Returns:
    ``{'test_accuracy', 'test_loss', 'num_test', 'step', 'epoch', 'params'}``, and ``test_top5`` (top-5 accuracy) for
    an ImageNet run (on the validation images).

  Raises:
    FileNotFoundError: when `workdir` has no ``config.json`` or no checkpoint, or the dataset is not found.
    ValueError: when `workdir` is not a retrain workdir or its files are damaged.
  """
  restored = restore_workdir(workdir)
  config = restored.config
  inputs = retrain_data.open_data(config, data_dir, train=False, axis_name=AXIS_NAME)
  model = restored.model.clone(axis_name=AXIS_NAME)
  p_eval = parallel.data_parallel(make_eval_step(model, inputs.eval_preprocess, top5=inputs.top5), AXIS_NAME,
                                  impl=config.get('parallel_impl', parallel.DEFAULT_IMPL))
  test = loop.evaluate_batches(p_eval, parallel.replicate(restored.state, AXIS_NAME),
                               inputs.test_batches(_batch_size(config)), AXIS_NAME)
  top5 = {'test_top5': test['top5']} if inputs.top5 else {}
  return {'test_accuracy': test['accuracy'], **top5, 'test_loss': test['loss'], 'num_test': inputs.num_test,
          'step': restored.step, 'epoch': restored.epoch, 'params': count_params(restored.state.params)}


class Weights(flax.struct.PyTreeNode):
  """The variables an evaluation reads."""
  params: Any
  batch_stats: Any


def evaluate_pretrained(path: str | os.PathLike[str], genotype: str, config: ml_collections.ConfigDict,
                        data_dir: str | None = None) -> dict[str, Any]:
  """Evaluates the original's PyTorch checkpoint at `path` of `genotype` on held-out data.

  The architecture (network, C, layers, classes, auxiliary head) is read from the tensor shapes
  (`convert.infer_architecture`). A ``NetworkCIFAR`` is tested on the test set of ``config.data`` (``data.name``,
  ``data.dir`` or `data_dir`, ``data.classes``, ``data.image_size``), normalised with the dataset's mean and std; a
  ``NetworkImageNet`` on the ImageNet validation images in `data_dir` (or ``config.data.dir``): an ImageFolder
  directory or tfds' prepared ``imagenet2012``, prepared as the original (`data.imagenet`; one process).
  ``config`` also gives ``batch_size`` and ``model.depthwise_impl``.

  Returns:
    ``{'test_accuracy' (top-1), 'test_top5', 'test_loss', 'num_test', 'params', 'network', 'C', 'layers',
    'num_classes', 'auxiliary'}``.

  Raises:
    FileNotFoundError: no checkpoint or data. ImportError: PyTorch is not installed.
    ValueError: the checkpoint does not fit the genotype or the data's classes or channels.
  """
  state_dict = convert.load_torch_checkpoint(path)
  arch = convert.infer_architecture(state_dict)
  genotype = load_genotype(genotype)
  batch_size = _batch_size(config)
  if arch['network'] == 'imagenet':
    source = data_dir or config.data.dir
    if not source:
      raise ValueError(f'{path} holds a NetworkImageNet: pass the ImageNet validation images with --data_dir (an '
                       'ImageFolder directory such as val/, or a tfds data directory with imagenet2012 prepared).')
    val = imagenet.validation_source(source)
    num_test, num_classes = len(val), len(val.class_names)
    batches, channels, size = imagenet.eval_batches(val, batch_size), 3, 0
    mean, std, name = imagenet.MEAN, imagenet.STD, 'ImageNet'
  else:
    ds = retrain_data.load_data(config, data_dir)
    num_test, num_classes, channels = len(ds.test_images), ds.num_classes, ds.test_images.shape[-1]
    size = config.data.image_size
    batches = data.eval_batches(ds.test_images, ds.test_labels, batch_size, jax.process_index(), jax.process_count())
    mean, std, name = ds.mean, ds.std, ds.name
  if num_classes != arch['num_classes'] or channels != arch['in_channels']:
    raise ValueError(f'{path} classifies {arch["in_channels"]}-channel images into {arch["num_classes"]} classes; '
                     f'{name} has {channels}-channel images of {num_classes} classes (set --config.data.name and '
                     '--config.data.classes to the data it was trained on).')
  variables = convert.from_torch_state_dict(state_dict, genotype=genotype)
  shape = {k: arch[k] for k in ('network', 'C', 'layers', 'num_classes', 'auxiliary')}
  model = convert.network_for(genotype, **shape, depthwise_impl=config.model.depthwise_impl, axis_name=AXIS_NAME)
  preprocess = data.make_preprocess(mean, std, image_size=size, axis_name=AXIS_NAME)
  p_eval = parallel.data_parallel(make_eval_step(model, preprocess, top5=True), AXIS_NAME,
                                  impl=config.get('parallel_impl', parallel.DEFAULT_IMPL))
  weights = parallel.replicate(Weights(variables['params'], variables['batch_stats']), AXIS_NAME)
  test = loop.evaluate_batches(p_eval, weights, batches, AXIS_NAME)
  return {'test_accuracy': test['accuracy'], 'test_top5': test['top5'], 'test_loss': test['loss'],
          'num_test': num_test, 'params': count_params(variables['params']), **shape}


def _evaluate(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if bool(f.workdir) == bool(f.pretrained):
    raise app.UsageError('pass either --workdir DIR (a retrain run) or --pretrained PATH.pt (with --genotype and '
                         '--config)')
  if f.pretrained and f.config is None:
    raise app.UsageError('--pretrained needs --config FILE for the data to test on, e.g. configs/retrain_cifar10.py')
  cli.start()
  if f.workdir:
    results = cli.run(PROG, lambda: evaluate_workdir(f.workdir, f.data_dir))
  else:
    results = cli.run(PROG, lambda: evaluate_pretrained(f.pretrained, f.genotype, f.config, f.data_dir))
  print(json.dumps(results))


def main() -> None:
  """The command line (the ``darts-evaluate`` console script)."""
  # Defined here, not at import: importing the module (e.g. from run_retrain.py's process) must not claim flags.
  flags.DEFINE_string('workdir', None, 'Retrain run directory (written by run_retrain.py).')
  flags.DEFINE_string('pretrained', None, "A PyTorch checkpoint of the original code (e.g. cifar10_model.pt).")
  flags.DEFINE_string('genotype', 'DARTS_V2', 'With --pretrained: its genotype (a name, file, or text in any format '
                                              'python -m darts_jax.cli.genotypes reads).')
  config_flags.DEFINE_config_file('config', None, 'With --pretrained: the data to test on (data.name, data.dir, '
                                                  'data.classes, batch_size), e.g. configs/retrain_cifar10.py.')
  flags.DEFINE_string('data_dir', None, "Dataset directory, if not the config's data.dir.")
  app.run(_evaluate)


if __name__ == '__main__':
  main()
