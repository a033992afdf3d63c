"""The interface every swarm network offers to the layers above (libp2p or in-memory).

A network is started as a service (``await nursery.start(run_..., task_status=...)``)
and hands back a ``SwarmNetwork``. It delivers ``NetworkEvent``s through one bounded
channel, ``events``: when that channel is full the newest event is dropped and counted
in ``stats.inbound_dropped`` (receivers must keep up, and the protocol above recovers
lost messages). Its last ``CONSENSUS_RESERVE`` places are kept for everything but the
bulk (motions and ballots), so that an overload drops bulk before any proposal or vote.
Publishing goes through one bounded outbox drained by a single sender task; ``publish``
waits while the outbox is full, so a fast producer is slowed instead of silently losing
messages.

A peer's own published messages are delivered back to it, as libp2p pubsub does.

Every incoming message first passes the network's ``Gate`` (when one is given): the
gate's verdict travels with the message in ``MessageArrived.verdict``, and a message
the gate refuses (``None``) is neither delivered nor relayed to other peers, so a bad
message stops at the first honest peer instead of flooding the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from p2p.envelope import MessageType
from p2p.errors import RemoteProtocolError

# The largest message any network accepts. py-libp2p silently drops frames of 1 MiB
# and more; leave room for the pubsub framing.
MAX_FRAME_BYTES = 1_000_000
INBOX_SIZE = 4096  # above the 1024 envelopes one bundle may hold (p2p/bundle.py)
# Motions and ballots come in thousands and are re-sent by their authors; a lost vote
# waits for the core's rebroadcast timer, and a round may time out meanwhile. Dropped
# alike, under twice its rated load a swarm of 16 lost 600 to 2,800 events per
# validator, votes among them, and decided no height in 160 s. Bulk may fill the channel up to its last CONSENSUS_RESERVE places only.
CONSENSUS_RESERVE = 1024
BULK_TYPES = frozenset({MessageType.MOTION, MessageType.BALLOT_COMMIT, MessageType.BALLOT_REVEAL})
OUTBOX_SIZE = 256


class Gate(Protocol):
    def admit(self, data: bytes, source: str) -> object | None:
        """A verdict for an incoming message (delivered with it), or None to drop it.

        Runs in the receive path: it must be quick, must not block, must not raise."""
        ...

    def refuse(self, error: RemoteProtocolError, data: bytes, source: str) -> None:
        """Count a pubsub message refused before any envelope in it was judged (a
        malformed bundle). Same rules as ``admit``."""
        ...


@dataclass(frozen=True, slots=True)
class MessageArrived:
    data: bytes
    source: str  # peer id of the peer that handed it to us (the envelope names the signer)
    verdict: object | None = None  # what the gate returned, if there is a gate


@dataclass(frozen=True, slots=True)
class PeerConnected:
    peer: str


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    peer: str


NetworkEvent = MessageArrived | PeerConnected | PeerDisconnected


@dataclass(slots=True)
class NetworkStats:
    published: int = 0  # envelopes handed to the transport, by the single sender task
    frames: int = 0  # transport messages they went in (several envelopes may share one)
    forced: int = 0  # published although a peer's queue was full after waiting: maybe lost for it
    received: int = 0  # delivered into ``events`` (own messages included), after the gate
    gated: int = 0  # refused by the gate: not delivered, not relayed
    inbound_dropped: int = 0  # events lost because ``events`` was full
    malformed_rpcs: int = 0  # transport messages that did not parse (the sender's stream is reset)


class SwarmNetwork(Protocol):
    local_peer: str
    events: trio.MemoryReceiveChannel[NetworkEvent]
    stats: NetworkStats

    def connected_peers(self) -> frozenset[str]:
        """Peers with an open connection to us."""
        ...

    def topic_peers(self) -> frozenset[str]:
        """Connected peers known to be subscribed to the swarm topic."""
        ...

    async def publish(self, data: bytes) -> None:
        """Queue ``data`` for the swarm topic; waits while the outbox is full.

        Raises ``LocalProtocolError`` if ``data`` exceeds ``MAX_FRAME_BYTES``."""
        ...

    async def drain(self) -> None:
        """Return once everything published so far has been handed to the transport."""
        ...


def offer(send: trio.MemorySendChannel[NetworkEvent], event: NetworkEvent, stats: NetworkStats) -> None:
    """Deliver ``event`` without ever blocking the caller: drop it (counted) when full,
    or when it is bulk and only the consensus reserve is left."""
    if _is_bulk(event):
        st = send.statistics()
        if st.current_buffer_used >= st.max_buffer_size - CONSENSUS_RESERVE:
            stats.inbound_dropped += 1
            return
    try:
        send.send_nowait(event)
    except trio.WouldBlock:
        stats.inbound_dropped += 1
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass


def _is_bulk(event: NetworkEvent) -> bool:
    return isinstance(event, MessageArrived) and getattr(event.verdict, "type", None) in BULK_TYPES
