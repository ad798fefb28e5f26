# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Counts ops in compiled functions, so that performance regressions show without a GPU."""

import re

import jax


def hlo_counts(f, *args) -> dict[str, int]:
  """Counts in the lowered StableHLO (backend-independent) and in the module
  XLA's CPU backend compiles."""
  lowered = jax.jit(f).lower(*args)
  stable = lowered.as_text()
  compiled = lowered.compile().as_text()
  return {
      'branches': stable.count('stablehlo.case') + stable.count('stablehlo.if'),
      # Reductions of float arrays (not the scalar `or` of the overflow test).
      'reduce': len(re.findall(r'stablehlo\.reduce\(.*: \(tensor<[0-9x]+x(?:f|bf)\d+>', stable)),
      'conditional': compiled.count(' conditional('),
      'fusion': compiled[compiled.index('ENTRY'):].count(' fusion('),
  }
