"""Data parallelism over the local devices (`data_parallel`), its array layout helpers, and multi-host start-up.

A data-parallel step takes its state *replicated* (a leading device axis, one copy per local device) and its batch
*sharded* (the process's part of the global batch split along a leading device axis), as ``jax.pmap`` did::

    p_step = data_parallel(step, 'batch')
    state = replicate(state, 'batch')
    for images, labels in batches:                    # this process's part of each global batch
      state, metrics = p_step(state, shard((images, labels), 'batch'))  # device d gets slice d
    host_state = unreplicate(state)                   # e.g. for checkpointing

`data_parallel` runs `step` as ``jax.jit`` of ``jax.shard_map`` over a one-axis `Mesh` of all devices (the default,
``impl='shard_map'``) or as ``jax.pmap`` (``impl='pmap'``). Since JAX 0.8 ``pmap`` is itself that jit of shard_map
(with ``check_vma=False``) and is in maintenance mode; the explicit form is what the JAX migration guide recommends,
and it computes the same bits (tests/test_data_parallel.py). ``check_vma=False`` keeps pmap's semantics: the steps
``pmean`` their per-device gradients themselves.

Multi-host: every host runs the same command; `maybe_initialize_distributed` connects the processes first. Each
process then feeds only its slice of every global batch (`darts_jax.data.epoch_batches` with ``process_index`` and
``process_count``) and the collectives (``pmean``/``psum``) span all devices of all hosts. Both implementations take
and return process-local arrays (the leading axis is the local devices): `data_parallel` views them as slices of
global arrays for the one global program, without copies.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from darts_jax.data import batching

PyTree = Any
AXIS_NAME = 'batch'
"""The axis the training steps are mapped over (BN statistics and gradients are reduced over it)."""
IMPLS = ('shard_map', 'pmap')
DEFAULT_IMPL = 'shard_map'
"""`data_parallel`'s implementation unless a config's ``parallel_impl`` says otherwise (see the module docstring)."""


def _sharding(axis_name: str, devices: Sequence[jax.Device] | None) -> tuple[jax.sharding.NamedSharding, int]:
  """One slice of the leading axis per device, along a mesh axis called `axis_name`."""
  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.asarray(devices), (axis_name,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name)), len(devices)


def _is_key(x: Any) -> bool:
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree: PyTree, axis_name: str, devices: Sequence[jax.Device] | None = None) -> PyTree:
  """Puts one copy of every leaf on each device: leaf shape (D, ...).

  The copies are laid out along a mesh axis named like the pmapped function's `axis_name`, as pmap lays out its
  outputs: the first call and the later ones (fed the previous outputs) then see the same layout and share one
  compilation. They are stacked on the host, so replicating compiles nothing per leaf shape.

  Args:
    tree: pytree of arrays (numpy, jax or typed PRNG keys).
    axis_name: the ``axis_name`` of the ``jax.pmap`` the tree is for.
    devices: the devices, in ``jax.pmap``'s order; default ``jax.local_devices()``.
  """
  sharding, count = _sharding(axis_name, devices)

  def put(x):
    if _is_key(x):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (count,) + x.shape), sharding)

  return jax.tree.map(put, tree)


def unreplicate(tree: PyTree) -> PyTree:
  """Copies the first device's copy of every leaf of a replicated (or pmap output) pytree to the host.

  Returns numpy arrays of the per-device shape (typed PRNG keys stay keys). Only the first device's buffer is read.
  """
  def first(x):
    if _is_key(x):
      return jax.random.wrap_key_data(first(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array):
      x = x.addressable_shards[0].data
    return np.asarray(x)[0, ...]  # an array even for scalars (numpy scalars are not arrays to orbax)

  return jax.tree.map(first, tree)


def shard(batch: PyTree, axis_name: str, devices: Sequence[jax.Device] | None = None) -> PyTree:
  """Splits every leaf from (B, ...) to (D, B / D, ...) and puts slice d on device d, ready for ``pmap``.

  Args:
    batch: pytree of host arrays with a common leading batch size B (e.g. uint8 images and int32 labels).
    axis_name: the ``axis_name`` of the ``jax.pmap`` the batch is for (see `replicate`).
    devices: the devices, in ``jax.pmap``'s order; default ``jax.local_devices()``.

  Raises:
    ValueError: if B is not divisible by D (the message names both).
  """
  sharding, count = _sharding(axis_name, devices)
  return jax.device_put(batching.sharded(batch, count), sharding)


def compiler_options(backend_opt_level: int | None) -> dict[str, Any] | None:
  """XLA options compiling a program at LLVM optimisation level `backend_opt_level` (0-3; None: XLA's default, 3).

  On XLA:CPU, level 0 compiles the supernet's evaluation about 4x and its Hessian program about 2x faster, its
  training step only 8% faster, and slows their runs 2-6x: worth it for programs that run rarely and compile long
  (docs/results.md, "Compile time"). The options are part of the persistent compilation cache's key.
  """
  return None if backend_opt_level is None else {'xla_backend_optimization_level': int(backend_opt_level)}


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def replicated_shapes(tree: PyTree, axis_name: str) -> PyTree:
  """The shapes, dtypes and shardings `replicate` gives `tree`'s leaves (arrays or ``jax.ShapeDtypeStruct``s, e.g.
  from ``jax.eval_shape``), without their values: what `DataParallel.compile_in_background` takes."""
  sharding, count = _sharding(axis_name, None)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct((count,) + tuple(x.shape), x.dtype, sharding=sharding), tree)


class DataParallel:
  """`fn` run once per device with collectives over `axis_name`, taking and returning ``jax.pmap``'s layout
  (see `data_parallel`), whose programs can be compiled ahead of their first call, in the background."""

  def __init__(self, fn: Callable[..., Any], axis_name: str, *, impl: str = DEFAULT_IMPL,
               in_axes: int | tuple[int | None, ...] = 0, donate_argnums: int | tuple[int, ...] = (),
               compiler_options: dict[str, Any] | None = None):
    if impl not in IMPLS:
      raise ValueError(f'unknown parallel_impl {impl!r}; use one of {", ".join(IMPLS)}.')
    self.impl, self.compiler_options, self._in_axes = impl, compiler_options, in_axes
    self._compiling: list[concurrent.futures.Future[Any]] = []
    self._lowering: list[threading.Event] = []
    if impl == 'pmap':
      self._pmapped = jax.pmap(fn, axis_name=axis_name, in_axes=in_axes, donate_argnums=donate_argnums)
      return
    # Grouped by process, as pmap orders them: process p's local devices are slices p·L ... (p+1)·L - 1.
    self._mesh = jax.sharding.Mesh(
        np.asarray([d for p in range(jax.process_count()) for d in jax.local_devices(p)]), (axis_name,))
    mapped, replicated = jax.sharding.PartitionSpec(axis_name), jax.sharding.PartitionSpec()
    self._mapped = mapped

    @functools.cache
    def program(arg_axes: tuple[int | None, ...]) -> Callable[..., Any]:
      def per_device(*args):
        args = [a if axis is None else jax.tree.map(lambda x: x[0], a) for a, axis in zip(args, arg_axes)]
        return jax.tree.map(lambda x: x[None], fn(*args))

      in_specs = tuple(mapped if axis == 0 else replicated for axis in arg_axes)
      return jax.jit(jax.shard_map(per_device, mesh=self._mesh, in_specs=in_specs, out_specs=mapped,
                                   check_vma=False),
                     donate_argnums=donate_argnums, compiler_options=compiler_options)

    self._program = program

  def _arg_axes(self, count: int) -> tuple[int | None, ...]:
    return tuple(self._in_axes) if isinstance(self._in_axes, tuple) else (self._in_axes,) * count

  def __call__(self, *args: Any) -> Any:
    self.wait()
    if self.impl == 'pmap':
      return self._pmapped(*args)
    program = self._program(self._arg_axes(len(args)))
    if jax.process_count() == 1:
      return program(*args)
    specs = tuple(self._mapped if axis == 0 else jax.sharding.PartitionSpec() for axis in self._arg_axes(len(args)))
    global_args = multihost_utils.host_local_array_to_global_array(args, self._mesh, specs)
    return multihost_utils.global_array_to_host_local_array(program(*global_args), self._mesh, self._mapped)

  def lower_ahead(self, *args: Any) -> None:
    """Traces and lowers the program for `args` (as `compile_in_background` takes them) now, in this thread; a later
    `compile_in_background` or call with them finds the lowering cached. Tracing holds Python's lock: a program
    traced while another compiles (XLA releases the lock) costs little, one traced beside the training loop slows
    the loop and waits for it. Single-process ``shard_map`` only, as `compile_in_background`.
    """
    if self.impl == 'pmap' or jax.process_count() > 1:
      return
    self._program(self._arg_axes(len(args))).lower(*_abstract(args))

  def compile_in_background(self, *args: Any) -> None:
    """Starts compiling the program for `args` in a thread (XLA releases the GIL while it compiles), so that its
    first call with arguments of these shapes, dtypes and shardings only runs it; `wait_lowered` waits for the
    thread's tracing and lowering (which hold the GIL).

    `args` are arrays laid out as `replicate`/`shard` lay them out, or their `replicated_shapes` / shapes with those
    shardings. The first call afterwards waits for the compilation. Single-process ``shard_map`` only: elsewhere
    the first call compiles, as without this.
    """
    if self.impl == 'pmap' or jax.process_count() > 1:
      return
    program, abstract_args = self._program(self._arg_axes(len(args))), _abstract(args)
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    lowered = threading.Event()
    self._lowering.append(lowered)

    def compile_program():
      try:
        lowering = program.lower(*abstract_args)
        lowered.set()
        # jit keeps the lowered and compiled program: the call with these shapes reuses it.
        future.set_result(lowering.compile())
      except BaseException as e:  # pylint: disable=broad-exception-caught  (raised again by `wait`)
        lowered.set()
        future.set_exception(e)

    threading.Thread(target=compile_program, name='darts_jax-compile', daemon=True).start()
    self._compiling.append(future)

  def wait_lowered(self) -> None:
    """Waits until the programs `compile_in_background` started are traced and lowered (they may still compile)."""
    while self._lowering:
      self._lowering.pop().wait()

  def wait(self) -> None:
    """Waits for the compilations `compile_in_background` started (raising their errors)."""
    while self._compiling:
      self._compiling.pop().result()


def data_parallel(fn: Callable[..., Any], axis_name: str, *, impl: str = DEFAULT_IMPL,
                  in_axes: int | tuple[int | None, ...] = 0, donate_argnums: int | tuple[int, ...] = (),
                  compiler_options: dict[str, Any] | None = None) -> DataParallel:
  """`fn` run once per device with collectives over `axis_name`, taking and returning ``jax.pmap``'s layout.

  Every argument's leaves carry a leading axis of the local devices (`replicate`, `shard`), unless `in_axes` gives
  that argument None (then it is the same on every device, e.g. a scalar); every output leaf gets that axis. `fn`
  sees one device's slice, without the axis.

  Args:
    fn: the per-device function, as for ``jax.pmap``.
    axis_name: the axis name its collectives use.
    impl: ``'shard_map'`` (``jax.jit`` of ``jax.shard_map`` over all devices) or ``'pmap'``: the same result.
    in_axes: 0, or one of 0 / None per positional argument.
    donate_argnums: positional arguments whose buffers the call may reuse.
    compiler_options: XLA options of its programs (e.g. `compiler_options`'s optimisation level for a program that
      runs rarely); ``'shard_map'`` only: ``jax.pmap`` takes none and compiles with XLA's defaults.

  Raises:
    ValueError: for an unknown `impl`.
  """
  return DataParallel(fn, axis_name, impl=impl, in_axes=in_axes, donate_argnums=donate_argnums,
                      compiler_options=compiler_options)


def check_batch_size(batch_size: int) -> None:
  """Checks that a global batch splits evenly over all devices of all processes.

  Raises:
    ValueError: naming the batch size and the device count.
  """
  devices = jax.device_count()
  if batch_size % devices:
    suggestion = max(devices, batch_size - batch_size % devices)
    raise ValueError(f'batch_size {batch_size} is not divisible by the {devices} devices '
                     f'({jax.process_count()} process(es) x {jax.local_device_count()} local); use a multiple of '
                     f'{devices}, e.g. --config.batch_size={suggestion}.')


# Environments in which jax.distributed.initialize() finds the process count and index by itself, with the
# variable holding the number of processes: Slurm (srun) and Open MPI (mpirun).
_CLUSTER_PROCESS_COUNT = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')
COORDINATOR_ENV = 'JAX_COORDINATOR_ADDRESS'
NUM_PROCESSES_ENV = 'JAX_NUM_PROCESSES'
PROCESS_ID_ENV = 'JAX_PROCESS_ID'


def maybe_initialize_distributed() -> bool:
  """Connects the processes of a multi-host run with ``jax.distributed.initialize``; call before any JAX work.

  A run is multi-process when

  * ``$JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0) is set: ``initialize`` is called with
    ``num_processes=$JAX_NUM_PROCESSES`` and ``process_id=$JAX_PROCESS_ID`` where these are set; otherwise JAX
    detects them (Slurm, Open MPI, Cloud TPU). ``jax.distributed.initialize()`` itself reads only the coordinator
    address from the environment, hence the two extra variables for hand-launched processes;
  * or it was started by ``srun`` (Slurm) or ``mpirun`` (Open MPI) with more than one task: ``initialize()``
    detects everything.

  Returns:
    Whether ``jax.distributed.initialize`` was called.
  """
  env = os.environ
  multi_task = any(int(env.get(name, '1') or 1) > 1 for name in _CLUSTER_PROCESS_COUNT)
  if COORDINATOR_ENV not in env and not multi_task:
    return False
  kwargs = {}
  for name, arg in ((NUM_PROCESSES_ENV, 'num_processes'), (PROCESS_ID_ENV, 'process_id')):
    if env.get(name):
      kwargs[arg] = int(env[name])
  jax.distributed.initialize(**kwargs)
  logging.info('Process %d of %d, %d local / %d global devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
