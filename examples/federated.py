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

``--secure-aggregation`` runs synchronous rounds (every participant trains
from the same model; the server sees only the masked sum and applies the mean
of the survivors' uploads) and reports the rounds lost to dropouts.

Functions are importable (``make_mlp``, ``run_dssgd``, ``run_centralized``,
``run_standalone``); the CLI is a thin shell around them.
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


def run_dssgd(setting: Setting, *, participants: int = 30, rounds: int = 10,
              theta_u: float = 0.1, theta_d: float = 1.0, order: str = 'round_robin',
              learning_rate: float = 0.05, batch_size: int = 16, hidden: int = 64,
              clip: float | None = None, max_staleness: int = 0,
              concurrency: int | None = None, dropout: float = 0.0,
              secure_aggregation: bool = False, seed: int = 0,
              quiet: bool = True) -> dict[str, Any]:
  """Trains with DSSGD and returns the server model's test accuracy.

  With ``secure_aggregation`` the rounds are synchronous whatever ``order``
  says (the server must receive all uploads of a round together to see only
  their sum) and the server applies the *mean* of the survivors' uploads:
  adding the sum of 30 simultaneous updates diverges. The result says how
  many rounds were lost because too few participants survived to unmask.
  """
  key = jax.random.key(seed)
  k_model, k_sim, k_drop = jax.random.split(key, 3)
  params = make_mlp(k_model, (setting.x_train.shape[1], hidden, setting.num_classes))
  xs, ys = federated.shard(setting.x_train, setting.y_train, participants, seed=seed)
  sim = federated.make_dssgd(
      loss_fn, params, num_participants=participants, learning_rate=learning_rate,
      batch_size=batch_size, upload=selective_sharing(theta_u, clip=clip), theta_d=theta_d,
      order=order, max_staleness=max_staleness,
      concurrency=concurrency)
  state = sim.init(k_sim)
  step = jax.jit(sim.round)
  xs, ys = jnp.asarray(xs), jnp.asarray(ys)
  secagg_rounds = 0
  dropped = 0
  for r in cli.progress(range(rounds), desc='DSSGD rounds', unit='round', quiet=quiet):
    active = jax.random.uniform(jax.random.fold_in(k_drop, r), (participants,)) >= dropout
    dropped += participants - int(jnp.sum(active))
    if secure_aggregation:
      state, applied = secure_round(sim, state, xs, ys, active, round_=r)
      secagg_rounds += int(applied)
    else:
      state, _ = step(state, xs, ys, active)
  acc = float(accuracy(sim.unravel(state.server.params), setting.x_test, setting.y_test))
  return {'accuracy': acc, 'num_params': sim.num_params, 'secure_rounds': secagg_rounds,
          'lost_rounds': rounds - secagg_rounds if secure_aggregation else 0,
          'dropouts': dropped}


def secure_round(sim: federated.DSSGD, state: federated.SimulationState, xs: jax.Array,
                 ys: jax.Array, active: jax.Array, *,
                 round_: int) -> tuple[federated.SimulationState, bool]:
  """One synchronous round whose uploads the server sees only as a masked sum.

  Every participant computes its upload from the same global parameters (the
  asynchronous order with no staleness), then the uploads go through
  :mod:`ssgd_optax.federated.secure_aggregation`; inactive participants drop
  out after the key exchange and their masks are recovered. The server adds
  the mean of the survivors' uploads. Returns the new
  state and whether the round was applied (``False`` when fewer than the
  threshold survive: the round is lost and nothing changes but the key).
  """
  from ssgd_optax.federated import secure_aggregation as sa
  n = xs.shape[0]
  keys = jax.random.split(jax.random.fold_in(state.key, 7), n)
  mask = jnp.ones((sim.num_params,), bool)
  local, up, uploads = jax.jit(jax.vmap(
      sim.client_update, in_axes=(0, 0, None, None, 0, 0, 0)))(
          state.clients.params, state.clients.upload_state, state.server.params, mask, xs, ys,
          keys)
  uploads = np.asarray(uploads)
  survivors = [i for i in range(n) if bool(active[i])]
  next_key = jax.random.split(state.key)[0]
  try:
    # t = ceil(2n/3) > n/2: a smaller t lets an active server split the survivors.
    total = sa.secure_sum(uploads, dropped=[i for i in range(n) if i not in survivors],
                          threshold=-(-2 * n // 3), round_=round_)
  except sa.DropoutError:
    # Too few survivors to unmask: the round is lost, nothing is applied.
    return state._replace(key=next_key), False
  srv = state.server
  # The mean of the survivors' uploads (the server knows how many survived):
  # adding the sum of n simultaneous local updates diverges (20 % at n = 30).
  mean = jnp.asarray(total, srv.params.dtype) / len(survivors)
  srv = srv._replace(params=srv.params + mean,
                     round=srv.round + 1)
  act = jnp.asarray(active)[:, None]
  clients = federated.ClientStates(jnp.where(act, local, state.clients.params), up)
  return state._replace(server=srv, clients=clients, history=srv.params[None],
                        key=next_key), True


def run_centralized(setting: Setting, *, epochs: int = 10, learning_rate: float = 0.05,
                    batch_size: int = 16, hidden: int = 64, seed: int = 0) -> dict[str, Any]:
  """SGD on all training data for ``epochs`` epochs."""
  k_model, k_train = jax.random.split(jax.random.key(seed))
  params = make_mlp(k_model, (setting.x_train.shape[1], hidden, setting.num_classes))
  params = federated.train_centralized(loss_fn, params, setting.x_train, setting.y_train, k_train,
                                       learning_rate=learning_rate, batch_size=batch_size,
                                       epochs=epochs)
  return {'accuracy': float(accuracy(params, setting.x_test, setting.y_test))}


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
  no_baselines: bool = flag(False, 'skip centralized and standalone training')
  seed: int = flag(0, 'seed of the split, the model and the dropouts', check=cli.at_least(0))
  quiet: bool = flag(False, 'no progress bar')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    if self.secure_aggregation and self.order is not None:
      raise ValueError(f'--secure-aggregation runs synchronous rounds (all participants train '
                       f'from the same model and the server sees only the sum); --order '
                       f'{self.order} cannot be kept. Leave --order out.')
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
  print(f'{a.dataset}: {a.participants} participants, {a.rounds} rounds, order={order}, '
        f'theta_u={a.theta_u}, theta_d={a.theta_d}'
        + (", secure aggregation (server applies the survivors' mean)"
           if a.secure_aggregation else ''), flush=True)
  common = dict(learning_rate=a.lr, batch_size=a.batch_size, hidden=a.hidden, seed=a.seed)
  t0 = time.perf_counter()
  result = {'dssgd': run_dssgd(setting, participants=a.participants, rounds=a.rounds,
                               theta_u=a.theta_u, theta_d=a.theta_d,
                               order=a.order or 'round_robin', clip=a.clip,
                               max_staleness=a.max_staleness, concurrency=a.concurrency,
                               dropout=a.dropout, secure_aggregation=a.secure_aggregation,
                               quiet=a.quiet, **common)}
  result['dssgd']['seconds'] = time.perf_counter() - t0
  result['dssgd']['order'] = order
  print(f'  {"dssgd":12s} test accuracy {result["dssgd"]["accuracy"]:.4f}', flush=True)
  if a.secure_aggregation or a.dropout:
    d = result['dssgd']
    print(f'  {d["dropouts"]} dropouts over {a.rounds} rounds'
          + (f'; {d["lost_rounds"]} round(s) lost (too few survivors to unmask)'
             if a.secure_aggregation else ''), flush=True)
  if not a.no_baselines:
    if not a.quiet:
      print('  training the baselines ...', file=sys.stderr, flush=True)
    result['centralized'] = run_centralized(setting, epochs=a.rounds, **common)
    print(f'  {"centralized":12s} test accuracy {result["centralized"]["accuracy"]:.4f}',
          flush=True)
    result['standalone'] = run_standalone(setting, participants=a.participants,
                                          epochs=a.rounds, **common)
    print(f'  {"standalone":12s} test accuracy {result["standalone"]["accuracy"]:.4f}',
          flush=True)
  return result


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
