"""The CNN search space of DARTS (CIFAR-10, ImageNet): primitives (`ops`), the supernet (`supernet`), the networks a
genotype defines (`networks`), the genotype rule and the published cells (`genotypes`), what a network costs
(`cost`, `latency`) and cell diagrams (`plots`, graphviz: import it on use).

This package's import loads jax, flax and numpy only.
"""
from darts_jax.cnn.genotypes import (DARTS, DARTS_V1, DARTS_V2, KNOWN_GENOTYPES, PRIMITIVES, AmoebaNet, Genotype,
                                     NASNet, derive_genotype)
from darts_jax.cnn.networks import NetworkCIFAR, NetworkImageNet, count_params
from darts_jax.cnn.supernet import SearchNetwork, init_alphas

__all__ = ['AmoebaNet', 'DARTS', 'DARTS_V1', 'DARTS_V2', 'Genotype', 'KNOWN_GENOTYPES', 'NASNet', 'NetworkCIFAR',
           'NetworkImageNet', 'PRIMITIVES', 'SearchNetwork', 'count_params', 'derive_genotype', 'init_alphas']
