# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""The secure-aggregation wire format, written from its documentation only.

``ssgd_optax.federated.secure_aggregation``'s module docstring documents every
message; this file re-implements it without importing any private name of the
module, so that the attack tests are written against the public message format
(and a drift between the documentation and the code fails them). Attackers use
only what they legitimately hold: a malicious server its own channel private
key, a malicious participant its own keys and secrets.
"""

import hashlib
import hmac
import os
import struct

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ssgd_optax.federated import secure_aggregation as sa

PRIME = sa.PRIME
SERVER = -1
KEY, COMMIT, SIG, FIELD, NONCE, TAG = 32, 32, 64, 66, 12, 16
ADVERTISED = 2 * KEY + COMMIT + SIG
CIPHERTEXT = NONCE + 16 + 2 * FIELD + TAG
REVEAL = 1 + FIELD
i64 = struct.Struct('>q').pack
u32 = struct.Struct('>I').pack
P25519 = 2 ** 255 - 19


def hkdf(material, info):
  return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def raw(public_key):
  return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def auth_key(channel_sk, peer_channel_pk, session):
  """``K_u``, from either end: a participant's channel key and the server's, or the reverse."""
  return hkdf(channel_sk.exchange(X25519PublicKey.from_public_bytes(peer_channel_pk)),
              b'ssgd_optax secagg auth|' + session)


def authenticate(key, session, round_, step, sender, recipient, payload):
  mac = (u32(len(session)) + session + i64(round_) + bytes([sa.STEPS.index(step)])
         + i64(sender) + i64(recipient) + hashlib.sha256(payload).digest())
  return sa.ProtocolMessage(session, round_, step, sender, recipient, payload,
                    hmac.new(key, mac, hashlib.sha256).digest())


def ctx(label, session, round_):
  return b'ssgd_optax secagg ' + label + b'|' + u32(len(session)) + session + i64(round_)


def commitment(session, round_, u, seed):
  return hashlib.sha256(ctx(b'commit', session, round_) + i64(u) + seed).digest()


def advertise_statement(session, round_, u, c_pk, s_pk, commit):
  return ctx(b'advertise', session, round_) + i64(u) + c_pk + s_pk + commit


def consistency_statement(session, round_, u, ids):
  return ctx(b'consistency', session, round_) + i64(u) + pack_ids(ids)


def pack_ids(ids):
  return b''.join(i64(i) for i in sorted(set(ids)))


def unpack_ids(payload):
  return [struct.unpack_from('>q', payload, i)[0] for i in range(0, len(payload), 8)]


def pack_blobs(blobs):
  return b''.join(i64(k) + u32(len(v)) + v for k, v in sorted(blobs.items()))


def unpack_blobs(payload):
  out, i = {}, 0
  while i < len(payload):
    k, size = struct.unpack_from('>qI', payload, i)
    out[k] = payload[i + 12:i + 12 + size]
    i += 12 + size
  return out


def pair_key(c_sk, peer_c_pk, session, round_, u, v):
  lo, hi = sorted((u, v))
  return hkdf(c_sk.exchange(X25519PublicKey.from_public_bytes(peer_c_pk)),
              b'ssgd_optax secagg enc|' + session + i64(round_) + i64(lo) + i64(hi))


def encrypt_share(c_sk, holder_c_pk, session, round_, owner, holder, s_share, b_share):
  plain = i64(owner) + i64(holder) + s_share.to_bytes(FIELD, 'big') + b_share.to_bytes(FIELD, 'big')
  nonce = os.urandom(NONCE)
  key = pair_key(c_sk, holder_c_pk, session, round_, owner, holder)
  return nonce + AESGCM(key).encrypt(nonce, plain, session + i64(round_) + i64(owner) + i64(holder))


def decrypt_share(c_sk, owner_c_pk, session, round_, owner, holder, blob):
  """``(s share, b share)`` that anyone holding ``holder``'s encryption key reads."""
  key = pair_key(c_sk, owner_c_pk, session, round_, owner, holder)
  plain = AESGCM(key).decrypt(blob[:NONCE], blob[NONCE:],
                              session + i64(round_) + i64(owner) + i64(holder))
  assert struct.unpack_from('>qq', plain) == (owner, holder)
  return int.from_bytes(plain[16:16 + FIELD], 'big'), int.from_bytes(plain[16 + FIELD:], 'big')


def prg(seed, size, bits=32):
  stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(
      bytes(size * bits // 8))
  return np.frombuffer(stream, '<u4' if bits == 32 else '<u8').astype(
      np.uint32 if bits == 32 else np.uint64)


def pair_seed(s_sk, peer_s_pk, session, round_, u, v):
  lo, hi = sorted((u, v))
  return hkdf(s_sk.exchange(X25519PublicKey.from_public_bytes(peer_s_pk)),
              b'ssgd_optax secagg mask|' + session + i64(round_) + i64(lo) + i64(hi))


def unmask(y, u, b_seed, s_sk, peer_s_pks, session, round_, bits=32):
  """``u``'s encoded update from its masked input, its seed ``b_u`` and masking key."""
  x = y - prg(b_seed, y.size, bits)
  for v, pk in peer_s_pks.items():
    mask = prg(pair_seed(s_sk, pk, session, round_, u, v), y.size, bits)
    x = x - mask if u < v else x + mask
  return x


def interpolate(shares):
  """Lagrange at 0 over GF(PRIME), as 32 bytes (a seed or a private key)."""
  xs = [x for x, _ in shares]
  secret = 0
  for j, (xj, yj) in enumerate(shares):
    num = den = 1
    for m, xm in enumerate(xs):
      if m != j:
        num, den = num * -xm % PRIME, den * (xj - xm) % PRIME
    secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
  return secret.to_bytes(32, 'big')


def masked_array(msg, bits=32):
  return np.frombuffer(msg.payload, '<u4' if bits == 32 else '<u8').astype(
      np.uint32 if bits == 32 else np.uint64)


class ServerKeys:
  """What a malicious server holds: its own channel private key (and so every K_u)."""

  def __init__(self, server, participants, session):
    self.session = session
    self.keys = {p.index: auth_key(server._channel, p.channel_public_key, session)
                 for p in participants}

  def send(self, step, to, payload, round_=0):
    return authenticate(self.keys[to], self.session, round_, step, SERVER, to, payload)


class OwnKeys:
  """What a malicious participant holds: its own channel key and per-round secrets."""

  def __init__(self, participant):
    self.p = participant

  def send(self, step, payload, round_=0):
    return authenticate(self.p._auth_key, self.p.session, round_, step, self.p.index, SERVER,
                        payload)

  @property
  def c_sk(self):
    return self.p._c_sk

  @property
  def s_sk(self):
    return self.p._s_sk

  @property
  def b(self):
    return self.p._b

  def private_key_int(self):
    return int.from_bytes(self.p._s_sk.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption()), 'big')


def small_order_keys():
  """The canonical u-coordinates of the points of order 1, 2, 4 and 8, and a non-canonical one."""
  return {
      'u=0': (0).to_bytes(32, 'little'),
      'u=1': (1).to_bytes(32, 'little'),
      'u=p-1': (P25519 - 1).to_bytes(32, 'little'),
      'order 8 (a)': (325606250916557431795983626356110631294008115727848805560023387167927233504
                      ).to_bytes(32, 'little'),
      'order 8 (b)': (39382357235489614581723060781553021112529911719440698176882885853963445705823
                      ).to_bytes(32, 'little'),
      'u=p (non-canonical 0)': P25519.to_bytes(32, 'little'),
  }


def random_key():
  return raw(X25519PrivateKey.generate().public_key())
