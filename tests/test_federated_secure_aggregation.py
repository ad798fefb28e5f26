# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Tests for ssgd_optax.federated.secure_aggregation.

Besides the honest runs, a malicious server and malicious participants attack
the protocol through the documented message format (``tests/secagg_wire.py``
re-implements it from the module's documentation; attackers use only their own
keys and secrets): split views of the survivor set, substituted keys,
tampering, replay, repeated rounds, restarts, wrong shares, inconsistent
dealing, out-of-range inputs, invalid keys and malformed messages. Each attack
must end in a named error (or, with distributed DP, in a noisy update whose
noise matches the reported std); control tests show that the same attack code
does succeed when a defence is removed or its assumption broken.
"""


import numpy as np
import pytest

pytest.importorskip('cryptography')
stats = pytest.importorskip('scipy.stats')

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

import secagg_wire as wire  # noqa: E402
from ssgd_optax.federated import distributed_dp as ddp  # noqa: E402
from ssgd_optax.federated import secure_aggregation as sa  # noqa: E402

K = wire.KEY
JUNK = b'x' * wire.CIPHERTEXT  # a well-formed ciphertext the victim stores without reading it


def _setup(n, t, *, bits=32, frac_bits=16, session=b'session-0', identities=None,
           participant=sa.Participant, server_cls=sa.Server, clip=None, dp=None, records=None):
  server = server_cls(n, t, session=session, bits=bits, frac_bits=frac_bits, clip=clip, dp=dp)
  keys, registry = identities or sa.generate_identities(n)
  clients = [participant(i, n, t, server.public_key, signing_key=keys[i], registry=registry,
                         session=session, bits=bits, frac_bits=frac_bits, clip=clip, dp=dp,
                         record=None if records is None else records[i]) for i in range(n)]
  for c in clients:
    server.register(c.index, c.channel_public_key)
  return server, clients


def _until_masked(server, clients, updates, round_=0, dropped=(), digest=None):
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  return [clients[u].masked_input(m, updates[u], model_digest=digest)
          for u, m in fwd.items() if u not in dropped]


def _finish(server, clients, masked):
  surv = server.collect_masked(masked)
  sigs = server.collect_consistency([clients[u].consistency_check(m) for u, m in surv.items()])
  return server.finish([clients[u].unmask(m) for u, m in sigs.items()])


def _run(server, clients, updates, round_=0, dropped=()):
  return _finish(server, clients, _until_masked(server, clients, updates, round_, dropped))


def _expected(updates, survivors, n, bits=32):
  dtype = np.uint32 if bits == 32 else np.uint64
  total = sum(sa.quantize(updates[i], num_participants=n, bits=bits).astype(dtype)
              for i in survivors)
  return sa.dequantize(np.asarray(total, dtype), bits=bits)


# ---------------------------------------------------------------------------
# Honest runs.


@pytest.mark.parametrize('bits', [32, 64])
def test_sum_is_exact_over_quantised_values(bits):
  rng = np.random.default_rng(0)
  n = 5
  x = rng.normal(size=(n, 300)) * 3
  server, clients = _setup(n, 3, bits=bits)
  total = _run(server, clients, x)
  q = sum(sa.quantize(xi, bits=bits, num_participants=n) for xi in x)
  np.testing.assert_array_equal(server.sum_quantized, q)
  np.testing.assert_allclose(total, x.sum(0), atol=n * 2.0 ** -17)
  assert server.misbehaving == {}


def test_single_masked_update_looks_uniform():
  n, size = 4, 40_000
  x = np.zeros((n, size))  # the least random input there is
  server, clients = _setup(n, 3)
  masked = _until_masked(server, clients, x)
  y = wire.masked_array(masked[0])
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
  np.testing.assert_array_equal(total, _expected(x, (0, 2, 3, 5), 6))


def test_too_many_dropouts_raise():
  with pytest.raises(sa.DropoutError, match='threshold'):
    sa.secure_sum(np.ones((4, 3)), dropped=[0, 1], threshold=3)


def test_participant_reused_over_rounds():
  server, clients = _setup(3, 2)
  for r, value in enumerate([1.0, 2.0]):
    total = _run(server, clients, np.full((3, 2), value), r)
    np.testing.assert_array_equal(total, [3 * value] * 2)


# ---------------------------------------------------------------------------
# Thresholds, arguments and numeric edges.


@pytest.mark.parametrize('n,t', [(4, 2), (6, 3), (5, 2), (3, 1), (2, 1), (3, 4), (1, 1)])
def test_threshold_must_exceed_half(n, t):
  with pytest.raises(ValueError, match='threshold' if n >= 2 else 'num_participants'):
    sa.Server(n, t, session=b's')
  if n >= 2:
    with pytest.raises(ValueError, match='threshold'):
      sa.secure_sum(np.ones((n, 2)), threshold=t)
    keys, registry = sa.generate_identities(n)
    with pytest.raises(ValueError, match='threshold'):
      sa.Participant(0, n, t, wire.random_key(), signing_key=keys[0], registry=registry,
                     session=b's')


@pytest.mark.parametrize('n', [2, 3, 4, 5, 6, 9, 30])
def test_default_threshold_is_a_strict_majority(n):
  t = max(2, -(-2 * n // 3))  # secure_sum's default
  assert 2 * t > n
  sa.Server(n, t, session=b's')


def test_invalid_arguments():
  with pytest.raises(TypeError, match='session'):
    sa.Server(3, 2, session='s')
  keys, registry = sa.generate_identities(3)
  server_key = wire.random_key()
  with pytest.raises(ValueError, match='registry'):
    sa.Participant(0, 3, 2, server_key, signing_key=keys[1], registry=registry, session=b's')
  with pytest.raises(ValueError, match='registry'):
    sa.Participant(0, 3, 2, server_key, signing_key=keys[0], registry={0: registry[0]},
                   session=b's')
  with pytest.raises(TypeError, match='signing_key'):
    sa.Participant(0, 3, 2, server_key, signing_key=b'k' * 32, registry=registry, session=b's')
  with pytest.raises(ValueError, match='index'):
    sa.Participant(3, 3, 2, server_key, signing_key=keys[0], registry=registry, session=b's')
  with pytest.raises(ValueError, match='server_public_key'):
    sa.Participant(0, 3, 2, bytes(32), signing_key=keys[0], registry=registry, session=b's')
  with pytest.raises(TypeError, match='record'):
    sa.Participant(0, 3, 2, server_key, signing_key=keys[0], registry=registry, session=b's',
                   record='file.jsonl')
  with pytest.raises(ValueError, match='dropped'):
    sa.secure_sum(np.ones((3, 2)), dropped=[5])
  with pytest.raises(ValueError, match='frac_bits'):
    sa.Server(3, 2, session=b's', frac_bits=31)
  with pytest.raises(ValueError, match='clip'):
    sa.Server(3, 2, session=b's', clip=float('inf'))


def test_registry_errors_name_ids_not_lists():
  keys, registry = sa.generate_identities(40)
  partial = {i: registry[i] for i in range(35)}
  with pytest.raises(ValueError, match='it lacks the ids 35, 36, 37 and 2 more') as e:
    sa.Participant(0, 40, 30, wire.random_key(), signing_key=keys[0], registry=partial,
                   session=b's')
  assert len(str(e.value)) < 200
  duplicated = dict(registry) | {7: registry[3]}  # a Sybil: one identity for two ids
  with pytest.raises(ValueError, match='participants 3 and 7 share one identity key'):
    sa.Participant(0, 40, 30, wire.random_key(), signing_key=keys[0], registry=duplicated,
                   session=b's')


@pytest.mark.parametrize('value,error,match', [
    (None, TypeError, 'None'),
    ([1.0, np.nan], ValueError, 'NaN'),
    ([1.0, np.inf], ValueError, 'Inf'),
    ([-np.inf], ValueError, 'Inf'),
    ([1 + 2j], TypeError, 'complex'),
    (['a'], TypeError, 'real'),
    ([True], TypeError, 'real'),
])
def test_numeric_edges_each_have_their_error(value, error, match):
  # Before: None read as "contains NaN"; +-Inf clipped silently (3 x Inf summed to
  # 32767.99); complex only warned.
  with pytest.raises(error, match=match):
    sa.quantize(value)
  server, clients = _setup(3, 2)
  with pytest.raises(error, match=match):
    _until_masked(server, clients, [value, [0.0], [0.0]])
  if value is not None:
    m = ddp.distributed_discrete_gaussian(1.0, np.asarray(value).size, noise_multiplier=1.0,
                                          num_participants=3, min_noise_shares=2)
    with pytest.raises(error, match=match):
      ddp.noisy_encode(value, m)


def test_frac_bits_too_large_for_n_is_refused_before_any_work():
  # Before: frac_bits=30 with n = 3 silently clipped 1.0 to 0.667.
  for build in (lambda: sa.Server(3, 2, session=b's', frac_bits=30),
                lambda: sa.quantize([1.0], frac_bits=30, num_participants=3),
                lambda: sa.secure_sum(np.ones((3, 1)), frac_bits=30)):
    with pytest.raises(ValueError, match=r'frac_bits=30 is too large .* frac_bits <= 28'):
      build()
  assert sa.clip_limit(3, frac_bits=28) >= 2 ** 28
  # An explicit smaller clip makes the same frac_bits usable.
  np.testing.assert_array_equal(
      sa.secure_sum(np.full((3, 2), 0.125), frac_bits=30, clip=0.25), [0.375, 0.375])


def test_quantize_clips_finite_values_to_the_limit():
  limit = sa.clip_limit(4)
  assert limit == (2 ** 31 - 1) // 8
  q = sa.quantize([1e9, -1e9, 3.0], frac_bits=16, num_participants=4)
  np.testing.assert_array_equal(q.view(np.int32), [limit, -limit, 3 * 2 ** 16])
  q = sa.quantize([1e9, -2.5, 0.5], num_participants=4, clip=2.0)
  np.testing.assert_array_equal(q.view(np.int32), [2 ** 17, -2 ** 17, 2 ** 15])
  with pytest.raises(ValueError, match='bits'):
    sa.quantize([1.0], bits=16)
  with pytest.raises(ValueError, match='clip=1000000.0 at frac_bits=16 needs'):
    sa.quantize([1.0], num_participants=4, clip=1e6)


def _float_clip_quantize(x, *, frac_bits, bits, num_participants):
  """A float64 clip at the ring's limit (an old encoding): must fail below."""
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
  limit = sa.clip_limit(n, bits=bits)
  assert 2 * n * limit < 2 ** (bits - 1)  # one guard bit for the range check
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
def test_protocol_sum_at_the_limit_is_exact(n, bits):
  limit = sa.clip_limit(n, bits=bits)
  for sign in (1, -1):
    server, clients = _setup(n, n // 2 + 1, bits=bits)
    total = _run(server, clients, np.full((n, 2), sign * 1e15 * 2 ** 20))
    signed = server.sum_quantized.view(np.int32 if bits == 32 else np.int64)
    assert [int(s) for s in signed] == [sign * n * limit] * 2
    # The exact integer result; the float64 one rounds at the 64-bit limit.
    assert [int(s) for s in server.sum_signed] == [sign * n * limit] * 2
    assert total[0] == float(sign * n * limit) / 2 ** 16
  if bits == 64:
    assert float(n * limit) != n * limit  # why sum_signed exists


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
  session, round_ = b'session-ks', 0
  server, clients = _setup(n, t, session=session, participant=participant)
  evil = wire.ServerKeys(server, clients, session)
  update = np.random.default_rng(5).normal(size=16)
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  entries = wire.unpack_blobs(keys[victim].payload)
  fake_c = {v: X25519PrivateKey.generate() for v in entries if v != victim}
  fake_s = {v: X25519PrivateKey.generate() for v in entries if v != victim}
  for v in fake_c:  # the peers' commitments and real signatures stay: a server cannot sign
    entries[v] = (wire.raw(fake_c[v].public_key()) + wire.raw(fake_s[v].public_key())
                  + entries[v][2 * K:])
  shares_msg = clients[victim].share(evil.send('keys', victim, wire.pack_blobs(entries)))
  victim_c_pk, victim_s_pk = entries[victim][:K], entries[victim][K:2 * K]
  s_shares, b_shares = [], []
  for v, blob in wire.unpack_blobs(shares_msg.payload).items():
    s, b = wire.decrypt_share(fake_c[v], victim_c_pk, session, round_, victim, v, blob)
    s_shares.append((v + 1, s))
    b_shares.append((v + 1, b))
  b_seed = wire.interpolate(b_shares[:t])
  s_sk = X25519PrivateKey.from_private_bytes(wire.interpolate(s_shares[:t]))
  assert wire.raw(s_sk.public_key()) == victim_s_pk
  # Any well-formed bytes will do as the peers' ciphertexts: the victim only stores them.
  fwd = evil.send('forward', victim, wire.pack_blobs({v: JUNK for v in fake_c}))
  y = wire.masked_array(clients[victim].masked_input(fwd, update))
  s_pks = {v: wire.raw(k.public_key()) for v, k in fake_s.items()}
  recovered = wire.unmask(y, victim, b_seed, s_sk, s_pks, session, round_)
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
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  entries = wire.unpack_blobs(keys[0].payload)
  rogue = Ed25519PrivateKey.generate()
  c_pk, s_pk, commit = wire.random_key(), entries[2][K:2 * K], entries[2][2 * K:3 * K]
  entries[2] = c_pk + s_pk + commit + rogue.sign(
      wire.advertise_statement(b'session-0', 0, 2, c_pk, s_pk, commit))
  with pytest.raises(sa.SignatureError, match='participant 2'):
    clients[0].share(evil.send('keys', 0, wire.pack_blobs(entries)))
  # The round is aborted for that participant: no second chance.
  with pytest.raises(sa.SecureAggregationError, match='aborted'):
    clients[0].share(keys[0])


def test_substituted_commitment_rejected():
  # The commitment to b_u is signed with the keys: a server cannot swap it for
  # one it could open (and so pass a wrong seed off as verified).
  server, clients = _setup(4, 3)
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  entries = wire.unpack_blobs(keys[0].payload)
  entries[3] = entries[3][:2 * K] + bytes(wire.COMMIT) + entries[3][3 * K:]
  with pytest.raises(sa.SignatureError, match='participant 3'):
    clients[0].share(evil.send('keys', 0, wire.pack_blobs(entries)))


@pytest.mark.parametrize('source', ['other session', 'earlier round'])
def test_replayed_signed_keys_rejected(source):
  identities = sa.generate_identities(4)
  old_server, old = _setup(4, 3, identities=identities,
                           session=b'session-old' if source == 'other session' else b'session-0')
  old_server.start_round(0)
  old_keys = old_server.collect_keys([c.advertise(0) for c in old])
  old_entry = wire.unpack_blobs(old_keys[0].payload)[1]
  if source == 'other session':
    server, clients, round_ = *_setup(4, 3, identities=identities), 0
  else:
    server, clients, round_ = old_server, old, 1
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  entries = wire.unpack_blobs(keys[0].payload)
  entries[1] = old_entry  # a validly signed entry, from elsewhere
  with pytest.raises(sa.SignatureError, match='participant 1'):
    clients[0].share(evil.send('keys', 0, wire.pack_blobs(entries), round_))


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
  evil = wire.ServerKeys(server, clients, session)
  x = np.random.default_rng(3).normal(size=(n, 8))
  server.start_round(round_)
  keys = server.collect_keys([c.advertise(round_) for c in clients])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  masked = [clients[u].masked_input(m, x[u]) for u, m in fwd.items()]
  y_victim = wire.masked_array(masked[0])
  server.collect_masked(masked)
  views = {u: view_a for u in group_a} | {u: view_b for u in group_b}
  signatures = {}  # view -> {signer: signature}
  for u, view in views.items():
    payload = clients[u].consistency_check(evil.send('survivors', u, wire.pack_ids(view))).payload
    signatures.setdefault(view, {})[u] = payload
  for c in corrupt:
    for view in (view_a, view_b):
      signatures.setdefault(view, {})[c] = identities[0][c].sign(
          wire.consistency_statement(session, round_, c, view))
  b_shares, s_shares = [], []
  for u, view in views.items():
    relayed = dict(signatures[view])
    if relay == 'all':  # naive: every signature the server holds
      relayed |= {v: s for other in signatures.values() for v, s in other.items()
                  if v not in relayed and v in view}
    reveal = clients[u].unmask(evil.send('signatures', u, wire.pack_blobs(relayed)))
    blob = wire.unpack_blobs(reveal.payload)[0]
    (b_shares if blob[0] else s_shares).append((u + 1, int.from_bytes(blob[1:], 'big')))
  entries = wire.unpack_blobs(keys[0].payload)
  for c in corrupt:  # the server reads its corrupt participants' ciphertexts from the victim
    own = wire.OwnKeys(clients[c])
    blob = wire.unpack_blobs(fwd[c].payload)[0]
    s, b = wire.decrypt_share(own.c_sk, entries[0][:K], session, round_, 0, c, blob)
    b_shares.append((c + 1, b))
    s_shares.append((c + 1, s))
  assert len(b_shares) >= t and len(s_shares) >= t, 'the server got too few shares'
  b_seed = wire.interpolate(b_shares[:t])
  s_sk = X25519PrivateKey.from_private_bytes(wire.interpolate(s_shares[:t]))
  s_pks = {v: e[K:2 * K] for v, e in entries.items() if v != 0}
  recovered = wire.unmask(y_victim, 0, b_seed, s_sk, s_pks, session, round_)
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
  evil = wire.ServerKeys(server, clients, b'session-0')
  masked = _until_masked(server, clients, np.ones((4, 3)))
  surv = server.collect_masked(masked)
  clients[1].consistency_check(surv[1])
  with pytest.raises(sa.SecureAggregationError, match='must follow'):
    clients[1].consistency_check(evil.send('survivors', 1, wire.pack_ids({1, 2, 3})))


def test_inconsistent_sets_rejected():
  server, clients = _setup(4, 3)
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients[:3]])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  boxes = wire.unpack_blobs(fwd[0].payload) | {3: JUNK}  # 3 is not in U1
  with pytest.raises(sa.ConsistencyError, match='participant 3, who is not in U1'):
    clients[0].masked_input(evil.send('forward', 0, wire.pack_blobs(boxes)), np.ones(2))


def test_signatures_from_outside_survivor_set_rejected():
  server, clients = _setup(4, 3)
  evil = wire.ServerKeys(server, clients, b'session-0')
  masked = _until_masked(server, clients, np.ones((4, 3)))
  surv = server.collect_masked(masked)
  view = frozenset({0, 1, 2})
  msgs = [clients[u].consistency_check(evil.send('survivors', u, wire.pack_ids(view)))
          for u in (0, 1, 2)]
  sigs = {m.sender: m.payload for m in msgs}
  sigs[3] = clients[3].consistency_check(surv[3]).payload
  with pytest.raises(sa.ConsistencyError, match='participant 3, who is not in the survivor'):
    clients[0].unmask(evil.send('signatures', 0, wire.pack_blobs(sigs)))


def test_unmask_before_consistency_check_refused():
  server, clients = _setup(3, 2)
  evil = wire.ServerKeys(server, clients, b'session-0')
  masked = _until_masked(server, clients, np.ones((3, 3)))
  server.collect_masked(masked)
  with pytest.raises(sa.SecureAggregationError, match='must follow'):
    clients[0].unmask(evil.send('signatures', 0, b''))


# ---------------------------------------------------------------------------
# A server that repeats a round; restarted participants.


def _repeated_round(records=None, dp=None, n=4, t=3, victim=0, size=16, digest=None,
                    new_session=False):
  """Two protocol-compliant rounds on the same model: the victim takes part in the
  first and is dropped before uploading in the second (in the same session, or
  in a new one, where every client builds new Participant objects). Returns the
  difference of the two sums (signed integers) and the victim's encoded update."""
  rng = np.random.default_rng(7)
  # Updates on the fixed-point grid, so that encoding them is exact (no rounding noise).
  x = rng.integers(-2000, 2000, size=(n, size)) / 2.0 ** 16
  identities = sa.generate_identities(n)
  server, clients = _setup(n, t, records=records, dp=dp, identities=identities)
  sums = []
  for round_, dropped in ((0, ()), (1, (victim,))):
    if new_session and round_:
      server, clients = _setup(n, t, records=records, dp=dp, identities=identities,
                               session=b'session-1')
    _finish(server, clients, _until_masked(server, clients, x, round_, dropped, digest))
    sums.append(server.sum_signed.astype(np.int64))
  return sums[0] - sums[1], np.rint(x[victim] * 2 ** 16).astype(np.int64)


def test_repeated_round_recovers_the_victim_exactly_without_a_record():
  # Control (the reported attack): nothing in the protocol stops it.
  recovered, truth = _repeated_round()
  np.testing.assert_array_equal(recovered, truth)


@pytest.mark.parametrize('new_session', [False, True])
def test_repeated_round_refused_by_the_participant_record(tmp_path, new_session):
  records = [sa.ParticipantRecord(tmp_path / f'p{i}.jsonl') for i in range(4)]
  with pytest.raises(sa.RepeatedContributionError, match='this global model'):
    _repeated_round(records=records, digest=sa.model_digest({'global': np.zeros(3)}),
                    new_session=new_session)


def test_repeated_round_with_distributed_dp_recovers_only_noise_of_the_reported_std():
  n, t, size = 4, 3, 20_000
  dp = ddp.distributed_discrete_gaussian(1.0, size, noise_multiplier=0.5, num_participants=n,
                                         min_noise_shares=t)
  recovered, truth = _repeated_round(dp=dp, n=n, t=t, size=size)
  noise = (recovered - truth) / 2.0 ** 16
  # Round 0 carried 4 fresh shares, round 1 another 3: 7 independent shares.
  sigma = dp.sum_stddev(2 * n - 1)
  assert abs(noise.std() / sigma - 1) < 0.03  # the std of a std estimate is 0.5 % here
  assert abs(noise.mean()) < 5 * sigma / np.sqrt(size)
  assert dp.stddev <= sigma and np.isfinite(dp.epsilon(delta=1e-5))


def _snapshot(participant):
  """A participant's state as a node would persist it (keys as raw bytes)."""
  return participant.to_bytes()


@pytest.mark.parametrize('with_record', [True, False])
def test_restored_participant_signs_at_most_one_survivor_set(tmp_path, with_record):
  # A node persists its state after uploading, signs U3, crashes before saving,
  # restarts from the snapshot and is sent another survivor set.
  session = b'session-0'
  identities = sa.generate_identities(5)
  records = ([sa.ParticipantRecord(tmp_path / f'p{i}.jsonl') for i in range(5)]
             if with_record else None)
  server, clients = _setup(5, 3, identities=identities, records=records)
  evil = wire.ServerKeys(server, clients, session)
  digest = sa.model_digest(np.zeros(2)) if with_record else None
  surv = server.collect_masked(_until_masked(server, clients, np.ones((5, 2)), digest=digest))
  saved = _snapshot(clients[1])
  first = clients[1].consistency_check(surv[1])
  other = {1, 2, 3}
  other_view = evil.send('survivors', 1, wire.pack_ids(other))
  if with_record:
    with pytest.raises(sa.SecondSurvivorSetError, match='already signed another survivor set'):
      sa.Participant.from_bytes(saved).consistency_check(other_view)
    # The same set again is harmless: Ed25519 signatures are deterministic.
    again = sa.Participant.from_bytes(saved).consistency_check(
        evil.send('survivors', 1, surv[1].payload))
    assert again.payload == first.payload
  else:  # control: the old behaviour, a second valid signature, of another set
    sig = sa.Participant.from_bytes(saved).consistency_check(other_view).payload
    identities[0][1].public_key().verify(sig, wire.consistency_statement(session, 0, 1, other))


def test_restarted_participant_cannot_contribute_twice_to_a_round(tmp_path):
  identities = sa.generate_identities(4)
  path = tmp_path / 'p0.jsonl'

  def records(tag):
    return [sa.ParticipantRecord(path)] + [sa.ParticipantRecord(tmp_path / f'{tag}{i}.jsonl')
                                           for i in range(1, 4)]

  server, clients = _setup(4, 3, identities=identities, records=records('a'))
  _until_masked(server, clients, np.ones((4, 2)), digest=sa.model_digest(np.ones(1)))
  # The client restarts (new Participant objects, the same record file) and the
  # server replays the session and round with another model.
  server, clients = _setup(4, 3, identities=identities, records=records('b'))
  with pytest.raises(sa.RepeatedContributionError, match='session 73657373.. round 0'):
    _until_masked(server, clients, np.ones((4, 2)), digest=sa.model_digest(np.full(1, 2.0)))
  assert sa.ParticipantRecord(path).num_contributions() == 1


def test_participant_record_file_semantics(tmp_path):
  path = tmp_path / 'record.jsonl'
  record = sa.ParticipantRecord(path)
  model_a, model_b = sa.model_digest(np.zeros(2)), sa.model_digest(np.ones(2))
  record.contribute(b's1', 0, model_a)
  # A new object (a restarted client) reads the same file.
  again = sa.ParticipantRecord(str(path))
  with pytest.raises(sa.RepeatedContributionError, match='session 7331.. round 0'):
    again.contribute(b's1', 0, model_b)            # same session and round
  with pytest.raises(sa.RepeatedContributionError, match='this global model'):
    again.contribute(b's2', 5, model_a)            # same model, any round
  again.contribute(b's1', 1, model_b)
  assert again.num_contributions() == 2
  set_a, set_b = sa.model_digest(np.arange(3)), sa.model_digest(np.arange(4))
  again.sign_survivors(b's1', 1, set_a)
  again.sign_survivors(b's1', 1, set_a)            # the same set: allowed
  with pytest.raises(sa.SecondSurvivorSetError):
    sa.ParticipantRecord(path).sign_survivors(b's1', 1, set_b)
  # A crash during an append leaves a partial last line: dropped, nothing was sent.
  with open(path, 'ab') as f:
    f.write(b'{"kind": "contrib')
  assert sa.ParticipantRecord(path).num_contributions() == 2
  # Anything else unreadable fails closed.
  with open(path, 'ab') as f:
    f.write(b'not json\n')
  with pytest.raises(sa.RecordCorruptedError, match='line 4'):
    sa.ParticipantRecord(path).contribute(b's3', 0, sa.model_digest(np.full(2, 3.0)))
  with pytest.raises(TypeError, match='model_digest must be 32 bytes'):
    record.contribute(b's1', 9, b'short')
  with pytest.raises(ValueError, match='folder'):
    sa.ParticipantRecord(tmp_path / 'missing' / 'record.jsonl')


def test_participant_with_record_needs_the_model_digest(tmp_path):
  records = [sa.ParticipantRecord(tmp_path / f'p{i}.jsonl') for i in range(3)]
  server, clients = _setup(3, 2, records=records)
  with pytest.raises(TypeError, match='model_digest'):
    _until_masked(server, clients, np.ones((3, 2)))
  assert records[0].num_contributions() == 0


def test_identity_and_registry_files(tmp_path):
  # What a node runs once, locally: its private key never leaves it.
  publics = {i: sa.write_identity(tmp_path / f'node{i}.key') for i in range(3)}
  assert (tmp_path / 'node0.key').stat().st_mode & 0o777 == 0o600
  with pytest.raises(ValueError, match='never overwritten'):
    sa.write_identity(tmp_path / 'node0.key')
  sa.write_registry(tmp_path / 'registry.json', publics)
  registry = sa.read_registry(tmp_path / 'registry.json', 3)
  key = sa.read_identity(tmp_path / 'node1.key')
  server = sa.Server(3, 2, session=b's')
  sa.Participant(1, 3, 2, server.public_key, signing_key=key, registry=registry, session=b's')
  (tmp_path / 'node1.key').chmod(0o644)
  with pytest.raises(ValueError, match='owner only'):
    sa.read_identity(tmp_path / 'node1.key')
  bad = tmp_path / 'bad.json'
  for text, match in (('{"0": "00", "1": "11"}', 'id .0. must be .* 32-byte'),
                      ('{"x": "00"}', 'entry .x. is not an id'),
                      ('[1, 2]', 'JSON object'),
                      ('{"0": "%s", "1": "%s", "2": "%s"}' % (publics[0].hex(), publics[0].hex(),
                                                             publics[2].hex()),
                       'participants 0 and 1 share one identity key'),
                      ('{"0": "%s"}' % publics[0].hex(), 'lacks the ids 1, 2')):
    bad.write_text(text)
    with pytest.raises(ValueError, match=match):
      sa.read_registry(bad, 3)


def test_model_digest():
  a = {'w': np.zeros((2, 3)), 'b': np.zeros(3)}
  assert sa.model_digest(a) == sa.model_digest({'b': np.zeros(3), 'w': np.zeros((2, 3))})
  assert sa.model_digest(a) != sa.model_digest({'w': np.zeros((3, 2)), 'b': np.zeros(3)})
  b = {'w': np.zeros((2, 3)), 'b': np.array([0.0, 0.0, 1e-300])}
  assert sa.model_digest(a) != sa.model_digest(b)
  assert len(sa.model_digest(np.ones(4))) == 32


# ---------------------------------------------------------------------------
# Malicious participants: wrong shares, inconsistent dealing, out-of-range inputs.


class _FullRing(sa.Server):
  """Deliberately weakened: the range the old encoding allowed (the whole ring), so
  that the range check cannot see a wrong sum."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.limit = (2 ** (self.bits - 1) - 1) // self.n


class _OldServer(_FullRing):
  """Deliberately weakened further: trusts every reconstructed secret (the old server)."""

  def _secret_check(self, v, survived):
    return lambda s: True


def _round_with_wrong_reveal(n, t, attacker, owner, server_cls=_FullRing):
  """``attacker`` reveals a wrong share of ``owner``'s self-mask seed at the unmask step."""
  x = np.random.default_rng(11).uniform(-1, 1, size=(n, 32))
  server, clients = _setup(n, t, server_cls=server_cls)
  surv = server.collect_masked(_until_masked(server, clients, x))
  sigs = server.collect_consistency([clients[u].consistency_check(m) for u, m in surv.items()])
  reveals = [clients[u].unmask(m) for u, m in sigs.items()]
  blobs = wire.unpack_blobs(reveals[attacker].payload)
  blobs[owner] = blobs[owner][:1] + ((int.from_bytes(blobs[owner][1:], 'big') + 1) % sa.PRIME
                                     ).to_bytes(wire.FIELD, 'big')
  reveals[attacker] = wire.OwnKeys(clients[attacker]).send('unmask', wire.pack_blobs(blobs))
  return server, server.finish(reveals), _expected(x, range(n), n)


def test_wrong_share_is_corrected_and_its_sender_named():
  with pytest.warns(sa.MisbehaviourWarning, match='participants 1'):
    server, total, truth = _round_with_wrong_reveal(6, 4, attacker=1, owner=0)
  np.testing.assert_array_equal(total, truth)
  assert server.misbehaving == {1: [0]}


_decode = sa.shamir_decode


def test_a_participant_lying_about_every_share_is_decoded_around_once(monkeypatch):
  # Bounded work: after its first wrong share is located, its other shares are
  # left out, so the O(k^3) decoding runs once, not once per secret.
  calls = []
  monkeypatch.setattr(sa, 'shamir_decode', lambda *a: calls.append(1) or _decode(*a))
  x = np.random.default_rng(14).uniform(-1, 1, size=(7, 8))
  server, clients = _setup(7, 4, server_cls=_FullRing)
  surv = server.collect_masked(_until_masked(server, clients, x))
  sigs = server.collect_consistency([clients[u].consistency_check(m) for u, m in surv.items()])
  reveals = [clients[u].unmask(m) for u, m in sigs.items()]
  blobs = wire.unpack_blobs(reveals[1].payload)
  for v in blobs:
    blobs[v] = blobs[v][:1] + ((int.from_bytes(blobs[v][1:], 'big') + 1) % sa.PRIME
                               ).to_bytes(wire.FIELD, 'big')
  reveals[1] = wire.OwnKeys(clients[1]).send('unmask', wire.pack_blobs(blobs))
  with pytest.warns(sa.MisbehaviourWarning):
    total = server.finish(reveals)
  np.testing.assert_array_equal(total, _expected(x, range(7), 7))
  assert server.misbehaving == {1: [0]} and len(calls) == 1


def test_wrong_share_without_redundancy_is_a_named_error():
  with pytest.raises(sa.ReconstructionError, match='self-mask seed b of participant 0 .* '
                     'commitment'):
    _round_with_wrong_reveal(3, 2, attacker=0, owner=0)


def test_wrong_share_corrupts_the_sum_without_verification():
  # Control (the reported attack): without the commitment check the sum is
  # wrong and nothing raises.
  _, total, truth = _round_with_wrong_reveal(6, 4, attacker=1, owner=0, server_cls=_OldServer)
  assert np.abs(total - truth).max() > 1.0
  # With the range check on, the same garbage sum is refused even unverified.
  with pytest.raises(sa.SumOutOfRangeError):
    _round_with_wrong_reveal(6, 4, attacker=1, owner=0,
                             server_cls=type('_RangeOnly', (sa.Server,), {
                                 '_secret_check': _OldServer._secret_check}))


def _dealer_round(n, t, bad_holders, what='b'):
  """Participant 0 deals shares of its own secret that disagree for ``bad_holders``."""
  session = b'session-0'
  x = np.random.default_rng(12).uniform(-1, 1, size=(n, 8))
  server, clients = _setup(n, t, session=session)
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  share_msgs = {u: clients[u].share(m) for u, m in keys.items()}
  dealer = wire.OwnKeys(clients[0])
  s_shares = sa.shamir_split(dealer.private_key_int(), n, t)
  b_shares = sa.shamir_split(int.from_bytes(dealer.b, 'big'), n, t)
  clients[0]._own_shares = (s_shares[0][1], b_shares[0][1])  # the dealer's own state
  entries = wire.unpack_blobs(keys[0].payload)
  boxes = {}
  for v in range(1, n):
    s, b = s_shares[v][1], b_shares[v][1]
    if v in bad_holders:
      s, b = (s + 1, b) if what == 's' else (s, b + 1)
    boxes[v] = wire.encrypt_share(dealer.c_sk, entries[v][:K], session, 0, 0, v, s, b)
  share_msgs[0] = dealer.send('share', wire.pack_blobs(boxes))
  fwd = server.collect_shares(list(share_msgs.values()))
  dropped = {0} if what == 's' else set()
  masked = [clients[u].masked_input(m, x[u]) for u, m in fwd.items() if u not in dropped]
  total = _finish(server, clients, masked)
  return server, total, _expected(x, sorted(set(range(n)) - dropped), n)


@pytest.mark.parametrize('what', ['b', 's'])
def test_inconsistent_dealing_corrected_when_few_shares_disagree(what):
  with pytest.warns(sa.MisbehaviourWarning):
    server, total, truth = _dealer_round(7, 4, bad_holders={2}, what=what)
  np.testing.assert_array_equal(total, truth)
  assert server.misbehaving == {2: [0]}


@pytest.mark.parametrize('what,secret', [('b', 'self-mask seed b'), ('s', 'masking key s')])
def test_inconsistent_dealing_beyond_correction_is_a_named_error(what, secret):
  with pytest.raises(sa.ReconstructionError, match=f'{secret}.* of participant 0'):
    _dealer_round(7, 4, bad_holders={1, 2}, what=what)


def _round_with_offset(offset, server_cls=sa.Server, n=3):
  """Participant 1 adds ``offset`` (ring units) to its masked input: an input
  outside (or inside) the clip range, invisible under the masks."""
  x = np.random.default_rng(13).uniform(-1, 1, size=(n, 4))
  server, clients = _setup(n, 2, server_cls=server_cls)
  masked = _until_masked(server, clients, x)
  y = (wire.masked_array(masked[1]).astype(np.uint64) + offset) % 2 ** 32
  masked[1] = wire.OwnKeys(clients[1]).send('masked', y.astype('<u4').tobytes())
  return _finish(server, clients, masked), _expected(x, range(n), n)


def test_input_outside_the_clip_range_is_refused():
  with pytest.raises(sa.SumOutOfRangeError, match='4 of 4 entries .* the round must not'):
    _round_with_offset(2 ** 31 - 7)


def test_input_outside_the_clip_range_corrupts_the_sum_without_a_guard_bit():
  # Control (the reported attack: a sum wrong by about 3.3e4 per entry).
  total, truth = _round_with_offset(2 ** 31 - 7, server_cls=_FullRing)
  np.testing.assert_allclose(np.abs(total - truth), 32768.0, rtol=1e-3)


def test_a_shift_within_the_range_is_not_detected():
  # The documented limit: without range proofs a participant can move the sum
  # within what the survivors' clip range allows.
  offset = sa.clip_limit(3)
  total, truth = _round_with_offset(offset)
  np.testing.assert_allclose(total - truth, offset / 2 ** 16)


def test_reveal_that_is_not_a_field_element_is_named():
  # Before: a raw OverflowError.
  x = np.ones((3, 2))
  server, clients = _setup(3, 2)
  surv = server.collect_masked(_until_masked(server, clients, x))
  sigs = server.collect_consistency([clients[u].consistency_check(m) for u, m in surv.items()])
  reveals = [clients[u].unmask(m) for u, m in sigs.items()]
  blobs = wire.unpack_blobs(reveals[2].payload)
  blobs[0] = b'\x01' + (2 ** 527).to_bytes(wire.FIELD, 'big')
  reveals[2] = wire.OwnKeys(clients[2]).send('unmask', wire.pack_blobs(blobs))
  with pytest.raises(sa.MalformedMessageError, match='participant 2 for participant 0'):
    server.finish(reveals)


# ---------------------------------------------------------------------------
# Malformed messages, invalid keys, bounded work.


@pytest.mark.parametrize('bad', list(wire.small_order_keys()))
def test_invalid_x25519_key_refused_at_advertisement_naming_the_sender(bad):
  # Before: every honest peer raised "ValueError: Error computing shared key".
  key = wire.small_order_keys()[bad]
  session = b'session-0'
  identities = sa.generate_identities(3)
  server, clients = _setup(3, 2, identities=identities, session=session)
  evil = wire.ServerKeys(server, clients, session)
  server.start_round(0)
  ads = [c.advertise(0) for c in clients]
  honest = ads[1].payload
  s_pk, commit = honest[K:2 * K], honest[2 * K:3 * K]
  sig = identities[0][1].sign(wire.advertise_statement(session, 0, 1, key, s_pk, commit))
  ads[1] = wire.OwnKeys(clients[1]).send('advertise', key + s_pk + commit + sig)
  with pytest.raises(sa.InvalidKeyError, match='participant 1'):
    server.collect_keys(ads)
  # A server that relays it anyway: the honest peer names the sender too.
  entries = {u: m.payload for u, m in enumerate(ads)}
  with pytest.raises(sa.InvalidKeyError, match='participant 1'):
    clients[0].share(evil.send('keys', 0, wire.pack_blobs(entries)))


def test_invalid_channel_key_refused_at_registration():
  server = sa.Server(3, 2, session=b's')
  with pytest.raises(sa.InvalidKeyError, match='participant 2'):
    server.register(2, wire.small_order_keys()['order 8 (a)'])


def test_empty_encrypted_share_is_named():
  # Before: "ValueError: Nonce must be between 8 and 128 bytes" at the unmask step.
  server, clients = _setup(3, 2)
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  shares = [clients[u].share(m) for u, m in keys.items()]
  boxes = wire.unpack_blobs(shares[1].payload) | {0: b''}
  bad = wire.OwnKeys(clients[1]).send('share', wire.pack_blobs(boxes))
  with pytest.raises(sa.MalformedMessageError, match='participant 1'):
    server.collect_shares([shares[0], bad, shares[2]])
  with pytest.raises(sa.MalformedMessageError, match='the forwarded shares'):
    clients[0].masked_input(evil.send('forward', 0, wire.pack_blobs({1: b'', 2: JUNK})),
                            np.ones(2))


@pytest.mark.parametrize('field,value', [
    ('sender', '1'), ('sender', 2 ** 70), ('sender', 99), ('sender', None), ('round', -1),
    ('round', '0'), ('round', 2 ** 64), ('step', 5), ('step', 'other'), ('recipient', None),
    ('recipient', [1]), ('payload', 'text'), ('payload', None), ('tag', b''), ('session', None),
    ('session', b''),
])
def test_wrong_field_types_are_named_errors(field, value):
  # Before: struct.error and TypeError from deep inside.
  server, clients = _setup(3, 2)
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(0)
  ads = [c.advertise(0) for c in clients]
  ads[2] = ads[2]._replace(**{field: value})
  with pytest.raises(sa.MalformedMessageError, match='sender|malformed'):
    server.collect_keys(ads)
  bad = evil.send('keys', 0, b'')._replace(**{field: value})
  with pytest.raises(sa.MalformedMessageError):
    clients[0].share(bad)


def test_more_messages_than_participants_refused_before_reading_any():
  server, clients = _setup(4, 3)
  server.start_round(0)
  with pytest.raises(sa.MalformedMessageError, match='5 .advertise. messages for 4'):
    server.collect_keys([None] * 5)
  ads = [c.advertise(0) for c in clients]
  with pytest.raises(sa.MalformedMessageError, match='more than 4'):
    server.collect_keys(iter(ads + ads[:1]))  # an iterator: counted while reading


def test_a_list_longer_than_the_participant_count_costs_nothing():
  # Before: a million blobs for unknown ids cost the server 10 s and no error;
  # a million-entry key list cost a participant 17 s before its error.
  entries = 100_000
  server, clients = _setup(3, 2)
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  shares = [clients[u].share(m) for u, m in keys.items()]
  flood = b''.join(wire.i64(10 + i) + wire.u32(wire.CIPHERTEXT) + JUNK for i in range(entries))
  bad = wire.OwnKeys(clients[1]).send('share', flood)
  with pytest.raises(sa.MalformedMessageError, match='participant 1 holds 100000 entries; at '
                     'most 2') as e:
    server.collect_shares([shares[0], bad, shares[2]])
  assert len(str(e.value)) < 200
  server2, clients2 = _setup(3, 2)
  evil = wire.ServerKeys(server2, clients2, b'session-0')
  clients2[0].advertise(0)
  big = b''.join(wire.i64(i) + wire.u32(wire.ADVERTISED) + bytes(wire.ADVERTISED)
                 for i in range(entries))
  with pytest.raises(sa.MalformedMessageError, match='holds 100000 entries; at most 3') as e:
    clients2[0].share(evil.send('keys', 0, big))
  assert len(str(e.value)) < 200


def test_unknown_ids_in_blob_lists_are_named():
  server, clients = _setup(3, 2)
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  shares = [clients[u].share(m) for u, m in keys.items()]
  boxes = wire.unpack_blobs(shares[1].payload)
  boxes[7] = boxes.pop(2)
  bad = wire.OwnKeys(clients[1]).send('share', wire.pack_blobs(boxes))
  with pytest.raises(sa.MalformedMessageError, match='names id 7, outside'):
    server.collect_shares([shares[0], bad, shares[2]])


def test_survivor_set_errors_name_the_offending_id_only():
  n = 30
  server, clients = _setup(n, 20)
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients[:29]])  # 29 never shows up
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  server.collect_masked([clients[u].masked_input(m, np.ones(2)) for u, m in fwd.items()])
  with pytest.raises(sa.ConsistencyError) as e:
    clients[0].consistency_check(evil.send('survivors', 0, wire.pack_ids(range(1, 25))))
  assert 'lacks this participant' in str(e.value) and len(str(e.value)) < 200
  with pytest.raises(sa.ConsistencyError, match='names participant 29, who is not in U2') as e:
    clients[1].consistency_check(evil.send('survivors', 1, wire.pack_ids(range(n))))
  assert len(str(e.value)) < 200


def test_duplicated_advertised_keys_name_both_participants():
  session = b'session-0'
  identities = sa.generate_identities(3)
  server, clients = _setup(3, 2, identities=identities, session=session)
  server.start_round(0)
  ads = [c.advertise(0) for c in clients]
  c_pk0 = ads[0].payload[:K]
  s_pk, commit = ads[2].payload[K:2 * K], ads[2].payload[2 * K:3 * K]
  sig = identities[0][2].sign(wire.advertise_statement(session, 0, 2, c_pk0, s_pk, commit))
  ads[2] = wire.OwnKeys(clients[2]).send('advertise', c_pk0 + s_pk + commit + sig)
  with pytest.raises(sa.ConsistencyError, match='participants 0 and 2 advertised the same'):
    server.collect_keys(ads)


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
    server.collect_masked(masked[:2] + [masked[0]])


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
  evil_b = wire.ServerKeys(server_b, clients_b, b'session-b')
  for server, clients in ((server_a, clients_a), (server_b, clients_b)):
    server.start_round(0)
  keys_a = server_a.collect_keys([c.advertise(0) for c in clients_a])
  keys_b = server_b.collect_keys([c.advertise(0) for c in clients_b])
  entries_a = wire.unpack_blobs(keys_a[0].payload)
  entries_b = wire.unpack_blobs(keys_b[0].payload)
  with pytest.raises(sa.TamperedMessageError):
    clients_b[0].share(keys_a[0])
  # Re-authenticated for session b by its server, the keys of session a still
  # carry signatures bound to session a.
  with pytest.raises(sa.SignatureError, match='participant 0'):
    clients_b[1].share(evil_b.send('keys', 1, wire.pack_blobs(entries_b | {0: entries_a[0]})))
  # A participant's own entry replaced (by one of another session, or of another
  # object in a restart): it is not the keys this participant advertised.
  with pytest.raises(sa.ConsistencyError, match='other keys for this participant'):
    clients_b[2].share(evil_b.send('keys', 2, wire.pack_blobs(entries_b | {2: entries_a[2]})))


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
  evil = wire.ServerKeys(server, clients, b'session-0')
  server.start_round(0)
  keys = server.collect_keys([c.advertise(0) for c in clients])
  fwd = server.collect_shares([clients[u].share(m) for u, m in keys.items()])
  # The server re-authenticates a forwarded box with a corrupted ciphertext:
  # only the AES-GCM tag between the two participants can catch it.
  boxes = wire.unpack_blobs(fwd[0].payload)
  boxes[1] = boxes[1][:-1] + bytes([boxes[1][-1] ^ 1])
  fwd[0] = evil.send('forward', 0, wire.pack_blobs(boxes))
  masked = [clients[u].masked_input(m, np.ones(4)) for u, m in fwd.items()]
  surv = server.collect_masked(masked)
  sigs = server.collect_consistency([clients[u].consistency_check(m) for u, m in surv.items()])
  with pytest.raises(sa.TamperedMessageError, match='participant 1'):
    clients[0].unmask(sigs[0])


# ---------------------------------------------------------------------------
# Shamir sharing and Reed-Solomon decoding.


def test_shamir_threshold():
  secret = 2 ** 255 + 12345
  shares = sa.shamir_split(secret, 6, 4)
  assert sa.shamir_reconstruct(shares[2:]) == secret
  assert sa.shamir_reconstruct(shares[:3]) != secret
  with pytest.raises(ValueError, match='threshold'):
    sa.shamir_split(1, 3, 4)


@pytest.mark.parametrize('k,t', [(5, 3), (9, 4), (12, 5)])
def test_shamir_decode_corrects_up_to_half_the_redundancy(k, t):
  rng = np.random.default_rng(k)
  secret = 2 ** 250 + 7
  e = (k - t) // 2
  for trial in range(3):
    shares = sa.shamir_split(secret, k, t)
    bad = sorted(int(i) for i in rng.choice(k, size=e, replace=False))
    for i in bad:
      shares[i] = (shares[i][0], (shares[i][1] + 1 + trial) % sa.PRIME)
    got, wrong = sa.shamir_decode(shares, t)
    assert got == secret and wrong == [i + 1 for i in bad]
  # One error more than the redundancy allows is never silently decoded wrong.
  shares = sa.shamir_split(secret, k, t)
  for i in range(e + 1):
    shares[i] = (shares[i][0], (shares[i][1] + 1) % sa.PRIME)
  try:
    got, _ = sa.shamir_decode(shares, t)
  except sa.ReconstructionError:
    pass
  else:
    assert got != secret  # a different codeword: the commitment check catches it


def test_shamir_rejects_malformed_shares():
  with pytest.raises(sa.SecureAggregationError, match='pair'):
    sa.shamir_reconstruct([(1, sa.PRIME), (2, 3)])
  with pytest.raises(sa.SecureAggregationError, match='duplicate'):
    sa.shamir_reconstruct([(1, 2), (1, 3)])


# ---------------------------------------------------------------------------
# Distributed DP through the protocol.


def test_distributed_dp_sum_noise_matches_the_accounted_std():
  n, t, size = 5, 3, 20_000
  dp = ddp.distributed_discrete_gaussian(0.5, size, noise_multiplier=1.0, num_participants=n,
                                         min_noise_shares=t)
  total = sa.secure_sum(np.zeros((n, size)), dropped=[4], threshold=t, dp=dp)
  # 4 survivors, each one share; the accounted std counts only m = 3 of them.
  assert abs(total.std() / dp.sum_stddev(4) - 1) < 0.03
  assert dp.stddev == pytest.approx(dp.sum_stddev(3)) == pytest.approx(1.0 * 2 * 0.5)


def _largest_frac_bits(n, size, z, bits=32):
  for frac_bits in range(bits - 2, -1, -1):
    try:
      return ddp.distributed_discrete_gaussian(1.0, size, noise_multiplier=z, num_participants=n,
                                               min_noise_shares=n - 1, frac_bits=frac_bits,
                                               bits=bits)
    except ValueError as e:
      assert 'ring cannot hold' in str(e)
  raise AssertionError('no frac_bits fits')


@pytest.mark.parametrize('sign', [1, -1])
def test_distributed_dp_sum_is_exact_at_the_ring_limit_with_noise(monkeypatch, sign):
  n, size = 4, 3
  dp = _largest_frac_bits(n, size, z=0.3)
  room = (2 ** 31 - 1) // 2
  assert n * dp.entry_bound <= room < 2 * n * dp.entry_bound  # a bit more would not fit
  # Worst case: every update at the clip along one axis, every noise entry at +-B.
  monkeypatch.setattr(ddp, 'sample_discrete_gaussian',
                      lambda stddev, size, bound: np.full(size, sign * bound, np.int64))
  x = np.zeros((n, size))
  x[:, 0] = sign * 1.0
  server, clients = _setup(n, n - 1, frac_bits=dp.frac_bits, dp=dp)
  _run(server, clients, x)
  clip_int = int(2 ** dp.frac_bits)
  want = [sign * n * (clip_int + dp.noise_bound)] + [sign * n * dp.noise_bound] * (size - 1)
  assert [int(v) for v in server.sum_signed] == want


def test_distributed_dp_arguments_must_match_the_protocol():
  dp = ddp.distributed_discrete_gaussian(1.0, 4, noise_multiplier=1.0, num_participants=5,
                                         min_noise_shares=3)
  with pytest.raises(ValueError, match='num_participants'):
    sa.Server(4, 3, session=b's', dp=dp)
  with pytest.raises(ValueError, match='frac_bits'):
    sa.Server(5, 3, session=b's', dp=dp, frac_bits=12)
  with pytest.raises(ValueError, match='min_noise_shares=4 exceeds threshold=3'):
    sa.Server(5, 3, session=b's', dp=dp._replace(min_noise_shares=4))
  with pytest.raises(ValueError, match='not both'):
    sa.Server(5, 3, session=b's', dp=dp, clip=1.0)
  with pytest.raises(TypeError, match='dp must be'):
    sa.Server(5, 3, session=b's', dp={'sigma': 1.0})
  with pytest.raises(ValueError, match='dimension=4'):
    sa.secure_sum(np.zeros((5, 3)), dp=dp)


def test_a_participant_round_trips_through_bytes_and_nothing_else_is_taken_for_one():
  _, clients = _setup(3, 2)
  data = clients[0].to_bytes()
  again = sa.Participant.from_bytes(data)
  assert again.index == clients[0].index and again.to_bytes() == data
  with pytest.raises(TypeError, match='data must be bytes'):
    sa.Participant.from_bytes('not bytes')
  import pickle  # pylint: disable=import-outside-toplevel
  with pytest.raises(TypeError, match='not a Participant'):
    sa.Participant.from_bytes(pickle.dumps({'index': 0}))
