"""Weights of the original DARTS PyTorch code (quark0/darts) to this project's networks, and back.

    variables = from_torch_state_dict(load_torch_checkpoint('cifar10_model.pt'), genotype='DARTS_V2')
    net = NetworkCIFAR(DARTS_V2, C=36, num_classes=10, layers=20, auxiliary=True)   # or network_for(...)
    logits, _ = net.apply(variables, images_nhwc, train=False)

**Formats read.** ``utils.save`` of ``train.py`` writes a bare ``state_dict`` (the CIFAR checkpoints, e.g.
``cifar10_model.pt``); ``train_imagenet.py`` writes ``{'state_dict': ..., 'epoch': ..., 'optimizer': ...}`` of an
``nn.DataParallel`` model, whose keys start with ``module.`` (``imagenet_model.pt``). `unwrap_state_dict` accepts
both. Keys follow the module structure of ``model.py`` and ``operations.py``: ``stem.0.weight``,
``cells.3.preprocess0.op.1.weight``, ``cells.3._ops.0.op.1.weight`` (op 0 of cell 3, here its depthwise conv),
``auxiliary_head.features.2.weight``, ``classifier.weight``; BN layers add ``weight``, ``bias``, ``running_mean``,
``running_var`` and, since PyTorch 0.4.1, ``num_batches_tracked`` (read and dropped: with momentum 0.1 it has no
effect). The search network (``model_search.Network``) has ``cells.i._ops.e._ops.k`` for op ``k`` of `PRIMITIVES`
on edge ``e``; its alphas are plain attributes, not in its ``state_dict``: pass them as the extra entries
``alphas_normal`` and ``alphas_reduce`` (or as ``alphas``).

**Layouts.** PyTorch convolutions are (O, I, kh, kw) on NCHW inputs; this project's are (kh, kw, I, O) on NHWC
(depthwise (kh, kw, 1, C), 1×1 convs as (I, O) matrices, `FactorizedReduce` halves as (1, I, O/2)), dense layers
(I, O) against PyTorch's (O, I). Channel orders are the same (concatenations are along channels in both), so the
networks compute the same function up to float rounding. Consecutive identical cells of this project's networks are
stacked along a leading axis (``cells/cells_{first}_{last}``, see `darts_jax.cnn.networks`); the search network's
per-node edge groups stack their edges (`darts_jax.cnn.supernet.MixedEdges`), and its pools' affine-free BN
statistics, identical on every edge leaving a node in the original, are read as their mean.

**Strictness.** Every tensor must be consumed and every variable filled; otherwise a `ValueError` lists the missing
and unexpected keys and each shape mismatch (key, checkpoint shape, expected shape, in PyTorch's layout).

Reading ``.pt`` files needs PyTorch (``pip install 'darts-jax[torch]'``); it is imported only by
`load_torch_checkpoint` and `save_torch_state_dict`. Arrays in a state dict may be NumPy arrays or CPU tensors.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax.cnn import genotype_formats, genotypes, networks
from darts_jax.cnn.genotypes import PRIMITIVES, Genotype
from darts_jax.cnn.supernet import SearchNetwork, edge_index

StateDict = Mapping[str, Any]
Variables = dict[str, Any]
NETWORKS = ('cifar', 'imagenet')
TORCH_MISSING = "reading or writing PyTorch checkpoints needs PyTorch: pip install 'darts-jax[torch]'"

# ---------------------------------------------------------------------------------------------------------------------
# Reading and writing .pt files.


def _torch() -> Any:
  try:
    return importlib.import_module('torch')
  except ImportError:
    raise ImportError(TORCH_MISSING) from None


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The state dict in a checkpoint as NumPy arrays: ``checkpoint['state_dict']`` if present (``train_imagenet.py``'s
  format), else the mapping itself; a ``module.`` prefix (``nn.DataParallel``) is removed from every key."""
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f'a checkpoint must be a state dict (a mapping of names to tensors), got '
                     f'{type(checkpoint).__name__}')
  state_dict = checkpoint.get('state_dict', checkpoint)
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"the checkpoint's 'state_dict' entry is a {type(state_dict).__name__}, not a mapping")
  out = {}
  for key, value in state_dict.items():
    if not hasattr(value, 'shape'):
      raise ValueError(f'entry {key!r} of the state dict is a {type(value).__name__}, not a tensor or an array; '
                       "is this a training checkpoint without 'state_dict'?")
    out[key.removeprefix('module.')] = np.asarray(value.detach().cpu() if hasattr(value, 'detach') else value)
  return out


def load_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Reads a ``.pt`` checkpoint of the original code (either format, see the module docstring) as NumPy arrays.

  Loaded with ``weights_only=True``: tensors and plain containers only, no code from the file runs.

  Raises:
    ImportError: PyTorch is not installed (the message says how to install it).
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not a PyTorch checkpoint holding a state dict.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist (expected a PyTorch checkpoint, e.g. cifar10_model.pt)')
  torch = _torch()
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError, pickle errors, zipfile errors... for a file that is not one
    raise ValueError(f'{path} is not a readable PyTorch checkpoint: {str(e).splitlines()[0]}') from None
  try:
    return unwrap_state_dict(checkpoint)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> None:
  """Writes `state_dict` (e.g. from `to_torch_state_dict`) as a ``.pt`` file of tensors, as ``utils.save`` does."""
  torch = _torch()
  # Writable copies: torch warns on read-only buffers (arrays read back from jax are read-only).
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, os.fspath(path))


# ---------------------------------------------------------------------------------------------------------------------
# Tensor layouts: PyTorch -> this project (forward) and back (inverse), by kind of tensor.

_LAYOUTS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    'vector': (lambda w: w, lambda w: w),
    'conv': (lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1)),  # OIHW <-> HWIO
    'conv1x1': (lambda w: w[:, :, 0, 0].T, lambda w: w.T[:, :, None, None]),  # (O, I, 1, 1) <-> (I, O)
    'half1x1': (lambda w: w[:, :, 0, 0].T[None], lambda w: w[0].T[:, :, None, None]),  # FactorizedReduce halves
    'depthwise': (lambda w: w[:, 0].transpose(1, 2, 0), lambda w: w.transpose(2, 0, 1)[:, None]),  # (C,1,k,k)<->(k,k,C)
    'dense': (lambda w: w.T, lambda w: w.T),
}


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One tensor of the state dict: where it lands (a path into the variables, None for a dropped counter), how its
  layout changes, and at which leading index of a stacked target. Entries sharing a target element are averaged."""
  key: str
  path: tuple[str, ...] | None
  layout: str = 'vector'
  index: tuple[int, ...] = ()
  optional: bool = False


def _bn(key: str, path: tuple[str, ...], affine: bool = True, index: tuple[int, ...] = ()) -> Iterator[_Entry]:
  """A ``BatchNorm2d`` at `key` (ends with '.') as this project's `BatchNorm` at `path`."""
  yield _Entry(key + 'running_mean', ('batch_stats',) + path + ('mean',), index=index)
  yield _Entry(key + 'running_var', ('batch_stats',) + path + ('var',), index=index)
  yield _Entry(key + 'num_batches_tracked', None, optional=True)
  if affine:
    yield _Entry(key + 'weight', ('params',) + path + ('scale',), index=index)
    yield _Entry(key + 'bias', ('params',) + path + ('bias',), index=index)


def _param(key: str, path: tuple[str, ...], layout: str = 'vector', index: tuple[int, ...] = ()) -> _Entry:
  return _Entry(key, ('params',) + path, layout, index)


def _relu_conv_bn(key: str, path: tuple[str, ...], affine: bool = True) -> Iterator[_Entry]:
  """``ReLUConvBN(C_in, C_out, 1, 1, 0)``: ``op.1`` conv, ``op.2`` BN."""
  yield _param(key + 'op.1.weight', path + ('kernel',), 'conv1x1')
  yield from _bn(key + 'op.2.', path + ('BatchNorm_0',), affine)


def _factorized_reduce(key: str, path: tuple[str, ...], affine: bool = True) -> Iterator[_Entry]:
  """``FactorizedReduce``: ``conv_1``, ``conv_2`` (the shifted half), ``bn``."""
  yield _param(key + 'conv_1.weight', path + ('kernel1',), 'half1x1')
  yield _param(key + 'conv_2.weight', path + ('kernel2',), 'half1x1')
  yield from _bn(key + 'bn.', path + ('BatchNorm_0',), affine)


def _eval_op(name: str, stride: int, key: str, path: tuple[str, ...]) -> Iterator[_Entry]:
  """``OPS[name](C, stride, affine=True)`` of ``operations.py`` as `networks.make_op`'s module."""
  units = {'sep': (('unit1', 1), ('unit2', 5)), 'dil': (('unit', 1),)}.get(name[:3], ())
  for unit, first in units:  # ReLU, depthwise conv, 1x1 conv, BN; twice for sep convs (op.1-3, op.5-7)
    yield _param(f'{key}op.{first}.weight', path + (unit, 'depthwise'), 'conv')
    yield _param(f'{key}op.{first + 1}.weight', path + (unit, 'pointwise'), 'conv1x1')
    yield from _bn(f'{key}op.{first + 2}.', path + (unit, 'BatchNorm_0'))
  if name == 'conv_7x1_1x7':  # nn.Sequential(ReLU, 1x7 conv, 7x1 conv, BN)
    yield _param(key + '1.weight', path + ('conv_1x7', 'kernel'), 'conv')
    yield _param(key + '2.weight', path + ('conv_7x1', 'kernel'), 'conv')
    yield from _bn(key + '3.', path + ('BatchNorm_0',))
  if name == 'skip_connect' and stride == 2:
    yield from _factorized_reduce(key, path)


def _eval_network_entries(genotype: Genotype, layers: int, auxiliary: bool, network: str) -> Iterator[_Entry]:
  """Every tensor of ``model.NetworkCIFAR`` / ``model.NetworkImageNet``, with cells unrolled (``cells/cell_i``)."""
  if network == 'cifar':
    yield _param('stem.0.weight', ('stem_conv', 'kernel'), 'conv')
    yield from _bn('stem.1.', ('stem_bn',))
  else:
    yield _param('stem0.0.weight', ('stem0_conv1', 'kernel'), 'conv')
    yield from _bn('stem0.1.', ('stem0_bn1',))
    yield _param('stem0.3.weight', ('stem0_conv2', 'kernel'), 'conv')
    yield from _bn('stem0.4.', ('stem0_bn2',))
    yield _param('stem1.1.weight', ('stem1_conv', 'kernel'), 'conv')
    yield from _bn('stem1.2.', ('stem1_bn',))
  reduction_prev = network == 'imagenet'
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    key, path = f'cells.{i}.', ('cells', f'cell_{i}')
    preprocess0 = _factorized_reduce if reduction_prev else _relu_conv_bn
    yield from preprocess0(key + 'preprocess0.', path + ('preprocess0',))
    yield from _relu_conv_bn(key + 'preprocess1.', path + ('preprocess1',))
    for k, (name, index) in enumerate(genotype.reduce if reduction else genotype.normal):
      yield from _eval_op(name, 2 if reduction and index < 2 else 1, f'{key}_ops.{k}.', path + (f'op{k}',))
    reduction_prev = reduction
  if auxiliary:  # features: ReLU, AvgPool, conv 1x1, BN, ReLU, conv 2x2, [BN (CIFAR only)], ReLU
    head = (networks.AUXILIARY,)
    yield _param('auxiliary_head.features.2.weight', head + ('Conv_0', 'kernel'), 'conv')
    yield from _bn('auxiliary_head.features.3.', head + ('BatchNorm_0',))
    yield _param('auxiliary_head.features.5.weight', head + ('Conv_1', 'kernel'), 'conv')
    if network == 'cifar':
      yield from _bn('auxiliary_head.features.6.', head + ('BatchNorm_1',))
    yield _param('auxiliary_head.classifier.weight', head + ('classifier', 'kernel'), 'dense')
    yield _param('auxiliary_head.classifier.bias', head + ('classifier', 'bias'))
  yield _param('classifier.weight', ('classifier', 'kernel'), 'dense')
  yield _param('classifier.bias', ('classifier', 'bias'))


# The search network's parametric ops (PRIMITIVES order), as `MixedEdges` stacks them: name -> position in the
# stacked stage-1 BN (all four) and stage-2 BN (separable convs only).
_STAGE1 = ('sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
_STAGE2 = ('sep_conv_3x3', 'sep_conv_5x5')


def _search_network_entries(layers: int, steps: int) -> Iterator[_Entry]:
  """Every tensor of ``model_search.Network`` (alphas excepted) as `SearchNetwork` variables."""
  yield _param('stem.0.weight', ('stem_conv', 'kernel'), 'conv')
  yield from _bn('stem.1.', ('stem_bn',))
  reduction_prev = False
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    key, path = f'cells.{i}.', (f'cell_{i}',)
    preprocess0 = _factorized_reduce if reduction_prev else _relu_conv_bn
    yield from preprocess0(key + 'preprocess0.', path + ('preprocess0',), affine=False)
    yield from _relu_conv_bn(key + 'preprocess1.', path + ('preprocess1',), affine=False)
    for source in range(steps + 1):
      group = path + (f'edges_from_{source}',)
      targets = range(max(0, source - 1), steps)
      for e, node in enumerate(targets):
        stride = 2 if reduction and source < 2 else 1
        for k, name in enumerate(PRIMITIVES):
          op = f'{key}_ops.{edge_index(node, source)}._ops.{k}.'
          if name in ('max_pool_3x3', 'avg_pool_3x3'):  # nn.Sequential(pool, BN(affine=False)); shared by the edges
            yield from _bn(op + '1.', group + ('pool_bn',), affine=False, index=(k - 1,))
          elif name == 'skip_connect' and stride == 2:
            yield _param(op + 'conv_1.weight', group + ('skip_conv1',), 'conv1x1', (e,))
            yield _param(op + 'conv_2.weight', group + ('skip_conv2',), 'conv1x1', (e,))
            yield from _bn(op + 'bn.', group + ('skip_bn',), affine=False, index=(e,))
          elif name in _STAGE1:
            yield _param(op + 'op.1.weight', group + (f'{name}_depthwise1',), 'depthwise', (e,))
            yield _param(op + 'op.2.weight', group + (f'{name}_pointwise1',), 'conv1x1', (e,))
            yield from _bn(op + 'op.3.', group + ('stage1_bn',), affine=False,
                           index=(_STAGE1.index(name) * len(targets) + e,))
            if name in _STAGE2:
              yield _param(op + 'op.5.weight', group + (f'{name}_depthwise2',), 'depthwise', (e,))
              yield _param(op + 'op.6.weight', group + (f'{name}_pointwise2',), 'conv1x1', (e,))
              yield from _bn(op + 'op.7.', group + ('stage2_bn',), affine=False,
                             index=(_STAGE2.index(name) * len(targets) + e,))
    reduction_prev = reduction
  yield _param('classifier.weight', ('classifier', 'kernel'), 'dense')
  yield _param('classifier.bias', ('classifier', 'bias'))


# ---------------------------------------------------------------------------------------------------------------------
# Filling variables from entries, and back.


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, prefix + (name,)))
    else:
      out[prefix + (name,)] = value
  return out


def _nested(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return out


def _listing(items: list[str], limit: int = 6) -> str:
  more = f' (and {len(items) - limit} more)' if len(items) > limit else ''
  return ', '.join(items[:limit]) + more


def _fill(entries: list[_Entry], state_dict: Mapping[str, np.ndarray], target: Mapping[str, Any],
          what: str) -> Variables:
  """Variables of the shapes of `target` filled from `state_dict` by `entries`; a `ValueError` names every key that
  is missing, unexpected or of the wrong shape, and every variable left unfilled."""
  shapes = {path: tuple(leaf.shape) for path, leaf in _flat(target).items()}
  sums = {path: np.zeros(shape, np.float64) for path, shape in shapes.items()}
  counts = {path: np.zeros(shape, np.int32) for path, shape in shapes.items()}
  known = {e.key for e in entries}
  missing, mismatched = [], []
  unexpected = [f'{k} {tuple(v.shape)}' for k, v in state_dict.items() if k not in known]
  for e in entries:
    if e.key not in state_dict:
      if not e.optional:
        missing.append(e.key)
      continue
    if e.path is None:
      continue
    value = np.asarray(state_dict[e.key])
    forward, inverse = _LAYOUTS[e.layout]
    expected = inverse(np.empty(shapes[e.path][len(e.index):], np.float32)).shape
    if value.shape != expected:
      mismatched.append(f'{e.key} {tuple(value.shape)} (expected {expected})')
      continue
    sums[e.path][e.index] += forward(value)
    counts[e.path][e.index] += 1
  problems = [f'{name}: {_listing(items)}' for name, items in
              (('shape mismatches', mismatched), ('missing keys', missing), ('unexpected keys', unexpected)) if items]
  if problems:
    raise ValueError(f'the state dict does not fit {what}: ' + '; '.join(problems))
  unfilled = ['/'.join(path) for path, count in counts.items() if not count.all()]
  if unfilled:  # a layout this module does not know (e.g. a changed network): never hand out zeros
    raise ValueError(f'the state dict leaves variables of {what} unfilled: {_listing(unfilled)}')
  return _nested({path: jnp.asarray((sums[path] / counts[path]).astype(np.float32)) for path in shapes})


def _unfill(entries: list[_Entry], variables: Mapping[str, Any], num_batches_tracked: bool) -> dict[str, np.ndarray]:
  flat = {path: np.asarray(value, np.float32) for path, value in _flat(variables).items()}
  used = {e.path for e in entries}
  unused = ['/'.join(p) for p in flat if p not in used]
  if unused:
    raise ValueError(f'variables without a PyTorch counterpart: {_listing(unused)}; are they of this network?')
  out = {}
  for e in entries:
    if e.path is None:
      if num_batches_tracked:
        out[e.key] = np.zeros((), np.int64)
      continue
    if e.path not in flat:
      raise ValueError(f'the variables have no {"/".join(e.path)} (for {e.key}); are they of this network?')
    out[e.key] = np.ascontiguousarray(_LAYOUTS[e.layout][1](flat[e.path][e.index]))
  return out


# ---------------------------------------------------------------------------------------------------------------------
# Scanned cells: this project's networks stack runs of identical cells (cells/cells_{first}_{last}).

_RUN = re.compile(r'cells_(\d+)_(\d+)$')


def _stack_runs(variables: Variables, runs: list[tuple[int, int]]) -> Variables:
  out = {}
  for collection, tree in variables.items():
    cells = dict(tree.get('cells', {}))
    for first, last in runs:
      group = [cells.pop(f'cell_{i}') for i in range(first, last + 1)]
      cells[f'cells_{first}_{last}'] = jax.tree.map(lambda *xs: jnp.stack(xs), *group)
    out[collection] = {**tree, 'cells': cells} if 'cells' in tree else tree
  return out


def _unstack_runs(variables: Mapping[str, Any]) -> Variables:
  out = {}
  for collection, tree in variables.items():
    if 'cells' not in tree:
      out[collection] = dict(tree)
      continue
    cells = {}
    for name, cell in tree['cells'].items():
      match = _RUN.match(name)
      if not match:
        cells[name] = cell
        continue
      first, last = int(match.group(1)), int(match.group(2))
      for i in range(first, last + 1):
        cells[f'cell_{i}'] = jax.tree.map(lambda x, i=i: x[i - first], cell)
    out[collection] = {**tree, 'cells': cells}
  return out


# ---------------------------------------------------------------------------------------------------------------------
# The public API.


def _genotype(genotype: Genotype | str) -> Genotype:
  if isinstance(genotype, str):
    return genotype_formats.parse_genotype(genotype)
  return genotypes.validate_genotype(genotype)


def infer_architecture(state_dict: StateDict) -> dict[str, Any]:
  """What the tensor shapes of an evaluation network's state dict determine: ``network`` (``'cifar'`` or
  ``'imagenet'``, from the stem's keys), ``C`` (the stem's output channels / 3 for CIFAR, ``stem0``'s second conv's
  for ImageNet), ``layers`` (cells), ``num_classes`` (classifier rows), ``auxiliary`` (an ``auxiliary_head.*`` key)
  and ``in_channels``. The genotype is not determined by the shapes: it must be given."""
  if 'stem.0.weight' in state_dict:
    network, stem = 'cifar', state_dict['stem.0.weight']
    C = stem.shape[0] // 3
  elif 'stem0.0.weight' in state_dict and 'stem0.3.weight' in state_dict:
    network, stem = 'imagenet', state_dict['stem0.0.weight']
    C = state_dict['stem0.3.weight'].shape[0]
  else:
    raise ValueError(f'not a DARTS network state dict: no stem.0.weight (NetworkCIFAR) nor stem0.0.weight '
                     f'(NetworkImageNet) among its keys ({_listing(sorted(state_dict), 4)})')
  cells = {int(m.group(1)) for k in state_dict if (m := re.match(r'cells\.(\d+)\.', k))}
  if 'classifier.weight' not in state_dict or not cells:
    raise ValueError('not a DARTS network state dict: it has no classifier.weight or no cells.*')
  return dict(network=network, C=int(C), layers=max(cells) + 1,
              num_classes=int(state_dict['classifier.weight'].shape[0]),
              auxiliary=any(k.startswith('auxiliary_head.') for k in state_dict), in_channels=int(stem.shape[1]))


def network_for(genotype: Genotype | str, *, C: int, num_classes: int, layers: int, auxiliary: bool,
                network: str = 'cifar', **kwargs: Any) -> networks.NetworkCIFAR | networks.NetworkImageNet:
  """The Flax module of the original's ``NetworkCIFAR``/``NetworkImageNet(C, num_classes, layers, auxiliary,
  genotype)``; `kwargs` go to the module (``scan``, ``depthwise_impl``, ``axis_name``)."""
  if network not in NETWORKS:
    raise ValueError(f'network must be one of {", ".join(NETWORKS)}, got {network!r}')
  cls = networks.NetworkCIFAR if network == 'cifar' else networks.NetworkImageNet
  return cls(_genotype(genotype), C=C, num_classes=num_classes, layers=layers, auxiliary=auxiliary, **kwargs)


def _abstract_variables(net: Any, in_channels: int, network: str) -> Variables:
  # Shapes only (no compilation); CIFAR's auxiliary head needs 32x32 inputs, ImageNet's 224x224.
  size = 32 if network == 'cifar' else 224
  x = jnp.zeros((1, size, size, in_channels))
  return jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))


def _describe(network: str, C: int, num_classes: int, layers: int, auxiliary: bool) -> str:
  name = 'NetworkCIFAR' if network == 'cifar' else 'NetworkImageNet'
  return f'{name}(C={C}, num_classes={num_classes}, layers={layers}, auxiliary={auxiliary}) of the given genotype'


def from_torch_state_dict(state_dict: StateDict, *, genotype: Genotype | str, C: int | None = None,
                          num_classes: int | None = None, layers: int | None = None, auxiliary: bool | None = None,
                          network: str | None = None, scan: bool = True) -> Variables:
  """``{'params', 'batch_stats'}`` of `network_for` (same arguments) from the original's ``NetworkCIFAR`` or
  ``NetworkImageNet`` state dict.

  Args:
    state_dict: names to arrays or tensors; a whole ImageNet checkpoint (``{'state_dict': ...}``, ``module.``
      prefixes) is accepted too.
    genotype: the network's genotype (a `Genotype` or anything `parse_genotype` reads, e.g. ``'DARTS_V2'``).
    C, num_classes, layers, auxiliary, network: the architecture; each one left None is read from the tensor shapes
      (`infer_architecture`). Given, they must match the tensors.
    scan: the layout of the target network (``scan=False`` for a network built with ``scan=False``).

  Raises:
    ValueError: naming the missing, unexpected and mis-shaped keys, or a malformed genotype.
  """
  state_dict = unwrap_state_dict(state_dict)
  found = infer_architecture(state_dict)
  given = dict(network=network, C=C, num_classes=num_classes, layers=layers, auxiliary=auxiliary)
  arch = {k: found[k] if v is None else v for k, v in given.items()}
  genotype = _genotype(genotype)
  what = _describe(**arch)
  unrolled = network_for(genotype, **arch, scan=False)
  entries = list(_eval_network_entries(genotype, arch['layers'], arch['auxiliary'], arch['network']))
  variables = _fill(entries, state_dict, _abstract_variables(unrolled, found['in_channels'], arch['network']), what)
  if not scan:
    return variables
  # The runs `networks.CellStack` scans (the modules' default stem: 3C channels for CIFAR, C for ImageNet).
  C, layers = arch['C'], arch['layers']
  stem = (3 * C, 3 * C) if arch['network'] == 'cifar' else (C, C)
  specs = networks.cell_specs(genotype, C, layers, stem, reduction_prev=arch['network'] == 'imagenet')
  return _stack_runs(variables, [run for run in networks.cell_runs(specs, 2 * layers // 3) if run[0] != run[1]])


def to_torch_state_dict(variables: Mapping[str, Any], *, genotype: Genotype | str, layers: int, auxiliary: bool,
                        network: str = 'cifar', num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
  """The original's state dict (NumPy arrays) of this project's ``NetworkCIFAR``/``NetworkImageNet`` variables: the
  inverse of `from_torch_state_dict`, so ``model.load_state_dict({k: torch.from_numpy(v) ...})`` of the original's
  module of the same architecture loads a network trained here (scanned or not). With `num_batches_tracked` each BN
  gets a zero ``num_batches_tracked`` (PyTorch >= 0.4.1 expects the key; with momentum it has no effect)."""
  if network not in NETWORKS:
    raise ValueError(f'network must be one of {", ".join(NETWORKS)}, got {network!r}')
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
  entries = list(_eval_network_entries(_genotype(genotype), layers, auxiliary, network))
  return _unfill(entries, _unstack_runs(variables), num_batches_tracked)


def search_from_torch_state_dict(state_dict: StateDict, *, alphas: Mapping[str, Any] | None = None,
                                 steps: int = 4, multiplier: int = 4) -> tuple[Variables, dict[str, jax.Array] | None]:
  """`SearchNetwork` variables and alphas from the original's search network (``model_search.Network``).

  C, layers and num_classes are read from the shapes (build the module as ``SearchNetwork(C, num_classes, layers,
  steps, multiplier)``, the original's ``Network`` arguments); alphas come from `alphas` (``{'normal', 'reduce'}``)
  or the state dict's ``alphas_normal`` and ``alphas_reduce`` entries, else None. The stacked BN statistics of a
  node's pools are the mean over its edges.

  Returns:
    ``({'params', 'batch_stats'}, {'normal': (E, 8), 'reduce': (E, 8)} or None)``.
  """
  state_dict = dict(unwrap_state_dict(state_dict))
  found_alphas = {kind: state_dict.pop(f'alphas_{kind}') for kind in ('normal', 'reduce')
                  if f'alphas_{kind}' in state_dict}
  if alphas is None and found_alphas:
    if len(found_alphas) != 2:
      raise ValueError('the state dict has only one of alphas_normal and alphas_reduce')
    alphas = found_alphas
  if 'stem.0.weight' not in state_dict or 'classifier.weight' not in state_dict:
    raise ValueError('not a DARTS search network state dict: no stem.0.weight or classifier.weight')
  C = state_dict['stem.0.weight'].shape[0] // 3
  layers = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r'cells\.(\d+)\.', k)))
  num_classes = state_dict['classifier.weight'].shape[0]
  net = SearchNetwork(C=C, num_classes=num_classes, layers=layers, steps=steps, multiplier=multiplier)
  out_alphas = None
  if alphas is not None:
    out_alphas = {kind: jnp.asarray(np.asarray(alphas[kind]), jnp.float32) for kind in ('normal', 'reduce')}
  shape_alphas = out_alphas or {kind: jnp.zeros((sum(2 + i for i in range(steps)), len(PRIMITIVES)))
                                for kind in ('normal', 'reduce')}
  in_channels = state_dict['stem.0.weight'].shape[1]
  x = jnp.zeros((1, 32, 32, in_channels))
  target = jax.eval_shape(lambda: net.init(jax.random.key(0), x, shape_alphas, train=False))
  what = f'SearchNetwork(C={C}, num_classes={num_classes}, layers={layers}, steps={steps}, multiplier={multiplier})'
  return _fill(list(_search_network_entries(layers, steps)), state_dict, target, what), out_alphas


def search_to_torch_state_dict(variables: Mapping[str, Any], alphas: Mapping[str, Any] | None = None, *, layers: int,
                               steps: int = 4, num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
  """The inverse of `search_from_torch_state_dict`: the original's search network state dict, with ``alphas_normal``
  and ``alphas_reduce`` entries when `alphas` is given (set them as the module's attributes: they are not part of its
  ``state_dict``). Each edge's pool BN statistics get the node's shared value."""
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
  out = _unfill(list(_search_network_entries(layers, steps)), variables, num_batches_tracked)
  if alphas is not None:
    out.update({f'alphas_{kind}': np.asarray(alphas[kind], np.float32) for kind in ('normal', 'reduce')})
  return out
