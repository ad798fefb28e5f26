# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""DSSGD benchmark: simulation speed and accuracy against theta_u.

1. Wall time of one simulated round for ``N`` participants: the vmapped
   simulation (asynchronous order, all participants at once), the scanned
   sequential simulation (round robin, one ``jit``), and a Python loop that
   calls the same jitted per-participant ``client_update`` and server update
   once per participant. Variants are interleaved, medians over repetitions.
2. Test accuracy of the server model after ``R`` rounds of DSSGD (largest-
   magnitude selective sharing with theta_u in {1, 0.1, 0.01}) for each order,
   against centralized SGD on all data and standalone training (mean over
   participants), mean +- std over seeds.

    python benchmarks/federated.py             # many minutes; progress lines on stderr
    python benchmarks/federated.py --quick     # seconds; smoke test

The tables go to a new file under ``runs/benchmarks/`` unless ``--out`` names
one (the committed tables are ``benchmarks/results/federated.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
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

from ssgd_examples import scripts
from ssgd_optax import federated
from ssgd_optax import selective_sharing


def _load_example():
  return scripts.load('examples/federated.py', 'ssgd_optax_examples_federated')


ex = _load_example()


def _block(tree):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, 'block_until_ready') else a,
                      tree)


def timing(setting: ex.Setting, participants: list[int], *, reps: int, batch_size: int,
           hidden: int, theta_u: float, label: str = '') -> list[dict]:
  """Seconds per round: vmap vs lax.scan vs Python loop, interleaved."""
  rows = []
  for n in participants:
    print(f'[federated] timing {n} participants ...', file=sys.stderr, flush=True)
    params = ex.make_mlp(jax.random.key(0), (setting.x_train.shape[1], hidden,
                                             setting.num_classes))
    xs, ys = federated.shard(setting.x_train, setting.y_train, n)
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    bs = min(batch_size, xs.shape[1])
    common = dict(num_participants=n, learning_rate=0.05, batch_size=bs,
                  upload=selective_sharing(theta_u))
    vm = federated.make_dssgd(ex.loss_fn, params, order='asynchronous', **common)
    sc = federated.make_dssgd(ex.loss_fn, params, order='round_robin', **common)
    vm_round, sc_round = jax.jit(vm.round), jax.jit(sc.round)
    client = jax.jit(vm.client_update)
    apply = jax.jit(federated.server_apply)
    mask = jnp.ones((vm.num_params,), bool)

    state = vm.init(jax.random.key(1))
    # What a loop user holds: one array per participant, split beforehand.
    x_list, y_list = list(xs), list(ys)
    local_list = list(state.clients.params)
    up_list = [jax.tree.map(lambda a, i=i: a[i], state.clients.upload_state) for i in range(n)]
    key_list = list(jax.random.split(state.key, n))

    def python_loop(state):
      srv = state.server
      out = []
      for i in range(n):
        local, up_i, shared = client(local_list[i], up_list[i], srv.params, mask, x_list[i],
                                     y_list[i], key_list[i])
        srv, _ = apply(srv, shared)
        out.append((local, up_i))
      return srv, out

    variants = {
        'vmap': lambda s: vm_round(s, xs, ys),
        'scan': lambda s: sc_round(s, xs, ys),
        'loop': python_loop,
    }
    for f in variants.values():  # compile
      _block(f(state))
    times = {k: [] for k in variants}
    for _ in range(reps):
      for k, f in variants.items():
        t0 = time.perf_counter()
        _block(f(state))
        times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows.append({'model': label, 'n': n, 'shard': xs.shape[1], 'batch': bs, **med})
  return rows


def accuracy(setting: ex.Setting, *, participants: int, rounds: int, seeds: list[int],
             theta_us: list[float], orders: list[str], concurrency: int, max_staleness: int,
             batch_size: int, hidden: int, lr: float) -> dict:
  """Accuracy per (order, theta_u), and the baselines; lists over seeds."""
  common = dict(learning_rate=lr, batch_size=batch_size, hidden=hidden)
  res: dict = {}
  for seed in seeds:
    res.setdefault(('centralized', None), []).append(
        ex.run_centralized(setting, epochs=rounds, seed=seed, **common)['accuracy'])
    res.setdefault(('standalone', None), []).append(
        ex.run_standalone(setting, participants=participants, epochs=rounds, seed=seed,
                          **common)['accuracy'])
    for order in orders:
      for tu in theta_us:
        print(f'[federated] seed {seed}, {order}, theta_u={tu} ...', file=sys.stderr, flush=True)
        kw = dict(concurrency=concurrency, max_staleness=max_staleness) \
            if order == 'asynchronous' else {}
        r = ex.run_dssgd(setting, participants=participants, rounds=rounds, theta_u=tu,
                         order=order, seed=seed, **common, **kw)
        res.setdefault((order, tu), []).append(r['accuracy'])
  return res


def _ms(s):
  return f'{1000 * s:.1f}'


def render(timing_rows, acc, cfg) -> str:
  out = [f'# DSSGD federated simulation ({datetime.date.today().isoformat()}, '
         f'{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end)', '',
         f'Command: `{cfg["command"]}`', '',
         f'Data: `{cfg["dataset"]}` ({cfg["n_train"]} training / {cfg["n_test"]} test images, '
         f'flattened, standardised); model: MLP {cfg["dim"]}-{cfg["hidden"]}-'
         f'{cfg["classes"]} (ReLU, {cfg["num_params"]:,} parameters); local SGD lr '
         f'{cfg["lr"]}, batch {cfg["batch"]}, one local epoch per round.', '',
         '## Wall time of one round (median of '
         f'{cfg["reps"]} interleaved repetitions, theta_u = {cfg["timing_theta_u"]})', '',
         '| data, model | participants | examples each | batch | Python loop (ms) | lax.scan, '
         'round robin (ms) | vmap, all at once (ms) | loop / vmap | loop / scan |',
         '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in timing_rows:
    out.append(f'| {r["model"]} | {r["n"]} | {r["shard"]} | {r["batch"]} | {_ms(r["loop"])} | '
               f'{_ms(r["scan"])} | {_ms(r["vmap"])} | {r["loop"] / r["vmap"]:.1f}x | '
               f'{r["loop"] / r["scan"]:.1f}x |')
  out += ['', '## Test accuracy after '
          f'{cfg["rounds"]} rounds, {cfg["participants"]} participants (mean +- std over '
          f'{len(cfg["seeds"])} seeds)', '',
          'DSSGD uploads the theta_u fraction of largest-magnitude entries of each local '
          'update (no truncation, theta_d = 1); the server adds them. Asynchronous: '
          f'{cfg["concurrency"]} participants train at once from the same download, and a '
          f'download may be up to {cfg["max_staleness"]} round(s) stale. Centralized: SGD on all '
          f'{cfg["n_train"]} images for the same number of epochs; standalone: each participant '
          'alone on its shard.', '',
          '| order | ' + ' | '.join(f'theta_u = {t}' for t in cfg['theta_us']) + ' |',
          '|---|' + '---:|' * len(cfg['theta_us'])]

  def fmt(v):
    return f'{100 * np.mean(v):.1f} +- {100 * np.std(v):.1f} %'

  for order in cfg['orders']:
    out.append(f'| {order} | ' + ' | '.join(fmt(acc[(order, t)]) for t in cfg['theta_us'])
               + ' |')
  out += ['', '| baseline | accuracy |', '|---|---:|',
          f'| centralized | {fmt(acc[("centralized", None)])} |',
          f'| standalone (mean over participants) | {fmt(acc[("standalone", None)])} |', '']
  return '\n'.join(out)


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  seeds: int = flag(3, 'seeds of the accuracy part', check=cli.at_least(1))
  rounds: int = flag(10, 'DSSGD rounds (one local epoch each)', check=cli.at_least(1))
  quick: bool = flag(False, 'digits, 6 participants, 1 round, 1 seed (a smoke test, seconds); '
                     'flags given explicitly win')
  out: str | None = cli.output_flag('the Markdown tables (default: a new file under '
                                    'runs/benchmarks/)')
  verbose: bool = cli.verbose_flag()


QUICK = dict(seeds=1, rounds=1)


def main(argv=None) -> str:
  a = cli.parse(Config, argv, description=__doc__.split('\n\n')[0], quick=QUICK)
  if a.quick:
    setting = ex.load('digits')
    cfg = dict(dataset='digits', participants=6, rounds=a.rounds,
               seeds=list(range(a.seeds)), theta_us=[0.1],
               orders=['asynchronous'], concurrency=3, max_staleness=1,
               hidden=8, lr=0.05, batch=8, reps=1, timing_participants=[4],
               timing_theta_u=0.1, timing_models=[('digits', 8)])
  else:
    setting = ex.load('mnist_subset')
    cfg = dict(dataset='mnist_subset', participants=30, rounds=a.rounds,
               seeds=list(range(a.seeds)), theta_us=[1.0, 0.1, 0.01],
               orders=['round_robin', 'random', 'asynchronous'], concurrency=3,
               max_staleness=1, hidden=64, lr=0.05, batch=8, reps=5,
               timing_participants=[30, 100, 300], timing_theta_u=0.1,
               timing_models=[('mnist_subset', 64), ('digits', 16)])
  cfg.update(command='python benchmarks/federated.py' + (' ' + ' '.join(argv) if argv else ''),
             n_train=len(setting.x_train), n_test=len(setting.x_test),
             dim=setting.x_train.shape[1], classes=setting.num_classes)
  cfg['num_params'] = (cfg['dim'] + 1) * cfg['hidden'] + (cfg['hidden'] + 1) * cfg['classes']
  rows = []
  for name, hidden in cfg['timing_models']:
    s = setting if name == cfg['dataset'] else ex.load(name)
    rows += timing(s, cfg['timing_participants'], reps=cfg['reps'], batch_size=cfg['batch'],
                   hidden=hidden, theta_u=cfg['timing_theta_u'],
                   label=f'{name}, MLP {s.x_train.shape[1]}-{hidden}-{s.num_classes}')
  acc = accuracy(setting, participants=cfg['participants'], rounds=cfg['rounds'],
                 seeds=cfg['seeds'], theta_us=cfg['theta_us'], orders=cfg['orders'],
                 concurrency=cfg['concurrency'], max_staleness=cfg['max_staleness'],
                 batch_size=cfg['batch'], hidden=cfg['hidden'], lr=cfg['lr'])
  text = render(rows, acc, cfg)
  print(text)
  cli.write_output(a.out, text, name='federated')
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
