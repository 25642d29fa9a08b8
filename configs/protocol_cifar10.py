"""The paper's whole protocol on CIFAR-10 (Liu et al., 2019, Sec. 3.2): 4 searches, selection by 100-epoch
retraining on the search split, the winner trained 10 times for 600 epochs and tested.

"We run DARTS four times with different random seeds and pick the best cell based on its validation performance
obtained by training from scratch for a short period (100 epochs on CIFAR-10)"; the test error is the mean and
standard deviation over repeated final trainings (10 here). The four searches run as one program (vmap over seeds).

    python -m darts_jax.cli.protocol --config configs/protocol_cifar10.py --workdir runs/protocol_cifar10
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

retrain_cifar10 = load_config_module('retrain_cifar10', __file__)
search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.search = search_cifar10.get_config()
  config.search.num_seeds = 4  # seeds search.seed .. search.seed + 3
  config.selection = retrain_cifar10.get_config()  # the genotype and the seed of each run are set by the protocol
  config.selection.num_epochs = 100
  config.selection.evaluate_on = 'search_valid'  # the search split's halves: never the test set
  config.final = retrain_cifar10.get_config()  # 600 epochs; repeat r uses seed final.seed + r
  config.repeats = 10
  config.compilation_cache_dir = '~/.cache/darts_jax/jax_cache'  # '' disables the persistent compilation cache
  return config
