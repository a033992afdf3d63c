"""Bundles: several envelopes in one pubsub message (p2p/bundle.py, wire format section 1),
and the gossipsub validator hook that splits them (p2p/libp2p_net.py ``_gate_hook``)."""

from __future__ import annotations

import hashlib
import types

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.peer.id import ID

from agents.metrics import PeerMetrics
from agents.peer import PeerGate
from p2p.bundle import BUNDLE_MARKER, BUNDLE_VERSION, ITEM_OVERHEAD, MAX_BUNDLE_ENVELOPES, encode_bundle, split_frame
from p2p.envelope import Envelope, MessageType, decode_envelope
from p2p.errors import RejectReason, RemoteProtocolError
from p2p.keys import Identity
from p2p.direct import DirectStats, RecentFrames
from p2p.libp2p_net import _gate_hook
from p2p.messages import Status
from p2p.net import MessageArrived, NetworkStats
from p2p.peer_guard import GuardLimits, PeerGuard
from p2p.swarmfile import PROTOCOL_VERSION, SwarmConfig, Validator, default_topic

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(32, 64)))
SWARM = hashlib.sha256(b"bundle swarm").digest()
STATUS = Status("v1", "0.1.0", ("/ip4/127.0.0.1/tcp/4001",)).encode()


def envelope(seq: int, identity: Identity = ALICE) -> Envelope:
    return Envelope.seal(identity, SWARM, MessageType.STATUS, seq, STATUS)


def envelopes(n: int) -> list[bytes]:
    return [envelope(seq, ALICE if seq % 2 else BOB).encode() for seq in range(1, n + 1)]


E1, E2, E3 = envelopes(3)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def assert_undecodable(data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        split_frame(data)
    assert info.value.reason is RejectReason.UNDECODABLE
    return info.value


# --- the documented form ----------------------------------------------------------------


def test_an_envelope_and_a_bundle_are_told_apart_by_the_first_byte():
    assert E1[0] == 0x97  # an envelope is an array of 7
    bundle = encode_bundle([E1, E2])
    assert bundle[0] == BUNDLE_MARKER == 0x92
    assert bundle == pack([0, [E1, E2]]) and BUNDLE_VERSION == 0


@pytest.mark.parametrize("n", [2, 3, 10, 100, MAX_BUNDLE_ENVELOPES])
def test_round_trip_of_real_envelopes(n):
    envs = envelopes(n)
    parts = split_frame(encode_bundle(envs))
    assert parts == envs
    assert all(type(p) is bytes for p in parts)
    decoded = [decode_envelope(p) for p in parts]
    assert [d.seq for d in decoded] == list(range(1, n + 1))  # order kept
    assert all(d.signature_valid() for d in decoded)


@pytest.mark.parametrize("size", [0, 255, 256, 65535, 65536, 300_000])
def test_item_overhead_bounds_the_bin_header_of_an_envelope(size):
    # The send loop budgets ITEM_OVERHEAD bytes per envelope in a bundle.
    item = b"\x97" + b"x" * size
    assert len(pack(item)) - len(item) <= ITEM_OVERHEAD


def test_a_single_envelope_passes_through_byte_identical():
    assert encode_bundle([E1]) is E1
    (part,) = split_frame(E1)
    assert part == E1
    assert decode_envelope(part) == envelope(1)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x97", b"\xc1 not msgpack", b"\x93\x01\x02\x03",
                                  pack({0: [E1, E2]}), pack([0, [E1, E2], b""])])
def test_anything_not_starting_with_the_marker_is_left_to_the_envelope_decoder(data):
    assert split_frame(data) == [data]


def test_a_bundle_inside_a_bundle_is_just_an_item_and_the_envelope_decoder_refuses_it():
    inner = encode_bundle([E1, E2])
    parts = split_frame(encode_bundle([inner, E3]))
    assert parts == [inner, E3]
    with pytest.raises(RemoteProtocolError) as info:
        decode_envelope(parts[0])
    assert info.value.reason is RejectReason.UNDECODABLE


# --- malformed bundles --------------------------------------------------------------------

MALFORMED = {
    "marker only": b"\x92",
    "not msgpack": b"\x92\xc1\xc1",
    "garbage after the marker": b"\x92\x00\xc1garbage",
    "truncated": pack([0, [E1, E2]])[:-1],
    "trailing bytes": pack([0, [E1, E2]]) + b"\x00",
    "two bundles back to back": pack([0, [E1, E2]]) * 2,
    "version 1": pack([1, [E1, E2]]),
    "version -1": pack([-1, [E1, E2]]),
    "version False": pack([False, [E1, E2]]),
    "version None": pack([None, [E1, E2]]),
    "version as str": pack(["0", [E1, E2]]),
    "version as bin": pack([b"\x00", [E1, E2]]),
    "fields swapped": pack([[E1, E2], 0]),
    "no envelopes": pack([0, []]),
    "one envelope only": pack([0, [E1]]),
    "1025 envelopes": pack([0, [E1] * (MAX_BUNDLE_ENVELOPES + 1)]),
    "1025 tiny items": pack([0, [b""] * (MAX_BUNDLE_ENVELOPES + 1)]),
    "str item": pack([0, [E1, "an envelope"]]),
    "empty str item": pack([0, [E1, ""]]),
    "int item": pack([0, [E1, 7]]),
    "nil item": pack([0, [E1, None]]),
    "ext item": pack([0, [E1, msgpack.ExtType(1, b"x")]]),
    "map instead of array": pack([0, {1: E1, 2: E2}]),
    "empty map instead of array": pack([0, {}]),
    "bin instead of array": pack([0, E1 + E2]),
    "nested arrays": pack([0, [[E1, E2], [E3]]]),
    "one nested array": pack([0, [E1, [E2]]]),
    "deeply nested": b"\x92\x00" + b"\x91" * 5000 + b"\xc0",
    "huge declared bin": b"\x92\x00\x92\xc6\xff\xff\xff\xff",
    "huge declared array": b"\x92\x00\xdd\xff\xff\xff\xff",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bundles_are_undecodable(data):
    assert data[0] == BUNDLE_MARKER
    error = assert_undecodable(data)
    assert "bundle" in error.detail


def test_a_float_version_is_undecodable():
    assert_undecodable(pack([0.0, [E1, E2]]))


# --- properties -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.binary(max_size=300), min_size=2, max_size=50))
def test_split_inverts_encode_for_any_2_to_50_byte_strings(items):
    assert split_frame(encode_bundle(items)) == items


@settings(max_examples=100, deadline=None)
@given(item=st.binary(max_size=300))
def test_a_lone_item_not_starting_with_the_marker_round_trips(item):
    if item[:1] != bytes([BUNDLE_MARKER]):
        assert split_frame(encode_bundle([item])) == [item]


def check_split(data: bytes) -> None:
    try:
        parts = split_frame(data)
    except RemoteProtocolError as exc:
        assert exc.reason is RejectReason.UNDECODABLE
        return
    assert isinstance(parts, list) and parts
    assert all(type(p) is bytes for p in parts)
    if data[:1] == bytes([BUNDLE_MARKER]):
        assert 2 <= len(parts) <= MAX_BUNDLE_ENVELOPES
    else:
        assert parts == [data]


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=512))
def test_fuzz_split_frame_on_arbitrary_bytes(data):
    check_split(data)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=512))
def test_fuzz_split_frame_on_bytes_after_the_marker(data):
    check_split(bytes([BUNDLE_MARKER]) + data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.integers(0, 9), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(version=msgpack_values, body=msgpack_values, cut=st.integers(min_value=0, max_value=8))
def test_fuzz_split_frame_on_structured_pairs(version, body, cut):
    data = pack([version, body])
    check_split(data)
    check_split(data[: len(data) - cut])


# --- the gossipsub validator hook (p2p/libp2p_net.py), without sockets ------------------------
# tests/integration/test_bundles.py runs the same paths over real libp2p hosts.

HOOK_SWARM = SwarmConfig("hook", default_topic("hook"), PROTOCOL_VERSION,
                         tuple(Validator(n, i.peer_id, i.public_key, 1) for n, i in (("alice", ALICE), ("bob", BOB))))
FORWARDER = Identity(bytes([0x55]) * 32)


def hook_envelope(seq: int, identity: Identity = ALICE, signature: bytes | None = None) -> bytes:
    env = Envelope.seal(identity, HOOK_SWARM.swarm_id, MessageType.STATUS, seq, STATUS)
    if signature is not None:
        env = Envelope(env.version, env.swarm_id, env.type, env.sender, env.seq, env.payload, signature)
    return env.encode()


def run_hook(gate, data: bytes, guard=None) -> tuple[bool, list[MessageArrived], NetworkStats]:
    """One pubsub message through the hook: (relay?, what was delivered, the stats).
    With a ``guard``, call it inside trio (the hook reads trio's clock)."""
    send, receive = trio.open_memory_channel(2048)
    net = types.SimpleNamespace(stats=NetworkStats(), _events_in=send, _gate=gate, _recent=None, _guard=guard,
                                local_peer="local", _hang_ups=None, _hanging_up=set(), _connected=set())
    relay = _gate_hook(net)(ID.from_base58(FORWARDER.peer_id), types.SimpleNamespace(data=data))
    delivered = []
    while True:
        try:
            delivered.append(receive.receive_nowait())
        except trio.WouldBlock:
            return relay, delivered, net.stats


def peer_gate() -> PeerGate:
    return PeerGate(HOOK_SWARM, clock=lambda: 0.0, metrics=PeerMetrics())


def rejections(gate: PeerGate, reason: RejectReason) -> float:
    return gate.metrics.registry.get_sample_value("conclave_rejections_total", {"reason": reason.value}) or 0.0


def test_hook_delivers_each_envelope_of_a_valid_bundle_and_relays_it():
    gate = peer_gate()
    envs = [hook_envelope(seq, ALICE if seq % 2 else BOB) for seq in range(1, 6)]
    relay, delivered, stats = run_hook(gate, encode_bundle(envs))
    assert relay is True
    assert [m.data for m in delivered] == envs
    assert all(m.source == FORWARDER.peer_id and m.verdict is not None for m in delivered)
    assert [m.verdict.envelope.seq for m in delivered] == [1, 2, 3, 4, 5]
    assert (stats.received, stats.gated) == (5, 0)


def test_hook_delivers_a_single_envelope_as_before():
    relay, delivered, stats = run_hook(peer_gate(), hook_envelope(1))
    assert relay is True and [m.data for m in delivered] == [hook_envelope(1)]


def test_hook_delivers_the_good_envelopes_of_a_mixed_bundle_and_does_not_relay_it():
    gate = peer_gate()
    good1, good2 = hook_envelope(1), hook_envelope(3)
    bad = hook_envelope(2, signature=bytes(64))
    replayed = hook_envelope(1)
    relay, delivered, stats = run_hook(gate, encode_bundle([good1, bad, good2, replayed]))
    assert relay is False
    assert [m.data for m in delivered] == [good1, good2]
    assert (stats.received, stats.gated) == (2, 2)
    assert rejections(gate, RejectReason.BAD_SIGNATURE) == 1 and rejections(gate, RejectReason.REPLAY) == 1
    assert gate.validator.rejected == {RejectReason.BAD_SIGNATURE: 1, RejectReason.REPLAY: 1}


@pytest.mark.parametrize("data", [MALFORMED["garbage after the marker"], MALFORMED["one envelope only"],
                                  MALFORMED["version 1"]])
def test_hook_refuses_a_malformed_bundle_counts_it_and_delivers_nothing(data):
    gate = peer_gate()
    relay, delivered, stats = run_hook(gate, data)
    assert relay is False and delivered == []
    assert (stats.received, stats.gated) == (0, 1)
    assert rejections(gate, RejectReason.UNDECODABLE) == 1
    assert gate.validator.accepted == 0


def test_hook_without_a_gate_splits_and_relays_and_still_refuses_a_malformed_bundle():
    envs = [hook_envelope(1), hook_envelope(2, signature=bytes(64))]
    relay, delivered, stats = run_hook(None, encode_bundle(envs))
    assert relay is True and [m.data for m in delivered] == envs and all(m.verdict is None for m in delivered)
    relay, delivered, stats = run_hook(None, MALFORMED["not msgpack"])
    assert relay is False and delivered == [] and stats.gated == 1


def test_hook_survives_a_gate_whose_admit_raises():
    class Broken:
        def admit(self, data, source):
            if data == bad:
                raise RuntimeError("bug in the gate")
            return "ok"

        def refuse(self, error, data, source):
            pass

    good, bad = hook_envelope(1), hook_envelope(2)
    relay, delivered, stats = run_hook(Broken(), encode_bundle([good, bad, good]))
    assert relay is False and [m.data for m in delivered] == [good, good]
    assert stats.gated == 1


def test_hook_survives_a_gate_whose_refuse_raises():
    class Broken:
        def admit(self, data, source):
            return "ok"

        def refuse(self, error, data, source):
            raise RuntimeError("bug in the gate")

    relay, delivered, stats = run_hook(Broken(), MALFORMED["not msgpack"])
    assert relay is False and delivered == [] and stats.gated == 1


def test_a_malformed_bundle_is_in_the_same_counters_as_any_other_rejection():
    gate = peer_gate()
    run_hook(gate, hook_envelope(1, signature=bytes(64)))  # an ordinary rejection: counted in both
    run_hook(gate, MALFORMED["not msgpack"])
    assert rejections(gate, RejectReason.BAD_SIGNATURE) == gate.validator.rejected[RejectReason.BAD_SIGNATURE] == 1
    assert rejections(gate, RejectReason.UNDECODABLE) == gate.validator.rejected[RejectReason.UNDECODABLE] == 1


# --- a frame that arrives by two paths (direct stream and gossip: p2p/direct.py) -------------


def run_hook_twice(gate, data: bytes) -> tuple[list[bool], list[MessageArrived], NetworkStats, object]:
    """The same frame through the hook twice, on a network that remembers frames."""
    send, receive = trio.open_memory_channel(2048)
    net = types.SimpleNamespace(stats=NetworkStats(), _events_in=send, _gate=gate, _guard=None, _recent=RecentFrames(4),
                                direct_stats=DirectStats())
    hook = _gate_hook(net)
    relays = [hook(ID.from_base58(FORWARDER.peer_id), types.SimpleNamespace(data=data)) for _ in range(2)]
    delivered = []
    while True:
        try:
            delivered.append(receive.receive_nowait())
        except trio.WouldBlock:
            return relays, delivered, net.stats, net.direct_stats


def test_a_frame_seen_before_is_not_delivered_again_and_keeps_its_first_relay_verdict():
    gate = peer_gate()
    envs = [hook_envelope(1), hook_envelope(2)]
    relays, delivered, stats, direct = run_hook_twice(gate, encode_bundle(envs))
    assert relays == [True, True]
    assert [m.data for m in delivered] == envs  # once, not twice
    assert direct.duplicates == 1
    assert not gate.validator.rejected  # the copy was not judged again (no replay counted)

    mixed = encode_bundle([hook_envelope(3), hook_envelope(4, signature=bytes(64))])
    relays, delivered, stats, direct = run_hook_twice(gate, mixed)
    assert relays == [False, False]  # a bundle not relayed the first time is not relayed the second
    assert [m.data for m in delivered] == [hook_envelope(3)]
    assert gate.validator.rejected == {RejectReason.BAD_SIGNATURE: 1}


def test_recent_frames_forget_the_oldest_beyond_their_size():
    recent = RecentFrames(size=2)
    a, b, c = (RecentFrames.digest(x) for x in (b"a", b"b", b"c"))
    recent.add(a, True)
    recent.add(b, False)
    assert (recent.get(a), recent.get(b)) == (True, False)
    recent.add(c, True)
    assert recent.get(a) is None and recent.get(b) is False and recent.get(c) is True


# --- the peer guard in the receive hook -------------------------------------------------------


async def test_a_peer_that_keeps_sending_garbage_is_banned_and_then_screened_unread(caplog):
    guard = PeerGuard(GuardLimits(strikes=5, ban_s=60.0))
    gate = PeerGate(HOOK_SWARM, clock=trio.current_time, metrics=PeerMetrics(), guard=guard)
    for i in range(5):
        relay, delivered, stats = run_hook(gate, b"\x97garbage" + bytes([i]), guard)
        assert relay is False and delivered == [] and guard.screened == 0
    assert guard.is_banned(FORWARDER.peer_id, trio.current_time())
    banned = [r for r in caplog.records if getattr(r, "event", None) == "peer_banned"]
    assert len(banned) == 1 and banned[0].levelname == "WARNING" and FORWARDER.peer_id in banned[0].getMessage()
    assert gate.metrics.registry.get_sample_value("conclave_peers_banned_total") == 1.0
    # Banned: even a valid envelope from it is dropped before the gate looks at it.
    judged = gate.validator.accepted + sum(gate.validator.rejected.values())
    relay, delivered, stats = run_hook(gate, hook_envelope(1), guard)
    assert relay is False and delivered == [] and guard.screened == 1
    assert gate.validator.accepted + sum(gate.validator.rejected.values()) == judged


async def test_a_peer_over_its_rate_is_screened_but_not_banned_and_its_frames_stay_unjudged():
    guard = PeerGuard(GuardLimits(rate_per_s=1e-6, burst=2))
    gate = PeerGate(HOOK_SWARM, clock=trio.current_time, guard=guard)
    results = [run_hook(gate, hook_envelope(seq), guard) for seq in (1, 2, 3)]
    assert [r[0] for r in results] == [True, True, False]
    assert guard.screened == 1 and not guard.is_banned(FORWARDER.peer_id, trio.current_time())


async def test_the_guard_never_screens_our_own_messages():
    guard = PeerGuard(GuardLimits(rate_per_s=1e-6, burst=1))
    send, _ = trio.open_memory_channel(16)
    net = types.SimpleNamespace(stats=NetworkStats(), _events_in=send, _gate=None, _recent=None, _guard=guard,
                                local_peer=FORWARDER.peer_id)
    hook = _gate_hook(net)
    assert all(hook(ID.from_base58(FORWARDER.peer_id), types.SimpleNamespace(data=hook_envelope(s))) for s in (1, 2, 3))
    assert guard.screened == 0


async def test_a_banned_peer_that_is_connected_is_queued_once_to_be_hung_up_on():
    guard = PeerGuard(GuardLimits(strikes=1))
    guard.rejected(FORWARDER.peer_id, RejectReason.BAD_SIGNATURE, trio.current_time())
    send, _ = trio.open_memory_channel(16)
    hang_in, hang_out = trio.open_memory_channel(4)
    net = types.SimpleNamespace(stats=NetworkStats(), _events_in=send, _gate=None, _recent=None, _guard=guard,
                                local_peer="local", _hang_ups=hang_in, _hanging_up=set(),
                                _connected={FORWARDER.peer_id})
    hook = _gate_hook(net)
    for seq in (1, 2, 3):
        assert hook(ID.from_base58(FORWARDER.peer_id), types.SimpleNamespace(data=hook_envelope(seq))) is False
    assert hang_out.receive_nowait() == FORWARDER.peer_id
    with pytest.raises(trio.WouldBlock):  # once while pending
        hang_out.receive_nowait()
    assert guard.screened == 3
