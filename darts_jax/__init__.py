"""darts-jax: DARTS (Differentiable ARchiTecture Search) in JAX/Flax around a functional bilevel optimizer.

The core (search space, genotypes, hypergradient) imports only jax, flax, optax and numpy; the plotting functions
(graphviz, matplotlib) are imported on first use.
"""
import importlib
from typing import Any

from darts_jax.genotypes import (DARTS, DARTS_V1, DARTS_V2, KNOWN_GENOTYPES, PRIMITIVES, AmoebaNet, Genotype, NASNet,
                                 derive_genotype, genotype_from_json, genotype_to_json, parse_genotype)
from darts_jax.hypergradient import hypergradient
from darts_jax.search_network import SearchNetwork, init_alphas

__version__ = '0.1.0'
__all__ = ['AmoebaNet', 'DARTS', 'DARTS_V1', 'DARTS_V2', 'Genotype', 'KNOWN_GENOTYPES', 'NASNet', 'PRIMITIVES',
           'SearchNetwork', 'derive_genotype', 'genotype_from_json', 'genotype_to_json', 'hypergradient',
           'init_alphas', 'parse_genotype', 'plot_curves', 'plot_genotype']

_LAZY = {'plot_genotype': 'darts_jax.plots', 'plot_curves': 'darts_jax.plots'}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
