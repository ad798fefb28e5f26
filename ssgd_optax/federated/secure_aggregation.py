# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Secure aggregation (Bonawitz et al., CCS 2017): the server learns only the sum.

Every participant ``u`` encodes its update ``x_u`` as integers modulo
``2^bits`` and uploads

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
**exact** sum of the survivors' encoded updates.

``q`` is either the fixed-point encoding :func:`quantize` (each entry clipped
to ``clip``), or, with ``dp=`` a
:class:`~ssgd_optax.federated.distributed_dp.DistributedDiscreteGaussianMechanism`,
its noisy encoding (L2 clip, conditional randomised rounding and the
participant's share of discrete Gaussian noise): every sum then carries
calibrated noise whatever participant sets the server chooses.

The rounds are the paper's active-adversary protocol, with its names for the
sets of participants that answered each step (``t`` = ``threshold``):

=====  ================================  =====================================
round  participant ``u`` -> server       server -> participants
=====  ================================  =====================================
0      ``advertise``: ``c_u^PK``,         ``keys``: every entry of ``U1``
       ``s_u^PK``, a commitment to
       ``b_u`` and ``u``'s Ed25519
       signature over them
1      ``share``: Shamir shares of        ``forward``: to each ``v``, the
       ``s_u^SK`` and ``b_u``, each       ciphertexts addressed to it by
       AES-GCM-encrypted to one peer      ``U2``
2      ``masked``: ``y_u``                ``survivors``: the set ``U3``
3      ``consistency``: ``u``'s           ``signatures``: those of ``U4``
       signature over ``U3``
4      ``unmask``: ``b`` shares of        (the server reconstructs from
       ``U3``, ``s^SK`` shares of         ``U5``, checks every secret and
       ``U2 \\ U3``                        the sum's range)
=====  ================================  =====================================

``U5 <= U4 <= U3 <= U2 <= U1`` and each has at least ``t`` members. A
participant checks every advertised key's signature against a registry of
long-term Ed25519 identity keys that it got out of band (the PKI), and it
unmasks only after at least ``t`` valid signatures of the very ``U3`` it was
sent. ``t > n / 2`` is required.

**Against malicious participants** the server verifies what it reconstructs:
every ``b_v`` against the commitment ``v`` signed in round 0, every ``s_v^SK``
against the advertised ``s_v^PK``. With more than ``t`` shares, wrong shares
are corrected (Reed-Solomon decoding, Berlekamp-Welch: up to ``(k - t) // 2``
of ``k``) and their senders listed in :attr:`Server.misbehaving`; otherwise
:class:`ReconstructionError`. The decoded sum must lie within what the
survivors' clipped inputs allow (``|entry| <= |U3| L``), else
:class:`SumOutOfRangeError` and no sum is returned. Malformed messages (wrong
field types or lengths, lists longer than ``n``, ids outside ``[0, n)``,
non-canonical or small-order X25519 keys) raise :class:`MalformedMessageError`
or :class:`InvalidKeyError` naming the sender before any processing.

**Across rounds and restarts** a participant given a :class:`ParticipantRecord`
(a file) contributes at most once per ``(session, round)`` and once per
global-model digest, and signs at most one survivor set per ``(session,
round)``, whatever ``Participant`` objects a restarted client creates.

Errors, all :class:`SecureAggregationError` (a ``ValueError``):
:class:`TamperedMessageError`, :class:`ReplayedMessageError` (and
:class:`RepeatedContributionError`), :class:`DropoutError`,
:class:`SignatureError`, :class:`ConsistencyError` (and
:class:`SecondSurvivorSetError`), :class:`MalformedMessageError`,
:class:`InvalidKeyError`, :class:`ReconstructionError`,
:class:`SumOutOfRangeError`, :class:`RecordCorruptedError`.

Wire format (every integer big-endian unless said; ``i64``: signed 8 bytes,
``u32``: unsigned 4 bytes; ``S``: the session id; ``r``: the round)::

  ProtocolMessage   (session: bytes, round: int, step: str, sender: int, recipient: int,
             payload: bytes, tag: 32 bytes); the server's id is -1
  tag       HMAC-SHA256(K_u, u32(len S) || S || i64(r) || u8(index of step in STEPS)
                        || i64(sender) || i64(recipient) || SHA-256(payload))
  K_u       HKDF-SHA256(X25519(channel key of u, server channel key),
                        info = "ssgd_optax secagg auth|" || S), 32 bytes
  ctx(L)    "ssgd_optax secagg " || L || "|" || u32(len S) || S || i64(r)
  advertise c_u^PK (32) || s_u^PK (32) || commit_u (32) || signature (64)
            commit_u  = SHA-256(ctx("commit") || i64(u) || b_u)
            signature = Ed25519 over ctx("advertise") || i64(u) || c_u^PK || s_u^PK || commit_u
  blobs     concatenation of i64(id) || u32(length) || bytes, by increasing id
  keys      blobs {v: advertise payload of v} for v in U1
  share     blobs {v: nonce (12) || AES-256-GCM(k_uv, plain, aad)} for v in U1 \\ {u}
            plain = i64(u) || i64(v) || share of s_u^SK (66) || share of b_u (66)
            aad   = S || i64(r) || i64(u) || i64(v)
            k_uv  = HKDF(X25519(c_u^SK, c_v^PK), info = "ssgd_optax secagg enc|" || S
                         || i64(r) || i64(min(u, v)) || i64(max(u, v)))
            Shamir shares: x-coordinate v + 1, value < PRIME, 66 bytes
  forward   blobs {u: u's ciphertext for v} for u in U2 \\ {v}
  masked    y_u as little-endian uint32 or uint64 entries
            pairwise seed s_uv = HKDF(X25519(s_u^SK, s_v^PK), info = "ssgd_optax secagg
            mask|" || S || i64(r) || i64(min) || i64(max)); u adds PRG(s_uv) if u < v
  survivors i64 ids of U3, strictly increasing
  consistency Ed25519 over ctx("consistency") || i64(u) || survivors payload (64)
  signatures blobs {v: consistency signature of v} for v in U4
  unmask    blobs {v: flag (1: share of b_v, v in U3; 0: share of s_v^SK) || share (66)}
            for every v in U2

Threat model (details in ``docs/federated.md``): against a server that
deviates arbitrarily and colludes with ``n_C`` participants, an honest
participant's update stays hidden inside the sum over a set of at least ``t``
participants as long as ``2 t > n + n_C``; the server still chooses who is
dropped (down to ``t``), so sums over overlapping sets over several rounds can
be differenced (distributed DP bounds what that reveals), a participant can
abort a round or shift the sum within the range the clip allows, and the
registry must be honest.

:func:`secure_sum` runs the whole protocol in-process; :class:`Participant`
and :class:`Server` expose the individual steps.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import hmac
import io
import json
import math
import os
import pickle
import secrets
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence, Sized
from typing import Any, NamedTuple

import numpy as np

from ssgd_optax.federated import distributed_dp as ddp

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
  'PRIME', 'STEPS', 'SecureAggregationError', 'TamperedMessageError', 'ReplayedMessageError',
  'RepeatedContributionError', 'DropoutError', 'SignatureError', 'ConsistencyError',
  'SecondSurvivorSetError', 'MalformedMessageError', 'InvalidKeyError', 'ReconstructionError',
  'SumOutOfRangeError', 'RecordCorruptedError', 'MisbehaviourWarning', 'ProtocolMessage', 'clip_limit',
  'quantize', 'dequantize', 'prg', 'shamir_split', 'shamir_reconstruct', 'shamir_decode',
  'generate_identities', 'write_identity', 'read_identity', 'write_registry', 'read_registry',
  'model_digest', 'ParticipantRecord', 'Participant', 'Server', 'secure_sum',
]

PRIME = 2 ** 521 - 1  # Mersenne prime > 2^256: field for Shamir shares of 32-byte secrets.
_SERVER = -1
STEPS = ('advertise', 'keys', 'share', 'forward', 'masked', 'survivors', 'consistency',
         'signatures', 'unmask')
_ABORTED = 'aborted'

# Wire layout (every integer big-endian).
_ID = struct.Struct('>q')                        # a participant id or a round number
_KEY_BYTES = 32                                  # raw X25519 or Ed25519 public key
_SECRET_BYTES = 32                               # b_u, s_u^SK and every PRG seed
_COMMIT_BYTES = 32                               # SHA-256 commitment to b_u
_SIGNATURE_BYTES = 64                            # Ed25519 signature
_TAG_BYTES = 32                                  # HMAC-SHA256
_MAX_SESSION_BYTES = 256
_FIELD_BYTES = (PRIME.bit_length() + 7) // 8     # 66: one element of GF(PRIME), a Shamir share
_ADVERTISED_BYTES = 2 * _KEY_BYTES + _COMMIT_BYTES + _SIGNATURE_BYTES
_SHARE_HEADER = struct.Struct('>qq')             # (owner u, holder v) of an encrypted share
_SHARE_PLAIN_BYTES = _SHARE_HEADER.size + 2 * _FIELD_BYTES   # header || s share || b share
_NONCE_BYTES = 12                                # AES-GCM nonce, prefixed to the ciphertext
_CIPHERTEXT_BYTES = _NONCE_BYTES + _SHARE_PLAIN_BYTES + 16   # nonce || ciphertext || GCM tag
_REVEAL_BYTES = 1 + _FIELD_BYTES                 # flag (1: b of a survivor, 0: s^SK) || share
_BLOB_HEADER = struct.Struct('>qI')              # (participant id, length) in a blob list
_INT64 = 2 ** 63
# Curve25519 u-coordinates of the points of order 1, 2, 4 and 8 (canonical
# encodings): X25519 with any of them yields the all-zero shared secret.
_P25519 = 2 ** 255 - 19
_SMALL_ORDER_U = frozenset({
    0, 1, _P25519 - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823})


class SecureAggregationError(ValueError):
  """A protocol violation or an unrecoverable round."""


class TamperedMessageError(SecureAggregationError):
  """A message's authentication tag does not match its content."""


class ReplayedMessageError(SecureAggregationError):
  """A message from another session or round, or a second copy of one."""


class RepeatedContributionError(ReplayedMessageError):
  """A participant was asked to contribute twice to one round or to one global model.

  Raised by :class:`ParticipantRecord` (and so by :meth:`Participant.masked_input`)
  for a second contribution to the same ``(session, round)`` or on the same
  global-model digest, across ``Participant`` objects and restarts: a server
  that repeats a round could difference the two sums.
  """


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


class SecondSurvivorSetError(ConsistencyError):
  """A participant was asked to sign a second, different survivor set for one round.

  Raised by :class:`ParticipantRecord` across ``Participant`` objects and
  restarts: two signed sets for one round are what a split view needs.
  """


class MalformedMessageError(SecureAggregationError):
  """A message field of the wrong type, length or range, or a list longer than ``n``."""


class InvalidKeyError(SecureAggregationError):
  """An X25519 public key that is non-canonical or of small order (no shared secret)."""


class ReconstructionError(SecureAggregationError):
  """A reconstructed secret fails its commitment or public key and cannot be corrected."""


class SumOutOfRangeError(SecureAggregationError):
  """The decoded sum lies outside what the survivors' clipped inputs allow.

  Some participant uploaded an input outside the clip range or masked it
  wrongly; the sum is not returned and the round must not be applied.
  """


class RecordCorruptedError(SecureAggregationError):
  """A :class:`ParticipantRecord` file that cannot be read: refusing to contribute."""


class MisbehaviourWarning(UserWarning):
  """Wrong shares were corrected: the sum is right, the senders are named."""


class ProtocolMessage(NamedTuple):
  """An authenticated protocol message.

  Attributes:
    session: the aggregation session id (bytes).
    round: the round number.
    step: one of :data:`STEPS`.
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
  if isinstance(bits, bool) or bits not in (32, 64):
    raise ValueError(f'bits must be 32 or 64; got {bits!r}.')
  return np.uint32 if bits == 32 else np.uint64


def _check_frac_bits(frac_bits: int, bits: int) -> None:
  _dtype(bits)
  if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not (
      0 <= frac_bits <= bits - 2):
    raise ValueError(f'frac_bits must be an int in [0, {bits - 2}]; got {frac_bits!r}.')


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def clip_limit(num_participants: int, *, frac_bits: int = 16, bits: int = 32,
               clip: float | None = None) -> int:
  """``L``, the largest ``|entry|`` of one encoded update (integer units).

  ``L = floor(clip 2^frac_bits)``, or without ``clip`` the largest the ring
  allows, ``(2^(bits-1) - 1) // (2 n)``. In both cases ``n L`` fits in half
  the ring: a sum of ``n`` encodings never wraps around, and one guard bit is
  left so that the server can refuse a sum outside ``|U3| L`` (some input
  out of range) instead of decoding a wrapped value.

  Args:
    num_participants: ``n >= 1``.
    frac_bits: fractional bits, ``0..bits-2``.
    bits: 32 or 64.
    clip: the largest ``|entry|`` of an update in its own units (finite,
      ``> 0``), or ``None``.

  Returns:
    ``L`` (an int). Raises ``ValueError`` when ``clip`` does not fit the ring
    for ``n``, when it is below the resolution ``2^-frac_bits``, or (without
    ``clip``) when the ring leaves less than ``[-1, 1]`` for ``n``: a
    ``frac_bits`` too large for ``n``.

  Example:

  >>> clip_limit(3, frac_bits=16), clip_limit(3, frac_bits=16, clip=2.0)
  (357913941, 131072)
  """
  _check_frac_bits(frac_bits, bits)
  if not _is_int(num_participants) or num_participants < 1:
    raise ValueError(f'num_participants must be an int >= 1; got {num_participants!r}.')
  n = int(num_participants)
  room = (2 ** (bits - 1) - 1) // (2 * n)
  # The largest frac_bits that still holds +-1.0 for this n (for the messages).
  fits = max(0, room.bit_length() - 1)
  if clip is None:
    if room < 2 ** frac_bits:
      raise ValueError(
          f'frac_bits={frac_bits} is too large for num_participants={n} in a {bits}-bit '
          f'ring: each update gets +-{room / 2 ** frac_bits:.4g}, less than +-1.0, so values '
          f'would be clipped. Use frac_bits <= {fits}, bits=64, or an explicit clip=.')
    return room
  if isinstance(clip, bool) or not isinstance(clip, (int, float, np.integer, np.floating)):
    raise TypeError(f'clip must be a real number or None; got {type(clip).__name__}.')
  c = float(clip)
  if not math.isfinite(c) or c <= 0:
    raise ValueError(f'clip must be a finite number > 0; got {clip!r}.')
  limit = math.floor(c * 2.0 ** frac_bits)  # exact: scaling by a power of two
  if limit < 1:
    raise ValueError(f'clip={clip!r} is below the resolution 2^-{frac_bits} of frac_bits='
                     f'{frac_bits}.')
  if limit > room:
    raise ValueError(
        f'clip={clip!r} at frac_bits={frac_bits} needs {limit} per update, but a {bits}-bit '
        f'ring holds {room} per update for num_participants={n} (with one guard bit): lower '
        f'clip or frac_bits, or use bits=64.')
  return limit


def _validated_update(x: Any) -> np.ndarray:
  """A float64 copy of ``x``; ``None``, non-real, NaN and infinite values raise."""
  if x is None:
    raise TypeError('update is None; pass the update as a real array.')
  a = np.asarray(x)
  if np.issubdtype(a.dtype, np.complexfloating):
    raise TypeError(f'update is complex ({a.dtype}); secure aggregation sums real values.')
  if a.dtype == object or not (np.issubdtype(a.dtype, np.floating)
                               or np.issubdtype(a.dtype, np.integer)):
    raise TypeError(f'update must be a real (float or int) array; got dtype {a.dtype}.')
  a = a.astype(np.float64)
  if np.isnan(a).any():
    first = int(np.flatnonzero(np.isnan(a.ravel()))[0])
    raise ValueError(f'the update contains NaN (first at flat entry {first}); refusing to '
                     'encode it.')
  if np.isinf(a).any():
    first = int(np.flatnonzero(np.isinf(a.ravel()))[0])
    raise ValueError(f'the update contains +-Inf (first at flat entry {first}); refusing to '
                     'encode it (clipping it would add a full clip range silently).')
  return a


def _encode(x: Any, frac_bits: int, bits: int, limit: int) -> np.ndarray:
  a = _validated_update(x)
  scaled = np.rint(a * 2.0 ** frac_bits)
  # limit < 2^62, so clipping in float64 first keeps the int64 conversion in
  # range; the second clip is exact in integers (float64 cannot represent L
  # near 2^62, and a value rounded up past L would let n of them wrap).
  q = np.clip(np.clip(scaled, -2.0 ** 62, 2.0 ** 62).astype(np.int64), -limit, limit)
  # int64 -> uint keeps the low bits: two's complement modulo 2^bits.
  return q.astype(_dtype(bits))


def quantize(x: Any, *, frac_bits: int = 16, bits: int = 32, num_participants: int = 1,
             clip: float | None = None) -> np.ndarray:
  """Fixed-point encoding of ``x`` in ``Z_{2^bits}`` (two's complement).

  ``q = clip(round(x * 2^frac_bits), -L, L) mod 2^bits`` with ``L =``
  :func:`clip_limit` ``(num_participants, frac_bits=, bits=, clip=)``, so a
  sum over up to ``num_participants`` values never wraps around (``|sum| <=
  n L < 2^(bits-2)``). Finite values beyond ``L / 2^frac_bits`` are clipped;
  ``None`` and complex values raise ``TypeError``, NaN and ``+-Inf``
  ``ValueError``.

  Args:
    x: a real array.
    frac_bits: fractional bits (resolution ``2^-frac_bits``), ``0..bits-2``.
    bits: 32 or 64, the modulus ``2^bits``.
    num_participants: how many such values will be summed.
    clip: the largest ``|entry|``, or ``None`` for the ring's limit.

  Returns:
    A ``uint32`` or ``uint64`` array of ``x``'s shape.

  Example:

  >>> dequantize(quantize([0.5, -1.25]) + quantize([1.0, 0.25]))
  array([ 1.5, -1. ])
  """
  limit = clip_limit(num_participants, frac_bits=frac_bits, bits=bits, clip=clip)
  return _encode(x, frac_bits, bits, limit)


def dequantize(q: Any, *, frac_bits: int = 16, bits: int = 32) -> np.ndarray:
  """Decodes a (summed) fixed-point array back to float64.

  float64 holds integers exactly up to ``2^53``: for ``bits=64`` sums beyond
  that are rounded (:attr:`Server.sum_signed` is the exact integer sum).

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
  since seeds are derived per session, round and pair), read little-endian.

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
  if not _is_int(size) or size < 0:
    raise ValueError(f'size must be an int >= 0; got {size!r}.')
  enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
  stream = enc.update(bytes(int(size) * bits // 8)) + enc.finalize()
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
  if not _is_int(num_shares) or not _is_int(threshold) or not 1 <= threshold <= num_shares:
    raise ValueError(f'threshold must be in [1, num_shares={num_shares}]; got {threshold}.')
  if not _is_int(secret) or not 0 <= secret < PRIME:
    raise ValueError('secret must be an int in [0, PRIME).')
  coeffs = [int(secret)] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
  return [(x, _evaluate(coeffs, x)) for x in range(1, num_shares + 1)]


def _evaluate(coeffs: Sequence[int], x: int) -> int:
  acc = 0
  for c in reversed(coeffs):
    acc = (acc * x + c) % PRIME
  return acc


def _check_shares(shares: Any) -> list[tuple[int, int]]:
  out = []
  for s in shares:
    if (not isinstance(s, tuple) or len(s) != 2 or not _is_int(s[0]) or not _is_int(s[1])
        or not 0 < s[0] < PRIME or not 0 <= s[1] < PRIME):
      raise SecureAggregationError('a Shamir share must be a pair (x, y) of ints with '
                                   '0 < x < PRIME and 0 <= y < PRIME.')
    out.append((int(s[0]), int(s[1])))
  xs = [x for x, _ in out]
  if len(set(xs)) != len(xs):
    raise SecureAggregationError('duplicate Shamir share indices.')
  return out


def shamir_reconstruct(shares: Sequence[tuple[int, int]]) -> int:
  """Lagrange interpolation at 0 of ``shares`` (at least the threshold, all correct)."""
  shares = _check_shares(shares)
  xs = [x for x, _ in shares]
  secret = 0
  for j, (xj, yj) in enumerate(shares):
    num, den = 1, 1
    for m, xm in enumerate(xs):
      if m != j:
        num = num * (-xm) % PRIME
        den = den * (xj - xm) % PRIME
    secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
  return secret


def _solve_mod(rows: list[list[int]], width: int) -> list[int] | None:
  """A solution of the augmented system ``rows`` (``width`` unknowns) over GF(PRIME)."""
  pivots, r = [], 0
  for c in range(width):
    piv = next((i for i in range(r, len(rows)) if rows[i][c]), None)
    if piv is None:
      continue
    rows[r], rows[piv] = rows[piv], rows[r]
    inv = pow(rows[r][c], -1, PRIME)
    rows[r] = [v * inv % PRIME for v in rows[r]]
    for i in range(len(rows)):
      f = rows[i][c]
      if i != r and f:
        rows[i] = [(a - f * b) % PRIME for a, b in zip(rows[i], rows[r])]
    pivots.append(c)
    r += 1
  if any(rows[i][width] for i in range(r, len(rows))):
    return None
  x = [0] * width
  for i, c in enumerate(pivots):
    x[c] = rows[i][width]
  return x


def shamir_decode(shares: Sequence[tuple[int, int]], threshold: int
                  ) -> tuple[int, list[int]]:
  """Reconstruction that corrects wrong shares (Reed-Solomon, Berlekamp-Welch).

  With ``k`` shares of a degree ``threshold - 1`` polynomial, up to ``e =
  (k - threshold) // 2`` wrong shares are corrected: the error locator ``E``
  (monic, degree ``e``) and ``Q = P E`` solve ``Q(x_i) = y_i E(x_i)``.

  Args:
    shares: ``(x, y)`` pairs, ``k >= threshold``.
    threshold: ``t``.

  Returns:
    ``(secret, wrong)``: ``P(0)`` and the x-coordinates whose ``y`` disagree
    with ``P``. Raises :class:`ReconstructionError` when no polynomial of
    degree below ``t`` agrees with all but ``e`` shares.

  Example:

  >>> shares = shamir_split(42, 7, 3)
  >>> shares[1] = (2, 5)
  >>> shamir_decode(shares, 3)
  (42, [2])
  """
  shares = _check_shares(shares)
  if not _is_int(threshold) or not 1 <= threshold <= len(shares):
    raise ValueError(f'threshold must be an int in [1, {len(shares)}] (the number of '
                     f'shares); got {threshold!r}.')
  t, k = int(threshold), len(shares)
  e = (k - t) // 2
  # Unknowns: a_0..a_{e-1} of E (x^e + ...), then b_0..b_{e+t-1} of Q.
  width = 2 * e + t
  rows = []
  for x, y in shares:
    powers = [pow(x, j, PRIME) for j in range(e + t)]
    rows.append([(-y * powers[j]) % PRIME for j in range(e)] + powers
                + [y * pow(x, e, PRIME) % PRIME])
  sol = _solve_mod(rows, width)
  if sol is None:
    raise ReconstructionError(f'the {k} shares are not within {e} errors of one polynomial of '
                              f'degree {t - 1}.')
  locator = sol[:e] + [1]
  q = sol[e:]
  # Q / E by long division; a remainder means too many errors.
  quotient = [0] * (len(q) - e)
  rem = q[:]
  for i in range(len(quotient) - 1, -1, -1):
    coef = rem[i + e]
    quotient[i] = coef
    for j in range(e + 1):
      rem[i + j] = (rem[i + j] - coef * locator[j]) % PRIME
  if any(rem):
    raise ReconstructionError(f'the {k} shares are not within {e} errors of one polynomial of '
                              f'degree {t - 1}.')
  wrong = [x for x, y in shares if _evaluate(quotient, x) != y]
  if len(wrong) > e:
    raise ReconstructionError(f'{len(wrong)} of the {k} shares disagree with the decoded '
                              f'polynomial; at most {e} can be corrected.')
  return quotient[0], wrong


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
  if not _is_int(num_participants) or num_participants < 1:
    raise ValueError(f'num_participants must be an int >= 1; got {num_participants!r}.')
  keys = [Ed25519PrivateKey.generate() for _ in range(num_participants)]
  return keys, {i: _raw(k.public_key()) for i, k in enumerate(keys)}


def write_identity(path: str | os.PathLike) -> bytes:
  """Creates a node's long-term Ed25519 identity key in a new file (mode 0600).

  Run once on the node itself: the private key never leaves it. The returned
  public key is what goes into the registry (see :func:`write_registry`),
  distributed to every participant out of band.

  Args:
    path: a new file (an existing one is never overwritten).

  Returns:
    The raw 32-byte public key.

  Example:

  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), 'node.key')
  >>> public = write_identity(path)
  >>> read_identity(path).public_key().public_bytes_raw() == public
  True
  """
  _require_crypto()
  if not isinstance(path, (str, os.PathLike)):
    raise TypeError(f'path must be a str or os.PathLike; got {type(path).__name__}.')
  key = Ed25519PrivateKey.generate()
  pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
  try:
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  except FileExistsError:
    raise ValueError(f'path: {os.fspath(path)!r} exists; an identity key is never '
                     'overwritten.') from None
  with os.fdopen(fd, 'wb') as f:
    f.write(pem)
  return _raw(key.public_key())


def read_identity(path: str | os.PathLike) -> Any:
  """A node's Ed25519 identity key from :func:`write_identity`'s file.

  Raises ``ValueError`` naming the file when it is not an unencrypted PKCS8
  Ed25519 private key, or when others than its owner can read it.
  """
  _require_crypto()
  if not isinstance(path, (str, os.PathLike)):
    raise TypeError(f'path must be a str or os.PathLike; got {type(path).__name__}.')
  path = os.fspath(path)
  if os.name == 'posix' and os.stat(path).st_mode & 0o077:
    raise ValueError(f'{path!r}: an identity key must be readable by its owner only '
                     '(chmod 600).')
  with open(path, 'rb') as f:
    data = f.read()
  try:
    key = serialization.load_pem_private_key(data, password=None)
  except (ValueError, TypeError):
    key = None
  if not isinstance(key, Ed25519PrivateKey):
    raise ValueError(f'{path!r} is not an unencrypted PEM (PKCS8) Ed25519 private key.')
  return key


def write_registry(path: str | os.PathLike, registry: Mapping[int, bytes]) -> None:
  """Writes the registry ``{id: raw Ed25519 public key}`` as JSON (``{"0": "hex", ...}``).

  The registry is the PKI of the protocol: distribute the file out of band,
  from a source the server does not control.
  """
  _require_crypto()
  if not isinstance(registry, Mapping):
    raise TypeError(f'registry must be a mapping {{id: key}}; got {type(registry).__name__}.')
  ids = sorted(registry)
  _check_registry(registry, len(ids))
  with open(os.fspath(path), 'w') as f:
    json.dump({str(i): registry[i].hex() for i in ids}, f, indent=1, sort_keys=True)


def read_registry(path: str | os.PathLike, num_participants: int) -> dict[int, bytes]:
  """The registry written by :func:`write_registry`, checked for ``num_participants``.

  Raises ``ValueError`` naming the file and the offending id: a missing or
  extra id, a key that is not 32 bytes of hex, two ids with one key.

  Example:

  >>> import os, tempfile
  >>> keys, registry = generate_identities(3)
  >>> path = os.path.join(tempfile.mkdtemp(), 'registry.json')
  >>> write_registry(path, registry)
  >>> read_registry(path, 3) == registry
  True
  """
  _require_crypto()
  path = os.fspath(path)
  try:
    with open(path) as f:
      raw = json.load(f)
  except ValueError as e:
    raise ValueError(f'{path!r} is not a JSON registry: {e}') from None
  if not isinstance(raw, dict):
    raise ValueError(f'{path!r}: the registry must be a JSON object {{"id": "hex key"}}.')
  out = {}
  for k, v in raw.items():
    try:
      i, key = int(k), bytes.fromhex(v)
    except (TypeError, ValueError):
      raise ValueError(f'{path!r}: the entry {_short(k)} is not an id and a hex key.') from None
    if str(i) != k or len(key) != _KEY_BYTES:
      raise ValueError(f'{path!r}: the entry of id {_short(k)} must be a decimal id and a '
                       '32-byte key.')
    out[i] = key
  try:
    _check_registry(out, num_participants)
  except ValueError as e:
    raise ValueError(f'{path!r}: {e}') from None
  return out


def model_digest(params: Any) -> bytes:
  """SHA-256 of a model (any pytree of arrays): its structure, dtypes, shapes and bytes.

  What a participant records with :class:`ParticipantRecord` to refuse a
  second contribution on the same global model.

  Args:
    params: a pytree of arrays (or one array).

  Returns:
    32 bytes.

  Example:

  >>> import numpy as np
  >>> model_digest({'w': np.zeros(3)}) == model_digest({'w': np.zeros(3)})
  True
  >>> model_digest({'w': np.zeros(3)}) == model_digest({'w': np.zeros(3, np.float32)})
  False
  """
  import jax
  leaves, treedef = jax.tree_util.tree_flatten(params)
  h = hashlib.sha256(b'ssgd_optax model digest|' + str(treedef).encode())
  for leaf in leaves:
    a = np.ascontiguousarray(np.asarray(leaf))
    if a.dtype == object:
      raise TypeError('model_digest: every leaf must be a numeric array; got an object array.')
    h.update(a.dtype.str.encode() + struct.pack('>I', a.ndim)
             + b''.join(_ID.pack(s) for s in a.shape))
    h.update(a.tobytes())
  return h.digest()


def _hkdf(material: bytes, info: bytes, length: int = 32) -> bytes:
  return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(material)


def _raw(public_key: Any) -> bytes:
  return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _priv_raw(private_key: X25519PrivateKey) -> bytes:
  return private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())


def _x25519_problem(key: Any) -> str | None:
  """Why ``key`` is not a usable raw X25519 public key, or ``None``."""
  if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
    return 'is not 32 bytes'
  u = int.from_bytes(key, 'little')
  if u >= _P25519:
    return 'is not canonically encoded (u >= 2^255 - 19)'
  if u in _SMALL_ORDER_U:
    return 'is a point of small order (every shared secret would be zero)'
  return None


def _exchange(private_key: Any, public: bytes, who: str) -> bytes:
  try:
    return private_key.exchange(X25519PublicKey.from_public_bytes(public))
  except ValueError:
    raise InvalidKeyError(f'the X25519 public key of {who} gives no shared secret '
                          '(small order).') from None


def _mac_input(session, rnd, step, sender, recipient, payload) -> bytes:
  head = struct.pack('>I', len(session)) + session + struct.pack(
      '>qBqq', rnd, STEPS.index(step), sender, recipient)
  return head + hashlib.sha256(payload).digest()


def _authenticate(key: bytes, session, rnd, step, sender, recipient, payload) -> ProtocolMessage:
  tag = hmac.new(key, _mac_input(session, rnd, step, sender, recipient, payload),
                 hashlib.sha256).digest()
  return ProtocolMessage(session, rnd, step, sender, recipient, payload, tag)


def _context(label: bytes, session: bytes, round_: int) -> bytes:
  return (b'ssgd_optax secagg ' + label + b'|' + struct.pack('>I', len(session)) + session
          + _ID.pack(round_))


def _commitment(session: bytes, round_: int, u: int, seed: bytes) -> bytes:
  """``u``'s binding commitment to its self-mask seed ``b_u`` (hiding: ``b_u`` is random)."""
  return hashlib.sha256(_context(b'commit', session, round_) + _ID.pack(u) + seed).digest()


def _advertise_statement(session: bytes, round_: int, u: int, c_pk: bytes, s_pk: bytes,
                         commit: bytes) -> bytes:
  """What ``u`` signs in round 0: its keys and commitment, bound to session, round and ``u``."""
  return _context(b'advertise', session, round_) + _ID.pack(u) + c_pk + s_pk + commit


def _consistency_statement(session: bytes, round_: int, u: int, u3: Iterable[int]) -> bytes:
  """What ``u`` signs in round 3: the survivor set ``U3`` it was sent."""
  return _context(b'consistency', session, round_) + _ID.pack(u) + _pack_ids(u3)


def _some(ids: Iterable[int], k: int = 3) -> str:
  """At most ``k`` ids, then a count: error messages never embed whole lists."""
  ids = sorted(ids)
  more = f' and {len(ids) - k} more' if len(ids) > k else ''
  return ', '.join(str(i) for i in ids[:k]) + more


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + '...'


def _check_fields(msg: Any, n: int) -> None:
  """Types, lengths and ranges of every field, before any of them is used."""
  if not isinstance(msg, ProtocolMessage):
    raise MalformedMessageError(f'expected a secure-aggregation ProtocolMessage; got '
                                f'{type(msg).__name__}.')
  if not _is_int(msg.sender) or not -1 <= msg.sender < n:
    raise MalformedMessageError(f'a message has an invalid sender field {_short(msg.sender)} '
                                f'(an int in [-1, {n}) is expected).')
  who = 'the server' if msg.sender == _SERVER else f'participant {msg.sender}'
  problems = []
  if not isinstance(msg.session, bytes) or not 1 <= len(msg.session) <= _MAX_SESSION_BYTES:
    problems.append(f'session must be 1 to {_MAX_SESSION_BYTES} bytes')
  if not _is_int(msg.round) or not 0 <= msg.round < _INT64:
    problems.append(f'round must be an int in [0, 2^63), got {_short(msg.round)}')
  if not isinstance(msg.step, str) or msg.step not in STEPS:
    problems.append(f'step must be one of STEPS, got {_short(msg.step)}')
  if not _is_int(msg.recipient) or not -1 <= msg.recipient < n:
    problems.append(f'recipient must be an int in [-1, {n}), got {_short(msg.recipient)}')
  if not isinstance(msg.payload, bytes):
    problems.append(f'payload must be bytes, got {type(msg.payload).__name__}')
  if not isinstance(msg.tag, bytes) or len(msg.tag) != _TAG_BYTES:
    problems.append(f'tag must be {_TAG_BYTES} bytes')
  if problems:
    raise MalformedMessageError(f'malformed message from {who}: ' + '; '.join(problems) + '.')


class _Inbox:
  """Verification and replay protection shared by both ends."""

  def __init__(self, session: bytes, owner: int, n: int):
    self.session = session
    self.owner = owner
    self.n = n
    self.seen: set[tuple[int, str, int]] = set()

  def check(self, msg: ProtocolMessage, key: bytes, *, round_: int, step: str) -> None:
    _check_fields(msg, self.n)
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


def _unpack_ids(payload: bytes, n: int, what: str) -> frozenset[int]:
  """A strictly increasing list of at most ``n`` ids in ``[0, n)``; checked before use."""
  if len(payload) % _ID.size or len(payload) > n * _ID.size:
    raise MalformedMessageError(f'{what}: {len(payload)} bytes is not a list of at most {n} '
                                f'{_ID.size}-byte ids.')
  ids = [i for (i,) in _ID.iter_unpack(payload)]
  for prev, i in zip([-1] + ids, ids):
    if not prev < i < n:
      raise MalformedMessageError(f'{what}: id {i} is out of order, repeated or outside '
                                  f'[0, {n}).')
  return frozenset(ids)


def _pack_blobs(blobs: Mapping[int, bytes]) -> bytes:
  return b''.join(_BLOB_HEADER.pack(k, len(v)) + v for k, v in sorted(blobs.items()))


def _unpack_blobs(payload: bytes, width: int, n: int, what: str,
                  max_entries: int | None = None) -> dict[int, bytes]:
  """``{id: blob}`` of at most ``max_entries`` (default ``n``) ``width``-byte blobs.

  The payload's length is checked before any entry is parsed, so a list
  longer than the participant count costs nothing.
  """
  entry = _BLOB_HEADER.size + width
  limit = n if max_entries is None else max_entries
  if len(payload) % entry:
    raise MalformedMessageError(f'{what}: {len(payload)} bytes is not a whole number of '
                                f'{entry}-byte entries.')
  if len(payload) // entry > limit:
    raise MalformedMessageError(f'{what} holds {len(payload) // entry} entries; at most '
                                f'{limit} are possible with {n} participants.')
  out = {}
  for i in range(0, len(payload), entry):
    k, size = _BLOB_HEADER.unpack_from(payload, i)
    if not 0 <= k < n:
      raise MalformedMessageError(f'{what} names id {k}, outside [0, {n}).')
    if size != width:
      raise MalformedMessageError(f'{what}: the entry of participant {k} has {size} bytes; '
                                  f'{width} are expected.')
    if k in out:
      raise MalformedMessageError(f'{what} names participant {k} twice.')
    out[k] = payload[i + _BLOB_HEADER.size:i + entry]
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


def _pair_seed(own: X25519PrivateKey, peer_public: bytes, session: bytes, round_: int,
               u: int, v: int, peer: int) -> bytes:
  """``s_uv`` from one side's private key and ``peer``'s public key."""
  lo, hi = sorted((u, v))
  return _hkdf(_exchange(own, peer_public, f'participant {peer}'),
               b'ssgd_optax secagg mask|' + session + struct.pack('>qqq', round_, lo, hi))


def _check_sizes(n: int, t: int, session: Any = b'-') -> None:
  if not isinstance(session, bytes) or not session:
    raise TypeError(f'session must be non-empty bytes; got {type(session).__name__}.')
  if len(session) > _MAX_SESSION_BYTES:
    raise ValueError(f'session must be at most {_MAX_SESSION_BYTES} bytes; got '
                     f'{len(session)}.')
  if not _is_int(n) or n < 2:
    raise ValueError(f'num_participants must be an int >= 2; got {n!r}.')
  if not _is_int(t) or not n // 2 + 1 <= t <= n:
    raise ValueError(
        f'threshold must be an int with num_participants / 2 < threshold <= num_participants, '
        f'i.e. in [{n // 2 + 1}, {n}] for num_participants={n}; got {t!r}. With '
        '2 * threshold <= num_participants a server can split the participants into two '
        'groups that each reveal a different secret of one victim.')


def _check_index(index: Any, n: int) -> None:
  if not _is_int(index) or not 0 <= index < n:
    raise ValueError(f'index must be an int in [0, {n}); got {index!r}.')


def _check_registry(registry: Any, n: int) -> dict[int, Any]:
  if not isinstance(registry, Mapping):
    raise ValueError(f'registry must map every participant id 0..{n - 1} to its raw Ed25519 '
                     f'identity public key; got {type(registry).__name__}.')
  keys = set(registry)
  if keys != set(range(n)):
    bad = keys - set(range(n))
    missing = set(range(n)) - keys
    raise ValueError(f'registry must map every participant id 0..{n - 1} to its raw Ed25519 '
                     f'identity public key; '
                     + (f'it lacks the ids {_some(missing)}' if missing else
                        f'it also names {_some(map(str, bad))}') + '.')
  out = {}
  for v, key in registry.items():
    if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
      raise ValueError(f'registry[{v}] must be a 32-byte raw Ed25519 public key.')
    out[v] = Ed25519PublicKey.from_public_bytes(key)
  owners: dict[bytes, int] = {}
  for v in range(n):
    if registry[v] in owners:
      raise ValueError(f'registry: participants {owners[registry[v]]} and {v} share one '
                       'identity key.')
    owners[registry[v]] = v
  return out


def _resolve_encoding(n: int, t: int, frac_bits: int, bits: int, clip: Any,
                      dp: Any) -> int:
  """The per-participant entry bound ``L`` (integer units), all arguments checked."""
  _check_frac_bits(frac_bits, bits)
  if dp is None:
    return clip_limit(n, frac_bits=frac_bits, bits=bits, clip=clip)
  if not isinstance(dp, ddp.DistributedDiscreteGaussianMechanism):
    raise TypeError('dp must be a DistributedDiscreteGaussianMechanism (distributed_dp.'
                    f'distributed_discrete_gaussian) or None; got {type(dp).__name__}.')
  if clip is not None:
    raise ValueError('pass clip= or dp=, not both: the mechanism clips (its l2_clip).')
  dp.validate()
  for name, mine, theirs in (('num_participants', n, dp.num_participants),
                             ('frac_bits', frac_bits, dp.frac_bits), ('bits', bits, dp.bits)):
    if mine != theirs:
      raise ValueError(f'dp.{name}={theirs} differs from the protocol\'s {name}={mine}.')
  if dp.min_noise_shares > t:
    raise ValueError(f'dp.min_noise_shares={dp.min_noise_shares} exceeds threshold={t}: the '
                     'server may decode a sum over only threshold survivors.')
  return dp.entry_bound


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
# The participant's persistent record.


class ParticipantRecord:
  """A participant's persistent record: what it contributed to, which survivor sets it signed.

  A file of JSON lines, appended under an exclusive ``flock`` and ``fsync``-ed
  before the call returns (so before the contribution or signature leaves the
  participant). It refuses

  * a second contribution to one ``(session, round)``, and any contribution on
    a global-model digest already contributed to (:class:`RepeatedContributionError`):
    a server that repeats a round with the same model, then drops a victim,
    would otherwise difference the two sums;
  * a second, different survivor set for one ``(session, round)``
    (:class:`SecondSurvivorSetError`); the same set again is allowed (the
    Ed25519 signature is the same).

  These hold across ``Participant`` objects and process restarts: give every
  ``Participant`` of one client the same path. A malformed line raises
  :class:`RecordCorruptedError` (nothing is contributed); an incomplete last
  line (a crash during the append, before anything was sent) is dropped.
  The record only holds digests and round numbers, never an update.

  Args:
    path: the file (created on first use; its directory must exist).

  Example:

  >>> import os, tempfile
  >>> record = ParticipantRecord(os.path.join(tempfile.mkdtemp(), 'secagg.jsonl'))
  >>> record.contribute(b'session', 0, bytes(32))
  >>> record.num_contributions()
  1
  """

  def __init__(self, path: str | os.PathLike):
    if not isinstance(path, (str, os.PathLike)):
      raise TypeError(f'path must be a str or os.PathLike; got {type(path).__name__}.')
    self.path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(self.path))
    if not os.path.isdir(folder):
      raise ValueError(f'path: the folder {folder!r} does not exist.')

  def __repr__(self) -> str:
    return f'ParticipantRecord({self.path!r})'

  @contextlib.contextmanager
  def _locked(self):
    import fcntl
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      with os.fdopen(os.dup(fd), 'r+b') as f:
        data = f.read()
        if data and not data.endswith(b'\n'):
          # An append interrupted before its fsync returned: nothing was sent.
          f.truncate(data.rfind(b'\n') + 1)
          data = data[:data.rfind(b'\n') + 1]
        entries = [self._parse(line, i + 1) for i, line in enumerate(data.splitlines())]
        appended: list[dict] = []
        yield entries, appended
        if appended:
          f.seek(0, os.SEEK_END)
          f.write(b''.join(json.dumps(e, sort_keys=True).encode() + b'\n' for e in appended))
          f.flush()
          os.fsync(f.fileno())
          if not data:
            dirfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
              os.fsync(dirfd)
            finally:
              os.close(dirfd)
    finally:
      os.close(fd)

  def _parse(self, line: bytes, number: int) -> dict:
    try:
      e = json.loads(line)
      ok = (isinstance(e, dict) and e.get('kind') in ('contribution', 'survivors')
            and isinstance(e.get('session'), str) and _is_int(e.get('round'))
            and isinstance(e.get('model' if e['kind'] == 'contribution' else 'set'), str))
    except (ValueError, TypeError, KeyError):
      ok = False
    if not ok:
      raise RecordCorruptedError(f'{self.path}, line {number}: not a record entry; refusing to '
                                 'contribute until the file is repaired.')
    return e

  @staticmethod
  def _key(session: Any, round_: Any, digest: Any, name: str) -> tuple[str, int, str]:
    if not isinstance(session, bytes) or not session:
      raise TypeError(f'session must be non-empty bytes; got {type(session).__name__}.')
    if not _is_int(round_) or round_ < 0:
      raise ValueError(f'round_ must be an int >= 0; got {_short(round_)}.')
    if not isinstance(digest, bytes) or len(digest) != 32:
      raise TypeError(f'{name} must be 32 bytes (e.g. model_digest(params)); got '
                      f'{type(digest).__name__}'
                      + (f' of length {len(digest)}' if isinstance(digest, bytes) else '') + '.')
    return session.hex(), int(round_), digest.hex()

  @staticmethod
  def _conflict(entries: list[dict], session: str, round_: int, model: str) -> str | None:
    for e in entries:
      if e['kind'] != 'contribution':
        continue
      if e['session'] == session and e['round'] == round_:
        return (f'this participant already contributed to session {session[:8]}.. round '
                f'{round_}')
      if e['model'] == model:
        return (f'this participant already contributed on this global model (digest '
                f'{model[:8]}..), in session {e["session"][:8]}.. round {e["round"]}')
    return None

  def check_contribution(self, session: bytes, round_: int, model_digest: bytes) -> None:
    """Raises :class:`RepeatedContributionError` if :meth:`contribute` would; records nothing."""
    key = self._key(session, round_, model_digest, 'model_digest')
    with self._locked() as (entries, _):
      why = self._conflict(entries, *key)
    if why:
      raise RepeatedContributionError(why + ': refusing a second contribution.')

  def contribute(self, session: bytes, round_: int, model_digest: bytes) -> None:
    """Records a contribution, or raises :class:`RepeatedContributionError`."""
    session_hex, r, model = self._key(session, round_, model_digest, 'model_digest')
    with self._locked() as (entries, appended):
      why = self._conflict(entries, session_hex, r, model)
      if why is None:
        appended.append({'kind': 'contribution', 'session': session_hex, 'round': r,
                         'model': model})
    if why:
      raise RepeatedContributionError(why + ': refusing a second contribution (a repeated round '
                                      'lets the server difference the sums).')

  def sign_survivors(self, session: bytes, round_: int, survivors_digest: bytes) -> None:
    """Records the survivor set signed in a round, or raises :class:`SecondSurvivorSetError`."""
    session_hex, r, digest = self._key(session, round_, survivors_digest, 'survivors_digest')
    with self._locked() as (entries, appended):
      signed = [e for e in entries if e['kind'] == 'survivors' and e['session'] == session_hex
                and e['round'] == r]
      if not signed:
        appended.append({'kind': 'survivors', 'session': session_hex, 'round': r,
                         'set': digest})
    if signed and signed[0]['set'] != digest:
      raise SecondSurvivorSetError(
          f'this participant already signed another survivor set in session '
          f'{session_hex[:8]}.. round {r}: refusing to sign a second one (a split view).')

  def num_contributions(self) -> int:
    """How many contributions are recorded (the rounds to compose for its privacy)."""
    with self._locked() as (entries, _):
      return sum(e['kind'] == 'contribution' for e in entries)


# ---------------------------------------------------------------------------
# Parties.


class _KeyPickler(pickle.Pickler):
  """Pickles the cryptography key objects (not picklable themselves) as their raw bytes."""

  def reducer_override(self, obj):
    for key_cls in (X25519PrivateKey, Ed25519PrivateKey):
      if isinstance(obj, key_cls):
        return key_cls.from_private_bytes, (obj.private_bytes_raw(),)
    for key_cls in (X25519PublicKey, Ed25519PublicKey):
      if isinstance(obj, key_cls):
        return key_cls.from_public_bytes, (obj.public_bytes_raw(),)
    return NotImplemented


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
    clip: the largest ``|entry|`` of an update (see :func:`clip_limit`); the
      server must use the same. ``None``: the ring's limit.
    dp: a :class:`~ssgd_optax.federated.distributed_dp.DistributedDiscreteGaussianMechanism`
      to add this participant's noise share (the server must use the same),
      or ``None``.
    record: a :class:`ParticipantRecord` shared by every ``Participant`` this
      client creates (restarts included); then :meth:`masked_input` needs
      ``model_digest``. Without it the protections hold per object only.

  Attributes:
    channel_public_key: the raw X25519 key to :meth:`Server.register`.
  """

  def __init__(self, index: int, num_participants: int, threshold: int,
               server_public_key: bytes, *, signing_key: Any, registry: Mapping[int, bytes],
               session: bytes, frac_bits: int = 16, bits: int = 32, clip: float | None = None,
               dp: Any = None, record: ParticipantRecord | None = None):
    _require_crypto()
    _check_sizes(num_participants, threshold, session)
    _check_index(index, num_participants)
    self._limit = _resolve_encoding(num_participants, threshold, frac_bits, bits, clip, dp)
    if not isinstance(signing_key, Ed25519PrivateKey):
      raise TypeError(f'signing_key must be an Ed25519PrivateKey; got '
                      f'{type(signing_key).__name__}.')
    self._registry = _check_registry(registry, num_participants)
    if _raw(signing_key.public_key()) != registry[index]:
      raise ValueError(f'registry[{index}] is not the public key of signing_key.')
    problem = _x25519_problem(server_public_key)
    if problem:
      raise ValueError(f'server_public_key {problem}: a raw X25519 public key is expected.')
    if record is not None and not isinstance(record, ParticipantRecord):
      raise TypeError(f'record must be a ParticipantRecord or None; got {type(record).__name__}.')
    self.index, self.n, self.t = index, num_participants, threshold
    self.session, self.frac_bits, self.bits = session, frac_bits, bits
    self.clip, self.dp, self.record = clip, dp, record
    self._signing_key = signing_key
    channel = X25519PrivateKey.generate()
    self.channel_public_key = _raw(channel.public_key())
    self._auth_key = _hkdf(_exchange(channel, server_public_key, 'the server'),
                           b'ssgd_optax secagg auth|' + session)
    self._inbox = _Inbox(session, index, num_participants)
    self.round = -1
    self._step = _ABORTED  # the last completed step of the round
    self._models: set[bytes] = set()   # model digests contributed to (this object)
    # Per-round state, reset by `advertise`; the names are the paper's.
    self._c_sk: Any = None         # encryption key c_u^SK
    self._s_sk: Any = None         # masking key s_u^SK
    self._b = b''                  # self-mask seed b_u
    self._entry = b''              # this participant's advertised keys and commitment
    self._c_pk: dict[int, bytes] = {}    # c_v^PK for v in U1
    self._s_pk: dict[int, bytes] = {}    # s_v^PK for v in U1
    self._own_shares = (0, 0)      # this participant's shares of its own s_u^SK and b_u
    self._ciphertexts: dict[int, bytes] = {}   # e_{v,u} for v in U2 \ {u}
    self._u2: frozenset[int] = frozenset()
    self._u3: frozenset[int] = frozenset()

  def to_bytes(self) -> bytes:
    """This participant's whole state, its key objects as raw bytes, for the node's own storage.

    Between protocol steps the state holds the participant's secrets: it
    belongs on the node (a Flower ``Context.state``, a file only the node
    reads), never in a message. :meth:`from_bytes` restores it.
    """
    buf = io.BytesIO()
    _KeyPickler(buf).dump(self)
    return buf.getvalue()

  @classmethod
  def from_bytes(cls, data: bytes) -> 'Participant':
    """The participant :meth:`to_bytes` stored (``TypeError`` for anything else)."""
    if not isinstance(data, (bytes, bytearray)):
      raise TypeError(f'data must be bytes from Participant.to_bytes; got {type(data).__name__}.')
    part = pickle.loads(bytes(data))
    if not isinstance(part, cls):
      raise TypeError(f'data holds a {type(part).__name__}, not a {cls.__name__}.')
    return part

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
    """Round 0: fresh encryption and masking keys and a commitment to ``b_u``, signed."""
    if not _is_int(round_) or not 0 <= round_ < _INT64:
      raise ValueError(f'round_ must be an int in [0, 2^63); got {_short(round_)}.')
    if round_ <= self.round:
      raise ReplayedMessageError(
          f'participant {self.index}: round {round_} is not after round {self.round}; '
          'a round runs once.')
    self.round = int(round_)
    self._c_sk = X25519PrivateKey.generate()
    self._s_sk = X25519PrivateKey.generate()
    self._b = secrets.token_bytes(_SECRET_BYTES)
    self._c_pk, self._s_pk, self._ciphertexts = {}, {}, {}
    self._own_shares = (0, 0)
    self._u2 = self._u3 = frozenset()
    c_pk, s_pk = _raw(self._c_sk.public_key()), _raw(self._s_sk.public_key())
    commit = _commitment(self.session, self.round, self.index, self._b)
    signature = self._signing_key.sign(
        _advertise_statement(self.session, self.round, self.index, c_pk, s_pk, commit))
    self._entry = c_pk + s_pk + commit
    self._step = 'advertise'
    return self._send('advertise', self._entry + signature)

  @_protocol_step('advertise', 'share')
  def share(self, keys_msg: ProtocolMessage) -> ProtocolMessage:
    """Round 1: verify ``U1``'s keys, Shamir-share ``s_u^SK`` and ``b_u`` to each peer."""
    self._inbox.check(keys_msg, self._auth_key, round_=self.round, step='keys')
    entries = _unpack_blobs(keys_msg.payload, _ADVERTISED_BYTES, self.n, 'the key list U1')
    if len(entries) < self.t:
      raise DropoutError(f'only {len(entries)} participants advertised keys; threshold is '
                         f'{self.t}.')
    if self.index not in entries:
      raise ConsistencyError(f'participant {self.index}: the key list U1 lacks this '
                             'participant.')
    if entries[self.index][:-_SIGNATURE_BYTES] != self._entry:
      raise ConsistencyError(f'participant {self.index}: the key list U1 holds other keys '
                             'for this participant than it advertised in this round.')
    owner: dict[bytes, int] = {}
    for v, entry in sorted(entries.items()):
      c_pk, s_pk = entry[:_KEY_BYTES], entry[_KEY_BYTES:2 * _KEY_BYTES]
      commit = entry[2 * _KEY_BYTES:2 * _KEY_BYTES + _COMMIT_BYTES]
      self._verify(v, entry[-_SIGNATURE_BYTES:],
                   _advertise_statement(self.session, self.round, v, c_pk, s_pk, commit),
                   'advertised keys')
      for key in (c_pk, s_pk):
        problem = _x25519_problem(key)
        if problem:
          raise InvalidKeyError(f'participant {self.index}: an advertised key of participant '
                                f'{v} {problem}.')
        if key in owner:
          raise ConsistencyError(f'participant {self.index}: participants {owner[key]} and '
                                 f'{v} advertised the same public key.')
        owner[key] = v
      self._c_pk[v], self._s_pk[v] = c_pk, s_pk
    s_shares = shamir_split(int.from_bytes(_priv_raw(self._s_sk), 'big'), self.n, self.t)
    b_shares = shamir_split(int.from_bytes(self._b, 'big'), self.n, self.t)
    ciphertexts = {}
    for v in sorted(entries):
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
    return _hkdf(_exchange(self._c_sk, self._c_pk[v], f'participant {v}'),
                 b'ssgd_optax secagg enc|' + self.session + struct.pack('>qqq', self.round, lo, hi))

  def _aad(self, u: int, v: int) -> bytes:
    return self.session + struct.pack('>qqq', self.round, u, v)

  def _encode(self, update: Any) -> np.ndarray:
    """This participant's encoding in ``Z_{2^bits}``, flat."""
    if self.dp is not None:
      return ddp.noisy_encode(update, self.dp).astype(_dtype(self.bits))
    return _encode(update, self.frac_bits, self.bits, self._limit).ravel()

  @_protocol_step('share', 'masked')
  def masked_input(self, forward_msg: ProtocolMessage, update: Any, *,
                   model_digest: bytes | None = None) -> ProtocolMessage:
    """Round 2: keep the ciphertexts of ``U2`` for later, upload the masked update.

    Args:
      forward_msg: the server's ``forward`` message.
      update: this participant's update (a real array; with ``dp``, of
        ``dp.dimension`` entries).
      model_digest: :func:`model_digest` of the global model (and anything
        else the server sent that determines the update). Required with a
        :class:`ParticipantRecord`; a second contribution to this
        ``(session, round)`` or on this digest raises
        :class:`RepeatedContributionError` before anything is uploaded.

    Returns:
      The ``masked`` message.
    """
    self._inbox.check(forward_msg, self._auth_key, round_=self.round, step='forward')
    ciphertexts = _unpack_blobs(forward_msg.payload, _CIPHERTEXT_BYTES, self.n,
                                'the forwarded shares', max_entries=self.n - 1)
    if self.index in ciphertexts:
      raise ConsistencyError(f'participant {self.index}: the forwarded shares hold one from '
                             'this participant itself.')
    outside = set(ciphertexts) - set(self._c_pk)
    if outside:
      raise ConsistencyError(f'participant {self.index}: the share senders U2 include '
                             f'participant {min(outside)}, who is not in U1.')
    u2 = frozenset(ciphertexts) | {self.index}
    if len(u2) < self.t:
      raise DropoutError(f'only {len(u2)} participants shared keys; threshold is {self.t}.')
    x = self._encode(update)
    if model_digest is not None or self.record is not None:
      _, _, digest = ParticipantRecord._key(self.session, self.round, model_digest,
                                            'model_digest')
      if digest in self._models:
        raise RepeatedContributionError(
            f'participant {self.index}: already contributed on this global model (digest '
            f'{digest[:8]}..): refusing a second contribution.')
      if self.record is not None:
        self.record.contribute(self.session, self.round, model_digest)
      self._models.add(digest)
    self._ciphertexts, self._u2 = ciphertexts, u2
    y = x + prg(self._b, x.size, bits=self.bits)
    for v in sorted(u2 - {self.index}):
      mask = prg(_pair_seed(self._s_sk, self._s_pk[v], self.session, self.round, self.index, v,
                            v), y.size, bits=self.bits)
      y = y + mask if self.index < v else y - mask
    # Little-endian on the wire; no copy on little-endian hosts.
    return self._send('masked', y.astype(np.dtype(_dtype(self.bits)).newbyteorder('<'),
                                         copy=False).tobytes())

  @_protocol_step('masked', 'consistency')
  def consistency_check(self, survivors_msg: ProtocolMessage) -> ProtocolMessage:
    """Round 3: sign the survivor set ``U3`` the server announced to this participant."""
    self._inbox.check(survivors_msg, self._auth_key, round_=self.round, step='survivors')
    u3 = _unpack_ids(survivors_msg.payload, self.n, 'the survivor set U3')
    if len(u3) < self.t:
      raise DropoutError(f'only {len(u3)} participants uploaded; threshold is {self.t}.')
    if self.index not in u3:
      raise ConsistencyError(f'participant {self.index}: the survivor set U3 lacks this '
                             'participant, which uploaded.')
    if not u3 <= self._u2:
      raise ConsistencyError(f'participant {self.index}: the survivor set U3 names '
                             f'participant {min(u3 - self._u2)}, who is not in U2.')
    statement = _consistency_statement(self.session, self.round, self.index, u3)
    if self.record is not None:
      self.record.sign_survivors(self.session, self.round,
                                 hashlib.sha256(_pack_ids(u3)).digest())
    self._u3 = u3
    return self._send('consistency', self._signing_key.sign(statement))

  @_protocol_step('consistency', 'unmask')
  def unmask(self, signatures_msg: ProtocolMessage) -> ProtocolMessage:
    """Round 4: given ``t`` signatures of ``U3``, reveal the shares that unmask the sum.

    Shares of ``b_v`` for ``v`` in ``U3`` and of ``s_v^SK`` for ``v`` in
    ``U2 \\ U3``, never both for one ``v``. Raises :class:`SignatureError` or
    :class:`ConsistencyError` (revealing nothing) when the signatures are
    invalid, fewer than ``t``, or from outside ``U3``.
    """
    self._inbox.check(signatures_msg, self._auth_key, round_=self.round, step='signatures')
    signatures = _unpack_blobs(signatures_msg.payload, _SIGNATURE_BYTES, self.n,
                               'the consistency signatures')
    outside = set(signatures) - self._u3
    if outside:
      raise ConsistencyError(f'participant {self.index}: a signature from participant '
                             f'{min(outside)}, who is not in the survivor set U3.')
    for v, signature in sorted(signatures.items()):
      self._verify(v, signature, _consistency_statement(self.session, self.round, v, self._u3),
                   'consistency signature over U3')
    if len(signatures) < self.t:
      raise ConsistencyError(
          f'participant {self.index}: only {len(signatures)} participants signed the survivor '
          f'set U3 it was sent; {self.t} are needed. The server may be showing different '
          'survivor sets to different participants: refusing to unmask.')
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
      share = b_share if survived else s_share
      if share >= PRIME:
        raise MalformedMessageError(f'participant {self.index}: the share dealt by participant '
                                    f'{v} is not a field element.')
      out[v] = _encode_reveal(survived, share)
    return self._send('unmask', _pack_blobs(out))


class Server:
  """The aggregating server; it learns the sum of the survivors' updates only.

  Args:
    num_participants: ``n``.
    threshold: Shamir threshold ``t`` with ``n / 2 < t <= n``.
    session: the session id (bytes).
    frac_bits, bits: the fixed-point encoding (see :func:`quantize`).
    clip: as the participants' (see :func:`clip_limit`); sets the range the
      decoded sum is checked against.
    dp: as the participants' (the range is then ``|U3| (Delta_2 + B)``).

  Attributes:
    public_key: the raw X25519 channel key participants are constructed with.
    limit: ``L``, the largest ``|entry|`` of one participant's encoding.
    sum_quantized: after :meth:`finish`, the sum in ``Z_{2^bits}``.
    sum_signed: after :meth:`finish`, the exact signed integer sum
      (``int32``/``int64``; the float result rounds beyond ``2^53``).
    misbehaving: after :meth:`finish`, ``{participant: [owners]}``: whose
      shares of whose secrets were wrong and corrected.
  """

  def __init__(self, num_participants: int, threshold: int, *, session: bytes,
               frac_bits: int = 16, bits: int = 32, clip: float | None = None, dp: Any = None):
    _require_crypto()
    _check_sizes(num_participants, threshold, session)
    self.limit = _resolve_encoding(num_participants, threshold, frac_bits, bits, clip, dp)
    self.n, self.t, self.session = num_participants, threshold, session
    self.frac_bits, self.bits, self.clip, self.dp = frac_bits, bits, clip, dp
    self._channel = X25519PrivateKey.generate()
    self.public_key = _raw(self._channel.public_key())
    self._auth: dict[int, bytes] = {}
    self._inbox = _Inbox(session, _SERVER, num_participants)
    self.round = -1
    # Per-round state, reset by `start_round`.
    self._advertised: dict[int, bytes] = {}   # U1: v -> c_v^PK || s_v^PK || commit || signature
    self._u2: list[int] = []
    self._masked: dict[int, np.ndarray] = {}  # U3: v -> y_v
    self._u4: list[int] = []
    self.sum_quantized: np.ndarray | None = None
    self.sum_signed: np.ndarray | None = None
    self.misbehaving: dict[int, list[int]] = {}

  def register(self, index: int, channel_public_key: bytes) -> None:
    """Records a participant's X25519 channel key (authenticates its messages)."""
    _check_index(index, self.n)
    problem = _x25519_problem(channel_public_key)
    if problem:
      raise InvalidKeyError(f'the channel key of participant {index} {problem}.')
    self._auth[index] = _hkdf(_exchange(self._channel, channel_public_key,
                                        f'participant {index}'),
                              b'ssgd_optax secagg auth|' + self.session)

  def _receive(self, msgs: Iterable[ProtocolMessage], step: str, allowed: Iterable[int] | None,
               set_name: str) -> dict[int, bytes]:
    if isinstance(msgs, Sized) and len(msgs) > self.n:
      raise MalformedMessageError(f'{len(msgs)} {step!r} messages for {self.n} participants: '
                                  'refused before reading any.')
    out = {}
    allowed = None if allowed is None else set(allowed)
    for count, m in enumerate(msgs):
      if count >= self.n:
        raise MalformedMessageError(f'more than {self.n} {step!r} messages for {self.n} '
                                    'participants.')
      _check_fields(m, self.n)
      if m.sender not in self._auth:
        raise SecureAggregationError(f'message from unregistered sender {m.sender}.')
      self._inbox.check(m, self._auth[m.sender], round_=self.round, step=step)
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
    if not _is_int(round_) or not 0 <= round_ < _INT64:
      raise ValueError(f'round_ must be an int in [0, 2^63); got {_short(round_)}.')
    if round_ <= self.round:
      raise ReplayedMessageError(f'round {round_} is not after round {self.round}.')
    self.round = int(round_)
    self._advertised, self._u2, self._masked, self._u4 = {}, [], {}, []
    self.sum_quantized = self.sum_signed = None
    self.misbehaving = {}

  def collect_keys(self, msgs: Iterable[ProtocolMessage]) -> dict[int, ProtocolMessage]:
    """Round 0 -> 1: the signed keys of ``U1``, broadcast to every member.

    Malformed entries and invalid (non-canonical, small-order) or duplicated
    public keys are refused here, naming the sender.
    """
    keys = self._receive(msgs, 'advertise', None, 'U1')
    owner: dict[bytes, int] = {}
    for u, payload in sorted(keys.items()):
      if len(payload) != _ADVERTISED_BYTES:
        raise MalformedMessageError(f'advertised keys from participant {u}: {len(payload)} '
                                    f'bytes; {_ADVERTISED_BYTES} are expected.')
      for key in (payload[:_KEY_BYTES], payload[_KEY_BYTES:2 * _KEY_BYTES]):
        problem = _x25519_problem(key)
        if problem:
          raise InvalidKeyError(f'a public key advertised by participant {u} {problem}.')
        if key in owner:
          raise ConsistencyError(f'participants {owner[key]} and {u} advertised the same '
                                 'public key.')
        owner[key] = u
    self._advertised = keys
    payload = _pack_blobs(keys)
    return {u: self._send('keys', u, payload) for u in sorted(keys)}

  def collect_shares(self, msgs: Iterable[ProtocolMessage]) -> dict[int, ProtocolMessage]:
    """Round 1 -> 2: forward each encrypted share to its recipient in ``U2``.

    Every participant must send exactly one share to every other member of
    ``U1``; a share for anyone else, or a missing one, names the sender.
    """
    shares = self._receive(msgs, 'share', self._advertised, 'U1')
    u1 = set(self._advertised)
    boxes_of = {}
    for u, payload in sorted(shares.items()):
      boxes = _unpack_blobs(payload, _CIPHERTEXT_BYTES, self.n,
                            f'the shares of participant {u}', max_entries=self.n - 1)
      extra, missing = set(boxes) - (u1 - {u}), (u1 - {u}) - set(boxes)
      if extra:
        raise MalformedMessageError(f'participant {u} sent a share to participant '
                                    f'{min(extra)}, who is not another member of U1.')
      if missing:
        raise MalformedMessageError(f'participant {u} sent no share to participant '
                                    f'{min(missing)} of U1.')
      boxes_of[u] = boxes
    self._u2 = sorted(shares)
    forward = {v: {u: boxes_of[u][v] for u in self._u2 if u != v} for v in self._u2}
    return {v: self._send('forward', v, _pack_blobs(b)) for v, b in forward.items()}

  def collect_masked(self, msgs: Iterable[ProtocolMessage]) -> dict[int, ProtocolMessage]:
    """Round 2 -> 3: store the masked inputs, announce the survivor set ``U3``."""
    masked = self._receive(msgs, 'masked', self._u2, 'U2')
    width = np.dtype(_dtype(self.bits)).itemsize
    if self.dp is not None:
      size = self.dp.dimension * width
    else:
      size = collections.Counter(len(p) for p in masked.values()).most_common(1)[0][0]
    for u, p in sorted(masked.items()):
      if len(p) != size or not size or len(p) % width:
        raise MalformedMessageError(f'the masked input of participant {u} has {len(p)} bytes; '
                                    f'{size} (a whole number of {width}-byte entries, the '
                                    'same for all) are expected.')
    dtype = np.dtype(_dtype(self.bits)).newbyteorder('<')
    self._masked = {u: np.frombuffer(p, dtype=dtype).astype(_dtype(self.bits), copy=False)
                    for u, p in masked.items()}
    payload = _pack_ids(self._masked)
    return {u: self._send('survivors', u, payload) for u in sorted(self._masked)}

  def collect_consistency(self, msgs: Iterable[ProtocolMessage]) -> dict[int, ProtocolMessage]:
    """Round 3 -> 4: relay the signatures of ``U3`` from ``U4`` to every member of ``U4``."""
    signatures = self._receive(msgs, 'consistency', self._masked, 'U3')
    for u, signature in sorted(signatures.items()):
      if len(signature) != _SIGNATURE_BYTES:
        raise MalformedMessageError(f'the consistency signature of participant {u} has '
                                    f'{len(signature)} bytes; {_SIGNATURE_BYTES} are expected.')
    self._u4 = sorted(signatures)
    payload = _pack_blobs(signatures)
    return {u: self._send('signatures', u, payload) for u in self._u4}

  def _secret_check(self, v: int, survived: bool):
    """The test a reconstructed secret of ``v`` must pass: its commitment or public key."""
    entry = self._advertised[v]
    if survived:
      commit = entry[2 * _KEY_BYTES:2 * _KEY_BYTES + _COMMIT_BYTES]
      return lambda s: s < 2 ** 256 and hmac.compare_digest(
          _commitment(self.session, self.round, v, s.to_bytes(_SECRET_BYTES, 'big')), commit)
    s_pk = entry[_KEY_BYTES:2 * _KEY_BYTES]
    return lambda s: s < 2 ** 256 and _raw(X25519PrivateKey.from_private_bytes(
        s.to_bytes(_SECRET_BYTES, 'big')).public_key()) == s_pk

  def _reconstruct(self, v: int, survived: bool, shares: list[tuple[int, int]]) -> int:
    """``v``'s secret from ``shares``, verified; wrong shares corrected or named."""
    what = 'self-mask seed b' if survived else 'masking key s^SK'
    if len(shares) < self.t:
      raise DropoutError(f'only {len(shares)} shares of the {what} of participant {v}; need '
                         f'{self.t}.')
    ok = self._secret_check(v, survived)
    # Shares from participants already caught sending a wrong one are left out
    # first, so one bad participant costs one decoding, not one per secret.
    clean = [s for s in shares if s[0] - 1 not in self.misbehaving]
    secret = shamir_reconstruct((clean if len(clean) >= self.t else shares)[:self.t])
    if ok(secret):
      return secret
    if len(shares) < self.t + 2:
      raise ReconstructionError(
          f'the {what} of participant {v} reconstructed from {len(shares)} shares fails its '
          f'{"commitment" if survived else "public key"}: a participant revealed a wrong share '
          f'or participant {v} dealt inconsistent shares, and with fewer than threshold + 2 = '
          f'{self.t + 2} shares the wrong ones cannot be located. The sum is not returned.')
    try:
      secret, wrong = shamir_decode(shares, self.t)
    except ReconstructionError as e:
      raise ReconstructionError(f'the {what} of participant {v}: {e} Too many wrong shares, or '
                                f'participant {v} dealt inconsistent shares; the sum is not '
                                'returned.') from None
    if not ok(secret):
      raise ReconstructionError(f'the {what} of participant {v} decoded from {len(shares)} '
                                f'shares fails its {"commitment" if survived else "public key"};'
                                ' the sum is not returned.')
    for x in wrong:
      self.misbehaving.setdefault(x - 1, []).append(v)
    return secret

  def finish(self, msgs: Iterable[ProtocolMessage]) -> np.ndarray:
    """Round 4: reconstruct and verify the secrets, return the exact sum (float64).

    Raises :class:`ReconstructionError` when a secret fails its commitment or
    public key beyond correction, and :class:`SumOutOfRangeError` when the sum
    lies outside ``|U3| L`` per entry; in both cases no sum is returned or
    stored. Corrected shares are listed in :attr:`misbehaving` and warned
    about (:class:`MisbehaviourWarning`).
    """
    revealed = self._receive(msgs, 'unmask', self._u4, 'U4')
    u3 = set(self._masked)
    shares: dict[int, list[tuple[int, int]]] = {v: [] for v in self._u2}
    for u, payload in sorted(revealed.items()):
      blobs = _unpack_blobs(payload, _REVEAL_BYTES, self.n, f'the reveal of participant {u}')
      if set(blobs) != set(self._u2):
        odd = set(blobs) ^ set(self._u2)
        raise MalformedMessageError(f'the reveal of participant {u} does not hold one share for '
                                    f'every member of U2 (participant {min(odd)}).')
      for v, blob in blobs.items():
        flag, share = blob[0], int.from_bytes(blob[1:], 'big')
        if flag not in (0, 1) or share >= PRIME:
          raise MalformedMessageError(f'the reveal of participant {u} for participant {v} is '
                                      'not a flag byte and a field element.')
        if bool(flag) != (v in u3):
          raise MalformedMessageError(f'participant {u} revealed the wrong secret of {v}.')
        shares[v].append((u + 1, share))
    self.misbehaving = {}
    size = next(iter(self._masked.values())).size
    total = np.zeros(size, _dtype(self.bits))
    for y in self._masked.values():
      total += y
    for v in self._u2:
      secret = self._reconstruct(v, v in u3, shares[v])
      if v in u3:
        total -= prg(secret.to_bytes(_SECRET_BYTES, 'big'), size, bits=self.bits)
      else:
        s_v = X25519PrivateKey.from_private_bytes(secret.to_bytes(_SECRET_BYTES, 'big'))
        for w in sorted(u3):
          s_w_pk = self._advertised[w][_KEY_BYTES:2 * _KEY_BYTES]
          mask = prg(_pair_seed(s_v, s_w_pk, self.session, self.round, w, v, w), size,
                     bits=self.bits)
          # Survivor w added +mask if w < v, else -mask: undo that.
          total = total - mask if w < v else total + mask
    signed = total.view(np.int32 if self.bits == 32 else np.int64)
    bound = len(u3) * self.limit
    outside = np.flatnonzero((signed > bound) | (signed < -bound))
    if outside.size:
      j = int(outside[0])
      raise SumOutOfRangeError(
          f'round {self.round}: {outside.size} of {size} entries of the decoded sum lie outside '
          f'+-{bound}, the most the {len(u3)} survivors\' clipped inputs allow (first: entry {j} '
          f'= {int(signed[j])}). A participant uploaded an input outside the clip range or '
          'masked it wrongly; the sum is not returned and the round must not be applied.')
    if self.misbehaving:
      warnings.warn(MisbehaviourWarning(
          f'round {self.round}: wrong shares from participants {_some(self.misbehaving)} were '
          'corrected (they revealed wrong shares, or the owners dealt them inconsistent ones); '
          'the sum is exact. See Server.misbehaving.'), stacklevel=2)
    self.sum_quantized = total
    self.sum_signed = signed.copy()
    return dequantize(total, frac_bits=self.frac_bits, bits=self.bits)


def secure_sum(updates: Any, *, dropped: Sequence[int] = (), threshold: int | None = None,
               frac_bits: int = 16, bits: int = 32, round_: int = 0,
               clip: float | None = None, dp: Any = None) -> np.ndarray:
  """Runs one secure-aggregation round in-process and returns the sum.

  The participants in ``dropped`` take part in the key exchange and then drop
  out before uploading (the case that needs recovery); the result is the sum
  of the others' encoded updates, exactly. Fresh identity keys and a fresh
  session are drawn for the call.

  Args:
    updates: ``(N, ...)`` real array, one update per participant, ``N >= 2``.
    dropped: participant ids that drop out after sharing their keys.
    threshold: Shamir threshold, ``N / 2 < threshold <= N`` (default
      ``ceil(2N/3)``).
    frac_bits, bits: the fixed-point encoding.
    round_: the round number.
    clip: the largest ``|entry|`` (see :func:`clip_limit`).
    dp: a distributed-DP mechanism (see :class:`Participant`); the sum is
      then noisy.

  Returns:
    The float64 sum over the surviving participants, shape ``updates[0]``.

  Example:

  >>> import numpy as np
  >>> u = np.array([[0.5, 1.0], [0.25, -2.0], [1.0, 1.0]])
  >>> secure_sum(u, dropped=[2], threshold=2)
  array([ 0.75, -1.  ])
  """
  if updates is None:
    raise TypeError('updates is None; pass an (N, ...) real array.')
  updates = np.asarray(updates)
  if updates.ndim < 1:
    raise ValueError(f'updates must have a leading participant axis; got shape {updates.shape}.')
  n = updates.shape[0]
  t = max(2, -(-2 * n // 3)) if threshold is None else threshold
  gone = set()
  for d in dropped:
    if not _is_int(d) or not 0 <= d < n:
      raise ValueError(f'dropped must hold participant ids in [0, {n}); got {_short(d)}.')
    gone.add(int(d))
  session = secrets.token_bytes(16)
  server = Server(n, t, session=session, frac_bits=frac_bits, bits=bits, clip=clip, dp=dp)
  signing_keys, registry = generate_identities(n)
  clients = [Participant(i, n, t, server.public_key, signing_key=signing_keys[i],
                         registry=registry, session=session, frac_bits=frac_bits, bits=bits,
                         clip=clip, dp=dp)
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
