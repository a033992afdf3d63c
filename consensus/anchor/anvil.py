"""A local EVM node for tests and demos: anvil, from the npm package @foundry-rs/anvil
(installed by ``make setup``; the binary ships in its per-platform package).

``Anvil`` starts it on a free loopback port and stops it by its pid, never by name.
Run the binary directly: killing an ``npx`` wrapper leaves anvil holding the port.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from consensus.errors import LocalProtocolError

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
# anvil's well-known first development account (funded with 10,000 ETH on every start).
DEV_KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")


class AnvilUnavailable(LocalProtocolError):
    """anvil is not installed here (``make setup`` installs it) or would not start."""


def anvil_binary() -> Path:
    """``$CONCLAVE_ANVIL``, else the binary from this repository's node_modules, else
    ``anvil`` on the PATH."""
    if os.environ.get("CONCLAVE_ANVIL"):
        return Path(os.environ["CONCLAVE_ANVIL"])
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system())
    if arch and system:
        local = ROOT / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
        if local.is_file():
            return local
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise AnvilUnavailable("anvil not found: run `make setup` (npm installs @foundry-rs/anvil) or set CONCLAVE_ANVIL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Anvil:
    """``with Anvil() as node: node.url`` — a fresh chain, gone when the block ends
    (unless ``state_file`` keeps it across restarts)."""

    def __init__(self, port: int | None = None, chain_id: int = 31337, state_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.chain_id = chain_id
        self.url = f"http://127.0.0.1:{self.port}"
        self._args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port),
                      "--chain-id", str(chain_id)]
        if state_file is not None:
            self._args += ["--state", str(state_file)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Anvil:
        self.proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:
            for raw in self.proc.stdout:  # type: ignore[union-attr]
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                if "Listening on" in line:
                    ready.set()
            ready.set()  # exited

        threading.Thread(target=read, name=f"anvil-{self.port}", daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.stop()
            raise AnvilUnavailable(f"anvil did not start on port {self.port}: {' | '.join(lines[-5:])}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
