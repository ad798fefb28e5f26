# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Step time of data-parallel SGD vs SSGD (privacy and optimisation modes).

    python benchmarks/parallel.py                # minutes; one progress line per cell
    python benchmarks/parallel.py --quick        # a few seconds, smoke test

The table goes to a new file under ``runs/benchmarks/`` unless ``--out`` names
one (the committed tables are ``benchmarks/results/parallel*.md``).

For 1, 2, 4 and 8 (virtual) devices and both ``jax.pmap`` and
``jax.shard_map`` (``ssgd_optax.parallel``'s train steps), one run times
three optimizers on the same CNN and global batch:

* SGD: ``chain(aggregate, sgd)``;
* SSGD privacy mode: ``chain(unit_normalize, aggregate, sgd)``;
* SSGD optimisation mode: ``chain(aggregate, unit_normalize, sgd)``.

Within each (backend, devices) cell the three are interleaved in a fresh
random order every round; a round times ``--steps`` steps of each. The table
gives the median time per step over rounds, the median over rounds of the
per-round ratio to SGD (with its 25th-75th percentiles) and the number of
all-reduce ops in the compiled step. On CPU, set
``--xla_force_host_platform_device_count`` (done here before JAX starts).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import sys
import time

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in
# examples/; its command-line layer first, so that Ctrl-C during the imports
# below also ends in one line (exit 130).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import cli
from ssgd_examples.cli import flag

import jax
import numpy as np
import optax
from flax import nnx

from ssgd_examples import scripts
import ssgd_optax
from ssgd_optax import parallel
from ssgd_optax import testing

OPTIMIZERS = ('sgd', 'privacy', 'optimization')


def _example_module():
  # The benchmark times the example's model.
  return scripts.load('examples/data_parallel.py', 'ssgd_optax_examples_data_parallel')


CNN = _example_module().CNN


def make_tx(name: str, axis: str, scope: str) -> optax.GradientTransformation:
  sgd = optax.sgd(0.05, momentum=0.9)
  if name == 'sgd':
    return optax.chain(parallel.aggregate(axis), sgd)
  norm = ssgd_optax.unit_normalize(scope)
  if name == 'privacy':
    return optax.chain(norm, parallel.aggregate(axis), sgd)
  return optax.chain(parallel.aggregate(axis), norm, sgd)


def _setup(backend, devices, name, scope, params, loss_fn, batch):
  """A ready-to-call ``run(k)`` that does k steps, and the all-reduce count."""
  device_list = jax.devices()[:devices]
  if backend == 'pmap':
    tx = make_tx(name, 'batch', scope)
    step = parallel.pmap_train_step(loss_fn, tx, axis_name='batch', donate=True)
    carry = [parallel.replicate(params, device_list),
             parallel.replicate(tx.init(params), device_list)]
    placed = parallel.split_for_pmap(batch, device_list)
  else:
    tx = make_tx(name, 'data', scope)
    mesh = parallel.data_mesh(devices)
    step = parallel.shard_map_train_step(loss_fn, tx, mesh, donate=True)
    p = parallel.replicate_on_mesh(params, mesh)
    carry = [p, tx.init(p)]
    placed = parallel.shard_batch(batch, mesh)
  compiled = step.lower(*carry, placed).compile()  # timed and counted: the same program
  count = testing.count_all_reduces(compiled.as_text())

  def run(k):
    for _ in range(k):
      carry[0], carry[1], loss = compiled(carry[0], carry[1], placed)
    jax.block_until_ready((carry[0], loss))

  run(1)  # compile and warm up
  return run, count


def benchmark(*, device_counts=(1, 2, 4, 8), backends=('pmap', 'shard_map'), batch_size=128,
              features=16, scope='per_layer', rounds=15, steps=5, seed=0):
  """Measures every cell; returns a list of result rows (dicts)."""
  graphdef, params = nnx.split(CNN(features, rngs=nnx.Rngs(seed)), nnx.Param)

  def loss_fn(p, b):
    logits = nnx.merge(graphdef, p)(b['x'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b['y']).mean()

  rng = np.random.default_rng(seed)
  batch = {'x': rng.normal(size=(batch_size, 28, 28, 1)).astype(np.float32),
           'y': rng.integers(0, 10, size=batch_size).astype(np.int32)}
  rows = []
  for backend in backends:
    for devices in device_counts:
      print(f'[parallel] {backend}, {devices} device(s) ...', file=sys.stderr, flush=True)
      runs, counts = {}, {}
      for name in OPTIMIZERS:
        runs[name], counts[name] = _setup(backend, devices, name, scope, params, loss_fn, batch)
      times = {name: [] for name in OPTIMIZERS}
      order_rng = np.random.default_rng(seed + devices)
      for _ in range(rounds):
        for name in order_rng.permutation(OPTIMIZERS):
          start = time.perf_counter()
          runs[name](steps)
          times[name].append((time.perf_counter() - start) / steps)
      t = {k: np.asarray(v) for k, v in times.items()}
      row = {'backend': backend, 'devices': devices,
             **{f'{k}_ms': 1e3 * float(np.median(v)) for k, v in t.items()},
             **{f'{k}_allreduce': counts[k] for k in OPTIMIZERS}}
      for k in ('privacy', 'optimization'):
        ratio = t[k] / t['sgd']  # paired: same round
        row[f'{k}_ratio'] = tuple(float(np.percentile(ratio, q)) for q in (50, 25, 75))
      rows.append(row)
  return rows


def to_markdown(rows, *, config: str) -> str:
  lines = [
      config, '',
      '| backend | devices | SGD ms/step | SSGD privacy ms/step | SSGD optimisation ms/step '
      '| privacy / SGD (IQR) | optimisation / SGD (IQR) | all-reduce ops SGD / priv / opt |',
      '|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in rows:
    def ratio(k):
      m, lo, hi = r[f'{k}_ratio']
      return f'{m:.3f} ({lo:.2f}-{hi:.2f})'
    lines.append(
        f"| {r['backend']} | {r['devices']} | {r['sgd_ms']:.2f} | {r['privacy_ms']:.2f} | "
        f"{r['optimization_ms']:.2f} | {ratio('privacy')} | {ratio('optimization')} | "
        f"{r['sgd_allreduce']} / {r['privacy_allreduce']} / {r['optimization_allreduce']} |")
  return '\n'.join(lines) + '\n'


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  devices: tuple[int, ...] = flag((1, 2, 4, 8), 'device counts', check=cli.at_least(1))
  backends: tuple[str, ...] = flag(('pmap', 'shard_map'), 'backends',
                                   choices=('pmap', 'shard_map'))
  batch_size: int = flag(128, 'global batch size (divisible by every device count)',
                         check=cli.at_least(1))
  features: int = flag(16, 'CNN features', check=cli.at_least(1))
  scope: str = flag('per_layer', 'SSGD scope', choices=ssgd_optax.SCOPES)
  rounds: int = flag(15, 'timed rounds (interleaved; medians)', check=cli.at_least(1))
  steps: int = flag(5, 'steps per timed round', check=cli.at_least(1))
  quick: bool = flag(False, 'tiny settings (2 devices, shard_map only, a few seconds); flags '
                     'given explicitly win')
  out: str | None = cli.output_flag('the Markdown table (default: a new file under '
                                    'runs/benchmarks/)')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    available = jax.device_count()
    if max(self.devices) > available:
      raise ValueError(f'--devices {max(self.devices)} exceeds the {available} devices JAX '
                       'sees (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N '
                       'before JAX starts; this script asks for 8).')
    bad = [d for d in self.devices if self.batch_size % d]
    if bad:
      raise ValueError(f'--batch-size {self.batch_size} must be divisible by every --devices '
                       f'count; not by {", ".join(map(str, bad))}.')


QUICK = dict(devices=(2,), batch_size=8, features=1, backends=('shard_map',), rounds=2, steps=1)


def main(argv: list[str] | None = None) -> str:
  args = cli.parse(Config, argv, description=__doc__.splitlines()[0], quick=QUICK)
  rows = benchmark(device_counts=tuple(args.devices), backends=tuple(args.backends),
                   batch_size=args.batch_size,
                   features=args.features, scope=args.scope, rounds=args.rounds,
                   steps=args.steps)
  device = jax.devices()[0]
  config = (f'{datetime.date.today().isoformat()}, jax {jax.__version__}, '
            f'{device.platform} ({getattr(device, "device_kind", "")}), '
            f'{os.cpu_count()} host cores; CNN features={args.features}, global batch '
            f'{args.batch_size}, scope={args.scope}, {args.rounds} rounds x {args.steps} steps, '
            'medians.')
  table = to_markdown(rows, config=config)
  print(table)
  cli.write_output(args.out, table, name='parallel')
  return table


def _ensure_host_devices(count: int = 8) -> None:
  """Asks XLA for virtual CPU devices; only effective before JAX starts."""
  flag = '--xla_force_host_platform_device_count'
  if flag not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={count}".strip()


if __name__ == '__main__':
  _ensure_host_devices()
  cli.run(main, sys.argv[1:])
