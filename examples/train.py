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
  python examples/train.py --resume                # continue the newest run
  python examples/train.py --coordinator 127.0.0.1:12345 --num-processes 2 \\
    --process-id 0                                  # one process of a job

Outputs in ``--workdir`` (default: a fresh ``runs/train/<date-time>`` folder
per run, so the same command can run twice; an explicit ``--workdir`` that
already holds checkpoints needs ``--resume`` or ``--overwrite``):
``config.json``, ``metrics.json`` (the config, per-epoch history and final
metrics), ``learning_curves.png`` and orbax checkpoints (model, optimizer
state, step, epoch and the data-order seed) in ``checkpoints/``. ``--resume``
reads the configuration from the run (only flags that may change, such as
``--devices`` or ``--stop-after-epochs``, are taken from the command line; a
flag that contradicts the run is refused before any work), restores the
latest checkpoint and reaches the same final parameters as an uninterrupted
run: the batch order of epoch ``e`` is a pure function of ``(seed, e)``
(:func:`ssgd_examples.data.epoch_permutation`).

``--devices N`` shards each batch over a 1-D mesh of N devices with
``jax.jit`` and ``NamedSharding`` (parameters replicated): XLA all-reduces the
gradient, so SSGD normalises the *global* batch gradient, exactly as on one
device. On CPU, create virtual devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``. With
``--coordinator/--num-processes/--process-id`` (or ``--distributed auto`` on a
cluster JAX detects) the processes form one ``jax.distributed`` job: the mesh
spans every process's devices, each process feeds its slice of the global
batch, and process 0 alone writes checkpoints and outputs.
"""


import argparse  # pylint: disable=unused-import
import dataclasses
import json
import os
import shutil
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

import ssgd_optax
from ssgd_examples import checkpoints
from ssgd_examples import data as data_lib
from ssgd_examples import models as models_lib

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
# Without --workdir, each run gets a fresh folder under this one.
RUNS_DIR = os.path.join('runs', 'train')
flag = cli.flag


@dataclasses.dataclass(frozen=True)
class Config(cli.DistributedFlags):
  """Hyper-parameters of one training run (defaults: the README command).

  Each field is also a command-line flag (``batch_size`` -> ``--batch-size``).
  ``learning_rate=None`` picks :data:`DEFAULT_LEARNING_RATES` for the
  optimizer; ``scope`` applies to ``ssgd`` only and ``momentum`` to ``ssgd``
  and ``sgd_momentum`` (``None`` = 0.9 there; for ``ssgd``, 0 = no momentum).
  ``workdir=None`` writes to a fresh ``runs/train/<date-time>`` folder;
  ``''`` writes nothing.
  """
  dataset: str = flag('mnist_subset', 'data set', choices=data_lib.DATASETS)
  data_dir: str | None = flag(
      None, 'folder with the files of mnist/fashion_mnist/cifar10 (default '
      '$SSGD_OPTAX_DATA)', resume_may_differ=True)
  model: str = flag('cnn', 'model', choices=models_lib.MODELS)
  optimizer: str = flag('ssgd', 'optimizer', choices=OPTIMIZERS)
  scope: str | None = flag(None, 'SSGD normalisation scope (default global)',
                           choices=ssgd_optax.SCOPES)
  momentum: float | None = flag(
      None, 'ssgd / sgd_momentum momentum (default 0.9; 0 = none)', type=float,
      check=cli.in_range(0, 1, hi_open=True))
  learning_rate: float | None = flag(
      None, f'default per optimizer: {DEFAULT_LEARNING_RATES}', type=float,
      check=cli.finite(positive=True))
  schedule: str = flag('cosine', 'learning-rate schedule', choices=SCHEDULES)
  warmup_epochs: float = flag(0.0, 'warmup of --schedule warmup_cosine',
                              check=cli.finite(nonnegative=True))
  batch_size: int = flag(128, 'global batch size', check=cli.at_least(1))
  epochs: int = flag(10, 'passes over the training set', check=cli.at_least(1))
  seed: int = flag(0, 'initialisation and data-order seed',
                   check=cli.at_least(0))
  devices: int | None = flag(
      None, 'data-parallel devices, a 1-D mesh (default 1; with several '
      'processes, all devices of the job)', type=int, check=cli.at_least(1),
      resume_may_differ=True)
  workdir: str | None = flag(
      None, "metrics.json, learning_curves.png, checkpoints/ (default: a fresh "
      "runs/train/<date-time> per run; '' = write nothing)",
      resume_may_differ=True)
  resume: bool = flag(False, 'continue the run in --workdir (default: the newest '
                      'run under runs/train) from its latest checkpoint, with '
                      'its configuration', resume_may_differ=True)
  overwrite: bool = flag(False, 'delete the checkpoints already in --workdir',
                         resume_may_differ=True)
  checkpoint_every: int = flag(1, 'epochs between checkpoints',
                               check=cli.at_least(1), resume_may_differ=True)
  stop_after_epochs: int | None = flag(
      None, 'stop after this many epochs, as if preempted (the schedule still '
      'spans --epochs); then --resume', type=int, check=cli.at_least(1),
      resume_may_differ=True)
  quiet: bool = flag(False, 'no progress bar and no per-epoch lines',
                     aliases=('--no-progress',), resume_may_differ=True)
  verbose: bool = cli.verbose_flag()

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

  def validate(self) -> None:
    """Checks combinations that need no device and no data; names the flags."""
    c = self
    self.validate_distributed()
    if c.scope is not None and c.optimizer != 'ssgd':
      raise ValueError(f'--scope applies to --optimizer ssgd only; got '
                       f'--optimizer {c.optimizer}.')
    if c.momentum is not None and c.optimizer not in ('ssgd', 'sgd_momentum'):
      raise ValueError(f'--momentum applies to --optimizer ssgd or '
                       f'sgd_momentum only; got --optimizer {c.optimizer}.')
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
    if c.devices is not None and c.batch_size % c.devices:
      raise ValueError(f'--batch-size {c.batch_size} must be divisible by '
                       f'--devices {c.devices} (each device gets an equal '
                       'shard).')
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
      try:  # every file of the split, before any work
        data_lib.check_files(c.dataset, data_dir)
      except data_lib.DatasetError as e:
        raise ValueError(f'--data-dir: {e}') from None
    if c.stop_after_epochs is not None and c.stop_after_epochs > c.epochs:
      raise ValueError(f'--stop-after-epochs must be an int in [1, --epochs '
                       f'({c.epochs})]; got {c.stop_after_epochs!r}.')
    if c.workdir == '' and (c.resume or c.overwrite or c.stop_after_epochs):
      raise ValueError("--resume, --overwrite and --stop-after-epochs need "
                       "--workdir (where checkpoints live); got --workdir ''.")
    if c.resume and c.overwrite:
      raise ValueError('--resume and --overwrite exclude each other.')
    checkpoints.check_workdir(c.workdir)
    if c.workdir and not c.resume and not c.overwrite and _latest_epoch(
        c.workdir) is not None:
      raise ValueError(
          f'--workdir {c.workdir!r} already holds checkpoints: pass --resume to '
          'continue that run, --overwrite to start it afresh, or leave out '
          '--workdir to get a fresh runs/train/<date-time> folder.')


def _latest_epoch(workdir: str) -> int | None:
  """The newest checkpointed epoch in ``workdir`` (from folder names: fast)."""
  return checkpoints.latest_step(os.path.join(workdir, 'checkpoints'))


def merge_resume(config: Config, explicit: set[str]) -> Config:
  """The run's saved configuration, with the flags given on the command line.

  Raises:
    ValueError: a flag contradicts the checkpoint (only fields marked
      ``resume_may_differ`` may change), or there is nothing to resume.
  """
  return checkpoints.merge_resume(config, explicit, runs_dir=RUNS_DIR)


def validate_config(config: Config) -> Config:
  """Checks every field and combination; returns the resolved config.

  Runs before any data is read or model built, so a bad command fails at
  once. Messages name the command-line flag. Needs JAX's devices (after
  :func:`ssgd_optax.cli.initialize_distributed` in a multi-process job).

  Raises:
    ValueError: a bad value or an impossible combination.
  """
  cli.check_fields(config)
  config.validate()
  c = config
  available = jax.device_count()
  if c.devices is None:
    c = dataclasses.replace(c, devices=available if jax.process_count() > 1
                            else 1)
    if c.batch_size % c.devices:
      raise ValueError(f'--batch-size {c.batch_size} must be divisible by the '
                       f'{c.devices} devices of the job.')
  if c.devices > available:
    raise ValueError(
        f'--devices {c.devices} exceeds the {available} available '
        f'{jax.default_backend()} device(s). On CPU, create virtual devices '
        f'before JAX starts: XLA_FLAGS=--xla_force_host_platform_device_count='
        f'{c.devices} python examples/train.py ...')
  if jax.process_count() > 1 and c.devices != available:
    raise ValueError(f'--devices {c.devices}: a multi-process job uses all '
                     f'{available} devices of its processes; leave --devices '
                     'out.')
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
  """Where arrays live: one device, or a 1-D ``data`` mesh (of every process).

  In a multi-process job each process holds the whole (same) data set but
  feeds only its slice of every global batch, the rows its devices hold
  (``jax.make_array_from_process_local_data``); parameters and optimizer
  state are replicated from identical host copies.
  """

  def __init__(self, devices: int):
    self.devices = devices
    self.processes = jax.process_count()
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
    even = len(x) % self.devices == 0
    if self.processes == 1:
      return jax.device_put(x, self.batch if even else self.replicated)
    if not even:
      return jax.make_array_from_callback(x.shape, self.replicated,
                                          lambda index: x[index])
    per = len(x) // self.processes
    pid = jax.process_index()
    return jax.make_array_from_process_local_data(
        self.batch, x[pid * per:(pid + 1) * per], x.shape)

  def replicate(self, *nodes: Any) -> None:
    if self.replicated is None:
      return
    state = nnx.state(nodes)
    if self.processes == 1:
      nnx.update(nodes, jax.device_put(state, self.replicated))
      return

    def put(a):
      host = np.asarray(a)
      return jax.make_array_from_callback(host.shape, self.replicated,
                                          lambda index: host[index])
    nnx.update(nodes, jax.tree.map(put, state))


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


def _checkpointer(workdir: str, primary: bool = True) -> checkpoints.Checkpointer:
  # In a multi-process job process 0 alone writes (host copies of the
  # replicated state) and each process reads for itself, so no process waits
  # on another's file I/O.
  return checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=2,
                                  primary=primary, process_local=jax.process_count() > 1)


def _state(model, optimizer) -> dict:
  return {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)}


def _restore(ckpt: checkpoints.Checkpointer, model, optimizer) -> dict | None:
  """Restores the newest intact checkpoint into model/optimizer; returns its meta."""
  restored = ckpt.restore(_state(model, optimizer))
  if restored is None:
    return None
  nnx.update(model, restored.state['model'])
  nnx.update(optimizer, restored.state['optimizer'])
  return restored.meta


def load_checkpoint(workdir: str) -> tuple[nnx.Module, nnx.Optimizer, dict]:
  """The model and optimizer of the newest intact checkpoint in ``workdir``.

  Returns:
    ``(model, optimizer, meta)``; ``meta`` holds the epoch, the config and
    the history up to that epoch.

  Raises:
    FileNotFoundError: ``workdir`` holds no intact checkpoint.
  """
  with _checkpointer(workdir) as ckpt:
    newest = ckpt.latest_meta()
    if newest is None:
      raise FileNotFoundError(f'no intact checkpoint in {workdir!r}/checkpoints.')
    meta = newest[1]
    model, optimizer = build(Config(**meta['config']), meta['image_shape'],
                             meta['num_classes'], meta['steps_per_epoch'])
    meta = _restore(ckpt, model, optimizer)
    if meta is None:
      raise FileNotFoundError(f'no intact checkpoint in {workdir!r}/checkpoints.')
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
          f'device(s)' + (f' in {f["processes"]} processes'
                          if f.get('processes', 1) > 1 else ''))


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
  """Trains and evaluates a model; writes outputs unless ``workdir=''``.

  Args:
    config: the run's :class:`Config` (validated here). ``workdir=None``
      writes to a fresh ``runs/train/<date-time>`` folder.

  Returns:
    ``{'config': ..., 'history': [per-epoch dicts], 'final': {...}}``.
  """
  start = time.perf_counter()
  c = validate_config(config)
  if c.workdir is None:
    c = dataclasses.replace(c, workdir=checkpoints.fresh_run_dir(RUNS_DIR))
  primary = jax.process_index() == 0
  quiet = c.quiet or not primary
  placement = _Placement(c.devices)
  ds = data_lib.load_dataset(c.dataset, data_dir=c.data_dir, seed=c.seed)
  # Normalise once on the host: every step then reads ready inputs.
  x_train, x_test = ds.normalize(ds.x_train), ds.normalize(ds.x_test)
  steps_per_epoch = len(x_train) // c.batch_size

  model, optimizer = build(c, ds.image_shape, ds.num_classes, steps_per_epoch)
  shapes = {'image_shape': list(ds.image_shape), 'num_classes': ds.num_classes,
            'steps_per_epoch': steps_per_epoch}

  history: list[dict] = []
  first_epoch = 0
  ckpt = None
  config_dict = dataclasses.asdict(c)
  last_epoch = c.stop_after_epochs or c.epochs
  if c.workdir:
    if primary:
      os.makedirs(c.workdir, exist_ok=True)
      if c.overwrite:
        shutil.rmtree(os.path.join(c.workdir, 'checkpoints'),
                      ignore_errors=True)
      if not c.resume:
        with open(os.path.join(c.workdir, 'config.json'), 'w') as f:
          json.dump(config_dict, f, indent=2)
    ckpt = _checkpointer(c.workdir, primary)
    meta = None
    if c.resume:
      # Restored into host-local arrays, placed on the mesh below.
      meta = _restore(ckpt, model, optimizer)
      if meta is None and primary:
        print(f'no intact checkpoint in {c.workdir}: training from epoch 0 with the run\'s '
              'configuration', file=sys.stderr, flush=True)
    if meta is not None:
      free = {f.name for f in dataclasses.fields(Config)
              if f.metadata.get('resume_may_differ')}
      diff = [k for k in config_dict if k not in free
              and meta['config'].get(k) != config_dict[k]]
      if diff:
        raise ValueError(
            'cannot resume: the checkpoint was written with different '
            + ', '.join(f'{k} ({meta["config"].get(k)!r} != '
                        f'{config_dict[k]!r})' for k in diff))
      first_epoch = meta['epoch']
      history = meta['history']
      if primary and first_epoch >= last_epoch:
        print(f'the run in {c.workdir} already finished {first_epoch} of '
              f'{c.epochs} epochs: nothing to train; evaluating the restored '
              'model.')
      elif not quiet:
        print(f'resumed from epoch {first_epoch} in {c.workdir}')
    if not primary:  # process 0 alone writes checkpoints
      ckpt.close()
      ckpt = None
  placement.replicate(model, optimizer)

  progress = None
  if not quiet and first_epoch < last_epoch:
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
      cli.check_interrupt()  # a safe point for Ctrl-C
      step_fn(placement.put_batch(xb), placement.put_batch(yb))
      checkpoints.fault_point('step')
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
    if ckpt is not None and ((epoch + 1) % c.checkpoint_every == 0
                             or epoch + 1 == last_epoch):
      ckpt.save(epoch + 1, _state(model, optimizer),
                {'epoch': epoch + 1, 'data_seed': c.seed, 'config': config_dict,
                 'history': history, **shapes})
  if progress is not None:
    progress.close()
  if ckpt is not None:
    ckpt.close()

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
      'epochs_completed': max(last_epoch, first_epoch),
      'steps': int(optimizer.step[...]),
      'num_params': models_lib.count_params(model),
      'wall_time_s': time.perf_counter() - start,
      'backend': jax.default_backend(),
      'processes': jax.process_count(),
    },
  }
  if c.workdir and primary:
    with open(os.path.join(c.workdir, 'metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
    if history:
      plot_learning_curves(history, os.path.join(c.workdir,
                                                 'learning_curves.png'),
                           title=_describe(c))
  return result


# ---------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
  """The flags of :class:`Config` (written once, in its fields)."""
  return cli.build_parser(Config, __doc__)


def parse_args(argv: Sequence[str] | None) -> Config:
  """Parses and validates the flags; exits with status 2 on bad input.

  With ``--resume`` the configuration is read from the run's ``config.json``
  and only the flags given explicitly are compared with it, before any data
  is read. In a multi-process job this joins ``jax.distributed`` (which must
  precede the device checks).
  """
  parser = build_parser()

  def prepare(config, explicit):
    if config.resume and config.workdir != '':
      return merge_resume(config, explicit)
    return config

  config = cli.parse(Config, argv, parser=parser, prepare=prepare)
  try:
    cli.initialize_distributed(config)
    validate_config(config)
  except ValueError as e:
    parser.error(str(e))
  return config


def main(argv: Sequence[str] | None = None) -> dict:
  """Command-line entry point; returns the metrics dict."""
  config = parse_args(argv)
  with cli.distributed_errors(config):
    try:
      result = train_and_evaluate(config)
    except checkpoints.IncompatibleCheckpoint as e:
      checkpoints.exit_with_error(str(e))
  if jax.process_index() == 0:
    print(summary_line(result))
    workdir = result['config']['workdir']
    if workdir:
      print(f'metrics, plot and checkpoints in {workdir}')
  return result


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
