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

The tables go to a new file under ``runs/benchmarks/`` unless ``--out`` names
one; the compile times go to stderr.
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import platform
import random
import shlex
import statistics
import sys
import time

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in
# examples/; its command-line layer first, so that Ctrl-C during the imports
# below also ends in one line (exit 130).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import cli
from ssgd_examples.cli import flag

import jax
import jax.numpy as jnp
import optax
from flax import nnx

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
    print(f'  {name} b={batch} {v}: compiled in {time.perf_counter() - t0:.1f}s',
          file=sys.stderr, flush=True)
  times = {v: [] for v in VARIANTS}
  order = list(VARIANTS)
  rng = random.Random(0)
  for _ in cli.progress(range(rounds), desc=f'{name} b={batch}', unit='round'):
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
          ', '.join(f'{k} {m:.0f} MiB' for k, m in mems.items()), file=sys.stderr, flush=True)
    if mems['vmap_dpsgd'] > budget_gib * 1024:
      return (f'| {name} | {batch} | {mems["nonprivate"]:.0f} | {mems["ghost_dpsgd"]:.0f} | '
              f'{mems["vmap_dpsgd"]:.0f} | '
              f'{"yes" if mems["ghost_dpsgd"] <= budget_gib * 1024 else "no"} |')
    batch *= 2
  return f'| {name} | > {limit} | - | - | - | vmap fits up to {limit} |'


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  quick: bool = flag(False, 'tiny run (smoke test: small ResNet, batches 32 and 16, a 0.05 GiB '
                     'budget); flags given explicitly win')
  rounds: int = flag(5, 'interleaved timing rounds', check=cli.at_least(1))
  steps: int = flag(1, 'calls per variant and round', check=cli.at_least(1))
  budget_gib: float = flag(2.0, 'memory budget (GiB) of the budget part',
                           check=cli.finite(positive=True))
  models: tuple[str, ...] = flag(('cnn', 'resnet'), 'the models to time',
                                 choices=('cnn', 'resnet'))
  no_budget: bool = flag(False, 'skip the memory-budget part')
  out: str | None = cli.output_flag('the Markdown tables (default: a new file under '
                                    'runs/benchmarks/)')
  verbose: bool = cli.verbose_flag()


QUICK = dict(rounds=2, budget_gib=0.05)


def main(argv: list[str] | None = None) -> str:
  args = cli.parse(Config, argv, description=__doc__.splitlines()[0], quick=QUICK)
  if args.quick:
    cases, small, start, limit = [('cnn', 32), ('resnet', 16)], True, 32, 256
  else:
    cases, small, start, limit = [('cnn', 256), ('resnet', 256)], False, 1024, 16384
  cases = [(m, b) for m, b in cases if m in args.models]
  budget_cases = [] if args.no_budget else [('cnn', args.budget_gib, start, limit)]
  header = (f'# benchmarks/ghost.py {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} '
            f'UTC, jax {jax.__version__}, {jax.devices()[0].platform}, {platform.machine()}')
  print(header)
  table = ['| model | batch | variant | step ms (median) | vs non-private | per round | '
           'memory MiB | vs non-private |', '|---|---|---|---|---|---|---|---|']
  for name, batch in cases:
    table += time_model(name, batch, args.rounds, args.steps, small)
  print('\n'.join(table))
  btable = ['| model | first batch where vmap > budget | non-private MiB | ghost MiB | '
            'vmap MiB | ghost fits |', '|---|---|---|---|---|---|']
  for name, gib, start, limit in budget_cases:
    btable.append(budget(name, gib, start, limit, small))
  command = 'python benchmarks/ghost.py ' + shlex.join(argv if argv is not None else sys.argv[1:])
  text = '\n'.join([header, '', f'`{command.strip()}`', '', *table])
  if budget_cases:
    btitle = f'Budget {budget_cases[0][1]} GiB (compiled memory_analysis):'
    print(f'\n{btitle}')
    print('\n'.join(btable))
    text = '\n'.join([text, '', btitle, '', *btable])
  cli.write_output(args.out, text, name='ghost')
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
