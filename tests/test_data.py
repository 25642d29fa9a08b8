"""Tests for darts_jax.data: file formats, splits, batching, augmentation.

Every archive is written here, small, in the exact official layout (IDX headers,
CIFAR pickles with bytes keys written with protocol 2 like the Python 2
originals, CIFAR binary records), so the loaders are checked against the formats
rather than against themselves.
"""

import gzip
import io
import os
import pickle
import shutil
import tarfile
import threading

import jax
import numpy as np
import pytest

from darts_jax import data

FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


# ----------------------------------------------------------------------------
# Writers for the official formats.


def _write_idx(path, array, magic, compress=True):
  header = np.array([magic, *array.shape], '>i4').tobytes()
  payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
  with (gzip.open if compress else open)(path, 'wb') as f:
    f.write(payload)


def _write_idx_dataset(directory, n_train=6, n_test=4, h=5, w=4,
                       compress=True):
  """Writes the four IDX files; images are non-square to catch H/W swaps."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  arrays = {
      'train-images-idx3-ubyte': rng.integers(0, 256, (n_train, h, w)),
      'train-labels-idx1-ubyte': rng.integers(0, 10, (n_train,)),
      't10k-images-idx3-ubyte': rng.integers(0, 256, (n_test, h, w)),
      't10k-labels-idx1-ubyte': rng.integers(0, 10, (n_test,)),
  }
  for name, array in arrays.items():
    path = os.path.join(directory, name + ('.gz' if compress else ''))
    _write_idx(path, array, 2051 if array.ndim == 3 else 2049, compress)
  return [arrays[k] for k in arrays]


def _cifar_images(n, first_id):
  """(n, 32, 32, 3) with R = row y, G = 2 * column x, B = a per-image id."""
  y, x = np.meshgrid(np.arange(32), np.arange(32), indexing='ij')
  images = np.zeros((n, 32, 32, 3), np.uint8)
  images[..., 0] = y
  images[..., 1] = 2 * x
  images[..., 2] = (first_id + np.arange(n))[:, None, None]
  return images


def _cifar_rows(images):
  """The official row layout, spelled out: 1024 red values in row-major
  order, then 1024 green, then 1024 blue."""
  n = len(images)
  return np.concatenate([images[..., 0].reshape(n, 1024),
                         images[..., 1].reshape(n, 1024),
                         images[..., 2].reshape(n, 1024)], axis=1)


def _write_members(target, folder, files, archive):
  """Writes {name: bytes} into `target` as a .tar.gz under folder/, or
  extracted into target/folder/."""
  if archive:
    with tarfile.open(target, 'w:gz') as tar:
      for name, payload in files.items():
        info = tarfile.TarInfo(f'{folder}/{name}')
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
  else:
    os.makedirs(os.path.join(target, folder))
    for name, payload in files.items():
      with open(os.path.join(target, folder, name), 'wb') as f:
        f.write(payload)


def _cifar_splits(num_classes, batches, per_batch, n_test):
  """Images and labels of each train batch and of the test batch."""
  rng = np.random.default_rng(1)
  out = []
  for b in range(batches + 1):
    n = n_test if b == batches else per_batch
    out.append((_cifar_images(n, first_id=10 * b),
                rng.integers(0, num_classes, n),
                rng.integers(0, 20, n)))  # coarse labels for CIFAR-100
  return out[:-1], out[-1]


def _write_cifar(directory, name, kind, archive):
  """Writes a small CIFAR copy in the official `kind` ('python'/'binary').

  Returns the expected (train_images, train_labels, test_images, test_labels).
  """
  cifar10 = name == 'cifar10'
  train, test = _cifar_splits(10 if cifar10 else 100, 5 if cifar10 else 1,
                              per_batch=2, n_test=3)
  if cifar10:
    names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  else:
    names = ['train', 'test']
  files = {}
  for file_name, (images, fine, coarse) in zip(names, train + [test]):
    if kind == 'python':
      batch = {b'batch_label': file_name.encode(),
               b'data': _cifar_rows(images),
               b'filenames': [b'img_%d.png' % i for i in range(len(images))]}
      if cifar10:
        batch[b'labels'] = fine.tolist()
      else:
        batch[b'fine_labels'] = fine.tolist()
        batch[b'coarse_labels'] = coarse.tolist()
      files[file_name] = pickle.dumps(batch, protocol=2)
    else:
      labels = fine[:, None] if cifar10 else np.stack([coarse, fine], 1)
      records = np.concatenate([labels, _cifar_rows(images)], axis=1)
      files[file_name + '.bin'] = records.astype(np.uint8).tobytes()
  meta = {b'label_names': [b'class_%d' % i for i in range(10)]}
  if kind == 'python':
    files['batches.meta' if cifar10 else 'meta'] = pickle.dumps(meta, 2)
  else:
    files['batches.meta.txt' if cifar10 else 'fine_label_names.txt'] = b'x\n'
  stem = ('cifar-10' if cifar10 else 'cifar-100') + '-' + kind
  folder = {'cifar-10-python': 'cifar-10-batches-py',
            'cifar-10-binary': 'cifar-10-batches-bin'}.get(stem, stem)
  target = os.path.join(directory, stem + '.tar.gz') if archive else directory
  _write_members(target, folder, files, archive)
  cat = lambda parts, i: np.concatenate([p[i] for p in parts])
  return cat(train, 0), cat(train, 1), test[0], test[1]


# ----------------------------------------------------------------------------
# Loading.


def test_fashion_mnist_idx_gz_round_trip(tmp_path):
  train_x, train_y, test_x, test_y = _write_idx_dataset(tmp_path)
  ds = data.load_dataset('fashion_mnist', data_dir=str(tmp_path))
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert ds.train_images.shape == (6, 5, 4, 1)
  np.testing.assert_array_equal(ds.train_images[..., 0], train_x)
  np.testing.assert_array_equal(ds.train_labels, train_y)
  np.testing.assert_array_equal(ds.test_images[..., 0], test_x)
  np.testing.assert_array_equal(ds.test_labels, test_y)
  assert ds.num_classes == 10 and ds.name == 'fashion_mnist'
  assert ds.mean.shape == ds.std.shape == (1,) and ds.mean.dtype == np.float32


def test_mnist_uncompressed_idx_in_env_subfolder(tmp_path, monkeypatch):
  train_x, *_ = _write_idx_dataset(tmp_path / 'mnist', compress=False)
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  ds = data.load_dataset('mnist')
  np.testing.assert_array_equal(ds.train_images[..., 0], train_x)


def test_corrupt_idx_files_are_reported(tmp_path):
  _write_idx_dataset(tmp_path)
  images = tmp_path / 'train-images-idx3-ubyte.gz'
  shutil.copy(tmp_path / 'train-labels-idx1-ubyte.gz', images)
  with pytest.raises(ValueError, match='magic number is 2049, expected 2051'):
    data.load_dataset('fashion_mnist', data_dir=str(tmp_path))
  _write_idx(images, np.zeros((6, 5, 4)), 2051)
  with gzip.open(images, 'rb') as f:
    payload = f.read()
  with gzip.open(images, 'wb') as f:
    f.write(payload[:-1])
  with pytest.raises(ValueError, match='holds 119 values'):
    data.load_dataset('fashion_mnist', data_dir=str(tmp_path))
  _write_idx(images, np.zeros((5, 5, 4)), 2051)
  with pytest.raises(ValueError, match='holds 5 images but .* 6 labels'):
    data.load_dataset('fashion_mnist', data_dir=str(tmp_path))


@pytest.mark.parametrize('name,kind,archive', [
    ('cifar10', 'python', True),
    ('cifar10', 'python', False),
    ('cifar10', 'binary', True),
    ('cifar10', 'binary', False),
    ('cifar100', 'python', True),
    ('cifar100', 'binary', True),
])
def test_cifar_official_formats_round_trip(tmp_path, name, kind, archive):
  train_x, train_y, test_x, test_y = _write_cifar(tmp_path, name, kind, archive)
  ds = data.load_dataset(name, data_dir=str(tmp_path))
  assert ds.train_images.shape == (len(train_y), 32, 32, 3)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  # Channel order and H/W: R holds the row, G twice the column, B the id.
  assert ds.train_images[1, 7, 2].tolist() == [7, 4, 1]
  np.testing.assert_array_equal(ds.train_images, train_x)
  np.testing.assert_array_equal(ds.train_labels, train_y)  # fine for CIFAR-100
  np.testing.assert_array_equal(ds.test_images, test_x)
  np.testing.assert_array_equal(ds.test_labels, test_y)
  assert ds.num_classes == (10 if name == 'cifar10' else 100)
  assert ds.mean.shape == ds.std.shape == (3,)


def test_cifar_pickle_cannot_run_code(tmp_path):
  marker = tmp_path / 'ran'

  class Payload:
    def __reduce__(self):
      return os.mkdir, (str(marker),)

  _write_cifar(tmp_path, 'cifar100', 'python', archive=False)
  with open(tmp_path / 'cifar-100-python' / 'train', 'wb') as f:
    pickle.dump({b'data': Payload()}, f, protocol=2)
  with pytest.raises(pickle.UnpicklingError, match='refusing'):
    data.load_dataset('cifar100', data_dir=str(tmp_path))
  assert not marker.exists()


def test_incomplete_cifar_archive_names_missing_files(tmp_path):
  with tarfile.open(tmp_path / 'cifar-10-python.tar.gz', 'w:gz'):
    pass
  with pytest.raises(ValueError, match='lacks data_batch_1'):
    data.load_dataset('cifar10', data_dir=str(tmp_path))


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.load_dataset('cifar10', data_dir=str(tmp_path))
  message = str(error.value)
  assert isinstance(error.value, FileNotFoundError)
  assert str(tmp_path / 'cifar10') in message
  assert 'cifar-10-python.tar.gz' in message and 'tfds.builder(' in message
  with pytest.raises(data.DatasetNotFoundError,
                     match='apt-get install dataset-fashion-mnist'):
    data.load_dataset('fashion_mnist', data_dir=str(tmp_path))


def test_unknown_dataset_lists_known_names():
  with pytest.raises(ValueError, match='known: fashion_mnist, mnist, cifar10'):
    data.load_dataset('imagenet')


def _prepare_tfds(dataset_name, data_dir, images, labels):
  """Prepares `name` in tfds' array_record format without TensorFlow.

  The registered builder is subclassed to yield our examples instead of
  downloading. Images are handed over as PNG files: encoding arrays would need
  TensorFlow, PNG bytes pass through. (tfds.testing.mock_data does serve
  `data_source` without TensorFlow, but its mock lacks `__getitems__`, the
  batched read the loader uses, and it skips the file reading and decoding
  that this exercises.)
  """
  import PIL.Image
  import tensorflow_datasets as tfds

  registered = tfds.builder_cls(dataset_name)

  class Prepared(registered, skip_registration=True):
    name = dataset_name
    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(0, len(images) - 2),
              'test': self._generate_examples(len(images) - 2, len(images))}

    def _generate_examples(self, start, stop):
      for i in range(start, stop):
        png = io.BytesIO()
        PIL.Image.fromarray(images[i].squeeze(-1) if images.shape[-1] == 1
                            else images[i]).save(png, format='PNG')
        png.seek(0)
        example = {'image': png, 'label': int(labels[i])}
        if dataset_name == 'cifar10':
          example['id'] = f'train_{i}'
        yield i, example

  Prepared(data_dir=data_dir, file_format='array_record').download_and_prepare()


@pytest.mark.parametrize('name', ['cifar10', 'fashion_mnist'])
def test_tfds_prepared_data_is_read_without_tensorflow(tmp_path, name):
  if name == 'cifar10':
    images = _cifar_images(7, first_id=0)
  else:
    images = (np.arange(7)[:, None, None, None] * np.ones((7, 28, 28, 1))
              ).astype(np.uint8)
  labels = np.arange(7) % 10
  _prepare_tfds(name, str(tmp_path), images, labels)
  ds = data.load_dataset(name, data_dir=str(tmp_path))
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert ds.train_images.shape == (5,) + images.shape[1:]
  assert len(ds.test_images) == 2
  # tfds shuffles records when preparing: match them through the image id.
  ids = np.concatenate([ds.train_images, ds.test_images])[:, 0, 0, -1]
  assert sorted(ids.tolist()) == list(range(7))
  np.testing.assert_array_equal(
      np.concatenate([ds.train_images, ds.test_images]), images[ids])
  np.testing.assert_array_equal(
      np.concatenate([ds.train_labels, ds.test_labels]), labels[ids])


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_SYSTEM_DIR),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_real_fashion_mnist_from_debian_package():
  ds = data.load_dataset('fashion_mnist')
  assert ds.train_images.shape == (60000, 28, 28, 1)
  assert ds.test_images.shape == (10000, 28, 28, 1)
  assert sorted(np.unique(ds.train_labels).tolist()) == list(range(10))
  # Exact statistics from the histogram of the 47M pixel values.
  counts = np.bincount(ds.train_images.ravel(), minlength=256)
  values = np.arange(256) / 255
  mean = counts @ values / counts.sum()
  std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
  # The constants are these rounded to float32 (~3e-8 at this magnitude).
  np.testing.assert_allclose(ds.mean, [mean], atol=1e-7)
  np.testing.assert_allclose(ds.std, [std], atol=1e-7)


# ----------------------------------------------------------------------------
# Splits and batching.


def _toy_dataset(n=11):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(
      (1, 2, 2, 1), np.uint8)
  labels = np.arange(n, dtype=np.int32)
  return data.Dataset('toy', images, labels, images[:2], labels[:2], 10,
                      np.zeros(1, np.float32), np.ones(1, np.float32))


def test_search_split_is_first_and_second_half():
  train_x, train_y, valid_x, valid_y = data.search_split(_toy_dataset(11))
  assert train_y.tolist() == list(range(5))  # floor(0.5 * 11)
  assert valid_y.tolist() == list(range(5, 11))
  assert train_x[:, 0, 0, 0].tolist() == train_y.tolist()
  assert valid_x[:, 0, 0, 0].tolist() == valid_y.tolist()
  _, train_y, _, valid_y = data.search_split(_toy_dataset(11), subset=6)
  assert train_y.tolist() == [0, 1, 2] and valid_y.tolist() == [3, 4, 5]
  with pytest.raises(ValueError, match='subset=12'):
    data.search_split(_toy_dataset(11), subset=12)


def test_num_batches_drops_remainder_and_caps():
  assert data.num_batches(10, 3) == 3
  assert data.num_batches(10, 3, max_steps=2) == 2
  assert data.num_batches(10, 3, max_steps=5) == 3
  with pytest.raises(ValueError, match='batch_size 11 exceeds the 10'):
    data.num_batches(10, 11)


def _labels(batches):
  return [labels.tolist() for _, labels in batches]


def test_epoch_batches_are_seeded_permutations():
  x, y = np.arange(40)[:, None] * 10, np.arange(40)
  kwargs = dict(batch_size=8, seed=3, epoch=2)
  batches = list(data.epoch_batches(x, y, **kwargs))
  assert len(batches) == 5
  for images, labels in batches:
    np.testing.assert_array_equal(images[:, 0], labels * 10)  # pairs kept
  seen = np.concatenate([labels for _, labels in batches])
  assert sorted(seen.tolist()) == list(range(40))  # a permutation
  assert _labels(data.epoch_batches(x, y, **kwargs)) == _labels(batches)
  assert _labels(data.epoch_batches(x, y, batch_size=8, seed=3, epoch=3)
                 ) != _labels(batches)
  assert _labels(data.epoch_batches(x, y, **kwargs, stream=1)
                 ) != _labels(batches)
  assert len(list(data.epoch_batches(x, y, **kwargs, max_steps=2))) == 2


def test_epoch_batches_process_slices_concatenate_to_global_batch():
  x, y = np.arange(30)[:, None], np.arange(30)
  kwargs = dict(batch_size=6, seed=0, epoch=1)
  whole = _labels(data.epoch_batches(x, y, **kwargs))
  parts = [_labels(data.epoch_batches(x, y, **kwargs, process_index=p,
                                      process_count=2)) for p in range(2)]
  assert [a + b for a, b in zip(*parts)] == whole
  assert all(len(batch) == 3 for batch in parts[0])


def test_epoch_batches_resume_equals_skipping():
  x, y = np.arange(30)[:, None], np.arange(30)
  kwargs = dict(batch_size=4, seed=5, epoch=0)
  whole = _labels(data.epoch_batches(x, y, **kwargs))
  assert _labels(data.epoch_batches(x, y, **kwargs, start_step=3)) == whole[3:]
  assert _labels(data.epoch_batches(x, y, **kwargs, start_step=7)) == []


def test_epoch_batches_reports_bad_arguments_at_call():
  x, y = np.arange(30)[:, None], np.arange(30)
  with pytest.raises(ValueError, match='6 is not divisible by the 4 proc'):
    data.epoch_batches(x, y, batch_size=6, seed=0, epoch=0, process_count=4)
  with pytest.raises(ValueError, match='start_step 8'):
    data.epoch_batches(x, y, batch_size=4, seed=0, epoch=0, start_step=8)


def test_prefetcher_yields_everything_in_order_and_reraises():
  with data.Prefetcher(iter(range(7))) as items:
    assert list(items) == list(range(7))

  def failing():
    yield 1
    raise RuntimeError('source broke')

  items = data.Prefetcher(failing())
  assert next(items) == 1
  with pytest.raises(RuntimeError, match='source broke'):
    next(items)
  items.close()


def test_prefetcher_close_stops_the_thread():
  def endless():
    i = 0
    while True:
      yield i
      i += 1

  before = set(threading.enumerate())
  with data.Prefetcher(endless(), size=2) as items:
    assert [next(items) for _ in range(3)] == [0, 1, 2]
  assert set(threading.enumerate()) <= before  # the producer has exited
  with pytest.raises(StopIteration):
    next(items)


def test_sharded_adds_device_axis_and_checks_divisibility():
  batch = (np.arange(24).reshape(6, 2, 2), np.arange(6))
  images, labels = data.sharded(batch, 3)
  assert images.shape == (3, 2, 2, 2) and labels.shape == (3, 2)
  np.testing.assert_array_equal(labels, [[0, 1], [2, 3], [4, 5]])
  with pytest.raises(ValueError, match='batch size 6 is not divisible by the 4 '
                                       'devices'):
    data.sharded(batch, 4)


# ----------------------------------------------------------------------------
# On-device preprocessing.


def test_normalize():
  images = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1) * np.ones(
      (1, 1, 1, 2), np.uint8)
  out = data.normalize(images, mean=np.array([0.2, 0.5]),
                       std=np.array([0.5, 0.25]))
  expected = (np.array([0, 0.2, 1.0])[:, None] - [0.2, 0.5]) / [0.5, 0.25]
  assert out.dtype == np.float32
  # float32 arithmetic on O(1) values: 1e-6 absolute is a few ulps.
  np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)


def _find_crop(padded, out):
  """(dy, dx, flipped) such that `out` is that window of `padded`, or None."""
  h, w = out.shape[:2]
  for dy in range(padded.shape[0] - h + 1):
    for dx in range(padded.shape[1] - w + 1):
      window = padded[dy:dy + h, dx:dx + w]
      for flipped in (False, True):
        if np.array_equal(window[:, ::-1] if flipped else window, out):
          return dy, dx, flipped
  return None


def test_random_crop_flip_is_a_translation_of_the_zero_padded_image():
  n, h, w = 64, 6, 5
  images = (1 + np.arange(n * h * w * 2) % 250).astype(np.uint8).reshape(
      n, h, w, 2)  # Distinct nonzero pixels: no window matches by accident.
  crop = jax.jit(data.random_crop_flip, static_argnames='padding')
  out = np.asarray(crop(jax.random.key(0), images, padding=2))
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  found = [_find_crop(padded[i], out[i]) for i in range(n)]
  assert None not in found
  # Offsets span {0, ..., 2 padding} on each axis (RandomCrop's range); both
  # flip outcomes occur. The key is fixed, so this is deterministic.
  assert {dy for dy, _, _ in found} == set(range(5))
  assert {dx for _, dx, _ in found} == set(range(5))
  assert {flipped for _, _, flipped in found} == {False, True}
  np.testing.assert_array_equal(crop(jax.random.key(0), images, padding=2), out)
  assert not np.array_equal(crop(jax.random.key(1), images, padding=2), out)


def test_cutout_zeroes_one_clipped_square_per_image():
  n, h, w, length = 256, 12, 10, 6
  images = np.ones((n, h, w, 3), np.float32)
  cut = jax.jit(data.cutout, static_argnames='length')
  out = np.asarray(cut(jax.random.key(0), images, length=length))
  half = length // 2
  clipped = 0
  for image in out:
    zero = image == 0
    assert (zero == zero[..., :1]).all()  # same square in every channel
    rows = np.flatnonzero(zero[..., 0].any(1))
    cols = np.flatnonzero(zero[..., 0].any(0))
    y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    assert zero[..., 0].sum() == (y2 - y1) * (x2 - x1)  # a full rectangle
    for lo, hi, size in ((y1, y2, h), (x1, x2, w)):
      assert half <= hi - lo <= length
      if hi - lo < length:  # Shorter only where clipped by a border.
        assert lo == 0 or hi == size
        clipped += 1
    assert np.all(image[~zero] == 1)
  assert clipped > 0
  np.testing.assert_array_equal(cut(jax.random.key(0), images, length=length),
                                out)
  assert not np.array_equal(cut(jax.random.key(1), images, length=length), out)
