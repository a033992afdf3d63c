"""Prometheus metrics of one peer, and the small HTTP endpoint that serves them.

An operator running a swarm wants to see, without reading logs, whether each peer keeps
up (height, round, rounds per height, commit latency), whether its model is the
bottleneck (ballot latency), and what the network throws at it (messages in and out by
type, rejections by reason, connected peers, evidence).

Each ``PeerMetrics`` owns its own ``CollectorRegistry``: never prometheus_client's
global one, so that many peers can live in one process (tests, the simulator) without
"duplicated timeseries" errors and without one peer's numbers leaking into another's.

Label values come from fixed sets (message types, outcome kinds) or from a checked name
pattern (rejection reasons), so a label's cardinality is bounded by our code, never by
what a remote peer sends. Every known label value is created at zero up front, so that
a dashboard can tell "none yet" from "not exported".

``serve_metrics`` is a deliberately tiny HTTP/1.1 server on trio rather than
prometheus_client's ``start_http_server``, which starts a thread nobody cancels or
joins. It answers one request per connection (``Connection: close``), bounds the
request head to 8 KiB and 5 s, caps concurrent connections, and ends only by
cancellation, like every other service of the peer.
"""

from __future__ import annotations

import errno
import logging
import math
import re

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from p2p.envelope import MessageType
from p2p.errors import ConfigError, LocalProtocolError, RejectReason

log = logging.getLogger("conclave.metrics")

NAMESPACE = "conclave"
MESSAGE_TYPES = tuple(t.name.lower() for t in MessageType)  # motion, status, proposal, vote, ballot_...
OUTCOME_KINDS = ("supermajority", "no_supermajority")
ROUNDS_BUCKETS = (1, 2, 3, 5, 10)
# A height takes a few round trips plus timeouts of ~1-3 s (swarm params); a slow
# swarm (model inference inside the height) can take minutes.
COMMIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
# SmolLM2-135M answers in well under a second on 2 cores; bigger models take tens of s.
BALLOT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0, 120.0)

_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}\Z")

MAX_REQUEST_HEAD = 8 * 1024
REQUEST_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
MAX_CONNECTIONS = 32  # a scraper needs one; more than this at once is refused


def _check_count(name: str, value: object, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        raise LocalProtocolError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LocalProtocolError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _message_label(type_name: MessageType | str) -> str:
    label = type_name.name.lower() if isinstance(type_name, MessageType) else type_name
    if label not in MESSAGE_TYPES:
        raise LocalProtocolError(f"unknown message type {type_name!r}; one of {', '.join(MESSAGE_TYPES)}")
    return label


class PeerMetrics:
    """The metrics of one peer, in a registry of its own (``registry``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ns = NAMESPACE
        self.height = Gauge("height", "Last decided height", namespace=ns, registry=r)
        self.round = Gauge("round", "Current consensus round at the current height", namespace=ns, registry=r)
        self.rounds_per_height = Histogram(
            "rounds_per_height", "Rounds it took to decide a height (1 = decided in its first round)",
            namespace=ns, registry=r, buckets=ROUNDS_BUCKETS,
        )
        self.commit_latency_seconds = Histogram(
            "commit_latency_seconds", "From the start of a height to its decision",
            namespace=ns, registry=r, buckets=COMMIT_BUCKETS,
        )
        self.ballot_latency_seconds = Histogram(
            "ballot_latency_seconds", "Local model inference for one ballot",
            namespace=ns, registry=r, buckets=BALLOT_BUCKETS,
        )
        self.messages_in_total = Counter(
            "messages_in", "Messages accepted from the network, by envelope type", ["type"], namespace=ns, registry=r
        )
        self.messages_out_total = Counter(
            "messages_out", "Messages published, by envelope type", ["type"], namespace=ns, registry=r
        )
        self.rejections_total = Counter(
            "rejections", "Incoming messages rejected, by reason", ["reason"], namespace=ns, registry=r
        )
        self.peers_banned_total = Counter(
            "peers_banned", "Bans of a peer that kept handing us invalid messages (p2p.peer_guard)",
            namespace=ns, registry=r,
        )
        self.peers_connected = Gauge("peers_connected", "Peers with a live connection", namespace=ns, registry=r)
        self.decisions_total = Counter(
            "decisions", "Heights decided by this peer's own consensus rounds", namespace=ns, registry=r
        )
        self.motions_resolved_total = Counter(
            "motions_resolved", "Motions resolved in decided blocks, by outcome", ["outcome_kind"],
            namespace=ns, registry=r,
        )
        self.catchup_decisions_total = Counter(
            "catchup_decisions", "Decided heights adopted from peers by catch-up (certificate verified)",
            namespace=ns, registry=r,
        )
        self.evidence_total = Counter(
            "evidence", "Equivocation evidence found (a validator signed two conflicting votes)",
            namespace=ns, registry=r,
        )
        # Zero series for every known label value: "none yet" must be visible as 0.
        for t in MESSAGE_TYPES:
            self.messages_in_total.labels(type=t)
            self.messages_out_total.labels(type=t)
        for reason in RejectReason:
            self.rejections_total.labels(reason=reason.value)
        for kind in OUTCOME_KINDS:
            self.motions_resolved_total.labels(outcome_kind=kind)

    # -- recording -----------------------------------------------------------------------

    def set_height(self, height: int) -> None:
        self.height.set(_check_count("height", height))

    def set_round(self, round_number: int) -> None:
        self.round.set(_check_count("round", round_number))

    def observe_commit(self, seconds: float, rounds: int) -> None:
        """One height decided by our own consensus: ``seconds`` from its start, in
        ``rounds`` rounds (1 when the first round decided). Counts the decision."""
        seconds = _check_seconds("seconds", seconds)
        rounds = _check_count("rounds", rounds, 1)
        self.commit_latency_seconds.observe(seconds)
        self.rounds_per_height.observe(rounds)
        self.decisions_total.inc()

    def observe_ballot(self, seconds: float) -> None:
        self.ballot_latency_seconds.observe(_check_seconds("seconds", seconds))

    def message_in(self, type_name: MessageType | str) -> None:
        self.messages_in_total.labels(type=_message_label(type_name)).inc()

    def message_out(self, type_name: MessageType | str) -> None:
        self.messages_out_total.labels(type=_message_label(type_name)).inc()

    def rejection(self, reason: RejectReason | str) -> None:
        """Any reason name our code uses (``RejectReason`` or a consensus check's):
        lowercase, at most 40 characters. Never pass text that came from a peer."""
        label = reason.value if isinstance(reason, RejectReason) else reason
        if not isinstance(label, str) or not _REASON_RE.match(label):
            raise LocalProtocolError(f"rejection reason {reason!r} is not a lowercase_name of at most 40 chars")
        self.rejections_total.labels(reason=label).inc()

    def peer_banned(self) -> None:
        self.peers_banned_total.inc()

    def set_peers_connected(self, n: int) -> None:
        self.peers_connected.set(_check_count("peers connected", n))

    def motion_resolved(self, outcome_kind: str) -> None:
        if outcome_kind not in OUTCOME_KINDS:
            raise LocalProtocolError(f"outcome kind {outcome_kind!r}; one of {', '.join(OUTCOME_KINDS)}")
        self.motions_resolved_total.labels(outcome_kind=outcome_kind).inc()

    def catchup_decisions(self, n: int = 1) -> None:
        self.catchup_decisions_total.inc(_check_count("catch-up decisions", n))

    def evidence(self, n: int = 1) -> None:
        self.evidence_total.inc(_check_count("evidence", n))

    def render(self) -> bytes:
        """The registry in Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


# -- HTTP endpoint ----------------------------------------------------------------------


class _BadRequest(Exception):
    """A request we answer with 400 and close."""


_TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(status: int, body: bytes, content_type: str = _TEXT, *, head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head else body)


async def _read_head(stream: trio.abc.ReceiveStream) -> bytes:
    """Bytes up to the blank line ending the request head; ``_BadRequest`` past the
    limit, ``EOFError`` if the client hangs up first."""
    buf = bytearray()
    while True:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError("client closed before the end of the request head")
        buf.extend(chunk)
        # Bare LF line ends are tolerated (RFC 9112 2.2), as most servers do.
        ends = [i for i in (buf.find(b"\r\n\r\n"), buf.find(b"\n\n")) if i >= 0]
        if ends and min(ends) <= MAX_REQUEST_HEAD:
            return bytes(buf[: min(ends)])
        if len(buf) > MAX_REQUEST_HEAD + 4:
            raise _BadRequest("request head too large")


def _route(head: bytes, metrics: PeerMetrics) -> bytes:
    try:
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest("request line is not ASCII") from None
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/") or parts[2] not in (
        "HTTP/1.0", "HTTP/1.1"
    ):
        raise _BadRequest("malformed request line")
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return _response(405, b"only GET\n")
    path = target.split("?", 1)[0]
    head_only = method == "HEAD"
    if path != "/metrics":
        return _response(404, b"not found; try /metrics\n", head=head_only)
    return _response(200, metrics.render(), CONTENT_TYPE_LATEST, head=head_only)


async def serve_metrics(metrics: PeerMetrics, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled. Hands the port actually
    bound (useful with ``port=0``) to ``task_status``. Raises ``ConfigError`` naming the
    address when it cannot be bound (in use, or no such local address)."""
    if not isinstance(host, str) or not host:
        raise LocalProtocolError(f"metrics host must be an address, got {host!r}")
    if type(port) is not int or not 0 <= port <= 65535:
        raise LocalProtocolError(f"metrics port must be 0..65535, got {port!r}")
    try:
        # serve_tcp is exactly open_tcp_listeners + serve_listeners; opening them here
        # keeps a bind failure apart from anything a connection handler might raise.
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        hint = " (port in use)" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"metrics: cannot listen on {host}:{port}{hint}: {exc.strerror or exc}") from None
    opened = listeners
    if port == 0 and len(listeners) > 1:
        # A name with several addresses ("localhost": ::1 and 127.0.0.1) gets one free
        # port per address; serve one, so that the port handed back is the whole story.
        listeners = listeners[:1]
    slots = trio.Semaphore(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                return  # too many at once: close without reading (a scraper retries)
            try:
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        head = await _read_head(stream)
                    reply = _route(head, metrics)
                except _BadRequest as bad:
                    log.debug("metrics: bad request: %s", bad)
                    reply = _response(400, f"{bad}\n".encode())
                with trio.fail_after(WRITE_TIMEOUT):  # a client that does not read
                    await stream.send_all(reply)
            finally:
                slots.release()
        except (trio.TooSlowError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("metrics: connection dropped: %r", exc)
        except Exception:  # a bug here must not take the peer down with it
            log.exception("metrics: request handler failed")
        finally:
            with trio.move_on_after(1.0, shield=True):
                await stream.aclose()

    try:
        for extra in opened[len(listeners):]:
            await extra.aclose()
        bound = listeners[0].socket.getsockname()[1]
        task_status.started(bound)
        await trio.serve_listeners(handle, listeners)
    finally:
        for listener in opened:  # closing twice is harmless
            with trio.move_on_after(1.0, shield=True):
                await listener.aclose()
