# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Label recovery: iDLG is exact for single examples, under any SSGD scope."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ssgd_optax
from ssgd_optax import attacks
from ssgd_examples import data
from ssgd_examples import models


@pytest.fixture(scope='module')
def setting():
  ds = data.load_dataset('digits')
  f, p = attacks.as_functional(models.LeNetZhu((8, 8, 1), 10, rngs=nnx.Rngs(1)))
  return f, p, jnp.asarray(ds.x_train[:40]), jnp.asarray(ds.y_train[:40])


@pytest.mark.parametrize('defence', [None, 'global', 'per_leaf', 'per_layer'])
def test_idlg_finds_every_single_label(setting, defence):
  f, p, x, y = setting
  tx = None if defence is None else ssgd_optax.unit_normalize(defence)
  grads = jax.vmap(lambda xi, yi: attacks.shared_update(f, p, xi[None], yi[None], tx))(x, y)
  found = [int(attacks.recover_labels(jax.tree_util.tree_map(lambda g: g[i], grads), 10, 1,
                                      strategy='idlg')[0]) for i in range(len(y))]
  assert found == y.tolist()


def test_count_strategy_on_small_batches(setting):
  f, p, x, y = setting
  accs = []
  for i in range(0, 40, 4):
    obs = attacks.observe(f, p, x[i:i + 4], y[i:i + 4])
    labels = attacks.recover_labels(obs.update, 10, 4)
    assert labels.shape == (4,)
    accs.append(attacks.label_accuracy(y[i:i + 4], labels))
  # Classes present are always found (negative row sums); duplicates are guessed.
  assert np.mean(accs) >= 0.75, accs


def test_count_strategy_exact_on_constructed_case():
  g = {'head': jnp.array([[0.3, -0.6, 0.05, -0.2]]), 'other': jnp.ones((3, 3))}
  # Class 1 twice as negative as class 3: two examples of class 1.
  assert attacks.recover_labels(g, 4, 3).tolist() == [1, 1, 3]


def test_label_errors():
  g = {'a': jnp.ones((5, 4)), 'b': jnp.ones((4, 2))}
  with pytest.raises(ValueError, match='cannot identify the last layer'):
    attacks.recover_labels(g, 4, 1)
  assert attacks.find_last_layer(g, 4, path="['b']")[1] == 0
  with pytest.raises(ValueError, match='names no leaf'):
    attacks.recover_labels(g, 4, 1, path="['c']")
  with pytest.raises(ValueError, match='one label'):
    attacks.recover_labels(g, 2, 2, strategy='idlg', path="['b']")
  with pytest.raises(ValueError, match='strategy'):
    attacks.recover_labels(g, 2, 1, strategy='yin', path="['b']")
  with pytest.raises(ValueError, match='NaN'):
    attacks.recover_labels({'b': jnp.full((4, 2), jnp.nan)}, 2, 1)
