"""Real `conclave peer` processes, each in its own network namespace (tests/faults/netns.py).

``NsSwarm`` writes a swarm whose validators each listen on their own namespace's
address, starts peers behind ``ip netns exec``, and puts motions to the swarm from
client namespaces. The ``ns_swarm`` fixture builds the network and the swarm, and
tears down both even when the test fails: first the peers it started (by pid), then
every namespace.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.procs import PeerProcess, conclave_command, run_conclave
from agents.run import FIXED_MODEL
from agents.swarm_init import SWARM_FILE, init_swarm
from p2p.keys import Identity, write_key_file
from p2p.swarmfile import ChainConfig, Params, SwarmConfig, render_swarm_file
from tests.faults.netns import Fabric, NetnsUnavailable, Node, sweep_stale

PEER_PORT = 7400  # every peer has a namespace of its own, so all may use the same port
VALIDATORS = ("v1", "v2", "v3", "v4")
CLIENTS = ("c1", "c2")  # one client per side of a 2/2 split
PROPOSE_TIMEOUT = 20.0
STATUS_TIMEOUT = 3.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Shorter than the defaults so that partitions and heals show within seconds: a peer
# that lost a connection redials after at most 2 s instead of 30 s, and motions that
# cannot reach a quorum of ballots (a 2/2 split) reveal after 2 s instead of 10 s and
# resolve by their deadline after 5 s instead of 120 s.
PARAMS = Params(dial_backoff_max_ms=2000, motion_deadline_ms=5000, reveal_timeout_ms=2000)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, so a test run
    that is itself killed leaves no peer behind holding a namespace (the signal setting
    survives `ip netns exec`'s exec of the peer)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class NsPeerProcess(PeerProcess):
    """A PeerProcess whose `conclave peer` runs inside ``node``'s network namespace
    (`ip netns exec` execs the command, so the pid we signal is the peer's own)."""

    def __init__(self, name: str, node: Node, args: list[str]) -> None:
        self.node = node
        command = [*node.exec_prefix(), *conclave_command("peer", *args, "--log-format", "json")]
        super().__init__(name, args, command=command, preexec_fn=_die_with_parent)


class NsSwarm:
    """Four validators and two clients on a ``Fabric``; one peer process per validator."""

    def __init__(self, directory: Path, fabric: Fabric, params: Params = PARAMS, log_level: str = "debug") -> None:
        self.dir, self.fabric, self.log_level = directory, fabric, log_level
        self.file = directory / SWARM_FILE
        self.cfg = self._write_swarm(params)
        self.peers: dict[str, NsPeerProcess] = {}
        self._stopped: list[NsPeerProcess] = []  # earlier processes of restarted peers
        self._clients = 0

    def _write_swarm(self, params: Params) -> SwarmConfig:
        cfg = init_swarm(self.dir, len(VALIDATORS), "faults", [PEER_PORT] * len(VALIDATORS), params=params)
        # init_swarm gives every validator one host; here each has its namespace's
        # address (addresses are not part of the swarm id, so the keys stay valid).
        validators = tuple(
            dataclasses.replace(v, addrs=(f"/ip4/{self.fabric.nodes[v.name].address}/tcp/{PEER_PORT}",))
            for v in cfg.validators
        )
        # No anchoring: checkpoints are not what these tests are about.
        cfg = dataclasses.replace(cfg, validators=validators, chain=ChainConfig(kind="none"))
        self.file.write_text(render_swarm_file(cfg))
        return cfg

    def start(self, name: str) -> NsPeerProcess:
        args = ["--swarm", str(self.file), "--key", str(self.dir / f"{name}.key"), "--data", str(self.dir / name),
                "--threads", "1", "--model", FIXED_MODEL, "--log-level", self.log_level]
        if name in self.peers:
            self._stopped.append(self.peers[name])
        proc = NsPeerProcess(name, self.fabric.nodes[name], args)
        self.peers[name] = proc
        return proc

    def start_all(self) -> dict[str, NsPeerProcess]:
        for name in VALIDATORS:
            self.start(name)
        return self.peers

    def propose(self, client: str, text: str, options: str = "approve,reject") -> dict:
        """``conclave propose`` from the client node ``client``, with a fresh key (a
        client key is rate-limited). Its JSON answer: ``motion_id``, ``peers`` reached."""
        self._clients += 1
        key = self.dir / f"client-{self._clients}.key"
        write_key_file(key, Identity.generate())
        cmd = [*self.fabric.nodes[client].exec_prefix(), *conclave_command("propose"),
               "--swarm", str(self.file), "--key", str(key), "--options", options,
               "--timeout", str(PROPOSE_TIMEOUT), "--json", text]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=PROPOSE_TIMEOUT * 3,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"conclave propose from {client} failed ({res.returncode}): {res.stderr.strip()}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    def status(self, client: str, timeout: float = STATUS_TIMEOUT) -> dict[str, dict]:
        """``conclave status`` from ``client``: each validator's row by name (a row with
        ``reachable`` false for one the client cannot reach)."""
        cmd = [*self.fabric.nodes[client].exec_prefix(), *conclave_command("status"),
               "--swarm", str(self.file), "--json", "--timeout", str(timeout)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, stdin=subprocess.DEVNULL)
        if res.returncode not in (0, 1):  # 1: some validator did not answer
            raise RuntimeError(f"conclave status from {client} failed ({res.returncode}): {res.stderr.strip()}")
        rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        return {r["name"]: r for r in rows}

    def durable_log(self, name: str) -> list[dict]:
        """``conclave log --json`` of validator ``name``'s data directory (read beside
        the running peer; files need no namespace)."""
        res = run_conclave("log", "--data", str(self.dir / name), "--json")
        if res.returncode != 0:
            raise RuntimeError(f"conclave log of {name} failed ({res.returncode}): {res.stderr.strip()}")
        return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]

    def all_processes(self) -> list[NsPeerProcess]:
        return [*self._stopped, *self.peers.values()]

    def kill_all(self) -> None:
        for p in self.all_processes():
            p.kill()

    def dump(self, last: int = 60) -> str:
        """The end of every peer's log, for a failure message."""
        out = []
        for name, p in self.peers.items():
            out.append(f"--- {name} (exit {p.proc.poll()})")
            out += [f"{e.get('ts')} {e['event']}: {e.get('msg')}" for e in p.events[-last:]]
            out += p.raw[-10:]
        return "\n".join(out)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Keep each phase's report on the item, so a fixture's finalizer knows whether the
    # test failed (and then prints the peers' logs with the failure).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    """A Fabric of the four validators and two clients, removed after the test."""
    fab = Fabric([*VALIDATORS, *CLIENTS])
    try:
        sweep_stale()
        fab.open()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    try:
        yield fab
    finally:
        fab.close()


@pytest.fixture
def ns_swarm(tmp_path: Path, fabric: Fabric, request: pytest.FixtureRequest) -> Iterator[NsSwarm]:
    """An NsSwarm on ``fabric`` (peers not started yet); its peers are killed after the
    test, before the namespaces go."""
    swarm = NsSwarm(tmp_path, fabric)
    try:
        yield swarm
    finally:
        swarm.kill_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(swarm.dump())
