"""Diagnostics of a DARTS search's dynamics: did it converge to something real, or collapse?

    from darts_jax import diagnostics
    diagnostics.dominant_hessian_eigenvalue(lambda alphas: val_loss(params, alphas), alphas, num_iterations=20)

`dominant_hessian_eigenvalue(loss_fn, alphas, *, num_iterations, rng)` is the largest-magnitude eigenvalue of the
Hessian of any ``loss_fn(alphas) -> scalar`` (alphas any pytree) by Lanczos over forward-over-reverse
Hessian-vector products (`darts_jax.dynamics.hessian`); the others read architecture parameters and genotypes on
the host (`darts_jax.dynamics.diagnostics`): entropy and mean largest weight of the softmaxed alphas per cell type,
the stability of the derived genotype between epochs, and the number of ``skip_connect`` ops. The early-stopping
rules built on them (DARTS-ES, DARTS+, stability) are `darts_jax.dynamics.early_stopping`.
"""
from darts_jax.dynamics.diagnostics import (alpha_entropy, alpha_max_weight, edge_labels, epoch_diagnostics,
                                            genotype_stability, same_architecture, skip_count, softmax_weights,
                                            unchanged_epochs, weights_entropy, weights_max)
from darts_jax.dynamics.hessian import dominant_hessian_eigenvalue, hessian_eigenvalue_and_gradient

__all__ = ['alpha_entropy', 'alpha_max_weight', 'dominant_hessian_eigenvalue', 'edge_labels', 'epoch_diagnostics',
           'genotype_stability', 'hessian_eigenvalue_and_gradient', 'same_architecture', 'skip_count',
           'softmax_weights', 'unchanged_epochs', 'weights_entropy', 'weights_max']
