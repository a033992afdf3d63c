"""Peers as child processes, for `conclave demo` and the integration tests.

Each child runs `conclave peer --log-format json`; a reader thread parses its output
line by line, and ``wait_for`` blocks (with a bound) until an event matching a predicate
has been logged, so nothing ever sleeps in the hope that something has settled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

Event = dict


def free_tcp_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def live_peers(events: list[Event]) -> set[str]:
    """The peers a peer's events show a live connection to, by name."""
    live: set[str] = set()
    for e in events:
        if e["event"] == "peer_joined":
            live.add(e["peer"])
        elif e["event"] == "peer_left":
            live.discard(e["peer"])
    return live


def joined(events: list[Event], names: set[str]) -> bool:
    """Whether a peer's events show a live connection to every peer in ``names``."""
    return names <= live_peers(events)


def conclave_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agents.cli", *args]


class PeerProcess:
    def __init__(self, name: str, args: Sequence[str], on_event: Callable[[str, Event], None] | None = None,
                 command: Sequence[str] | None = None, preexec_fn: Callable[[], None] | None = None) -> None:
        """``command``: another program that logs JSON lines the same way (a test
        peer), run instead of `conclave peer ARGS`. ``preexec_fn``: run in the child
        before it execs (see subprocess.Popen)."""
        self.name = name
        self.events: list[Event] = []
        self.raw: list[str] = []  # lines that are not JSON (tracebacks, stray prints)
        self._cond = threading.Condition()
        self._on_event = on_event
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            list(command) if command is not None else conclave_command("peer", *args, "--log-format", "json"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=preexec_fn,
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            text = line.decode(errors="replace").rstrip("\n")
            try:
                event = json.loads(text)
                ok = isinstance(event, dict) and "event" in event
            except ValueError:
                ok = False
            with self._cond:
                if ok:
                    self.events.append(event)
                else:
                    self.raw.append(text)
                self._cond.notify_all()
            if ok and self._on_event is not None:
                self._on_event(self.name, event)
        with self._cond:
            self._cond.notify_all()

    def named(self, event: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e["event"] == event]

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float, what: str = "") -> None:
        """Block until ``predicate(events)`` holds; raise TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.raw[-20:])
                    raise TimeoutError(f"{self.name}: {what or 'condition'} not met in {timeout}s\n{tail}")
                self._cond.wait(min(left, 0.5))

    def wait_event(self, event: str, timeout: float, **fields) -> Event:
        def match(e: Event) -> bool:
            return e["event"] == event and all(e.get(k) == v for k, v in fields.items())

        self.wait_for(lambda evs: any(match(e) for e in evs), timeout, f"{event} {fields or ''}")
        with self._cond:
            return next(e for e in self.events if match(e))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> float:
        """Send ``sig``, wait for exit; returns seconds taken. Kills after ``timeout``."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(2)


def run_conclave(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(conclave_command(*args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def propose_json(swarm: Path, key: Path, text: str, options: str = "approve,reject", timeout: float = 30.0) -> dict:
    res = run_conclave("propose", "--swarm", str(swarm), "--key", str(key), "--options", options, "--json", text,
                       timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"conclave propose failed ({res.returncode}): {res.stderr.strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])
