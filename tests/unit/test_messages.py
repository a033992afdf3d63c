"""Payloads: p2p/messages.py."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.envelope import MessageType
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.messages import (
    DECODERS,
    DEFAULT_OPTIONS,
    MAX_MOTION_TEXT,
    MAX_OPTION_LEN,
    MAX_OPTIONS,
    NO_SUPERMAJORITY,
    SENDERS,
    Motion,
    Senders,
    Status,
)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def assert_bad_payload(decode, data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    assert info.value.reason is RejectReason.BAD_PAYLOAD


motion_texts = st.text(min_size=1, max_size=MAX_MOTION_TEXT).filter(lambda t: t.strip())
options_item = st.text(min_size=1, max_size=MAX_OPTION_LEN).filter(lambda o: o.strip() == o and o and o != NO_SUPERMAJORITY)
motion_options = st.lists(options_item, min_size=2, max_size=MAX_OPTIONS, unique=True).map(tuple)


# --- round trips ----------------------------------------------------------------------


@settings(max_examples=200)
@given(text=motion_texts, options=motion_options)
def test_motion_round_trip(text, options):
    motion = Motion(text, options)
    assert Motion.decode(motion.encode()) == motion


def test_motion_defaults_to_approve_reject():
    motion = Motion("Ship it?")
    assert motion.options == DEFAULT_OPTIONS == ("approve", "reject")
    assert msgpack.unpackb(motion.encode()) == {"text": "Ship it?", "options": ["approve", "reject"]}


def test_motion_at_the_limits_is_valid():
    options = tuple(f"{i:02d}" + "x" * (MAX_OPTION_LEN - 2) for i in range(MAX_OPTIONS))
    motion = Motion("t" * MAX_MOTION_TEXT, options)
    assert Motion.decode(motion.encode()) == motion


def test_motion_text_limit_counts_characters_not_bytes():
    motion = Motion("é" * MAX_MOTION_TEXT)
    assert len(motion.encode()) > MAX_MOTION_TEXT * 2
    assert Motion.decode(motion.encode()) == motion


def test_motion_decode_ignores_unknown_keys():
    data = pack({"text": "Ship it?", "options": ["yes", "no"], "future_field": [1, 2, 3]})
    assert Motion.decode(data) == Motion("Ship it?", ("yes", "no"))


@settings(max_examples=100)
@given(
    name=st.text(min_size=1, max_size=64),
    version=st.text(max_size=64),
    addrs=st.lists(st.text(max_size=256), max_size=16).map(tuple),
)
def test_status_round_trip(name, version, addrs):
    status = Status(name, version, addrs)
    assert Status.decode(status.encode()) == status


def test_status_round_trip_example():
    status = Status("alice", "conclave 0.1.0", ("/ip4/127.0.0.1/tcp/9000",))
    assert msgpack.unpackb(status.encode()) == {
        "name": "alice",
        "agent_version": "conclave 0.1.0",
        "listen_addrs": ["/ip4/127.0.0.1/tcp/9000"],
    }
    assert Status.decode(status.encode()) == status


def test_senders_table_covers_every_type_and_only_motions_are_open_to_clients():
    assert set(SENDERS) == set(MessageType)
    assert [t for t, who in SENDERS.items() if who is Senders.ANYONE] == [MessageType.MOTION]


def test_this_package_decodes_all_but_the_agents_types():
    # Commitments, reveals and checkpoint signatures are decoded by the agents' gate
    # (agents.peer.PeerGate), which knows those payloads.
    assert set(MessageType) - set(DECODERS) == {
        MessageType.BALLOT_COMMIT, MessageType.BALLOT_REVEAL, MessageType.CHECKPOINT_SIGNATURE}


def test_the_peer_gate_decodes_every_type():
    from agents.peer import PEER_DECODERS

    assert set(PEER_DECODERS) == set(MessageType) == set(SENDERS)


@pytest.mark.parametrize("mtype", [MessageType.PROPOSAL, MessageType.VOTE])
def test_a_malformed_consensus_payload_is_bad_payload(mtype):
    with pytest.raises(RemoteProtocolError) as info:
        DECODERS[mtype](b"\x93\x01")
    assert info.value.reason is RejectReason.BAD_PAYLOAD


# --- invalid motions ------------------------------------------------------------------

INVALID_MOTIONS = [
    pytest.param("", ("approve", "reject"), id="empty-text"),
    pytest.param("   \n\t", ("approve", "reject"), id="blank-text"),
    pytest.param("x" * (MAX_MOTION_TEXT + 1), ("approve", "reject"), id="too-long-text"),
    pytest.param("Ship it?", ("approve",), id="one-option"),
    pytest.param("Ship it?", (), id="no-option"),
    pytest.param("Ship it?", tuple(f"o{i}" for i in range(MAX_OPTIONS + 1)), id="17-options"),
    pytest.param("Ship it?", ("approve", ""), id="empty-option"),
    pytest.param("Ship it?", ("approve", "   "), id="blank-option"),
    pytest.param("Ship it?", ("approve", " reject"), id="leading-space-option"),
    pytest.param("Ship it?", ("approve", "reject "), id="trailing-space-option"),
    pytest.param("Ship it?", ("approve", "reject\n"), id="trailing-newline-option"),
    pytest.param("Ship it?", ("approve", "approve"), id="duplicate-options"),
    pytest.param("Ship it?", ("approve", "r" * (MAX_OPTION_LEN + 1)), id="too-long-option"),
]


@pytest.mark.parametrize(("text", "options"), INVALID_MOTIONS)
def test_invalid_motion_is_refused_on_construction(text, options):
    with pytest.raises(LocalProtocolError):
        Motion(text, options)


@pytest.mark.parametrize(("text", "options"), INVALID_MOTIONS)
def test_invalid_motion_is_bad_payload_on_decode(text, options):
    assert_bad_payload(Motion.decode, pack({"text": text, "options": list(options)}))


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({"options": ["a", "b"]}, id="missing-text"),
        pytest.param({"text": "Ship it?"}, id="missing-options"),
        pytest.param({"text": 5, "options": ["a", "b"]}, id="text-not-str"),
        pytest.param({"text": b"Ship it?", "options": ["a", "b"]}, id="text-bin"),
        pytest.param({"text": "Ship it?", "options": "ab"}, id="options-str"),
        pytest.param({"text": "Ship it?", "options": {"a": 1, "b": 2}}, id="options-map"),
        pytest.param({"text": "Ship it?", "options": ["a", 2]}, id="option-not-str"),
        pytest.param({"text": "Ship it?", "options": ["a", ["b"]]}, id="option-list"),
        pytest.param({"text": "Ship it?", "options": ["a", None]}, id="option-nil"),
    ],
)
def test_malformed_motion_maps_are_bad_payload(doc):
    assert_bad_payload(Motion.decode, pack(doc))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(pack(["Ship it?", ["a", "b"]]), id="array"),
        pytest.param(pack("Ship it?"), id="str"),
        pytest.param(pack(1), id="int"),
        pytest.param(pack(None), id="nil"),
        pytest.param(pack(b"\x81"), id="bin"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(pack({"text": "a", "options": ["a", "b"]}) + b"\x00", id="trailing-bytes"),
        pytest.param(pack({1: "x"}), id="int-keys"),
        pytest.param(b"\x81\xa4text\xa2\xff\xfe", id="invalid-utf8"),
    ],
)
@pytest.mark.parametrize("decode", [Motion.decode, Status.decode], ids=["motion", "status"])
def test_non_map_or_garbage_payload_is_bad_payload(decode, data):
    assert_bad_payload(decode, data)


# --- invalid statuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "addrs"),
    [
        pytest.param("", "v", (), id="empty-name"),
        pytest.param("n" * 65, "v", (), id="long-name"),
        pytest.param("alice", "v" * 65, (), id="long-version"),
        pytest.param("alice", "v", tuple("/ip4/127.0.0.1/tcp/1" for _ in range(17)), id="17-addrs"),
        pytest.param("alice", "v", ("a" * 257,), id="long-addr"),
        pytest.param("alice", "v", (5,), id="addr-not-str"),
        pytest.param(5, "v", (), id="name-not-str"),
        pytest.param("alice", None, (), id="version-nil"),
    ],
)
def test_invalid_status_is_refused(name, version, addrs):
    with pytest.raises(LocalProtocolError):
        Status(name, version, addrs)
    assert_bad_payload(Status.decode, pack({"name": name, "agent_version": version, "listen_addrs": list(addrs)}))


def test_status_and_motion_want_tuples_locally():
    with pytest.raises(LocalProtocolError):
        Status("alice", "v", ["/ip4/127.0.0.1/tcp/1"])
    with pytest.raises(LocalProtocolError):
        Motion("Ship it?", ["approve", "reject"])


def test_status_missing_field_is_bad_payload():
    assert_bad_payload(Status.decode, pack({"name": "alice", "agent_version": "v"}))
    assert_bad_payload(Status.decode, pack({"name": "alice", "listen_addrs": []}))


@settings(max_examples=300)
@given(data=st.binary(max_size=200))
def test_arbitrary_payload_bytes_only_raise_bad_payload(data):
    for decode in (Motion.decode, Status.decode):
        try:
            decode(data)
        except RemoteProtocolError as exc:
            assert exc.reason is RejectReason.BAD_PAYLOAD


def test_the_no_supermajority_outcome_cannot_be_an_option():
    with pytest.raises(LocalProtocolError, match="reserved"):
        Motion("Which?", ("approve", NO_SUPERMAJORITY))
