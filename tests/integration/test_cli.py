"""The `conclave` command line, run as real subprocesses.

Operator mistakes (bad flags, broken files, unreachable swarms) must end quickly with
exit code 2 and a message naming what is wrong; a running peer logs one line per event
in either format and shuts down cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agents.procs import PeerProcess, conclave_command, free_tcp_ports, run_conclave
from agents.swarm_init import SWARM_FILE, init_swarm
from p2p.chainkeys import chain_address, chain_private_key
from p2p.keys import read_key_file
from p2p.swarmfile import load_swarm_file

pytestmark = pytest.mark.integration

PEER_ID = re.compile(r"12D3KooW[1-9A-HJ-NP-Za-km-z]{44}")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|DEBUG|WARNING|ERROR) +\S")
START_TIMEOUT = 30.0
QUICK = 15.0  # a usage error is reported without touching the network


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_usage_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in res.stderr, f"{needle!r} not in stderr: {res.stderr}"


@pytest.fixture
def swarm3(tmp_path: Path):
    """A 3-validator swarm on free ports, with nobody running."""
    directory = tmp_path / "swarm"
    cfg = init_swarm(directory, 3, "clitest", free_tcp_ports(3))
    return directory / SWARM_FILE, directory, cfg


# --- keys ----------------------------------------------------------------------------


def test_keys_new_writes_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    res = run_conclave("keys", "new", str(path))
    assert res.returncode == 0, res.stderr
    printed = res.stdout.strip()
    assert PEER_ID.fullmatch(printed), printed
    assert mode(path) == 0o600
    assert read_key_file(path).peer_id == printed
    before = path.read_bytes()

    again = run_conclave("keys", "new", str(path))
    assert_usage_error(again, str(path), "refusing to overwrite")
    assert again.stdout == ""
    assert path.read_bytes() == before
    assert mode(path) == 0o600


def test_keys_show_prints_peer_id_public_key_and_chain_address(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    assert run_conclave("keys", "new", str(path)).returncode == 0
    identity = read_key_file(path)
    res = run_conclave("keys", "show", str(path))
    assert res.returncode == 0, res.stderr
    fields = dict(line.split(":", 1) for line in res.stdout.strip().splitlines())
    assert {k: v.strip() for k, v in fields.items()} == {
        "peer id": identity.peer_id,
        "public key": identity.public_key.hex(),
        "chain address": chain_address(identity.seed),
    }
    # Neither the seed nor the chain key derived from it ever appears on screen.
    assert identity.seed.hex() not in res.stdout
    assert chain_private_key(identity.seed).hex() not in res.stdout


def test_keys_show_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "open.key"
    assert run_conclave("keys", "new", str(path)).returncode == 0
    path.chmod(0o644)
    res = run_conclave("keys", "show", str(path))
    assert_usage_error(res, str(path), "chmod 600")
    assert res.stdout == ""


def test_keys_show_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.key"
    assert_usage_error(run_conclave("keys", "show", str(path)), str(path))


# --- swarm init ----------------------------------------------------------------------


def test_swarm_init_writes_a_loadable_swarm_and_keys(tmp_path: Path) -> None:
    directory = tmp_path / "sw"
    base = free_tcp_ports(1)[0]
    base = min(base, 65535 - 2)
    res = run_conclave("swarm", "init", str(directory), "--validators", "3", "--name", "test",
                       "--base-port", str(base))
    assert res.returncode == 0, res.stderr
    cfg = load_swarm_file(directory / SWARM_FILE)
    assert cfg.name == "test"
    assert [v.name for v in cfg.validators] == ["v1", "v2", "v3"]
    assert str(directory / SWARM_FILE) in res.stdout

    printed = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^\s+(v\d+)\s+(\S+)\s+(\S+)\s+key: (\S+)$", line)
        if m:
            printed[m[1]] = (m[2], m[3], m[4])
    assert sorted(printed) == ["v1", "v2", "v3"], res.stdout

    for i, v in enumerate(cfg.validators):
        peer_id, addr, key_path = printed[v.name]
        assert peer_id == v.peer_id
        assert v.addrs == (addr,) == (f"/ip4/127.0.0.1/tcp/{base + i}",)
        key = directory / f"{v.name}.key"
        assert Path(key_path) == key
        assert mode(key) == 0o600
        identity = read_key_file(key)
        assert identity.peer_id == v.peer_id and identity.public_key == v.public_key
    assert len({v.peer_id for v in cfg.validators}) == 3

    swarm_text = (directory / SWARM_FILE).read_text()
    keys_before = {p.name: p.read_bytes() for p in directory.glob("*.key")}
    again = run_conclave("swarm", "init", str(directory), "--validators", "3", "--name", "test",
                         "--base-port", str(base))
    assert_usage_error(again, "refusing to overwrite", str(directory / SWARM_FILE))
    assert (directory / SWARM_FILE).read_text() == swarm_text
    assert {p.name: p.read_bytes() for p in directory.glob("*.key")} == keys_before


@pytest.mark.parametrize("validators", ["0", "-1"])
def test_swarm_init_rejects_a_bad_validator_count(tmp_path: Path, validators: str) -> None:
    directory = tmp_path / "sw"
    res = run_conclave("swarm", "init", str(directory), "--validators", validators)
    assert_usage_error(res, "--validators", "between 1 and 100")
    assert not (directory / SWARM_FILE).exists()


@pytest.mark.parametrize("base_port", ["65535", "0", "-5"])
def test_swarm_init_rejects_ports_outside_the_tcp_range(tmp_path: Path, base_port: str) -> None:
    directory = tmp_path / "sw"
    res = run_conclave("swarm", "init", str(directory), "--validators", "3", "--base-port", base_port)
    assert_usage_error(res, f"--base-port {base_port}", "65535")
    assert not directory.exists()


def test_swarm_init_rejects_a_host_it_cannot_write_as_an_address(tmp_path: Path) -> None:
    # Otherwise it writes a swarm file that `conclave peer` then refuses to load.
    directory = tmp_path / "sw"
    res = run_conclave("swarm", "init", str(directory), "--validators", "1", "--host", "localhost")
    assert_usage_error(res, "--host localhost")
    assert not (directory / SWARM_FILE).exists()


# --- peer: mistakes ----------------------------------------------------------------


def _break(swarm_file: Path, old: str, new: str, nth: int = 0) -> Path:
    """A copy of ``swarm_file`` with the ``nth`` occurrence of ``old`` replaced."""
    text = swarm_file.read_text()
    at = -1
    for _ in range(nth + 1):
        at = text.index(old, at + 1)
    broken = swarm_file.with_name("broken.toml")
    broken.write_text(text[:at] + new + text[at + len(old):])
    return broken


@pytest.mark.parametrize("old, new, nth, field", [
    ("power = 1", "power = 0", 1, "validators[1].power"),
    ("replay_window = ", "replay_windw = ", 0, "params.replay_windw"),
    ("checkpoint_interval = 10", "checkpoint_interval = 0", 0, "params.checkpoint_interval"),
    ('name = "v3"', 'name = "v1"', 0, "validators[2].name"),
])
def test_peer_names_the_broken_field_of_a_swarm_file(swarm3, old: str, new: str, nth: int, field: str) -> None:
    swarm_file, directory, _ = swarm3
    broken = _break(swarm_file, old, new, nth)
    start = time.monotonic()
    res = run_conclave("peer", "--swarm", str(broken), "--key", str(directory / "v1.key"), timeout=QUICK)
    assert_usage_error(res, str(broken), field)
    assert res.stdout == ""
    assert time.monotonic() - start < QUICK


def test_peer_rejects_a_bootstrap_address_without_a_peer_id(swarm3) -> None:
    swarm_file, directory, _ = swarm3
    res = run_conclave("peer", "--swarm", str(swarm_file), "--key", str(directory / "v1.key"),
                       "--bootstrap", "/ip4/127.0.0.1/tcp/1", timeout=QUICK)
    assert_usage_error(res, "--bootstrap", "/p2p/")


def test_peer_rejects_a_listen_address_that_is_not_a_multiaddr(swarm3) -> None:
    swarm_file, directory, _ = swarm3
    res = run_conclave("peer", "--swarm", str(swarm_file), "--key", str(directory / "v1.key"),
                       "--listen", "garbage", timeout=QUICK)
    assert_usage_error(res, "--listen", "garbage")


def test_peer_rejects_an_unknown_log_format(swarm3) -> None:
    swarm_file, directory, _ = swarm3
    res = run_conclave("peer", "--swarm", str(swarm_file), "--key", str(directory / "v1.key"),
                       "--log-format", "xml", timeout=QUICK)
    assert_usage_error(res, "--log-format", "xml")
    assert res.stderr.startswith("usage:")


def test_peer_refuses_to_run_when_its_port_is_taken(tmp_path: Path) -> None:
    # libp2p itself only logs a failed bind at debug and would run listening on nothing.
    port = free_tcp_ports(1)[0]
    init_swarm(tmp_path, 1, "busy", [port])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        res = run_conclave("peer", "--swarm", str(tmp_path / SWARM_FILE), "--key", str(tmp_path / "v1.key"),
                           timeout=QUICK)
    assert_usage_error(res, "cannot listen", f"/tcp/{port}")


# --- propose: mistakes -------------------------------------------------------------


def _propose(swarm3, *args: str, timeout: float = QUICK) -> subprocess.CompletedProcess:
    swarm_file, directory, _ = swarm3
    return run_conclave("propose", "--swarm", str(swarm_file), "--key", str(directory / "v1.key"), *args,
                        timeout=timeout)


def test_propose_rejects_repeated_options(swarm3) -> None:
    assert_usage_error(_propose(swarm3, "--options", "a,a", "Pick one"), "distinct")


def test_propose_rejects_empty_options(swarm3) -> None:
    assert_usage_error(_propose(swarm3, "--options", "", "Pick one"), "2 to 16 options")


def test_propose_rejects_an_empty_option_among_others(swarm3) -> None:
    assert_usage_error(_propose(swarm3, "--options", "yes,", "Pick one"), "option", "empty")


def test_propose_rejects_an_empty_text(swarm3) -> None:
    assert_usage_error(_propose(swarm3, ""), "text", "empty")


def test_propose_to_a_swarm_that_is_down_fails_quickly(swarm3) -> None:
    start = time.monotonic()
    res = _propose(swarm3, "--timeout", "1", "Anyone there?")
    took = time.monotonic() - start
    assert_usage_error(res, "no swarm peer reachable")
    assert res.stdout == ""
    assert took < QUICK, f"took {took:.1f}s"


# --- peer: logging -----------------------------------------------------------------


class TextPeer:
    """A `conclave peer --log-format text`, its stdout and stderr read by threads."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            conclave_command("peer", *args, "--log-format", "text"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: list[str], announce: bool) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))
            if announce:
                self.lines.put(line.rstrip("\n"))
        if announce:
            self.lines.put(None)

    def wait_line(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"peer exited ({self.proc.poll()}) before {needle!r}:\n" + "\n".join(
                    self.stdout + self.stderr))
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} within {timeout}s:\n" + "\n".join(self.stdout + self.stderr))

    def finish(self) -> None:
        for t in self._threads:
            t.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.finish()


@pytest.fixture
def solo(tmp_path: Path):
    """A 1-validator swarm: its one peer needs no one else."""
    init_swarm(tmp_path, 1, "solo", free_tcp_ports(1))
    return ["--swarm", str(tmp_path / SWARM_FILE), "--key", str(tmp_path / "v1.key"), "--data", str(tmp_path / "v1")]


def test_text_log_is_one_readable_line_per_event(solo: list[str]) -> None:
    peer = TextPeer(solo)
    try:
        started = peer.wait_line("started as validator", START_TIMEOUT)
        assert "swarm solo" in started and "/tcp/" in started
        start = time.monotonic()
        peer.proc.send_signal(signal.SIGTERM)
        code = peer.proc.wait(timeout=5)
        took = time.monotonic() - start
        peer.finish()
    finally:
        peer.kill()
    assert code == 0, "\n".join(peer.stdout + peer.stderr)
    assert took < 2.0, f"shutdown took {took:.2f}s"
    assert peer.stdout, "no output at all"
    bad = [line for line in peer.stdout if not TEXT_LINE.match(line)]
    assert not bad, "lines that are not one readable event:\n" + "\n".join(bad)
    assert peer.stderr == [], "\n".join(peer.stderr)
    assert any("SIGTERM" in line for line in peer.stdout)
    assert "stopped" in peer.stdout[-1]


def test_json_log_is_one_object_per_line_and_ends_with_peer_stopped(solo: list[str]) -> None:
    peer = PeerProcess("v1", solo)
    try:
        started = peer.wait_event("peer_started", START_TIMEOUT)
        assert started["role"] == "validator" and started["name"] == "v1"
        took = peer.stop(signal.SIGTERM, timeout=5.0)
    finally:
        peer.kill()
    assert peer.proc.returncode == 0, "\n".join(peer.raw)
    assert took < 2.0, f"shutdown took {took:.2f}s"
    assert peer.raw == [], "lines that are not JSON events:\n" + "\n".join(peer.raw)
    for e in peer.events:
        assert {"ts", "level", "event"} <= e.keys(), e
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["ts"]), e
        assert e["level"] in {"debug", "info", "warning", "error"}, e
    stopping = peer.named("peer_stopping")
    assert [s["signal"] for s in stopping] == ["SIGTERM"]
    stopped = peer.named("peer_stopped")
    assert len(stopped) == 1 and stopped[0]["motions"] == 0
    assert peer.events[-1]["event"] == "peer_stopped"
