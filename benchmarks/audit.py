# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The audit table: accounted epsilon beside audited epsilon for every defence.

One training run per row on the embedded MNIST subset (the bias-free CNN of
the backprop-clipping paper, Poisson sampling with expected batch 256, the
optimiser of ``OPTIMIZERS`` / ``LEARNING_RATES``), each defence's run one
compiled ``lax.scan`` whose noise multiplier and learning rate are arguments
(one compilation per defence, not per epsilon),
with two kinds of canaries in the same run, each included independently with
probability 1/2 (Steinke, Nasr & Jagielski 2023):

* ``--gradient-canaries`` random-direction canary gradients, inserted with the
  Poisson rate of the real data into the per-example gradients (DP-SGD,
  DP-SSGD) or into the batch-gradient sum (the others), at the norm of the
  mechanism's claimed sensitivity (the clip norm; DP-SSGD's 1; backprop
  clipping's per-tensor bounds, one per leaf); for the heuristic defences,
  which bound nothing, at the median per-example gradient norm at
  initialisation. White box: the score is ``sum_t <u_t - b_t, c_j>`` over every
  shared update, ``b_t`` a running mean of the previous updates (decay 0.9)
  that removes the data's persistent gradient
  (:func:`ssgd_optax.audit.canary_scores`).
* ``--input-canaries`` mislabeled training images. Black box: the score is
  minus the canary's loss on the final model.

Rows: no defence; SSGD global and per_layer; DSSGD selective sharing (10 %,
``threshold_random``); backprop clipping, per-example DP-SGD and DP-SSGD at
epsilon 1, 3, 8 (delta 1e-5, PLD accountant). Audited bounds: one-run
(``one_run``, valid for any DP claim) at 95 % confidence, plus the f-DP
one-run bound for the white box. The cost of canary scoring is timed after
each run (the same number of ``canary_scores`` calls on the final update)
and reported as a fraction of the run's training time.

    python benchmarks/audit.py --quick          # smoke test (RDP accountant, fast compile)
    python benchmarks/audit.py --out benchmarks/results/audit.md
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import os
import platform
import shlex
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in examples/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
import ssgd_optax
from ssgd_optax import audit
from ssgd_examples import data as data_lib
from ssgd_examples import models as models_lib
from ssgd_optax import privacy
HEURISTIC = ('none', 'ssgd_global', 'ssgd_per_layer', 'dssgd_10')
DP = ('bp', 'dpsgd', 'dpssgd')
BETA = 0.9  # decay of the running mean of past updates subtracted before scoring
# Optimisers: Adam 1e-3 for the heuristic rows, Adam 1e-2 for backprop
# clipping and DP-SGD (post-processing either way). DP-SSGD: SGD, momentum 0.9,
# cosine decay (benchmarks/dp_ssgd.py's recipe), lr 0.5 (2.0, that benchmark's
# choice for an MLP, reached 40 % on this CNN; 0.5 reached 77 % at epsilon 3
# after 3 epochs). With Adam 1e-2 DP-SSGD collapsed (26 % at epsilon 3 and 8):
# normalisation inflates the vanishing gradients of over-confident examples to
# norm 1, so the update never shrinks and Adam keeps stepping at its full rate
# (benchmarks/README.md section 9).
OPTIMIZERS = {'none': 'adam', 'ssgd_global': 'adam', 'ssgd_per_layer': 'adam',
              'dssgd_10': 'adam', 'bp': 'adam', 'dpsgd': 'adam', 'dpssgd': 'sgd'}
LEARNING_RATES = {'none': 1e-3, 'ssgd_global': 1e-3, 'ssgd_per_layer': 1e-3, 'dssgd_10': 1e-3,
                  'bp': 1e-2, 'dpsgd': 1e-2, 'dpssgd': 0.5}
# XLA options of ``--quick``'s training programs: without LLVM optimisation
# their compilation takes a third of the CPU time, and they run only 6 steps.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
OPTIMIZER_NAMES = {'adam': 'Adam', 'adam_cosine': 'Adam + cosine decay',
                   'sgd': 'SGD momentum 0.9 + cosine decay'}
LABELS = {'none': 'none', 'ssgd_global': 'SSGD global', 'ssgd_per_layer': 'SSGD per_layer',
          'dssgd_10': 'DSSGD 10 %', 'bp': 'backprop clipping', 'dpsgd': 'DP-SGD',
          'dpssgd': 'DP-SSGD'}


class Config(NamedTuple):
  epochs: float = 10.0
  batch_size: int = 256
  gradient_canaries: int = 1000
  input_canaries: int = 500
  epsilons: tuple[float, ...] = (1.0, 3.0, 8.0)
  delta: float = 1e-5
  confidence: float = 0.95
  fpr: float = 0.01
  train_size: int | None = None
  seed: int = 0
  lrs: dict | None = None   # per method; None: LEARNING_RATES
  accountant: str = 'pld'
  fast_compile: bool = False
  clip_norm: float = 1.0
  input_bound: float = 3.0
  grad_bound: float = 0.1
  model: str = 'cnn'


def per_example_loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y)


class SmallMLP(nnx.Module):
  """784-64-10 without biases (every parameter clippable): ``--quick``'s model."""

  def __init__(self, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(784, 64, use_bias=False, rngs=rngs)
    self.fc2 = nnx.Linear(64, 10, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1))))


def _model(method: str, cfg: Config) -> nnx.Module:
  if cfg.model == 'mlp':
    model = SmallMLP(nnx.Rngs(cfg.seed))
  else:
    model = models_lib.StevensCNN(10, rngs=nnx.Rngs(cfg.seed))
  if method == 'bp':
    model = privacy.clip_layers(model, input_bound=cfg.input_bound, grad_bound=cfg.grad_bound)
  return model


def _median_grad_norm(graphdef, params, x, y) -> float:
  def one(xi, yi):
    g = jax.grad(lambda p: per_example_loss(nnx.merge(graphdef, p), xi[None], yi[None]).sum())(
        params)
    return optax.tree.norm(g)
  return float(jnp.median(jax.jit(jax.vmap(one))(jnp.asarray(x), jnp.asarray(y))))


def prepare_data(cfg: Config):
  """The training set with mislabeled canaries, the test set, and the canaries."""
  ds = data_lib.load_mnist_subset(seed=cfg.seed)
  x_train = ds.normalize(ds.x_train).astype(np.float32)
  y_train = ds.y_train.astype(np.int32)
  if cfg.train_size is not None:
    x_train, y_train = x_train[:cfg.train_size], y_train[:cfg.train_size]
  key = jax.random.key(cfg.seed + 1000)
  k_can, k_inc = jax.random.split(key)
  canaries = audit.mislabeled_canaries(k_can, x_train, y_train, cfg.input_canaries,
                                       num_classes=ds.num_classes)
  included = np.asarray(audit.draw_inclusion(k_inc, cfg.input_canaries))
  x, y = audit.with_canaries(x_train, y_train, canaries, included)
  x_test = ds.normalize(ds.x_test).astype(np.float32)
  return x, y, x_test, ds.y_test.astype(np.int32), canaries, included


def optimizer(method: str, lr, steps: int) -> optax.GradientTransformation:
  """The row's optimiser; ``lr`` may be traced (one compilation per method)."""
  if OPTIMIZERS[method] == 'adam':
    return optax.adam(lr)
  if OPTIMIZERS[method] == 'adam_cosine':
    return optax.adam(optax.cosine_decay_schedule(lr, steps))
  # benchmarks/dp_ssgd.py's recipe for the DP rows: SGD, momentum 0.9, cosine decay.
  return optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9)


class Row(NamedTuple):
  """What one method's rows share: the model, the canaries, the compiled run."""
  graphdef: Any
  params: Any
  canaries: audit.GradientCanaries
  included: jax.Array
  norm: Any
  releases: int
  steps: int
  q: float
  run: Any          # compiled (params, z, lr, key) -> (params, scores, base, update)
  predict: Any      # jitted (params, x) -> logits
  compile_s: float


def build_method(method: str, cfg: Config, prepared) -> Row:
  """Builds and compiles one method's whole training run (a ``lax.scan``).

  The noise multiplier and the learning rate are arguments of the compiled
  program, so the three epsilons of a DP method share one compilation.
  """
  x, y = prepared[0], prepared[1]
  n = len(x)
  q = cfg.batch_size / n
  steps = max(1, round(cfg.epochs / q))
  bmax = privacy.max_batch_size_for(n, q, steps=steps)
  m = cfg.gradient_canaries
  kmax = privacy.max_batch_size_for(m, q, steps=steps)
  model = _model(method, cfg)
  graphdef, params = nnx.split(model, nnx.Param)
  keys = jax.random.split(jax.random.key(cfg.seed + 7), 2)

  # Threat-model facts: the canary norm is the claimed sensitivity.
  releases = 1
  if method == 'bp':
    norm = privacy.sensitivities(model)
    releases = privacy.num_releases(model)
  elif method == 'dpsgd':
    norm = cfg.clip_norm
  elif method == 'dpssgd':
    norm = 1.0
  else:
    # Nothing bounds an example: the attacker's canary is as large as a typical
    # example's gradient (the median norm at initialisation), so the data's
    # batch noise does not drown it.
    norm = float(_median_grad_norm(graphdef, params, x[:256], y[:256]))
  canaries = audit.gradient_canaries(keys[0], params, m, kind='random', norm=norm)
  g_included = audit.draw_inclusion(keys[1], m)
  x_all, y_all = jnp.asarray(x), jnp.asarray(y)
  bsz = float(cfg.batch_size)

  def mechanism(z, key):
    if method == 'bp':
      return privacy.add_gaussian_noise(z, norm, bsz, key=key)
    if method == 'dpsgd':
      return privacy.add_gaussian_noise(z, cfg.clip_norm, bsz, key=key)
    if method == 'dpssgd':
      return privacy.dp_unit_normalize(z, expected_batch_size=bsz, key=key)
    if method == 'none':
      return optax.scale(1.0 / bsz)
    if method.startswith('ssgd_'):
      return ssgd_optax.unit_normalize(method.split('_', 1)[1])
    return optax.chain(optax.scale(1.0 / bsz),
                       ssgd_optax.selective_sharing(0.1, strategy='threshold_random', key=key))

  def loss_sum(p, xb, yb, mask):
    return jnp.sum(jnp.where(mask, per_example_loss(nnx.merge(graphdef, p), xb, yb), 0))

  def one_grad(p, xi, yi):
    return jax.grad(lambda pp: per_example_loss(nnx.merge(graphdef, pp), xi[None], yi[None])
                    .sum())(p)

  def train(p, z, lr, key, canaries, included):
    k_mech, k_steps = jax.random.split(key)
    mech = mechanism(z, k_mech)
    opt = optimizer(method, lr, steps)

    def step(carry, key):
      p, opt_state, mech_state, scores, base, _ = carry
      k_b, k_c = jax.random.split(key)
      idx, mask = privacy.poisson_sample(k_b, n, q, bmax)
      xb, yb = x_all[idx], y_all[idx]
      present = audit.sample_canaries(k_c, included, q)
      if method in ('dpsgd', 'dpssgd'):
        rows = jax.vmap(one_grad, in_axes=(None, 0, 0))(p, xb, yb)
        rows, mask2 = audit.insert_canaries(rows, mask, canaries, present, kmax)
        if method == 'dpsgd':
          clipped, _ = privacy.clip_global_per_example(rows, cfg.clip_norm)
          summed = jax.tree.map(
              lambda r: jnp.sum(jnp.where(mask2.reshape((-1,) + (1,) * (r.ndim - 1)), r, 0), 0),
              clipped)
          update, mech_state = mech.update(summed, mech_state, p)
        else:
          update, mech_state = mech.update(rows, mech_state, p, mask=mask2)
      else:
        # bp: the gradient of the masked loss sum through the clipped layers
        # (privacy.backprop_clip_grad_sum's gradient), then the canaries.
        g = jax.grad(loss_sum)(p, xb, yb, mask)
        g = jax.tree.map(jnp.add, g, audit.canary_sum(canaries, present))
        update, mech_state = mech.update(g, mech_state, p)
      # The data's persistent gradient is removed by a running mean of past updates.
      scores = scores + audit.canary_scores(update, canaries, base)
      base = jax.tree.map(lambda b, u: BETA * b + (1 - BETA) * u, base, update)
      upd, opt_state = opt.update(update, opt_state, p)
      return (optax.apply_updates(p, upd), opt_state, mech_state, scores, base, update), None

    zeros = jax.tree.map(jnp.zeros_like, p)
    carry = (p, opt.init(p), mech.init(p), jnp.zeros((m,), jnp.float32), zeros, zeros)
    (p, _, _, scores, base, update), _ = jax.lax.scan(step, carry,
                                                     jax.random.split(k_steps, steps))
    return p, scores, base, update

  start = time.perf_counter()
  args = (params, jnp.float32(1.0), jnp.float32(1e-3), jax.random.key(0), canaries, g_included)
  compiled = jax.jit(train).lower(*args).compile(FAST_COMPILE if cfg.fast_compile else None)
  compile_s = time.perf_counter() - start

  def run(p, z, lr, key):
    return compiled(p, jnp.float32(z), jnp.float32(lr), key, canaries, g_included)

  predict = jax.jit(lambda p, xb: nnx.merge(graphdef, p)(xb))
  return Row(graphdef, params, canaries, g_included, norm, releases, steps, q, run, predict,
             compile_s)


@functools.lru_cache(maxsize=None)
def noise_for(eps: float, q: float, steps: int, releases: int, delta: float,
              accountant: str) -> tuple[float, float]:
  """``(z, accounted eps)``; DP-SGD and DP-SSGD share every calibration."""
  z = privacy.calibrate_noise_multiplier(eps, sampling_rate=q, steps=steps, delta=delta,
                                         num_releases=releases, accountant=accountant)
  return z, privacy.compute_epsilon(noise_multiplier=z, sampling_rate=q, steps=steps,
                                    delta=delta, num_releases=releases, accountant=accountant)


def run_row(method: str, target_eps: float | None, cfg: Config, prepared,
            built: Row | None = None, lr: float | None = None) -> dict:
  """Trains one row's run with both canary kinds; returns its measurements."""
  _, _, x_test, y_test, in_canaries, in_included = prepared
  b = build_method(method, cfg, prepared) if built is None else built
  lr = (cfg.lrs or LEARNING_RATES)[method] if lr is None else lr
  z, accounted = 0.0, None
  if method in DP:
    z, accounted = noise_for(target_eps, b.q, b.steps, b.releases, cfg.delta, cfg.accountant)
  key = jax.random.key(cfg.seed + 11)
  start = time.perf_counter()
  p, scores, base, update = b.run(b.params, z, lr, key)
  jax.block_until_ready(scores)
  train_s = time.perf_counter() - start

  # Scoring alone, the same number of calls, on the last update.
  score_fn = jax.jit(audit.canary_scores)
  jax.block_until_ready(score_fn(update, b.canaries, base))
  start = time.perf_counter()
  acc = jnp.zeros((cfg.gradient_canaries,), jnp.float32)
  for _ in range(b.steps):
    acc = acc + score_fn(update, b.canaries, base)
  jax.block_until_ready(acc)
  score_s = time.perf_counter() - start

  logits = np.asarray(b.predict(p, jnp.asarray(x_test)))
  test_acc = float(np.mean(np.argmax(logits, -1) == y_test))
  bb_scores = audit.loss_scores(lambda xb: b.predict(p, xb), in_canaries)
  scores = np.asarray(scores)
  if not np.all(np.isfinite(scores)):
    raise FloatingPointError(f'{method} at eps={target_eps}: the run diverged (non-finite '
                             'canary scores); lower its learning rate.')
  inc = np.asarray(b.included)
  wb = audit.one_run_audit(scores, inc, delta=cfg.delta, confidence=cfg.confidence,
                           fpr=cfg.fpr)
  wb_fdp = audit.one_run_audit(scores, inc, delta=cfg.delta, confidence=cfg.confidence,
                               fpr=cfg.fpr, method='one_run_fdp')
  bb = audit.one_run_audit(bb_scores, in_included, delta=cfg.delta, confidence=cfg.confidence,
                           fpr=cfg.fpr)
  return dict(method=method, label=LABELS[method], target=target_eps, accounted=accounted,
              z=z, lr=lr, canary_norm=b.norm if method != 'bp' else 'sensitivities',
              steps=b.steps, q=b.q, n=len(prepared[0]), wb=wb, wb_fdp=wb_fdp, bb=bb,
              test_acc=test_acc, train_s=train_s, score_s=score_s, compile_s=b.compile_s,
              params=p)


def _fmt_eps(v):
  return '—' if v is None else f'{v:.2f}'


def format_table(rows: list[dict], cfg: Config) -> str:
  conf = int(round(cfg.confidence * 100))
  fpr = f'{cfg.fpr * 100:g} %'
  head = (f'| defence | target ε | accounted ε | σ | white-box ε_lb (one-run) | '
          f'white-box ε_lb (f-DP) | black-box ε_lb (one-run) | WB TPR @ {fpr} FPR | '
          f'WB AUROC | BB TPR @ {fpr} FPR | BB AUROC | test acc. | scoring / training |')
  out = [f'All lower bounds at {conf} % confidence, delta = {cfg.delta:g}.', '', head,
         '|' + '---|' * 13]
  for r in rows:
    out.append(
        f'| {r["label"]} | {_fmt_eps(r["target"])} | {_fmt_eps(r["accounted"])} | '
        f'{r["z"]:.3g} | {r["wb"].epsilon:.2f} | {r["wb_fdp"].epsilon:.2f} | '
        f'{r["bb"].epsilon:.2f} | {r["wb"].tpr_at_fpr:.3f} | {r["wb"].auroc:.3f} | '
        f'{r["bb"].tpr_at_fpr:.3f} | {r["bb"].auroc:.3f} | {100 * r["test_acc"]:.1f} % | '
        f'{100 * r["score_s"] / r["train_s"]:.1f} % |')
  return '\n'.join(out)


def _parser() -> argparse.ArgumentParser:
  d = Config()
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='smoke test: 400 images, 1 epoch, few canaries, eps 8 only, an MLP')
  p.add_argument('--epochs', type=float, default=d.epochs)
  p.add_argument('--gradient-canaries', type=int, default=d.gradient_canaries)
  p.add_argument('--input-canaries', type=int, default=d.input_canaries)
  p.add_argument('--epsilons', type=float, nargs='+', default=list(d.epsilons))
  p.add_argument('--defences', nargs='+', default=list(HEURISTIC + DP),
                 choices=list(HEURISTIC + DP))
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--lr', nargs='+', metavar='METHOD=RATE',
                 help='override a learning rate, e.g. --lr dpssgd=1.0')
  p.add_argument('--out', default=None, help='write the markdown table here')
  return p


def main(argv: Sequence[str] | None = None) -> str:
  args = _parser().parse_args(argv)
  # dp_accounting's RDP bracket search logs non-convergence per order; the PLD result stands.
  logging.getLogger('absl').setLevel(logging.ERROR)
  cfg = Config(epochs=args.epochs, gradient_canaries=args.gradient_canaries,
               input_canaries=args.input_canaries, epsilons=tuple(args.epsilons),
               seed=args.seed)
  lrs = dict(LEARNING_RATES)
  for item in args.lr or ():
    name, _, value = item.partition('=')
    if name not in lrs or not value:
      raise SystemExit(f'--lr takes METHOD=RATE with METHOD in {sorted(lrs)}; got {item!r}.')
    lrs[name] = float(value)
  cfg = cfg._replace(lrs=lrs)
  if args.quick:
    # RDP accounting: the PLD calibration alone takes longer than the whole smoke run.
    cfg = cfg._replace(epochs=1.0, batch_size=64, gradient_canaries=64, input_canaries=40,
                       epsilons=(8.0,), train_size=400, model='mlp', accountant='rdp',
                       fast_compile=True)
  start, cpu0 = time.perf_counter(), time.process_time()
  load0 = os.getloadavg()[0]
  prepared = prepare_data(cfg)
  rows = []
  for method in args.defences:
    built = build_method(method, cfg, prepared)
    print(f'{LABELS[method]}: compiled in {built.compile_s:.1f} s', file=sys.stderr, flush=True)
    for eps in (cfg.epsilons if method in DP else (None,)):
      r = run_row(method, eps, cfg, prepared, built)
      rows.append(r)
      print(f'{r["label"]} eps={_fmt_eps(eps)}: WB {r["wb"].epsilon:.2f} BB '
            f'{r["bb"].epsilon:.2f} acc {r["test_acc"]:.3f} ({r["train_s"]:.1f} s)',
            file=sys.stderr, flush=True)
  total, cpu = time.perf_counter() - start, time.process_time() - cpu0
  compile_s = sum(r['compile_s'] for r in rows if r['target'] in (None, cfg.epsilons[0]))
  train_s = sum(r['train_s'] for r in rows)
  n, steps = rows[0]['n'], rows[0]['steps']
  cmd = 'python benchmarks/audit.py ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))
  header = [
      '### Privacy audit: accounted vs audited epsilon (`benchmarks/audit.py`)', '',
      f'`{cmd.strip()}`: {datetime.date.today()}, {total / 60:.1f} min wall, '
      f'{cpu / 60:.1f} min CPU (this process, all threads), {os.cpu_count()} cores (shared; '
      f'load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), '
      f'jax {jax.__version__}, {platform.machine()}; compilation {compile_s:.0f} s wall '
      f'(one per defence), training {train_s:.0f} s wall, {cfg.accountant.upper()} accountant.',
      '',
      f'mnist_subset: {n} training images ({cfg.input_canaries // 1} mislabeled canaries, '
      f'about half included), {steps} steps at Poisson rate {cfg.batch_size}/{n} '
      f'({cfg.epochs:g} epochs), {"StevensCNN" if cfg.model == "cnn" else "784-64-10 MLP"}; '
      f'{cfg.gradient_canaries} random-direction '
      'gradient canaries (white box, every shared update observed), '
      f'{cfg.input_canaries} mislabeled input canaries (black box, final model, loss). '
      'Optimisers: ' + '; '.join(
          f'{LABELS[m]} {OPTIMIZER_NAMES[OPTIMIZERS[m]]} '
          f'{cfg.lrs[m]:g}' for m in args.defences) + '.', '']
  text = '\n'.join(header) + format_table(rows, cfg) + '\n'
  print(text)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(text)
  return text


if __name__ == '__main__':
  main()
