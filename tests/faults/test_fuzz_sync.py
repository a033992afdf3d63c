"""Bad bytes beyond the gossip gate (issue 8, part 5): what a peer reads from a direct
stream's length prefixes, a catch-up request or response from a stranger, and the
blocks and certificates inside a response. Each input is either accepted as well
formed or refused with the error class meant for a peer's bad input; nothing else may
escape, and nothing may hang. Mutations start from real, valid messages so that they
reach the deep checks as well as the shallow ones."""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.events import DecisionReceived
from consensus.qc import QuorumCertificate
from consensus.types import Block, SignedVote, Validator, ValidatorSet, Vote, VoteType
from p2p.keys import Identity
from p2p.reqresp import FRAME_PREFIX, FrameTooLarge, RequestRefused, read_frame
from p2p.sync import MAX_BATCH, SyncError, _parse_request, _parse_response
from tests.faults.fuzz_gate import mutate_bytes, mutate_structure

SWARM_ID = hashlib.sha256(b"fuzz sync").digest()
KEYS = [Identity(hashlib.sha256(b"fuzz sync %d" % i).digest()) for i in range(4)]
VALSET = ValidatorSet(tuple(Validator(k.public_key, 1) for k in KEYS))
SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def real_decisions(n: int = 3) -> list[tuple[int, bytes, bytes]]:
    out, prev = [], SWARM_ID
    for h in range(1, n + 1):
        block = Block(h, prev, KEYS[h % 4].public_key, b"payload %d" % h)
        votes = []
        for i in range(3):
            vote = Vote(VoteType.PRECOMMIT, h, 0, block.hash, i)
            votes.append(SignedVote(vote, KEYS[i].sign(vote.signing_bytes(SWARM_ID))))
        out.append((h, block.encode(), QuorumCertificate.from_votes(votes, 4).encode()))
        prev = block.hash
    return out


DECISIONS = real_decisions()
REAL_HASHES = {h: Block.decode(b).hash for h, b, _ in DECISIONS}
RESPONSE = msgpack.packb({"decisions": [list(d) for d in DECISIONS]}, use_bin_type=True)
REQUEST = msgpack.packb({"swarm": SWARM_ID, "from": 1, "to": 3}, use_bin_type=True)


def mutated(seed: int, data: bytes) -> bytes:
    rng = random.Random(seed)
    return (mutate_structure if rng.random() < 0.5 else mutate_bytes)(rng, data)


def check_response(body: bytes) -> None:
    try:
        out = _parse_response(body, 1, 3, "peer")
    except SyncError:
        return
    assert len(out) <= 3
    assert [h for h, _, _ in out] == list(range(1, len(out) + 1))
    assert all(isinstance(b, bytes) and isinstance(c, bytes) for _, b, c in out)
    for height, block, cert in out:  # what catch-up does next: decode, then verify
        check_decision(height, block, cert)


def adopted(block_bytes: bytes, cert_bytes: bytes) -> Block | None:
    """The block catch-up would adopt from these bytes at an empty chain's height, or
    None if it would refuse them (the checks of AgentNode._on_fetched and the core's
    DecisionReceived, short of the chain link)."""
    try:
        decision = DecisionReceived(Block.decode(block_bytes), QuorumCertificate.decode(cert_bytes))
    except (RemoteProtocolError, LocalProtocolError):
        return None
    qc = decision.certificate
    if qc.verify(VALSET, SWARM_ID) is not None or qc.height != decision.block.height:
        return None
    return decision.block


def check_decision(height: int, block_bytes: bytes, cert_bytes: bytes) -> None:
    block = adopted(block_bytes, cert_bytes)
    # Only the block a quorum really signed, whatever else the bytes say.
    assert block is None or block.hash == REAL_HASHES[block.height], (height, block)


def test_the_real_messages_are_accepted() -> None:
    assert _parse_response(RESPONSE, 1, 3, "peer") == DECISIONS
    assert _parse_request(REQUEST, SWARM_ID) == (1, 3)
    for height, block, cert in DECISIONS:
        assert adopted(block, cert).hash == REAL_HASHES[height]
    # and the checks can fail: a real certificate under another block is refused
    other = Block(1, SWARM_ID, KEYS[1].public_key, b"a block nobody signed").encode()
    assert adopted(other, DECISIONS[0][2]) is None


@SETTINGS
@given(st.integers(0, 2**32))
def test_a_mutated_catch_up_response_is_parsed_or_refused_as_malformed(seed: int) -> None:
    check_response(mutated(seed, RESPONSE))


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_as_a_catch_up_response_are_refused(body: bytes) -> None:
    check_response(body)


@SETTINGS
@given(st.integers(0, 2**32))
def test_a_mutated_catch_up_request_is_answered_or_refused(seed: int) -> None:
    try:
        first, last = _parse_request(mutated(seed, REQUEST), SWARM_ID)
    except RequestRefused:
        return
    assert 1 <= first <= last < first + MAX_BATCH


@SETTINGS
@given(st.integers(0, 2**32), st.integers(0, 2))
def test_a_mutated_block_or_certificate_never_passes_for_the_real_one(seed: int, index: int) -> None:
    height, block, cert = DECISIONS[index]
    rng = random.Random(seed)
    if rng.random() < 0.5:
        block = mutated(seed, block)
    else:
        cert = mutated(seed, cert)
    check_decision(height, block, cert)


class ChunkedStream:
    """A stream that hands out ``data`` in the chunk sizes drawn, then EOF."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self.data, self.rng = data, rng

    async def read(self, n: int) -> bytes:
        take = min(n, self.rng.randint(1, 64))
        chunk, self.data = self.data[:take], self.data[take:]
        return chunk


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2**32), st.integers(0, 128))
def test_direct_stream_framing_reads_whole_frames_or_stops_cleanly(data: bytes, seed: int, limit: int) -> None:
    async def read_all() -> list[bytes]:
        stream, frames = ChunkedStream(data, random.Random(seed)), []
        with trio.fail_after(5):  # a hang is a failure, not a slow test
            while True:
                try:
                    frames.append(await read_frame(stream, limit))
                except (EOFError, FrameTooLarge):
                    return frames

    frames = trio.run(read_all)
    consumed = b"".join(FRAME_PREFIX.pack(len(f)) + f for f in frames)
    assert data.startswith(consumed) and all(len(f) <= limit for f in frames)


@pytest.mark.parametrize("length", [0, 1, 128, 129, 2**32 - 1])
def test_a_length_prefix_over_the_limit_is_refused_before_its_body_is_read(length: int) -> None:
    async def one() -> bytes:
        return await read_frame(ChunkedStream(FRAME_PREFIX.pack(length) + b"x" * min(length, 200),
                                              random.Random(1)), 128)

    if length > 128:
        with pytest.raises(FrameTooLarge):
            trio.run(one)
    else:
        assert trio.run(one) == b"x" * length
