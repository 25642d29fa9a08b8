"""Search spaces behind one interface (`SearchSpace`): the tasks find a space by the config's ``space`` key.

``space = 'cnn'`` (the default) is DARTS's CNN cells (`darts_jax.spaces.cnn`), ``'rnn'`` the recurrent cell
(`darts_jax.spaces.rnn`), ``'nb201'`` NAS-Bench-201's cell (`darts_jax.spaces.nb201`). A space of your own is a
`SearchSpace` subclass named by ``'module:Class'`` (its module importable), e.g.
``--config.space=my_package.my_space:MySpace``; docs/architecture.md walks through one.
"""
from __future__ import annotations

import importlib

import ml_collections

from darts_jax.spaces.base import Retraining, SearchSetup, SearchSpace
from darts_jax.spaces.cnn import CNNSpace
from darts_jax.spaces.nb201 import NB201Space
from darts_jax.spaces.rnn import RNNSpace

SPACES: dict[str, type[SearchSpace]] = {space.name: space for space in (CNNSpace, RNNSpace, NB201Space)}
"""The spaces of the package by their ``space`` name."""

__all__ = ['CNNSpace', 'NB201Space', 'RNNSpace', 'Retraining', 'SPACES', 'SearchSetup', 'SearchSpace', 'get_space',
           'space_class']


def space_class(name: str) -> type[SearchSpace]:
  """The space class a config's ``space`` names: a key of `SPACES` or ``'module:Class'``.

  Raises:
    ValueError: an unknown name, or a ``module:Class`` that cannot be imported or is no `SearchSpace`.
  """
  if name in SPACES:
    return SPACES[name]
  module_name, _, class_name = name.partition(':')
  if not class_name:
    raise ValueError(f'Unknown space {name!r}; expected one of {", ".join(SPACES)} or module:Class.')
  try:
    cls = getattr(importlib.import_module(module_name), class_name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f'space {name!r} cannot be loaded: {e}') from None
  if not (isinstance(cls, type) and issubclass(cls, SearchSpace)):
    raise ValueError(f'space {name!r} is not a darts_jax.spaces.SearchSpace subclass.')
  return cls


def get_space(config: ml_collections.ConfigDict) -> SearchSpace:
  """The space of `config` (its ``space`` key, ``'cnn'`` when absent), built from it."""
  return space_class(config.get('space', CNNSpace.name))(config)
