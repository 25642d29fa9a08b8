"""Retraining a genotype from scratch and evaluating it on the test set.

    python run_retrain.py --config configs/retrain_quick.py --workdir runs/retrain_quick
    python run_retrain.py --config configs/retrain_cifar10.py --workdir runs/retrain_cifar10 \
        --config.genotype=runs/cifar10          # a search workdir; or DARTS_V2, a genotype.json, JSON, repr text

Running the same command on an existing workdir resumes from its latest checkpoint; SIGTERM or SIGINT stop it after
saving one (exit status 75). See `darts_jax.tasks.retrain` for what lands in the workdir and
`python -m darts_jax.evaluate` to evaluate a trained checkpoint again.
"""
from darts_jax.tasks import retrain
from darts_jax.training import cli

if __name__ == '__main__':
  cli.main('run_retrain.py', retrain.retrain, example_config='configs/retrain_quick.py')
