# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Distributed selective SGD on the embedded MNIST subset, against baselines.

Thirty participants (by default) each hold 1/30 of the 4,000 training images
of ``mnist_subset``; every round each downloads ``theta_d`` of the global
parameters, trains one local epoch, and uploads the ``theta_u`` fraction of
its update with the largest magnitude (``selective_sharing``), optionally
through secure aggregation. Reported: the test accuracy of the server's
model, of centralized SGD on all data, and of standalone training (mean over
participants), for the same number of epochs.

    python examples/federated.py --order round_robin --theta-u 0.1
    python examples/federated.py --order asynchronous --concurrency 3
    python examples/federated.py --secure-aggregation --dropout 0.1
    python examples/federated.py --secure-aggregation --distributed-dp-epsilon 3

``--secure-aggregation`` runs synchronous rounds (every participant trains
from the same model; the server sees only the masked sum and applies the mean
of the survivors' uploads, the rule of every synchronous round of
``ssgd_optax.federated``) and reports the rounds lost to dropouts. With
``--distributed-dp-epsilon`` each participant adds its share of discrete
Gaussian noise to the secure sum, and the centralized baseline is DP-SGD at
the same epsilon.

The round is the library's (``federated.make_dssgd``, secure aggregation
included): the Flower apps run the same one, bit for bit for the same keys.
Functions are importable (``make_experiment``, ``train``, ``run_dssgd``,
``run_centralized``, ``run_central_dpsgd``, ``run_standalone``); the CLI is a
thin shell around them.
"""

import dataclasses
import os
import sys
import time
from typing import Any, NamedTuple

# The harness first: Ctrl-C during the imports below also ends in one line (exit 130).
from ssgd_examples import cli

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssgd_examples import data as data_lib
from ssgd_optax import federated
from ssgd_optax import selective_sharing

flag = cli.flag
_EMBEDDED = ('mnist_subset', 'digits')


class Setting(NamedTuple):
  """Data and model of one experiment."""
  x_train: np.ndarray  # (M, D) standardised, flattened
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def load(name: str = 'mnist_subset', *, seed: int = 0, max_train: int | None = None,
         data_dir: str | None = None) -> Setting:
  """Loads a data set as flattened, standardised float32 vectors."""
  ds = data_lib.load_dataset(name, seed=seed, data_dir=data_dir)
  flat = lambda x: ds.normalize(x).reshape(len(x), -1).astype(np.float32)
  xtr, ytr = flat(ds.x_train), ds.y_train
  if max_train is not None:
    xtr, ytr = xtr[:max_train], ytr[:max_train]
  return Setting(xtr, ytr, flat(ds.x_test), ds.y_test, ds.num_classes)


def make_mlp(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
  """A ReLU MLP's parameters, LeCun-normal kernels and zero biases."""
  params = []
  for k, (din, dout) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append({'w': jax.random.normal(k, (din, dout)) / np.sqrt(din), 'b': jnp.zeros(dout)})
  return params


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  """Logits of the MLP."""
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer['w'] + layer['b'])
  return x @ params[-1]['w'] + params[-1]['b']


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy."""
  return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(params, x), y).mean()


@jax.jit
def accuracy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """Top-1 accuracy."""
  return jnp.mean(jnp.argmax(mlp_apply(params, x), -1) == y)


class Experiment(NamedTuple):
  """A configured DSSGD run: the simulation, its start and its data."""
  sim: federated.DSSGD
  params: Any              # the initial model (pytree)
  xs: jax.Array            # (N, M, D) shards
  ys: jax.Array            # (N, M) labels
  key: jax.Array           # the simulation's key (sim.init)
  dropout_key: jax.Array


def secure_settings(participants: int, num_params: int, *, rounds: int,
                    distributed_dp_epsilon: float | None = None, dp_l2_clip: float = 1.0,
                    dp_delta: float = 1e-5) -> federated.SecureAggregation:
  """Secure aggregation at ``t = ceil(2N/3)``; with ``distributed_dp_epsilon``, noise for it.

  The distributed discrete Gaussian (Kairouz, Liu & Steinke 2021) is calibrated
  so that ``rounds`` released sums cost ``(epsilon, dp_delta)`` per participant
  (replace-one participant, ``m = t`` honest noise shares in every sum: no
  colluding participant assumed), with each upload L2-clipped to
  ``dp_l2_clip``; the ring is 64-bit when 32 bits cannot hold the noise.
  """
  t = -(-2 * participants // 3)  # > n/2: a smaller t lets an active server split the survivors
  if distributed_dp_epsilon is None:
    return federated.SecureAggregation(threshold=t)
  from ssgd_optax.federated import distributed_dp as ddp  # pylint: disable=import-outside-toplevel
  for bits in (32, 64):
    m = ddp.distributed_discrete_gaussian(dp_l2_clip, num_params, num_participants=participants,
                                          min_noise_shares=t, bits=bits)
    z = ddp.calibrate_distributed_noise(distributed_dp_epsilon, mechanism=m, rounds=rounds,
                                        delta=dp_delta)
    try:
      m = m._replace(noise_multiplier=z).validate()
    except ValueError:
      if bits == 64:
        raise
      continue
    return federated.SecureAggregation(threshold=t, bits=bits, dp=m)
  raise AssertionError('unreachable')


def make_experiment(setting: Setting, *, participants: int = 30, theta_u: float = 0.1,
                    theta_d: float = 1.0, order: str = 'round_robin',
                    learning_rate: float = 0.05, batch_size: int = 16, hidden: int = 64,
                    clip: float | None = None, max_staleness: int = 0,
                    concurrency: int | None = None,
                    secure: federated.SecureAggregation | None = None,
                    seed: int = 0) -> Experiment:
  """The model, the shards and the simulation of one run (``secure`` needs ``synchronous``)."""
  k_model, k_sim, k_drop = jax.random.split(jax.random.key(seed), 3)
  params = make_mlp(k_model, (setting.x_train.shape[1], hidden, setting.num_classes))
  xs, ys = federated.shard(setting.x_train, setting.y_train, participants, seed=seed)
  sim = federated.make_dssgd(
      loss_fn, params, num_participants=participants, learning_rate=learning_rate,
      batch_size=batch_size, upload=selective_sharing(theta_u, clip=clip), theta_d=theta_d,
      order=order, max_staleness=max_staleness, concurrency=concurrency,
      secure_aggregation=secure)
  return Experiment(sim, params, jnp.asarray(xs), jnp.asarray(ys), k_sim, k_drop)


def train(exp: Experiment, *, rounds: int, dropout: float = 0.0,
          quiet: bool = True) -> tuple[federated.SimulationState, dict[str, int]]:
  """Runs ``rounds`` rounds (each participant drops out with probability ``dropout``).

  With secure aggregation a round whose survivors are fewer than the
  threshold is lost (nothing applied); the counts say how many.
  """
  n = exp.sim.config.num_participants
  secure = exp.sim.config.secure_aggregation is not None
  # The secure round runs the protocol on the host and jits its own parts.
  step = exp.sim.round if secure else jax.jit(exp.sim.round)
  state = exp.sim.init(exp.key)
  applied = dropped = 0
  for r in cli.progress(range(rounds), desc='DSSGD rounds', unit='round', quiet=quiet):
    active = jax.random.uniform(jax.random.fold_in(exp.dropout_key, r), (n,)) >= dropout
    dropped += n - int(jnp.sum(active))
    state, info = step(state, exp.xs, exp.ys, active)
    applied += int(bool(jnp.any(info.accepted)))
  return state, {'applied_rounds': applied, 'dropouts': dropped}


def run_dssgd(setting: Setting, *, participants: int = 30, rounds: int = 10,
              theta_u: float = 0.1, theta_d: float = 1.0, order: str = 'round_robin',
              learning_rate: float = 0.05, batch_size: int = 16, hidden: int = 64,
              clip: float | None = None, max_staleness: int = 0,
              concurrency: int | None = None, dropout: float = 0.0,
              secure_aggregation: bool = False, distributed_dp_epsilon: float | None = None,
              dp_l2_clip: float = 1.0, dp_delta: float = 1e-5, seed: int = 0,
              quiet: bool = True) -> dict[str, Any]:
  """Trains with DSSGD and returns the server model's test accuracy.

  With ``secure_aggregation`` the rounds are synchronous whatever ``order``
  says (the server must receive all uploads of a round together to see only
  their sum); the server applies the mean of the survivors' uploads, as the
  plain synchronous order does (``ssgd_optax.federated``: adding the sum of
  30 updates computed from one model diverges). The result says how many
  rounds were lost because too few participants survived to unmask.
  """
  secure = None
  if secure_aggregation:
    order = 'synchronous'
    d, c = setting.x_train.shape[1], setting.num_classes
    num_params = d * hidden + hidden + hidden * c + c
    secure = secure_settings(participants, num_params, rounds=rounds,
                             distributed_dp_epsilon=distributed_dp_epsilon,
                             dp_l2_clip=dp_l2_clip, dp_delta=dp_delta)
  exp = make_experiment(setting, participants=participants, theta_u=theta_u, theta_d=theta_d,
                        order=order, learning_rate=learning_rate, batch_size=batch_size,
                        hidden=hidden, clip=clip, max_staleness=max_staleness,
                        concurrency=concurrency, secure=secure, seed=seed)
  state, counts = train(exp, rounds=rounds, dropout=dropout, quiet=quiet)
  acc = float(accuracy(exp.sim.unravel(state.server.params), setting.x_test, setting.y_test))
  out = {'accuracy': acc, 'num_params': exp.sim.num_params,
         'secure_rounds': counts['applied_rounds'] if secure_aggregation else 0,
         'lost_rounds': rounds - counts['applied_rounds'] if secure_aggregation else 0,
         'dropouts': counts['dropouts'], 'params': np.asarray(state.server.params)}
  if secure is not None and secure.dp is not None:
    out['epsilon'] = secure.dp.epsilon(rounds=rounds, delta=dp_delta)
    out['noise_multiplier'] = secure.dp.noise_multiplier
  return out


def run_centralized(setting: Setting, *, epochs: int = 10, learning_rate: float = 0.05,
                    batch_size: int = 16, hidden: int = 64, seed: int = 0) -> dict[str, Any]:
  """SGD on all training data for ``epochs`` epochs."""
  k_model, k_train = jax.random.split(jax.random.key(seed))
  params = make_mlp(k_model, (setting.x_train.shape[1], hidden, setting.num_classes))
  params = federated.train_centralized(loss_fn, params, setting.x_train, setting.y_train, k_train,
                                       learning_rate=learning_rate, batch_size=batch_size,
                                       epochs=epochs)
  return {'accuracy': float(accuracy(params, setting.x_test, setting.y_test))}


def run_central_dpsgd(setting: Setting, *, epsilon: float, delta: float = 1e-5,
                      epochs: int = 10, batch_size: int = 256, learning_rate: float = 1e-3,
                      clip_norm: float = 1.0, hidden: int = 64, seed: int = 0,
                      noise_seed: int | None = None) -> dict[str, Any]:
  """Central DP-SGD on all training data at ``(epsilon, delta)`` (add/remove one example).

  Poisson sampling at ``q = batch_size / M``, per-example gradients clipped
  to ``clip_norm``, Gaussian noise calibrated with the PLD accountant for
  ``round(epochs / q)`` steps, Adam. The same MLP as the federated run.
  The noise and sampling keys come from the OS unless ``noise_seed`` is set
  (which voids the guarantee).
  """
  from ssgd_optax import privacy  # pylint: disable=import-outside-toplevel
  m = len(setting.x_train)
  q = batch_size / m
  steps = max(1, round(epochs / q))
  mech = privacy.dpsgd_mechanism(clip_norm, None)
  z = privacy.calibrate_noise_multiplier(epsilon, mechanism=mech, sampling_rate=q, steps=steps,
                                         delta=delta)
  mech = mech._replace(noise_multiplier=z)
  secret = privacy.os_seed() if noise_seed is None else noise_seed
  k_noise, k_sample = jax.random.split(jax.random.key(secret))
  k_model = jax.random.split(jax.random.key(seed))[0]
  params = make_mlp(k_model, (setting.x_train.shape[1], hidden, setting.num_classes))
  tx = optax.chain(privacy.add_gaussian_noise(mechanism=mech, expected_batch_size=q * m,
                                              key=k_noise), optax.adam(learning_rate))
  opt = tx.init(params)
  max_batch = privacy.max_batch_size_for(m, q, steps=steps)
  x_all, y_all = jnp.asarray(setting.x_train), jnp.asarray(setting.y_train)

  @jax.jit
  def step(params, opt, key):
    idx, mask = privacy.poisson_sample(key, m, q, max_batch)
    grads = jax.vmap(jax.grad(lambda p, x, y: loss_fn(p, x[None], y[None])),
                     in_axes=(None, 0, 0))(params, x_all[idx], y_all[idx])
    clipped, _ = privacy.clip_global_per_example(grads, clip_norm)
    total = jax.tree.map(lambda g: jnp.tensordot(mask.astype(g.dtype), g, axes=1), clipped)
    updates, opt = tx.update(total, opt, params)
    return optax.apply_updates(params, updates), opt

  for t in range(steps):
    params, opt = step(params, opt, jax.random.fold_in(k_sample, t))
  eps = privacy.compute_epsilon(mech, sampling_rate=q, steps=steps, delta=delta)
  return {'accuracy': float(accuracy(params, setting.x_test, setting.y_test)), 'epsilon': eps,
          'noise_multiplier': z, 'steps': steps}


def run_standalone(setting: Setting, *, participants: int = 30, epochs: int = 10,
                   learning_rate: float = 0.05, batch_size: int = 16, hidden: int = 64,
                   seed: int = 0) -> dict[str, Any]:
  """Each participant alone on its shard; mean test accuracy over participants."""
  k_model, k_train = jax.random.split(jax.random.key(seed))
  params = make_mlp(k_model, (setting.x_train.shape[1], hidden, setting.num_classes))
  xs, ys = federated.shard(setting.x_train, setting.y_train, participants, seed=seed)
  models = federated.train_standalone(loss_fn, params, xs, ys, k_train,
                                      learning_rate=learning_rate, batch_size=batch_size,
                                      epochs=epochs)
  accs = jax.vmap(accuracy, in_axes=(0, None, None))(models, setting.x_test, setting.y_test)
  return {'accuracy': float(jnp.mean(accs))}


@dataclasses.dataclass(frozen=True)
class Config:
  """The example's settings; each field is a flag (``theta_u`` -> ``--theta-u``)."""
  dataset: str = flag('mnist_subset', 'data set (mnist, fashion_mnist, cifar10 need --data-dir)',
                      choices=data_lib.DATASETS)
  data_dir: str | None = flag(None, 'folder with the files of mnist/fashion_mnist/cifar10 '
                              '(default $SSGD_OPTAX_DATA)')
  max_train: int | None = flag(None, 'use only the first M training examples', type=int,
                               check=cli.at_least(1))
  participants: int = flag(30, 'participants, each with an equal shard', check=cli.at_least(1))
  rounds: int = flag(10, 'rounds = local epochs per participant', check=cli.at_least(1))
  theta_u: float = flag(0.1, 'fraction of each update uploaded',
                        check=cli.in_range(0, 1, lo_open=True))
  theta_d: float = flag(1.0, 'fraction of the global parameters downloaded',
                        check=cli.in_range(0, 1, lo_open=True))
  clip: float | None = flag(None, 'gamma: truncate uploaded values to [-gamma, gamma] '
                            '(default none)', type=float, check=cli.finite(positive=True))
  order: str | None = flag(None, 'who trains when (default round_robin; synchronous with '
                           '--secure-aggregation)', choices=federated.ORDERS)
  max_staleness: int = flag(0, 'asynchronous order: rounds a download may lag',
                            check=cli.at_least(0))
  concurrency: int | None = flag(None, 'asynchronous order only: participants training at once '
                                 '(a divisor of --participants; default all)', type=int,
                                 check=cli.at_least(1))
  dropout: float = flag(0.0, 'per-round dropout probability',
                        check=cli.in_range(0, 1, hi_open=True))
  lr: float = flag(0.05, 'local learning rate', check=cli.finite(positive=True))
  batch_size: int = flag(16, 'local batch size', check=cli.at_least(1))
  hidden: int = flag(64, 'hidden width of the MLP', check=cli.at_least(1))
  secure_aggregation: bool = flag(
      False, 'synchronous rounds with masked uploads (Bonawitz et al.): the server sees only '
      "the sum and applies the mean of the survivors' uploads")
  distributed_dp_epsilon: float | None = flag(
      None, 'with --secure-aggregation: every participant adds its share of discrete Gaussian '
      'noise so that the run costs (epsilon, --dp-delta) per participant (replace-one '
      'participant); the centralized baseline becomes DP-SGD at the same epsilon (one example)',
      type=float, check=cli.finite(positive=True))
  dp_l2_clip: float = flag(1.0, 'distributed DP: L2 clip of each upload',
                           check=cli.finite(positive=True))
  dp_delta: float = flag(1e-5, 'distributed DP and DP-SGD: delta',
                         check=cli.in_range(0, 1, lo_open=True, hi_open=True))
  no_baselines: bool = flag(False, 'skip centralized and standalone training')
  seed: int = flag(0, 'seed of the split, the model and the dropouts', check=cli.at_least(0))
  quiet: bool = flag(False, 'no progress bar')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    if self.secure_aggregation and self.order not in (None, 'synchronous'):
      raise ValueError(f'--secure-aggregation runs synchronous rounds (all participants train '
                       f'from the same model and the server sees only the sum); --order '
                       f'{self.order} cannot be kept. Leave --order out.')
    if self.distributed_dp_epsilon is not None and not self.secure_aggregation:
      raise ValueError('--distributed-dp-epsilon adds noise inside secure aggregation: pass '
                       '--secure-aggregation too.')
    if self.secure_aggregation and self.participants < 3:
      raise ValueError(f'--secure-aggregation needs --participants >= 3 (the sum of two '
                       f'uploads reveals each to the other); got {self.participants}.')
    order = self.order or 'round_robin'
    if self.concurrency is not None:
      if order != 'asynchronous':
        raise ValueError(f'--concurrency applies to --order asynchronous only; got --order '
                         f'{order}.')
      if self.participants % self.concurrency:
        raise ValueError(f'--concurrency {self.concurrency} must divide --participants '
                         f'{self.participants}.')
    if self.max_staleness and order != 'asynchronous':
      raise ValueError(f'--max-staleness applies to --order asynchronous only; got --order '
                       f'{order}.')
    if self.dataset not in _EMBEDDED:
      data_dir = self.data_dir or os.environ.get('SSGD_OPTAX_DATA')
      if not data_dir:
        raise ValueError(f'--dataset {self.dataset} needs --data-dir (or $SSGD_OPTAX_DATA): a '
                         'folder with its files, see docs/training.md.')
      if not os.path.isdir(data_dir):
        raise ValueError(f'--data-dir {data_dir!r} is not a directory.')
    elif self.data_dir is not None:
      raise ValueError(f'--data-dir is for the file-based data sets; {self.dataset} is '
                       'embedded.')
    if self.max_train is not None and self.max_train < self.participants:
      raise ValueError(f'--max-train {self.max_train} leaves some of the {self.participants} '
                       '--participants without data.')


def main(argv: list[str] | None = None) -> dict[str, Any]:
  a = cli.parse(Config, argv, description=__doc__)
  order = 'synchronous' if a.secure_aggregation else (a.order or 'round_robin')
  setting = load(a.dataset, seed=a.seed, max_train=a.max_train, data_dir=a.data_dir)
  if len(setting.x_train) < a.participants:
    raise SystemExit(f'--participants {a.participants} exceeds the {len(setting.x_train)} '
                     'training examples.')
  dp = a.distributed_dp_epsilon
  print(f'{a.dataset}: {a.participants} participants, {a.rounds} rounds, order={order}, '
        f'theta_u={a.theta_u}, theta_d={a.theta_d}'
        + (", secure aggregation (server applies the survivors' mean)"
           if a.secure_aggregation else '')
        + (f', distributed DP (epsilon={dp:g}, delta={a.dp_delta:g} per participant, L2 clip '
           f'{a.dp_l2_clip:g})' if dp is not None else ''), flush=True)
  common = dict(learning_rate=a.lr, batch_size=a.batch_size, hidden=a.hidden, seed=a.seed)
  t0 = time.perf_counter()
  result = {'dssgd': run_dssgd(setting, participants=a.participants, rounds=a.rounds,
                               theta_u=a.theta_u, theta_d=a.theta_d,
                               order=a.order or 'round_robin', clip=a.clip,
                               max_staleness=a.max_staleness, concurrency=a.concurrency,
                               dropout=a.dropout, secure_aggregation=a.secure_aggregation,
                               distributed_dp_epsilon=dp, dp_l2_clip=a.dp_l2_clip,
                               dp_delta=a.dp_delta, quiet=a.quiet, **common)}
  result['dssgd']['seconds'] = time.perf_counter() - t0
  result['dssgd']['order'] = order
  print(f'  {"dssgd":12s} test accuracy {result["dssgd"]["accuracy"]:.4f}'
        + (f' (epsilon {result["dssgd"]["epsilon"]:.3g}, noise multiplier '
           f'{result["dssgd"]["noise_multiplier"]:.3g})' if dp is not None else ''), flush=True)
  if a.secure_aggregation or a.dropout:
    d = result['dssgd']
    print(f'  {d["dropouts"]} dropouts over {a.rounds} rounds'
          + (f'; {d["lost_rounds"]} round(s) lost (too few survivors to unmask)'
             if a.secure_aggregation else ''), flush=True)
  if not a.no_baselines:
    if not a.quiet:
      print('  training the baselines ...', file=sys.stderr, flush=True)
    if dp is None:
      result['centralized'] = run_centralized(setting, epochs=a.rounds, **common)
      print(f'  {"centralized":12s} test accuracy {result["centralized"]["accuracy"]:.4f}',
            flush=True)
    else:
      c = run_central_dpsgd(setting, epsilon=dp, delta=a.dp_delta, epochs=a.rounds,
                            hidden=a.hidden, seed=a.seed)
      result['centralized_dpsgd'] = c
      print(f'  {"DP-SGD":12s} test accuracy {c["accuracy"]:.4f} (epsilon {c["epsilon"]:.3g}, '
            f'noise multiplier {c["noise_multiplier"]:.3g}, {c["steps"]} steps)', flush=True)
    result['standalone'] = run_standalone(setting, participants=a.participants,
                                          epochs=a.rounds, **common)
    print(f'  {"standalone":12s} test accuracy {result["standalone"]["accuracy"]:.4f}',
          flush=True)
  return result


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
