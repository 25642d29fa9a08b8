"""What a network of the CNN search space costs: parameters and multiply-adds, per op and per network, analytically
from shapes; and the expected cost of the supernet's choice under its mixing weights, for the architecture objective.

**Units.** A network is a list of `Unit`s: one op of the search space at its shape (input channels, resolution,
stride), or one of the fixed parts (stems, the cells' input preprocessing, the classifier, the auxiliary head). The
same list gives the parameter count (`unit_cost`), the multiply-adds, and the latency estimate
(`darts_jax.cnn.latency` times each distinct unit once).

**What a multiply-add is** (the convention of the DARTS, NASNet and MnasNet papers, and of thop/ptflops):

* a k×k convolution from C_in to C_out channels in G groups with an H'×W' output: ``H'·W'·k²·(C_in/G)·C_out``,
  taps that read zero padding included. ``count_padding=False`` counts only taps that read the image: that is what
  XLA's cost analysis counts (its ``flops`` of a convolution are 2× this number);
* depthwise (G = C_in = C_out) and pointwise (k = 1) convolutions, the two 1×1 stride-2 convolutions of a factorized
  reduction, the stem convolutions and the 1×7/7×1 pair of ``conv_7x1_1x7`` are all convolutions as above;
* a dense layer from n to m features: ``n·m``;
* **not counted**: batch normalisation, ReLU, pooling (max and average), additions (node sums), identities,
  RobustDARTS's ``noise`` (a draw, no parameters), the supernet's mixing of op outputs by their weights,
  concatenation, global average pooling, biases.

**Parameters** are counted like `networks.count_params` (the original's ``count_parameters_in_MB``): weights, the BN
scale and bias where BN is affine (every BN of an evaluation network; only the stem's in the supernet), the
classifier's bias; BN running statistics are not parameters, and the auxiliary head is left out unless asked for.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax.cnn.genotypes import (EVAL_PRIMITIVES, PRIMITIVES, SEARCH_ONLY_PRIMITIVES, EdgePrimitives, Genotype,
                                     validate_genotype)
from darts_jax.cnn.ops import conv_output_size

NETWORKS = ('cifar', 'imagenet')
METRICS = ('params', 'macs', 'latency')
PENALTY_FORMS = ('linear', 'hinge', 'mnasnet')

# The fixed parts of a network, beside the ops of EVAL_PRIMITIVES.
STEM_CIFAR = 'stem_cifar'            # 3×3 conv in_channels → out_channels, BN
STEM_IMAGENET = 'stem_imagenet'      # the three stride-2 3×3 convs (in → C/2 → C → C), BN after each; out = C
PREPROCESS = 'relu_conv_bn'          # a cell input: ReLU, 1×1 conv in → out, BN
PREPROCESS_REDUCE = 'factorized_reduce'  # a cell's s0 after a reduction: FactorizedReduce in → out, halving H, W
CLASSIFIER = 'classifier'            # global average pooling, dense in → out (classes) with bias
AUXILIARY_CIFAR = 'auxiliary_cifar'  # AuxiliaryHeadCIFAR on an 8×8 map
AUXILIARY_IMAGENET = 'auxiliary_imagenet'  # AuxiliaryHeadImageNet on a 7×7 map
FIXED_UNITS = (STEM_CIFAR, STEM_IMAGENET, PREPROCESS, PREPROCESS_REDUCE, CLASSIFIER, AUXILIARY_CIFAR,
               AUXILIARY_IMAGENET)


@dataclasses.dataclass(frozen=True)
class Unit:
  """One op of a network at its shape: ``op`` (a name of `EVAL_PRIMITIVES`, ``'noise'`` or `FIXED_UNITS`) reading an
  input of ``height × width × in_channels`` with ``stride``, writing ``out_channels``; ``affine``: whether its BNs
  have a learnable scale and shift (evaluation networks; the supernet's cell ops have none)."""
  op: str
  in_channels: int
  out_channels: int
  height: int
  width: int
  stride: int = 1
  affine: bool = True

  @property
  def key(self) -> str:
    """A readable, unique name of the unit (the latency table's key)."""
    return (f'{self.op}/c{self.in_channels}-{self.out_channels}/{self.height}x{self.width}/s{self.stride}'
            + ('' if self.affine else '/noaffine'))


@dataclasses.dataclass(frozen=True)
class Cost:
  """Parameters and multiply-adds."""
  params: int = 0
  macs: int = 0

  def __add__(self, other: Cost) -> Cost:
    return Cost(self.params + other.params, self.macs + other.macs)


def _taps_in_image(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
  """Σ over outputs o and taps t of [tap t of output o reads a pixel of the image, not padding], along one axis."""
  out = conv_output_size(size, kernel, stride, padding, dilation)
  positions = stride * np.arange(out)[:, None] + dilation * np.arange(kernel)[None, :] - padding
  return int(np.sum((positions >= 0) & (positions < size)))


def conv_macs(height: int, width: int, in_channels: int, out_channels: int, kernel: tuple[int, int],
              stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0), dilation: int = 1,
              groups: int = 1, count_padding: bool = True) -> int:
  """Multiply-adds of a convolution of an ``height × width × in_channels`` input (see the module docstring)."""
  per_position = (in_channels // groups) * out_channels
  if count_padding:
    out_h = conv_output_size(height, kernel[0], stride[0], padding[0], dilation)
    out_w = conv_output_size(width, kernel[1], stride[1], padding[1], dilation)
    return out_h * out_w * kernel[0] * kernel[1] * per_position
  return (_taps_in_image(height, kernel[0], stride[0], padding[0], dilation)
          * _taps_in_image(width, kernel[1], stride[1], padding[1], dilation) * per_position)


def _bn(channels: int, affine: bool) -> Cost:
  return Cost(2 * channels if affine else 0, 0)


def _relu_dw_pw_bn(c: int, h: int, w: int, k: int, stride: int, dilation: int, affine: bool,
                   count_padding: bool) -> tuple[Cost, int, int]:
  """ReLU → k×k depthwise (padding dilation·(k-1)/2) → 1×1 → BN, C → C; also returns the output H, W."""
  pad = dilation * (k - 1) // 2
  depthwise = conv_macs(h, w, c, c, (k, k), (stride, stride), (pad, pad), dilation, groups=c,
                        count_padding=count_padding)
  out_h, out_w = (conv_output_size(n, k, stride, pad, dilation) for n in (h, w))
  return Cost(k * k * c + c * c, depthwise + out_h * out_w * c * c) + _bn(c, affine), out_h, out_w


def _factorized_reduce(c_in: int, c_out: int, h: int, w: int, affine: bool) -> Cost:
  # Two 1×1 stride-2 convs to C_out/2 each (the second on the input shifted by a pixel), concatenated, BN.
  out = conv_output_size(h, 1, 2, 0) * conv_output_size(w, 1, 2, 0)
  return Cost(c_in * c_out, out * c_in * c_out) + _bn(c_out, affine)


def _auxiliary(c: int, h: int, w: int, classes: int, pool_stride: int, bn_after_2x2: bool) -> Cost:
  ph, pw = conv_output_size(h, 5, pool_stride, 0), conv_output_size(w, 5, pool_stride, 0)
  conv1 = Cost(c * 128, ph * pw * c * 128) + _bn(128, True)
  conv2 = Cost(4 * 128 * 768, conv_macs(ph, pw, 128, 768, (2, 2))) + _bn(768, bn_after_2x2)
  flat = conv_output_size(ph, 2, 1, 0) * conv_output_size(pw, 2, 1, 0) * 768
  return conv1 + conv2 + Cost(flat * classes + classes, flat * classes)


def unit_cost(unit: Unit, count_padding: bool = True) -> Cost:
  """Parameters and multiply-adds of one `Unit` (conventions in the module docstring)."""
  op, c_in, c, h, w, s, affine = (unit.op, unit.in_channels, unit.out_channels, unit.height, unit.width, unit.stride,
                                  unit.affine)
  conv = lambda *args, **kw: conv_macs(*args, count_padding=count_padding, **kw)
  if op in ('none', 'max_pool_3x3', 'avg_pool_3x3', 'noise'):
    return Cost()
  if op == 'skip_connect':
    return Cost() if s == 1 else _factorized_reduce(c, c, h, w, affine)
  if op in ('sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7'):
    k = int(op[-1])
    first, out_h, out_w = _relu_dw_pw_bn(c, h, w, k, s, 1, affine, count_padding)
    return first + _relu_dw_pw_bn(c, out_h, out_w, k, 1, 1, affine, count_padding)[0]
  if op in ('dil_conv_3x3', 'dil_conv_5x5'):
    return _relu_dw_pw_bn(c, h, w, int(op[-1]), s, 2, affine, count_padding)[0]
  if op == 'conv_7x1_1x7':
    mid_w = conv_output_size(w, 7, s, 3)
    return (Cost(2 * 7 * c * c, conv(h, w, c, c, (1, 7), (1, s), (0, 3)) + conv(h, mid_w, c, c, (7, 1), (s, 1), (3, 0)))
            + _bn(c, affine))
  if op == STEM_CIFAR:
    return Cost(9 * c_in * c, conv(h, w, c_in, c, (3, 3), padding=(1, 1))) + _bn(c, True)
  if op == STEM_IMAGENET:
    total, channels = Cost(), (c_in, c // 2, c, c)
    for a, b in zip(channels, channels[1:]):
      total += Cost(9 * a * b, conv(h, w, a, b, (3, 3), (2, 2), (1, 1))) + _bn(b, True)
      h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)
    return total
  if op == PREPROCESS:
    return Cost(c_in * c, h * w * c_in * c) + _bn(c, affine)
  if op == PREPROCESS_REDUCE:
    return _factorized_reduce(c_in, c, h, w, affine)
  if op == CLASSIFIER:
    return Cost(c_in * c + c, c_in * c)
  if op == AUXILIARY_CIFAR:
    return _auxiliary(c_in, h, w, c, 3, True)
  if op == AUXILIARY_IMAGENET:
    return _auxiliary(c_in, h, w, c, 2, False)
  raise ValueError(f'unknown op {op!r}; expected one of '
                   f'{", ".join(EVAL_PRIMITIVES + SEARCH_ONLY_PRIMITIVES + FIXED_UNITS)}')


def total_cost(units: Iterable[Unit], count_padding: bool = True) -> Cost:
  """The sum of `unit_cost` over `units` (a unit that occurs k times counts k times)."""
  total = Cost()
  for unit in units:
    total += unit_cost(unit, count_padding)
  return total


# ---------------------------------------------------------------------------------------------------------------------
# Networks as lists of units.


@dataclasses.dataclass(frozen=True)
class CellShape:
  """Where a cell sits: its node channels C, whether it reduces, whether the previous one did, the channels of its
  two inputs and the resolution of its inputs (``s1``'s; ``s0`` is twice that after a reduction)."""
  index: int
  channels: int
  reduction: bool
  reduction_prev: bool
  input_channels: tuple[int, int]
  height: int
  width: int


def cell_shapes(C: int, layers: int, stem_channels: tuple[int, int], input_hw: tuple[int, int],
                reduction_prev: bool = False, multiplier: int | Callable[[bool], int] = 4) -> list[CellShape]:
  """The cells of a DARTS network (reductions at ``layers // 3`` and ``2 * layers // 3``, channels doubled there).

  ``input_hw``: the resolution of the first cell's ``s1``; ``multiplier``: states concatenated into a cell's output,
  or a function of ``reduction`` giving it (a genotype's ``len(*_concat)``).
  """
  shapes, (c_pp, c_p), channels, (h, w) = [], stem_channels, C, input_hw
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    channels *= 2 if reduction else 1
    shapes.append(CellShape(i, channels, reduction, reduction_prev, (c_pp, c_p), h, w))
    outputs = multiplier(reduction) if callable(multiplier) else multiplier
    c_pp, c_p, reduction_prev = c_p, outputs * channels, reduction
    if reduction:
      h, w = conv_output_size(h, 1, 2, 0), conv_output_size(w, 1, 2, 0)
  return shapes


def _preprocessing(cell: CellShape, affine: bool) -> list[Unit]:
  c, (c_pp, c_p), h, w = cell.channels, cell.input_channels, cell.height, cell.width
  s0 = (Unit(PREPROCESS_REDUCE, c_pp, c, 2 * h, 2 * w, 2, affine) if cell.reduction_prev
        else Unit(PREPROCESS, c_pp, c, h, w, 1, affine))
  return [s0, Unit(PREPROCESS, c_p, c, h, w, 1, affine)]


def edge_unit(op: str, cell: CellShape, source: int, affine: bool = True) -> Unit:
  """The unit of `op` on the edge from state `source` (0, 1: the cell inputs; 2 + i: node i) of `cell`."""
  stride = 2 if cell.reduction and source < 2 else 1
  h, w = (cell.height, cell.width) if source < 2 or not cell.reduction else (
      conv_output_size(cell.height, 1, 2, 0), conv_output_size(cell.width, 1, 2, 0))
  return Unit(op, cell.channels, cell.channels, h, w, stride, affine)


def _network_frame(network: str, C: int, layers: int, image_hw: tuple[int, int], in_channels: int,
                   stem_multiplier: int) -> tuple[list[Unit], tuple[int, int], tuple[int, int], bool]:
  """The stem units, the stem's output channels for (s0, s1), the first cell's resolution and reduction_prev."""
  h, w = image_hw
  if network == 'cifar':
    stem = stem_multiplier * C
    return [Unit(STEM_CIFAR, in_channels, stem, h, w)], (stem, stem), (h, w), False
  if network == 'imagenet':
    for _ in range(3):
      h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)
    return [Unit(STEM_IMAGENET, in_channels, C, *image_hw)], (C, C), (h, w), True
  raise ValueError(f'unknown network {network!r}; expected one of {", ".join(NETWORKS)}')


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
  return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def network_units(genotype: Genotype, *, network: str = 'cifar', C: int = 36, layers: int = 20,
                  num_classes: int = 10, image_size: int | tuple[int, int] = 32, in_channels: int = 3,
                  auxiliary: bool = False, stem_multiplier: int = 3) -> list[Unit]:
  """The units of `genotype`'s `NetworkCIFAR` (``network='cifar'``) or `NetworkImageNet` (``'imagenet'``), in order:
  stem, per cell its two preprocessings and its ops, the auxiliary head (with `auxiliary`) and the classifier."""
  genotype = validate_genotype(genotype)
  units, stem_channels, input_hw, reduction_prev = _network_frame(network, C, layers, _hw(image_size), in_channels,
                                                                  stem_multiplier)
  concat = lambda reduction: len(genotype.reduce_concat if reduction else genotype.normal_concat)
  cells = cell_shapes(C, layers, stem_channels, input_hw, reduction_prev, concat)
  for cell in cells:
    units += _preprocessing(cell, True)
    units += [edge_unit(op, cell, source) for op, source in (genotype.reduce if cell.reduction else genotype.normal)]
  last = cells[-1]
  final_hw = [conv_output_size(n, 1, 2, 0) if last.reduction else n for n in (last.height, last.width)]
  if auxiliary:
    tap = cells[2 * layers // 3]
    tap_hw = [conv_output_size(n, 1, 2, 0) for n in (tap.height, tap.width)]  # the tapped cell reduces
    units.append(Unit(AUXILIARY_CIFAR if network == 'cifar' else AUXILIARY_IMAGENET,
                      concat(True) * tap.channels, num_classes, *tap_hw))
  units.append(Unit(CLASSIFIER, concat(last.reduction) * last.channels, num_classes, *final_hw))
  return units


def network_cost(genotype: Genotype, count_padding: bool = True, **network: Any) -> Cost:
  """Parameters and multiply-adds of a genotype's network (`network_units`' keyword arguments)."""
  return total_cost(network_units(genotype, **network), count_padding)


def supernet_units(*, C: int = 16, layers: int = 8, num_classes: int = 10, image_size: int | tuple[int, int] = 32,
                   in_channels: int = 3, steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3,
                   primitives: Sequence[str] = PRIMITIVES) -> list[Unit]:
  """The units of the `SearchNetwork`: every primitive on every edge of every cell (cell BNs affine-free)."""
  units, stem_channels, input_hw, _ = _network_frame('cifar', C, layers, _hw(image_size), in_channels,
                                                     stem_multiplier)
  cells = cell_shapes(C, layers, stem_channels, input_hw, False, multiplier)
  for cell in cells:
    units += _preprocessing(cell, False)
    units += [edge_unit(op, cell, source, affine=False)
              for node in range(steps) for source in range(2 + node) for op in primitives]
  last = cells[-1]
  final_hw = [conv_output_size(n, 1, 2, 0) if last.reduction else n for n in (last.height, last.width)]
  units.append(Unit(CLASSIFIER, multiplier * last.channels, num_classes, *final_hw))
  return units


# ---------------------------------------------------------------------------------------------------------------------
# The expected cost of the supernet's choice: the architecture objective's cost term.


@dataclasses.dataclass(frozen=True)
class ArchitectureCost:
  """The cost of every choice of the supernet, per cell type, for `expected_cost`.

  Attributes:
    tables: ``{'normal': (E, K), 'reduce': (E, K)}``: entry (e, k) is op k's cost on edge e summed over the cells of
      that type (the op as an evaluation network builds it, at the cell's channels, resolution and stride).
    keep: (E,): the probability that the derived cell keeps edge e: 2 / (the inputs of e's node), since every node
      keeps two of its inputs.
    fixed: the cost of everything the alphas do not choose (stem, preprocessing, classifier).
  """
  tables: Mapping[str, np.ndarray]
  keep: np.ndarray
  fixed: float


def architecture_cost(unit_value: Callable[[Unit], float], *, C: int, layers: int, num_classes: int = 10,
                      image_size: int | tuple[int, int] = 32, in_channels: int = 3, steps: int = 4,
                      multiplier: int = 4, stem_multiplier: int = 3,
                      primitives: Sequence[str] | EdgePrimitives = PRIMITIVES) -> ArchitectureCost:
  """The `ArchitectureCost` of the CIFAR-style network of `C` channels and `layers` cells (the `SearchNetwork`'s
  layout, and that of the `NetworkCIFAR` it derives), each unit valued by `unit_value` (e.g. ``lambda u:
  unit_cost(u).macs``, or a latency table's lookup). `primitives`: the ops of the alphas' columns, the same on every
  edge or per cell type one sequence per edge (`genotypes.edge_primitives`)."""
  frame, stem_channels, input_hw, _ = _network_frame('cifar', C, layers, _hw(image_size), in_channels,
                                                     stem_multiplier)
  cells = cell_shapes(C, layers, stem_channels, input_hw, False, multiplier)
  edges = [(node, source) for node in range(steps) for source in range(2 + node)]
  if not isinstance(primitives, Mapping):
    primitives = {kind: (tuple(primitives),) * len(edges) for kind in ('normal', 'reduce')}
  tables = {kind: np.zeros((len(edges), len(primitives[kind][0]))) for kind in ('normal', 'reduce')}
  fixed = sum(unit_value(u) for u in frame)
  for cell in cells:
    fixed += sum(unit_value(u) for u in _preprocessing(cell, True))
    kind = 'reduce' if cell.reduction else 'normal'
    table = tables[kind]
    for e, (_, source) in enumerate(edges):
      for k, op in enumerate(primitives[kind][e]):
        table[e, k] += unit_value(edge_unit(op, cell, source))
  last = cells[-1]
  final_hw = [conv_output_size(n, 1, 2, 0) if last.reduction else n for n in (last.height, last.width)]
  fixed += unit_value(Unit(CLASSIFIER, multiplier * last.channels, num_classes, *final_hw))
  keep = np.array([min(1.0, 2 / (2 + node)) for node, _ in edges])
  return ArchitectureCost(tables, keep, float(fixed))


def expected_cost(weights: Mapping[str, Any], arch_cost: ArchitectureCost) -> Any:
  r"""The expected cost of the derived network under the mixing weights ``w`` (per cell type, (E, K), e.g.
  ``softmax(alphas)``):

  .. math:: E[\text{cost}] = \text{fixed} + \sum_{\text{type}} \sum_e \text{keep}_e \sum_k w_{e,k}\,
     \text{cost}_{\text{type}}(e, k)

  Each edge's op is drawn from its weights and each node keeps each input with probability 2/(its inputs).
  Differentiable in ``w``; ``'none'`` costs nothing. JAX arrays in, a JAX scalar out; NumPy in, NumPy out (on the
  host, nothing to compile).
  """
  total = arch_cost.fixed
  for kind, table in arch_cost.tables.items():
    total = total + (weights[kind] * (table * arch_cost.keep[:, None]).astype(np.float32)).sum()
  return total


def cost_penalty(expected: jax.Array, *, target: float, form: str = 'linear', weight: float = 1.0,
                 mnasnet_alpha: float = -0.07, mnasnet_beta: float = -0.07) -> jax.Array:
  r"""The cost term of the architecture loss, of the expected cost ``E`` and a ``target`` in the same unit.

  * ``'linear'``: :math:`\lambda\,E/T`;
  * ``'hinge'``: :math:`\lambda \max(0, E/T - 1)`: free below the target;
  * ``'mnasnet'``: MnasNet's reward :math:`\text{ACC}\cdot(E/T)^{w}` as a loss, :math:`-\lambda\,w \log(E/T)` with
    :math:`w = \alpha` when :math:`E \le T`, else :math:`\beta` (soft constraint: α = β = −0.07; hard: α = 0,
    β = −1); λ = 1 is MnasNet's objective when the loss is −log accuracy.
  """
  ratio = expected / target
  if form == 'linear':
    return weight * ratio
  if form == 'hinge':
    return weight * jnp.maximum(0.0, ratio - 1.0)
  if form == 'mnasnet':
    exponent = jnp.where(ratio <= 1.0, mnasnet_alpha, mnasnet_beta)
    return -weight * exponent * jnp.log(ratio)
  raise ValueError(f'unknown cost penalty form {form!r}; expected one of {", ".join(PENALTY_FORMS)}')


def make_cost_penalty(arch_cost: ArchitectureCost, *, target: float, form: str = 'linear', weight: float = 1.0,
                      mnasnet_alpha: float = -0.07, mnasnet_beta: float = -0.07
                      ) -> Callable[[Mapping[str, jax.Array]], jax.Array]:
  """``penalty(weights)``: `cost_penalty` of the `expected_cost` under the supernet's mixing weights (``softmax(α)``
  for DARTS, the relaxation's sample for the others); pure and differentiable, to add to the validation loss."""
  if not target > 0 or not math.isfinite(target):
    raise ValueError(f'the cost target must be positive, got {target}')
  if form not in PENALTY_FORMS:
    raise ValueError(f'unknown cost penalty form {form!r}; expected one of {", ".join(PENALTY_FORMS)}')

  def penalty(weights: Mapping[str, jax.Array]) -> jax.Array:
    return cost_penalty(expected_cost(weights, arch_cost), target=target, form=form, weight=weight,
                        mnasnet_alpha=mnasnet_alpha, mnasnet_beta=mnasnet_beta)

  return penalty


def mnasnet_score(accuracy: float, cost: float, target: float, alpha: float = -0.07, beta: float = -0.07) -> float:
  """MnasNet's reward ``accuracy · (cost / target)^w``, ``w = alpha`` if ``cost <= target`` else ``beta``."""
  return accuracy * (cost / target) ** (alpha if cost <= target else beta)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
  """For (accuracy, cost) pairs: whether each is on the Pareto front (no other point has accuracy ≥ and cost ≤,
  one of them strictly)."""
  return [not any(a2 >= a and c2 <= c and (a2 > a or c2 < c) for a2, c2 in points) for a, c in points]
