"""The whole protocol, quick and offline: Fashion-MNIST, 2 seeds, short selection and final runs (minutes on a CPU).

The stages of ``configs/protocol_cifar10.py`` on the data and networks of ``configs/search_quick.py`` and
``configs/retrain_quick.py``, cut down so that the whole protocol runs in minutes on a 2-core CPU (see the README
for the time measured): it shows the mechanics (stages, resume, summary), not a result.

    python -m darts_jax.protocol --config configs/protocol_quick.py --workdir runs/protocol_quick
"""
import ml_collections

from configs import retrain_quick, search_quick


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.search = search_quick.get_config()
  config.search.num_seeds = 2
  config.search.num_epochs = 2
  config.search.data.subset = 2000
  config.search.diagnostics.hessian_iterations = 0
  config.selection = retrain_quick.get_config()
  config.selection.num_epochs = 1
  config.selection.evaluate_on = 'search_valid'
  config.selection.data.subset = 2000  # the search's split: 1,000 images to train, 1,000 to score
  config.selection.model.init_channels = 4
  config.selection.model.layers = 3
  config.final = retrain_quick.get_config()
  config.final.num_epochs = 1
  config.final.data.subset = 2000
  config.final.model.init_channels = 4
  config.final.model.layers = 3
  config.repeats = 2
  config.compilation_cache_dir = '~/.cache/darts_jax/jax_cache'
  return config
