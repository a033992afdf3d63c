"""Checkpoints: validation, canonical domain-separated encoding, continuity, inclusion."""

from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.checkpoint import SIGNING_DOMAIN, ZERO_HASH, Checkpoint, checkpoint_for
from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.merkle import InclusionProof, inclusion_proof, merkle_root

SWARM = b"S" * 32
VSET = b"V" * 32
BLOCKS = [bytes([h]) * 32 for h in range(1, 8)]  # hashes of heights 1..7


def first() -> Checkpoint:
    return Checkpoint(SWARM, 1, 1, 7, merkle_root(BLOCKS), VSET, ZERO_HASH)


def second() -> Checkpoint:
    return Checkpoint(SWARM, 2, 8, 10, b"R" * 32, VSET, first().hash())


def test_encode_decode_round_trip() -> None:
    for cp in (first(), second()):
        assert Checkpoint.decode(cp.encode()) == cp
        assert Checkpoint.decode(cp.encode()).hash() == cp.hash()


def test_signing_bytes_are_the_domain_then_the_fields_in_order() -> None:
    cp = second()
    fields = [SWARM, 2, 8, 10, b"R" * 32, VSET, first().hash()]
    assert cp.signing_bytes() == SIGNING_DOMAIN + msgpack.packb(fields, use_bin_type=True)
    assert cp.signing_bytes().startswith(b"conclave/checkpoint/v1\x00")
    assert cp.hash() == hashlib.sha256(cp.signing_bytes()).digest()
    assert cp.encode() != cp.signing_bytes()  # a signature is over the domain, never bare fields


@pytest.mark.parametrize("change", [
    {"swarm_id": b"T" * 32},
    {"number": 3},
    {"first_height": 9},
    {"last_height": 11},
    {"root": b"Q" * 32},
    {"validator_set_hash": b"W" * 32},
    {"prev_checkpoint_hash": b"P" * 32},
])
def test_every_field_changes_signing_bytes_and_hash(change: dict) -> None:
    cp = second()
    other = dataclasses.replace(cp, **change)
    assert other.signing_bytes() != cp.signing_bytes()
    assert other.hash() != cp.hash()
    assert other.encode() != cp.encode()


@pytest.mark.parametrize("change, message", [
    ({"swarm_id": b"S" * 31}, "swarm_id"),
    ({"number": 0}, "number"),
    ({"number": True}, "number"),
    ({"number": 2**64}, "number"),
    ({"first_height": -1}, "first_height"),
    ({"first_height": 8}, "first_height 8 > last_height 7"),
    ({"last_height": 2**64}, "last_height"),
    ({"last_height": "7"}, "last_height"),
    ({"root": b"r"}, "root"),
    ({"validator_set_hash": None}, "validator_set_hash"),
    ({"prev_checkpoint_hash": b"P" * 32}, "zero exactly for checkpoint 1"),
    ({"number": 2}, "zero exactly for checkpoint 1"),  # number 2 with the zero prev hash
])
def test_validation(change: dict, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        dataclasses.replace(first(), **change)


def test_first_height_zero_is_allowed() -> None:
    cp = dataclasses.replace(first(), first_height=0)
    assert cp.size == 8


@pytest.mark.parametrize("wire", [
    b"",
    b"\xc1",
    b"garbage!",
    msgpack.packb(first().encode()),  # bytes wrapped in bytes
    msgpack.packb([SWARM, 1, 1, 7, b"R" * 32, VSET]),  # six fields
    msgpack.packb([SWARM, 1, 1, 7, b"R" * 32, VSET, ZERO_HASH, 0]),  # eight fields
    msgpack.packb([SWARM, 0, 1, 7, b"R" * 32, VSET, ZERO_HASH]),  # number 0
    msgpack.packb([SWARM, 1, 1, 7, b"R" * 32, VSET, ZERO_HASH], use_bin_type=False),  # str, not bin
    msgpack.packb([SWARM, True, 1, 7, b"R" * 32, VSET, ZERO_HASH]),  # bool for 1
    first().encode() + b"\x00",  # trailing bytes
    first().encode()[:-1],  # truncated
    first().encode().replace(b"\x01\x01\x07", b"\x01\xcc\x01\x07", 1),  # height 1 as uint8: not canonical
])
def test_decode_rejects_malformed_input(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Checkpoint.decode(wire)
    assert info.value.reason == "bad_checkpoint"


@given(st.binary(max_size=300))
def test_decode_of_garbage_raises_only_remote_errors(wire: bytes) -> None:
    try:
        cp = Checkpoint.decode(wire)
    except RemoteProtocolError as exc:
        assert exc.reason == "bad_checkpoint"
    else:
        assert cp.encode() == wire


# --- checkpoint_for and includes -------------------------------------------------


def test_checkpoint_for_builds_a_chain_of_checkpoints() -> None:
    cp1 = checkpoint_for(SWARM, 1, BLOCKS[:4], 1, VSET, None)
    assert cp1 == Checkpoint(SWARM, 1, 1, 4, merkle_root(BLOCKS[:4]), VSET, ZERO_HASH)
    cp2 = checkpoint_for(SWARM, 2, BLOCKS[4:], 5, VSET, cp1)
    assert cp2.first_height == 5
    assert cp2.last_height == 7
    assert cp2.size == 3
    assert cp2.root == merkle_root(BLOCKS[4:])
    assert cp2.prev_checkpoint_hash == cp1.hash()


@pytest.mark.parametrize("number, hashes, first_height, prev_is_first, message", [
    (1, [], 1, False, "at least one block"),
    (3, BLOCKS[:2], 8, True, "checkpoint 3 does not follow checkpoint 1"),
    (2, BLOCKS[:2], 9, True, "first_height 9 does not follow prev.last_height 7"),
    (2, BLOCKS[:2], 1, False, "zero exactly for checkpoint 1"),  # number 2 without a prev
    (1, [b"x"], 1, False, "32 bytes"),
])
def test_checkpoint_for_rejects_misuse(number: int, hashes: list, first_height: int, prev_is_first: bool,
                                       message: str) -> None:
    prev = first() if prev_is_first else None
    with pytest.raises(LocalProtocolError, match=message):
        checkpoint_for(SWARM, number, hashes, first_height, VSET, prev)


def test_checkpoint_for_rejects_a_prev_of_another_swarm() -> None:
    with pytest.raises(LocalProtocolError, match="another swarm"):
        checkpoint_for(b"T" * 32, 2, BLOCKS[:1], 8, VSET, first())


def test_includes_every_block_of_its_range_and_nothing_else() -> None:
    cp = first()
    for height, block in enumerate(BLOCKS, start=1):
        proof = inclusion_proof(BLOCKS, height - 1)
        assert cp.includes(height, block, proof)
        assert not cp.includes(height, b"\xff" * 32, proof)
        assert not any(cp.includes(h, block, proof) for h in range(0, 10) if h != height)


def test_includes_checks_the_size_the_root_alone_does_not_bind() -> None:
    blocks = BLOCKS[:3]
    cp = checkpoint_for(SWARM, 1, blocks, 1, VSET, None)
    proof = inclusion_proof(blocks, 0)
    resized = InclusionProof(0, 4, proof.path)  # same path shape: the bare root accepts it
    assert cp.includes(1, blocks[0], proof)
    assert not cp.includes(1, blocks[0], resized)


@pytest.mark.parametrize("height, proof", [(True, None), (-1, None), ("1", None), (1, "proof")])
def test_includes_returns_false_on_bad_input(height: object, proof: object) -> None:
    proof = inclusion_proof(BLOCKS, 0) if proof is None else proof
    assert first().includes(height, BLOCKS[0], proof) is False  # type: ignore[arg-type]
