# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""One DP table on one model: DP-SSGD vs tuned clipping at the same (eps, delta).

Every method trains the same model (default: ``ssgd_examples.models.CNN`` with
channels (4, 8) and a dense layer of 32, ReLU, biases; ``--arch mlp`` for the
MLP) on the embedded MNIST subset (4,000 train / 1,000 test images), with the
same Poisson sampling (expected batch ``--batch-size``, padded and masked), the
same number of steps, SGD with momentum 0.9 and a cosine learning-rate decay
after the private aggregate, and a noise multiplier calibrated for the target
(epsilon, delta = 1e-5) with the PLD accountant of :mod:`ssgd_optax.privacy`:

* ``sgd``: non-private (masked mean gradient), for reference.
* ``dp_sgd_clip``: per-example gradients clipped to global norm ``C``
  (:func:`ssgd_optax.privacy.dpsgd_grad_sum`), noise ``sigma C``.
* ``dp_ssgd`` / ``dp_ssgd_per_layer``: every example's gradient
  unit-normalised, globally (sensitivity 1) or per layer (sqrt(G)), Gaussian
  noise (:func:`ssgd_optax.privacy.dp_unit_normalize`).
* ``dp_ssgd_auto_s`` / ``dp_ssgd_auto_s_per_layer``: the same with the AUTO-S
  stability constant, ``g / (||g|| + gamma)`` (``stability=gamma``).
* ``backprop_clip``: every layer clipped (inputs to ``C_in``, output
  cotangents to ``C_out``, :func:`ssgd_optax.privacy.clip_layers`), one
  batched gradient, noise per tensor; ``L`` = number of parameter tensors
  releases per step, accounted as such.

One release per step for the others. Every method's hyper-parameters are
chosen by the same search (:func:`grid_search` over :data:`SEARCH`): the
cross product of half-decade log grids (learning rate; ``C``; ``gamma``;
``C_in, C_out``), evaluated on a validation split (20 % of the training set,
seed 0) at epsilon 3 with seed 0, and extended past any edge the best point
lands on. The chosen point is then trained on the full training set for every
(epsilon, seed) and evaluated on the test set (mean +- std over seeds). Each
training run is one jitted ``lax.scan`` with the hyper-parameters traced, so
a method compiles once per data split.

  python benchmarks/dp_ssgd.py --out benchmarks/results/dp_ssgd.md
  python benchmarks/dp_ssgd.py --quick            # seconds; smoke test
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import math
import os
import statistics
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in examples/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import models
from ssgd_optax import per_example
from ssgd_optax import privacy
from ssgd_examples.data import load_dataset
DELTA = 1e-5
TUNE_EPSILON = 3.0


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
TABLE_METHODS = ('dp_sgd_clip', 'dp_ssgd', 'dp_ssgd_auto_s', 'sgd', 'dp_ssgd_per_layer',
                 'dp_ssgd_auto_s_per_layer', 'backprop_clip')
_HALF_DECADE = math.sqrt(10.0)


def _log_grid(lo_exp2: int, hi_exp2: int) -> tuple[float, ...]:
  """``10 ** (k / 2)`` for ``k`` in ``[lo_exp2, hi_exp2]``: a half-decade log grid."""
  return tuple(10.0 ** (k / 2) for k in range(lo_exp2, hi_exp2 + 1))


# The search: a log-spaced grid per hyper-parameter, the same rule for every
# method. For clipping the learning rate is given per unit of bound
# (lr = lr_unit / C, resp. lr_unit / (C_in C_out)), so that lr_unit is on the
# scale of DP-SSGD's lr (the summed update is bounded by the same factor).
SEARCH = {
    'sgd': dict(lr=_log_grid(-3, 0)),
    'dp_sgd_clip': dict(lr_unit=_log_grid(-1, 2), clip=_log_grid(-2, 1)),
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
  if method == 'dp_sgd_clip':
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


@functools.lru_cache(maxsize=None)
def _compiled(method: str, setup: TableSetup, n: int, image_shape, num_classes: int,
              bounds: tuple = ()):
  """``(train, steps, q, releases)``; ``train(params, key, x, y, x_eval, y_eval, lr, clip,
  gamma, sigma) -> accuracy`` is one jitted training loop (``lax.scan``).

  The learning rate, clip norm, stability constant and noise multiplier are
  traced, so one compilation serves a method's whole search (backprop
  clipping's layer bounds set its sensitivities and stay static: one
  compilation per ``(C_in, C_out)``).
  """
  q = setup.expected_batch_size / n
  steps = max(1, int(round(setup.epochs / q)))
  padded = privacy.max_batch_size_for(n, q, steps=steps)
  ebs = setup.expected_batch_size
  scope = 'per_layer' if method.endswith('per_layer') else 'global'
  is_ssgd = method.startswith('dp_ssgd')
  graphdef, template, releases = _fresh_params(method, setup, image_shape, num_classes, bounds,
                                               0)
  sens = None
  if method == 'backprop_clip':
    sens = privacy.sensitivities(nnx.merge(graphdef, template))

  def train(params, key, x, y, x_eval, y_eval, lr, clip, gamma, sigma):
    k_noise, k_sample = jax.random.split(key)
    if is_ssgd:
      agg = privacy.dp_unit_normalize(sigma, expected_batch_size=ebs, key=k_noise, scope=scope,
                                      stability=gamma)
    elif method == 'dp_sgd_clip':
      agg = privacy.add_gaussian_noise(sigma, clip, ebs, key=k_noise)
    elif method == 'backprop_clip':
      agg = privacy.add_gaussian_noise(sigma, sens, ebs, key=k_noise)
    else:
      agg = optax.scale(1.0 / ebs)
    tx = optax.chain(agg, optax.trace(decay=0.9),
                     optax.scale_by_learning_rate(optax.cosine_decay_schedule(lr, steps)))

    def body(carry, k):
      params, opt_state = carry
      idx, mask = privacy.poisson_sample(k, n, q, padded)
      m = nnx.merge(graphdef, params)
      xb, yb = x[idx], y[idx]
      if is_ssgd:
        grads = per_example.nnx_per_example_grads(summed_loss, m, xb, yb, mask=mask)
        updates, opt_state = tx.update(grads, opt_state, params, mask=mask)
      else:
        if method == 'dp_sgd_clip':
          grads = privacy.dpsgd_grad_sum(per_example_loss, m, xb, yb, clip_norm=clip,
                                           mask=mask)[1]
        else:
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


def train_once(method: str, point: dict, *, epsilon: float, seed: int, data,
               setup: TableSetup) -> tuple[float, float, int]:
  """Trains one model; returns (accuracy on data's eval part, sigma, steps)."""
  x, y, x_eval, y_eval, image_shape, num_classes = data
  bounds = _bounds(method, point)
  fn, steps, q, releases = _compiled(method, setup, len(x), image_shape, num_classes, bounds)
  sigma = 0.0 if method == 'sgd' else noise_for(epsilon, q, steps, releases, setup.accountant)
  _, params, _ = _fresh_params(method, setup, image_shape, num_classes, bounds, seed)
  hp = _hyper(method, point)
  key = jax.random.fold_in(jax.random.key(seed), 1)
  acc = fn(params, key, x, y, x_eval, y_eval, hp['lr'], hp['clip'], hp['gamma'], sigma)
  return float(acc), sigma, steps


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


def opacus_check(data, setup: TableSetup, num_classes: int | None = None,
                 examples: int = 16) -> dict[str, float]:
  """Opacus's per-sample gradients against ``torch.func`` on our CNN and data.

  Relative error ``||G_opacus - G_func|| / ||G_func||`` per parameter for the
  first ``examples`` training images at seed 0's initialisation
  (``GradSampleModule``, summed loss), and, under
  ``'(torch.func sum vs batched gradient)'``, the largest relative error of
  the reference's sum against torch's batched gradient. An anchor whose
  per-sample gradients are wrong is reported as such instead of as Opacus's
  accuracy.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from opacus import GradSampleModule  # pylint: disable=import-outside-toplevel
  from torch.func import functional_call, grad, vmap  # pylint: disable=import-outside-toplevel
  x, y, _, _, image_shape, classes = data
  _, params, _ = _fresh_params('dp_sgd_clip', setup, image_shape, num_classes or classes, (), 0)
  net = _torch_cnn(params, setup.width, image_shape, num_classes or classes)
  xt = torch.tensor(np.asarray(x)[:examples]).permute(0, 3, 1, 2).contiguous()
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
  return errors | {'(torch.func sum vs batched gradient)': batched}


def opacus_accuracy(point: dict, *, epsilon: float, seed: int, data, setup: TableSetup,
                    ghost: bool) -> float:
  """Opacus DP-SGD (hooks, or ghost clipping) on our model, init, batches and sigma.

  The external anchor: the same CNN initialised with the same parameters,
  the very Poisson batches our ``dp_sgd_clip`` run draws (same keys), the
  same noise multiplier, clip norm, learning rate, momentum and cosine decay;
  only the per-example clipping and the noise are Opacus'.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from opacus import GradSampleModule  # pylint: disable=import-outside-toplevel
  from opacus.optimizers import DPOptimizer  # pylint: disable=import-outside-toplevel
  if setup.arch != 'cnn':
    raise ValueError('--opacus needs --arch cnn')
  x, y, x_eval, y_eval, image_shape, num_classes = data
  n = len(x)
  _, steps, q, _ = _compiled('dp_sgd_clip', setup, n, image_shape, num_classes)
  padded = privacy.max_batch_size_for(n, q, steps=steps)
  sigma = noise_for(epsilon, q, steps, 1, setup.accountant)
  hp = _hyper('dp_sgd_clip', point)
  _, params, _ = _fresh_params('dp_sgd_clip', setup, image_shape, num_classes, (), seed)
  torch.manual_seed(seed)
  net = _torch_cnn(params, setup.width, image_shape, num_classes)
  _, k_sample = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1))
  sample = jax.jit(lambda k: privacy.poisson_sample(k, n, q, padded))
  xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
  yt = torch.tensor(np.asarray(y), dtype=torch.long)
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
  for k in jax.random.split(k_sample, steps):
    idx, mask = sample(k)
    rows = torch.tensor(np.asarray(idx)[np.asarray(mask).astype(bool)], dtype=torch.long)
    opt.zero_grad()
    loss = loss_fn(model(xt[rows]), yt[rows])
    loss.backward()
    opt.step()
    sched.step()
  with torch.no_grad():
    logits = net(torch.tensor(np.asarray(x_eval)).permute(0, 3, 1, 2).contiguous())
  return float((logits.argmax(-1).numpy() == np.asarray(y_eval)).mean())


def _device_data(validation: bool, train_size: int | None):
  x, y, xe, ye, shape, classes = _data(validation, train_size)
  return (jnp.asarray(x), jnp.asarray(y), jnp.asarray(xe), jnp.asarray(ye), tuple(shape),
          classes)


def _spent(method: str, epsilon: float, setup: TableSetup, data) -> float:
  """The epsilon spent by one run (checked <= target by the accountant's tracker)."""
  x, _, _, _, image_shape, num_classes = data
  point = {k: v[0] for k, v in SEARCH[method].items()}
  _, steps, q, releases = _compiled(method, setup, len(x), image_shape, num_classes,
                                    _bounds(method, point))
  sigma = noise_for(epsilon, q, steps, releases, setup.accountant)
  tracker = privacy.BudgetTracker(epsilon, DELTA, noise_multiplier=sigma, sampling_rate=q,
                                  num_releases=releases, accountant=setup.accountant)
  for _ in range(steps):
    tracker.step()
  return tracker.spent()


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny smoke run (seconds)')
  parser.add_argument('--epsilons', type=float, nargs='+', default=[1.0, 3.0, 8.0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--epochs', type=float, default=4.0)
  parser.add_argument('--batch-size', type=int, default=500, help='expected batch size')
  parser.add_argument('--arch', choices=('cnn', 'mlp'), default='cnn')
  parser.add_argument('--width', type=int, nargs='+', default=None,
                      help='cnn: C1 C2 DENSE (default 4 8 32); mlp: hidden sizes (default 32)')
  parser.add_argument('--methods', nargs='+', choices=TABLE_METHODS, default=list(TABLE_METHODS))
  parser.add_argument('--max-extensions', type=int, default=2,
                      help='grid extensions allowed per hyper-parameter and direction')
  parser.add_argument('--opacus', action='store_true',
                      help="also Opacus (hooks, ghost clipping) at dp_sgd_clip's chosen setting")
  parser.add_argument('--opacus-setting', type=float, nargs=2, default=None,
                      metavar=('LR_UNIT', 'CLIP'),
                      help='only the Opacus rows, at this dp_sgd_clip setting (no tuning)')
  parser.add_argument('--chosen', default=None, metavar='JSON',
                      help='skip the search for these methods, e.g. '
                           '\'{"dp_sgd_clip": {"lr_unit": 3.1623, "clip": 3.1623}}\' '
                           '(to rerun a published setting with more seeds)')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  given = {}
  if args.chosen:
    import json  # pylint: disable=import-outside-toplevel
    try:
      given = json.loads(args.chosen)
    except json.JSONDecodeError as e:
      parser.error(f'--chosen is not JSON: {e}')
    bad = [m for m in given if m not in SEARCH or set(given[m]) != set(SEARCH[m])]
    if bad:
      parser.error(f'--chosen: {bad} need exactly the keys of their search axes: '
                   + '; '.join(f'{m}: {sorted(SEARCH[m])}' for m in bad if m in SEARCH))
  if args.opacus_setting:
    args.methods = []
  if args.seeds < 1 or args.epochs <= 0 or args.batch_size < 1 or args.max_extensions < 0:
    parser.error('--seeds, --epochs and --batch-size must be positive, --max-extensions >= 0')
  width = tuple(args.width or ((4, 8, 32) if args.arch == 'cnn' else (32,)))
  if args.arch == 'cnn' and len(width) != 3 or min(width) < 1:
    parser.error('--width: three positive ints (C1 C2 DENSE) for the cnn, positive for the mlp')
  train_size, accountant, search = None, 'pld', SEARCH
  if args.quick:  # smoke test: tiny data, one point per axis (no tuning), fast RDP accounting
    args.epsilons, args.seeds, args.epochs, args.batch_size = [3.0], 1, 1.0, 32
    train_size, accountant = 128, 'rdp'
    search = {m: {k: v[1:2] or v[:1] for k, v in axes.items()} for m, axes in SEARCH.items()}
  setup = TableSetup(args.arch, width, args.epochs, args.batch_size, accountant)
  started = time.time()

  def report(final: bool) -> str:
    n_train = len(test[0])
    q = args.batch_size / n_train
    steps = max(1, int(round(args.epochs / q)))
    _, _, _, releases = _compiled('backprop_clip', setup, n_train, test[4], test[5],
                                  _bounds('backprop_clip', chosen.get(
                                      'backprop_clip', dict(c_in=1.0, c_out=1.0))))
    arch = (f'CNN conv3x3({width[0]})-ReLU-avgpool2-conv3x3({width[1]})-ReLU-avgpool2-'
            f'dense({width[2]})-ReLU-dense(10), biases' if args.arch == 'cnn' else
            f'MLP 784-{"-".join(map(str, width))}-10 (ReLU, biases)')
    n_params = sum(v.size for v in jax.tree.leaves(
        _fresh_params('sgd', setup, test[4], test[5], (), 0)[1]))
    base = time_rows.get('dp_ssgd', next(iter(time_rows.values()), 1.0))
    lines = [
        '## One DP table on one model: DP-SSGD vs tuned clipping (MNIST subset)',
        '',
        f'Date: {datetime.date.today().isoformat()}; {os.cpu_count()} CPU cores, load average '
        f'{os.getloadavg()[0]:.1f} at the end; wall time {time.time() - started:.0f} s'
        + ('.' if final else ' so far (partial: methods still to run).'),
        f'Command: `python benchmarks/dp_ssgd.py {" ".join(argv or [])}`',
        '',
        f'{arch} ({n_params} parameters); {n_train} training images, Poisson sampling '
        f'q = {q:.4f} (expected batch {args.batch_size}), {steps} steps ({args.epochs:g} '
        f'epochs), SGD momentum 0.9 + cosine decay, delta = {DELTA:g}, {accountant.upper()} '
        f'accountant; backprop clipping accounted with L = {releases} releases per step.',
        '',
        f'### Test accuracy (%), mean ± std over {args.seeds} seed(s); noise multiplier σ, '
        'ε spent',
        '',
        '| method | ' + ' | '.join(f'ε = {e:g}' for e in args.epsilons) + ' |',
        '|---|' + '---|' * len(args.epsilons),
        *acc_rows,
        '',
        *[line + '\n' for line in check_rows],
        f'### Search (validation split, ε = {TUNE_EPSILON:g}, seed 0): initial grid, extensions, '
        'cost',
        '',
        '| method | initial grid | edge extensions | runs | wall s | chosen | val acc |',
        '|---|---|---|---:|---:|---|---:|',
        *tune_rows,
        '',
        'Every evaluated point (validation accuracy):',
        '',
        *detail,
        '',
        '### Step time (median over the test runs after the first, which compiles; '
        'includes the loop)',
        '',
        '| method | ms / step | ratio to dp_ssgd |',
        '|---|---:|---:|',
        *[f'| {m} | {1e3 * t:.1f} | {t / base:.2f} |' for m, t in time_rows.items()],
        '',
    ]
    text = '\n'.join(lines)
    if final:
      print(text)
    if args.out:
      with open(args.out, 'w', encoding='utf-8') as f:
        f.write(text)
    return text

  def opacus_rows(point):
    try:
      errors = opacus_check(test, setup)
      worst = max(errors, key=errors.get)
      print(f'[check] Opacus per-sample gradients vs torch.func: {errors}', file=sys.stderr,
            flush=True)
      if errors[worst] > 1e-3:
        check_rows.append(
            f'Opacus check: **per-sample gradients differ from torch.func** on the first 16 '
            f'training images (relative error {errors[worst]:.3g} for `{worst}`; all: '
            + ', '.join(f'{k} {v:.2g}' for k, v in errors.items())
            + '). The Opacus rows above train with those gradients (hooks) or clip with '
              'per-sample norms that are off for the same layer (ghost clipping): not a valid '
              'anchor here.')
      else:
        check_rows.append(f'Opacus check: per-sample gradients equal torch.func\'s to '
                          f'{errors[worst]:.1g} (largest relative error, `{worst}`).')
    except Exception as e:  # pylint: disable=broad-except
      check_rows.append(f'Opacus check not run ({type(e).__name__}: {str(e)[:80]}).')
    for ghost in (False, True):
      name = f'opacus {"ghost clipping" if ghost else "hooks"} (dp_sgd_clip setting)'
      cells = []
      try:
        for eps in args.epsilons:
          accs = [opacus_accuracy(point, epsilon=eps, seed=seed, data=test, setup=setup,
                                  ghost=ghost) for seed in range(args.seeds)]
          print(f'[test] eps {eps:g} {name}: {accs}', file=sys.stderr, flush=True)
          std = statistics.stdev(accs) if len(accs) > 1 else 0.0
          cells.append(f'{100 * statistics.mean(accs):.1f} ± {100 * std:.1f}')
      except Exception as e:  # pylint: disable=broad-except
        # An anchor that cannot run (torch/opacus missing, an API change) is
        # reported in the table rather than losing the finished rows.
        cells = [f'not run ({type(e).__name__}: {str(e)[:80]})'] * len(args.epsilons)
      acc_rows.append(f'| {name} | ' + ' | '.join(cells) + ' |')
      report(False)

  # Per method: tune on the validation split (epsilon 3, seed 0), then test
  # accuracy per epsilon over seeds (so a partial run still reports whole rows).
  val = _device_data(True, train_size)
  test = _device_data(False, train_size)
  chosen, tune_rows, detail, acc_rows, time_rows = {}, [], [], [], {}
  check_rows: list[str] = []
  for method in args.methods:
    t0 = time.time()

    def evaluate(point, method=method):
      acc, _, _ = train_once(method, point, epsilon=TUNE_EPSILON, seed=0, data=val, setup=setup)
      print(f'[tune] {method} {_cfg_text(point)}: val acc {acc:.4f}', file=sys.stderr,
            flush=True)
      return acc

    if method in given:
      res = SearchResult(best=dict(given[method]), score=float("nan"), records=[],
                       notes=['not searched: setting given with --chosen'])
    else:
      res = grid_search(evaluate, search[method], max_extensions=args.max_extensions)
    chosen[method] = res.best
    axes = '; '.join(f'{k} ∈ {{{", ".join(f"{v:.3g}" for v in vals)}}}'
                     for k, vals in search[method].items())
    edge = ' '.join(res.notes) if res.notes else 'none'
    tune_rows.append(f'| {method} | {axes} | {edge} | {len(res.records)} | '
                     f'{time.time() - t0:.0f} | {_cfg_text(res.best)} | {res.score:.4f} |')
    detail.append(f'* {method}: ' + '; '.join(f'({_cfg_text(p)}) {s:.3f}'
                                              for p, s in res.records))
    print(tune_rows[-1], file=sys.stderr, flush=True)
    cells, per_run, plain = [], [], None
    for eps in args.epsilons:
      accs = []
      for seed in range(args.seeds):
        if plain is not None:  # non-private: the same runs whatever the target epsilon
          accs = plain
          break
        t1 = time.time()
        acc, sigma, steps = train_once(method, chosen[method], epsilon=eps, seed=seed,
                                       data=test, setup=setup)
        per_run.append((time.time() - t1) / steps)
        accs.append(acc)
        print(f'[test] eps {eps:g} {method} seed {seed}: {acc:.4f} (sigma {sigma:.3f})',
              file=sys.stderr, flush=True)
      plain = accs if method == 'sgd' else None
      std = statistics.stdev(accs) if len(accs) > 1 else 0.0
      spent = '' if method == 'sgd' else f', ε spent {_spent(method, eps, setup, test):.3f}'
      cells.append(f'{100 * statistics.mean(accs):.1f} ± {100 * std:.1f} '
                   f'(σ={sigma:.2f}{spent})' if method != 'sgd' else
                   f'{100 * statistics.mean(accs):.1f} ± {100 * std:.1f}')
    acc_rows.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    print(acc_rows[-1], f'[{time.time() - started:.0f} s]', file=sys.stderr, flush=True)
    # The first run of a method compiles; the rest time the compiled loop.
    time_rows[method] = statistics.median(per_run[1:] if len(per_run) > 1 else per_run)
    report(False)  # the file holds every finished method, in case the run is cut short
    if method == 'dp_sgd_clip' and args.opacus:
      opacus_rows(chosen[method])

  if args.opacus_setting:
    chosen['dp_sgd_clip'] = dict(lr_unit=args.opacus_setting[0], clip=args.opacus_setting[1])
    opacus_rows(chosen['dp_sgd_clip'])
  return report(True)


if __name__ == '__main__':
  main(sys.argv[1:])
