"""Datasets from their official files: `load_dataset` and the formats it reads.

`load_dataset` reads Fashion-MNIST, MNIST, CIFAR-10, CIFAR-100, ImageNet16-120 or SVHN from the official files (IDX,
CIFAR python pickles or CIFAR binary records, archived or extracted; downsampled ImageNet's pickles; SVHN's MATLAB
files) or from tensorflow-datasets prepared data, into uint8 NHWC images and int32 labels held in host memory.
TensorFlow is never needed; nothing is downloaded.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
import os
import pickle
import tarfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

DATA_DIR_ENV = 'DARTS_JAX_DATA'
"""Environment variable naming the default data directory."""


class DatasetNotFoundError(FileNotFoundError):
  """No copy of a dataset was found; the message says how to get one."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An image classification dataset held in host memory.

  Attributes:
    name: Dataset name, one of `DATASETS`.
    train_images: uint8 array (N, H, W, C).
    train_labels: int32 array (N,).
    test_images: uint8 array (M, H, W, C).
    test_labels: int32 array (M,).
    num_classes: Number of classes.
    mean: float32 (C,), per-channel mean of the full training set in [0, 1].
    std: float32 (C,), per-channel standard deviation of the full training set
      in [0, 1] (population, over all training pixels of the channel).
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: np.ndarray
  std: np.ndarray


# ----------------------------------------------------------------------------
# Official file formats.


_IDX_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
              't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8 data, 3 dimensions.
_IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8 data, 1 dimension.


def _parse_idx(data: bytes, path: str, magic: int) -> np.ndarray:
  """Parses an IDX file: big-endian int32 magic, then int32 dims, then uint8."""
  ndim = {_IDX_IMAGES_MAGIC: 3, _IDX_LABELS_MAGIC: 1}[magic]
  found = int.from_bytes(data[:4], 'big')
  if found != magic:
    raise ValueError(f'{path}: IDX magic number is {found}, expected {magic} '
                     f'({"images" if ndim == 3 else "labels"}); the file is '
                     'corrupt or not the expected IDX file.')
  header = 4 * (1 + ndim)
  if len(data) < header:
    raise ValueError(f'{path}: truncated IDX header ({len(data)} bytes).')
  shape = np.frombuffer(data[4:header], '>i4').tolist()
  values = np.frombuffer(data, np.uint8, offset=header)
  if values.size != np.prod(shape):
    raise ValueError(f'{path}: IDX header announces shape {tuple(shape)} but '
                     f'the file holds {values.size} values.')
  return values.reshape(shape)


def _find_idx_files(directory: str) -> list[str] | None:
  """Paths of the four IDX files in `directory` (`.gz` or not), or None."""
  paths = []
  for base in _IDX_FILES:
    path = next((p for p in (os.path.join(directory, base + '.gz'),
                             os.path.join(directory, base))
                 if os.path.isfile(p)), None)
    if path is None:
      return None
    paths.append(path)
  return paths


def _load_idx(paths: Sequence[str]) -> tuple[np.ndarray, ...]:
  """Reads (train_images, train_labels, test_images, test_labels) from IDX."""
  arrays = []
  for path, magic in zip(paths, (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC) * 2):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
      arrays.append(_parse_idx(f.read(), path, magic))
  for i in (0, 2):  # (images, labels) of train, then test
    if len(arrays[i]) != len(arrays[i + 1]):
      raise ValueError(f'{paths[i]} holds {len(arrays[i])} images but '
                       f'{paths[i + 1]} holds {len(arrays[i + 1])} labels.')
  return arrays[0][..., None], arrays[1], arrays[2][..., None], arrays[3]


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only what the CIFAR pickles hold: dicts, lists, str, bytes, int
  and numpy arrays. Loading a downloaded pickle must not run arbitrary code."""

  # numpy's array reconstructor lives in numpy.core (numpy 1, which wrote the
  # official files) or numpy._core (numpy 2); both names map to it.
  _ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'): np.empty(0).__reduce__()[0],
      ('numpy._core.multiarray', '_reconstruct'): np.empty(0).__reduce__()[0],
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      # Python 3 writes bytes objects with protocol 2 as _codecs.encode(...).
      ('_codecs', 'encode'): codecs.encode,
  }

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._ALLOWED[module, name]
    except KeyError:
      raise pickle.UnpicklingError(
          f'refusing to load {module}.{name} from a CIFAR pickle; the file '
          'is not an official CIFAR batch.') from None


_Parser = Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]
"""Parses one CIFAR batch file (contents, path for errors) to images, labels."""


def _chw_rows_to_nhwc(rows: np.ndarray) -> np.ndarray:
  """(N, 3072) channel-major 3x32x32 rows -> (N, 32, 32, 3)."""
  return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _cifar_python_parser(label_key: bytes) -> _Parser:
  def parse(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _ArrayUnpickler(io.BytesIO(data), encoding='bytes').load()
    if not isinstance(batch, dict) or not {b'data', label_key} <= batch.keys():
      raise ValueError(f'{path}: not a CIFAR python batch (needs keys '
                       f"b'data' and {label_key!r}).")
    rows = np.asarray(batch[b'data'], np.uint8).reshape(-1, 3072)
    return _chw_rows_to_nhwc(rows), np.asarray(batch[label_key], np.int32)
  return parse


def _downsampled_imagenet_parser(size: int, classes: int) -> _Parser:
  """Downsampled ImageNet's python pickles (Chrabaszcz et al., 2017), as
  NAS-Bench-201's ImageNet16-120 reads them: a dict of ``data`` (N, 3·size²)
  channel-major rows and ``labels`` 1..1000, of which only labels
  1..`classes` are kept, as 0..`classes` - 1."""
  def parse(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _ArrayUnpickler(io.BytesIO(data), encoding='latin1').load()
    if isinstance(batch, dict):
      batch = {k.decode() if isinstance(k, bytes) else k: v
               for k, v in batch.items()}
    if not isinstance(batch, dict) or not {'data', 'labels'} <= batch.keys():
      raise ValueError(f'{path}: not a downsampled ImageNet batch (needs '
                       "keys 'data' and 'labels').")
    rows = np.asarray(batch['data'], np.uint8).reshape(-1, 3, size, size)
    labels = np.asarray(batch['labels'], np.int64)
    keep = (labels >= 1) & (labels <= classes)
    return (np.ascontiguousarray(rows[keep].transpose(0, 2, 3, 1)),
            (labels[keep] - 1).astype(np.int32))
  return parse


def _cifar_binary_parser(label_bytes: int) -> _Parser:
  """Records of `label_bytes` label bytes then 3072 pixel bytes; the last
  label byte is the (fine) label (CIFAR-100 stores coarse, fine)."""
  def parse(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3072
    if len(data) % record:
      raise ValueError(f'{path}: {len(data)} bytes is not a whole number of '
                       f'{record}-byte CIFAR records.')
    records = np.frombuffer(data, np.uint8).reshape(-1, record)
    return (_chw_rows_to_nhwc(records[:, label_bytes:]),
            records[:, label_bytes - 1].astype(np.int32))
  return parse


@dataclasses.dataclass(frozen=True)
class _CifarFormat:
  """One official CIFAR distribution: an archive whose files sit in `folder`."""

  archive: str
  folder: str
  train_files: tuple[str, ...]
  test_files: tuple[str, ...]
  parse: _Parser


def _read_files(source: str, folder: str,
                names: Sequence[str]) -> dict[str, bytes]:
  """Reads `folder/name` for each name from a directory or a .tar.gz."""
  if os.path.isdir(source):
    files = {}
    for name in names:
      with open(os.path.join(source, name), 'rb') as f:
        files[name] = f.read()
    return files
  wanted = {f'{folder}/{name}': name for name in names}
  files = {}
  with tarfile.open(source, 'r:gz') as tar:
    for member in tar:  # One pass: seeking back in a gzip stream is slow.
      if member.name in wanted:
        files[wanted[member.name]] = tar.extractfile(member).read()
  missing = sorted(set(names) - files.keys())
  if missing:
    raise ValueError(f'{source} lacks {", ".join(missing)} under {folder}/; '
                     'the archive is incomplete or not the official one.')
  return files


def _load_cifar(fmt: _CifarFormat, source: str) -> tuple[np.ndarray, ...]:
  files = _read_files(source, fmt.folder, fmt.train_files + fmt.test_files)
  splits = []
  for names in (fmt.train_files, fmt.test_files):
    images, labels = zip(*(fmt.parse(files[n], os.path.join(source, n))
                           for n in names))
    splits += [np.concatenate(images), np.concatenate(labels)]
  return tuple(splits)


def _find_cifar(formats: Sequence[_CifarFormat],
                directory: str) -> tuple[_CifarFormat, str] | None:
  """The first official CIFAR copy in `directory`: extracted folder first."""
  for fmt in formats:
    folder = os.path.join(directory, fmt.folder)
    if os.path.isdir(folder):
      return fmt, folder
    archive = os.path.join(directory, fmt.archive)
    if fmt.archive and os.path.isfile(archive):
      return fmt, archive
  return None


_CIFAR10_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
_CIFAR10_FORMATS = (
    _CifarFormat('cifar-10-python.tar.gz', 'cifar-10-batches-py',
                 _CIFAR10_BATCHES, ('test_batch',),
                 _cifar_python_parser(b'labels')),
    _CifarFormat('cifar-10-binary.tar.gz', 'cifar-10-batches-bin',
                 tuple(f'{b}.bin' for b in _CIFAR10_BATCHES),
                 ('test_batch.bin',), _cifar_binary_parser(1)),
)
_IMAGENET16_FORMATS = (  # the extracted Imagenet16_train.zip and Imagenet16_val.zip
    _CifarFormat('', 'ImageNet16',
                 tuple(f'train_data_batch_{i}' for i in range(1, 11)),
                 ('val_data',), _downsampled_imagenet_parser(16, 120)),
)
_CIFAR100_FORMATS = (
    _CifarFormat('cifar-100-python.tar.gz', 'cifar-100-python', ('train',),
                 ('test',), _cifar_python_parser(b'fine_labels')),
    _CifarFormat('cifar-100-binary.tar.gz', 'cifar-100-binary', ('train.bin',),
                 ('test.bin',), _cifar_binary_parser(2)),
)


# SVHN's cropped digits: MATLAB v5 files holding X (32, 32, 3, N) uint8 and y
# (N, 1) with labels 1..10, where 10 is the digit 0.
_SVHN_TRAIN, _SVHN_TEST, _SVHN_EXTRA = (
    'train_32x32.mat', 'test_32x32.mat', 'extra_32x32.mat')


def _parse_svhn_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Images (N, 32, 32, 3) and labels 0..9 (the digit) of one SVHN file."""
  # Imported here: only SVHN needs it (scipy comes with jax).
  # pylint: disable-next=g-import-not-at-top
  import scipy.io

  try:
    mat = scipy.io.loadmat(path, variable_names=('X', 'y'))
  except Exception as e:  # scipy raises ValueError, IndexError, ... for a file that is not one
    raise ValueError(f'{path} is not a readable MATLAB file ({type(e).__name__}: '
                     f'{str(e).splitlines()[0] if str(e) else "corrupt"}); expected '
                     'the official SVHN cropped-digits file.') from None
  if 'X' not in mat or 'y' not in mat:
    raise ValueError(f'{path}: not an SVHN cropped-digits file (needs '
                     'variables X and y).')
  images, labels = mat['X'], np.asarray(mat['y']).reshape(-1)
  if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
    raise ValueError(f'{path}: X has shape {images.shape}, expected '
                     '(32, 32, 3, N).')
  if images.shape[3] != labels.size:
    raise ValueError(f'{path} holds {images.shape[3]} images but '
                     f'{labels.size} labels.')
  if labels.size and not np.all((labels >= 1) & (labels <= 10)):
    raise ValueError(f'{path}: labels must be 1..10 (10 for the digit 0), '
                     f'found {labels.min()}..{labels.max()}.')
  # X[row, column, channel, example] -> NHWC; label 10 is the digit 0.
  return (np.ascontiguousarray(images.transpose(3, 0, 1, 2), np.uint8),
          (labels.astype(np.int32) % 10))


def _find_svhn(directory: str, files: Sequence[str]) -> list[str] | None:
  """Paths of `files` in `directory`; None when none is there.

  Raises:
    DatasetNotFoundError: some but not all of them are there.
  """
  paths = [os.path.join(directory, name) for name in files]
  present = [os.path.isfile(p) for p in paths]
  if not any(present):
    return None
  if not all(present):
    missing = [name for name, found in zip(files, present) if not found]
    raise DatasetNotFoundError(f'{directory} lacks {", ".join(missing)} beside '
                     f'{", ".join(n for n, f in zip(files, present) if f)}; '
                     'download it from http://ufldl.stanford.edu/housenumbers/.')
  return paths


def _load_svhn(paths: Sequence[str]) -> tuple[np.ndarray, ...]:
  """(train_images, train_labels, test_images, test_labels) from the test
  file (the first path) and the training files (the others)."""
  test_images, test_labels = _parse_svhn_mat(paths[0])
  images, labels = zip(*(_parse_svhn_mat(p) for p in paths[1:]))
  return np.concatenate(images), np.concatenate(labels), test_images, test_labels


# ----------------------------------------------------------------------------
# tensorflow-datasets prepared data.


def _tfds_builder(name: str,
                  data_dir: str | None) -> tfds.core.DatasetBuilder:
  # Imported here: tensorflow_datasets is slow to import and only this
  # fallback needs it.
  # pylint: disable-next=g-import-not-at-top,redefined-outer-name
  import tensorflow_datasets as tfds

  return tfds.builder(name, data_dir=data_dir)


def _load_tfds(builder: tfds.core.DatasetBuilder) -> tuple[np.ndarray, ...]:
  """Reads the train and test splits of a prepared tfds builder.

  `as_data_source` reads array_record (or parquet) files with numpy and
  decodes images with PIL, so no TensorFlow is needed. Preparing (downloading
  and encoding) does need TensorFlow, so it is never attempted here.
  """
  # pylint: disable-next=g-import-not-at-top,redefined-outer-name
  import tensorflow_datasets as tfds

  file_format = builder.info.file_format
  if file_format not in tfds.core.file_adapters.FileFormat.with_random_access():
    raise ValueError(
        f'{builder.name} in {builder.data_dir} is prepared as '
        f'{file_format.value}, which needs TensorFlow to read. Prepare it '
        f"again with tfds.builder('{builder.name}', data_dir=..., "
        "file_format='array_record').download_and_prepare().")
  arrays = []
  for split in ('train', 'test'):
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))  # batched reads
    arrays.append(np.stack([r['image'] for r in records]).astype(np.uint8))
    arrays.append(np.asarray([r['label'] for r in records], np.int32))
  return tuple(arrays)


# ----------------------------------------------------------------------------
# Dataset registry and discovery.


@dataclasses.dataclass(frozen=True)
class _Spec:
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  subdirs: tuple[str, ...]  # Also searched below each data directory.
  how_to_get: str  # Completes "To get it: ".
  cifar_formats: tuple[_CifarFormat, ...] = ()  # Empty: IDX or .mat files.
  svhn_files: tuple[str, ...] = ()  # SVHN's .mat files: test, then train.
  system_dirs: tuple[str, ...] = ()  # Searched when no data_dir is given.
  image_shape: tuple[int, int, int] = (28, 28, 1)  # (H, W, C) of the images.
  class_names: tuple[str, ...] = ()  # By label; empty: the labels' numbers.
  tfds: bool = True  # Whether tensorflow-datasets has it (the fallback).


_INTO_DIR = ('into a directory and pass it as data_dir (--config.data.dir) '
             f'or set ${DATA_DIR_ENV}')
_IDX_NAMES = ', '.join(f + '.gz' for f in _IDX_FILES)
_TFDS_HINT = (
    'or prepare it with tensorflow-datasets on a machine with TensorFlow '
    '(pip install tensorflow tensorflow-datasets; python -c "import '
    "tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR', "
    "file_format='array_record').download_and_prepare()\") and pass DIR.")

# mean and std: per-channel statistics of the full training set, in [0, 1].
DATASETS: dict[str, _Spec] = {
    'fashion_mnist': _Spec(
        num_classes=10, mean=(0.2860406,), std=(0.35302424,),
        subdirs=('fashion-mnist', 'fashion_mnist'),
        system_dirs=('/usr/share/datasets/fashion-mnist',),
        class_names=('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                     'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
        how_to_get=('apt-get install dataset-fashion-mnist (Debian/Ubuntu); '
                    f'or download {_IDX_NAMES} from '
                    f'https://github.com/zalandoresearch/fashion-mnist '
                    f'{_INTO_DIR}; ' + _TFDS_HINT)),
    'mnist': _Spec(
        num_classes=10, mean=(0.13066048,), std=(0.30810780,),
        subdirs=('mnist',), class_names=tuple('0123456789'),
        how_to_get=f'download the MNIST files {_IDX_NAMES} {_INTO_DIR}; '
                   + _TFDS_HINT),
    'cifar10': _Spec(
        num_classes=10, mean=(0.49139968, 0.48215827, 0.44653124),
        std=(0.24703233, 0.24348505, 0.26158768),
        subdirs=('cifar10', 'cifar-10'), cifar_formats=_CIFAR10_FORMATS,
        image_shape=(32, 32, 3),
        class_names=('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                     'frog', 'horse', 'ship', 'truck'),
        how_to_get=('download cifar-10-python.tar.gz from '
                    f'https://www.cs.toronto.edu/~kriz/cifar.html {_INTO_DIR}'
                    '; ' + _TFDS_HINT)),
    'cifar100': _Spec(
        num_classes=100, mean=(0.50707516, 0.48654887, 0.44091784),
        std=(0.26733429, 0.25643846, 0.27615047),
        subdirs=('cifar100', 'cifar-100'), cifar_formats=_CIFAR100_FORMATS,
        image_shape=(32, 32, 3),
        how_to_get=('download cifar-100-python.tar.gz from '
                    f'https://www.cs.toronto.edu/~kriz/cifar.html {_INTO_DIR}'
                    '; ' + _TFDS_HINT)),
    # NAS-Bench-201's ImageNet16-120: 16x16 downsampled ImageNet, its first
    # 120 classes; mean and std are the benchmark's constants.
    'imagenet16_120': _Spec(
        num_classes=120, mean=(122.68 / 255, 116.66 / 255, 104.01 / 255),
        std=(63.22 / 255, 61.26 / 255, 65.09 / 255),
        subdirs=('imagenet16_120', 'imagenet16'),
        cifar_formats=_IMAGENET16_FORMATS,
        image_shape=(16, 16, 3), tfds=False,
        how_to_get=('download Imagenet16_train.zip and Imagenet16_val.zip '
                    '(Downsampled ImageNet 16x16, https://image-net.org) and '
                    'extract both into a folder ImageNet16 (train_data_batch_1 '
                    '.. train_data_batch_10, val_data), put it '
                    f'{_INTO_DIR}.')),
    # SVHN's cropped digits (train_32x32.mat; svhn_extra adds the 531,131
    # easier digits of extra_32x32.mat to training); mean and std are those
    # of train_32x32.mat.
    'svhn': _Spec(
        num_classes=10, mean=(0.4376821, 0.4437697, 0.47280442),
        std=(0.19803012, 0.20101562, 0.19703614),
        subdirs=('svhn', 'SVHN'), svhn_files=(_SVHN_TEST, _SVHN_TRAIN),
        image_shape=(32, 32, 3), class_names=tuple('0123456789'), tfds=False,
        how_to_get=(f'download {_SVHN_TRAIN} and {_SVHN_TEST} (Format 2: '
                    'cropped digits, http://ufldl.stanford.edu/housenumbers/) '
                    f'{_INTO_DIR}.')),
    'svhn_extra': _Spec(
        num_classes=10, mean=(0.4376821, 0.4437697, 0.47280442),
        std=(0.19803012, 0.20101562, 0.19703614),
        subdirs=('svhn', 'SVHN'),
        svhn_files=(_SVHN_TEST, _SVHN_TRAIN, _SVHN_EXTRA),
        image_shape=(32, 32, 3), class_names=tuple('0123456789'), tfds=False,
        how_to_get=(f'download {_SVHN_TRAIN}, {_SVHN_EXTRA} and {_SVHN_TEST} '
                    '(Format 2: cropped digits, '
                    'http://ufldl.stanford.edu/housenumbers/) '
                    f'{_INTO_DIR}.')),
}
"""Known dataset names and their constants."""


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
  """Loads a dataset into host memory as uint8 NHWC images, int32 labels.

  Where it looks, in order:

  * Directories: `data_dir` if given; otherwise `$DARTS_JAX_DATA` (if set) and
    then system locations (Debian's `dataset-fashion-mnist` installs
    `/usr/share/datasets/fashion-mnist`). Each directory is searched itself
    and through its dataset subfolders (e.g. `DIR/fashion-mnist`,
    `DIR/cifar10`), for the official files:

    - fashion_mnist, mnist: `train-images-idx3-ubyte.gz`,
      `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
      `t10k-labels-idx1-ubyte.gz` (or the same without `.gz`).
    - cifar10: `cifar-10-batches-py/`, `cifar-10-python.tar.gz`,
      `cifar-10-batches-bin/` or `cifar-10-binary.tar.gz`.
    - cifar100: `cifar-100-python/`, `cifar-100-python.tar.gz`,
      `cifar-100-binary/` or `cifar-100-binary.tar.gz`.
    - imagenet16_120: `ImageNet16/` holding `train_data_batch_1` ..
      `train_data_batch_10` and `val_data` (not in tensorflow-datasets).
    - svhn: `train_32x32.mat` and `test_32x32.mat`; svhn_extra also
      `extra_32x32.mat`, in training (not read from tensorflow-datasets).

  * tensorflow-datasets data prepared (in array_record format) under
    `data_dir`, else `$DARTS_JAX_DATA`, else tfds' default data directory.
    Data is never downloaded or prepared here: that needs TensorFlow.

  Args:
    name: One of 'fashion_mnist', 'mnist', 'cifar10', 'cifar100',
      'imagenet16_120', 'svhn', 'svhn_extra'.
    data_dir: Directory holding the data, or None for the defaults above.

  Returns:
    The `Dataset`; `mean`/`std` are the standard constants of the full
    training set, whatever subset is later used.

  Raises:
    ValueError: For an unknown name, or a corrupt or incomplete file.
    DatasetNotFoundError: When no copy is found, or only part of SVHN's; the
      message lists where it looked and how to get the data.
  """
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; known: {", ".join(DATASETS)}.')
  spec = DATASETS[name]
  root = data_dir or os.environ.get(DATA_DIR_ENV) or None
  directories = []
  if root:
    directories = [root] + [os.path.join(root, d) for d in spec.subdirs]
  if not data_dir:
    directories += spec.system_dirs

  arrays = None
  for directory in directories:
    if spec.cifar_formats:
      found = _find_cifar(spec.cifar_formats, directory)
      arrays = _load_cifar(*found) if found else None
    elif spec.svhn_files:
      paths = _find_svhn(directory, spec.svhn_files)
      arrays = _load_svhn(paths) if paths else None
    else:
      paths = _find_idx_files(directory)
      arrays = _load_idx(paths) if paths else None
    if arrays is not None:
      break
  else:
    if not spec.tfds:
      raise DatasetNotFoundError(
          f'{name} not found. Looked in directories: '
          f'{", ".join(directories) or "none"}. To get it: {spec.how_to_get}')
    builder = _tfds_builder(name, root)
    if not builder.is_prepared():
      looked = ', '.join(directories) or 'none'
      raise DatasetNotFoundError(
          f'{name} not found. Looked in directories: {looked}; and for '
          f'tensorflow-datasets prepared data in {builder.data_dir}. To get '
          'it: ' + spec.how_to_get.format(name=name))
    arrays = _load_tfds(builder)

  train_images, train_labels, test_images, test_labels = arrays
  return Dataset(
      name=name,
      train_images=train_images,
      train_labels=train_labels.astype(np.int32),
      test_images=test_images,
      test_labels=test_labels.astype(np.int32),
      num_classes=spec.num_classes,
      mean=np.asarray(spec.mean, np.float32),
      std=np.asarray(spec.std, np.float32),
  )


def class_names(name: str) -> list[str]:
  """The class names of dataset `name` by label (the labels' numbers where
  the dataset names none)."""
  spec = DATASETS[name]
  return list(spec.class_names) or [str(i) for i in range(spec.num_classes)]


def select_classes(ds: Dataset, classes: Sequence[int]) -> Dataset:
  """The examples of `classes` only, relabelled by position: label
  ``classes[i]`` becomes ``i``, so ``num_classes == len(classes)``.

  A split of one dataset into tasks, e.g. pre-training on some classes and
  fine-tuning on the others. Mean and std stay those of the full dataset.

  Raises:
    ValueError: for an empty or repeated selection or an unknown label.
  """
  classes = [int(c) for c in classes]
  if not classes or len(set(classes)) != len(classes):
    raise ValueError(f'classes must be distinct labels, got {classes}')
  unknown = [c for c in classes if not 0 <= c < ds.num_classes]
  if unknown:
    raise ValueError(f'classes {unknown} are not labels of {ds.name} '
                     f'(0..{ds.num_classes - 1})')
  relabel = np.full(ds.num_classes, -1, np.int32)
  relabel[classes] = np.arange(len(classes), dtype=np.int32)

  def keep(images, labels):
    mask = relabel[labels] >= 0
    return images[mask], relabel[labels[mask]]

  train_images, train_labels = keep(ds.train_images, ds.train_labels)
  test_images, test_labels = keep(ds.test_images, ds.test_labels)
  return dataclasses.replace(ds, train_images=train_images,
                             train_labels=train_labels,
                             test_images=test_images, test_labels=test_labels,
                             num_classes=len(classes))
