"""Catch-up: when a node fetches decided blocks from its peers, and when it tries again.

The node learns that it is behind in two ways: a peer's validly signed message from a
later height (the core's ``RequestDecision``), or simply connecting to a validator (a
*probe*: maybe we were away). One fetch is in flight at a time, in a worker beside the
node's loop; what comes back is applied by the node, which hands each decision to the
core to verify its certificate. While known to be behind, a failed fetch is retried
with exponential backoff (each attempt starts with another peer: see
``agents.run._fetcher``) until a peer answers that it has nothing newer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from agents.logs import emit
from p2p.sync import MAX_BATCH, SyncError

log = logging.getLogger("conclave.peer")

RETRY_MIN_S = 1.0
RETRY_MAX_S = 16.0
FETCH_TIMEOUT_S = 15.0

# Fetches decided blocks: (first, last) -> (peer that answered, raw decisions).
Fetch = Callable[[int, int], Awaitable[tuple[str | None, list]]]


@dataclass(frozen=True, slots=True)
class DecisionsFetched:
    first: int
    peer: str | None
    decisions: list  # [(height, block bytes, certificate bytes)], unverified
    error: str | None = None
    probe: bool = False


class CatchUp:
    """The catch-up state of one node (driven from its loop, never concurrently)."""

    def __init__(self, queue: trio.MemorySendChannel | None, clock: Callable[[], float]) -> None:
        self._queue, self._clock = queue, clock
        self.in_flight: int | None = None  # first height of the fetch in flight
        self.behind = False
        self._retry_at: float | None = None
        self._backoff = RETRY_MIN_S

    def request(self, first: int, probe: bool = False) -> None:
        if self._queue is None:
            return
        if not probe:
            self.behind = True  # a fetch in flight now is retried if it fails
        if self.in_flight is not None:
            return
        try:
            self._queue.send_nowait((first, probe))
        except trio.WouldBlock:
            return
        self.in_flight, self._retry_at = first, None
        emit(log, "catchup_started", f"{'asking peers for decisions' if probe else 'behind: catching up'} "
             f"from height {first}", logging.DEBUG if probe else logging.INFO, first=first, probe=probe)

    def retry_due(self) -> bool:
        return self._retry_at is not None and self.in_flight is None and self._clock() >= self._retry_at

    def fetched(self, ev: DecisionsFetched) -> bool:
        """Book-keeping for a finished fetch; whether it brought decisions to apply."""
        self.in_flight = None
        if ev.error is None and ev.decisions:
            return True
        if self.behind and (ev.error is not None or ev.probe):
            self._schedule_retry()  # (a probe's answer may predate what showed we are behind)
        else:
            self.behind = False  # a peer answered that it has nothing beyond our tip
        emit(log, "catchup_failed" if ev.error else "catchup_empty",
             f"catch-up from height {ev.first}: {ev.error or 'nothing newer'}", logging.DEBUG,
             first=ev.first, error=ev.error)
        return False

    def applied(self, n: int, batch: int, next_height: int) -> None:
        """``n`` of the ``batch`` fetched decisions verified and applied."""
        if n:
            self._backoff = RETRY_MIN_S
            if batch >= MAX_BATCH:
                self.request(next_height)  # there may be more
            else:
                self.behind = False
        elif self.behind:
            self._schedule_retry()  # nothing usable (a bad certificate?): ask again, another peer first

    def _schedule_retry(self) -> None:
        self._retry_at = self._clock() + self._backoff
        self._backoff = min(2 * self._backoff, RETRY_MAX_S)


async def run_catchup_worker(fetch: Fetch, queue: trio.MemoryReceiveChannel, inbox: trio.MemorySendChannel,
                             timeout: float = FETCH_TIMEOUT_S, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run each requested fetch (bounded by ``timeout``) and hand the result to the loop."""
    task_status.started()
    async for first, probe in queue:
        try:
            with trio.fail_after(timeout):
                peer, decisions = await fetch(first, first + MAX_BATCH - 1)
            await inbox.send(DecisionsFetched(first, peer, decisions, probe=probe))
        except (SyncError, trio.TooSlowError) as exc:
            await inbox.send(DecisionsFetched(first, None, [], error=str(exc) or type(exc).__name__, probe=probe))
