# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Differentially private MNIST: backprop clipping vs per-example DP-SGD.

For each target epsilon (default 0.5, 1, 3, 8 at delta = 1e-5) the noise
multiplier is calibrated with the PLD accountant for the planned number of
Poisson-sampled steps, a :class:`ssgd_optax.privacy.BudgetTracker` guards the
loop, and the script prints the test accuracy with the accounted epsilon (PLD,
cross-checked with RDP).

* ``bp``: backpropagation clipping (Stevens et al.) on the bias-free CNN of
  the paper: ``L = 4`` clipped layers, each a Gaussian release with
  sensitivity ``C_in * C_out`` on the same Poisson batch.
* ``dpsgd``: the same CNN, vmapped per-example gradients clipped to ``C``
  (one release per step).

Examples::

  python examples/dp_train.py                      # embedded 4,000-image subset
  python examples/dp_train.py --dataset mnist --data-dir ~/data/mnist
  python examples/dp_train.py --methods bp --epsilons 1 --epochs 2
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssgd_optax import data as data_lib
from ssgd_optax import privacy

METHODS = ('bp', 'dpsgd', 'nonprivate')


def per_example_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Cross-entropy of each example (never averaged: DP needs the sum)."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y)


def make_model(method: str, *, seed: int, input_bound: float, grad_bound: float,
               image_size: int = 28, channels: int = 1, num_classes: int = 10) -> nnx.Module:
  """The paper's bias-free CNN; its layers clipped for ``bp``."""
  model = privacy.StevensCNN(num_classes, in_channels=channels, image_size=image_size,
                             rngs=nnx.Rngs(seed))
  if method == 'bp':
    model = privacy.clip_layers(model, input_bound=input_bound, grad_bound=grad_bound)
  return model


def make_train_step(method: str, *, num_examples: int, sampling_rate: float,
                    max_batch_size: int, clip_norm: float):
  """A jitted step: Poisson-sample a padded batch, sum gradients, update."""

  @nnx.jit
  def train_step(model, optimizer, x_all, y_all, key):
    idx, mask = privacy.poisson_sample(key, num_examples, sampling_rate, max_batch_size)
    x, y = x_all[idx], y_all[idx]
    if method == 'dpsgd':
      loss, grads = privacy.dpsgd_grad_sum(per_example_loss, model, x, y, mask=mask,
                                           clip_norm=clip_norm)
    else:  # bp (clipped layers) and nonprivate share the masked sum.
      loss, grads = privacy.backprop_clip_grad_sum(per_example_loss, model, x, y, mask=mask)
    optimizer.update(model, grads)
    return loss

  return train_step


@nnx.jit
def _predict(model, x):
  return jnp.argmax(model(x), axis=-1)


def evaluate(model: nnx.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
  """Test accuracy."""
  correct = 0
  for i in range(0, len(x), batch):
    correct += int(jnp.sum(_predict(model, jnp.asarray(x[i:i + batch])) == y[i:i + batch]))
  return correct / len(x)


def train_and_evaluate(method: str, dataset: Any, *, target_epsilon: float | None,
                       delta: float = 1e-5, epochs: float = 10.0, batch_size: int = 256,
                       learning_rate: float = 1e-2, input_bound: float = 3.0,
                       grad_bound: float = 0.1, clip_norm: float = 1.0, seed: int = 0,
                       accountant: str = 'pld', verbose: bool = False) -> dict[str, Any]:
  """Trains one model and returns its accuracy and accounted privacy.

  Args:
    method: ``"bp"``, ``"dpsgd"`` or ``"nonprivate"``.
    dataset: an :class:`ssgd_optax.data.Dataset`.
    target_epsilon: epsilon budget (ignored for ``nonprivate``).
    delta: delta of the budget.
    epochs: expected passes over the data; steps = ``round(epochs / q)``.
    batch_size: expected Poisson batch ``q * N``.
    learning_rate: Adam's learning rate.
    input_bound: ``C_in`` (bp).
    grad_bound: ``C_out`` (bp), in units of the summed loss.
    clip_norm: ``C`` (dpsgd).
    seed: model initialisation, sampling and noise seed.
    accountant: ``"pld"`` or ``"rdp"`` for calibration and the tracker.
    verbose: print progress.

  Returns:
    A dict with ``accuracy``, ``epsilon`` (PLD), ``epsilon_rdp``, ``noise_multiplier``,
    ``steps``, ``num_releases``, ``seconds``.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}; got {method!r}.')
  x_train = dataset.normalize(dataset.x_train).astype(np.float32)
  x_test = dataset.normalize(dataset.x_test).astype(np.float32)
  n = len(x_train)
  q = batch_size / n
  steps = max(1, round(epochs / q))
  h, _, c = x_train.shape[1:]
  model = make_model(method, seed=seed, input_bound=input_bound, grad_bound=grad_bound,
                     image_size=h, channels=c, num_classes=dataset.num_classes)
  key_noise, key_sample = jax.random.split(jax.random.key(seed))
  private = method != 'nonprivate'
  num_releases = privacy.num_releases(model) if method == 'bp' else 1
  if private:
    z = privacy.calibrate_noise_multiplier(target_epsilon, sampling_rate=q, steps=steps,
                                           delta=delta, num_releases=num_releases,
                                           accountant=accountant)
    sens = privacy.sensitivities(model) if method == 'bp' else clip_norm
    noise = privacy.add_gaussian_noise(z, sens, q * n, key=key_noise)
    tracker = privacy.BudgetTracker(target_epsilon, delta, noise_multiplier=z,
                                    sampling_rate=q, num_releases=num_releases,
                                    accountant=accountant, on_exhausted='stop')
  else:
    z, tracker = 0.0, None
    noise = privacy.add_gaussian_noise(0.0, 1.0, q * n, key=key_noise)
  tx = optax.chain(noise, optax.adam(learning_rate))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  max_batch = privacy.max_batch_size_for(n, q, steps=steps)
  step_fn = make_train_step(method, num_examples=n, sampling_rate=q, max_batch_size=max_batch,
                            clip_norm=clip_norm)
  x_all, y_all = jnp.asarray(x_train), jnp.asarray(dataset.y_train)
  start = time.perf_counter()
  taken = 0
  for t in range(steps):
    if tracker is not None and not tracker.step():
      break  # Never release an update past the budget.
    loss = step_fn(model, optimizer, x_all, y_all, jax.random.fold_in(key_sample, t))
    taken += 1
    if verbose and (t + 1) % max(1, steps // 5) == 0:
      print(f'  step {t + 1}/{steps} loss/example {float(loss) / batch_size:.3f}', flush=True)
  jax.block_until_ready(nnx.state(model))
  seconds = time.perf_counter() - start
  acc = evaluate(model, x_test, np.asarray(dataset.y_test))
  kw = dict(noise_multiplier=z, sampling_rate=q, steps=taken, delta=delta,
            num_releases=num_releases)
  eps = privacy.compute_epsilon(accountant='pld', **kw) if private else math.inf
  eps_rdp = privacy.compute_epsilon(accountant='rdp', **kw) if private else math.inf
  return dict(method=method, target_epsilon=target_epsilon, accuracy=acc, epsilon=eps,
              epsilon_rdp=eps_rdp, noise_multiplier=z, steps=taken, num_releases=num_releases,
              seconds=seconds, max_batch_size=max_batch)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dataset', default='mnist_subset', choices=('mnist_subset', 'mnist'))
  p.add_argument('--data-dir', default=None, help='folder with the MNIST IDX files')
  p.add_argument('--methods', nargs='+', default=['bp', 'dpsgd'], choices=METHODS)
  p.add_argument('--epsilons', nargs='+', type=float, default=[0.5, 1.0, 3.0, 8.0])
  p.add_argument('--delta', type=float, default=1e-5)
  p.add_argument('--epochs', type=float, default=10.0)
  p.add_argument('--batch-size', type=int, default=256, help='expected Poisson batch')
  p.add_argument('--lr', type=float, default=1e-2)
  p.add_argument('--input-bound', type=float, default=3.0)
  p.add_argument('--grad-bound', type=float, default=0.1)
  p.add_argument('--clip-norm', type=float, default=1.0)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--accountant', default='pld', choices=privacy.ACCOUNTANTS)
  p.add_argument('--max-train', type=int, default=None,
                 help='use only the first N training images (smoke tests)')
  p.add_argument('--verbose', action='store_true')
  return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """CLI entry point; returns the result rows."""
  args = _parser().parse_args(argv)
  ds = data_lib.load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed)
  if args.max_train:
    ds = ds._replace(x_train=ds.x_train[:args.max_train], y_train=ds.y_train[:args.max_train],
                     x_test=ds.x_test[:args.max_train], y_test=ds.y_test[:args.max_train])
  print(f'{ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test images, expected batch '
        f'{args.batch_size}, {args.epochs:g} epochs, delta={args.delta:g}')
  print('| method | target eps | z per release | L | steps | accuracy | eps (PLD) | eps (RDP) |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|')
  rows = []
  for method in args.methods:
    targets = [None] if method == 'nonprivate' else args.epsilons
    for eps in targets:
      r = train_and_evaluate(method, ds, target_epsilon=eps, delta=args.delta,
                             epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.lr, input_bound=args.input_bound,
                             grad_bound=args.grad_bound, clip_norm=args.clip_norm,
                             seed=args.seed, accountant=args.accountant, verbose=args.verbose)
      rows.append(r)
      print(f"| {method} | {eps if eps is not None else '-'} | {r['noise_multiplier']:.3f} | "
            f"{r['num_releases']} | {r['steps']} | {r['accuracy']:.4f} | {r['epsilon']:.3f} | "
            f"{r['epsilon_rdp']:.3f} |", flush=True)
  return rows


if __name__ == '__main__':
  main(sys.argv[1:])
