"""The agent peer service: what a peer does with what the network delivers.

``serve_peer`` is transport-agnostic: it takes a started ``SwarmNetwork`` (libp2p in
production, ``p2p.memnet`` in fast tests) that was started with this peer's
``PeerGate``. The gate runs the ``MessageValidator`` on every incoming message before
anything else looks at it, and before libp2p relays it; a rejection is counted, logged
at debug level, and never escapes the receive path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from agents import __version__
from agents.logs import emit
from agents.checkpoint_signature import CheckpointSignature
from agents.ballot_messages import Commitments, Reveals
from agents.metrics import PeerMetrics
from agents.catchup import Fetch
from agents.node import AgentNode, Deliberator, serve_node
from agents.storage import PeerStore
from p2p.envelope import Envelope, MessageType
from p2p.errors import RemoteProtocolError
from p2p.keys import Identity
from p2p.messages import DECODERS, Status
from p2p.net import SwarmNetwork
from p2p.peer_guard import PeerGuard
from p2p.swarmfile import SwarmConfig
from p2p.validation import Accepted, MessageValidator

log = logging.getLogger("conclave.peer")


# The envelope types this peer decodes: the network's own, plus the agents' ballot types.
PEER_DECODERS = {**DECODERS, MessageType.BALLOT_COMMIT: Commitments.decode, MessageType.BALLOT_REVEAL: Reveals.decode,
                 MessageType.CHECKPOINT_SIGNATURE: CheckpointSignature.decode}


class PeerGate:
    """The network's gate (``p2p.net.Gate``): full validation before delivery or relay."""

    def __init__(self, swarm: SwarmConfig, clock: Callable[[], float] = trio.current_time,
                 metrics: PeerMetrics | None = None, guard: PeerGuard | None = None) -> None:
        self.validator = MessageValidator(swarm, PEER_DECODERS)
        self._clock = clock
        self.metrics = metrics
        # The network's guard (it screens frames by sender); we tell it which senders
        # hand us messages no honest peer would pass on.
        self.guard = guard

    def admit(self, data: bytes, source: str) -> Accepted | None:
        try:
            return self.validator.validate(data, self._clock())
        except RemoteProtocolError as exc:  # the validator has counted it
            self._report(exc, data, source)
            return None

    def refuse(self, error: RemoteProtocolError, data: bytes, source: str) -> None:
        self.validator.rejected[error.reason] += 1
        self._report(error, data, source)

    def _report(self, error: RemoteProtocolError, data: bytes, source: str) -> None:
        if self.metrics is not None:
            self.metrics.rejection(error.reason)
        emit(log, "message_rejected", f"rejected message via {source}: {error}", logging.DEBUG,
             reason=error.reason.value, detail=error.detail, source=source, bytes=len(data))
        if self.guard is not None and self.guard.rejected(source, error.reason, self._clock()):
            limits = self.guard.limits
            if self.metrics is not None:
                self.metrics.peer_banned()
            emit(log, "peer_banned",
                 f"banned {source} for {limits.ban_s:g} s: {limits.strikes} invalid messages within "
                 f"{limits.strike_window_s:g} s, the last {error.reason.value}", logging.WARNING,
                 source=source, reason=error.reason.value, ban_s=limits.ban_s)


class Outbox:
    """Seals our messages with the next sequence number. ``first_seq`` comes from the
    caller (wall clock in ns in production) so a restart keeps numbers increasing."""

    def __init__(self, swarm: SwarmConfig, identity: Identity, net: SwarmNetwork, first_seq: int) -> None:
        self._swarm, self._identity, self._net, self._seq = swarm, identity, net, first_seq

    async def send(self, type: MessageType, payload: bytes) -> Envelope:
        self._seq += 1
        env = Envelope.seal(self._identity, self._swarm.swarm_id, type, self._seq, payload)
        await self._net.publish(env.encode())
        return env


async def serve_peer(
    swarm: SwarmConfig,
    identity: Identity,
    net: SwarmNetwork,
    gate: PeerGate,
    store: PeerStore,
    *,
    first_seq: int,
    deliberator: Deliberator | None = None,
    fetch: Fetch | None = None,
    metrics: PeerMetrics | None = None,
    anchoring: trio.MemorySendChannel | None = None,
    outbox: Outbox | None = None,
    listen_addrs: tuple[str, ...] = (),
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the peer on a network started with ``gate``, until cancelled. Hands the
    ``AgentNode`` to ``task_status`` once it has loaded its store and is running."""
    # One outbox per identity: every sender's sequence numbers must rise (replay window).
    node = AgentNode(swarm, identity, store, outbox or Outbox(swarm, identity, net, first_seq),
                     deliberator=deliberator, fetch=fetch, metrics=metrics)
    node.anchoring = anchoring
    await node.load()
    role = "validator" if node.is_validator else "observer"
    validator = gate.validator
    emit(
        log, "peer_started",
        f"peer {node.name} started as {role} of swarm {swarm.name}: id {net.local_peer}, "
        f"listening on {', '.join(listen_addrs) or 'nothing'}; at height {node.core.height - 1}, "
        f"{len(node.pool)} motion{'s' if len(node.pool) != 1 else ''} pending",
        name=node.name, role=role, peer_id=net.local_peer, swarm=swarm.name,
        swarm_id=swarm.swarm_id.hex(), listen=list(listen_addrs), version=__version__,
        height=node.core.height - 1, pending=len(node.pool),
    )
    try:
        async with trio.open_nursery() as nursery:
            if node.is_validator:
                status = Status(node.name, __version__, listen_addrs)
                nursery.start_soon(_announce_status, node.outbox, status, swarm.params.status_interval_ms / 1000)
            await nursery.start(serve_node, node, net)
            task_status.started(node)
    finally:
        rejected = {r.value: n for r, n in sorted(validator.rejected.items())}
        screened = gate.guard.screened if gate.guard is not None else 0
        st = node.stats
        emit(
            log, "peer_stopped",
            f"peer {node.name} stopped at height {node.core.height - 1}: motions {st.motions}, "
            f"agreements {st.agreements}, messages accepted {validator.accepted}, "
            f"rejected {sum(rejected.values())}{' ' + str(rejected) if rejected else ''}, "
            f"duplicates {st.duplicates}, dropped on overflow {net.stats.inbound_dropped}, "
            f"screened {screened}",
            name=node.name, height=node.core.height - 1, motions=st.motions, agreements=st.agreements,
            decisions=st.decisions, accepted=validator.accepted, rejected=rejected, duplicates=st.duplicates,
            inbound_dropped=net.stats.inbound_dropped, published=net.stats.published,
            frames=net.stats.frames, forced=net.stats.forced, ballots=dict(st.ballots),
            malformed_rpcs=net.stats.malformed_rpcs, screened=screened,
            bans=gate.guard.bans if gate.guard is not None else 0,
        )


async def _announce_status(outbox: Outbox, status: Status, interval: float) -> None:
    payload = status.encode()
    while True:
        await outbox.send(MessageType.STATUS, payload)
        await trio.sleep(interval)
