"""The bilevel core: the generic hypergradient of ``min_α L_val(w*(α), α)`` and the one search step built on it.

* `darts_jax.bilevel.hypergradient`: ``hypergradient(train_loss, val_loss, w, alpha, ...)`` and one function per
  method (first order, DARTS's finite difference and exact second order, k-step unrolled, implicit);
* `darts_jax.bilevel.step`: `SearchState`, `BilevelProblem` (what a search space gives the step) and
  `make_search_step`: the architecture step, then the weight step, for every space.
"""
from darts_jax.bilevel.hypergradient import hypergradient
from darts_jax.bilevel.step import METHODS, BilevelProblem, SearchState, make_search_step, method_name

__all__ = ['METHODS', 'BilevelProblem', 'SearchState', 'hypergradient', 'make_search_step', 'method_name']
