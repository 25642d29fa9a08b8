"""The training tasks on `darts_jax.training.loop`, for every search space: the architecture search (`search`, also
k seeds in one program), the retraining of a genotype (`retrain`) and the paper's protocol (`protocol`). The command
lines (`darts_jax.cli`) call them; nothing below them imports them.
"""
__all__ = ['protocol', 'retrain', 'search']
