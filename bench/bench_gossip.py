"""Gossip baseline: py-libp2p between separate processes on 127.0.0.1, configured exactly
as the swarm uses it: ``p2p.libp2p_net.run_libp2p_network`` with no gate (Noise, yamux,
gossipsub 1.1 with D=6, spam protection and adaptive gossip off, heartbeat 1 s, our
sender task).

One host per OS process (bench/gossip_worker.py); each dials the hosts started before
it, and all wait until every other host is a topic peer and the gossip mesh has formed.
Then two phases, each in a window shared by all hosts and each counted until its
deliveries stop (at most MAX_DRAIN_S after the window):

- light load: every host publishes ``--rate`` 200-byte messages/s for ``--seconds``; the
  delivery latency is receive minus send time (``time.monotonic_ns()``, system-wide),
  for the first copy to arrive. At n=4 every host is in every mesh, so each host has a
  direct path to every other; at n=16 a mesh need not hold every host (D=6), so some
  deliveries take two hops. Reported as delivery latency, with the share of first copies
  handed over by the sender itself ("1-hop") and their p50 beside it;
- saturation: every host publishes as fast as ``publish`` lets it (its sender task waits
  while a peer's queue is nearly full) for ``--seconds``: deliveries per second summed
  over receivers and messages given to ``publish`` per second (the sender task may carry
  several in one pubsub message), both in the window, and the delivered fraction,
  deliveries / (published x (n-1)), at the end of the drain.

    python bench/bench_gossip.py [--sizes 4,16] [--seconds 5] [--rate 1]

Writes bench/results/gossip.json; the last line is the headline figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.procs import free_tcp_ports  # noqa: E402
from p2p.keys import Identity  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gossip.json"
WORKER = ROOT / "bench" / "gossip_worker.py"
MESSAGE_BYTES = 200
LEAD_S = 0.5  # from the start signal to the first publish
MAX_DRAIN_S = 5.0  # after a phase, at most this for its backlog to be delivered and counted
EXIT_TIMEOUT = 10.0
COLUMNS = (  # (key, heading, width, format)
    ("n", "n", 4, "d"), ("latency_p50_ms", "p50 ms", 8, ".1f"), ("latency_p99_ms", "p99 ms", 8, ".1f"),
    ("latency_samples", "samples", 8, "d"), ("one_hop_fraction", "1-hop", 6, ".2f"),
    ("delivered_per_s", "deliv/s", 8, ".0f"), ("published_per_s", "pub/s", 7, ".0f"),
    ("delivered_fraction", "deliv frac", 10, ".3f"), ("drain_s", "drain s", 7, ".1f"),
    ("light_cpu_per_host", "light cpu/host", 14, ".3f"), ("startup_s", "startup s", 9, ".1f"),
)


def ready_timeout(n: int) -> float:
    return 20.0 + 2.0 * n  # imports (~0.5 s of CPU each, 2 cores) and n-1 dials per host


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Workers:
    """The n worker processes of one size, their stdout lines merged into one queue."""

    def __init__(self, stderr_dir: Path) -> None:
        self.lines: queue.Queue[tuple[int, str]] = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        self.stderr_dir = stderr_dir

    def start(self, n: int) -> None:
        for i in range(n):
            err = open(self.stderr_dir / f"worker{i}.err", "wb")  # noqa: SIM115 (closed just below)
            proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True)
            err.close()  # the child holds its own copy
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            self.lines.put((i, line))
        self.lines.put((i, ""))  # end of output

    def send_all(self, obj_for) -> None:
        for i, proc in enumerate(self.procs):
            proc.stdin.write(json.dumps(obj_for(i)) + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]

    def collect(self, key: str, deadline: float) -> list[dict]:
        """One ``{key: i, ...}`` line from every worker, by ``deadline`` (monotonic)."""
        got: dict[int, dict] = {}
        while len(got) < len(self.procs):
            try:
                i, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                missing = sorted(set(range(len(self.procs))) - set(got))
                raise RuntimeError(f"no {key!r} line from workers {missing} in time" + self._stderr(missing[0])) from None
            if not line:
                raise RuntimeError(f"worker {i} closed its output (exit code {self._exit_code(i)})" + self._stderr(i))
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # a stray print from a library; ours are JSON
            if "error" in msg:
                raise RuntimeError(f"worker {i}: {msg['error']}{self._stderr(i)}")
            if key in msg:
                got[i] = msg
        return [got[i] for i in range(len(self.procs))]

    def _exit_code(self, i: int) -> int | None:
        try:
            return self.procs[i].wait(2.0)
        except subprocess.TimeoutExpired:
            return None

    def _stderr(self, i: int) -> str:
        tail = (self.stderr_dir / f"worker{i}.err").read_text(errors="replace").strip().splitlines()[-15:]
        return ("\n  stderr of worker %d:\n  " % i + "\n  ".join(tail)) if tail else ""

    def stop(self) -> None:
        # Closing stdin tells a worker to leave; it exits by itself. Kill only stragglers.
        for proc in self.procs:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass  # already gone
        deadline = time.monotonic() + EXIT_TIMEOUT
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(EXIT_TIMEOUT)


def run_workers(n: int, seconds: float, rate: float, message_bytes: int) -> tuple[dict[str, list[dict]], float]:
    """Start n workers and run the phases: each phase's reports, and the start-up seconds."""
    ids, ports = [Identity.generate() for _ in range(n)], free_tcp_ports(n)
    peers = [i.peer_id for i in ids]
    launched = time.monotonic()
    reports: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gossip-") as tmp:
        workers = Workers(Path(tmp))
        try:
            workers.start(n)
            workers.send_all(lambda i: {"index": i, "seed": ids[i].seed.hex(), "peers": peers, "ports": ports,
                                        "bytes": message_bytes, "ready_timeout": ready_timeout(n)})
            reports["ready"] = workers.collect("ready", launched + ready_timeout(n) + 15.0)
            startup = time.monotonic() - launched
            for phase_id, (name, phase_rate) in enumerate((("light", rate), ("saturation", None)), 1):
                # Each phase starts once every host has reported the previous one, so
                # that a backlog of one does not spill into the next.
                start = time.monotonic_ns() + int(LEAD_S * 1e9)
                end = start + int(seconds * 1e9)
                spec = {"id": phase_id, "name": name, "rate": phase_rate, "start": start, "end": end,
                        "report_by": end + int(MAX_DRAIN_S * 1e9)}
                workers.send_all(lambda i: spec)  # noqa: B023 (used at once)
                reports[name] = workers.collect("phase", time.monotonic() + LEAD_S + seconds + MAX_DRAIN_S + 15.0)
        finally:
            workers.stop()
    return reports, startup


def measure_gossip(n: int, seconds: float, rate: float, message_bytes: int = MESSAGE_BYTES) -> dict:
    """One results row for ``n`` hosts (see the module docstring)."""
    reports, startup = run_workers(n, seconds, rate, message_bytes)
    light, sat = reports["light"], reports["saturation"]
    latencies = [us / 1000 for r in light for us in r["latencies_us"]]
    one_hop = [us / 1000 for r in light for us, d in zip(r["latencies_us"], r["direct"]) if d]
    if not latencies:
        raise RuntimeError(f"n={n}: no message of the light phase was delivered")
    total = lambda rows, key: sum(r[key] for r in rows)  # noqa: E731
    return {
        "n": n, "latency_p50_ms": statistics.median(latencies), "latency_p99_ms": percentile(latencies, 0.99),
        "latency_samples": len(latencies),
        "light_delivered_fraction": len(latencies) / max(1, total(light, "published") * (n - 1)),
        "light_drain_s": max(r["drain_ms"] for r in light) / 1000,
        "one_hop_fraction": len(one_hop) / len(latencies),
        "one_hop_p50_ms": statistics.median(one_hop) if one_hop else None,
        "delivered_per_s": total(sat, "delivered_window") / seconds,
        "published_per_s": total(sat, "published_window") / seconds,
        "delivered_fraction": total(sat, "delivered") / max(1, total(sat, "published") * (n - 1)),
        "drain_s": max(r["drain_ms"] for r in sat) / 1000,
        # CPU time of the hosts in the window (sending included), less noisy than wall time on a
        # shared machine: cores per host at light load, and CPU ms per delivery at saturation.
        "light_cpu_per_host": total(light, "cpu_window_s") / (n * seconds),
        "cpu_ms_per_delivery": 1000 * total(sat, "cpu_window_s") / max(1, total(sat, "delivered_window")),
        "latency": "first copy to arrive; one hop at n=4 (every host in every mesh), some two hops at n=16",
        "duplicates": total(light, "duplicates") + total(sat, "duplicates"),
        "inbound_dropped": total(sat, "inbound_dropped"),  # each host's count, since it started
        "mesh_sizes": sorted({r["mesh"] for rows in reports.values() for r in rows}),
        "startup_s": startup, "seconds": seconds, "rate_per_host": rate, "message_bytes": message_bytes,
    }


def headline(rows: list[dict]) -> str:
    lo, hi = rows[0], rows[-1]
    text = f"light load p50 {lo['latency_p50_ms']:.1f} ms, p99 {lo['latency_p99_ms']:.1f} ms at n={lo['n']}"
    if hi is not lo:
        text += f"; p50 {hi['latency_p50_ms']:.1f} ms, p99 {hi['latency_p99_ms']:.1f} ms at n={hi['n']}"
    return (text + f"; saturated, {hi['delivered_per_s']:,.0f} deliveries/s at n={hi['n']} "
            f"({hi['delivered_fraction']:.0%} delivered within {MAX_DRAIN_S:g} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,16", help="host counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    # 1/s: at n=16 on 2 cores, 5/s per host already fills the CPU and the latency is seconds.
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per host at light load")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(" ".join(head.rjust(width) for _, head, width, _ in COLUMNS))
    rows = []
    for n in sizes:
        rows.append(measure_gossip(n, args.seconds, args.rate))
        print(" ".join(format(rows[-1][k], f">{w}{fmt}") for k, _, w, fmt in COLUMNS), flush=True)
        if rows[-1]["light_delivered_fraction"] < 1:  # then its backlog also delays the saturation phase
            print(f"  note: n={n}: the light load was not light here, {rows[-1]['light_delivered_fraction']:.1%} "
                  f"of it delivered within {MAX_DRAIN_S:g} s (a busy machine, or lower --rate)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": (f"py-libp2p gossip between separate processes on 127.0.0.1, configured as the swarm uses it: "
                      f"delivery latency at {args.rate:g} msg/s per host ({MESSAGE_BYTES}-byte messages; first copy, "
                      f"one hop at n=4, some two hops at n=16), and deliveries/s at saturation"),
        "python": platform.python_version(), "machine": platform.machine(),
        "results": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows],
        "headline": headline(rows),
    }, indent=2) + "\n")
    print(f"written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    print(f"headline: {headline(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
