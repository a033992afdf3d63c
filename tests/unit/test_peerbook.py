"""The peer book's dial schedule: p2p/peerbook.py. Pure: time and randomness are passed in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.peerbook import DialTarget, PeerBook

A = DialTarget("peer-a", ("/ip4/10.0.0.1/tcp/9000",))
B = DialTarget("peer-b", ("/ip4/10.0.0.2/tcp/9000",))
NOBODY: frozenset[str] = frozenset()


def book(initial: float = 0.5, maximum: float = 30.0, seed: int = 1) -> PeerBook:
    return PeerBook(initial, maximum, random.Random(seed))


def test_a_new_target_is_due_at_once() -> None:
    pb = book()
    pb.add(A)
    pb.add(B)
    assert pb.due(0.0, NOBODY) == [A, B]
    assert pb.failures("peer-a") == 0


def test_connected_peers_are_never_due() -> None:
    pb = book()
    pb.add(A)
    pb.add(B)
    assert pb.due(0.0, frozenset({"peer-a"})) == [B]
    assert pb.due(1e9, frozenset({"peer-a", "peer-b"})) == []
    # even one whose backoff has long elapsed
    pb.dial_failed("peer-a", 0.0)
    assert pb.due(1e9, frozenset({"peer-a"})) == [B]


def test_a_failed_target_is_due_again_exactly_when_its_wait_has_elapsed() -> None:
    pb = book()
    pb.add(A)
    pb.add(B)
    wait = pb.dial_failed("peer-a", 100.0)
    assert 0.4 <= wait <= 0.6
    assert pb.due(100.0, NOBODY) == [B]
    assert pb.due(100.0 + wait * 0.999, NOBODY) == [B]
    assert pb.due(100.0 + wait, NOBODY) == [A, B]
    assert pb.failures("peer-a") == 1
    assert pb.failures("peer-b") == 0


def test_backoff_doubles_from_initial_up_to_max_with_twenty_percent_jitter() -> None:
    initial, maximum = 0.5, 30.0
    pb = PeerBook(initial, maximum, random.Random(42))
    twin = random.Random(42)  # the same stream: predicts every jitter factor
    pb.add(A)
    now = 0.0
    nominal = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for failures, delay in enumerate(nominal, start=1):
        wait = pb.dial_failed("peer-a", now)
        assert 0.8 * delay <= wait <= 1.2 * delay
        assert wait == pytest.approx(delay * twin.uniform(0.8, 1.2))
        assert pb.failures("peer-a") == failures
        assert pb.due(now + wait * 0.999, NOBODY) == []
        now += wait
        assert pb.due(now, NOBODY) == [A]


def test_jitter_spreads_peers_that_fail_together() -> None:
    pb = book(seed=7)
    peers = [DialTarget(f"p{i}", (f"/ip4/10.0.0.{i}/tcp/1",)) for i in range(20)]
    for p in peers:
        pb.add(p)
    waits = {pb.dial_failed(p.peer_id, 0.0) for p in peers}
    assert len(waits) == 20  # no two in lockstep
    assert all(0.4 <= w <= 0.6 for w in waits)


def test_dial_succeeded_resets_the_backoff() -> None:
    pb = book()
    pb.add(A)
    for _ in range(5):
        pb.dial_failed("peer-a", 0.0)
    assert pb.failures("peer-a") == 5
    assert pb.due(0.0, NOBODY) == []
    pb.dial_succeeded("peer-a")
    assert pb.failures("peer-a") == 0
    assert pb.due(0.0, NOBODY) == [A]  # due again at once (once the connection drops)
    wait = pb.dial_failed("peer-a", 0.0)
    assert 0.4 <= wait <= 0.6  # starts again from the initial delay, not from 8 s


def test_add_merges_addresses_without_duplicates_keeping_order() -> None:
    pb = book()
    pb.add(DialTarget("peer-a", ("/ip4/1.1.1.1/tcp/1", "/ip4/2.2.2.2/tcp/2")))
    pb.add(DialTarget("peer-a", ("/ip4/2.2.2.2/tcp/2", "/ip4/3.3.3.3/tcp/3", "/ip4/1.1.1.1/tcp/1")))
    pb.add(DialTarget("peer-a", ("/ip4/3.3.3.3/tcp/3",)))
    assert pb.targets() == [
        DialTarget("peer-a", ("/ip4/1.1.1.1/tcp/1", "/ip4/2.2.2.2/tcp/2", "/ip4/3.3.3.3/tcp/3"))
    ]


def test_add_keeps_the_backoff_of_a_known_target() -> None:
    pb = book()
    pb.add(A)
    wait = pb.dial_failed("peer-a", 0.0)
    pb.add(DialTarget("peer-a", ("/ip4/9.9.9.9/tcp/9",)))  # a new address, learned later
    assert pb.failures("peer-a") == 1
    assert pb.due(wait * 0.999, NOBODY) == []
    assert pb.due(wait, NOBODY) == [DialTarget("peer-a", A.addrs + ("/ip4/9.9.9.9/tcp/9",))]


def test_add_ignores_targets_without_addresses() -> None:
    pb = book()
    pb.add(DialTarget("peer-x", ()))
    assert pb.targets() == []
    assert pb.due(0.0, NOBODY) == []
    with pytest.raises(KeyError):
        pb.failures("peer-x")
    # nor does an empty announcement disturb a known target
    pb.add(A)
    pb.add(DialTarget("peer-a", ()))
    assert pb.targets() == [A]


@given(
    initial=st.floats(0.01, 60.0),
    ratio=st.floats(1.0, 1000.0),
    seed=st.integers(0, 2**32),
    failures=st.integers(1, 40),
)
def test_every_wait_is_the_capped_doubling_within_twenty_percent(
    initial: float, ratio: float, seed: int, failures: int
) -> None:
    maximum = initial * ratio
    pb = PeerBook(initial, maximum, random.Random(seed))
    pb.add(A)
    delay = initial
    for _ in range(failures):
        wait = pb.dial_failed("peer-a", 0.0)
        assert 0.8 * delay * (1 - 1e-9) <= wait <= 1.2 * delay * (1 + 1e-9)
        assert wait <= 1.2 * maximum * (1 + 1e-9)
        delay = min(maximum, delay * 2)
