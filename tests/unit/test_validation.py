"""Validation of incoming messages: p2p/validation.py."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.envelope import Envelope, MessageType, signing_bytes
from p2p.errors import RejectReason, RemoteProtocolError
from p2p.keys import Identity
from p2p.messages import Motion, Status
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic
from p2p.validation import Accepted, MessageValidator, ReplayWindow, TokenBuckets

VALIDATOR_IDS = tuple(Identity(bytes([0x10 + i]) * 32) for i in range(4))
CLIENT = Identity(bytes([0x77]) * 32)
OTHER_CLIENT = Identity(bytes([0x78]) * 32)
MOTION = Motion("Adopt the wire format?", ("approve", "reject")).encode()
STATUS = Status("v0", "conclave test", ("/ip4/127.0.0.1/tcp/9000",)).encode()

SMALL_PARAMS = dict(
    max_message_bytes=1024,
    replay_window=64,
    max_tracked_senders=16,
    client_rate_per_s=1.0,
    client_burst=1,
)


def make_swarm(name: str = "valtest", n: int = 4, **params) -> SwarmConfig:
    validators = tuple(
        Validator(f"v{i}", ident.peer_id, ident.public_key, 1) for i, ident in enumerate(VALIDATOR_IDS[:n])
    )
    return SwarmConfig(name, default_topic(name), PROTOCOL_VERSION, validators, Params(**(SMALL_PARAMS | params)))


SWARM = make_swarm()
OTHER_SWARM = make_swarm("elsewhere")


def make_validator(**params) -> MessageValidator:
    return MessageValidator(make_swarm(**params))


def raw(
    identity: Identity,
    mtype: int = MessageType.MOTION,
    seq: int = 1,
    payload: bytes = MOTION,
    swarm_id: bytes = SWARM.swarm_id,
    version: int = 1,
) -> bytes:
    """Wire bytes of a correctly signed envelope with any field values."""
    body = signing_bytes(version, swarm_id, int(mtype), identity.public_key, seq, payload)
    return Envelope(version, swarm_id, int(mtype), identity.public_key, seq, payload, identity.sign(body)).encode()


def forged(
    identity: Identity, seq: int = 1, payload: bytes = MOTION, mtype: int = MessageType.MOTION,
    swarm_id: bytes = SWARM.swarm_id,
) -> bytes:
    """Claims to come from ``identity`` but is signed by someone else."""
    body = signing_bytes(1, swarm_id, int(mtype), identity.public_key, seq, payload)
    return Envelope(1, swarm_id, int(mtype), identity.public_key, seq, payload, OTHER_CLIENT.sign(body)).encode()


def reject_reason(validator: MessageValidator, data: bytes, now: float = 0.0) -> RejectReason:
    with pytest.raises(RemoteProtocolError) as info:
        validator.validate(data, now)
    return info.value.reason


# --- one row per rejection reason -----------------------------------------------------


@dataclass(frozen=True)
class Row:
    reason: RejectReason
    # Feeds ``validator`` whatever must come first (accepted messages only), then
    # returns the bytes that must be rejected.
    build: Callable[[MessageValidator], bytes]


def _replayed(v: MessageValidator) -> bytes:
    data = raw(VALIDATOR_IDS[1], seq=5)
    v.validate(data, 0.0)
    return data


def _rate_limited(v: MessageValidator) -> bytes:
    v.validate(raw(CLIENT, seq=1), 0.0)  # the burst of 1
    return raw(CLIENT, seq=2)


ROWS = [
    Row(RejectReason.TOO_LARGE, lambda v: raw(CLIENT, payload=Motion("x" * 1100).encode())),
    Row(RejectReason.UNDECODABLE, lambda v: b"\xc1not msgpack"),
    Row(RejectReason.BAD_VERSION, lambda v: raw(VALIDATOR_IDS[0], version=2)),
    Row(RejectReason.UNKNOWN_TYPE, lambda v: raw(VALIDATOR_IDS[0], mtype=99)),
    Row(RejectReason.WRONG_SWARM, lambda v: raw(VALIDATOR_IDS[0], swarm_id=OTHER_SWARM.swarm_id)),
    Row(RejectReason.NOT_MEMBER, lambda v: raw(CLIENT, mtype=MessageType.STATUS, payload=STATUS)),
    Row(RejectReason.BAD_SIGNATURE, lambda v: forged(VALIDATOR_IDS[2])),
    Row(RejectReason.BAD_PAYLOAD, lambda v: raw(VALIDATOR_IDS[0], payload=msgpack.packb({"text": ""}))),
    Row(RejectReason.REPLAY, _replayed),
    Row(RejectReason.RATE_LIMITED, _rate_limited),
]


def test_the_table_covers_every_reject_reason():
    assert sorted(r.reason for r in ROWS) == sorted(RejectReason)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.reason.value)
def test_each_row_is_rejected_for_exactly_its_reason(row):
    v = make_validator()
    data = row.build(v)
    accepted_before = v.accepted
    assert reject_reason(v, data) is row.reason
    assert v.rejected[row.reason] == 1
    assert sum(v.rejected.values()) == 1
    assert v.accepted == accepted_before
    ok = v.validate(raw(VALIDATOR_IDS[3], seq=1000), 0.0)
    assert isinstance(ok, Accepted)
    assert v.accepted == accepted_before + 1
    assert sum(v.rejected.values()) == 1


def test_valid_motion_from_a_validator_is_accepted():
    v = make_validator()
    result = v.validate(raw(VALIDATOR_IDS[0], seq=3), 0.0)
    assert result.type is MessageType.MOTION
    assert result.payload == Motion("Adopt the wire format?")
    assert result.validator is not None and result.validator.name == "v0"
    assert result.envelope.seq == 3
    assert v.accepted == 1


def test_valid_motion_from_a_client_is_accepted_without_validator():
    v = make_validator()
    result = v.validate(raw(CLIENT), 0.0)
    assert result.validator is None
    assert result.payload == Motion("Adopt the wire format?")


def test_valid_status_from_a_validator_is_accepted():
    v = make_validator()
    result = v.validate(raw(VALIDATOR_IDS[2], mtype=MessageType.STATUS, payload=STATUS), 0.0)
    assert result.type is MessageType.STATUS
    assert result.payload == Status("v0", "conclave test", ("/ip4/127.0.0.1/tcp/9000",))


def test_message_exactly_at_the_size_limit_is_not_too_large():
    v = make_validator()
    # msgpack length headers grow with the string, so search for the exact fit
    text = next(t for t in ("x" * n for n in range(800, 1024)) if len(raw(CLIENT, payload=Motion(t).encode())) == 1024)
    data = raw(CLIENT, payload=Motion(text).encode())
    assert len(data) == 1024
    assert isinstance(v.validate(data, 0.0), Accepted)
    data = raw(CLIENT, seq=2, payload=Motion(text + "x").encode())
    assert reject_reason(v, data, now=100.0) is RejectReason.TOO_LARGE


# --- order of the checks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        pytest.param(lambda: b"\xc1" * 2000, RejectReason.TOO_LARGE, id="size-before-decoding"),
        pytest.param(
            lambda: raw(CLIENT, version=2, swarm_id=OTHER_SWARM.swarm_id, mtype=99),
            RejectReason.BAD_VERSION,
            id="version-before-swarm",
        ),
        pytest.param(
            lambda: raw(CLIENT, swarm_id=OTHER_SWARM.swarm_id, mtype=99), RejectReason.WRONG_SWARM, id="swarm-before-type"
        ),
        pytest.param(lambda: forged(CLIENT, mtype=99), RejectReason.UNKNOWN_TYPE, id="type-before-signature"),
        pytest.param(
            lambda: forged(CLIENT, mtype=MessageType.STATUS, payload=b"\x01"),
            RejectReason.NOT_MEMBER,
            id="membership-before-signature",
        ),
        pytest.param(lambda: forged(CLIENT, payload=b"\x01"), RejectReason.BAD_SIGNATURE, id="signature-before-payload"),
    ],
)
def test_checks_run_cheapest_first(build, reason):
    assert reject_reason(make_validator(), build()) is reason


def test_payload_is_checked_before_replay_and_replay_before_rate():
    v = make_validator()
    bad = raw(CLIENT, seq=1, payload=b"\x01")
    assert reject_reason(v, bad) is RejectReason.BAD_PAYLOAD
    assert reject_reason(v, bad) is RejectReason.BAD_PAYLOAD  # not recorded as seen
    good = raw(CLIENT, seq=1)
    v.validate(good, 0.0)
    assert reject_reason(v, good) is RejectReason.REPLAY  # even though the bucket is empty
    assert reject_reason(v, raw(CLIENT, seq=2)) is RejectReason.RATE_LIMITED


# --- replay window --------------------------------------------------------------------


def test_replay_window_in_window_out_of_order_is_accepted_once():
    w = ReplayWindow(size=64, max_senders=100, pinned=frozenset())
    s = b"s" * 32
    assert w.check_and_record(s, 100) is None
    assert w.check_and_record(s, 98) is None
    assert w.check_and_record(s, 99) is None
    assert w.check_and_record(s, 99) is not None
    assert w.check_and_record(s, 98) is not None
    assert w.check_and_record(s, 37) is None  # 100 - 63: the oldest still in the window
    assert w.check_and_record(s, 37) is not None


def test_replay_window_rejects_duplicates_of_the_highest():
    w = ReplayWindow(size=64, max_senders=100, pinned=frozenset())
    s = b"s" * 32
    assert w.check_and_record(s, 0) is None
    assert "already seen" in w.check_and_record(s, 0)
    assert w.check_and_record(s, 1) is None
    assert "already seen" in w.check_and_record(s, 1)
    assert "already seen" in w.check_and_record(s, 0)


def test_replay_window_rejects_older_than_the_window():
    w = ReplayWindow(size=64, max_senders=100, pinned=frozenset())
    s = b"s" * 32
    assert w.check_and_record(s, 100) is None
    why = w.check_and_record(s, 36)  # 100 - 64
    assert why is not None and "older than the window" in why
    assert w.check_and_record(s, 0) is not None


def test_replay_window_slides_and_forgets_bits_that_fall_out():
    w = ReplayWindow(size=64, max_senders=100, pinned=frozenset())
    s = b"s" * 32
    for seq in range(100, 110):
        assert w.check_and_record(s, seq) is None
    assert w.check_and_record(s, 105) is not None
    assert w.check_and_record(s, 150) is None  # window is now 87..150
    assert w.check_and_record(s, 105) is not None  # still remembered
    assert w.check_and_record(s, 104) is not None
    assert w.check_and_record(s, 111) is None  # never seen, still inside
    assert w.check_and_record(s, 86) is not None  # outside


@pytest.mark.parametrize("jump", [64, 65, 10**6, 2**63])
def test_replay_window_large_jump_resets_the_bitmap(jump):
    w = ReplayWindow(size=64, max_senders=100, pinned=frozenset())
    s = b"s" * 32
    for seq in range(10, 20):
        assert w.check_and_record(s, seq) is None
    top = 19 + jump
    assert w.check_and_record(s, top) is None
    assert w.check_and_record(s, top) is not None
    assert w.check_and_record(s, top - 1) is None  # fresh window below the new top
    assert w.check_and_record(s, top - 63) is None
    assert w.check_and_record(s, top - 64) is not None  # older than the window


def test_replay_window_tracks_senders_independently():
    w = ReplayWindow(size=64, max_senders=100, pinned=frozenset())
    assert w.check_and_record(b"a" * 32, 5) is None
    assert w.check_and_record(b"b" * 32, 5) is None
    assert w.check_and_record(b"a" * 32, 5) is not None


def test_replay_window_evicts_clients_in_lru_order_but_never_validators():
    v1, v2 = b"1" * 32, b"2" * 32
    w = ReplayWindow(size=64, max_senders=3, pinned=frozenset({v1, v2}))
    assert w.check_and_record(v1, 10) is None  # v1, v2 are the least recently used
    assert w.check_and_record(v2, 10) is None
    assert w.check_and_record(b"c" * 32, 10) is None
    assert w.check_and_record(b"d" * 32, 10) is None  # evicts client c, not v1 or v2
    assert w.check_and_record(b"e" * 32, 10) is None  # evicts d
    assert w.check_and_record(v1, 10) is not None
    assert w.check_and_record(v2, 10) is not None
    assert w.check_and_record(b"c" * 32, 10) is None  # forgotten: starts afresh
    assert w.check_and_record(b"c" * 32, 10) is not None


def test_replay_window_keeps_recently_used_clients():
    w = ReplayWindow(size=64, max_senders=2, pinned=frozenset())
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    assert w.check_and_record(a, 1) is None
    assert w.check_and_record(b, 1) is None
    assert w.check_and_record(a, 2) is None  # a is now the most recent
    assert w.check_and_record(c, 1) is None  # evicts b
    assert w.check_and_record(a, 2) is not None
    assert w.check_and_record(b, 1) is None


def test_validators_replays_are_caught_after_many_clients():
    v = make_validator(max_tracked_senders=16, client_burst=10)
    first = raw(VALIDATOR_IDS[0], seq=1, swarm_id=v.swarm.swarm_id)
    v.validate(first, 0.0)
    client_first = raw(CLIENT, seq=1, swarm_id=v.swarm.swarm_id)
    v.validate(client_first, 0.0)
    for i in range(40):
        v.validate(raw(Identity(bytes([0x80 + i]) * 32), seq=1, swarm_id=v.swarm.swarm_id), 0.0)
    assert reject_reason(v, first) is RejectReason.REPLAY
    # the first client was evicted: its old message is accepted again
    assert isinstance(v.validate(client_first, 0.0), Accepted)


# --- token buckets --------------------------------------------------------------------


def test_token_bucket_refills_with_time():
    b = TokenBuckets(rate=1.0, burst=2, max_senders=10)
    s = b"s" * 32
    assert b.take(s, now=0.0)
    assert b.take(s, now=0.0)
    assert not b.take(s, now=0.0)
    assert not b.take(s, now=0.5)  # half a token
    assert b.take(s, now=1.0)  # 0.5 + 0.5
    assert not b.take(s, now=1.0)
    assert b.take(s, now=1000.0)  # refills, but only up to the burst
    assert b.take(s, now=1000.0)
    assert not b.take(s, now=1000.0)


def test_token_bucket_rate_below_one_per_second():
    b = TokenBuckets(rate=0.1, burst=1, max_senders=10)
    s = b"s" * 32
    assert b.take(s, now=0.0)
    assert not b.take(s, now=9.0)
    assert b.take(s, now=10.0)


def test_token_bucket_clock_going_backwards_gives_no_tokens():
    b = TokenBuckets(rate=1.0, burst=1, max_senders=10)
    s = b"s" * 32
    assert b.take(s, now=100.0)
    assert not b.take(s, now=50.0)


def test_token_buckets_are_per_sender_and_bounded():
    b = TokenBuckets(rate=1.0, burst=1, max_senders=2)
    x, y, z = b"x" * 32, b"y" * 32, b"z" * 32
    assert b.take(x, 0.0)
    assert not b.take(x, 0.0)
    assert b.take(y, 0.0)
    assert b.take(z, 0.0)  # evicts x, the least recently used
    assert b.take(x, 0.0)  # a forgotten sender starts with a full bucket


def test_clients_are_rate_limited_and_refill_through_the_validator():
    v = make_validator(client_rate_per_s=2.0, client_burst=2)
    assert isinstance(v.validate(raw(CLIENT, seq=1, swarm_id=v.swarm.swarm_id), 0.0), Accepted)
    assert isinstance(v.validate(raw(CLIENT, seq=2, swarm_id=v.swarm.swarm_id), 0.0), Accepted)
    assert reject_reason(v, raw(CLIENT, seq=3, swarm_id=v.swarm.swarm_id), now=0.0) is RejectReason.RATE_LIMITED
    assert isinstance(v.validate(raw(CLIENT, seq=4, swarm_id=v.swarm.swarm_id), 0.5), Accepted)  # one token back
    assert reject_reason(v, raw(CLIENT, seq=5, swarm_id=v.swarm.swarm_id), now=0.5) is RejectReason.RATE_LIMITED
    assert v.rejected[RejectReason.RATE_LIMITED] == 2


def test_validators_are_not_rate_limited():
    v = make_validator(client_rate_per_s=0.001, client_burst=1)
    for seq in range(1, 201):
        assert isinstance(v.validate(raw(VALIDATOR_IDS[1], seq=seq, swarm_id=v.swarm.swarm_id), 0.0), Accepted)
    assert v.accepted == 200
    assert not v.rejected


# --- forgery does not touch the real sender's state -----------------------------------


def test_forged_message_does_not_advance_the_real_senders_replay_window():
    v = make_validator()
    victim = VALIDATOR_IDS[1]
    assert reject_reason(v, forged(victim, seq=2**63)) is RejectReason.BAD_SIGNATURE
    assert reject_reason(v, forged(victim, seq=5)) is RejectReason.BAD_SIGNATURE
    # had the forgeries been recorded, 5 would be a replay and 10 older than the window
    assert isinstance(v.validate(raw(victim, seq=5), 0.0), Accepted)
    assert isinstance(v.validate(raw(victim, seq=10), 0.0), Accepted)
    assert v.rejected[RejectReason.BAD_SIGNATURE] == 2
    assert v.rejected[RejectReason.REPLAY] == 0


def test_forged_messages_do_not_spend_the_real_clients_tokens():
    v = make_validator(client_burst=1)
    for seq in range(1, 6):
        assert reject_reason(v, forged(CLIENT, seq=seq, swarm_id=v.swarm.swarm_id)) is RejectReason.BAD_SIGNATURE
    assert isinstance(v.validate(raw(CLIENT, seq=1, swarm_id=v.swarm.swarm_id), 0.0), Accepted)


# --- arbitrary input ------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=1200))
def test_arbitrary_bytes_only_ever_raise_remote_protocol_error(data):
    v = MessageValidator(SWARM)
    try:
        v.validate(data, 0.0)
    except RemoteProtocolError as exc:
        assert v.rejected[exc.reason] == 1
    else:  # pragma: no cover - would need a forged signature
        raise AssertionError("random bytes were accepted")


@settings(max_examples=200, deadline=None)
@given(
    sender=st.sampled_from(VALIDATOR_IDS + (CLIENT,)),
    mtype=st.integers(0, 2**64 - 1) | st.sampled_from([1, 2]),
    seq=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=300),
    version=st.sampled_from([0, 1, 2]),
    swarm=st.sampled_from([SWARM.swarm_id, OTHER_SWARM.swarm_id, hashlib.sha256(b"x").digest()]),
    now=st.floats(min_value=0, max_value=1e9),
)
def test_arbitrary_signed_envelopes_only_ever_raise_remote_protocol_error(
    sender, mtype, seq, payload, version, swarm, now
):
    v = MessageValidator(SWARM)
    data = raw(sender, mtype=mtype, seq=seq, payload=payload, swarm_id=swarm, version=version)
    try:
        result = v.validate(data, now)
    except RemoteProtocolError as exc:
        assert v.rejected[exc.reason] == 1
    else:
        assert result.envelope.sender == sender.public_key
        assert v.accepted == 1


# --- consensus and ballot envelopes ------------------------------------------------------


def _signed_prevote(voter: Identity, index: int) -> bytes:
    from consensus.types import SignedVote, Vote, VoteType

    vote = Vote(VoteType.PREVOTE, 1, 0, None, index)
    return SignedVote(vote, voter.sign(vote.signing_bytes(SWARM.swarm_id))).encode()


def test_a_validators_vote_envelope_is_accepted_with_the_decoded_vote():
    from consensus.types import SignedVote

    v = MessageValidator(SWARM)
    accepted = v.validate(raw(VALIDATOR_IDS[1], MessageType.VOTE, payload=_signed_prevote(VALIDATOR_IDS[1], 1)), 0.0)
    assert isinstance(accepted.payload, SignedVote) and accepted.payload.vote.validator == 1


def test_consensus_and_ballot_envelopes_from_clients_are_not_member():
    v = MessageValidator(SWARM)
    for mtype in (MessageType.PROPOSAL, MessageType.VOTE, MessageType.BALLOT_COMMIT, MessageType.BALLOT_REVEAL):
        assert reject_reason(v, raw(CLIENT, mtype, payload=b"\x80")) is RejectReason.NOT_MEMBER


def test_a_type_without_a_decoder_here_is_unknown_type():
    # The p2p package alone does not decode ballot types: only a peer's gate does.
    v = MessageValidator(SWARM)
    assert reject_reason(v, raw(VALIDATOR_IDS[0], MessageType.BALLOT_COMMIT, payload=b"\x80")) is RejectReason.UNKNOWN_TYPE


def test_the_peer_gate_decodes_ballot_types_and_rejects_malformed_ones():
    from agents.peer import PeerGate

    gate = PeerGate(SWARM, clock=lambda: 0.0)
    bad = raw(VALIDATOR_IDS[0], MessageType.BALLOT_COMMIT, payload=b"\x93\x01\x02\x03")
    assert gate.admit(bad, "12D3KooWtest") is None
    assert gate.validator.rejected[RejectReason.BAD_PAYLOAD] == 1
