# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Backprop clipping vs per-example DP-SGD: step time and accuracy vs epsilon.

Part 1 times one full jitted training step (forward, backward, clipping,
Gaussian noise, Adam) of the paper's bias-free MNIST CNN on a batch of 256
(all rows real) for non-private training, backprop clipping and vmapped
per-example DP-SGD. The variants are interleaved: every round times each of
them once (``--steps`` steps, then ``block_until_ready``) in a shuffled order;
the table gives medians over rounds and the median of the per-round ratios.

Part 2 trains each DP method on the embedded 4,000-image MNIST subset at
several target epsilons (delta = 1e-5, PLD accountant, Poisson sampling with
expected batch 256) with >= 3 seeds and reports test accuracy mean +- std, with
a non-private reference.

    python benchmarks/dp.py                 # full run (minutes)
    python benchmarks/dp.py --quick         # seconds, smoke test
    python benchmarks/dp.py --skip-accuracy --rounds 15 --steps 10

The tables go to a new file under ``runs/benchmarks/`` unless ``--out`` names
one (the committed table is ``benchmarks/results/dp.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in
# examples/; its command-line layer first, so that Ctrl-C during the imports
# below also ends in one line (exit 130).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import cli
from ssgd_examples.cli import flag

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssgd_examples import data as data_lib
from ssgd_examples import scripts
from ssgd_optax import privacy

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_example():
  return scripts.load('examples/dp_train.py', 'dp_train')


dp_train = _load_example()
VARIANTS = ('nonprivate', 'bp', 'dpsgd')


def _make_step(method: str, batch: int, clip_norm: float, input_bound: float,
               grad_bound: float, seed: int = 0):
  model = dp_train.make_model(method, seed=seed, input_bound=input_bound, grad_bound=grad_bound)
  sens = privacy.sensitivities(model) if method == 'bp' else clip_norm
  z = 0.0 if method == 'nonprivate' else 1.0
  tx = optax.chain(privacy.add_gaussian_noise(z, sens, float(batch), key=jax.random.key(seed)),
                   optax.adam(1e-3))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y, mask):
    if method == 'dpsgd':
      loss, grads = privacy.dpsgd_grad_sum(dp_train.per_example_loss, model, x, y, mask=mask,
                                           clip_norm=clip_norm)
    else:
      loss, grads = privacy.backprop_clip_grad_sum(dp_train.per_example_loss, model, x, y,
                                                   mask=mask)
    optimizer.update(model, grads)
    return loss

  return model, optimizer, step


def _torch_runners(x: np.ndarray, y: np.ndarray, threads: int, seed: int) -> tuple[dict, str]:
  """PyTorch/Opacus steps of the same CNN: ``{name: run(steps)}`` and a note.

  The model is StevensCNN in PyTorch (NCHW, no biases), Adam 1e-3, the same
  batch; Opacus' DP steps use noise multiplier 1 and clip norm 1 as ours.
  """
  try:
    import torch
  except ImportError:
    return {}, 'PyTorch not installed (extra `torch`): no PyTorch/Opacus rows.'
  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  nn = torch.nn

  def net():
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, 2, bias=False), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, 2, bias=False), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Flatten(), nn.Linear(288, 32, bias=False), nn.ReLU(), nn.Linear(32, 10, bias=False))

  # Standard NCHW strides: a permuted one-channel array counts as contiguous, so
  # .contiguous() would keep it channels-last, and Opacus's per-sample conv gradients
  # are wrong on channels-last inputs (benchmarks/opacus_channels_last.py).
  xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)
  xt = xt.clone(memory_format=torch.contiguous_format)
  yt = torch.tensor(np.asarray(y), dtype=torch.long)
  ce = nn.CrossEntropyLoss()
  runners = {}

  def plain_step(model, opt, loss_fn):
    def run(steps):
      for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
    return run

  m = net()
  runners['torch nonprivate'] = plain_step(m, torch.optim.Adam(m.parameters(), 1e-3), ce)
  try:
    import opacus
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
  except ImportError:
    return runners, 'Opacus not installed: no Opacus rows.'
  m = GradSampleModule(net())
  opt = DPOptimizer(torch.optim.Adam(m.parameters(), 1e-3), noise_multiplier=1.0,
                    max_grad_norm=1.0, expected_batch_size=len(y))
  runners[f'opacus {opacus.__version__} hooks'] = plain_step(m, opt, ce)
  note = ''
  try:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
    m = GradSampleModuleFastGradientClipping(net(), max_grad_norm=1.0, use_ghost_clipping=True)
    opt = DPOptimizerFastGradientClipping(torch.optim.Adam(m.parameters(), 1e-3),
                                          noise_multiplier=1.0, max_grad_norm=1.0,
                                          expected_batch_size=len(y))
    loss = DPLossFastGradientClipping(m, opt, nn.CrossEntropyLoss(reduction='mean'), 'mean')
    runners[f'opacus {opacus.__version__} ghost clipping'] = plain_step(m, opt, loss)
  except Exception as e:  # pylint: disable=broad-except
    note = f'Opacus ghost clipping unavailable ({type(e).__name__}: {e}).'
  return runners, note


def time_steps(*, batch: int = 256, rounds: int = 15, steps: int = 10,
               seed: int = 0, torch_threads: int = 0) -> tuple[list[dict], str]:
  """Median step time of each variant, interleaved rounds.

  With ``torch_threads > 0`` the PyTorch/Opacus variants (if installed) run
  in the same rounds.
  """
  ds = data_lib.load_dataset('mnist_subset', seed=seed)
  x = jnp.asarray(ds.normalize(ds.x_train[:batch]).astype(np.float32))
  y = jnp.asarray(ds.y_train[:batch])
  mask = jnp.ones((batch,), bool)
  runners = {}
  for v in VARIANTS:
    model, opt, step = _make_step(v, batch, 1.0, 3.0, 0.1, seed)
    jax.block_until_ready(step(model, opt, x, y, mask))  # Compile.
    jax.block_until_ready(step(model, opt, x, y, mask))

    def run(n, model=model, opt=opt, step=step):
      for _ in range(n):
        loss = step(model, opt, x, y, mask)
      jax.block_until_ready((loss, nnx.state(model)))
    runners[v] = run
  note = ''
  if torch_threads > 0:
    extra, note = _torch_runners(np.asarray(x), np.asarray(y), torch_threads, seed)
    for run in extra.values():
      run(2)  # Warm-up.
    runners.update(extra)
  names = list(runners)
  times = {v: [] for v in names}
  rng = random.Random(seed)
  for _ in range(rounds):
    order = list(names)
    rng.shuffle(order)
    for v in order:
      start = time.perf_counter()
      runners[v](steps)
      times[v].append((time.perf_counter() - start) / steps)
  rows = []
  for v in names:
    ratios = [t / b for t, b in zip(times[v], times['nonprivate'])]
    ratios_dpsgd = [d / t for t, d in zip(times[v], times['dpsgd'])]
    rows.append(dict(variant=v, ms=1e3 * statistics.median(times[v]),
                     ratio=statistics.median(ratios),
                     ratio_of_medians=statistics.median(times[v]) / statistics.median(
                         times['nonprivate']),
                     dpsgd_over=statistics.median(ratios_dpsgd)))
  return rows, note


def accuracy_vs_epsilon(*, epsilons: Sequence[float], seeds: Sequence[int], epochs: float,
                        max_train: int | None = None, lr: float = 1e-2,
                        accountant: str = 'pld', nonprivate: bool = True,
                        methods: Sequence[str] = ('bp', 'dpsgd'),
                        verbose: bool = False) -> list[dict]:
  """Accuracy of bp and dpsgd (and non-private) over seeds at each target epsilon."""
  out = []
  settings = [('nonprivate', None)] if nonprivate else []
  settings += [(m, e) for m in methods for e in epsilons]
  for method, eps in settings:
    accs, eps_pld, zs, steps = [], [], [], 0
    for seed in seeds:
      ds = data_lib.load_dataset('mnist_subset', seed=seed)
      if max_train:
        ds = ds._replace(x_train=ds.x_train[:max_train], y_train=ds.y_train[:max_train],
                         x_test=ds.x_test[:max_train], y_test=ds.y_test[:max_train])
      # Seed-derived noise keys keep the table reproducible; a benchmark measures
      # utility, so the (void) guarantee of a public noise seed costs nothing here.
      r = dp_train.train_and_evaluate(method, ds, target_epsilon=eps, epochs=epochs,
                                      learning_rate=lr, seed=seed, accountant=accountant,
                                      noise_seed=seed)
      accs.append(r['accuracy'])
      eps_pld.append(r['epsilon'])
      zs.append(r['noise_multiplier'])
      steps = r['steps']
      if verbose:
        print(f'  {method} eps={eps} seed={seed}: acc {r["accuracy"]:.4f}', file=sys.stderr,
              flush=True)
    out.append(dict(method=method, target=eps, mean=float(np.mean(accs)),
                    std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                    n=len(accs), eps=max(eps_pld), z=zs[0], steps=steps,
                    num_releases=r['num_releases']))
  return out


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  quick: bool = flag(False, 'tiny settings, seconds (batch 8, 1 round, bp only at epsilon 3, '
                     'RDP); flags given explicitly win')
  rounds: int = flag(15, 'interleaved timing rounds', check=cli.at_least(1))
  steps: int = flag(10, 'steps per variant and round', check=cli.at_least(1))
  epsilons: tuple[float, ...] = flag((1.0, 3.0, 8.0), 'target epsilons of the accuracy part',
                                     check=cli.finite(positive=True))
  seeds: tuple[int, ...] = flag((0, 1, 2), 'seeds of the accuracy part', check=cli.at_least(0))
  epochs: float = flag(5.0, 'expected passes over the data per run',
                       check=cli.finite(positive=True))
  lr: float = flag(1e-2, "Adam's learning rate", check=cli.finite(positive=True))
  torch_threads: int = flag(2, 'PyTorch intra-op threads for the PyTorch/Opacus rows (0: skip '
                            'them)', check=cli.at_least(0))
  skip_timing: bool = flag(False, 'leave out the step-time part')
  skip_accuracy: bool = flag(False, 'leave out the accuracy part')
  out: str | None = cli.output_flag('the Markdown tables (default: a new file under '
                                    'runs/benchmarks/)')
  verbose: bool = flag(False, 'one accuracy line per run on stderr; also the third-party log '
                       'lines hidden by default (absl convergence warnings, ...)')

  def validate(self) -> None:
    if self.skip_timing and self.skip_accuracy:
      raise ValueError('--skip-timing and --skip-accuracy together leave nothing to run.')


QUICK = dict(rounds=1, steps=1, epsilons=(3.0,), seeds=(0,), epochs=0.5, torch_threads=0)


def main(argv: Sequence[str] | None = None) -> str:
  """Runs the benchmark; prints and writes the Markdown tables."""
  args = cli.parse(Config, argv, description=__doc__.split('\n')[0], quick=QUICK)
  lines = ['# Differential privacy: backprop clipping vs per-example DP-SGD',
           '',
           f'Command: `python benchmarks/dp.py {" ".join(argv or [])}`',
           f'Date: {datetime.date.today().isoformat()}; {platform.machine()} CPU '
           f'({jax.device_count()} JAX devices, backend {jax.default_backend()}), '
           f'{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start; '
           'jax ' + jax.__version__ + '.', '']
  if not args.skip_timing:
    batch = 8 if args.quick else 256
    rows, note = time_steps(batch=batch, rounds=args.rounds, steps=args.steps,
                            torch_threads=args.torch_threads)
    lines += [f'## Step time, StevensCNN (18.8k params), batch {batch}, interleaved '
              f'({args.rounds} rounds x {args.steps} steps)', '',
              '| variant | median ms/step | x non-private (median of per-round ratios) | '
              'x non-private (ratio of medians) | DP-SGD / this (median of ratios) |',
              '|---|---:|---:|---:|---:|']
    for r in rows:
      lines.append(f"| {r['variant']} | {r['ms']:.2f} | {r['ratio']:.2f}x | "
                   f"{r['ratio_of_medians']:.2f}x | {r['dpsgd_over']:.2f}x |")
    if args.torch_threads:
      lines += ['', 'Rows `torch ...` and `opacus ...`: the same CNN in PyTorch (eager, '
                f'{args.torch_threads} threads), Adam, noise multiplier 1, clip norm 1, measured '
                'in the same interleaved rounds; their ratios are to our non-private JAX step.'
                + (f' {note}' if note else ''), '']
    else:
      lines += ['', 'No PyTorch/Opacus rows (`--torch-threads 0`).', '']
  if not args.skip_accuracy:
    rows = accuracy_vs_epsilon(epsilons=args.epsilons, seeds=args.seeds, epochs=args.epochs,
                               max_train=1024 if args.quick else None, lr=args.lr,
                               accountant='rdp' if args.quick else 'pld',
                               nonprivate=not args.quick,
                               methods=('bp',) if args.quick else ('bp', 'dpsgd'),
                               verbose=args.verbose)
    lines += [f'## Test accuracy vs epsilon, MNIST subset (4,000 train / 1,000 test), '
              f'delta = 1e-5, expected batch 256, {args.epochs:g} epochs, Adam lr {args.lr:g}, '
              f'{len(args.seeds)} seeds', '',
              '| method | target eps | accounted eps (PLD) | z per release | L | steps | '
              'accuracy (mean +- std) |',
              '|---|---:|---:|---:|---:|---:|---:|']
    for r in rows:
      target = '-' if r['target'] is None else f"{r['target']:g}"
      eps = '-' if r['target'] is None else f"{r['eps']:.3f}"
      z = '-' if r['target'] is None else f"{r['z']:.3f}"
      lines.append(f"| {r['method']} | {target} | {eps} | {z} | {r['num_releases']} | "
                   f"{r['steps']} | {r['mean']:.4f} +- {r['std']:.4f} (n={r['n']}) |")
  text = '\n'.join(lines) + '\n'
  print(text)
  cli.write_output(args.out, text, name='dp')
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
