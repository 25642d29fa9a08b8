"""P-DARTS (Chen et al., ICCV 2019) on CIFAR-10: three stages of 5, 11 and 17 cells on 8, 5 and 3 ops per edge.

The released code's CIFAR-10 command: 25 epochs per stage, the first 10 training the weights only; dropout on the
skip connections 0.1, 0.4, 0.7 per stage (decayed per epoch, `darts_jax.dynamics.relaxations.skip_dropout_schedule`);
batch 96; SGD at 0.025 cosine-annealed to 0; Adam at 6e-4 (betas 0.5, 0.999, decay 1e-3) on the alphas, first
order; at most 2 skip connections in the final normal cell. Run with ``darts-pdarts`` (``python -m darts_jax.cli.pdarts``):

    darts-pdarts --config configs/search_pdarts.py --workdir runs/pdarts

`configs/search_pdarts_quick.py` is a quick one on Fashion-MNIST.

What differs from the code: the code also clips the architecture gradient (norm 5); the stages' pruning and final
rule are the code's (`darts_jax.tasks.pdarts`).
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def add_stages(config: ml_collections.ConfigDict, layers: list[int], warmup_epochs: int
               ) -> ml_collections.ConfigDict:
  """`config` with P-DARTS's stages of `layers` cells (ops per edge 8, 5, 3; skip dropout 0.1, 0.4, 0.7)."""
  config.pdarts = ml_collections.ConfigDict()
  config.pdarts.layers = layers  # cells of each stage's supernet
  config.pdarts.num_ops = [8, 5, 3]  # ops per edge in each stage (the first: all of the space)
  config.pdarts.add_width = [0, 0, 0]  # channels added to model.init_channels per stage
  config.pdarts.skip_dropout = [0.1, 0.4, 0.7]  # dropout on the skip connections per stage (CIFAR-10's)
  config.pdarts.arch_warmup_epochs = warmup_epochs  # epochs of each stage before the alphas move
  config.pdarts.max_skips = 2  # skip connections allowed in the final normal cell
  return config


def get_config() -> ml_collections.ConfigDict:
  """The paper's settings."""
  config = search_cifar10.get_config()
  config.num_epochs = 25
  config.batch_size = 96
  config.hypergradient = 'first_order'
  config.learning_rate_min = 0.0
  config.arch_learning_rate = 6e-4
  config.diagnostics.hessian_iterations = 0
  return add_stages(config, [5, 11, 17], warmup_epochs=10)
