# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""SSGD accuracy study: the shape of the SSGD paper's Table 2 on embedded data.

For every data set, batch size and optimizer, models are trained for every
learning rate of a grid (half-decade steps) and every seed on 90% of the
training set; the rate with the best accuracy on the held-out 10%
(validation, mean over seeds) is chosen, and the test accuracy of that rate's
models is reported as mean +- std over seeds. Seeds change the
initialisation and the batch order; the splits are fixed (seed 0). The test
set plays no part in the choice.

Everything runs for a fixed budget of epochs with a cosine learning-rate
decay to 0, so a batch of ``B`` gives ``floor(N / B)`` steps per epoch
(``N`` = training images; ``B >= N`` is full-batch gradient descent, one step
per epoch). The model is an MLP (one hidden layer of ``--hidden`` ReLU units).
The learning-rate grid and every seed of one (optimizer, batch size) cell
train side by side under one ``jax.vmap``-ed, ``lax.scan``-ed program.

Optimizers (all from ``examples/train.py``'s ``make_optimizer``):
SGD; SGD with momentum 0.9 (SGDm); Adam; ``optax.normalize_by_update_norm``
(one global unit-norm step, no momentum: SSGD's global scope without
momentum, built from optax parts); SSGD with momentum 0.9 and scope global,
per_leaf or per_layer.

  python benchmarks/accuracy.py                  # 8 min on 2 quiet CPU cores
  python benchmarks/accuracy.py --quick          # seconds; smoke test
  python benchmarks/accuracy.py --datasets fashion_mnist --data-dir DIR

The tables go to a new file under ``runs/benchmarks/`` unless ``--out`` names
one (the committed tables are ``benchmarks/results/accuracy.md`` and
``accuracy.png``); one progress line per cell goes to stderr.
"""

import dataclasses
import datetime
import json
import math
import pathlib
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
from ssgd_examples import models as models_lib
from ssgd_examples import scripts

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_train_module():
  """examples/train.py, so the study uses the example's optimizers."""
  name = 'ssgd_optax_examples_train'
  if name in sys.modules:
    return sys.modules[name]
  return scripts.load('examples/train.py', name)


def _grid(low: float, points: int) -> list[float]:
  """``points`` rates from ``low`` in half-decade steps: 0.001, 0.003, 0.01..."""
  ladder = [float(f'{m}e{e}') for e in range(-6, 4) for m in (1, 3)]
  start = min(range(len(ladder)), key=lambda i: abs(math.log(ladder[i] / low)))
  return ladder[start:start + points]


# label -> (optimizer name in examples/train.py, options, learning-rate grid)
OPTIMIZERS = {
  'SGD': ('sgd', {}, _grid(0.003, 8)),
  'SGDm': ('sgd_momentum', {'momentum': 0.9}, _grid(0.0003, 8)),
  'Adam': ('adam', {}, _grid(0.00003, 8)),
  'normalize_by_update_norm': ('normalize_by_update_norm', {}, _grid(0.003, 8)),
  'SSGD global': ('ssgd', {'scope': 'global', 'momentum': 0.9},
                  _grid(0.0003, 8)),
  'SSGD per_leaf': ('ssgd', {'scope': 'per_leaf', 'momentum': 0.9},
                    _grid(0.0003, 8)),
  'SSGD per_layer': ('ssgd', {'scope': 'per_layer', 'momentum': 0.9},
                     _grid(0.0003, 8)),
}
DEFAULT_BATCH_SIZES = (16, 64, 256, 1024, 4096)
DEFAULT_DATASETS = ('mnist_subset', 'digits')


def make_runner(optimizer: str, options: dict, image_shape, num_classes: int,
                hidden: int, steps: int):
  """A jitted ``run(keys, lrs, orders, x, y, evals) -> [(acc, loss)] per eval``.

  Trains one model per row of ``keys``/``lrs``/``orders`` (vmapped) for
  ``steps`` steps, ``orders[i]`` holding the example indices of each step,
  and returns each model's accuracy and mean loss on every ``(x, y)`` pair of
  ``evals``.
  """
  train = _load_train_module()
  make = lambda key: models_lib.MLP(image_shape, num_classes, hidden=(hidden,),
                                    rngs=nnx.Rngs(params=key))
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: make(jax.random.key(0))))

  def loss_fn(params, xb, yb):
    logits = nnx.merge(graphdef, params)(xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def run_one(key, lr, order, x, y, evals):
    params = nnx.state(make(key), nnx.Param)
    schedule = optax.cosine_decay_schedule(1.0, steps)
    tx = train.make_optimizer(optimizer, lambda count: lr * schedule(count),
                              **options)
    opt_state = tx.init(params)

    def step(carry, idx):
      params, opt_state = carry
      grads = jax.grad(loss_fn)(params, x[idx], y[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, opt_state), order)
    model = nnx.merge(graphdef, params)
    out = []
    for x_eval, y_eval in evals:
      logits = model(x_eval)
      out.append((jnp.mean(jnp.argmax(logits, -1) == y_eval),
                  optax.softmax_cross_entropy_with_integer_labels(
                      logits, y_eval).mean()))
    return out

  return jax.jit(jax.vmap(run_one, in_axes=(0, 0, 0, None, None, None)))


def batch_orders(n: int, batch_size: int, epochs: int,
                 seeds: Sequence[int]) -> tuple[np.ndarray, int]:
  """Per seed, the example indices of every step: ``int32[S, E*steps, B]``."""
  b = min(batch_size, n)
  per_epoch = n // b
  orders = np.stack([
      np.concatenate([
          data_lib.epoch_permutation(n, seed=s, epoch=e)[:per_epoch * b]
          .reshape(per_epoch, b) for e in range(epochs)])
      for s in seeds]).astype(np.int32)
  return orders, per_epoch


def run_cell(label: str, ds: data_lib.Dataset, val: data_lib.Dataset,
             batch_size: int, *, epochs: int, seeds: Sequence[int],
             hidden: int, grid: Sequence[float] | None = None) -> dict:
  """One optimizer at one batch size: every (rate, seed) pair, one program.

  All models train on ``val.x_train`` (the training set minus the validation
  split). The rate with the best validation accuracy (mean over seeds) is
  chosen; the test accuracy of that rate's models is reported. The test set
  plays no part in the choice.
  """
  name, options, default_grid = OPTIMIZERS[label]
  grid = list(grid or default_grid)
  x_tr = val.normalize(val.x_train)
  orders, per_epoch = batch_orders(len(x_tr), batch_size, epochs, seeds)
  run = make_runner(name, options, ds.image_shape, ds.num_classes, hidden,
                    orders.shape[1])
  # Model (i, j): rate grid[i], seed seeds[j]; flattened rate-major.
  keys = jnp.stack([jax.random.key(s) for s in seeds] * len(grid))
  lrs = jnp.repeat(jnp.asarray(grid, jnp.float32), len(seeds))
  evals = ((val.normalize(val.x_test), val.y_test),
           (val.normalize(ds.x_test), ds.y_test))
  (val_acc, _), (test_acc, test_loss) = run(
      keys, lrs, np.tile(orders, (len(grid), 1, 1)), x_tr, val.y_train, evals)
  shape = (len(grid), len(seeds))
  val_acc = np.nan_to_num(np.asarray(val_acc).reshape(shape), nan=0.0)
  test_acc = np.asarray(test_acc).reshape(shape)
  best = int(np.argmax(val_acc.mean(1)))  # first maximum: smaller rate on ties
  acc = test_acc[best]
  return {
    'optimizer': label, 'batch_size': batch_size, 'grid': grid,
    'val_accuracy': val_acc.tolist(), 'test_accuracy_all': test_acc.tolist(),
    'lr': grid[best], 'lr_at_edge': best in (0, len(grid) - 1),
    'test_accuracy': acc.tolist(),
    'test_loss': np.asarray(test_loss).reshape(shape)[best].tolist(),
    'mean': float(acc.mean()), 'std': float(acc.std(ddof=1)),
    'steps_per_epoch': per_epoch,
    'effective_batch': min(batch_size, len(x_tr)),
  }


def markdown(results: dict, config: dict) -> str:
  """Tables of test accuracy (mean +- std, %) and of the chosen rates."""
  lines = []
  for ds_name, cells in results.items():
    labels = list(dict.fromkeys(c['optimizer'] for c in cells))
    sizes = sorted({c['batch_size'] for c in cells})
    cell = {(c['optimizer'], c['batch_size']): c for c in cells}
    lines += [f'### {ds_name}: test accuracy (%), mean ± std over '
              f'{len(config["seeds"])} seeds', '',
              '| batch | steps/epoch | ' + ' | '.join(labels) + ' |',
              '|---:|---:|' + '---:|' * len(labels)]
    for b in sizes:
      row = [cell[(l, b)] for l in labels]
      top = max(r['mean'] for r in row)
      texts = []
      for r in row:
        t = f'{100 * r["mean"]:.2f} ± {100 * r["std"]:.2f}'
        texts.append(f'**{t}**' if r['mean'] == top else t)
      first = row[0]
      eff = ('' if first['effective_batch'] == b
             else f' (full: {first["effective_batch"]})')
      lines.append(f'| {b}{eff} | {first["steps_per_epoch"]} | '
                   + ' | '.join(texts) + ' |')
    lines += ['', f'### {ds_name}: learning rate chosen on the validation '
              'split († = at the edge of the grid)', '',
              '| batch | ' + ' | '.join(labels) + ' |',
              '|---:|' + '---:|' * len(labels)]
    for b in sizes:
      texts = [f'{cell[(l, b)]["lr"]:g}' + (' †' if cell[(l, b)]['lr_at_edge']
                                            else '') for l in labels]
      lines.append(f'| {b} | ' + ' | '.join(texts) + ' |')
    lines += ['', 'Grids: ' + '; '.join(
        f'{l} {cell[(l, sizes[0])]["grid"]}' for l in labels), '']
  return '\n'.join(lines)


def plot(results: dict, path: str) -> None:
  """Test accuracy and chosen learning rate against batch size."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, axes = plt.subplots(len(results), 2, figsize=(12, 4 * len(results)),
                           squeeze=False)
  for row, (ds_name, cells) in zip(axes, results.items()):
    labels = list(dict.fromkeys(c['optimizer'] for c in cells))
    for label in labels:
      cs = sorted((c for c in cells if c['optimizer'] == label),
                  key=lambda c: c['batch_size'])
      bs = [c['batch_size'] for c in cs]
      style = '-' if label.startswith('SSGD') else '--'
      row[0].errorbar(bs, [100 * c['mean'] for c in cs],
                      yerr=[100 * c['std'] for c in cs], fmt='o' + style,
                      capsize=3, label=label)
      row[1].plot(bs, [c['lr'] for c in cs], 'o' + style, label=label)
    row[0].set_title(f'{ds_name}: test accuracy')
    row[0].set_ylabel('test accuracy (%)')
    row[1].set_title(f'{ds_name}: learning rate chosen on validation')
    row[1].set_ylabel('learning rate')
    row[1].set_yscale('log')
    for ax in row:
      ax.set_xscale('log', base=2)
      ax.set_xlabel('batch size')
      ax.grid(alpha=0.3)
    row[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


@dataclasses.dataclass(frozen=True)
class Config:
  """The study's flags (each checked before any work)."""
  datasets: tuple[str, ...] = flag(DEFAULT_DATASETS, 'data sets', choices=data_lib.DATASETS)
  data_dir: str | None = flag(None, 'folder with the fashion_mnist/mnist/cifar10 files',
                              type=str, check=cli.existing_dir)
  optimizers: tuple[str, ...] = flag(tuple(OPTIMIZERS), 'optimizers', choices=tuple(OPTIMIZERS))
  batch_sizes: tuple[int, ...] = flag(DEFAULT_BATCH_SIZES, 'batch sizes',
                                      check=cli.at_least(1))
  epochs: int = flag(20, 'epochs per model', check=cli.at_least(1))
  seeds: int = flag(3, 'seeds per (rate, optimizer, batch size); a std needs two',
                    check=cli.at_least(2))
  hidden: int = flag(128, 'hidden ReLU units of the MLP', check=cli.at_least(1))
  val_fraction: float = flag(0.1, 'validation fraction of the training set',
                             check=cli.in_range(0, 1, lo_open=True, hi_open=True))
  quick: bool = flag(False, 'digits, batch sizes 32 and 256, SGD and SSGD global, 3 rates, '
                     '2 epochs, 16 hidden units (a smoke test, seconds); flags given '
                     'explicitly win')
  out: str | None = cli.output_flag('the Markdown tables (default: a new file under '
                                    'runs/benchmarks/)')
  plot: str | None = cli.output_flag('PNG of accuracy and chosen rate vs batch', suffix='.png')
  json: str | None = cli.output_flag('raw results (every seed and rate) as JSON', suffix='.json')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    for name in self.datasets:
      if name in ('mnist', 'fashion_mnist', 'cifar10'):
        if self.data_dir is None:
          raise ValueError(f'--datasets {name} needs --data-dir (its local files).')
        try:
          data_lib.check_files(name, self.data_dir)
        except data_lib.DatasetError as e:
          raise ValueError(f'--data-dir: {e}') from None


QUICK = dict(datasets=('digits',), batch_sizes=(32, 256), optimizers=('SGD', 'SSGD global'),
             epochs=2, hidden=16)


def main(argv: Sequence[str] | None = None) -> str:
  """Runs the study; prints and writes the Markdown tables."""
  args = cli.parse(Config, argv, description=__doc__.split('\n')[0], quick=QUICK)
  # --quick: three rates per optimizer around the middle of its grid.
  grids = {l: OPTIMIZERS[l][2][2:5] for l in args.optimizers} if args.quick else {}
  cells = len(args.datasets) * len(args.batch_sizes) * len(args.optimizers)

  seeds = list(range(args.seeds))
  start, cpu_start = time.perf_counter(), time.process_time()
  results = {}
  done = 0
  for ds_name in args.datasets:
    ds = data_lib.load_dataset(ds_name, data_dir=args.data_dir, seed=0)
    val = ds.validation_split(args.val_fraction, seed=0)
    results[ds_name] = []
    for b in args.batch_sizes:
      for label in args.optimizers:
        cli.check_interrupt()
        t0 = time.perf_counter()
        cell = run_cell(label, ds, val, b, epochs=args.epochs, seeds=seeds,
                        hidden=args.hidden, grid=grids.get(label))
        cell['time_s'] = time.perf_counter() - t0
        results[ds_name].append(cell)
        done += 1
        print(f'# [{done}/{cells}] {ds_name} batch {b} {label}: lr {cell["lr"]:g} test '
              f'{100 * cell["mean"]:.2f} ± {100 * cell["std"]:.2f} '
              f'({cell["time_s"]:.1f} s)', file=sys.stderr, flush=True)
  elapsed = time.perf_counter() - start
  cpu = time.process_time() - cpu_start
  config = {'seeds': seeds, 'epochs': args.epochs, 'hidden': args.hidden}
  command = 'python benchmarks/accuracy.py ' + ' '.join(
      argv if argv is not None else sys.argv[1:])
  header = (f'Command: `{command.strip()}`  \n'
            f'Date: {datetime.date.today().isoformat()}; '
            f'{jax.default_backend()} backend; wall time {elapsed / 60:.1f} '
            f'min, CPU time {cpu / 60:.1f} min (all threads).  \n'
            f'Model: MLP, one hidden layer of {args.hidden} ReLU units; '
            f'{args.epochs} epochs; cosine decay to 0; trained on '
            f'{100 - int(100 * args.val_fraction)}% of the training set, '
            f'learning rate chosen on the other '
            f'{int(100 * args.val_fraction)}% (mean validation accuracy over '
            f'{len(seeds)} seeds), test accuracy of those seeds.\n')
  text = header + '\n' + markdown(results, config)
  print(text)
  cli.write_output(args.out, text, name='accuracy')
  if args.plot:
    plot(results, args.plot)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {'config': config, 'results': results}, indent=1))
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
