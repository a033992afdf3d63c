"""Direct streams between validators: each frame goes once to each validator, unrelayed.

Gossipsub hands every peer about D copies of each message, and py-libp2p spends 0.5 to
1 ms of CPU on each copy: Noise, yamux, protobuf, the pubsub signature and a signed peer
record (issue 7's profile). Validators are named in the swarm file and, in a deployed
swarm, connected to each other, so what one validator sends the others goes over one
long-lived stream per ordered pair, ``/conclave/direct/1.0.0``: n-1 copies of a message
in the whole swarm instead of about n*D, with none of gossip's per-message extras.

A stream carries frames: a 4-byte big-endian length, then the bytes gossip would carry
(one envelope or a bundle, ``p2p/bundle.py``). Only validators may open one. The
receiver judges every envelope with the gate gossip uses, and never relays.

``DirectLinks`` is the sending side: a bounded queue and a writer task per validator,
opened when first needed and dropped when a write fails. ``RecentFrames`` lets a frame
that arrives by both paths (direct, and gossip while some validator has no link) be
delivered once.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p.errors import RejectReason, RemoteProtocolError
from p2p.reqresp import FRAME_PREFIX, FrameTooLarge, read_frame

log = logging.getLogger("conclave.p2p.direct")

DIRECT_PROTOCOL = TProtocol("/conclave/direct/1.0.0")
LINK_QUEUE = 64  # frames waiting for one validator's stream (a frame holds up to 256 KiB)
OPEN_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0  # a validator that reads nothing for this long loses its link
RETRY_AFTER_S = 2.0  # after a link fails, gossip carries to that validator for this long
RECENT_FRAMES = 8192
WRITE_BYTES = 256 * 1024  # frames waiting for one validator are joined into writes of about this size


@dataclass(slots=True)
class DirectStats:
    sent: int = 0  # frames written, one per validator reached
    writes: int = 0  # stream writes they took (frames waiting together share one)
    received: int = 0  # frames read from validators' streams
    duplicates: int = 0  # frames that had already arrived by the other path: not delivered again
    dropped: int = 0  # frames a validator's queue had no room for, or that its failed link lost
    link_failures: int = 0  # links that could not be opened, or broke while writing
    refused_streams: int = 0  # streams opened by a peer that is not a validator


class RecentFrames:
    """Digests of recently delivered frames (both paths), with whether all their
    envelopes were good: a second arrival is not delivered again, and gossip relays it
    only if the first was all good."""

    def __init__(self, size: int = RECENT_FRAMES) -> None:
        self._size = size
        self._seen: OrderedDict[bytes, bool] = OrderedDict()

    @staticmethod
    def digest(frame: bytes) -> bytes:
        return hashlib.sha256(frame).digest()

    def get(self, digest: bytes) -> bool | None:
        return self._seen.get(digest)

    def add(self, digest: bytes, all_good: bool) -> None:
        self._seen[digest] = all_good
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)


class DirectLinks:
    """One bounded queue and one writer task per validator reached directly.

    Writer tasks run in ``nursery`` (the network's), end when their stream fails, and
    are started again by the next frame for that validator once ``RETRY_AFTER_S`` has
    passed. ``pending`` counts frames queued but not yet written or dropped."""

    def __init__(self, host, peers: frozenset[str], nursery: trio.Nursery, stats: DirectStats) -> None:
        self.peers = peers
        self.stats = stats
        self.pending = 0
        self._host = host
        self._nursery = nursery
        self._queues: dict[str, trio.MemorySendChannel[bytes]] = {}
        self._retry_at: dict[str, float] = {}
        self._congested: set[str] = set()

    def linkable(self, peer: str, connected: frozenset[str]) -> bool:
        """Whether a frame for ``peer`` can go directly now (its link is up or may open)."""
        if peer in self._queues:
            return True
        return peer in connected and trio.current_time() >= self._retry_at.get(peer, 0.0)

    async def send(self, frame: bytes, to: frozenset[str], wait: float) -> None:
        """Queue ``frame`` for every peer in ``to`` (each ``linkable``). Peers whose queue
        is full get up to ``wait`` seconds, together, to make room; one that does not
        loses this frame, and is congested: it loses every frame (at once, no more
        waiting) until its queue is half empty. So a validator that stops reading costs
        the others one wait, not one per frame. Losses are counted in ``dropped``."""
        full = []
        for peer in to:
            queue = self._queues.get(peer) or self._open(peer)
            if peer in self._congested:
                if queue.statistics().current_buffer_used > LINK_QUEUE // 2:
                    self.stats.dropped += 1
                    continue
                self._congested.discard(peer)
            self.pending += 1
            try:
                queue.send_nowait(frame)
            except trio.WouldBlock:
                full.append((peer, queue))
            except (trio.BrokenResourceError, trio.ClosedResourceError):  # its link failed meanwhile
                self.pending -= 1
                self.stats.dropped += 1
        if not full:
            return
        done = 0
        with trio.move_on_after(wait):
            for peer, queue in full:
                try:
                    await queue.send(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.pending -= 1
                    self.stats.dropped += 1
                done += 1
        for peer, _ in full[done:]:  # still waiting when the time was up
            self.pending -= 1
            self.stats.dropped += 1
            self._congested.add(peer)

    def _open(self, peer: str) -> trio.MemorySendChannel[bytes]:
        send, receive = trio.open_memory_channel[bytes](LINK_QUEUE)
        self._queues[peer] = send
        self._nursery.start_soon(self._write_link, peer, receive)
        return send

    async def _write_link(self, peer: str, queue: trio.MemoryReceiveChannel[bytes]) -> None:
        in_flight = 0  # frames taken from the queue, in a write that has not returned
        try:
            with trio.fail_after(OPEN_TIMEOUT_S):
                stream = await self._host.new_stream(ID.from_base58(peer), [DIRECT_PROTOCOL])
            try:
                async for frame in queue:
                    # Frames that queued up meanwhile go in the same write: py-libp2p's
                    # cost (a Noise message, a yamux frame) is per write, not per byte.
                    chunks, size = [FRAME_PREFIX.pack(len(frame)), frame], len(frame)
                    while size < WRITE_BYTES:
                        try:
                            more = queue.receive_nowait()
                        except trio.WouldBlock:
                            break
                        chunks += [FRAME_PREFIX.pack(len(more)), more]
                        size += len(more)
                    in_flight = len(chunks) // 2
                    with trio.fail_after(WRITE_TIMEOUT_S):
                        await stream.write(b"".join(chunks))
                    self.pending -= in_flight
                    self.stats.sent += in_flight
                    self.stats.writes += 1
                    in_flight = 0
            finally:
                with trio.move_on_after(1.0, shield=True):
                    try:
                        await stream.close()
                    except Exception:  # reset by the other side already
                        pass
        except Exception as exc:  # unreachable, no such protocol, reset, slow reader
            self.stats.link_failures += 1
            self._retry_at[peer] = trio.current_time() + RETRY_AFTER_S
            log.debug("direct link to %s failed: %r", peer, exc)
        finally:
            del self._queues[peer]
            self._congested.discard(peer)
            lost = in_flight
            while True:  # what was queued for it is lost (no await here: nothing is added meanwhile)
                try:
                    queue.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                lost += 1
            queue.close()
            self.pending -= lost
            self.stats.dropped += lost


FrameHandler = Callable[[bytes, str], None]
RefusalHandler = Callable[[RemoteProtocolError, bytes, str], None]


def direct_stream_handler(accept: frozenset[str], limit: int, on_frame: FrameHandler, on_refused: RefusalHandler,
                          stats: DirectStats, inbound: dict[str, int]):
    """The libp2p stream handler for ``DIRECT_PROTOCOL``: reads frames from a validator
    in ``accept`` and hands each to ``on_frame(frame, peer)`` (which must not raise or
    block). ``inbound`` counts each peer's open streams. A peer not in ``accept`` has its
    stream reset; a length above ``limit`` is refused and ends the stream."""

    async def handle(stream) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        if peer not in accept:
            stats.refused_streams += 1
            log.debug("direct stream from %s refused: not a validator", peer)
            await _reset(stream)
            return
        inbound[peer] = inbound.get(peer, 0) + 1
        try:
            while True:
                frame = await read_frame(stream, limit)
                stats.received += 1
                on_frame(frame, peer)
        except FrameTooLarge as big:
            on_refused(RemoteProtocolError(RejectReason.TOO_LARGE, f"direct frame of {big.args[0]} bytes > {limit}"),
                       b"", peer)
            await _reset(stream)
        except Exception as exc:  # the stream ended: closed, reset, or the connection went
            log.debug("direct stream from %s ended: %r", peer, exc)
        finally:
            inbound[peer] -= 1
            if not inbound[peer]:
                del inbound[peer]

    return handle


async def _reset(stream) -> None:
    with trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:  # already gone
            pass
