"""Envelopes, their signed bytes and their decoding: p2p/envelope.py."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.envelope import (
    ENVELOPE_VERSION,
    MAX_SEQ,
    SIGNING_DOMAIN,
    Envelope,
    MessageType,
    decode_envelope,
    signing_bytes,
)
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.keys import Identity

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(32, 64)))
SWARM_A = hashlib.sha256(b"swarm a").digest()
SWARM_B = hashlib.sha256(b"swarm b").digest()

uint = st.integers(min_value=0, max_value=MAX_SEQ)
envelopes = st.builds(
    Envelope,
    version=uint,
    swarm_id=st.binary(min_size=32, max_size=32),
    type=uint,
    sender=st.binary(min_size=32, max_size=32),
    seq=uint,
    payload=st.binary(max_size=2048),
    signature=st.binary(min_size=64, max_size=64),
)


def sealed(identity=ALICE, swarm_id=SWARM_A, mtype=MessageType.MOTION, seq=7, payload=b"\x80") -> Envelope:
    return Envelope.seal(identity, swarm_id, mtype, seq, payload)


def pack(fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def good_fields() -> list:
    env = sealed()
    return [env.version, env.swarm_id, env.type, env.sender, env.seq, env.payload, env.signature]


def assert_undecodable(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_envelope(data)
    assert info.value.reason is RejectReason.UNDECODABLE


# --- round trips ----------------------------------------------------------------------


@settings(max_examples=200)
@given(env=envelopes)
def test_encode_decode_round_trip(env):
    assert decode_envelope(env.encode()) == env


@settings(max_examples=50, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    swarm_id=st.binary(min_size=32, max_size=32),
    mtype=st.sampled_from(MessageType),
    seq=uint,
    payload=st.binary(max_size=1024),
)
def test_seal_gives_a_valid_signature_that_survives_the_wire(seed, swarm_id, mtype, seq, payload):
    ident = Identity(seed)
    env = Envelope.seal(ident, swarm_id, mtype, seq, payload)
    assert env.version == ENVELOPE_VERSION
    assert env.sender == ident.public_key
    assert env.type == int(mtype)
    assert env.signature_valid()
    again = decode_envelope(env.encode())
    assert again == env
    assert again.signature_valid()
    assert again.message_id == env.message_id


def test_encoding_is_the_documented_seven_element_array():
    env = sealed()
    obj = msgpack.unpackb(env.encode(), raw=False)
    assert obj == [1, SWARM_A, 1, ALICE.public_key, 7, b"\x80", env.signature]
    # bytes travel as msgpack bin (0xc4..0xc6), never as str
    assert env.encode()[:3] == bytes([0x97, 0x01, 0xC4])


def test_signed_bytes_are_the_domain_then_msgpack_of_six_fields():
    env = sealed(seq=2**40)
    expected = SIGNING_DOMAIN + msgpack.packb(
        [1, SWARM_A, 1, ALICE.public_key, 2**40, b"\x80"], use_bin_type=True
    )
    assert env.signed_bytes() == expected
    assert SIGNING_DOMAIN == b"conclave/envelope/v1\x00"
    assert ALICE.sign(expected) == env.signature
    assert env.message_id == hashlib.sha256(expected).digest()


def test_message_id_does_not_depend_on_the_signature():
    env = sealed()
    other = replace(env, signature=bytes(64))
    assert other.message_id == env.message_id


# --- domain separation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"swarm_id": SWARM_B},
        {"type": int(MessageType.STATUS)},
        {"type": 99},
        {"seq": 8},
        {"sender": BOB.public_key},
        {"payload": b"\x81"},
        {"payload": b""},
        {"version": 2},
    ],
    ids=lambda c: next(iter(c)),
)
def test_changing_any_signed_field_invalidates_the_signature(change):
    env = sealed()
    assert env.signature_valid()
    tampered = replace(env, **change)
    assert not tampered.signature_valid()
    assert tampered.message_id != env.message_id


def test_signature_from_another_swarm_is_invalid_here():
    there = sealed(swarm_id=SWARM_B)
    assert there.signature_valid()
    here = Envelope(there.version, SWARM_A, there.type, there.sender, there.seq, there.payload, there.signature)
    assert not here.signature_valid()


def test_signature_without_the_domain_prefix_is_invalid():
    env = sealed()
    body = msgpack.packb([1, SWARM_A, 1, ALICE.public_key, 7, b"\x80"], use_bin_type=True)
    undomained = replace(env, signature=ALICE.sign(body))
    assert not undomained.signature_valid()


def test_flipping_any_signature_bit_invalidates_it():
    env = sealed()
    for i in range(0, 64, 7):
        sig = bytearray(env.signature)
        sig[i] ^= 0x01
        assert not replace(env, signature=bytes(sig)).signature_valid()


def test_signing_bytes_function_matches_the_method():
    env = sealed()
    assert signing_bytes(1, SWARM_A, 1, ALICE.public_key, 7, b"\x80") == env.signed_bytes()


# --- construction checks --------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"version": -1},
        {"version": True},
        {"swarm_id": b"\x00" * 31},
        {"swarm_id": "x" * 32},
        {"type": -1},
        {"type": False},
        {"sender": b"\x00" * 33},
        {"seq": -1},
        {"seq": MAX_SEQ + 1},
        {"seq": 1.0},
        {"payload": "text"},
        {"signature": b"\x00" * 63},
    ],
    ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))!r}"[:40],
)
def test_envelope_construction_rejects_bad_fields(change):
    env = sealed()
    with pytest.raises(LocalProtocolError):
        replace(env, **change)


# --- decoding garbage -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x97",  # truncated array
        b"garbage!",
        pack(good_fields())[:-1],  # truncated
        pack(good_fields()) + b"\x00",  # trailing bytes
        pack({"version": 1}),
        pack(1),
        pack(None),
        pack(b"\x00" * 100),
    ],
)
def test_garbage_is_undecodable(data):
    assert_undecodable(data)


@pytest.mark.parametrize("arity", [0, 1, 6, 8, 20])
def test_wrong_arity_is_undecodable(arity):
    fields = good_fields()
    fields = (fields + [b""] * arity)[:arity]
    assert_undecodable(pack(fields))


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, "1"),
        (0, 1.0),
        (0, True),  # booleans are not integers on the wire
        (0, None),
        (0, -1),
        (1, "s" * 32),  # a str where bin is required
        (1, b"\x00" * 31),
        (1, b"\x00" * 33),
        (1, [0] * 32),
        (2, "motion"),
        (2, True),
        (2, -5),
        (3, b"\x00" * 31),
        (3, "k" * 32),
        (4, -1),
        (4, False),
        (4, 2.5),
        (4, b"\x01"),
        (5, "payload as str"),
        (5, None),
        (5, {}),
        (6, b"\x00" * 63),
        (6, b"\x00" * 65),
        (6, None),
    ],
)
def test_wrong_field_types_are_undecodable(index, value):
    fields = good_fields()
    fields[index] = value
    assert_undecodable(pack(fields))


def test_extension_types_are_undecodable():
    fields = good_fields()
    fields[5] = msgpack.ExtType(5, b"xyz")
    assert_undecodable(pack(fields))


@settings(max_examples=500)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_only_ever_raise_undecodable(data):
    try:
        env = decode_envelope(data)
    except RemoteProtocolError as exc:
        assert exc.reason is RejectReason.UNDECODABLE
    else:
        assert isinstance(env, Envelope)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(fields=st.lists(msgpack_values, min_size=0, max_size=9))
def test_arbitrary_msgpack_arrays_only_ever_raise_undecodable(fields):
    try:
        env = decode_envelope(pack(fields))
    except RemoteProtocolError as exc:
        assert exc.reason is RejectReason.UNDECODABLE
    else:
        assert env.encode() == pack(fields)


@settings(max_examples=300)
@given(env=envelopes, index=st.integers(0, 6), data=st.data())
def test_replacing_one_field_with_an_arbitrary_value_never_crashes(env, index, data):
    fields = [env.version, env.swarm_id, env.type, env.sender, env.seq, env.payload, env.signature]
    fields[index] = data.draw(msgpack_values)
    try:
        decoded = decode_envelope(pack(fields))
    except RemoteProtocolError as exc:
        assert exc.reason is RejectReason.UNDECODABLE
    else:
        assert decoded.encode() == pack(fields)
