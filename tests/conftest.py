# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Test set-up: virtual CPU devices (set before JAX is imported anywhere) and
the device-count guards of multi-device tests.

The number of virtual CPU devices is, in order: an
``--xla_force_host_platform_device_count=K`` already in ``XLA_FLAGS``, else
``SSGD_TEST_DEVICES`` (default 8). ``SSGD_TEST_DEVICES=1`` runs the suite as
on a single accelerator, where every multi-device test must skip with its
reason. ``JAX_PLATFORMS`` defaults to ``cpu``; set it to ``cuda`` (or ``tpu``)
to run the suite on an accelerator, where the device count is the hardware's.

Multi-device tests say what they need with ``@pytest.mark.devices(n)`` or by
calling the ``require_devices`` fixture (``require_devices(n)``).
"""

import os
import pathlib
import re
import sys

import pytest

# The examples' harness (ssgd_examples: cli, data, models, scripts) lives in examples/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'examples'))

_ENV = 'SSGD_TEST_DEVICES'
_FLAG = '--xla_force_host_platform_device_count'


def _devices_from_env() -> int:
  raw = os.environ.get(_ENV, '8')
  try:
    n = int(raw)
  except ValueError:
    n = 0
  if n < 1:
    raise pytest.UsageError(f'{_ENV} must be an int >= 1 (virtual CPU devices); got {raw!r}.')
  return n


if not re.search(_FLAG + r'=\d+', os.environ.get('XLA_FLAGS', '')):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' {_FLAG}={_devices_from_env()}').strip()
# Tests are written for the CPU backend (virtual devices, gloo collectives).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Most of the suite's time is XLA compiling small programs; LLVM's -O0 cuts
# about a fifth of it (the HLO passes, whose output some tests inspect, still
# run). Set XLA_FLAGS=--xla_backend_optimization_level=N to override.
if '--xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'

# Run only with `-m slow` (the default suite must stay under 10 minutes on 2
# cores): members of a family whose other members stay in the default run,
# and end-to-end runs whose parts are tested there. File-relative node ids;
# a listed id that no longer exists in a collected file is an error.
SLOW_BY_BUDGET = frozenset('''
test_guarantees_isolation.py::test_poisoned_examples_move_no_release[float32-1]
test_guarantees_isolation.py::test_poisoned_examples_move_no_release[float32-4]
test_guarantees_isolation.py::test_poisoned_examples_move_no_release[float64-4]
test_privacy_ghost.py::test_compiled_memory_stays_close_to_the_non_private_step
test_privacy_ghost.py::test_norms_and_clipped_sum_equal_vmap[dense]
test_privacy_ghost.py::test_norms_and_clipped_sum_equal_vmap[mlp]
test_privacy_ghost.py::test_normalisation_layers_equal_vmap[per_leaf]
test_attacks_scripts.py::test_leakage_demo_end_to_end
test_attacks_reconstruction.py::test_ssgd_is_transparent_to_adaptive_dlg_and_cosine
test_attacks_reconstruction.py::test_scan_and_python_loops_agree
test_attacks_imprint.py::test_dp_ssgd_leaves_nothing_recognisable[3.779]
test_privacy_unit_normalization.py::test_hlo_common_path_has_one_conditional_and_one_reduction_per_leaf[per_layer]
test_privacy_unit_normalization.py::test_hlo_common_path_has_one_conditional_and_one_reduction_per_leaf[per_leaf]
test_privacy_unit_normalization.py::test_sharded_without_noise_matches_one_device[True]
test_privacy_unit_normalization.py::test_padded_rows_with_inf_or_nan_give_the_unpadded_release[3e+38]
test_privacy_unit_normalization.py::test_padded_rows_with_inf_or_nan_give_the_unpadded_release[inf]
test_guarantees_dp_ssgd.py::test_a_nonfinite_example_is_dropped_by_default[inf_pixel]
test_guarantees_dp_ssgd.py::test_a_nonfinite_example_is_dropped_by_default[nan_pixel]
test_guarantees_dp_ssgd.py::test_no_neighbouring_batches_differ_by_more_than_the_sensitivity[global-0.5]
test_guarantees_dp_ssgd.py::test_no_neighbouring_batches_differ_by_more_than_the_sensitivity[per_layer-0.0]
test_guarantees_dp_ssgd.py::test_no_neighbouring_batches_differ_by_more_than_the_sensitivity[per_leaf-0.0]
test_guarantees_dp_ssgd.py::test_no_neighbouring_batches_differ_by_more_than_the_sensitivity[per_leaf-0.5]
test_normalize.py::test_both_forms_match_float64_reference[rescue-per_layer]
test_normalize.py::test_both_forms_match_float64_reference[rescue-per_leaf]
test_normalize.py::test_both_forms_match_float64_reference[fused-global]
test_normalize.py::test_both_forms_match_float64_reference[fused-per_leaf]
test_normalize.py::test_gradient_through_transform[per_layer]
test_normalize.py::test_gradient_through_transform[per_leaf]
test_normalize.py::test_axis_name_under_vmap_equals_unsharded[per_layer]
test_normalize.py::test_axis_name_under_vmap_equals_unsharded[per_leaf]
test_normalize.py::test_vmap_over_batch_of_trees
test_parallel.py::test_example_data_parallel[pmap]
test_train_example.py::test_the_main_command_twice_gets_two_run_folders
test_train_example.py::test_data_parallel_matches_one_device
test_train_example.py::test_resume_reads_the_configuration_and_refuses_conflicts_before_work
test_models.py::test_finite_and_examples_do_not_mix[resnet]
test_multiprocess.py::test_train_example_two_processes_equal_one_process_with_eight_devices
test_audit.py::test_black_box_loss_audit_detects_memorisation
test_federated_examples.py::test_secure_aggregation_learns_like_the_plain_synchronous_mean
test_parallel.py::test_train_step_matches_reference[pmap-privacy-per_leaf]
test_parallel.py::test_train_step_matches_reference[pmap-privacy-per_layer]
test_parallel.py::test_train_step_matches_reference[pmap-optimization-global]
test_parallel.py::test_train_step_matches_reference[pmap-optimization-per_layer]
test_parallel.py::test_train_step_matches_reference[shard_map-privacy-global]
test_parallel.py::test_train_step_matches_reference[shard_map-privacy-per_leaf]
test_parallel.py::test_train_step_matches_reference[shard_map-optimization-per_leaf]
test_parallel.py::test_train_step_matches_reference[shard_map-optimization-per_layer]
test_normalize.py::test_no_overflow_or_underflow[1e+30-per_leaf]
test_normalize.py::test_no_overflow_or_underflow[1e+30-per_layer]
test_normalize.py::test_no_overflow_or_underflow[1e-30-global]
test_normalize.py::test_no_overflow_or_underflow[1e-30-per_layer]
test_normalize.py::test_no_overflow_or_underflow[1e-37-global]
test_normalize.py::test_no_overflow_or_underflow[1e-37-per_leaf]
test_normalize.py::test_no_overflow_or_underflow[3e+38-per_leaf]
test_normalize.py::test_no_overflow_or_underflow[3e+38-per_layer]
test_train_example.py::test_every_optimizer_learns[sgd_momentum-flags2]
test_train_example.py::test_every_optimizer_learns[adam-flags3]
test_train_example.py::test_every_optimizer_learns[normalize_by_update_norm-flags4]
test_attacks_labels.py::test_idlg_finds_every_single_label[global]
test_attacks_labels.py::test_idlg_finds_every_single_label[per_leaf]
test_privacy_unit_normalization.py::test_one_example_without_noise_equals_unit_normalize[per_leaf]
test_privacy_unit_normalization.py::test_one_example_without_noise_equals_unit_normalize[per_layer]
test_privacy_unit_normalization.py::test_tiny_gradients_whose_squares_underflow_are_finite_and_unit_norm[per_leaf]
test_privacy_unit_normalization.py::test_tiny_gradients_whose_squares_underflow_are_finite_and_unit_norm[per_layer]
test_privacy_unit_normalization.py::test_low_precision_is_normalised_in_float32[float16]
'''.split())


def skip_unless_devices(n: int) -> None:
  """Skips the calling test when fewer than ``n`` JAX devices are visible."""
  import jax  # pylint: disable=import-outside-toplevel
  have = jax.device_count()
  if have < n:
    pytest.skip(f'needs {n} devices, {have} visible ({jax.default_backend()}); on CPU '
                f'run with {_ENV}={n} or more (tests/conftest.py)')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'devices(n): needs at least n JAX devices; skipped with the reason otherwise')


def pytest_runtest_setup(item):
  marker = item.get_closest_marker('devices')
  if marker is not None:
    skip_unless_devices(int(marker.args[0]))


@pytest.fixture
def require_devices():
  """``require_devices(n)`` skips the test when fewer than ``n`` devices are visible."""
  return skip_unless_devices


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  del config
  seen, files = set(), set()
  for item in items:
    path = item.nodeid.split('::', 1)[0]
    if not path.startswith('tests/'):
      continue
    files.add(path[len('tests/'):])
    key = item.nodeid[len('tests/'):]
    if key in SLOW_BY_BUDGET:
      item.add_marker(pytest.mark.slow)
      seen.add(key)
  missing = sorted(k for k in SLOW_BY_BUDGET - seen if k.split('::', 1)[0] in files
                   and not any(i.nodeid == 'tests/' + k for i in items))
  if missing:
    raise pytest.UsageError(f'tests/conftest.py SLOW_BY_BUDGET names tests that do not exist: '
                            f'{missing}')
