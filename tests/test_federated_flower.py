# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The Flower adapter: loopback, Flower's simulation engine, deployment processes."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip('flwr')

from ssgd_optax import federated  # noqa: E402
from ssgd_optax import privacy  # noqa: E402
from ssgd_optax.federated import _rounds as rounds  # noqa: E402
from ssgd_optax.federated import flower  # noqa: E402
from ssgd_optax.privacy import dp_selective_sharing  # noqa: E402
from ssgd_optax import selective_sharing  # noqa: E402

D, C, N = 5, 3, 3


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(x @ params['w'] + params['b'], y).mean()


def _setup(upload, d=D, order='round_robin', secure=None, theta_d=0.5):
  params = {'w': jnp.zeros((d, C)), 'b': jnp.zeros((C,))}
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, 8, d)).astype(np.float32)
  y = rng.integers(0, C, size=(N, 8)).astype(np.int32)
  sim = federated.make_dssgd(loss_fn, params, num_participants=N, learning_rate=0.1,
                             batch_size=4, upload=upload, theta_d=theta_d, order=order,
                             secure_aggregation=secure)
  return params, x, y, sim


def _reference(sim, x, y, key, rounds, active=None):
  state = sim.init(key)
  step = jax.jit(sim.round)
  for _ in range(rounds):
    state, _ = step(state, jnp.asarray(x), jnp.asarray(y), active)
  return state


def _run(sim, params, data_fn, *, grid_cls=flower.LoopbackGrid, rounds=1, drop=(), **kw):
  """Runs the apps on a loopback grid (the simulation's keys); returns (summary, states)."""
  out, seen = {}, []
  server_app = flower.make_server_app(sim, params, rounds=rounds, key=jax.random.key(0),
                                      on_round=lambda r, s: seen.append(s),
                                      on_end=lambda s: out.setdefault('summary', s), **kw)
  client_app = flower.make_client_app(sim, data_fn, params, testing_key=jax.random.key(0))
  grid = grid_cls(client_app, N, drop=drop)
  server_app(grid, flower.Context(run_id=1, node_id=0, node_config={},
                                  state=flower.RecordDict(), run_config={}))
  return out.get('summary'), seen


def test_flower_round_robin_reproduces_the_simulation():
  upload = selective_sharing(0.3, strategy='threshold_random', key=jax.random.key(5))
  params, x, y, sim = _setup(upload)
  key = jax.random.key(7)
  seen, summaries = [], []
  server_app = flower.make_server_app(sim, params, rounds=2, key=key,
                                      on_round=lambda r, s: seen.append(s),
                                      on_end=summaries.append)
  client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params, testing_key=key)
  flower.run_loopback(server_app, client_app, N)
  state = _reference(sim, x, y, key, 2)
  assert len(seen) == 2
  np.testing.assert_allclose(seen[-1].params, state.server.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(seen[-1].stats, state.server.stats)
  assert int(seen[-1].round) == 2
  (summary,) = summaries
  assert summary.dropouts_per_round == [0, 0]
  assert [r.accepted for r in summary.rounds] == [(0, 1, 2)] * 2


def test_clients_draw_their_own_training_and_defence_randomness():
  # The server sends no key; a client draws its training key every round and
  # replaces its defence's keys (here threshold_random's sampling key, the
  # same in every copy of the simulation's definition) from the OS. The same
  # server run twice therefore gets different uploads; with testing_key
  # (the control) the keys are the simulation's.
  upload = selective_sharing(0.3, strategy='threshold_random', key=jax.random.key(5))
  params, x, y, sim = _setup(upload, order='synchronous')
  key = jax.random.key(7)
  runs = []
  for testing_key in (None, None, key):
    seen = []
    server_app = flower.make_server_app(sim, params, rounds=1, key=key, on_end=seen.append)
    grid = _RecordingGrid(flower.make_client_app(sim, lambda i: (x[i], y[i]), params,
                                                 testing_key=testing_key), N)
    server_app(grid, flower.Context(run_id=1, node_id=0, node_config={},
                                    state=flower.RecordDict(), run_config={}))
    assert all(set(m.content.array_records['arrays']) == {'global', 'mask'} for m in grid.sent)
    keys = [grid._contexts[node].state['dssgd_local']['up0'].numpy()  # pylint: disable=protected-access
            for node in (1, 2, 3)]
    runs.append((np.asarray(seen[0].server.params), keys))
  ref = _reference(sim, x, y, key, 1)
  ref_keys = np.asarray(jax.random.key_data(ref.clients.upload_state.key))
  (a, keys_a), (b, _), (c, keys_c) = runs
  assert not np.array_equal(a, b)
  assert not any(np.array_equal(k, r) for k, r in zip(keys_a, ref_keys))
  np.testing.assert_allclose(c, ref.server.params, rtol=1e-5, atol=1e-7)
  assert all(np.array_equal(k, r) for k, r in zip(keys_c, ref_keys))


class _LateGrid(flower.LoopbackGrid):
  """Nodes register after a few polls, as on Flower's simulation engine."""

  def __init__(self, *a, **kw):
    super().__init__(*a, **kw)
    self.polls = 0

  def get_node_ids(self):
    self.polls += 1
    return [] if self.polls <= 3 else super().get_node_ids()


def test_server_waits_for_nodes_that_register_late():
  params, x, y, sim = _setup(selective_sharing(0.5))
  summary, seen = _run(sim, params, lambda i: (x[i], y[i]), grid_cls=_LateGrid,
                       node_timeout=30.0)
  assert summary.rounds[0].accepted == (0, 1, 2)
  assert float(jnp.abs(seen[-1].params).sum()) > 0


def test_a_server_that_does_not_wait_fails_loudly_not_silently(monkeypatch):
  # The bug this guards against: the node list read once before the nodes
  # registered, nothing sent, parameters silently zero. With the waiting
  # removed (a broken stand-in), the run must still stop with an error.
  params, x, y, sim = _setup(selective_sharing(0.5))
  monkeypatch.setattr(flower, '_wait_for_nodes',
                      lambda grid, n, timeout: sorted(grid.get_node_ids()))
  with pytest.raises(flower.FederatedRunError, match='no upload'):
    _run(sim, params, lambda i: (x[i], y[i]), grid_cls=_LateGrid)


def test_nodes_that_never_appear_raise_with_the_count_seen():
  params, x, y, sim = _setup(None)

  class TwoNodes(flower.LoopbackGrid):
    def get_node_ids(self):
      return [1, 2]

  with pytest.raises(flower.FederatedRunError, match='num_nodes=3.*saw 2'):
    _run(sim, params, lambda i: (x[i], y[i]), grid_cls=TwoNodes, node_timeout=0.3)


def test_a_client_that_raises_stops_the_run_with_node_and_round(caplog):
  params, x, y, sim = _setup(selective_sharing(0.5))

  def data_fn(i):
    if i == 1:
      raise OSError('shard 1 is missing')
    return x[i], y[i]

  with pytest.raises(flower.FederatedRunError, match='round 0.*participant 1 .node 2.*missing'):
    _run(sim, params, data_fn)
  with caplog.at_level(logging.WARNING, logger='ssgd_optax.federated.flower'):
    summary, _ = _run(sim, params, data_fn, rounds=2, client_errors='dropout')
  assert summary.dropouts_per_round == [1, 1]
  assert [r.dropped for r in summary.rounds] == [(1,), (1,)]
  assert 'round 1: participant 1 (node 2) dropped out' in caplog.text


def test_synchronous_order_with_a_dropout_is_the_simulations_round():
  # The same round as the simulation's synchronous order with participant 1
  # inactive: the mean of the others' uploads, nothing of the dropout's.
  params, x, y, sim = _setup(selective_sharing(0.5), order='synchronous')
  part, _ = _run(sim, params, lambda i: (x[i], y[i]), drop=(2,))
  assert part.rounds[0].dropped == (1,) and part.rounds[0].accepted == (0, 2)
  ref = _reference(sim, x, y, jax.random.key(0), 1, active=jnp.array([True, False, True]))
  np.testing.assert_allclose(part.server.params, ref.server.params, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(part.server.stats, ref.server.stats)


def test_too_few_participants_or_no_upload_stop_the_run():
  params, x, y, sim = _setup(selective_sharing(0.5))
  with pytest.raises(flower.FederatedRunError, match='no upload'):
    _run(sim, params, lambda i: (x[i], y[i]), drop=(1, 2, 3))
  with pytest.raises(flower.FederatedRunError, match='min_participants=3'):
    _run(sim, params, lambda i: (x[i], y[i]), drop=(3,), min_participants=3)


class _StalledGrid(flower.LoopbackGrid):
  """Node 3 never answers; node 1 also sends a stray reply."""

  def push_messages(self, messages):
    messages = list(messages)
    ids = list(super().push_messages(messages))
    for mid, m in zip(ids, messages):
      if m.metadata.dst_node_id == 3:
        self._replies.pop(mid)
      if m.metadata.dst_node_id == 1:
        stray = self._replies[mid]
        # The same reply again, as if node 1 answered twice: not asked.
        self._replies['stray'] = stray
    return ids

  def pull_messages(self, message_ids):
    out = list(super().pull_messages(message_ids))
    if 'stray' in self._replies:
      out.append(self._replies.pop('stray'))
    return out


def test_a_stalled_node_times_out_and_a_stray_reply_is_ignored(caplog):
  params, x, y, sim = _setup(selective_sharing(0.5))
  with caplog.at_level(logging.WARNING, logger='ssgd_optax.federated.flower'):
    summary, _ = _run(sim, params, lambda i: (x[i], y[i]), grid_cls=_StalledGrid,
                      reply_timeout=0.2)
  (rep,) = summary.rounds
  assert rep.dropped == (2,) and rep.accepted == (0, 1) and rep.unexpected == 1
  assert 'participant 2 (node 3) dropped out: no reply' in caplog.text


def test_a_non_finite_upload_is_rejected_and_reported():
  params, x, y, sim = _setup(None)
  bad = x.copy()
  bad[0, 0, 0] = np.nan
  summary, _ = _run(sim, params, lambda i: (bad[i], y[i]))
  assert summary.rounds[0].rejected == (0,)
  assert bool(jnp.isfinite(summary.server.params).all())


def test_privacy_is_composed_over_the_rounds_each_participant_uploads_in():
  mechanism = privacy.sparse_vector_mechanism(0.3, epsilon=0.5, clip=1.0)
  upload = dp_selective_sharing(mechanism=mechanism, key=jax.random.key(1))
  params, x, y, sim = _setup(upload)

  class LeavesAfterRound0(flower.LoopbackGrid):
    calls = 0

    def get_node_ids(self):
      self.calls += 1
      # Call 1: waiting, 2: round 0, later: node 3 has left.
      return [1, 2, 3] if self.calls <= 2 else [1, 2]

  summary, _ = _run(sim, params, lambda i: (x[i], y[i]), grid_cls=LeavesAfterRound0,
                    rounds=3, mechanism=mechanism, delta=1e-5)
  assert summary.dropouts_per_round == [0, 1, 1]
  # The one accountant, per participant, over the rounds it was asked in.
  eps = lambda r: privacy.compute_epsilon(mechanism, steps=r, delta=1e-5)
  assert summary.privacy[0] == flower.ParticipantPrivacy(3, eps(3), 1e-5)
  assert summary.privacy[2] == flower.ParticipantPrivacy(1, eps(1), 1e-5)
  assert eps(1) == pytest.approx(0.5, rel=1e-3) and eps(3) <= 1.5 + 1e-3


def test_flower_validation(monkeypatch):
  params, x, y, sim = _setup(None)
  make = lambda **kw: flower.make_server_app(sim, params, key=jax.random.key(0),
                                             **{'rounds': 1, **kw})
  _, _, _, async_sim = _setup(None, order='asynchronous')
  with pytest.raises(ValueError, match="order='asynchronous'"):
    flower.make_server_app(async_sim, params, rounds=1, key=jax.random.key(0))
  with pytest.raises(ValueError, match='rounds'):
    make(rounds=0)
  with pytest.raises(ValueError, match='num_nodes'):
    make(num_nodes=4)
  with pytest.raises(ValueError, match='min_participants'):
    make(min_participants=4)
  with pytest.raises(ValueError, match='client_errors'):
    make(client_errors='ignore')
  mechanism = privacy.sparse_vector_mechanism(0.3, epsilon=0.5, clip=1.0)
  with pytest.raises(ValueError, match='delta'):
    make(mechanism=mechanism)
  with pytest.raises(ValueError, match='delta'):
    make(mechanism=mechanism, delta=2.0)
  with pytest.raises(ValueError, match='for secure aggregation only'):
    flower.make_client_app(sim, lambda i: (x[i], y[i]), params, registry={})
  _, _, _, secure_sim = _setup(None, order='synchronous', secure=federated.SecureAggregation())
  with pytest.raises(ValueError, match='missing: identity, record'):
    flower.make_client_app(secure_sim, lambda i: (x[i], y[i]), params, registry={})
  with pytest.raises(TypeError, match='DSSGD'):
    flower.make_client_app(object(), lambda i: None, params)
  # Wrong shapes from the data function: the error names them.
  with pytest.raises(flower.FederatedRunError, match=r'data_fn\(0\).*x float32\[8, 6\]'):
    _run(sim, params, lambda i: (np.zeros((8, D + 1), np.float32), y[i]))
  with pytest.raises(flower.FederatedRunError, match='same number M'):
    _run(sim, params, lambda i: (x[i], y[i][:3]))
  # A participant index out of range (the message built by hand).
  client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params)
  grid = flower.LoopbackGrid(client_app, N)
  msg = flower.Message(flower.RecordDict({
      'arrays': flower._record(**{'global': np.zeros(sim.num_params, np.float32),
                                  'mask': np.ones(sim.num_params, bool)}),
      'config': flower.ConfigRecord({'participant': 7, 'round': 0})}), dst_node_id=1,
      message_type='train')
  (reply,) = grid.send_and_receive([msg])
  assert reply.has_error() and 'participant index 7 is out of range [0, 3)' in reply.error.reason
  monkeypatch.setattr(flower._flwr, '__version__', '1.20.0')
  with pytest.raises(ImportError, match='flwr >= 1.42.*1.20.0'):
    flower.make_client_app(sim, lambda i: (x[i], y[i]), params)


@pytest.mark.slow
def test_simulation_engine_reproduces_the_simulation():
  # Flower's own runtime (Ray backend): ~90 s on 2 loaded cores.
  from flwr.simulation import run_simulation
  upload = selective_sharing(0.3, strategy='threshold_random', key=jax.random.key(5))
  params, x, y, sim = _setup(upload)
  key = jax.random.key(7)
  summaries = []
  server_app = flower.make_server_app(sim, params, rounds=2, key=key,
                                      on_end=summaries.append)
  client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params, testing_key=key)
  run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
                 backend_config={'client_resources': {'num_cpus': 1}})
  (summary,) = summaries
  state = _reference(sim, x, y, key, 2)
  assert summary.dropouts_per_round == [0, 0]
  np.testing.assert_allclose(summary.server.params, state.server.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(summary.server.stats, state.server.stats)


@pytest.mark.slow
def test_simulation_engine_client_failure_is_loud():
  from flwr.simulation import run_simulation
  params, x, y, sim = _setup(selective_sharing(0.5))

  def data_fn(i):
    if i == 2:
      raise OSError('shard 2 is missing')
    return x[i], y[i]

  server_app = flower.make_server_app(sim, params, rounds=1, key=jax.random.key(0))
  client_app = flower.make_client_app(sim, data_fn, params)
  with pytest.raises(flower.FederatedRunError, match='(?s)participant 2.*shard 2 is missing'):
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
                   backend_config={'client_resources': {'num_cpus': 1}})


class _SilentInRound0(flower.LoopbackGrid):
  """Node 2 (participant 1) does not answer in round 0."""

  def push_messages(self, messages):
    messages = list(messages)
    self._drop = {2} if messages and messages[0].metadata.group_id == '0' else set()
    return super().push_messages(messages)


@pytest.mark.slow
def test_simulation_engine_stalled_node_times_out_and_its_late_reply_is_ignored(
    tmp_path, caplog):
  # On Flower's runtime the server pulls only the ids it pushed and the link
  # routes replies to their sender, so a reply from a node nobody asked cannot
  # be injected; the stray that does happen is a late reply. Participant 1
  # stalls in round 0 until the server has given up on it and closed the round.
  from flwr.simulation import run_simulation
  params, x, y, sim = _setup(selective_sharing(0.5))
  stalled, release = str(tmp_path / 'stalled'), str(tmp_path / 'release')

  def data_fn(i):
    import os
    import time
    if i == 1 and not os.path.exists(stalled):
      open(stalled, 'w', encoding='utf-8').close()
      for _ in range(6000):
        if os.path.exists(release):
          break
        time.sleep(0.1)
    return x[i], y[i]

  seen, summaries = [], []

  def on_round(r, s):
    seen.append(s)
    open(release, 'w', encoding='utf-8').close()

  server_app = flower.make_server_app(sim, params, rounds=2, key=jax.random.key(0),
                                      reply_timeout=120.0, on_round=on_round,
                                      on_end=summaries.append)
  client_app = flower.make_client_app(sim, data_fn, params, testing_key=jax.random.key(0))
  with caplog.at_level(logging.WARNING, logger='ssgd_optax.federated.flower'):
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
                   backend_config={'client_resources': {'num_cpus': 1}})
  (summary,) = summaries
  assert [r.dropped for r in summary.rounds] == [(1,), ()]
  assert [r.accepted for r in summary.rounds] == [(0, 2), (0, 1, 2)]
  assert [r.unexpected for r in summary.rounds] == [0, 0]
  assert 'round 0: participant 1 (node' in caplog.text and 'no reply within' in caplog.text
  # The late upload was never added: round 0 equals a run where participant 1 stayed silent.
  _, ref = _run(sim, params, lambda i: (x[i], y[i]), grid_cls=_SilentInRound0, rounds=2)
  np.testing.assert_allclose(seen[0].params, ref[0].params, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(seen[0].stats, ref[0].stats)


# Node-side (the node operator's) setting of the app: derive the training keys from
# the run's seed, as the in-process simulation does. Insecure, for these tests only.
_REPRODUCIBLE = {'SSGD_FLOWER_INSECURE_REPRODUCIBLE_KEYS': '1'}


def _deploy_module():
  import os
  import sys
  from ssgd_examples.scripts import load
  mod = load('examples/flower_deploy.py', 'ssgd_flower_deploy')
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'examples')
  sys.path.insert(0, os.path.join(root, 'flower_app'))
  from ssgd_flower_app import task  # pylint: disable=import-outside-toplevel
  sys.path.pop(0)
  import tomllib
  with open(os.path.join(root, 'flower_app', 'pyproject.toml'), 'rb') as f:
    config = tomllib.load(f)['tool']['flwr']['app']['config']
  return mod, task, config


@pytest.mark.slow
@pytest.mark.parametrize('simulation', [False, True], ids=['supernodes', 'flwr_run_simulation'])
def test_deployment_mode_reproduces_the_simulation(tmp_path, simulation):
  # `flwr run` against flower-superlink + 3 flower-supernode processes (~4 min
  # on 2 loaded cores: every message starts a ClientApp process that imports
  # JAX), or against `flower-superlink --simulation` (Ray, ~2 min).
  deploy, task, config = _deploy_module()
  path = str(tmp_path / 'summary.jsonl')
  with deploy.LocalDeployment(3, workdir=str(tmp_path), simulation=simulation,
                              node_env=_REPRODUCIBLE) as dep:
    proc = dep.run(f"rounds=2 summary-path='{path}'", timeout=1800)
  res = deploy.read_summary(path)
  assert 'summary' in res, (res, proc.stdout[-2000:], proc.stderr[-2000:])
  s = res['summary']
  assert s['dropouts_per_round'] == [0, 0] and s['accepted'] == [[0, 1, 2]] * 2
  want = task.in_process(task.build(dict(config, rounds=2)), 2)
  np.testing.assert_allclose(np.asarray(s['params']), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_deployment_killed_supernode_is_a_counted_dropout_not_a_hang(tmp_path):
  import time
  deploy, _, _ = _deploy_module()
  path = str(tmp_path / 'summary.jsonl')
  import subprocess
  with deploy.LocalDeployment(3, workdir=str(tmp_path)) as dep:
    args = [deploy._exe('flwr'), 'run', deploy.APP, 'local-deployment', '--stream',
            '--run-config', f"rounds=3 reply-timeout=120.0 summary-path='{path}'"]
    run = subprocess.Popen(args, env=dep.env, cwd=dep.dir, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
      while not deploy.read_summary(path)['rounds'] and run.poll() is None:
        time.sleep(1)
      dep.kill_supernode(0)   # during round 1
      run.wait(timeout=1800)  # a hang fails here instead of blocking CI
    finally:
      if run.poll() is None:
        run.kill()
  res = deploy.read_summary(path)
  assert 'summary' in res, res
  s = res['summary']
  assert s['dropouts_per_round'][0] == 0 and s['dropouts_per_round'][1:] == [1, 1], s
  (gone,) = s['dropped'][1]
  assert s['dropped'][2] == [gone] and all(gone not in a for a in s['accepted'][1:])


@pytest.mark.slow
def test_flwr_run_on_flowers_managed_local_superlink(tmp_path):
  # `flwr run examples/flower_app local` with Flower's managed "local"
  # connection (the default one), as in Flower's quickstarts: `flwr` itself
  # starts a detached SuperLink in simulation mode (Ray) and the run goes
  # through it. Its simulation runtime is Ray (the `flower-simulation` extra).
  import signal
  import subprocess
  pytest.importorskip('ray', reason='needs the flower-simulation extra (Ray)')
  deploy, task, config = _deploy_module()
  home = tmp_path / 'flwr_home'
  home.mkdir()
  (home / 'config.toml').write_text(
      '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
      'options.num-supernodes = 3\n')
  # Without the last variable the managed SuperLink installs the app's
  # dependencies (`uv sync`) into a fresh environment, which fails offline
  # and for a package not on an index (Flower exit code 608).
  # `flwr` starts `flower-superlink` from PATH: the one beside it, also when
  # the tests run with a virtual environment's python that is not activated.
  flwr = deploy._exe('flwr')  # pylint: disable=protected-access
  search = os.pathsep.join([os.path.dirname(flwr), os.environ.get('PATH', '')])
  env = dict(os.environ, FLWR_HOME=str(home), JAX_PLATFORMS='cpu', **_REPRODUCIBLE, PATH=search,
             FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION='1',
             FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(deploy.free_port()),
             FLWR_LOCAL_CONTROL_API_PORT=str(deploy.free_port()))
  path = tmp_path / 'summary.jsonl'
  try:
    proc = subprocess.run(
        [flwr, 'run', deploy.APP, 'local', '--stream', '--run-config',
         f"rounds=2 summary-path='{path}'"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1800, check=False)
  finally:
    # The managed SuperLink runs in its own session; its command line names
    # the log file under FLWR_HOME.
    pids = subprocess.run(['pgrep', '-f', str(home)], capture_output=True, text=True).stdout
    for pid in pids.split():
      try:
        os.killpg(int(pid), signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
  out = proc.stdout + proc.stderr
  assert 'Starting local SuperLink' in out, proc.stdout[-2000:]
  # Quiet by default: the ServerApp shows the project's records, not httpx's
  # line per request to the SuperLink (154 lines not the project's before, 18 now).
  others = [l for l in out.splitlines()
            if 'ssgd_optax' not in l and 'ssgd_flower_app' not in l]
  assert len(others) < 50 and 'httpx' not in out, '\n'.join(others)
  res = deploy.read_summary(str(path))
  assert 'summary' in res, (res, proc.stdout[-2000:], proc.stderr[-2000:])
  s = res['summary']
  assert s['dropouts_per_round'] == [0, 0] and s['accepted'] == [[0, 1, 2]] * 2
  want = task.in_process(task.build(dict(config, rounds=2)), 2)
  np.testing.assert_allclose(np.asarray(s['params']), np.asarray(want), rtol=1e-5, atol=1e-6)


class _RecordingGrid(flower.LoopbackGrid):
  """Keeps every message the server sent and every reply it received."""

  def __init__(self, *a, drop_step=None, **kw):
    super().__init__(*a, **kw)
    self.sent, self.received, self.drop_step = [], [], drop_step

  def push_messages(self, messages):
    messages = list(messages)
    self.sent.extend(messages)
    keep = []
    for m in messages:
      cfg = m.content.config_records.get('config')
      # Node 3 goes silent at drop_step (after its keys are shared).
      if (self.drop_step and m.metadata.dst_node_id == 3 and cfg is not None
          and cfg.get('step') == self.drop_step):
        continue
      keep.append(m)
    return super().push_messages(keep) + [m.object_id for m in messages if m not in keep]

  def pull_messages(self, message_ids):
    out = list(super().pull_messages(message_ids))
    self.received.extend(out)
    return out


def _identities(tmp_path, n=N):
  """Per-node identity keys, the registry and record files: node ``k`` is participant ``k - 1``."""
  from ssgd_optax.federated import secure_aggregation as sa
  tmp_path.mkdir(parents=True, exist_ok=True)
  signing, registry = sa.generate_identities(n)
  return dict(identity=lambda ctx: signing[ctx.node_id - 1], registry=registry,
              record=lambda ctx: str(tmp_path / f'record-node{ctx.node_id}.jsonl'))


def _secure_run(params, x, y, sim, grid_kw, tmp_path, key=jax.random.key(3)):
  seen = []
  server_app = flower.make_server_app(sim, params, rounds=1, key=key, reply_timeout=0.5,
                                      on_end=seen.append)
  client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params, testing_key=key,
                                      **_identities(tmp_path))
  grid = _RecordingGrid(client_app, N, **grid_kw)
  server_app(grid, flower.Context(run_id=1, node_id=0, node_config={},
                                  state=flower.RecordDict(), run_config={}))
  return grid, seen[0]


def _plain_uploads(sim, params, x, y, grid, key=jax.random.key(3)):
  """Each participant's upload, recomputed from what the server sent in 'masked' and the
  training key the clients derive from their testing key (the server sends none)."""
  state0 = sim.init(jax.random.key(0)).clients
  out = {}
  for m in grid.sent:
    cfg = m.content.config_records.get('config')
    if cfg is None or cfg.get('step') != 'masked':
      continue
    i, r = int(cfg['participant']), int(cfg['round'])
    a = m.content.array_records['arrays']
    assert set(a) == {'global', 'mask'}   # no training randomness from the server
    k_train = rounds.participant_keys(rounds.round_keys_at(key, r).rest, i)[1]
    _, _, up = sim.client_update(
        sim.ravel(params), jax.tree.map(lambda l: l[i], state0.upload_state),
        jnp.asarray(a['global'].numpy()), jnp.asarray(a['mask'].numpy()), jnp.asarray(x[i]),
        jnp.asarray(y[i]), k_train)
    out[i] = np.asarray(up)
  return out


def _received_blobs(grid):
  """The contents of every reply the server received, as byte strings."""
  blobs = []
  for reply in grid.received:
    if not reply.has_content():   # an error reply (a dropout) carries none
      continue
    blobs += [bytes(v) if isinstance(v, bytes) else str(v).encode()
              for rec in reply.content.config_records.values() for v in rec.values()]
    blobs += [a.numpy().tobytes() for rec in reply.content.array_records.values()
              for a in rec.values()]
  return blobs


def _contains_plaintext(blobs, uploads, n):
  from ssgd_optax.federated import secure_aggregation as sa
  needles = []
  for u in uploads.values():
    needles += [sa.quantize(u, num_participants=n).tobytes(), np.asarray(u).tobytes(),
                np.asarray(u, np.float64).tobytes()]
  return any(nd in b for b in blobs for nd in needles)


def _server_saw_plaintext(grid, uploads, n):
  return _contains_plaintext(_received_blobs(grid), uploads, n)


def _masked_vectors(blobs, p):
  """Every received byte string of exactly ``p`` ring elements."""
  return [np.frombuffer(b, np.uint32) for b in blobs if len(b) == 4 * p]


def _max_correlation(vectors, uploads, n):
  """The largest |Pearson correlation| (signed ring view) of any received vector with any upload."""
  from ssgd_optax.federated import secure_aggregation as sa
  best = 0.0
  for v in vectors:
    a = v.view(np.int32).astype(np.float64)
    for u in uploads.values():
      b = sa.quantize(u, num_participants=n).view(np.int32).astype(np.float64)
      if a.std() == 0 or b.std() == 0:
        best = max(best, float(np.array_equal(a, b)))
        continue
      best = max(best, abs(float(np.corrcoef(a, b)[0, 1])))
  return best


def _secure_sim(upload, d=D, threshold=2):
  return _setup(upload, d=d, order='synchronous',
                secure=federated.SecureAggregation(threshold=threshold))


def test_secure_aggregation_server_sees_only_masked_uploads_and_the_exact_sum(tmp_path):
  from ssgd_optax.federated import secure_aggregation as sa
  # Participant 2 (node 3) drops after sharing its keys; without a dropout the
  # round is the simulation's bit for bit (the bit-identical test below).
  params, x, y, sim = _secure_sim(selective_sharing(0.5))
  for drop_step, survivors in (('masked', (0, 1)),):
    grid, summary = _secure_run(params, x, y, sim, {'drop_step': drop_step}, tmp_path)
    uploads = _plain_uploads(sim, params, x, y, grid)
    assert sorted(uploads) == [0, 1, 2]
    assert not _server_saw_plaintext(grid, uploads, N)
    (rep,) = summary.rounds
    assert rep.accepted == survivors
    assert rep.dropped == tuple(sorted(set(range(N)) - set(survivors)))
    q = sum(sa.quantize(uploads[i], num_participants=N).astype(np.uint64) for i in survivors)
    want = sa.dequantize((q % 2 ** 32).astype(np.uint32))
    # The one rule for a secure sum: the survivors' mean.
    start = np.asarray(sim.ravel(params), np.float64)
    np.testing.assert_array_equal(np.asarray(summary.server.params),
                                  start.astype(np.float32)
                                  + (want / len(survivors)).astype(np.float32))


def test_the_plaintext_check_catches_an_unmasked_upload(monkeypatch, tmp_path):
  # A broken stand-in: masks of zero (PRG output zeroed) leave y = q(x),
  # which the check above must flag.
  from ssgd_optax.federated import secure_aggregation as sa
  monkeypatch.setattr(sa, 'prg', lambda seed, size, bits=32: np.zeros(size, np.uint32))
  params, x, y, sim = _secure_sim(selective_sharing(0.5))
  grid, _ = _secure_run(params, x, y, sim, {}, tmp_path)
  uploads = _plain_uploads(sim, params, x, y, grid)
  assert _server_saw_plaintext(grid, uploads, N)
  # The correlation check of the runtime test flags it too.
  masked = _masked_vectors(_received_blobs(grid), sim.num_params)
  assert _max_correlation(masked, uploads, N) > 0.999


class _RecordingProxy:
  """Wraps the Grid a real runtime hands the ServerApp; keeps what the server sent and received."""

  def __init__(self, grid):
    self._grid, self.sent, self.received = grid, [], []

  def __getattr__(self, name):
    return getattr(self._grid, name)

  def push_messages(self, messages):
    messages = list(messages)
    self.sent.extend(messages)
    return self._grid.push_messages(messages)

  def pull_messages(self, message_ids):
    out = list(self._grid.pull_messages(message_ids))
    self.received.extend(out)
    return out


@pytest.mark.slow
def test_simulation_engine_secure_aggregation_masked_uploads_exact_sum_with_a_dropout(tmp_path):
  # The project's secure aggregation as Flower messages between the server
  # thread and Ray worker processes (run_simulation); participant 2 fails
  # after sharing its keys, so the survivors must unmask its pair masks.
  from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
  from flwr.serverapp import ServerApp
  from flwr.simulation import run_simulation
  from ssgd_optax.federated import secure_aggregation as sa
  # 120 inputs x 3 classes: enough entries for the correlation check to mean something.
  params, x, y, sim = _secure_sim(selective_sharing(0.5), d=120)
  p = sim.num_params
  signing, registry = sa.generate_identities(N)
  raw = [k.private_bytes_raw() for k in signing]   # key objects do not pickle to Ray
  # On Flower's simulation engine node ids are random: the partition id names the node.
  identity = lambda ctx: Ed25519PrivateKey.from_private_bytes(
      raw[int(ctx.node_config['partition-id'])])
  folder = str(tmp_path)
  record = lambda ctx: f"{folder}/record-{int(ctx.node_config['partition-id'])}.jsonl"
  key = jax.random.key(3)

  def data_fn(i):
    if i == 2:
      raise OSError('participant 2 lost its data connection')
    return x[i], y[i]

  summaries, grids = [], []
  inner = flower.make_server_app(sim, params, rounds=1, key=key, client_errors='dropout',
                                 reply_timeout=600.0, on_end=summaries.append)
  server_app = ServerApp()

  @server_app.main()
  def main(grid, context):
    grids.append(_RecordingProxy(grid))
    inner(grids[0], context)

  client_app = flower.make_client_app(sim, data_fn, params, identity=identity,
                                      registry=registry, record=record, testing_key=key)
  run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
                 backend_config={'client_resources': {'num_cpus': 1}})
  (summary,), (grid,) = summaries, grids
  (rep,) = summary.rounds
  assert rep.accepted == (0, 1) and rep.dropped == (2,)
  uploads = _plain_uploads(sim, params, x, y, grid)
  assert sorted(uploads) == [0, 1, 2] and all(np.count_nonzero(u) > p // 4
                                               for u in uploads.values())
  # (b) what the server process received: no copy of any upload, and the
  # masked vectors (one per survivor) are uncorrelated with every upload.
  assert not _server_saw_plaintext(grid, uploads, N)
  masked = _masked_vectors(_received_blobs(grid), p)
  assert len(masked) == 2
  assert _max_correlation(masked, uploads, N) < 6 / np.sqrt(p)
  # (a) the exact sum of the survivors' quantised uploads, applied as their mean.
  q = sum(sa.quantize(uploads[i], num_participants=N).astype(np.uint64) for i in (0, 1))
  want = sa.dequantize((q % 2 ** 32).astype(np.uint32))
  start = np.asarray(sim.ravel(params), np.float64)
  np.testing.assert_array_equal(np.asarray(summary.server.params),
                                start.astype(np.float32) + (want / 2).astype(np.float32))
  np.testing.assert_allclose(np.asarray(summary.server.params) - start,
                             (uploads[0] + uploads[1]) / 2, atol=N * 2.0 ** -16)


def _read_transcript(path):
  """``(sent, received)``: the messages of a ServerApp ``transcript-path`` file."""
  import json
  unhex = lambda v: bytes.fromhex(v['hex']) if isinstance(v, dict) and 'hex' in v else v
  sent, received = [], []
  with open(path, encoding='utf-8') as f:
    for line in f:
      if not line.endswith('\n'):   # still being written by the server process
        break
      m = json.loads(line)
      m['config'] = {k: {n: unhex(v) for n, v in r.items()}
                     for k, r in m.get('config', {}).items()}
      m['arrays'] = {k: {n: np.frombuffer(bytes.fromhex(a['hex']), a['dtype']).reshape(a['shape'])
                         for n, a in r.items()} for k, r in m.get('arrays', {}).items()}
      (sent if m['direction'] == 'sent' else received).append(m)
  return sent, received


@pytest.mark.slow
def test_deployment_secure_aggregation_killed_supernode_masked_only_exact_sum(tmp_path):
  # flwr run against flower-superlink + 3 flower-supernode processes, each with
  # its own identity key, the registry and a participant record (node config),
  # secure aggregation; one SuperNode is killed once every participant has
  # shared its keys, so it never sends its masked input and the other two must
  # unmask its pair masks. The ServerApp's transcript is what the server
  # process received.
  import os
  import subprocess
  import time
  from ssgd_optax.federated import secure_aggregation as sa
  deploy, task, config = _deploy_module()
  path, tpath = str(tmp_path / 'summary.jsonl'), str(tmp_path / 'transcript.jsonl')
  run_config = "rounds=1 order='synchronous' secure-aggregation=true reply-timeout=180.0 "
  with deploy.LocalDeployment(3, workdir=str(tmp_path), secure=True,
                              node_env=_REPRODUCIBLE) as dep:
    args = [deploy._exe('flwr'), 'run', deploy.APP, 'local-deployment', '--stream',
            '--run-config', run_config + f"summary-path='{path}' transcript-path='{tpath}'"]
    run = subprocess.Popen(args, env=dep.env, cwd=dep.dir, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
      shared = 0
      while shared < 3 and run.poll() is None:
        time.sleep(0.2)
        if os.path.exists(tpath):
          shared = sum(m['config'].get('config', {}).get('sa_step') == 'share'
                       for m in _read_transcript(tpath)[1])
      dep.kill_supernode(0)
      run.wait(timeout=1800)  # a hang fails here instead of blocking CI
    finally:
      if run.poll() is None:
        run.kill()
  res = deploy.read_summary(path)
  assert 'summary' in res, res
  s = res['summary']
  # SuperNode i holds the identity key of participant i.
  assert s['dropped'][0] == [0]
  survivors = [1, 2]
  assert s['accepted'] == [survivors]
  sent, received = _read_transcript(tpath)
  t = task.build(dict(config, rounds=1, order='synchronous', **{'secure-aggregation': True}))
  sim, p = t.sim, t.sim.num_params
  state0 = sim.init(jax.random.key(0)).clients
  uploads = {}
  for m in sent:
    cfg = m['config'].get('config', {})
    if cfg.get('step') == 'masked':
      i, r, a = int(cfg['participant']), int(cfg['round']), m['arrays']['arrays']
      assert set(a) == {'global', 'mask'}   # no training randomness from the server
      k_train = rounds.participant_keys(rounds.round_keys_at(t.key, r).rest, i)[1]
      _, _, up = sim.client_update(
          sim.ravel(t.params), jax.tree.map(lambda l, i=i: l[i], state0.upload_state),
          jnp.asarray(a['global']), jnp.asarray(a['mask']), jnp.asarray(t.xs[i]),
          jnp.asarray(t.ys[i]), k_train)
      uploads[i] = np.asarray(up)
  # The killed node was asked for its masked input too: it had shared its keys.
  assert sorted(uploads) == [0, 1, 2]
  blobs = []
  for m in received:
    blobs += [v if isinstance(v, bytes) else str(v).encode()
              for r in m['config'].values() for v in r.values()]
    blobs += [a.tobytes() for r in m['arrays'].values() for a in r.values()]
  assert not _contains_plaintext(blobs, uploads, 3)
  masked = _masked_vectors(blobs, p)
  assert len(masked) == 2
  assert _max_correlation(masked, uploads, 3) < 6 / np.sqrt(p)
  q = sum(sa.quantize(uploads[i], num_participants=3).astype(np.uint64) for i in survivors)
  want = sa.dequantize((q % 2 ** 32).astype(np.uint32))
  start = np.asarray(sim.ravel(t.params), np.float64)
  np.testing.assert_array_equal(np.asarray(s['params'], np.float32),
                                start.astype(np.float32) + (want / 2).astype(np.float32))


# ---------------------------------------------------------------------------
# One round, written once: the simulation, the Flower apps and the example agree.


def test_one_secure_round_is_bit_identical_in_the_simulation_flower_and_the_example(tmp_path):
  pytest.importorskip('sklearn')  # the digits data set
  pytest.importorskip('cryptography')
  from ssgd_examples.scripts import load
  example = load('examples/federated.py', 'federated_example')
  setting = example.load('digits', seed=0)
  kw = dict(participants=N, hidden=8, theta_d=0.5, seed=0)
  num_params = setting.x_train.shape[1] * 8 + 8 + 8 * setting.num_classes + setting.num_classes
  exp = example.make_experiment(setting, order='synchronous',
                                secure=example.secure_settings(N, num_params, rounds=1), **kw)
  # (a) the in-process simulation's secure round
  sim_state, _ = exp.sim.round(exp.sim.init(exp.key), exp.xs, exp.ys)
  # (b) the example's own path (its CLI's run_dssgd)
  example_params = example.run_dssgd(setting, rounds=1, secure_aggregation=True, **kw)['params']
  # (c) the Flower apps on the loopback grid, clients deriving the simulation's keys
  seen = []
  server_app = flower.make_server_app(exp.sim, exp.params, rounds=1, key=exp.key,
                                      on_end=seen.append)
  client_app = flower.make_client_app(exp.sim, lambda i: (exp.xs[i], exp.ys[i]), exp.params,
                                      testing_key=exp.key, **_identities(tmp_path))
  flower.run_loopback(server_app, client_app, N)
  (summary,) = seen
  assert summary.rounds[0].accepted == (0, 1, 2)
  flat0 = np.asarray(exp.sim.ravel(exp.params))
  assert np.count_nonzero(np.asarray(sim_state.server.params) != flat0) > 0
  np.testing.assert_array_equal(np.asarray(summary.server.params),
                                np.asarray(sim_state.server.params))
  np.testing.assert_array_equal(example_params, np.asarray(sim_state.server.params))
  np.testing.assert_array_equal(np.asarray(summary.server.stats),
                                np.asarray(sim_state.server.stats))


# ---------------------------------------------------------------------------
# A server that repeats a round (issue 25, item 1), written from the outside:
# the documented Flower message format and the public protocol Server only.


def _replaying_server_app(sim, params, victim, out, threshold=2, resend=lambda g: g):
  """A ServerApp that runs two protocol-compliant secure rounds on the same global model,
  the victim in the first and dropped before uploading in the second, and keeps the
  difference of the two decoded sums (the victim's quantised upload if nothing stops it).

  It also sends what an older client took from the server (a participant id at set-up,
  ``sa_round`` and a training ``key``), so the same attack runs against that client.
  ``resend`` changes how the model is encoded in the second round (not what it is).
  """
  from flwr.serverapp import ServerApp
  from ssgd_optax.federated import secure_aggregation as sa
  app = ServerApp()
  global_ = np.asarray(sim.ravel(params), np.float32)
  mask = np.ones(sim.num_params, bool)
  key = np.asarray(jax.random.key_data(jax.random.key(99)))

  def query(node, step, r, cfg, arrays=None):
    content = {'config': flower.ConfigRecord({'step': step, 'round': r, 'sa_round': r, **cfg})}
    if arrays is not None:
      content['arrays'] = flower._record(**arrays)  # pylint: disable=protected-access
    return flower.Message(flower.RecordDict(content), dst_node_id=node, message_type='query')

  def protocol_message(reply):
    c = reply.content['config']
    return sa.ProtocolMessage(bytes(c['sa_session']), int(c['sa_round']), str(c['sa_step']),
                              int(c['sa_sender']), int(c['sa_recipient']),
                              bytes(c['sa_payload']), bytes(c['sa_tag']))

  @app.main()
  def main(grid, context):
    del context
    nodes = sorted(grid.get_node_ids())
    n = len(nodes)
    session = b'replayed session'
    server = sa.Server(n, threshold, session=session)
    setup = {'sa_n': n, 'sa_t': threshold, 'sa_session': session,
             'sa_server_key': server.public_key, 'sa_frac_bits': 16, 'sa_bits': 32}
    node_of = {}
    for i, reply in enumerate(grid.send_and_receive(
        [query(node, 'setup', -1, {**setup, 'participant': i}) for i, node in enumerate(nodes)])):
      c = reply.content['config']
      pid = int(c['participant']) if 'participant' in c else i
      node_of[pid] = reply.metadata.src_node_id
      server.register(pid, bytes(c['sa_channel_key']))
    out['errors'], sums = [], []

    def step(name, r, msgs, arrays=None):
      replies = grid.send_and_receive(
          [query(node_of[pid], name, r,
                 {'participant': pid, **({} if m is None else {
                     'sa_session': m.session, 'sa_round': m.round, 'sa_step': m.step,
                     'sa_sender': m.sender, 'sa_recipient': m.recipient, 'sa_payload': m.payload,
                     'sa_tag': m.tag})}, arrays) for pid, m in sorted(msgs.items())])
      out['errors'] += [reply.error.reason for reply in replies if reply.has_error()]
      return [protocol_message(reply) for reply in replies if not reply.has_error()]

    for r, dropped in ((0, ()), (1, (victim,))):
      server.start_round(r)
      keys = server.collect_keys(step('advertise', r, dict.fromkeys(node_of)))
      forward = server.collect_shares(step('share', r, keys))
      uploads = {u: m for u, m in forward.items() if u not in dropped}
      try:
        model = global_ if r == 0 else resend(global_)
        survivors = server.collect_masked(step('masked', r, uploads,
                                               {'global': model, 'mask': mask, 'key': key}))
      except sa.DropoutError:
        return   # the other participants refused to contribute again
      signatures = server.collect_consistency(step('consistency', r, survivors))
      server.finish(step('unmask', r, signatures))
      sums.append(server.sum_signed.astype(np.int64))
    out['recovered'] = sums[0] - sums[1]

  return app


@pytest.mark.parametrize('resend', ['same', 'float64_signed_zeros'])
def test_a_server_that_replays_a_round_to_difference_the_sums_gets_a_named_error(tmp_path,
                                                                                 resend):
  # Issue 25, item 1: the same global model twice, the victim dropped in the
  # second round; the difference of the sums was the victim's quantised upload,
  # bit-exact (shown against the client before this change: `recovered` equal
  # to the victim's quantised upload, no error). Now every other participant
  # refuses the second contribution on that model, before training; also when
  # the model is re-sent as float64 with -0.0 for 0.0 (it trains the same).
  params, x, y, sim = _secure_sim(selective_sharing(0.5), threshold=2)
  out = {}
  server_app = _replaying_server_app(
      sim, params, victim=0, out=out,
      resend=(lambda g: g) if resend == 'same' else lambda g: -g.astype(np.float64))
  client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params,
                                      **_identities(tmp_path))
  flower.run_loopback(server_app, client_app, N)
  assert 'recovered' not in out
  assert len(out['errors']) == N - 1
  assert all(e.startswith('RepeatedContributionError: this participant already contributed on '
                          'this global model') for e in out['errors']), out['errors']
  # The record is on each node's disk: a restarted client (new app, same files) refuses too.
  out = {}
  flower.run_loopback(_replaying_server_app(sim, params, victim=0, out=out),
                      flower.make_client_app(sim, lambda i: (x[i], y[i]), params,
                                             **_identities(tmp_path)), N)
  assert 'recovered' not in out and len(out['errors']) == N


# ---------------------------------------------------------------------------
# The Flower example app's identities (issue 25, item 2), attacked from the outside.


def _app_modules():
  import sys
  _, task, config = _deploy_module()
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'examples', 'flower_app')
  sys.path.insert(0, root)
  try:
    from ssgd_flower_app import client_app, identity  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  return client_app, identity, dict(config, **{'order': 'synchronous',
                                               'secure-aggregation': True})


def _seed_derived_key(seed, i):
  """What the app's removed demo identities were: a key anyone who knows the seed recomputes."""
  import hashlib
  from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
  return Ed25519PrivateKey.from_private_bytes(
      hashlib.sha256(f'ssgd-flower-demo|{seed}|{i}'.encode()).digest())


def _substitute_a_peer_with_the_seed(app, run_config, node_config, victim=0, peer=1):
  """A server that knows the run's seed signs its own keys as ``peer``'s and sends them to
  the victim (the documented wire format, the server's own channel key). Returns the
  victim's reply to that ``keys`` message."""
  import secagg_wire as wire
  from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
  n, session = int(run_config['num-participants']), b'evil session'
  grid = flower.LoopbackGrid(app, n, node_config=node_config, run_config=run_config)
  channel = X25519PrivateKey.generate()

  def ask(node, step, cfg):
    (reply,) = grid.send_and_receive([flower.Message(flower.RecordDict({
        'config': flower.ConfigRecord({'step': step, 'round': 0, **cfg})}), dst_node_id=node,
        message_type='query')])
    return reply

  setup = {'sa_n': n, 'sa_t': 2, 'sa_session': session, 'sa_server_key': wire.raw(
      channel.public_key()), 'sa_frac_bits': 16, 'sa_bits': 32}
  node_of, auth, entries = {}, {}, {}
  for node in grid.get_node_ids():
    reply = ask(node, 'setup', setup)
    if reply.has_error():
      return reply
    pid = int(reply.content['config']['participant'])
    node_of[pid] = node
    auth[pid] = wire.auth_key(channel, bytes(reply.content['config']['sa_channel_key']), session)
  for pid, node in node_of.items():
    entries[pid] = bytes(ask(node, 'advertise', {'participant': pid}).content['config'][
        'sa_payload'])
  c, s = wire.random_key(), wire.random_key()
  commit = entries[peer][2 * wire.KEY:2 * wire.KEY + wire.COMMIT]
  entries[peer] = c + s + commit + _seed_derived_key(int(run_config['seed']), peer).sign(
      wire.advertise_statement(session, 0, peer, c, s, commit))
  m = wire.authenticate(auth[victim], session, 0, 'keys', wire.SERVER, victim,
                        wire.pack_blobs(entries))
  return ask(node_of[victim], 'share', {
      'participant': victim, 'sa_session': m.session, 'sa_round': m.round, 'sa_step': m.step,
      'sa_sender': m.sender, 'sa_recipient': m.recipient, 'sa_payload': m.payload,
      'sa_tag': m.tag})


def test_a_secure_client_refuses_a_plain_train_message(tmp_path):
  # Otherwise a server could simply ask for the upload in the clear.
  params, x, y, sim = _secure_sim(selective_sharing(0.5))
  grid = flower.LoopbackGrid(flower.make_client_app(sim, lambda i: (x[i], y[i]), params,
                                                    **_identities(tmp_path)), N)
  msg = flower.Message(flower.RecordDict({
      'arrays': flower._record(**{'global': np.zeros(sim.num_params, np.float32),  # pylint: disable=protected-access
                                  'mask': np.ones(sim.num_params, bool)}),
      'config': flower.ConfigRecord({'participant': 0, 'round': 0})}), dst_node_id=1,
      message_type='train')
  (reply,) = grid.send_and_receive([msg])
  assert reply.has_error() and 'refusing a plain train message' in reply.error.reason


def test_flower_app_refuses_secure_aggregation_without_the_nodes_own_identity(tmp_path):
  client_app, _, run_config = _app_modules()
  # No identity, registry or record on the node: refused, naming them (nothing is
  # derived from the run's seed any more).
  reply = _substitute_a_peer_with_the_seed(client_app.app, run_config, lambda node: {})
  assert reply.has_error() and 'needs this node\'s identity-key, registry, record' in (
      reply.error.reason)


@pytest.mark.parametrize('identities', ['per_node', 'seed_derived'])
def test_seed_derived_identity_keys_cannot_sign_for_a_participant(tmp_path, identities):
  # Issue 25, item 2: a server that knows the run-config seed recomputed every
  # demo identity key and re-signed its own keys as a peer's. With per-node keys
  # from the app's identity command, the victim refuses them (SignatureError).
  # Control: with the seed-derived registry the same substitution is accepted.
  from cryptography.hazmat.primitives import serialization
  client_app, identity, run_config = _app_modules()
  n, seed = int(run_config['num-participants']), int(run_config['seed'])
  publics = {}
  for i in range(n):
    path = tmp_path / f'node{i}.key'
    if identities == 'per_node':
      publics[i] = identity.new_identity(str(path))
    else:
      key = _seed_derived_key(seed, i)
      path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
      path.chmod(0o600)
      publics[i] = key.public_key().public_bytes_raw().hex()
  identity.make_registry(str(tmp_path / 'registry.json'), [f'{i}={h}' for i, h in publics.items()])
  node_config = lambda node: {'identity-key': str(tmp_path / f'node{node - 1}.key'),
                              'registry': str(tmp_path / 'registry.json'),
                              'record': str(tmp_path / f'record{node}.jsonl')}
  reply = _substitute_a_peer_with_the_seed(client_app.app, run_config, node_config)
  if identities == 'per_node':
    assert reply.has_error() and reply.error.reason.startswith(
        'SignatureError: participant 0: the advertised keys of participant 1'), reply.error
  else:
    assert not reply.has_error() and reply.content['config']['sa_step'] == 'share'


def test_identity_command_writes_keys_and_a_checked_registry(tmp_path, capsys):
  _, identity, _ = _app_modules()
  identity.main(['new', '--key', str(tmp_path / 'a.key')])
  public = capsys.readouterr().out.strip()
  assert len(bytes.fromhex(public)) == 32
  with pytest.raises(SystemExit, match='never overwritten'):
    identity.main(['new', '--key', str(tmp_path / 'a.key')])
  with pytest.raises(SystemExit, match='ID=HEX'):
    identity.main(['registry', '--out', str(tmp_path / 'r.json'), 'zero'])
  with pytest.raises(SystemExit, match='share one identity key'):
    identity.main(['registry', '--out', str(tmp_path / 'r.json'), f'0={public}', f'1={public}'])


# ---------------------------------------------------------------------------
# A restarted server resumes from its checkpoint (issue 24).


class _Crash(Exception):
  """Stands for a server process killed after a round's checkpoint was written."""


def _server_run(sim, params, grid, *, rounds, key, seen, **kw):
  app = flower.make_server_app(sim, params, rounds=rounds, key=key,
                               on_round=lambda r, s: seen.append((r, s)), **kw)
  app(grid, flower.Context(run_id=1, node_id=0, node_config={}, state=flower.RecordDict(),
                           run_config={}))


def _crash_after(round_):
  def on_round(r, s):
    if r == round_:
      raise _Crash()
  return on_round


def test_a_restarted_server_resumes_from_its_checkpoint_as_if_never_stopped(tmp_path, caplog):
  upload = selective_sharing(0.3, strategy='threshold_random', key=jax.random.key(5))
  params, x, y, sim = _setup(upload)
  key = jax.random.key(7)
  client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params, testing_key=key)
  full = []
  _server_run(sim, params, flower.LoopbackGrid(client_app, N), rounds=3, key=key, seen=full)
  grid = flower.LoopbackGrid(client_app, N)  # the nodes live on; only the server restarts
  folder = tmp_path / 'server'
  with pytest.raises(_Crash):
    flower.make_server_app(sim, params, rounds=3, key=key, checkpoint_dir=folder,
                           on_round=_crash_after(1))(grid, flower.Context(
                               run_id=1, node_id=0, node_config={}, state=flower.RecordDict(),
                               run_config={}))
  with pytest.raises(ValueError, match='already holds a server checkpoint: pass resume=True'):
    flower.make_server_app(sim, params, rounds=3, key=key, checkpoint_dir=folder)
  with pytest.raises(ValueError, match='checkpoint_dir'):
    flower.make_server_app(sim, params, rounds=3, key=key, resume=True)
  summaries, resumed = [], []
  _server_run(sim, params, grid, rounds=3, key=key, seen=resumed, checkpoint_dir=folder,
              resume=True, on_end=summaries.append)
  assert [r for r, _ in resumed] == [2]  # rounds 0 and 1 were not run again
  np.testing.assert_array_equal(resumed[-1][1].params, full[-1][1].params)
  np.testing.assert_array_equal(resumed[-1][1].stats, full[-1][1].stats)
  (summary,) = summaries
  assert [r.round for r in summary.rounds] == [0, 1, 2]
  # A damaged newest checkpoint: named in one warning, the previous one (round 1) used.
  path = folder / 'server-state.json'
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0x20
  path.write_bytes(bytes(raw))
  again = []
  with caplog.at_level(logging.WARNING):
    _server_run(sim, params, flower.LoopbackGrid(client_app, N), rounds=3, key=key, seen=again,
                checkpoint_dir=folder, resume=True)
  assert [r for r, _ in again] == [2]
  assert any('server-state.json is damaged' in m and 'using the one of round 2' in m
             for m in caplog.messages), caplog.messages
  # A checkpoint of another run (other number of rounds) is refused, not used.
  with pytest.raises(flower.FederatedRunError, match='is of another run'):
    _server_run(sim, params, grid, rounds=4, key=key, seen=[], checkpoint_dir=folder,
                resume=True)


def test_a_restarted_secure_server_opens_a_fresh_session_and_cannot_repeat_a_round(tmp_path):
  """Issue 25's repeated-round rule across a restart: the resumed server continues with a
  new session (no ``(session, round)`` repeats) and bit-identical sums; a server killed
  after the masked inputs of a round cannot redo that round on the same model: the
  participants refuse (RepeatedContributionError) and the run stops loudly."""
  params, x, y, sim = _secure_sim(selective_sharing(0.5))
  key = jax.random.key(3)
  ids = _identities(tmp_path / 'full')
  client = lambda ident: flower.make_client_app(sim, lambda i: (x[i], y[i]), params,
                                                testing_key=key, **ident)
  full = []
  _server_run(sim, params, flower.LoopbackGrid(client(ids), N), rounds=2, key=key, seen=full)
  ids = _identities(tmp_path / 'restart')
  grid = _RecordingGrid(client(ids), N)
  folder = tmp_path / 'server'
  with pytest.raises(_Crash):
    flower.make_server_app(sim, params, rounds=2, key=key, checkpoint_dir=folder,
                           on_round=_crash_after(0))(grid, flower.Context(
                               run_id=1, node_id=0, node_config={}, state=flower.RecordDict(),
                               run_config={}))
  resumed = []
  _server_run(sim, params, grid, rounds=2, key=key, seen=resumed, checkpoint_dir=folder,
              resume=True)
  assert [r for r, _ in resumed] == [1]
  np.testing.assert_array_equal(resumed[-1][1].params, full[-1][1].params)
  sessions = {bytes(m.content['config']['sa_session']) for m in grid.sent
              if m.content['config'].get('step') == 'setup'}
  assert len(sessions) == 2  # one per server process
  # The protocol messages' (session, round): each pair belongs to one server process.
  pairs = {(bytes(m.content['config']['sa_session']), int(m.content['config']['sa_round']))
           for m in grid.sent if m.content['config'].get('step') == 'share'}
  assert len(pairs) == 2 and len({s for s, _ in pairs}) == 2, pairs

  # Killed after the masked inputs of round 1 (its checkpoint is round 0's): the restarted
  # server would sum a second time on the same global model; every participant refuses.
  class _KillAtConsistency(_RecordingGrid):
    def push_messages(self, messages):
      messages = list(messages)
      cfg = messages[0].content['config']
      if cfg.get('step') == 'consistency' and int(cfg['round']) == 1:
        raise _Crash()
      return super().push_messages(messages)

  ids = _identities(tmp_path / 'masked')
  grid = _KillAtConsistency(client(ids), N)
  folder = tmp_path / 'server2'
  with pytest.raises(_Crash):
    _server_run(sim, params, grid, rounds=2, key=key, seen=[], checkpoint_dir=folder)
  with pytest.raises(flower.FederatedRunError, match='RepeatedContributionError'):
    _server_run(sim, params, grid, rounds=2, key=key, seen=[], checkpoint_dir=folder,
                resume=True)


@pytest.mark.slow
def test_simulation_engine_server_stopped_after_round_1_resumes_from_its_checkpoint(tmp_path):
  """The restart on Flower's own runtime (Ray backend; ~3 min on 2 loaded cores).

  A ServerApp that raises ends ``run_simulation`` with that exception (the
  engine re-raises the ServerApp thread's error); a second ``run_simulation``
  with ``resume=True`` runs only round 2. Its SuperNodes are new: they start
  from the initial local models, so round 2 is the simulation's round 2 on the
  checkpointed global model and key with every participant's local state
  reset, not the uninterrupted run's round 2 (whose participants kept theirs).
  """
  pytest.importorskip('ray')
  from flwr.simulation import run_simulation
  upload = selective_sharing(0.3, strategy='threshold_random', key=jax.random.key(5))
  params, x, y, sim = _setup(upload)
  key = jax.random.key(7)
  folder = tmp_path / 'server'
  client_app = flower.make_client_app(sim, lambda i: (x[i], y[i]), params, testing_key=key)
  first = []

  def stop_after_round_1(r, s):
    first.append((r, s))
    if r == 1:
      raise _Crash()

  with pytest.raises(_Crash):
    run_simulation(server_app=flower.make_server_app(
        sim, params, rounds=3, key=key, checkpoint_dir=folder, on_round=stop_after_round_1),
                   client_app=client_app, num_supernodes=N,
                   backend_config={'client_resources': {'num_cpus': 1}})
  assert [r for r, _ in first] == [0, 1]
  assert (folder / 'server-state.json').exists()
  second, summaries = [], []
  run_simulation(server_app=flower.make_server_app(
      sim, params, rounds=3, key=key, checkpoint_dir=folder, resume=True,
      on_round=lambda r, s: second.append((r, s)), on_end=summaries.append),
                 client_app=client_app, num_supernodes=N,
                 backend_config={'client_resources': {'num_cpus': 1}})
  assert [r for r, _ in second] == [2]  # rounds 0 and 1 were not run again
  (summary,) = summaries
  assert [r.round for r in summary.rounds] == [0, 1, 2]
  assert summary.dropouts_per_round == [0, 0, 0]
  assert int(np.asarray(summary.server.round).item()) == 3
  assert np.all(np.isfinite(summary.server.params))
  # What is identical to an uninterrupted run: rounds 0-1 (the global model that was
  # checkpointed) and the key chain. What is not: the participants' local state in round 2.
  ref1 = _reference(sim, x, y, key, 2)
  np.testing.assert_allclose(first[1][1].params, ref1.server.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(first[1][1].stats, ref1.server.stats)
  fresh = sim.init(key)
  restarted = fresh._replace(server=first[1][1], history=first[1][1].params[None], key=ref1.key)
  want, _ = jax.jit(sim.round)(restarted, jnp.asarray(x), jnp.asarray(y), None)
  np.testing.assert_allclose(summary.server.params, want.server.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(summary.server.stats, want.server.stats)
  uninterrupted = _reference(sim, x, y, key, 3)
  assert not np.allclose(summary.server.params, uninterrupted.server.params, atol=1e-6)


def _checkpointed_server(path, key_like):
  """The server state and next key in a server checkpoint file (its documented JSON)."""
  import base64
  import json
  record = json.loads(path.read_text())

  def array(d):
    return np.frombuffer(base64.b64decode(d['data']), np.dtype(d['dtype'])).reshape(d['shape'])
  srv = federated.ServerState(**{k: jnp.asarray(array(v)) for k, v in record['server'].items()})
  key = jax.random.wrap_key_data(jnp.asarray(array(record['key'])),
                                 impl=jax.random.key_impl(key_like))
  return record['rounds_done'], srv, key


@pytest.mark.slow
def test_deployment_killed_after_round_0_resumes_with_the_readmes_commands(tmp_path):
  """examples/flower_app/README.md's restart, run as written (~4 min on 2 loaded cores).

  ``flower_deploy.py`` is killed (SIGKILL: its watchdog stops the SuperLink, the
  SuperNodes and the ServerApp) after round 0 of 2; the same command with
  ``resume=true`` starts a new deployment that runs round 1 only, on the
  checkpointed global model and key, with new SuperNodes (fresh local models).
  """
  import signal
  import subprocess
  import sys
  import time
  import uuid
  deploy, task, config = _deploy_module()
  script = os.path.join(os.path.dirname(deploy.APP), 'flower_deploy.py')
  workdir, s1, s2 = tmp_path / 'server', tmp_path / 's1.jsonl', tmp_path / 's2.jsonl'
  mark = uuid.uuid4().hex
  env = dict(os.environ, H24C_RESTART_TEST=mark, **_REPRODUCIBLE)
  cfg = f"rounds=2 theta-d=0.5 workdir='{workdir}'"  # < 1: local models matter

  def command(summary, run_config):
    return [sys.executable, script, '--supernodes', '3', '--summary', str(summary),
            '--run-config', run_config]

  def ours():  # every process of the first deployment (they inherit the mark)
    needle = f'H24C_RESTART_TEST={mark}\0'.encode()
    found = []
    for pid in os.listdir('/proc'):
      try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
          if pid.isdigit() and needle in f.read():
            found.append(int(pid))
      except OSError:
        pass
    return found

  first = subprocess.Popen(command(s1, cfg), cwd=deploy.APP, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    while not deploy.read_summary(str(s1)).get('rounds') and first.poll() is None:
      time.sleep(0.5)
    first.send_signal(signal.SIGKILL)  # the run dies after round 0
    first.wait()
    for _ in range(600):  # the watchdog stops the rest (within seconds)
      if not ours():
        break
      time.sleep(0.1)
    assert not ours(), 'the killed deployment left processes behind'
  finally:
    if first.poll() is None:
      first.kill()
  assert [r['round'] for r in deploy.read_summary(str(s1))['rounds']] == [0]
  done, srv, key = _checkpointed_server(workdir / 'server-state.json', jax.random.key(0))
  assert done == 1
  # Without resume=true the folder is refused (the run fails, nothing overwritten).
  again = subprocess.run(command(tmp_path / 's0.jsonl', cfg), cwd=deploy.APP, env=env,
                         capture_output=True, text=True, timeout=1800, check=False)
  assert again.returncode == 1 and 'already holds a server checkpoint: pass resume=true' in (
      again.stderr + again.stdout), (
      again.stdout[-2000:], again.stderr[-2000:])
  assert _checkpointed_server(workdir / 'server-state.json', key)[0] == 1
  second = subprocess.run(command(s2, cfg + ' resume=true'), cwd=deploy.APP, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
  assert second.returncode == 0, (second.stdout[-2000:], second.stderr[-2000:])
  assert 'resuming after round 0 of 2' in second.stdout + second.stderr
  res = deploy.read_summary(str(s2))
  assert [r['round'] for r in res['rounds']] == [1]  # round 0 was not run again
  s = res['summary']
  assert s['accepted'] == [[0, 1, 2]] * 2 and s['dropouts_per_round'] == [0, 0]
  params = np.asarray(s['params'])
  assert np.all(np.isfinite(params))
  # Round 1 on the checkpointed global model and key, every participant's local state new.
  t = task.build(dict(config, rounds=2, **{'theta-d': 0.5}))
  start = t.sim.init(t.key)._replace(server=srv, history=srv.params[None], key=key)
  want, _ = jax.jit(t.sim.round)(start, jnp.asarray(t.xs), jnp.asarray(t.ys))
  np.testing.assert_allclose(params, np.asarray(want.server.params), rtol=1e-5, atol=1e-6)
  # Kept local models would give the uninterrupted run's round 1: that is not what ran.
  assert not np.allclose(params, np.asarray(task.in_process(t, 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_deployment_a_restarted_serverapp_on_live_supernodes_gets_fresh_local_models(tmp_path):
  """Only the ServerApp process dies (SIGKILL after round 0 of 2); the SuperLink and the
  SuperNodes live on and a second ``flwr run`` with ``resume=true`` continues (~3 min).

  Flower 1.42 starts every ``flwr run`` as a new run series, so the surviving SuperNodes'
  ClientApps start with an empty ``context.state``: round 1 is the simulation's round on the
  checkpointed model and key with every local model new, as after a full restart.
  """
  import subprocess
  import time
  deploy, task, config = _deploy_module()
  workdir, s1, s2 = tmp_path / 'server', tmp_path / 's1.jsonl', tmp_path / 's2.jsonl'
  cfg = f"rounds=2 num-participants=3 theta-d=0.5 workdir='{workdir}'"  # < 1: locals matter
  with deploy.LocalDeployment(3, workdir=str(tmp_path / 'dep'), node_env=_REPRODUCIBLE) as dep:
    args = [deploy._exe('flwr'), 'run', deploy.APP, 'local-deployment', '--stream',
            '--run-config', f"{cfg} summary-path='{s1}'"]
    run = subprocess.Popen(args, env=dep.env, cwd=dep.dir, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
      while not deploy.read_summary(str(s1)).get('rounds') and run.poll() is None:
        time.sleep(0.5)

      def serverapps():
        out = []
        for pid in deploy.tagged_processes(dep.token):
          try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
              if b'flwr-serverapp' in f.read():
                out.append(pid)
          except OSError:
            pass
        return out
      killed = serverapps()
      assert killed, 'no flwr-serverapp process found'
      for pid in killed:
        os.kill(pid, 9)
      run.wait(timeout=600)
    finally:
      if run.poll() is None:
        run.kill()
    assert [r['round'] for r in deploy.read_summary(str(s1))['rounds']] == [0]
    done, srv, key = _checkpointed_server(workdir / 'server-state.json', jax.random.key(0))
    assert done == 1
    proc = dep.run(f"{cfg} resume=true summary-path='{s2}'", timeout=1800)
  res = deploy.read_summary(str(s2))
  assert 'summary' in res, (res, proc.stdout[-3000:], proc.stderr[-2000:])
  assert [r['round'] for r in res['rounds']] == [1]
  s = res['summary']
  assert s['accepted'] == [[0, 1, 2]] * 2 and s['dropouts_per_round'] == [0, 0]
  t = task.build(dict(config, rounds=2, **{'theta-d': 0.5}))
  start = t.sim.init(t.key)._replace(server=srv, history=srv.params[None], key=key)
  want, _ = jax.jit(t.sim.round)(start, jnp.asarray(t.xs), jnp.asarray(t.ys))
  np.testing.assert_allclose(np.asarray(s['params']), np.asarray(want.server.params),
                             rtol=1e-5, atol=1e-6)
  # Kept local models would give the uninterrupted run's round 1: that is not what ran.
  assert not np.allclose(np.asarray(s['params']), np.asarray(task.in_process(t, 2)),
                         rtol=1e-5, atol=1e-6)
