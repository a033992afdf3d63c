"""Status over /conclave/status/1.0.0 between real libp2p hosts in-process on 127.0.0.1,
and ``conclave status``'s query across a swarm file with answering, silent, old and
unreachable validators. Every wait is bounded by ``trio.fail_after``."""

from __future__ import annotations

import struct
from contextlib import asynccontextmanager
from functools import partial

import msgpack
import pytest
import trio
from libp2p.peer.id import ID

from agents.status_cli import format_status_table, query_swarm_status
from p2p.errors import LocalProtocolError
from p2p.keys import Identity
from p2p.libp2p_net import NetworkConfig, run_libp2p_network
from p2p.peerbook import DialTarget
from p2p.status import (
    MAX_RESPONSE_BYTES,
    MAX_STATUS_BYTES,
    STATUS_PROTOCOL,
    StatusError,
    StatusFailure,
    fetch_status,
    serve_status,
)
from p2p.swarmfile import SwarmConfig, Validator, default_topic

pytestmark = pytest.mark.integration

SWARM = b"S" * 32
WAIT = 15.0


@asynccontextmanager
async def hosts(n: int, *, dial: bool = True):
    """``n`` real libp2p hosts (with their identities); host 0 connected to each of the
    others when ``dial``."""
    async with trio.open_nursery() as nursery:
        nets, ids = [], []
        with trio.fail_after(WAIT):
            for _ in range(n):
                ident = Identity.generate()
                cfg = NetworkConfig(ident, "status-test", ("/ip4/127.0.0.1/tcp/0",))
                nets.append(await nursery.start(run_libp2p_network, cfg))
                ids.append(ident)
            if dial:
                for other in nets[1:]:
                    await nets[0].dial(DialTarget(other.local_peer, other.listen_addrs))
                wanted = {o.local_peer for o in nets[1:]}
                while not wanted <= nets[0].connected_peers():
                    await nets[0].events.receive()  # each connection is announced (PeerConnected)
        try:
            yield nets, ids
        finally:
            nursery.cancel_scope.cancel()


def frame(doc: object) -> bytes:
    body = msgpack.packb(doc, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def raw_exchange(net, peer: str, data: bytes) -> object | None:
    """Write ``data`` on a fresh status stream; the decoded answer, or None."""
    stream = await net.host.new_stream(ID.from_base58(peer), [STATUS_PROTOCOL])
    try:
        await stream.write(data)
        buf = b""
        try:
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                chunk = await stream.read(65536)
                if not chunk:
                    break
                buf += chunk
        except Exception:  # EOF or reset: no (complete) answer
            pass
        return msgpack.unpackb(buf[4:], raw=False) if len(buf) >= 4 else None
    finally:
        await stream.close()


def status_of(name: str, height: int):
    calls = []

    def provider() -> dict:
        calls.append(1)
        return {"name": name, "role": "validator", "height": height + len(calls), "round": 0,
                "step": "propose", "peers": 3, "pending": ["m1", "m2"], "id": b"\x01\x02"}

    return provider


async def test_a_served_status_is_fetched_and_a_wrong_swarm_refused() -> None:
    async with hosts(2) as ((client, server), _):
        async with trio.open_nursery() as nursery:
            stats = await nursery.start(serve_status, server, SWARM, status_of("v2", 10))
            with trio.fail_after(WAIT):
                got = await fetch_status(client, server.local_peer, SWARM, timeout=5)
                assert got == {"name": "v2", "role": "validator", "height": 11, "round": 0, "step": "propose",
                               "peers": 3, "pending": ["m1", "m2"], "id": b"\x01\x02"}
                # The provider is asked afresh each time.
                assert (await fetch_status(client, server.local_peer, SWARM))["height"] == 12
                with pytest.raises(StatusError) as info:
                    await fetch_status(client, server.local_peer, b"another swarm", timeout=5)
                assert info.value.kind is StatusFailure.REMOTE_ERROR and "wrong_swarm" in str(info.value)
                assert info.value.peer == server.local_peer
            assert (stats.served, stats.refused, stats.failed) == (2, 1, 0)
            with pytest.raises(LocalProtocolError):
                await fetch_status(client, server.local_peer, b"", timeout=5)
            with pytest.raises(LocalProtocolError):
                await fetch_status(client, "not-a-peer-id", SWARM, timeout=5)
            with pytest.raises(LocalProtocolError):
                await fetch_status(client, server.local_peer, SWARM, timeout=0)
            nursery.cancel_scope.cancel()


async def test_bad_requests_are_refused_and_the_server_keeps_serving() -> None:
    async with hosts(2) as ((client, server), _):
        async with trio.open_nursery() as nursery:
            stats = await nursery.start(partial(serve_status, read_timeout=0.5), server, SWARM, status_of("v", 0))
            peer = server.local_peer
            with trio.fail_after(WAIT):
                assert await raw_exchange(client, peer, b"GET / HTTP/1.1\r\n\r\n") == {"error": "too_large"}
                assert await raw_exchange(client, peer, struct.pack(">I", 3) + b"\xc1\xc1\xc1") == {
                    "error": "undecodable"
                }
                assert await raw_exchange(client, peer, frame({"swarm": "S" * 32})) == {"error": "bad_request"}
                assert await raw_exchange(client, peer, frame({"swarm": SWARM, "more": 1})) == {"error": "bad_request"}
                # Silence: the server gives up after its read timeout and closes the stream.
                t0 = trio.current_time()
                assert await raw_exchange(client, peer, b"") is None
                assert 0.4 <= trio.current_time() - t0 < 5
                assert (await fetch_status(client, peer, SWARM, timeout=5))["name"] == "v"
            assert (stats.refused, stats.failed, stats.served) == (4, 1, 1)
            nursery.cancel_scope.cancel()


async def test_a_faulty_provider_gives_unavailable_not_a_crash() -> None:
    answers = [{"big": "x" * (MAX_STATUS_BYTES + 1)}, ["not", "a", "dict"], {1: "int key"}, {"o": object()}]

    def provider():
        answer = answers.pop(0)
        if answer == "raise":
            raise RuntimeError("provider bug")
        return answer

    answers.append("raise")
    async with hosts(2) as ((client, server), _):
        async with trio.open_nursery() as nursery:
            stats = await nursery.start(serve_status, server, SWARM, provider)
            with trio.fail_after(WAIT):
                for _ in range(5):
                    with pytest.raises(StatusError) as info:
                        await fetch_status(client, server.local_peer, SWARM, timeout=5)
                    assert info.value.kind is StatusFailure.REMOTE_ERROR and "unavailable" in str(info.value)
            assert stats.failed == 5 and stats.served == 0
            nursery.cancel_scope.cancel()


async def test_peers_without_the_handler_or_that_answer_badly_give_clear_errors() -> None:
    async with hosts(2) as ((client, server), _):
        peer = server.local_peer
        with trio.fail_after(WAIT):
            # No handler: connected, but the protocol is refused.
            with pytest.raises(StatusError) as info:
                await fetch_status(client, peer, SWARM, timeout=5)
            assert info.value.kind is StatusFailure.UNSUPPORTED
            assert str(STATUS_PROTOCOL) in str(info.value) and peer in str(info.value)
            # Not connected at all (and no address known).
            with pytest.raises(StatusError) as info:
                await fetch_status(client, Identity.generate().peer_id, SWARM, timeout=5)
            assert info.value.kind is StatusFailure.UNREACHABLE

        replies: list[bytes | None] = []

        async def rogue(stream):
            try:
                await stream.read(4096)
                reply = replies.pop(0)
                if reply is None:
                    await trio.sleep_forever()
                await stream.write(reply)
            finally:
                await stream.close()

        server.host.set_stream_handler(STATUS_PROTOCOL, rogue)
        cases = [
            (struct.pack(">I", MAX_RESPONSE_BYTES + 1), StatusFailure.TOO_LARGE),
            (struct.pack(">I", 2) + b"\xc1\xc1", StatusFailure.MALFORMED),
            (frame({"status": [1, 2]}), StatusFailure.MALFORMED),
            (frame({"status": {}, "extra": 1}), StatusFailure.MALFORMED),
            (frame({"error": 7}), StatusFailure.MALFORMED),
            (frame({"status": {b"bytes key": 1}}), StatusFailure.MALFORMED),
            (struct.pack(">I", 100) + b"short", StatusFailure.CLOSED),
            (None, StatusFailure.TIMEOUT),
        ]
        with trio.fail_after(WAIT):
            for reply, kind in cases:
                replies.append(reply)
                with pytest.raises(StatusError) as info:
                    await fetch_status(client, peer, SWARM, timeout=0.5)
                assert info.value.kind is kind, (reply and reply[:20], info.value)
                assert info.value.peer == peer


def _without_peer_id(addr: str) -> str:
    return addr.split("/p2p/")[0]  # the swarm file's form


async def test_query_swarm_status_over_answering_old_and_unreachable_validators() -> None:
    # A bound TCP port that nobody listens on: dialling it is refused at once.
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    ghost, homeless = Identity.generate(), Identity.generate()
    try:
        async with hosts(3, dial=False) as ((v1, v2, old), (i1, i2, i_old)):
            members = (
                Validator("v1", i1.peer_id, i1.public_key, 1, tuple(map(_without_peer_id, v1.listen_addrs))),
                Validator("ghost", ghost.peer_id, ghost.public_key, 1, (f"/ip4/127.0.0.1/tcp/{closed_port}",)),
                Validator("v2", i2.peer_id, i2.public_key, 1, tuple(map(_without_peer_id, v2.listen_addrs))),
                Validator("old", i_old.peer_id, i_old.public_key, 1, tuple(map(_without_peer_id, old.listen_addrs))),
                Validator("homeless", homeless.peer_id, homeless.public_key, 1, ()),
            )
            swarm = SwarmConfig("statustest", default_topic("statustest"), 1, members)
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_status, v1, swarm.swarm_id, status_of("v1", 4))
                await nursery.start(serve_status, v2, swarm.swarm_id, status_of("v2", 6))
                with trio.fail_after(WAIT):
                    t0 = trio.current_time()
                    rows = await query_swarm_status(swarm, timeout=3.0)
                    elapsed = trio.current_time() - t0
                nursery.cancel_scope.cancel()
    finally:
        closed.close()

    assert [r["name"] for r in rows] == ["v1", "ghost", "v2", "old", "homeless"]
    assert [r["reachable"] for r in rows] == [True, False, True, False, False]
    assert rows[0]["status"]["height"] == 5 and rows[2]["status"]["height"] == 7
    assert rows[0]["peer_id"] == i1.peer_id and rows[0]["rtt_ms"] >= 0
    assert "not connected within 3s" in rows[1]["error"]
    assert rows[3]["error"].startswith("unsupported:")
    assert rows[4]["error"] == "no address in the swarm file"
    assert 2.9 <= elapsed < 3.0 + 3.0  # the unreachable one waits out the timeout, no more

    table = format_status_table(rows).splitlines()
    print("\n" + "\n".join(table))
    assert table[0].split() == ["name", "height", "round", "step", "peers", "pending"]
    assert table[1].split() == ["v1", "5", "0", "propose", "3", "2"]
    assert table[2].startswith("ghost") and "unreachable: not connected within 3s" in table[2]
    assert table[4].startswith("old") and "unreachable: unsupported" in table[4]


def test_the_table_shows_missing_keys_and_never_prints_control_characters() -> None:
    rows = [
        {"name": "v1", "reachable": True, "status": {"height": 3, "step": "\x1b[2Jprevote\n", "peers": 1.5}},
        {"name": "v2", "reachable": True, "status": {"height": True, "round": None, "step": "x" * 100}},
        {"name": "v3", "reachable": False, "error": "refused\r\n\x07" + "e" * 500},
    ]
    out = format_status_table(rows)
    assert all(c.isprintable() for line in out.splitlines() for c in line)
    lines = out.splitlines()
    assert lines[1].split() == ["v1", "3", "-", "?[2Jprevote?", "1.5", "-"]
    assert lines[2].split()[:4] == ["v2", "yes", "-", "x" * 23 + "…"]
    assert lines[3].startswith("v3") and len(lines[3]) < 160 and lines[3].endswith("…")
