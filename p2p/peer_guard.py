"""Per-connection defence against floods: a rate limit on what each peer hands us, and
a ban for a peer that keeps handing us invalid messages.

The ``source`` is the peer a message came from (a direct link's validator, or the
gossip peer that forwarded it), not its signer: the signer's own limits are the
validator's (``p2p.validation``). Only messages that no honest peer would pass on
count against a source: honest peers validate before they relay, so a stream of
undecodable, badly signed or foreign messages comes from the peer that sent it, while
a replay or a client over its rate may come through an honest relay and is not held
against it.

Time is passed in, so this is deterministic and testable without sleeping.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from p2p.errors import LocalProtocolError, RejectReason

# What an honest relay never passes on (it validates first). Not BAD_VERSION nor
# UNKNOWN_TYPE: a peer of a newer version may send a few of those in good faith.
STRIKES = frozenset({RejectReason.TOO_LARGE, RejectReason.UNDECODABLE, RejectReason.WRONG_SWARM,
                     RejectReason.NOT_MEMBER, RejectReason.BAD_SIGNATURE, RejectReason.BAD_PAYLOAD})


class Admission(enum.Enum):
    ADMIT = "admit"
    OVER_RATE = "over_rate"  # this message dropped; the source is not banned for it
    BANNED = "banned"  # everything from this source is dropped until its ban ends


@dataclass(frozen=True, slots=True)
class GuardLimits:
    rate_per_s: float = 2000.0  # messages a second from one peer (honest ones send tens)
    burst: int = 5000
    strikes: int = 50  # invalid messages within ``strike_window_s`` that ban the peer
    strike_window_s: float = 10.0
    ban_s: float = 60.0
    max_sources: int = 10_000

    def __post_init__(self) -> None:
        for name in ("rate_per_s", "burst", "strikes", "strike_window_s", "ban_s", "max_sources"):
            if not getattr(self, name) > 0:
                raise LocalProtocolError(f"peer guard limit {name} must be positive, not {getattr(self, name)!r}")


@dataclass(slots=True)
class _Source:
    tokens: float
    last: float
    strikes: float = 0.0  # decays linearly to 0 over strike_window_s
    banned_until: float = float("-inf")


class PeerGuard:
    """At most ``max_sources`` sources, evicted least recently seen first, banned ones
    last; an evicted source starts afresh."""

    def __init__(self, limits: GuardLimits = GuardLimits()) -> None:
        self.limits = limits
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.over_rate = 0
        self.dropped_banned = 0
        self.bans = 0

    def _get(self, source: str, now: float) -> _Source:
        s = self._sources.get(source)
        if s is None:
            s = self._sources[source] = _Source(float(self.limits.burst), now)
            self._evict(now)
        else:
            self._sources.move_to_end(source)
        elapsed = max(0.0, now - s.last)
        s.tokens = min(float(self.limits.burst), s.tokens + elapsed * self.limits.rate_per_s)
        s.strikes = max(0.0, s.strikes - elapsed * self.limits.strikes / self.limits.strike_window_s)
        s.last = now
        return s

    def admit(self, source: str, now: float) -> Admission:
        s = self._get(source, now)
        if now < s.banned_until:
            self.dropped_banned += 1
            return Admission.BANNED
        if s.tokens < 1.0:
            self.over_rate += 1
            return Admission.OVER_RATE
        s.tokens -= 1.0
        return Admission.ADMIT

    def rejected(self, source: str, reason: RejectReason, now: float) -> bool:
        """Note a rejected message from ``source``; True if this bans it (once per ban)."""
        if reason not in STRIKES:
            return False
        s = self._get(source, now)
        if now < s.banned_until:
            return False
        s.strikes += 1.0
        # Half a strike of slack: strikes arriving together decay a little between
        # them, and ``strikes`` of them at once must ban.
        if s.strikes < self.limits.strikes - 0.5:
            return False
        s.strikes, s.banned_until = 0.0, now + self.limits.ban_s
        self.bans += 1
        return True

    @property
    def screened(self) -> int:
        """Messages refused by ``admit``: over their sender's rate, or from a banned one."""
        return self.over_rate + self.dropped_banned

    def is_banned(self, source: str, now: float) -> bool:
        s = self._sources.get(source)
        return s is not None and now < s.banned_until

    def _evict(self, now: float) -> None:
        over = len(self._sources) - self.limits.max_sources
        if over <= 0:
            return
        # Unbanned first; if every source is banned (peer ids are cheap to make), the
        # oldest bans go, so the table stays bounded whatever a flood of ids does.
        order = sorted(self._sources, key=lambda k: now < self._sources[k].banned_until)[:over]
        for source in order:
            del self._sources[source]
