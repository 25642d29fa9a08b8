"""Training a recurrent genotype on Penn Treebank, as the original ``rnn/train.py`` (paper App. A.2.2).

    python run_retrain.py --config configs/retrain_ptb.py --workdir runs/ptb_darts_v2 \
        --config.genotype=DARTS_V2 --config.data.dir=DIR      # or a search workdir, a genotype.json, JSON, repr

DIR holds ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (``--config.data.name=wikitext2``: WikiText-2's
``wiki.*.tokens``). The original trains for up to 8,000 epochs (its default; in practice until the time budget
ends) with NT-ASGD and reports the test perplexity of the best validation weights (55.7 in the paper for DARTS_V2).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.space = 'rnn'  # the recurrent space (run_retrain.py dispatches on it)
  config.genotype = 'DARTS_V2'
  config.seed = 1267
  config.num_epochs = 8000
  config.batch_size = 64  # global, over all devices
  config.eval_batch_size = 10
  config.test_batch_size = 1
  config.bptt = 35
  config.bptt_jitter = 5.0  # lengths max(5, int(N(bptt, 5))), with probability 0.05 around bptt / 2
  config.max_seq_len_delta = 20  # lengths capped at bptt + 20
  config.max_steps_per_epoch = 0  # > 0: cap the steps of an epoch (quick runs)
  config.learning_rate = 20.0
  config.weight_decay = 8e-7
  config.grad_clip = 0.25
  config.tar = 1e-3  # temporal activation regularisation (the original's beta)
  config.ar = 0.0  # activation regularisation (alpha)
  config.nonmono = 5  # NT-ASGD: switch to averaging when validation is worse than the best nonmono+ epochs back

  config.model = ml_collections.ConfigDict()
  config.model.emsize = 850
  config.model.nhid = 850
  config.model.dropout = 0.75
  config.model.dropouth = 0.25
  config.model.dropoutx = 0.75
  config.model.dropouti = 0.2
  config.model.dropoute = 0.1

  config.data = ml_collections.ConfigDict()
  config.data.name = 'ptb'  # ptb | wikitext2 | kjv (the offline King James Bible, darts_jax.data.text)
  config.data.dir = ''  # '' reads $DARTS_JAX_DATA/<name>, else ~/.cache/darts_jax/<name>

  config.log_every_steps = 200
  config.checkpoint_every_minutes = 10.0
  config.keep_checkpoints = 3
  config.progress = True
  config.compilation_cache_dir = '~/.cache/darts_jax/jax_cache'
  config.parallel_impl = 'shard_map'  # or 'pmap': the same bits (darts_jax/training/parallel.py)
  return config
