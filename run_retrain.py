"""Retraining a genotype from scratch and evaluating it: CNN (test accuracy) or, with ``config.space = 'rnn'``,
recurrent (perplexity).

    python run_retrain.py --config configs/retrain_quick.py --workdir runs/retrain_quick
    python run_retrain.py --config configs/retrain_cifar10.py --workdir runs/retrain_cifar10 \
        --config.genotype=runs/cifar10          # a search workdir; or DARTS_V2, a genotype.json, JSON, repr text
    python run_retrain.py --config configs/retrain_ptb.py --workdir runs/ptb --config.genotype=DARTS_V2

Running the same command on an existing workdir resumes from its latest checkpoint; SIGTERM or SIGINT stop it after
saving one (exit status 75). See `darts_jax.tasks.retrain` and `darts_jax.tasks.rnn_retrain` for what lands in the
workdir and `python -m darts_jax.evaluate` to evaluate a trained CNN checkpoint again.
"""
from darts_jax.tasks import retrain, rnn_retrain
from darts_jax.training import cli


def run(config, workdir):
  return (rnn_retrain.rnn_retrain if config.get('space') == 'rnn' else retrain.retrain)(config, workdir)


if __name__ == '__main__':
  cli.main('run_retrain.py', run, example_config='configs/retrain_quick.py')
