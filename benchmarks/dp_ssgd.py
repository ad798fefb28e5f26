# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""One DP table on one model: DP-SSGD vs tuned clipping and two external anchors.

Every method trains the same model (default: ``ssgd_examples.models.CNN`` with
channels (4, 8) and a dense layer of 32, ReLU, biases; ``--arch mlp`` for the
MLP) on the embedded MNIST subset (4,000 train / 1,000 test images), from the
same initial parameters, on the same Poisson batches (expected batch
``--batch-size``; padded and masked in JAX), for the same number of steps,
with SGD momentum 0.9 and a cosine learning-rate decay after the private
aggregate, and the noise multiplier calibrated for the target (epsilon,
delta = 1e-5) with the PLD accountant of :mod:`ssgd_optax.privacy`:

* ``sgd``: non-private: the masked mean gradient, its norm clipped to ``C``
  (without the clipping, momentum SGD diverged on some seeds at every
  learning rate that trains in 32 steps), tuned on the same axes as clipping.
* ``dp_sgd_clip``: per-example gradients clipped to global norm ``C``
  (:func:`ssgd_optax.privacy.dpsgd_grad_sum`), noise ``sigma C``.
* ``jax_privacy``: the same algorithm with jax_privacy's own code
  (``jax_privacy.clipping.clipped_grad`` and
  ``jax_privacy.noise_addition.gaussian_privatizer``) on our model and data.
* ``opacus_hooks`` / ``opacus_ghost``: the same algorithm in Opacus
  (``GradSampleModule`` + ``DPOptimizer``; ghost clipping), on the same CNN in
  PyTorch initialised with our parameters, fed standard-layout (NCHW) inputs
  (see ``benchmarks/opacus_channels_last.py``: Opacus's per-sample conv
  gradients are wrong on channels-last inputs).
* ``dp_ssgd`` / ``dp_ssgd_per_layer``: every example's gradient
  unit-normalised, globally (sensitivity 1) or per layer (sqrt(G)), Gaussian
  noise (:func:`ssgd_optax.privacy.dp_unit_normalize`).
* ``dp_ssgd_auto_s`` / ``dp_ssgd_auto_s_per_layer``: the same with the AUTO-S
  stability constant, ``g / (||g|| + gamma)`` (``stability=gamma``).
* ``backprop_clip``: every layer clipped (inputs to ``C_in``, output
  cotangents to ``C_out``, :func:`ssgd_optax.privacy.clip_layers`), one
  batched gradient, noise per tensor; ``L`` = number of parameter tensors
  releases per step, accounted as such.

**Tuning.** Every method, the anchors included, is tuned at every epsilon by
the same search (:func:`grid_search` over :data:`SEARCH`): the cross product of
half-decade log grids (learning rate; ``C``; ``gamma``; ``C_in, C_out``),
scored by the mean validation accuracy (20 % of the training set held out)
over ``--search-seeds`` seeds, and extended past any edge the best point lands
on. The chosen point is then trained on the full training set for seeds
``0 .. --seeds - 1`` and evaluated on the test set. Seed ``s`` fixes the
initialisation and the Poisson batches of every method, so differences
between methods are paired. Each JAX training run is one jitted ``lax.scan``
with the hyper-parameters traced (one compilation per method and data split).

**Time per step** (``--timing``): one full training run per method (sampling,
gradients, clipping or normalisation, noise, optimiser; the JAX runs compiled
beforehand), the methods interleaved in shuffled order for ``--timing-rounds``
rounds in one process; the median seconds per step and the median of the
per-round ratios to our non-private step. Also our ghost-norm path
(:func:`ssgd_optax.privacy.ghost_grad_sum`) for clipping and DP-SSGD.

Raw results go to ``--json`` after every (method, epsilon) and are reused by a
rerun with the same file, so a long run can be split into processes and
resumed; ``--combine`` writes the report from one or more such files.

  python benchmarks/dp_ssgd.py --json runs/dp_ssgd.json     # hours on 2 CPU cores
  python benchmarks/dp_ssgd.py --quick            # about a minute; smoke test

The report goes to a new file under ``runs/benchmarks/`` unless ``--out``
names one (the committed report is ``benchmarks/results/dp_ssgd.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import json
import math
import os
import random
import statistics
import pathlib
import sys
import time
import warnings
from collections.abc import Sequence
from typing import NamedTuple

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

from ssgd_examples import models
from ssgd_optax import per_example
from ssgd_optax import privacy
from ssgd_examples.data import load_dataset

DELTA = 1e-5
# Search runs use their own seeds (initialisation and batches), distinct from the test seeds.
SEARCH_SEED_BASE = 100


def per_example_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y)


def summed_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  return per_example_loss(model, x, y).sum()


@functools.lru_cache(maxsize=64)
def noise_for(epsilon: float, q: float, steps: int, releases: int, accountant: str) -> float:
  return privacy.calibrate_noise_multiplier(epsilon, sampling_rate=q, steps=steps, delta=DELTA,
                                            num_releases=releases, accountant=accountant)


def _data(validation: bool, train_size: int | None):
  ds = load_dataset('mnist_subset', seed=0)
  if validation:
    ds = ds.validation_split(0.2, seed=0)
  x_train, y_train = ds.normalize(ds.x_train), ds.y_train
  x_test, y_test = ds.normalize(ds.x_test), ds.y_test
  if train_size is not None:  # a random subset: the stored order is by class
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(x_train))[:train_size]
    x_train, y_train = x_train[keep], y_train[keep]
    keep = rng.permutation(len(x_test))[:train_size]
    x_test, y_test = x_test[keep], y_test[keep]
  return x_train, y_train, x_test, y_test, ds.image_shape, ds.num_classes


# In the order they run (the central comparison first, so a cut-short run still has it).
TABLE_METHODS = ('dp_sgd_clip', 'jax_privacy', 'opacus_hooks', 'opacus_ghost', 'dp_ssgd',
                 'dp_ssgd_auto_s', 'dp_ssgd_per_layer', 'dp_ssgd_auto_s_per_layer',
                 'backprop_clip', 'sgd')
# The same algorithm as dp_sgd_clip (per-example clipping to C, noise sigma C), other code.
CLIP_METHODS = ('dp_sgd_clip', 'jax_privacy', 'opacus_hooks', 'opacus_ghost')
OPACUS_METHODS = ('opacus_hooks', 'opacus_ghost')
# Methods with a ghost-norm path of ours (timed beside the vmap path).
GHOST_METHODS = ('dp_sgd_clip', 'dp_ssgd', 'dp_ssgd_auto_s', 'dp_ssgd_per_layer',
                 'dp_ssgd_auto_s_per_layer')
_HALF_DECADE = math.sqrt(10.0)


def _log_grid(lo_exp2: int, hi_exp2: int) -> tuple[float, ...]:
  """``10 ** (k / 2)`` for ``k`` in ``[lo_exp2, hi_exp2]``: a half-decade log grid."""
  return tuple(10.0 ** (k / 2) for k in range(lo_exp2, hi_exp2 + 1))


# The search: a log-spaced grid per hyper-parameter, the same rule for every
# method. For clipping the learning rate is given per unit of bound
# (lr = lr_unit / C, resp. lr_unit / (C_in C_out)), so that lr_unit is on the
# scale of DP-SSGD's lr (the summed update is bounded by the same factor).
_CLIP_AXES = dict(lr_unit=_log_grid(-1, 2), clip=_log_grid(-2, 1))
SEARCH = {
    'sgd': dict(_CLIP_AXES),
    **{m: dict(_CLIP_AXES) for m in CLIP_METHODS},
    'dp_ssgd': dict(lr=_log_grid(-1, 2)),
    'dp_ssgd_per_layer': dict(lr=_log_grid(-1, 2)),
    'dp_ssgd_auto_s': dict(lr=_log_grid(-1, 2), stability=(0.01, 0.1, 1.0)),
    'dp_ssgd_auto_s_per_layer': dict(lr=_log_grid(-1, 2), stability=(0.01, 0.1, 1.0)),
    'backprop_clip': dict(lr_unit=_log_grid(-1, 2), c_in=(1.0, 10.0), c_out=(0.01, 0.1)),
}


class SearchResult(NamedTuple):
  best: dict              # the chosen point
  score: float            # its validation accuracy
  records: list           # [(point, score)] in evaluation order
  notes: list             # one line per grid extension, and any edge left


def grid_search(evaluate, axes: dict, *, max_extensions: int = 2) -> SearchResult:
  """Best point of a log grid, extended until the best is not on an edge.

  Every point of the cross product of ``axes`` is evaluated. Then, while the
  best point sits on the first or last value of an axis that has more than
  one value, that axis is extended by one value beyond the edge (same ratio
  as its two outermost values) and the new value is evaluated together with
  the best point's neighbourhood (its value and the adjacent ones) on the
  other axes. At most ``max_extensions`` extensions per axis and direction;
  an edge that remains is reported in ``notes``. Ties go to the point
  evaluated first.

  Args:
    evaluate: ``evaluate(point: dict) -> float``, higher is better.
    axes: ``{name: increasing tuple of positive values}``.
    max_extensions: extensions allowed per axis and direction.

  Returns:
    A :class:`SearchResult`.
  """
  if not axes or any(len(v) < 1 for v in axes.values()):
    raise ValueError(f'axes must map names to non-empty value tuples; got {axes!r}.')
  axes = {k: sorted(float(x) for x in v) for k, v in axes.items()}
  scores, records, notes = {}, [], []
  names = list(axes)

  def run(point):
    key = tuple(point[k] for k in names)
    if key not in scores:
      scores[key] = float(evaluate(dict(point)))
      records.append((dict(point), scores[key]))

  for combo in itertools.product(*(axes[k] for k in names)):
    run(dict(zip(names, combo)))
  used = {(k, side): 0 for k in names for side in (0, 1)}
  while True:
    best_key = max(scores, key=lambda kk: (scores[kk], -list(scores).index(kk)))
    best = dict(zip(names, best_key))
    grew = False
    for k in names:
      vals = axes[k]
      if len(vals) < 2:
        continue
      i = vals.index(best[k])
      side = 0 if i == 0 else 1 if i == len(vals) - 1 else None
      if side is None:
        continue
      if used[(k, side)] >= max_extensions:
        notes.append(f'{k}={best[k]:g} is still on the {"lower" if side == 0 else "upper"} '
                     f'edge after {max_extensions} extensions')
        continue
      used[(k, side)] += 1
      new = vals[0] * vals[0] / vals[1] if side == 0 else vals[-1] * vals[-1] / vals[-2]
      axes[k] = sorted(vals + [new])
      notes.append(f'best {k}={best[k]:g} on the {"lower" if side == 0 else "upper"} edge: '
                   f'extended to {new:.3g}')
      others = []
      for o in names:
        if o == k:
          others.append([new])
        else:
          j = axes[o].index(best[o])
          others.append(axes[o][max(0, j - 1):j + 2])
      for combo in itertools.product(*others):
        run(dict(zip(names, combo)))
      grew = True
      break  # re-rank before looking at another axis
    if not grew:
      break
  notes = [n for i, n in enumerate(notes) if 'still on' not in n or n not in notes[:i]]
  return SearchResult(best, scores[best_key], records, notes)


def _model(arch: str, image_shape, num_classes: int, width: tuple[int, ...], seed: int):
  rngs = nnx.Rngs(params=jax.random.key(seed))
  if arch == 'cnn':
    return models.CNN(image_shape, num_classes, channels=width[:2], dense=width[2], rngs=rngs)
  return models.MLP(image_shape, num_classes, hidden=width, rngs=rngs)


def _hyper(method: str, point: dict) -> dict:
  """The traced hyper-parameters of one grid point."""
  if method in CLIP_METHODS or method == 'sgd':
    return dict(lr=point['lr_unit'] / point['clip'], clip=point['clip'], gamma=0.0)
  if method == 'backprop_clip':
    return dict(lr=point['lr_unit'] / (point['c_in'] * point['c_out']), clip=1.0, gamma=0.0)
  return dict(lr=point['lr'], clip=1.0, gamma=point.get('stability', 0.0))


class TableSetup(NamedTuple):
  arch: str
  width: tuple
  epochs: float
  expected_batch_size: int
  accountant: str


def _fresh_params(method: str, setup: TableSetup, image_shape, num_classes: int, bounds: tuple,
                  seed: int):
  """``(graphdef, params, num_releases)`` of a freshly initialised model."""
  model = _model(setup.arch, image_shape, num_classes, setup.width, seed)
  releases = 1
  if method == 'backprop_clip':
    model = privacy.clip_layers(model, input_bound=bounds[0], grad_bound=bounds[1])
    releases = privacy.num_releases(model)
  graphdef, params = nnx.split(model)
  return graphdef, params, releases


def _schedule(setup: TableSetup, n: int) -> tuple[float, int, int]:
  """``(q, steps, padded batch size)`` of Poisson sampling on ``n`` examples."""
  q = setup.expected_batch_size / n
  steps = max(1, int(round(setup.epochs / q)))
  return q, steps, privacy.max_batch_size_for(n, q, steps=steps)


def _jax_privacy_grad_sum(graphdef, params, x, y, mask, clip):
  """jax_privacy's own sum of per-example gradients clipped to ``clip``.

  Padded rows get loss weight 0 (jax_privacy's Keras API hides its padding
  examples the same way, with sample weight 0): their gradient is exactly 0.
  """
  from jax_privacy import clipping as jp_clipping  # pylint: disable=import-outside-toplevel

  def loss(p, xi, yi, mi):
    return (mi * per_example_loss(nnx.merge(graphdef, p), xi, yi)).sum()

  return jp_clipping.clipped_grad(loss, l2_clip_norm=clip, batch_argnums=(1, 2, 3))(
      params, x, y, mask.astype(x.dtype))


@functools.lru_cache(maxsize=None)
def _compiled(method: str, setup: TableSetup, n: int, image_shape, num_classes: int,
              bounds: tuple = (), path: str = 'vmap'):
  """``(train, steps, q, releases)``; ``train(params, key, x, y, x_eval, y_eval, lr, clip,
  gamma, sigma) -> accuracy`` is one jitted training loop (``lax.scan``).

  The learning rate, clip norm, stability constant and noise multiplier are
  traced, so one compilation serves a method's whole search (backprop
  clipping's layer bounds set its sensitivities and stay static: one
  compilation per ``(C_in, C_out)``). ``path="ghost"`` takes our ghost-norm
  path (:func:`ssgd_optax.privacy.ghost_grad_sum`) for clipping and DP-SSGD.
  """
  if method in OPACUS_METHODS:
    raise ValueError(f'{method} trains in PyTorch (opacus_train), not in a JAX loop.')
  if path == 'ghost' and method not in GHOST_METHODS:
    raise ValueError(f'path="ghost" is for {GHOST_METHODS}; got {method!r}.')
  q, steps, padded = _schedule(setup, n)
  ebs = setup.expected_batch_size
  scope = 'per_layer' if method.endswith('per_layer') else 'global'
  is_ssgd = method.startswith('dp_ssgd')
  graphdef, template, releases = _fresh_params(method, setup, image_shape, num_classes, bounds,
                                               0)
  sens = None
  if method == 'backprop_clip':
    sens = privacy.sensitivities(nnx.merge(graphdef, template))
  elif is_ssgd:
    sens = privacy.dp_ssgd_mechanism(template, scope=scope).sensitivity

  def train(params, key, x, y, x_eval, y_eval, lr, clip, gamma, sigma):
    k_noise, k_sample = jax.random.split(key)
    if is_ssgd and path == 'vmap':
      agg = privacy.dp_unit_normalize(sigma, expected_batch_size=ebs, key=k_noise, scope=scope,
                                      stability=gamma)
    elif is_ssgd or method == 'backprop_clip':
      agg = privacy.add_gaussian_noise(sigma, sens, ebs, key=k_noise)
    elif method == 'dp_sgd_clip':
      agg = privacy.add_gaussian_noise(sigma, clip, ebs, key=k_noise)
    elif method == 'jax_privacy':
      from jax_privacy import noise_addition  # pylint: disable=import-outside-toplevel
      agg = optax.chain(noise_addition.gaussian_privatizer(stddev=sigma * clip, prng_key=k_noise),
                        optax.scale(1.0 / ebs))
    else:  # sgd: the masked mean gradient, its norm clipped (no noise)
      agg = optax.chain(optax.scale(1.0 / ebs), optax.clip_by_global_norm(clip))
    tx = optax.chain(agg, optax.trace(decay=0.9),
                     optax.scale_by_learning_rate(optax.cosine_decay_schedule(lr, steps)))

    def body(carry, k):
      params, opt_state = carry
      idx, mask = privacy.poisson_sample(k, n, q, padded)
      m = nnx.merge(graphdef, params)
      xb, yb = x[idx], y[idx]
      if is_ssgd and path == 'vmap':
        grads = per_example.nnx_per_example_grads(summed_loss, m, xb, yb, mask=mask)
        updates, opt_state = tx.update(grads, opt_state, params, mask=mask)
      else:
        if is_ssgd:
          grads = privacy.ghost_grad_sum(per_example_loss, m, xb, yb, mask=mask,
                                           weights='normalize', scope=scope, stability=gamma,
                                           method='ghost').grads
        elif method == 'dp_sgd_clip' and path == 'ghost':
          grads = privacy.ghost_grad_sum(per_example_loss, m, xb, yb, mask=mask,
                                           clip_norm=clip, method='ghost').grads
        elif method == 'dp_sgd_clip':
          grads = privacy.dpsgd_grad_sum(per_example_loss, m, xb, yb, clip_norm=clip,
                                           mask=mask)[1]
        elif method == 'jax_privacy':
          grads = _jax_privacy_grad_sum(graphdef, params, xb, yb, mask, clip)
        else:  # backprop clipping (clip_layers model) or the plain summed gradient
          grads = privacy.backprop_clip_grad_sum(per_example_loss, m, xb, yb, mask=mask)[1]
        updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)),
                                  jax.random.split(k_sample, steps))
    logits = nnx.merge(graphdef, params)(x_eval)
    return jnp.mean(jnp.argmax(logits, -1) == y_eval)

  return jax.jit(train), steps, q, releases


def _cfg_text(cfg: dict) -> str:
  return ', '.join(f'{k}={v:.3g}' for k, v in cfg.items())


def _bounds(method: str, point: dict) -> tuple:
  return (point['c_in'], point['c_out']) if method == 'backprop_clip' else ()


class RunResult(NamedTuple):
  accuracy: float   # on the data's evaluation part
  sigma: float      # noise multiplier (0 for sgd)
  steps: int
  seconds: float    # the training run (compiled JAX call, or the PyTorch loop) and evaluation


def train_once(method: str, point: dict, *, epsilon: float, seed: int, data,
               setup: TableSetup, path: str = 'vmap') -> RunResult:
  """Trains one model from seed ``seed``'s initialisation and batches."""
  if method in OPACUS_METHODS:
    return opacus_train(point, epsilon=epsilon, seed=seed, data=data, setup=setup,
                        ghost=method == 'opacus_ghost')
  x, y, x_eval, y_eval, image_shape, num_classes = data
  bounds = _bounds(method, point)
  fn, steps, q, releases = _compiled(method, setup, len(x), image_shape, num_classes, bounds,
                                     path)
  sigma = 0.0 if method == 'sgd' else noise_for(epsilon, q, steps, releases, setup.accountant)
  _, params, _ = _fresh_params(method, setup, image_shape, num_classes, bounds, seed)
  hp = _hyper(method, point)
  key = jax.random.fold_in(jax.random.key(seed), 1)
  t0 = time.perf_counter()
  acc = float(fn(params, key, x, y, x_eval, y_eval, hp['lr'], hp['clip'], hp['gamma'], sigma))
  return RunResult(acc, sigma, steps, time.perf_counter() - t0)


def _nchw(x, layout: str = 'standard'):
  """An NHWC array as a PyTorch NCHW tensor.

  ``"standard"``: contiguous NCHW strides, what Opacus needs. ``"channels_last"``:
  the construction this benchmark used before (``permute(...).contiguous()``):
  for one input channel the permuted tensor already counts as contiguous, so
  ``.contiguous()`` keeps its channels-last strides, the first convolution's
  output comes out channels-last, and Opacus's per-sample gradients of the
  second convolution are wrong (``benchmarks/opacus_channels_last.py``).
  """
  import torch  # pylint: disable=import-outside-toplevel
  t = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)
  if layout == 'channels_last':
    return t.contiguous()
  if layout != 'standard':
    raise ValueError(f'layout must be "standard" or "channels_last"; got {layout!r}.')
  return t.clone(memory_format=torch.contiguous_format)


def _torch_cnn(params, width, image_shape, num_classes):
  """The CNN in PyTorch, initialised with our (flax) parameters: same model, same init."""
  import torch  # pylint: disable=import-outside-toplevel
  nn = torch.nn
  (h, w, c), (c1, c2, d) = image_shape, width
  net = nn.Sequential(
      nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
      nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
      nn.Linear(h // 4 * w // 4 * c2, d), nn.ReLU(), nn.Linear(d, num_classes))
  p = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
  dense = p['dense']['kernel'].reshape(h // 4, w // 4, c2, d).transpose(2, 0, 1, 3)
  weights = [p['conv1']['kernel'].transpose(3, 2, 0, 1), p['conv1']['bias'],
             p['conv2']['kernel'].transpose(3, 2, 0, 1), p['conv2']['bias'],
             dense.reshape(-1, d).T, p['dense']['bias'], p['head']['kernel'].T, p['head']['bias']]
  with torch.no_grad():
    for t, v in zip(net.parameters(), weights):
      t.copy_(torch.tensor(np.ascontiguousarray(v)))
  return net


def opacus_check(data, setup: TableSetup, layout: str = 'standard',
                 examples: int = 16) -> dict[str, float]:
  """Opacus's per-sample gradients and ghost norms against ``torch.func`` on our CNN and data.

  Relative error ``||G_opacus - G_func|| / ||G_func||`` per parameter of
  ``GradSampleModule``'s per-sample gradients for the first ``examples``
  training images (fed as ``layout``, see :func:`_nchw`) at seed 0's
  initialisation (summed loss); under ``'(ghost clipping norms)'`` the same
  for the per-sample gradient norms of ghost clipping; under
  ``'(torch.func sum vs batched gradient)'`` the reference's sum against
  torch's batched gradient.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from opacus import GradSampleModule  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from opacus.grad_sample import GradSampleModuleFastGradientClipping
  from torch.func import functional_call, grad, vmap  # pylint: disable=import-outside-toplevel
  x, y, _, _, image_shape, classes = data
  _, params, _ = _fresh_params('dp_sgd_clip', setup, image_shape, classes, (), 0)
  net = _torch_cnn(params, setup.width, image_shape, classes)
  xt = _nchw(np.asarray(x)[:examples], layout)
  yt = torch.tensor(np.asarray(y)[:examples], dtype=torch.long)
  ce = torch.nn.functional.cross_entropy
  ps = {n: p.detach() for n, p in net.named_parameters()}
  want = vmap(grad(lambda p, xi, yi: ce(functional_call(net, p, (xi[None],)), yi[None])),
              in_dims=(None, 0, 0))(ps, xt, yt)
  # The reference itself: its sum must be torch's batched gradient.
  ce(net(xt), yt, reduction='sum').backward()
  batched = max(float((p.grad - want[n].sum(0)).norm() / p.grad.norm())
                for n, p in net.named_parameters())
  net.zero_grad()
  model = GradSampleModule(net, loss_reduction='sum')
  ce(model(xt), yt, reduction='sum').backward()
  errors = {n: float((p.grad_sample - want[n]).norm() / want[n].norm())
            for n, p in model._module.named_parameters()}  # pylint: disable=protected-access
  model._close()  # pylint: disable=protected-access
  net.zero_grad()
  ghost = GradSampleModuleFastGradientClipping(net, max_grad_norm=1.0, use_ghost_clipping=True,
                                               loss_reduction='sum')
  ce(ghost(xt), yt, reduction='sum').backward()
  norms = torch.cat([g.flatten(1) for g in want.values()], 1).norm(dim=1)
  ghost_err = float((ghost.get_norm_sample() - norms).norm() / norms.norm())
  return errors | {'(ghost clipping norms)': ghost_err,
                   '(torch.func sum vs batched gradient)': batched}


def opacus_train(point: dict, *, epsilon: float, seed: int, data, setup: TableSetup,
                 ghost: bool) -> RunResult:
  """Opacus DP-SGD (hooks, or ghost clipping) on our model, init, batches and sigma.

  The external anchor: the same CNN initialised with the same parameters,
  the very Poisson batches our ``dp_sgd_clip`` run draws (same keys), the
  same noise multiplier, clip norm, learning rate, momentum and cosine decay;
  only the per-example clipping and the noise are Opacus'. Inputs in standard
  NCHW layout (:func:`_nchw`). ``seconds`` times the training loop and the
  evaluation, not the drawing of the batches (done in JAX beforehand).
  """
  import torch  # pylint: disable=import-outside-toplevel
  from opacus import GradSampleModule  # pylint: disable=import-outside-toplevel
  from opacus.optimizers import DPOptimizer  # pylint: disable=import-outside-toplevel
  if setup.arch != 'cnn':
    raise ValueError('the Opacus rows need --arch cnn')
  x, y, x_eval, y_eval, image_shape, num_classes = data
  n = len(x)
  q, steps, padded = _schedule(setup, n)
  sigma = noise_for(epsilon, q, steps, 1, setup.accountant)
  hp = _hyper('dp_sgd_clip', point)
  _, params, _ = _fresh_params('dp_sgd_clip', setup, image_shape, num_classes, (), seed)
  torch.manual_seed(seed)
  net = _torch_cnn(params, setup.width, image_shape, num_classes)
  _, k_sample = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1))
  idx, mask = jax.jit(jax.vmap(lambda k: privacy.poisson_sample(k, n, q, padded)))(
      jax.random.split(k_sample, steps))
  batches = [torch.tensor(i[m.astype(bool)], dtype=torch.long)
             for i, m in zip(np.asarray(idx), np.asarray(mask))]
  xt, yt = _nchw(x), torch.tensor(np.asarray(y), dtype=torch.long)
  xe = _nchw(x_eval)
  sgd = torch.optim.SGD(net.parameters(), lr=hp['lr'], momentum=0.9)
  kw = dict(noise_multiplier=sigma, max_grad_norm=hp['clip'],
            expected_batch_size=setup.expected_batch_size, loss_reduction='mean')
  ce = torch.nn.CrossEntropyLoss(reduction='mean')
  if ghost:
    # pylint: disable=import-outside-toplevel
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
    model = GradSampleModuleFastGradientClipping(net, max_grad_norm=hp['clip'],
                                                 use_ghost_clipping=True)
    opt = DPOptimizerFastGradientClipping(sgd, **kw)
    loss_fn = DPLossFastGradientClipping(model, opt, ce, 'mean')
  else:
    model, opt, loss_fn = GradSampleModule(net), DPOptimizer(sgd, **kw), ce
  # optax.cosine_decay_schedule(lr, steps): lr * (1 + cos(pi t / T)) / 2 at update t.
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt.original_optimizer if hasattr(opt, 'original_optimizer') else opt,
      lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
  t0 = time.perf_counter()
  for rows in batches:
    opt.zero_grad()
    loss = loss_fn(model(xt[rows]), yt[rows])
    loss.backward()
    opt.step()
    sched.step()
  with torch.no_grad():
    logits = net(xe)
  acc = float((logits.argmax(-1).numpy() == np.asarray(y_eval)).mean())
  return RunResult(acc, sigma, steps, time.perf_counter() - t0)


def torch_sgd_seconds(point: dict, *, seed: int, data, setup: TableSetup) -> float:
  """Seconds of a non-private PyTorch run of the same CNN (timing reference only)."""
  import torch  # pylint: disable=import-outside-toplevel
  x, y, x_eval, _, image_shape, num_classes = data
  n = len(x)
  q, steps, padded = _schedule(setup, n)
  _, params, _ = _fresh_params('sgd', setup, image_shape, num_classes, (), seed)
  net = _torch_cnn(params, setup.width, image_shape, num_classes)
  _, k_sample = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1))
  idx, mask = jax.jit(jax.vmap(lambda k: privacy.poisson_sample(k, n, q, padded)))(
      jax.random.split(k_sample, steps))
  batches = [torch.tensor(i[m.astype(bool)], dtype=torch.long)
             for i, m in zip(np.asarray(idx), np.asarray(mask))]
  xt, yt, xe = _nchw(x), torch.tensor(np.asarray(y), dtype=torch.long), _nchw(x_eval)
  hp = _hyper('sgd', point)
  opt = torch.optim.SGD(net.parameters(), lr=hp['lr'], momentum=0.9)
  ce = torch.nn.CrossEntropyLoss(reduction='sum')
  t0 = time.perf_counter()
  for rows in batches:
    opt.zero_grad()
    (ce(net(xt[rows]), yt[rows]) / setup.expected_batch_size).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), hp['clip'])
    opt.step()
  with torch.no_grad():
    net(xe)
  return time.perf_counter() - t0


def jax_checks(data, setup: TableSetup, examples: int = 64) -> dict[str, float]:
  """Our clipped sums against jax_privacy's and against our ghost path, on one batch.

  Relative errors ``||a - b|| / ||b||`` of the summed clipped gradient of the
  first ``examples`` training images at seed 0's initialisation (the last
  eight rows masked out), at a clip norm that clips most examples:
  ``jax_privacy.clipping.clipped_grad`` vs our ``dpsgd_grad_sum``, and our
  ``ghost_grad_sum`` vs ``dpsgd_grad_sum`` (clipping) and vs the vmap path's
  normalised sum (DP-SSGD, per layer, gamma 0.01).
  """
  x, y, _, _, image_shape, classes = data
  graphdef, params, _ = _fresh_params('dp_sgd_clip', setup, image_shape, classes, (), 0)
  xb, yb = x[:examples], y[:examples]
  mask = jnp.arange(len(xb)) < len(xb) - 8
  clip = 0.1

  def rel(a, b):
    return optax.tree.norm(jax.tree.map(lambda u, v: u - v, a, b)) / optax.tree.norm(b)

  @jax.jit  # one compilation: eager per-example and ghost paths dispatch thousands of ops
  def errors(params, xb, yb, mask):
    m = nnx.merge(graphdef, params)
    ours = privacy.dpsgd_grad_sum(per_example_loss, m, xb, yb, clip_norm=clip, mask=mask)[1]
    theirs = _jax_privacy_grad_sum(graphdef, params, xb, yb, mask, clip)
    ghost_clip = privacy.ghost_grad_sum(per_example_loss, m, xb, yb, mask=mask,
                                          clip_norm=clip, method='ghost').grads
    pe = per_example.nnx_per_example_grads(summed_loss, m, xb, yb, mask=mask)
    vmap_norm = jax.tree.map(lambda g: g.sum(0), privacy.normalize_per_example(
        pe, scope='per_layer', stability=0.01, mask=mask))
    ghost_norm = privacy.ghost_grad_sum(per_example_loss, m, xb, yb, mask=mask,
                                          weights='normalize', scope='per_layer',
                                          stability=0.01, method='ghost').grads
    return (rel(theirs, ours), rel(ghost_clip, ours), rel(ghost_norm, vmap_norm))

  names = ('jax_privacy clipped_grad vs dpsgd_grad_sum', 'ghost vs vmap (clipping)',
           'ghost vs vmap (DP-SSGD per layer)')
  return dict(zip(names, map(float, errors(params, xb, yb, mask))))


def _device_data(validation: bool, train_size: int | None):
  x, y, xe, ye, shape, classes = _data(validation, train_size)
  return (jnp.asarray(x), jnp.asarray(y), jnp.asarray(xe), jnp.asarray(ye), tuple(shape),
          classes)


def _spent(method: str, epsilon: float, setup: TableSetup, data, point: dict) -> float:
  """The epsilon spent by one run (checked <= target by the accountant's tracker)."""
  q, steps, _ = _schedule(setup, len(data[0]))
  releases = 1
  if method == 'backprop_clip':
    releases = _fresh_params(method, setup, data[4], data[5], _bounds(method, point), 0)[2]
  sigma = noise_for(epsilon, q, steps, releases, setup.accountant)
  tracker = privacy.BudgetTracker(epsilon, DELTA, noise_multiplier=sigma, sampling_rate=q,
                                  num_releases=releases, accountant=setup.accountant)
  for _ in range(steps):
    tracker.step()
  return tracker.spent()


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
  """Paired differences ``a_s - b_s`` over the seeds both have: mean, std, s.e., wins, t."""
  d = [x - y for x, y in zip(a, b)]
  if not d:
    raise ValueError('paired: no common seeds.')
  mean = statistics.mean(d)
  std = statistics.stdev(d) if len(d) > 1 else 0.0
  se = std / math.sqrt(len(d))
  return dict(n=len(d), mean=mean, std=std, se=se, wins=sum(x > 0 for x in d),
              ties=sum(x == 0 for x in d), t=mean / se if se > 0 else math.nan)


def _save(path: str | None, results: dict) -> None:
  if path:
    tmp = f'{path}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)
    os.replace(tmp, path)


def _eps_key(method: str, eps: float) -> str:
  return '-' if method == 'sgd' else f'{eps:g}'


def run_table(args, setup: TableSetup, results: dict, search: dict, given: dict,
              train_size: int | None) -> None:
  """Searches and tests every method at every epsilon, saving after each step."""
  val = _device_data(True, train_size)
  test = _device_data(False, train_size)
  search_seeds = [SEARCH_SEED_BASE + s for s in range(args.search_seeds)]
  runs = results.setdefault('runs', {})
  for method in args.methods:
    for eps in (args.epsilons[:1] if method == 'sgd' else args.epsilons):
      entry = runs.setdefault(method, {}).setdefault(_eps_key(method, eps), {})
      if 'error' in entry:
        del entry['error']  # a rerun tries again
      try:
        if 'search' not in entry:
          t0 = time.time()

          def evaluate(point, method=method, eps=eps):
            accs = [train_once(method, point, epsilon=eps, seed=s, data=val,
                               setup=setup).accuracy for s in search_seeds]
            print(f'[tune] {method} eps {eps:g} {_cfg_text(point)}: val acc '
                  f'{statistics.mean(accs):.4f} {accs}', file=sys.stderr, flush=True)
            return statistics.mean(accs)

          if method in given:
            res = SearchResult(best=dict(given[method]), score=math.nan, records=[],
                               notes=['not searched: setting given with --chosen'])
          else:
            res = grid_search(evaluate, search[method], max_extensions=args.max_extensions)
          entry['search'] = dict(axes=search[method], best=res.best, score=res.score,
                                 records=res.records, notes=res.notes, seeds=search_seeds,
                                 wall_s=time.time() - t0)
          _save(args.json, results)
        point = entry['search']['best']
        test_runs = entry.setdefault('test', dict(seeds=[], acc=[], seconds=[]))
        for seed in range(args.seeds):
          if seed in test_runs['seeds']:
            continue
          r = train_once(method, point, epsilon=eps, seed=seed, data=test, setup=setup)
          print(f'[test] {method} eps {eps:g} seed {seed}: {r.accuracy:.4f} '
                f'(sigma {r.sigma:.3f}, {r.seconds:.1f} s)', file=sys.stderr, flush=True)
          test_runs['seeds'].append(seed)
          test_runs['acc'].append(r.accuracy)
          test_runs['seconds'].append(r.seconds)
          test_runs.update(sigma=r.sigma, steps=r.steps)
          _save(args.json, results)
        if method != 'sgd' and 'spent' not in test_runs:
          test_runs['spent'] = _spent(method, eps, setup, test, point)
          _save(args.json, results)
      except ImportError as e:  # an anchor whose library is not installed
        entry['error'] = f'not run ({type(e).__name__}: {e})'
        print(f'[skip] {method}: {entry["error"]}', file=sys.stderr, flush=True)
        _save(args.json, results)
        break


def run_checks(setup: TableSetup, results: dict, train_size: int | None) -> None:
  """The anchors' correctness checks (cheap): Opacus vs torch.func, jax_privacy vs ours."""
  test = _device_data(False, train_size)
  checks = results.setdefault('checks', {})
  for layout in ('standard', 'channels_last'):
    try:
      checks[f'opacus {layout}'] = opacus_check(test, setup, layout)
    except ImportError as e:
      checks[f'opacus {layout}'] = f'not run ({type(e).__name__}: {e})'
  try:
    checks['jax'] = jax_checks(test, setup)
  except ImportError as e:
    checks['jax'] = f'not run ({type(e).__name__}: {e})'
  print(f'[checks] {checks}', file=sys.stderr, flush=True)


def _timing_point(results: dict, method: str, search: dict) -> dict:
  """The chosen point at the middle epsilon if there is one, else the grid's middle."""
  entries = results.get('runs', {}).get(method, {})
  keys = sorted((k for k in entries if 'search' in entries[k]), key=lambda k: (k == '-', k))
  if keys:
    return entries[keys[len(keys) // 2]]['search']['best']
  return {k: v[len(v) // 2] for k, v in search[method].items()}


def run_timing(args, setup: TableSetup, results: dict, search: dict, points: dict,
               train_size: int | None) -> None:
  """Seconds per training step of every method, interleaved in one process.

  Each method runs at its chosen point (from ``points``, merged result files)
  at the middle epsilon.
  """
  test = _device_data(False, train_size)
  eps = args.epsilons[len(args.epsilons) // 2]
  variants = {}
  for method in args.methods:
    point = _timing_point(points, method, search)
    for path in (('vmap', 'ghost') if method in GHOST_METHODS else ('vmap',)):
      name = method if path == 'vmap' else f'{method} (ghost)'
      variants[name] = functools.partial(train_once, method, point, epsilon=eps, seed=0,
                                         data=test, setup=setup, path=path)
    if method == 'sgd':
      variants['torch sgd'] = functools.partial(torch_sgd_seconds, point, seed=0, data=test,
                                                setup=setup)
  _, steps, _ = _schedule(setup, len(test[0]))
  runnable = {}
  for name, fn in variants.items():
    try:
      fn()  # compiles (JAX), warms up (PyTorch)
      runnable[name] = fn
      print(f'[timing] warmed up {name}', file=sys.stderr, flush=True)
    except ImportError as e:
      print(f'[timing] {name} not run ({type(e).__name__}: {e})', file=sys.stderr, flush=True)
  if 'sgd' not in runnable:
    raise ValueError('--timing needs the sgd method (the reference step) in --methods.')
  load0 = os.getloadavg()
  times = {name: [] for name in runnable}
  rng = random.Random(0)
  for rnd in range(args.timing_rounds):
    order = list(runnable)
    rng.shuffle(order)
    for name in order:
      out = runnable[name]()
      times[name].append((out if isinstance(out, float) else out.seconds) / steps)
    print(f'[timing] round {rnd + 1}: ' + ', '.join(f'{k} {1e3 * v[-1]:.0f} ms'
                                                   for k, v in times.items()),
          file=sys.stderr, flush=True)
  results['timing'] = dict(
      rounds=args.timing_rounds, epsilon=eps, steps=steps, load_start=load0,
      load_end=os.getloadavg(), per_step_s=times,
      ratio={k: [t / b for t, b in zip(v, times['sgd'])] for k, v in times.items()},
      torch_threads=_torch_threads(), xla_flags=os.environ.get('XLA_FLAGS', ''))
  _save(args.json, results)


def run_cross(args, setup: TableSetup, results: dict, points: dict,
              train_size: int | None) -> None:
  """Trains method A at method B's chosen point (``--cross A@B``), every epsilon and seed.

  Paired with B's own runs (same seeds: same initialisation and batches), this
  separates what the code does from what each method's search chose.
  """
  test = _device_data(False, train_size)
  cross = results.setdefault('cross', {})
  for pair in args.cross:
    a, b = pair.split('@')
    for eps in args.epsilons:
      key = _eps_key(b, eps)
      src = points.get('runs', {}).get(b, {}).get(key, {})
      if 'search' not in src:
        print(f'[cross] {pair} eps {eps:g}: no chosen point of {b}', file=sys.stderr, flush=True)
        continue
      point = src['search']['best']
      entry = cross.setdefault(pair, {}).setdefault(
          _eps_key(a, eps), dict(point=point, seeds=[], acc=[], seconds=[]))
      for seed in range(args.seeds):
        if seed in entry['seeds']:
          continue
        r = train_once(a, point, epsilon=eps, seed=seed, data=test, setup=setup)
        print(f'[cross] {pair} eps {eps:g} seed {seed}: {r.accuracy:.4f}', file=sys.stderr,
              flush=True)
        entry['seeds'].append(seed)
        entry['acc'].append(r.accuracy)
        entry['seconds'].append(r.seconds)
        _save(args.json, results)


def _torch_threads():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return torch.get_num_threads()


def _versions() -> dict:
  out = dict(jax=jax.__version__, optax=optax.__version__)
  for name in ('jax_privacy', 'torch', 'opacus'):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      out[name] = None
  return out


_NAMES = {
    'sgd': 'sgd (non-private, batch-gradient norm clipped)',
    'dp_sgd_clip': 'dp_sgd_clip (ours: per-example clipping)',
    'jax_privacy': 'jax_privacy (clipped_grad + gaussian_privatizer)',
    'opacus_hooks': 'Opacus hooks',
    'opacus_ghost': 'Opacus ghost clipping',
    'dp_ssgd': 'dp_ssgd (global)',
    'dp_ssgd_auto_s': 'dp_ssgd_auto_s (global)',
    'dp_ssgd_per_layer': 'dp_ssgd_per_layer',
    'dp_ssgd_auto_s_per_layer': 'dp_ssgd_auto_s_per_layer',
    'backprop_clip': 'backprop_clip',
}


def _pct(values: Sequence[float]) -> str:
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{100 * statistics.mean(values):.1f} ± {100 * std:.1f}'


def _check_lines(checks: dict) -> list[str]:
  lines = []
  std, last = checks.get('opacus standard'), checks.get('opacus channels_last')
  if isinstance(std, dict):
    worst = max(std, key=std.get)
    ok = std[worst] <= 1e-3
    lines.append(
        '* Opacus, standard-layout (NCHW) input: per-sample gradients and ghost-clipping norms '
        + (f'equal torch.func\'s (largest relative error {std[worst]:.1g}, `{worst}`).' if ok
           else f'**differ from torch.func** (relative error {std[worst]:.3g} for `{worst}`): '
                'the Opacus rows are not a valid anchor.'))
  elif std:
    lines.append(f'* Opacus check: {std}')
  if isinstance(last, dict):
    worst = max(last, key=last.get)
    shown = last[worst] > 1e-3
    lines.append(
        '* The guard on the old, channels-last input '
        + (f'fails as it should (relative error {last[worst]:.2g} for `{worst}`; all: '
           + ', '.join(f'{k} {v:.2g}' for k, v in last.items()) + ').' if shown else
           f'does **not** show the known failure (largest error {last[worst]:.1g}): this '
           'Opacus may have fixed unfold2d; the guard is then untested here.'))
  jx = checks.get('jax')
  if isinstance(jx, dict):
    lines.append('* ' + '; '.join(f'{k}: relative error {v:.1g}' for k, v in jx.items())
                 + ' (first 64 training images, 8 masked, C = 0.1).')
  elif jx:
    lines.append(f'* JAX checks: {jx}')
  return lines


def report(results: dict, commands: Sequence[str]) -> str:
  """The Markdown report of one or more merged result files."""
  cfg = results['config']
  runs = results.get('runs', {})
  epsilons = cfg['epsilons']
  methods = [m for m in TABLE_METHODS if m in runs]
  width = tuple(cfg['width'])
  arch = (f'CNN conv3x3({width[0]})-ReLU-avgpool2-conv3x3({width[1]})-ReLU-avgpool2-'
          f'dense({width[2]})-ReLU-dense(10), biases' if cfg['arch'] == 'cnn' else
          f'MLP 784-{"-".join(map(str, width))}-10 (ReLU, biases)')
  timing = results.get('timing')
  ratio = {k: statistics.median(v) for k, v in timing['ratio'].items()} if timing else {}

  def entry(m, eps):
    return runs.get(m, {}).get(_eps_key(m, eps), {})

  def accs(m, eps):
    t = entry(m, eps).get('test', {})
    return dict(zip(t.get('seeds', []), t.get('acc', [])))

  lines = [
      '## One DP table on one model: DP-SSGD, tuned clipping, jax_privacy and Opacus '
      '(MNIST subset)', '',
      f'Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC from '
      f'{len(results.get("commands", []))} run(s); versions: '
      + ', '.join(f'{k} {v}' for k, v in results.get('versions', {}).items()) + '.', '',
      'Commands:', '', *[f'    {c}' for c in commands], '',
      f'{arch}; {cfg["n_train"]} training images, Poisson sampling (expected batch '
      f'{cfg["batch_size"]}), {cfg["steps"]} steps ({cfg["epochs"]:g} epochs), SGD momentum 0.9 '
      f'+ cosine decay, δ = {DELTA:g}, {cfg["accountant"].upper()} accountant. Every method '
      f'tuned at every ε on a validation split (mean of {cfg["search_seeds"]} seeds), then '
      'tested with seeds 0, 1, ... (count in the table).', '',
      '### Checks', '', *_check_lines(results.get('checks', {})), '',
      '### Test accuracy (%), mean ± std over seeds, each method tuned at each ε; time per step',
      '',
      '| method | ' + ' | '.join(f'ε = {e:g}' for e in epsilons) + ' | seeds | '
      'time / step (x our non-private) |',
      '|---|' + '---|' * len(epsilons) + '---:|---:|',
  ]
  for m in methods:
    cells = []
    for eps in epsilons:
      e, a = entry(m, eps), accs(m, eps)
      cells.append(e['error'] if 'error' in e and not a else _pct(list(a.values())) if a
                   else 'not run')
    n = {len(accs(m, eps)) for eps in epsilons}
    t = (f'{ratio[m]:.2f}' if m in ratio else '-') + (
        f' (ghost {ratio[m + " (ghost)"]:.2f})' if m + ' (ghost)' in ratio else '')
    lines.append(f'| {_NAMES[m]} | ' + ' | '.join(cells) + f' | {"/".join(map(str, n))} | {t} |')
  lines += ['', '### Paired differences to our per-example clipping (method − dp_sgd_clip), '
            'points', '',
            'mean ± standard error over the common seeds (std of the differences; seeds where '
            'the method is higher); a positive number means the method is ahead of ours.', '',
            '| method | ' + ' | '.join(f'ε = {e:g}' for e in epsilons) + ' |',
            '|---|' + '---|' * len(epsilons)]
  for m in methods:
    if m == 'dp_sgd_clip':
      continue
    cells = []
    for eps in epsilons:
      a, b = accs(m, eps), accs('dp_sgd_clip', eps)
      common = sorted(set(a) & set(b))
      if not common:
        cells.append('-')
        continue
      p = paired([a[s] for s in common], [b[s] for s in common])
      cells.append(f'{100 * p["mean"]:+.1f} ± {100 * p["se"]:.1f} ({100 * p["std"]:.1f}; '
                   f'{p["wins"]}/{p["n"]})')
    lines.append(f'| {_NAMES[m]} | ' + ' | '.join(cells) + ' |')
  if results.get('cross'):
    lines += ['', '### The same point in other code (paired over seeds)', '',
              '`A at B\'s point`: method A trained at the point B\'s search chose, on the same '
              'seeds (initialisation, batches); the difference to B\'s own runs is what the code '
              'changes, the search left out. Cells: A\'s test accuracy (mean ± std); A − B, mean '
              '± standard error (seeds where A is higher).', '',
              '| A at B\'s point | ' + ' | '.join(f'ε = {e:g}' for e in epsilons) + ' |',
              '|---|' + '---|' * len(epsilons)]
    for pair, by_eps in results['cross'].items():
      a, b = pair.split('@')
      cells = []
      for eps in epsilons:
        e = by_eps.get(_eps_key(a, eps))
        other = accs(b, eps)
        if not e or not e['acc']:
          cells.append('-')
          continue
        mine = dict(zip(e['seeds'], e['acc']))
        common = sorted(set(mine) & set(other))
        cell = f'{_pct(list(mine.values()))} ({_cfg_text(e["point"])})'
        if common:
          p = paired([mine[s] for s in common], [other[s] for s in common])
          cell += f'; {100 * p["mean"]:+.1f} ± {100 * p["se"]:.1f} ({p["wins"]}/{p["n"]})'
        cells.append(cell)
      lines.append(f'| {a} at {b}\'s point | ' + ' | '.join(cells) + ' |')
  lines += ['', '### Chosen points (validation accuracy, mean over the search seeds), σ and ε '
            'spent', '',
            '| method | ' + ' | '.join(f'ε = {e:g}' for e in epsilons) + ' |',
            '|---|' + '---|' * len(epsilons)]
  for m in methods:
    cells = []
    for eps in epsilons:
      e = entry(m, eps)
      if 'search' not in e:
        cells.append('-')
        continue
      s, t = e['search'], e.get('test', {})
      extra = (f'; σ = {t["sigma"]:.2f}, ε spent {t["spent"]:.3f}' if 'spent' in t else '')
      cells.append(f'{_cfg_text(s["best"])} ({100 * s["score"]:.1f}{extra})')
    lines.append(f'| {_NAMES[m]} | ' + ' | '.join(cells) + ' |')
  if timing:
    med = {k: statistics.median(v) for k, v in timing['per_step_s'].items()}
    lines += ['', f'### Time per step, interleaved ({timing["rounds"]} rounds, one training run '
              f'of {timing["steps"]} steps per method per round, ε = {timing["epsilon"]:g})', '',
              f'Load average {timing["load_start"][0]:.1f} at the start, '
              f'{timing["load_end"][0]:.1f} at the end; PyTorch threads '
              f'{timing["torch_threads"]}; XLA_FLAGS `{timing.get("xla_flags") or "(none)"}`.',
              '',
              '| method | ms / step (median) | x our non-private step (median of per-round '
              'ratios) |', '|---|---:|---:|']
    for k in med:
      lines.append(f'| {k} | {1e3 * med[k]:.1f} | {ratio[k]:.2f} |')
  lines += ['', '### Search: initial grid, extensions, cost', '',
            '| method | ε | initial grid | edge extensions | runs | wall s | chosen | val acc |',
            '|---|---|---|---|---:|---:|---|---:|']
  detail = []
  for m in methods:
    for key, e in runs[m].items():
      if 'search' not in e:
        continue
      s = e['search']
      axes = '; '.join(f'{k} ∈ {{{", ".join(f"{v:.3g}" for v in vals)}}}'
                       for k, vals in s['axes'].items())
      edge = ' '.join(s['notes']) if s['notes'] else 'none'
      lines.append(f'| {m} | {key} | {axes} | {edge} | {len(s["records"])} | '
                   f'{s["wall_s"]:.0f} | {_cfg_text(s["best"])} | {s["score"]:.4f} |')
      detail.append(f'* {m}, ε = {key}: ' + '; '.join(f'({_cfg_text(p)}) {v:.3f}'
                                                      for p, v in s['records']))
  lines += ['', 'Every evaluated point (validation accuracy, mean over the search seeds):', '',
            *detail, '']
  return '\n'.join(lines)


def merge(paths: Sequence[str]) -> dict:
  """Merges result files of the same configuration (later files win per method and ε)."""
  merged: dict = {}
  for path in paths:
    with open(path, encoding='utf-8') as f:
      r = json.load(f)
    if merged and r['config'] != merged['config']:
      raise ValueError(f'{path}: configuration {r["config"]} differs from '
                       f'{merged["config"]}; results of different setups cannot be merged.')
    merged.setdefault('config', r['config'])
    merged.setdefault('versions', r.get('versions', {}))
    merged.setdefault('commands', []).extend(r.get('commands', []))
    runs = merged.setdefault('runs', {})
    for m, by_eps in r.get('runs', {}).items():
      for key, e in by_eps.items():
        if e.get('test', {}).get('acc') or key not in runs.get(m, {}):
          runs.setdefault(m, {})[key] = e
    for pair, by_eps in r.get('cross', {}).items():
      merged.setdefault('cross', {}).setdefault(pair, {}).update(by_eps)
    for k in ('checks', 'timing'):
      if r.get(k):
        merged[k] = r[k]
  return merged


def _json_file(path: str) -> str | None:
  """A check: an existing JSON file of results (with its ``config``)."""
  try:
    with open(path, encoding='utf-8') as f:
      stored = json.load(f)
  except OSError as e:
    return f'must be a readable results file ({e.strerror})'
  except ValueError:
    return 'must be a JSON results file (this one is not JSON)'
  if not isinstance(stored, dict) or not isinstance(stored.get('config'), dict):
    return 'must be a results file of this benchmark (no "config" in it)'
  return None


def _resume_file(path: str) -> str | None:
  """A check: a writable path; if the file exists, a results file to resume."""
  return cli.writable_file(path) or (_json_file(path) if os.path.exists(path) else None)


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  quick: bool = flag(False, 'tiny smoke run (128 images, 1 epoch, batch 32, one point per axis, '
                     'epsilon 3, RDP; about a minute); flags given explicitly win')
  epsilons: tuple[float, ...] = flag((1.0, 3.0, 8.0), 'target epsilons (delta = 1e-5)',
                                     check=cli.finite(positive=True))
  seeds: int = flag(10, 'test seeds per (method, epsilon)', check=cli.at_least(1))
  search_seeds: int = flag(2, 'seeds whose mean validation accuracy scores a grid point',
                           check=cli.at_least(1))
  epochs: float = flag(4.0, 'expected passes over the data', check=cli.finite(positive=True))
  batch_size: int = flag(500, 'expected batch size', check=cli.at_least(1))
  arch: str = flag('cnn', 'the model', choices=('cnn', 'mlp'))
  width: tuple[int, ...] = flag((), 'cnn: C1 C2 DENSE (default 4 8 32); mlp: hidden sizes '
                                '(default 32)', type=int, check=cli.at_least(1))
  methods: tuple[str, ...] = flag(TABLE_METHODS, 'the methods', choices=TABLE_METHODS)
  max_extensions: int = flag(2, 'grid extensions allowed per hyper-parameter and direction',
                             check=cli.at_least(0))
  chosen: str | None = flag(None, 'skip the search for these methods (at every epsilon), e.g. '
                            '\'{"dp_sgd_clip": {"lr_unit": 3.1623, "clip": 3.1623}}\'',
                            type=str, metavar='JSON')
  no_table: bool = flag(False, 'no search and test runs (with --checks / --timing)')
  checks: bool = flag(False, "the anchors' correctness checks (also run by a table run)")
  timing: bool = flag(False, 'time a training step of every method, interleaved')
  timing_rounds: int = flag(5, 'interleaved rounds of --timing', check=cli.at_least(1))
  cross: tuple[str, ...] = flag((), "train method A at method B's chosen points (every "
                                'epsilon, --seeds seeds): the same setting in other code',
                                metavar='A@B')
  points_from: tuple[str, ...] = flag((), 'result files whose chosen points --cross and '
                                      '--timing use (default: --json)', metavar='JSON',
                                      check=_json_file)
  torch_threads: int = flag(0, 'PyTorch intra-op threads (0: its default); for JAX set '
                            'XLA_FLAGS', check=cli.at_least(0))
  json: str | None = flag(None, 'raw results: updated as runs finish, reused by a rerun with '
                          'the same configuration', type=str, check=_resume_file,
                          metavar='FILE.JSON')
  combine: tuple[str, ...] = flag((), 'only write the report of these result files',
                                  metavar='JSON', check=_json_file)
  out: str | None = cli.output_flag('the Markdown report (default: a new file under '
                                    'runs/benchmarks/)')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    self.chosen_points()
    width = self.width or ((4, 8, 32) if self.arch == 'cnn' else (32,))
    if self.arch == 'cnn' and len(width) != 3:
      raise ValueError(f'--width: three ints (C1 C2 DENSE) for the cnn; got {len(width)}.')
    for pair in self.cross:
      if pair.count('@') != 1 or not set(pair.split('@')) <= set(TABLE_METHODS):
        raise ValueError(f'--cross: {pair!r} is not METHOD@METHOD with methods from '
                         f'{", ".join(TABLE_METHODS)}.')
    if self.no_table and not (self.checks or self.timing or self.cross):
      raise ValueError('--no-table leaves nothing to run without --checks, --timing or --cross.')
    if self.timing and 'sgd' not in self.methods:
      raise ValueError('--timing needs the sgd method (the reference step) in --methods.')

  def chosen_points(self) -> dict:
    """``--chosen`` as a dict; ``ValueError`` naming the flag if it is not valid."""
    if not self.chosen:
      return {}
    try:
      given = json.loads(self.chosen)
    except json.JSONDecodeError as e:
      raise ValueError(f'--chosen is not JSON: {e}') from None
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
      raise ValueError('--chosen must be a JSON object {"METHOD": {"AXIS": VALUE, ...}}.')
    bad = [m for m in given if m not in SEARCH or set(given[m]) != set(SEARCH[m])]
    if bad:
      raise ValueError(f'--chosen: {bad} need exactly the keys of their search axes: '
                       + '; '.join(f'{m}: {sorted(SEARCH[m])}' for m in bad if m in SEARCH))
    values = [v for point in given.values() for v in point.values()]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and v > 0 for v in values):
      raise ValueError('--chosen: every value must be a finite number > 0.')
    return given


QUICK = dict(epsilons=(3.0,), seeds=1, search_seeds=1, epochs=1.0, batch_size=32,
             timing_rounds=1)


def main(argv: Sequence[str] | None = None) -> str:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = cli.build_parser(Config, __doc__.split('\n')[0])
  args = cli.parse(Config, argv, parser=parser, quick=QUICK)
  # Opacus's hooks on a module whose input needs no gradient (the first layer) fire all the same.
  warnings.filterwarnings('ignore', message='Full backward hook is firing')
  if args.combine:
    merged = merge(args.combine)
    text = report(merged, merged.get('commands', []))
    print(text)
    cli.write_output(args.out, text, name='dp_ssgd')
    return text
  given = args.chosen_points()
  width = tuple(args.width or ((4, 8, 32) if args.arch == 'cnn' else (32,)))
  if args.arch != 'cnn':
    args = dataclasses.replace(args, methods=tuple(m for m in args.methods
                                                   if m not in OPACUS_METHODS))
  train_size, accountant, search = None, 'pld', SEARCH
  if args.quick:  # smoke test: tiny data, one point per axis (no tuning), fast RDP accounting
    # (epsilons, seeds, search seeds, epochs, batch size, timing rounds: QUICK, where not given.)
    train_size, accountant = 128, 'rdp'
    search = {m: {k: v[1:2] or v[:1] for k, v in axes.items()} for m, axes in SEARCH.items()}
  setup = TableSetup(args.arch, width, args.epochs, args.batch_size, accountant)
  n_train = len(_data(False, train_size)[0])
  config = dict(arch=args.arch, width=list(width), epochs=args.epochs,
                batch_size=args.batch_size, accountant=accountant,
                search_seeds=args.search_seeds, epsilons=list(args.epsilons), n_train=n_train,
                steps=_schedule(setup, n_train)[1], quick=args.quick,
                max_extensions=args.max_extensions, search={m: search[m] for m in search})
  if args.torch_threads > 0:
    try:
      import torch  # pylint: disable=import-outside-toplevel
      torch.set_num_threads(args.torch_threads)
    except ImportError:
      pass
  config = json.loads(json.dumps(config))  # as stored: lists, not tuples
  results = {}
  if args.json and os.path.exists(args.json):
    with open(args.json, encoding='utf-8') as f:
      results = json.load(f)
    if results['config'] != config:
      parser.error(f'--json {args.json} holds results of another configuration '
                   f'({results["config"]}); use a new file.')
  results.update(config=config, versions=_versions())
  results.setdefault('commands', []).append('python benchmarks/dp_ssgd.py ' + ' '.join(argv))
  if not args.no_table or args.checks:
    run_checks(setup, results, train_size)
    _save(args.json, results)
  if not args.no_table:
    run_table(args, setup, results, search, given, train_size)
  points = merge(args.points_from) if args.points_from else results
  if args.points_from and points['config'] != results['config']:
    parser.error('--points-from: those results have another configuration.')
  if args.cross:
    run_cross(args, setup, results, points, train_size)
  if args.timing:
    run_timing(args, setup, results, search, points, train_size)
  text = report(results, results['commands'])
  print(text)
  cli.write_output(args.out, text, name='dp_ssgd')
  return text


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
