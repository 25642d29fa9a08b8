"""Host-side batching (numpy): the search split, deterministic resumable epochs, prefetching, device sharding.

`epoch_batches` draws the global batches of an epoch from a permutation that depends only on (seed, epoch, stream),
so a run is reproducible and resumable whatever the number of devices or processes; each process takes its
contiguous slice of every global batch. `Prefetcher` overlaps host batching with device compute; `sharded` adds the
device axis.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from darts_jax.data.sources import Dataset


def search_split(
    ds: Dataset, subset: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Splits the training set into the DARTS search train/valid halves.

  As the original `train_search.py` (train_portion 0.5): with n training
  images, `split = floor(0.5 n)`; images [0, split) train the network weights
  w and images [split, n) are the validation set for the architecture alpha.
  The test set is not used by the search.

  Args:
    ds: The dataset.
    subset: If > 0, only the first `subset` training images are used (quick
      runs and tests); 0 uses them all.

  Returns:
    (train_images, train_labels, valid_images, valid_labels), views into `ds`.
  """
  num_train = len(ds.train_images)
  if not 0 <= subset <= num_train:
    raise ValueError(f'subset={subset} must be in [0, {num_train}] (the '
                     f'{ds.name} training set size); 0 means all.')
  images, labels = ds.train_images, ds.train_labels
  if subset:
    images, labels = images[:subset], labels[:subset]
  split = int(np.floor(0.5 * len(images)))
  return images[:split], labels[:split], images[split:], labels[split:]


def num_batches(num_examples: int, batch_size: int, max_steps: int = 0) -> int:
  """Batches per epoch: floor(num_examples / batch_size), capped by max_steps.

  The incomplete last batch is dropped so that every step sees the same
  shapes (one compilation). `max_steps > 0` caps the count (quick runs).
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if num_examples < batch_size:
    raise ValueError(f'batch_size {batch_size} exceeds the {num_examples} '
                     'examples; lower the batch size.')
  count = num_examples // batch_size
  return min(count, max_steps) if max_steps > 0 else count


def epoch_batches(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    stream: int = 0,
    start_step: int = 0,
    max_steps: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields this process's part of the global batches of one epoch.

  The epoch's order is the permutation drawn by
  `np.random.default_rng([seed, epoch, stream])`; global batch b holds the
  examples perm[b B : (b + 1) B] (B = batch_size). The sequence of global
  batches thus depends only on (seed, epoch, stream), never on the number of
  devices or processes, and resuming at `start_step` yields exactly the
  batches that an uninterrupted epoch yields from that step on.

  Independent streams of the same seed give independent orders: the DARTS
  search draws its training batches (stream 0) and validation batches
  (stream 1) from two separately shuffled loaders.

  Args:
    images: (N, ...) array.
    labels: (N,) array.
    batch_size: Global batch size B.
    seed: Non-negative run seed.
    epoch: Non-negative epoch number.
    stream: Non-negative stream id (0: train, 1: search validation).
    start_step: First global batch index to yield.
    max_steps: If > 0, the epoch has at most this many batches.
    process_index: This process's index (`jax.process_index()`).
    process_count: Number of processes (`jax.process_count()`); each yields
      its contiguous slice [p B/P, (p + 1) B/P) of every global batch.

  Returns:
    An iterator of (images, labels) with leading dimension B / process_count,
    for global batch indices start_step, ..., num_batches - 1.
  """
  if len(images) != len(labels):
    raise ValueError(f'{len(images)} images but {len(labels)} labels.')
  steps = num_batches(len(images), batch_size, max_steps)
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by the '
                     f'{process_count} processes; use a multiple of '
                     f'{process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in '
                     f'[0, {process_count}).')
  if not 0 <= start_step <= steps:
    raise ValueError(f'start_step {start_step} is not in [0, {steps}] (the '
                     'batches in this epoch).')
  order = np.random.default_rng([seed, epoch, stream]).permutation(len(images))
  local = batch_size // process_count

  def generate():
    for step in range(start_step, steps):
      begin = step * batch_size + process_index * local
      index = order[begin:begin + local]
      yield np.take(images, index, axis=0), np.take(labels, index, axis=0)

  return generate()


class Prefetcher(Iterator):
  """Iterates `iterable` in a background thread, keeping `size` items ready.

  Host-side batching then overlaps device compute. Use as a context manager
  (or call `close`) so the thread stops when the consumer stops early; an
  exception raised by `iterable` is re-raised by `next`.

      with Prefetcher(epoch_batches(...)) as batches:
        for images, labels in batches:
          ...
  """

  _ITEM, _END, _ERROR = range(3)

  def __init__(self, iterable: Iterable[Any], size: int = 2):
    self._queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._finished = False
    self._thread = threading.Thread(
        target=self._produce, args=(iter(iterable),), daemon=True)
    self._thread.start()

  def _produce(self, iterator: Iterator[Any]) -> None:
    try:
      for item in iterator:
        self._queue.put((self._ITEM, item))  # Blocks while `size` are ready.
        if self._stop.is_set():
          return
      self._queue.put((self._END, None))
    except Exception as error:  # pylint: disable=broad-except
      self._queue.put((self._ERROR, error))  # Re-raised in the consumer.

  def __next__(self) -> Any:
    if self._finished:
      raise StopIteration
    kind, value = self._queue.get()
    if kind == self._ITEM:
      return value
    self._finished = True
    if kind == self._ERROR:
      raise value
    raise StopIteration

  def close(self) -> None:
    """Stops the producer thread and waits for it to exit."""
    self._finished = True
    self._stop.set()
    while self._thread.is_alive():
      self._drain()  # Unblocks a producer waiting on a full queue.
      self._thread.join(timeout=0.01)
    self._drain()

  def _drain(self) -> None:
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def sharded(batch: Any, num_devices: int) -> Any:
  """Reshapes every leaf of `batch` from (B, ...) to (D, B / D, ...)."""
  def reshape(x):
    if x.shape[0] % num_devices:
      raise ValueError(f'batch size {x.shape[0]} is not divisible by the '
                       f'{num_devices} devices; use a batch size that is a '
                       f'multiple of {num_devices}.')
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree.map(reshape, batch)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """This process's slices of global batches covering every example once, in order.

  The last global batch is padded to `batch_size` by repeating the last example, with ``mask`` 0 for the padding.
  """
  local = batch_size // process_count
  for start in range(0, len(images), batch_size):
    index = start + process_index * local + np.arange(local)
    mask = (index < len(images)).astype(np.float32)
    index = np.minimum(index, len(images) - 1)
    yield images[index], labels[index], mask
