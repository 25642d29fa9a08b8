"""The random baselines of every space (Li & Talwalkar, "Random Search and Reproducibility for Neural Architecture
Search", UAI 2019): random genotypes, retrained like any genotype, and random search with weight sharing.

**Random genotypes** (`random_genotypes`): ``num_samples`` genotypes drawn by the space's own rule from alphas
with i.i.d. standard normal entries (`sample_genotypes`): every row's argmax is then uniform over its ops, so under
the CNN rule every edge's op is uniform over the non-``none`` ops and every node's two inputs a uniform pair (the
paper's sampler); under the example space's every edge's op is uniform. Each lands in ``<workdir>/random_<i>/
genotype.json``, for the one retrain task: ``darts-retrain --config.genotype=<workdir>/random_<i>``.

**Random search with weight sharing**: the search task with ``relaxation.name = 'uniform_path'`` trains the supernet
on one uniformly drawn op per edge per step (the alphas play no part); ``darts-select --selection best_of_n`` then
scores ``num_samples`` random genotypes by the supernet's validation accuracy with their ops alone and keeps the
best (`darts_jax.tasks.selection`). ``configs/search_random_ws.py`` is the search's config.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from darts_jax import spaces
from darts_jax.training import reporting
from darts_jax.training.parallel import AXIS_NAME

PyTree = Any

__all__ = ['random_genotypes', 'sample_genotypes']


def sample_genotypes(space: spaces.SearchSpace, alphas: PyTree, num_samples: int, seed: int) -> Iterator[Any]:
  """`num_samples` random genotypes of `space`: its `derive_genotype` of standard normal alphas shaped as `alphas`
  (host), drawn from ``seed`` (module docstring)."""
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(alphas)
  for _ in range(num_samples):
    yield space.derive_genotype(jax.tree.unflatten(
        treedef, [rng.standard_normal(np.shape(leaf)).astype(np.float32) for leaf in leaves]))


def random_genotypes(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], num_samples: int,
                     seed: int = 0) -> list[Any]:
  """Writes `num_samples` random genotypes of the space of the search `config` to ``<workdir>/random_<i>/
  genotype.json`` (with the space's cost entries) and ``<workdir>/random_genotypes.json`` (all of them); returns them.
  The alphas' shapes come from the space's initial search state (its data is loaded, no step runs)."""
  if num_samples < 1:
    raise ValueError(f'num_samples must be positive, got {num_samples}.')
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  space = spaces.get_space(config)
  setup = space.search_setup(workdir, AXIS_NAME)
  try:
    alphas = jax.eval_shape(setup.init, jax.random.key(config.seed)).alphas
  finally:
    setup.close()
  genotypes = list(sample_genotypes(space, alphas, num_samples, seed))
  for i, genotype in enumerate(genotypes):
    directory = workdir / f'random_{i}'
    directory.mkdir(exist_ok=True)
    reporting.write_json(directory / 'genotype.json', {**space.genotype_to_json(genotype),
                                                       **space.genotype_record(genotype)})
    logging.info('random_%d: %s', i, space.genotype_text(genotype))
  reporting.write_json(workdir / 'random_genotypes.json', {
      'seed': seed, 'space': config.get('space', 'cnn'),
      'genotypes': [space.genotype_to_json(g) for g in genotypes]})
  return genotypes
