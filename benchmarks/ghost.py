# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Ghost norms vs per-example gradients (vmap): step time and compiled memory.

For each model (the MNIST CNN ``ssgd_examples.models.CNN`` on 28x28x1 and
``ssgd_examples.models.ResNet`` on 32x32x3) at a batch size, times one jitted
gradient computation (forward, backward, per-example weighting, sum; noise
and optimiser are the same for every variant and left out) of

* ``nonprivate``: ``nnx.grad`` of the summed loss;
* ``ghost_dpsgd``: :func:`ssgd_optax.privacy.ghost_grad_sum`, clipping,
  global scope;
* ``ghost_dpssgd``: the same with normalisation (DP-SSGD), per_layer scope;
* ``vmap_dpsgd``: :func:`ssgd_optax.privacy.dpsgd_grad_sum` (vmapped
  per-example gradients).

Variants are interleaved: each round times every variant once (``--steps``
calls, then ``block_until_ready``) in a shuffled order; the table gives the
median over rounds, the ratio of the medians to ``nonprivate`` and the range
of the per-round ratios (each variant against ``nonprivate`` of the same
round: the spread a shared machine adds). Memory is XLA's
``memory_analysis()`` of the compiled function (temp + argument + output
bytes; compilation only). The budget part doubles the batch until the vmap
path's compiled memory exceeds ``--budget-gib`` and reports the ghost path's
memory at that batch.

    python benchmarks/ghost.py            # default run (minutes)
    python benchmarks/ghost.py --quick    # smoke test
    python benchmarks/ghost.py --models resnet --rounds 9 --steps 3 --no-budget
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in examples/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import models
from ssgd_optax import privacy
VARIANTS = ('nonprivate', 'ghost_dpsgd', 'ghost_dpssgd', 'vmap_dpsgd')


def _loss(m, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(m(x), y)


def _model(name: str, small: bool):
  if name == 'cnn':
    return models.CNN((28, 28, 1), 10, rngs=nnx.Rngs(0)), (28, 28, 1)
  widths = (8, 16) if small else (16, 32, 64)
  return models.ResNet((32, 32, 3), 10, widths=widths, rngs=nnx.Rngs(0)), (32, 32, 3)


def _fn(variant: str, graphdef):
  def f(state, x, y):
    m = nnx.merge(graphdef, state)
    if variant == 'nonprivate':
      return nnx.grad(lambda m: _loss(m, x, y).sum())(m)
    if variant == 'ghost_dpsgd':
      return privacy.ghost_grad_sum(_loss, m, x, y, clip_norm=1.0, method='ghost').grads
    if variant == 'ghost_dpssgd':
      return privacy.ghost_grad_sum(_loss, m, x, y, weights='normalize', scope='per_layer',
                                  stability=0.01, method='ghost').grads
    return privacy.dpsgd_grad_sum(_loss, m, x, y, clip_norm=1.0)[1]
  return f


def _memory(compiled) -> float:
  a = compiled.memory_analysis()
  return (a.temp_size_in_bytes + a.argument_size_in_bytes + a.output_size_in_bytes) / 2**20


def _inputs(shape, batch):
  x = jax.random.normal(jax.random.PRNGKey(1), (batch,) + shape)
  y = jnp.arange(batch) % 10
  return x, y


def time_model(name: str, batch: int, rounds: int, steps: int, small: bool):
  model, shape = _model(name, small)
  graphdef, state = nnx.split(model)
  x, y = _inputs(shape, batch)
  compiled, mem = {}, {}
  for v in VARIANTS:
    t0 = time.perf_counter()
    compiled[v] = jax.jit(_fn(v, graphdef)).lower(state, x, y).compile()
    mem[v] = _memory(compiled[v])
    jax.block_until_ready(compiled[v](state, x, y))
    print(f'  {name} b={batch} {v}: compiled in {time.perf_counter() - t0:.1f}s', flush=True)
  times = {v: [] for v in VARIANTS}
  order = list(VARIANTS)
  rng = random.Random(0)
  for _ in range(rounds):
    rng.shuffle(order)
    for v in order:
      t0 = time.perf_counter()
      for _ in range(steps):
        out = compiled[v](state, x, y)
      jax.block_until_ready(out)
      times[v].append((time.perf_counter() - t0) / steps)
  med = {v: statistics.median(t) for v, t in times.items()}
  rows = []
  for v in VARIANTS:
    ratios = [t / n for t, n in zip(times[v], times['nonprivate'])]
    rows.append(f'| {name} | {batch} | {v} | {med[v] * 1e3:.1f} | '
                f'{med[v] / med["nonprivate"]:.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | '
                f'{mem[v]:.1f} | {mem[v] / mem["nonprivate"]:.2f}x |')
  return rows


def budget(name: str, budget_gib: float, start: int, limit: int, small: bool):
  model, shape = _model(name, small)
  graphdef, state = nnx.split(model)
  batch = start
  while batch <= limit:
    x, y = _inputs(shape, batch)
    mems = {}
    for v in ('nonprivate', 'ghost_dpsgd', 'vmap_dpsgd'):
      lowered = jax.jit(_fn(v, graphdef)).lower(state, x, y)
      mems[v] = _memory(lowered.compile())
    print(f'  budget {name} b={batch}: ' +
          ', '.join(f'{k} {m:.0f} MiB' for k, m in mems.items()), flush=True)
    if mems['vmap_dpsgd'] > budget_gib * 1024:
      return (f'| {name} | {batch} | {mems["nonprivate"]:.0f} | {mems["ghost_dpsgd"]:.0f} | '
              f'{mems["vmap_dpsgd"]:.0f} | '
              f'{"yes" if mems["ghost_dpsgd"] <= budget_gib * 1024 else "no"} |')
    batch *= 2
  return f'| {name} | > {limit} | - | - | - | vmap fits up to {limit} |'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true', help='tiny run (smoke test)')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--steps', type=int, default=1)
  p.add_argument('--budget-gib', type=float, default=2.0)
  p.add_argument('--models', default='cnn,resnet',
                 help='comma-separated, from cnn,resnet (default both)')
  p.add_argument('--no-budget', action='store_true', help='skip the memory-budget part')
  args = p.parse_args(argv)
  models_wanted = [m.strip() for m in args.models.split(',') if m.strip()]
  if not models_wanted or any(m not in ('cnn', 'resnet') for m in models_wanted):
    p.error(f'--models must name cnn and/or resnet; got {args.models!r}')
  if args.rounds < 1 or args.steps < 1 or not args.budget_gib > 0:
    p.error('--rounds and --steps must be >= 1 and --budget-gib > 0')
  if args.quick:
    cases = [(m, b) for m, b in (('cnn', 32), ('resnet', 16)) if m in models_wanted]
    rounds, steps, small, budget_cases = 2, 1, True, [('cnn', 0.05, 32, 256)]
  else:
    cases = [(m, 256) for m in ('cnn', 'resnet') if m in models_wanted]
    rounds, steps, small = args.rounds, args.steps, False
    budget_cases = [('cnn', args.budget_gib, 1024, 16384)]
  if args.no_budget:
    budget_cases = []
  print(f'# benchmarks/ghost.py {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, '
        f'jax {jax.__version__}, {jax.devices()[0].platform}, {platform.machine()}')
  table = ['| model | batch | variant | step ms (median) | vs non-private | per round | '
           'memory MiB | vs non-private |', '|---|---|---|---|---|---|---|---|']
  for name, batch in cases:
    table += time_model(name, batch, rounds, steps, small)
  print('\n'.join(table))
  btable = ['| model | first batch where vmap > budget | non-private MiB | ghost MiB | '
            'vmap MiB | ghost fits |', '|---|---|---|---|---|---|']
  for name, gib, start, limit in budget_cases:
    btable.append(budget(name, gib, start, limit, small))
  if budget_cases:
    print(f'\nBudget {budget_cases[0][1]} GiB (compiled memory_analysis):')
    print('\n'.join(btable))


if __name__ == '__main__':
  main()
