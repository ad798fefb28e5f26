# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Iterations per second of Inverting Gradients on the 32x32 sigmoid LeNet.

Variants, measured side by side in one process (interleaved, median over
repetitions): the library's attack with the whole loop in one ``lax.scan``
(``loop="scan"``), with a jitted step driven from Python
(``loop="python"``), and, with the optional ``torch`` extra, an equivalent
eager PyTorch loop (same weights, cosine + TV objective via
``autograd.grad(create_graph=True)``, Adam on the sign of the gradient,
MultiStepLR at 3/8, 5/8, 7/8, clamp to [0, 1]). Compilation is excluded (one
warm-up run per variant).

    python benchmarks/attack_speed.py --quick
    python benchmarks/attack_speed.py --steps 200 --repeats 7    # minutes

The table goes to a new file under ``runs/benchmarks/`` unless ``--out``
names one (the committed table is ``benchmarks/results/attack_speed.md``).
The PyTorch column needs torch; a CPU-only build: ``pip install torch==2.13.0``
where a local CPU wheel is available, else
``pip install torch --index-url https://download.pytorch.org/whl/cpu``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
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
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssgd_optax import attacks
from ssgd_examples import models


def _torch_lenet(params, torch):
  """The same LeNet in PyTorch, weights copied from the Flax parameters."""
  nn = torch.nn

  class LeNet(nn.Module):
    def __init__(self):
      super().__init__()
      # Flax 'SAME' padding: (1, 2) for the stride-2 convolutions, (2, 2) otherwise.
      self.c1 = nn.Conv2d(3, 12, 5, 2, 0)
      self.c2 = nn.Conv2d(12, 12, 5, 2, 0)
      self.c3 = nn.Conv2d(12, 12, 5, 1, 2)
      self.fc = nn.Linear(params['head']['kernel'].shape[0], params['head']['kernel'].shape[1])

    def forward(self, x):
      pad = torch.nn.functional.pad
      x = torch.sigmoid(self.c1(pad(x, (1, 2, 1, 2))))
      x = torch.sigmoid(self.c2(pad(x, (1, 2, 1, 2))))
      x = torch.sigmoid(self.c3(x))
      return self.fc(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))  # NHWC flatten like Flax

  m = LeNet()
  with torch.no_grad():
    for tname, fname in (('c1', 'conv1'), ('c2', 'conv2'), ('c3', 'conv3')):
      getattr(m, tname).weight.copy_(torch.tensor(np.asarray(params[fname]['kernel'])).permute(3, 2, 0, 1))
      getattr(m, tname).bias.copy_(torch.tensor(np.asarray(params[fname]['bias'])))
    m.fc.weight.copy_(torch.tensor(np.asarray(params['head']['kernel'])).T)
    m.fc.bias.copy_(torch.tensor(np.asarray(params['head']['bias'])))
  return m


def torch_inverting_gradients(model, target, label, steps, torch, tv=1e-2, lr=0.1, seed=0):
  g = torch.Generator().manual_seed(seed)
  x = torch.rand((1, 3, 32, 32), generator=g).requires_grad_(True)
  opt = torch.optim.Adam([x], lr=lr)
  sched = torch.optim.lr_scheduler.MultiStepLR(
      opt, milestones=[steps * 3 // 8, steps * 5 // 8, steps * 7 // 8], gamma=0.1)
  params = list(model.parameters())
  loss_fn = torch.nn.CrossEntropyLoss()
  tnorm = torch.sqrt(sum((t * t).sum() for t in target))
  for _ in range(steps):
    opt.zero_grad()
    loss = loss_fn(model(x), label)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((a * b).sum() for a, b in zip(grads, target))
    norm = torch.sqrt(sum((a * a).sum() for a in grads))
    obj = 1 - dot / (norm * tnorm)
    obj = obj + tv * ((x[:, :, 1:] - x[:, :, :-1]).abs().mean()
                      + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean())
    x.grad, = torch.autograd.grad(obj, x)
    x.grad.sign_()
    opt.step()
    sched.step()
    with torch.no_grad():
      x.clamp_(0, 1)
  return x.detach()


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  steps: int = flag(200, 'attack iterations per run', check=cli.at_least(1))
  repeats: int = flag(5, 'timed runs per variant (interleaved; median)', check=cli.at_least(1))
  threads: int = flag(2, 'torch intra-op threads', check=cli.at_least(1))
  quick: bool = flag(False, '4 steps, 1 repeat (a smoke test); flags given explicitly win')
  out: str | None = cli.output_flag('the Markdown table (default: a new file under '
                                    'runs/benchmarks/)')
  verbose: bool = cli.verbose_flag()


QUICK = dict(steps=4, repeats=1)


def main(argv: list[str] | None = None) -> str:
  a = cli.parse(Config, argv, description=__doc__.split('\n\n')[0], quick=QUICK)
  load = os.getloadavg()
  f, params = attacks.as_functional(models.LeNetZhu((32, 32, 3), 10, rngs=nnx.Rngs(0)))
  x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3))
  y = jnp.array([3])
  obs = attacks.observe(f, params, x, y)
  variants = {}
  for loop in ('scan', 'python'):
    def run(loop=loop, seed=0):
      r = attacks.inverting_gradients(f, obs, key=jax.random.key(seed), steps=a.steps, loop=loop)
      return r.inputs.block_until_ready()
    variants[f'ssgd_optax IG, loop="{loop}"'] = run
  note = ''
  try:
    import torch
    torch.set_num_threads(a.threads)
    tm = _torch_lenet(params, torch)
    xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)
    lt = torch.tensor(np.asarray(y), dtype=torch.long)
    with torch.no_grad():
      diff = np.abs(tm(xt).numpy() - np.asarray(f(params, x))).max()
    assert diff < 1e-4, f'torch and Flax LeNets differ by {diff}'
    loss = torch.nn.CrossEntropyLoss()(tm(xt), lt)
    target = [t.detach() for t in torch.autograd.grad(loss, list(tm.parameters()))]
    variants[f'PyTorch {torch.__version__} eager ({a.threads} threads)'] = (
        lambda: torch_inverting_gradients(tm, target, lt, a.steps, torch))
  except ImportError:
    note = 'PyTorch not installed (optional extra `torch`): torch column skipped.'
    print(note, file=sys.stderr)
  for fn in variants.values():  # warm-up: compilation excluded
    fn()
  times = {k: [] for k in variants}
  for _ in cli.progress(range(a.repeats), desc='repeats', unit='repeat'):
    for k, fn in variants.items():  # interleaved
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  base = next((k for k in variants if k.startswith('PyTorch')), None)
  lines = [f'Inverting Gradients, 32x32x3 sigmoid LeNet (Zhu), 1 image, {a.steps} iterations, '
           f'median of {a.repeats} interleaved runs after one warm-up.', '',
           '| variant | median s / run | iterations / s | speed-up vs PyTorch |',
           '|---|---:|---:|---:|']
  for k, ts in times.items():
    med = float(np.median(ts))
    ratio = (float(np.median(times[base])) / med) if base else float('nan')
    lines.append(f'| {k} | {med:.3f} | {a.steps / med:.0f} | '
                 f'{"n/a" if base is None else f"{ratio:.2f}x"} |')
  if note:
    lines += ['', note]
  lines += ['', f'{datetime.date.today()}; {os.cpu_count()} CPU cores, load average '
            f'{load[0]:.2f} at the start; jax {jax.__version__}.']
  text = '\n'.join(lines)
  print(text)
  cli.write_output(a.out, '```\npython benchmarks/attack_speed.py '
                   + shlex.join(argv if argv is not None else sys.argv[1:])
                   + '\n```\n\n' + text, name='attack_speed')
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
