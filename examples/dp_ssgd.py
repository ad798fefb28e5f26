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

Runs survive kills, as ``examples/train.py``'s do: each run writes to a fresh
``runs/dp_ssgd/<date-time>`` (or ``--workdir``) its ``config.json``, verified
checkpoints (model, optimizer, budget tracker; never the secret noise keys)
every ``--checkpoint-every`` steps and ``results.json``; ``--resume`` continues
it. With ``--ledger FILE`` every step is recorded in the data set's privacy
ledger before it is released, and ``--total-epsilon`` refuses a run that would
take the composed total of all runs on the data set over the limit::

    python examples/dp_ssgd.py --epsilons 3 --workdir runs/a --ledger mnist.ledger
    python examples/dp_ssgd.py --workdir runs/a --resume     # after a kill
"""

import dataclasses
import functools
import os
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

from ssgd_examples import checkpoints
from ssgd_examples import models
from ssgd_optax import per_example
from ssgd_optax import privacy
from ssgd_examples.data import load_dataset

DELTA = 1e-5
TRAIN_IMAGES = 4000  # the embedded MNIST subset's training split
RUNS_DIR = os.path.join('runs', 'dp_ssgd')
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
  """Outcome of one private training run (``completed=False``: stopped by
  ``stop_after_steps``, to be resumed)."""
  accuracy: float
  epsilon: float
  noise_multiplier: float
  steps: int
  seconds_per_step: float
  completed: bool = True


@functools.lru_cache(maxsize=4)
def training_data(seed: int, train_size: int | None = None) -> tuple[Any, ...]:
  """``(x_train, y_train, x_test, y_test, dataset)`` of the MNIST subset, raw (read-only).

  ``train_size`` keeps a random subset of that many training images (the
  stored order is by class). Cached: ``main`` fingerprints the data for the
  privacy ledger and ``train`` trains on it.
  """
  ds = load_dataset('mnist_subset', seed=seed)
  x_train, y_train = ds.x_train, ds.y_train
  if train_size is not None:
    keep = np.random.default_rng(seed).permutation(len(x_train))[:train_size]
    x_train, y_train = x_train[keep], y_train[keep]
  arrays = (x_train, y_train, ds.x_test, ds.y_test)
  for a in arrays:
    a.setflags(write=False)  # shared by every caller of the cache
  return (*arrays, ds)


def train(*, target_epsilon: float, delta: float = DELTA, epochs: int = 15,
          expected_batch_size: int = 250, learning_rate: float = 0.5, momentum: float = 0.9,
          scope: str = 'global', stability: float = 0.0, hidden: Sequence[int] = (64,),
          seed: int = 0, microbatch_size: int | None = None, train_size: int | None = None,
          aggregator: AggregatorFactory | None = None, noise_multiplier: float | None = None,
          accountant: str = 'pld', verbose: bool = True,
          noise_seed: int | None = None, checkpoint_dir: str | None = None,
          checkpoint_every: int | None = None, resume: bool = False,
          stop_after_steps: int | None = None, ledger: privacy.PrivacyLedger | None = None,
          total_epsilon: float | None = None, label: str = '') -> Result:
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
    checkpoint_dir: folder of this training's checkpoints (``None``: none).
    checkpoint_every: steps between checkpoints (default: one epoch).
    resume: continue from the newest intact checkpoint in ``checkpoint_dir``.
    stop_after_steps: stop after this step, as if preempted (the schedule and
      the plan still span ``epochs``).
    ledger: the data set's privacy ledger: every step is recorded before it is
      released.
    total_epsilon: with ``ledger``, the limit on the composed total of all runs.
    label: recorded with the ledger entry.

  Returns:
    A :class:`Result`.
  """
  x_train, y_train, x_test, y_test, ds = training_data(seed, train_size)
  x_train, x_test = ds.normalize(x_train), ds.normalize(x_test)
  n = len(x_train)
  q = expected_batch_size / n
  steps = max(1, int(round(epochs / q)))
  if noise_multiplier is None:
    noise_multiplier = privacy.calibrate_noise_multiplier(
        target_epsilon, sampling_rate=q, steps=steps, delta=delta, accountant=accountant)
  aggregator_is_default = aggregator is None
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
  # The mechanism the noise and the ledger both state (a custom aggregator
  # adds the same Gaussian event: noise_multiplier z, one release per step).
  mechanism = (privacy.dp_ssgd_mechanism(nnx.state(model, nnx.Param), noise_multiplier, scope)
               if aggregator_is_default else privacy.GaussianMechanism(noise_multiplier))
  # Raises BudgetExhaustedError rather than release a step over budget.
  tracker = privacy.BudgetTracker(target_epsilon, delta, mechanism=mechanism, sampling_rate=q,
                                  accountant=accountant)
  # Padding large enough that no step of the run overflows except with
  # probability 1e-12 (see ssgd_optax.privacy.truncation_delta).
  padded = privacy.max_batch_size_for(n, q, steps=steps)
  x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
  sample_keys = jax.random.split(key_sample, steps)
  every = checkpoint_every or max(1, round(1 / q))
  saved = checkpoints.DPCheckpoints(checkpoint_dir, keep_keys=noise_seed is not None, every=every)
  first = saved.restore(model, optimizer, tracker) if resume else 0
  last = min(steps, stop_after_steps or steps)
  if verbose and first:
    print(f'  resumed at step {first}/{steps} from {checkpoint_dir}', flush=True)
  entry = None
  if ledger is not None and first < last:
    # Refused here, before any step, if the ledger's total would be exceeded.
    entry = ledger.start_run(mechanism, sampling_rate=q, planned_steps=steps - first,
                             total_epsilon=total_epsilon, delta=delta, accountant=accountant,
                             label=label, steps_per_write=every)
  start, timed_steps, t = 0.0, 0, first
  try:
    for t in cli.progress(range(first, last), desc=f'eps {target_epsilon:g}', quiet=not verbose):
      if entry is not None:
        entry.reserve(t + 1 - first)  # written ahead: a kill never under-counts
      tracker.step()
      train_step(model, optimizer, sample_keys[t], x_dev, y_dev, sampling_rate=q,
                 max_batch_size=padded, microbatch_size=microbatch_size)
      checkpoints.fault_point('step')
      if t == first:  # leave compilation out of the step time
        jax.block_until_ready(nnx.state(model))
        start = time.perf_counter()
      else:
        timed_steps += 1
      saved.save(t + 1, model, optimizer, tracker, force=t + 1 == last)
      if verbose and (t + 1) % max(1, steps // 3) == 0:
        print(f'  step {t + 1}/{steps}  test accuracy '
              f'{float(accuracy(model, x_test, y_test)):.4f}', flush=True)
  except privacy.TotalBudgetExceededError:
    if tracker.steps > first:
      saved.save(tracker.steps, model, optimizer, tracker, force=True)  # keep what was done
    raise
  finally:
    saved.close()
  if entry is not None:
    entry.finish(tracker.steps - first)
  jax.block_until_ready(nnx.state(model))
  per_step = (time.perf_counter() - start) / max(1, timed_steps)
  acc = float(accuracy(model, x_test, y_test))
  return Result(acc, float(tracker.spent()), float(noise_multiplier), tracker.steps, per_step,
                completed=tracker.steps == steps)


@dataclasses.dataclass(frozen=True)
class Config(checkpoints.RunFlags):
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
  quiet: bool = flag(False, 'no progress bar and no intermediate accuracies',
                     resume_may_differ=True)
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    n = self.train_size or TRAIN_IMAGES
    if self.batch_size > n:
      raise ValueError(f'--batch-size {self.batch_size} exceeds the {n} training images'
                       + (' (--train-size)' if self.train_size else '') + '.')
    self.validate_run()


def _resume(config: Config, explicit: set[str]) -> Config:
  if config.resume and config.workdir != '':
    return checkpoints.merge_resume(config, explicit, runs_dir=RUNS_DIR)
  return config


def parse_args(argv: Sequence[str] | None) -> Config:
  """The validated :class:`Config`; exits with status 2 on a bad flag.

  With ``--resume`` the configuration is read from the run's ``config.json``
  and only the flags given explicitly are compared with it, before any data
  is read.
  """
  return cli.parse(Config, argv, description=__doc__, prepare=_resume)


def _plan(args: Config, workdir: str, n: int) -> list[tuple[Any, float, int]]:
  """``(mechanism, q, steps still to run)`` of each training not finished yet."""
  q = args.batch_size / n
  steps = max(1, int(round(args.epochs / q)))
  done = checkpoints.read_results(workdir)
  plan = []
  for eps in args.epsilons:
    if f'eps{eps:g}' in done:
      continue
    first = (checkpoints.latest_step(os.path.join(workdir, 'checkpoints', f'eps{eps:g}'))
             if args.resume and workdir else None) or 0
    z = privacy.calibrate_noise_multiplier(eps, sampling_rate=q, steps=steps, delta=args.delta,
                                           accountant=args.accountant)
    plan.append((privacy.GaussianMechanism(z), q, max(0, steps - first)))
  return plan


def main(argv: Sequence[str] | None = None) -> list[Result]:
  """Runs one private training per target epsilon and prints a table."""
  args = parse_args(argv)
  x_train, y_train, *_ = training_data(args.seed, args.train_size)
  ledger = checkpoints.open_ledger(args.ledger, dataset='mnist_subset', arrays=(x_train, y_train))
  workdir = args.workdir if args.workdir is not None else ''
  if ledger is not None and args.total_epsilon is not None:
    try:  # every training of this command, before any of them runs
      ledger.check_total(args.total_epsilon, args.delta, accountant=args.accountant,
                         planned=_plan(args, workdir, len(x_train)))
    except privacy.TotalBudgetExceededError as e:
      checkpoints.exit_with_error(str(e))
  workdir = checkpoints.prepare_workdir(args, RUNS_DIR)
  print(f'DP-SSGD (scope={args.scope}, stability={args.stability}) on the MNIST subset, '
        f'delta={args.delta:g}, expected batch {args.batch_size}, {args.epochs:g} epochs')
  if args.reproducible_noise:
    print(f'noise and sampling keys: derived from --seed {args.seed} (--reproducible-noise): '
          'NO privacy guarantee, anyone who knows the seed can remove the noise')
  else:
    print('noise and sampling keys: drawn from the operating system (secrets), secret')
  done = checkpoints.read_results(workdir)
  results = []
  for eps in args.epsilons:
    key = f'eps{eps:g}'
    if key in done:
      res = Result(**done[key])
    else:
      try:
        res = train(target_epsilon=eps, delta=args.delta, epochs=args.epochs,
                    expected_batch_size=args.batch_size, learning_rate=args.learning_rate,
                    momentum=args.momentum, scope=args.scope, stability=args.stability,
                    hidden=args.hidden, seed=args.seed, microbatch_size=args.microbatch_size,
                    train_size=args.train_size, accountant=args.accountant,
                    verbose=not args.quiet,
                    noise_seed=args.seed if args.reproducible_noise else None,
                    checkpoint_dir=os.path.join(workdir, 'checkpoints', key) if workdir else None,
                    checkpoint_every=args.checkpoint_every, resume=args.resume,
                    stop_after_steps=args.stop_after_steps, ledger=ledger,
                    total_epsilon=args.total_epsilon,
                    label=f'dp_ssgd {key} {os.path.abspath(workdir) if workdir else ""}'.strip())
      except (privacy.TotalBudgetExceededError, privacy.LedgerError,
              checkpoints.IncompatibleCheckpoint) as e:
        checkpoints.exit_with_error(str(e))
      if not res.completed:
        print(f'target eps {eps:g}: stopped after step {res.steps} (--stop-after-steps); '
              f'continue with --resume --workdir {workdir}', flush=True)
        results.append(res)
        break
      done[key] = res._asdict()
      checkpoints.write_results(workdir, done)
    print(f'target eps {eps:g}: test accuracy {res.accuracy:.4f}, spent eps {res.epsilon:.3f}, '
          f'noise multiplier {res.noise_multiplier:.3f}, {res.steps} steps', flush=True)
    results.append(res)
  if ledger is not None:
    print(f'privacy ledger {ledger.path}: {len(ledger.runs())} run(s) on this data set, '
          f'composed eps {ledger.spent(args.delta, accountant=args.accountant):.3f} at '
          f'delta={args.delta:g}', flush=True)
  if workdir:
    print(f'results and checkpoints in {workdir}')
  return results


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
