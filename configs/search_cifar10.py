"""DARTS search on CIFAR-10 with the paper's settings (Liu et al., 2019, Sec. 3.1 and A.1).

8 cells of 16 initial channels, batch 64, 50 epochs; weights by SGD (momentum 0.9, weight decay 3e-4, learning
rate cosine from 0.025 to 0.001, gradients clipped to norm 5), alphas by Adam (3e-4, betas (0.5, 0.999), weight
decay 1e-3), second-order hypergradient (here exact, not the paper's finite difference). Half of the training set
trains the weights, the other half the alphas.

    python run_search.py --config configs/search_cifar10.py --workdir runs/cifar10
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 2
  config.num_seeds = 1  # k > 1: seeds seed..seed+k-1 in one program (vmap), in WORKDIR/seed_<s>/
  config.num_epochs = 50
  config.batch_size = 64  # global, over all devices
  config.max_steps_per_epoch = 0  # 0: the whole training half each epoch
  # first_order | fd | exact | unrolled | implicit_cg | implicit_neumann (darts_jax.bilevel.hypergradient)
  config.hypergradient = 'exact'
  config.fd_epsilon = 0.01  # fd: R = fd_epsilon / ||v||
  config.unroll_steps = 3  # unrolled: virtual steps (Betty's DARTS example uses 3)
  config.implicit_iterations = 5  # implicit_cg: CG iterations; implicit_neumann: Neumann terms
  config.implicit_damping = 0.0  # implicit_*: added to the diagonal of the training Hessian
  config.second_order_impl = 'auto'  # second_order_*: chained | direct | auto (chained on CPU, direct elsewhere)

  # Weights (the original's SGD).
  config.learning_rate = 0.025
  config.learning_rate_min = 0.001
  config.momentum = 0.9
  config.weight_decay = 3e-4
  config.grad_clip = 5.0
  # Alphas (the original's Adam).
  config.arch_learning_rate = 3e-4
  config.arch_weight_decay = 1e-3
  config.arch_warmup_epochs = 0  # epochs before the alphas start to move (0: the paper)

  config.model = ml_collections.ConfigDict()
  config.model.init_channels = 16
  config.model.layers = 8
  config.model.steps = 4
  config.model.multiplier = 4
  config.model.stem_multiplier = 3
  config.model.depthwise_impl = 'auto'  # auto (shift on CPU, xla elsewhere) | shift | xla (see darts_jax.cnn.ops)
  config.model.dtype = 'float32'  # float32 | bfloat16: activations and convolutions (parameters stay float32)
  config.model.remat = False  # recompute each cell's elementwise work in the backward pass: less memory
  # Variants of the supernet (darts_jax.cnn.supernet), all off here:
  config.model.search_space = 'darts'  # darts | s1 | s2 | s3 | s4: the ops of each edge (RobustDARTS's S1-S4)
  config.model.edge_ops = ''  # '' (search_space's) or JSON {"normal": [[ops of edge 0], ...], "reduce": [...]}
  config.model.skip_dropout = 0.0  # > 0: P-DARTS's dropout on the identity ops in training, decayed per epoch
  config.model.partial_channels = 1  # K > 1: PC-DARTS's partial channels (1/K of them through the ops)
  config.model.edge_normalization = False  # PC-DARTS's softmax-weighted inputs of every node (parameters beside the alphas)
  config.model.aux_skip_weight = 0.0  # > 0: DARTS-'s auxiliary skip on every edge, starting at this weight
  config.model.aux_skip_decay = 'linear'  # linear | cosine | constant: how that weight falls to 0 over the epochs

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar10'
  config.data.dir = ''  # '' looks in $DARTS_JAX_DATA, system directories, then tensorflow-datasets
  config.data.subset = 0  # > 0: use only the first `subset` training images
  config.data.augment = True  # random crop 32 (padding 4) + horizontal flip, on device
  config.data.image_size = 0  # > 0: resize images to image_size x image_size on device

  # How the alphas become the mixing weights of each edge's ops (darts_jax.dynamics.relaxations); softmax at 1 is DARTS.
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
  config.regularizer.entropy = 0.0  # mean entropy of the weights: > 0 pushes edges to commit, < 0 keeps them spread
  config.regularizer.zero_one = 0.0  # FairDARTS's zero-one loss of the weights
  config.regularizer.beta_decay = 0.0  # beta-DARTS's log-sum-exp of the alphas
  config.regularizer.schedule = 'constant'  # constant | linear: each weight from 0 at the first epoch (beta-DARTS)
  config.regularizer.random_smoothing = 0.0  # SDARTS-RS: max |noise| on the weight step's weights, last epoch; 0: off
  config.regularizer.random_smoothing_start = 0.03  # SDARTS-RS: the same at the first epoch (linear in between)
  config.regularizer.adversarial_epsilon = 0.0  # SDARTS-ADV: radius of the PGD attack on the weight step's weights,
  # last epoch; 0: off (configs/search_sdarts_adv.py)
  config.regularizer.adversarial_epsilon_start = 0.03  # SDARTS-ADV: the radius at the first epoch (linear in between)
  config.regularizer.adversarial_steps = 7  # SDARTS-ADV: PGD steps per weight step
  config.regularizer.adversarial_step_size = 0.0  # SDARTS-ADV: PGD step; 0: 2 * radius / steps (the code's)

  # Diagnostics of the search's dynamics (darts_jax.dynamics), logged every epoch.
  config.diagnostics = ml_collections.ConfigDict()
  config.diagnostics.hessian_batches = 4  # fixed validation batches of the Hessian eigenvalue
  config.diagnostics.hessian_iterations = 10  # Lanczos steps (Hessian-vector products per batch); 0: no eigenvalue
  config.diagnostics.hessian_method = 'exact'  # Hessian-vector products: exact (forward over reverse) | fd
  # Early stopping (darts_jax.dynamics.early_stopping); off: the paper runs all epochs.
  config.early_stopping = ml_collections.ConfigDict()
  config.early_stopping.rule = 'none'  # none | darts_es | darts_plus | stability
  config.early_stopping.window = 5  # darts_es: epochs per mean (R-DARTS: 5); the kept architecture is this many back
  config.early_stopping.factor = 1.3  # darts_es: stop when the recent mean eigenvalue exceeds factor x the earlier
  config.early_stopping.start_epoch = 10  # darts_es: first epoch that may stop
  config.early_stopping.max_skip = 2  # darts_plus: stop at this many skip_connect ops in the normal cell
  config.early_stopping.patience = 10  # stability: stop after this many epochs without a change of architecture

  # The derivation after the search (darts_jax.tasks.selection, run by darts-search): magnitude is DARTS's rule on
  # the final alphas (genotype.json); pt (DARTS-PT) and best_of_n also write <workdir>/selection_<name>/genotype.json.
  config.selection = 'magnitude'  # magnitude | pt | best_of_n
  config.selection_quick = False  # pt/best_of_n at the quick options (10 tuning steps, 4 batches, 20 samples)

  config.cost = ml_collections.ConfigDict()  # resource-aware search (darts_jax.cnn.cost); off with weight 0
  config.cost.metric = 'macs'  # params | macs | latency (ms, measured on this device): the cost of each choice
  config.cost.weight = 0.0  # lambda of the cost term in the validation loss; 0: none (the paper)
  config.cost.form = 'linear'  # linear: lambda*E/target | hinge: lambda*max(0, E/target - 1) | mnasnet
  config.cost.target = 0.0  # E's target, in the metric's unit (parameters, multiply-adds, ms); needed with weight > 0
  config.cost.mnasnet_alpha = -0.07  # mnasnet: -lambda*w*log(E/target), w = alpha if E <= target else beta
  config.cost.mnasnet_beta = -0.07
  config.cost.latency_cache = ''  # latency tables; '': $DARTS_JAX_CACHE/latency or ~/.cache/darts_jax/latency
  config.cost.eval_init_channels = 36  # each epoch's genotype is also costed as the retrain network of this C
  config.cost.eval_layers = 20  # and this many cells (configs/retrain_cifar10.py's)

  config.log_every_steps = 50
  config.checkpoint_every_minutes = 10.0  # 0: only at the end of every epoch
  config.keep_checkpoints = 3
  config.progress = True  # progress bar on a terminal
  # Persistent compilation cache of run_search.py; '' leaves JAX's setting ($JAX_COMPILATION_CACHE_DIR, else off).
  config.compilation_cache_dir = '~/.cache/darts_jax/jax_cache'
  config.parallel_impl = 'shard_map'  # or 'pmap': the same bits (darts_jax/training/parallel.py)
  # XLA:CPU's backend optimisation level (0-3) of the end-of-epoch evaluation and Hessian: 0 compiles them 2-4x
  # faster but runs them 2-6x slower, a loss once they compile during the first epoch (docs/results.md); the step
  # and the initialisation always keep XLA's default (3).
  config.compile = ml_collections.ConfigDict({'rare_programs_opt_level': 3})
  return config
