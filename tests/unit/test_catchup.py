"""When a node fetches decisions and when it tries again (agents/catchup.py)."""

from __future__ import annotations

import trio

from agents.catchup import RETRY_MAX_S, RETRY_MIN_S, CatchUp, DecisionsFetched
from p2p.sync import MAX_BATCH


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[CatchUp, trio.MemoryReceiveChannel, Clock]:
    send, recv = trio.open_memory_channel(1)
    clock = Clock()
    return CatchUp(send, clock), recv, clock


def test_one_fetch_at_a_time_and_a_probe_is_not_being_behind() -> None:
    c, queue, _ = make()
    c.request(3, probe=True)
    assert queue.receive_nowait() == (3, True) and c.in_flight == 3 and not c.behind
    c.request(3)  # while in flight: remembered as behind, not queued twice
    assert c.behind and c.in_flight == 3


def test_a_failed_fetch_while_behind_is_retried_with_growing_backoff() -> None:
    c, queue, clock = make()
    waits = []
    for _ in range(7):
        c.request(5)
        queue.receive_nowait()
        assert not c.fetched(DecisionsFetched(5, None, [], error="timeout"))
        start = clock.now
        while not c.retry_due():
            clock.now += 0.5
        waits.append(clock.now - start)
    assert waits[0] == RETRY_MIN_S and waits == sorted(waits) and waits[-1] == RETRY_MAX_S


def test_an_empty_answer_ends_being_behind_but_an_empty_probe_answer_does_not() -> None:
    c, queue, clock = make()
    c.request(5, probe=True)
    c.request(5)  # a later-height message arrived while the probe was in flight
    queue.receive_nowait()
    assert not c.fetched(DecisionsFetched(5, "p", [], probe=True))
    assert c.behind
    clock.now += RETRY_MIN_S
    assert c.retry_due()
    c.request(5)
    queue.receive_nowait()
    assert not c.fetched(DecisionsFetched(5, "p", []))
    assert not c.behind and not c.retry_due()


def test_a_full_batch_asks_for_the_next_one_and_a_useless_one_is_retried() -> None:
    c, queue, clock = make()
    c.request(1)
    queue.receive_nowait()
    batch = [(h, b"", b"") for h in range(1, MAX_BATCH + 1)]
    assert c.fetched(DecisionsFetched(1, "p", batch))
    c.applied(MAX_BATCH, MAX_BATCH, MAX_BATCH + 1)
    assert queue.receive_nowait() == (MAX_BATCH + 1, False)
    assert c.fetched(DecisionsFetched(MAX_BATCH + 1, "p", [(MAX_BATCH + 1, b"", b"")]))
    c.applied(0, 1, MAX_BATCH + 1)  # its certificate did not verify
    clock.now += RETRY_MIN_S
    assert c.retry_due() and c.behind


def test_without_a_fetcher_nothing_is_ever_requested() -> None:
    c = CatchUp(None, Clock())
    c.request(1)
    assert c.in_flight is None and not c.behind
