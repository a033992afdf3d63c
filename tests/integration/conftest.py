"""Real peers as separate processes on 127.0.0.1, started through the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.procs import PeerProcess, free_tcp_ports, joined
from agents.run import FIXED_MODEL
from agents.swarm_init import SWARM_FILE, init_swarm
from p2p.swarmfile import SwarmConfig

JOIN_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 20.0


class Swarm:
    def __init__(self, directory: Path, cfg: SwarmConfig) -> None:
        self.dir, self.cfg = directory, cfg
        self.file = directory / SWARM_FILE
        self.procs: list[PeerProcess] = []

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def start(self, name: str, *extra: str, key: Path | None = None, model: str | None = FIXED_MODEL) -> PeerProcess:
        """``model``: the zero-cost fixed ballots by default (tests of the network path);
        None for the real default model (tests of the agreement itself)."""
        args = ["--swarm", str(self.file), "--key", str(key or self.key(name)), "--data", str(self.dir / name),
                "--threads", "1", *extra]
        if model is not None:
            args += ["--model", model]
        proc = PeerProcess(name, args)
        self.procs.append(proc)
        return proc

    def start_all(self, *extra: str, model: str | None = FIXED_MODEL) -> dict[str, PeerProcess]:
        peers = {v.name: self.start(v.name, *extra, model=model) for v in self.cfg.validators}
        for p in peers.values():
            try:
                wait_joined(p, {v.name for v in self.cfg.validators} - {p.name})
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\n{self.exited()}") from None
        return peers

    def exited(self) -> str:
        """Which peers have died, with the end of what each printed: a peer that cannot
        be joined is most often one that crashed at start."""
        dead = [p for p in self.procs if p.proc.poll() is not None]
        return "\n".join(f"{p.name} exited {p.proc.returncode}:\n" + "\n".join(p.raw[-12:]) for p in dead) \
            or "no peer has exited"


def wait_joined(proc: PeerProcess, names: set[str], timeout: float = JOIN_TIMEOUT) -> None:
    """Until ``proc`` has a live connection to every peer in ``names``."""
    proc.wait_for(lambda events: joined(events, names), timeout, f"connected to {sorted(names)}")


def received(proc: PeerProcess, motion_id: str) -> int:
    return len([e for e in proc.named("motion_received") if e["motion_id"] == motion_id])


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    cfg = init_swarm(tmp_path, 4, "itest", free_tcp_ports(4))
    s = Swarm(tmp_path, cfg)
    try:
        yield s
    finally:
        for p in s.procs:
            p.kill()
