# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""A registry of client-side defences for attack benchmarks.

Each entry maps a name to a factory ``(key, num_examples) -> Defence``; the
key seeds any randomness of the defence (noise, random selection) and
``num_examples`` is the client's batch size (DP defences divide by it).
Adding a defence is one call:

>>> import optax
>>> from ssgd_optax import attacks
>>> attacks.register_defence(
...     'clip_1', lambda key, b: attacks.Defence(optax.clip_by_global_norm(1.0), name='clip_1'))
>>> 'clip_1' in attacks.available_defences()
True
>>> attacks.unregister_defence('clip_1')

Built in (``available_defences()`` lists what this installation has):

================  ===========================================================
name              shared update
================  ===========================================================
``none``          the batch gradient
``ssgd_global``   :func:`ssgd_optax.unit_normalize` ``("global")``, likewise
                  ``ssgd_per_leaf``, ``ssgd_per_layer``
``prune_50``      top-k magnitude pruning per tensor keeping 50 % (DLG's
                  "gradient pruning"); ``prune_90`` keeps 10 %
``noise_1e-3``    plus ``N(0, sigma^2)`` per entry, sigma = 1e-3; also
                  ``noise_1e-2``, ``noise_1e-1``
``dssgd_10``      :func:`ssgd_optax.selective_sharing` 10 %,
                  ``threshold_random`` (if that module is installed)
``dp_ssgd_1``     :func:`ssgd_optax.privacy.dp_unit_normalize`, noise
                  multiplier 1, per-example (if installed)
================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from ssgd_optax import _keys
from ssgd_optax import _validation
from ssgd_optax import _normalize as normalize_lib
from ssgd_optax.attacks._threat import Defence

__all__ = ['DefenceFactory', 'register_defence', 'unregister_defence', 'make_defence',
           'available_defences', 'gaussian_noise', 'prune']

DefenceFactory = Callable[[jax.Array, int], Defence]

_REGISTRY: dict[str, DefenceFactory] = {}


def register_defence(name: str, factory: DefenceFactory, *, overwrite: bool = False) -> None:
  """Adds ``factory`` under ``name`` (``ValueError`` if taken, unless ``overwrite``)."""
  if not isinstance(name, str) or not name:
    raise TypeError(f'name must be a non-empty str; got {name!r}.')
  if not callable(factory):
    raise TypeError(f'factory must be callable (key, num_examples) -> Defence; got {factory!r}.')
  if name in _REGISTRY and not overwrite:
    raise ValueError(f'a defence named {name!r} is already registered; pass overwrite=True.')
  _REGISTRY[name] = factory


def unregister_defence(name: str) -> None:
  """Removes ``name`` from the registry (``KeyError`` if absent)."""
  del _REGISTRY[name]


def available_defences() -> tuple[str, ...]:
  """The registered defence names, in registration order."""
  return tuple(_REGISTRY)


def make_defence(name: str, key: jax.Array, num_examples: int = 1) -> Defence:
  """Builds the registered defence ``name`` for a batch of ``num_examples``.

  Example:

  >>> import jax
  >>> make_defence('ssgd_per_layer', jax.random.key(0)).name
  'ssgd_per_layer'
  """
  if name not in _REGISTRY:
    raise ValueError(f'unknown defence {name!r}; available: {", ".join(_REGISTRY)}.')
  _validation.check_int('num_examples', num_examples, minimum=1)
  d = _REGISTRY[name](key, num_examples)
  if not isinstance(d, Defence):
    raise TypeError(f'the factory of {name!r} returned {type(d).__name__}, not a Defence.')
  return d._replace(name=name)


def gaussian_noise(stddev: float, key: jax.Array) -> optax.GradientTransformation:
  """Adds ``N(0, stddev^2)`` to every entry (``optax.add_noise`` without decay).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> tx = gaussian_noise(0.0, jax.random.key(0))
  >>> tx.update(jnp.ones(2), tx.init(jnp.ones(2)))[0]
  Array([1., 1.], dtype=float32)
  """
  _validation.check_nonnegative('stddev', stddev)
  key = _keys.check_key(key)
  inner = optax.add_noise(stddev ** 2, 0.0, key)

  def init_fn(params):
    # optax.add_noise hands out the caller's key buffer, which a donated
    # state deletes; every init gets a copy instead (ssgd_optax._keys).
    return inner.init(params)._replace(rng_key=_keys.copy_key(key))

  return optax.GradientTransformation(init_fn, inner.update)


def prune(keep_fraction: float) -> optax.GradientTransformation:
  """Keeps the ``ceil(keep_fraction * n)`` largest-magnitude entries of each tensor.

  Magnitude pruning as in DLG's defence experiments; it is
  :func:`ssgd_optax.selective_sharing` with ``scope="per_leaf"``.

  Example:

  >>> import jax.numpy as jnp
  >>> tx = prune(0.5)
  >>> tx.update(jnp.array([1., -3., 2., 0.5]), tx.init(None))[0]
  Array([ 0., -3.,  2.,  0.], dtype=float32)
  """
  from ssgd_optax import _selective as selective
  return selective.selective_sharing(keep_fraction, strategy='largest', scope='per_leaf')


def _register_builtins() -> None:
  register_defence('none', lambda key, b: Defence(optax.identity()))
  for scope in ('global', 'per_leaf', 'per_layer'):
    register_defence(f'ssgd_{scope}',
                     lambda key, b, s=scope: Defence(normalize_lib.unit_normalize(s)))
  try:
    from ssgd_optax import _selective as selective
  except ImportError:  # pragma: no cover - the module ships with the package
    selective = None
  if selective is not None:
    register_defence('prune_50', lambda key, b: Defence(prune(0.5)))
    register_defence('prune_90', lambda key, b: Defence(prune(0.1)))
  for s in ('1e-3', '1e-2', '1e-1'):
    register_defence(f'noise_{s}',
                     lambda key, b, s=float(s): Defence(gaussian_noise(s, key)))
  if selective is not None:
    register_defence('dssgd_10', lambda key, b: Defence(selective.selective_sharing(
        0.1, strategy='threshold_random', key=key)))
  try:
    from ssgd_optax import privacy
  except ImportError:  # pragma: no cover - without the privacy extra
    privacy = None
  if privacy is not None:
    register_defence('dp_ssgd_1', lambda key, b: Defence(privacy.dp_unit_normalize(
        1.0, expected_batch_size=b, key=key), per_example=True))


_register_builtins()
