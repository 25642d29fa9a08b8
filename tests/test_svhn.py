"""Tests for the SVHN reader of darts_jax.data: the official cropped-digits MATLAB files, written here small with
scipy.io.savemat in their layout (X (32, 32, 3, N) uint8 indexed [row, column, channel, example], y (N, 1) with
labels 1..10, 10 for the digit 0), so the reader is checked against the format rather than against itself."""
import numpy as np
import pytest
import scipy.io

from darts_jax import data


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


def _svhn_images(n, first_id):
  """(n, 32, 32, 3) with R = row, G = 2 * column, B = a per-image id: a transposed or reordered read shows."""
  rows, columns = np.meshgrid(np.arange(32), np.arange(32), indexing='ij')
  images = np.zeros((n, 32, 32, 3), np.uint8)
  images[..., 0] = rows
  images[..., 1] = 2 * columns
  images[..., 2] = (first_id + np.arange(n))[:, None, None]
  return images


def _write_svhn_file(path, images, digits):
  """The official layout, spelled out: X[row, column, channel, example], y (N, 1) with 10 for the digit 0."""
  x = np.zeros((32, 32, 3, len(images)), np.uint8)
  for i, image in enumerate(images):
    x[:, :, :, i] = image
  y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
  scipy.io.savemat(str(path), {'X': x, 'y': y})


def _write_svhn(directory, n_train=5, n_test=3, n_extra=0):
  directory.mkdir(parents=True, exist_ok=True)
  splits = {'train': (n_train, 0), 'test': (n_test, 100)} | ({'extra': (n_extra, 200)} if n_extra else {})
  written = {}
  for split, (n, first_id) in splits.items():
    images, digits = _svhn_images(n, first_id), np.arange(n) % 10
    _write_svhn_file(directory / f'{split}_32x32.mat', images, digits)
    written[split] = images, digits
  return written


def test_svhn_reads_the_official_layout_and_maps_label_10_to_digit_0(tmp_path):
  written = _write_svhn(tmp_path / 'svhn', n_train=12, n_test=3)  # found in a dataset subfolder of data_dir
  ds = data.load_dataset('svhn', str(tmp_path))
  for images, labels, (want_images, want_digits) in ((ds.train_images, ds.train_labels, written['train']),
                                                      (ds.test_images, ds.test_labels, written['test'])):
    assert images.dtype == np.uint8 and images.shape == (len(want_images), 32, 32, 3)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_digits)
  assert 0 in ds.train_labels  # written as y = 10
  assert ds.num_classes == 10 and data.class_names('svhn') == list('0123456789')
  assert data.DATASETS['svhn'].image_shape == (32, 32, 3)
  assert ds.mean.shape == ds.std.shape == (3,) and ds.mean.dtype == np.float32


def test_svhn_extra_trains_on_train_and_extra(tmp_path):
  written = _write_svhn(tmp_path, n_train=4, n_test=2, n_extra=3)
  ds = data.load_dataset('svhn_extra', str(tmp_path))
  np.testing.assert_array_equal(ds.train_images, np.concatenate([written['train'][0], written['extra'][0]]))
  np.testing.assert_array_equal(ds.train_labels, np.concatenate([written['train'][1], written['extra'][1]]))
  np.testing.assert_array_equal(ds.test_images, written['test'][0])
  assert len(data.load_dataset('svhn', str(tmp_path)).train_images) == 4  # svhn leaves extra out


def test_svhn_missing_files_are_one_line_errors(tmp_path):
  with pytest.raises(data.DatasetNotFoundError, match=r'svhn not found\. Looked in directories: .*train_32x32\.mat'):
    data.load_dataset('svhn', str(tmp_path))
  _write_svhn(tmp_path)
  (tmp_path / 'test_32x32.mat').unlink()
  with pytest.raises(data.DatasetNotFoundError, match=r'lacks test_32x32\.mat beside train_32x32\.mat') as error:
    data.load_dataset('svhn', str(tmp_path))
  assert '\n' not in str(error.value)
  _write_svhn(tmp_path)
  with pytest.raises(data.DatasetNotFoundError, match=r'lacks extra_32x32\.mat'):
    data.load_dataset('svhn_extra', str(tmp_path))


@pytest.mark.parametrize('content,message', [
    (b'not a MATLAB file', 'is not a readable MATLAB file'),
    ({'X': np.zeros((28, 28, 1, 2), np.uint8), 'y': np.ones((2, 1))}, r'X has shape \(28, 28, 1, 2\)'),
    ({'X': np.zeros((32, 32, 3, 2), np.uint8), 'y': np.ones((3, 1))}, 'holds 2 images but 3 labels'),
    ({'X': np.zeros((32, 32, 3, 2), np.uint8), 'y': np.array([[0], [1]])}, r'labels must be 1\.\.10'),
    ({'images': np.zeros((32, 32, 3, 2), np.uint8)}, 'needs variables X and y'),
])
def test_svhn_corrupt_files_are_one_line_errors(tmp_path, content, message):
  _write_svhn(tmp_path)
  path = tmp_path / 'train_32x32.mat'
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    scipy.io.savemat(str(path), content)
  with pytest.raises(ValueError, match=message) as error:
    data.load_dataset('svhn', str(tmp_path))
  assert '\n' not in str(error.value) and str(path) in str(error.value)
