# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The federated round written once: its secure-sum rule, the Flower path, distributed DP.

Three studies on ``examples/federated.py``'s setting (embedded MNIST subset,
30 participants, 10 rounds, MLP 784-64-10, theta_u = 0.1, lr 0.05, batch 16),
each a table of test accuracies over seeds (mean, min-max):

``rule``
  how a synchronous round's uploads become an update: the mean (the package's
  rule) against the sum (what the Flower server applied before), both through
  secure aggregation and in the plain synchronous order.
``flower``
  the example's secure path against the Flower apps on the in-process
  loopback grid: with the simulation's keys (``testing_key``: the same
  parameters bit for bit, so the same accuracy) and with clients that draw
  their own randomness from the OS (the default).
``dp``
  distributed DP for the secure sum (the distributed discrete Gaussian,
  replace-one participant, ``m = t = 20`` honest shares) at epsilon 1, 3, 8
  beside central DP-SGD at the same epsilon (add/remove one example, PLD),
  delta = 1e-5 for both.

    python benchmarks/federated_rounds.py --study rule --seeds 0 1 2
    python benchmarks/federated_rounds.py --study flower --seeds 0 1 2
    python benchmarks/federated_rounds.py --study dp --seeds 0 1 --epsilons 1 3 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in examples/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import scripts  # noqa: E402
from ssgd_optax.federated import _rounds as rounds  # noqa: E402

ex = scripts.load('examples/federated.py', 'ssgd_optax_examples_federated')
ROUNDS, PARTICIPANTS = 10, 30


def _accuracy(setting, sim, flat) -> float:
  return float(ex.accuracy(sim.unravel(flat), setting.x_test, setting.y_test))


def _secure(setting, seed: int, **kw) -> dict:
  out = ex.run_dssgd(setting, participants=PARTICIPANTS, rounds=ROUNDS,
                     secure_aggregation=True, seed=seed, **kw)
  return {k: v for k, v in out.items() if k != 'params'}


def _plain_synchronous(setting, seed: int) -> dict:
  return {k: v for k, v in ex.run_dssgd(setting, participants=PARTICIPANTS, rounds=ROUNDS,
                                        order='synchronous', seed=seed).items() if k != 'params'}


class _SumRule:
  """The rule this package replaced: add the (secure or plain) sum of a synchronous round."""

  def __enter__(self):
    self.saved = rounds.secure_update, rounds.mean_update
    rounds.secure_update = lambda total, num_survivors, dtype: np.asarray(total).astype(dtype)

    def summed(uploads, active=None):
      update, ok = self.saved[1](uploads, active)
      return update * ok.sum().astype(update.dtype), ok

    rounds.mean_update = summed
    return self

  def __exit__(self, *exc):
    rounds.secure_update, rounds.mean_update = self.saved


def study_rule(setting, seeds) -> list[dict]:
  rows = []
  for seed in seeds:
    for rule in ('mean', 'sum'):
      for path in ('secure aggregation', 'plain synchronous'):
        print(f'[rule] seed {seed}: {path}, {rule} ...', file=sys.stderr, flush=True)
        start = time.perf_counter()
        if rule == 'sum':
          with _SumRule():
            r = _secure(setting, seed) if path.startswith('secure') else _plain_synchronous(
                setting, seed)
        else:
          r = _secure(setting, seed) if path.startswith('secure') else _plain_synchronous(
              setting, seed)
        rows.append({'study': 'rule', 'rule': rule, 'path': path, 'seed': seed,
                     'accuracy': r['accuracy'], 'seconds': time.perf_counter() - start})
        print(json.dumps(rows[-1]), flush=True)
  return rows


def _flower(setting, seed: int, *, reproducible: bool) -> tuple[float, np.ndarray]:
  from ssgd_optax.federated import flower  # pylint: disable=import-outside-toplevel
  from ssgd_optax.federated import secure_aggregation as sa  # pylint: disable=import-outside-toplevel
  d, c, h = setting.x_train.shape[1], setting.num_classes, 64
  secure = ex.secure_settings(PARTICIPANTS, d * h + h + h * c + c, rounds=ROUNDS)
  exp = ex.make_experiment(setting, participants=PARTICIPANTS, order='synchronous',
                           secure=secure, seed=seed)
  signing, registry = sa.generate_identities(PARTICIPANTS)
  folder = tempfile.mkdtemp(prefix='ssgd_records_')
  out = []
  server = flower.make_server_app(exp.sim, exp.params, rounds=ROUNDS, key=exp.key,
                                  on_end=out.append)
  client = flower.make_client_app(
      exp.sim, lambda i: (exp.xs[i], exp.ys[i]), exp.params,
      identity=lambda ctx: signing[ctx.node_id - 1], registry=registry,
      record=lambda ctx: os.path.join(folder, f'node{ctx.node_id}.jsonl'),
      testing_key=exp.key if reproducible else None)
  flower.run_loopback(server, client, PARTICIPANTS)
  params = np.asarray(out[0].server.params)
  return _accuracy(setting, exp.sim, params), params


def study_flower(setting, seeds) -> list[dict]:
  rows = []
  for seed in seeds:
    variants = [('example (secure aggregation)', None), ('Flower, OS keys', False)]
    if seed == seeds[0]:
      variants.append(('Flower, testing_key', True))
    example_params = None
    for name, reproducible in variants:
      print(f'[flower] seed {seed}: {name} ...', file=sys.stderr, flush=True)
      start = time.perf_counter()
      if reproducible is None:
        r = ex.run_dssgd(setting, participants=PARTICIPANTS, rounds=ROUNDS,
                         secure_aggregation=True, seed=seed)
        acc, example_params = r['accuracy'], r['params']
        same = None
      else:
        acc, params = _flower(setting, seed, reproducible=reproducible)
        same = bool(np.array_equal(params, example_params))
      rows.append({'study': 'flower', 'path': name, 'seed': seed, 'accuracy': acc,
                   'bit_identical_to_example': same, 'seconds': time.perf_counter() - start})
      print(json.dumps(rows[-1]), flush=True)
  return rows


def study_dp(setting, seeds, epsilons, *, dp_l2_clip: float, delta: float) -> list[dict]:
  rows = []
  for seed in seeds:
    for eps in epsilons:
      print(f'[dp] seed {seed}: epsilon {eps} ...', file=sys.stderr, flush=True)
      start = time.perf_counter()
      r = _secure(setting, seed, distributed_dp_epsilon=eps, dp_l2_clip=dp_l2_clip,
                  dp_delta=delta)
      rows.append({'study': 'dp', 'path': 'DSSGD + distributed DP', 'epsilon': eps,
                   'seed': seed, 'accuracy': r['accuracy'], 'accounted': r['epsilon'],
                   'noise_multiplier': r['noise_multiplier'],
                   'seconds': time.perf_counter() - start})
      print(json.dumps(rows[-1]), flush=True)
      start = time.perf_counter()
      # The noise seed is fixed per (seed, epsilon) only to make this table repeatable.
      c = ex.run_central_dpsgd(setting, epsilon=eps, delta=delta, epochs=ROUNDS, seed=seed,
                               noise_seed=1000 * seed + int(eps))
      rows.append({'study': 'dp', 'path': 'central DP-SGD', 'epsilon': eps, 'seed': seed,
                   'accuracy': c['accuracy'], 'accounted': c['epsilon'],
                   'noise_multiplier': c['noise_multiplier'],
                   'seconds': time.perf_counter() - start})
      print(json.dumps(rows[-1]), flush=True)
  return rows


def table(rows: list[dict], keys: tuple[str, ...]) -> str:
  """Mean and min-max of the accuracy over seeds, one line per ``keys`` combination."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
  lines = ['| ' + ' | '.join(keys) + ' | seeds | accuracy mean | min-max |',
           '|' + '---|' * (len(keys) + 3)]
  for k, rs in groups.items():
    acc = [r['accuracy'] for r in rs]
    lines.append('| ' + ' | '.join(str(v) for v in k)
                 + f' | {len(rs)} | {np.mean(acc):.4f} | {min(acc):.4f}-{max(acc):.4f} |')
  return '\n'.join(lines)


def main(argv=None) -> str:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--study', choices=('rule', 'flower', 'dp'), required=True)
  p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  p.add_argument('--epsilons', type=float, nargs='+', default=[1.0, 3.0, 8.0])
  p.add_argument('--dp-l2-clip', type=float, default=0.5)
  p.add_argument('--delta', type=float, default=1e-5)
  p.add_argument('--out', default=None, help='also write the table (markdown) there')
  a = p.parse_args(argv)
  logging.getLogger('ssgd_optax.federated.flower').setLevel(logging.WARNING)
  setting = ex.load('mnist_subset', seed=0)
  load0 = os.getloadavg()[0]
  start = time.perf_counter()
  if a.study == 'rule':
    rows, keys = study_rule(setting, a.seeds), ('path', 'rule')
  elif a.study == 'flower':
    rows, keys = study_flower(setting, a.seeds), ('path',)
  else:
    rows, keys = study_dp(setting, a.seeds, a.epsilons, dp_l2_clip=a.dp_l2_clip,
                          delta=a.delta), ('path', 'epsilon')
  text = table(rows, keys) + (
      f'\n\n{len(rows)} runs in {time.perf_counter() - start:.0f} s; load average '
      f'{load0:.1f} before, {os.getloadavg()[0]:.1f} after; jax {jax.__version__}.\n')
  print(text)
  if a.out:
    with open(a.out, 'w', encoding='utf-8') as f:
      f.write(text)
  return text


if __name__ == '__main__':
  main()
