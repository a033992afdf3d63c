"""The ballot pacer (GCRA) and the alarm that wakes the node's loop for it."""

from __future__ import annotations

import pytest
import trio

from agents.pacing import Alarm, Pacer, pace_interval
from p2p.errors import LocalProtocolError

# Each row: interval, burst, the times messages are asked for, which of them may leave.
CASES = {
    "an idle sender sends at once": (0.1, 3, [0.0], [True]),
    "a burst, then one per interval": (0.1, 3, [0.0, 0.0, 0.0, 0.0, 0.1, 0.15, 0.2],
                                       [True, True, True, False, True, False, True]),
    "burst 1 is a plain rate": (0.1, 1, [0.0, 0.05, 0.1, 0.1], [True, False, True, False]),
    "idle time refills the burst": (0.1, 2, [0.0, 0.0, 0.0, 5.0, 5.0, 5.0], [True, True, False, True, True, False]),
    "idle time does not bank more than the burst": (0.1, 2, [0.0, 100.0, 100.0, 100.0], [True, True, True, False]),
    "zero interval never waits": (0.0, 1, [0.0, 0.0, 0.0], [True, True, True]),
}


@pytest.mark.parametrize("interval, burst, times, allowed", list(CASES.values()), ids=list(CASES))
def test_pacer(interval: float, burst: int, times: list[float], allowed: list[bool]) -> None:
    pacer = Pacer(interval, burst)
    got = []
    for t in times:
        ready = pacer.ready_at(t)
        ok = pacer.try_send(t)
        assert (ready <= t + 1e-9) is ok  # ready_at says when try_send would have said yes (to rounding)
        got.append(ok)
    assert got == allowed


def test_a_message_due_now_leaves_at_a_large_clock_value() -> None:
    # At clock values of days, interval arithmetic rounds: ready_at(now) may exceed now by
    # an ulp. Without slack the node would set its alarm for "now" and be refused forever.
    pacer, now = Pacer(0.016, 3), 1e6 + 0.1
    for _ in range(1000):
        now = pacer.ready_at(now)
        assert pacer.try_send(now)


@pytest.mark.parametrize("interval, burst", [(-1.0, 1), (float("nan"), 1), (float("inf"), 1), (0.1, 0), (0.1, 1.5)])
def test_bad_settings_are_refused(interval: float, burst) -> None:
    with pytest.raises(LocalProtocolError, match="pacer"):
        Pacer(interval, burst)


def test_the_interval_grows_with_the_swarm() -> None:
    assert pace_interval(16) == 4 * pace_interval(4) > 0


async def test_the_alarm_fires_once_at_the_earliest_deadline_asked_for(autojump_clock) -> None:
    fired: list[float] = []
    alarm = Alarm()

    async def fire() -> None:
        fired.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(alarm.run, fire)
        start = trio.current_time()
        alarm.set(start + 5.0)
        alarm.set(start + 2.0)  # earlier: wins
        alarm.set(start + 3.0)  # later than what is pending: ignored
        await trio.sleep(10.0)
        assert fired == [start + 2.0]
        alarm.set(trio.current_time() + 1.0)  # a new one after the first fired
        await trio.sleep(2.0)
        assert len(fired) == 2 and fired[1] == start + 11.0
        nursery.cancel_scope.cancel()

