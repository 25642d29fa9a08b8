"""Retraining a genotype from scratch and evaluating it: CNN (test accuracy) or, with ``config.space = 'rnn'``,
recurrent (perplexity).

    darts-retrain --config retrain_quick --workdir runs/retrain_quick
    darts-retrain --config retrain_cifar10 --workdir runs/retrain_cifar10 --config.genotype=runs/cifar10
    darts-retrain --config retrain_ptb --workdir runs/ptb --config.genotype=DARTS_V2

``--config.genotype`` is a search workdir, a known name (DARTS_V2), a genotype.json, JSON or repr text. ``--config``
takes a packaged config by name or a config file's path; ``python -m darts_jax.cli.retrain`` and
``python run_retrain.py`` are the same command. Running it on an existing workdir resumes from its latest checkpoint;
SIGTERM or SIGINT stop it after saving one (exit status 75). See `darts_jax.tasks.retrain` (and the spaces'
`darts_jax.spaces.cnn_retraining`, `darts_jax.spaces.rnn_retraining`) for what lands in the workdir and
``python -m darts_jax.cli.evaluate`` to evaluate a trained CNN checkpoint again.
"""
from typing import Any

import ml_collections

from darts_jax.tasks import retrain
from darts_jax.training import cli


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
  return retrain.retrain(config, workdir)


def main(prog: str = 'darts-retrain') -> None:
  """The command line (the ``darts-retrain`` console script); `prog` names the command in its messages."""
  cli.main(prog, run, example_config='retrain_quick')


if __name__ == '__main__':
  main('python -m darts_jax.cli.retrain')
