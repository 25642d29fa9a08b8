"""DARTS's collapse on RobustDARTS's S2 = {skip_connect, sep_conv_3x3}, offline: Fashion-MNIST, ~15 minutes on a
2-core CPU (configs/search_robust_darts_quick.py's run, longer and deeper).

Plain first-order DARTS for 30 epochs on a 5-cell supernet of 8 channels: the records and ``dynamics.png`` show the
skip connections taking over the derived normal cell (``skip_connect_normal``) and the Hessian's largest eigenvalue
(``hessian_eigenvalue``) as the search goes on; ``--config.early_stopping.rule=darts_es`` stops it by DARTS-ES.

    python run_search.py --config configs/search_robust_darts_collapse.py --workdir runs/s2_collapse

The settings against the quick search's: 5 cells (the collapse grows with depth: skips ease the deeper supernet's
optimisation), 8 channels, and Adam at 0.01 on the alphas instead of 0.1, so that they move over the 30 epochs rather
than saturating in the first two; the eigenvalue on 2 fixed validation batches.
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_robust_darts_quick = load_config_module('search_robust_darts_quick', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_robust_darts_quick.get_config()
  config.model.search_space = 's2'
  config.model.layers = 5
  config.model.init_channels = 8
  config.num_epochs = 30
  config.arch_learning_rate = 0.01
  config.diagnostics.hessian_batches = 2
  config.early_stopping.start_epoch = 10
  config.checkpoint_every_minutes = 0.0
  return config
