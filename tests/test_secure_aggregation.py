# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax.federated.secure_aggregation.

Besides the honest runs, an adversarial server (it holds every channel key, so
it can send any message to anyone) attacks the protocol: split views of the
survivor set, substituted keys, tampering, replay, wrong sessions. Each attack
must end in a named error; two control tests show that the same attack code
does recover a victim's update when a defence is removed (signature checks
turned off) or its assumption broken (one corrupt participant beyond
``2 t - n``).
"""

import numpy as np
import pytest

pytest.importorskip('cryptography')
stats = pytest.importorskip('scipy.stats')

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from ssgd_optax.federated import secure_aggregation as sa  # noqa: E402


K = sa._KEY_BYTES  # advertised entry: c^PK (K bytes) || s^PK (K bytes) || signature


def _setup(n, t, *, bits=32, frac_bits=16, session=b'session-0', identities=None,
           participant=sa.Participant):
  server = sa.Server(n, t, session=session, bits=bits, frac_bits=frac_bits)
  keys, registry = identities or sa.generate_identities(n)
  clients = [participant(i, n, t, server.public_key, signing_key=keys[i], registry=registry,
                         session=session, bits=bits, frac_bits=frac_bits) for i in range(n)]
  for c in clients:
    server.register(c.index, c.channel_public_key)
  return server, clients


_JUNK = b'x' * 60  # a ciphertext the victim stores without reading it


def _until_masked(server, clients, updates, round_=0, dropped=()):
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  return [clients[u].masked_input(m, updates[u]) for u, m in fwd.items() if u not in dropped]


def _finish(server, clients, masked):
  surv = server.collect_masked(masked)
  sigs = server.collect_consistency([clients[u].consistency_check(m) for u, m in surv.items()])
  return server.finish([clients[u].unmask(m) for u, m in sigs.items()])


def _decrypt_share(c_sk, owner_c_pk, session, round_, owner, holder, blob):
  """What anyone holding ``holder``'s encryption key reads in ``owner``'s ciphertext."""
  lo, hi = sorted((owner, holder))
  key = sa._hkdf(c_sk.exchange(sa.X25519PublicKey.from_public_bytes(owner_c_pk)),
                 b'ssgd_optax secagg enc|' + session + sa.struct.pack('>qqq', round_, lo, hi))
  nonce, ciphertext = blob[:sa._NONCE_BYTES], blob[sa._NONCE_BYTES:]
  plain = AESGCM(key).decrypt(nonce, ciphertext,
                              session + sa.struct.pack('>qqq', round_, owner, holder))
  return sa._decode_share(plain)


def _reconstruct(shares, t):
  return sa.shamir_reconstruct(shares[:t]).to_bytes(sa._SECRET_BYTES, 'big')


def _unmask_victim(y, victim, b_seed, s_sk, s_pks, session, round_, bits):
  """Removes the victim's self mask and every pairwise mask it added."""
  x = y - sa.prg(b_seed, y.size, bits=bits)
  for v, pk in s_pks.items():
    mask = sa.prg(sa._pair_seed(s_sk, pk, session, round_, victim, v), y.size, bits=bits)
    x = x - mask if victim < v else x + mask
  return x


# ---------------------------------------------------------------------------
# Honest runs.


@pytest.mark.parametrize('bits', [32, 64])
def test_sum_is_exact_over_quantised_values(bits):
  rng = np.random.default_rng(0)
  n = 5
  x = rng.normal(size=(n, 300)) * 3
  server, clients = _setup(n, 3, bits=bits)
  total = _finish(server, clients, _until_masked(server, clients, x))
  q = sum(sa.quantize(xi, bits=bits, num_participants=n) for xi in x)
  np.testing.assert_array_equal(server.sum_quantized, q)
  np.testing.assert_allclose(total, x.sum(0), atol=n * 2.0 ** -17)


def test_single_masked_update_looks_uniform():
  n, size = 4, 40_000
  x = np.zeros((n, size))  # the least random input there is
  server, clients = _setup(n, 3)
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
  total = sa.secure_sum(x, dropped=[1, 4], threshold=4)
  expected = sa.dequantize(sum(sa.quantize(x[i], num_participants=6) for i in (0, 2, 3, 5)))
  np.testing.assert_array_equal(total, expected)


def test_too_many_dropouts_raise():
  with pytest.raises(sa.DropoutError, match='threshold'):
    sa.secure_sum(np.ones((4, 3)), dropped=[0, 1], threshold=3)


def test_participant_reused_over_rounds():
  server, clients = _setup(3, 2)
  for r, value in enumerate([1.0, 2.0]):
    total = _finish(server, clients, _until_masked(server, clients, np.full((3, 2), value), r))
    np.testing.assert_array_equal(total, [3 * value] * 2)


# ---------------------------------------------------------------------------
# Thresholds and arguments.


@pytest.mark.parametrize('n,t', [(4, 2), (6, 3), (5, 2), (3, 1), (2, 1), (3, 4), (1, 1)])
def test_threshold_must_exceed_half(n, t):
  with pytest.raises(ValueError, match='threshold' if n >= 2 else 'num_participants'):
    sa.Server(n, t, session=b's')
  if n >= 2:
    with pytest.raises(ValueError, match='threshold'):
      sa.secure_sum(np.ones((n, 2)), threshold=t)
    keys, registry = sa.generate_identities(n)
    with pytest.raises(ValueError, match='threshold'):
      sa.Participant(0, n, t, bytes(32), signing_key=keys[0], registry=registry, session=b's')


@pytest.mark.parametrize('n', [2, 3, 4, 5, 6, 9, 30])
def test_default_threshold_is_a_strict_majority(n):
  t = max(2, -(-2 * n // 3))  # secure_sum's default
  assert 2 * t > n
  sa.Server(n, t, session=b's')


def test_invalid_arguments():
  with pytest.raises(TypeError, match='session'):
    sa.Server(3, 2, session='s')
  keys, registry = sa.generate_identities(3)
  with pytest.raises(ValueError, match='registry'):
    sa.Participant(0, 3, 2, bytes(32), signing_key=keys[1], registry=registry, session=b's')
  with pytest.raises(ValueError, match='registry'):
    sa.Participant(0, 3, 2, bytes(32), signing_key=keys[0], registry={0: registry[0]},
                   session=b's')
  with pytest.raises(TypeError, match='signing_key'):
    sa.Participant(0, 3, 2, bytes(32), signing_key=b'k' * 32, registry=registry, session=b's')
  with pytest.raises(ValueError, match='index'):
    sa.Participant(3, 3, 2, bytes(32), signing_key=keys[0], registry=registry, session=b's')
  with pytest.raises(ValueError, match='dropped'):
    sa.secure_sum(np.ones((3, 2)), dropped=[5])
  with pytest.raises(ValueError, match='frac_bits'):
    sa.Server(3, 2, session=b's', frac_bits=31)


def test_quantize_clips_and_rejects_nan():
  q = sa.quantize([1e9, -1e9, np.inf], frac_bits=16, num_participants=4)
  limit = (2 ** 31 - 1) // 4
  np.testing.assert_array_equal(q.view(np.int32), [limit, -limit, limit])
  with pytest.raises(ValueError, match='NaN'):
    sa.quantize([np.nan])
  with pytest.raises(ValueError, match='bits'):
    sa.quantize([1.0], bits=16)


def _float_clip_quantize(x, *, frac_bits, bits, num_participants):
  """The pre-fix encoding (clip in float64): a stand-in that must fail below."""
  limit = min((2 ** (bits - 1) - 1) // num_participants, 2 ** 62)
  q = np.clip(np.rint(np.asarray(x, np.float64) * 2.0 ** frac_bits), -limit, limit)
  return q.astype(np.int64).astype(np.uint32 if bits == 32 else np.uint64)


def _signed_sum_at_limit(encode, n, bits, sign):
  """The signed sum of ``n`` values each beyond the clip limit, in the ring."""
  dtype = np.uint32 if bits == 32 else np.uint64
  q = encode(np.full(n, sign * 1e300), frac_bits=16, bits=bits, num_participants=n)
  total = np.sum(q, dtype=dtype, keepdims=True)  # wraps modulo 2^bits, like the protocol
  return int(total.view(np.int32 if bits == 32 else np.int64)[0])


@pytest.mark.parametrize('bits', [32, 64])
@pytest.mark.parametrize('n', [1, 2, 3, 5, 7, 1000])
def test_integer_limits_never_wrap(n, bits):
  limit = (2 ** (bits - 1) - 1) // n
  for sign in (1, -1):
    q = sa.quantize(np.full(3, sign * 1e300), bits=bits, num_participants=n)
    assert int(q.view(np.int32 if bits == 32 else np.int64)[0]) == sign * limit
    assert _signed_sum_at_limit(sa.quantize, n, bits, sign) == sign * n * limit


def test_float_clip_stand_in_wraps():
  # Negative control for the test above: the float64 clip rounds (2^63-1)//5
  # up, and five such values wrap to a negative sum.
  assert _signed_sum_at_limit(_float_clip_quantize, 5, 64, 1) < 0


@pytest.mark.parametrize('bits', [32, 64])
@pytest.mark.parametrize('n', [2, 5])
def test_protocol_sum_at_the_limit(n, bits):
  limit = (2 ** (bits - 1) - 1) // n
  for sign in (1, -1):
    server, clients = _setup(n, n // 2 + 1, bits=bits)
    _finish(server, clients, _until_masked(server, clients, np.full((n, 2), sign * 1e15 * 2 ** 20)))
    signed = server.sum_quantized.view(np.int32 if bits == 32 else np.int64)
    assert [int(s) for s in signed] == [sign * n * limit] * 2
  # The reported case: about -1.4e14 before the fix.
  total = sa.secure_sum(np.full((5, 1), 1e15), bits=64)
  assert total[0] == float(5 * ((2 ** 63 - 1) // 5)) / 2 ** 16 > 0


# ---------------------------------------------------------------------------
# Active server: key substitution.


class _NoSignatureChecks(sa.Participant):
  """Deliberately weakened: trusts whatever keys and signatures the server relays."""

  def _verify(self, v, signature, statement, what):
    del v, signature, statement, what


def _key_substitution_attack(participant, n=6, t=4, victim=0):
  """The server relays its own keys in place of every peer's to the victim.

  Returns the victim's quantised update as the server reconstructs it; raises
  whatever the victim raises.
  """
  session, round_, bits = b'session-ks', 0, 32
  server, clients = _setup(n, t, session=session, participant=participant)
  update = np.random.default_rng(5).normal(size=16)
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  entries = sa._unpack_blobs(keys[victim].payload)
  fake_c = {v: X25519PrivateKey.generate() for v in entries if v != victim}
  fake_s = {v: X25519PrivateKey.generate() for v in entries if v != victim}
  for v in fake_c:  # the peers' real signatures stay: a server cannot make new ones
    entries[v] = (sa._raw(fake_c[v].public_key()) + sa._raw(fake_s[v].public_key())
                  + entries[v][2 * K:])
  shares_msg = clients[victim].share(server._send('keys', victim, sa._pack_blobs(entries)))
  victim_c_pk, victim_s_pk = entries[victim][:K], entries[victim][K:2 * K]
  s_shares, b_shares = [], []
  for v, blob in sa._unpack_blobs(shares_msg.payload).items():
    _, _, s_share, b_share = _decrypt_share(fake_c[v], victim_c_pk, session, round_, victim, v,
                                            blob)
    s_shares.append((v + 1, s_share))
    b_shares.append((v + 1, b_share))
  b_seed = _reconstruct(b_shares, t)
  s_sk = X25519PrivateKey.from_private_bytes(_reconstruct(s_shares, t))
  assert sa._raw(s_sk.public_key()) == victim_s_pk
  # Any bytes will do as the peers' ciphertexts: the victim only stores them.
  fwd = server._send('forward', victim, sa._pack_blobs({v: _JUNK for v in fake_c}))
  y = np.frombuffer(clients[victim].masked_input(fwd, update).payload, np.uint32)
  s_pks = {v: sa._raw(k.public_key()) for v, k in fake_s.items()}
  recovered = _unmask_victim(y, victim, b_seed, s_sk, s_pks, session, round_, bits)
  return recovered, sa.quantize(update, num_participants=n)


def test_key_substitution_detected():
  with pytest.raises(sa.SignatureError, match='participant 1'):
    _key_substitution_attack(sa.Participant)


def test_key_substitution_recovers_update_without_signature_checks():
  # Control: the attack above is real; only the signature check stops it.
  recovered, truth = _key_substitution_attack(_NoSignatureChecks)
  np.testing.assert_array_equal(recovered, truth)


def test_keys_signed_by_server_rejected():
  server, clients = _setup(4, 3)
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  entries = sa._unpack_blobs(keys[0].payload)
  rogue = Ed25519PrivateKey.generate()
  c_pk, s_pk = sa._raw(X25519PrivateKey.generate().public_key()), entries[2][K:2 * K]
  entries[2] = c_pk + s_pk + rogue.sign(sa._advertise_statement(b'session-0', 0, 2, c_pk, s_pk))
  with pytest.raises(sa.SignatureError, match='participant 2'):
    clients[0].share(server._send('keys', 0, sa._pack_blobs(entries)))
  # The round is aborted for that participant: no second chance.
  with pytest.raises(sa.SecureAggregationError, match='aborted'):
    clients[0].share(keys[0])


@pytest.mark.parametrize('source', ['other session', 'earlier round'])
def test_replayed_signed_keys_rejected(source):
  identities = sa.generate_identities(4)
  old_server, old = _setup(4, 3, identities=identities,
                           session=b'session-old' if source == 'other session' else b'session-0')
  old_server.start_round(0)
  old_keys = old_server.collect_keys([c.advertise(0) for c in old])
  old_entry = sa._unpack_blobs(old_keys[0].payload)[1]
  if source == 'other session':
    server, clients, round_ = *_setup(4, 3, identities=identities), 0
  else:
    server, clients, round_ = old_server, old, 1
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  entries = sa._unpack_blobs(keys[0].payload)
  entries[1] = old_entry  # a validly signed entry, from elsewhere
  with pytest.raises(sa.SignatureError, match='participant 1'):
    clients[0].share(server._send('keys', 0, sa._pack_blobs(entries)))


# ---------------------------------------------------------------------------
# Active server: split view of the survivor set U3.


def _split_view(n, t, group_a, group_b, view_a, view_b, corrupt=(), relay='valid'):
  """Tells ``group_a`` the survivors are ``view_a`` (with the victim 0) and
  ``group_b`` they are ``view_b`` (without it), then asks both to unmask.

  ``corrupt`` participants are the server's: it holds their identity keys and
  their protocol state, so they sign both views and reveal both secrets.
  Returns the victim's quantised update as reconstructed, and the truth.
  """
  session, round_ = b'session-0', 0
  identities = sa.generate_identities(n)
  server, clients = _setup(n, t, identities=identities, session=session)
  x = np.random.default_rng(3).normal(size=(n, 8))
  masked = _until_masked(server, clients, x)
  y_victim = np.frombuffer(masked[0].payload, np.uint32)
  server.collect_masked(masked)
  views = {u: view_a for u in group_a} | {u: view_b for u in group_b}
  signatures = {}  # view -> {signer: signature}
  for u, view in views.items():
    msg = server._send('survivors', u, sa._pack_ids(view))
    payload = clients[u].consistency_check(msg).payload
    signatures.setdefault(view, {})[u] = payload
  for c in corrupt:
    for view in (view_a, view_b):
      signatures.setdefault(view, {})[c] = identities[0][c].sign(
          sa._consistency_statement(session, round_, c, view))
  b_shares, s_shares = [], []
  for u, view in views.items():
    relayed = dict(signatures[view])
    if relay == 'all':  # naive: every signature the server holds
      relayed |= {v: s for other in signatures.values() for v, s in other.items()
                  if v not in relayed and v in view}
    reveal = clients[u].unmask(server._send('signatures', u, sa._pack_blobs(relayed)))
    survived, share = sa._decode_reveal(sa._unpack_blobs(reveal.payload)[0])
    (b_shares if survived else s_shares).append((u + 1, share))
  for c in corrupt:
    c_pk0 = clients[c]._c_pk[0]
    _, _, s_share, b_share = _decrypt_share(clients[c]._c_sk, c_pk0, session, round_, 0, c,
                                            clients[c]._ciphertexts[0])
    b_shares.append((c + 1, b_share))
    s_shares.append((c + 1, s_share))
  assert len(b_shares) >= t and len(s_shares) >= t, 'the server got too few shares'
  b_seed = _reconstruct(b_shares, t)
  s_sk = X25519PrivateKey.from_private_bytes(_reconstruct(s_shares, t))
  s_pks = {v: pk for v, pk in clients[0]._s_pk.items() if v != 0}
  recovered = _unmask_victim(y_victim, 0, b_seed, s_sk, s_pks, session, round_, 32)
  return recovered, sa.quantize(x[0], num_participants=n)


@pytest.mark.parametrize('relay,error', [('valid', sa.ConsistencyError),
                                         ('all', sa.SignatureError)])
def test_split_view_refused(relay, error):
  # n = 5, t = 3: group A (with the victim) holds t members, group B only 2,
  # so B never sees t signatures of its view and refuses to unmask.
  with pytest.raises(error, match='participant 3'):
    _split_view(5, 3, (0, 1, 2), (3, 4), frozenset(range(5)), frozenset({1, 2, 3, 4}),
                relay=relay)


def test_split_view_with_too_many_corrupt_participants_succeeds():
  # Control and documented limit: one corrupt participant (n_C = 2t - n = 1)
  # signs both views and the same attack recovers the victim's update.
  recovered, truth = _split_view(5, 3, (0, 1), (2, 3), frozenset(range(5)),
                                 frozenset({2, 3, 4}), corrupt=(4,))
  np.testing.assert_array_equal(recovered, truth)


def test_survivor_set_asked_twice_rejected():
  server, clients = _setup(4, 3)
  masked = _until_masked(server, clients, np.ones((4, 3)))
  surv = server.collect_masked(masked)
  clients[1].consistency_check(surv[1])
  again = server._send('survivors', 1, sa._pack_ids({1, 2, 3}))
  with pytest.raises(sa.ReplayedMessageError, match='second'):
    clients[1]._inbox.check(again, clients[1]._auth_key, round_=0, step='survivors')
  with pytest.raises(sa.SecureAggregationError, match='must follow'):
    clients[1].consistency_check(again)


def test_inconsistent_sets_rejected():
  server, clients = _setup(4, 3)
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients[:3]])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  boxes = sa._unpack_blobs(fwd[0].payload) | {3: _JUNK}  # 3 is not in U1
  with pytest.raises(sa.ConsistencyError, match='U1'):
    clients[0].masked_input(server._send('forward', 0, sa._pack_blobs(boxes)), np.ones(2))


def test_signatures_from_outside_survivor_set_rejected():
  server, clients = _setup(4, 3)
  masked = _until_masked(server, clients, np.ones((4, 3)))
  surv = server.collect_masked(masked)
  view = frozenset({0, 1, 2})
  msgs = [clients[u].consistency_check(server._send('survivors', u, sa._pack_ids(view)))
          for u in (0, 1, 2)]
  sigs = {m.sender: m.payload for m in msgs}
  sigs[3] = clients[3].consistency_check(surv[3]).payload
  with pytest.raises(sa.ConsistencyError, match='not in the survivor set'):
    clients[0].unmask(server._send('signatures', 0, sa._pack_blobs(sigs)))


def test_unmask_before_consistency_check_refused():
  server, clients = _setup(3, 2)
  masked = _until_masked(server, clients, np.ones((3, 3)))
  server.collect_masked(masked)
  with pytest.raises(sa.SecureAggregationError, match='must follow'):
    clients[0].unmask(server._send('signatures', 0, b''))


# ---------------------------------------------------------------------------
# Transport: tampering, forgery, replay, wrong session.


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
  _finish(server, clients, old)
  fresh = _until_masked(server, clients, np.zeros((3, 8)), round_=1)
  with pytest.raises(sa.ReplayedMessageError, match='round 0'):
    server.collect_masked(fresh[:2] + [old[2]])
  with pytest.raises(sa.ReplayedMessageError):
    server.start_round(1)
  with pytest.raises(sa.ReplayedMessageError, match='round 0'):
    clients[0].advertise(0)


def test_message_from_other_session_rejected():
  identities = sa.generate_identities(3)
  server_a, clients_a = _setup(3, 2, identities=identities, session=b'session-a')
  server_b, clients_b = _setup(3, 2, identities=identities, session=b'session-b')
  for server, clients in ((server_a, clients_a), (server_b, clients_b)):
    server.start_round(0)
  keys_a = server_a.collect_keys([c.advertise(0) for c in clients_a])
  server_b.collect_keys([c.advertise(0) for c in clients_b])
  with pytest.raises(sa.TamperedMessageError):
    clients_b[0].share(keys_a[0])
  # Re-authenticated for session b by its server, the keys of session a still
  # carry signatures bound to session a.
  with pytest.raises(sa.SignatureError):
    clients_b[1].share(server_b._send('keys', 1, keys_a[1].payload))


def test_tampered_server_broadcast_rejected_by_participant():
  server, clients = _setup(3, 2)
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  # Flip a bit: overwriting the last byte with a constant left the payload
  # unchanged whenever it already held that byte (1 run in 256).
  bad = keys[0]._replace(payload=keys[0].payload[:-1] + bytes([keys[0].payload[-1] ^ 1]))
  with pytest.raises(sa.TamperedMessageError, match='sender -1'):
    clients[0].share(bad)


def test_tampered_encrypted_share_detected():
  server, clients = _setup(3, 2)
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  # The server re-authenticates a forwarded box with a corrupted ciphertext:
  # only the AES-GCM tag between the two participants can catch it.
  boxes = sa._unpack_blobs(fwd[0].payload)
  boxes[1] = boxes[1][:-1] + bytes([boxes[1][-1] ^ 1])
  fwd[0] = server._send('forward', 0, sa._pack_blobs(boxes))
  masked = [clients[u].masked_input(m, np.ones(4)) for u, m in fwd.items()]
  surv = server.collect_masked(masked)
  sigs = server.collect_consistency([clients[u].consistency_check(m) for u, m in surv.items()])
  with pytest.raises(sa.TamperedMessageError, match='participant 1'):
    clients[0].unmask(sigs[0])


def test_shamir_threshold():
  secret = 2 ** 255 + 12345
  shares = sa.shamir_split(secret, 6, 4)
  assert sa.shamir_reconstruct(shares[2:]) == secret
  assert sa.shamir_reconstruct(shares[:3]) != secret
  with pytest.raises(ValueError, match='threshold'):
    sa.shamir_split(1, 3, 4)
