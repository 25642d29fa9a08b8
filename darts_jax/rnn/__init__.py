"""The recurrent search space (DARTS, Sec. 2.1 and App. A.1.2): the RNN cell on Penn Treebank.

* `genotypes`: `PRIMITIVES`, `Genotype`, the published `DARTS_V1`, `DARTS_V2` (= `DARTS`) and `ENAS`,
  `derive_genotype`, JSON and repr parsing;
* `model`: `RNNModelSearch` (the supernet; alphas a separate array of shape (36, 5), or with ``mixing='weights'``
  the mixing weights themselves, as the search passes them from its relaxation, so that every relaxation and
  SDARTS-RS/ADV apply; PC-DARTS's ``partial_channels`` and ``edge_normalization``, this project's extension of
  PC-DARTS to the recurrent cell, the search's ``model.partial_channels``/``model.edge_normalization``), `RNNModel`
  (a genotype's language model, for retraining), `init_alphas`, `num_params` (the count from the sizes, without
  building a model), `sequence_losses`;
* `plots`: `plot_genotype`, cell diagrams in the original's style (imported on first use: graphviz).
"""
import importlib
from typing import Any

from darts_jax.rnn.genotypes import (DARTS, DARTS_V1, DARTS_V2, ENAS, KNOWN_GENOTYPES, PRIMITIVES, Genotype,
                                     derive_genotype, genotype_from_json, genotype_from_repr, genotype_to_json,
                                     genotype_to_repr, parse_genotype)
from darts_jax.rnn.model import (RNNModel, RNNModelSearch, evaluate_split, init_alphas, num_params,
                                  sequence_losses, split_log_likelihood)

__all__ = ['DARTS', 'DARTS_V1', 'DARTS_V2', 'ENAS', 'Genotype', 'KNOWN_GENOTYPES', 'PRIMITIVES', 'RNNModel',
           'RNNModelSearch', 'derive_genotype', 'evaluate_split', 'genotype_from_json', 'genotype_from_repr',
           'genotype_to_json', 'genotype_to_repr', 'init_alphas', 'num_params', 'parse_genotype', 'plot_genotype',
           'sequence_losses', 'split_log_likelihood']


def __getattr__(name: str) -> Any:
  if name == 'plot_genotype':
    return importlib.import_module('darts_jax.rnn.plots').plot_genotype
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
