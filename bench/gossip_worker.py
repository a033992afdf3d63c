"""One libp2p host of bench/bench_gossip.py, in its own OS process.

Talks to the parent in JSON lines. Reads its configuration on stdin; prints
``{"ready": i}`` once every other host is a topic peer and its gossip mesh has formed;
then, for each phase line the parent sends (times are absolute ``time.monotonic_ns()``,
which is system-wide on Linux), publishes from ``start`` to ``end`` (paced at ``rate``,
or as fast as ``publish`` allows when ``rate`` is null), waits until deliveries of the
phase stop coming, and prints ``{"phase": name, ...}``. Leaves when stdin closes. Only
those lines go to stdout; logging goes to stderr.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from agents.logs import configure_logging  # noqa: E402
from p2p.keys import Identity  # noqa: E402
from p2p.libp2p_net import NetworkConfig, run_libp2p_network  # noqa: E402
from p2p.net import MessageArrived  # noqa: E402
from p2p.peerbook import DialTarget  # noqa: E402

TOPIC = "conclave-bench-gossip"
HEADER = struct.Struct(">4sBHIQ")  # magic, phase, sender index, sequence, send time (ns)
MAGIC = b"GBEN"
MESH_TARGET = 4  # gossipsub's degree_low in p2p/libp2p_net.py: a heartbeat grafts up to it
STDIN_TIMEOUT = 120.0  # the parent bounds the whole run more tightly; this only stops orphans
AHEAD = 16  # flat out: most messages queued ahead of the sender task (the outbox holds 256)
QUIET_NS = 1_000_000_000  # a phase is over once no delivery of it has come for this long


@dataclass(slots=True)
class Tally:
    """Deliveries of one phase's messages from other hosts."""

    end_ns: int
    latencies_us: list[int] = field(default_factory=list)
    direct: list[int] = field(default_factory=list)  # 1 if handed over by the sender itself
    in_window: int = 0
    duplicates: int = 0
    last_ns: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set)


def say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


async def sleep_until_ns(target_ns: int) -> None:
    await trio.sleep(max(0.0, (target_ns - time.monotonic_ns()) / 1e9))


class StdinLines:
    def __init__(self) -> None:
        # A trio stream, not sys.stdin: a read must be cancellable by a timeout.
        self._stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self._buf = b""

    async def read_json(self) -> dict | None:
        """The next line, or None once the parent closes stdin."""
        with trio.fail_after(STDIN_TIMEOUT):
            while b"\n" not in self._buf:
                chunk = await self._stream.receive_some(65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)


def payload(phase: int, index: int, seq: int, size: int) -> bytes:
    head = HEADER.pack(MAGIC, phase, index, seq, time.monotonic_ns())
    return head + bytes(max(0, size - len(head)))


async def receive(net, me: int, peers: list[str], tallies: dict[int, Tally]) -> None:
    async for event in net.events:
        now = time.monotonic_ns()
        if not isinstance(event, MessageArrived) or not event.data.startswith(MAGIC):
            continue
        _, phase, sender, seq, sent = HEADER.unpack_from(event.data)
        tally = tallies.get(phase)
        if sender == me or tally is None:
            continue  # libp2p hands our own publishes back
        if (sender, seq) in tally.seen:
            tally.duplicates += 1
            continue
        tally.seen.add((sender, seq))
        tally.latencies_us.append((now - sent) // 1000)
        tally.direct.append(int(event.source == peers[sender]))
        tally.in_window += int(now <= tally.end_ns)
        tally.last_ns = now


async def publish(net, me: int, n: int, size: int, spec: dict) -> tuple[int, int, float]:
    """Messages handed to the transport by the end of the window and in all; CPU seconds
    of this process in the window."""
    phase, start, end, rate = spec["id"], spec["start"], spec["end"], spec["rate"]
    await sleep_until_ns(start)
    before, cpu = net.stats.published, time.process_time()
    with trio.move_on_after((end - time.monotonic_ns()) / 1e9):
        seq = 0
        while True:
            if rate:  # hosts staggered within each period, so that they do not all publish at once
                await sleep_until_ns(start + int((seq + me / n) / rate * 1e9))
            else:  # flat out, but with a shallow outbox: what follows the window is a short tail
                while seq - (net.stats.published - before) >= AHEAD:
                    await trio.sleep(0.005)  # no event for "published"; 5 ms polls are cheap enough
            await net.publish(payload(phase, me, seq, size))
            seq += 1
    in_window, cpu = net.stats.published - before, time.process_time() - cpu
    with trio.move_on_after(1.0):
        await net.drain()
    return in_window, net.stats.published - before, cpu


async def run_phase(net, cfg: dict, spec: dict, tally: Tally) -> dict:
    in_window, total, cpu = await publish(net, cfg["index"], len(cfg["peers"]), cfg["bytes"], spec)
    # Deliveries go on after the window (a backlog sits in socket and yamux buffers).
    while time.monotonic_ns() < spec["report_by"]:
        if time.monotonic_ns() - max(tally.last_ns, spec["end"]) > QUIET_NS:
            break
        await trio.sleep(0.1)
    return {"phase": spec["name"], "published_window": in_window, "published": total,
            "latencies_us": tally.latencies_us, "direct": tally.direct, "delivered_window": tally.in_window,
            "delivered": len(tally.latencies_us), "drain_ms": max(0, tally.last_ns - spec["end"]) // 1_000_000,
            "duplicates": tally.duplicates, "cpu_window_s": cpu}


async def main() -> int:
    stdin = StdinLines()
    cfg = await stdin.read_json()
    if cfg is None:
        return 1
    me, peers, ports = cfg["index"], cfg["peers"], cfg["ports"]
    # One connection per pair: each host dials only the hosts started before it.
    dial = tuple(DialTarget(peers[j], (f"/ip4/127.0.0.1/tcp/{ports[j]}",)) for j in range(me))
    net_cfg = NetworkConfig(Identity(bytes.fromhex(cfg["seed"])), TOPIC, (f"/ip4/127.0.0.1/tcp/{ports[me]}",), dial)
    others = set(peers) - {peers[me]}
    async with trio.open_nursery() as nursery:
        net = await nursery.start(run_libp2p_network, net_cfg)
        mesh = net._pubsub.router.mesh  # py-libp2p's, read only: no publish reaches anyone before it forms
        try:
            with trio.fail_after(cfg["ready_timeout"]):
                while not others <= net.topic_peers() or len(mesh.get(TOPIC, ())) < min(len(others), MESH_TARGET):
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            say({"error": f"host {me}: after {cfg['ready_timeout']} s, {len(net.topic_peers())} of {len(others)} "
                          f"peers on the topic, mesh of {len(mesh.get(TOPIC, ()))}"})
            nursery.cancel_scope.cancel()
            return 1
        say({"ready": me, "mesh": len(mesh.get(TOPIC, ()))})
        tallies: dict[int, Tally] = {}
        nursery.start_soon(receive, net, me, peers, tallies)
        # Until the parent closes stdin: it does so once every host has reported, as
        # leaving earlier would cut the deliveries the others are still counting.
        while (spec := await stdin.read_json()) is not None:
            tallies[spec["id"]] = Tally(spec["end"])
            report = await run_phase(net, cfg, spec, tallies[spec["id"]])
            say(report | {"mesh": len(mesh.get(TOPIC, ())), "inbound_dropped": net.stats.inbound_dropped})
        nursery.cancel_scope.cancel()
    return 0


if __name__ == "__main__":
    configure_logging("text", "warning", sys.stderr)
    sys.exit(trio.run(main))
