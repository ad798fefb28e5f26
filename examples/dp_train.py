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

  python examples/dp_train.py                      # ~8 min on 2 CPU cores: 8 runs
  python examples/dp_train.py --methods bp --epsilons 1 --epochs 2   # ~1 min
  python examples/dp_train.py --dataset mnist --data-dir ~/data/mnist

The noise and Poisson-sampling keys come from the operating system's CSPRNG
(``secrets``) unless ``--reproducible-noise`` derives them from ``--seed``,
which voids the guarantee (anyone who knows the seed can regenerate and
subtract the noise); ``--seed`` always sets the model initialisation. The
script prints which was used.

Runs survive kills, as ``examples/train.py``'s do: each run writes to a fresh
``runs/dp_train/<date-time>`` (or ``--workdir``) its ``config.json``, verified
checkpoints of each training (model, optimizer, budget tracker; never the
secret noise keys) every ``--checkpoint-every`` steps, and ``results.json``;
``--resume`` continues it, reporting the steps and epsilon of an uninterrupted
run. With ``--ledger FILE`` every step is recorded in the data set's privacy
ledger before it is released, and ``--total-epsilon`` refuses a run that
would take the composed total of all runs on the data set over the limit::

  python examples/dp_train.py --methods dpsgd --epsilons 1 --ledger mnist.ledger \
    --total-epsilon 2 --workdir runs/a
  python examples/dp_train.py --workdir runs/a --resume      # after a kill
"""

import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

# The harness first: Ctrl-C during the imports below also ends in one line (exit 130).
from ssgd_examples import cli

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssgd_examples import checkpoints
from ssgd_examples import data as data_lib
from ssgd_examples import models as models_lib
from ssgd_optax import privacy

METHODS = ('bp', 'dpsgd', 'nonprivate')
_TRAIN_SIZES = {'mnist_subset': 4000, 'mnist': 60000}
RUNS_DIR = os.path.join('runs', 'dp_train')
flag = cli.flag


def per_example_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Cross-entropy of each example (never averaged: DP needs the sum)."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y)


def make_model(method: str, *, seed: int, input_bound: float, grad_bound: float,
               image_size: int = 28, channels: int = 1, num_classes: int = 10) -> nnx.Module:
  """The paper's bias-free CNN; its layers clipped for ``bp``."""
  model = models_lib.StevensCNN(num_classes, in_channels=channels, image_size=image_size,
                             rngs=nnx.Rngs(seed))
  if method == 'bp':
    model = privacy.clip_layers(model, input_bound=input_bound, grad_bound=grad_bound)
  return model


def make_mechanism(method: str, model: nnx.Module, *, clip_norm: float,
                   noise_multiplier: float | None = None) -> Any:
  """The mechanism object of ``method`` (``None`` for ``nonprivate``).

  The noise transform and the accountant both read it, so the number of
  releases (``L = 4`` clipped tensors for ``bp``, 1 for ``dpsgd``) and the
  sensitivities are never passed by hand.
  """
  if method == 'bp':
    return privacy.backprop_clip_mechanism(model, noise_multiplier)
  if method == 'dpsgd':
    return privacy.dpsgd_mechanism(clip_norm, noise_multiplier)
  return None


def make_privacy(mechanism: Any, *, target_epsilon: float, delta: float, sampling_rate: float,
                 steps: int, expected_batch_size: float, key: jax.Array,
                 accountant: str = 'pld') -> tuple[Any, optax.GradientTransformation, Any]:
  """Calibrates ``mechanism`` and builds its noise transform and budget tracker.

  Returns:
    ``(calibrated mechanism, noise transform, BudgetTracker)``, all three
    built from the one mechanism object.
  """
  z = privacy.calibrate_noise_multiplier(target_epsilon, mechanism=mechanism,
                                         sampling_rate=sampling_rate, steps=steps, delta=delta,
                                         accountant=accountant)
  mechanism = mechanism._replace(noise_multiplier=z)
  noise = privacy.add_gaussian_noise(mechanism=mechanism, expected_batch_size=expected_batch_size,
                                     key=key)
  tracker = privacy.BudgetTracker(target_epsilon, delta, mechanism=mechanism,
                                  sampling_rate=sampling_rate, accountant=accountant,
                                  on_exhausted='stop')
  return mechanism, noise, tracker


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
                       accountant: str = 'pld', verbose: bool = False,
                       noise_seed: int | None = None, checkpoint_dir: str | None = None,
                       checkpoint_every: int | None = None, resume: bool = False,
                       stop_after_steps: int | None = None,
                       ledger: privacy.PrivacyLedger | None = None,
                       total_epsilon: float | None = None, label: str = '') -> dict[str, Any]:
  """Trains one model and returns its accuracy and accounted privacy.

  Args:
    method: ``"bp"``, ``"dpsgd"`` or ``"nonprivate"``.
    dataset: an :class:`ssgd_examples.data.Dataset`.
    target_epsilon: epsilon budget (ignored for ``nonprivate``).
    delta: delta of the budget.
    epochs: expected passes over the data; steps = ``round(epochs / q)``.
    batch_size: expected Poisson batch ``q * N``.
    learning_rate: Adam's learning rate.
    input_bound: ``C_in`` (bp).
    grad_bound: ``C_out`` (bp), in units of the summed loss.
    clip_norm: ``C`` (dpsgd).
    seed: model initialisation seed.
    accountant: ``"pld"`` or ``"rdp"`` for calibration and the tracker.
    verbose: show a progress bar over the steps.
    noise_seed: seed of the noise and Poisson-sampling keys. ``None`` (the
      default) draws it from the operating system (:func:`ssgd_optax.privacy.os_seed`);
      a known value voids the privacy guarantee (use it only to reproduce a run).
    checkpoint_dir: folder of this training's checkpoints (``None``: none).
    checkpoint_every: steps between checkpoints (default: one epoch).
    resume: continue from the newest intact checkpoint in ``checkpoint_dir``.
    stop_after_steps: stop after this step, as if preempted.
    ledger: the data set's privacy ledger: every step is recorded before it
      is released (not for ``nonprivate``).
    total_epsilon: with ``ledger``, the limit on the composed total of all runs.
    label: recorded with the ledger entry.

  Returns:
    A dict with ``accuracy``, ``epsilon`` (PLD), ``epsilon_rdp``, ``noise_multiplier``,
    ``steps``, ``num_releases``, ``seconds``, ``completed`` (``False``: stopped by
    ``stop_after_steps``).
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
  # The guarantee assumes noise nobody can regenerate: a secret seed.
  secret = privacy.os_seed() if noise_seed is None else noise_seed
  key_noise, key_sample = jax.random.split(jax.random.key(secret))
  private = method != 'nonprivate'
  mechanism = make_mechanism(method, model, clip_norm=clip_norm)
  if private:
    mechanism, noise, tracker = make_privacy(
        mechanism, target_epsilon=target_epsilon, delta=delta, sampling_rate=q, steps=steps,
        expected_batch_size=q * n, key=key_noise, accountant=accountant)
    z, num_releases = mechanism.noise_multiplier, mechanism.num_releases
  else:
    z, tracker, num_releases = 0.0, None, 1
    noise = privacy.add_gaussian_noise(0.0, 1.0, q * n, key=key_noise)
  tx = optax.chain(noise, optax.adam(learning_rate))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  max_batch = privacy.max_batch_size_for(n, q, steps=steps)
  step_fn = make_train_step(method, num_examples=n, sampling_rate=q, max_batch_size=max_batch,
                            clip_norm=clip_norm)
  x_all, y_all = jnp.asarray(x_train), jnp.asarray(dataset.y_train)
  if ledger is not None and not private:
    raise ValueError('a non-private training releases its data without noise: it cannot be '
                     'recorded in a privacy ledger (its epsilon is infinite).')
  every = checkpoint_every or max(1, round(1 / q))
  saved = checkpoints.DPCheckpoints(checkpoint_dir, keep_keys=noise_seed is not None, every=every)
  first = saved.restore(model, optimizer, tracker) if resume else 0
  last = min(steps, stop_after_steps or steps)
  entry = None
  if ledger is not None and first < last:
    # Refused here, before any step, if the ledger's total would be exceeded.
    entry = ledger.start_run(mechanism, sampling_rate=q, planned_steps=steps - first,
                             total_epsilon=total_epsilon, delta=delta, accountant=accountant,
                             label=label, steps_per_write=every)
  start = time.perf_counter()
  taken = first
  desc = f'{method} eps={target_epsilon}' if private else method
  try:
    for t in cli.progress(range(first, last), desc=desc, quiet=not verbose):
      if entry is not None:
        entry.reserve(t + 1 - first)  # written ahead: a kill never under-counts
      if tracker is not None and not tracker.step():
        break  # Never release an update past the budget.
      step_fn(model, optimizer, x_all, y_all, jax.random.fold_in(key_sample, t))
      checkpoints.fault_point('step')
      taken += 1
      saved.save(taken, model, optimizer, tracker, force=taken == last)
  except privacy.TotalBudgetExceededError:
    if taken > first:
      saved.save(taken, model, optimizer, tracker, force=True)  # keep what was done
    raise
  finally:
    saved.close()
  if entry is not None:
    entry.finish(taken - first)
  jax.block_until_ready(nnx.state(model))
  seconds = time.perf_counter() - start
  acc = evaluate(model, x_test, np.asarray(dataset.y_test))
  kw = dict(sampling_rate=q, steps=taken, delta=delta)
  eps = privacy.compute_epsilon(mechanism, accountant='pld', **kw) if private else math.inf
  eps_rdp = privacy.compute_epsilon(mechanism, accountant='rdp', **kw) if private else math.inf
  return dict(method=method, target_epsilon=target_epsilon, accuracy=acc, epsilon=eps,
              epsilon_rdp=eps_rdp, noise_multiplier=z, steps=taken, num_releases=num_releases,
              seconds=seconds, max_batch_size=max_batch,
              completed=taken == steps or (tracker is not None and tracker.exhausted))


@dataclasses.dataclass(frozen=True)
class Config(checkpoints.RunFlags):
  """The example's settings; each field is a flag (``batch_size`` -> ``--batch-size``)."""
  dataset: str = flag('mnist_subset', 'data set', choices=tuple(_TRAIN_SIZES))
  data_dir: str | None = flag(None, 'folder with the MNIST IDX files (default $SSGD_OPTAX_DATA)',
                              resume_may_differ=True)
  methods: tuple[str, ...] = flag(('bp', 'dpsgd'), 'methods to train', choices=METHODS)
  epsilons: tuple[float, ...] = flag((0.5, 1.0, 3.0, 8.0), 'target epsilons',
                                     check=cli.finite(positive=True))
  delta: float = flag(1e-5, 'target delta', check=cli.in_range(0, 1, lo_open=True,
                                                                  hi_open=True))
  epochs: float = flag(10.0, 'expected passes over the data', check=cli.finite(positive=True))
  batch_size: int = flag(256, 'expected Poisson batch size (q * N)', check=cli.at_least(1))
  lr: float = flag(1e-2, "Adam's learning rate", check=cli.finite(positive=True))
  input_bound: float = flag(3.0, 'C_in of backprop clipping', check=cli.finite(positive=True))
  grad_bound: float = flag(0.1, 'C_out of backprop clipping', check=cli.finite(positive=True))
  clip_norm: float = flag(1.0, 'C of per-example clipping', check=cli.finite(positive=True))
  seed: int = flag(0, 'model initialisation seed (not the noise: see --reproducible-noise)',
                   check=cli.at_least(0))
  reproducible_noise: bool = flag(
      False, 'derive the noise and sampling keys from --seed so that runs repeat exactly. '
      'VOIDS THE PRIVACY GUARANTEE: whoever knows the seed can regenerate the noise')
  accountant: str = flag('pld', 'accountant for calibration and tracking',
                         choices=privacy.ACCOUNTANTS)
  max_train: int | None = flag(None, 'use only the first N training (and test) images (smoke '
                               'tests)', type=int, check=cli.at_least(1))
  quiet: bool = flag(False, 'no progress bar', resume_may_differ=True)
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    n = min(_TRAIN_SIZES[self.dataset], self.max_train or math.inf)
    if self.batch_size > n:
      raise ValueError(f'--batch-size {self.batch_size} exceeds the {n} training images'
                       + (' (--max-train)' if self.max_train else '') + '.')
    if self.dataset == 'mnist':
      data_dir = self.data_dir or os.environ.get('SSGD_OPTAX_DATA')
      if not data_dir:
        raise ValueError('--dataset mnist needs --data-dir (or $SSGD_OPTAX_DATA): the folder '
                         'with the MNIST IDX files.')
      if not os.path.isdir(data_dir):
        raise ValueError(f'--data-dir {data_dir!r} is not a directory.')
    elif self.data_dir is not None:
      raise ValueError('--data-dir is for --dataset mnist; mnist_subset is embedded.')
    if self.ledger is not None and 'nonprivate' in self.methods:
      raise ValueError('--methods nonprivate releases the data without noise: it cannot be '
                       'recorded in a privacy ledger (its epsilon is infinite); run it without '
                       '--ledger.')
    self.validate_run()


def noise_line(reproducible: bool, seed: int) -> str:
  """Says where the noise and sampling keys came from."""
  if reproducible:
    return (f'noise and sampling keys: derived from --seed {seed} (--reproducible-noise): '
            'NO privacy guarantee, anyone who knows the seed can remove the noise')
  return 'noise and sampling keys: drawn from the operating system (secrets), secret'


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


def _trainings(args: Config) -> list[tuple[str, float | None, str]]:
  """``(method, target epsilon, key)`` of every training the command runs."""
  return [(method, eps, 'nonprivate' if eps is None else f'{method}-eps{eps:g}')
          for method in args.methods
          for eps in ([None] if method == 'nonprivate' else args.epsilons)]


def _plan(args: Config, workdir: str, ds: Any) -> list[tuple[Any, float, int]]:
  """``(mechanism, q, steps still to run)`` of each private training not finished yet."""
  n = len(ds.x_train)
  q = args.batch_size / n
  steps = max(1, round(args.epochs / q))
  h, _, c = ds.x_train.shape[1:]
  done = checkpoints.read_results(workdir)
  plan = []
  for method, eps, key in _trainings(args):
    if eps is None or key in done:
      continue
    first = (checkpoints.latest_step(os.path.join(workdir, 'checkpoints', key))
             if args.resume and workdir else None) or 0
    model = make_model(method, seed=args.seed, input_bound=args.input_bound,
                       grad_bound=args.grad_bound, image_size=h, channels=c,
                       num_classes=ds.num_classes)
    mechanism = make_mechanism(method, model, clip_norm=args.clip_norm)
    z = privacy.calibrate_noise_multiplier(eps, mechanism=mechanism, sampling_rate=q,
                                           steps=steps, delta=args.delta,
                                           accountant=args.accountant)
    plan.append((mechanism._replace(noise_multiplier=z), q, max(0, steps - first)))
  return plan


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """CLI entry point; returns the result rows."""
  args = parse_args(argv)
  ds = data_lib.load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed)
  if args.max_train:
    ds = ds._replace(x_train=ds.x_train[:args.max_train], y_train=ds.y_train[:args.max_train],
                     x_test=ds.x_test[:args.max_train], y_test=ds.y_test[:args.max_train])
  ledger = checkpoints.open_ledger(args.ledger, dataset=args.dataset,
                                   arrays=(ds.x_train, ds.y_train))
  if ledger is not None and args.total_epsilon is not None:
    try:  # every training of this command, before any of them runs
      ledger.check_total(args.total_epsilon, args.delta, accountant=args.accountant,
                         planned=_plan(args, args.workdir or '', ds))
    except privacy.TotalBudgetExceededError as e:
      checkpoints.exit_with_error(str(e))
  workdir = checkpoints.prepare_workdir(args, RUNS_DIR)
  print(f'{ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test images, expected batch '
        f'{args.batch_size}, {args.epochs:g} epochs, delta={args.delta:g}')
  print(noise_line(args.reproducible_noise, args.seed))
  print('| method | target eps | z per release | L | steps | accuracy | eps (PLD) | eps (RDP) |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|', flush=True)
  done = checkpoints.read_results(workdir)
  rows = []
  for method, eps, key in _trainings(args):
    if key in done:
      r = done[key]
    else:
      try:
        r = train_and_evaluate(
            method, ds, target_epsilon=eps, delta=args.delta, epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=args.lr, input_bound=args.input_bound,
            grad_bound=args.grad_bound, clip_norm=args.clip_norm, seed=args.seed,
            accountant=args.accountant, verbose=not args.quiet,
            noise_seed=args.seed if args.reproducible_noise else None,
            checkpoint_dir=os.path.join(workdir, 'checkpoints', key) if workdir else None,
            checkpoint_every=args.checkpoint_every, resume=args.resume,
            stop_after_steps=args.stop_after_steps, ledger=ledger,
            total_epsilon=args.total_epsilon,
            label=f'dp_train {key} {os.path.abspath(workdir) if workdir else ""}'.strip())
      except (privacy.TotalBudgetExceededError, privacy.LedgerError,
              checkpoints.IncompatibleCheckpoint) as e:
        checkpoints.exit_with_error(str(e))
      if not r['completed']:
        print(f'{key}: stopped after step {r["steps"]} (--stop-after-steps); continue with '
              f'--resume --workdir {workdir}', flush=True)
        rows.append(r)
        break
      done[key] = r
      checkpoints.write_results(workdir, done)
    rows.append(r)
    print(f"| {method} | {eps if eps is not None else '-'} | {r['noise_multiplier']:.3f} | "
          f"{r['num_releases']} | {r['steps']} | {r['accuracy']:.4f} | {r['epsilon']:.3f} | "
          f"{r['epsilon_rdp']:.3f} |", flush=True)
  if ledger is not None:
    print(f'privacy ledger {ledger.path}: {len(ledger.runs())} run(s) on this data set, '
          f'composed eps {ledger.spent(args.delta, accountant=args.accountant):.3f} at '
          f'delta={args.delta:g}', flush=True)
  if workdir:
    print(f'results and checkpoints in {workdir}')
  return rows


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
