"""Batched ballot messages: agents/ballot_messages.py (wire format section 8.3)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ballot import Ballot
from agents.ballot_messages import (
    ENVELOPE_OVERHEAD,
    ITEM_OVERHEAD,
    MAP_OVERHEAD,
    MAX_ITEMS,
    Commitments,
    Reveals,
    pack,
)
from agents.commitment import Commitment, Reveal, check_reveal, commit
from agents.deliberation import FixedDeliberator
from p2p.envelope import Envelope, MessageType
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.keys import Identity
from p2p.messages import Motion

VOTERS = [Identity(bytes([0x60 + i]) * 32) for i in range(4)]
SWARM = hashlib.sha256(b"ballot messages").digest()
MOTIONS = [Motion(f"Motion number {i}?", ("approve", "reject")) for i in range(3)]


def motion_id(i: int) -> bytes:
    return hashlib.sha256(b"motion %d" % i).digest()


def salt(voter: int, motion: int) -> bytes:
    return hashlib.sha256(b"salt %d %d" % (voter, motion)).digest()


@functools.cache
def ballot(voter: int = 0, motion: int = 0) -> Ballot:
    """A really signed ballot, made by the zero-cost deliberator."""
    deliberator = FixedDeliberator(VOTERS[voter], SWARM)
    return trio.run(deliberator.ballot, motion_id(motion), MOTIONS[motion])


def commitment(voter: int = 0, motion: int = 0) -> Commitment:
    return commit(ballot(voter, motion), salt(voter, motion), VOTERS[voter])


def reveal(voter: int = 0, motion: int = 0) -> Reveal:
    return Reveal(ballot(voter, motion), salt(voter, motion))


def all_commitments() -> tuple[Commitment, ...]:
    return tuple(commitment(v, m) for v in range(len(VOTERS)) for m in range(len(MOTIONS)))


def all_reveals() -> tuple[Reveal, ...]:
    return tuple(reveal(v, m) for v in range(len(VOTERS)) for m in range(len(MOTIONS)))


def packb(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def assert_bad_payload(decode, data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    assert info.value.reason is RejectReason.BAD_PAYLOAD
    return info.value


# --- round trips ----------------------------------------------------------------------


def test_the_ballots_are_really_signed():
    b = ballot(1, 2)
    assert b.verify() and b.voter == VOTERS[1].public_key and b.choice == "approve"
    assert commitment(1, 2).verify()


@pytest.mark.parametrize("n", [1, 2, 12])
def test_commitments_round_trip(n):
    items = all_commitments()[:n]
    msg = Commitments(items)
    decoded = Commitments.decode(msg.encode())
    assert decoded == msg and decoded.items == items
    assert all(c.verify() for c in decoded.items)


@pytest.mark.parametrize("n", [1, 2, 12])
def test_reveals_round_trip(n):
    items = all_reveals()[:n]
    msg = Reveals(items)
    decoded = Reveals.decode(msg.encode())
    assert decoded == msg and decoded.items == items
    assert all(r.ballot.verify() for r in decoded.items)


def test_reveals_still_open_their_commitments_after_the_round_trip():
    commitments = Commitments.decode(Commitments(all_commitments()).encode()).items
    reveals = Reveals.decode(Reveals(all_reveals()).encode()).items
    for c, r in zip(commitments, reveals, strict=True):
        check_reveal(c, r)  # does not raise


def test_the_payload_is_the_documented_map_of_encoded_items():
    cs, rs = all_commitments()[:3], all_reveals()[:3]
    assert msgpack.unpackb(Commitments(cs).encode()) == {"commitments": [c.encode() for c in cs]}
    assert msgpack.unpackb(Reveals(rs).encode()) == {"reveals": [r.encode() for r in rs]}


def test_encode_items_equals_encode():
    cs, rs = all_commitments(), all_reveals()
    assert Commitments.encode_items([c.encode() for c in cs]) == Commitments(cs).encode()
    assert Reveals.encode_items([r.encode() for r in rs]) == Reveals(rs).encode()
    assert Commitments.encode_items(tuple(c.encode() for c in cs)) == Commitments(cs).encode()


def test_max_items_round_trip():
    items = (commitment(),) * MAX_ITEMS
    assert Commitments.decode(Commitments(items).encode()).items == items
    reveals = (reveal(),) * MAX_ITEMS
    assert Reveals.decode(Reveals(reveals).encode()).items == reveals


# --- bounds on construction -------------------------------------------------------------


@pytest.mark.parametrize(("cls", "make"), [(Commitments, commitment), (Reveals, reveal)])
def test_construction_refuses_0_and_1025_items(cls, make):
    with pytest.raises(LocalProtocolError):
        cls(())
    with pytest.raises(LocalProtocolError):
        cls((make(),) * (MAX_ITEMS + 1))
    assert len(cls((make(),) * MAX_ITEMS).items) == MAX_ITEMS


@pytest.mark.parametrize(("cls", "make", "other"), [(Commitments, commitment, reveal), (Reveals, reveal, commitment)])
def test_construction_refuses_a_list_and_items_of_the_wrong_kind(cls, make, other):
    with pytest.raises(LocalProtocolError):
        cls([make()])
    with pytest.raises(LocalProtocolError):
        cls((make(), other()))
    with pytest.raises(LocalProtocolError):
        cls((make().encode(),))


# --- decoding refuses -------------------------------------------------------------------

DECODERS = {"commitments": (Commitments.decode, commitment), "reveals": (Reveals.decode, reveal)}


def bad_documents(key: str, good: bytes) -> dict[str, bytes]:
    other = "reveals" if key == "commitments" else "commitments"
    return {
        "not msgpack": b"\xc1\xc1",
        "not a map": packb([good]),
        "empty map": packb({}),
        "missing key": packb({other: [good]}),
        "key as bytes": packb({key.encode(): [good]}),
        "null list": packb({key: None}),
        "empty list": packb({key: []}),
        "1025 items": packb({key: [good] * (MAX_ITEMS + 1)}),
        "bin instead of list": packb({key: good}),
        "map instead of list": packb({key: {"0": good}}),
        "str item": packb({key: [good, "an item"]}),
        "int item": packb({key: [good, 1]}),
        "nil item": packb({key: [good, None]}),
        "nested list item": packb({key: [good, [good]]}),
        "garbage item": packb({key: [good, b"\xc1"]}),
        "empty item": packb({key: [good, b""]}),
        "item not a map": packb({key: [good, packb([1, 2])]}),
        "item of the other kind": packb({key: [good, (reveal() if key == "commitments" else commitment()).encode()]}),
    }


CASES = [(key, name, data) for key, (_, make) in DECODERS.items()
         for name, data in bad_documents(key, make().encode()).items()]


@pytest.mark.parametrize(("key", "name", "data"), CASES, ids=[f"{k}-{n}" for k, n, _ in CASES])
def test_decode_refuses_as_bad_payload(key, name, data):
    decode, _ = DECODERS[key]
    assert_bad_payload(decode, data)


def test_a_malformed_commitment_anywhere_in_the_batch_rejects_the_whole_message():
    good = [c.encode() for c in all_commitments()]
    short_voter = msgpack.unpackb(good[0]) | {"voter": b"\x00" * 31}
    for bad in (packb(short_voter), packb(msgpack.unpackb(good[0]) | {"signature": None})):
        for at in (0, 5, len(good)):
            items = good[:at] + [bad] + good[at:]
            error = assert_bad_payload(Commitments.decode, Commitments.encode_items(items))
            assert "commitment" in error.detail


def test_a_malformed_reveal_anywhere_in_the_batch_rejects_the_whole_message():
    good = [r.encode() for r in all_reveals()]
    doc = msgpack.unpackb(good[0])
    ballot_doc = msgpack.unpackb(doc["ballot"]) | {"choice": "maybe"}  # not one of the options
    for bad in (packb(doc | {"salt": b"short"}), packb(doc | {"ballot": packb(ballot_doc)}),
                packb(doc | {"ballot": "not bytes"})):
        for at in (0, 5, len(good)):
            items = good[:at] + [bad] + good[at:]
            assert_bad_payload(Reveals.decode, Reveals.encode_items(items))


def test_decoding_does_not_judge_signatures_each_item_is_checked_on_its_own_later():
    forged = dataclasses.replace(commitment(0, 0), signature=VOTERS[1].sign(b"not this"))
    decoded = Commitments.decode(Commitments((commitment(1, 1), forged)).encode()).items
    assert decoded[0].verify() and not decoded[1].verify()


# --- pack ---------------------------------------------------------------------------------


def cost(*sizes: int) -> int:
    """The budget a group of items of these sizes needs."""
    return MAP_OVERHEAD + sum(s + ITEM_OVERHEAD for s in sizes)


PACK_TABLE = {
    "empty input": ([], 100, []),
    "everything fits": ([10, 20, 30], 1000, [(0, 1, 2)]),
    "exactly fits": ([10, 20, 30], cost(10, 20, 30), [(0, 1, 2)]),
    "one byte short": ([10, 20, 30], cost(10, 20, 30) - 1, [(0, 1), (2,)]),
    "splits in order": ([10] * 5, cost(10, 10), [(0, 1), (2, 3), (4,)]),
    "a single item": ([10], 1, [(0,)]),
    "each alone when nothing pairs": ([10, 10, 10], cost(10, 10) - 1, [(0,), (1,), (2,)]),
    "too large in the middle goes alone": ([10, 100, 10, 10], 50, [(0,), (1,), (2, 3)]),
    "too large first goes alone": ([100, 10, 10], 50, [(0,), (1, 2)]),
    "too large last goes alone": ([10, 10, 100], 50, [(0, 1), (2,)]),
    "two too large": ([100, 100], 50, [(0,), (1,)]),
    "zero-sized items": ([0] * 4, cost(0, 0, 0), [(0, 1, 2), (3,)]),
}


@pytest.mark.parametrize(("sizes", "budget", "expected"), PACK_TABLE.values(), ids=PACK_TABLE.keys())
def test_pack_table(sizes, budget, expected):
    items = list(range(len(sizes)))
    assert pack(items, sizes, budget) == expected


def test_pack_never_puts_more_than_max_items_in_a_group():
    n = 2 * MAX_ITEMS + 452
    groups = pack(list(range(n)), [0] * n, 10**9)
    assert [len(g) for g in groups] == [MAX_ITEMS, MAX_ITEMS, 452]
    assert [i for g in groups for i in g] == list(range(n))


def test_pack_refuses_sizes_that_do_not_match_the_items():
    with pytest.raises(ValueError):
        pack([1, 2], [10], 100)


def test_packed_real_commitments_fit_in_the_swarms_message_limit():
    max_message_bytes = 2048
    items = [c.encode() for c in all_commitments()] * 10
    groups = pack(items, [len(e) for e in items], max_message_bytes - ENVELOPE_OVERHEAD)
    assert len(groups) > 1 and [i for g in groups for i in g] == items
    for seq, group in enumerate(groups, 1):
        payload = Commitments.encode_items(group)
        env = Envelope.seal(VOTERS[0], SWARM, MessageType.BALLOT_COMMIT, seq, payload).encode()
        assert len(env) <= max_message_bytes
        assert len(Commitments.decode(payload).items) == len(group)


def check_groups(sizes: list[int], budget: int, groups: list[tuple]) -> None:
    n = len(sizes)
    assert [i for g in groups for i in g] == list(range(n))  # the input back, in order
    assert all(1 <= len(g) <= MAX_ITEMS for g in groups)
    for g in groups:
        if len(g) >= 2:
            assert cost(*(sizes[i] for i in g)) <= budget
    # Greedy: the next item would not have fitted in the group before it.
    for g, nxt in zip(groups, groups[1:]):
        assert len(g) == MAX_ITEMS or cost(*(sizes[i] for i in g), sizes[nxt[0]]) > budget


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=3000), max_size=200),
       budget=st.integers(min_value=0, max_value=20_000))
def test_pack_property(sizes, budget):
    check_groups(sizes, budget, pack(list(range(len(sizes))), sizes, budget))


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.binary(max_size=400), max_size=80), budget=st.integers(min_value=1, max_value=4000))
def test_pack_property_on_the_real_encoding(items, budget):
    groups = pack(items, [len(i) for i in items], budget)
    assert [i for g in groups for i in g] == items
    for g in groups:
        if len(g) >= 2:
            assert len(Commitments.encode_items(g)) <= budget
            assert len(Reveals.encode_items(g)) <= budget


def test_pack_property_with_many_tiny_items():
    sizes = [0, 1, 2] * 1500
    check_groups(sizes, 10**7, pack(list(range(len(sizes))), sizes, 10**7))
