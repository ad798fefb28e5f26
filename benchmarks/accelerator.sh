#!/usr/bin/env bash
# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
#
# One run of every measurement that matters on an accelerator, in < 5 minutes
# on one GPU: the main example, the transform overhead, the DP step benchmark
# (PyTorch/Opacus rows when torch and opacus are installed), the attack speed
# and the test suite on the accelerator backend. Tables and logs go to a
# results folder, with a summary (README.md) naming the device and date.
#
#   bash benchmarks/accelerator.sh                 # on a GPU/TPU machine
#   bash benchmarks/accelerator.sh --quick         # tiny settings (CPU smoke test, ~1-2 min)
#   bash benchmarks/accelerator.sh --out DIR       # results folder (default: a new
#                                                  # runs/benchmarks/accelerator-* folder)
#
# Needs the bench and test extras (the last step runs pytest):
#   pip install -e ".[bench,test]"
#
# Without an accelerator (JAX's default backend is cpu) the script runs the
# --quick settings on the CPU, so CI can smoke-test it. Every step runs under
# a time limit; a failed step is reported in the summary and the exit status,
# and the later steps still run.

set -uo pipefail

QUICK=0
OUT=''
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --out) [[ $# -ge 2 ]] || { echo 'accelerator.sh: --out needs a folder' >&2; exit 2; }
           OUT="$2"; shift 2 ;;
    -h|--help) sed -n '3,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "accelerator.sh: unknown argument '$1' (accepted: --quick, --out DIR)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python}"

# Ask JAX for its backend without the test suite's CPU pinning.
BACKEND="$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)" || {
  echo 'accelerator.sh: cannot import jax' >&2; exit 2; }
# Checked before any work: the last step runs the tests.
"$PY" -c 'import pytest' 2>/dev/null || {
  echo 'accelerator.sh: the last step runs pytest, which is not installed: pip install -e ".[bench,test]"' >&2
  exit 2; }
if [[ "$BACKEND" == cpu && $QUICK -eq 0 ]]; then
  echo 'accelerator.sh: no accelerator (JAX backend cpu): running the --quick settings on CPU.'
  QUICK=1
fi
export JAX_PLATFORMS="$BACKEND"
STAMP="$(date -u +%Y-%m-%dT%H-%MZ)"
OUT="${OUT:-runs/benchmarks/accelerator-$BACKEND-$STAMP}"
mkdir -p "$OUT" || exit 2

DEVICE="$("$PY" -c 'import jax; d = jax.devices(); print(f"{len(d)} x {d[0].device_kind} ({d[0].platform}), jax {jax.__version__}")')"
{
  echo "# accelerator.sh results"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- device: $DEVICE"
  command -v nvidia-smi >/dev/null 2>&1 && \
    echo "- nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  echo "- host: $(uname -m), $(nproc) cores; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "- settings: $([[ $QUICK -eq 1 ]] && echo 'quick (smoke test: the numbers are not measurements)' || echo full)"
  echo
  echo '| step | status | seconds | output |'
  echo '|---|---|---:|---|'
} > "$OUT/README.md"

FAILED=0
# run NAME LIMIT_S OUTPUT -- command...
run() {
  local name="$1" limit="$2" output="$3"; shift 4
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS status
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [[ $rc -eq 0 ]]; then status=ok
  elif [[ $rc -eq 124 ]]; then status="timed out"; FAILED=1
  else status="failed (exit $rc)"; FAILED=1
  fi
  echo "| $name | $status | $((SECONDS - t0)) | $output |" >> "$OUT/README.md"
  echo "   $status in $((SECONDS - t0)) s; log $OUT/$name.log"
  [[ "$status" == ok ]] || tail -5 "$OUT/$name.log"
}

if [[ $QUICK -eq 1 ]]; then
  # Generous limits: the smoke run checks that each step works, not its speed,
  # and CI machines may be shared.
  run train 300 train/metrics.json -- "$PY" examples/train.py --dataset digits --model mlp \
      --batch-size 64 --epochs 1 --workdir "$OUT/train" --overwrite
  run transform_overhead 300 transform_overhead.md -- "$PY" benchmarks/transform_overhead.py \
      --quick --skip-cnn --out "$OUT/transform_overhead.md"
  run dp 300 dp.md -- "$PY" benchmarks/dp.py --quick --skip-accuracy --out "$OUT/dp.md"
  run attack_speed 300 attack_speed.md -- "$PY" benchmarks/attack_speed.py --quick \
      --out "$OUT/attack_speed.md"
  # One fast test file on a single device: checks that the suite runs on the
  # backend at all; the full suite is the accelerator run's job.
  run tests 300 tests.log -- env SSGD_TEST_DEVICES=1 "$PY" -m pytest -q -p no:randomly \
      tests/test_normalize.py -k 'hlo_fused'
else
  run train 90 train/metrics.json -- "$PY" examples/train.py --workdir "$OUT/train" --overwrite
  run transform_overhead 90 transform_overhead.md -- "$PY" benchmarks/transform_overhead.py \
      --rounds 20 --out "$OUT/transform_overhead.md"
  run dp 60 dp.md -- "$PY" benchmarks/dp.py --skip-accuracy --out "$OUT/dp.md"
  run attack_speed 40 attack_speed.md -- "$PY" benchmarks/attack_speed.py --steps 200 \
      --repeats 3 --out "$OUT/attack_speed.md"
  # The tests of the numerics and of the parallel paths, on the accelerator's
  # own device count (multi-device tests skip with their reason).
  run tests 150 tests.log -- "$PY" -m pytest -q -p no:randomly tests/test_normalize.py \
      tests/test_dp_ssgd.py tests/test_privacy_clipping.py tests/test_parallel.py \
      tests/test_per_example.py
fi

{
  echo
  echo "The tests' summary line: $(grep -E '[0-9]+ (passed|failed)' "$OUT/tests.log" | tail -1)"
} >> "$OUT/README.md"
echo
cat "$OUT/README.md"
exit $FAILED
