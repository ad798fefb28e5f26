# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax.federated.secure_aggregation."""

import numpy as np
import pytest

pytest.importorskip('cryptography')
stats = pytest.importorskip('scipy.stats')

from ssgd_optax.federated import secure_aggregation as sa  # noqa: E402


def _setup(n, t, *, bits=32, frac_bits=16, session=b'session-0'):
  server = sa.Server(n, t, session=session, bits=bits, frac_bits=frac_bits)
  clients = [sa.Participant(i, n, t, server.public_key, session=session, bits=bits,
                            frac_bits=frac_bits) for i in range(n)]
  for c in clients:
    server.register(c.index, c.identity_public_key)
  return server, clients


def _until_masked(server, clients, updates, round_=0, dropped=()):
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  masked = [clients[u].masked_input(m, updates[u]) for u, m in fwd.items() if u not in dropped]
  return masked


@pytest.mark.parametrize('bits', [32, 64])
def test_sum_is_exact_over_quantised_values(bits):
  rng = np.random.default_rng(0)
  n = 5
  x = rng.normal(size=(n, 300)) * 3
  server, clients = _setup(n, 3, bits=bits)
  masked = _until_masked(server, clients, x)
  surv = server.collect_masked(masked)
  total = server.finish([clients[u].unmask(m) for u, m in surv.items()])
  q = sum(sa.quantize(xi, bits=bits, num_participants=n) for xi in x)
  np.testing.assert_array_equal(server.sum_quantized, q)
  np.testing.assert_allclose(total, x.sum(0), atol=n * 2.0 ** -17)


def test_single_masked_update_looks_uniform():
  n, size = 4, 40_000
  x = np.zeros((n, size))  # the least random input there is
  server, clients = _setup(n, 2)
  masked = _until_masked(server, clients, x)
  y = np.frombuffer(masked[0].payload, np.uint32)
  # Chi-square on the top 8 bits and on the low 8 bits, KS on the whole value.
  for byte in (y >> 24, y & 0xFF):
    counts = np.bincount(byte.astype(np.int64), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
  assert stats.kstest(y / 2.0 ** 32, 'uniform').pvalue > 1e-4
  # Sanity: the unmasked quantised update would fail the same test badly.
  counts = np.bincount((sa.quantize(x[0]) >> 24).astype(np.int64), minlength=256)
  assert stats.chisquare(counts).pvalue < 1e-10


def test_dropout_recovery_is_exact():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, size=(6, 50))
  total = sa.aggregate(x, dropped=[1, 4], threshold=3)
  expected = sa.dequantize(sum(sa.quantize(x[i], num_participants=6) for i in (0, 2, 3, 5)))
  np.testing.assert_array_equal(total, expected)


def test_too_many_dropouts_raise():
  x = np.ones((4, 3))
  with pytest.raises(sa.DropoutError, match='threshold'):
    sa.aggregate(x, dropped=[0, 1, 2], threshold=2)


def test_tampered_masked_input_rejected():
  server, clients = _setup(3, 2)
  masked = _until_masked(server, clients, np.ones((3, 8)))
  y = bytearray(masked[1].payload)
  y[0] ^= 1
  masked[1] = masked[1]._replace(payload=bytes(y))
  with pytest.raises(sa.TamperedMessageError, match='sender 1'):
    server.collect_masked(masked)


def test_forged_sender_rejected():
  server, clients = _setup(3, 2)
  masked = _until_masked(server, clients, np.ones((3, 8)))
  masked[2] = masked[2]._replace(sender=0)  # claims to be participant 0
  with pytest.raises(sa.TamperedMessageError):
    server.collect_masked(masked)


def test_replayed_message_rejected():
  server, clients = _setup(3, 2)
  masked = _until_masked(server, clients, np.ones((3, 8)))
  with pytest.raises(sa.ReplayedMessageError, match='second'):
    server.collect_masked(masked + [masked[0]])


def test_message_from_previous_round_rejected():
  server, clients = _setup(3, 2)
  old = _until_masked(server, clients, np.ones((3, 8)), round_=0)
  surv = server.collect_masked(old)
  server.finish([clients[u].unmask(m) for u, m in surv.items()])
  fresh = _until_masked(server, clients, np.zeros((3, 8)), round_=1)
  with pytest.raises(sa.ReplayedMessageError, match='round 0'):
    server.collect_masked(fresh[:2] + [old[2]])
  with pytest.raises(sa.ReplayedMessageError):
    server.start_round(1)


def test_tampered_server_broadcast_rejected_by_participant():
  server, clients = _setup(3, 2)
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  bad = keys[0]._replace(payload=keys[0].payload[:-1] + b'\x00')
  with pytest.raises(sa.TamperedMessageError, match='sender -1'):
    clients[0].share(bad)


def test_tampered_encrypted_share_detected():
  server, clients = _setup(3, 2)
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  shares = [clients[u].share(m) for u, m in keys.items()]
  fwd = server.collect_shares(shares)
  # A malicious server re-signs a forwarded box with a corrupted ciphertext:
  # only the AES-GCM tag between the two participants can catch it.
  boxes = sa._unpack_blobs(fwd[0].payload)
  boxes[1] = boxes[1][:-1] + bytes([boxes[1][-1] ^ 1])
  fwd[0] = sa._sign(server._auth[0], server.session, 0, 'forward', -1, 0, sa._pack_blobs(boxes))
  masked = [clients[u].masked_input(m, np.ones(4)) for u, m in fwd.items()]
  surv = server.collect_masked(masked)
  with pytest.raises(sa.TamperedMessageError, match='participant 1'):
    clients[0].unmask(surv[0])


def test_quantize_clips_and_rejects_nan():
  q = sa.quantize([1e9, -1e9], frac_bits=16, num_participants=4)
  limit = (2 ** 31 - 1) // 4
  np.testing.assert_array_equal(q.view(np.int32), [limit, -limit])
  with pytest.raises(ValueError, match='NaN'):
    sa.quantize([np.nan])
  with pytest.raises(ValueError, match='bits'):
    sa.quantize([1.0], bits=16)


def test_shamir_threshold():
  secret = 2 ** 255 + 12345
  shares = sa.shamir_split(secret, 6, 4)
  assert sa.shamir_reconstruct(shares[2:]) == secret
  assert sa.shamir_reconstruct(shares[:3]) != secret
  with pytest.raises(ValueError, match='threshold'):
    sa.shamir_split(1, 3, 4)


@pytest.mark.parametrize('n,t', [(1, 1), (3, 1), (3, 4)])
def test_invalid_sizes(n, t):
  with pytest.raises(ValueError):
    sa.Server(n, t, session=b's')
  with pytest.raises(TypeError, match='session'):
    sa.Server(3, 2, session='s')
