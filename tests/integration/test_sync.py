"""Catch-up over /conclave/sync/1.0.0 between real libp2p hosts in-process on 127.0.0.1."""

from __future__ import annotations

import struct
import time
from contextlib import asynccontextmanager
from functools import partial

import msgpack
import pytest
import trio
from libp2p.peer.id import ID

from p2p.errors import LocalProtocolError
from p2p.keys import Identity
from p2p.libp2p_net import NetworkConfig, run_libp2p_network
from p2p.peerbook import DialTarget
from p2p.sync import (
    MAX_BATCH,
    MAX_RESPONSE_BYTES,
    SYNC_PROTOCOL,
    SyncError,
    SyncFailure,
    fetch_decisions,
    fetch_from_any,
    serve_sync,
)

pytestmark = pytest.mark.integration

SWARM = b"S" * 32
WAIT = 15.0


def fake_chain(n: int, size: int = 40) -> list[tuple[int, bytes, bytes]]:
    return [(h, bytes([h % 251]) * size + b"block%d" % h, b"cert%d" % h) for h in range(1, n + 1)]


def provider_for(chain):
    async def provider(first: int, last: int):
        return [d for d in chain if first <= d[0] <= last]

    return provider


@asynccontextmanager
async def hosts(n: int):
    """``n`` real libp2p hosts, host 0 connected to each of the others."""
    async with trio.open_nursery() as nursery:
        nets = []
        with trio.fail_after(WAIT):
            for _ in range(n):
                cfg = NetworkConfig(Identity.generate(), "sync-test", ("/ip4/127.0.0.1/tcp/0",))
                nets.append(await nursery.start(run_libp2p_network, cfg))
            for other in nets[1:]:
                await nets[0].dial(DialTarget(other.local_peer, other.listen_addrs))
            while not all(o.local_peer in nets[0].connected_peers() for o in nets[1:]):
                await trio.sleep(0.01)
        try:
            yield nets
        finally:
            nursery.cancel_scope.cancel()


async def raw_exchange(net, peer: str, data: bytes, *, close_write: bool = False) -> object | None:
    """Write ``data`` on a fresh sync stream; the decoded answer, or None if the stream
    ended without one."""
    stream = await net._host.new_stream(ID.from_base58(peer), [SYNC_PROTOCOL])
    try:
        await stream.write(data)
        if close_write:
            await stream.close_write()
        buf = b""
        try:
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                chunk = await stream.read(65536)
                if not chunk:
                    break
                buf += chunk
        except Exception:  # EOF or reset: no (complete) answer
            pass
        if len(buf) < 4:
            return None
        return msgpack.unpackb(buf[4:], raw=False)
    finally:
        await stream.close()


def frame(doc: object) -> bytes:
    body = msgpack.packb(doc, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def test_fetch_a_range_beyond_the_tip_and_time_a_full_batch() -> None:
    chain = fake_chain(100)
    async with hosts(2) as (client, server):
        async with trio.open_nursery() as nursery:
            stats = await nursery.start(serve_sync, server, SWARM, provider_for(chain))
            with trio.fail_after(WAIT):
                got = await fetch_decisions(client, server.local_peer, SWARM, 3, 12, timeout=5)
                assert got == chain[2:12]
                # Past the tip: only what exists, still consecutive from `first`.
                assert await fetch_decisions(client, server.local_peer, SWARM, 90, 120, timeout=5) == chain[89:]
                assert await fetch_decisions(client, server.local_peer, SWARM, 101, 110, timeout=5) == []
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    got = await fetch_decisions(client, server.local_peer, SWARM, 1, MAX_BATCH, timeout=5)
                    times.append(time.perf_counter() - t0)
                    assert got == chain[:MAX_BATCH]
                print(f"\n64-decision fetch round trips (ms): {[round(t * 1000, 1) for t in times]}")
            assert stats.served == 8 and stats.malformed == 0 and stats.failed == 0
            nursery.cancel_scope.cancel()


async def test_batch_limit_swarm_and_range_checks() -> None:
    chain = fake_chain(200)

    async def greedy(first: int, last: int):  # ignores the range it was asked for
        return chain

    async with hosts(2) as (client, server):
        async with trio.open_nursery() as nursery:
            stats = await nursery.start(serve_sync, server, SWARM, greedy)
            with trio.fail_after(WAIT):
                with pytest.raises(LocalProtocolError):
                    await fetch_decisions(client, server.local_peer, SWARM, 1, MAX_BATCH + 1)
                with pytest.raises(LocalProtocolError):
                    await fetch_decisions(client, server.local_peer, SWARM, 0, 5)
                # The server enforces the limit too, and clamps a provider's excess.
                peer = server.local_peer
                assert await raw_exchange(client, peer, frame({"swarm": SWARM, "from": 1, "to": 65})) == {
                    "error": "bad_range"
                }
                assert await raw_exchange(client, peer, frame({"swarm": SWARM, "from": 5, "to": 4})) == {
                    "error": "bad_range"
                }
                answer = await raw_exchange(client, peer, frame({"swarm": SWARM, "from": 1, "to": 64}))
                assert [d[0] for d in answer["decisions"]] == list(range(1, 65))
                with pytest.raises(SyncError) as info:
                    await fetch_decisions(client, peer, b"other swarm", 1, 5, timeout=5)
                assert info.value.kind is SyncFailure.REMOTE_ERROR and "wrong_swarm" in str(info.value)
            assert stats.malformed == 3 and stats.served == 1
            nursery.cancel_scope.cancel()


async def test_malformed_requests_are_refused_and_the_server_keeps_serving() -> None:
    chain = fake_chain(10)
    async with hosts(2) as (client, server):
        async with trio.open_nursery() as nursery:
            stats = await nursery.start(partial(serve_sync, read_timeout=0.5), server, SWARM, provider_for(chain))
            peer = server.local_peer
            with trio.fail_after(WAIT):
                # "hell" read as a length is far above 1 KiB: refused before the body.
                assert await raw_exchange(client, peer, b"hello, this is not a frame") == {"error": "too_large"}
                assert await raw_exchange(client, peer, struct.pack(">I", 2000) + b"x" * 10) == {"error": "too_large"}
                assert await raw_exchange(client, peer, struct.pack(">I", 3) + b"\xc1\xc1\xc1") == {
                    "error": "undecodable"
                }
                assert await raw_exchange(client, peer, frame([1, 2, 3])) == {"error": "bad_request"}
                assert await raw_exchange(client, peer, frame({"swarm": SWARM, "from": "1", "to": 2})) == {
                    "error": "bad_range"
                }
                # A truncated body then end of stream: no answer, counted as failed.
                assert await raw_exchange(client, peer, struct.pack(">I", 50) + b"abc", close_write=True) is None
                # Silence: the server gives up after its read timeout and closes the stream.
                t0 = trio.current_time()
                assert await raw_exchange(client, peer, b"") is None
                assert 0.4 <= trio.current_time() - t0 < 5
                assert stats.malformed == 5 and stats.failed == 2 and stats.served == 0
                # And the next good request is served.
                assert await fetch_decisions(client, peer, SWARM, 1, 10, timeout=5) == chain
                assert stats.served == 1
            nursery.cancel_scope.cancel()


async def test_large_responses_are_trimmed_to_the_size_limit() -> None:
    chain = fake_chain(MAX_BATCH, size=100_000)  # 6.4 MB in all, above the 4 MiB limit
    async with hosts(2) as (client, server):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_sync, server, SWARM, provider_for(chain))
            with trio.fail_after(WAIT):
                got = await fetch_decisions(client, server.local_peer, SWARM, 1, MAX_BATCH, timeout=10)
            assert 30 <= len(got) < MAX_BATCH
            assert got == chain[: len(got)]
            assert sum(len(b) + len(c) for _, b, c in got) <= MAX_RESPONSE_BYTES
            nursery.cancel_scope.cancel()


async def test_client_rejects_bad_responses() -> None:
    async with hosts(2) as (client, server):
        replies = []

        async def rogue(stream):
            try:
                await stream.read(4096)
                await stream.write(replies.pop(0))
            finally:
                await stream.close()

        server._host.set_stream_handler(SYNC_PROTOCOL, rogue)
        peer = server.local_peer
        cases = [
            (struct.pack(">I", MAX_RESPONSE_BYTES + 1), SyncFailure.TOO_LARGE),
            (frame({"decisions": [[2, b"b", b"c"]]}), SyncFailure.MALFORMED),  # skips height 1
            (frame({"decisions": [[1, "text", b"c"]]}), SyncFailure.MALFORMED),
            (frame({"decisions": [[h, b"b", b"c"] for h in (1, 2, 3)]}), SyncFailure.MALFORMED),  # asked 1..2
            (struct.pack(">I", 2) + b"\xc1\xc1", SyncFailure.MALFORMED),
            (struct.pack(">I", 100) + b"short", SyncFailure.CLOSED),
        ]
        with trio.fail_after(WAIT):
            for reply, kind in cases:
                replies.append(reply)
                with pytest.raises(SyncError) as info:
                    await fetch_decisions(client, peer, SWARM, 1, 2, timeout=5)
                assert info.value.kind is kind, (reply[:20], info.value)
                assert info.value.peer == peer


async def test_fetch_from_any_skips_peers_that_do_not_answer() -> None:
    chain = fake_chain(20)

    async def stuck(first: int, last: int):
        await trio.sleep_forever()

    async def behind(first: int, last: int):
        return []

    async with hosts(5) as (client, mute, slow, empty, good):
        async with trio.open_nursery() as nursery:
            # `mute` does not speak the protocol at all.
            await nursery.start(serve_sync, slow, SWARM, stuck)
            await nursery.start(serve_sync, empty, SWARM, behind)
            await nursery.start(serve_sync, good, SWARM, provider_for(chain))
            with trio.fail_after(WAIT):
                with pytest.raises(SyncError) as info:
                    await fetch_decisions(client, mute.local_peer, SWARM, 1, 5, timeout=2)
                assert info.value.kind is SyncFailure.UNREACHABLE
                t0 = trio.current_time()
                order = [mute.local_peer, slow.local_peer, empty.local_peer, good.local_peer]
                peer, got = await fetch_from_any(client, order, SWARM, 5, 9, timeout=0.5)
                assert peer == good.local_peer and got == chain[4:9]
                assert trio.current_time() - t0 < 5
                # Nobody has it: the first that answered (with nothing) is named.
                peer, got = await fetch_from_any(client, order, SWARM, 50, 60, timeout=0.5)
                assert (peer, got) == (empty.local_peer, [])
                # Nobody answers at all: the last failure is raised.
                with pytest.raises(SyncError) as info:
                    await fetch_from_any(client, [mute.local_peer, slow.local_peer], SWARM, 1, 2, timeout=0.5)
                assert info.value.kind is SyncFailure.TIMEOUT
            nursery.cancel_scope.cancel()
