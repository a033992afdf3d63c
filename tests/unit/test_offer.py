"""Delivery into a network's events channel (p2p/net.py ``offer``): never blocks, drops
bulk (motions, ballots) before it drops anything else."""

from __future__ import annotations

from types import SimpleNamespace

import trio

import p2p.net as net
from p2p.envelope import MessageType
from p2p.net import MessageArrived, NetworkStats, PeerConnected, offer


def arrived(type: MessageType) -> MessageArrived:
    return MessageArrived(b"x", "peer", SimpleNamespace(type=type))


def test_bulk_leaves_the_reserve_to_consensus_messages(monkeypatch) -> None:
    monkeypatch.setattr(net, "CONSENSUS_RESERVE", 3)
    send, recv = trio.open_memory_channel(8)
    stats = NetworkStats()
    for t in (MessageType.MOTION, MessageType.BALLOT_COMMIT, MessageType.BALLOT_REVEAL) * 3:
        offer(send, arrived(t), stats)
    assert send.statistics().current_buffer_used == 5 and stats.inbound_dropped == 4
    offer(send, arrived(MessageType.VOTE), stats)
    offer(send, arrived(MessageType.PROPOSAL), stats)
    offer(send, PeerConnected("peer"), stats)  # not a message: never bulk
    assert send.statistics().current_buffer_used == 8 and stats.inbound_dropped == 4
    offer(send, arrived(MessageType.VOTE), stats)  # full: even a vote is dropped, and counted
    assert stats.inbound_dropped == 5
    kinds = [getattr(recv.receive_nowait().verdict, "type", None) if i < 7 else None for i in range(7)]
    assert kinds[5:] == [MessageType.VOTE, MessageType.PROPOSAL]


def test_an_ungated_message_is_not_taken_for_bulk(monkeypatch) -> None:
    monkeypatch.setattr(net, "CONSENSUS_RESERVE", 1)
    send, _ = trio.open_memory_channel(1)
    stats = NetworkStats()
    offer(send, MessageArrived(b"x", "peer"), stats)
    assert send.statistics().current_buffer_used == 1 and stats.inbound_dropped == 0
