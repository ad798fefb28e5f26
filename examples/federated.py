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

``--dp-epsilon`` releases every upload by the sparse vector instead
(``privacy.dp_selective_sharing``, Shokri & Shmatikov's DP variant):
``epsilon``-DP per participant per round (replace-one participant, ``--clip``
is gamma).

Runs survive kills, as ``examples/dp_ssgd.py``'s do: each run writes to a
fresh ``runs/federated/<date-time>`` (or ``--workdir``) its ``config.json``,
verified checkpoints of the simulation (global model, every participant's
local model and upload state, round, release counts; never the secret DP
noise keys) every ``--checkpoint-every`` rounds and ``results.json``;
``--resume`` continues it. With ``--ledger DIR`` each participant's data set
(its shard) has its own privacy ledger in ``DIR``, and every round's release
is recorded in it before it is made; ``--total-epsilon`` refuses a run that
would take any participant's composed total over the limit::

    python examples/federated.py --dp-epsilon 0.5 --clip 0.01 --workdir runs/a \
        --ledger ledgers/
    python examples/federated.py --workdir runs/a --resume     # after a kill

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

from ssgd_examples import checkpoints
from ssgd_examples import data as data_lib
from ssgd_optax import federated
from ssgd_optax import privacy
from ssgd_optax import selective_sharing

flag = cli.flag
_EMBEDDED = ('mnist_subset', 'digits')
RUNS_DIR = os.path.join('runs', 'federated')


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
                    dp_mechanism: privacy.SparseVectorMechanism | None = None,
                    noise_seed: int | None = None, seed: int = 0) -> Experiment:
  """The model, the shards and the simulation of one run (``secure`` needs ``synchronous``).

  With ``dp_mechanism`` every upload is released by ``privacy.dp_selective_sharing``;
  its noise key comes from the operating system unless ``noise_seed`` is set
  (which voids the guarantee).
  """
  k_model, k_sim, k_drop = jax.random.split(jax.random.key(seed), 3)
  params = make_mlp(k_model, (setting.x_train.shape[1], hidden, setting.num_classes))
  xs, ys = federated.shard(setting.x_train, setting.y_train, participants, seed=seed)
  if dp_mechanism is None:
    upload = selective_sharing(theta_u, clip=clip)
  else:
    # The guarantee assumes noise nobody can regenerate: a secret seed. The
    # simulation folds each participant's index into it.
    secret = privacy.os_seed() if noise_seed is None else noise_seed
    upload = privacy.dp_selective_sharing(mechanism=dp_mechanism, key=jax.random.key(secret))
  sim = federated.make_dssgd(
      loss_fn, params, num_participants=participants, learning_rate=learning_rate,
      batch_size=batch_size, upload=upload, theta_d=theta_d,
      order=order, max_staleness=max_staleness, concurrency=concurrency,
      secure_aggregation=secure)
  return Experiment(sim, params, jnp.asarray(xs), jnp.asarray(ys), k_sim, k_drop)


class Ledgers(NamedTuple):
  """Each participant's privacy ledger (one per shard) and what they record."""
  ledgers: list[privacy.PrivacyLedger]
  mechanism: Any            # one participant's release in one round
  accountant: str
  delta: float
  total_epsilon: float | None = None
  label: str = ''


def open_ledgers(folder: str, setting_name: str, xs: Any, ys: Any) -> list[privacy.PrivacyLedger]:
  """``folder/participant-<i>.json`` for every shard (replace-one participant: its whole
  data set is the unit); a bad ledger ends the program in one line (exit status 2)."""
  os.makedirs(folder, exist_ok=True)
  n = len(xs)
  return [checkpoints.open_ledger(os.path.join(folder, f'participant-{i}.json'),
                                  dataset=f'{setting_name} participant {i} of {n}',
                                  arrays=(np.asarray(xs[i]), np.asarray(ys[i])),
                                  neighboring_relation='replace_one') for i in range(n)]


def _snapshot(state: federated.SimulationState) -> federated.SimulationState:
  """The state to checkpoint: the simulation key as data (derived from ``--seed``, no
  secret: it draws downloads, turns and local batches); the upload state's DP noise keys
  stay keys (:class:`ssgd_examples.checkpoints.TreeCheckpoints` omits them unless kept)."""
  return state._replace(key=jax.random.key_data(state.key))


def train(exp: Experiment, *, rounds: int, dropout: float = 0.0, quiet: bool = True,
          checkpoint_dir: str | None = None, checkpoint_every: int = 1, resume: bool = False,
          keep_keys: bool = True, stop_after_rounds: int | None = None,
          ledgers: Ledgers | None = None) -> tuple[federated.SimulationState, dict[str, Any]]:
  """Runs ``rounds`` rounds (each participant drops out with probability ``dropout``).

  With secure aggregation a round whose survivors are fewer than the
  threshold is lost (nothing applied); the counts say how many.

  Args:
    exp: the experiment.
    rounds: rounds of the whole run.
    dropout: per-round dropout probability.
    quiet: no progress bar.
    checkpoint_dir: folder of the run's checkpoints (``None``: none).
    checkpoint_every: rounds between checkpoints.
    resume: continue from the newest intact checkpoint in ``checkpoint_dir``.
    keep_keys: save the upload's noise keys (only when they are no secret).
    stop_after_rounds: stop after this round, as if preempted.
    ledgers: each participant's privacy ledger: a round's release is recorded
      in the ledger of every participant asked to upload, before the round.

  Returns:
    The final state and the counts: ``applied_rounds``, ``dropouts``,
    ``rounds`` (done), ``releases`` (per participant, over the whole run).
  """
  n = exp.sim.config.num_participants
  secure = exp.sim.config.secure_aggregation is not None
  # The secure round runs the protocol on the host and jits its own parts.
  step = exp.sim.round if secure else jax.jit(exp.sim.round)
  state = exp.sim.init(exp.key)
  counts = {'applied_rounds': 0, 'dropouts': 0, 'rounds': 0, 'releases': [0] * n}
  saved = checkpoints.TreeCheckpoints(checkpoint_dir, keep_keys=keep_keys,
                                      every=checkpoint_every)
  if resume:
    restored = saved.restore(_snapshot(state))
    if restored is not None:
      state = restored.state._replace(key=jax.random.wrap_key_data(
          restored.state.key, impl=jax.random.key_impl(state.key)))
      counts = {k: restored.meta[k] for k in counts}
      if not quiet:
        print(f'  resumed at round {counts["rounds"]}/{rounds} from {checkpoint_dir}',
              flush=True)
  first = counts['rounds']
  last = min(rounds, stop_after_rounds or rounds)
  entries = []
  if ledgers is not None and first < last:
    for ledger in ledgers.ledgers:  # refused here, before any round, over the total
      entries.append(ledger.start_run(
          ledgers.mechanism, planned_steps=rounds - first, total_epsilon=ledgers.total_epsilon,
          delta=ledgers.delta, accountant=ledgers.accountant, label=ledgers.label,
          steps_per_write=checkpoint_every))
  ran = [0] * n  # this process's releases, per participant

  def save(r, force=False):
    saved.save(r, _snapshot(state), dict(counts), force=force)

  try:
    for r in cli.progress(range(first, last), desc='DSSGD rounds', unit='round', quiet=quiet):
      active = jax.random.uniform(jax.random.fold_in(exp.dropout_key, r), (n,)) >= dropout
      asked = [int(i) for i in np.flatnonzero(np.asarray(active))]
      for i in asked if entries else ():
        entries[i].reserve(ran[i] + 1)  # written ahead: a kill never under-counts
      state, info = step(state, exp.xs, exp.ys, active)
      checkpoints.fault_point('step')
      for i in asked:
        ran[i] += 1
        counts['releases'][i] += 1
      counts['dropouts'] += n - len(asked)
      counts['applied_rounds'] += int(bool(jnp.any(info.accepted)))
      counts['rounds'] = r + 1
      save(r + 1, force=r + 1 == last)
  except privacy.TotalBudgetExceededError:
    if counts['rounds'] > first:
      save(counts['rounds'], force=True)  # keep what was done
    raise
  finally:
    saved.close()
  for i, entry in enumerate(entries):
    entry.finish(ran[i])
  return state, counts


def dp_mechanism(theta_u: float, dp_epsilon: float | None,
                 clip: float | None) -> privacy.SparseVectorMechanism | None:
  """The sparse-vector mechanism of ``--dp-epsilon`` uploads (``None`` without it)."""
  if dp_epsilon is None:
    return None
  return privacy.sparse_vector_mechanism(theta_u, epsilon=dp_epsilon, clip=clip)


def release_mechanism(svt: Any, secure: federated.SecureAggregation | None) -> tuple[Any, str]:
  """One participant's DP release in one round (``None``: none) and its accountant."""
  if svt is not None:
    return svt, 'pld'
  if secure is not None and secure.dp is not None:
    return secure.dp, 'rdp'  # zCDP: the RDP accountant
  return None, 'pld'


def run_dssgd(setting: Setting, *, participants: int = 30, rounds: int = 10,
              theta_u: float = 0.1, theta_d: float = 1.0, order: str = 'round_robin',
              learning_rate: float = 0.05, batch_size: int = 16, hidden: int = 64,
              clip: float | None = None, max_staleness: int = 0,
              concurrency: int | None = None, dropout: float = 0.0,
              secure_aggregation: bool = False, distributed_dp_epsilon: float | None = None,
              dp_l2_clip: float = 1.0, dp_delta: float = 1e-5, dp_epsilon: float | None = None,
              noise_seed: int | None = None, seed: int = 0, quiet: bool = True,
              checkpoint_dir: str | None = None, checkpoint_every: int = 1,
              resume: bool = False, stop_after_rounds: int | None = None,
              ledgers: list[privacy.PrivacyLedger] | None = None,
              total_epsilon: float | None = None, label: str = '') -> dict[str, Any]:
  """Trains with DSSGD and returns the server model's test accuracy.

  With ``secure_aggregation`` the rounds are synchronous whatever ``order``
  says (the server must receive all uploads of a round together to see only
  their sum); the server applies the mean of the survivors' uploads, as the
  plain synchronous order does (``ssgd_optax.federated``: adding the sum of
  30 updates computed from one model diverges). The result says how many
  rounds were lost because too few participants survived to unmask.

  With ``dp_epsilon`` every upload is a sparse-vector release
  (``privacy.dp_selective_sharing``, gamma = ``clip``), ``dp_epsilon``-DP per
  participant per round; ``noise_seed`` (``None``: the OS) keys its noise.
  With ``ledgers`` (:func:`open_ledgers`, one per participant) each
  participant's releases (the sparse vector's or the distributed DP's) are
  recorded in its own ledger before each round, and
  ``total_epsilon`` limits every participant's composed total. The run
  arguments (``checkpoint_dir``...) are :func:`train`'s.
  """
  secure = None
  if secure_aggregation:
    order = 'synchronous'
    d, c = setting.x_train.shape[1], setting.num_classes
    num_params = d * hidden + hidden + hidden * c + c
    secure = secure_settings(participants, num_params, rounds=rounds,
                             distributed_dp_epsilon=distributed_dp_epsilon,
                             dp_l2_clip=dp_l2_clip, dp_delta=dp_delta)
  svt = dp_mechanism(theta_u, dp_epsilon, clip)
  exp = make_experiment(setting, participants=participants, theta_u=theta_u, theta_d=theta_d,
                        order=order, learning_rate=learning_rate, batch_size=batch_size,
                        hidden=hidden, clip=clip, max_staleness=max_staleness,
                        concurrency=concurrency, secure=secure, dp_mechanism=svt,
                        noise_seed=noise_seed, seed=seed)
  mechanism, accountant = release_mechanism(svt, secure)
  book = None
  if ledgers is not None:
    if mechanism is None:
      raise ValueError('a privacy ledger records DP releases; this run makes none (pass '
                       '--dp-epsilon or --distributed-dp-epsilon).')
    book = Ledgers(ledgers, mechanism, accountant, dp_delta, total_epsilon, label)
  state, counts = train(exp, rounds=rounds, dropout=dropout, quiet=quiet,
                        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                        resume=resume, keep_keys=svt is None or noise_seed is not None,
                        stop_after_rounds=stop_after_rounds, ledgers=book)
  acc = float(accuracy(exp.sim.unravel(state.server.params), setting.x_test, setting.y_test))
  done = counts['rounds']
  out = {'accuracy': acc, 'num_params': exp.sim.num_params, 'rounds': done,
         'completed': done == rounds,
         'secure_rounds': counts['applied_rounds'] if secure_aggregation else 0,
         'lost_rounds': done - counts['applied_rounds'] if secure_aggregation else 0,
         'dropouts': counts['dropouts'], 'releases': counts['releases'],
         'params': np.asarray(state.server.params)}
  if mechanism is not None:
    # Each participant's cost over the rounds it uploaded in (the one accountant).
    def epsilon(k):
      if svt is None and k:  # with the share of delta that the noise's truncation takes
        return float(mechanism.epsilon(rounds=k, delta=dp_delta))
      return float(privacy.compute_epsilon(mechanism, steps=k, delta=dp_delta,
                                           accountant=accountant))
    eps = [epsilon(k) for k in counts['releases']]
    out['epsilon'] = max(eps)
    out['epsilon_per_participant'] = eps
    if secure is not None and secure.dp is not None:
      out['noise_multiplier'] = secure.dp.noise_multiplier
  if ledgers is not None:
    out['ledger_epsilon'] = max(ledger.spent(dp_delta, accountant=accountant)
                                for ledger in ledgers)
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
class Config(checkpoints.RunFlags):
  """The example's settings; each field is a flag (``theta_u`` -> ``--theta-u``)."""
  LEDGER_IS_FOLDER = True
  checkpoint_every: int | None = flag(None, 'rounds between checkpoints (default: 1)', type=int,
                                      check=cli.at_least(1), resume_may_differ=True)
  stop_after_steps: int | None = flag(
      None, 'stop after this many rounds, as if preempted; then --resume', type=int,
      check=cli.at_least(1), resume_may_differ=True)
  ledger: str | None = flag(
      None, "a folder of privacy ledgers, one per participant's data set (its shard): each "
      'round is recorded before it is released (created if missing; see docs/privacy.md); '
      'needs --dp-epsilon or --distributed-dp-epsilon')
  total_epsilon: float | None = flag(
      None, "refuse a run that would take any participant's composed epsilon (at --dp-delta) "
      'over this total; needs --ledger', type=float, check=cli.finite(positive=True),
      resume_may_differ=True)
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
  dp_epsilon: float | None = flag(
      None, "DP selective sharing: every upload is a sparse-vector release (NumericSparse), "
      'epsilon-DP per participant per round (replace-one participant); needs --clip (gamma)',
      type=float, check=cli.finite(positive=True))
  reproducible_noise: bool = flag(
      False, 'derive the --dp-epsilon noise keys from --seed so that runs repeat exactly. VOIDS '
      'THE PRIVACY GUARANTEE: whoever knows the seed can regenerate the noise')
  no_baselines: bool = flag(False, 'skip centralized and standalone training')
  seed: int = flag(0, 'seed of the split, the model and the dropouts', check=cli.at_least(0))
  quiet: bool = flag(False, 'no progress bar', resume_may_differ=True)
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    if self.secure_aggregation and self.order not in (None, 'synchronous'):
      raise ValueError(f'--secure-aggregation runs synchronous rounds (all participants train '
                       f'from the same model and the server sees only the sum); --order '
                       f'{self.order} cannot be kept. Leave --order out.')
    if self.dp_epsilon is not None and self.clip is None:
      raise ValueError('--dp-epsilon needs --clip (gamma, the bound on every uploaded value '
                       'that the sparse vector\'s sensitivity rests on).')
    if self.dp_epsilon is not None and self.distributed_dp_epsilon is not None:
      raise ValueError('--dp-epsilon and --distributed-dp-epsilon exclude each other (one DP '
                       'release per round).')
    if self.ledger is not None and self.dp_epsilon is None and (
        self.distributed_dp_epsilon is None):
      raise ValueError('--ledger records DP releases; this run makes none: pass --dp-epsilon '
                       'or --distributed-dp-epsilon.')
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
    self.validate_run()


def _resume(config: Config, explicit: set[str]) -> Config:
  if config.resume and config.workdir != '':
    return checkpoints.merge_resume(config, explicit, runs_dir=RUNS_DIR)
  return config


def parse_args(argv: list[str] | None) -> Config:
  """The validated :class:`Config`; exits with status 2 on a bad flag.

  With ``--resume`` the configuration is read from the run's ``config.json``
  and only the flags given explicitly are compared with it, before any data
  is read.
  """
  return cli.parse(Config, argv, description=__doc__, prepare=_resume)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  a = parse_args(argv)
  order = 'synchronous' if a.secure_aggregation else (a.order or 'round_robin')
  setting = load(a.dataset, seed=a.seed, max_train=a.max_train, data_dir=a.data_dir)
  if len(setting.x_train) < a.participants:
    raise SystemExit(f'--participants {a.participants} exceeds the {len(setting.x_train)} '
                     'training examples.')
  workdir = a.workdir if a.workdir is not None else ''
  done = checkpoints.read_results(workdir) if a.resume else {}
  ledgers = None
  if a.ledger is not None and 'dssgd' not in done:
    xs, ys = federated.shard(setting.x_train, setting.y_train, a.participants, seed=a.seed)
    ledgers = open_ledgers(a.ledger, a.dataset, xs, ys)  # a bad one: exit 2, before any work
    if a.total_epsilon is not None:
      first = (checkpoints.latest_step(os.path.join(workdir, 'checkpoints', 'dssgd'))
               if a.resume and workdir else None) or 0
      mechanism, accountant = _planned_release(a, setting)
      try:  # every participant, before any round runs
        for ledger in ledgers:
          ledger.check_total(a.total_epsilon, a.dp_delta, accountant=accountant,
                             planned=[(mechanism, None, max(0, a.rounds - first))])
      except privacy.TotalBudgetExceededError as e:
        checkpoints.exit_with_error(str(e))
  workdir = checkpoints.prepare_workdir(a, RUNS_DIR)
  dp = a.distributed_dp_epsilon
  print(f'{a.dataset}: {a.participants} participants, {a.rounds} rounds, order={order}, '
        f'theta_u={a.theta_u}, theta_d={a.theta_d}'
        + (", secure aggregation (server applies the survivors' mean)"
           if a.secure_aggregation else '')
        + (f', distributed DP (epsilon={dp:g}, delta={a.dp_delta:g} per participant, L2 clip '
           f'{a.dp_l2_clip:g})' if dp is not None else '')
        + (f', DP selective sharing (epsilon={a.dp_epsilon:g} per participant per round, '
           f'gamma={a.clip:g})' if a.dp_epsilon is not None else ''), flush=True)
  if a.dp_epsilon is not None:
    print(f'DP noise keys: derived from --seed {a.seed} (--reproducible-noise): NO privacy '
          'guarantee, anyone who knows the seed can remove the noise' if a.reproducible_noise
          else 'DP noise keys: drawn from the operating system (secrets), secret', flush=True)
  common = dict(learning_rate=a.lr, batch_size=a.batch_size, hidden=a.hidden, seed=a.seed)
  result = {}
  if 'dssgd' in done:
    result['dssgd'] = done['dssgd']
  else:
    t0 = time.perf_counter()
    try:
      d = run_dssgd(setting, participants=a.participants, rounds=a.rounds,
                    theta_u=a.theta_u, theta_d=a.theta_d, order=a.order or 'round_robin',
                    clip=a.clip, max_staleness=a.max_staleness, concurrency=a.concurrency,
                    dropout=a.dropout, secure_aggregation=a.secure_aggregation,
                    distributed_dp_epsilon=dp, dp_l2_clip=a.dp_l2_clip, dp_delta=a.dp_delta,
                    dp_epsilon=a.dp_epsilon,
                    noise_seed=a.seed if a.reproducible_noise else None, quiet=a.quiet,
                    checkpoint_dir=(os.path.join(workdir, 'checkpoints', 'dssgd') if workdir
                                    else None),
                    checkpoint_every=a.checkpoint_every or 1, resume=a.resume,
                    stop_after_rounds=a.stop_after_steps, ledgers=ledgers,
                    total_epsilon=a.total_epsilon,
                    label=f'federated {os.path.abspath(workdir) if workdir else ""}'.strip(),
                    **common)
    except (privacy.TotalBudgetExceededError, privacy.LedgerError,
            checkpoints.IncompatibleCheckpoint) as e:
      checkpoints.exit_with_error(str(e))
    d['seconds'] = time.perf_counter() - t0
    d['order'] = order
    if not d['completed']:
      print(f'  stopped after round {d["rounds"]} (--stop-after-steps); continue with --resume '
            f'--workdir {workdir}', flush=True)
      return {'dssgd': d}
    result['dssgd'] = d
    done['dssgd'] = {k: v for k, v in d.items() if k != 'params'}
    checkpoints.write_results(workdir, done)
  d = result['dssgd']
  eps = d.get('epsilon')
  print(f'  {"dssgd":12s} test accuracy {d["accuracy"]:.4f}'
        + (f' (epsilon {eps:.3g} per participant at delta {a.dp_delta:g}'
           + (f', noise multiplier {d["noise_multiplier"]:.3g}' if dp is not None else '')
           + ')' if eps is not None else ''), flush=True)
  if 'ledger_epsilon' in d:
    print(f'  privacy ledgers in {a.ledger}: the most spent participant has composed epsilon '
          f'{d["ledger_epsilon"]:.3f} at delta={a.dp_delta:g} over all its runs', flush=True)
  if a.secure_aggregation or a.dropout:
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
  if workdir:
    print(f'results and checkpoints in {workdir}', flush=True)
  return result


def _planned_release(a: Config, setting: Setting) -> tuple[Any, str]:
  """The mechanism and accountant of one participant's release per round (for the total)."""
  secure = None
  if a.distributed_dp_epsilon is not None:
    d, c = setting.x_train.shape[1], setting.num_classes
    secure = secure_settings(a.participants, d * a.hidden + a.hidden + a.hidden * c + c,
                             rounds=a.rounds, distributed_dp_epsilon=a.distributed_dp_epsilon,
                             dp_l2_clip=a.dp_l2_clip, dp_delta=a.dp_delta)
  return release_mechanism(dp_mechanism(a.theta_u, a.dp_epsilon, a.clip), secure)


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
