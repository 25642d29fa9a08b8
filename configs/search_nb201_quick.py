"""A quick, offline DARTS search on NAS-Bench-201's space: Fashion-MNIST on a small supernet, minutes on a 2-core CPU.

The benchmark's network at C=4, one cell per stage (N=1), 16×16 images, 4000 training images (2000 for the weights,
2000 for the alphas), first-order DARTS, the alphas by Adam at 0.1 without weight decay (as ``search_quick``: at the
paper's 3e-4 a few hundred steps leave them at their initialisation). Its records show what the space is for: the
skip connections of the derived cell (``skip_connect_normal``) and the Hessian eigenvalue per epoch, ``benchmark.png``
beside the supernet's accuracy; with ``--benchmark PATH`` also the derived cells' benchmark accuracies.

    darts-search --config search_nb201_quick --workdir runs/nb201_quick
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_nb201 = load_config_module('search_nb201', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_nb201.get_config()
  config.num_epochs = 4
  config.batch_size = 32
  config.arch_learning_rate = 0.1
  config.arch_weight_decay = 0.0
  config.model.init_channels = 4
  config.model.cells = 1
  config.data.name = 'fashion_mnist'
  config.data.subset = 4000
  config.data.augment = False
  config.data.image_size = 16
  config.diagnostics.hessian_batches = 1
  config.diagnostics.hessian_iterations = 8
  config.diagnostics.hessian_method = 'fd'
  config.log_every_steps = 10
  config.checkpoint_every_minutes = 1.0
  return config
