# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""DP-SSGD vs per-example-clipping DP-SGD vs backprop clipping, same (eps, delta).

All three train the same MLP (``ssgd_optax.models.MLP``, one hidden ReLU
layer, with biases) on the embedded MNIST subset (4,000 train / 1,000 test
images), with the same Poisson sampling (expected batch ``--batch-size``,
padded and masked), the same number of steps, SGD with momentum 0.9 and a
cosine learning-rate decay after the private aggregate, and a noise
multiplier calibrated for the same target (epsilon, delta = 1e-5) with the
PLD accountant of :mod:`ssgd_optax.privacy`:

* ``dp_ssgd``: every example's gradient unit-normalised (global scope,
  sensitivity 1), Gaussian noise (:func:`ssgd_optax.dp_ssgd.dp_unit_normalize`);
  one release per step.
* ``dp_sgd_clip``: per-example gradients clipped to global norm ``C``
  (:func:`ssgd_optax.privacy.dpsgd.dpsgd_grad_sum`), noise ``sigma C``; one
  release per step.
* ``backprop_clip``: the MLP's layers clipped (inputs to ``C_in``, output
  cotangents to ``C_out``, :func:`ssgd_optax.privacy.layers.clip_layers`),
  one batched gradient, noise per tensor; ``L = 4`` releases per step
  (2 kernels, 2 biases), accounted as such.
* ``dp_ssgd_auto_s`` (optional, ``--methods``): DP-SSGD with the AUTO-S
  stability constant, ``g / (||g|| + gamma)``.

Hyper-parameters (learning rate; ``C``; ``C_in, C_out``) are chosen on a
validation split (20% of the training set, seed 0) at epsilon 3 with one seed
from a small grid per method; the chosen setting is then trained on the full
training set for every (epsilon, seed) and evaluated on the test set (mean +-
std over seeds). Step times are measured in one process, the methods
interleaved (rounds of ``--timing-steps`` steps each, median over rounds), and
reported as ratios to DP-SSGD, plus non-private SGD for reference.

  python benchmarks/dp_ssgd.py --out benchmarks/results/dp_ssgd.md
  python benchmarks/dp_ssgd.py --methods dp_ssgd_auto_s --out auto_s.md
  python benchmarks/dp_ssgd.py --quick            # seconds; smoke test
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssgd_optax import dp_ssgd as dp_ssgd_lib
from ssgd_optax import models
from ssgd_optax import per_example
from ssgd_optax import privacy
from ssgd_optax.data import load_dataset
from ssgd_optax.privacy import dpsgd as dpsgd_lib
from ssgd_optax.privacy import layers as layers_lib
from ssgd_optax.privacy import noise as noise_lib

METHODS = ('dp_ssgd', 'dp_sgd_clip', 'backprop_clip')
# DP-SSGD with the AUTO-S stability constant (g / (||g|| + gamma)); optional.
EXTRA_METHODS = ('dp_ssgd_auto_s',)
DELTA = 1e-5

# Validation grids (learning rate, and the clipping bounds). For clipping, the
# update scales with C (or C_in * C_out), so the learning rate is given per
# unit of bound: lr = lr_unit / C.
GRIDS = {
    'dp_ssgd': [dict(lr=lr) for lr in (1.0, 2.0)],
    'dp_sgd_clip': [dict(lr=1.0 / c, clip=c) for c in (0.1, 1.0)],
    'backprop_clip': [dict(lr=1.0 / (cin * cout), c_in=cin, c_out=cout)
                      for cin, cout in ((1.0, 0.1), (10.0, 0.1))],
    'dp_ssgd_auto_s': [dict(lr=lr, stability=g) for lr in (2.0, 4.0) for g in (0.1, 1.0)],
}
QUICK_GRIDS = {m: g[:1] for m, g in GRIDS.items()}
# What the validation search of the recorded run chose (for --timing-only).
CHOSEN = {
    'dp_ssgd': dict(lr=2.0),
    'dp_sgd_clip': dict(lr=1.0, clip=1.0),
    'backprop_clip': dict(lr=1.0, c_in=10.0, c_out=0.1),
    'dp_ssgd_auto_s': dict(lr=2.0, stability=0.1),
}


def per_example_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y)


def summed_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  return per_example_loss(model, x, y).sum()


class Trainer(NamedTuple):
  model: nnx.Module
  optimizer: nnx.Optimizer
  step: Any               # step(model, optimizer, key, X, Y) -> None
  num_releases: int


def build(method: str, cfg: dict, *, image_shape, num_classes, hidden, noise_multiplier,
          expected_batch_size, steps, num_examples, max_batch_size, seed) -> Trainer:
  """A model, its optimizer and a jitted private step for ``method``."""
  key_init, key_noise = jax.random.split(jax.random.key(seed))
  model = models.MLP(image_shape, num_classes, hidden=hidden, rngs=nnx.Rngs(params=key_init))
  q = expected_batch_size / num_examples
  releases = 1
  if method in ('dp_ssgd', 'dp_ssgd_auto_s'):
    aggregate = dp_ssgd_lib.dp_unit_normalize(noise_multiplier,
                                              expected_batch_size=expected_batch_size,
                                              key=key_noise,
                                              stability=cfg.get('stability', 0.0))

    def grads_of(m, x, y, mask):
      return per_example.nnx_per_example_grads(summed_loss, m, x, y, mask=mask)
  elif method == 'dp_sgd_clip':
    aggregate = noise_lib.add_gaussian_noise(noise_multiplier, cfg['clip'], expected_batch_size,
                                             key=key_noise)

    def grads_of(m, x, y, mask):
      return dpsgd_lib.dpsgd_grad_sum(per_example_loss, m, x, y, clip_norm=cfg['clip'],
                                      mask=mask)[1]
  elif method == 'backprop_clip':
    model = layers_lib.clip_layers(model, input_bound=cfg['c_in'], grad_bound=cfg['c_out'])
    releases = layers_lib.num_releases(model)
    aggregate = noise_lib.add_gaussian_noise(noise_multiplier, layers_lib.sensitivities(model),
                                             expected_batch_size, key=key_noise)

    def grads_of(m, x, y, mask):
      return dpsgd_lib.backprop_clip_grad_sum(per_example_loss, m, x, y, mask=mask)[1]
  elif method == 'sgd':  # non-private reference, for step times only
    aggregate = optax.scale(1.0 / expected_batch_size)

    def grads_of(m, x, y, mask):
      return dpsgd_lib.backprop_clip_grad_sum(per_example_loss, m, x, y, mask=mask)[1]
  else:
    raise ValueError(f'method must be one of {METHODS + EXTRA_METHODS + ("sgd",)}; '
                     f'got {method!r}.')
  tx = optax.chain(aggregate, optax.trace(decay=0.9),
                   optax.scale_by_learning_rate(optax.cosine_decay_schedule(cfg['lr'], steps)))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  is_dp_ssgd = method in ('dp_ssgd', 'dp_ssgd_auto_s')

  @nnx.jit
  def step(model, optimizer, key, x_all, y_all):
    idx, mask = privacy.poisson_sample(key, num_examples, q, max_batch_size)
    grads = grads_of(model, x_all[idx], y_all[idx], mask)
    if is_dp_ssgd:
      optimizer.update(model, grads, mask=mask)
    else:
      optimizer.update(model, grads)

  return Trainer(model, optimizer, step, releases)


@nnx.jit
def _accuracy(model, x, y):
  return jnp.mean(jnp.argmax(model(x), -1) == y)


@functools.lru_cache(maxsize=64)
def noise_for(epsilon: float, q: float, steps: int, releases: int, accountant: str) -> float:
  return privacy.calibrate_noise_multiplier(epsilon, sampling_rate=q, steps=steps, delta=DELTA,
                                            num_releases=releases, accountant=accountant)


def run(method: str, cfg: dict, *, epsilon: float, seed: int, data, epochs: float,
        expected_batch_size: int, hidden: tuple[int, ...],
        accountant: str = 'pld') -> tuple[float, float, float]:
  """Trains one model; returns (accuracy on data's test part, spent eps, sigma)."""
  x_train, y_train, x_test, y_test, image_shape, num_classes = data
  n = len(x_train)
  q = expected_batch_size / n
  steps = max(1, int(round(epochs / q)))
  releases = 4 if method == 'backprop_clip' else 1  # checked against the model below
  sigma = noise_for(epsilon, q, steps, releases, accountant)
  padded = privacy.max_batch_size_for(n, q, steps=steps)
  tr = build(method, cfg, image_shape=image_shape, num_classes=num_classes, hidden=hidden,
             noise_multiplier=sigma, expected_batch_size=expected_batch_size, steps=steps,
             num_examples=n, max_batch_size=padded, seed=seed)
  if tr.num_releases != releases:
    raise RuntimeError(f'expected {releases} releases, model has {tr.num_releases}')
  tracker = privacy.BudgetTracker(epsilon, DELTA, noise_multiplier=sigma, sampling_rate=q,
                                  num_releases=releases, accountant=accountant)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), steps)
  x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
  for t in range(steps):
    tracker.step()
    tr.step(tr.model, tr.optimizer, keys[t], x_dev, y_dev)
  acc = float(_accuracy(tr.model, jnp.asarray(x_test), jnp.asarray(y_test)))
  return acc, tracker.spent(), sigma


def _data(validation: bool, train_size: int | None):
  ds = load_dataset('mnist_subset', seed=0)
  if validation:
    ds = ds.validation_split(0.2, seed=0)
  x_train, y_train = ds.normalize(ds.x_train), ds.y_train
  x_test, y_test = ds.normalize(ds.x_test), ds.y_test
  if train_size is not None:  # a random subset: the stored order is by class
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(x_train))[:train_size]
    x_train, y_train = x_train[keep], y_train[keep]
    keep = rng.permutation(len(x_test))[:train_size]
    x_test, y_test = x_test[keep], y_test[keep]
  return x_train, y_train, x_test, y_test, ds.image_shape, ds.num_classes


def step_times(configs: dict, *, data, expected_batch_size: int, hidden, rounds: int,
               steps_per_round: int, skip_sgd: bool = False) -> dict[str, float]:
  """Median seconds per step of every method, interleaved in one process."""
  x_train, y_train, _, _, image_shape, num_classes = data
  n = len(x_train)
  q = expected_batch_size / n
  padded = privacy.max_batch_size_for(n, q, steps=1000)
  names = list(configs) + ([] if skip_sgd else ['sgd'])
  trainers = {}
  for name in names:
    cfg = configs.get(name, dict(lr=0.1))
    trainers[name] = build(name, cfg, image_shape=image_shape, num_classes=num_classes,
                           hidden=hidden, noise_multiplier=1.0,
                           expected_batch_size=expected_batch_size, steps=1000,
                           num_examples=n, max_batch_size=padded, seed=0)
  x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
  key = jax.random.key(123)
  times = {name: [] for name in names}
  for r in range(rounds + 1):  # round 0 compiles and warms up
    for name in names:
      tr = trainers[name]
      jax.block_until_ready(nnx.state(tr.model))
      start = time.perf_counter()
      for i in range(steps_per_round):
        key, sub = jax.random.split(key)
        tr.step(tr.model, tr.optimizer, sub, x_dev, y_dev)
      jax.block_until_ready(nnx.state(tr.model))
      if r:
        times[name].append((time.perf_counter() - start) / steps_per_round)
  return {name: statistics.median(v) for name, v in times.items()}


def _cfg_text(cfg: dict) -> str:
  return ', '.join(f'{k}={v:g}' for k, v in cfg.items())


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny smoke run (seconds)')
  parser.add_argument('--epsilons', type=float, nargs='+', default=[1.0, 3.0, 8.0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--epochs', type=float, default=4.0)
  parser.add_argument('--batch-size', type=int, default=500, help='expected batch size')
  parser.add_argument('--hidden', type=int, default=32)
  parser.add_argument('--timing-rounds', type=int, default=3)
  parser.add_argument('--timing-steps', type=int, default=4)
  parser.add_argument('--methods', nargs='+', choices=METHODS + EXTRA_METHODS,
                      default=list(METHODS))
  parser.add_argument('--timing-only', action='store_true',
                      help='only the step-time table (the settings chosen in the results file)')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  if args.seeds < 1 or args.epochs <= 0 or args.batch_size < 1 or args.hidden < 1:
    parser.error('--seeds, --epochs, --batch-size and --hidden must be positive')
  train_size, accountant = None, 'pld'
  grids = GRIDS
  if args.quick:  # smoke test: no tuning, fast RDP accounting
    args.epsilons, args.seeds, args.epochs, args.batch_size = [3.0], 1, 1.0, 32
    args.timing_rounds, args.timing_steps, train_size, grids = 1, 1, 128, QUICK_GRIDS
    accountant = 'rdp'
  hidden = (args.hidden,)
  common = dict(epochs=args.epochs, expected_batch_size=args.batch_size, hidden=hidden,
                accountant=accountant)
  started = time.time()

  # 1. Tune each method on the validation split at epsilon 3, seed 0.
  chosen, tuning_rows, acc_rows = {}, [], []
  if args.timing_only:
    chosen = {m: CHOSEN[m] for m in args.methods}
  val = None if args.timing_only else _data(True, train_size)
  for method in ([] if args.timing_only else args.methods):
    best = None
    for cfg in grids[method]:
      if len(grids[method]) == 1:
        chosen[method] = cfg
        tuning_rows.append(f'| {method} | {_cfg_text(cfg)} | (not tuned) |')
        break
      acc, _, _ = run(method, cfg, epsilon=3.0, seed=0, data=val, **common)
      tuning_rows.append(f'| {method} | {_cfg_text(cfg)} | {acc:.4f} |')
      if best is None or acc > best[0]:
        best = (acc, cfg)
      print(f'[tune] {method} {_cfg_text(cfg)}: val acc {acc:.4f}', file=sys.stderr, flush=True)
    if best is not None:
      chosen[method] = best[1]

  # 2. Test accuracy per (epsilon, method) over seeds.
  test = _data(False, train_size)
  for eps in ([] if args.timing_only else args.epsilons):
    cells = []
    for method in args.methods:
      accs, spent, sigma = [], 0.0, 0.0
      for seed in range(args.seeds):
        acc, spent, sigma = run(method, chosen[method], epsilon=eps, seed=seed, data=test,
                                **common)
        accs.append(acc)
        print(f'[test] eps {eps:g} {method} seed {seed}: {acc:.4f} (spent {spent:.3f}, '
              f'sigma {sigma:.3f})', file=sys.stderr, flush=True)
      std = statistics.stdev(accs) if len(accs) > 1 else 0.0
      cells.append(f'{100 * statistics.mean(accs):.1f} ± {100 * std:.1f} (σ={sigma:.2f})')
    acc_rows.append(f'| {eps:g} | ' + ' | '.join(cells) + ' |')

  # 3. Step times, interleaved.
  times = step_times(chosen, data=test, expected_batch_size=args.batch_size, hidden=hidden,
                     rounds=args.timing_rounds, steps_per_round=args.timing_steps,
                     skip_sgd=args.quick)
  base = times[args.methods[0]]

  n_train = len(test[0])
  q = args.batch_size / n_train
  steps = max(1, int(round(args.epochs / q)))
  lines = [
      '## DP-SSGD vs per-example clipping vs backprop clipping (MNIST subset)',
      '',
      f'Date: {datetime.date.today().isoformat()}; {os.cpu_count()} CPU cores, load average '
      f'{os.getloadavg()[0]:.1f} at the end; '
      f'wall time {time.time() - started:.0f} s.',
      f'Command: `python benchmarks/dp_ssgd.py {" ".join(argv or [])}`',
      '',
      f'MLP 784-{args.hidden}-10 (ReLU, biases), {n_train} training images, Poisson '
      f'sampling q = {q:.4f} (expected batch {args.batch_size}), {steps} steps '
      f'({args.epochs:g} epochs), SGD momentum 0.9 + cosine decay, delta = {DELTA:g}, '
      f'{accountant.upper()} accountant; backprop clipping accounted with L = 4 releases '
      'per step.',
      '',
      f'### Test accuracy (%), mean ± std over {args.seeds} seed(s), noise multiplier σ',
      '',
      '| target ε | ' + ' | '.join(args.methods) + ' |',
      '|---:|' + '---|' * len(args.methods),
      *acc_rows,
      '',
      '### Chosen settings (validation split, ε = 3, seed 0)',
      '',
      '| method | setting | validation accuracy |',
      '|---|---|---:|',
      *tuning_rows,
      '',
      'Chosen: ' + '; '.join(f'{m}: {_cfg_text(c)}' for m, c in chosen.items()) + '.',
      '',
      f'### Step time (median of {args.timing_rounds} interleaved rounds of '
      f'{args.timing_steps} steps, padded batch, one process)',
      '',
      f'| method | ms / step | ratio to {args.methods[0]} |',
      '|---|---:|---:|',
      *[f'| {name} | {1e3 * t:.1f} | {t / base:.2f} |' for name, t in times.items()],
      '',
  ]
  text = '\n'.join(lines)
  print(text)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(text)
  return text


if __name__ == '__main__':
  main(sys.argv[1:])
