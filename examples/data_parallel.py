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
loss per epoch (``--quiet``: only the result) and the test accuracy.

Several processes (one ``jax.distributed`` job; every process runs the same
command with its own ``--process-id``, and each feeds its slice of the global
batch)::

    export XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu
    python examples/data_parallel.py --coordinator 127.0.0.1:12345 --num-processes 2 --process-id 0 &
    python examples/data_parallel.py --coordinator 127.0.0.1:12345 --num-processes 2 --process-id 1 &
    wait
"""


import dataclasses
import os
import sys
import time

# The harness first: Ctrl-C during the imports below also ends in one line (exit 130).
from ssgd_examples import cli

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import ssgd_optax
from ssgd_optax import parallel

TRAIN_IMAGES = 4000  # the embedded MNIST subset's training split
flag = cli.flag


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
  from ssgd_examples import data  # pylint: disable=import-outside-toplevel
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


@dataclasses.dataclass(frozen=True)
class Config(cli.DistributedFlags):
  """The example's settings; each field is a flag (``batch_size`` -> ``--batch-size``)."""
  backend: str = flag('shard_map', 'how the step is distributed', choices=('pmap', 'shard_map'))
  devices: int | None = flag(None, 'devices (default 8 in one process; all devices of the job '
                             'with several processes)', type=int, check=cli.at_least(1))
  mode: str = flag('privacy', 'privacy: normalise each device gradient before the all-reduce; '
                   'optimization: after', choices=('privacy', 'optimization'))
  scope: str = flag('per_layer', 'normalisation scope', choices=ssgd_optax.SCOPES)
  epochs: int = flag(3, 'passes over the training set', check=cli.at_least(1))
  batch_size: int = flag(128, 'global batch size', check=cli.at_least(1))
  learning_rate: float = flag(0.1, 'peak learning rate (cosine decay)',
                              check=cli.finite(positive=True))
  features: int = flag(16, 'channels of the first convolution', check=cli.at_least(1))
  train_size: int | None = flag(None, f'use the first N of the {TRAIN_IMAGES} training images',
                                type=int, check=cli.in_range(1, TRAIN_IMAGES))
  seed: int = flag(0, 'initialisation and data-order seed', check=cli.at_least(0))
  quiet: bool = flag(False, 'no progress bar and no per-epoch lines')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    self.validate_distributed()
    n = self.train_size or TRAIN_IMAGES
    if self.batch_size > n:
      raise ValueError(f'--batch-size {self.batch_size} exceeds the {n} training images '
                       '(--train-size): an epoch would have no step.')
    if self.devices is not None and self.batch_size % self.devices:
      raise ValueError(f'--batch-size {self.batch_size} must be divisible by --devices '
                       f'{self.devices}.')


def resolve_devices(config: Config) -> int:
  """The device count to use; ``ValueError`` naming the flag if JAX has fewer."""
  available = jax.device_count()
  if config.devices is None:
    devices = available if jax.process_count() > 1 else min(8, available)
  else:
    devices = config.devices
  if devices > available:
    raise ValueError(f'--devices {devices} exceeds the {available} devices JAX sees (on CPU: '
                     f'XLA_FLAGS=--xla_force_host_platform_device_count={devices}, before JAX '
                     'starts).')
  if jax.process_count() > 1 and devices != available:
    raise ValueError(f'--devices {devices}: a multi-process job uses all {available} devices of '
                     'its processes; leave --devices out.')
  if config.batch_size % devices:
    raise ValueError(f'--batch-size {config.batch_size} must be divisible by the {devices} '
                     'devices.')
  return devices


def train(*, backend: str = 'shard_map', devices: int = 8, mode: str = 'privacy',
          scope: str = 'per_layer', epochs: int = 3, batch_size: int = 128,
          learning_rate: float = 0.1, features: int = 16, train_size: int | None = None,
          seed: int = 0, verbose: bool = True) -> float:
  """Trains the CNN data-parallel on ``devices`` devices; returns test accuracy.

  In a multi-process job (``jax.distributed``) ``devices`` spans every
  process and each process feeds its slice of every global batch.
  """
  config = Config(backend=backend, devices=devices, mode=mode, scope=scope, epochs=epochs,
                  batch_size=batch_size, learning_rate=learning_rate, features=features,
                  train_size=train_size, seed=seed, quiet=not verbose)
  cli.check_fields(config)
  config.validate()
  devices = resolve_devices(config)
  processes, pid = jax.process_count(), jax.process_index()
  verbose = verbose and pid == 0
  (x_train, y_train), (x_test, y_test) = load_data(seed, train_size)
  steps_per_epoch = len(x_train) // batch_size
  schedule = optax.cosine_decay_schedule(learning_rate, max(1, epochs * steps_per_epoch))
  graphdef, params = nnx.split(CNN(features, rngs=nnx.Rngs(seed)), nnx.Param)

  def loss_fn(p, batch):
    logits = nnx.merge(graphdef, p)(batch['x'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']).mean()

  # Each process feeds the rows of the global batch its devices hold.
  per_process = batch_size // processes
  local = lambda b: jax.tree.map(lambda x: x[pid * per_process:(pid + 1) * per_process], b)
  if backend == 'pmap':
    device_list = jax.local_devices() if processes > 1 else jax.devices()[:devices]
    tx = make_optimizer(mode, scope, 'batch', schedule)
    step = parallel.pmap_train_step(loss_fn, tx, axis_name='batch', donate=True)
    state = parallel.replicate(tx.init(params), device_list)
    params = parallel.replicate(params, device_list)
    put = lambda b: parallel.split_for_pmap(local(b), device_list)
    fetch = parallel.unreplicate
  elif backend == 'shard_map':
    tx = make_optimizer(mode, scope, 'data', schedule)
    mesh = parallel.data_mesh(devices)
    step = parallel.shard_map_train_step(loss_fn, tx, mesh, axis_name='data', donate=True)
    params = parallel.replicate_on_mesh(params, mesh)
    state = parallel.replicate_on_mesh(tx.init(params), mesh) if processes > 1 else tx.init(
        params)
    put = lambda b: parallel.shard_batch(local(b), mesh)
    fetch = lambda p: jax.tree.map(lambda x: x.addressable_data(0), p)
  else:
    raise ValueError(f"backend must be 'pmap' or 'shard_map'; got {backend!r}.")

  rng = np.random.default_rng(seed)
  for epoch in range(epochs):
    start, losses = time.perf_counter(), []
    perm = rng.permutation(len(x_train))
    for i in cli.progress(range(steps_per_epoch), desc=f'epoch {epoch + 1}/{epochs}',
                           quiet=not verbose):
      idx = perm[i * batch_size:(i + 1) * batch_size]
      params, state, loss = step(params, state, put({'x': x_train[idx], 'y': y_train[idx]}))
      losses.append(loss)
    if verbose:
      mean_loss = float(np.mean([np.asarray(fetch_loss(l)).mean() for l in losses]))
      print(f'epoch {epoch + 1}: loss {mean_loss:.4f} ({time.perf_counter() - start:.1f} s)',
            flush=True)

  model = nnx.merge(graphdef, jax.device_get(fetch(params)))
  predict = nnx.jit(lambda m, x: jnp.argmax(m(x), -1))
  accuracy = float(np.mean(np.asarray(predict(model, x_test)) == y_test))
  if pid == 0:  # the result line is printed even with --quiet
    print(f'{backend} on {devices} devices ({processes} process(es)), {mode} mode, '
          f'scope={scope}: test accuracy {accuracy:.4f}')
  return accuracy


def fetch_loss(loss: jax.Array) -> np.ndarray:
  """This process's view of a (replicated or per-device) loss."""
  if isinstance(loss, jax.Array) and not loss.is_fully_addressable:
    return np.asarray(loss.addressable_data(0))
  return np.asarray(loss)


def parse_args(argv: list[str] | None) -> Config:
  """The validated :class:`Config`; joins ``jax.distributed`` if asked; exits 2 on a bad flag."""
  parser = cli.build_parser(Config, __doc__)
  config = cli.parse(Config, argv, parser=parser)
  try:
    cli.initialize_distributed(config)
    resolve_devices(config)
  except ValueError as e:
    parser.error(str(e))
  return config


def main(argv: list[str] | None = None) -> float:
  config = parse_args(argv)
  with cli.distributed_errors(config):
    return train(backend=config.backend, devices=resolve_devices(config), mode=config.mode,
                 scope=config.scope, epochs=config.epochs, batch_size=config.batch_size,
                 learning_rate=config.learning_rate, features=config.features,
                 train_size=config.train_size, seed=config.seed, verbose=not config.quiet)


def _ensure_host_devices(argv: list[str]) -> None:
  """Asks XLA for enough virtual CPU devices; only effective before JAX starts.

  One process only: in a multi-process job the user chooses each process's
  devices (``XLA_FLAGS`` as in the README).
  """
  if any(a.startswith(('--coordinator', '--distributed')) for a in argv):
    return
  args, _ = cli.build_parser(Config).parse_known_args(argv)
  flag_ = '--xla_force_host_platform_device_count'
  if flag_ not in os.environ.get('XLA_FLAGS', ''):
    count = args.devices if args.devices and args.devices > 0 else 8
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {flag_}={count}".strip()


if __name__ == '__main__':
  _ensure_host_devices(sys.argv[1:])
  cli.run(main, sys.argv[1:])
