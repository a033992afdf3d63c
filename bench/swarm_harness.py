"""A local swarm of `conclave peer` processes and one motion client, for the benchmarks.

Every peer is a separate OS process on 127.0.0.1, started through the CLI exactly as a
user starts one, logging JSON; the benchmarks read their timings from those logs (all
processes share the machine's clock). The client is a libp2p host in the benchmark's
own process that publishes signed motions, as `conclave propose` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.peer import Outbox  # noqa: E402
from agents.procs import PeerProcess, free_tcp_ports, joined  # noqa: E402
from agents.run import FIXED_MODEL, dial_targets, wait_until  # noqa: E402
from agents.swarm_init import SWARM_FILE, init_swarm  # noqa: E402
from p2p.envelope import MessageType  # noqa: E402
from p2p.keys import Identity  # noqa: E402
from p2p.libp2p_net import NetworkConfig, run_libp2p_network  # noqa: E402
from p2p.messages import Motion  # noqa: E402
from p2p.swarmfile import ChainConfig, Params, load_swarm_file, render_swarm_file  # noqa: E402

# A benchmark stopped with SIGTERM (``timeout``, a CI runner) must still stop its peers:
# Python's default action exits without running ``running_swarm``'s cleanup, and 16 peer
# processes went on using the machine. As SystemExit, the cleanup runs.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

START_TIMEOUT = 120.0  # 16 processes importing libp2p on 2 cores
QUIET_TIMEOUT = 180.0  # real-model peers evaluate their persona first: on 2 cores, over 60 s in one run


def bench_params(**overrides) -> Params:
    """Swarm parameters for benchmarks: one client may submit as fast as it likes, and
    a block may be as large as a message can be (1 MB: up to 256 resolutions)."""
    base = dict(client_rate_per_s=10_000.0, client_burst=100_000, max_pending_motions=100_000,
                max_pending_per_sender=100_000, max_resolutions_per_block=256, max_message_bytes=1_000_000)
    base.update(overrides)
    return Params(**base)


def event_time(event: dict) -> float:
    """Seconds since the epoch of a logged event."""
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def write_report(out: Path, benchmark: str, headline: str, results: list[dict], **extra) -> None:
    """Write a benchmark's JSON (floats rounded to 4 places) and print its headline,
    the last line every benchmark prints."""
    def rounded(value):
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    report = {"benchmark": benchmark, "python": platform.python_version(), "machine": platform.machine(),
              **extra, "headline": headline, "results": [rounded(r) for r in results]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"headline: {headline}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class BenchSwarm:
    """n validators with the given model, in ``directory``, with anchoring off."""

    def __init__(self, directory: Path, n: int, params: Params, model: str = FIXED_MODEL,
                 log_level: str = "info", extra: tuple[str, ...] = ()) -> None:
        cfg = init_swarm(directory, n, "bench", free_tcp_ports(n), params=params)
        cfg = dataclasses.replace(cfg, chain=ChainConfig(kind="none"))
        (directory / SWARM_FILE).write_text(render_swarm_file(cfg))
        self.dir, self.n, self.model, self.log_level, self.extra = directory, n, model, log_level, extra
        self.cfg = load_swarm_file(directory / SWARM_FILE)
        self.procs: list[PeerProcess] = []

    def start(self) -> None:
        for v in self.cfg.validators:
            args = ["--swarm", str(self.dir / SWARM_FILE), "--key", str(self.dir / f"{v.name}.key"),
                    "--data", str(self.dir / v.name), "--threads", "1", "--model", self.model,
                    "--log-level", self.log_level, *self.extra]
            self.procs.append(PeerProcess(v.name, args))
        names = {v.name for v in self.cfg.validators}
        for p in self.procs:
            p.wait_for(lambda evs, me=p.name: joined(evs, names - {me}), START_TIMEOUT, "joined the swarm")
        self.wait_quiet()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by all the peer processes."""
        total = 0
        for p in self.procs:
            fields = Path(f"/proc/{p.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def wait_quiet(self, cores: float = 0.15, window: float = 1.0, timeout: float = QUIET_TIMEOUT) -> None:
        """Until the swarm uses less than ``cores`` over ``window`` seconds: after
        joining, every peer probes every validator for decisions and gossip meshes form,
        which on 2 cores takes seconds at n=16; a measurement must not start inside it."""
        deadline = time.monotonic() + timeout
        while True:
            before, start = self.cpu_seconds(), time.monotonic()
            time.sleep(window)
            used = (self.cpu_seconds() - before) / (time.monotonic() - start)
            if used < cores:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the swarm still uses {used:.2f} cores after {timeout}s")

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def agreements(self, motion_ids: set[str]) -> dict[str, dict[str, dict]]:
        """motion id -> peer name -> its ``agreement`` event."""
        out: dict[str, dict[str, dict]] = {m: {} for m in motion_ids}
        for p in self.procs:
            for e in p.named("agreement"):
                if e["motion_id"] in out:
                    out[e["motion_id"]][p.name] = e
        return out

    def wait_decided(self, motion_ids: set[str], timeout: float) -> None:
        for p in self.procs:
            p.wait_for(lambda evs: motion_ids <= {e.get("motion_id") for e in evs if e["event"] == "agreement"},
                       timeout, f"{len(motion_ids)} motions agreed")


@contextmanager
def running_swarm(directory: Path, n: int, params: Params, **kw) -> Iterator[BenchSwarm]:
    swarm = BenchSwarm(directory, n, params, **kw)
    try:
        swarm.start()
        yield swarm
    finally:
        for p in swarm.procs:  # SIGTERM first: each logs its counters on the way out
            p.proc.terminate()
        for p in swarm.procs:
            p.stop(timeout=10)


class MotionClient:
    """One client host that stays connected and publishes motions on demand."""

    def __init__(self, swarm: BenchSwarm) -> None:
        self.swarm = swarm
        self.identity = Identity.generate()
        self.net = None
        self.outbox: Outbox | None = None
        self._counter = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.swarm.cfg
        net_cfg = NetworkConfig(self.identity, cfg.topic, ("/ip4/127.0.0.1/tcp/0",), dial_targets(cfg, []),
                                subscribe=False)
        async with trio.open_nursery() as nursery:
            self.net = await nursery.start(run_libp2p_network, net_cfg)
            wanted = {v.peer_id for v in cfg.validators}
            with trio.fail_after(START_TIMEOUT):
                await wait_until(lambda: wanted <= self.net.topic_peers())
            self.outbox = Outbox(cfg, self.identity, self.net, time.time_ns())
            task_status.started(self)
            await trio.sleep_forever()

    async def finish(self, timeout: float = 60.0) -> None:
        """Before the client is cancelled: wait until what it published has left (as
        ``conclave propose`` does). Cancelled with motions still queued, it lost them:
        628 of 2000 submitted at 400/s never reached any validator, and the benchmark
        waited for decisions that could not come."""
        with trio.fail_after(timeout):
            await self.net.drain()
            await self.net.settle()

    async def submit(self, count: int = 1) -> list[tuple[str, float]]:
        """Publish ``count`` motions; (motion id, wall time handed to the network) each."""
        out = []
        for _ in range(count):
            self._counter += 1
            motion = Motion(f"Benchmark motion {self._counter}: adopt proposal {self._counter}?", ("approve", "reject"))
            env = await self.outbox.send(MessageType.MOTION, motion.encode())
            out.append((env.message_id.hex(), time.time()))
        return out
