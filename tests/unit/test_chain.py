"""The in-memory chain of decided block hashes: append rules, lookups, proofs for checkpoints."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.chain import BlockChain
from consensus.checkpoint import SWARM_ID_BYTES, checkpoint_for
from consensus.errors import LocalProtocolError
from consensus.merkle import inclusion_proof, merkle_root, verify_inclusion

GENESIS = hashlib.sha256(b"genesis").digest()


def block(height: int) -> bytes:
    return hashlib.sha256(b"block %d" % height).digest()


def chain_of(n: int) -> BlockChain:
    chain = BlockChain(GENESIS)
    for h in range(1, n + 1):
        chain.append(h, block(h), chain.tip)
    return chain


def test_empty_chain_is_at_genesis() -> None:
    chain = BlockChain(GENESIS)
    assert chain.height == 0
    assert chain.tip == GENESIS
    assert chain.hash_at(0) == GENESIS
    assert chain.genesis_hash == GENESIS


def test_append_links_each_block_to_the_last() -> None:
    chain = BlockChain(GENESIS)
    chain.append(1, block(1), GENESIS)
    chain.append(2, block(2), block(1))
    assert chain.height == 2
    assert chain.tip == block(2)
    assert chain.hash_at(1) == block(1)
    assert chain.hashes(0, 2) == [GENESIS, block(1), block(2)]


@pytest.mark.parametrize("height", [0, 2, 5, -1, True])
def test_append_rejects_a_wrong_height(height: object) -> None:
    chain = chain_of(3)
    with pytest.raises(LocalProtocolError, match=r"height mismatch: got .*, expected 4"):
        chain.append(height, block(4), block(3))  # type: ignore[arg-type]
    assert chain.height == 3


def test_append_rejects_a_wrong_prev_hash_naming_both() -> None:
    chain = chain_of(3)
    with pytest.raises(LocalProtocolError, match="prev_hash mismatch at height 4") as info:
        chain.append(4, block(4), block(2))
    assert block(2).hex() in str(info.value)
    assert block(3).hex() in str(info.value)
    assert chain.tip == block(3)


def test_first_block_must_link_the_genesis() -> None:
    with pytest.raises(LocalProtocolError, match="prev_hash mismatch at height 1"):
        BlockChain(GENESIS).append(1, block(1), bytes(32))


@pytest.mark.parametrize("block_hash, prev_hash, message", [
    (b"short", GENESIS, "block_hash"),
    (None, GENESIS, "block_hash"),
    (block(1), GENESIS[:31], "prev_hash must be 32 bytes"),
])
def test_append_rejects_malformed_hashes(block_hash: object, prev_hash: object, message: str) -> None:
    chain = BlockChain(GENESIS)
    with pytest.raises(LocalProtocolError, match=message):
        chain.append(1, block_hash, prev_hash)  # type: ignore[arg-type]
    assert chain.height == 0


def test_genesis_must_be_a_hash() -> None:
    with pytest.raises(LocalProtocolError, match="genesis_hash"):
        BlockChain(b"genesis")


@pytest.mark.parametrize("first, last", [(4, 6), (3, 2), (-1, 2), (0, 6), (True, 2)])
def test_lookups_outside_the_chain_are_refused(first: object, last: object) -> None:
    chain = chain_of(5)
    with pytest.raises(LocalProtocolError, match="not within 0..5"):
        chain.hashes(first, last)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="not within 0..5"):
        chain.hash_at(6)


def test_proof_height_must_lie_in_the_range() -> None:
    chain = chain_of(8)
    with pytest.raises(LocalProtocolError, match="outside the range 3..5"):
        chain.proof(6, 3, 5)
    with pytest.raises(LocalProtocolError, match="not within 0..8"):
        chain.proof(9, 5, 9)


def test_proofs_verify_against_checkpoint_roots() -> None:
    chain = chain_of(10)
    swarm, vset = b"S" * SWARM_ID_BYTES, b"V" * 32
    cp1 = checkpoint_for(swarm, 1, chain.hashes(1, 4), 1, vset, None)
    cp2 = checkpoint_for(swarm, 2, chain.hashes(5, 10), 5, vset, cp1)
    for cp in (cp1, cp2):
        for h in range(cp.first_height, cp.last_height + 1):
            proof = chain.proof(h, cp.first_height, cp.last_height)
            assert proof == inclusion_proof(chain.hashes(cp.first_height, cp.last_height), h - cp.first_height)
            assert cp.includes(h, chain.hash_at(h), proof)
            assert verify_inclusion(chain.hash_at(h), proof, cp.root)
    # A proof made for one checkpoint does not verify under the other.
    assert not cp2.includes(5, chain.hash_at(1), chain.proof(1, 1, 4))
    assert not verify_inclusion(chain.hash_at(1), chain.proof(1, 1, 4), cp2.root)


@settings(max_examples=40)
@given(st.integers(1, 40), st.data())
def test_any_range_proves_each_of_its_blocks(n: int, data: st.DataObject) -> None:
    chain = chain_of(n)
    first = data.draw(st.integers(0, n), label="first")
    last = data.draw(st.integers(first, n), label="last")
    root = merkle_root(chain.hashes(first, last))
    for h in range(first, last + 1):
        proof = chain.proof(h, first, last)
        assert proof.size == last - first + 1
        assert verify_inclusion(chain.hash_at(h), proof, root)
        assert not verify_inclusion(block(n + 1), proof, root)
