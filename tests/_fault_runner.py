# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Runs an example script as ``__main__`` with faults injected into the privacy ledger.

  python tests/_fault_runner.py examples/dp_ssgd.py [flags...]

Environment (besides the scripts' own ``SSGD_EXAMPLES_KILL_AT`` and
``SSGD_EXAMPLES_FAULT_LOG``, see ``ssgd_examples.checkpoints.fault_point``):

  SSGD_KILL_LEDGER_WRITE=n   SIGKILL in the middle of the n-th write of the
                             ledger (half of the temporary file written; the
                             ledger file itself untouched, as a real kill
                             there leaves it)
  SSGD_LEDGER_AFTER=1        a deliberately broken ledger: each step recorded
                             after it is released, not before (the kill tests
                             must catch it)
"""

import os
import pathlib
import runpy
import signal
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'examples'))

from ssgd_optax.privacy import _ledger  # pylint: disable=wrong-import-position

_KILL_WRITE = os.environ.get('SSGD_KILL_LEDGER_WRITE')
if _KILL_WRITE:
  _real_write, _writes = _ledger._atomic_write, [0]  # pylint: disable=protected-access

  def _write(path, data):
    _writes[0] += 1
    if _writes[0] == int(_KILL_WRITE):
      with open(path + '.tmp', 'wb') as f:
        f.write(data[:len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
      os.kill(os.getpid(), signal.SIGKILL)
    _real_write(path, data)

  _ledger._atomic_write = _write  # pylint: disable=protected-access

if os.environ.get('SSGD_LEDGER_AFTER'):

  def _reserve_after(self, steps):
    if steps - 1 > self.recorded_steps:  # only the steps already released
      self._write(steps - 1, 'running')  # pylint: disable=protected-access

  def _finish(self, steps):
    self._write(steps, 'ended')  # pylint: disable=protected-access

  _ledger.LedgerRun.reserve = _reserve_after
  _ledger.LedgerRun.finish = _finish

if __name__ == '__main__':
  script = str(ROOT / sys.argv[1])
  sys.argv = [script] + sys.argv[2:]
  runpy.run_path(script, run_name='__main__')
