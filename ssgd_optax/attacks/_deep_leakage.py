# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""Deep Leakage from Gradients (Zhu et al.), iDLG and adaptive DLG.

DLG optimises dummy inputs ``x'`` and label logits ``y'`` jointly so that
their gradient matches the shared one in Euclidean distance:

.. math::

  \min_{x', y'} \big\lVert A\big(\nabla_\theta L(f_\theta(x'),
    \mathrm{softmax}(y'))\big) - u \big\rVert_2^2

where ``u`` is the shared update and ``A`` is the identity for vanilla DLG.
*Adaptive* DLG (:func:`adaptive_dlg`) sets ``A`` to the defence itself
(e.g. :func:`ssgd_optax.unit_normalize` with the client's scope): the
attacker normalises its dummy gradient before matching, which makes SSGD's
rescaling irrelevant. iDLG (:func:`idlg`) first reads the label from the sign
of the last layer's gradient, then runs DLG with the label fixed.

``optax.lbfgs`` counts single L-BFGS iterations (the original DLG ran 300
outer iterations of up to 20 inner ones), hence the default of 3000 steps.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from ssgd_optax import _keys
from ssgd_optax import _validation
from ssgd_optax import _grouping as grouping_lib
from ssgd_optax import _normalize as normalize_lib
from ssgd_optax.attacks import _engine
from ssgd_optax.attacks import _labels as labels_lib
from ssgd_optax.attacks import _threat as threat
__all__ = ['OPTIMIZERS', 'dlg', 'idlg', 'adaptive_dlg', 'initial_inputs']

OPTIMIZERS = ('lbfgs', 'adam')


def initial_inputs(key: jax.Array, shape: tuple[int, ...],
                   bounds: tuple[float, float]) -> jax.Array:
  """Dummy inputs drawn uniformly from the valid range ``bounds``.

  Example:

  >>> import jax
  >>> x = initial_inputs(jax.random.key(0), (2, 3), (0., 1.))
  >>> x.shape, bool((x >= 0).all() & (x <= 1).all())
  ((2, 3), True)
  """
  return jax.random.uniform(key, shape, jnp.float32, bounds[0], bounds[1])


def _optimizer(name: str, learning_rate: Any) -> optax.GradientTransformation:
  _validation.check_choice('optimizer', name, OPTIMIZERS)
  if name == 'lbfgs':
    return optax.lbfgs(learning_rate)
  return optax.adam(learning_rate)


def _identity(z: Any) -> Any:
  return z


@functools.lru_cache(maxsize=None)
def _normalizer(scope: Any) -> Any:
  # One transform object per scope, so that compiled solvers are reused.
  return normalize_lib.unit_normalize(scope)


def dlg(apply_fn: threat.ApplyFn,
        observation: threat.Observation,
        *,
        key: jax.Array,
        steps: int = 3000,
        optimizer: str = 'lbfgs',
        learning_rate: Optional[float] = None,
        labels: Optional[jax.Array] = None,
        adapt: Optional[optax.GradientTransformation] = None,
        restarts: int = 1,
        loop: str = 'scan') -> threat.AttackResult:
  r"""DLG: joint Euclidean gradient matching of inputs and soft labels.

  Minimises ``||A(grad L(f(x'), softmax(y'))) - u||^2`` over ``x'``
  (initialised uniformly in ``bounds``) and label logits ``y' ~ N(0, 1)``;
  labels are optimised only when neither ``labels`` nor
  ``observation.labels`` is given. The result is clipped to ``bounds``.

  Args:
    apply_fn: ``(params, x) -> logits``.
    observation: the attacker's :class:`~ssgd_optax.attacks.Observation`.
    key: a PRNG key for the initialisation.
    steps: optimiser iterations (each L-BFGS iteration includes its zoom
      line search).
    optimizer: ``"lbfgs"`` (the paper's) or ``"adam"``.
    learning_rate: ``None`` (L-BFGS: line search alone; Adam: 0.1) or a
      number.
    labels: known ``int32[B]`` labels (overrides ``observation.labels``).
    adapt: a stateless transformation the attacker applies to its dummy
      gradient (see :func:`adaptive_dlg`); ``None`` for vanilla DLG.
    restarts: independent initialisations; the lowest final objective wins.
    loop: ``"scan"`` (whole loop compiled) or ``"python"`` (jitted step).

  Returns:
    An :class:`~ssgd_optax.attacks.AttackResult`; ``labels`` are the given
    labels or ``argmax y'``.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import attacks
  >>> f = lambda p, x: jax.nn.sigmoid(x @ p['w1']) @ p['w2']
  >>> p = {'w1': jax.random.normal(jax.random.key(1), (3, 8)),
  ...      'w2': jax.random.normal(jax.random.key(2), (8, 2))}
  >>> obs = attacks.observe(f, p, jnp.array([[0.2, 0.9, 0.5]]), jnp.array([1]))
  >>> res = attacks.dlg(f, obs, key=jax.random.key(0), steps=10, optimizer='adam')
  >>> res.inputs.shape, res.trace.shape
  ((1, 3), (10,))
  """
  _engine.check_observation(apply_fn, observation, 'dlg')
  _engine.check_steps(steps)
  _validation.check_int('restarts', restarts, minimum=1)
  if learning_rate is not None:
    _validation.check_positive('learning_rate', learning_rate)
  key = _keys.check_key(key)
  obs = observation
  known = labels if labels is not None else obs.labels
  if known is not None:
    known = jnp.asarray(known)
    if known.shape != (obs.num_examples,) or not jnp.issubdtype(known.dtype, jnp.integer):
      raise ValueError(f'labels must be int of shape ({obs.num_examples},); got '
                       f'{known.dtype} {known.shape}.')
  if optimizer == 'adam' and learning_rate is None:
    learning_rate = 0.1
  _validation.check_choice('optimizer', optimizer, OPTIMIZERS)
  num_classes = _engine.num_classes_of(apply_fn, obs)
  shape = (obs.num_examples, *obs.input_shape)
  kx, ky = jax.random.split(key)
  z0 = {'x': initial_inputs(kx, (restarts, *shape), obs.bounds)}
  if known is None:
    z0['y'] = jax.random.normal(ky, (restarts, obs.num_examples, num_classes))
  soft = known is None
  objective = _engine.make_objective(apply_fn, distance='l2', scope='global', tv=0.0,
                                     adapt=adapt, soft_labels=soft)
  data = _engine.observation_data(obs, known)
  key = _engine.cache_key_of('dlg', apply_fn, adapt, soft, optimizer, learning_rate)
  z, trace, loss = _engine.run(objective, z0, data, lambda: _optimizer(optimizer, learning_rate),
                               steps, _identity, loop, key)
  x = jnp.clip(z['x'], obs.bounds[0], obs.bounds[1])
  out_labels = known if known is not None else jnp.argmax(z['y'], -1).astype(jnp.int32)
  return threat.AttackResult(x, out_labels, trace, loss)


def idlg(apply_fn: threat.ApplyFn,
         observation: threat.Observation,
         *,
         key: jax.Array,
         label_path: Optional[str] = None,
         **dlg_kwargs: Any) -> threat.AttackResult:
  """iDLG: the label from the last layer's gradient signs, then DLG.

  For ``B = 1`` the label is :func:`~ssgd_optax.attacks.idlg_label`; for
  ``B > 1`` the ``"count"`` strategy of
  :func:`~ssgd_optax.attacks.recover_labels`. Known labels in the
  observation are ignored (iDLG recovers them).

  Args:
    apply_fn: ``(params, x) -> logits``.
    observation: the attacker's observation.
    key: a PRNG key.
    label_path: the classifier leaf, see
      :func:`~ssgd_optax.attacks.find_last_layer`.
    **dlg_kwargs: passed to :func:`dlg` (``steps``, ``optimizer``...).

  Returns:
    An :class:`~ssgd_optax.attacks.AttackResult`.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import attacks
  >>> f = lambda p, x: jax.nn.sigmoid(x @ p['w1']) @ p['w2']
  >>> p = {'w1': jax.random.normal(jax.random.key(1), (3, 8)),
  ...      'w2': jax.random.normal(jax.random.key(2), (8, 4))}
  >>> obs = attacks.observe(f, p, jnp.array([[0.2, 0.9, 0.5]]), jnp.array([3]))
  >>> attacks.idlg(f, obs, key=jax.random.key(0), steps=5, optimizer='adam').labels
  Array([3], dtype=int32)
  """
  _engine.check_observation(apply_fn, observation, 'idlg')
  if 'labels' in dlg_kwargs:
    raise TypeError('idlg recovers the labels itself; do not pass labels=.')
  num_classes = _engine.num_classes_of(apply_fn, observation)
  labels = labels_lib.recover_labels(
      observation.update, num_classes, observation.num_examples,
      strategy='idlg' if observation.num_examples == 1 else 'count', path=label_path)
  return dlg(apply_fn, observation._replace(labels=None), key=key, labels=labels,
             **dlg_kwargs)


def adaptive_dlg(apply_fn: threat.ApplyFn,
                 observation: threat.Observation,
                 *,
                 key: jax.Array,
                 scope: grouping_lib.Scope = 'global',
                 **dlg_kwargs: Any) -> threat.AttackResult:
  """DLG against SSGD: the dummy gradient is unit-normalised like the client's.

  ``min ||N_scope(grad L(x', y')) - u||^2`` with ``N`` =
  :func:`ssgd_optax.unit_normalize` (``scope`` should be the client's).
  Against an undefended client it is a scale-free DLG.

  Args:
    apply_fn: ``(params, x) -> logits``.
    observation: the attacker's observation.
    key: a PRNG key.
    scope: the normalisation scope the attacker assumes.
    **dlg_kwargs: passed to :func:`dlg`.

  Returns:
    An :class:`~ssgd_optax.attacks.AttackResult`.

  Example:

  >>> import jax, jax.numpy as jnp, ssgd_optax
  >>> from ssgd_optax import attacks
  >>> f = lambda p, x: jax.nn.sigmoid(x @ p['w1']) @ p['w2']
  >>> p = {'w1': jax.random.normal(jax.random.key(1), (3, 8)),
  ...      'w2': jax.random.normal(jax.random.key(2), (8, 2))}
  >>> obs = attacks.observe(f, p, jnp.array([[0.2, 0.9, 0.5]]), jnp.array([1]),
  ...                       ssgd_optax.unit_normalize('per_leaf'))
  >>> res = attacks.adaptive_dlg(f, obs, key=jax.random.key(0), scope='per_leaf',
  ...                            steps=20, optimizer='adam')
  >>> bool(res.trace[-1] < res.trace[0])
  True
  """
  grouping_lib.check_scope(scope)
  if 'adapt' in dlg_kwargs:
    raise TypeError('adaptive_dlg sets adapt= itself from scope=.')
  return dlg(apply_fn, observation, key=key,
             adapt=_normalizer(scope), **dlg_kwargs)
