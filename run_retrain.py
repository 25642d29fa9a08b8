"""Retraining a genotype from scratch and evaluating it on the test set.

    python run_retrain.py --config configs/retrain_quick.py --workdir runs/retrain_quick
    python run_retrain.py --config configs/retrain_cifar10.py --workdir runs/retrain_cifar10 \
        --config.genotype=runs/cifar10          # a search workdir; or DARTS_V2, a genotype.json, JSON, repr text

Running the same command on an existing workdir resumes from its latest checkpoint. See `darts_jax.retrain` for
what lands in the workdir and `python -m darts_jax.evaluate` to evaluate a trained checkpoint again.
"""
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from darts_jax import config_utils, parallel, retrain
from darts_jax.loop import NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Retrain configuration file, e.g. configs/retrain_quick.py.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory; an existing one is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  parallel.maybe_initialize_distributed()
  config = _CONFIG.value
  if config.compilation_cache_dir:
    # Compiled steps are reused across runs and resumes with the same shapes: restarts skip most compilation.
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.compilation_cache_dir))
  try:
    retrain.retrain(config, _WORKDIR.value)
  # FileNotFoundError covers a missing dataset (data.DatasetNotFoundError) and a directory without genotype.json.
  except (FileNotFoundError, NonFiniteLossError, ValueError) as e:
    logging.debug('Traceback:', exc_info=True)
    sys.exit(f'run_retrain.py: error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_utils.parse_flags)
