"""A quick, offline recurrent search: the PTB recipe on a small supernet over the King James Bible, minutes on a CPU.

    python run_search.py --config configs/search_ptb_quick.py --workdir runs/ptb_quick

The text is Debian's ``bible-kjv`` (``apt-get install bible-kjv``), tokenised like PTB with a 10,000-word vocabulary
(`darts_jax.data.text`); it is written to ``~/.cache/darts_jax/kjv`` on first use. Changes from the paper's recipe:
64 hidden units, batch 32, 50 steps per epoch (of ~660), 3 epochs, first order (a second-order step compiles about
twice as long), and the alphas' learning rate 3e-2: at 3e-3 over 150 steps Adam moves no alpha by more than 0.45, so
the genotype would be the initialisation's. On a CPU the 8-node search cell's many small kernels per time step, not
its arithmetic, set the step time (docs/results.md).

Lower dropouts (0.25 output, 0.1 h, 0.25 x, 0.1 input; the paper's 0.75/0.25/0.75/0.2 regularise 300 units over 50
epochs): with the paper's dropouts the 64-unit supernet does not learn in 150 steps, in this code and in a PyTorch
transcription of the original alike (training NLL 9.3 → 9.0–9.6, i.e. uniform; the same clipped lr 20 steps move
a 6.6× smaller model's weights 2.6× further per coordinate and the heavy dropout leaves little signal). With these
dropouts the training NLL falls (9.2 → 7.4 over 150 steps in the transcription). lr 20 stays: lr 5 lowers the
training NLL faster but gives a worse validation perplexity (1054 against 789 on the first 14,000 validation
tokens after 150 steps of the transcription).
"""
import ml_collections

from darts_jax.training.config_utils import load_config_module

search_ptb = load_config_module('search_ptb', __file__)


def get_config() -> ml_collections.ConfigDict:
  config = search_ptb.get_config()
  config.num_epochs = 3
  config.batch_size = 32
  config.max_steps_per_epoch = 50
  config.hypergradient = 'first_order'
  config.arch_learning_rate = 3e-2
  config.model.emsize = 64
  config.model.nhid = 64
  config.model.dropout = 0.25
  config.model.dropouth = 0.1
  config.model.dropoutx = 0.25
  config.model.dropouti = 0.1
  config.data.name = 'kjv'
  config.log_every_steps = 10
  config.checkpoint_every_minutes = 1.0
  return config
