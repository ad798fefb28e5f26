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
    python examples/federated.py --order asynchronous --secure-aggregation

Functions are importable (``make_mlp``, ``run_dssgd``, ``run_centralized``,
``run_standalone``); the CLI is a thin shell around them.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssgd_optax import data as data_lib
from ssgd_optax import federated
from ssgd_optax.selective import selective_sharing


class Setting(NamedTuple):
  """Data and model of one experiment."""
  x_train: np.ndarray  # (M, D) standardised, flattened
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def load(name: str = 'mnist_subset', *, seed: int = 0, max_train: int | None = None) -> Setting:
  """Loads a data set as flattened, standardised float32 vectors."""
  ds = data_lib.load_dataset(name, seed=seed)
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
              secure_aggregation: bool = False, seed: int = 0) -> dict[str, Any]:
  """Trains with DSSGD and returns the server model's test accuracy."""
  key = jax.random.key(seed)
  k_model, k_sim, k_drop = jax.random.split(key, 3)
  params = make_mlp(k_model, (setting.x_train.shape[1], hidden, setting.num_classes))
  xs, ys = federated.shard(setting.x_train, setting.y_train, participants, seed=seed)
  sim = federated.make_dssgd(
      loss_fn, params, num_participants=participants, learning_rate=learning_rate,
      batch_size=batch_size, upload=selective_sharing(theta_u, clip=clip), theta_d=theta_d,
      order=order, max_staleness=max_staleness,
      concurrency=concurrency if order == 'asynchronous' else None)
  state = sim.init(k_sim)
  step = jax.jit(sim.round)
  xs, ys = jnp.asarray(xs), jnp.asarray(ys)
  secagg_rounds = 0
  for r in range(rounds):
    active = jax.random.uniform(jax.random.fold_in(k_drop, r), (participants,)) >= dropout
    if secure_aggregation:
      state, applied = secure_round(sim, state, xs, ys, active, round_=r)
      secagg_rounds += int(applied)
    else:
      state, _ = step(state, xs, ys, active)
  acc = float(accuracy(sim.unravel(state.server.params), setting.x_test, setting.y_test))
  return {'accuracy': acc, 'num_params': sim.num_params, 'secure_rounds': secagg_rounds}


def secure_round(sim: federated.DSSGD, state: federated.SimulationState, xs: jax.Array,
                 ys: jax.Array, active: jax.Array, *,
                 round_: int) -> tuple[federated.SimulationState, bool]:
  """One synchronous round whose uploads the server sees only as a masked sum.

  Every participant computes its upload from the same global parameters (the
  asynchronous order with no staleness), then the uploads go through
  :mod:`ssgd_optax.federated.secure_aggregation`; inactive participants drop
  out after the key exchange and their masks are recovered. Returns the new
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
    total = sa.aggregate(uploads, dropped=[i for i in range(n) if i not in survivors],
                         threshold=max(2, (2 * n) // 3), round_=round_)
  except sa.DropoutError:
    # Too few survivors to unmask: the round is lost, nothing is applied.
    return state._replace(key=next_key), False
  srv = state.server
  srv = srv._replace(params=srv.params + jnp.asarray(total, srv.params.dtype),
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--dataset', default='mnist_subset', choices=data_lib.DATASETS)
  p.add_argument('--max-train', type=int, default=None, help='use only the first M examples')
  p.add_argument('--participants', type=int, default=30)
  p.add_argument('--rounds', type=int, default=10, help='rounds = local epochs per participant')
  p.add_argument('--theta-u', type=float, default=0.1)
  p.add_argument('--theta-d', type=float, default=1.0)
  p.add_argument('--clip', type=float, default=None, help='gamma; default no truncation')
  p.add_argument('--order', default='round_robin', choices=federated.ORDERS)
  p.add_argument('--max-staleness', type=int, default=0)
  p.add_argument('--concurrency', type=int, default=None,
                 help='asynchronous order: participants training at once (default all)')
  p.add_argument('--dropout', type=float, default=0.0, help='per-round dropout probability')
  p.add_argument('--lr', type=float, default=0.05)
  p.add_argument('--batch-size', type=int, default=16)
  p.add_argument('--hidden', type=int, default=64)
  p.add_argument('--secure-aggregation', action='store_true',
                 help='synchronous rounds with masked uploads (Bonawitz et al.)')
  p.add_argument('--no-baselines', action='store_true')
  p.add_argument('--seed', type=int, default=0)
  a = p.parse_args(argv)
  setting = load(a.dataset, seed=a.seed, max_train=a.max_train)
  common = dict(learning_rate=a.lr, batch_size=a.batch_size, hidden=a.hidden, seed=a.seed)
  t0 = time.perf_counter()
  result = {'dssgd': run_dssgd(setting, participants=a.participants, rounds=a.rounds,
                               theta_u=a.theta_u, theta_d=a.theta_d, order=a.order,
                               clip=a.clip, max_staleness=a.max_staleness,
                               concurrency=a.concurrency, dropout=a.dropout,
                               secure_aggregation=a.secure_aggregation, **common)}
  result['dssgd']['seconds'] = time.perf_counter() - t0
  if not a.no_baselines:
    result['centralized'] = run_centralized(setting, epochs=a.rounds, **common)
    result['standalone'] = run_standalone(setting, participants=a.participants,
                                          epochs=a.rounds, **common)
  print(f'{a.dataset}: {a.participants} participants, {a.rounds} rounds, order={a.order}, '
        f'theta_u={a.theta_u}, theta_d={a.theta_d}'
        + (', secure aggregation' if a.secure_aggregation else ''))
  for name, r in result.items():
    print(f'  {name:12s} test accuracy {r["accuracy"]:.4f}')
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
