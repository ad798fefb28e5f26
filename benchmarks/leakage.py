# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Every gradient-leakage attack against every registered defence.

For each model (sigmoid LeNet of DLG, small ReLU CNN; untrained and briefly
trained), batch size and defence, the client's shared update of each batch is
computed with :func:`ssgd_optax.attacks.observe` and attacked; the
reconstructions are matched to the originals and scored (PSNR with peak 1 on
[0, 1], SSIM, label accuracy). Attacks: DLG (L-BFGS), adaptive DLG (the
attacker unit-normalises its dummy gradient with the defence's SSGD scope;
"global" for other defences), Inverting Gradients with the global and the
per-layer cosine, the analytic attack on an MLP's first layer, and R-GAP on a
bias-free CNN (batch 1 only).

Formal defences are calibrated to a training run, so that each row names the
(epsilon, delta) its noise would give: ``dp_ssgd_eps{e}`` is DP-SSGD
(per-example unit normalisation + Gaussian noise) and ``bpclip_eps{e}``
backprop clipping (clipped LeNet + per-tensor Gaussian noise), each with the
noise multiplier that a run of ``--dp-steps`` steps at Poisson rate
``--dp-sampling-rate`` (default: ``examples/dp_ssgd.py``'s 15 epochs at
batch 250 of 4000) spends to reach epsilon, delta = 1e-5. The attacker knows
the clipped architecture (it sent the model).

Data: half MNIST digits from the embedded subset (padded to 32x32, grey to
RGB), half 32x32 colour crops of scikit-image's sample images (labels i mod
10), or CIFAR-10 with ``--cifar10 DIR``.

Batch-size scaling (``--scaling``): the honest-server attacks (IG global and
per-layer cosine, adaptive DLG, labels recovered from the update) and the
malicious-server imprint attack (:func:`ssgd_optax.attacks.imprint_model`,
alone and through secure aggregation of several participants) at batch 1 to
256 against none, SSGD (every scope), selective sharing and DP-SSGD: the
fraction of inputs recovered above 20 dB and the mean PSNR, and a plot.
Paper scale (``--full``): 32x32, 4800 IG steps, 16 images, batch 1.

    python benchmarks/leakage.py --quick                  # seconds, smoke test
    python benchmarks/leakage.py --png-dir runs
    python benchmarks/leakage.py --scaling --size 16 --png-dir runs
    python benchmarks/leakage.py --full     # hours on 2 CPU cores, minutes on a GPU

The tables go to a new file under ``runs/benchmarks/`` unless ``--out`` names
one, the figures to ``--png-dir`` (the committed ones are under
``benchmarks/results/``: ``leakage.md``, ``leakage_batch.md``, ...).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import math
import os
import re
import shlex
import pathlib
import sys
import time
from typing import Callable

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
from ssgd_optax import attacks
from ssgd_examples import models as attack_models

SKIMAGE_SOURCES = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field',
                   'immunohistochemistry', 'colorwheel', 'cat')


@functools.lru_cache(maxsize=None)
def _rescaled_source(name: str, size: int) -> np.ndarray:
  # Rescaling a sample image is the slow part; hundreds of crops reuse it.
  import skimage.data
  import skimage.transform
  img = getattr(skimage.data, name)()[..., :3]
  return skimage.transform.rescale(img, 4 * size / min(img.shape[:2]), channel_axis=-1,
                                   anti_aliasing=True)


def colour_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
  """``n`` colour crops ``[n, size, size, 3]`` in [0, 1] from scikit-image samples."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    img = _rescaled_source(SKIMAGE_SOURCES[i % len(SKIMAGE_SOURCES)], size)
    r = rng.integers(0, img.shape[0] - size + 1)
    c = rng.integers(0, img.shape[1] - size + 1)
    out.append(img[r:r + size, c:c + size])
  return np.clip(np.stack(out), 0, 1).astype(np.float32)


def load_images(n: int, size: int, cifar10: str | None = None, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
  """``n`` images ``[n, size, size, 3]`` and int labels."""
  from ssgd_examples import data
  if cifar10:
    ds = data.load_dataset('cifar10', data_dir=cifar10)
    x = jax.image.resize(ds.x_test[:n], (n, size, size, 3), 'linear')
    return np.asarray(x), ds.y_test[:n].astype(np.int32)
  ds = data.load_dataset('mnist_subset', seed=seed)
  k = n // 2
  # The subset's test split is sorted by class: take a seeded random sample.
  idx = np.random.default_rng(seed).permutation(len(ds.x_test))[:k]
  digits = np.asarray(jax.image.resize(ds.x_test[idx], (k, size, size, 1), 'linear'))
  digits = np.repeat(np.clip(digits, 0, 1), 3, axis=-1)
  crops = colour_crops(n - k, size, seed)
  x = np.concatenate([digits, crops]).astype(np.float32)
  y = np.concatenate([ds.y_test[idx], np.arange(n - k) % 10]).astype(np.int32)
  return x, y


def make_model(name: str, size: int, key: int) -> nnx.Module:
  rngs = nnx.Rngs(key)
  if name == 'lenet':
    return attack_models.LeNetZhu((size, size, 3), 10, rngs=rngs)
  if name == 'relu_cnn':
    return attack_models.relu_cnn((size, size, 3), 10, rngs=rngs)
  raise ValueError(name)


def brief_training(apply_fn, params, steps: int, size: int, seed: int = 0):
  """``steps`` Adam steps (batch 64) on MNIST-subset training digits (RGB, padded)."""
  from ssgd_examples import data
  ds = data.load_dataset('mnist_subset', seed=seed)
  x = np.repeat(np.asarray(jax.image.resize(
      ds.x_train[:2048], (2048, size, size, 1), 'linear')).clip(0, 1), 3, -1)
  y = ds.y_train[:2048]
  opt = optax.adam(1e-3)
  state = opt.init(params)

  @jax.jit
  def step(p, s, xb, yb):
    g = attacks.batch_gradient(apply_fn, p, xb, yb)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(x), 64, replace=False)
    params, state = step(params, state, x[idx], y[idx])
  return params


def _adapt_scope(defence: str) -> str:
  return defence.split('ssgd_', 1)[1] if defence.startswith('ssgd_') else 'global'


def optimisation_attacks(steps_ig: int, steps_dlg: int, tv: float) -> dict[str, Callable]:
  return {
      'DLG': lambda f, obs, key, d: attacks.dlg(f, obs, key=key, steps=steps_dlg),
      'adaptive DLG': lambda f, obs, key, d: attacks.adaptive_dlg(
          f, obs, key=key, steps=steps_dlg, scope=_adapt_scope(d),
          labels=attacks.recover_labels(obs.update, 10, obs.num_examples)),
      'IG global': lambda f, obs, key, d: attacks.inverting_gradients(
          f, obs, key=key, steps=steps_ig, tv=tv),
      'IG per-layer': lambda f, obs, key, d: attacks.inverting_gradients(
          f, obs, key=key, steps=steps_ig, tv=tv, scope='per_layer'),
      # The cosine per tensor: the objective that per-leaf SSGD cannot change.
      'IG per-leaf': lambda f, obs, key, d: attacks.inverting_gradients(
          f, obs, key=key, steps=steps_ig, tv=tv, scope='per_leaf'),
  }


def _mlp(size: int, key: jax.Array):
  k = jax.random.split(key, 2)
  d = size * size * 3
  params = {'fc1': {'kernel': jax.random.normal(k[0], (d, 64)) / np.sqrt(d),
                    'bias': jnp.zeros(64)},
            'fc2': {'kernel': jax.random.normal(k[1], (64, 10)) / 8.0, 'bias': jnp.zeros(10)}}

  def apply_fn(p, x):
    h = jax.nn.relu(x.reshape(len(x), -1) @ p['fc1']['kernel'] + p['fc1']['bias'])
    return h @ p['fc2']['kernel'] + p['fc2']['bias']
  return apply_fn, params


class Row(dict):
  pass


def _summ(values: list[float]) -> str:
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if not len(v):
    return 'n/a'
  return f'{v.mean():.2f} ± {v.std():.2f}'


def _row(model: str, batch: int, defence: str, attack: str, r: dict) -> str:
  return (f'| {model} | {batch} | {defence} | {attack} | {_summ(r["psnr"])} | '
          f'{_summ(r["ssim"])} | {np.nanmean(r["acc"]):.2f} | {np.median(r["time"]):.2f} |')


_DEFENCES: dict = {}


def _defence(name, key, batch):
  if (name, batch) not in _DEFENCES:
    _DEFENCES[(name, batch)] = attacks.make_defence(name, key, batch)
  return _DEFENCES[(name, batch)]


def run_attack(name, attack, apply_fn, params, x, y, batch, defence, seed, bounds=(0., 1.)):
  psnrs, ssims, accs, times, recs = [], [], [], [], []
  dkey, key = jax.random.split(jax.random.key(seed))
  d = _defence(defence, dkey, batch)
  state = d.transform.init(params)
  for b in range(0, len(x), batch):
    xb, yb = jnp.asarray(x[b:b + batch]), jnp.asarray(y[b:b + batch])
    akey = jax.random.fold_in(key, b)
    # One defence object per setting, its state threaded through the batches:
    # fresh noise per batch, one compilation.
    obs, state = attacks.observe(apply_fn, params, xb, yb, d, bounds=bounds,
                                 defence_state=state, return_state=True)
    t = time.perf_counter()
    res = attack(apply_fn, obs, akey, defence)
    res.inputs.block_until_ready()
    times.append(time.perf_counter() - t)
    s = attacks.score(xb, res.inputs, true_labels=yb, rec_labels=res.labels, bounds=bounds)
    psnrs += s.psnr.tolist()
    ssims += s.ssim.tolist()
    accs.append(s.label_accuracy)
    perm = attacks.match_batch(xb, res.inputs)
    recs.append(np.asarray(res.inputs)[perm])
  return dict(psnr=psnrs, ssim=ssims, acc=accs, time=times, recs=np.concatenate(recs))


def register_dp_ssgd_defences(epsilons: list[float], q: float, steps: int,
                              accountant: str = 'pld',
                              given: dict[float, float] | None = None) -> list[str]:
  """Registers ``dp_ssgd_eps{e}`` (DP-SSGD at the sigma reaching ``e``); returns notes.

  ``given`` maps epsilons to noise multipliers calibrated before (PLD
  calibration takes minutes on a loaded machine)."""
  from ssgd_optax import privacy
  notes = []
  for e in epsilons:
    if given and e in given:
      sigma = given[e]
    else:
      sigma = privacy.calibrate_noise_multiplier(e, sampling_rate=q, steps=steps, delta=1e-5,
                                                 accountant=accountant)
    name = f'dp_ssgd_eps{e:g}'
    attacks.register_defence(name, lambda key, b, s=sigma: attacks.Defence(
        privacy.dp_unit_normalize(s, expected_batch_size=b, key=key), per_example=True),
                             overwrite=True)
    notes.append(f'{name}: sigma = {sigma:.3f} (one release per step'
                 f'{"; given with --dp-sigmas" if given and e in given else ""})')
  return notes


def backprop_clipping_rows(x, y, a, epsilons, batch_sizes, atts):
  """Attacks on the backprop-clipped LeNet (noise per tensor, sigma per epsilon).

  The client differentiates the mean cross-entropy through the clipped layers
  (each example's cotangent, scaled by ``1/B``, is clipped to ``C_out``, each
  layer input to ``C_in``), so each tensor's contribution of one example is
  bounded by its sensitivity ``Delta_l`` and the shared update is
  ``g + N(0, (sigma Delta_l)^2)`` per tensor. ``sigma = 0`` shows what
  clipping alone does.
  """
  from ssgd_optax import privacy
  model = privacy.clip_layers(make_model('lenet', a.size, a.seed),
                              input_bound=a.bp_input_bound, grad_bound=a.bp_grad_bound)
  f, params = attacks.as_functional(model)
  sens = nnx.to_pure_dict(privacy.sensitivities(model))
  releases = privacy.num_releases(model)
  sigmas = {} if a.quick else {'bpclip_noiseless': 0.0}
  notes = []
  for e in epsilons:
    sigmas[f'bpclip_eps{e:g}'] = privacy.calibrate_noise_multiplier(
        e, sampling_rate=a.dp_sampling_rate, steps=a.dp_steps, delta=1e-5,
        num_releases=releases, accountant=a.dp_accountant)
    notes.append(f'bpclip_eps{e:g}: sigma = {sigmas[f"bpclip_eps{e:g}"]:.3f} per tensor, '
                 f'{releases} releases per step, C_in = {a.bp_input_bound:g}, '
                 f'C_out = {a.bp_grad_bound:g}')
  lines = []
  for name, sigma in sigmas.items():
    attacks.register_defence(name, lambda key, b, s=sigma: attacks.Defence(
        privacy.add_gaussian_noise(s, sens, 1.0, key=key)), overwrite=True)
    for batch in batch_sizes:
      n = (a.images // batch) * batch
      for an, att in atts.items():
        r = run_attack(an, att, f, params, x[:n], y[:n], batch, name, a.seed)
        line = _row('lenet+bpclip untrained', batch, name, an, r)
        lines.append(line)
        print(line, flush=True)
  return lines, notes


def reference_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """Public data the malicious server sets its bins with: ``n`` images disjoint
  from :func:`load_images`' (MNIST-subset *training* digits, crops at other
  positions)."""
  from ssgd_examples import data
  ds = data.load_dataset('mnist_subset', seed=seed)
  k = n // 2
  idx = np.random.default_rng(seed + 1).permutation(len(ds.x_train))[:k]
  digits = np.asarray(jax.image.resize(ds.x_train[idx], (k, size, size, 1), 'linear'))
  digits = np.repeat(np.clip(digits, 0, 1), 3, axis=-1)
  return np.concatenate([digits, colour_crops(n - k, size, seed + 1000)]).astype(np.float32)


def run_imprint(model, x, y, batch, defence, seed, participants=1, bounds=(0., 1.)):
  """The imprint attack on every block of ``participants * batch`` inputs."""
  psnrs, accs, times = [], [], []
  dkey, _ = jax.random.split(jax.random.key(seed))
  d = _defence(defence, dkey, batch)
  state = d.transform.init(model.params)
  scope = _adapt_scope(defence) if defence.startswith('ssgd_') else None
  # The attacker knows the defence (as adaptive DLG does): per-leaf SSGD
  # needs the rescale, one factor per participant through secure aggregation.
  rescale = ('statistic' if participants == 1 else 'statistic_each') if scope == 'per_leaf' \
      else 'none'
  block = batch * participants
  for b in range(0, len(x) - block + 1, block):
    obs = []
    for q in range(participants):
      lo = b + q * batch
      o, state = attacks.observe(model.apply_fn, model.params, jnp.asarray(x[lo:lo + batch]),
                                 jnp.asarray(y[lo:lo + batch]), d, bounds=bounds,
                                 defence_state=state, return_state=True,
                                 threat_model='malicious_server')
      obs.append(o)
    t = time.perf_counter()
    o = obs[0] if participants == 1 else attacks.secure_aggregate(obs)
    res = attacks.imprint_attack(model.apply_fn, o, rescale=rescale)
    res.inputs.block_until_ready()
    times.append(time.perf_counter() - t)
    s = attacks.score(jnp.asarray(x[b:b + block]), res.inputs, true_labels=y[b:b + block],
                      rec_labels=res.labels, bounds=bounds)
    psnrs += s.psnr.tolist()
    accs.append(s.label_accuracy)
  return dict(psnr=psnrs, acc=accs, time=times)


def _srow(attack: str, defence: str, batch: int, r: dict, expected: str = '') -> str:
  p = np.asarray(r['psnr'], np.float64)
  return (f'| {attack} | {defence} | {batch} | {len(p)} | {np.mean(p > 20):.2f} | {expected} | '
          f'{np.mean(p):.1f} | {np.nanmean(r["acc"]):.2f} | {np.median(r["time"]):.2f} |')


def scaling_table(a, honest: dict[str, Callable]) -> tuple[list[str], list[dict]]:
  """Rows of the batch-size scaling table and the data of its plot."""
  batch_sizes = [int(b) for b in a.scaling_batch_sizes.split(',')]
  defences = [d for d in a.scaling_defences.split(',') if d]
  unknown = [d for d in defences if d not in attacks.available_defences()]
  if unknown:
    raise ValueError(f'unknown defences {unknown}; available: {attacks.available_defences()}')
  P = a.imprint_participants
  need = max(max(batch_sizes) * P, max(batch_sizes), a.scaling_images)
  x, y = load_images(need, a.size, a.cifar10, a.seed)
  f, params = attacks.as_functional(make_model('lenet', a.size, a.seed))
  bins = a.imprint_bins
  if max(batch_sizes) * P > bins:
    raise ValueError(f'--imprint-bins {bins} < the largest aggregate batch '
                     f'{max(batch_sizes) * P}; the imprint module would be over capacity.')
  imprinted = attacks.imprint_model(f, params, x.shape[1:], bins=bins,
                                    reference=reference_images(a.imprint_reference, a.size, a.seed),
                                    gain=a.imprint_gain, key=jax.random.key(a.seed))
  setting = (f'Setting: untrained sigmoid LeNet, {a.size}x{a.size}x3 images (half MNIST-subset '
             f'digits, half scikit-image crops), batch sizes {batch_sizes}.')
  if honest:
    setting += (f' Honest server: {", ".join(honest)} on max(B, {a.scaling_images}) images per '
                f'batch size (one batch from B = {a.scaling_images} on), IG {a.steps_ig} '
                f'signed-Adam steps (tv {a.tv}), adaptive DLG {a.steps_dlg} L-BFGS steps, '
                f'1 restart, labels recovered from the update (count strategy).')
  if not a.scaling_no_imprint:
    setting += (f' Malicious server: imprint module of {bins} bins (mean brightness, '
                f'thresholds at quantiles of {a.imprint_reference} public images, gain '
                f'{a.imprint_gain:g}) in front of the same LeNet, on max(B, {a.imprint_images}) '
                f'images; "SecAgg x{P}": the server sees only the sum of {P} participants\' '
                f'updates, each of batch B ({P}B inputs). Per-leaf SSGD rows of the imprint '
                f'attack use the statistic rescale. "expected": expected_recovered(bins, inputs) '
                f'/ inputs for uniform bins.')
  lines = [
      setting, '',
      '| attack | defence | B | inputs | recovered > 20 dB | expected | mean PSNR (dB) | '
      'label acc. | s / batch |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  print('\n'.join(lines), flush=True)
  data = []
  for batch in batch_sizes:
    for d in defences:
      for an, att in honest.items():
        n = max(batch, a.scaling_images)
        n -= n % batch
        r = run_attack(an, att, f, params, x[:n], y[:n], batch, d, a.seed)
        lines.append(_srow(an, d, batch, r))
        print(lines[-1], flush=True)
        data.append(dict(attack=an, defence=d, batch=batch, psnr=float(np.mean(r['psnr'])),
                         frac=float(np.mean(np.asarray(r['psnr']) > 20))))
      for q in (() if a.scaling_no_imprint else (1, P)):
        an = 'imprint' if q == 1 else f'imprint SecAgg x{q}'
        n = max(batch * q, a.imprint_images)
        n -= n % (batch * q)
        r = run_imprint(imprinted, x[:n], y[:n], batch, d, a.seed, participants=q)
        e = attacks.expected_recovered(bins, batch * q) / (batch * q)
        lines.append(_srow(an, d, batch, r, f'{e:.2f}'))
        print(lines[-1], flush=True)
        data.append(dict(attack=an, defence=d, batch=batch, psnr=float(np.mean(r['psnr'])),
                         frac=float(np.mean(np.asarray(r['psnr']) > 20))))
  return lines, data


def calibration_pools(kind: str, n: int, size: int, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(victims, reference, held_out)`` of one kind of data, three disjoint sets.

  ``digits``: MNIST-subset test digits (victims) and two disjoint sets of
  training digits (the server's public data for the thresholds, and a
  held-out public set for the prediction), resized to ``size`` and grey to
  RGB. ``crops``: scikit-image colour crops at positions drawn with three
  different seeds. ``n`` images each (at most 1,000 digit victims).
  """
  if kind == 'crops':
    return (colour_crops(n, size, seed), colour_crops(n, size, seed + 1000),
            colour_crops(n, size, seed + 2000))
  if kind != 'digits':
    raise ValueError(f'kind must be digits or crops; got {kind!r}.')
  from ssgd_examples import data
  ds = data.load_dataset('mnist_subset', seed=seed)

  def rgb(x):
    d = np.asarray(jax.image.resize(x, (len(x), size, size, 1), 'linear'))
    return np.repeat(np.clip(d, 0, 1), 3, axis=-1).astype(np.float32)

  victims = rgb(ds.x_test[np.random.default_rng(seed).permutation(len(ds.x_test))[:n]])
  train = np.random.default_rng(seed + 1).permutation(len(ds.x_train))
  return victims, rgb(ds.x_train[train[:n]]), rgb(ds.x_train[train[n:2 * n]])


def _mse_matched_psnr(true: np.ndarray, rec: np.ndarray) -> np.ndarray:
  """PSNR after the old matching (minimum total MSE), to count what it lost."""
  from scipy.optimize import linear_sum_assignment
  t = true.reshape(len(true), -1).astype(np.float64)
  r = rec.reshape(len(rec), -1).astype(np.float64)
  cost = ((t[:, None] - r[None]) ** 2).mean(-1)
  rows, cols = linear_sum_assignment(cost)
  return np.minimum(-10 * np.log10(np.maximum(cost[rows, cols], 1e-30)), 100.0)


def imprint_calibration(a) -> list[str]:
  """Measured against predicted: inputs the imprint attack isolates and recovers.

  For each kind of data and batch size: ``--calibration-batches`` random
  batches of victims (no defence); the fraction alone in its bin (from the
  victims' statistics), recovered as an exact copy (> 60 dB) and above 20 dB
  (PSNR-matched :func:`ssgd_optax.attacks.score`; and > 60 dB under the old
  minimum-MSE matching), against ``expected_recovered`` for uniform bins and
  from the bins of a held-out public set. Then per-leaf SSGD with
  ``rescale="statistic"`` for the ``mean`` and ``random`` statistics: the
  fraction of trials in which fewer than half of the isolated inputs came back
  above 20 dB (failed), over the same batches.
  """
  size, bins = a.size, a.imprint_bins
  sizes = [int(b) for b in a.calibration_batch_sizes.split(',')]
  f, params = attacks.as_functional(make_model('lenet', size, a.seed))
  lines = [f'Imprint calibration: untrained sigmoid LeNet, {size}x{size}x3, {bins} bins '
           f'(thresholds at quantiles of {a.imprint_reference} public images of the same kind, '
           f'disjoint from the victims), {a.calibration_batches} random victim batches per row '
           f'(drawn without replacement from {a.calibration_pool} victims), no defence. "held-out '
           f'prediction": expected_recovered(..., reference_bins=imprint_bins(model, '
           f'{a.calibration_pool} other public images)). Mean over the batches; ± one standard '
           'error.', '',
           '| data | B | alone (measured) | exact > 60 dB | > 20 dB | > 60 dB, MSE matching | '
           'uniform prediction | held-out prediction |',
           '|---|---:|---:|---:|---:|---:|---:|---:|']
  rescale_lines = ['', f'Per-leaf SSGD, rescale="statistic": trials (batches of {sizes[0]}) in '
                   'which fewer than half of the isolated inputs were recovered above 20 dB, and '
                   'the median PSNR of the isolated inputs.', '',
                   '| data | statistic | failed trials | median PSNR of isolated (dB) |',
                   '|---|---|---:|---:|']
  print('\n'.join(lines), flush=True)
  rng = np.random.default_rng(a.seed)
  leaf = attacks.make_defence('ssgd_per_leaf', jax.random.key(a.seed), 1)
  none = attacks.make_defence('none', jax.random.key(a.seed), 1)
  for kind in a.calibration_data.split(','):
    victims, ref, held = calibration_pools(kind, a.calibration_pool, size, a.seed)
    model = attacks.imprint_model(f, params, victims.shape[1:], bins=bins,
                                  reference=ref[:a.imprint_reference], gain=a.imprint_gain,
                                  key=jax.random.key(a.seed))
    held_bins = attacks.imprint_bins(model, held)
    for batch in sizes:
      rows = {k: [] for k in ('alone', 'exact', 'p20', 'mse60')}
      for _ in range(a.calibration_batches):
        idx = rng.choice(len(victims), batch, replace=False)
        x = victims[idx]
        y = np.arange(batch, dtype=np.int32) % 10
        b = attacks.imprint_bins(model, x)
        counts = np.bincount(b + 1, minlength=bins + 1)
        rows['alone'].append(np.mean(counts[b + 1] == 1))
        obs = attacks.observe(model.apply_fn, model.params, jnp.asarray(x), jnp.asarray(y), none,
                              threat_model='malicious_server')
        res = attacks.imprint_attack(model.apply_fn, obs)
        p = attacks.score(jnp.asarray(x), res.inputs).psnr
        rows['exact'].append(np.mean(p > 60))
        rows['p20'].append(np.mean(p > 20))
        rows['mse60'].append(np.mean(_mse_matched_psnr(x, np.asarray(res.inputs)) > 60))

      def cell(v):
        v = np.asarray(v)
        return f'{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(len(v)):.3f}'

      uni = attacks.expected_recovered(bins, batch) / batch
      cal = attacks.expected_recovered(bins, batch, reference_bins=held_bins) / batch
      lines.append(f'| {kind} | {batch} | {cell(rows["alone"])} | {cell(rows["exact"])} | '
                   f'{cell(rows["p20"])} | {cell(rows["mse60"])} | {uni:.3f} | {cal:.3f} |')
      print(lines[-1], flush=True)
    for stat in ('mean', 'random'):
      m = attacks.imprint_model(f, params, victims.shape[1:], bins=bins,
                                reference=ref[:a.imprint_reference], gain=a.imprint_gain,
                                statistic=stat, key=jax.random.key(a.seed + 17))
      failed, med = [], []
      for _ in range(a.calibration_batches):
        idx = rng.choice(len(victims), sizes[0], replace=False)
        x = victims[idx]
        y = np.arange(sizes[0], dtype=np.int32) % 10
        b = attacks.imprint_bins(m, x)
        alone = np.bincount(b + 1, minlength=bins + 1)[b + 1] == 1
        obs = attacks.observe(m.apply_fn, m.params, jnp.asarray(x), jnp.asarray(y), leaf,
                              threat_model='malicious_server')
        res = attacks.imprint_attack(m.apply_fn, obs, rescale='statistic')
        p = attacks.score(jnp.asarray(x), res.inputs).psnr[alone]
        failed.append(np.mean(p > 20) < 0.5)
        med.append(np.median(p))
      rescale_lines.append(f'| {kind} | {stat} | {int(np.sum(failed))} / {len(failed)} | '
                           f'{np.median(med):.1f} |')
      print(rescale_lines[-1], flush=True)
  return lines + rescale_lines


def save_scaling_plot(path: str, data: list[dict], title: str) -> None:
  """Mean PSNR and fraction above 20 dB against batch size: one panel per attack,
  one line per defence."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  atts = sorted(dict.fromkeys(r['attack'] for r in data),
                key=lambda n: ('imprint' in n, 'SecAgg' in n))
  defs = list(dict.fromkeys(r['defence'] for r in data))
  colours = dict(zip(defs, plt.get_cmap('tab10').colors))
  styles = dict(zip(defs, ['-', '--', '-.', ':', '-', '--', '-.', ':', '-', '--']))
  fig, axes = plt.subplots(2, len(atts), figsize=(3.1 * len(atts), 5.6), sharex=True,
                           squeeze=False)
  for j, an in enumerate(atts):
    for d in defs:
      rows = sorted((r for r in data if r['attack'] == an and r['defence'] == d),
                    key=lambda r: r['batch'])
      if not rows:
        continue
      b = [r['batch'] for r in rows]
      kw = dict(color=colours[d], linestyle=styles[d], marker='o', markersize=3, label=d)
      axes[0, j].plot(b, [r['psnr'] for r in rows], **kw)
      axes[1, j].plot(b, [r['frac'] for r in rows], **kw)
    axes[0, j].set_title(an, fontsize=9)
    axes[0, j].axhline(20, color='grey', lw=0.6, ls=':')
    # Honest-server attacks stay below ~50 dB; exact read-outs reach 100.
    axes[0, j].set_ylim(0, 105 if 'imprint' in an else 50)
    axes[1, j].set_ylim(-0.03, 1.03)
    axes[1, j].set_xscale('log', base=2)
    axes[1, j].set_xlabel('batch size B')
  axes[0, 0].set_ylabel('mean PSNR (dB)')
  axes[1, 0].set_ylabel('fraction > 20 dB')
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='lower center', ncol=min(len(defs), 3), fontsize=8,
             frameon=False)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout(rect=(0, 0.09, 1, 0.97))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def merge_scaling(paths: list[str], out: str | None, png_dir: str | None) -> str:
  """Joins scaling tables run in parallel (one per group of defences) into one
  table and one plot."""
  heads, rows, tails, seen, settings = [], [], [], set(), []
  for path in paths:
    with open(path) as fh:
      text = fh.read()
    for line in text.splitlines():
      if (line.startswith('| ') and not line.startswith('| attack |')
          and len(line.strip('|').split('|')) == 9):
        key = tuple(c.strip() for c in line.strip('|').split('|')[:3])
        if key not in seen:  # the first table that has a row keeps it
          seen.add(key)
          rows.append(line)
      elif line.startswith(('Started', 'Total time')):
        (heads if line.startswith('Started') else tails).append(f'{os.path.basename(path)}: {line}')
      elif line.startswith('python benchmarks/leakage.py'):
        heads.append(f'{os.path.basename(path)}: `{line}`')
      elif line.startswith('Setting:'):
        # Imprint-only tables of older runs carry an empty honest-server clause.
        line = re.sub(r' Honest server: +on .*?\(count strategy\)\.', '', line)
        if '| imprint' not in text:  # honest-only tables of older runs describe the module too
          line = re.sub(r' Malicious server: .*', '', line)
        if line not in settings:
          settings.append(line)
  cells = [[c.strip() for c in r.strip('|').split('|')] for r in rows]
  order = {a: i for i, a in enumerate(dict.fromkeys(c[0] for c in cells))}
  dorder = {d: i for i, d in enumerate(dict.fromkeys(c[1] for c in cells))}
  idx = sorted(range(len(cells)), key=lambda i: (int(cells[i][2]), dorder[cells[i][1]],
                                                 order[cells[i][0]]))
  table = ['| attack | defence | B | inputs | recovered > 20 dB | expected | mean PSNR (dB) | '
           'label acc. | s / batch |', '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  table += [rows[i] for i in idx]
  # Tables run with different budgets (imprint, honest server) keep each Setting.
  text = '\n'.join(settings + [''] + [f'* {h}' for h in heads + tails] + [''] + table)
  if out:
    with open(out, 'w') as fh:
      fh.write(text + '\n')
  if png_dir:
    data = [dict(attack=cells[i][0], defence=cells[i][1], batch=int(cells[i][2]),
                 frac=float(cells[i][4]), psnr=float(cells[i][6])) for i in idx]
    budget = [m.groups() for m in (re.search(r'IG (\d+) signed-Adam steps \(tv ([^)]+)\), '
                                             r'adaptive DLG (\d+)', h) for h in settings) if m]
    title = 'Leakage vs batch size (16x16x3, untrained sigmoid LeNet'
    if budget:
      title += '; honest server: IG {} steps (tv {}), DLG {} steps'.format(*budget[0])
    save_scaling_plot(os.path.join(png_dir, 'leakage_batch.png'), data, title + ')')
  return text


def _load() -> str:
  try:
    return 'load average {:.1f} / {:.1f} / {:.1f} (1/5/15 min)'.format(*os.getloadavg())
  except OSError:  # pragma: no cover
    return 'load average unavailable'


def save_grid(path: str, originals: np.ndarray, rows: dict[str, np.ndarray], n: int = 8) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = ['original'] + list(rows)
  fig, axes = plt.subplots(len(names), n, figsize=(n * 0.9, len(names) * 0.95))
  axes = np.atleast_2d(axes)
  for r, name in enumerate(names):
    imgs = originals if name == 'original' else rows[name]
    for c in range(n):
      ax = axes[r, c]
      ax.imshow(np.clip(imgs[c], 0, 1))
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(name, rotation=0, ha='right', va='center', fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


# ------------------------------------------------------------------ flags

ATTACKS = ('DLG', 'adaptive DLG', 'IG global', 'IG per-layer', 'IG per-leaf')
MODELS, MODEL_STATES = ('lenet', 'relu_cnn'), ('untrained', 'trained')
CALIBRATION_DATA = ('digits', 'crops')
_DP_NAME = re.compile(r'(?:dp_ssgd|bpclip)_eps.+')


def _items(text: str) -> list[str]:
  return [t for t in text.split(',') if t]


def _int_list(text: str) -> str | None:
  """A check: a comma list of ints >= 1 (``'1,4'``)."""
  try:
    values = [int(t) for t in text.split(',')]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    return 'must be a comma list of ints >= 1 (e.g. 1,4)'
  return None


def _float_list(text: str) -> str | None:
  """A check: a comma list of finite numbers > 0, possibly empty (``'1,3,8'`` or ``''``)."""
  try:
    values = [float(t) for t in _items(text)]
  except ValueError:
    values = [math.nan]
  if not all(math.isfinite(v) and v > 0 for v in values):
    return "must be a comma list of finite numbers > 0 (e.g. 1,3,8; '' for none)"
  return None


def _sigmas(text: str) -> str | None:
  """A check: ``EPS=SIGMA`` pairs of finite numbers > 0 (``'8=0.908'``), possibly none."""
  for item in _items(text):
    e, _, z = item.partition('=')
    if _float_list(e) or _float_list(z) or not e or not z:
      return "must be a comma list of EPSILON=SIGMA, each a finite number > 0 (e.g. 8=0.908)"
  return None


def _one_of(known: tuple[str, ...], *, allow_all: bool = False, allow_empty: bool = False):
  """A check: a comma list of names in ``known`` (or ``'all'``)."""
  shown = ', '.join(known) + (" or 'all'" if allow_all else '')

  def check(text: str) -> str | None:
    if allow_all and text == 'all':
      return None
    names = _items(text)
    unknown = [n for n in names if n not in known]
    if unknown or not (names or allow_empty):
      return (f'must be a comma list of {shown}'
              + (f' ({", ".join(map(repr, unknown))} unknown)' if unknown else ''))
    return None
  return check


def _models(text: str) -> str | None:
  """A check: ``MODEL:STATE`` pairs (``'lenet:untrained,relu_cnn:trained'``)."""
  for item in text.split(','):
    name, _, state = item.partition(':')
    if name not in MODELS or state not in MODEL_STATES:
      return (f'must be a comma list of MODEL:STATE with MODEL in {", ".join(MODELS)} and STATE '
              f'in {", ".join(MODEL_STATES)} ({item!r} is not)')
  return None


def _existing_files(text: str) -> str | None:
  """A check: a comma list of existing files."""
  missing = [p for p in text.split(',') if not os.path.isfile(p)]
  if missing:
    return f'must be a comma list of existing files ({", ".join(map(repr, missing))} not found)'
  return None


def _figure_dir(path: str) -> str | None:
  """A check: an existing folder, or a new one in an existing writable folder (made later)."""
  if os.path.isdir(path):
    return None if os.access(path, os.W_OK) else 'must be a writable folder'
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.exists(path) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    return 'must be a folder, existing or new in an existing writable folder'
  return None


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work). Lists are comma-separated."""
  quick: bool = flag(False, 'tiny smoke-test setting (seconds); flags given explicitly win')
  images: int = flag(32, 'images attacked per setting', check=cli.at_least(1))
  size: int = flag(32, 'image side (pixels; 8 is the smallest tried)', check=cli.at_least(8))
  batch_sizes: str = flag('1,4', 'batch sizes of the first model', check=_int_list)
  models: str = flag('lenet:untrained,lenet:trained,relu_cnn:untrained,relu_cnn:trained',
                     'model:state pairs; the first gets the full defence x attack matrix',
                     check=_models)
  defences: str = flag('all', "comma list or 'all' (the registry)")
  secondary_batch_sizes: str = flag('1', 'batch sizes of the models after the first',
                                    check=_int_list)
  secondary_defences: str = flag('none,ssgd_per_layer', 'defences for the models after the first')
  secondary_attacks: str = flag('IG global', 'attacks on the models after the first',
                                check=_one_of(ATTACKS, allow_empty=True))
  layer_defences: str = flag('none,ssgd_global,ssgd_per_leaf,ssgd_per_layer',
                             "defences IG per-layer runs against ('all' for every one)")
  leaf_defences: str = flag('ssgd_per_leaf', "defences IG per-leaf runs against ('all' for every "
                            'one)')
  no_closed_form: bool = flag(False, 'skip analytic and R-GAP')
  dlg_defences: str = flag('none,ssgd_global,ssgd_per_layer',
                           "defences DLG and adaptive DLG run against ('all' for every one)")
  attacks: str = flag('all', "optimisation attacks for the first model ('all' or a comma list)",
                      check=_one_of(ATTACKS, allow_all=True, allow_empty=True))
  rgap_defences: str = flag('none,ssgd_global,ssgd_per_leaf,noise_1e-2',
                            'defences R-GAP runs against')
  steps_ig: int = flag(200, 'Inverting Gradients steps', check=cli.at_least(1))
  steps_dlg: int = flag(100, 'DLG L-BFGS steps', check=cli.at_least(1))
  tv: float = flag(1e-2, "Inverting Gradients' total-variation weight",
                   check=cli.finite(nonnegative=True))
  train_steps: int = flag(100, "Adam steps of the 'trained' models", check=cli.at_least(1))
  rgap_images: int = flag(4, 'images R-GAP attacks', check=cli.at_least(1))
  cifar10: str | None = flag(None, 'CIFAR-10 folder (python version) instead of the embedded '
                             'digits and crops', type=str, check=cli.existing_dir, metavar='DIR')
  dp_epsilons: str = flag('1,3,8', "epsilons of the dp_ssgd_eps* and bpclip_eps* rows ('' for "
                          'none)', check=_float_list)
  dp_sampling_rate: float = flag(250 / 4000, 'Poisson rate of the calibrated DP run',
                                 check=cli.in_range(0, 1, lo_open=True))
  dp_steps: int = flag(240, 'steps of the calibrated DP run', check=cli.at_least(1))
  dp_accountant: str = flag('pld', 'accountant of the calibration', choices=('pld', 'rdp'))
  dp_sigmas: str = flag('', "e.g. '8=0.908': noise multipliers of dp_ssgd_eps{e} calibrated "
                        'before (skips the calibration)', check=_sigmas)
  dp_attacks: str = flag('IG global,IG per-layer,adaptive DLG',
                         'optimisation attacks run against the DP defences',
                         check=_one_of(ATTACKS, allow_empty=True))
  bp_input_bound: float = flag(10.0, "backprop clipping's input bound",
                               check=cli.finite(positive=True))
  bp_grad_bound: float = flag(0.1, "backprop clipping's gradient bound",
                              check=cli.finite(positive=True))
  scaling: bool = flag(False, 'only the batch-size scaling table (honest and malicious server) '
                       'and its plot')
  scaling_batch_sizes: str = flag('1,4,16,64,256', 'batch sizes of --scaling', check=_int_list)
  scaling_defences: str = flag(
      'none,ssgd_global,ssgd_per_leaf,ssgd_per_layer,dssgd_10,dp_ssgd_eps8',
      'defences of --scaling')
  scaling_attacks: str = flag('IG global,IG per-layer,adaptive DLG',
                              "honest-server attacks of --scaling ('' for none)",
                              check=_one_of(ATTACKS, allow_empty=True))
  scaling_images: int = flag(8, 'honest-server attacks: images per batch size (at least one '
                             'batch)', check=cli.at_least(1))
  imprint_images: int = flag(64, 'imprint attack: images per batch size (at least one batch)',
                             check=cli.at_least(1))
  scaling_no_imprint: bool = flag(False, 'honest-server rows only (to run the imprint rows in '
                                  'another process)')
  imprint_bins: int = flag(1024, "the imprint module's bins", check=cli.at_least(1))
  imprint_gain: float = flag(1.0, "the imprint module's gain", check=cli.finite(positive=True))
  imprint_reference: int = flag(512, 'public images the server sets its thresholds with',
                                check=cli.at_least(1))
  imprint_participants: int = flag(4, 'participants summed by secure aggregation',
                                   check=cli.at_least(1))
  imprint_calibration: bool = flag(False, 'only the imprint calibration table (measured vs '
                                   'expected_recovered, and the per-leaf statistic rescale) on '
                                   'digits and photo crops')
  calibration_data: str = flag('digits,crops', 'data of --imprint-calibration',
                               check=_one_of(CALIBRATION_DATA))
  calibration_batch_sizes: str = flag('16,64,256', 'batch sizes of --imprint-calibration',
                                      check=_int_list)
  calibration_batches: int = flag(20, 'random victim batches per row', check=cli.at_least(1))
  calibration_pool: int = flag(1000, 'victims, public reference and held-out images per kind of '
                               'data', check=cli.at_least(1))
  scaling_merge: str | None = flag(None, 'comma list of scaling tables (--scaling --out) to join '
                                   'into --out and a plot', type=str, check=_existing_files,
                                   metavar='FILES')
  full: bool = flag(False, 'paper scale: 32x32, --full-steps IG steps, --full-images images, '
                    'batch 1 (flags given explicitly win)')
  full_steps: int = flag(4800, 'IG steps of --full', check=cli.at_least(1))
  full_images: int = flag(16, 'images of --full', check=cli.at_least(1))
  seed: int = flag(0, 'seed of the images, models and attacks', check=cli.at_least(0))
  out: str | None = cli.output_flag('the Markdown table (default: a new file under '
                                    'runs/benchmarks/)')
  png_dir: str | None = flag(None, 'folder of the figures (leakage_grid.png, leakage_batch.png; '
                             'made if new); none without it', type=str, check=_figure_dir,
                             metavar='DIR')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    modes = [f for f in ('scaling_merge', 'imprint_calibration', 'scaling', 'full')
             if getattr(self, f)]
    if len(modes) > 1:
      raise ValueError(f'{" and ".join(map(cli.flag_name, modes))} are different runs; give '
                       'one.')
    if self.cifar10 is not None:
      try:
        data_lib.check_files('cifar10', self.cifar10)
      except data_lib.DatasetError as e:
        raise ValueError(f'--cifar10: {e}') from None
    epsilons = {float(e) for e in _items(self.dp_epsilons)}
    given = {float(e) for e in (kv.split('=')[0] for kv in _items(self.dp_sigmas))}
    if given - epsilons:
      raise ValueError(f'--dp-sigmas names epsilons not in --dp-epsilons {self.dp_epsilons!r}: '
                       f'{", ".join(f"{e:g}" for e in sorted(given - epsilons))}.')
    # The registry, and the DP rows this run registers (dp_ssgd_eps{e}).
    known = tuple(attacks.available_defences()) + tuple(f'dp_ssgd_eps{e:g}'
                                                        for e in sorted(epsilons))
    runs = (('scaling_defences',) if self.scaling else
            () if self.scaling_merge or self.imprint_calibration else ('defences',))
    for name in runs:
      problem = _one_of(known, allow_all=name == 'defences')(getattr(self, name))
      if problem:
        raise ValueError(f'{cli.flag_name(name)} {problem} (a dp_ssgd_eps<e> row needs e in '
                         '--dp-epsilons).')
    # Filters: names of this run's rows, or of DP rows at other epsilons (never run).
    for name in ('secondary_defences', 'layer_defences', 'leaf_defences', 'dlg_defences',
                 'rgap_defences'):
      text = getattr(self, name)
      unknown = [d for d in _items(text) if d not in known and not _DP_NAME.fullmatch(d)]
      if text != 'all' and unknown:
        raise ValueError(f'{cli.flag_name(name)}: unknown defence(s) {", ".join(unknown)} '
                         f'(known: {", ".join(known)}, or \'all\').')
    if not (self.scaling or self.scaling_merge or self.imprint_calibration):
      too_big = [b for b in map(int, self.batch_sizes.split(',')) if b > self.images]
      if too_big:
        raise ValueError(f'--batch-sizes {",".join(map(str, too_big))} exceed --images '
                         f'{self.images}: a batch size needs at least one batch of images.')
    if self.imprint_calibration:
      too_big = [b for b in map(int, self.calibration_batch_sizes.split(','))
                 if b > self.calibration_pool]
      if too_big or self.imprint_reference > self.calibration_pool:
        raise ValueError(f'--calibration-batch-sizes and --imprint-reference must be <= '
                         f'--calibration-pool {self.calibration_pool}.')


QUICK = dict(images=2, size=8, steps_ig=3, steps_dlg=2, train_steps=2, rgap_images=1,
             models='lenet:untrained,relu_cnn:trained', batch_sizes='1', attacks='IG global',
             defences='none', rgap_defences='none', secondary_defences='none',
             secondary_attacks='IG global', secondary_batch_sizes='1', dp_epsilons='8',
             dp_attacks='IG global', dp_accountant='rdp', scaling_batch_sizes='1,2',
             scaling_images=2, imprint_images=4, imprint_bins=16, imprint_reference=16,
             imprint_participants=2, scaling_defences='ssgd_per_leaf,dp_ssgd_eps8',
             scaling_attacks='IG global')


def _full(config: Config, explicit: set[str]) -> Config:
  """``--full``'s settings for the flags not given explicitly."""
  if not config.full:
    return config
  # Inverting Gradients' Table 1 setting (untrained LeNet, batch 1, 4800
  # signed-Adam steps, TV 1e-2) with every scope-matched cosine.
  full = dict(size=32, steps_ig=config.full_steps, images=config.full_images, batch_sizes='1',
              models='lenet:untrained', attacks='IG global,IG per-layer,IG per-leaf',
              no_closed_form=True,
              defences='none,ssgd_global,ssgd_per_layer,ssgd_per_leaf,dp_ssgd_eps8',
              layer_defences='none,ssgd_global,ssgd_per_layer,dp_ssgd_eps8',
              leaf_defences='ssgd_per_leaf', dp_attacks='IG global,IG per-layer')
  config = cli.apply_quick(config, full, explicit)
  # The DP rows (DP-SSGD and backprop clipping at epsilon 8) only with a DP defence.
  return cli.apply_quick(config, dict(dp_epsilons='8' if 'dp_' in config.defences else ''),
                         explicit)


def _with_command(text: str, argv: list[str] | None) -> str:
  return ('```\npython benchmarks/leakage.py '
          + shlex.join(argv if argv is not None else sys.argv[1:]) + '\n```\n\n' + text)


def main(argv: list[str] | None = None) -> str:
  a = cli.parse(Config, argv, description=__doc__, prepare=_full, quick=QUICK)
  if a.png_dir:
    os.makedirs(a.png_dir, exist_ok=True)
  if a.scaling_merge:
    text = merge_scaling(a.scaling_merge.split(','), None, a.png_dir)
    cli.write_output(a.out, text, name='leakage_batch')
    return text
  if not a.verbose:
    # dp_accounting's RDP bracket search warns on every non-converging order.
    logging.getLogger('absl').setLevel(logging.ERROR)
  batch_sizes = [int(b) for b in a.batch_sizes.split(',')]
  epsilons = [float(e) for e in a.dp_epsilons.split(',') if e.strip()]
  given = {float(k): float(v) for k, v in (kv.split('=') for kv in a.dp_sigmas.split(',') if kv)}
  dp_rows = register_dp_ssgd_defences(epsilons, a.dp_sampling_rate, a.dp_steps,
                                      a.dp_accountant, given)
  defences = list(attacks.available_defences()) if a.defences == 'all' else a.defences.split(',')
  dp_attacks = a.dp_attacks.split(',')
  all_attacks = optimisation_attacks(a.steps_ig, a.steps_dlg, a.tv)
  if a.imprint_calibration:
    t_start, load0 = time.time(), _load()
    lines = imprint_calibration(a)
    text = '\n'.join([f'Started {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, '
                      f'{load0} on {os.cpu_count()} CPU cores (shared machine).', ''] + lines +
                     ['', f'Total time {time.time() - t_start:.0f} s; {_load()} at the end; '
                      f'jax {jax.__version__}.'])
    print(text)
    cli.write_output(a.out, _with_command(text, argv), name='imprint_calibration')
    return text
  if a.scaling:
    t_start, load0 = time.time(), _load()
    started = datetime.datetime.now(datetime.timezone.utc)
    honest = {k: all_attacks[k] for k in a.scaling_attacks.split(',') if k}
    lines, data = scaling_table(a, honest)
    lines = [f'Started {started:%Y-%m-%d %H:%M} UTC, '
             f'{load0} on {os.cpu_count()} CPU cores (shared machine).', ''] + lines
    if dp_rows:
      lines += ['', f'DP rows: delta = 1e-5, {a.dp_accountant.upper()} accountant, {a.dp_steps} '
                f'steps at q = {a.dp_sampling_rate:.4g}: ' + '; '.join(dp_rows) + '.']
    lines += ['', f'Total time {time.time() - t_start:.0f} s; {_load()} at the end; '
              f'{datetime.date.today()}; jax {jax.__version__}.']
    text = '\n'.join(lines)
    print(lines[-1])
    cli.write_output(a.out, _with_command(text, argv), name='leakage_batch')
    if a.png_dir:
      path = os.path.join(a.png_dir, 'leakage_batch.png')
      save_scaling_plot(path, data, f'Leakage vs batch size ({a.size}x{a.size}x3, untrained '
                        f'LeNet; IG {a.steps_ig} steps, DLG {a.steps_dlg}; imprint '
                        f'{a.imprint_bins} bins)')
      print('wrote', path)
    return text
  x, y = load_images(a.images, a.size, a.cifar10, a.seed)
  opt_attacks = dict(all_attacks)
  if a.attacks != 'all':
    opt_attacks = {k: v for k, v in all_attacks.items() if k in a.attacks.split(',')}
  dlg_defences = defences if a.dlg_defences == 'all' else a.dlg_defences.split(',')
  layer_defences = defences if a.layer_defences == 'all' else a.layer_defences.split(',')
  leaf_defences = defences if a.leaf_defences == 'all' else a.leaf_defences.split(',')
  t_start = time.time()
  lines = [f'Setting: {a.images} images {a.size}x{a.size}x3 (half MNIST-subset digits, half '
           f'scikit-image crops{"; CIFAR-10" if a.cifar10 else ""}), batch sizes {batch_sizes}, '
           f'IG {a.steps_ig} signed-Adam steps (tv {a.tv}), DLG {a.steps_dlg} L-BFGS steps, '
           f'1 restart; DLG/adaptive DLG only against {dlg_defences}, IG per-layer only '
           f'against {layer_defences}; models after the first: {a.secondary_attacks} against '
           f'{a.secondary_defences}, batch {a.secondary_batch_sizes}; brief training = {a.train_steps} Adam steps (batch 64). Defences '
           f'available: {", ".join(attacks.available_defences())}.', '',
           '| model | B | defence | attack | PSNR (dB) | SSIM | label acc. | s / batch |',
           '|---|---:|---|---|---:|---:|---:|---:|']
  print('\n'.join(lines), flush=True)
  grids = {}
  for mi, spec in enumerate(a.models.split(',')):
    name, state = spec.split(':')
    model = make_model(name, a.size, a.seed)
    f, params = attacks.as_functional(model)
    if state == 'trained':
      params = brief_training(f, params, a.train_steps, a.size, a.seed)
    defs = defences if mi == 0 else [d for d in a.secondary_defences.split(',') if d in defences]
    sizes = batch_sizes if mi == 0 else [b for b in batch_sizes if str(b) in a.secondary_batch_sizes.split(',')]
    atts = opt_attacks if mi == 0 else {k: v for k, v in all_attacks.items()
                                        if k in a.secondary_attacks.split(',')}
    for batch in sizes:
      n = (a.images // batch) * batch
      for d in defs:
        for an, att in atts.items():
          if d.startswith('dp_'):
            if an not in dp_attacks:
              continue
          elif ('DLG' in an and d not in dlg_defences) or (
              an == 'IG per-layer' and d not in layer_defences) or (
              an == 'IG per-leaf' and d not in leaf_defences):
            continue
          r = run_attack(an, att, f, params, x[:n], y[:n], batch, d, a.seed)
          line = _row(f'{name} {state}', batch, d, an, r)
          lines.append(line)
          print(line, flush=True)
          if mi == 0 and batch == 1 and an == 'IG global':
            grids.setdefault(d, r['recs'])
  # Backprop clipping: the clipped LeNet, noise calibrated per epsilon.
  if epsilons:
    bp_lines, bp_info = backprop_clipping_rows(
        x, y, a, epsilons, batch_sizes, {k: v for k, v in all_attacks.items() if k in dp_attacks})
    lines += bp_lines
    dp_rows += bp_info
  # Closed-form attacks: analytic on an MLP, R-GAP on a bias-free CNN (batch 1).
  mlp_f, mlp_p = _mlp(a.size, jax.random.key(a.seed))
  analytic = lambda f, obs, key, d: attacks.analytic_attack(
      f, obs, weight_path="['fc1']['kernel']", bias_path="['fc1']['bias']",
      rescale='max' if d.startswith('ssgd') else 'none')
  cnn = attacks.LayeredCNN((attacks.ConvSpec(4, 3, 1, 1),), 10, (a.size, a.size, 3))
  cnn_p = cnn.init(jax.random.key(a.seed))
  for d in ([] if a.no_closed_form else defences):
    for batch in batch_sizes:
      n = (a.images // batch) * batch
      r = run_attack('analytic', analytic, mlp_f, mlp_p, x[:n], y[:n], batch, d, a.seed)
      line = _row('mlp untrained', batch, d, 'analytic', r)
      lines.append(line)
      print(line, flush=True)
    if d not in a.rgap_defences.split(','):
      continue
    k = a.rgap_images
    r = run_attack('R-GAP', lambda f, obs, key, dd: attacks.rgap(cnn, obs), cnn.apply, cnn_p,
                   x[:k], y[:k], 1, d, a.seed)
    line = _row(f'bias-free CNN ({k} images)', 1, d, 'R-GAP', r)
    lines.append(line)
    print(line, flush=True)
  # What "nothing recovered" scores: guesses that use no gradient at all.
  floor = []
  for gname, guess in (('uniform random image', jax.random.uniform(jax.random.key(a.seed),
                                                                    x.shape)),
                       ('constant 0.5 image', jnp.full(x.shape, 0.5))):
    s = attacks.score(jnp.asarray(x), guess)
    floor.append(f'{gname} {_summ(np.asarray(s.psnr).tolist())} dB, SSIM '
                 f'{_summ(np.asarray(s.ssim).tolist())}')
  lines += ['', 'No-information reference on these images (matched like the attacks): '
            + '; '.join(floor) + '.']
  ranks = attacks.rank_analysis(cnn, cnn_p, jnp.asarray(x[0]), int(y[0]))
  lines += ['', f'R-GAP CNN rank analysis: {[tuple(r) for r in ranks]} (rank, unknowns, rows); '
            f'COPA index {attacks.copa_index(ranks)}.']
  if dp_rows:
    lines += ['', f'Noise multipliers of the DP rows (delta = 1e-5, {a.dp_accountant.upper()} '
              'accountant, '
              f'{a.dp_steps} steps at q = {a.dp_sampling_rate:.4g}):', '']
    lines += [f'* {r}' for r in dp_rows]
  lines += ['', f'Total time {time.time() - t_start:.0f} s; {datetime.date.today()}; '
            f'{os.cpu_count()} CPU cores, {_load()} at the end; jax {jax.__version__}.']
  text = '\n'.join(lines)
  print(lines[-3], lines[-1], sep='\n')
  cli.write_output(a.out, _with_command(text, argv), name='leakage')
  if a.png_dir and grids:
    path = os.path.join(a.png_dir, 'leakage_grid.png')
    save_grid(path, x[:8], {d: g[:8] for d, g in grids.items()}, n=min(8, len(x)))
    print('wrote', path)
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
