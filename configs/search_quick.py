"""A quick, offline DARTS search: Fashion-MNIST on a small supernet, about 3 minutes on a 2-core CPU.

It runs the whole pipeline (data, bilevel steps, checkpoints, artifacts) on data that needs no download
(Debian's ``dataset-fashion-mnist``) and the supernet reaches ~77% validation accuracy; the cell it finds is a
demonstration, not one to retrain for accuracy records. The optimizers are the paper's.

    python run_search.py --config configs/search_quick.py --workdir runs/quick

On a CPU most of the time is compilation (~100 s), which the persistent compilation cache saves on re-runs and
resumes. Hence the choices:

* ``first_order``: a second-order step is about twice the program and compiles about twice as long, which alone
  would take the run past 5 minutes; switch with ``--config.hypergradient=second_order_exact``.
* 3 cells of 4 initial channels (the fewest with both a normal and a reduction cell: reductions at cells 1 and 2)
  and images resized to 16x16 (divisible by 4 for the two reductions): ~0.3 s per step at batch 32.
* 4000 training images (2000 for the weights, 2000 for the alphas): 3 epochs of 62 steps.
"""
import ml_collections

from configs import search_cifar10


def get_config() -> ml_collections.ConfigDict:
  config = search_cifar10.get_config()
  config.num_epochs = 3
  config.batch_size = 32
  config.hypergradient = 'first_order'
  config.model.init_channels = 4
  config.model.layers = 3
  config.data.name = 'fashion_mnist'
  config.data.subset = 4000
  config.data.augment = False
  config.data.image_size = 16
  config.log_every_steps = 10
  config.checkpoint_every_minutes = 1.0
  return config
