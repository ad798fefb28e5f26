# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
r"""R-GAP layer-wise reconstruction and the COPA rank analysis.

R-GAP (Zhu & Blaschko, ICLR 2021) inverts a single example layer by layer,
from the output back to the input, each layer by a linear system. For a
bias-free linear map ``z_i = A_i(x_i; w_i)`` (a convolution or a dense layer)
followed by an invertible activation ``x_{i+1} = s(z_i)``, and the
pre-activation cotangent ``delta_i = dL/dz_i``:

.. math::

  \underbrace{\begin{bmatrix} W_i \\ K_i \end{bmatrix}}_{U_i} x_i =
  \begin{bmatrix} s^{-1}(x_{i+1}) \\ \mathrm{vec}(\partial L/\partial w_i)
  \end{bmatrix},\qquad
  W_i = \frac{\partial A_i(x; w_i)}{\partial x},\quad
  K_i = \frac{\partial}{\partial x}\,\mathrm{vjp}_{w}A_i(x; \cdot)(\delta_i)

both linear in ``x_i`` and built here with ``jax.jacfwd``. The head is a dense
layer with bias: its input is ``dL/dW_j / dL/db_j`` exactly and
``delta = dL/db``; each earlier ``delta_i`` is the next layer's input
cotangent times ``s'(z_i)``. Padding is implicit in the convolution, so no
padding constraints are needed.

The **COPA index** (Chen & Campbell, arXiv 2111.10178; the authors' code)
scores how determined these systems are at a given input:

.. math::

  \mathrm{def}_i = \mathrm{rank}(U_i) - n_i \le 0, \qquad
  \mathrm{COPA} = \sum_{i=0}^{L-2}
    \mathrm{round}\Big(\mathrm{def}_i\,\frac{L-1-i}{L-1}\Big)

over the ``L - 1`` layers before the head (``n_i`` = number of unknowns).
``0`` means every system has full column rank, so the closed-form attack
recovers the input (insecure); more negative is more secure. Rescaling the
update by one global positive factor leaves R-GAP exact (``delta`` scales
with ``dL/db``); per-layer rescaling (SSGD ``per_leaf``) makes the two
blocks of each system inconsistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssgd_optax import _validation
from ssgd_optax.attacks import _analytic as analytic
from ssgd_optax.attacks import _threat as threat
__all__ = ['ACTIVATIONS', 'ConvSpec', 'LayeredCNN', 'LayerRank', 'rank_analysis',
           'copa_index', 'rgap']

ACTIVATIONS = ('leaky_relu', 'sigmoid', 'tanh', 'identity')
_SLOPE = 0.2
_CLIP = 1e-6


class ConvSpec(NamedTuple):
  """A bias-free convolution ``features`` x ``kernel`` x ``kernel``, then ``activation``.

  Attributes:
    features: output channels.
    kernel: the square kernel's side.
    stride: the stride of both spatial axes.
    padding: zero padding on each side of both spatial axes.
    activation: ``'leaky_relu'``, ``'sigmoid'``, ``'tanh'`` or ``'identity'``.
  """
  features: int
  kernel: int = 3
  stride: int = 1
  padding: int = 1
  activation: str = 'leaky_relu'


def _act(name: str, z: jax.Array) -> jax.Array:
  if name == 'leaky_relu':
    return jnp.where(z >= 0, z, _SLOPE * z)
  if name == 'sigmoid':
    return jax.nn.sigmoid(z)
  if name == 'tanh':
    return jnp.tanh(z)
  return z


def _act_inv(name: str, x: np.ndarray) -> np.ndarray:
  if name == 'leaky_relu':
    return np.where(x >= 0, x, x / _SLOPE)
  if name == 'sigmoid':
    x = np.clip(x, _CLIP, 1 - _CLIP)
    return np.log(x) - np.log1p(-x)
  if name == 'tanh':
    return np.arctanh(np.clip(x, -1 + _CLIP, 1 - _CLIP))
  return x


def _act_grad(name: str, z: np.ndarray) -> np.ndarray:
  if name == 'leaky_relu':
    return np.where(z >= 0, 1.0, _SLOPE)
  if name == 'sigmoid':
    s = 1 / (1 + np.exp(-z))
    return s * (1 - s)
  if name == 'tanh':
    return 1 - np.tanh(z) ** 2
  return np.ones_like(z)


class LayeredCNN(NamedTuple):
  """A bias-free CNN with invertible activations and a dense head with bias.

  The architecture R-GAP and COPA analyse: ``convs`` (each a
  :class:`ConvSpec`), flatten, ``Dense(num_classes)`` with bias. Parameters are
  a dict ``{'conv_0': {'kernel': HWIO}, ..., 'head': {'kernel', 'bias'}}``.

  Attributes:
    convs: the convolutions, in order.
    num_classes: outputs of the dense head, ``>= 2``.
    input_shape: ``(H, W, C)`` of one input.

  Example:

  >>> import jax
  >>> m = LayeredCNN((ConvSpec(4, 3, 2, 1),), num_classes=3, input_shape=(6, 6, 1))
  >>> p = m.init(jax.random.key(0))
  >>> m.apply(p, jax.numpy.zeros((2, 6, 6, 1))).shape
  (2, 3)
  """
  convs: tuple[ConvSpec, ...]
  num_classes: int
  input_shape: tuple[int, int, int]

  def _validate(self) -> None:
    if len(self.input_shape) != 3:
      raise ValueError(f'input_shape must be (H, W, C); got {self.input_shape!r}.')
    _validation.check_int('num_classes', self.num_classes, minimum=2)
    for c in self.convs:
      if not isinstance(c, ConvSpec):
        raise TypeError(f'convs must be ConvSpec; got {type(c).__name__}.')
      _validation.check_choice('activation', c.activation, ACTIVATIONS)
      for n in ('features', 'kernel', 'stride'):
        _validation.check_int(n, getattr(c, n), minimum=1)
      _validation.check_int('padding', c.padding, minimum=0)

  def conv(self, i: int, x: jax.Array, w: jax.Array) -> jax.Array:
    c = self.convs[i]
    return jax.lax.conv_general_dilated(
        x, w, (c.stride, c.stride), [(c.padding, c.padding)] * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def init(self, key: jax.Array, scale: float = 1.0) -> dict[str, Any]:
    """He-style normal kernels times ``scale``, a zero head bias."""
    self._validate()
    params = {}
    cin = self.input_shape[2]
    keys = jax.random.split(key, len(self.convs) + 1)
    for i, c in enumerate(self.convs):
      fan_in = c.kernel * c.kernel * cin
      params[f'conv_{i}'] = {'kernel': scale * jax.random.normal(
          keys[i], (c.kernel, c.kernel, cin, c.features)) / np.sqrt(fan_in)}
      cin = c.features
    feat = jax.eval_shape(lambda: self.features(params, jnp.zeros((1, *self.input_shape))))
    d = int(np.prod(feat.shape[1:]))
    params['head'] = {'kernel': scale * jax.random.normal(keys[-1], (d, self.num_classes))
                      / np.sqrt(d), 'bias': jnp.zeros((self.num_classes,))}
    return params

  def features(self, params: Any, x: jax.Array) -> jax.Array:
    for i, c in enumerate(self.convs):
      x = _act(c.activation, self.conv(i, x, params[f'conv_{i}']['kernel']))
    return x

  def apply(self, params: Any, x: jax.Array) -> jax.Array:
    h = self.features(params, x)
    return h.reshape(h.shape[0], -1) @ params['head']['kernel'] + params['head']['bias']


class LayerRank(NamedTuple):
  """Rank of one layer's system ``U_i``: ``rank``, ``unknowns``, ``deficiency``.

  Attributes:
    rank: the numerical rank of ``U_i``.
    unknowns: its columns (the layer input's entries to recover).
    rows: its equations.
  """
  rank: int
  unknowns: int
  rows: int

  @property
  def deficiency(self) -> int:
    return self.rank - self.unknowns


def _systems(model: LayeredCNN, params: Any, x_i: jax.Array, i: int, delta: jax.Array
             ) -> tuple[np.ndarray, np.ndarray]:
  """``W_i`` and ``K_i`` as dense matrices (rows x unknowns) at layer ``i``."""
  w = params[f'conv_{i}']['kernel']
  shape = x_i.shape

  def lin(v):
    return model.conv(i, v.reshape((1, *shape)), w).reshape(-1)

  def kgrad(v):
    _, vjp = jax.vjp(lambda k: model.conv(i, v.reshape((1, *shape)), k), w)
    return vjp(delta.reshape((1, *delta.shape)))[0].reshape(-1)

  flat = jnp.zeros((int(np.prod(shape)),), jnp.float32)
  # Both maps are linear in v, so one jitted jacfwd at 0 gives the matrices.
  wm, km = jax.jit(lambda v: (jax.jacfwd(lin)(v), jax.jacfwd(kgrad)(v)))(flat)
  return np.asarray(wm, np.float64), np.asarray(km, np.float64)


def _forward_trace(model: LayeredCNN, params: Any, x: jax.Array, label: int):
  """Inputs ``x_i``, pre-activations ``z_i`` and cotangents ``delta_i`` of one example."""
  xs, zs = [], []
  h = x[None]
  for i, c in enumerate(model.convs):
    xs.append(h[0])
    z = model.conv(i, h, params[f'conv_{i}']['kernel'])
    zs.append(z[0])
    h = _act(c.activation, z)
  logits = h.reshape(1, -1) @ params['head']['kernel'] + params['head']['bias']
  dlogits = jax.nn.softmax(logits)[0] - jax.nn.one_hot(label, model.num_classes)
  deltas = [None] * len(model.convs)
  cot = (params['head']['kernel'] @ dlogits).reshape(h.shape[1:])
  for i in reversed(range(len(model.convs))):
    d = cot * _act_grad(model.convs[i].activation, np.asarray(zs[i]))
    deltas[i] = jnp.asarray(d, jnp.float32)
    if i:
      _, vjp = jax.vjp(lambda v: model.conv(i, v[None], params[f'conv_{i}']['kernel'])[0],
                       xs[i])
      cot = vjp(deltas[i])[0]
  return xs, deltas


def rank_analysis(model: LayeredCNN, params: Any, x: jax.Array, label: int
                  ) -> list[LayerRank]:
  """Rank of every convolution's system ``U_i = [W_i; K_i]`` at input ``x``.

  Args:
    model: a :class:`LayeredCNN`.
    params: its parameters.
    x: one input ``[H, W, C]`` (the rank depends on it through ``delta_i``).
    label: its class.

  Returns:
    One :class:`LayerRank` per convolution, input side first.

  Example:

  >>> import jax
  >>> m = LayeredCNN((ConvSpec(1, 3, 2, 1),), 3, (6, 6, 1))
  >>> p = m.init(jax.random.key(0))
  >>> r = rank_analysis(m, p, jax.random.uniform(jax.random.key(1), (6, 6, 1)), 0)
  >>> r[0].unknowns, r[0].deficiency < 0
  (36, True)
  """
  model._validate()
  x = jnp.asarray(x, jnp.float32)
  if x.shape != tuple(model.input_shape):
    raise ValueError(f'x must have shape {tuple(model.input_shape)}; got {x.shape}.')
  xs, deltas = _forward_trace(model, params, x, int(label))
  out = []
  for i in range(len(model.convs)):
    wm, km = _systems(model, params, xs[i], i, deltas[i])
    u = np.concatenate([wm, km], axis=0)
    out.append(LayerRank(int(np.linalg.matrix_rank(u)), u.shape[1], u.shape[0]))
  return out


def copa_index(ranks: Sequence[LayerRank]) -> int:
  """The COPA index ``sum_i round(def_i (L-1-i)/(L-1))`` (``L-1`` = number of convs).

  Example:

  >>> copa_index([LayerRank(10, 16, 12), LayerRank(8, 8, 20)])
  -6
  """
  n = len(ranks)
  if n == 0:
    return 0
  return int(sum(round(r.deficiency * (n - i) / n) for i, r in enumerate(ranks)))


def rgap(model: LayeredCNN, observation: threat.Observation) -> threat.AttackResult:
  """R-GAP: recursive closed-form reconstruction of one example.

  Args:
    model: the :class:`LayeredCNN` whose ``apply`` the client used.
    observation: an observation of **one** example.

  Returns:
    An :class:`~ssgd_optax.attacks.AttackResult` (least-squares
    reconstruction clipped to ``bounds``; label by iDLG; ``loss`` = the
    relative residual of the input layer's system).

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from ssgd_optax import attacks
  >>> m = attacks.LayeredCNN((attacks.ConvSpec(4, 3, 1, 1),), 3, (4, 4, 1))
  >>> p = m.init(jax.random.key(0))
  >>> x = jax.random.uniform(jax.random.key(1), (1, 4, 4, 1))
  >>> r = attacks.rgap(m, attacks.observe(m.apply, p, x, jnp.array([2])))
  >>> bool(jnp.abs(r.inputs - x).max() < 1e-3)
  True
  """
  from ssgd_optax.attacks import _labels as labels_lib
  model._validate()
  obs = observation
  if not isinstance(obs, threat.Observation):
    raise TypeError(f'rgap: observation must be an Observation; got {type(obs).__name__}.')
  threat.check_update_matches(obs.update, obs.params, 'rgap')
  if obs.num_examples != 1:
    raise ValueError(f'rgap reconstructs a single example; got num_examples={obs.num_examples}.')
  if tuple(obs.input_shape) != tuple(model.input_shape):
    raise ValueError(f'rgap: observation.input_shape {obs.input_shape} differs from the '
                     f'model input_shape {model.input_shape}.')
  params, upd = obs.params, obs.update
  gb = np.asarray(upd['head']['bias'], np.float64)
  feat = np.asarray(analytic.invert_dense(upd['head']['kernel'], upd['head']['bias']),
                    np.float64)
  feat_shape = jax.eval_shape(lambda: model.features(params, jnp.zeros((1, *model.input_shape))))
  x_next = feat.reshape(feat_shape.shape[1:])
  cot = (np.asarray(params['head']['kernel'], np.float64) @ gb).reshape(x_next.shape)
  # Input shapes of every conv, by a shape-only forward pass.
  h = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
  shapes = []
  for i in range(len(model.convs)):
    shapes.append(tuple(h.shape[1:]))
    h = jax.eval_shape(lambda v, i=i: model.conv(i, v, params[f'conv_{i}']['kernel']), h)
  residual = 0.0
  for i in reversed(range(len(model.convs))):
    act = model.convs[i].activation
    z = _act_inv(act, x_next)
    delta = cot * _act_grad(act, z)
    wm, km = _systems(model, params, jnp.zeros(shapes[i]), i, jnp.asarray(delta, jnp.float32))
    gw = np.asarray(upd[f'conv_{i}']['kernel'], np.float64).reshape(-1)
    a = np.concatenate([wm, km], axis=0)
    rhs = np.concatenate([z.reshape(-1), gw])
    sol, *_ = np.linalg.lstsq(a, rhs, rcond=None)
    residual = float(np.linalg.norm(a @ sol - rhs) / max(np.linalg.norm(rhs), 1e-30))
    x_next = sol.reshape(shapes[i])
    if i:
      cot = wm.T @ delta.reshape(-1)
      cot = cot.reshape(shapes[i])
  x = jnp.clip(jnp.asarray(x_next, jnp.float32)[None], obs.bounds[0], obs.bounds[1])
  labels = obs.labels
  if labels is None:
    labels = labels_lib.recover_labels(upd, model.num_classes, 1, path="['head']['kernel']")
  return threat.AttackResult(x, jnp.asarray(labels, jnp.int32), jnp.zeros((0,), jnp.float32),
                             jnp.asarray(residual, jnp.float32))
