"""Starting a discrete network from another's weights (fine-tuning): the loaded tensors where they fit the fresh
network, its fresh classifiers where the number of classes differs.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from darts_jax.cnn.networks import AUXILIARY

PyTree = Any


def merge_pretrained(fresh: Mapping[str, PyTree], loaded: Mapping[str, PyTree], source: str
                     ) -> tuple[dict[str, PyTree], list[str]]:
  """`loaded` where it fits `fresh`: classifiers of another number of classes and an auxiliary head `loaded` lacks
  keep their fresh initialisation, parts `fresh` lacks are dropped; any other difference is an error.

  Returns:
    The merged tree and the names of the parts that kept their fresh initialisation.

  Raises:
    ValueError: naming the tensors that do not fit (`source` names the weights' origin in the message).
  """
  merged, kept, mismatched = {}, [], []
  for name, subtree in fresh.items():
    if name not in loaded:
      if name != AUXILIARY:
        mismatched.append(f'{name} (missing)')
      merged[name] = subtree
      kept.append(name)
      continue
    loaded_leaves = dict(jax.tree_util.tree_flatten_with_path(loaded[name])[0])
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(subtree)[0]:
      where, other = name + jax.tree_util.keystr(path), loaded_leaves.get(path)
      if other is not None and other.shape == leaf.shape:
        leaves.append(jnp.asarray(other, leaf.dtype))
      elif other is not None and (name == 'classifier' or where.startswith(f"{AUXILIARY}['classifier']")):
        leaves.append(leaf)  # another number of classes
        kept.append(where)
      else:
        mismatched.append(f'{where} {None if other is None else tuple(other.shape)} (expected {tuple(leaf.shape)})')
    if not mismatched:
      merged[name] = jax.tree.unflatten(jax.tree.structure(subtree), leaves)
  if mismatched:
    shown = ', '.join(mismatched[:6]) + (f' (and {len(mismatched) - 6} more)' if len(mismatched) > 6 else '')
    raise ValueError(f'init_from={source} does not fit this network (genotype, model.init_channels, model.layers and '
                     f'the image channels must be those of the source): {shown}')
  return merged, kept
