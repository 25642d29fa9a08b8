"""A quick, offline DARTS search whose alphas decide: Fashion-MNIST on a small supernet, a few minutes on a 2-core CPU.

It runs the whole pipeline (data, bilevel steps, diagnostics, checkpoints, artifacts) on data that needs no download
(Debian's ``dataset-fashion-mnist``); the supernet reaches ~80% validation accuracy and the alphas move clearly away
from uniform (mean entropy below 1.85 nats in both cells, from 2.079). The cell it finds is a demonstration, not one
to retrain for accuracy records.

    python run_search.py --config configs/search_quick.py --workdir runs/quick

On a CPU much of the time is compilation, which the persistent compilation cache saves on re-runs and resumes.
Hence the choices:

* ``first_order``: a second-order step is about twice the program and compiles about twice as long, which alone
  would take the run past 5 minutes; switch with ``--config.hypergradient=exact``.
* 3 cells of 4 initial channels (the fewest with both a normal and a reduction cell: reductions at cells 1 and 2)
  and images resized to 16x16 (divisible by 4 for the two reductions): ~0.3 s per step at batch 32.
* 4000 training images (2000 for the weights, 2000 for the alphas): 3 epochs of 62 steps.
* The architecture optimizer differs from the paper's (Adam at 3e-4 with weight decay 1e-3): Adam at 0.1 without
  weight decay. The paper's search takes ~19,500 architecture steps (50 epochs of 391), this one 186; Adam moves an
  alpha by at most its learning rate per step, so at 3e-4 every softmax weight stays within 0.122-0.129 (uniform:
  0.125) and the genotype is decided by the initialisation noise. The weight decay goes because under Adam it holds
  the alphas where the decay balances the gradient, whatever the learning rate: with 1e-3 the reduction cell's
  entropy stalls at 1.85 nats.
* The Hessian eigenvalue by central differences of gradients (``hessian_method='fd'``) on 1 validation batch: the
  exact forward-over-reverse program takes minutes to compile on a CPU, the difference only the gradient's compile.
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_cifar10 = load_config_module('search_cifar10', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.num_epochs = 3
  config.batch_size = 32
  config.hypergradient = 'first_order'
  config.arch_learning_rate = 0.1
  config.arch_weight_decay = 0.0
  config.model.init_channels = 4
  config.model.layers = 3
  config.data.name = 'fashion_mnist'
  config.data.subset = 4000
  config.data.augment = False
  config.data.image_size = 16
  config.diagnostics.hessian_batches = 1
  config.diagnostics.hessian_iterations = 8
  config.diagnostics.hessian_method = 'fd'
  config.cost.eval_init_channels = 8  # configs/retrain_quick.py's network
  config.cost.eval_layers = 5
  config.log_every_steps = 10
  config.checkpoint_every_minutes = 1.0
  return config
