"""The consensus driver: feeds inputs into the pure ``consensus.core.Core`` and carries
out the effects it returns, as etcd's raft is driven through Ready/Advance.

It owns the core, the round timers and the order of effects; what a block *is* (which
motions it resolves, whether a proposed one is valid, what deciding means for the
agent) belongs to the application, reached through the ``ConsensusApp`` protocol.

Ordering rules it keeps:
- a ``PersistVote`` is made durable (fsync, in a worker thread) before the core hears
  ``VotePersisted``, and so before the vote it authorised is signed and broadcast;
- inputs are handled one at a time, to the end of their effects, by whoever calls
  ``handle`` (the node's single loop), so the core never sees two inputs at once;
- timers live in one task (``run_timers``) over a heap; a timeout the core no longer
  cares about (an old round) is simply ignored by the core when it fires.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from consensus.core import Core
from consensus.errors import RemoteProtocolError as ConsensusRemoteError
from consensus.events import (
    Broadcast,
    Decide,
    Effect,
    Input,
    PersistVote,
    ReportEvidence,
    ReportRoundChange,
    RequestDecision,
    RequestValue,
    ScheduleTimeout,
    TimeoutFired,
    ValidateValue,
    ValueValidated,
    VotePersisted,
)
from consensus.safety import SafetyState
from consensus.types import SignedProposal
from p2p.envelope import MessageType
from p2p.errors import LocalProtocolError

log = logging.getLogger("conclave.driver")


class ConsensusApp(Protocol):
    """What the driver needs from the agent."""

    async def broadcast(self, type: MessageType, payload: bytes) -> None: ...
    async def persist_vote(self, state: SafetyState) -> None: ...
    def want_value(self, request: RequestValue) -> None: ...
    def validate(self, request: ValidateValue) -> bool: ...
    async def decided(self, decision: Decide) -> None: ...
    def round_changed(self, change: ReportRoundChange) -> None: ...
    def evidence(self, report: ReportEvidence) -> None: ...
    def fetch_decision(self, request: RequestDecision) -> None: ...
    def rejected(self, error: ConsensusRemoteError, input: Input) -> None: ...


class ConsensusDriver:
    def __init__(self, core: Core, app: ConsensusApp, clock: Callable[[], float] = trio.current_time) -> None:
        self.core, self.app, self._clock = core, app, clock
        self._timers: list[tuple[float, int, TimeoutFired]] = []
        self._tiebreak = itertools.count()  # equal deadlines fire in the order scheduled
        self._timers_changed = trio.Event()
        self.fired: trio.MemorySendChannel[TimeoutFired] | None = None

    async def handle(self, inp: Input) -> None:
        """Apply ``inp`` and every input its effects lead to (persisted votes, validity
        answers), effects carried out in the order the core emitted them."""
        queue: deque[Input] = deque([inp])
        while queue:
            current = queue.popleft()
            try:
                effects = self.core.handle(current)
            except ConsensusRemoteError as exc:
                self.app.rejected(exc, current)  # the core's state is unchanged
                continue
            for effect in effects:
                follow = await self._apply(effect)
                if follow is not None:
                    queue.append(follow)

    async def _apply(self, effect: Effect) -> Input | None:
        if isinstance(effect, Broadcast):
            msg = effect.message
            kind = MessageType.PROPOSAL if isinstance(msg, SignedProposal) else MessageType.VOTE
            await self.app.broadcast(kind, msg.encode())
        elif isinstance(effect, ScheduleTimeout):
            deadline = self._clock() + effect.duration_ms / 1000
            fired = TimeoutFired(effect.kind, effect.height, effect.round)
            heapq.heappush(self._timers, (deadline, next(self._tiebreak), fired))
            self._timers_changed.set()
        elif isinstance(effect, PersistVote):
            await self.app.persist_vote(effect.state)  # durable before anything is signed
            return VotePersisted(effect.state)
        elif isinstance(effect, ValidateValue):
            return ValueValidated(effect.height, effect.block.hash, self.app.validate(effect))
        elif isinstance(effect, RequestValue):
            self.app.want_value(effect)
        elif isinstance(effect, Decide):
            await self.app.decided(effect)
        elif isinstance(effect, ReportRoundChange):
            self.app.round_changed(effect)
        elif isinstance(effect, ReportEvidence):
            self.app.evidence(effect)
        elif isinstance(effect, RequestDecision):
            self.app.fetch_decision(effect)
        else:
            raise LocalProtocolError(f"the driver cannot carry out {effect!r}")
        return None

    def pending_timers(self) -> int:
        return len(self._timers)

    async def run_timers(self, fire: Callable[[TimeoutFired], Awaitable[None]],
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Fire each scheduled timeout at its deadline through ``fire`` (which hands it to
        the node's loop, so the core still sees one input at a time). Until cancelled."""
        task_status.started()
        while True:
            self._timers_changed = trio.Event()
            if not self._timers:
                await self._timers_changed.wait()
                continue
            deadline = self._timers[0][0]
            with trio.move_on_at(deadline):
                await self._timers_changed.wait()
                continue  # an earlier timer may have been added: look again
            _, _, fired = heapq.heappop(self._timers)
            await fire(fired)
