"""The sending side of the validators' direct streams (p2p/direct.py ``DirectLinks``) with
a fake host, in virtual time: one writer per peer, frames that wait together share a
write, a peer that stops reading costs the sender one wait and then loses frames at
once, and a failed link is counted and retried after a pause.
tests/integration/test_direct.py runs the same code over real libp2p hosts.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2p.direct import LINK_QUEUE, RETRY_AFTER_S, WRITE_TIMEOUT_S, DirectLinks, DirectStats
from p2p.keys import Identity
from p2p.reqresp import FRAME_PREFIX

B, C = (Identity(bytes([i]) * 32).peer_id for i in (0x21, 0x22))
WAIT = 5.0


class FakeStream:
    def __init__(self, stuck: bool) -> None:
        self.stuck, self.writes = stuck, []

    async def write(self, data: bytes) -> None:
        if self.stuck:
            await trio.sleep_forever()  # a peer that reads nothing: its window never opens
        self.writes.append(data)

    async def close(self) -> None:
        pass


class FakeHost:
    def __init__(self, stuck: set[str], unreachable: set[str] = frozenset()) -> None:
        self.stuck, self.unreachable = stuck, unreachable
        self.streams: dict[str, list[FakeStream]] = {}

    async def new_stream(self, peer_id, protocols):
        peer = peer_id.to_base58()
        if peer in self.unreachable:
            raise ConnectionError("no route")
        stream = FakeStream(peer in self.stuck)
        self.streams.setdefault(peer, []).append(stream)
        return stream


def frames_written(stream: FakeStream) -> list[bytes]:
    out = []
    for data in stream.writes:
        while data:
            (length,) = FRAME_PREFIX.unpack(data[:4])
            out.append(data[4:4 + length])
            data = data[4 + length:]
    return out


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_peer_that_stops_reading_costs_one_wait_then_loses_frames_at_once(clock) -> None:
    host = FakeHost(stuck={B})
    stats = DirectStats()
    async with trio.open_nursery() as nursery:
        links = DirectLinks(host, frozenset({B, C}), nursery, stats)
        frames = [b"frame %d" % i for i in range(LINK_QUEUE + 3)]
        for frame in frames[:LINK_QUEUE + 1]:  # B's writer holds one, its queue the rest
            await links.send(frame, frozenset({B, C}), WAIT)
            await trio.testing.wait_all_tasks_blocked()
        assert stats.dropped == 0 and trio.current_time() == 0

        start = trio.current_time()
        await links.send(frames[LINK_QUEUE + 1], frozenset({B, C}), WAIT)
        assert trio.current_time() - start == pytest.approx(WAIT)  # waited once for B, then gave up
        assert stats.dropped == 1
        start = trio.current_time()
        await links.send(frames[LINK_QUEUE + 2], frozenset({B, C}), WAIT)
        assert trio.current_time() == start and stats.dropped == 2  # congested: lost at once

        await trio.testing.wait_all_tasks_blocked()
        assert frames_written(host.streams[C][0]) == frames  # C lost nothing, in order
        # B's write times out: the link fails, what it held is counted lost, nothing is pending.
        await trio.sleep(WRITE_TIMEOUT_S)
        assert stats.link_failures == 1
        assert links.pending == 0 and stats.sent == len(frames)
        assert stats.dropped == 2 + LINK_QUEUE + 1  # and B's queued frames, and the one in its write
        nursery.cancel_scope.cancel()


async def test_a_failed_link_is_retried_after_a_pause(clock) -> None:
    host = FakeHost(stuck=set(), unreachable={B})
    stats = DirectStats()
    async with trio.open_nursery() as nursery:
        links = DirectLinks(host, frozenset({B}), nursery, stats)
        connected = frozenset({B})
        assert not links.linkable(B, frozenset())  # not connected, no link: gossip's job
        assert links.linkable(B, connected)
        await links.send(b"one", frozenset({B}), WAIT)
        await trio.testing.wait_all_tasks_blocked()
        assert stats.link_failures == 1 and stats.dropped == 1 and links.pending == 0
        assert not links.linkable(B, connected)  # gossip carries to B for a while
        await trio.sleep(RETRY_AFTER_S)
        assert links.linkable(B, connected)
        host.unreachable = set()
        await links.send(b"two", frozenset({B}), WAIT)
        await trio.testing.wait_all_tasks_blocked()
        assert frames_written(host.streams[B][0]) == [b"two"] and links.pending == 0
        nursery.cancel_scope.cancel()


async def test_frames_that_wait_together_share_one_write(clock) -> None:
    host = FakeHost(stuck=set())
    stats = DirectStats()
    async with trio.open_nursery() as nursery:
        links = DirectLinks(host, frozenset({C}), nursery, stats)
        frames = [b"frame %d" % i for i in range(10)]
        for frame in frames:  # no checkpoint in between: the writer has not run yet
            await links.send(frame, frozenset({C}), WAIT)
        await trio.testing.wait_all_tasks_blocked()
        assert frames_written(host.streams[C][0]) == frames
        assert len(host.streams[C][0].writes) == 1 and (stats.sent, stats.writes) == (10, 1)
        nursery.cancel_scope.cancel()
