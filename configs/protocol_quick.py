"""The whole protocol, quick and offline: Fashion-MNIST, 2 seeds, short selection and final runs (minutes on a CPU).

The stages of ``configs/protocol_cifar10.py`` on the data and networks of ``configs/search_quick.py`` and
``configs/retrain_quick.py``, cut down so that the whole protocol runs in minutes on a 2-core CPU (see the README
for the time measured): it shows the mechanics (stages, resume, summary), not a result.

    python -m darts_jax.cli.protocol --config configs/protocol_quick.py --workdir runs/protocol_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

retrain_quick = load_config_module('retrain_quick', __file__)
search_quick = load_config_module('search_quick', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.search = search_quick.get_config()
  config.search.num_seeds = 2
  config.search.num_epochs = 2
  config.search.data.subset = 2000
  config.search.diagnostics.hessian_iterations = 0
  # Selection and final runs: a 3-cell network of 4 channels, 3 epochs of batch 32 at a learning rate of 0.1 (the
  # paper's 0.025 is for 600 epochs; this schedule has ~90 steps).
  config.selection = retrain_quick.get_config()
  config.selection.evaluate_on = 'search_valid'
  config.selection.data.subset = 2000  # the search's images: 1,000 to train, 1,000 to score
  config.final = retrain_quick.get_config()
  config.final.data.subset = 2000  # trained on the 2,000 images, tested on the 10,000 test images
  for run in (config.selection, config.final):
    run.num_epochs = 3
    run.batch_size = 32
    run.learning_rate = 0.1
    run.model.init_channels = 4
    run.model.layers = 3
  config.repeats = 2
  config.compilation_cache_dir = '~/.cache/darts_jax/jax_cache'
  return config
