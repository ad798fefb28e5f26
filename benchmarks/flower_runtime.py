# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Wall time of one DSSGD run in-process, on Flower's simulation engine, deployed.

The set-up of ``examples/flower_app`` (``task.build``: MLP on the embedded
MNIST subset, round robin, largest-magnitude selective sharing) with the same
keys everywhere (the clients derive their training keys from the seed, the
insecure testing setting), so the final test accuracy must agree:

    python benchmarks/flower_runtime.py --mode in_process
    python benchmarks/flower_runtime.py --mode simulation
    python benchmarks/flower_runtime.py --mode deployment

(defaults: 30 participants, 10 rounds; ``--participants``/``--rounds``).
Measured on 2 CPU cores: in-process 46 s, simulation 28 min, deployment
41 min (``benchmarks/README.md``). The result is one JSON line on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
import tomllib

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in
# examples/; its command-line layer first, so that Ctrl-C during the imports
# below also ends in one line (exit 130).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'examples'))
from ssgd_examples import cli
from ssgd_examples.cli import flag

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'examples')
sys.path.insert(0, os.path.join(ROOT, 'flower_app'))
from ssgd_examples import scripts
from ssgd_flower_app import task as task_lib  # noqa: E402


def config(participants: int, rounds: int) -> dict:
  with open(os.path.join(ROOT, 'flower_app', 'pyproject.toml'), 'rb') as f:
    c = tomllib.load(f)['tool']['flwr']['app']['config']
  return dict(c, **{'num-participants': participants, 'rounds': rounds,
                    'dataset': 'mnist_subset'})


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark's flags (each checked before any work)."""
  mode: str = flag('in_process', 'where the run goes: in_process (46 s), simulation '
                   '(Flower\'s simulation engine, Ray: ~30 min; needs the flower-simulation '
                   'extra) or deployment (SuperLink + SuperNode processes: ~40 min)',
                   choices=('in_process', 'simulation', 'deployment'))
  participants: int = flag(30, 'participants (= SuperNodes)', check=cli.at_least(1))
  rounds: int = flag(10, 'DSSGD rounds', check=cli.at_least(1))
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    import importlib.util  # pylint: disable=import-outside-toplevel
    if self.mode == 'simulation' and importlib.util.find_spec('ray') is None:
      raise ValueError('--mode simulation needs Flower\'s simulation engine (Ray): '
                       'pip install -e ".[flower-simulation]".')


def main(argv: list[str] | None = None) -> dict:
  a = cli.parse(Config, argv, description=__doc__.split('\n\n')[0])
  logging.basicConfig(level=logging.WARNING)
  logging.getLogger('ssgd_optax.federated.flower').setLevel(logging.INFO)
  c = config(a.participants, a.rounds)
  start, extra = time.perf_counter(), {}
  if a.mode == 'in_process':
    t = task_lib.build(c)
    params = task_lib.in_process(t, a.rounds)
    acc = task_lib.accuracy(t.sim.unravel(params), t.x_test, t.y_test)
  elif a.mode == 'simulation':
    from flwr.simulation import run_simulation
    from ssgd_optax.federated import flower
    t = task_lib.build(c)
    out = []
    server = flower.make_server_app(t.sim, t.params, rounds=a.rounds, key=t.key,
                                    on_end=out.append)
    client = flower.make_client_app(t.sim, lambda i: (t.xs[i], t.ys[i]), t.params,
                                    testing_key=t.key)
    run_simulation(server_app=server, client_app=client, num_supernodes=a.participants,
                   backend_config={'client_resources': {'num_cpus': 1}})
    acc = task_lib.accuracy(t.sim.unravel(out[0].server.params), t.x_test, t.y_test)
  else:
    deploy = scripts.load('examples/flower_deploy.py', 'flower_deploy')
    path = os.path.join(tempfile.mkdtemp(), 'summary.jsonl')
    with deploy.LocalDeployment(
        a.participants, node_env={'SSGD_FLOWER_INSECURE_REPRODUCIBLE_KEYS': '1'}) as dep:
      # 60 processes (SuperNode + SuperExec each) start at once: wait longer for them.
      code, lines = dep.stream(
          f"num-participants={a.participants} rounds={a.rounds} dataset='mnist_subset' "
          f"node-timeout=900.0 reply-timeout=900.0 summary-path='{path}'", timeout=6 * 3600)
    res = deploy.read_summary(path)
    if 'summary' not in res:
      error = res.get('error') or deploy.server_error(lines) or f'flwr run exited with {code}'
      print(f'flower_runtime.py: the deployed run failed: {error} (logs in {dep.dir})',
            file=sys.stderr)
      raise SystemExit(1)
    acc = res['summary']['accuracy']
    # Seconds since the ServerApp started, at the end of each round.
    extra['round_end_s'] = [round(r['seconds'], 1) for r in res['rounds']]
  result = {'mode': a.mode, 'participants': a.participants, 'rounds': a.rounds,
            'accuracy': acc, 'wall_s': round(time.perf_counter() - start, 1),
            'cpus': os.cpu_count(), 'load_avg': os.getloadavg()} | extra
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
