# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The ServerApp: the DSSGD parameter server, with a JSON summary."""

import json
import logging
import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ssgd_flower_app import task as task_lib
from ssgd_optax.federated import flower

app = ServerApp()


class Transcript:
  """Wraps the Grid; appends every message the server process sends or receives to a file.

  One JSON line per message (``bytes`` as ``{"hex": ...}``, arrays as dtype,
  shape and hex), for audits: the tests read it to check that with
  ``secure-aggregation=true`` the server process never received an unmasked upload.
  """

  def __init__(self, grid: Grid, path: str):
    self._grid, self._path = grid, path

  def __getattr__(self, name):
    return getattr(self._grid, name)

  def _write(self, direction: str, msgs) -> None:
    with open(self._path, 'a', encoding='utf-8') as f:
      for m in msgs:
        node = m.metadata.dst_node_id if direction == 'sent' else m.metadata.src_node_id
        rec = {'direction': direction, 'node': int(node), 'type': m.metadata.message_type}
        if m.has_error():
          rec['error'] = {'code': int(m.error.code), 'reason': str(m.error.reason)[:500]}
        else:
          rec['config'] = {k: dict(r) for k, r in m.content.config_records.items()}
          rec['arrays'] = {k: {n: {'dtype': str(a.numpy().dtype), 'shape': list(a.shape),
                                   'hex': a.numpy().tobytes().hex()} for n, a in r.items()}
                           for k, r in m.content.array_records.items()}
        f.write(json.dumps(rec, default=lambda b: {'hex': bytes(b).hex()}) + '\n')

  def push_messages(self, messages):
    messages = list(messages)
    self._write('sent', messages)
    return self._grid.push_messages(messages)

  def pull_messages(self, message_ids):
    out = list(self._grid.pull_messages(message_ids))
    self._write('received', out)
    return out


# The project's loggers, at INFO, on stderr (which `flwr run --stream` shows).
PROJECT_LOGGERS = ('ssgd_optax', 'ssgd_flower_app')


def log_project_info() -> None:
  """Shows the project's INFO records (rounds, accuracy, privacy report) and nobody else's.

  Not ``logging.basicConfig(level=INFO)``: the root logger at INFO prints
  httpx's line for every request the ServerApp makes to the SuperLink (over
  600 in a 2-round ``flwr run ... local``) and repeats each of Flower's own
  records; Flower's full log stays in its log files.
  """
  for name in PROJECT_LOGGERS:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    if not any(getattr(h, 'ssgd_flower_app', False) for h in logger.handlers):
      handler = logging.StreamHandler()
      handler.setFormatter(logging.Formatter('%(levelname)s:%(name)s:%(message)s'))
      handler.ssgd_flower_app = True
      logger.addHandler(handler)
    logger.propagate = False  # a root handler configured elsewhere would print it twice


@app.main()
def main(grid: Grid, context: Context) -> None:
  log_project_info()
  c = context.run_config
  t = task_lib.build(c)
  path = str(c['summary-path'])
  start = time.perf_counter()

  def write(obj):
    if path:
      with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(obj) + '\n')

  def on_round(r, srv):
    write({'round': r, 'seconds': time.perf_counter() - start})

  def on_end(s: flower.RunSummary):
    acc = task_lib.accuracy(t.sim.unravel(s.server.params), t.x_test, t.y_test)
    logging.getLogger(__name__).info('final test accuracy %.4f', acc)
    write({'summary': {
        'accuracy': acc, 'seconds': time.perf_counter() - start,
        'params': [float(v) for v in s.server.params],
        'node_ids': list(s.node_ids),
        'dropouts_per_round': s.dropouts_per_round,
        'dropped': [list(r.dropped) for r in s.rounds],
        'accepted': [list(r.accepted) for r in s.rounds],
        'privacy': None if s.privacy is None else
                   {str(i): {'rounds': p.rounds, 'epsilon': p.epsilon, 'delta': p.delta}
                    for i, p in s.privacy.items()}}})

  try:
    server = flower.make_server_app(
        t.sim, t.params, rounds=int(c['rounds']), key=t.key,
        min_participants=int(c['min-participants']), node_timeout=float(c['node-timeout']),
        reply_timeout=float(c['reply-timeout']), mechanism=t.mechanism,
        delta=None if t.mechanism is None else float(c['dp-delta']), on_round=on_round,
        on_end=on_end, checkpoint_dir=str(c.get('workdir', '')) or None,
        resume=task_lib.as_bool(c.get('resume', False)))
  except ValueError as e:  # in the run config's words: workdir, resume=true
    raise ValueError(str(e).replace('checkpoint_dir', 'workdir').replace(
        'resume=True', 'resume=true')) from None
  if str(c.get('transcript-path', '')):
    grid = Transcript(grid, str(c['transcript-path']))
  try:
    server(grid, context)
  except flower.FederatedRunError as e:
    write({'error': str(e)})
    raise
