# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Cost of one secure-aggregation round: verification and distributed DP against the old protocol.

One in-process round (every participant and the server, as ``secure_sum``
runs it) of three variants, interleaved in shuffled order, medians over
repetitions:

* ``old``: ``ssgd_optax/federated/secure_aggregation.py`` as committed at
  ``--compare-rev`` (default ``6029fde``, the last commit before issue 25),
  loaded from git;
* ``verified``: the current protocol (commitments, checked reconstruction,
  key validation, bounded parsing, range-checked sum);
* ``verified+dp``: the same with the distributed discrete Gaussian (each
  participant's L2 clip, conditional rounding and noise share).

Participant time (all ``n`` participants' steps, summed) and server time are
reported separately, with ratios to ``old``.

    python benchmarks/secure_aggregation.py               # ~10 min on 2 CPU cores
    python benchmarks/secure_aggregation.py --quick       # seconds; smoke test
    python benchmarks/secure_aggregation.py --decode-only   # correcting one wrong share

The table goes to a new file under ``runs/benchmarks/`` unless ``--out`` names
one (the committed table is ``benchmarks/results/secure_aggregation.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import os
import pathlib
import random
import secrets
import statistics
import subprocess
import sys
import time

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in
# examples/; its command-line layer first, so that Ctrl-C during the imports
# below also ends in one line (exit 130).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import cli
from ssgd_examples.cli import flag

import numpy as np

from ssgd_optax.federated import distributed_dp as ddp
from ssgd_optax.federated import secure_aggregation as sa


def load_at(rev: str):
  """The protocol module as committed at ``rev``, loaded from git as its own module."""
  root = pathlib.Path(__file__).resolve().parent.parent
  path = 'ssgd_optax/federated/secure_aggregation.py'
  try:
    source = subprocess.run(['git', 'show', f'{rev}:{path}'], cwd=root, check=True,
                            capture_output=True, text=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    raise ValueError(f'--compare-rev {rev!r}: cannot read {path} from git '
                     f'({(getattr(e, "stderr", "") or str(e)).strip()}).') from None
  spec = importlib.util.spec_from_loader(f'_secure_aggregation_at_{rev}', loader=None)
  module = importlib.util.module_from_spec(spec)
  exec(compile(source, f'{rev}:{path}', 'exec'), module.__dict__)
  return module


def one_round(mod, n: int, d: int, dp=None, seed: int = 0) -> tuple[float, float]:
  """``(participant seconds, server seconds)`` of one full round, no dropout."""
  t = max(2, -(-2 * n // 3))
  session = secrets.token_bytes(16)
  kw = {} if dp is None else {'dp': dp}
  server = mod.Server(n, t, session=session, **kw)
  signing, registry = mod.generate_identities(n)
  clients = [mod.Participant(i, n, t, server.public_key, signing_key=signing[i],
                             registry=registry, session=session, **kw) for i in range(n)]
  for c in clients:
    server.register(c.index, c.channel_public_key)
  timer = {'p': 0.0, 's': 0.0}

  def timed(who, f, *args):
    start = time.perf_counter()
    out = f(*args)
    timer[who] += time.perf_counter() - start
    return out

  rng = np.random.default_rng(seed)
  timed('s', server.start_round, 0)
  keys = timed('s', server.collect_keys, [timed('p', c.advertise, 0) for c in clients])
  fwd = timed('s', server.collect_shares, [timed('p', clients[u].share, m)
                                           for u, m in keys.items()])
  masked = []
  for u, m in fwd.items():
    update = rng.uniform(-1e-3, 1e-3, d)  # drawn outside the timer
    masked.append(timed('p', clients[u].masked_input, m, update))
    del update
  surv = timed('s', server.collect_masked, masked)
  del masked
  sigs = timed('s', server.collect_consistency, [timed('p', clients[u].consistency_check, m)
                                                 for u, m in surv.items()])
  timed('s', server.finish, [timed('p', clients[u].unmask, m) for u, m in sigs.items()])
  return timer['p'], timer['s']


def measure(old, n: int, d: int, reps: int) -> list[dict]:
  t = max(2, -(-2 * n // 3))
  # The noise level does not change the cost; z = 1 at the guaranteed t shares.
  dp = ddp.distributed_discrete_gaussian(1.0, d, noise_multiplier=1.0, num_participants=n,
                                         min_noise_shares=t)
  variants = {'old': (old, None), 'verified': (sa, None), 'verified+dp': (sa, dp)}
  times = {name: [] for name in variants}
  for rep in range(reps):
    order = list(variants)
    random.Random(rep).shuffle(order)
    for name in order:
      mod, mech = variants[name]
      times[name].append(one_round(mod, n, d, mech, seed=rep))
      print(f'  n={n} d={d} rep {rep} {name}: participants {times[name][-1][0]:.2f} s, '
            f'server {times[name][-1][1]:.2f} s', file=sys.stderr, flush=True)
  rows = []
  base = None
  for name in variants:
    p = statistics.median(x[0] for x in times[name])
    s = statistics.median(x[1] for x in times[name])
    if base is None:
      base = (p, s)
    rows.append({'n': n, 'd': d, 'variant': name, 'participants': p, 'server': s,
                 'total': p + s, 'ratio_p': p / base[0], 'ratio_s': s / base[1],
                 'ratio': (p + s) / sum(base), 'reps': reps})
  return rows


def decode_cost(participants: list[int], reps: int) -> str:
  """Seconds to correct one wrong share of one secret (k = n shares, t = ceil(2n/3))."""
  lines = ['| n = k shares | t | Berlekamp-Welch, one wrong share (s) | Lagrange on t shares (s) |',
           '|---:|---:|---:|---:|']
  for n in participants:
    t = max(2, -(-2 * n // 3))
    decode, lagrange = [], []
    for _ in range(reps):
      shares = sa.shamir_split(secrets.randbelow(2 ** 256), n, t)
      shares[0] = (shares[0][0], (shares[0][1] + 1) % sa.PRIME)
      start = time.perf_counter()
      sa.shamir_decode(shares, t)
      decode.append(time.perf_counter() - start)
      start = time.perf_counter()
      sa.shamir_reconstruct(shares[1:t + 1])
      lagrange.append(time.perf_counter() - start)
    lines.append(f'| {n} | {t} | {statistics.median(decode):.3f} | '
                 f'{statistics.median(lagrange):.4f} |')
  return '\n'.join(lines) + '\n'


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  compare_rev: str = flag('6029fde', 'the git revision of the old protocol')
  participants: tuple[int, ...] = flag((10, 100), 'participant counts (>= 3: threshold '
                                       'ceil(2n/3) >= 2)', check=cli.at_least(3))
  entries: tuple[int, ...] = flag((100_000, 1_000_000), 'entries of each update',
                                  check=cli.at_least(1))
  reps: int = flag(3, 'repetitions (interleaved; medians)', check=cli.at_least(1))
  reps_largest: int = flag(1, 'repetitions for the largest n x d (minutes per round here)',
                           check=cli.at_least(1))
  quick: bool = flag(False, 'n = 4, 10^4 entries, 1 rep (a smoke test); flags given '
                     'explicitly win')
  decode_only: bool = flag(False, 'only the cost of correcting a wrong share (Reed-Solomon '
                           'decoding)')
  out: str | None = cli.output_flag('the Markdown table (default: a new file under '
                                    'runs/benchmarks/)')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    if not self.decode_only:
      load_at(self.compare_rev)  # a bad revision is refused before any round


QUICK = dict(participants=(4,), entries=(10_000,), reps=1, reps_largest=1)


def main(argv=None) -> str:
  args = cli.parse(Config, argv, description=__doc__.split('\n\n')[0], quick=QUICK)
  if args.decode_only:
    load = os.getloadavg()[0]
    text = (f'load average {load:.1f}; medians of {args.reps} repetitions\n\n'
            + decode_cost(args.participants, args.reps))
    print(text)
    cli.write_output(args.out, text, name='secure_aggregation_decode')
    return text
  old = load_at(args.compare_rev)
  load = os.getloadavg()
  start = time.time()
  rows = []
  largest = (max(args.participants), max(args.entries))
  for n in args.participants:
    for d in args.entries:
      reps = args.reps_largest if (n, d) == largest and not args.quick else args.reps
      print(f'[secure_aggregation] n={n}, {d:,} entries, {reps} repetition(s) ...',
            file=sys.stderr, flush=True)
      rows += measure(old, n, d, reps)
  lines = [
      '### Secure aggregation: one round, old protocol vs verified vs verified + distributed DP',
      '',
      f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, '
      f'{os.cpu_count()} CPUs, load average {load[0]:.1f} before / '
      f'{os.getloadavg()[0]:.1f} after, wall {(time.time() - start) / 60:.1f} min; '
      f'old = `{args.compare_rev}`; medians of interleaved repetitions.',
      '',
      '| n | entries | variant | reps | participants (s, all n) | server (s) | total (s) | '
      'participants / old | server / old | total / old |',
      '|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in rows:
    lines.append(f'| {r["n"]} | {r["d"]:,} | {r["variant"]} | {r["reps"]} | '
                 f'{r["participants"]:.2f} | {r["server"]:.2f} | {r["total"]:.2f} | '
                 f'{r["ratio_p"]:.2f} | {r["ratio_s"]:.2f} | {r["ratio"]:.2f} |')
  text = '\n'.join(lines) + '\n'
  print(text)
  cli.write_output(args.out, text, name='secure_aggregation')
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
