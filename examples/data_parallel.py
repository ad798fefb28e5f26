# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Data-parallel SSGD in privacy mode: a Flax NNX CNN on the embedded MNIST subset.

    python examples/data_parallel.py --backend shard_map --devices 8
    python examples/data_parallel.py --backend pmap --devices 4 --mode optimization

On CPU the devices are virtual (``--xla_force_host_platform_device_count``,
set here before JAX starts). Each device computes the gradient of its shard of
the global batch and unit-normalises it *before* the all-reduce, so what it
shares has norm 1 per layer (``--mode privacy``, the default):

    optax.chain(unit_normalize(scope), aggregate(axis), optax.sgd(schedule, 0.9))

``--mode optimization`` averages first and normalises the average. Prints the
loss per epoch and the test accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import ssgd_optax
from ssgd_optax import parallel


class CNN(nnx.Module):
  """28x28x1 -> conv(f) -> pool -> conv(2f) -> pool -> dense(10), ReLU."""

  def __init__(self, features: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, features, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(features, 2 * features, (3, 3), rngs=rngs)
    self.out = nnx.Linear(7 * 7 * 2 * features, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    return self.out(x.reshape(x.shape[0], -1))


def load_data(seed: int, train_size: int | None):
  """The embedded 5,000-image MNIST subset, standardised."""
  from ssgd_optax import data  # pylint: disable=import-outside-toplevel
  ds = data.load_dataset('mnist_subset', seed=seed)
  x_train, y_train = ds.normalize(ds.x_train), ds.y_train
  if train_size is not None:
    x_train, y_train = x_train[:train_size], y_train[:train_size]
  return (x_train.astype(np.float32), y_train), (ds.normalize(ds.x_test).astype(np.float32),
                                                 ds.y_test)


def make_optimizer(mode: str, scope: str, axis: str, schedule) -> optax.GradientTransformation:
  """Privacy mode normalises each device's gradient before it is shared."""
  norm = ssgd_optax.unit_normalize(scope)
  share = parallel.aggregate(axis)
  parts = (norm, share) if mode == 'privacy' else (share, norm)
  return optax.chain(*parts, optax.sgd(schedule, momentum=0.9))


def train(*, backend: str = 'shard_map', devices: int = 8, mode: str = 'privacy',
          scope: str = 'per_layer', epochs: int = 3, batch_size: int = 128,
          learning_rate: float = 0.1, features: int = 16, train_size: int | None = None,
          seed: int = 0, verbose: bool = True) -> float:
  """Trains the CNN data-parallel on ``devices`` devices; returns test accuracy."""
  if devices > jax.device_count():
    raise ValueError(f'--devices {devices} exceeds the {jax.device_count()} devices JAX sees.')
  if batch_size % devices:
    raise ValueError(f'--batch-size {batch_size} must be divisible by --devices {devices}.')
  (x_train, y_train), (x_test, y_test) = load_data(seed, train_size)
  steps_per_epoch = len(x_train) // batch_size
  schedule = optax.cosine_decay_schedule(learning_rate, max(1, epochs * steps_per_epoch))
  graphdef, params = nnx.split(CNN(features, rngs=nnx.Rngs(seed)), nnx.Param)

  def loss_fn(p, batch):
    logits = nnx.merge(graphdef, p)(batch['x'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']).mean()

  device_list = jax.devices()[:devices]
  if backend == 'pmap':
    tx = make_optimizer(mode, scope, 'batch', schedule)
    step = parallel.pmap_train_step(loss_fn, tx, axis_name='batch', donate=True)
    state = parallel.replicate(tx.init(params), device_list)
    params = parallel.replicate(params, device_list)
    put = lambda b: parallel.split_for_pmap(b, device_list)
    fetch = parallel.unreplicate
  elif backend == 'shard_map':
    tx = make_optimizer(mode, scope, 'data', schedule)
    mesh = parallel.data_mesh(devices)
    step = parallel.shard_map_train_step(loss_fn, tx, mesh, axis_name='data', donate=True)
    params = parallel.replicate_on_mesh(params, mesh)
    state = tx.init(params)
    put = lambda b: parallel.shard_batch(b, mesh)
    fetch = lambda p: p
  else:
    raise ValueError(f"backend must be 'pmap' or 'shard_map'; got {backend!r}.")

  rng = np.random.default_rng(seed)
  for epoch in range(epochs):
    start, losses = time.perf_counter(), []
    perm = rng.permutation(len(x_train))
    for i in range(steps_per_epoch):
      idx = perm[i * batch_size:(i + 1) * batch_size]
      params, state, loss = step(params, state, put({'x': x_train[idx], 'y': y_train[idx]}))
      losses.append(loss)
    if verbose:
      mean_loss = float(np.mean([np.asarray(l).mean() for l in losses]))
      print(f'epoch {epoch + 1}: loss {mean_loss:.4f} ({time.perf_counter() - start:.1f} s)')

  model = nnx.merge(graphdef, jax.device_get(fetch(params)))
  predict = nnx.jit(lambda m, x: jnp.argmax(m(x), -1))
  accuracy = float(np.mean(np.asarray(predict(model, x_test)) == y_test))
  if verbose:
    print(f'{backend} on {devices} devices, {mode} mode, scope={scope}: '
          f'test accuracy {accuracy:.4f}')
  return accuracy


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--backend', choices=('pmap', 'shard_map'), default='shard_map')
  p.add_argument('--devices', type=int, default=8)
  p.add_argument('--mode', choices=('privacy', 'optimization'), default='privacy')
  p.add_argument('--scope', choices=ssgd_optax.SCOPES, default='per_layer')
  p.add_argument('--epochs', type=int, default=3)
  p.add_argument('--batch-size', type=int, default=128, help='global batch size')
  p.add_argument('--learning-rate', type=float, default=0.1)
  p.add_argument('--features', type=int, default=16)
  p.add_argument('--train-size', type=int, default=None, help='use the first N images')
  p.add_argument('--seed', type=int, default=0)
  return p


def main(argv: list[str] | None = None) -> float:
  args = _parser().parse_args(argv)
  return train(backend=args.backend, devices=args.devices, mode=args.mode, scope=args.scope,
               epochs=args.epochs, batch_size=args.batch_size,
               learning_rate=args.learning_rate, features=args.features,
               train_size=args.train_size, seed=args.seed)


def _ensure_host_devices(argv: list[str]) -> None:
  """Asks XLA for enough virtual CPU devices; only effective before JAX starts."""
  args, _ = _parser().parse_known_args(argv)
  flag = '--xla_force_host_platform_device_count'
  if flag not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={args.devices}".strip()


if __name__ == '__main__':
  _ensure_host_devices(sys.argv[1:])
  main()
