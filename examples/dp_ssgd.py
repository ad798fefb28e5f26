# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""DP-SSGD on the embedded MNIST subset at target epsilon 1, 3 and 8.

    python examples/dp_ssgd.py                          # eps 1, 3, 8; ~8 min on 2 CPU cores
    python examples/dp_ssgd.py --epsilons 3 --epochs 2  # one target, ~1 min

Every example's gradient is unit-normalised (sensitivity 1, or sqrt(G) with
G groups), the sum gets Gaussian noise, and the update is divided by the
expected batch size (:func:`ssgd_optax.privacy.dp_ssgd`). Batches are
Poisson-sampled with rate ``q = expected_batch_size / N`` and padded to a
fixed size with a mask, so one compiled step serves every batch; the noise
multiplier is calibrated for the target (epsilon, delta) with the PLD
accountant of :mod:`ssgd_optax.privacy`, and the spent budget is tracked.

Prints one line per target: test accuracy, the epsilon actually spent, the
noise multiplier and the number of steps. The noise and sampling keys come
from the operating system's CSPRNG (``secrets``) unless
``--reproducible-noise`` derives them from ``--seed``, which voids the
guarantee; ``--seed`` always sets the split and the initialisation.
"""

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

# The harness first: Ctrl-C during the imports below also ends in one line (exit 130).
from ssgd_examples import cli

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
TRAIN_IMAGES = 4000  # the embedded MNIST subset's training split
flag = cli.flag


def loss_fn(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Summed cross-entropy (per-example gradients need a sum, not a mean)."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).sum()


@nnx.jit(static_argnames=('sampling_rate', 'max_batch_size', 'microbatch_size'))
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, key: jax.Array,
               x_train: jax.Array, y_train: jax.Array, *, sampling_rate: float,
               max_batch_size: int, microbatch_size: int | None = None) -> jax.Array:
  """Samples a Poisson batch, computes per-example gradients, applies the update.

  The whole training set lives on the device; the batch is a fixed-size
  gather with a mask, so the step compiles once. Returns the batch size.
  """
  idx, mask = privacy.poisson_sample(key, x_train.shape[0], sampling_rate, max_batch_size)
  x, y = x_train[idx], y_train[idx]
  grads = per_example.nnx_per_example_grads(loss_fn, model, x, y, mask=mask,
                                            microbatch_size=microbatch_size)
  optimizer.update(model, grads, mask=mask)
  return mask.sum()


@nnx.jit
def accuracy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(model(x), -1) == y)


# An aggregator factory: (noise_multiplier, key, expected_batch_size) -> an
# optax transform taking per-example gradients and a `mask=` extra argument.
AggregatorFactory = Callable[[float, jax.Array, float], optax.GradientTransformationExtraArgs]


def dp_ssgd_aggregator(scope: str = 'global', stability: float = 0.0) -> AggregatorFactory:
  """The DP-SSGD aggregator: per-example unit norm + Gaussian noise."""
  def make(noise_multiplier, key, expected_batch_size):
    return privacy.dp_unit_normalize(noise_multiplier, expected_batch_size=expected_batch_size,
                                         key=key, scope=scope, stability=stability)
  return make


class Result(NamedTuple):
  """Outcome of one private training run."""
  accuracy: float
  epsilon: float
  noise_multiplier: float
  steps: int
  seconds_per_step: float


def train(*, target_epsilon: float, delta: float = DELTA, epochs: int = 15,
          expected_batch_size: int = 250, learning_rate: float = 0.5, momentum: float = 0.9,
          scope: str = 'global', stability: float = 0.0, hidden: Sequence[int] = (64,),
          seed: int = 0, microbatch_size: int | None = None, train_size: int | None = None,
          aggregator: AggregatorFactory | None = None, noise_multiplier: float | None = None,
          accountant: str = 'pld', verbose: bool = True,
          noise_seed: int | None = None) -> Result:
  """Trains an MLP with a DP aggregator at ``target_epsilon`` on the MNIST subset.

  Args:
    target_epsilon: the epsilon to reach after ``epochs`` (at ``delta``).
    delta: the target delta.
    epochs: passes over the data in expectation; ``steps = epochs / q``.
    expected_batch_size: ``q * N``.
    learning_rate: peak learning rate (cosine decay to 0).
    momentum: heavy-ball momentum after the private aggregate.
    scope, stability: DP-SSGD's normalisation (ignored with ``aggregator``).
    hidden: hidden widths of the MLP.
    seed: seeds the subset and the initialisation.
    microbatch_size: examples per vmap in the per-example gradients.
    train_size: use only the first ``train_size`` training images (tests).
    aggregator: a factory of the private aggregate (default DP-SSGD).
    noise_multiplier: skip calibration and use this sigma (the reported
      epsilon is still computed; the budget tracker stops the run if it is
      too small for ``target_epsilon``).
    accountant: ``"pld"`` (tightest) or ``"rdp"`` (fast).
    verbose: print progress.
    noise_seed: seed of the noise and Poisson-sampling keys. ``None`` (the
      default) draws it from the operating system (:func:`ssgd_optax.privacy.os_seed`);
      a known value voids the privacy guarantee (use it only to reproduce a run).

  Returns:
    A :class:`Result`.
  """
  ds = load_dataset('mnist_subset', seed=seed)
  x_train, y_train = ds.normalize(ds.x_train), ds.y_train
  if train_size is not None:  # a random subset (the stored order is by class)
    keep = np.random.default_rng(seed).permutation(len(x_train))[:train_size]
    x_train, y_train = x_train[keep], y_train[keep]
  x_test, y_test = ds.normalize(ds.x_test), ds.y_test
  n = len(x_train)
  q = expected_batch_size / n
  steps = max(1, int(round(epochs / q)))
  if noise_multiplier is None:
    noise_multiplier = privacy.calibrate_noise_multiplier(
        target_epsilon, sampling_rate=q, steps=steps, delta=delta, accountant=accountant)
  aggregator = aggregator or dp_ssgd_aggregator(scope, stability)
  key_init = jax.random.split(jax.random.key(seed), 3)[0]
  # The guarantee assumes noise nobody can regenerate: a secret seed.
  secret = privacy.os_seed() if noise_seed is None else noise_seed
  _, key_noise, key_sample = jax.random.split(jax.random.key(secret), 3)
  model = models.MLP(ds.image_shape, ds.num_classes, hidden=tuple(hidden),
                     rngs=nnx.Rngs(params=key_init))
  tx = optax.chain(aggregator(noise_multiplier, key_noise, expected_batch_size),
                   optax.trace(decay=momentum),
                   optax.scale_by_learning_rate(optax.cosine_decay_schedule(learning_rate, steps)))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  # Raises BudgetExhaustedError rather than release a step over budget.
  tracker = privacy.BudgetTracker(target_epsilon, delta, noise_multiplier=noise_multiplier,
                                  sampling_rate=q, accountant=accountant)
  # Padding large enough that no step of the run overflows except with
  # probability 1e-12 (see ssgd_optax.privacy.sampling).
  padded = privacy.max_batch_size_for(n, q, steps=steps)
  x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
  sample_keys = jax.random.split(key_sample, steps)
  start, timed_steps = 0.0, 0
  for t in cli.progress(range(steps), desc=f'eps {target_epsilon:g}', quiet=not verbose):
    tracker.step()
    train_step(model, optimizer, sample_keys[t], x_dev, y_dev, sampling_rate=q,
               max_batch_size=padded, microbatch_size=microbatch_size)
    if t == 0:  # leave compilation out of the step time
      jax.block_until_ready(nnx.state(model))
      start = time.perf_counter()
    else:
      timed_steps += 1
    if verbose and (t + 1) % max(1, steps // 3) == 0:
      print(f'  step {t + 1}/{steps}  test accuracy {float(accuracy(model, x_test, y_test)):.4f}',
            flush=True)
  jax.block_until_ready(nnx.state(model))
  per_step = (time.perf_counter() - start) / max(1, timed_steps)
  acc = float(accuracy(model, x_test, y_test))
  return Result(acc, float(tracker.spent()), float(noise_multiplier), steps, per_step)


@dataclasses.dataclass(frozen=True)
class Config:
  """The example's settings; each field is a flag (``batch_size`` -> ``--batch-size``)."""
  epsilons: tuple[float, ...] = flag((1.0, 3.0, 8.0), 'target epsilons',
                                     check=cli.finite(positive=True))
  delta: float = flag(DELTA, 'target delta', check=cli.in_range(0, 1, lo_open=True,
                                                                   hi_open=True))
  epochs: float = flag(15.0, 'expected passes over the data', check=cli.finite(positive=True))
  batch_size: int = flag(250, 'expected Poisson batch size (q * N)', check=cli.at_least(1))
  learning_rate: float = flag(0.5, 'peak learning rate (cosine decay)',
                              check=cli.finite(positive=True))
  momentum: float = flag(0.9, 'heavy-ball momentum', check=cli.in_range(0, 1, hi_open=True))
  scope: str = flag('global', 'normalisation scope', choices=('global', 'per_layer', 'per_leaf'))
  stability: float = flag(0.0, 'stability constant of the normalisation',
                          check=cli.finite(nonnegative=True))
  hidden: tuple[int, ...] = flag((64,), 'hidden widths of the MLP', check=cli.at_least(1))
  microbatch_size: int | None = flag(None, 'examples per vmap in the per-example gradients',
                                     type=int, check=cli.at_least(1))
  train_size: int | None = flag(None, 'use only this many training images (smoke tests)',
                                type=int, check=cli.in_range(1, TRAIN_IMAGES))
  accountant: str = flag('pld', 'accountant for calibration and tracking', choices=('pld', 'rdp'))
  seed: int = flag(0, 'split and initialisation seed (not the noise: see --reproducible-noise)',
                   check=cli.at_least(0))
  reproducible_noise: bool = flag(
      False, 'derive the noise and sampling keys from --seed so that runs repeat exactly. '
      'VOIDS THE PRIVACY GUARANTEE: whoever knows the seed can regenerate the noise')
  quiet: bool = flag(False, 'no progress bar and no intermediate accuracies')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    n = self.train_size or TRAIN_IMAGES
    if self.batch_size > n:
      raise ValueError(f'--batch-size {self.batch_size} exceeds the {n} training images'
                       + (' (--train-size)' if self.train_size else '') + '.')


def parse_args(argv: Sequence[str] | None) -> Config:
  """The validated :class:`Config`; exits with status 2 on a bad flag."""
  return cli.parse(Config, argv, description=__doc__)


def main(argv: Sequence[str] | None = None) -> list[Result]:
  """Runs one private training per target epsilon and prints a table."""
  args = parse_args(argv)
  print(f'DP-SSGD (scope={args.scope}, stability={args.stability}) on the MNIST subset, '
        f'delta={args.delta:g}, expected batch {args.batch_size}, {args.epochs:g} epochs')
  if args.reproducible_noise:
    print(f'noise and sampling keys: derived from --seed {args.seed} (--reproducible-noise): '
          'NO privacy guarantee, anyone who knows the seed can remove the noise')
  else:
    print('noise and sampling keys: drawn from the operating system (secrets), secret')
  results = []
  for eps in args.epsilons:
    res = train(target_epsilon=eps, delta=args.delta, epochs=args.epochs,
                expected_batch_size=args.batch_size, learning_rate=args.learning_rate,
                momentum=args.momentum, scope=args.scope, stability=args.stability,
                hidden=args.hidden, seed=args.seed, microbatch_size=args.microbatch_size,
                train_size=args.train_size, accountant=args.accountant,
                verbose=not args.quiet,
                noise_seed=args.seed if args.reproducible_noise else None)
    print(f'target eps {eps:g}: test accuracy {res.accuracy:.4f}, spent eps {res.epsilon:.3f}, '
          f'noise multiplier {res.noise_multiplier:.3f}, {res.steps} steps', flush=True)
    results.append(res)
  return results


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
