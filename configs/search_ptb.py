"""The recurrent DARTS search on Penn Treebank, as the original ``rnn/train_search.py`` (paper Sec. 3.1, App. A.1.2).

    python run_search.py --config configs/search_ptb.py --workdir runs/ptb --config.data.dir=DIR

DIR holds Mikolov's PTB (``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``); ``--config.data.name=wikitext2``
reads WikiText-2 (``wiki.*.tokens``). The alphas are trained on the validation split, as the original.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.space = 'rnn'  # the recurrent search space (run_search.py dispatches on it)
  config.seed = 2
  config.num_epochs = 50
  config.batch_size = 256  # global, over all devices
  config.eval_batch_size = 10
  config.test_batch_size = 1
  config.bptt = 35  # with probability 0.05 half of it; the learning rate scales with the length drawn
  config.bptt_jitter = 0.0  # > 0: lengths ~ N(bptt, jitter) (the retraining's 5); the search uses int(bptt)
  config.max_seq_len_delta = 20  # with jitter, lengths are capped at bptt + max_seq_len_delta
  config.max_steps_per_epoch = 0  # > 0: cap the steps of an epoch (quick runs)
  # first_order | fd (the original's --unrolled) | exact | unrolled | implicit_cg | implicit_neumann
  config.hypergradient = 'fd'
  config.fd_epsilon = 0.01
  config.second_order_impl = 'auto'  # fd/exact: chained | direct gradient passes (auto: chained on CPU)
  config.implicit_iterations = 10  # implicit_cg / implicit_neumann: CG iterations or Neumann terms
  config.implicit_damping = 0.0

  # Weights: SGD without momentum, clipped.
  config.learning_rate = 20.0
  config.weight_decay = 5e-7
  config.grad_clip = 0.25
  config.tar = 1e-3  # temporal activation regularisation (the original's beta)
  config.ar = 0.0  # activation regularisation (alpha)
  # Alphas: Adam(betas 0.9, 0.999).
  config.arch_learning_rate = 3e-3
  config.arch_weight_decay = 1e-3

  config.model = ml_collections.ConfigDict()
  config.model.emsize = 300
  config.model.nhid = 300
  config.model.steps = 8
  config.model.dropout = 0.75  # locked dropout on the output
  config.model.dropouth = 0.25  # on h_{t-1} and the states the cell multiplies
  config.model.dropoutx = 0.75  # on the cell's input x_t
  config.model.dropouti = 0.2  # locked dropout on the embedded input
  config.model.dropoute = 0.0  # embedding dropout (whole words)
  config.model.partial_channels = 1  # K > 1: PC-DARTS's partial channels (1/K of a predecessor's units through the ops)
  config.model.edge_normalization = False  # PC-DARTS's softmax-weighted predecessors of every node (beta beside alphas)

  # How the alphas become the mixing weights of each node's ops (darts_jax.dynamics.relaxations); softmax at 1 is DARTS.
  config.relaxation = ml_collections.ConfigDict()
  config.relaxation.name = 'softmax'  # softmax | gumbel_softmax | gaussian_softmax | sigmoid | dirichlet | uniform_path
  config.relaxation.hard = False  # one-hot argmax forward, straight-through gradient (GDAS); not for sigmoid
  config.relaxation.temperature = 1.0  # tau at the first epoch (softmax, gumbel_softmax, gaussian_softmax, sigmoid)
  config.relaxation.final_temperature = 1.0  # tau at the last epoch, reached by temperature_schedule
  config.relaxation.temperature_schedule = 'constant'  # constant | linear | exponential | cosine (per epoch)
  config.relaxation.noise_scale = 0.0  # gaussian_softmax: std of the Gaussian noise added to the alphas
  config.relaxation.concentration = 'elu'  # dirichlet: elu (elu(alpha) + 1, DrNAS) | softplus
  # Architecture regularisers added to the validation loss (darts_jax.dynamics.regularizers); L2 is
  # arch_weight_decay. Weights: 0 = off.
  config.regularizer = ml_collections.ConfigDict()
  config.regularizer.entropy = 0.0  # mean entropy of the weights: > 0 pushes nodes to commit, < 0 keeps them spread
  config.regularizer.zero_one = 0.0  # FairDARTS's zero-one loss of the weights
  config.regularizer.beta_decay = 0.0  # beta-DARTS's log-sum-exp of the alphas
  config.regularizer.schedule = 'constant'  # constant | linear: each weight from 0 at the first epoch (beta-DARTS)
  config.regularizer.random_smoothing = 0.0  # SDARTS-RS: max |noise| on the weight step's weights, last epoch; 0: off
  config.regularizer.random_smoothing_start = 0.03  # SDARTS-RS: the same at the first epoch (linear in between)
  config.regularizer.adversarial_epsilon = 0.0  # SDARTS-ADV: PGD radius on the weight step's weights, last epoch; 0: off
  config.regularizer.adversarial_epsilon_start = 0.03  # SDARTS-ADV: the radius at the first epoch (linear in between)
  config.regularizer.adversarial_steps = 7  # SDARTS-ADV: PGD steps per weight step
  config.regularizer.adversarial_step_size = 0.0  # SDARTS-ADV: PGD step; 0: 2 * radius / steps (the code's)

  config.data = ml_collections.ConfigDict()
  config.data.name = 'ptb'  # ptb | wikitext2 | kjv (the offline King James Bible, darts_jax.data.text)
  config.data.dir = ''  # '' reads $DARTS_JAX_DATA/<name>, else ~/.cache/darts_jax/<name>

  config.log_every_steps = 50
  config.checkpoint_every_minutes = 10.0
  config.keep_checkpoints = 3
  config.progress = True
  config.compilation_cache_dir = '~/.cache/darts_jax/jax_cache'
  config.parallel_impl = 'shard_map'  # or 'pmap': the same bits (darts_jax/training/parallel.py)
  return config
