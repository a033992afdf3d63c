"""``conclave status``: every validator's own view of the swarm, in one table.

When a swarm stalls, the first question is "who is where": which validators are up,
at what height and round each one is, whom each one sees. Logs answer it one machine
at a time; this asks every validator listed in the swarm file directly, over
``/conclave/status/1.0.0`` (``p2p.status``), from a throwaway identity, the way
``conclave propose`` connects: any machine with the swarm file can run it, and it
needs no key of its own.

The whole query is bounded by one ``timeout``: a validator that is not connected by
then, or has not answered by then, gets a row saying why, and never holds up the
others' rows (each validator is asked as soon as it is connected).

What a status holds is up to the peer; the table shows the keys in ``TABLE_COLUMNS``
when present. Every value shown comes from a remote peer, so it is reduced to a short
line of printable characters before it reaches the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from p2p.errors import LocalProtocolError
from p2p.keys import Identity
from p2p.libp2p_net import Libp2pNetwork, NetworkConfig, run_libp2p_network
from p2p.net import PeerConnected
from p2p.peerbook import DialTarget
from p2p.status import StatusError, fetch_status
from p2p.swarmfile import SwarmConfig, Validator

# The status keys the table shows, in order. A peer's provider is expected to supply
# them: last decided height, current round and step, connected peers (a count), and
# pending motions (a count; a list is shown by its length).
TABLE_COLUMNS = ("height", "round", "step", "peers", "pending")
CELL_CHARS = 24
ERROR_CHARS = 120


async def query_swarm_status(swarm: SwarmConfig, timeout: float) -> list[dict]:
    """One row per validator of ``swarm``, in swarm-file order:
    ``{"name", "peer_id", "reachable": True, "status": {...}, "rtt_ms": float}`` for a
    validator that answered, ``{"name", "peer_id", "reachable": False, "error": str}``
    for one that did not (no address in the swarm file, not connected in time, does
    not speak the status protocol, refused, timed out). Returns within about
    ``timeout`` seconds plus the client host's start and stop (under 2 s)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise LocalProtocolError(f"timeout must be a positive number of seconds, got {timeout!r}")
    identity = Identity.generate()  # a client: no key to keep, nothing to sign
    targets = tuple(DialTarget(v.peer_id, v.addrs) for v in swarm.validators if v.addrs)
    p = swarm.params
    cfg = NetworkConfig(
        identity, swarm.topic, ("/ip4/127.0.0.1/tcp/0",), targets,
        p.dial_backoff_initial_ms / 1000, p.dial_backoff_max_ms / 1000, subscribe=False,
    )
    rows: list[dict] = [{} for _ in swarm.validators]
    async with trio.open_nursery() as nursery:
        net = await nursery.start(run_libp2p_network, cfg)
        deadline = trio.current_time() + timeout
        connected = {t.peer_id: trio.Event() for t in targets}
        nursery.start_soon(_watch_connections, net, connected)
        async with trio.open_nursery() as asks:
            for i, v in enumerate(swarm.validators):
                asks.start_soon(_ask, net, swarm, v, connected.get(v.peer_id), deadline, timeout, rows, i)
        nursery.cancel_scope.cancel()  # the client host, and the watcher, are done
    return rows


async def _watch_connections(net: Libp2pNetwork, connected: dict[str, trio.Event]) -> None:
    for peer in net.connected_peers():
        if peer in connected:
            connected[peer].set()
    async for event in net.events:
        if isinstance(event, PeerConnected) and event.peer in connected:
            connected[event.peer].set()


async def _ask(
    net: Libp2pNetwork,
    swarm: SwarmConfig,
    v: Validator,
    connected: trio.Event | None,
    deadline: float,
    timeout: float,
    rows: list[dict],
    i: int,
) -> None:
    def unreachable(error: str) -> dict:
        return {"name": v.name, "peer_id": v.peer_id, "reachable": False, "error": error}

    if connected is None:
        rows[i] = unreachable("no address in the swarm file")
        return
    with trio.move_on_at(deadline):
        await connected.wait()
    if not connected.is_set():
        rows[i] = unreachable(f"not connected within {timeout:g}s (dialled {', '.join(v.addrs)})")
        return
    start = trio.current_time()
    left = deadline - start
    if left <= 0:
        rows[i] = unreachable(f"connected, but no time left to ask within {timeout:g}s")
        return
    try:
        status = await fetch_status(net, v.peer_id, swarm.swarm_id, left)
    except StatusError as exc:
        rows[i] = unreachable(f"{exc.kind.value}: {exc.detail}")
        return
    rtt_ms = round((trio.current_time() - start) * 1000, 1)
    rows[i] = {"name": v.name, "peer_id": v.peer_id, "reachable": True, "status": status, "rtt_ms": rtt_ms}


# -- the table ----------------------------------------------------------------------


def _clean(text: str, limit: int) -> str:
    # Remote text must not move the cursor, recolour the terminal or span lines.
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict, set)):
        return str(len(value))
    if isinstance(value, bytes):
        return _clean(value.hex(), CELL_CHARS)
    return _clean(str(value), CELL_CHARS)


def format_status_table(rows: Sequence[dict]) -> str:
    """Rows of ``query_swarm_status`` as a fixed-width text table, one line per
    validator: the ``TABLE_COLUMNS`` of its status (``-`` when absent), or why it is
    unreachable."""
    header = ("name", *TABLE_COLUMNS)
    table: list[tuple[str, ...]] = []
    for row in rows:
        name = _clean(str(row.get("name", "?")), CELL_CHARS)
        if row.get("reachable"):
            status = row.get("status") or {}
            table.append((name, *(_cell(status.get(c)) for c in TABLE_COLUMNS)))
        else:
            table.append((name, "unreachable: " + _clean(str(row.get("error", "no answer")), ERROR_CHARS)))
    widths = [len(h) for h in header]
    for cells in table:
        if len(cells) == len(header):  # the error line spans the columns: not measured
            widths = [max(w, len(c)) for w, c in zip(widths, cells)]
        else:
            widths[0] = max(widths[0], len(cells[0]))
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for cells in table:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)
