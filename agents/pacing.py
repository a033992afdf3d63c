"""Pacing of a validator's ballot messages, and the alarm that wakes the loop for them.

Every validator sends its commitments and reveals to every other, so a swarm of n
carries n*(n-1) copies of each ballot message, and each copy costs its receiver a frame,
an envelope signature and a decode, whatever the number of ballots inside. Sent at each
pass of the node's loop, a busy validator's ballots left one or two per message (at
n=16, 22 envelopes per motion, and the swarm spent its two cores on them: issue 7's
profile). Paced, the ballots made while the last message was on its way leave together.

``Pacer`` is the generic cell rate algorithm (GCRA, a token bucket without fractional
tokens): up to ``burst`` messages at once, then one per ``interval``. An idle validator
therefore sends at once (agreement latency is unchanged) and a busy one packs. The
interval grows with the swarm: each message costs all n-1 others.

``Alarm`` is the service that hands the loop an event when the pacer allows the next
message: one deadline, the earliest asked for.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from p2p.errors import LocalProtocolError

# The interval between two ballot messages, per validator in the swarm. Measured at n=4
# (1,000 motions offered at 400/s; one motion at a time for latency): 3.1 envelopes per
# motion unpaced, 2.2 at 4 ms, 0.84 at 16 ms; agreement p50 32, 31 and 106 ms. At 16 ms a
# validator deciding one motion after another already waits for its pacer.
PACE_PER_VALIDATOR_S = 0.004
PACE_BURST = 3  # messages an idle validator sends without waiting (commitments, reveals, one to spare)
# GCRA compares times: at a large clock value, interval arithmetic leaves a rounding error,
# and without slack a message due "now" could be refused (and re-asked for) indefinitely.
_SLACK = 1e-9


def pace_interval(validators: int) -> float:
    """Seconds between ballot messages for a swarm of ``validators``."""
    return PACE_PER_VALIDATOR_S * validators


class Pacer:
    def __init__(self, interval: float, burst: int) -> None:
        if not (interval >= 0 and math.isfinite(interval)):
            raise LocalProtocolError(f"pacer interval must be a finite number of seconds >= 0, got {interval!r}")
        if not (isinstance(burst, int) and burst >= 1):
            raise LocalProtocolError(f"pacer burst must be an integer >= 1, got {burst!r}")
        self.interval, self.burst = interval, burst
        self._tat = -math.inf  # theoretical arrival time of the next message

    def ready_at(self, now: float) -> float:
        """The earliest time at which a message may leave (``now`` if it may now)."""
        return max(now, self._tat - (self.burst - 1) * self.interval)

    def try_send(self, now: float) -> bool:
        """Whether a message may leave at ``now``; if so, it is counted."""
        if self.ready_at(now) > now + _SLACK:
            return False
        self._tat = max(self._tat, now) + self.interval
        return True


class Alarm:
    """One pending wake-up: ``set(deadline)`` keeps the earliest deadline asked for, and
    ``run`` calls ``fire`` once it has passed."""

    def __init__(self) -> None:
        self._deadline = math.inf
        self._changed = trio.Event()

    def set(self, deadline: float) -> None:
        if deadline < self._deadline:
            self._deadline = deadline
            self._changed.set()

    async def run(self, fire: Callable[[], Awaitable[None]], task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled."""
        task_status.started()
        while True:
            self._changed = trio.Event()
            with trio.move_on_at(self._deadline):
                await self._changed.wait()
                continue  # an earlier deadline was asked for: look again
            self._deadline = math.inf
            await fire()
