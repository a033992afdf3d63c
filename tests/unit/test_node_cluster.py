"""Whole agent nodes (agents/node.py) over the in-memory network, virtual time.

Four validators with zero-cost ballots (``FixedDeliberator``), a client that submits
motions, optionally an observer. Catch-up reads the other nodes' stores directly, as
the sync protocol would. These are the fast checks of the motion lifecycle and the
driver; tests/integration/test_agreement.py runs the same flows as real processes with
the real model over real libp2p.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from agents.deliberation import FixedDeliberator
from agents.node import AgentNode
from agents.peer import Outbox, PeerGate, serve_peer
from agents.storage import PeerStore
from consensus.evidence import DuplicateVoteEvidence  # noqa: F401 (documents what evidence is)
from p2p.envelope import MessageType
from p2p.keys import Identity
from p2p.memnet import MemoryNetwork, run_memory_endpoint
from p2p.messages import Motion
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic

VALIDATORS = {f"v{i}": Identity(bytes([0x50 + i]) * 32) for i in range(4)}
OBSERVER = Identity(bytes([0x61]) * 32)
CLIENT = Identity(bytes([0x71]) * 32)
PARAMS = Params(client_rate_per_s=1000.0, client_burst=1000, motion_deadline_ms=30_000, reveal_timeout_ms=2000)
SWARM = SwarmConfig("cluster", default_topic("cluster"), PROTOCOL_VERSION,
                    tuple(Validator(n, i.peer_id, i.public_key, 1) for n, i in VALIDATORS.items()), PARAMS)
LIMIT = 120  # virtual seconds for any one test


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 50 ms of real idleness: the store's fsyncs run in
    worker threads, which a zero-threshold autojump would not wait for."""
    return trio.testing.MockClock(autojump_threshold=0.05)


@dataclass
class Member:
    name: str
    identity: Identity
    data: Path
    node: AgentNode | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)


class Cluster:
    def __init__(self, nursery: trio.Nursery, net: MemoryNetwork, tmp: Path) -> None:
        self.nursery, self.net, self.tmp = nursery, net, tmp
        self.members: dict[str, Member] = {}
        self.client = None

    async def fetch_for(self, name: str, first: int, last: int):
        for other in self.members.values():
            if other.name == name or other.node is None:
                continue
            ds = other.node.store.decisions(first, last)
            if ds:
                return other.name, [(d.height, d.block.encode(), d.certificate.encode()) for d in ds]
        return None, []

    async def start(self, name: str, identity: Identity, *, deliberate: bool = True) -> Member:
        m = self.members.get(name) or Member(name, identity, self.tmp / name)
        m.stopped = trio.Event()
        self.members[name] = m

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            store = PeerStore.open(m.data)
            try:
                with trio.CancelScope() as scope:
                    m.scope = scope
                    async with trio.open_nursery() as n:
                        gate = PeerGate(SWARM)
                        ep = await n.start(partial(run_memory_endpoint, self.net, identity.peer_id, gate=gate))
                        delib = FixedDeliberator(identity, SWARM.swarm_id) if deliberate else None
                        m.node = await n.start(partial(
                            serve_peer, SWARM, identity, ep, gate, store, first_seq=int(trio.current_time() * 1e9) + 1,
                            deliberator=delib, fetch=partial(self.fetch_for, name)))
                        task_status.started(m)
            finally:
                store.close()
                m.stopped.set()

        await self.nursery.start(run)
        return m

    async def stop(self, name: str) -> None:
        m = self.members[name]
        m.scope.cancel()
        await m.stopped.wait()

    async def submit(self, text: str, options=("approve", "reject")) -> bytes:
        if self.client is None:
            self.client = await self.nursery.start(partial(run_memory_endpoint, self.net, CLIENT.peer_id))
            self.outbox = Outbox(SWARM, CLIENT, self.client, first_seq=1)
        env = await self.outbox.send(MessageType.MOTION, Motion(text, tuple(options)).encode())
        return env.message_id

    async def wait_decided(self, names, motion_ids) -> None:
        async def done() -> bool:
            return all(self.members[n].node is not None and all(self.members[n].node.pool.is_decided(m)
                                                                 for m in motion_ids) for n in names)
        while not await done():
            await trio.sleep(0.05)


def block_hashes(m: Member) -> list[bytes]:
    store = m.node.store
    return [d.block.hash for d in store.decisions(1, store.last_height())]


async def test_four_validators_agree_on_ten_motions(clock, tmp_path) -> None:
    net = MemoryNetwork(seed=3, delay=(0.001, 0.02))
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                await c.start(name, ident)
            ids = [await c.submit(f"Motion number {i}: adopt it?") for i in range(10)]
            await c.wait_decided(list(VALIDATORS), ids)
            chains = [block_hashes(c.members[n]) for n in VALIDATORS]
            assert all(ch == chains[0] for ch in chains)
            assert chains[0], "no decisions"
            for n in VALIDATORS:
                assert c.members[n].node.stats.agreements == 10
            nursery.cancel_scope.cancel()
