"""The search's dynamics: how the alphas become mixing weights, what regularises them, and whether a search
converges or collapses.

    from darts_jax import dynamics
    weights = dynamics.softmax(alphas, temperature=0.5)                         # any (..., ops) array or pytree
    sample = dynamics.gumbel_softmax(rng, alphas, temperature=1.0, hard=True)   # GDAS: one-hot forward
    tau = dynamics.exponential_schedule(1.0, 0.03, transition_steps=50)         # optax-style, of the step
    dynamics.dominant_hessian_eigenvalue(lambda a: val_loss(params, a), alphas, num_iterations=20)

`relaxations` (mixing weights from alphas, temperature schedules, `Relaxation`) and `regularizers` (penalties on
alphas and weights for the validation loss), which the search selects with ``config.relaxation`` and
``config.regularizer``; `hessian` (the largest-magnitude eigenvalue of the Hessian of any ``loss_fn(alphas)``, by
Lanczos over forward-over-reverse Hessian-vector products); `diagnostics` (entropy and mean largest weight of the
softmaxed alphas per cell type, the stability of the derived genotype between epochs, the ``skip_connect`` count, on
the host); `early_stopping` (DARTS-ES, DARTS+, stability: pure functions of the per-epoch records).
"""
from darts_jax.dynamics.diagnostics import (alpha_entropy, alpha_max_weight, edge_labels, epoch_diagnostics,
                                            genotype_stability, same_architecture, skip_count, softmax_weights,
                                            unchanged_epochs, weights_entropy, weights_max)
from darts_jax.dynamics.hessian import (dominant_hessian_eigenvalue, hessian_eigenvalue_and_gradient,
                                        hessian_ritz_values_and_gradient)
from darts_jax.dynamics.regularizers import beta_decay, entropy, make_penalties, sum_penalties, weighted, zero_one_loss
from darts_jax.dynamics.relaxations import (CONCENTRATIONS, RELAXATIONS, SCHEDULES, Relaxation, concentration,
                                            constant_schedule, cosine_schedule, dirichlet, dirichlet_mean,
                                            exponential_schedule, gaussian_softmax, gumbel_softmax, linear_schedule,
                                            make_schedule, one_hot_argmax, per_epoch, sigmoid, softmax,
                                            straight_through, uniform_perturbation)

__all__ = ['CONCENTRATIONS', 'RELAXATIONS', 'SCHEDULES', 'Relaxation', 'alpha_entropy', 'alpha_max_weight',
           'beta_decay', 'concentration', 'constant_schedule', 'cosine_schedule', 'dirichlet', 'dirichlet_mean',
           'dominant_hessian_eigenvalue', 'edge_labels', 'entropy', 'epoch_diagnostics', 'exponential_schedule',
           'gaussian_softmax', 'genotype_stability', 'gumbel_softmax', 'hessian_eigenvalue_and_gradient',
           'hessian_ritz_values_and_gradient',
           'linear_schedule', 'make_penalties', 'make_schedule', 'one_hot_argmax', 'per_epoch', 'same_architecture',
           'sigmoid', 'skip_count', 'softmax', 'softmax_weights', 'straight_through', 'sum_penalties',
           'unchanged_epochs', 'uniform_perturbation', 'weighted', 'weights_entropy', 'weights_max',
           'zero_one_loss']
