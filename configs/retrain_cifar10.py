"""Retraining a genotype on CIFAR-10 with the paper's recipe (Liu et al., 2019, Sec. 3.3 and A.2; the original
``train.py --auxiliary --cutout``).

20 cells of 36 initial channels (3.35M parameters for DARTS_V2), batch 96, 600 epochs; SGD (momentum 0.9, weight
decay 3e-4, learning rate cosine from 0.025 to 0, gradients clipped to norm 5), auxiliary head with weight 0.4,
drop path 0.2 (ramped linearly from 0 over the epochs), cutout 16. Trains on the whole training set and evaluates
on the test set after every epoch.

    python run_retrain.py --config configs/retrain_cifar10.py --workdir runs/retrain_cifar10 \
        --config.genotype=DARTS_V2   # or a search workdir, a genotype.json, JSON or Genotype(...) text
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.genotype = 'DARTS_V2'  # name | search workdir | genotype.json | JSON | Genotype(...) | pt.darts | NNI dict
  config.init_from = ''  # '' (from scratch) | the original's PyTorch checkpoint (.pt) | a retrain workdir: fine-tuning
  config.freeze_epochs = 0  # with init_from: train only the classifiers (stem and cells frozen) for this many epochs
  config.seed = 0
  # test: train on the training set, evaluate on the test set | search_valid (model selection): train on the
  # search split's training half, evaluate on its validation half (valid_* replaces test_* in records and results)
  config.evaluate_on = 'test'
  config.num_epochs = 600
  config.batch_size = 96  # global, over all devices
  config.max_steps_per_epoch = 0  # 0: the whole training set each epoch

  config.learning_rate = 0.025
  config.learning_rate_min = 0.0
  config.momentum = 0.9
  config.weight_decay = 3e-4
  config.grad_clip = 5.0
  config.auxiliary_weight = 0.4

  config.model = ml_collections.ConfigDict()
  config.model.init_channels = 36
  config.model.layers = 20
  config.model.auxiliary = True  # auxiliary head after cell 2 * layers // 3 (needs 32x32 inputs)
  config.model.drop_path_prob = 0.2  # reached at the end; epoch e uses drop_path_prob * e / num_epochs
  config.model.depthwise_impl = 'auto'  # auto (shift on CPU, xla elsewhere) | shift | xla (see darts_jax.cnn.ops)

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar10'
  config.data.dir = ''  # '' looks in $DARTS_JAX_DATA, system directories, then tensorflow-datasets
  config.data.subset = 0  # > 0: train on the first `subset` training images only
  config.data.classes = ''  # e.g. '6,7,8,9': only these classes, relabelled 0..3 ('' = all)
  config.data.augment = True  # random crop 32 (padding 4) + horizontal flip, on device
  config.data.image_size = 0  # > 0: resize images to image_size x image_size on device
  config.data.cutout = 16  # side of the cutout square (after normalisation); 0 disables

  config.log_every_steps = 50
  config.checkpoint_every_minutes = 10.0  # 0: only at the end of every epoch
  config.keep_checkpoints = 3
  config.progress = True  # progress bar on a terminal
  config.compilation_cache_dir = '~/.cache/darts_jax/jax_cache'  # '' disables the persistent compilation cache
  config.parallel_impl = 'shard_map'  # or 'pmap': the same bits (darts_jax/training/parallel.py)
  return config
