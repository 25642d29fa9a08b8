"""A quick, offline recurrent retraining: DARTS_V2 small on the King James Bible, a few minutes on a CPU.

    python run_retrain.py --config configs/retrain_ptb_quick.py --workdir runs/retrain_ptb_quick

The text is Debian's ``bible-kjv`` (``apt-get install bible-kjv``), tokenised like PTB (`darts_jax.data.text`).
Changes from the paper's recipe: 64 units, batch 32, 4 epochs of 80 steps, and ``nonmono = 1`` so that NT-ASGD
can switch to averaging within the run; the test evaluation reads the test split with batch 1, as the original.
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

retrain_ptb = load_config_module('retrain_ptb', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = retrain_ptb.get_config()
  config.num_epochs = 4
  config.batch_size = 32
  config.max_steps_per_epoch = 80
  config.nonmono = 1
  config.model.emsize = 64
  config.model.nhid = 64
  config.data.name = 'kjv'
  config.log_every_steps = 20
  config.checkpoint_every_minutes = 1.0
  return config
