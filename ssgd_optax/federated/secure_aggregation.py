# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Secure aggregation (Bonawitz et al., CCS 2017): the server learns only the sum.

Every participant ``u`` fixed-point-quantises its update ``x_u`` to integers
modulo ``2^bits`` and uploads

.. math::

  y_u = q(x_u) + \\mathrm{PRG}(b_u)
        + \\sum_{v \\in U_2, v > u} \\mathrm{PRG}(s_{uv})
        - \\sum_{v \\in U_2, v < u} \\mathrm{PRG}(s_{uv}) \\pmod{2^{\\text{bits}}}

where ``s_uv`` is agreed by X25519 between ``u``'s and ``v``'s per-round
masking keys (HKDF-SHA256 bound to session, round and the pair) and ``b_u`` is
a private self-mask seed; the PRG is AES-256 in counter mode. The pairwise
masks cancel in the sum; the server removes the survivors' self masks and the
pairwise masks of the participants that dropped out, from ``threshold``
Shamir shares held by the others: ``b_v`` of survivors, the masking private
key of the dropped, never both for one participant. The result is the
**exact** sum of the survivors' quantised updates.

The rounds are the paper's active-adversary protocol, with its names for the
sets of participants that answered each step (``t`` = ``threshold``):

=====  ================================  =====================================
round  participant ``u`` -> server       server -> participants
=====  ================================  =====================================
0      ``advertise``: ``c_u^PK``,         ``keys``: every entry of ``U1``
       ``s_u^PK`` and ``u``'s Ed25519
       signature over them
1      ``share``: Shamir shares of        ``forward``: to each ``v``, the
       ``s_u^SK`` and ``b_u``, each       ciphertexts addressed to it by
       AES-GCM-encrypted to one peer      ``U2``
2      ``masked``: ``y_u``                ``survivors``: the set ``U3``
3      ``consistency``: ``u``'s           ``signatures``: those of ``U4``
       signature over ``U3``
4      ``unmask``: ``b`` shares of        (the server reconstructs from
       ``U3``, ``s^SK`` shares of         ``U5``)
       ``U2 \\ U3``
=====  ================================  =====================================

``U5 <= U4 <= U3 <= U2 <= U1`` and each has at least ``t`` members. A
participant checks every advertised key's signature against a registry of
long-term Ed25519 identity keys that it got out of band (the PKI), and it
unmasks only after at least ``t`` valid signatures of the very ``U3`` it was
sent. ``t > n / 2`` is required. Violations raise :class:`SignatureError`
(a bad signature: substituted, forged or replayed keys) or
:class:`ConsistencyError` (contradictory sets, too few matching signatures).

Transport: every message carries session id, round, step, sender and
recipient and an HMAC-SHA256 tag under a key each participant agrees with the
server (X25519 channel keys). A tag that fails raises
:class:`TamperedMessageError`; a message from another round, or a second one
of the same step from the same sender, raises :class:`ReplayedMessageError`.

Threat model (details in ``docs/federated.md``): against a server that
deviates arbitrarily and colludes with ``n_C`` participants, an honest
participant's update stays hidden inside the sum over a set of at least ``t``
participants as long as ``2 t > n + n_C``; the server still chooses who is
dropped (down to ``t``), a participant can abort a round, the registry must
be honest (a server that adds identities adds corrupt participants), and the
sum itself is revealed (add DP for that).

:func:`secure_sum` runs the whole protocol in-process; :class:`Participant`
and :class:`Server` expose the individual steps.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

try:
  from cryptography.exceptions import InvalidSignature, InvalidTag
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                                 Ed25519PublicKey)
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
  'DropoutError', 'SignatureError', 'ConsistencyError', 'ProtocolMessage', 'quantize', 'dequantize',
  'prg', 'shamir_split', 'shamir_reconstruct', 'generate_identities', 'Participant', 'Server',
  'secure_sum',
]

PRIME = 2 ** 521 - 1  # Mersenne prime > 2^256: field for Shamir shares of 32-byte secrets.
_SERVER = -1
_STEPS = ('advertise', 'keys', 'share', 'forward', 'masked', 'survivors', 'consistency',
          'signatures', 'unmask')
_ABORTED = 'aborted'

# Wire layout (every integer big-endian).
_ID = struct.Struct('>q')                        # a participant id or a round number
_KEY_BYTES = 32                                  # raw X25519 or Ed25519 public key
_SECRET_BYTES = 32                               # b_u, s_u^SK and every PRG seed
_SIGNATURE_BYTES = 64                            # Ed25519 signature
_FIELD_BYTES = (PRIME.bit_length() + 7) // 8     # 66: one element of GF(PRIME), a Shamir share
_ADVERTISED_BYTES = 2 * _KEY_BYTES + _SIGNATURE_BYTES   # c_u^PK || s_u^PK || signature
_SHARE_HEADER = struct.Struct('>qq')             # (owner u, holder v) of an encrypted share
_SHARE_PLAIN_BYTES = _SHARE_HEADER.size + 2 * _FIELD_BYTES   # header || s share || b share
_NONCE_BYTES = 12                                # AES-GCM nonce, prefixed to the ciphertext
_REVEAL_BYTES = 1 + _FIELD_BYTES                 # flag (1: b of a survivor, 0: s^SK) || share
_BLOB_HEADER = struct.Struct('>qI')              # (participant id, length) in a blob list


class SecureAggregationError(ValueError):
  """A protocol violation or an unrecoverable round."""


class TamperedMessageError(SecureAggregationError):
  """A message's authentication tag does not match its content."""


class ReplayedMessageError(SecureAggregationError):
  """A message from another session or round, or a second copy of one."""


class DropoutError(SecureAggregationError):
  """Fewer than ``threshold`` participants are left: the sum cannot be recovered."""


class SignatureError(SecureAggregationError):
  """A participant's signature does not verify against its registered identity key.

  Raised for advertised keys that the server substituted, forged or replayed
  from another session or round, and for forged consistency signatures.
  """


class ConsistencyError(SecureAggregationError):
  """The server's view of the participant sets contradicts this participant's.

  Raised when a set is not contained in the previous one (``U2 <= U1``,
  ``U3 <= U2``, ``U4 <= U3``), and when fewer than ``threshold`` participants
  signed the survivor set ``U3`` this participant was sent (a split view).
  """


class ProtocolMessage(NamedTuple):
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


def _check_frac_bits(frac_bits: int, bits: int) -> None:
  _dtype(bits)
  if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not (
      0 <= frac_bits <= bits - 2):
    raise ValueError(f'frac_bits must be an int in [0, {bits - 2}]; got {frac_bits!r}.')


def quantize(x: Any, *, frac_bits: int = 16, bits: int = 32,
             num_participants: int = 1) -> np.ndarray:
  """Fixed-point encoding of ``x`` in ``Z_{2^bits}`` (two's complement).

  ``q = clip(round(x * 2^frac_bits), -L, L) mod 2^bits`` with
  ``L = (2^(bits-1) - 1) // num_participants``, so a sum over up to
  ``num_participants`` values never wraps around: ``|sum| <= n L <
  2^(bits-1)``. The clip is done on integers, so ``L`` is exact even where
  float64 cannot represent it (64-bit ring). Values beyond
  ``L / 2^frac_bits`` are clipped (infinities too); NaN raises.

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
  _check_frac_bits(frac_bits, bits)
  if (isinstance(num_participants, bool) or not isinstance(num_participants, int)
      or num_participants < 1):
    raise ValueError(f'num_participants must be an int >= 1; got {num_participants!r}.')
  x = np.asarray(x, np.float64)
  if np.isnan(x).any():
    raise ValueError('quantize: the update contains NaN; refusing to encode it.')
  limit = (2 ** (bits - 1) - 1) // num_participants
  # The clip is exact in integers: as a float64, L near 2^63 rounds up past
  # L, and n such values wrap. Floats beyond int64 (|v| >= 2^63, above every
  # L) saturate before the conversion, which would overflow.
  scaled = np.rint(x * 2.0 ** frac_bits)
  edge = float(np.nextafter(2.0 ** 63, 0.0))  # the largest float64 below 2^63
  q = np.clip(np.clip(scaled, -edge, edge).astype(np.int64), -limit, limit)
  q = np.where(np.abs(scaled) > edge, np.sign(scaled).astype(np.int64) * limit, q)
  # int64 -> uint keeps the low bits: two's complement modulo 2^bits.
  return q.astype(dtype)


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
  _check_frac_bits(frac_bits, bits)
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
  if not isinstance(seed, bytes) or len(seed) != _SECRET_BYTES:
    raise ValueError('seed must be 32 bytes.')
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise ValueError(f'size must be an int >= 0; got {size!r}.')
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


def generate_identities(num_participants: int) -> tuple[list[Any], dict[int, bytes]]:
  """Fresh long-term Ed25519 identity keys and the registry of their public keys.

  The registry (participant id -> raw 32-byte public key) is what every
  participant must receive out of band, from a source the server does not
  control: it is the PKI that makes substituted keys detectable.

  Args:
    num_participants: ``n``.

  Returns:
    ``(signing_keys, registry)``: ``n`` ``Ed25519PrivateKey`` objects (one per
    participant, kept by that participant) and ``{i: public key bytes}``.

  Example:

  >>> keys, registry = generate_identities(3)
  >>> sorted(registry), len(registry[0])
  ([0, 1, 2], 32)
  """
  _require_crypto()
  if isinstance(num_participants, bool) or not isinstance(num_participants, int) or (
      num_participants < 1):
    raise ValueError(f'num_participants must be an int >= 1; got {num_participants!r}.')
  keys = [Ed25519PrivateKey.generate() for _ in range(num_participants)]
  return keys, {i: _raw(k.public_key()) for i, k in enumerate(keys)}


def _hkdf(material: bytes, info: bytes, length: int = 32) -> bytes:
  return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(material)


def _raw(public_key: Any) -> bytes:
  return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _priv_raw(private_key: X25519PrivateKey) -> bytes:
  return private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())


def _mac_input(session, rnd, step, sender, recipient, payload) -> bytes:
  head = struct.pack('>I', len(session)) + session + struct.pack(
      '>qB qq', rnd, _STEPS.index(step), sender, recipient)
  return head + hashlib.sha256(payload).digest()


def _authenticate(key: bytes, session, rnd, step, sender, recipient, payload) -> ProtocolMessage:
  tag = hmac.new(key, _mac_input(session, rnd, step, sender, recipient, payload),
                 hashlib.sha256).digest()
  return ProtocolMessage(session, rnd, step, sender, recipient, payload, tag)


def _context(label: bytes, session: bytes, round_: int) -> bytes:
  return (b'ssgd_optax secagg ' + label + b'|' + struct.pack('>I', len(session)) + session
          + _ID.pack(round_))


def _advertise_statement(session: bytes, round_: int, u: int, c_pk: bytes,
                         s_pk: bytes) -> bytes:
  """What ``u`` signs in round 0: its keys, bound to session, round and ``u``."""
  return _context(b'advertise', session, round_) + _ID.pack(u) + c_pk + s_pk


def _consistency_statement(session: bytes, round_: int, u: int, u3: Iterable[int]) -> bytes:
  """What ``u`` signs in round 3: the survivor set ``U3`` it was sent."""
  return _context(b'consistency', session, round_) + _ID.pack(u) + _pack_ids(u3)


class _Inbox:
  """Verification and replay protection shared by both ends."""

  def __init__(self, session: bytes, owner: int):
    self.session = session
    self.owner = owner
    self.seen: set[tuple[int, str, int]] = set()

  def check(self, msg: ProtocolMessage, key: bytes, *, round_: int, step: str) -> None:
    if not isinstance(msg, ProtocolMessage):
      raise TypeError(f'expected a ProtocolMessage; got {type(msg).__name__}.')
    if msg.step not in _STEPS:
      raise SecureAggregationError(f'unknown step {msg.step!r} from sender {msg.sender}.')
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


def _pack_ids(ids: Iterable[int]) -> bytes:
  return b''.join(_ID.pack(i) for i in sorted(set(ids)))


def _unpack_ids(payload: bytes) -> frozenset[int]:
  if len(payload) % _ID.size:
    raise SecureAggregationError('malformed participant list.')
  ids = [i for (i,) in _ID.iter_unpack(payload)]
  if len(set(ids)) != len(ids):
    raise SecureAggregationError('participant list with duplicates.')
  return frozenset(ids)


def _pack_blobs(blobs: Mapping[int, bytes]) -> bytes:
  return b''.join(_BLOB_HEADER.pack(k, len(v)) + v for k, v in sorted(blobs.items()))


def _unpack_blobs(payload: bytes, width: int | None = None) -> dict[int, bytes]:
  """``{id: blob}``; every blob ``width`` bytes long when given."""
  out, i = {}, 0
  while i < len(payload):
    if i + _BLOB_HEADER.size > len(payload):
      raise SecureAggregationError('malformed blob list: truncated header.')
    k, size = _BLOB_HEADER.unpack_from(payload, i)
    i += _BLOB_HEADER.size
    if i + size > len(payload) or (width is not None and size != width) or k in out:
      raise SecureAggregationError(f'malformed blob list at the entry of participant {k}.')
    out[k] = payload[i:i + size]
    i += size
  return out


def _field_bytes(v: int) -> bytes:
  return v.to_bytes(_FIELD_BYTES, 'big')


def _encode_share(owner: int, holder: int, s_share: int, b_share: int) -> bytes:
  return _SHARE_HEADER.pack(owner, holder) + _field_bytes(s_share) + _field_bytes(b_share)


def _decode_share(plain: bytes) -> tuple[int, int, int, int]:
  """``(owner, holder, share of s_owner^SK, share of b_owner)``."""
  if len(plain) != _SHARE_PLAIN_BYTES:
    raise TamperedMessageError('an encrypted share has the wrong length.')
  owner, holder = _SHARE_HEADER.unpack_from(plain)
  s_at = _SHARE_HEADER.size
  b_at = s_at + _FIELD_BYTES
  return (owner, holder, int.from_bytes(plain[s_at:b_at], 'big'),
          int.from_bytes(plain[b_at:], 'big'))


def _encode_reveal(survived: bool, share: int) -> bytes:
  return bytes([survived]) + _field_bytes(share)


def _decode_reveal(blob: bytes) -> tuple[bool, int]:
  return bool(blob[0]), int.from_bytes(blob[1:], 'big')


def _pair_seed(own: X25519PrivateKey, peer_public: bytes, session: bytes, round_: int,
               u: int, v: int) -> bytes:
  lo, hi = sorted((u, v))
  return _hkdf(own.exchange(X25519PublicKey.from_public_bytes(peer_public)),
               b'ssgd_optax secagg mask|' + session + struct.pack('>qqq', round_, lo, hi))


def _check_sizes(n: int, t: int, session: Any = b'-') -> None:
  if not isinstance(session, bytes) or not session:
    raise TypeError(f'session must be non-empty bytes; got {type(session).__name__}.')
  if isinstance(n, bool) or not isinstance(n, int) or n < 2:
    raise ValueError(f'num_participants must be an int >= 2; got {n!r}.')
  if isinstance(t, bool) or not isinstance(t, int) or not n // 2 + 1 <= t <= n:
    raise ValueError(
        f'threshold must be an int with num_participants / 2 < threshold <= num_participants, '
        f'i.e. in [{n // 2 + 1}, {n}] for num_participants={n}; got {t!r}. With '
        '2 * threshold <= num_participants a server can split the participants into two '
        'groups that each reveal a different secret of one victim.')


def _check_index(index: Any, n: int) -> None:
  if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
    raise ValueError(f'index must be an int in [0, {n}); got {index!r}.')


def _check_registry(registry: Any, n: int) -> dict[int, Any]:
  if not isinstance(registry, Mapping) or set(registry) != set(range(n)):
    raise ValueError(f'registry must map every participant id 0..{n - 1} to its raw Ed25519 '
                     f'identity public key; got {type(registry).__name__} with keys '
                     f'{sorted(registry) if isinstance(registry, Mapping) else None}.')
  out = {}
  for v, key in registry.items():
    if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
      raise ValueError(f'registry[{v}] must be a 32-byte raw Ed25519 public key.')
    out[v] = Ed25519PublicKey.from_public_bytes(key)
  if len(set(registry.values())) != n:
    raise ValueError('registry: two participants share one identity key.')
  return out


def _protocol_step(previous: str, name: str):
  """A participant's step: runs after ``previous``; any failure aborts the round."""

  def wrap(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
      if self._step != previous:
        raise SecureAggregationError(
            f'participant {self.index}: step {name!r} of round {self.round} called after '
            f'{self._step!r}; it must follow {previous!r}.')
      try:
        out = method(self, *args, **kwargs)
      except BaseException:
        self._step = _ABORTED
        raise
      self._step = name
      return out
    return run

  return wrap


# ---------------------------------------------------------------------------
# Parties.


class Participant:
  """One participant of secure aggregation.

  Args:
    index: this participant's id in ``[0, num_participants)``.
    num_participants: ``n``.
    threshold: Shamir threshold ``t`` with ``n / 2 < t <= n``; also the
      minimum number of participants needed at every step.
    server_public_key: the server's raw X25519 channel key (32 bytes).
    signing_key: this participant's long-term Ed25519 identity key
      (``cryptography``'s ``Ed25519PrivateKey``).
    registry: ``{id: raw Ed25519 public key}`` for every participant,
      obtained out of band (see :func:`generate_identities`);
      ``registry[index]`` must be ``signing_key``'s public key.
    session: the session id agreed out of band (bytes).
    frac_bits, bits: the fixed-point encoding (see :func:`quantize`).

  Attributes:
    channel_public_key: the raw X25519 key to :meth:`Server.register`.
  """

  def __init__(self, index: int, num_participants: int, threshold: int,
               server_public_key: bytes, *, signing_key: Any, registry: Mapping[int, bytes],
               session: bytes, frac_bits: int = 16, bits: int = 32):
    _require_crypto()
    _check_sizes(num_participants, threshold, session)
    _check_index(index, num_participants)
    _check_frac_bits(frac_bits, bits)
    if not isinstance(signing_key, Ed25519PrivateKey):
      raise TypeError(f'signing_key must be an Ed25519PrivateKey; got '
                      f'{type(signing_key).__name__}.')
    self._registry = _check_registry(registry, num_participants)
    if _raw(signing_key.public_key()) != registry[index]:
      raise ValueError(f'registry[{index}] is not the public key of signing_key.')
    if not isinstance(server_public_key, bytes) or len(server_public_key) != _KEY_BYTES:
      raise ValueError('server_public_key must be a 32-byte raw X25519 public key.')
    self.index, self.n, self.t = index, num_participants, threshold
    self.session, self.frac_bits, self.bits = session, frac_bits, bits
    self._signing_key = signing_key
    channel = X25519PrivateKey.generate()
    self.channel_public_key = _raw(channel.public_key())
    self._auth_key = _hkdf(channel.exchange(X25519PublicKey.from_public_bytes(
        server_public_key)), b'ssgd_optax secagg auth|' + session)
    self._inbox = _Inbox(session, index)
    self.round = -1
    self._step = _ABORTED  # the last completed step of the round
    # Per-round state, reset by `advertise`; the names are the paper's.
    self._c_sk: Any = None         # encryption key c_u^SK
    self._s_sk: Any = None         # masking key s_u^SK
    self._b = b''                  # self-mask seed b_u
    self._c_pk: dict[int, bytes] = {}    # c_v^PK for v in U1
    self._s_pk: dict[int, bytes] = {}    # s_v^PK for v in U1
    self._own_shares = (0, 0)      # this participant's shares of its own s_u^SK and b_u
    self._ciphertexts: dict[int, bytes] = {}   # e_{v,u} for v in U2 \ {u}
    self._u2: frozenset[int] = frozenset()
    self._u3: frozenset[int] = frozenset()

  def _send(self, step: str, payload: bytes) -> ProtocolMessage:
    return _authenticate(self._auth_key, self.session, self.round, step, self.index, _SERVER,
                         payload)

  def _verify(self, v: int, signature: bytes, statement: bytes, what: str) -> None:
    """Checks ``v``'s signature against the registry; the one place that trusts a key."""
    try:
      self._registry[v].verify(signature, statement)
    except InvalidSignature:
      raise SignatureError(
          f'participant {self.index}: the {what} of participant {v} do not carry a valid '
          f'signature by its registered identity key (substituted, forged, or replayed from '
          f'another session or round); refusing to continue round {self.round}.') from None

  def advertise(self, round_: int) -> ProtocolMessage:
    """Round 0: fresh encryption and masking keys, signed with the identity key."""
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
      raise ValueError(f'round_ must be an int >= 0; got {round_!r}.')
    if round_ <= self.round:
      raise ReplayedMessageError(
          f'participant {self.index}: round {round_} is not after round {self.round}; '
          'a round runs once.')
    self.round = round_
    self._c_sk = X25519PrivateKey.generate()
    self._s_sk = X25519PrivateKey.generate()
    self._b = secrets.token_bytes(_SECRET_BYTES)
    self._c_pk, self._s_pk, self._ciphertexts = {}, {}, {}
    self._own_shares = (0, 0)
    self._u2 = self._u3 = frozenset()
    c_pk, s_pk = _raw(self._c_sk.public_key()), _raw(self._s_sk.public_key())
    signature = self._signing_key.sign(
        _advertise_statement(self.session, round_, self.index, c_pk, s_pk))
    self._step = 'advertise'
    return self._send('advertise', c_pk + s_pk + signature)

  @_protocol_step('advertise', 'share')
  def share(self, keys_msg: ProtocolMessage) -> ProtocolMessage:
    """Round 1: verify ``U1``'s keys, Shamir-share ``s_u^SK`` and ``b_u`` to each peer."""
    self._inbox.check(keys_msg, self._auth_key, round_=self.round, step='keys')
    entries = _unpack_blobs(keys_msg.payload, _ADVERTISED_BYTES)
    u1 = set(entries)
    if len(u1) < self.t:
      raise DropoutError(f'only {len(u1)} participants advertised keys; threshold is {self.t}.')
    if self.index not in u1 or not u1 <= set(self._registry):
      raise ConsistencyError(f'participant {self.index}: the key list U1 {sorted(u1)} lacks '
                             'this participant or names unregistered ones.')
    for v, entry in sorted(entries.items()):
      c_pk, s_pk = entry[:_KEY_BYTES], entry[_KEY_BYTES:2 * _KEY_BYTES]
      self._verify(v, entry[2 * _KEY_BYTES:],
                   _advertise_statement(self.session, self.round, v, c_pk, s_pk),
                   'advertised keys')
      self._c_pk[v], self._s_pk[v] = c_pk, s_pk
    if len(set(self._c_pk.values()) | set(self._s_pk.values())) != 2 * len(u1):
      raise ConsistencyError(f'participant {self.index}: two advertised public keys are equal.')
    s_shares = shamir_split(int.from_bytes(_priv_raw(self._s_sk), 'big'), self.n, self.t)
    b_shares = shamir_split(int.from_bytes(self._b, 'big'), self.n, self.t)
    ciphertexts = {}
    for v in sorted(u1):
      # Shamir x-coordinate of holder v is v + 1 (0 is the secret).
      s_share, b_share = s_shares[v][1], b_shares[v][1]
      if v == self.index:
        self._own_shares = (s_share, b_share)
        continue
      nonce = os.urandom(_NONCE_BYTES)
      ciphertexts[v] = nonce + AESGCM(self._pair_key(v)).encrypt(
          nonce, _encode_share(self.index, v, s_share, b_share), self._aad(self.index, v))
    return self._send('share', _pack_blobs(ciphertexts))

  def _pair_key(self, v: int) -> bytes:
    lo, hi = sorted((self.index, v))
    return _hkdf(self._c_sk.exchange(X25519PublicKey.from_public_bytes(self._c_pk[v])),
                 b'ssgd_optax secagg enc|' + self.session + struct.pack('>qqq', self.round, lo, hi))

  def _aad(self, u: int, v: int) -> bytes:
    return self.session + struct.pack('>qqq', self.round, u, v)

  @_protocol_step('share', 'masked')
  def masked_input(self, forward_msg: ProtocolMessage, update: Any) -> ProtocolMessage:
    """Round 2: keep the ciphertexts of ``U2`` for later, upload the masked update."""
    self._inbox.check(forward_msg, self._auth_key, round_=self.round, step='forward')
    ciphertexts = _unpack_blobs(forward_msg.payload)
    u2 = frozenset(ciphertexts) | {self.index}
    if self.index in ciphertexts or not u2 <= set(self._c_pk):
      raise ConsistencyError(f'participant {self.index}: the share senders U2 {sorted(u2)} are '
                             f'not a subset of U1 {sorted(self._c_pk)}.')
    if len(u2) < self.t:
      raise DropoutError(f'only {len(u2)} participants shared keys; threshold is {self.t}.')
    self._ciphertexts, self._u2 = ciphertexts, u2
    x = quantize(update, frac_bits=self.frac_bits, bits=self.bits, num_participants=self.n)
    y = x.ravel() + prg(self._b, x.size, bits=self.bits)
    for v in sorted(u2 - {self.index}):
      mask = prg(_pair_seed(self._s_sk, self._s_pk[v], self.session, self.round, self.index, v),
                 y.size, bits=self.bits)
      y = y + mask if self.index < v else y - mask
    return self._send('masked', y.tobytes())

  @_protocol_step('masked', 'consistency')
  def consistency_check(self, survivors_msg: ProtocolMessage) -> ProtocolMessage:
    """Round 3: sign the survivor set ``U3`` the server announced to this participant."""
    self._inbox.check(survivors_msg, self._auth_key, round_=self.round, step='survivors')
    u3 = _unpack_ids(survivors_msg.payload)
    if len(u3) < self.t:
      raise DropoutError(f'only {len(u3)} participants uploaded; threshold is {self.t}.')
    if self.index not in u3 or not u3 <= self._u2:
      raise ConsistencyError(f'participant {self.index}: the survivor set U3 {sorted(u3)} must '
                             f'contain it and be a subset of U2 {sorted(self._u2)}.')
    self._u3 = u3
    return self._send('consistency', self._signing_key.sign(
        _consistency_statement(self.session, self.round, self.index, u3)))

  @_protocol_step('consistency', 'unmask')
  def unmask(self, signatures_msg: ProtocolMessage) -> ProtocolMessage:
    """Round 4: given ``t`` signatures of ``U3``, reveal the shares that unmask the sum.

    Shares of ``b_v`` for ``v`` in ``U3`` and of ``s_v^SK`` for ``v`` in
    ``U2 \\ U3``, never both for one ``v``. Raises :class:`SignatureError` or
    :class:`ConsistencyError` (revealing nothing) when the signatures are
    invalid, fewer than ``t``, or from outside ``U3``.
    """
    self._inbox.check(signatures_msg, self._auth_key, round_=self.round, step='signatures')
    signatures = _unpack_blobs(signatures_msg.payload, _SIGNATURE_BYTES)
    u4 = frozenset(signatures)
    if not u4 <= self._u3:
      raise ConsistencyError(f'participant {self.index}: signatures from {sorted(u4 - self._u3)}, '
                             f'who are not in the survivor set U3 {sorted(self._u3)}.')
    for v, signature in sorted(signatures.items()):
      self._verify(v, signature, _consistency_statement(self.session, self.round, v, self._u3),
                   'consistency signature over U3')
    if len(u4) < self.t:
      raise ConsistencyError(
          f'participant {self.index}: only {len(u4)} participants signed the survivor set U3 '
          f'{sorted(self._u3)} it was sent; {self.t} are needed. The server may be showing '
          'different survivor sets to different participants: refusing to unmask.')
    out = {}
    for v in sorted(self._u2):
      if v == self.index:
        s_share, b_share = self._own_shares
      else:
        blob = self._ciphertexts[v]
        try:
          plain = AESGCM(self._pair_key(v)).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:],
                                                    self._aad(v, self.index))
        except InvalidTag:
          raise TamperedMessageError(f'encrypted share from participant {v} failed '
                                     'authentication.') from None
        owner, holder, s_share, b_share = _decode_share(plain)
        if (owner, holder) != (v, self.index):
          raise TamperedMessageError(f'encrypted share from participant {v} is misaddressed.')
      # Reveal exactly one of the two secrets of v, never both.
      survived = v in self._u3
      out[v] = _encode_reveal(survived, b_share if survived else s_share)
    return self._send('unmask', _pack_blobs(out))


class Server:
  """The aggregating server; it learns the sum of the survivors' updates only.

  Args:
    num_participants: ``n``.
    threshold: Shamir threshold ``t`` with ``n / 2 < t <= n``.
    session: the session id (bytes).
    frac_bits, bits: the fixed-point encoding (see :func:`quantize`).

  Attributes:
    public_key: the raw X25519 channel key participants are constructed with.
    sum_quantized: after :meth:`finish`, the sum in ``Z_{2^bits}``.
  """

  def __init__(self, num_participants: int, threshold: int, *, session: bytes,
               frac_bits: int = 16, bits: int = 32):
    _require_crypto()
    _check_sizes(num_participants, threshold, session)
    _check_frac_bits(frac_bits, bits)
    self.n, self.t, self.session = num_participants, threshold, session
    self.frac_bits, self.bits = frac_bits, bits
    self._channel = X25519PrivateKey.generate()
    self.public_key = _raw(self._channel.public_key())
    self._auth: dict[int, bytes] = {}
    self._inbox = _Inbox(session, _SERVER)
    self.round = -1
    # Per-round state, reset by `start_round`.
    self._advertised: dict[int, bytes] = {}   # U1: v -> c_v^PK || s_v^PK || signature
    self._u2: list[int] = []
    self._masked: dict[int, np.ndarray] = {}  # U3: v -> y_v
    self._u4: list[int] = []
    self.sum_quantized: np.ndarray | None = None

  def register(self, index: int, channel_public_key: bytes) -> None:
    """Records a participant's X25519 channel key (authenticates its messages)."""
    _check_index(index, self.n)
    if not isinstance(channel_public_key, bytes) or len(channel_public_key) != _KEY_BYTES:
      raise ValueError('channel_public_key must be a 32-byte raw X25519 public key.')
    self._auth[index] = _hkdf(self._channel.exchange(
        X25519PublicKey.from_public_bytes(channel_public_key)),
        b'ssgd_optax secagg auth|' + self.session)

  def _key(self, msg: ProtocolMessage) -> bytes:
    if not isinstance(msg, ProtocolMessage):
      raise TypeError(f'expected a ProtocolMessage; got {type(msg).__name__}.')
    if msg.sender not in self._auth:
      raise SecureAggregationError(f'message from unregistered sender {msg.sender}.')
    return self._auth[msg.sender]

  def _receive(self, msgs: Iterable[ProtocolMessage], step: str, allowed: Iterable[int] | None,
               set_name: str) -> dict[int, bytes]:
    out = {}
    allowed = None if allowed is None else set(allowed)
    for m in msgs:
      self._inbox.check(m, self._key(m), round_=self.round, step=step)
      if allowed is not None and m.sender not in allowed:
        raise SecureAggregationError(f'{step!r} message from participant {m.sender}, who is '
                                     f'not in {set_name}.')
      out[m.sender] = m.payload
    if len(out) < self.t:
      raise DropoutError(f'only {len(out)} participants sent {step!r} messages; threshold is '
                         f'{self.t}.')
    return out

  def _send(self, step: str, to: int, payload: bytes) -> ProtocolMessage:
    return _authenticate(self._auth[to], self.session, self.round, step, _SERVER, to, payload)

  def start_round(self, round_: int) -> None:
    """Begins round ``round_`` (must increase: old rounds are replays)."""
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
      raise ValueError(f'round_ must be an int >= 0; got {round_!r}.')
    if round_ <= self.round:
      raise ReplayedMessageError(f'round {round_} is not after round {self.round}.')
    self.round = round_
    self._advertised, self._u2, self._masked, self._u4 = {}, [], {}, []
    self.sum_quantized = None

  def collect_keys(self, msgs: Iterable[ProtocolMessage]) -> dict[int, ProtocolMessage]:
    """Round 0 -> 1: the signed keys of ``U1``, broadcast to every member."""
    keys = self._receive(msgs, 'advertise', None, 'U1')
    for u, payload in keys.items():
      if len(payload) != _ADVERTISED_BYTES:
        raise SecureAggregationError(f'malformed advertised keys from participant {u}.')
    self._advertised = keys
    payload = _pack_blobs(keys)
    return {u: self._send('keys', u, payload) for u in sorted(keys)}

  def collect_shares(self, msgs: Iterable[ProtocolMessage]) -> dict[int, ProtocolMessage]:
    """Round 1 -> 2: forward each encrypted share to its recipient in ``U2``."""
    shares = self._receive(msgs, 'share', self._advertised, 'U1')
    self._u2 = sorted(shares)
    boxes: dict[int, dict[int, bytes]] = {v: {} for v in self._u2}
    for u, payload in shares.items():
      for v, blob in _unpack_blobs(payload).items():
        if v in boxes:
          boxes[v][u] = blob
    return {v: self._send('forward', v, _pack_blobs(b)) for v, b in boxes.items()}

  def collect_masked(self, msgs: Iterable[ProtocolMessage]) -> dict[int, ProtocolMessage]:
    """Round 2 -> 3: store the masked inputs, announce the survivor set ``U3``."""
    masked = self._receive(msgs, 'masked', self._u2, 'U2')
    dtype = _dtype(self.bits)
    sizes = {len(p) for p in masked.values()}
    if len(sizes) != 1 or next(iter(sizes)) % np.dtype(dtype).itemsize:
      raise SecureAggregationError(f'masked inputs of different or invalid byte sizes: '
                                   f'{sorted(sizes)}.')
    self._masked = {u: np.frombuffer(p, dtype=dtype) for u, p in masked.items()}
    payload = _pack_ids(self._masked)
    return {u: self._send('survivors', u, payload) for u in sorted(self._masked)}

  def collect_consistency(self, msgs: Iterable[ProtocolMessage]) -> dict[int, ProtocolMessage]:
    """Round 3 -> 4: relay the signatures of ``U3`` from ``U4`` to every member of ``U4``."""
    signatures = self._receive(msgs, 'consistency', self._masked, 'U3')
    for u, signature in signatures.items():
      if len(signature) != _SIGNATURE_BYTES:
        raise SecureAggregationError(f'malformed consistency signature from participant {u}.')
    self._u4 = sorted(signatures)
    payload = _pack_blobs(signatures)
    return {u: self._send('signatures', u, payload) for u in self._u4}

  def finish(self, msgs: Iterable[ProtocolMessage]) -> np.ndarray:
    """Round 4: reconstruct the secrets from ``U5`` and return the exact sum (float64)."""
    revealed = self._receive(msgs, 'unmask', self._u4, 'U4')
    u3 = set(self._masked)
    shares: dict[int, list[tuple[int, int]]] = {v: [] for v in self._u2}
    for u, payload in sorted(revealed.items()):
      for v, blob in _unpack_blobs(payload, _REVEAL_BYTES).items():
        if v not in shares:
          continue
        survived, share = _decode_reveal(blob)
        if survived != (v in u3):
          raise SecureAggregationError(f'participant {u} revealed the wrong secret of {v}.')
        shares[v].append((u + 1, share))
    size = next(iter(self._masked.values())).size
    total = np.zeros(size, _dtype(self.bits))
    for y in self._masked.values():
      total += y
    for v in self._u2:
      if len(shares[v]) < self.t:
        raise DropoutError(f'only {len(shares[v])} shares for participant {v}; need {self.t}.')
      secret = shamir_reconstruct(shares[v][:self.t])
      if v in u3:
        total -= prg(secret.to_bytes(_SECRET_BYTES, 'big'), size, bits=self.bits)
      else:
        s_v = X25519PrivateKey.from_private_bytes(secret.to_bytes(_SECRET_BYTES, 'big'))
        for w in sorted(u3):
          s_w_pk = self._advertised[w][_KEY_BYTES:2 * _KEY_BYTES]
          mask = prg(_pair_seed(s_v, s_w_pk, self.session, self.round, w, v), size,
                     bits=self.bits)
          # Survivor w added +mask if w < v, else -mask: undo that.
          total = total - mask if w < v else total + mask
    self.sum_quantized = total
    return dequantize(total, frac_bits=self.frac_bits, bits=self.bits)


def secure_sum(updates: Any, *, dropped: Sequence[int] = (), threshold: int | None = None,
               frac_bits: int = 16, bits: int = 32, round_: int = 0) -> np.ndarray:
  """Runs one secure-aggregation round in-process and returns the sum.

  The participants in ``dropped`` take part in the key exchange and then drop
  out before uploading (the case that needs recovery); the result is the sum
  of the others' quantised updates, exactly. Fresh identity keys and a fresh
  session are drawn for the call.

  Args:
    updates: ``(N, ...)`` float array, one update per participant, ``N >= 2``.
    dropped: participant ids that drop out after sharing their keys.
    threshold: Shamir threshold, ``N / 2 < threshold <= N`` (default
      ``ceil(2N/3)``).
    frac_bits, bits: the fixed-point encoding.
    round_: the round number.

  Returns:
    The float64 sum over the surviving participants, shape ``updates[0]``.

  Example:

  >>> import numpy as np
  >>> u = np.array([[0.5, 1.0], [0.25, -2.0], [1.0, 1.0]])
  >>> secure_sum(u, dropped=[2], threshold=2)
  array([ 0.75, -1.  ])
  """
  updates = np.asarray(updates)
  if updates.ndim < 1:
    raise ValueError(f'updates must have a leading participant axis; got shape {updates.shape}.')
  n = updates.shape[0]
  t = max(2, -(-2 * n // 3)) if threshold is None else threshold
  gone = set()
  for d in dropped:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d < n:
      raise ValueError(f'dropped must hold participant ids in [0, {n}); got {d!r}.')
    gone.add(int(d))
  session = secrets.token_bytes(16)
  server = Server(n, t, session=session, frac_bits=frac_bits, bits=bits)
  signing_keys, registry = generate_identities(n)
  clients = [Participant(i, n, t, server.public_key, signing_key=signing_keys[i],
                         registry=registry, session=session, frac_bits=frac_bits, bits=bits)
             for i in range(n)]
  for c in clients:
    server.register(c.index, c.channel_public_key)
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  surv = server.collect_masked([clients[u].masked_input(m, updates[u])
                                for u, m in fwd.items() if u not in gone])
  sigs = server.collect_consistency([clients[u].consistency_check(m) for u, m in surv.items()])
  total = server.finish([clients[u].unmask(m) for u, m in sigs.items()])
  return total.reshape(updates.shape[1:])
