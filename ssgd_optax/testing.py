# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Checks of compiled programs for your own tests: collectives and op counts.

Performance properties that matter on an accelerator (one all-reduce per
step, no extra branch or reduction per leaf) can be asserted on the CPU by
reading the compiled program:

* :func:`count_all_reduces`: all-reduce ops in HLO text (e.g. "normalising
  before the all-reduce adds no communication");
* :func:`hlo_op_counts`: branches, float reductions, conditionals and
  fusions of a jitted function.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax

__all__ = ['count_all_reduces', 'hlo_op_counts']

_ALL_REDUCE = re.compile(r'=\s*[^=]*?\ball-reduce(?:-start)?\(')


def count_all_reduces(hlo_text: str) -> int:
  """The number of all-reduce ops in compiled HLO text.

  Counts ``all-reduce`` and ``all-reduce-start`` instructions (not their
  ``-done`` halves) in e.g. ``jax.jit(f).lower(...).compile().as_text()``.
  XLA may combine several reductions into one op, so this counts ops (each a
  round of communication), not reduced arrays.

  Args:
    hlo_text: the text of an HLO module.

  Returns:
    The number of all-reduce instructions.

  Example:

  >>> from ssgd_optax import testing
  >>> testing.count_all_reduces('%a = f32[] all-reduce(f32[] %x), to_apply=%sum')
  1
  """
  if not isinstance(hlo_text, str):
    raise TypeError(f'hlo_text must be a str; got {type(hlo_text).__name__}.')
  return sum(1 for line in hlo_text.splitlines() if _ALL_REDUCE.search(line))


def hlo_op_counts(f: Callable[..., Any], *args: Any) -> dict[str, int]:
  """Op counts of ``jax.jit(f)`` at ``args``: lowered StableHLO and XLA's compiled module.

  Args:
    f: the function to compile.
    *args: example arguments (arrays or ``jax.ShapeDtypeStruct``).

  Returns:
    ``{'branches': ..., 'reduce': ..., 'conditional': ..., 'fusion': ...}``:
    ``stablehlo.case``/``if`` ops and float-array reductions in the lowered
    (backend-independent) program; ``conditional`` and ``fusion``
    instructions in the entry computation of the compiled module.

  Example:

  >>> import jax.numpy as jnp
  >>> hlo_op_counts(lambda x: jnp.sum(x * x), jnp.ones(3))['reduce']
  1
  """
  if not callable(f):
    raise TypeError(f'f must be callable; got {type(f).__name__}.')
  lowered = jax.jit(f).lower(*args)
  stable = lowered.as_text()
  compiled = lowered.compile().as_text()
  return {
      'branches': stable.count('stablehlo.case') + stable.count('stablehlo.if'),
      # Reductions of float arrays (not scalar boolean `or`s).
      'reduce': len(re.findall(r'stablehlo\.reduce\(.*: \(tensor<[0-9x]+x(?:f|bf)\d+>', stable)),
      'conditional': compiled.count(' conditional('),
      'fusion': compiled[compiled.index('ENTRY'):].count(' fusion('),
  }
