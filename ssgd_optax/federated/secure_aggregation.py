# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Secure aggregation (Bonawitz et al., CCS 2017): the server learns only the sum.

Every participant ``u`` fixed-point-quantises its update ``x_u`` to integers
modulo ``2^bits`` and uploads

.. math::

  y_u = q(x_u) + \\mathrm{PRG}(b_u)
        + \\sum_{v > u} \\mathrm{PRG}(s_{uv}) - \\sum_{v < u} \\mathrm{PRG}(s_{uv})
        \\pmod{2^{\\text{bits}}}

where ``s_uv`` is agreed by X25519 between ``u``'s and ``v``'s per-round
masking keys (HKDF-SHA256 bound to session, round and the pair) and ``b_u`` is
a private self-mask seed; the PRG is AES-256 in counter mode. The pairwise
masks cancel in the sum; the server removes the self masks of the survivors
and the pairwise masks of participants that dropped out after the key
exchange by reconstructing, from ``threshold`` Shamir shares held by the
survivors, ``b_u`` for survivors and the masking private key of the dropped
(never both for one participant). The result is the **exact** sum of the
quantised updates of the survivors, as long as at least ``threshold``
participants answer every step.

Protocol messages (steps ``advertise``, ``share``, ``masked``, ``unmask`` and
the server's broadcasts) carry session id, round, step, sender and recipient,
and an HMAC-SHA256 tag under a key each participant agrees with the server
from its registered long-term X25519 identity key. A message whose tag fails
raises :class:`TamperedMessageError`; one from another session or round, or
a second copy of the same step from the same sender, raises
:class:`ReplayedMessageError`. Shares travel through the server encrypted
with AES-GCM under keys agreed between the two participants.

Threat model and limits: honest-but-curious server, authenticated (not
anonymous) participants, no protection of the sum itself (combine with DP
for that), no malicious-server consistency checks (Bonawitz's signed
"consistency" round is not implemented). Registration of identity keys
stands in for a PKI.

:func:`aggregate` runs the whole protocol in-process; :class:`Participant`
and :class:`Server` expose the individual steps.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

try:
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
  from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
  from cryptography.hazmat.primitives.ciphers.aead import AESGCM
  from cryptography.hazmat.primitives.kdf.hkdf import HKDF
  _CRYPTO_ERROR = None
except ImportError as _e:  # pragma: no cover - depends on the install
  # Importable without the extra (docs, doctest collection); the parties and
  # the PRG raise a clear ImportError when used.
  _CRYPTO_ERROR = _e


def _require_crypto() -> None:
  if _CRYPTO_ERROR is not None:
    raise ImportError('secure aggregation needs the cryptography package: '
                      'pip install "ssgd_optax[federated]"') from _CRYPTO_ERROR

__all__ = [
  'PRIME', 'SecureAggregationError', 'TamperedMessageError', 'ReplayedMessageError',
  'DropoutError', 'Message', 'quantize', 'dequantize', 'prg', 'shamir_split',
  'shamir_reconstruct', 'Participant', 'Server', 'aggregate',
]

PRIME = 2 ** 521 - 1  # Mersenne prime > 2^256: field for Shamir shares of 32-byte secrets.
_SERVER = -1
_STEPS = ('advertise', 'keys', 'share', 'forward', 'masked', 'survivors', 'unmask')


class SecureAggregationError(ValueError):
  """A protocol violation or an unrecoverable round."""


class TamperedMessageError(SecureAggregationError):
  """A message's authentication tag does not match its content."""


class ReplayedMessageError(SecureAggregationError):
  """A message from another session or round, or a second copy of one."""


class DropoutError(SecureAggregationError):
  """Fewer than ``threshold`` participants are left: the sum cannot be recovered."""


class Message(NamedTuple):
  """An authenticated protocol message.

  Attributes:
    session: the aggregation session id (bytes).
    round: the round number.
    step: one of the protocol steps.
    sender: participant id, or ``-1`` for the server.
    recipient: participant id, or ``-1`` for the server.
    payload: the content (bytes).
    tag: HMAC-SHA256 over all the other fields.
  """
  session: bytes
  round: int
  step: str
  sender: int
  recipient: int
  payload: bytes
  tag: bytes


# ---------------------------------------------------------------------------
# Primitives.


def _dtype(bits: int) -> type:
  if bits not in (32, 64):
    raise ValueError(f'bits must be 32 or 64; got {bits!r}.')
  return np.uint32 if bits == 32 else np.uint64


def quantize(x: Any, *, frac_bits: int = 16, bits: int = 32,
             num_participants: int = 1) -> np.ndarray:
  """Fixed-point encoding of ``x`` in ``Z_{2^bits}`` (two's complement).

  ``q = clip(round(x * 2^frac_bits), -L, L) mod 2^bits`` with
  ``L = (2^(bits-1) - 1) // num_participants``, so a sum over up to
  ``num_participants`` values never wraps around. Values beyond
  ``L / 2^frac_bits`` are clipped; NaN raises.

  Args:
    x: a float array.
    frac_bits: fractional bits (resolution ``2^-frac_bits``), ``0..bits-2``.
    bits: 32 or 64, the modulus ``2^bits``.
    num_participants: how many such values will be summed.

  Returns:
    A ``uint32`` or ``uint64`` array of ``x``'s shape.

  Example:

  >>> dequantize(quantize([0.5, -1.25]) + quantize([1.0, 0.25]))
  array([ 1.5, -1. ])
  """
  dtype = _dtype(bits)
  if not isinstance(frac_bits, int) or not 0 <= frac_bits <= bits - 2:
    raise ValueError(f'frac_bits must be an int in [0, {bits - 2}]; got {frac_bits!r}.')
  if not isinstance(num_participants, int) or num_participants < 1:
    raise ValueError(f'num_participants must be an int >= 1; got {num_participants!r}.')
  x = np.asarray(x, np.float64)
  if np.isnan(x).any():
    raise ValueError('quantize: the update contains NaN; refusing to encode it.')
  # Capped at 2^62 so that the float bound converts to int64 without overflow.
  limit = min((2 ** (bits - 1) - 1) // num_participants, 2 ** 62)
  q = np.clip(np.rint(x * 2.0 ** frac_bits), -limit, limit)
  # int64 -> uint keeps the low bits: two's complement modulo 2^bits.
  return q.astype(np.int64).astype(dtype)


def dequantize(q: Any, *, frac_bits: int = 16, bits: int = 32) -> np.ndarray:
  """Decodes a (summed) fixed-point array back to float64.

  Args:
    q: ``uint32``/``uint64`` values, read as two's complement.
    frac_bits: as in :func:`quantize`.
    bits: 32 or 64.

  Returns:
    A float64 array.

  Example:

  >>> dequantize(quantize([3.0, -0.5]))
  array([ 3. , -0.5])
  """
  dtype = _dtype(bits)
  signed = np.asarray(q, dtype).view(np.int32 if bits == 32 else np.int64)
  return signed.astype(np.float64) / 2.0 ** frac_bits


def prg(seed: bytes, size: int, *, bits: int = 32) -> np.ndarray:
  """``size`` pseudo-random integers mod ``2^bits`` from a 32-byte seed.

  AES-256-CTR keystream (zero nonce: every seed is used for one mask only,
  since seeds are derived per session, round and pair).

  Args:
    seed: 32 bytes.
    size: number of integers.
    bits: 32 or 64.

  Returns:
    A ``uint32``/``uint64`` array.

  Example:

  >>> a = prg(bytes(32), 4); b = prg(bytes(32), 4)
  >>> bool((a == b).all()), a.dtype.name
  (True, 'uint32')
  """
  _require_crypto()
  dtype = _dtype(bits)
  if not isinstance(seed, bytes) or len(seed) != 32:
    raise ValueError('seed must be 32 bytes.')
  enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
  stream = enc.update(bytes(size * bits // 8)) + enc.finalize()
  return np.frombuffer(stream, dtype=np.dtype(dtype).newbyteorder('<')).astype(dtype)


def shamir_split(secret: int, num_shares: int, threshold: int) -> list[tuple[int, int]]:
  """Shamir ``threshold``-of-``num_shares`` sharing of ``secret`` over GF(PRIME).

  Args:
    secret: an int in ``[0, PRIME)``.
    num_shares: ``n >= threshold``.
    threshold: ``t >= 1`` shares reconstruct; fewer reveal nothing.

  Returns:
    ``[(x, f(x)) for x in 1..n]``.

  Example:

  >>> shares = shamir_split(42, 5, 3)
  >>> shamir_reconstruct(shares[1:4]), shamir_reconstruct(shares[::2])
  (42, 42)
  """
  if not 1 <= threshold <= num_shares:
    raise ValueError(f'threshold must be in [1, num_shares={num_shares}]; got {threshold}.')
  if not 0 <= secret < PRIME:
    raise ValueError('secret must be in [0, PRIME).')
  coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]

  def f(x):
    acc = 0
    for c in reversed(coeffs):
      acc = (acc * x + c) % PRIME
    return acc

  return [(x, f(x)) for x in range(1, num_shares + 1)]


def shamir_reconstruct(shares: Sequence[tuple[int, int]]) -> int:
  """Lagrange interpolation at 0 of ``shares`` (at least the threshold)."""
  xs = [x for x, _ in shares]
  if len(set(xs)) != len(xs):
    raise SecureAggregationError('duplicate Shamir share indices.')
  secret = 0
  for j, (xj, yj) in enumerate(shares):
    num, den = 1, 1
    for m, xm in enumerate(xs):
      if m != j:
        num = num * (-xm) % PRIME
        den = den * (xj - xm) % PRIME
    secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
  return secret


def _hkdf(material: bytes, info: bytes, length: int = 32) -> bytes:
  return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(material)


def _raw(public_key: X25519PublicKey) -> bytes:
  return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _priv_raw(private_key: X25519PrivateKey) -> bytes:
  return private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())


def _mac_input(session, rnd, step, sender, recipient, payload) -> bytes:
  head = struct.pack('>I', len(session)) + session + struct.pack(
      '>qB qq', rnd, _STEPS.index(step), sender, recipient)
  return head + hashlib.sha256(payload).digest()


def _sign(key: bytes, session, rnd, step, sender, recipient, payload) -> Message:
  tag = hmac.new(key, _mac_input(session, rnd, step, sender, recipient, payload),
                 hashlib.sha256).digest()
  return Message(session, rnd, step, sender, recipient, payload, tag)


class _Inbox:
  """Verification and replay protection shared by both ends."""

  def __init__(self, session: bytes, owner: int):
    self.session = session
    self.owner = owner
    self.seen: set[tuple[int, str, int]] = set()

  def check(self, msg: Message, key: bytes, *, round_: int, step: str) -> None:
    if not isinstance(msg, Message):
      raise TypeError(f'expected a Message; got {type(msg).__name__}.')
    expected = hmac.new(key, _mac_input(msg.session, msg.round, msg.step, msg.sender,
                                        msg.recipient, msg.payload), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, msg.tag):
      raise TamperedMessageError(
          f'message {msg.step!r} from sender {msg.sender} failed authentication '
          '(HMAC mismatch): it was modified in transit or forged.')
    if msg.session != self.session or msg.round != round_:
      raise ReplayedMessageError(
          f'message {msg.step!r} from sender {msg.sender} belongs to session '
          f'{msg.session.hex()[:8]}.. round {msg.round}, not the current session '
          f'{self.session.hex()[:8]}.. round {round_}: replay rejected.')
    if msg.recipient != self.owner:
      raise SecureAggregationError(
          f'message {msg.step!r} from sender {msg.sender} is addressed to '
          f'{msg.recipient}, not to {self.owner}.')
    if msg.step != step:
      raise SecureAggregationError(
          f'expected a {step!r} message; got {msg.step!r} from sender {msg.sender}.')
    ident = (msg.round, msg.step, msg.sender)
    if ident in self.seen:
      raise ReplayedMessageError(
          f'second {msg.step!r} message from sender {msg.sender} in round {msg.round}: '
          'replay rejected.')
    self.seen.add(ident)


def _pack_keys(keys: Mapping[int, bytes]) -> bytes:
  return b''.join(struct.pack('>q', k) + v for k, v in sorted(keys.items()))


def _unpack_keys(payload: bytes, width: int) -> dict[int, bytes]:
  out, step = {}, 8 + width
  if len(payload) % step:
    raise SecureAggregationError('malformed key list.')
  for i in range(0, len(payload), step):
    out[struct.unpack('>q', payload[i:i + 8])[0]] = payload[i + 8:i + step]
  return out


def _pack_blobs(blobs: Mapping[int, bytes]) -> bytes:
  return b''.join(struct.pack('>qI', k, len(v)) + v for k, v in sorted(blobs.items()))


def _unpack_blobs(payload: bytes) -> dict[int, bytes]:
  out, i = {}, 0
  while i < len(payload):
    k, n = struct.unpack('>qI', payload[i:i + 12])
    out[k] = payload[i + 12:i + 12 + n]
    i += 12 + n
  return out


def _int_bytes(v: int) -> bytes:
  return v.to_bytes(66, 'big')


# ---------------------------------------------------------------------------
# Parties.


class Participant:
  """One participant of secure aggregation.

  Args:
    index: this participant's id in ``[0, num_participants)``.
    num_participants: ``n``.
    threshold: Shamir threshold ``t`` (``2 <= t <= n``); also the minimum
      number of participants needed at every step.
    server_public_key: the server's raw X25519 identity key (32 bytes).
    session: the session id agreed out of band (bytes).
    frac_bits, bits: the fixed-point encoding (see :func:`quantize`).
  """

  def __init__(self, index: int, num_participants: int, threshold: int,
               server_public_key: bytes, *, session: bytes, frac_bits: int = 16,
               bits: int = 32):
    _require_crypto()
    _check_sizes(num_participants, threshold, session)
    if not 0 <= index < num_participants:
      raise ValueError(f'index must be in [0, {num_participants}); got {index}.')
    self.index, self.n, self.t = index, num_participants, threshold
    self.session, self.frac_bits, self.bits = session, frac_bits, bits
    self._identity = X25519PrivateKey.generate()
    self.identity_public_key = _raw(self._identity.public_key())
    self._server_public_key = server_public_key
    self._auth_key = _hkdf(self._identity.exchange(X25519PublicKey.from_public_bytes(
        server_public_key)), b'ssgd_optax secagg auth|' + session)
    self._inbox = _Inbox(session, index)
    self.round = -1

  def _send(self, step: str, payload: bytes) -> Message:
    return _sign(self._auth_key, self.session, self.round, step, self.index, _SERVER, payload)

  def advertise(self, round_: int) -> Message:
    """Step 1: fresh per-round encryption and masking keys."""
    self.round = round_
    self._c = X25519PrivateKey.generate()
    self._s = X25519PrivateKey.generate()
    self._b = secrets.token_bytes(32)
    self._received_shares: dict[int, tuple[int, int]] = {}
    return self._send('advertise', _raw(self._c.public_key()) + _raw(self._s.public_key()))

  def share(self, keys_msg: Message) -> Message:
    """Step 2: Shamir-share the masking key and self-mask seed, encrypted to each peer."""
    self._inbox.check(keys_msg, self._auth_key, round_=self.round, step='keys')
    keys = _unpack_keys(keys_msg.payload, 64)
    if len(keys) < self.t or self.index not in keys:
      raise DropoutError(f'only {len(keys)} participants advertised keys; threshold is {self.t}.')
    self._c_pk = {v: k[:32] for v, k in keys.items()}
    self._s_pk = {v: k[32:] for v, k in keys.items()}
    s_shares = shamir_split(int.from_bytes(_priv_raw(self._s), 'big'), self.n, self.t)
    b_shares = shamir_split(int.from_bytes(self._b, 'big'), self.n, self.t)
    blobs = {}
    for v in keys:
      if v == self.index:
        self._received_shares[v] = (s_shares[v][1], b_shares[v][1])
        continue
      plain = struct.pack('>qq', self.index, v) + _int_bytes(s_shares[v][1]) + _int_bytes(
          b_shares[v][1])
      nonce = os.urandom(12)
      blobs[v] = nonce + AESGCM(self._pair_key(v)).encrypt(nonce, plain, self._aad(self.index, v))
    return self._send('share', _pack_blobs(blobs))

  def _pair_key(self, v: int) -> bytes:
    lo, hi = sorted((self.index, v))
    return _hkdf(self._c.exchange(X25519PublicKey.from_public_bytes(self._c_pk[v])),
                 b'ssgd_optax secagg enc|' + self.session + struct.pack('>qqq', self.round, lo, hi))

  def _aad(self, u: int, v: int) -> bytes:
    return self.session + struct.pack('>qqq', self.round, u, v)

  def masked_input(self, forward_msg: Message, update: Any) -> Message:
    """Step 3: keep the encrypted shares for later, upload the masked update."""
    self._inbox.check(forward_msg, self._auth_key, round_=self.round, step='forward')
    blobs = _unpack_blobs(forward_msg.payload)
    self._cipher = blobs
    self._u2 = sorted(set(blobs) | {self.index})
    if len(self._u2) < self.t:
      raise DropoutError(f'only {len(self._u2)} participants shared keys; threshold is {self.t}.')
    x = quantize(update, frac_bits=self.frac_bits, bits=self.bits, num_participants=self.n)
    y = x.ravel().copy()
    y += prg(self._b, y.size, bits=self.bits)
    for v in self._u2:
      if v == self.index:
        continue
      mask = prg(_pair_seed(self._s, self._s_pk[v], self.session, self.round, self.index, v),
                 y.size, bits=self.bits)
      y = y + mask if self.index < v else y - mask
    self.size = y.size
    return self._send('masked', y.tobytes())

  def unmask(self, survivors_msg: Message) -> Message:
    """Step 4: reveal ``b`` shares of survivors and ``s`` shares of the dropped."""
    self._inbox.check(survivors_msg, self._auth_key, round_=self.round, step='survivors')
    survivors = set(struct.unpack(f'>{len(survivors_msg.payload) // 8}q', survivors_msg.payload))
    if len(survivors) < self.t:
      raise DropoutError(f'only {len(survivors)} participants uploaded; threshold is {self.t}.')
    if self.index not in survivors or not survivors <= set(self._u2):
      raise SecureAggregationError('inconsistent survivor list from the server.')
    out = {}
    for v in self._u2:
      if v == self.index:
        s_share, b_share = self._received_shares[v]
      else:
        blob = self._cipher[v]
        try:
          plain = AESGCM(self._pair_key(v)).decrypt(blob[:12], blob[12:], self._aad(v, self.index))
        except Exception as e:
          raise TamperedMessageError(f'encrypted share from participant {v} failed '
                                     'authentication.') from e
        if struct.unpack('>qq', plain[:16]) != (v, self.index):
          raise TamperedMessageError(f'encrypted share from participant {v} is misaddressed.')
        s_share = int.from_bytes(plain[16:82], 'big')
        b_share = int.from_bytes(plain[82:148], 'big')
      # Reveal exactly one of the two secrets of v, never both.
      out[v] = struct.pack('>B', v in survivors) + _int_bytes(
          b_share if v in survivors else s_share)
    return self._send('unmask', _pack_blobs(out))


def _pair_seed(own: X25519PrivateKey, peer_public: bytes, session: bytes, round_: int,
               u: int, v: int) -> bytes:
  lo, hi = sorted((u, v))
  return _hkdf(own.exchange(X25519PublicKey.from_public_bytes(peer_public)),
               b'ssgd_optax secagg mask|' + session + struct.pack('>qqq', round_, lo, hi))


def _check_sizes(n: int, t: int, session: Any = b'-') -> None:
  if not isinstance(session, bytes) or not session:
    raise TypeError(f'session must be non-empty bytes; got {type(session).__name__}.')
  if not isinstance(n, int) or n < 2:
    raise ValueError(f'num_participants must be an int >= 2; got {n!r}.')
  if not isinstance(t, int) or not 2 <= t <= n:
    raise ValueError(f'threshold must be an int in [2, num_participants={n}]; got {t!r}.')


class Server:
  """The aggregating server; it learns the sum of the survivors' updates only.

  Args:
    num_participants: ``n``.
    threshold: Shamir threshold ``t``.
    session: the session id (bytes).
    frac_bits, bits: the fixed-point encoding (see :func:`quantize`).
  """

  def __init__(self, num_participants: int, threshold: int, *, session: bytes,
               frac_bits: int = 16, bits: int = 32):
    _require_crypto()
    _check_sizes(num_participants, threshold, session)
    self.n, self.t, self.session = num_participants, threshold, session
    self.frac_bits, self.bits = frac_bits, bits
    self._identity = X25519PrivateKey.generate()
    self.public_key = _raw(self._identity.public_key())
    self._auth: dict[int, bytes] = {}
    self._inbox = _Inbox(session, _SERVER)
    self.round = -1

  def register(self, index: int, identity_public_key: bytes) -> None:
    """Records a participant's long-term identity key (the stand-in for a PKI)."""
    if not 0 <= index < self.n:
      raise ValueError(f'index must be in [0, {self.n}); got {index}.')
    self._auth[index] = _hkdf(self._identity.exchange(
        X25519PublicKey.from_public_bytes(identity_public_key)),
        b'ssgd_optax secagg auth|' + self.session)

  def _key(self, msg: Message) -> bytes:
    if msg.sender not in self._auth:
      raise SecureAggregationError(f'message from unregistered sender {msg.sender}.')
    return self._auth[msg.sender]

  def _receive(self, msgs: Iterable[Message], step: str) -> dict[int, bytes]:
    out = {}
    for m in msgs:
      self._inbox.check(m, self._key(m), round_=self.round, step=step)
      out[m.sender] = m.payload
    return out

  def _send(self, step: str, to: int, payload: bytes) -> Message:
    return _sign(self._auth[to], self.session, self.round, step, _SERVER, to, payload)

  def start_round(self, round_: int) -> None:
    """Begins round ``round_`` (must increase: old rounds are replays)."""
    if round_ <= self.round:
      raise ReplayedMessageError(f'round {round_} is not after round {self.round}.')
    self.round = round_

  def collect_keys(self, msgs: Iterable[Message]) -> dict[int, Message]:
    """Step 1 -> 2: the advertised keys, broadcast to every sender."""
    keys = self._receive(msgs, 'advertise')
    if len(keys) < self.t:
      raise DropoutError(f'only {len(keys)} participants advertised keys; threshold is {self.t}.')
    self._keys = keys
    payload = _pack_keys(keys)
    return {u: self._send('keys', u, payload) for u in keys}

  def collect_shares(self, msgs: Iterable[Message]) -> dict[int, Message]:
    """Step 2 -> 3: forward each encrypted share to its recipient."""
    shares = self._receive(msgs, 'share')
    if len(shares) < self.t:
      raise DropoutError(f'only {len(shares)} participants shared keys; threshold is {self.t}.')
    self._u2 = sorted(shares)
    boxes: dict[int, dict[int, bytes]] = {u: {} for u in self._u2}
    for u, payload in shares.items():
      for v, blob in _unpack_blobs(payload).items():
        if v in boxes:
          boxes[v][u] = blob
    return {v: self._send('forward', v, _pack_blobs(b)) for v, b in boxes.items()}

  def collect_masked(self, msgs: Iterable[Message]) -> dict[int, Message]:
    """Step 3 -> 4: store the masked inputs, announce the survivors."""
    masked = self._receive(msgs, 'masked')
    if len(masked) < self.t:
      raise DropoutError(f'only {len(masked)} participants uploaded; threshold is {self.t}.')
    dtype = _dtype(self.bits)
    self._masked = {u: np.frombuffer(p, dtype=dtype) for u, p in masked.items()}
    sizes = {y.size for y in self._masked.values()}
    if len(sizes) != 1:
      raise SecureAggregationError(f'masked inputs of different sizes: {sorted(sizes)}.')
    self._u3 = sorted(masked)
    payload = struct.pack(f'>{len(self._u3)}q', *self._u3)
    return {u: self._send('survivors', u, payload) for u in self._u3}

  def finish(self, msgs: Iterable[Message]) -> np.ndarray:
    """Step 4: reconstruct the secrets and return the exact sum (float64)."""
    revealed = self._receive(msgs, 'unmask')
    if len(revealed) < self.t:
      raise DropoutError(f'only {len(revealed)} participants answered the unmasking step; '
                         f'threshold is {self.t}.')
    survivors = set(self._u3)
    shares: dict[int, list[tuple[int, int]]] = {v: [] for v in self._u2}
    for u, payload in revealed.items():
      for v, blob in _unpack_blobs(payload).items():
        if v not in shares:
          continue
        if bool(blob[0]) != (v in survivors):
          raise SecureAggregationError(f'participant {u} revealed the wrong secret of {v}.')
        shares[v].append((u + 1, int.from_bytes(blob[1:], 'big')))
    size = next(iter(self._masked.values())).size
    total = np.zeros(size, _dtype(self.bits))
    for y in self._masked.values():
      total += y
    for v in self._u2:
      if len(shares[v]) < self.t:
        raise DropoutError(f'only {len(shares[v])} shares for participant {v}; need {self.t}.')
      secret = shamir_reconstruct(shares[v][:self.t])
      if v in survivors:
        total -= prg(secret.to_bytes(32, 'big'), size, bits=self.bits)
      else:
        s_v = X25519PrivateKey.from_private_bytes(secret.to_bytes(32, 'big'))
        for w in self._u3:
          mask = prg(_pair_seed(s_v, self._keys[w][32:], self.session, self.round, w, v),
                     size, bits=self.bits)
          # Survivor w added +mask if w < v, else -mask: undo that.
          total = total - mask if w < v else total + mask
    self.sum_quantized = total
    return dequantize(total, frac_bits=self.frac_bits, bits=self.bits)


def aggregate(updates: Any, *, dropped: Sequence[int] = (), threshold: int | None = None,
              frac_bits: int = 16, bits: int = 32, round_: int = 0) -> np.ndarray:
  """Runs one secure-aggregation round in-process and returns the sum.

  The participants in ``dropped`` take part in the key exchange and then drop
  out before uploading (the case that needs recovery); the result is the sum
  of the others' quantised updates, exactly.

  Args:
    updates: ``(N, ...)`` float array, one update per participant.
    dropped: participant ids that drop out after sharing their keys.
    threshold: Shamir threshold (default ``ceil(2N/3)``, at least 2).
    frac_bits, bits: the fixed-point encoding.
    round_: the round number.

  Returns:
    The float64 sum over the surviving participants, shape ``updates[0]``.

  Example:

  >>> import numpy as np
  >>> u = np.array([[0.5, 1.0], [0.25, -2.0], [1.0, 1.0]])
  >>> aggregate(u, dropped=[2], threshold=2)
  array([ 0.75, -1.  ])
  """
  updates = np.asarray(updates)
  n = updates.shape[0]
  t = max(2, -(-2 * n // 3)) if threshold is None else threshold
  session = secrets.token_bytes(16)
  server = Server(n, t, session=session, frac_bits=frac_bits, bits=bits)
  clients = [Participant(i, n, t, server.public_key, session=session, frac_bits=frac_bits,
                         bits=bits) for i in range(n)]
  for c in clients:
    server.register(c.index, c.identity_public_key)
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  gone = set(int(d) for d in dropped)
  surv = server.collect_masked([clients[u].masked_input(m, updates[u])
                                for u, m in fwd.items() if u not in gone])
  total = server.finish([clients[u].unmask(m) for u, m in surv.items()])
  return total.reshape(updates.shape[1:])
