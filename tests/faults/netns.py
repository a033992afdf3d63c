"""Real network partitions between processes: one Linux network namespace per node.

A ``Fabric`` gives each node (a peer or a client) its own network namespace, wired to a
software switch, and can split that switch at will:

    <prefix>-br        one namespace holding the bridges: br0 (everyone when healed),
                       br1, br2, ... (one per group while partitioned)
    <prefix>-<i>       node i's namespace: lo up, eth0 = 10.213.X.(i+1)/24
    veth pair          eth0 in node i's namespace <-> p<i> in the bridge namespace

``<prefix>`` is ``cnv-<pid>-<random>``, so concurrent runs never collide, and a run that
was killed is recognised by its dead pid and swept by the next one (``sweep_stale``).
No address or device is ever added to the root namespace, so nothing here can clash with
the host's own networks, and deleting the namespaces removes every device with them.

How a partition is made, without netem: a node's bridge-side port is moved onto the
bridge of its group (``ip link set p<i> master br<g>``), or onto no bridge at all
(``nomaster``). Frames then only reach ports on the same bridge; everything else is
dropped silently, with no RST and no ICMP, like a failed switch. The node's own link
stays up, so its kernel and its TCP connections notice nothing until their
retransmissions go unanswered. Healing moves every port back onto br0.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2; ``Fabric.open`` raises
``NetnsUnavailable`` with the failing command's error otherwise, which the tests turn
into a skip.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PREFIX = "cnv"
IP_TIMEOUT_S = 10.0
NODE_IF = "eth0"
MAIN_BRIDGE = "br0"
_STALE_RE = re.compile(rf"^{PREFIX}-(\d+)-")


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message holds the command and its stderr."""


class NetnsUnavailable(NetnsError):
    """This machine does not let us create network namespaces (not root, no iproute2,
    or a container without the capabilities)."""


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its stdout, or NetnsError naming the command and its stderr."""
    cmd = ["ip", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`{' '.join(cmd)}` could not run: {exc}") from None
    if res.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed (exit {res.returncode}): {res.stderr.strip()}")
    return res.stdout


def list_netns() -> list[str]:
    # Lines look like "name (id: 3)" or just "name".
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete namespaces left by runs of this harness whose process is gone (a run that
    was SIGKILLed cannot clean up after itself). Returns the names deleted."""
    swept = []
    for name in list_netns():
        m = _STALE_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            ip("netns", "delete", name)
            swept.append(name)
    return swept


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    index: int
    netns: str
    address: str  # IPv4 address of eth0 in ``netns``
    port: str  # the node's veth end in the bridge namespace

    def exec_prefix(self) -> list[str]:
        """Prefix for a command line that must run inside this node's namespace."""
        return ["ip", "netns", "exec", self.netns]


class Fabric:
    """Namespaces, a switch and links for ``names``; see the module docstring.

    Use as a context manager (or call ``open``/``close``): ``close`` removes every
    namespace this fabric made, also after a failure half-way through ``open``. Stop the
    processes running inside first: a namespace outlives its name while a process is in
    it."""

    def __init__(self, names: Sequence[str], octet: int | None = None) -> None:
        if len(set(names)) != len(names) or not 1 <= len(names) <= 250:
            raise ValueError(f"need 1-250 distinct node names, got {list(names)}")
        self.prefix = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(2)}"
        # Only these namespaces ever hold the subnet, so any octet is safe; varying it
        # tells apart the addresses of concurrent runs in logs.
        self.subnet_octet = secrets.randbelow(256) if octet is None else octet
        self.bridge_ns = f"{self.prefix}-br"
        self.nodes = {
            n: Node(n, i, f"{self.prefix}-{i}", f"10.213.{self.subnet_octet}.{i + 1}", f"p{i}")
            for i, n in enumerate(names)
        }
        self._made: list[str] = []  # namespaces created, in order
        self._bridges: set[str] = set()
        self._placement: dict[str, str | None] = {}  # node -> its bridge, None when cut

    # --- life cycle --------------------------------------------------------------------

    def __enter__(self) -> Fabric:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        check_support()
        try:
            self._add_netns(self.bridge_ns, probe=True)
            self._add_bridge(MAIN_BRIDGE)
            for node in self.nodes.values():
                self._add_node(node)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Delete every namespace made here (their devices go with them); raise at the
        end, naming each one that could not be deleted."""
        errors = []
        for name in reversed(self._made):
            try:
                ip("netns", "delete", name)
            except NetnsError as exc:
                if name in list_netns():
                    errors.append(str(exc))
        self._made.clear()
        if errors:
            raise NetnsError("cleanup incomplete: " + "; ".join(errors))

    def _add_netns(self, name: str, probe: bool = False) -> None:
        try:
            ip("netns", "add", name)
        except NetnsError as exc:
            if probe:  # the first one: this machine does not allow namespaces at all
                raise NetnsUnavailable(str(exc)) from None
            raise
        self._made.append(name)

    def _add_bridge(self, bridge: str) -> None:
        # STP off (the default) puts a port in forwarding at once, so a heal takes effect
        # without a learning delay.
        ip("-n", self.bridge_ns, "link", "add", bridge, "type", "bridge", "stp_state", "0")
        ip("-n", self.bridge_ns, "link", "set", bridge, "up")
        self._bridges.add(bridge)

    def _add_node(self, node: Node) -> None:
        self._add_netns(node.netns)
        # Both ends are created directly in their namespaces: nothing ever appears in
        # the root namespace, even for an instant.
        ip("link", "add", node.port, "netns", self.bridge_ns, "type", "veth",
           "peer", "name", NODE_IF, "netns", node.netns)
        ip("-n", node.netns, "link", "set", "lo", "up")
        ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", NODE_IF)
        ip("-n", node.netns, "link", "set", NODE_IF, "up")
        ip("-n", self.bridge_ns, "link", "set", node.port, "up")
        self._attach(node.name, MAIN_BRIDGE)

    # --- partitions --------------------------------------------------------------------

    def _attach(self, name: str, bridge: str | None) -> None:
        node = self.nodes[name]
        if self._placement.get(name, "") == bridge:
            return
        if bridge is None:
            ip("-n", self.bridge_ns, "link", "set", node.port, "nomaster")
        else:
            if bridge not in self._bridges:
                self._add_bridge(bridge)
            ip("-n", self.bridge_ns, "link", "set", node.port, "master", bridge)
        self._placement[name] = bridge

    def cut(self, name: str, drop: bool = False) -> None:
        """Cut ``name`` off from every other node (its port joins no bridge). ``drop``:
        see ``partition``."""
        self._move({name: None}, drop)

    def isolate(self, name: str, drop: bool = False) -> None:
        """Alias of ``cut``: the node alone on one side, everyone else on the other."""
        self.cut(name, drop)

    def partition(self, *groups: Iterable[str], drop: bool = False) -> None:
        """Split into ``groups``: nodes reach each other only within their group. A node
        named in no group is cut off from all.

        ``drop``: also abort every TCP connection across the split, at both ends, as a
        partition that outlasts TCP's retransmission timeout does. Without it the
        connections survive, and what was sent during the split is delivered, late,
        once healed (a short partition)."""
        groups = [list(g) for g in groups]
        named = [n for g in groups for n in g]
        unknown = sorted(set(named) - set(self.nodes))
        if unknown or len(named) != len(set(named)):
            raise ValueError(f"groups must name distinct known nodes: {groups} (unknown: {unknown})")
        target: dict[str, str | None] = {n: None for n in self.nodes}
        for g, group in enumerate(groups):
            target.update({n: f"br{g + 1}" for n in group})
        self._move(target, drop)

    def heal(self) -> None:
        """Every node back on br0: full connectivity."""
        self._move({n: MAIN_BRIDGE for n in self.nodes}, drop=False)

    def linked(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are on the same bridge now (by our own book-keeping)."""
        pa = self._placement[a]
        return pa is not None and pa == self._placement[b]

    def _move(self, target: dict[str, str | None], drop: bool) -> None:
        # Cut first, then join: a node never passes through a wider group on its way.
        for name, bridge in sorted(target.items(), key=lambda kv: kv[1] is not None):
            self._attach(name, bridge)
        if drop:
            for name in self.nodes:
                self._drop_connections(name)

    def _drop_connections(self, name: str) -> int:
        """Abort ``name``'s TCP connections to the nodes it is no longer linked with
        (``ss -K``: the application sees ECONNABORTED). Returns how many."""
        gone = [self.nodes[o].address for o in self.nodes if o != name and not self.linked(name, o)]
        if not gone:
            return 0
        expr = ["("] + " or ".join(f"dst {a}" for a in gone).split() + [")"]
        cmd = [*self.nodes[name].exec_prefix(), "ss", "-K", "-t", "-n", "-H", *expr]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise NetnsError(f"`{' '.join(cmd)}` failed (exit {res.returncode}): {res.stderr.strip()}")
        return len([line for line in res.stdout.splitlines() if line.strip()])

    def placement(self) -> dict[str, str | None]:
        """Which bridge each node's port is on (None: cut off), as the kernel reports it."""
        out = ip("-n", self.bridge_ns, "-o", "link", "show", "type", "veth")
        masters = {}
        for line in out.splitlines():
            # "3: p0@if2: <...> mtu 1500 master br0 state UP ..."
            port = line.split(":")[1].strip().split("@")[0]
            m = re.search(r"\smaster (\S+)", line)
            masters[port] = m.group(1) if m else None
        return {n: masters.get(node.port) for n, node in self.nodes.items()}

    # --- probing -----------------------------------------------------------------------

    def reachable(self, src: str, dst: str, timeout: float = 1.0) -> bool:
        """Whether a TCP SYN from ``src`` to ``dst`` gets an answer: a refusal (RST)
        proves the path works; silence or "no route" proves it does not."""
        probe = ("import socket, sys\n"
                 "try:\n"
                 f"    socket.create_connection(({self.nodes[dst].address!r}, 9), timeout={timeout})\n"
                 "except ConnectionRefusedError:\n"
                 "    sys.exit(0)\n"
                 "except OSError:\n"
                 "    sys.exit(3)\n"
                 "sys.exit(0)\n")
        cmd = [*self.nodes[src].exec_prefix(), sys.executable, "-c", probe]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + IP_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
        if res.returncode not in (0, 3):
            raise NetnsError(f"probe {src} -> {dst} failed (exit {res.returncode}): {res.stderr.strip()}")
        return res.returncode == 0


def check_support() -> None:
    """Raise NetnsUnavailable naming why namespaces cannot be made here, if known up
    front (the first ``ip netns add`` is the real test)."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("iproute2's `ip` is not installed")
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"network namespaces need root (running as uid {os.geteuid()})")
