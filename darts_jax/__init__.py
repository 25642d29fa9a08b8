"""darts-jax: DARTS (Differentiable ARchiTecture Search) in JAX/Flax around a functional bilevel optimizer.

The package is grouped by concept (docs/architecture.md has the map):

* `darts_jax.cnn`: the CNN search space: primitives (`ops`), the supernet (`supernet`), the retraining networks
  (`networks`), genotypes and cell diagrams (`genotypes`, `plots`), what a network costs (`cost`, `latency`);
* `darts_jax.bilevel`: the bilevel core: the generic `hypergradient` and the DARTS search step on the supernet;
* `darts_jax.dynamics`: the search's dynamics: the relaxations and architecture regularisers of DARTS's variants
  (temperature, Gumbel-softmax, sigmoid, Dirichlet, entropy, zero-one, Beta-Decay), diagnostics (e.g.
  `dominant_hessian_eigenvalue`) and early-stopping rules, all named in `darts_jax.dynamics`;
* `darts_jax.data`: datasets, batching and on-device augmentation;
* `darts_jax.training`: the one training loop (`loop`) and its infrastructure: checkpoints, metrics, curves,
  pmap helpers, optimizers, configs, CLI start-up;
* `darts_jax.analysis`: runs read back from their workdirs: plots of a search and comparisons of runs;
* `darts_jax.tasks`: the training tasks on that loop: `search` (behind ``run_search.py``) and `retrain` (behind
  ``run_retrain.py``);
* interoperability: `darts_jax.convert` (the original's PyTorch checkpoints), `darts_jax.export` (a portable
  inference artifact);
* entry points: `darts_jax.cli`, one module per command, each a console script: ``darts-search`` (as
  ``run_search.py``), ``darts-retrain`` (as ``run_retrain.py``), ``darts-evaluate``, ``darts-export``,
  ``darts-plots``, ``darts-compare``, ``darts-cost``, ``darts-genotypes``, ``darts-protocol``, ``darts-bench``; they
  need the ``[cli]`` extra (orbax, tfds, grain, ...).

This module exports the research API. It imports only jax, flax, optax and numpy; the plotting functions
(graphviz, matplotlib, in the ``[cli]`` extra) are imported on first use.
"""
import importlib
from typing import Any

from darts_jax.bilevel.hypergradient import hypergradient
from darts_jax.cnn.genotype_formats import genotype_from_json, genotype_to_json, parse_genotype
from darts_jax.cnn.genotypes import (DARTS, DARTS_V1, DARTS_V2, KNOWN_GENOTYPES, PRIMITIVES, AmoebaNet, Genotype,
                                     NASNet, derive_genotype)
from darts_jax.cnn.networks import NetworkCIFAR, NetworkImageNet, count_params
from darts_jax.cnn.supernet import SearchNetwork, init_alphas
from darts_jax.dynamics.hessian import dominant_hessian_eigenvalue

__version__ = '0.1.0'
__all__ = ['AmoebaNet', 'DARTS', 'DARTS_V1', 'DARTS_V2', 'Genotype', 'KNOWN_GENOTYPES', 'NASNet', 'NetworkCIFAR',
           'NetworkImageNet', 'PRIMITIVES', 'SearchNetwork', 'count_params', 'derive_genotype',
           'dominant_hessian_eigenvalue', 'genotype_from_json', 'genotype_to_json', 'hypergradient', 'init_alphas',
           'parse_genotype', 'plot_curves', 'plot_genotype', 'plot_search']

_LAZY = {'plot_genotype': 'darts_jax.cnn.plots', 'plot_curves': 'darts_jax.training.curves',
         'plot_search': 'darts_jax.analysis.plots'}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    try:
      module = importlib.import_module(_LAZY[name])
    except ModuleNotFoundError as e:
      raise ModuleNotFoundError(f"{name} needs {e.name}: pip install 'darts-jax[cli]'", name=e.name) from e
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  """The module's names with the lazy ones (PEP 562), so that `dir` and documentation tools list them."""
  return sorted(set(globals()) | set(_LAZY))
