"""The benchmark's ground truth: an architecture's accuracies after the benchmark's own training, looked up in the
user's benchmark file (never downloaded by this project).

Files read: NAS-Bench-201's ``NAS-Bench-201-v1_0-e61699.pth`` / ``NAS-Bench-201-v1_1-096897.pth`` through its
package (``pip install 'darts-jax[nb201]'``: ``nas-bench-201``), or NATS-Bench's topology benchmark through
``nats_bench`` (also in the extra): its archive directory (``NATS-tss-v1_0-3ffb9-simple``, read an architecture at a
time) or its single ``.pickle.pbz2`` file. The accuracies are the API's
``get_more_info(index, dataset, hp, is_random=False)['test-accuracy']`` (the mean over the benchmark's trials) on
CIFAR-10 (trained on train + valid, tested on the test set), CIFAR-100 and ImageNet16-120 (their ``x-test`` halves),
after ``hp`` = 200 (or 12) epochs, as fractions in [0, 1].
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from darts_jax.nb201.genotypes import Genotype, to_arch_str

DATASETS = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'imagenet16_120': 'ImageNet16-120'}
"""Record names of the benchmark's datasets -> the API's names."""
HPS = ('12', '200')
_FILES = ('NAS-Bench-201-v1_0-e61699.pth or NAS-Bench-201-v1_1-096897.pth (nas-bench-201), or '
          'NATS-tss-v1_0-3ffb9-simple (nats_bench)')


@dataclasses.dataclass(frozen=True, eq=False)
class Benchmark:
  """An opened benchmark: ``test_accuracies(genotype)`` per dataset of `DATASETS`."""
  api: Any
  hp: str = '200'

  def index(self, genotype: Genotype) -> int:
    """The benchmark's index of `genotype` (ValueError if the file does not hold it)."""
    arch = to_arch_str(genotype)
    index = self.api.query_index_by_arch(arch)
    if index < 0:
      raise ValueError(f'the benchmark file has no architecture {arch}.')
    return index

  @functools.lru_cache(maxsize=None)  # a search re-derives the same few genotypes every epoch
  def test_accuracies(self, genotype: Genotype) -> dict[str, float]:
    index = self.index(tuple(genotype))
    return {name: float(self.api.get_more_info(index, dataset, hp=self.hp, is_random=False)['test-accuracy']) / 100
            for name, dataset in DATASETS.items()}


def _missing_extra(package: str, path: Path) -> ValueError:
  return ValueError(f'reading the benchmark {path} needs the optional extra: pip install \'darts-jax[nb201]\' '
                    f'({package}).')


def open_benchmark(path: str | Path, hp: str = '200') -> Benchmark:
  """Opens the benchmark file at `path` (module docstring) for records after `hp` training epochs.

  Raises:
    FileNotFoundError: no such file. ValueError: the package that reads it is not installed, or `hp` is unknown.
  """
  hp = str(hp)
  if hp not in HPS:
    raise ValueError(f'benchmark.hp must be one of {", ".join(HPS)} (training epochs of the records), got {hp!r}.')
  path = Path(path).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'benchmark file {path} does not exist: pass {_FILES} (never downloaded by darts-jax).')
  if path.suffix == '.pth':
    try:
      import torch  # pylint: disable=import-outside-toplevel
      from nas_201_api import NASBench201API  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise _missing_extra('nas-bench-201, torch', path) from None
    # The file is the benchmark's own pickle (not tensors only): read it as the API's version of torch did.
    contents = torch.load(path, map_location='cpu', weights_only=False)
    try:
      return Benchmark(NASBench201API(contents, verbose=False), hp)
    except (AssertionError, KeyError, TypeError) as e:
      raise ValueError(f'{path} is not a NAS-Bench-201 benchmark file ({type(e).__name__}: {e}).') from None
  try:
    import nats_bench  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise _missing_extra('nats_bench', path) from None
  # Its archive directory is read an architecture at a time (the API's fast mode), its single file at once.
  try:
    return Benchmark(nats_bench.create(str(path), 'tss', fast_mode=path.is_dir(), verbose=False), hp)
  except (AssertionError, KeyError, TypeError, OSError, EOFError) as e:
    raise ValueError(f'{path} is not a NATS-Bench topology benchmark ({type(e).__name__}: {e}).') from None
