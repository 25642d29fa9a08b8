"""Retraining a genotype from scratch and evaluating it on the test set.

    python run_retrain.py --config configs/retrain_quick.py --workdir runs/retrain_quick
    python run_retrain.py --config configs/retrain_cifar10.py --workdir runs/retrain_cifar10 \
        --config.genotype=runs/cifar10          # a search workdir; or DARTS_V2, a genotype.json, JSON, repr text

Running the same command on an existing workdir resumes from its latest checkpoint; SIGTERM or SIGINT stop it after
saving one (exit status 75). See `darts_jax.tasks.retrain` for what lands in the workdir and
`python -m darts_jax.evaluate` to evaluate a trained checkpoint again.
"""
from absl import app, flags
from ml_collections import config_flags

from darts_jax.tasks import retrain
from darts_jax.training import cli, config_utils

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Retrain configuration file, e.g. configs/retrain_quick.py.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory; an existing one is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.start(_CONFIG.value)
  cli.run('run_retrain.py', lambda: retrain.retrain(_CONFIG.value, _WORKDIR.value))


if __name__ == '__main__':
  app.run(main, flags_parser=config_utils.parse_flags)
