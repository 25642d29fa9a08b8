"""Retraining a genotype and evaluating it: ``darts-retrain`` (`darts_jax.cli.retrain`) as a script in the repository.

    python run_retrain.py --config configs/retrain_quick.py --workdir runs/retrain_quick
    python run_retrain.py --config retrain_cifar10 --workdir runs/retrain_cifar10 --config.genotype=runs/cifar10
"""
from darts_jax.cli import retrain

if __name__ == '__main__':
  retrain.main('run_retrain.py')
