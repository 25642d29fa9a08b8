"""The relaxations of the architecture and the architecture regularisers: the public API.

    from darts_jax import relaxations
    weights = relaxations.softmax(alphas, temperature=0.5)                      # any (..., ops) array or pytree
    sample = relaxations.gumbel_softmax(rng, alphas, temperature=1.0, hard=True)  # GDAS: one-hot forward
    tau = relaxations.exponential_schedule(1.0, 0.03, transition_steps=50)      # optax-style, of the step

The functions are `darts_jax.dynamics.relaxations` (mixing weights from alphas, temperature schedules, `Relaxation`)
and `darts_jax.dynamics.regularizers` (penalties on alphas and weights for the validation loss); the search selects
them with ``config.relaxation`` and ``config.regularizer``.
"""
from darts_jax.dynamics.regularizers import beta_decay, entropy, make_penalties, sum_penalties, weighted, zero_one_loss
from darts_jax.dynamics.relaxations import (CONCENTRATIONS, RELAXATIONS, SCHEDULES, Relaxation, concentration,
                                            constant_schedule, cosine_schedule, dirichlet, dirichlet_mean,
                                            exponential_schedule, gaussian_softmax, gumbel_softmax, linear_schedule,
                                            make_schedule, one_hot_argmax, per_epoch, sigmoid, softmax,
                                            straight_through, uniform_perturbation)

__all__ = ['CONCENTRATIONS', 'RELAXATIONS', 'SCHEDULES', 'Relaxation', 'beta_decay', 'concentration',
           'constant_schedule', 'cosine_schedule', 'dirichlet', 'dirichlet_mean', 'entropy', 'exponential_schedule',
           'gaussian_softmax', 'gumbel_softmax', 'linear_schedule', 'make_penalties', 'make_schedule',
           'one_hot_argmax', 'per_epoch', 'sigmoid', 'softmax', 'straight_through', 'sum_penalties',
           'uniform_perturbation', 'weighted', 'zero_one_loss']
