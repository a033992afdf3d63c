"""The signed peer record on every pubsub RPC is checked once per peer and record, not
once per RPC (p2p/libp2p_net.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import p2p.libp2p_net as net


@dataclass
class Rpc:
    senderRecord: bytes = b""  # noqa: N815 -- the protobuf field's name

    def HasField(self, name: str) -> bool:  # noqa: N802
        return name == "senderRecord" and bool(self.senderRecord)


class Host:  # a weak reference can be made to it, as to a libp2p host
    pass


@pytest.fixture
def checks(monkeypatch) -> list[tuple[bytes, str]]:
    calls: list[tuple[bytes, str]] = []

    def check(msg, host, peer_id) -> bool:
        calls.append((msg.senderRecord, peer_id))
        return msg.senderRecord != b"forged"

    monkeypatch.setattr(net, "_consume_signed_record", check)
    return calls


def test_a_record_is_checked_once_per_peer_until_it_changes(checks, monkeypatch) -> None:
    host, now = Host(), [100.0]
    monkeypatch.setattr(net.time, "monotonic", lambda: now[0])
    once = net._consume_signed_record_once
    assert once(Rpc(), host, "p1") and checks == []  # no record: nothing to check
    assert all(once(Rpc(b"r1"), host, "p1") for _ in range(5))
    assert checks == [(b"r1", "p1")]
    assert once(Rpc(b"r1"), host, "p2")  # the same bytes from another peer: checked for it
    assert once(Rpc(b"r2"), host, "p1")  # a new record from p1: checked
    assert once(Rpc(b"r1"), Host(), "p1")  # another host has its own peerstore: checked
    assert len(checks) == 4
    now[0] += net.RECORD_RECHECK_S
    assert once(Rpc(b"r2"), host, "p1") and len(checks) == 5  # old enough: checked again


def test_a_record_that_fails_its_check_is_refused_every_time(checks) -> None:
    host = Host()
    assert not net._consume_signed_record_once(Rpc(b"forged"), host, "p1")
    assert not net._consume_signed_record_once(Rpc(b"forged"), host, "p1")
    assert len(checks) == 2
