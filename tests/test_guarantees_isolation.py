# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Attack on the seam between the examples of one batch: can one example's NaN/Inf reach another's?

The claim (``ssgd_optax._batch``): a non-finite example (input, label,
activation or loss) contributes exactly zero to every DP release, and a padded
row exactly zero, whatever it holds, so the release on ``D + {x*}`` equals the
release on ``D`` and the difference is within every sensitivity.

The attack: eight near-identical examples plus one poisoned one, through
every per-example path, on the convolutions whose batched per-example kernel
gradient mixes rows on XLA:CPU (float32 with ``feature_group_count=2``,
float64 with an ordinary conv: one NaN makes every row NaN under ``vmap``).
Before rows were isolated, ``dpsgd_grad_sum`` (C = 1) moved from norm 8 to 0
on such a batch: 8x its sensitivity.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssgd_optax import per_example
from ssgd_optax import privacy

B = 8


def _conv_grads(groups, dtype, poison_value):
  """The pure-JAX reproduction: per-example kernel gradients of one conv under vmap."""
  k = jax.random.normal(jax.random.key(0), (3, 3, 4 // groups, 4), dtype)
  x = jax.random.normal(jax.random.key(1), (5, 6, 6, 4), dtype)

  def loss(k, xi):
    y = jax.lax.conv_general_dilated(xi[None], k, (1, 1), 'SAME', feature_group_count=groups,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(y ** 2)

  bad = x.at[2, 1, 1, 0].set(poison_value)
  raw = jax.vmap(jax.grad(loss), (None, 0))(k, bad)
  return loss, k, x, bad, raw


@pytest.mark.parametrize('dtype,groups', [('float32', 2), ('float64', 1)])
def test_vmap_of_a_conv_mixes_rows_and_per_example_grads_do_not(dtype, groups):
  with jax.enable_x64(dtype == 'float64'):
    loss, k, x, bad, raw = _conv_grads(groups, jnp.dtype(dtype), jnp.nan)
    rows = np.isfinite(np.asarray(raw).reshape(5, -1)).all(1)
    assert not rows.any(), 'the backend no longer mixes rows: the attack below is moot'
    f = jax.jit(per_example.per_example_grads(loss))
    got, ref = f(k, bad), f(k, x)
    finite = np.isfinite(np.asarray(got).reshape(5, -1)).all(1)
    assert list(finite) == [True, True, False, True, True]
    np.testing.assert_allclose(np.delete(got, 2, 0), np.delete(ref, 2, 0), rtol=1e-5)
    masked = f(k, bad, mask=jnp.array([1, 1, 0, 1, 1]))
    assert np.all(np.asarray(masked[2]) == 0)


class _Net(nnx.Module):

  def __init__(self, groups, dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.conv = nnx.Conv(4, 4, (3, 3), feature_group_count=groups, use_bias=False, **kw)
    self.fc = nnx.Linear(4, 3, use_bias=False, **kw)

  def __call__(self, x):
    h = jax.nn.relu(self.conv(x))
    return self.fc(h.mean(axis=(1, 2)))


def _loss(m, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(m(x), y)


def _batch(dtype):
  """``B`` near-identical examples, then three rows: clean copies, and poisoned ones.

  The poisoned rows hold a NaN pixel, an Inf pixel and a finite pixel at the
  dtype's maximum (which overflows inside the model: a finite input whose
  gradient is not, the case only a per-example recomputation can isolate).
  """
  base = jax.random.normal(jax.random.key(3), (1, 5, 5, 4), dtype)
  x = base + 1e-3 * jax.random.normal(jax.random.key(4), (B + 3, 5, 5, 4), dtype)
  y = jnp.zeros(B + 3, jnp.int32)
  bad = x
  for row, value in zip(range(B, B + 3), (jnp.nan, jnp.inf, jnp.finfo(dtype).max)):
    bad = bad.at[row, 2, 2, 0].set(value)
  return x, bad, y


def _releases(groups, dtype):
  """Every per-example path, each returning its pre-noise release (a flat vector)."""
  model = _Net(groups, dtype, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  flat = lambda t: jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(t)])

  def wrap(fn):
    return jax.jit(lambda s, x, y, mask: fn(nnx.merge(graphdef, s), x, y, mask))

  def dpsgd(m, x, y, mask):
    return flat(privacy.dpsgd_grad_sum(_loss, m, x, y, clip_norm=1.0, mask=mask)[1])

  def dpsgd_micro(m, x, y, mask):
    return flat(privacy.dpsgd_grad_sum(_loss, m, x, y, clip_norm=1.0, mask=mask,
                                       microbatch_size=3)[1])

  def dp_ssgd(m, x, y, mask):
    g = per_example.nnx_per_example_grads(lambda m, x, y: _loss(m, x, y).sum(), m, x, y,
                                          mask=mask)
    return flat(jax.tree.map(lambda v: v.sum(0), privacy.normalize_per_example(g, mask=mask)))

  def ghost(method):
    def run(m, x, y, mask):
      return flat(privacy.ghost_grad_sum(_loss, m, x, y, mask=mask, clip_norm=1.0,
                                         method=method).grads)
    return run

  clipped = privacy.clip_layers(_Net(groups, dtype, nnx.Rngs(0)), input_bound=3.0,
                                grad_bound=1.0)
  cdef, cstate = nnx.split(clipped)

  def backprop(s, x, y, mask):
    return flat(privacy.backprop_clip_grad_sum(_loss, nnx.merge(cdef, s), x, y, mask=mask)[1])

  return {
      'dpsgd': (wrap(dpsgd), state, 1.0),
      'dpsgd_microbatched': (wrap(dpsgd_micro), state, 1.0),
      'dp_ssgd': (wrap(dp_ssgd), state, 1.0),
      'ghost_vmap_fallback': (wrap(ghost('vmap')), state, 1.0),
      'ghost': (wrap(ghost('ghost')), state, 1.0),
      'backprop': (nnx.jit(backprop), cstate, 2 * 3.0 * 1.0),
  }


@pytest.mark.parametrize('dtype,groups', [('float32', 1), ('float32', 2), ('float32', 4),
                                          ('float64', 1), ('float64', 4)])
def test_poisoned_examples_move_no_release(dtype, groups):
  """Neighbours ``D`` and ``D + {NaN, Inf, overflowing example}`` release the same."""
  with jax.enable_x64(dtype == 'float64'):
    dtype = jnp.dtype(dtype)
    x, bad, y = _batch(dtype)
    real = jnp.ones(B + 3, bool)
    only_d = jnp.arange(B + 3) < B
    for name, (release, state, sensitivity) in _releases(groups, dtype).items():
      without = np.asarray(release(state, x, y, only_d))
      assert np.linalg.norm(without) > 0.25 * sensitivity, name  # a release worth moving
      with_them = np.asarray(release(state, bad, y, real))
      assert np.isfinite(with_them).all(), (name, 'non-finite release')
      moved = float(np.linalg.norm(with_them - without))
      # Dropped means exactly zero contribution: equal up to float rounding.
      assert moved <= 1e-5 * sensitivity, (name, moved, sensitivity)
      padded = np.asarray(release(state, bad, y, only_d))
      np.testing.assert_allclose(padded, without, rtol=1e-5, atol=1e-6 * sensitivity,
                                 err_msg=f'{name}: padded poisoned rows')
