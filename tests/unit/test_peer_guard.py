"""PeerGuard (p2p/peer_guard.py): per-peer rate limit and ban, with time passed in."""

from __future__ import annotations

import pytest

from p2p.errors import LocalProtocolError, RejectReason
from p2p.peer_guard import STRIKES, Admission, GuardLimits, PeerGuard

LIMITS = GuardLimits(rate_per_s=10.0, burst=3, strikes=4, strike_window_s=2.0, ban_s=5.0, max_sources=3)


def admits(guard: PeerGuard, source: str, now: float, n: int) -> list[Admission]:
    return [guard.admit(source, now) for _ in range(n)]


def test_a_burst_is_admitted_then_the_rate_holds():
    g = PeerGuard(LIMITS)
    assert admits(g, "a", 0.0, 4) == [Admission.ADMIT] * 3 + [Admission.OVER_RATE]
    assert g.over_rate == 1
    # 10 a second: after 0.1 s exactly one more token, after 1 s the burst again (capped).
    assert admits(g, "a", 0.1, 2) == [Admission.ADMIT, Admission.OVER_RATE]
    assert admits(g, "a", 1.1, 4) == [Admission.ADMIT] * 3 + [Admission.OVER_RATE]


def test_sources_are_limited_separately():
    g = PeerGuard(LIMITS)
    admits(g, "a", 0.0, 5)
    assert admits(g, "b", 0.0, 3) == [Admission.ADMIT] * 3


# (reasons, seconds between them, banned?)
BAN_TABLE = [
    ([RejectReason.BAD_SIGNATURE] * 4, 0.0, True),
    ([RejectReason.UNDECODABLE, RejectReason.NOT_MEMBER, RejectReason.WRONG_SWARM, RejectReason.TOO_LARGE], 0.0, True),
    ([RejectReason.BAD_SIGNATURE] * 3, 0.0, False),
    # Strikes decay at strikes/window = 2 a second: one every 0.5 s is held at a steady
    # level below the ban; one every 0.4 s is not.
    ([RejectReason.BAD_PAYLOAD] * 20, 0.5, False),
    ([RejectReason.BAD_PAYLOAD] * 20, 0.4, True),
    # What an honest relay may pass on never counts.
    ([RejectReason.REPLAY] * 20, 0.0, False),
    ([RejectReason.RATE_LIMITED] * 20, 0.0, False),
    ([RejectReason.BAD_VERSION] * 20, 0.0, False),
]


@pytest.mark.parametrize("reasons, gap, banned", BAN_TABLE)
def test_invalid_messages_ban_a_source(reasons, gap, banned):
    g = PeerGuard(LIMITS)
    newly = [g.rejected("a", r, i * gap) for i, r in enumerate(reasons)]
    now = (len(reasons) - 1) * gap
    assert g.is_banned("a", now) is banned
    assert newly.count(True) == (1 if banned else 0)  # reported once per ban
    assert g.bans == newly.count(True)


def test_a_ban_drops_everything_until_it_ends_then_the_source_starts_afresh():
    g = PeerGuard(LIMITS)
    for _ in range(4):
        g.rejected("a", RejectReason.UNDECODABLE, 10.0)
    assert admits(g, "a", 10.0, 2) == [Admission.BANNED] * 2
    assert g.dropped_banned == 2
    assert g.rejected("a", RejectReason.UNDECODABLE, 12.0) is False  # no strikes while banned
    assert g.admit("a", 14.99) is Admission.BANNED
    assert g.admit("a", 15.0) is Admission.ADMIT
    assert not g.is_banned("a", 15.0)
    assert [g.rejected("a", RejectReason.UNDECODABLE, 15.0) for _ in range(4)] == [False, False, False, True]


def test_the_table_is_bounded_and_forgets_bans_last():
    g = PeerGuard(LIMITS)
    for _ in range(4):
        g.rejected("bad", RejectReason.BAD_SIGNATURE, 0.0)
    for i in range(10):
        g.admit(f"s{i}", 0.0)
    assert len(g._sources) == LIMITS.max_sources
    assert g.is_banned("bad", 1.0)  # evicted last
    # An evicted source comes back with a full burst: eviction never punishes.
    assert admits(g, "s0", 1.0, 3) == [Admission.ADMIT] * 3
    # When all are banned, the table still holds no more than its bound.
    for i in range(10):
        for _ in range(4):
            g.rejected(f"b{i}", RejectReason.BAD_SIGNATURE, 2.0)
    assert len(g._sources) == LIMITS.max_sources


def test_strikes_are_what_no_honest_relay_passes_on():
    assert RejectReason.REPLAY not in STRIKES and RejectReason.RATE_LIMITED not in STRIKES
    assert RejectReason.BAD_SIGNATURE in STRIKES and RejectReason.UNDECODABLE in STRIKES


@pytest.mark.parametrize("field", ["rate_per_s", "burst", "strikes", "strike_window_s", "ban_s", "max_sources"])
def test_limits_must_be_positive(field):
    with pytest.raises(LocalProtocolError, match=field):
        GuardLimits(**{field: 0})
