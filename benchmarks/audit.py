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
  defence's claimed sensitivity (the clip norm; DP-SSGD's 1; backprop
  clipping's per-tensor bounds, one per leaf); for the heuristic defences,
  which bound nothing, at the median per-example gradient norm at
  initialisation. White box: the score is ``sum_t <u_t - b_t, c_j>`` over every
  shared update (:func:`ssgd_optax.audit.canary_scores`). "Data known" (the DP
  threat model: the attacker knows every other example): ``b_t`` is the
  defence's noise-free update on the real batch alone (exact for the DP rows and
  no defence; for SSGD the data's normalised gradient, for DSSGD the data's
  gradient on the shared coordinates). "Data unknown": ``b_t = 0``.
* ``--input-canaries`` mislabeled training images. Black box: the score is
  minus the canary's loss on the final model.

Rows: no defence; SSGD global and per_layer; DSSGD selective sharing (10 %,
``threshold_random``); backprop clipping, per-example DP-SGD and DP-SSGD at
epsilon 1, 3, 8 (delta 1e-5, PLD accountant). Audited bounds: one-run
(``one_run``, valid for any DP claim) at 95 % confidence, plus the f-DP
one-run bound for the white box. The cost of canary scoring is timed after
each run (the same number of ``canary_scores`` calls on the final update)
and reported as a fraction of the run's training time.

``--power``: the audit's power instead (``power_tables``): how often it
exceeds the claimed epsilon (1 at delta 1e-5) when the noise is cut or the
sensitivity under-stated 1.5x, 2x, 3x, over many seeds, with Clopper-Pearson
intervals. (a) A defence alone (full batch, 4 steps): the multi-run
Gaussian-DP audit (:func:`ssgd_optax.audit.audit_defence_multi_run`) at
1,000-8,000 runs, and one-run audits with 1,000 and 5,000 canaries. (b) The
training-loop recipe: DP-SGD on the scikit-learn digits with a 64-64-10 MLP,
10 epochs at expected batch 64, random gradient canaries, scored without a
baseline, with the data-known baseline, and with the data-known baseline and
the subsampled-Gaussian likelihood ratio at the claimed noise.

    python benchmarks/audit.py --quick          # smoke test (RDP accountant, fast compile)
    python benchmarks/audit.py                  # the table (about 20 min on 2 CPU cores)
    python benchmarks/audit.py --power          # the power tables

It needs the ``audit`` extra (in ``bench``). The tables go to a new file under
``runs/benchmarks/`` unless ``--out`` names one (the committed tables are
``benchmarks/results/audit.md``, ``audit_power_alone.md`` and
``audit_power_training.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import functools
import logging
import math
import os
import platform
import shlex
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

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

import ssgd_optax
from ssgd_optax import audit
from ssgd_examples import data as data_lib
from ssgd_examples import models as models_lib
from ssgd_optax import privacy
HEURISTIC = ('none', 'ssgd_global', 'ssgd_per_layer', 'dssgd_10')
DP = ('bp', 'dpsgd', 'dpssgd')
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


class AuditConfig(NamedTuple):
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


def _model(method: str, cfg: AuditConfig) -> nnx.Module:
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


def prepare_data(cfg: AuditConfig):
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
  run: Any          # compiled (params, z, lr, key) -> (params, scores, plain, base, update)
  predict: Any      # jitted (params, x) -> logits
  compile_s: float


def build_method(method: str, cfg: AuditConfig, prepared) -> Row:
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

  def defence(z, key):
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

  def data_part(update, g, rows=None, mask=None):
    # The defence's noise-free update on the real batch alone: what a white-box
    # auditor who knows the data removes before scoring (canary_scores' baseline).
    if method == 'dpsgd':
      clipped, _ = privacy.clip_global_per_example(rows, cfg.clip_norm)
      return jax.tree.map(lambda r: jnp.sum(jnp.where(
          mask.reshape((-1,) + (1,) * (r.ndim - 1)), r, 0), 0) / bsz, clipped)
    if method == 'dpssgd':
      normed = privacy.normalize_per_example(rows, mask=mask)
      return jax.tree.map(lambda r: jnp.sum(r, 0) / bsz, normed)
    if method in ('bp', 'none'):
      return jax.tree.map(lambda x: x / bsz, g)
    if method.startswith('ssgd_'):
      tx = ssgd_optax.unit_normalize(method.split('_', 1)[1])
      return tx.update(g, tx.init(g))[0]
    # DSSGD: the shared coordinates are visible in the update itself.
    return jax.tree.map(lambda u, x: jnp.where(u != 0, x / bsz, 0), update, g)

  def train(p, z, lr, key, canaries, included):
    k_mech, k_steps = jax.random.split(key)
    mech = defence(z, k_mech)
    opt = optimizer(method, lr, steps)

    def step(carry, key):
      p, opt_state, mech_state, scores, plain, _ = carry
      k_b, k_c = jax.random.split(key)
      idx, mask = privacy.poisson_sample(k_b, n, q, bmax)
      xb, yb = x_all[idx], y_all[idx]
      present = audit.sample_canaries(k_c, included, q)
      if method in ('dpsgd', 'dpssgd'):
        data_rows = jax.vmap(one_grad, in_axes=(None, 0, 0))(p, xb, yb)
        rows, mask2 = audit.insert_canaries(data_rows, mask, canaries, present, kmax)
        if method == 'dpsgd':
          clipped, _ = privacy.clip_global_per_example(rows, cfg.clip_norm)
          summed = jax.tree.map(
              lambda r: jnp.sum(jnp.where(mask2.reshape((-1,) + (1,) * (r.ndim - 1)), r, 0), 0),
              clipped)
          update, mech_state = mech.update(summed, mech_state, p)
        else:
          update, mech_state = mech.update(rows, mech_state, p, mask=mask2)
        base = data_part(update, None, data_rows, mask)
      else:
        # bp: the gradient of the masked loss sum through the clipped layers
        # (privacy.backprop_clip_grad_sum's gradient), then the canaries.
        g = jax.grad(loss_sum)(p, xb, yb, mask)
        update, mech_state = mech.update(
            jax.tree.map(jnp.add, g, audit.canary_sum(canaries, present)), mech_state, p)
        base = data_part(update, g)
      scores = scores + audit.canary_scores(update, canaries, base)
      plain = plain + audit.canary_scores(update, canaries)
      upd, opt_state = opt.update(update, opt_state, p)
      return (optax.apply_updates(p, upd), opt_state, mech_state, scores, plain, (base, update)
              ), None

    zeros = jax.tree.map(jnp.zeros_like, p)
    scores0 = jnp.zeros((m,), jnp.float32)
    carry = (p, opt.init(p), mech.init(p), scores0, scores0, (zeros, zeros))
    (p, _, _, scores, plain, (base, update)), _ = jax.lax.scan(
        step, carry, jax.random.split(k_steps, steps))
    return p, scores, plain, base, update

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


def run_row(method: str, target_eps: float | None, cfg: AuditConfig, prepared,
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
  p, scores, plain, base, update = b.run(b.params, z, lr, key)
  jax.block_until_ready(scores)
  train_s = time.perf_counter() - start

  # Scoring alone, the same number of calls, on the last update.
  score_fn = jax.jit(audit.canary_scores)
  jax.block_until_ready(score_fn(update, b.canaries, base))
  start = time.perf_counter()
  acc = jnp.zeros((cfg.gradient_canaries,), jnp.float32)
  for _ in range(b.steps):
    acc = acc + score_fn(update, b.canaries, base) + score_fn(update, b.canaries, None)
  jax.block_until_ready(acc)
  score_s = time.perf_counter() - start

  logits = np.asarray(b.predict(p, jnp.asarray(x_test)))
  test_acc = float(np.mean(np.argmax(logits, -1) == y_test))
  bb_scores = audit.loss_scores(lambda xb: b.predict(p, xb), in_canaries)
  scores, plain = np.asarray(scores), np.asarray(plain)
  if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(plain))):
    raise FloatingPointError(f'{method} at eps={target_eps}: the run diverged (non-finite '
                             'canary scores); lower its learning rate.')
  inc = np.asarray(b.included)
  wb = audit.one_run_audit(scores, inc, delta=cfg.delta, confidence=cfg.confidence,
                           fpr=cfg.fpr)
  wb_fdp = audit.one_run_audit(scores, inc, delta=cfg.delta, confidence=cfg.confidence,
                               fpr=cfg.fpr, method='one_run_fdp')
  wb_plain = audit.one_run_audit(plain, inc, delta=cfg.delta, confidence=cfg.confidence,
                                 fpr=cfg.fpr)
  bb = audit.one_run_audit(bb_scores, in_included, delta=cfg.delta, confidence=cfg.confidence,
                           fpr=cfg.fpr)
  return dict(method=method, label=LABELS[method], target=target_eps, accounted=accounted,
              z=z, lr=lr, canary_norm=b.norm if method != 'bp' else 'sensitivities',
              steps=b.steps, q=b.q, n=len(prepared[0]), wb=wb, wb_fdp=wb_fdp,
              wb_plain=wb_plain, bb=bb,
              test_acc=test_acc, train_s=train_s, score_s=score_s, compile_s=b.compile_s,
              params=p)


def _fmt_eps(v):
  return '—' if v is None else f'{v:.2f}'


def format_table(rows: list[dict], cfg: AuditConfig) -> str:
  conf = int(round(cfg.confidence * 100))
  fpr = f'{cfg.fpr * 100:g} %'
  head = (f'| defence | target ε | accounted ε | σ | white-box ε_lb (one-run) | '
          f'white-box ε_lb (f-DP) | white-box ε_lb, data unknown | black-box ε_lb (one-run) | '
          f'WB TPR @ {fpr} FPR | '
          f'WB AUROC | BB TPR @ {fpr} FPR | BB AUROC | test acc. | scoring / training |')
  out = [f'All lower bounds at {conf} % confidence, delta = {cfg.delta:g}. White box: data '
         'known (the defence\'s noise-free update on the real batch subtracted before scoring) '
         'unless marked "data unknown" (no baseline, one-run bound).', '', head,
         '|' + '---|' * 14]
  for r in rows:
    out.append(
        f'| {r["label"]} | {_fmt_eps(r["target"])} | {_fmt_eps(r["accounted"])} | '
        f'{r["z"]:.3g} | {r["wb"].epsilon:.2f} | {r["wb_fdp"].epsilon:.2f} | '
        f'{r["wb_plain"].epsilon:.2f} | '
        f'{r["bb"].epsilon:.2f} | {r["wb"].tpr_at_fpr:.3f} | {r["wb"].auroc:.3f} | '
        f'{r["bb"].tpr_at_fpr:.3f} | {r["bb"].auroc:.3f} | {100 * r["test_acc"]:.1f} % | '
        f'{100 * r["score_s"] / r["train_s"]:.1f} % |')
  return '\n'.join(out)


# ----------------------------------------------------------------------------
# Power: how often the audit exceeds the claimed epsilon of a broken defence.


class PowerConfig(NamedTuple):
  claimed: float = 1.0
  delta: float = 1e-5
  confidence: float = 0.95
  factors: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
  # (a) a defence alone: full batch, ``steps`` releases, multi-run and one-run audits.
  steps: int = 4
  runs: tuple[int, ...] = (1000, 2000, 4000, 8000)
  seeds: int = 100
  one_run_canaries: tuple[int, ...] = (1000, 5000)
  one_run_seeds: int = 20
  # (b) the training-loop recipe: DP-SGD on digits, a 64-hidden-unit MLP.
  train_canaries: tuple[int, ...] = (1000, 4000)
  train_seeds: int = 20
  epochs: float = 10.0
  batch_size: int = 64
  hidden: int = 64
  clip_norm: float = 1.0
  lr: float = 0.5
  seed: int = 0
  parts: tuple[str, ...] = ('alone', 'training')


def _binom_ci(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
  """Two-sided Clopper-Pearson interval of a binomial proportion."""
  from scipy import stats
  a = 1 - conf
  lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
  hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
  return lo, hi


def _rate(hits: Sequence[bool]) -> str:
  k, n = int(np.sum(hits)), len(hits)
  lo, hi = _binom_ci(k, n)
  return f'{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]'


def _alone_defences(pc: PowerConfig, z: float, z2: float):
  """``name -> (factor -> (defence, per_example, params, kind, canary_norm), claim)``."""
  params = jnp.zeros(4)
  per_tensor = {'a': jnp.zeros(3), 'b': jnp.zeros(2)}
  sens = {'a': 1.0, 'b': 0.5}
  dpsgd_claim = privacy.dpsgd_mechanism(pc.clip_norm, z)

  def dpsgd(noise, clip):
    noise_tx = privacy.add_gaussian_noise(noise, pc.clip_norm, 1.0, key=jax.random.key(2))

    def update(rows, state, p=None):
      clipped, _ = privacy.clip_global_per_example(rows, clip)
      return noise_tx.update(jax.tree.map(lambda r: jnp.sum(r, 0), clipped), state, p)

    return optax.GradientTransformation(noise_tx.init, update)

  return {
      'DP-SGD, noise multiplier / k': (lambda k: (
          dpsgd(z / k, pc.clip_norm), True, params, 'dirac', None), dpsgd_claim),
      'DP-SGD, clip norm k C (sensitivity under-stated k x)': (lambda k: (
          dpsgd(z, k * pc.clip_norm), True, params, 'dirac', None), dpsgd_claim),
      'DP-SSGD, noise multiplier / k': (lambda k: (
          privacy.dp_unit_normalize(z / k, expected_batch_size=1.0, key=jax.random.key(1)),
          True, params, 'dirac', None), privacy.DPSSGDMechanism(z, 1)),
      'per-tensor noise (backprop clipping, 2 releases), sensitivities under-stated k x': (
          lambda k: (privacy.add_gaussian_noise(z2, sens, 1.0, key=jax.random.key(4)), False,
                     per_tensor, 'random', jax.tree.map(lambda v: k * v, sens)),
          privacy.BackpropClipMechanism(z2, sens, 2)),
  }


def power_alone(pc: PowerConfig) -> list[str]:
  """Table (a): the audit of a defence alone, multi-run and one-run, over seeds."""
  z = privacy.calibrate_noise_multiplier(pc.claimed, sampling_rate=1.0, steps=pc.steps,
                                         delta=pc.delta)
  z2 = privacy.calibrate_noise_multiplier(pc.claimed, sampling_rate=1.0, steps=pc.steps,
                                          delta=pc.delta, num_releases=2)
  rmax = max(pc.runs)
  head = ('| defence | k | ' + ' | '.join(f'multi-run GDP, {r} runs' for r in pc.runs) +
          ' | ' + ' | '.join(f'one-run, {m} canaries (Steinke / f-DP)'
                             for m in pc.one_run_canaries) + ' |')
  lines = [head, '|---|---:|' + '---|' * (len(pc.runs) + len(pc.one_run_canaries))]
  for name, (make, claim) in _alone_defences(pc, z, z2).items():
    claimed = privacy.compute_epsilon(claim, sampling_rate=1.0, steps=pc.steps,
                                      delta=pc.delta)
    for k in pc.factors:
      t0 = time.perf_counter()
      defence, per_example, params, kind, norm = make(k)
      # One pool of seeds x rmax runs; seed i audits runs [i rmax, i rmax + R).
      scores, inc = audit.defence_scores_multi_run(
          defence, params, key=jax.random.key(pc.seed + int(10 * k)),
          num_runs=pc.seeds * rmax, steps=pc.steps, sampling_rate=1.0, canary_norm=norm,
          per_example=per_example, kind=kind, claim=claim)
      cells = []
      for r in pc.runs:
        hits = []
        for i in range(pc.seeds):
          sl = slice(i * rmax, i * rmax + r)
          res = audit.multi_run_audit(scores[sl], inc[sl], delta=pc.delta,
                                      confidence=pc.confidence)
          hits.append(res.epsilon > claimed)
        cells.append(_rate(hits))
      for m in pc.one_run_canaries:
        if not name.startswith('DP-SGD'):
          cells.append('—')
          continue
        hit_s, hit_f = [], []
        for i in range(pc.one_run_seeds):
          sc, b = audit.defence_scores(defence, jnp.zeros(m), key=jax.random.key(1000 + i),
                                       num_canaries=m, steps=pc.steps, sampling_rate=1.0,
                                       per_example=True, claim=claim)
          for method, hits in (('one_run', hit_s), ('one_run_fdp', hit_f)):
            hits.append(audit.one_run_audit(sc, b, delta=pc.delta, confidence=pc.confidence,
                                            method=method).epsilon > claimed)
        cells.append(f'{_rate(hit_s)} / {_rate(hit_f)}')
      lines.append(f'| {name} | {k:g} | ' + ' | '.join(cells) + ' |')
      print(lines[-1], f'({time.perf_counter() - t0:.0f} s)', file=sys.stderr, flush=True)
  return lines


def _mlp_init(key, hidden: int):
  k1, k2 = jax.random.split(key)
  return {'w1': jax.random.normal(k1, (64, hidden)) * np.sqrt(2 / 64), 'b1': jnp.zeros(hidden),
          'w2': jax.random.normal(k2, (hidden, 10)) * np.sqrt(1 / hidden), 'b2': jnp.zeros(10)}


def _mlp_apply(p, x):
  return jax.nn.relu(x @ p['w1'] + p['b1']) @ p['w2'] + p['b2']


def power_training(pc: PowerConfig) -> tuple[list[str], dict]:
  """Table (b): the documented training-loop recipe on digits, DP-SGD, over seeds."""
  ds = data_lib.load_digits(seed=pc.seed)
  x = jnp.asarray(ds.x_train.reshape(len(ds.x_train), -1), jnp.float32)
  y = jnp.asarray(ds.y_train, jnp.int32)
  x_test = jnp.asarray(ds.x_test.reshape(len(ds.x_test), -1), jnp.float32)
  y_test = np.asarray(ds.y_test)
  n = len(x)
  q = pc.batch_size / n
  steps = max(1, round(pc.epochs / q))
  bsz = float(pc.batch_size)
  z = privacy.calibrate_noise_multiplier(pc.claimed, sampling_rate=q, steps=steps,
                                         delta=pc.delta)
  claimed = privacy.compute_epsilon(noise_multiplier=z, sampling_rate=q, steps=steps,
                                    delta=pc.delta)
  bmax = privacy.max_batch_size_for(n, q, steps=steps)
  params0 = _mlp_init(jax.random.key(pc.seed), pc.hidden)
  size = sum(v.size for v in jax.tree.leaves(params0))
  C = pc.clip_norm

  def loss(p, xi, yi):
    return optax.softmax_cross_entropy_with_integer_labels(_mlp_apply(p, xi[None]), yi[None])[0]

  def one_run(key, factor, m, kmax):
    """One DP-SGD training run with canaries; three score variants."""
    k_can, k_inc, k_noise, k_steps = jax.random.split(key, 4)
    canaries = audit.gradient_canaries(k_can, params0, m, kind='random', norm=C)
    included = audit.draw_inclusion(k_inc, m)
    noise = privacy.add_gaussian_noise(z / factor, C, bsz, key=k_noise)   # the bug: z / k
    opt = optax.sgd(pc.lr, momentum=0.9)

    def step(carry, k):
      p, opt_state, noise_state, plain, lin, llr, llr_est = carry
      k_b, k_c = jax.random.split(k)
      idx, mask = privacy.poisson_sample(k_b, n, q, bmax)
      rows = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, x[idx], y[idx])
      present = audit.sample_canaries(k_c, included, q)
      both, mask2 = audit.insert_canaries(rows, mask, canaries, present, kmax)
      clipped, _ = privacy.clip_global_per_example(both, C)

      def masked_sum(tree, keep):
        return jax.tree.map(lambda r: jnp.sum(jnp.where(
            keep.reshape((-1,) + (1,) * (r.ndim - 1)), r, 0), 0), tree)

      update, noise_state = noise.update(masked_sum(clipped, mask2), noise_state, p)
      # The data's noise-free part: the clipped real rows (the first bmax) over Bbar.
      base = jax.tree.map(lambda v: v / bsz,
                          masked_sum(jax.tree.map(lambda r: r[:bmax], clipped), mask))
      s_base = audit.canary_scores(update, canaries, base)
      plain = plain + audit.canary_scores(update, canaries)
      lin = lin + s_base
      # In units of one present canary (C^2 / Bbar): noise std = the claimed multiplier,
      # or estimated from the step's scores across the canaries.
      llr = llr + audit.subsampled_gaussian_llr(bsz * s_base, sampling_rate=q, noise_std=z)
      llr_est = llr_est + audit.subsampled_gaussian_llr(bsz * s_base, sampling_rate=q)
      upd, opt_state = opt.update(update, opt_state, p)
      return (optax.apply_updates(p, upd), opt_state, noise_state, plain, lin, llr, llr_est
              ), None

    zero = jnp.zeros((m,), jnp.float32)
    carry = (params0, opt.init(params0), noise.init(params0), zero, zero, zero, zero)
    (p, _, _, plain, lin, llr, llr_est), _ = jax.lax.scan(step, carry,
                                                          jax.random.split(k_steps, steps))
    acc = jnp.mean(jnp.argmax(_mlp_apply(p, x_test), -1) == jnp.asarray(y_test))
    return plain, lin, llr, llr_est, included, acc

  variants = ('no baseline', 'data known', 'data known + LLR at the claimed σ',
              'data known + LLR at the estimated σ')
  head = ('| k | canaries | ' + ' | '.join(f'{v} (Steinke / f-DP)' for v in variants) +
          ' | test acc. |')
  lines = [head, '|---:|---:|' + '---|' * (len(variants) + 1)]
  info = dict(n=n, q=q, steps=steps, z=z, claimed=claimed, size=size, bmax=bmax)
  for m in pc.train_canaries:
    kmax = privacy.max_batch_size_for(m, q, steps=steps)
    runner = jax.jit(lambda keys, f: jax.lax.map(lambda kk: one_run(kk, f, m, kmax), keys,
                                                 batch_size=4))
    for k in pc.factors:
      t0 = time.perf_counter()
      keys = jax.random.split(jax.random.key(pc.seed + 77 + int(10 * k) + m), pc.train_seeds)
      plain, lin, llr, llr_est, inc, acc = jax.device_get(runner(keys, jnp.float32(k)))
      cells = []
      for scores in (plain, lin, llr, llr_est):
        hit_s, hit_f = [], []
        for i in range(pc.train_seeds):
          for method, hits in (('one_run', hit_s), ('one_run_fdp', hit_f)):
            hits.append(audit.one_run_audit(np.asarray(scores[i]), np.asarray(inc[i]),
                                            delta=pc.delta, confidence=pc.confidence,
                                            method=method).epsilon > claimed)
        cells.append(f'{_rate(hit_s)} / {_rate(hit_f)}')
      acc = np.asarray(acc)
      lines.append(f'| {k:g} | {m} | ' + ' | '.join(cells) +
                   f' | {100 * acc.mean():.1f} ± {100 * acc.std():.1f} % |')
      print(lines[-1], f'({time.perf_counter() - t0:.0f} s)', file=sys.stderr, flush=True)
  return lines, info


def power_tables(pc: PowerConfig, argv: Sequence[str]) -> str:
  start, cpu0 = time.perf_counter(), time.process_time()
  load0 = os.getloadavg()[0]
  cmd = 'python benchmarks/audit.py ' + ' '.join(shlex.quote(a) for a in argv)
  out = ['### Audit power: how often a broken defence audits above its claim '
         '(`benchmarks/audit.py --power`)', '']
  body = []
  if 'alone' in pc.parts:
    t = time.perf_counter()
    lines = power_alone(pc)
    body += [
        f'#### (a) A defence alone: full batch (q = 1), {pc.steps} steps, claimed ε = '
        f'{pc.claimed:g} at δ = {pc.delta:g} ({time.perf_counter() - t:.0f} s)', '',
        f'Each cell: seeds in which the audit\'s {int(100 * pc.confidence)} % lower bound '
        'exceeded the claimed ε, the rate and its 95 % Clopper-Pearson interval. k = 1: the '
        'correct defence (a hit is a false alarm). Multi-run: '
        f'`audit.audit_defence_multi_run` statistics (one Dirac canary, at 100x the claimed '
        f'sensitivity for the per-example defences, GDP bound), {pc.seeds} seeds of each run '
        f'count (disjoint runs of one pool per row). One-run (DP-SGD rows only): '
        f'`audit.audit_defence`, Dirac canaries, {pc.one_run_seeds} seeds; Steinke et al.\'s '
        'bound / the f-DP bound.', ''] + lines + ['']
  if 'training' in pc.parts:
    t = time.perf_counter()
    lines, info = power_training(pc)
    body += [
        f'#### (b) The training-loop recipe: DP-SGD on digits ({time.perf_counter() - t:.0f} s)',
        '',
        f'scikit-learn digits ({info["n"]} training images), a 64-{pc.hidden}-10 ReLU MLP '
        f'({info["size"]} parameters), Poisson sampling at q = {pc.batch_size}/{info["n"]} '
        f'({info["steps"]} steps, {pc.epochs:g} epochs), per-example clipping C = '
        f'{pc.clip_norm:g}, SGD {pc.lr:g} with momentum 0.9; the noise multiplier σ = '
        f'{info["z"]:.3f} gives the claimed ε = {info["claimed"]:.2f} (δ = {pc.delta:g}, PLD); '
        'the broken runs use σ / k. Random gradient canaries at norm C, inserted at the '
        'data\'s Poisson rate as extra per-example rows, each included with probability 1/2; '
        f'{pc.train_seeds} seeds (independent training runs) per row, one-run bounds at '
        f'{int(100 * pc.confidence)} %. Scores: "no baseline" `sum_t <u_t, c_j>` (the recipe '
        'before this change); "data known" with `baseline` = the clipped real rows\' sum over '
        'the expected batch size (what the auditor, who knows the data, computes); "+ LLR" '
        'the same step scores through `audit.subsampled_gaussian_llr`, with the claimed σ or '
        'with σ estimated from each step\'s scores across the canaries (`noise_std=None`). '
        'Test accuracy: mean ± std over the seeds.', ''] + lines + ['']
  total, cpu = time.perf_counter() - start, time.process_time() - cpu0
  out += [f'`{cmd.strip()}`: {datetime.date.today()}, {total / 60:.1f} min wall, '
          f'{cpu / 60:.1f} min CPU, {os.cpu_count()} cores (shared; load average {load0:.1f} at '
          f'the start, {os.getloadavg()[0]:.1f} at the end), jax {jax.__version__}.', ''] + body
  return '\n'.join(out)


# Training images of the embedded MNIST subset (data_lib.load_mnist_subset), and
# the first ones ``--quick`` keeps: the input canaries are drawn from them.
TRAIN_IMAGES, QUICK_TRAIN_IMAGES = 4000, 400


def _parse_lrs(items: Sequence[str]) -> dict[str, float]:
  """``('dpssgd=1.0', ...)`` -> the learning rates, ``LEARNING_RATES`` otherwise."""
  lrs = dict(LEARNING_RATES)
  for item in items:
    name, _, value = item.partition('=')
    try:
      rate = float(value)
    except ValueError:
      rate = math.nan
    if name not in lrs or not (math.isfinite(rate) and rate > 0):
      raise ValueError(f'--lr takes METHOD=RATE with METHOD in {", ".join(sorted(lrs))} and '
                       f'RATE a finite number > 0; got {item!r}.')
    lrs[name] = rate
  return lrs


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  quick: bool = flag(False, 'smoke test: 400 images, 1 epoch, few canaries, eps 8 only, an MLP, '
                     'RDP accountant; flags given explicitly win')
  epochs: float = flag(AuditConfig().epochs, 'expected passes over the data per row',
                       check=cli.finite(positive=True))
  gradient_canaries: int = flag(AuditConfig().gradient_canaries,
                                'random-direction gradient canaries (white box)',
                                check=cli.at_least(2))
  input_canaries: int = flag(AuditConfig().input_canaries,
                             'mislabeled input canaries (black box)', check=cli.at_least(2))
  epsilons: tuple[float, ...] = flag(AuditConfig().epsilons, 'target epsilons of the DP rows',
                                     check=cli.finite(positive=True))
  defences: tuple[str, ...] = flag(HEURISTIC + DP, 'the rows', choices=HEURISTIC + DP)
  seed: int = flag(0, 'seed of the data, model and canaries', check=cli.at_least(0))
  lr: tuple[str, ...] = flag((), 'override a learning rate, e.g. --lr dpssgd=1.0',
                             metavar='METHOD=RATE')
  out: str | None = cli.output_flag('the Markdown table (default: a new file under '
                                    'runs/benchmarks/)')
  power: bool = flag(False, 'the power tables instead: a defence alone and the training-loop '
                     'recipe')
  power_parts: tuple[str, ...] = flag(PowerConfig().parts, 'the power tables to compute',
                                      choices=('alone', 'training'))
  power_seeds: int = flag(PowerConfig().seeds, 'seeds of each multi-run cell',
                          check=cli.at_least(1))
  power_one_run_seeds: int = flag(PowerConfig().one_run_seeds, 'seeds of each one-run cell',
                                  check=cli.at_least(1))
  power_train_seeds: int = flag(PowerConfig().train_seeds, 'training runs per row of table (b)',
                                check=cli.at_least(1))
  power_factors: tuple[float, ...] = flag(PowerConfig().factors, 'how much the broken '
                                          'defences cut the noise (1: the correct one)',
                                          check=cli.finite(positive=True))
  power_runs: tuple[int, ...] = flag(PowerConfig().runs, 'runs of the multi-run audits',
                                     check=cli.at_least(2))
  power_one_run_canaries: tuple[int, ...] = flag(PowerConfig().one_run_canaries,
                                                 'canaries of the one-run audits',
                                                 check=cli.at_least(2))
  power_train_canaries: tuple[int, ...] = flag(PowerConfig().train_canaries,
                                               'canaries of table (b)', check=cli.at_least(2))
  power_epochs: float = flag(PowerConfig().epochs, 'epochs of table (b)',
                             check=cli.finite(positive=True))
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    _parse_lrs(self.lr)
    images = QUICK_TRAIN_IMAGES if self.quick else TRAIN_IMAGES
    if not self.power and self.input_canaries > images:
      raise ValueError(f'--input-canaries must be <= the {images} training images'
                       f'{" of --quick" if self.quick else ""}; got {self.input_canaries}.')
    if importlib.util.find_spec('jax_privacy') is None:
      raise ValueError("benchmarks/audit.py needs the 'audit' extra (jax-privacy), also in "
                       "'bench': pip install -e '.[bench]'")


QUICK = dict(epochs=1.0, gradient_canaries=64, input_canaries=40, epsilons=(8.0,))


def main(argv: Sequence[str] | None = None) -> str:
  args = cli.parse(Config, argv, description=__doc__.split('\n')[0], quick=QUICK)
  if not args.verbose:
    # dp_accounting's RDP bracket search logs non-convergence per order; the PLD result stands.
    logging.getLogger('absl').setLevel(logging.ERROR)
  if args.power:
    pc = PowerConfig(seeds=args.power_seeds, one_run_seeds=args.power_one_run_seeds,
                     train_seeds=args.power_train_seeds, factors=tuple(args.power_factors),
                     runs=tuple(args.power_runs),
                     one_run_canaries=tuple(args.power_one_run_canaries),
                     train_canaries=tuple(args.power_train_canaries),
                     epochs=args.power_epochs, seed=args.seed, parts=tuple(args.power_parts))
    text = power_tables(pc, argv if argv is not None else sys.argv[1:]) + '\n'
    print(text)
    cli.write_output(args.out, text, name='audit_power')
    return text
  cfg = AuditConfig(epochs=args.epochs, gradient_canaries=args.gradient_canaries,
                    input_canaries=args.input_canaries, epsilons=tuple(args.epsilons),
                    seed=args.seed)
  lrs = _parse_lrs(args.lr)
  cfg = cfg._replace(lrs=lrs)
  if args.quick:
    # RDP accounting: the PLD calibration alone takes longer than the whole smoke run.
    # (epochs, canaries and epsilons: QUICK, where not given explicitly.)
    cfg = cfg._replace(batch_size=64, train_size=QUICK_TRAIN_IMAGES, model='mlp',
                       accountant='rdp', fast_compile=True)
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
  cli.write_output(args.out, text, name='audit')
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
