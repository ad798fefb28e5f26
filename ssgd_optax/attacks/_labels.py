# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Label recovery from the last layer's gradient (iDLG and a count strategy).

For softmax cross-entropy and a last layer ``logits = W h (+ b)`` with
non-negative features ``h`` (after ReLU or sigmoid), the gradient row of class
``c`` is ``dL/dW_c = (1/B) sum_i (p_ic - y_ic) h_i``. With one example only the
true class has ``p - y < 0``, so (iDLG, Zhao et al.)

.. math:: \hat y = \arg\min_c \sum_j \partial L / \partial W_{c, j}.

Only signs matter, so any positive rescaling of the update (SSGD, any scope)
leaves the answer unchanged.

For ``B > 1`` examples, :func:`recover_labels` with ``strategy="count"``
(in the spirit of Wainakh et al.'s LLG) takes every class with a negative row
sum once, then fills the remaining ``B - |present|`` slots greedily: the
class with the most negative *residual* sum is picked and its sum is raised by
the estimated impact of one example, ``m = (sum of negative row sums) / B``.
The rule is scale-invariant too; it is a heuristic and can miss classes.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['LABEL_STRATEGIES', 'find_last_layer', 'class_scores', 'idlg_label',
           'recover_labels']

LABEL_STRATEGIES = ('idlg', 'count')


def find_last_layer(update: Any, num_classes: int, path: Optional[str] = None
                    ) -> tuple[jax.Array, int]:
  """Finds the classifier's weight gradient in a gradient tree.

  Args:
    update: the (shared) gradient tree.
    num_classes: the number of classes ``C``.
    path: optional ``jax.tree_util.keystr`` of the leaf to use; by default the
      unique 2-D leaf with an axis of size ``C`` (a Flax ``[in, C]`` kernel or
      a ``[C, in]`` matrix).

  Returns:
    ``(weight_gradient, class_axis)``.

  Example:

  >>> import jax.numpy as jnp
  >>> w, axis = find_last_layer({'fc': jnp.zeros((7, 3)), 'b': jnp.zeros(3)}, 3)
  >>> w.shape, axis
  ((7, 3), 1)
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
      or num_classes < 2:
    raise ValueError(f'num_classes must be an int >= 2; got {num_classes!r}.')
  flat = jax.tree_util.tree_flatten_with_path(update)[0]
  if path is not None:
    found = [(p, x) for p, x in flat if jax.tree_util.keystr(p) == path]
    if not found:
      raise ValueError(f'path {path!r} names no leaf; leaves are '
                       f'{[jax.tree_util.keystr(p) for p, _ in flat]}.')
    x = jnp.asarray(found[0][1])
    if x.ndim != 2 or num_classes not in x.shape:
      raise ValueError(f'leaf {path!r} must be 2-D with an axis of size {num_classes}; '
                       f'got shape {x.shape}.')
    return x, (1 if x.shape[1] == num_classes else 0)
  cands = [(p, jnp.asarray(x)) for p, x in flat
           if jnp.ndim(x) == 2 and num_classes in jnp.shape(x)]
  if len(cands) != 1:
    raise ValueError(
        f'cannot identify the last layer: {len(cands)} 2-D leaves have an axis of size '
        f'{num_classes} ({[jax.tree_util.keystr(p) for p, _ in cands]}); pass path=.')
  x = cands[0][1]
  return x, (1 if x.shape[1] == num_classes else 0)


def class_scores(weight_grad: jax.Array, class_axis: int = 1) -> jax.Array:
  """Row sums ``s_c = sum_j dL/dW[c, j]`` (negative for classes present).

  Example:

  >>> import jax.numpy as jnp
  >>> class_scores(jnp.array([[1., -2.], [1., -2.]]))
  Array([ 2., -4.], dtype=float32)
  """
  w = jnp.asarray(weight_grad, jnp.float32)
  return w.sum(axis=1 - class_axis)


def idlg_label(weight_grad: jax.Array, class_axis: int = 1) -> jax.Array:
  """iDLG: the label of a single example, ``argmin_c s_c``.

  Args:
    weight_grad: the last layer's weight gradient, 2-D.
    class_axis: which axis indexes classes (1 for Flax ``[in, C]`` kernels).

  Returns:
    An int32 scalar.

  Example:

  >>> import jax.numpy as jnp
  >>> int(idlg_label(jnp.array([[0.2, -0.5, 0.3]])))
  1
  """
  return jnp.argmin(class_scores(weight_grad, class_axis)).astype(jnp.int32)


def recover_labels(update: Any, num_classes: int, num_examples: int, *,
                   strategy: str = 'count', path: Optional[str] = None) -> jax.Array:
  """Recovers ``num_examples`` labels from a shared update.

  Args:
    update: the shared gradient tree.
    num_classes: ``C``.
    num_examples: ``B >= 1``.
    strategy: ``"idlg"`` (``B`` must be 1) or ``"count"`` (see the module
      docstring; equals iDLG for ``B = 1``).
    path: the last layer's leaf, see :func:`find_last_layer`.

  Returns:
    ``int32[B]`` labels, sorted.

  Example:

  >>> import jax.numpy as jnp
  >>> g = {'fc': jnp.array([[0.1, -0.4, -0.4, 0.7]])}
  >>> recover_labels(g, 4, 3).tolist()
  [1, 1, 2]
  """
  if strategy not in LABEL_STRATEGIES:
    raise ValueError(f'strategy must be one of {", ".join(map(repr, LABEL_STRATEGIES))}; '
                     f'got {strategy!r}.')
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) \
      or num_examples < 1:
    raise ValueError(f'num_examples must be an int >= 1; got {num_examples!r}.')
  if strategy == 'idlg' and num_examples != 1:
    raise ValueError(f'strategy="idlg" recovers one label; got num_examples={num_examples}. '
                     'Use strategy="count".')
  w, axis = find_last_layer(update, num_classes, path)
  s = np.asarray(class_scores(w, axis), np.float64)
  if not np.all(np.isfinite(s)):
    raise ValueError('the last layer gradient contains NaN or Inf; no labels recoverable.')
  if num_examples == 1:
    return jnp.asarray([int(np.argmin(s))], jnp.int32)
  present = list(np.flatnonzero(s < 0)[np.argsort(s[s < 0])][:num_examples])
  impact = s[s < 0].sum() / num_examples if np.any(s < 0) else -1.0
  residual = s.copy()
  for c in present:
    residual[c] -= impact
  labels = list(present)
  while len(labels) < num_examples:
    c = int(np.argmin(residual))
    labels.append(c)
    residual[c] -= impact
  return jnp.asarray(sorted(labels), jnp.int32)
