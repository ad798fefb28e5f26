# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Train a Flax NNX image classifier with SSGD (or a baseline optimizer).

In the spirit of the official Flax NNX MNIST example: ``train_step`` and
``eval_step`` are ``nnx.jit`` functions, ``train_and_evaluate(config)`` runs the
whole job and returns its metrics, and ``main(argv)`` is a thin command line::

  python examples/train.py                         # MNIST subset, CNN, SSGD
  python examples/train.py --optimizer adam --learning-rate 1e-3
  python examples/train.py --dataset fashion_mnist --data-dir ~/data/fashion
  XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
    python examples/train.py --devices 4           # data parallel, 4 devices
  python examples/train.py --resume                # continue runs/train

Outputs in ``--workdir`` (default ``runs/train``): ``metrics.json`` (the
config, per-epoch history and final metrics), ``learning_curves.png`` and orbax
checkpoints (model, optimizer state, step, epoch and the data-order seed) in
``checkpoints/``. ``--resume`` restores the latest checkpoint and reaches the
same final parameters as an uninterrupted run: the batch order of epoch ``e``
is a pure function of ``(seed, e)`` (:func:`ssgd_optax.data.epoch_permutation`).

``--devices N`` shards each batch over a 1-D mesh of N devices with
``jax.jit`` and ``NamedSharding`` (parameters replicated): XLA all-reduces the
gradient, so SSGD normalises the *global* batch gradient, exactly as on one
device. On CPU, create virtual devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
"""


import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import ssgd_optax
from ssgd_optax import data as data_lib
from ssgd_optax import models as models_lib

OPTIMIZERS = ('ssgd', 'sgd', 'sgd_momentum', 'adam', 'normalize_by_update_norm')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')
# Best of a coarse sweep (half-decade steps, seed 0) on the default setting:
# MNIST subset, CNN, batch 128, 10 epochs, cosine; see docs/training.md.
# Other settings deserve their own tuning.
DEFAULT_LEARNING_RATES = {
  'ssgd': 0.1,
  'sgd': 0.3,
  'sgd_momentum': 0.1,
  'adam': 3e-3,
  'normalize_by_update_norm': 1.0,
}
_TRAIN_SIZES = {'mnist_subset': 4000, 'digits': 1438, 'mnist': 60000,
                'fashion_mnist': 60000, 'cifar10': 50000}
# Fields that may differ between a run and its resumption.
_RESUME_FREE = ('workdir', 'resume', 'overwrite', 'progress',
                'stop_after_epochs')


@dataclasses.dataclass(frozen=True)
class Config:
  """Hyper-parameters of one training run (defaults: the README command).

  ``learning_rate=None`` picks :data:`DEFAULT_LEARNING_RATES` for the
  optimizer; ``scope`` applies to ``ssgd`` only and ``momentum`` to ``ssgd``
  and ``sgd_momentum`` (``None`` = 0.9 there; for ``ssgd``, 0 = no momentum).
  """
  dataset: str = 'mnist_subset'
  data_dir: str | None = None
  model: str = 'cnn'
  optimizer: str = 'ssgd'
  scope: str | None = None
  momentum: float | None = None
  learning_rate: float | None = None
  schedule: str = 'cosine'
  warmup_epochs: float = 0.0
  batch_size: int = 128
  epochs: int = 10
  seed: int = 0
  devices: int = 1
  workdir: str | None = None
  resume: bool = False
  overwrite: bool = False
  checkpoint_every: int = 1
  stop_after_epochs: int | None = None
  progress: bool = False

  def resolved(self) -> 'Config':
    """The config with optimizer-dependent defaults filled in."""
    lr = (DEFAULT_LEARNING_RATES[self.optimizer]
          if self.learning_rate is None else self.learning_rate)
    scope = self.scope
    momentum = self.momentum
    if self.optimizer == 'ssgd':
      scope = 'global' if scope is None else scope
    if self.optimizer in ('ssgd', 'sgd_momentum'):
      momentum = 0.9 if momentum is None else momentum
    return dataclasses.replace(self, learning_rate=lr, scope=scope,
                               momentum=momentum)


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def validate_config(config: Config) -> Config:
  """Checks every field and combination; returns the resolved config.

  Runs before any data is read or model built, so a bad command fails at
  once. Messages name the command-line flag.

  Raises:
    ValueError: a bad value or an impossible combination.
  """
  c = config

  def choice(flag, value, choices):
    if value not in choices:
      raise ValueError(f'{flag} must be one of {", ".join(choices)}; got '
                       f'{value!r}.')

  choice('--dataset', c.dataset, data_lib.DATASETS)
  choice('--model', c.model, models_lib.MODELS)
  choice('--optimizer', c.optimizer, OPTIMIZERS)
  choice('--schedule', c.schedule, SCHEDULES)
  for flag, v, lo in (('--batch-size', c.batch_size, 1),
                      ('--epochs', c.epochs, 1), ('--seed', c.seed, 0),
                      ('--devices', c.devices, 1),
                      ('--checkpoint-every', c.checkpoint_every, 1)):
    if not _is_int(v) or v < lo:
      raise ValueError(f'{flag} must be an int >= {lo}; got {v!r}.')
  if c.scope is not None:
    if c.optimizer != 'ssgd':
      raise ValueError(f'--scope applies to --optimizer ssgd only; got '
                       f'--optimizer {c.optimizer}.')
    choice('--scope', c.scope, ssgd_optax.SCOPES)
  if c.momentum is not None:
    if c.optimizer not in ('ssgd', 'sgd_momentum'):
      raise ValueError(f'--momentum applies to --optimizer ssgd or '
                       f'sgd_momentum only; got --optimizer {c.optimizer}.')
    if not 0 <= c.momentum < 1:
      raise ValueError(f'--momentum must be in [0, 1); got {c.momentum!r}.')
  if c.learning_rate is not None and not (
      math.isfinite(c.learning_rate) and c.learning_rate > 0):
    raise ValueError(f'--learning-rate must be a finite number > 0; got '
                     f'{c.learning_rate!r}.')
  if not (math.isfinite(c.warmup_epochs) and c.warmup_epochs >= 0):
    raise ValueError(f'--warmup-epochs must be >= 0; got {c.warmup_epochs!r}.')
  if c.warmup_epochs and c.schedule != 'warmup_cosine':
    raise ValueError('--warmup-epochs needs --schedule warmup_cosine; got '
                     f'--schedule {c.schedule}.')
  if c.schedule == 'warmup_cosine' and not 0 < c.warmup_epochs < c.epochs:
    raise ValueError(f'--schedule warmup_cosine needs 0 < --warmup-epochs < '
                     f'--epochs ({c.epochs}); got {c.warmup_epochs!r}.')
  n_train = _TRAIN_SIZES[c.dataset]
  if c.batch_size > n_train:
    raise ValueError(f'--batch-size {c.batch_size} exceeds the {n_train} '
                     f'training images of {c.dataset}.')
  if c.batch_size % c.devices:
    raise ValueError(f'--batch-size {c.batch_size} must be divisible by '
                     f'--devices {c.devices} (each device gets an equal '
                     'shard).')
  available = jax.device_count()
  if c.devices > available:
    raise ValueError(
        f'--devices {c.devices} exceeds the {available} available '
        f'{jax.default_backend()} device(s). On CPU, create virtual devices '
        f'before JAX starts: XLA_FLAGS=--xla_force_host_platform_device_count='
        f'{c.devices} python examples/train.py ...')
  if c.dataset in ('mnist_subset', 'digits'):
    if c.data_dir is not None:
      raise ValueError(f'--data-dir is for the file-based data sets (mnist, '
                       f'fashion_mnist, cifar10); {c.dataset} is embedded.')
  else:
    data_dir = c.data_dir or os.environ.get('SSGD_OPTAX_DATA')
    if not data_dir:
      raise ValueError(f'--dataset {c.dataset} needs --data-dir (or '
                       '$SSGD_OPTAX_DATA): a folder with its files, see '
                       'docs/training.md.')
    if not os.path.isdir(data_dir):
      raise ValueError(f'--data-dir {data_dir!r} is not a directory.')
  if c.stop_after_epochs is not None and not (
      _is_int(c.stop_after_epochs) and 1 <= c.stop_after_epochs <= c.epochs):
    raise ValueError(f'--stop-after-epochs must be an int in [1, --epochs '
                     f'({c.epochs})]; got {c.stop_after_epochs!r}.')
  if (c.resume or c.overwrite or c.stop_after_epochs) and not c.workdir:
    raise ValueError('--resume, --overwrite and --stop-after-epochs need '
                     '--workdir (where checkpoints live).')
  if c.resume and c.overwrite:
    raise ValueError('--resume and --overwrite exclude each other.')
  if c.workdir and not c.resume and not c.overwrite and os.path.isdir(
      os.path.join(c.workdir, 'checkpoints')) and os.listdir(
          os.path.join(c.workdir, 'checkpoints')):
    raise ValueError(f'--workdir {c.workdir!r} already holds checkpoints: '
                     'pass --resume to continue that run or --overwrite to '
                     'start afresh.')
  return c.resolved()


# --------------------------------------------------------------------- pieces


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  """The learning-rate schedule over ``config.epochs * steps_per_epoch``."""
  lr = config.learning_rate
  total = config.epochs * steps_per_epoch
  if config.schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, decay_steps=total)
  warmup = max(1, int(round(config.warmup_epochs * steps_per_epoch)))
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup,
                                            decay_steps=total)


def make_optimizer(name: str, learning_rate: optax.ScalarOrSchedule, *,
                   scope: str | None = 'global', momentum: float | None = 0.9
                   ) -> optax.GradientTransformation:
  """The optax optimizer called ``name``.

  ``ssgd`` is :func:`ssgd_optax.ssgd` (momentum 0 or ``None`` = none);
  ``normalize_by_update_norm`` is ``optax.normalize_by_update_norm`` (one
  global norm, no momentum) followed by the learning rate: SSGD's global scope
  built from optax parts.
  """
  if name == 'ssgd':
    return ssgd_optax.ssgd(learning_rate, scope=scope or 'global',
                           momentum=momentum or None)
  if name == 'sgd':
    return optax.sgd(learning_rate)
  if name == 'sgd_momentum':
    return optax.sgd(learning_rate, momentum=momentum)
  if name == 'adam':
    return optax.adam(learning_rate)
  if name == 'normalize_by_update_norm':
    return optax.chain(optax.normalize_by_update_norm(),
                       optax.scale_by_learning_rate(learning_rate))
  raise ValueError(f'optimizer must be one of {", ".join(OPTIMIZERS)}; got '
                   f'{name!r}.')


def build(config: Config, image_shape: Sequence[int], num_classes: int,
          steps_per_epoch: int) -> tuple[nnx.Module, nnx.Optimizer]:
  """The model (initialised from ``config.seed``) and its optimizer."""
  c = config.resolved()
  # Initialising under jit compiles once instead of op by op (much faster).
  model = nnx.jit(lambda: models_lib.make_model(
      c.model, tuple(image_shape), num_classes, rngs=nnx.Rngs(c.seed)))()
  tx = make_optimizer(c.optimizer, make_schedule(c, steps_per_epoch),
                      scope=c.scope, momentum=c.momentum)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def loss_fn(model: nnx.Module, images: jax.Array, labels: jax.Array):
  """Mean softmax cross-entropy, and (per-example losses, logits) as aux."""
  logits = model(images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return losses.mean(), (losses, logits)


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer,
               metrics: nnx.MultiMetric, images: jax.Array,
               labels: jax.Array) -> None:
  """One optimizer step on a batch; updates ``metrics`` (loss, accuracy)."""
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (_, (losses, logits)), grads = grad_fn(model, images, labels)
  metrics.update(loss=losses, logits=logits, labels=labels)
  optimizer.update(model, grads)


@nnx.jit
def eval_step(model: nnx.Module, metrics: nnx.MultiMetric, images: jax.Array,
              labels: jax.Array) -> None:
  """Accumulates loss and accuracy of ``model`` on a batch into ``metrics``."""
  _, (losses, logits) = loss_fn(model, images, labels)
  metrics.update(loss=losses, logits=logits, labels=labels)


def _new_metrics() -> nnx.MultiMetric:
  return nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(),
                         loss=nnx.metrics.Average('loss'))


class _Placement:
  """Where arrays live: one device, or a 1-D ``data`` mesh."""

  def __init__(self, devices: int):
    self.devices = devices
    if devices == 1:
      self.batch = self.replicated = None
      return
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ('data',))
    self.batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        'data'))
    self.replicated = jax.sharding.NamedSharding(mesh,
                                                 jax.sharding.PartitionSpec())

  def put_batch(self, x: np.ndarray) -> jax.Array:
    if self.batch is None:
      return jnp.asarray(x)
    # A ragged last eval batch cannot be split evenly: replicate it.
    sharding = self.batch if len(x) % self.devices == 0 else self.replicated
    return jax.device_put(x, sharding)

  def replicate(self, *nodes: Any) -> None:
    if self.replicated is None:
      return
    state = nnx.state(nodes)
    nnx.update(nodes, jax.device_put(state, self.replicated))


def evaluate(model: nnx.Module, x: np.ndarray, y: np.ndarray, *,
             batch_size: int = 1000, placement: _Placement | None = None
             ) -> dict[str, float]:
  """Loss and accuracy of ``model`` on ``(x, y)`` (normalised inputs)."""
  placement = placement or _Placement(1)
  metrics = _new_metrics()
  placement.replicate(metrics)
  step = nnx.cached_partial(eval_step, model, metrics)
  for xb, yb in data_lib.batches(x, y, batch_size, drop_remainder=False):
    step(placement.put_batch(xb), placement.put_batch(yb))
  return {k: float(v) for k, v in metrics.compute().items()}


# ---------------------------------------------------------------- checkpoints


def _checkpoint_manager(workdir: str):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _save(manager, epoch: int, model, optimizer, meta: dict) -> None:
  import orbax.checkpoint as ocp
  state = {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)}
  manager.save(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def _restore(manager, model, optimizer) -> dict | None:
  """Restores the latest checkpoint into model/optimizer; returns its meta."""
  import orbax.checkpoint as ocp
  epoch = manager.latest_step()
  if epoch is None:
    return None
  state = {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  nnx.update(model, restored.state['model'])
  nnx.update(optimizer, restored.state['optimizer'])
  return restored.meta


def load_checkpoint(workdir: str) -> tuple[nnx.Module, nnx.Optimizer, dict]:
  """The model and optimizer of the latest checkpoint in ``workdir``.

  Returns:
    ``(model, optimizer, meta)``; ``meta`` holds the epoch, the config and
    the history up to that epoch.

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
  """
  import orbax.checkpoint as ocp
  manager = _checkpoint_manager(workdir)
  try:
    epoch = manager.latest_step()
    if epoch is None:
      raise FileNotFoundError(f'no checkpoint in {workdir!r}/checkpoints.')
    meta = manager.restore(epoch, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    model, optimizer = build(Config(**meta['config']), meta['image_shape'],
                             meta['num_classes'], meta['steps_per_epoch'])
    _restore(manager, model, optimizer)
  finally:
    manager.close()
  return model, optimizer, meta


# ------------------------------------------------------------------- outputs


def _describe(c: Config) -> str:
  opt = c.optimizer
  if c.optimizer == 'ssgd':
    opt += f'({c.scope}, momentum {c.momentum:g})'
  elif c.optimizer == 'sgd_momentum':
    opt += f'({c.momentum:g})'
  return (f'{c.dataset} {c.model} {opt} lr {c.learning_rate:g} {c.schedule}, '
          f'batch {c.batch_size} x {c.epochs} epochs, seed {c.seed}')


def summary_line(metrics: dict) -> str:
  """The one-line summary printed at the end of a run."""
  c = Config(**metrics['config'])
  f = metrics['final']
  return (f'{_describe(c)}: test accuracy {f["test_accuracy"]:.4f}, test loss '
          f'{f["test_loss"]:.4f} after {f["epochs_completed"]} epochs '
          f'({f["steps"]} steps, {f["num_params"]:,} params) in '
          f'{f["wall_time_s"]:.1f} s on {c.devices} {f["backend"]} '
          f'device(s)')


def plot_learning_curves(history: list[dict], path: str, title: str = '') -> None:
  """Saves loss and accuracy per epoch (train and test) as a PNG."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  epochs = [h['epoch'] for h in history]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key in zip(axes, ('loss', 'accuracy')):
    ax.plot(epochs, [h[f'train_{key}'] for h in history], 'o-', label='train')
    ax.plot(epochs, [h[f'test_{key}'] for h in history], 's-', label='test')
    ax.set_xlabel('epoch')
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_yscale('log')
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# --------------------------------------------------------------- the job


def train_and_evaluate(config: Config) -> dict:
  """Trains and evaluates a model; writes outputs when ``config.workdir``.

  Args:
    config: the run's :class:`Config` (validated here).

  Returns:
    ``{'config': ..., 'history': [per-epoch dicts], 'final': {...}}``.
  """
  start = time.perf_counter()
  c = validate_config(config)
  placement = _Placement(c.devices)
  ds = data_lib.load_dataset(c.dataset, data_dir=c.data_dir, seed=c.seed)
  # Normalise once on the host: every step then reads ready inputs.
  x_train, x_test = ds.normalize(ds.x_train), ds.normalize(ds.x_test)
  steps_per_epoch = len(x_train) // c.batch_size

  model, optimizer = build(c, ds.image_shape, ds.num_classes, steps_per_epoch)
  placement.replicate(model, optimizer)
  shapes = {'image_shape': list(ds.image_shape), 'num_classes': ds.num_classes,
            'steps_per_epoch': steps_per_epoch}

  history: list[dict] = []
  first_epoch = 0
  manager = None
  config_dict = dataclasses.asdict(c)
  if c.workdir:
    os.makedirs(c.workdir, exist_ok=True)
    if c.overwrite:
      shutil.rmtree(os.path.join(c.workdir, 'checkpoints'), ignore_errors=True)
    manager = _checkpoint_manager(c.workdir)
    if c.resume:
      meta = _restore(manager, model, optimizer)
      if meta is not None:
        saved = meta['config']
        diff = [k for k in config_dict if k not in _RESUME_FREE
                and saved.get(k) != config_dict[k]]
        if diff:
          raise ValueError(
              'cannot resume: the checkpoint was written with different '
              + ', '.join(f'{k} ({saved.get(k)!r} != {config_dict[k]!r})'
                          for k in diff))
        first_epoch = meta['epoch']
        history = meta['history']
        placement.replicate(model, optimizer)
        if c.progress:
          print(f'resumed from epoch {first_epoch} in {c.workdir}')

  last_epoch = c.stop_after_epochs or c.epochs
  progress = None
  if c.progress:
    from tqdm import tqdm
    progress = tqdm(total=steps_per_epoch, unit='step', dynamic_ncols=True)
  metrics = _new_metrics()
  placement.replicate(metrics)
  step_fn = nnx.cached_partial(train_step, model, optimizer, metrics)
  for epoch in range(first_epoch, last_epoch):
    t0 = time.perf_counter()
    metrics.reset()
    if progress is not None:
      progress.reset()
      progress.set_description(f'epoch {epoch + 1}/{c.epochs}')
    batches = data_lib.batches(x_train, ds.y_train, c.batch_size, seed=c.seed,
                               epoch=epoch)
    for i, (xb, yb) in enumerate(batches):
      step_fn(placement.put_batch(xb), placement.put_batch(yb))
      if progress is not None:
        progress.update()
        if i % 10 == 0 or i == steps_per_epoch - 1:
          m = metrics.compute()
          progress.set_postfix(loss=f'{float(m["loss"]):.4f}',
                               acc=f'{float(m["accuracy"]):.4f}')
    train = {k: float(v) for k, v in metrics.compute().items()}
    test = evaluate(model, x_test, ds.y_test, placement=placement)
    history.append({
      'epoch': epoch + 1, 'step': int(optimizer.step[...]),
      'train_loss': train['loss'], 'train_accuracy': train['accuracy'],
      'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
      'epoch_time_s': time.perf_counter() - t0,
    })
    if progress is not None:
      h = history[-1]
      progress.write(
          f'epoch {epoch + 1}/{c.epochs}: train loss {h["train_loss"]:.4f} '
          f'acc {h["train_accuracy"]:.4f} | test loss {h["test_loss"]:.4f} '
          f'acc {h["test_accuracy"]:.4f} | {h["epoch_time_s"]:.1f} s')
    if manager is not None and ((epoch + 1) % c.checkpoint_every == 0
                                or epoch + 1 == last_epoch):
      _save(manager, epoch + 1, model, optimizer,
            {'epoch': epoch + 1, 'data_seed': c.seed, 'config': config_dict,
             'history': history, **shapes})
  if progress is not None:
    progress.close()
  if manager is not None:
    manager.wait_until_finished()
    manager.close()

  final_eval = (history[-1] if history and history[-1]['epoch'] == last_epoch
                else None)
  if final_eval is None:  # resumed a finished run: evaluate what was restored
    test = evaluate(model, x_test, ds.y_test, placement=placement)
    final_eval = {'test_loss': test['loss'], 'test_accuracy': test['accuracy']}
  result = {
    'config': config_dict,
    'history': history,
    'final': {
      'test_accuracy': final_eval['test_accuracy'],
      'test_loss': final_eval['test_loss'],
      'epochs_completed': last_epoch,
      'steps': int(optimizer.step[...]),
      'num_params': models_lib.count_params(model),
      'wall_time_s': time.perf_counter() - start,
      'backend': jax.default_backend(),
    },
  }
  if c.workdir:
    with open(os.path.join(c.workdir, 'metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
    if history:
      plot_learning_curves(history, os.path.join(c.workdir,
                                                 'learning_curves.png'),
                           title=_describe(c))
  return result


# ---------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
  d = Config()
  p = argparse.ArgumentParser(
      description='Train a Flax NNX classifier with SSGD or a baseline.',
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--dataset', default=d.dataset, choices=data_lib.DATASETS)
  p.add_argument('--data-dir', default=None,
                 help='folder with the files of mnist/fashion_mnist/cifar10')
  p.add_argument('--model', default=d.model, choices=models_lib.MODELS)
  p.add_argument('--optimizer', default=d.optimizer, choices=OPTIMIZERS)
  p.add_argument('--scope', default=None, choices=ssgd_optax.SCOPES,
                 help='SSGD normalisation scope (default global)')
  p.add_argument('--momentum', type=float, default=None,
                 help='ssgd / sgd_momentum momentum (default 0.9; 0 = none)')
  p.add_argument('--learning-rate', type=float, default=None,
                 help=f'default per optimizer: {DEFAULT_LEARNING_RATES}')
  p.add_argument('--schedule', default=d.schedule, choices=SCHEDULES)
  p.add_argument('--warmup-epochs', type=float, default=d.warmup_epochs)
  p.add_argument('--batch-size', type=int, default=d.batch_size)
  p.add_argument('--epochs', type=int, default=d.epochs)
  p.add_argument('--seed', type=int, default=d.seed)
  p.add_argument('--devices', type=int, default=d.devices,
                 help='data-parallel devices (a 1-D mesh)')
  p.add_argument('--workdir', default='runs/train',
                 help="metrics.json, learning_curves.png, checkpoints/ ('' = "
                      'write nothing)')
  p.add_argument('--resume', action='store_true',
                 help='continue from the latest checkpoint in --workdir')
  p.add_argument('--overwrite', action='store_true',
                 help='delete the checkpoints already in --workdir')
  p.add_argument('--checkpoint-every', type=int, default=d.checkpoint_every,
                 help='epochs between checkpoints')
  p.add_argument('--stop-after-epochs', type=int, default=None,
                 help='stop after this many epochs, as if preempted (the '
                      'schedule still spans --epochs); then --resume')
  p.add_argument('--no-progress', action='store_true',
                 help='no progress bar and no per-epoch lines')
  return p


def parse_args(argv: Sequence[str] | None) -> Config:
  """Parses and validates the flags; exits with a message on bad input."""
  parser = build_parser()
  args = parser.parse_args(argv)
  config = Config(
      dataset=args.dataset, data_dir=args.data_dir, model=args.model,
      optimizer=args.optimizer, scope=args.scope, momentum=args.momentum,
      learning_rate=args.learning_rate, schedule=args.schedule,
      warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
      epochs=args.epochs, seed=args.seed, devices=args.devices,
      workdir=args.workdir or None, resume=args.resume,
      overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
      stop_after_epochs=args.stop_after_epochs,
      progress=not args.no_progress)
  try:
    validate_config(config)
  except ValueError as e:
    parser.error(str(e))
  return config


def main(argv: Sequence[str] | None = None) -> dict:
  """Command-line entry point; returns the metrics dict."""
  config = parse_args(argv)
  result = train_and_evaluate(config)
  print(summary_line(result))
  if config.workdir:
    print(f'metrics, plot and checkpoints in {config.workdir}')
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
