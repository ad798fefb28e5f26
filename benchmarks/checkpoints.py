# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""What verified checkpoints cost: save and restore with and without the SHA-256 check.

On the model and optimizer of ``examples/train.py``'s default run (the MNIST
CNN, SSGD with momentum), times

* ``orbax``: a plain orbax save (``StandardSave`` + ``JsonSave``, waited for)
  and restore, as ``train.py`` did before;
* ``verified``: ``ssgd_examples.checkpoints.Checkpointer``: the same orbax
  calls plus a SHA-256 of every array and of the record at save, recomputed
  and compared at restore.

Variants are interleaved: each round saves (and restores) once with each, in
a shuffled order, into fresh folders; the table gives the median over rounds
and the ratio to ``orbax``, and the time of the SHA-256s alone (the work the
verification adds to a save, and again to a restore).

    python benchmarks/checkpoints.py              # 15 rounds
    python benchmarks/checkpoints.py --rounds 3   # smoke test
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in examples/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import checkpoints
from ssgd_examples import scripts


def _state():
  train = scripts.load('examples/train.py', 'bench_checkpoints_train')
  config = train.validate_config(train.Config(workdir=''))
  model, optimizer = train.build(config, (28, 28, 1), 10, 4000 // config.batch_size)
  state = {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)}
  # Non-zero momentum, as after training.
  state = jax.tree.map(lambda x: x + 0.01 if x.dtype == np.float32 else x, state)
  return state, sum(x.size for x in jax.tree.leaves(state))


def _orbax_save(folder, state, meta):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(create=True)) as m:
    t = time.perf_counter()
    m.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)))
    m.wait_until_finished()
    return time.perf_counter() - t


def _orbax_restore(folder, state):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  with ocp.CheckpointManager(folder) as m:
    t = time.perf_counter()
    restored = m.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                    meta=ocp.args.JsonRestore()))
    jax.block_until_ready(restored.state)
    return time.perf_counter() - t


def _verified_save(folder, state, meta):
  with checkpoints.Checkpointer(folder) as ckpt:
    t = time.perf_counter()
    ckpt.save(1, state, meta)
    ckpt.wait()
    return time.perf_counter() - t


def _verified_restore(folder, state):
  with checkpoints.Checkpointer(folder) as ckpt:
    t = time.perf_counter()
    restored = ckpt.restore(state)
    jax.block_until_ready(restored.state)
    return time.perf_counter() - t


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=15)
  parser.add_argument('--out', default=None, help='also write the table to this file')
  args = parser.parse_args(argv)
  if args.rounds < 1:
    parser.error(f'--rounds must be an int >= 1; got {args.rounds}.')
  state, size = _state()
  meta = {'epoch': 1, 'history': [{'epoch': 1, 'test_accuracy': 0.9}] * 10}
  root = tempfile.mkdtemp()
  times = {(op, v): [] for op in ('save', 'restore') for v in ('orbax', 'verified')}
  times[('digests alone', 'verified')] = []
  rng = random.Random(0)
  try:
    for r in range(args.rounds + 1):  # round 0 warms up
      order = ['orbax', 'verified']
      rng.shuffle(order)
      for variant in order:
        folder = os.path.join(root, f'{variant}-{r}')
        save, restore = ((_orbax_save, _orbax_restore) if variant == 'orbax' else
                         (_verified_save, _verified_restore))
        t_save = save(folder, state, meta)
        t_restore = restore(folder, state)
        if r:
          times[('save', variant)].append(t_save)
          times[('restore', variant)].append(t_restore)
        shutil.rmtree(folder)
      t = time.perf_counter()
      checkpoints.tree_digests(state)
      if r:
        times[('digests alone', 'verified')].append(time.perf_counter() - t)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  lines = [f'### Verified checkpoints: `train.py` default model and optimizer ({size:,} numbers, '
           f'{size * 4 / 2**20:.1f} MiB)', '',
           f'{platform.machine()}, {os.cpu_count()} CPU cores, load average '
           f'{os.getloadavg()[0]:.1f} at the end; median of {args.rounds} interleaved rounds.',
           '', '| operation | orbax (ms) | verified (ms) | added (ms) | ratio |',
           '|---|---:|---:|---:|---:|']
  for op in ('save', 'restore'):
    a = statistics.median(times[(op, 'orbax')]) * 1e3
    b = statistics.median(times[(op, 'verified')]) * 1e3
    lines.append(f'| {op} | {a:.1f} | {b:.1f} | {b - a:+.1f} | {b / a:.2f}x |')
  alone = statistics.median(times[('digests alone', 'verified')]) * 1e3
  lines.append(f'| SHA-256 of every array alone (the added work, once per save and per restore) '
               f'| | {alone:.1f} | | |')
  text = '\n'.join(lines) + '\n'
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)
  return text


if __name__ == '__main__':
  main(sys.argv[1:])
