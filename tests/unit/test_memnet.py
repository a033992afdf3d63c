"""The in-memory network: connection events, delivery, faults, partitions, determinism.

Every async test takes pytest-trio's ``autojump_clock`` (a ``MockClock(autojump_threshold=0)``;
pytest-trio uses a clock only when the test itself names the fixture), so delays are
virtual and the tests take no real time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from p2p.errors import LocalProtocolError
from p2p.memnet import MemoryEndpoint, MemoryNetwork, run_memory_endpoint
from p2p.net import INBOX_SIZE, MAX_FRAME_BYTES, MessageArrived, NetworkEvent, PeerConnected, PeerDisconnected

MAX_DELAY = 0.010  # the default delay's upper bound


@asynccontextmanager
async def swarm(net: MemoryNetwork, peers: Iterable[str]) -> AsyncIterator[dict[str, MemoryEndpoint]]:
    """Start one endpoint per peer (in order); cancel them all on exit."""
    async with trio.open_nursery() as nursery:
        endpoints = {p: await nursery.start(run_memory_endpoint, net, p) for p in peers}
        yield endpoints
        nursery.cancel_scope.cancel()


def pending(endpoint: MemoryEndpoint) -> list[NetworkEvent]:
    """Everything already in ``endpoint.events``, without waiting."""
    events = []
    while True:
        try:
            events.append(endpoint.events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


def messages(events: list[NetworkEvent]) -> list[MessageArrived]:
    return [e for e in events if isinstance(e, MessageArrived)]


async def settle() -> None:
    """Let every delivery already scheduled happen (virtual time)."""
    await trio.sleep(2 * MAX_DELAY)


async def test_attach_announces_peers_both_ways_and_detach_disconnects(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=1)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b"]) as eps:
            assert pending(eps["a"]) == [PeerConnected("b")]
            assert pending(eps["b"]) == [PeerConnected("a")]
            async with trio.open_nursery() as inner:
                c = await inner.start(run_memory_endpoint, net, "c")
                assert pending(c) == [PeerConnected("a"), PeerConnected("b")]
                assert pending(eps["a"]) == [PeerConnected("c")]
                assert pending(eps["b"]) == [PeerConnected("c")]
                assert eps["a"].connected_peers() == frozenset({"b", "c"})
                assert eps["a"].topic_peers() == eps["a"].connected_peers()
                inner.cancel_scope.cancel()
            assert pending(eps["a"]) == [PeerDisconnected("c")]
            assert pending(eps["b"]) == [PeerDisconnected("c")]
            assert eps["b"].connected_peers() == frozenset({"a"})
            with pytest.raises(trio.EndOfChannel):
                await c.events.receive()  # closed once its service ended
            with pytest.raises(LocalProtocolError):
                await c.publish(b"too late")


async def test_attaching_the_same_peer_twice_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=1)
    with trio.fail_after(5):
        async with swarm(net, ["a"]):
            async with trio.open_nursery() as inner:
                with pytest.raises(LocalProtocolError):
                    await inner.start(run_memory_endpoint, net, "a")


async def test_publish_reaches_every_other_peer_exactly_once_and_echoes_to_self(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=7)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b", "c", "d"]) as eps:
            for ep in eps.values():
                pending(ep)
            for i in range(20):
                await eps["a"].publish(b"m%d" % i)
            await eps["a"].drain()
            echoed = messages(pending(eps["a"]))  # the echo needs no delay
            assert echoed == [MessageArrived(b"m%d" % i, "a") for i in range(20)]
            await settle()
            sent = {b"m%d" % i for i in range(20)}
            for p in ["b", "c", "d"]:
                got = messages(pending(eps[p]))
                assert len(got) == 20
                assert {m.data for m in got} == sent
                assert {m.source for m in got} == {"a"}
                assert eps[p].stats.received == 20
            assert eps["a"].stats.published == 20
            assert eps["a"].stats.received == 20  # its own echoes


async def test_oversized_publish_raises_and_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=1)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b"]) as eps:
            pending(eps["b"])
            with pytest.raises(LocalProtocolError):
                await eps["a"].publish(bytes(MAX_FRAME_BYTES + 1))
            await eps["a"].publish(bytes(MAX_FRAME_BYTES))  # the limit itself is allowed
            await eps["a"].drain()
            await settle()
            assert [len(m.data) for m in messages(pending(eps["b"]))] == [MAX_FRAME_BYTES]
            assert eps["a"].stats.published == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"delay": (0.2, 0.1)}, {"delay": (-1.0, 0.1)}, {"loss": 1.5}, {"duplicate": -0.1}],
)
def test_bad_fault_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(LocalProtocolError):
        MemoryNetwork(seed=1, **kwargs)


async def run_scenario(seed: int) -> list[tuple[float, str, bytes, str]]:
    """Four peers publishing concurrently under loss, duplication and random delay;
    returns every arrival as (time since start, receiver, data, source)."""
    net = MemoryNetwork(seed=seed, loss=0.2, duplicate=0.2)
    peers = ["a", "b", "c", "d"]
    log: dict[str, list[tuple[float, str, bytes, str]]] = {p: [] for p in peers}
    start = trio.current_time()  # 0.0 on a fresh MockClock

    async def record(ep: MemoryEndpoint) -> None:
        async for event in ep.events:
            if isinstance(event, MessageArrived):
                log[ep.local_peer].append((trio.current_time() - start, ep.local_peer, event.data, event.source))

    async def talk(ep: MemoryEndpoint, gap: float) -> None:
        for i in range(15):
            await ep.publish(f"{ep.local_peer}{i}".encode())
            await trio.sleep(gap)  # several peers publish at the same virtual instants

    with trio.fail_after(10):
        async with swarm(net, peers) as eps:
            async with trio.open_nursery() as readers:
                for ep in eps.values():
                    readers.start_soon(record, ep)
                async with trio.open_nursery() as talkers:
                    for ep, gap in zip(eps.values(), [0.002, 0.004, 0.002, 0.003]):
                        talkers.start_soon(talk, ep, gap)
                await settle()
                await trio.testing.wait_all_tasks_blocked()
                readers.cancel_scope.cancel()
    # Per receiver the order is the network's; across receivers only time matters.
    return [entry for p in peers for entry in log[p]]


def scenario_log(seed: int) -> list[tuple[float, str, bytes, str]]:
    """One run in a fresh trio.run on a fresh MockClock, so times are exact."""
    return trio.run(run_scenario, seed, clock=trio.testing.MockClock(autojump_threshold=0))


def test_same_seed_gives_identical_deliveries_and_different_seed_does_not() -> None:
    first = scenario_log(seed=42)
    assert len(first) > 100
    for _ in range(3):  # trio shuffles task order on each run; the result must not move
        assert scenario_log(seed=42) == first
    assert scenario_log(seed=43) != first


async def test_total_loss_delivers_only_the_echo(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=3, loss=1.0)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b", "c"]) as eps:
            for ep in eps.values():
                pending(ep)
            for i in range(10):
                await eps["a"].publish(b"%d" % i)
            await eps["a"].drain()
            await settle()
            assert messages(pending(eps["b"])) == []
            assert messages(pending(eps["c"])) == []
            assert len(messages(pending(eps["a"]))) == 10


async def test_certain_duplication_delivers_every_message_twice(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=3, duplicate=1.0)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b"]) as eps:
            pending(eps["b"])
            for i in range(10):
                await eps["a"].publish(b"%d" % i)
            await eps["a"].drain()
            await settle()
            got = sorted(m.data for m in messages(pending(eps["b"])))
            assert got == sorted([b"%d" % i for i in range(10)] * 2)
            assert eps["b"].stats.received == 20
            assert len(messages(pending(eps["a"]))) == 10  # the echo is never duplicated


async def arrival_order(reorder: bool) -> list[int]:
    """Publish 0..39 from a to b, one every millisecond, delays of 1-10 ms."""
    net = MemoryNetwork(seed=5, reorder=reorder, duplicate=0.3)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b"]) as eps:
            pending(eps["b"])
            for i in range(40):
                await eps["a"].publish(b"%d" % i)
                await trio.sleep(0.001)
            await eps["a"].drain()
            await settle()
            return [int(m.data) for m in messages(pending(eps["b"]))]


async def test_reorder_false_keeps_each_link_fifo(autojump_clock: trio.testing.MockClock) -> None:
    order = await arrival_order(reorder=False)
    assert len(order) > 40  # duplicates happened, each with its own delay
    assert order == sorted(order)
    assert set(order) == set(range(40))


async def test_reorder_true_does_reorder(autojump_clock: trio.testing.MockClock) -> None:
    order = await arrival_order(reorder=True)
    assert order != sorted(order)
    assert set(order) == set(range(40))


async def test_partition_blocks_across_groups_and_heal_restores(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=11)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b", "c", "d"]) as eps:
            for ep in eps.values():
                pending(ep)
            await eps["a"].publish(b"in flight")
            await eps["a"].drain()
            net.partition(["a", "b"], ["c", "d"])  # before any delivery (min delay 1 ms)
            assert pending(eps["a"]) == [MessageArrived(b"in flight", "a"), PeerDisconnected("c"), PeerDisconnected("d")]
            assert pending(eps["c"]) == [PeerDisconnected("a"), PeerDisconnected("b")]
            assert eps["a"].connected_peers() == frozenset({"b"})
            assert eps["d"].topic_peers() == frozenset({"c"})
            await eps["c"].publish(b"from c")
            await eps["c"].drain()
            await settle()
            assert messages(pending(eps["b"])) == [MessageArrived(b"in flight", "a")]
            assert messages(pending(eps["d"])) == [MessageArrived(b"from c", "c")]
            assert messages(pending(eps["a"])) == []  # neither the in-flight message to c
            assert messages(pending(eps["c"])) == [MessageArrived(b"from c", "c")]

            net.heal()
            assert pending(eps["a"]) == [PeerConnected("c"), PeerConnected("d")]
            assert pending(eps["d"]) == [PeerConnected("a"), PeerConnected("b")]
            await eps["d"].publish(b"healed")
            await eps["d"].drain()
            await settle()
            for p in ["a", "b", "c"]:
                assert messages(pending(eps[p])) == [MessageArrived(b"healed", "d")]


async def test_peers_no_group_names_form_one_group(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=11)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b", "c"]) as eps:
            net.partition(["a"])
            assert eps["a"].connected_peers() == frozenset()
            assert eps["b"].connected_peers() == frozenset({"c"})
            with pytest.raises(LocalProtocolError):
                net.partition(["a"], ["a", "b"])


async def test_single_link_disconnect_and_connect(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=2)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b", "c"]) as eps:
            for ep in eps.values():
                pending(ep)
            net.disconnect("a", "b")
            assert pending(eps["a"]) == [PeerDisconnected("b")]
            assert pending(eps["b"]) == [PeerDisconnected("a")]
            assert pending(eps["c"]) == []
            await eps["a"].publish(b"x")
            await eps["a"].drain()
            await settle()
            assert messages(pending(eps["b"])) == []
            assert messages(pending(eps["c"])) == [MessageArrived(b"x", "a")]
            net.connect("a", "b")
            assert pending(eps["b"]) == [PeerConnected("a")]
            assert eps["a"].connected_peers() == frozenset({"b", "c"})


async def test_messages_in_flight_to_or_from_a_peer_that_left_are_dropped(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=4)
    with trio.fail_after(5):
        async with swarm(net, ["a", "b"]) as eps:
            async with trio.open_nursery() as inner:
                c = await inner.start(run_memory_endpoint, net, "c")
                for ep in [*eps.values(), c]:
                    pending(ep)
                await eps["a"].publish(b"to all")
                await c.publish(b"from c")
                await eps["a"].drain()
                await c.drain()
                inner.cancel_scope.cancel()  # before any delivery (min delay 1 ms)
            await settle()
            assert [e for e in pending(c) if isinstance(e, MessageArrived) and e.source != "c"] == []
            assert messages(pending(eps["b"])) == [MessageArrived(b"to all", "a")]
            assert messages(pending(eps["a"])) == [MessageArrived(b"to all", "a")]


async def test_full_inbox_drops_the_newest_and_counts_them(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=9, delay=(0.0, 0.0))
    extra = 10
    with trio.fail_after(10):
        async with swarm(net, ["a", "b"]) as eps:
            pending(eps["b"])  # b never reads again
            for i in range(INBOX_SIZE + extra):
                await eps["a"].publish(b"%d" % i)
            await eps["a"].drain()
            await settle()
            b = eps["b"]
            assert b.stats.received == INBOX_SIZE + extra
            assert b.stats.inbound_dropped == extra
            got = [int(m.data) for m in messages(pending(b))]
            assert got == list(range(INBOX_SIZE))  # the newest were dropped, order kept
