"""Decisions fetched from one running peer over /conclave/sync/1.0.0, for tools run by
someone outside the swarm (``conclave verify --from``). Unverified here: the caller
checks every certificate."""

from __future__ import annotations

import trio

from agents.run import parse_bootstrap, wait_until
from agents.storage import Decision
from consensus.qc import QuorumCertificate
from consensus.types import Block
from p2p.errors import ConfigError
from p2p.keys import Identity
from p2p.libp2p_net import NetworkConfig, run_libp2p_network
from p2p.swarmfile import SwarmConfig
from p2p.sync import MAX_BATCH, SyncError, fetch_decisions

MAX_HEIGHTS = 1_000_000  # a bound on what one tool run will download


async def fetch_all(swarm: SwarmConfig, addr: str, timeout: float) -> list[Decision]:
    """Every decision ``addr``'s peer holds, from height 1 (in batches)."""
    target = parse_bootstrap(addr)
    cfg = NetworkConfig(Identity.generate(), swarm.topic, ("/ip4/127.0.0.1/tcp/0",), (target,), subscribe=False)
    out: list[Decision] = []
    async with trio.open_nursery() as nursery:
        net = await nursery.start(run_libp2p_network, cfg)
        with trio.move_on_after(timeout):
            await wait_until(lambda: target.peer_id in net.connected_peers())
        if target.peer_id not in net.connected_peers():
            nursery.cancel_scope.cancel()
            raise ConfigError(f"--from {addr}: not reachable within {timeout}s")
        first = 1
        try:
            while first <= MAX_HEIGHTS:
                raw = await fetch_decisions(net, target.peer_id, swarm.swarm_id, first, first + MAX_BATCH - 1, timeout)
                for height, block, cert in raw:
                    qc = QuorumCertificate.decode(cert)
                    out.append(Decision(height, qc.round, Block.decode(block), qc))
                if len(raw) < MAX_BATCH:
                    break
                first += MAX_BATCH
        except SyncError as exc:
            nursery.cancel_scope.cancel()
            raise ConfigError(f"--from {addr}: {exc}") from None
        nursery.cancel_scope.cancel()
    return out
