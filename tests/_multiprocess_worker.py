# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""One process of the multi-process SSGD test (``tests/test_multiprocess.py``).

Run as ``python tests/_multiprocess_worker.py --process-id I --num-processes 2
--port PORT --out FILE``, with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``:
joins a ``jax.distributed`` job on 127.0.0.1, trains a small Flax NNX model with
data-parallel SSGD (privacy mode) under ``shard_map`` and ``pmap``, and saves the
final parameters. :func:`train` is also what the test runs in one process with 8
devices, so both sides execute the same code.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
import optax
from flax import nnx

import ssgd_optax
from ssgd_optax import parallel

GLOBAL_BATCH = 32


class TinyCNN(nnx.Module):
  """8x8x1 -> conv 3x3x4 -> dense 10."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.out = nnx.Linear(8 * 8 * 4, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x))
    return self.out(x.reshape(x.shape[0], -1))


def data(step: int) -> dict[str, np.ndarray]:
  """The global batch of ``step``: the same on every process."""
  rng = np.random.default_rng(1000 + step)
  return {'x': rng.normal(size=(GLOBAL_BATCH, 8, 8, 1)).astype(np.float32),
          'y': rng.integers(0, 10, size=GLOBAL_BATCH).astype(np.int32)}


def _model():
  graphdef, params = nnx.split(TinyCNN(rngs=nnx.Rngs(0)), nnx.Param)

  def loss_fn(p, batch):
    logits = nnx.merge(graphdef, p)(batch['x'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']).mean()

  return params, loss_fn


def _local_slice(batch, num_processes, process_id):
  per = GLOBAL_BATCH // num_processes
  return jax.tree.map(lambda x: x[process_id * per:(process_id + 1) * per], batch)


def train(steps: int, backend: str = 'shard_map', *, forever: bool = False) -> dict:
  """``steps`` privacy-mode SSGD steps on all (global) devices; numpy params."""
  params, loss_fn = _model()
  num_processes, process_id = jax.process_count(), jax.process_index()
  if backend == 'shard_map':
    tx = optax.chain(ssgd_optax.unit_normalize(), parallel.aggregate('data'),
                     optax.sgd(0.1, momentum=0.9))
    mesh = parallel.data_mesh()
    step_fn = parallel.shard_map_train_step(loss_fn, tx, mesh)
    params = parallel.replicate_on_mesh(params, mesh)
    state = parallel.replicate_on_mesh(tx.init(params), mesh)
    shard = lambda b: parallel.shard_batch(b, mesh)
  else:
    tx = optax.chain(ssgd_optax.unit_normalize(), parallel.aggregate('batch'),
                     optax.sgd(0.1, momentum=0.9))
    step_fn = parallel.pmap_train_step(loss_fn, tx)
    state = parallel.replicate(tx.init(params))
    params = parallel.replicate(params)
    shard = parallel.split_for_pmap
  i = 0
  while forever or i < steps:
    local = _local_slice(data(i % 4), num_processes, process_id)
    params, state, loss = step_fn(params, state, shard(local))
    jax.block_until_ready(params)
    if i == 0 and forever:
      print('READY', flush=True)
    i += 1
  if backend == 'shard_map':
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
  return jax.tree.map(np.asarray, parallel.unreplicate(params))


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--process-id', type=int, required=True)
  parser.add_argument('--num-processes', type=int, default=2)
  parser.add_argument('--port', type=int, required=True)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--backend', choices=('shard_map', 'pmap', 'both'), default='both')
  parser.add_argument('--out', default=None)
  parser.add_argument('--forever', action='store_true',
                      help='train until killed (prints READY after the first step)')
  args = parser.parse_args(argv)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=f'127.0.0.1:{args.port}', num_processes=args.num_processes,
      process_id=args.process_id, initialization_timeout=60, heartbeat_timeout_seconds=5,
      shutdown_timeout_seconds=10)
  backends = ('shard_map', 'pmap') if args.backend == 'both' else (args.backend,)
  results = {}
  try:
    for backend in backends:
      for key, value in _flat(train(args.steps, backend, forever=args.forever)).items():
        results[f'{backend}/{key}'] = value
  except Exception as err:  # A peer died mid-collective: say so, exit non-zero.
    print(f'worker {args.process_id}: training failed, a peer process may have died: '
          f'{type(err).__name__}: {err}', file=sys.stderr, flush=True)
    return 3
  if args.out:
    np.savez(args.out, **results)
  jax.distributed.shutdown()
  return 0


if __name__ == '__main__':
  sys.exit(main())
