"""A quick, offline recurrent search: the PTB recipe on a small supernet over the King James Bible, minutes on a CPU.

    python run_search.py --config configs/search_ptb_quick.py --workdir runs/ptb_quick

The text is Debian's ``bible-kjv`` (``apt-get install bible-kjv``), tokenised like PTB with a 10,000-word vocabulary
(`darts_jax.data.text`); it is written to ``~/.cache/darts_jax/kjv`` on first use. Changes from the paper's recipe:
64 hidden units, batch 32, 50 steps per epoch (of ~660), 3 epochs, first order (a second-order step compiles about
twice as long), and the alphas' learning rate 3e-2: at 3e-3 over 150 steps Adam moves no alpha by more than 0.45, so
the genotype would be the initialisation's. On a CPU the 8-node search cell's many small kernels per time step, not
its arithmetic, set the step time (docs/benchmarks.md).
"""
import ml_collections

from configs import search_ptb


def get_config() -> ml_collections.ConfigDict:
  config = search_ptb.get_config()
  config.num_epochs = 3
  config.batch_size = 32
  config.max_steps_per_epoch = 50
  config.hypergradient = 'first_order'
  config.arch_learning_rate = 3e-2
  config.model.emsize = 64
  config.model.nhid = 64
  config.data.name = 'kjv'
  config.log_every_steps = 10
  config.checkpoint_every_minutes = 1.0
  return config
