# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The contract every public gradient transformation keeps (as optax's shared tests).

One table, ``CASES``, holds every ``GradientTransformation`` factory the
package exports, built with small valid arguments; every case is checked for

* jit/eager agreement of ``update`` (updates and state);
* ``jax.eval_shape(init)`` on abstract params (no concrete values needed);
* an ``update`` that keeps the state's tree structure, shapes and dtypes, and
  the updates' structure and dtypes;
* ``optax.inject_hyperparams`` with the hyper-parameters that may be traced:
  the wrapped update traces with them abstract (``jax.make_jaxpr``: no Python
  control flow on them), and changing them in the state changes the update
  exactly as rebuilding the transform with those values would;
* ``None`` leaves, and ``optax.MaskedNode`` leaves through ``optax.masked``;
* donate-then-re-initialise: ``jax.jit(tx.update, donate_argnums=1)`` and then
  ``tx.init`` again (issue 11, defect 8).

``test_table_covers_every_export`` fails when a new factory is exported
without an entry (it finds them by their return annotation,
``-> optax.GradientTransformation...``, in the ``__all__`` of every module of
the package), and ``test_builtin_defences_keep_the_contract`` runs the
attack benchmarks' defence registry through the structure and donation
checks. ``aggregate`` needs a bound axis name: its case runs under
``jax.vmap(..., axis_name=...)`` over two simulated devices.

Randomised transforms are listed with ``key`` in ``static_args`` under
``inject_hyperparams``: optax would otherwise keep the caller's key buffer,
uncopied, in ``state.hyperparams``, where a donated state deletes it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ssgd_optax
from ssgd_optax import _normalize as normalize
from ssgd_optax import parallel
from ssgd_optax import privacy
from ssgd_optax import _selective as selective
from ssgd_optax.attacks import _defences as defences
_AXIS = 'contract_devices'
_DEVICES = 2
_BATCH = 2


@dataclasses.dataclass(frozen=True)
class Case:
  """One row of the table.

  Attributes:
    name: the test id.
    factory: the exported factory.
    kwargs: its arguments (small and valid).
    traced: new values of hyper-parameters that may be traced, for the
      ``inject_hyperparams`` check (empty: no numeric hyper-parameter).
    static: arguments ``inject_hyperparams`` must keep static.
    per_example: ``update`` takes per-example gradients (a leading batch axis).
    axis: ``update`` needs this axis name bound (run under ``jax.vmap``).
  """
  name: str
  factory: Callable[..., Any]
  kwargs: dict[str, Any]
  traced: dict[str, float] = dataclasses.field(default_factory=dict)
  static: tuple[str, ...] = ()
  per_example: bool = False
  axis: str | None = None

  def arguments(self, **overrides) -> dict[str, Any]:
    # A fresh key buffer per build, so that a transform that loses its key
    # to a donation fails its own test only.
    return {k: jax.random.key(0) if v is KEY else v
            for k, v in {**self.kwargs, **overrides}.items()}

  def build(self, **overrides) -> optax.GradientTransformation:
    return self.factory(**self.arguments(**overrides))

  def build_injected(self) -> optax.GradientTransformation:
    return optax.inject_hyperparams(self.factory, static_args=self.static,
                                    hyperparam_dtype=jnp.float32)(**self.arguments())


KEY = object()  # stands for jax.random.key(0) in Case.kwargs


CASES = [
    Case('unit_normalize', normalize.unit_normalize, dict(scope='global', eps=1e-6),
         traced=dict(eps=10.0)),
    Case('unit_normalize_per_leaf', normalize.unit_normalize, dict(scope='per_leaf', eps=0.0),
         traced=dict(eps=10.0)),
    Case('ssgd', normalize.ssgd, dict(learning_rate=0.1, momentum=0.9),
         traced=dict(learning_rate=0.3, momentum=0.5, eps=10.0)),
    Case('aggregate', parallel.aggregate, dict(axis_name=_AXIS, reduction='mean'),
         axis=_AXIS),
    Case('selective_sharing', selective.selective_sharing,
         dict(fraction=0.5, threshold=0.0, clip=0.5),
         traced=dict(threshold=0.3, clip=0.2), static=('fraction',)),
    Case('selective_sharing_random', selective.selective_sharing,
         dict(fraction=0.5, strategy='threshold_random', threshold=0.0, clip=0.5,
              key=KEY, scope='per_leaf'),
         traced=dict(threshold=0.3, clip=0.2), static=('fraction', 'key')),
    Case('dp_selective_sharing', privacy.dp_selective_sharing,
         dict(fraction=0.5, epsilon=1.0, clip=0.5, threshold=0.0, key=KEY),
         traced=dict(epsilon=100.0, clip=0.2, threshold=0.1), static=('fraction', 'key')),
    Case('add_gaussian_noise', privacy.add_gaussian_noise,
         dict(noise_multiplier=1.0, sensitivity=0.5, expected_batch_size=2.0, key=KEY),
         traced=dict(noise_multiplier=0.5, sensitivity=0.25, expected_batch_size=4.0),
         static=('key',)),
    Case('dp_unit_normalize', privacy.dp_unit_normalize,
         dict(noise_multiplier=1.0, expected_batch_size=2.0, key=KEY),
         traced=dict(noise_multiplier=0.5, expected_batch_size=4.0, stability=0.1),
         static=('key',), per_example=True),
    Case('dp_ssgd', privacy.dp_ssgd,
         dict(learning_rate=0.1, noise_multiplier=1.0, expected_batch_size=2.0, key=KEY,
              momentum=0.9),
         traced=dict(learning_rate=0.3, noise_multiplier=0.5, expected_batch_size=4.0,
                     momentum=0.5), static=('key',),
         per_example=True),
    # The preferred form: the mechanism object that the accountant reads too.
    Case('add_gaussian_noise_mechanism', privacy.add_gaussian_noise,
         dict(mechanism=privacy.dpsgd_mechanism(0.5, 1.0), expected_batch_size=2.0, key=KEY),
         traced=dict(expected_batch_size=4.0), static=('key', 'mechanism')),
    Case('dp_unit_normalize_mechanism', privacy.dp_unit_normalize,
         dict(mechanism=privacy.dp_ssgd_mechanism(
             {'w': jnp.zeros((3, 2)), 'b': jnp.zeros(2)}, 1.0, 'per_leaf'),
              expected_batch_size=2.0, key=KEY),
         traced=dict(expected_batch_size=4.0, stability=0.1), static=('key', 'mechanism'),
         per_example=True),
    Case('gaussian_noise', defences.gaussian_noise, dict(stddev=0.1, key=KEY),
         traced=dict(stddev=0.3), static=('key',)),
    Case('prune', defences.prune, dict(keep_fraction=0.5), static=('keep_fraction',)),
]

_IDS = [c.name for c in CASES]


# ---------------------------------------------------------------------------
# Inputs and helpers.


def _params():
  return {'w': jnp.linspace(-1.0, 2.0, 6, dtype=jnp.float32).reshape(3, 2),
          'b': jnp.array([0.5, -0.25], jnp.float32)}


def _grads(per_example: bool):
  g = {'w': jnp.array([[0.3, -1.2], [0.05, 2.0], [-0.7, 0.4]], jnp.float32),
       'b': jnp.array([0.9, -0.1], jnp.float32)}
  if per_example:
    # Two examples with different gradients (and norms).
    g = jax.tree.map(lambda x: jnp.stack([x, -0.5 * x[::-1]]), g)
  return g


def _on_devices(tree):
  # Device d holds (d + 1) times the tree, so the mean differs from each.
  return jax.tree.map(lambda x: jnp.stack([x * (d + 1) for d in range(_DEVICES)]), tree)


def _inputs(case: Case):
  params, grads = _params(), _grads(case.per_example)
  if case.axis is not None:
    params, grads = _on_devices(params), _on_devices(grads)
  return params, grads


def _mapped(case: Case, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` run on ``_DEVICES`` simulated devices when the case needs an axis."""
  if case.axis is None:
    return tx

  def init_fn(params):
    return jax.vmap(tx.init, axis_name=case.axis)(params)

  def update_fn(updates, state, params=None):
    return jax.vmap(tx.update, axis_name=case.axis)(updates, state, params)

  return optax.GradientTransformation(init_fn, update_fn)


def _plain(tree):
  """Key leaves as their raw data, so trees of states can be compared."""
  return jax.tree.map(
      lambda x: jax.random.key_data(x)
      if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
      tree)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  a, b = _plain(a), _plain(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert jnp.result_type(x) == jnp.result_type(y)
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=atol)


def _signature(tree):
  """Structure, shapes and dtypes (what ``eval_shape`` knows)."""
  return (jax.tree.structure(tree),
          [(tuple(jnp.shape(x)), jnp.result_type(x)) for x in jax.tree.leaves(tree)])


def _example_structure(case: Case, tree):
  # Per-example transforms return one update per parameter (no batch axis).
  if case.per_example:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
  return tree


# ---------------------------------------------------------------------------
# The contract.


# One transform, one eager step and one compiled (donating) update per case,
# shared by the tests below: the suite's cost is compilation.
_TX: dict[str, optax.GradientTransformation] = {}
_EAGER: dict[str, Any] = {}
_DONATING: dict[str, Callable[..., Any]] = {}


def _tx(case: Case) -> optax.GradientTransformation:
  if case.name not in _TX:
    _TX[case.name] = _mapped(case, case.build())
  return _TX[case.name]


def _eager_update(case: Case):
  """``(updates, state)`` of one eager step from ``init``."""
  if case.name not in _EAGER:
    tx = _tx(case)
    params, grads = _inputs(case)
    _EAGER[case.name] = tx.update(grads, tx.init(params), params)
  return _EAGER[case.name]


def _donating_update(case: Case):
  if case.name not in _DONATING:
    _DONATING[case.name] = jax.jit(_tx(case).update, donate_argnums=1)
  return _DONATING[case.name]


@pytest.mark.parametrize('case', CASES, ids=_IDS)
def test_jit_matches_eager(case):
  tx = _tx(case)
  params, grads = _inputs(case)
  # Donation changes no value: the donating jit is the one tested here.
  jitted = _donating_update(case)(grads, tx.init(params), params)
  _assert_trees_close(jitted, _eager_update(case))


@pytest.mark.parametrize('case', CASES, ids=_IDS)
def test_eval_shape_init_on_abstract_params(case):
  tx = _tx(case)
  params, _ = _inputs(case)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  assert _signature(jax.eval_shape(tx.init, abstract)) == _signature(tx.init(params))


@pytest.mark.parametrize('case', CASES, ids=_IDS)
def test_update_keeps_state_structure_and_dtypes(case):
  tx = _tx(case)
  params, grads = _inputs(case)
  state = tx.init(params)
  updates, new_state = jax.eval_shape(tx.update, grads, state, params)
  assert _signature(new_state) == _signature(state)
  assert _signature(updates) == _signature(_example_structure(case, grads))
  # And a second step from the new state (e.g. a counter that changed dtype).
  _, third = jax.eval_shape(tx.update, grads, new_state, params)
  assert _signature(third) == _signature(state)


@pytest.mark.parametrize('case', CASES, ids=_IDS)
def test_inject_hyperparams(case):
  params, grads = _inputs(case)
  injected = _mapped(case, case.build_injected())
  state = injected.init(params)
  hyper = state.hyperparams
  assert set(case.traced) <= set(hyper), (
      f'{set(case.traced) - set(hyper)} should be traced hyper-parameters')
  # Tracing with abstract hyper-parameters fails on any Python control flow
  # over them (make_jaxpr traces as jit does, without compiling).
  jax.make_jaxpr(injected.update)(grads, state, params)
  if not case.traced:
    _assert_trees_close(injected.update(grads, state, params)[0], _eager_update(case)[0])
    return
  for name, value in case.traced.items():
    hyper[name] = jnp.full_like(hyper[name], value)
  # New values in the state act exactly as if the transform had been built
  # with them.
  updates, _ = injected.update(grads, state, params)
  changed = _mapped(case, case.build(**case.traced))
  _assert_trees_close(updates, changed.update(grads, changed.init(params), params)[0])


@pytest.mark.parametrize('case', CASES, ids=_IDS)
def test_none_leaves_pass_through(case):
  tx = _tx(case)
  params, grads = _inputs(case)
  with_none = lambda t: {**t, 'none': None}
  state = tx.init(with_none(params))
  # Eager (jit agreement is tested above): None changes no shape, so this
  # reuses the compiled operations of the eager step.
  updates, new_state = tx.update(with_none(grads), state, with_none(params))
  assert updates['none'] is None
  assert _signature(new_state) == _signature(state)
  # A None leaf is not a parameter: the other leaves get what they get without it.
  _assert_trees_close({k: v for k, v in updates.items() if k != 'none'},
                      _eager_update(case)[0])


@pytest.mark.parametrize('case', CASES, ids=_IDS)
def test_masked_leaves(case):
  params, grads = _inputs(case)
  mask = {'w': True, 'b': False}
  tx = _mapped(case, optax.masked(case.build(), mask))
  state = tx.init(params)
  updates, new_state = tx.update(grads, state, params)
  assert _signature(new_state) == _signature(state)
  # The masked-out leaf is passed through untouched; the others are
  # transformed as if it did not exist (optax.MaskedNode inside).
  np.testing.assert_array_equal(updates['b'], grads['b'])
  alone = _mapped(case, case.build())
  only_w = lambda t: {'w': t['w']}
  reference = alone.update(only_w(grads), alone.init(only_w(params)), only_w(params))[0]
  _assert_trees_close(updates['w'], reference['w'])


@pytest.mark.parametrize('case', CASES, ids=_IDS)
def test_donate_then_reinitialise(case):
  tx = _tx(case)
  params, grads = _inputs(case)
  update = _donating_update(case)
  first, state = update(grads, tx.init(params), params)
  # The donated state's buffers are gone; init must hand out fresh ones.
  second, _ = update(grads, tx.init(params), params)
  _assert_trees_close(second, first, rtol=0, atol=0)
  update(grads, state, params)  # and the returned state is usable


def test_donation_check_fails_on_a_transform_that_keeps_the_callers_key():
  # The stand-in of defect 8 (issue 11): init puts the factory's key buffer
  # itself into the state, so the first donated update deletes it.
  def keeps_callers_key(key):
    def init_fn(params):
      del params
      return selective.SelectiveSharingState(key)

    def update_fn(updates, state, params=None):
      del params
      return updates, selective.SelectiveSharingState(jax.random.split(state.key)[0])

    return optax.GradientTransformation(init_fn, update_fn)

  broken = Case('broken_keeps_callers_key', keeps_callers_key, dict(key=KEY))
  with pytest.raises(ValueError, match='deleted or donated'):
    test_donate_then_reinitialise(broken)


# ---------------------------------------------------------------------------
# Coverage of the table.


def _exported_factories() -> dict[str, list[str]]:
  """Every exported function annotated to return a GradientTransformation."""
  modules = [ssgd_optax] + [
      importlib.import_module(m.name)
      for m in pkgutil.walk_packages(ssgd_optax.__path__, 'ssgd_optax.')]
  found: dict[str, list[str]] = {}
  for module in modules:
    for name in getattr(module, '__all__', ()):
      obj = getattr(module, name)
      if not inspect.isfunction(obj):
        continue
      if 'GradientTransformation' in str(inspect.signature(obj).return_annotation):
        found.setdefault(f'{obj.__module__}.{obj.__qualname__}', []).append(module.__name__)
  return found


def test_table_covers_every_export():
  exported = _exported_factories()
  covered = {f'{c.factory.__module__}.{c.factory.__qualname__}' for c in CASES}
  missing = {k: v for k, v in exported.items() if k not in covered}
  assert not missing, f'exported transforms without a row in CASES: {missing}'
  assert covered <= set(exported), covered - set(exported)
  # The table is not empty by accident.
  assert len(exported) >= 10


def test_coverage_check_notices_a_new_export(monkeypatch):
  def new_transform(x: float) -> optax.GradientTransformation:
    return optax.scale(x)

  monkeypatch.setattr(selective, '__all__', [*selective.__all__, 'new_transform'])
  monkeypatch.setattr(selective, 'new_transform', new_transform, raising=False)
  new_transform.__module__ = selective.__name__
  with pytest.raises(AssertionError, match='new_transform'):
    test_table_covers_every_export()


# Registered at import, before any test can add its own.
_BUILTIN_DEFENCES = defences.available_defences()


@pytest.mark.parametrize('name', _BUILTIN_DEFENCES)
def test_builtin_defences_keep_the_contract(name):
  made = defences.make_defence(name, jax.random.key(0), _BATCH)
  tx = made.transform
  params, grads = _params(), _grads(made.per_example)
  state = tx.init(params)
  updates, new_state = jax.eval_shape(tx.update, grads, state, params)
  assert _signature(new_state) == _signature(state)
  expected = grads if not made.per_example else jax.tree.map(lambda x: x[0], grads)
  assert _signature(updates) == _signature(expected)
  if not jax.tree.leaves(state):
    return  # nothing to donate
  update = jax.jit(tx.update, donate_argnums=1)
  first, _ = update(grads, tx.init(params), params)
  second, _ = update(grads, tx.init(params), params)
  _assert_trees_close(second, first, rtol=0, atol=0)
