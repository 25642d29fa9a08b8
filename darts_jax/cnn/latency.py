"""Measured latency of a network's units on the current backend, cached as a JSON lookup table, and the network's
latency estimated from it.

A `LatencyTable` times every distinct `cost.Unit` (an op at its channels, resolution and stride, or a fixed part:
stem, preprocessing, classifier) once, as its own jitted function in evaluation mode at batch 1: compiled, warmed
up, then the median of `repeats` timed calls. Entries are kept in a JSON file per device kind and jax version, so a
table is measured once per machine and reused by the CLI and by searches with a latency cost.

**The estimate** of a network is ``dispatch + Σ_units max(0, t_unit - dispatch)``: every unit timed alone pays the
fixed cost of launching a compiled program (``dispatch``, timed as a jitted function that does nothing), which the
whole network pays once. What it leaves out — the node additions and concatenations of the cells, the fusion of
neighbouring ops into one kernel, cache effects between them — is the estimate's error against
`measure_network_latency`, the whole network's compiled forward pass timed the same way (README: how far off it is).
"""
from __future__ import annotations

import json
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from darts_jax.cnn import cost
from darts_jax.cnn.genotypes import EVAL_PRIMITIVES, SEARCH_ONLY_PRIMITIVES, Genotype
from darts_jax.cnn.networks import (AuxiliaryHeadCIFAR, AuxiliaryHeadImageNet, NetworkCIFAR, NetworkImageNet, eval_rngs,
                                    make_op)
from darts_jax.cnn.ops import BatchNorm, FactorizedReduce, ReLUConvBN, resolve_depthwise_impl, torch_default_init

DISPATCH = 'dispatch'
"""The table's entry for launching a compiled program that does nothing."""


def default_cache_dir() -> Path:
  """``$DARTS_JAX_CACHE/latency``, else ``~/.cache/darts_jax/latency``."""
  root = os.environ.get('DARTS_JAX_CACHE') or os.path.join('~', '.cache', 'darts_jax')
  return Path(os.path.expanduser(root)) / 'latency'


def device_description() -> tuple[str, str]:
  """(device kind, backend) of the default device, e.g. ('NVIDIA H100 80GB HBM3', 'gpu')."""
  return jax.devices()[0].device_kind, jax.default_backend()


def table_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
  """The JSON file of this device kind and jax version in `cache_dir` (default `default_cache_dir`)."""
  kind, backend = device_description()
  slug = re.sub(r'[^A-Za-z0-9.]+', '-', f'{backend}-{kind}').strip('-').lower()
  return Path(cache_dir or default_cache_dir()) / f'latency_{slug}_jax{jax.__version__}.json'


class _UnitModule(nn.Module):
  """One `cost.Unit` as the evaluation networks build it, in evaluation mode."""
  unit: cost.Unit
  depthwise_impl: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    u = self.unit
    if u.op in EVAL_PRIMITIVES + SEARCH_ONLY_PRIMITIVES:  # RobustDARTS's noise: timed drawing its noise
      return make_op(u.op, u.out_channels, u.stride, self.depthwise_impl)(x, False)
    if u.op == cost.PREPROCESS:
      return ReLUConvBN(u.out_channels, affine=True)(x, False)
    if u.op == cost.PREPROCESS_REDUCE:
      return FactorizedReduce(u.out_channels, affine=True)(x, False)
    conv = lambda features, stride: nn.Conv(features, (3, 3), stride, [(1, 1)] * 2, use_bias=False,
                                             kernel_init=torch_default_init)
    if u.op == cost.STEM_CIFAR:
      return BatchNorm(affine=True)(conv(u.out_channels, 1)(x), False)
    if u.op == cost.STEM_IMAGENET:
      c = u.out_channels
      x = jax.nn.relu(BatchNorm(affine=True)(conv(c // 2, 2)(x), False))
      x = BatchNorm(affine=True)(conv(c, 2)(x), False)
      return BatchNorm(affine=True)(conv(c, 2)(jax.nn.relu(x)), False)
    if u.op == cost.CLASSIFIER:
      return nn.Dense(u.out_channels)(jnp.mean(x, axis=(1, 2)))
    if u.op in (cost.AUXILIARY_CIFAR, cost.AUXILIARY_IMAGENET):
      head = AuxiliaryHeadCIFAR if u.op == cost.AUXILIARY_CIFAR else AuxiliaryHeadImageNet
      return head(u.out_channels)(x, False)
    raise ValueError(f'unknown op {u.op!r}')


def _time_ms(fn: Callable[..., Any], args: tuple, repeats: int, warmup: int) -> float:
  """Median wall time of ``fn(*args)`` over `repeats` calls after `warmup` (the first compiles), in ms."""
  for _ in range(max(1, warmup)):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def _filled(shapes: Any) -> Any:
  # Values do not change the time (no data-dependent control flow); 0.1 keeps BN's variance positive.
  return jax.tree.map(lambda s: jnp.full(s.shape, 0.1, s.dtype), shapes)


def _apply_timing(module: nn.Module, x_shape: tuple[int, ...], repeats: int, warmup: int, **call_kw: Any) -> float:
  x = jnp.full(x_shape, 0.5, jnp.float32)
  variables = _filled(jax.eval_shape(lambda: module.init(jax.random.key(0), x, **call_kw)))
  return _time_ms(jax.jit(lambda v, x: module.apply(v, x, rngs=eval_rngs(), **call_kw)), (variables, x), repeats,
                  warmup)


class LatencyTable:
  """Latencies (ms) of units on this device at a batch size, measured on first use and cached in a JSON file.

  Usage::

    table = LatencyTable()                       # ~/.cache/darts_jax/latency/latency_<device>_jax<version>.json
    ms = table.lookup(unit)                      # measured now unless cached
    estimate = estimate_latency(units, table)
    table.save()

  `repeats` timed calls (after `warmup`) per unit, median. Entries are keyed by the unit, the batch size and the
  depthwise formulation (`ops.resolve_depthwise_impl` of `depthwise_impl`).
  """

  def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *, repeats: int = 20, warmup: int = 2,
               batch_size: int = 1, depthwise_impl: str = 'auto'):
    if repeats < 1:
      raise ValueError(f'repeats must be positive, got {repeats}')
    self.path = table_path(cache_dir)
    self.repeats, self.warmup, self.batch_size = repeats, warmup, batch_size
    self.depthwise_impl = resolve_depthwise_impl(depthwise_impl)
    self.measured = 0  # entries measured (not read from the cache) by this table
    self.entries: dict[str, float] = {}
    if self.path.is_file():
      try:
        self.entries = dict(json.loads(self.path.read_text())['entries'])
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{self.path} is not a latency table ({e}); delete it to measure again') from None

  def _key(self, name: str) -> str:
    return f'{name}/b{self.batch_size}/{self.depthwise_impl}'

  def _measure(self, key: str, measure: Callable[[], float]) -> float:
    if key not in self.entries:
      self.entries[key] = measure()
      self.measured += 1
    return self.entries[key]

  @property
  def dispatch_ms(self) -> float:
    """The time of calling a compiled program that does nothing (on a one-element array)."""
    return self._measure(self._key(DISPATCH), lambda: _time_ms(jax.jit(lambda x: x), (jnp.zeros(1),),
                                                                 self.repeats, self.warmup))

  def lookup(self, unit: cost.Unit) -> float:
    """The latency of `unit` alone (ms), dispatch included."""
    in_hw = (unit.height, unit.width)
    return self._measure(self._key(unit.key), lambda: _apply_timing(
        _UnitModule(unit, self.depthwise_impl), (self.batch_size,) + in_hw + (unit.in_channels,), self.repeats,
        self.warmup))

  def save(self) -> None:
    """Writes the table (atomically; other processes may read it)."""
    kind, backend = device_description()
    self.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.path.with_suffix(f'.tmp{os.getpid()}')
    tmp.write_text(json.dumps({'device_kind': kind, 'backend': backend, 'jax_version': jax.__version__,
                               'entries': dict(sorted(self.entries.items()))}, indent=1))
    tmp.replace(self.path)


def estimate_latency(units: Iterable[cost.Unit], table: LatencyTable) -> float:
  """``dispatch + Σ_units max(0, t_unit - dispatch)`` in ms (see the module docstring); a unit that occurs k times
  counts k times."""
  dispatch = table.dispatch_ms
  return dispatch + sum(max(0.0, table.lookup(u) - dispatch) for u in units)


def unit_latency(table: LatencyTable) -> Callable[[cost.Unit], float]:
  """A unit's latency without the dispatch (``max(0, t_unit - dispatch)``): the value per unit that
  `cost.architecture_cost` sums for a latency cost term (``fixed`` then lacks the one dispatch of the network)."""
  dispatch = table.dispatch_ms
  return lambda u: max(0.0, table.lookup(u) - dispatch)


def measure_network_latency(genotype: Genotype, *, network: str = 'cifar', C: int = 36, layers: int = 20,
                            num_classes: int = 10, image_size: int | tuple[int, int] = 32, in_channels: int = 3,
                            repeats: int = 20, warmup: int = 2, batch_size: int = 1,
                            depthwise_impl: str = 'auto') -> float:
  """The measured latency (ms, median of `repeats`) of `genotype`'s whole network in evaluation mode."""
  if network not in cost.NETWORKS:
    raise ValueError(f'unknown network {network!r}; expected one of {", ".join(cost.NETWORKS)}')
  net_type = NetworkCIFAR if network == 'cifar' else NetworkImageNet
  net = net_type(genotype, C=C, num_classes=num_classes, layers=layers, depthwise_impl=depthwise_impl)
  hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  return _apply_timing(net, (batch_size,) + hw + (in_channels,), repeats, warmup, train=False)


def architecture_latency(table: LatencyTable, **network: Any) -> cost.ArchitectureCost:
  """`cost.architecture_cost` in ms from `table` (`cost.architecture_cost`'s keyword arguments): each choice valued
  by its unit's latency without the dispatch, which ``fixed`` counts once, as `estimate_latency`."""
  arch = cost.architecture_cost(unit_latency(table), **network)
  return cost.ArchitectureCost(arch.tables, arch.keep, arch.fixed + table.dispatch_ms)
