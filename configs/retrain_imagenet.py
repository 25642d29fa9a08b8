"""Training a genotype on ImageNet in the mobile setting with the paper's recipe (Liu et al., 2019, Sec. 3.4 and A.2;
the original ``train_imagenet.py --auxiliary``).

14 cells of 48 initial channels on 224x224 inputs (4.72M parameters, 574M multiply-adds for DARTS_V2), batch 128,
250 epochs; SGD (momentum 0.9, weight decay 3e-5, learning rate 0.1 decayed by 0.97 after every epoch, gradients
clipped to norm 5), label smoothing 0.1, auxiliary head with weight 0.4, no drop path. Augmentation on the host
(random-resized crop 224, flip, colour jitter) in `data.workers` processes; top-1 and top-5 accuracy on the 50,000
validation images after every epoch.

    python run_retrain.py --config configs/retrain_imagenet.py --workdir runs/retrain_imagenet \
        --config.data.dir ~/data/imagenet   # train/ and val/ in ImageFolder layout, or a tfds data_dir
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.genotype = 'DARTS_V2'  # name | search workdir | genotype.json | JSON | Genotype(...) | pt.darts | NNI dict
  config.init_from = ''  # '' (from scratch) | the original's PyTorch checkpoint (.pt) | a retrain workdir: fine-tuning
  config.freeze_epochs = 0  # with init_from: train only the classifiers (stem and cells frozen) for this many epochs
  config.seed = 0
  config.num_epochs = 250
  config.batch_size = 128  # global, over all devices
  config.max_steps_per_epoch = 0  # 0: the whole training set each epoch

  config.learning_rate = 0.1
  config.lr_schedule = 'step'  # step: learning_rate * lr_decay ** (epoch // lr_decay_epochs) | cosine
  config.lr_decay = 0.97
  config.lr_decay_epochs = 1
  config.momentum = 0.9
  config.weight_decay = 3e-5
  config.grad_clip = 5.0
  config.label_smoothing = 0.1  # of the training loss (main and auxiliary); validation loss without
  config.auxiliary_weight = 0.4

  config.model = ml_collections.ConfigDict()
  config.model.init_channels = 48
  config.model.layers = 14
  config.model.auxiliary = True  # auxiliary head after cell 2 * layers // 3 (needs 224x224 inputs)
  config.model.drop_path_prob = 0.0
  config.model.depthwise_impl = 'auto'  # auto (shift on CPU, xla elsewhere) | shift | xla (see darts_jax.cnn.ops)

  config.data = ml_collections.ConfigDict()
  config.data.name = 'imagenet'
  config.data.dir = ''  # train/ + val/ (ImageFolder) or a tfds data_dir with imagenet2012; '' = $DARTS_JAX_DATA/imagenet
  config.data.num_classes = 1000  # must match the class directories
  config.data.augment = True  # random-resized crop, flip, colour jitter; False: resize + centre crop as evaluation
  config.data.image_size = 224  # the crop: network input side
  config.data.resize = 256  # evaluation: shorter side resized to this, then the centre image_size crop
  config.data.workers = 8  # grain worker processes decoding and augmenting (0: in the training process)
  config.data.threads = 4  # decoding threads per process

  config.log_every_steps = 100
  config.checkpoint_every_minutes = 10.0  # 0: only at the end of every epoch
  config.keep_checkpoints = 3
  config.progress = True  # progress bar on a terminal
  config.compilation_cache_dir = '~/.cache/darts_jax/jax_cache'  # '' disables the persistent compilation cache
  config.parallel_impl = 'shard_map'  # or 'pmap': the same bits (darts_jax/training/parallel.py)
  return config
