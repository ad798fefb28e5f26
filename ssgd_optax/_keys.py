# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""PRNG keys of the randomised transforms: one check, one way to keep them in state.

Every transform that draws randomness (noise, random selection) follows the
same rule, so that the guarantees that depend on fresh randomness hold in all
of them at once:

* the factory checks the key with :func:`check_key` (a single typed
  ``jax.random.key`` or a legacy ``uint32[2]`` ``PRNGKey``; anything else is a
  ``TypeError``/``ValueError`` naming the argument; there is never a default);
* ``init`` stores :func:`copy_key` of it, a fresh buffer, because callers may
  donate the optimizer state to ``jit`` (``donate_argnums``) and a second
  ``init`` must not hand out the deleted buffer (jax_privacy's privatizer
  copies its key for the same reason);
* ``update`` calls :func:`split_step` on the state's key: the step's key is
  used once, the other half becomes the next state's key.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['check_key', 'copy_key', 'split_step', 'os_seed']


def check_key(key: Any, name: str = 'key') -> jax.Array:
  """A single typed PRNG key from ``key``, or a clear error naming ``name``.

  Args:
    key: ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)``.
    name: the argument's name, used in error messages.

  Returns:
    A typed key of shape ``()``.

  Example:

  >>> check_key(jax.random.PRNGKey(0)).dtype
  key<fry>
  """
  if key is None:
    raise ValueError(f'{name} is required: pass jax.random.key(seed). There is no '
                     'default: a fixed or hidden seed would repeat the randomness.')
  if isinstance(key, (jax.Array, np.ndarray)) or isinstance(key, jax.core.Tracer):
    dtype = key.dtype
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
      if key.shape != ():
        raise ValueError(f'{name} must be a single PRNG key (shape ()); got a key '
                         f'array of shape {key.shape}.')
      return key
    if dtype == np.uint32 and key.shape == (2,):
      return jax.random.wrap_key_data(jnp.asarray(key))
    raise TypeError(f'{name} must be a JAX PRNG key (jax.random.key(seed) or the '
                    f'legacy uint32[2] PRNGKey); got dtype {dtype}, shape {key.shape}.')
  raise TypeError(f'{name} must be a JAX PRNG key (jax.random.key(seed)); got '
                  f'{type(key).__name__} {key!r}.')


def copy_key(key: jax.Array) -> jax.Array:
  """A copy of a typed key in a buffer of its own (safe to donate).

  Example:

  >>> k = jax.random.key(0)
  >>> bool(jnp.all(jax.random.key_data(copy_key(k)) == jax.random.key_data(k)))
  True
  """
  data = jnp.array(jax.random.key_data(key), copy=True)
  return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def split_step(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(next_state_key, step_key)``: the one way a transform advances its key."""
  next_key, step_key = jax.random.split(key)
  return next_key, step_key


def os_seed() -> int:
  """A 63-bit seed from the operating system's CSPRNG (``secrets``).

  DP noise and sampling keys must be secret: draw them from here unless you
  explicitly want a reproducible run (whose guarantee is then void for anyone
  who knows the seed). Public as :func:`ssgd_optax.privacy.os_seed`.

  Returns:
    An ``int`` in ``[0, 2**63)``.

  Example:

  >>> 0 <= os_seed() < 2 ** 63
  True
  """
  import secrets  # pylint: disable=g-import-not-at-top
  return secrets.randbits(63)
