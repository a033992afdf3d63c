"""The project's own peer book: whom to dial, and when to dial again.

py-libp2p's bootstrap gives up after three failures and blocks a failed peer for 60 s,
so we keep our own schedule: exponential backoff with jitter per peer, reset when a
connection is made. Pure: time and randomness are passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DialTarget:
    peer_id: str
    addrs: tuple[str, ...]


@dataclass(slots=True)
class _Entry:
    target: DialTarget
    next_attempt: float = 0.0
    delay: float = 0.0
    failures: int = 0


class PeerBook:
    def __init__(self, initial_backoff: float, max_backoff: float, rng: random.Random) -> None:
        self.initial_backoff, self.max_backoff, self._rng = initial_backoff, max_backoff, rng
        self._entries: dict[str, _Entry] = {}

    def add(self, target: DialTarget) -> None:
        if not target.addrs:
            return  # nothing to dial; the peer may still dial us
        entry = self._entries.get(target.peer_id)
        if entry is None:
            self._entries[target.peer_id] = _Entry(target)
        else:  # merge addresses learned from several sources, keeping order
            addrs = tuple(dict.fromkeys(entry.target.addrs + target.addrs))
            entry.target = DialTarget(target.peer_id, addrs)

    def targets(self) -> list[DialTarget]:
        return [e.target for e in self._entries.values()]

    def due(self, now: float, connected: frozenset[str]) -> list[DialTarget]:
        """Targets not connected whose backoff has elapsed."""
        return [
            e.target
            for pid, e in self._entries.items()
            if pid not in connected and e.next_attempt <= now
        ]

    def dial_failed(self, peer_id: str, now: float) -> float:
        """Record a failure; returns the delay until the next attempt."""
        e = self._entries[peer_id]
        e.failures += 1
        e.delay = self.initial_backoff if e.delay == 0 else min(self.max_backoff, e.delay * 2)
        # +-20% jitter so that peers restarted together do not dial in lockstep
        wait = e.delay * self._rng.uniform(0.8, 1.2)
        e.next_attempt = now + wait
        return wait

    def dial_succeeded(self, peer_id: str) -> None:
        e = self._entries[peer_id]
        e.delay, e.failures, e.next_attempt = 0.0, 0, 0.0

    def failures(self, peer_id: str) -> int:
        return self._entries[peer_id].failures
