"""An in-memory swarm network with seeded delay, loss, duplication and partitions.

It offers the same ``SwarmNetwork`` interface as the libp2p network so that the layers
above can be tested quickly, many peers in one process, under faults chosen by the test.

One ``MemoryNetwork`` (the hub) holds the fault model and the link state; each peer runs
``run_memory_endpoint`` as a service. The service owns every task that moves messages:
a sender task drains the outbox into the hub, and a delivery task sleeps until the next
scheduled arrival (``trio.sleep_until``), so under ``MockClock(autojump_threshold=0)``
a test runs instantly and the same seed gives the same deliveries at the same times.

Trio shuffles the order in which tasks that are ready at the same instant run, so a
random stream shared by all senders would be consumed in a different order each run.
Instead the hub keeps one ``random.Random`` per sender, seeded from ``(seed, peer id)``:
what happens to a message depends only on the seed, its sender and the sender's history.
Arrivals at the same instant are ordered by (sender, sequence number), never by luck.

A message is delivered only if, at its arrival time, the link from its sender to the
receiver is still up (both attached, same partition group, link not cut): messages in
flight across a new cut, from a peer that left, or to a peer that left are dropped.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from p2p.errors import LocalProtocolError
from p2p.net import (
    INBOX_SIZE,
    MAX_FRAME_BYTES,
    Gate,
    OUTBOX_SIZE,
    MessageArrived,
    NetworkEvent,
    NetworkStats,
    PeerConnected,
    PeerDisconnected,
    offer,
)

_UNNAMED = -1  # partition group of the peers no group names


@dataclass(frozen=True, slots=True, order=True)
class _InFlight:
    """One scheduled arrival. Ordered by time, then (sender, seq, copy): total and
    independent of which task happened to schedule it first."""

    at: float
    source: str
    seq: int
    copy: int
    data: bytes = field(compare=False)
    sender: MemoryEndpoint = field(compare=False)  # the incarnation that sent it


class MemoryNetwork:
    """The hub: who is attached, which links are up, and what happens to each message."""

    def __init__(
        self,
        seed: int,
        *,
        delay: tuple[float, float] = (0.001, 0.010),
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: bool = True,
    ) -> None:
        low, high = delay
        if not 0 <= low <= high:
            raise LocalProtocolError(f"delay must be (low, high) with 0 <= low <= high, got {delay!r}")
        for name, p in (("loss", loss), ("duplicate", duplicate)):
            if not 0.0 <= p <= 1.0:
                raise LocalProtocolError(f"{name} must be a probability in [0, 1], got {p!r}")
        self.seed = seed
        self.delay = (low, high)
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self._endpoints: dict[str, MemoryEndpoint] = {}
        self._groups: dict[str, int] = {}  # empty: no partition
        self._cut: set[frozenset[str]] = set()  # single links taken down by disconnect()
        self._rngs: dict[str, random.Random] = {}
        self._seqs: dict[str, int] = {}
        self._last_at: dict[tuple[str, str], float] = {}  # per link, for reorder=False

    # --- link state -------------------------------------------------------------------

    def reachable(self, a: str, b: str) -> bool:
        """Whether a message from ``a`` would currently reach ``b`` (or vice versa)."""
        return (
            a != b
            and a in self._endpoints
            and b in self._endpoints
            and self._groups.get(a, _UNNAMED) == self._groups.get(b, _UNNAMED)
            and frozenset((a, b)) not in self._cut
        )

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the swarm: peers in different groups cannot reach each other. Peers no
        group names (including ones that attach later) form one more group together."""
        named: dict[str, int] = {}
        for index, group in enumerate(groups):
            for peer in group:
                if peer in named:
                    raise LocalProtocolError(f"peer {peer!r} named in two partition groups")
                named[peer] = index
        self._change(lambda: setattr(self, "_groups", named))

    def heal(self) -> None:
        """Undo every partition and every cut link."""

        def reconnect_all() -> None:
            self._groups = {}
            self._cut.clear()

        self._change(reconnect_all)

    def disconnect(self, a: str, b: str) -> None:
        """Take down the single link between ``a`` and ``b`` (both directions)."""
        self._change(lambda: self._cut.add(frozenset((a, b))))

    def connect(self, a: str, b: str) -> None:
        """Restore a link taken down by ``disconnect``; a partition still applies."""
        self._change(lambda: self._cut.discard(frozenset((a, b))))

    def _change(self, mutate: Callable[[], object]) -> None:
        """Apply ``mutate`` to the link state and tell both ends of every link that
        went down or came up, in a fixed (sorted) order."""
        before = self._links()
        mutate()
        after = self._links()
        for a, b in sorted(before - after):
            self._notify(a, PeerDisconnected(b))
            self._notify(b, PeerDisconnected(a))
        for a, b in sorted(after - before):
            self._notify(a, PeerConnected(b))
            self._notify(b, PeerConnected(a))

    def _links(self) -> set[tuple[str, str]]:
        peers = sorted(self._endpoints)
        return {(a, b) for i, a in enumerate(peers) for b in peers[i + 1 :] if self.reachable(a, b)}

    def _notify(self, peer: str, event: NetworkEvent) -> None:
        endpoint = self._endpoints.get(peer)
        if endpoint is not None:
            offer(endpoint._events_in, event, endpoint.stats)

    # --- attachment and messages ------------------------------------------------------

    def _attach(self, endpoint: MemoryEndpoint) -> None:
        if endpoint.local_peer in self._endpoints:
            raise LocalProtocolError(f"peer {endpoint.local_peer!r} is already attached")
        self._change(lambda: self._endpoints.__setitem__(endpoint.local_peer, endpoint))

    def _detach(self, endpoint: MemoryEndpoint) -> None:
        if self._endpoints.get(endpoint.local_peer) is endpoint:
            self._change(lambda: self._endpoints.pop(endpoint.local_peer))

    def _fan_out(self, sender: MemoryEndpoint, data: bytes) -> None:
        """Hand one published message to the hub: echo it to the sender at once, and
        schedule its arrival (or loss, or two arrivals) at every reachable peer."""
        source = sender.local_peer
        rng = self._rngs.setdefault(source, random.Random(f"{self.seed}:{source}"))
        seq = self._seqs.get(source, 0)
        self._seqs[source] = seq + 1
        sender._arrive(MessageArrived(data, source))
        now = trio.current_time()
        for receiver in sorted(self._endpoints):
            if not self.reachable(source, receiver) or rng.random() < self.loss:
                continue
            copies = 2 if rng.random() < self.duplicate else 1
            for copy in range(copies):
                at = now + rng.uniform(*self.delay)
                if not self.reorder:
                    at = max(at, self._last_at.get((source, receiver), at))
                    self._last_at[source, receiver] = at
                self._endpoints[receiver]._schedule(_InFlight(at, source, seq, copy, data, sender))

    def _still_deliverable(self, item: _InFlight, receiver: MemoryEndpoint) -> bool:
        return (
            self._endpoints.get(item.source) is item.sender
            and self._endpoints.get(receiver.local_peer) is receiver
            and self.reachable(item.source, receiver.local_peer)
        )


class MemoryEndpoint:
    """One peer's view of a ``MemoryNetwork``; satisfies ``p2p.net.SwarmNetwork``."""

    def __init__(self, net: MemoryNetwork, peer_id: str, gate: Gate | None = None) -> None:
        self.local_peer = peer_id
        self._gate = gate
        self.stats = NetworkStats()
        self._net = net
        self._events_in, self.events = trio.open_memory_channel[NetworkEvent](INBOX_SIZE)
        self._outbox_in, self._outbox_out = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        self._unsent = 0  # published but not yet handed to the hub
        self._idle = trio.lowlevel.ParkingLot()  # drain() waits here
        self._arrivals: list[_InFlight] = []  # heap
        self._wakeup = trio.lowlevel.ParkingLot()  # an earlier arrival was scheduled
        self._stopped = False

    def connected_peers(self) -> frozenset[str]:
        return frozenset(p for p in self._net._endpoints if self._net.reachable(self.local_peer, p))

    def topic_peers(self) -> frozenset[str]:
        return self.connected_peers()  # every attached peer is subscribed

    async def publish(self, data: bytes) -> None:
        if len(data) > MAX_FRAME_BYTES:
            raise LocalProtocolError(f"message of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit")
        if self._stopped:
            raise LocalProtocolError(f"endpoint {self.local_peer!r} is stopped")
        self._unsent += 1
        try:
            await self._outbox_in.send(data)
        except BaseException:
            self._unsent -= 1
            raise

    async def drain(self) -> None:
        while self._unsent and not self._stopped:
            await self._idle.park()

    def _arrive(self, event: MessageArrived) -> None:
        if self._gate is not None:
            verdict = self._gate.admit(event.data, event.source)
            if verdict is None:
                self.stats.gated += 1
                return
            event = MessageArrived(event.data, event.source, verdict)
        self.stats.received += 1
        offer(self._events_in, event, self.stats)

    def _schedule(self, item: _InFlight) -> None:
        heapq.heappush(self._arrivals, item)
        if self._arrivals[0] is item:
            self._wakeup.unpark_all()

    async def _send_loop(self) -> None:
        async for data in self._outbox_out:
            self._net._fan_out(self, data)
            self.stats.published += 1
            self._unsent -= 1
            if not self._unsent:
                self._idle.unpark_all()

    async def _delivery_loop(self) -> None:
        while True:
            now = trio.current_time()
            while self._arrivals and self._arrivals[0].at <= now:
                item = heapq.heappop(self._arrivals)
                if self._net._still_deliverable(item, self):
                    self._arrive(MessageArrived(item.data, item.source))
            with trio.move_on_at(self._arrivals[0].at if self._arrivals else math.inf):
                await self._wakeup.park()


async def run_memory_endpoint(
    net: MemoryNetwork,
    peer_id: str,
    *,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[MemoryEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Attach ``peer_id`` to ``net`` and hand its ``MemoryEndpoint`` to ``task_status``;
    runs until cancelled, then detaches (the others see ``PeerDisconnected``) and closes
    ``events``, dropping whatever was still in flight to it."""
    endpoint = MemoryEndpoint(net, peer_id, gate)
    net._attach(endpoint)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint._send_loop)
            nursery.start_soon(endpoint._delivery_loop)
            task_status.started(endpoint)
    finally:
        endpoint._stopped = True
        net._detach(endpoint)
        endpoint._events_in.close()
        endpoint._outbox_out.close()  # a publisher blocked on a full outbox gets BrokenResourceError
        endpoint._idle.unpark_all()
