"""The checkpoint service (agents/anchoring.py) with a fake anchor and a fake clock:
who signs, who submits when, what counts as landed, and retries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from agents.anchoring import CheckpointService
from agents.checkpoint_signature import CheckpointSignature
from consensus.anchor.evm import AnchorRejected, Anchored, ChainUnavailable
from consensus.types import Block
from p2p.chainkeys import chain_address, sign_digest
from p2p.envelope import MessageType
from p2p.keys import Identity
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic

SEEDS = [bytes([0x40 + i]) * 32 for i in range(4)]
K, GRACE = 2, 5.0
SWARM = SwarmConfig("svc", default_topic("svc"), PROTOCOL_VERSION,
                    tuple(Validator(f"v{i}", Identity(s).peer_id, Identity(s).public_key, 1, (), chain_address(s))
                          for i, s in enumerate(SEEDS)),
                    Params(checkpoint_interval=K, anchor_grace_ms=int(GRACE * 1000)))


@dataclass
class D:
    height: int
    block: Block


class Store:
    def __init__(self, n: int) -> None:
        prev, self.blocks = SWARM.swarm_id, []
        for h in range(1, n + 1):
            b = Block(h, prev, Identity(SEEDS[0]).public_key, b"%d" % h)
            self.blocks.append(b)
            prev = b.hash

    async def adecisions(self, first: int, last: int):
        return [D(b.height, b) for b in self.blocks[first - 1:last]]


class FakeAnchor:
    name = "fake"

    def __init__(self) -> None:
        self.held: list = []
        self.fail_next: Exception | None = None
        self.submissions = 0

    def digest(self, cp) -> bytes:
        return hashlib.sha256(b"fake" + cp.encode()).digest()

    def count(self) -> int:
        return len(self.held)

    def get(self, n: int):
        cp, who = self.held[n - 1]
        return Anchored(n, cp.first_height, cp.last_height, cp.root, cp.validator_set_hash,
                        cp.prev_checkpoint_hash, n, who)

    def submit(self, cp, sigs) -> dict:
        self.submissions += 1
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if cp.number != len(self.held) + 1:
            raise AnchorRejected("WrongCheckpointNumber", (len(self.held) + 1, cp.number))
        self.held.append((cp, "me"))
        return {"line": len(self.held) + 1, "record_hash": "ab" * 32}


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def service(i: int, anchor: FakeAnchor, clock: Clock, sent: list):
    async def send(type, payload):
        sent.append((type, CheckpointSignature.decode(payload)))

    svc = CheckpointService(SWARM, Identity(SEEDS[i]), Store(2 * K), anchor, send, clock)
    svc._call = _direct  # no worker thread in these tests
    return svc


async def _direct(fn, *args):
    return fn(*args)


async def signed_by_all(anchor: FakeAnchor, clock: Clock, height: int = K):
    """Four services that decided ``height`` and exchanged their signatures."""
    sent: list = []
    services = [service(i, anchor, clock, sent) for i in range(4)]
    for s in services:
        await s.decided(height)
    for i, s in enumerate(services):
        for j, (_, msg) in enumerate(sent):
            if j != i:
                s.signature_arrived(chain_address(SEEDS[j]), msg)
    return services, sent


async def test_every_validator_signs_and_only_the_designated_one_submits_at_once() -> None:
    anchor, clock = FakeAnchor(), Clock()
    services, sent = await signed_by_all(anchor, clock)
    assert [t for t, _ in sent] == [MessageType.CHECKPOINT_SIGNATURE] * 4
    assert len({m.checkpoint for _, m in sent}) == 1  # all computed the same checkpoint
    for s in services:
        await s.tick()
    assert anchor.submissions == 1 and anchor.count() == 1  # v0 is checkpoint 1's submitter
    assert services[0].anchored == 1


async def test_the_next_in_line_submits_after_the_grace_period() -> None:
    anchor, clock = FakeAnchor(), Clock()
    services, _ = await signed_by_all(anchor, clock)
    live = services[1:]  # v0, the designated submitter, is dead
    for s in live:
        await s.tick()
    assert anchor.submissions == 0
    clock.now += GRACE
    for s in live:
        await s.tick()
    assert anchor.submissions == 1 and anchor.count() == 1  # v1 only; v2's turn is later


async def test_a_duplicate_submission_is_harmless_and_counts_as_landed() -> None:
    anchor, clock = FakeAnchor(), Clock()
    services, _ = await signed_by_all(anchor, clock)
    await services[0].tick()
    clock.now += 3 * GRACE
    services[3]._next_poll = clock.now + 100  # it has not polled the anchor yet
    await services[3].tick()  # submits too: refused as the wrong number, then observes it
    assert anchor.count() == 1 and services[3].anchored == 1


async def test_an_unreachable_chain_is_retried_with_backoff() -> None:
    anchor, clock = FakeAnchor(), Clock()
    services, _ = await signed_by_all(anchor, clock)
    anchor.fail_next = ChainUnavailable("connection refused")
    await services[0].tick()
    assert anchor.count() == 0 and anchor.submissions == 1
    await services[0].tick()
    assert anchor.submissions == 1  # waits its backoff
    clock.now += 1.0
    await services[0].tick()
    assert anchor.count() == 1


async def test_no_submission_without_a_quorum_and_bad_signatures_do_not_count() -> None:
    anchor, clock = FakeAnchor(), Clock()
    sent: list = []
    s0 = service(0, anchor, clock, sent)
    await s0.decided(K)
    cp = sent[0][1].checkpoint
    digest = anchor.digest(cp)
    s0.signature_arrived(chain_address(SEEDS[1]), CheckpointSignature(cp, sign_digest(SEEDS[1], digest)))
    s0.signature_arrived(chain_address(SEEDS[2]), CheckpointSignature(cp, sign_digest(SEEDS[3], digest)))  # not v2's
    await s0.tick()
    assert anchor.submissions == 0  # 2 of 4 valid signatures
    s0.signature_arrived(chain_address(SEEDS[3]), CheckpointSignature(cp, sign_digest(SEEDS[3], digest)))
    await s0.tick()
    assert anchor.count() == 1


async def test_signatures_that_arrive_before_our_own_decision_are_kept() -> None:
    anchor, clock = FakeAnchor(), Clock()
    sent: list = []
    others = [service(i, anchor, clock, sent) for i in (1, 2)]
    for s in others:
        await s.decided(K)
    late = service(0, anchor, clock, [])
    for i, (_, msg) in enumerate(sent):
        late.signature_arrived(chain_address(SEEDS[i + 1]), msg)
    await late.decided(K)
    await late.tick()
    assert anchor.count() == 1


@pytest.mark.parametrize("height", [K - 1, 0])
async def test_nothing_is_signed_before_a_checkpoint_is_complete(height) -> None:
    sent: list = []
    s = service(0, FakeAnchor(), Clock(), sent)
    await s.decided(height)
    assert sent == [] and s.computed is None


async def test_a_checkpoint_due_while_the_chain_is_down_is_signed_once_it_is_back() -> None:
    anchor, clock = FakeAnchor(), Clock()
    down = {"yes": True}
    real_digest = anchor.digest

    def digest(cp):
        if down["yes"]:
            raise ChainUnavailable("no route to host")
        return real_digest(cp)

    anchor.digest = digest
    sent: list = []
    s = service(0, anchor, clock, sent)
    await s.decided(K)
    assert sent == []
    down["yes"] = False
    await s.tick()
    assert [m.checkpoint.number for _, m in sent] == [1]
