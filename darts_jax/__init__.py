"""darts-jax: DARTS (Differentiable ARchiTecture Search) in JAX/Flax around a functional bilevel optimizer."""
from darts_jax.genotypes import (AmoebaNet, DARTS, DARTS_V1, DARTS_V2, KNOWN_GENOTYPES, NASNet, PRIMITIVES, Genotype,
                                 derive_genotype, genotype_from_json, genotype_to_json, parse_genotype)
from darts_jax.hypergradient import hypergradient
from darts_jax.plots import plot_curves, plot_genotype
from darts_jax.search_network import SearchNetwork, init_alphas

__version__ = '0.1.0'
