"""DARTS on NAS-Bench-201 with the benchmark paper's settings (Dong & Yang, ICLR 2020, Sec. 5 and its DARTS scripts).

The supernet is the benchmark's network at C=16, N=5 (3 stages of 5 cells, residual reductions), its cells' BN
without affine parameters; CIFAR-10's training set split in halves (weights / alphas), batch 64, 50 epochs; weights by
SGD (momentum 0.9, weight decay 5e-4, learning rate cosine from 0.025 to 0.001, gradients clipped to norm 5), alphas
by Adam (3e-4, betas (0.5, 0.999), weight decay 1e-3); first-order DARTS (the benchmark's DARTS-V1; set
``hypergradient='exact'`` for DARTS-V2). With the benchmark's file the epoch records hold the derived cells' benchmark
accuracies:

    darts-search --config search_nb201 --workdir runs/nb201 --benchmark PATH/NAS-Bench-201-v1_1-096897.pth

The benchmark paper reports DARTS collapsing here to all-skip cells (54.30% CIFAR-10 test accuracy).
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  del config.cost, config.model, config.arch_warmup_epochs  # the DARTS space's keys
  config.space = 'nb201'
  config.num_epochs = 50
  config.batch_size = 64
  config.hypergradient = 'first_order'
  config.learning_rate = 0.025
  config.learning_rate_min = 0.001
  config.weight_decay = 5e-4
  config.arch_learning_rate = 3e-4
  config.arch_weight_decay = 1e-3
  config.model = ml_collections.ConfigDict()
  config.model.init_channels = 16
  config.model.cells = 5  # N: cells per stage
  config.model.affine = False  # the cells' BN without scale and shift (conv with bias), as the benchmark's search
  config.model.partial_channels = 1  # K > 1: PC-DARTS's partial channels (1/K of each edge's through the ops)
  config.model.edge_normalization = False  # PC-DARTS's softmax-weighted edges into every node (beta beside the alphas)
  config.benchmark = ml_collections.ConfigDict()
  config.benchmark.path = ''  # the benchmark's file (NAS-Bench-201 .pth, NATS-Bench tss); '' = no lookup
  config.benchmark.hp = '200'  # the records after 200 (or 12) training epochs
  return config
