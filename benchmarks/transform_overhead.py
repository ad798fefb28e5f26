# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""How much does unit normalisation cost next to plain SGD?

Part 1 times a jitted ``tx.update`` + ``optax.apply_updates`` on a tree with
ResNet-50's parameter shapes (conv kernels and norm scales/biases, no
classifier head: ~23.5M parameters in 159 leaves), in float32 and bfloat16,
for ``optax.sgd``, ``ssgd_optax.ssgd`` with every scope, and
``optax.chain(optax.normalize_by_update_norm(), optax.sgd(lr))``.
Part 2 times a full train step (forward, backward, update) of a small CNN.

All variants are timed side by side: every round runs each variant once in a
shuffled order, and the table reports the median over rounds and the ratio of
medians to ``optax.sgd``.

    python benchmarks/transform_overhead.py            # full run (minutes)
    python benchmarks/transform_overhead.py --quick    # seconds, smoke test
    python benchmarks/transform_overhead.py --rounds 10 --skip-cnn --compare-rev HEAD
                                # the working tree against the last commit
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import platform
import random
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
import numpy as np
import optax

import ssgd_optax


def resnet50_shapes(width: float = 1.0) -> list[tuple[int, ...]]:
  """Parameter shapes of ResNet-50 (HWIO kernels, per-channel norm params)."""
  w = lambda c: max(1, int(c * width))
  shapes = [(7, 7, 3, w(64)), (w(64),), (w(64),)]
  cin = w(64)
  for stage, (blocks, mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    mid, out = w(mid), w(mid * 4)
    for b in range(blocks):
      shapes += [(1, 1, cin, mid), (mid,), (mid,),
                 (3, 3, mid, mid), (mid,), (mid,),
                 (1, 1, mid, out), (out,), (out,)]
      if b == 0:
        shapes += [(1, 1, cin, out), (out,), (out,)]
      cin = out
  return shapes


def make_tree(shapes, dtype, seed=0):
  rng = np.random.default_rng(seed)
  # Group leaves three by three into "layers" (kernel, scale, bias), as a Flax
  # module tree would, so that per_layer has realistic groups.
  tree = {}
  for i, s in enumerate(shapes):
    tree.setdefault(f'layer{i // 3:03d}', {})[f'p{i % 3}'] = jnp.asarray(
        rng.standard_normal(s, dtype=np.float32), dtype)
  return tree


def load_normalize_at(rev: str):
  """SSGD's implementation as committed at git revision ``rev``, as a module.

  ``ssgd_optax/_normalize.py`` (``normalize.py`` before the package layout of
  issue 22), so that an old implementation can be timed beside the current
  one. Raises ``ValueError`` naming ``--compare-rev`` if git has neither.
  """
  import importlib.util
  import subprocess
  root = pathlib.Path(__file__).resolve().parent.parent
  errors = []
  for path in ('ssgd_optax/_normalize.py', 'ssgd_optax/normalize.py'):
    try:
      source = subprocess.run(['git', 'show', f'{rev}:{path}'], cwd=root, check=True,
                              capture_output=True, text=True).stdout
      break
    except (OSError, subprocess.CalledProcessError) as e:
      errors.append((getattr(e, 'stderr', '') or str(e)).strip())
  else:
    raise ValueError(f'--compare-rev {rev!r}: git has no ssgd_optax/_normalize.py or '
                     f'normalize.py at that revision ({errors[-1]}).')
  spec = importlib.util.spec_from_loader(f'_normalize_at_{rev}', loader=None)
  module = importlib.util.module_from_spec(spec)
  exec(compile(source, f'{rev}:{path}', 'exec'), module.__dict__)
  return module


def optimizers(lr=0.1, compare=None):
  """The timed variants; ``compare`` (a module from :func:`load_normalize_at`)
  adds its ``ssgd`` for every scope, labelled with ``compare.__name__``."""
  out = {
      'optax.sgd': optax.sgd(lr),
      'ssgd global': ssgd_optax.ssgd(lr, scope='global'),
      'ssgd per_leaf': ssgd_optax.ssgd(lr, scope='per_leaf'),
      'ssgd per_layer': ssgd_optax.ssgd(lr, scope='per_layer'),
      'normalize_by_update_norm + sgd': optax.chain(optax.normalize_by_update_norm(),
                                                    optax.sgd(lr)),
  }
  if compare is not None:
    rev = compare.__name__.removeprefix('_normalize_at_')
    for scope in ('global', 'per_leaf', 'per_layer'):
      out[f'ssgd {scope} @ {rev}'] = compare.ssgd(lr, scope=scope)
  return out


def _block(tree):
  jax.block_until_ready(tree)
  return tree


def time_side_by_side(steps: dict, rounds: int, inner: int, seed: int = 0) -> dict:
  """Median seconds per call of each zero-argument callable, interleaved."""
  samples = {name: [] for name in steps}
  order = list(steps)
  rnd = random.Random(seed)
  for _ in range(rounds):
    rnd.shuffle(order)
    for name in order:
      t0 = time.perf_counter()
      for _ in range(inner):
        steps[name]()
      samples[name].append((time.perf_counter() - t0) / inner)
  return {name: statistics.median(s) for name, s in samples.items()}


def update_benchmark(dtype, rounds, inner, width, max_leaves=None, compare=None):
  shapes = resnet50_shapes(width)[:max_leaves]
  params = make_tree(shapes, dtype, 0)
  grads = make_tree(shapes, dtype, 1)
  n_params = sum(int(np.prod(s)) for s in shapes)
  steps = {}
  for name, tx in optimizers(compare=compare).items():
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    holder = {'p': jax.tree.map(jnp.copy, params), 's': tx.init(params)}

    def run(step=step, holder=holder):
      holder['p'], holder['s'] = step(holder['p'], holder['s'], grads)
      _block(holder['p'])

    run()  # compile
    steps[name] = run
  return time_side_by_side(steps, rounds, inner), n_params, len(shapes)


def bound_benchmark(dtype, rounds, inner, width, max_leaves=None):
  """The floor for any norm-then-scale transform: one reduction pass over the
  gradients plus the in-place SGD update, each timed alone."""
  shapes = resnet50_shapes(width)[:max_leaves]
  params = make_tree(shapes, dtype, 0)
  grads = make_tree(shapes, dtype, 1)
  reduce = jax.jit(lambda g: sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                                 for x in jax.tree.leaves(g)))
  sgd = jax.jit(lambda p, g: jax.tree.map(lambda a, b: a - 0.1 * b, p, g), donate_argnums=(0,))
  holder = {'p': params}

  def run_sgd():
    holder['p'] = _block(sgd(holder['p'], grads))

  steps = {'reduce': lambda: _block(reduce(grads)), 'sgd': run_sgd}
  for run in steps.values():
    run()
  medians = time_side_by_side(steps, rounds, inner)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(grads))
  return (f'- {jnp.dtype(dtype).name}: the f32 sum of squares alone takes '
          f'{medians["reduce"] * 1e3:.2f} ms ({nbytes / medians["reduce"] / 1e9:.1f} GB/s of '
          f'gradient read), the in-place SGD update alone {medians["sgd"] * 1e3:.2f} ms '
          f'({3 * nbytes / medians["sgd"] / 1e9:.1f} GB/s read+write): any transform that '
          f'needs the norm first costs at least '
          f'{(medians["reduce"] + medians["sgd"]) / medians["sgd"]:.2f}x SGD here.')


def cnn_benchmark(rounds, inner, batch):
  from flax import nnx

  class CNN(nnx.Module):

    def __init__(self, rngs):
      self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
      self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
      self.fc1 = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
      self.fc2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
      pool = lambda h: nnx.avg_pool(h, (2, 2), (2, 2))
      x = pool(nnx.relu(self.conv1(x)))
      x = pool(nnx.relu(self.conv2(x)))
      return self.fc2(nnx.relu(self.fc1(x.reshape(x.shape[0], -1))))

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, 28, 28, 1), np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch))
  steps = {}
  for name, tx in optimizers(0.05).items():
    if name.startswith('normalize_by'):
      continue
    model = CNN(nnx.Rngs(0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt):
      def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      opt.update(model, grads)
      return loss

    def run(train_step=train_step, model=model, opt=opt):
      jax.block_until_ready(train_step(model, opt))

    run()
    steps[name] = run
  return time_side_by_side(steps, rounds, inner)


def table(medians, baseline='optax.sgd'):
  base = medians[baseline]
  glob = medians.get('ssgd global')
  lines = ['| optimizer | median step (ms) | ratio to optax.sgd | ratio to ssgd global |',
           '|---|---:|---:|---:|']
  for name, t in medians.items():
    rel = f'{t / glob:.3f}' if glob else ''
    lines.append(f'| {name} | {t * 1e3:.2f} | {t / base:.3f} | {rel} |')
  return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  rounds: int = flag(30, 'interleaved timing rounds (medians)', check=cli.at_least(1))
  inner: int = flag(3, 'calls per timed sample', check=cli.at_least(1))
  cnn_batch: int = flag(128, 'batch of the CNN train step', check=cli.at_least(1))
  compare_rev: str | None = flag(None, 'also time ssgd_optax/_normalize.py as committed at this '
                                 'git revision (e.g. HEAD), side by side in the same rounds',
                                 type=str, metavar='REV')
  skip_cnn: bool = flag(False, 'leave out the full train step')
  quick: bool = flag(False, 'tiny tree, 2 rounds (a smoke test, seconds); flags given '
                     'explicitly win')
  out: str | None = cli.output_flag('the Markdown tables (default: a new file under '
                                    'runs/benchmarks/)')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    if self.compare_rev is not None:
      load_normalize_at(self.compare_rev)  # a bad revision is refused before any timing


QUICK = dict(rounds=2, inner=1, cnn_batch=8)


def main(argv=None):
  args = cli.parse(Config, argv, description=__doc__.splitlines()[0], quick=QUICK)
  width, rounds, inner, batch, leaves = 1.0, args.rounds, args.inner, args.cnn_batch, None
  if args.quick:
    width, leaves = 0.05, 24
  compare = load_normalize_at(args.compare_rev) if args.compare_rev else None
  out = [f'jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, '
         f'{jax.device_count()} device(s), {platform.processor() or platform.machine()}; '
         f'{rounds} interleaved rounds x {inner} calls, medians.']
  for dtype in (jnp.float32, jnp.bfloat16):
    print(f'[overhead] timing the update, {jnp.dtype(dtype).name} ...', file=sys.stderr,
          flush=True)
    medians, n_params, n_leaves = update_benchmark(dtype, rounds, inner, width, leaves,
                                                   compare)
    out.append(f'\n### update + apply_updates, {jnp.dtype(dtype).name}, '
               f'{n_params / 1e6:.1f}M parameters in {n_leaves} leaves\n')
    out.append(table(medians))
  out.append('\n### the floor: reduction bandwidth vs update bandwidth\n')
  for dtype in (jnp.float32, jnp.bfloat16):
    print(f'[overhead] timing the reduction floor, {jnp.dtype(dtype).name} ...',
          file=sys.stderr, flush=True)
    out.append(bound_benchmark(dtype, rounds, inner, width, leaves))
  if not args.skip_cnn:
    print('[overhead] timing the CNN train step ...', file=sys.stderr, flush=True)
    medians = cnn_benchmark(rounds, inner, batch)
    out.append(f'\n### full train step, small CNN (2 conv + 2 dense, ~0.8M parameters), '
               f'batch {batch}, float32\n')
    out.append(table(medians))
  text = '\n'.join(out)
  print(text)
  cli.write_output(args.out, text, name='transform_overhead')
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
