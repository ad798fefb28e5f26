# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_examples.data: embedded sets, IDX and CIFAR-10 readers."""

import gzip
import os
import pickle

import numpy as np
import pytest

from ssgd_examples import data


# ---------------------------------------------------------------- helpers


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
  header = bytes([0, 0, type_code, array.ndim])
  header += np.asarray(array.shape, '>u4').tobytes()
  dtype = {0x08: '>u1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4'}[type_code]
  return header + np.asarray(array, dtype).tobytes()


def _write_idx_set(folder, *, n_train=20, n_test=10, gz=False, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  arrays = {
    'train-images-idx3-ubyte': rng.integers(0, 256, (n_train, 28, 28), np.uint8),
    'train-labels-idx1-ubyte': rng.integers(0, 10, n_train, np.uint8),
    't10k-images-idx3-ubyte': rng.integers(0, 256, (n_test, 28, 28), np.uint8),
    't10k-labels-idx1-ubyte': rng.integers(0, 10, n_test, np.uint8),
  }
  for stem, arr in arrays.items():
    blob = _idx_bytes(arr)
    if gz:
      with open(os.path.join(folder, stem + '.gz'), 'wb') as f:
        f.write(gzip.compress(blob))
    else:
      with open(os.path.join(folder, stem), 'wb') as f:
        f.write(blob)
  return arrays


def _write_cifar_batch(path, n, seed, override=None):
  rng = np.random.default_rng(seed)
  d = {b'data': rng.integers(0, 256, (n, 3072), np.uint8),
       b'labels': rng.integers(0, 10, n).tolist(),
       b'batch_label': b'testing batch'}
  d.update(override or {})
  with open(path, 'wb') as f:
    pickle.dump(d, f, protocol=2)
  return d


def _write_cifar_set(folder, n=6):
  os.makedirs(folder, exist_ok=True)
  batches = {}
  for i, name in enumerate(
      [f'data_batch_{k}' for k in range(1, 6)] + ['test_batch']):
    batches[name] = _write_cifar_batch(os.path.join(folder, name), n, seed=i)
  return batches


# ---------------------------------------------------------------- embedded


@pytest.fixture(scope='module')
def mnist_subset():
  return data.load_dataset('mnist_subset', seed=0)


def test_mnist_subset_shapes_and_ranges(mnist_subset):
  ds = mnist_subset
  assert ds.name == 'mnist_subset' and ds.num_classes == 10
  assert ds.x_train.shape == (4000, 28, 28, 1)
  assert ds.x_test.shape == (1000, 28, 28, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
  # Stratified: the 500 images per digit split 400 / 100.
  np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 100))
  np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 400))
  assert ds.image_shape == (28, 28, 1)


def test_mnist_subset_mean_std_and_normalize(mnist_subset):
  ds = mnist_subset
  assert ds.mean.shape == (1,) and ds.std.shape == (1,)
  np.testing.assert_allclose(ds.mean, ds.x_train.mean(), rtol=1e-5)
  np.testing.assert_allclose(ds.std, ds.x_train.std(), rtol=1e-5)
  # Real MNIST statistics (0.1307, 0.3081 on the full set).
  assert 0.11 < ds.mean[0] < 0.15 and 0.28 < ds.std[0] < 0.34
  z = ds.normalize(ds.x_train)
  assert z.dtype == np.float32
  assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4


def test_mnist_subset_split_depends_on_seed_only(mnist_subset):
  other = data.load_mnist_subset(seed=1)
  assert not np.array_equal(mnist_subset.x_test, other.x_test)
  # Same seed, same split; train and test together are the 5,000 images.
  again = data.load_mnist_subset(seed=0)
  np.testing.assert_array_equal(again.x_test, mnist_subset.x_test)
  total = (mnist_subset.x_train.reshape(4000, -1).sum()
           + mnist_subset.x_test.reshape(1000, -1).sum())
  total_other = (other.x_train.reshape(4000, -1).sum()
                 + other.x_test.reshape(1000, -1).sum())
  np.testing.assert_allclose(total, total_other, rtol=1e-6)


def test_digits():
  ds = data.load_dataset('digits', seed=3)
  assert ds.x_train.shape[1:] == (8, 8, 1)
  assert len(ds.x_train) + len(ds.x_test) == 1797
  assert ds.x_train.max() <= 1.0 and ds.x_train.min() >= 0.0
  assert set(np.unique(ds.y_test)) == set(range(10))
  assert not np.array_equal(ds.x_test, data.load_digits(seed=4).x_test)


def test_validation_split(mnist_subset):
  val = mnist_subset.validation_split(0.1, seed=0)
  assert val.name == 'mnist_subset/validation'
  assert len(val.x_train) == 3600 and len(val.x_test) == 400
  np.testing.assert_array_equal(np.bincount(val.y_test), np.full(10, 40))
  np.testing.assert_allclose(val.mean, val.x_train.mean(), rtol=1e-5)
  # The held-out images come from the training set, none from the test set.
  train_rows = {r.tobytes() for r in mnist_subset.x_train.reshape(4000, -1)}
  assert all(r.tobytes() in train_rows for r in val.x_test.reshape(400, -1))


@pytest.mark.parametrize('kwargs, exc, match', [
  (dict(name='svhn'), ValueError, "name must be one of 'mnist_subset'"),
  (dict(name='digits', seed=-1), ValueError, 'seed'),
  (dict(name='digits', seed=1.5), TypeError, 'seed'),
])
def test_load_dataset_rejects_bad_arguments(kwargs, exc, match):
  name = kwargs.pop('name')
  with pytest.raises(exc, match=match):
    data.load_dataset(name, **kwargs)


def test_normalize_constant_channel_is_finite():
  x = np.zeros((4, 2, 2, 1), np.float32)
  y = np.zeros(4, np.int32)
  ds = data._make_dataset(x, y, x, y, num_classes=1, name='const')
  assert np.all(np.isfinite(ds.normalize(x)))


# ---------------------------------------------------------------- splits, batches


def test_stratified_split_is_a_partition():
  labels = np.repeat(np.arange(3), [10, 20, 30])
  a, b = data.stratified_split(labels, 0.1, seed=5)
  assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(60))
  np.testing.assert_array_equal(np.bincount(labels[b]), [1, 2, 3])


@pytest.mark.parametrize('fraction', [0, 1, -0.5, 1.5, True])
def test_stratified_split_rejects_bad_fraction(fraction):
  with pytest.raises(ValueError, match='fraction'):
    data.stratified_split(np.zeros(10, int), fraction)


def test_batches_cover_epoch_and_change_order_per_epoch():
  x = np.arange(100)
  seen = np.concatenate([b for b, _ in data.batches(x, x, 10, seed=0, epoch=0)])
  assert sorted(seen.tolist()) == list(range(100))
  other = np.concatenate([b for b, _ in data.batches(x, x, 10, seed=0, epoch=1)])
  assert not np.array_equal(seen, other)
  assert [len(b) for b, _ in data.batches(x, x, 30)] == [30, 30, 30]
  assert [len(b) for b, _ in data.batches(x, x, 30, drop_remainder=False)] == [
      30, 30, 30, 10]


@pytest.mark.parametrize('batch_size, exc', [(0, ValueError), (2.0, TypeError)])
def test_batches_rejects_bad_batch_size(batch_size, exc):
  with pytest.raises(exc, match='batch_size'):
    next(data.batches(np.zeros(4), np.zeros(4), batch_size))


def test_batches_rejects_length_mismatch():
  with pytest.raises(ValueError, match='same length'):
    next(data.batches(np.zeros(4), np.zeros(3), 2))


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize('gz', [False, True])
def test_load_mnist_from_idx(tmp_path, gz):
  arrays = _write_idx_set(tmp_path, gz=gz)
  ds = data.load_mnist(tmp_path)
  assert ds.name == 'mnist'
  assert ds.x_train.shape == (20, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
  np.testing.assert_allclose(
      ds.x_train[..., 0] * 255, arrays['train-images-idx3-ubyte'], atol=1e-3)
  np.testing.assert_array_equal(ds.y_test, arrays['t10k-labels-idx1-ubyte'])


def test_load_fashion_mnist_from_subfolder_and_env(tmp_path, monkeypatch):
  arrays = _write_idx_set(tmp_path / 'fashion_mnist', seed=2)
  ds = data.load_dataset('fashion_mnist', data_dir=tmp_path)
  assert ds.name == 'fashion_mnist'
  np.testing.assert_array_equal(ds.y_train, arrays['train-labels-idx1-ubyte'])
  monkeypatch.setenv('SSGD_OPTAX_DATA', str(tmp_path))
  np.testing.assert_array_equal(data.load_fashion_mnist().y_train, ds.y_train)


def test_missing_data_dir_says_where_to_get_data(monkeypatch, tmp_path):
  monkeypatch.delenv('SSGD_OPTAX_DATA', raising=False)
  with pytest.raises(data.DatasetError, match='data_dir.*fashion-mnist'):
    data.load_dataset('fashion_mnist')
  with pytest.raises(data.DatasetError, match='not a directory'):
    data.load_mnist(tmp_path / 'nope')


def test_missing_idx_file_is_named(tmp_path):
  _write_idx_set(tmp_path)
  os.remove(tmp_path / 't10k-labels-idx1-ubyte')
  with pytest.raises(data.DatasetError,
                     match=r"t10k-labels-idx1-ubyte.*yann\.lecun\.com"):
    data.load_mnist(tmp_path)


def _corrupt(blob: bytes, how: str) -> bytes:
  if how == 'truncated_data':
    return blob[:-7]
  if how == 'trailing_data':
    return blob + b'\x00'
  if how == 'bad_magic':
    return b'\x08\x03\x00\x00' + blob[4:]
  if how == 'bad_type':
    return blob[:2] + b'\x42' + blob[3:]
  if how == 'truncated_header':
    return blob[:9]
  if how == 'tiny':
    return blob[:2]
  if how == 'zero_dims':
    return blob[:3] + b'\x00'
  raise AssertionError(how)


@pytest.mark.parametrize('how, match', [
  ('truncated_data', 'truncated'),
  ('trailing_data', 'trailing data'),
  ('bad_magic', 'not an IDX file'),
  ('bad_type', 'not an IDX file'),
  ('truncated_header', 'truncated inside its header'),
  ('tiny', 'truncated'),
  ('zero_dims', '0 dimensions'),
])
def test_corrupt_idx_files(tmp_path, how, match):
  _write_idx_set(tmp_path)
  path = tmp_path / 'train-images-idx3-ubyte'
  path.write_bytes(_corrupt(path.read_bytes(), how))
  with pytest.raises(data.DatasetError, match=match) as info:
    data.load_mnist(tmp_path)
  assert 'train-images-idx3-ubyte' in str(info.value)


def test_truncated_gzip_idx(tmp_path):
  _write_idx_set(tmp_path, gz=True)
  path = tmp_path / 'train-labels-idx1-ubyte.gz'
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(data.DatasetError, match='train-labels.*gzip'):
    data.load_mnist(tmp_path)


def test_idx_inconsistent_sets(tmp_path):
  _write_idx_set(tmp_path)
  (tmp_path / 'train-labels-idx1-ubyte').write_bytes(
      _idx_bytes(np.zeros(19, np.uint8)))
  with pytest.raises(data.DatasetError, match='20 images.*19 labels'):
    data.load_mnist(tmp_path)
  (tmp_path / 'train-labels-idx1-ubyte').write_bytes(
      _idx_bytes(np.full(20, 12, np.uint8)))
  with pytest.raises(data.DatasetError, match='labels must be in 0..9'):
    data.load_mnist(tmp_path)
  (tmp_path / 'train-images-idx3-ubyte').write_bytes(
      _idx_bytes(np.zeros((20, 28, 28), np.int32), 0x0C))
  with pytest.raises(data.DatasetError, match='expected uint8 images'):
    data.load_mnist(tmp_path)


@pytest.mark.parametrize('code, dtype', [(0x0B, np.int16), (0x0D, np.float32)])
def test_read_idx_other_types_native_byte_order(tmp_path, code, dtype):
  arr = np.arange(-3, 3).reshape(2, 3).astype(dtype)
  path = tmp_path / 'x.idx'
  path.write_bytes(_idx_bytes(arr, code))
  out = data.read_idx(path)
  assert out.dtype == dtype and out.dtype.isnative
  np.testing.assert_array_equal(out, arr)


# ---------------------------------------------------------------- CIFAR-10


def test_load_cifar10(tmp_path):
  batches = _write_cifar_set(tmp_path / 'cifar-10-batches-py')
  ds = data.load_dataset('cifar10', data_dir=tmp_path)
  assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_test.shape == (6, 32, 32, 3)
  assert ds.mean.shape == (3,) and ds.std.shape == (3,)
  raw = batches['data_batch_1'][b'data'][0]
  # Row layout: 1024 red values, then green, then blue, each row-major 32x32.
  np.testing.assert_allclose(ds.x_train[0, :, :, 0].ravel() * 255, raw[:1024],
                             atol=1e-3)
  np.testing.assert_allclose(ds.x_train[0, 0, 1, 2] * 255, raw[2048 + 1],
                             atol=1e-3)
  np.testing.assert_array_equal(ds.y_test, batches['test_batch'][b'labels'])


def test_cifar10_missing_batch_is_named(tmp_path):
  _write_cifar_set(tmp_path)
  os.remove(tmp_path / 'test_batch')
  with pytest.raises(data.DatasetError, match=r'test_batch.*cs\.toronto\.edu'):
    data.load_cifar10(tmp_path)


def test_cifar10_truncated_batch(tmp_path):
  _write_cifar_set(tmp_path)
  path = tmp_path / 'data_batch_3'
  path.write_bytes(path.read_bytes()[:500])
  with pytest.raises(data.DatasetError, match='data_batch_3.*truncated or corrupt'):
    data.load_cifar10(tmp_path)


@pytest.mark.parametrize('override, match', [
  ({b'data': np.zeros((6, 100), np.uint8)}, r'uint8\[N, 3072\]'),
  ({b'data': np.zeros((6, 3072), np.float32)}, r'uint8\[N, 3072\]'),
  ({b'labels': [0, 1]}, '"labels" must be 6 ints'),
  ({b'labels': [0, 1, 2, 3, 4, 10]}, 'labels must be in 0..9'),
])
def test_cifar10_malformed_batch(tmp_path, override, match):
  path = tmp_path / 'data_batch_1'
  _write_cifar_batch(path, 6, seed=0, override=override)
  with pytest.raises(data.DatasetError, match=match) as info:
    data.read_cifar10_batch(path)
  assert 'data_batch_1' in str(info.value)


def test_cifar10_batch_without_keys_or_not_dict(tmp_path):
  path = tmp_path / 'b'
  path.write_bytes(pickle.dumps({b'images': 1}))
  with pytest.raises(data.DatasetError, match='missing key'):
    data.read_cifar10_batch(path)
  path.write_bytes(pickle.dumps([1, 2]))
  with pytest.raises(data.DatasetError, match='expected a pickled dict'):
    data.read_cifar10_batch(path)


class _Evil:

  def __reduce__(self):
    return (os.system, ('echo pwned',))


def test_cifar10_reader_refuses_code_in_pickles(tmp_path):
  path = tmp_path / 'data_batch_1'
  path.write_bytes(pickle.dumps({b'data': _Evil(), b'labels': []}))
  with pytest.raises(data.DatasetError, match='refusing to load'):
    data.read_cifar10_batch(path)
