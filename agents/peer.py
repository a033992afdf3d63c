"""The agent peer service: what a peer does with what the network delivers.

``serve_peer`` is transport-agnostic: it takes a started ``SwarmNetwork`` (libp2p in
production, ``p2p.memnet`` in fast tests) that was started with this peer's
``PeerGate``. The gate runs the ``MessageValidator`` on every incoming message before
anything else looks at it, and before libp2p relays it; a rejection is counted, logged
at debug level, and never escapes the receive path.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from agents import __version__
from agents.logs import emit
from agents.commitment import Commitment, Reveal
from agents.motion_store import MotionStore, StoredMotion
from p2p.envelope import Envelope, MessageType
from p2p.errors import LocalProtocolError, RemoteProtocolError
from p2p.keys import Identity
from p2p.messages import DECODERS, Motion, Status
from p2p.net import MessageArrived, PeerConnected, PeerDisconnected, SwarmNetwork
from p2p.swarmfile import SwarmConfig
from p2p.validation import Accepted, MessageValidator

log = logging.getLogger("conclave.peer")


@dataclass(slots=True)
class PeerStats:
    motions: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)


# The envelope types this peer decodes: the network's own, plus the agents' ballot types.
PEER_DECODERS = {**DECODERS, MessageType.BALLOT_COMMIT: Commitment.decode, MessageType.BALLOT_REVEAL: Reveal.decode}


class PeerGate:
    """The network's gate (``p2p.net.Gate``): full validation before delivery or relay."""

    def __init__(self, swarm: SwarmConfig, clock: Callable[[], float] = trio.current_time) -> None:
        self.validator = MessageValidator(swarm, PEER_DECODERS)
        self._clock = clock

    def admit(self, data: bytes, source: str) -> Accepted | None:
        try:
            return self.validator.validate(data, self._clock())
        except RemoteProtocolError as exc:
            emit(log, "message_rejected", f"rejected message via {source}: {exc}", logging.DEBUG,
                 reason=exc.reason.value, detail=exc.detail, source=source, bytes=len(data))
            return None


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


def describe_sender(swarm: SwarmConfig, public_key: bytes | None = None, peer_id: str | None = None) -> str:
    v = swarm.validator_by_key(public_key) if public_key is not None else swarm.validator_by_peer_id(peer_id or "")
    if v is not None:
        return v.name
    if peer_id is None and public_key is not None:
        from p2p.keys import peer_id_from_public_key

        peer_id = peer_id_from_public_key(public_key)
    return f"client {peer_id[:8]}…{peer_id[-6:]}" if peer_id else "unknown"


def short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def serve_peer(
    swarm: SwarmConfig,
    identity: Identity,
    net: SwarmNetwork,
    gate: PeerGate,
    store: MotionStore,
    *,
    first_seq: int,
    listen_addrs: tuple[str, ...] = (),
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the peer on a network started with ``gate``, until cancelled."""
    me = swarm.validator_by_key(identity.public_key)
    role = "validator" if me else "observer"
    name = me.name if me else describe_sender(swarm, peer_id=net.local_peer)
    validator = gate.validator
    stats = PeerStats(rejected=validator.rejected)
    outbox = Outbox(swarm, identity, net, first_seq)
    emit(
        log, "peer_started",
        f"peer {name} started as {role} of swarm {swarm.name}: id {net.local_peer}, "
        f"listening on {', '.join(listen_addrs) or 'nothing'}",
        name=name, role=role, peer_id=net.local_peer, swarm=swarm.name,
        swarm_id=swarm.swarm_id.hex(), listen=list(listen_addrs), version=__version__,
    )
    try:
        async with trio.open_nursery() as nursery:
            if me is not None:
                status = Status(me.name, __version__, listen_addrs)
                nursery.start_soon(_announce_status, outbox, status, swarm.params.status_interval_ms / 1000)
            task_status.started(stats)
            async for event in net.events:
                if isinstance(event, MessageArrived):
                    if not isinstance(event.verdict, Accepted):
                        raise LocalProtocolError("the network was not started with this peer's gate")
                    await _on_accepted(swarm, store, stats, event.verdict)
                elif isinstance(event, PeerConnected):
                    who = describe_sender(swarm, peer_id=event.peer)
                    emit(log, "peer_joined", f"peer joined: {who} ({event.peer})", peer=who, peer_id=event.peer,
                         connected=len(net.connected_peers()))
                elif isinstance(event, PeerDisconnected):
                    who = describe_sender(swarm, peer_id=event.peer)
                    emit(log, "peer_left", f"peer left: {who} ({event.peer})", peer=who, peer_id=event.peer,
                         connected=len(net.connected_peers()))
            nursery.cancel_scope.cancel()  # the network has stopped: so do we
    finally:
        rejected = {r.value: n for r, n in sorted(stats.rejected.items())}
        emit(
            log, "peer_stopped",
            f"peer {name} stopped: motions {stats.motions}, messages accepted {validator.accepted}, "
            f"rejected {sum(rejected.values())}{' ' + str(rejected) if rejected else ''}, "
            f"duplicates {stats.duplicates}, dropped on overflow {net.stats.inbound_dropped}",
            name=name, motions=stats.motions, accepted=validator.accepted, rejected=rejected,
            duplicates=stats.duplicates, inbound_dropped=net.stats.inbound_dropped, published=net.stats.published,
        )


async def _announce_status(outbox: Outbox, status: Status, interval: float) -> None:
    payload = status.encode()
    while True:
        await outbox.send(MessageType.STATUS, payload)
        await trio.sleep(interval)


async def _on_accepted(swarm: SwarmConfig, store: MotionStore, stats: PeerStats, accepted: Accepted) -> None:
    if accepted.type is MessageType.MOTION:
        await _on_motion(swarm, store, stats, accepted)
    elif accepted.type is MessageType.STATUS:
        st = accepted.payload
        emit(log, "status_received", f"status from {st.name}: version {st.agent_version}", logging.DEBUG,
             name=st.name, agent_version=st.agent_version, listen=list(st.listen_addrs))
    else:
        # Consensus and ballot messages are validated and relayed already; the driver that
        # acts on them is the next piece of work (issue 5).
        emit(log, "message_unhandled", f"{accepted.type.name} accepted, not acted on yet", logging.DEBUG,
             type=accepted.type.name)


async def _on_motion(swarm: SwarmConfig, store: MotionStore, stats: PeerStats, accepted: Accepted) -> None:
    env, motion = accepted.envelope, accepted.payload
    assert isinstance(motion, Motion)
    motion_id = env.message_id.hex()
    sender = describe_sender(swarm, public_key=env.sender)
    record = StoredMotion(motion_id, sender, env.seq, motion.text, motion.options)
    if not await store.add(record):
        stats.duplicates += 1
        emit(log, "motion_duplicate", f"motion {motion_id[:12]} seen before", logging.DEBUG, motion_id=motion_id)
        return
    stats.motions += 1
    emit(
        log, "motion_received",
        f'MOTION {motion_id[:12]} from {sender}: "{short(motion.text)}" [{" / ".join(motion.options)}]',
        motion_id=motion_id, sender=sender, text=motion.text, options=list(motion.options),
    )
