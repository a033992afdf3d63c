"""Catch-up: fetch decided blocks from a peer over a libp2p request/response stream.

Protocol ``/conclave/sync/1.0.0``, one request per stream. Each message is a 4-byte
big-endian length followed by a msgpack body:

- request:  ``{"swarm": swarm_id (bytes), "from": int, "to": int}``, heights inclusive,
  ``1 <= from <= to``, ``to - from + 1 <= MAX_BATCH``; body at most ``MAX_REQUEST_BYTES``.
- response: ``{"decisions": [[height, block_bytes, certificate_bytes], ...]}`` with
  consecutive heights starting at ``from`` (possibly fewer than asked: up to the
  responder's tip, or what fits in ``MAX_RESPONSE_BYTES``), or ``{"error": "reason"}``.

A length prefix above the limit is refused before the body is read. Every read is
bounded by a timeout.

**This layer moves bytes; it does not verify them.** The decisions a peer returns are
untrusted: the caller (consensus) must decode each block, check that it extends the
chain it has, and verify its certificate (``QuorumCertificate.verify(valset,
swarm_id)``) before storing or acting on it. ``fetch_from_any`` returns the peer that
answered so the caller can try another one if verification fails.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p.errors import LocalProtocolError
from p2p.reqresp import (
    FRAME_PREFIX,
    FrameTooLarge,
    RequestError,
    RequestFailure,
    RequestRefused,
    ServeStats,
    encode_frame,
    host_of,
    read_frame,
    serve_requests,
    unpack_body,
)

log = logging.getLogger("conclave.p2p.sync")

SYNC_PROTOCOL = TProtocol("/conclave/sync/1.0.0")
MAX_BATCH = 64
MAX_REQUEST_BYTES = 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
READ_TIMEOUT = 10.0
MAX_CONCURRENT = 16  # requests served at once; more are answered "busy"

Decision = tuple[int, bytes, bytes]  # height, block bytes, certificate bytes
Provider = Callable[[int, int], Awaitable[list[Decision]]]


SyncFailure = RequestFailure  # the names this module has always offered


class SyncError(RequestError):
    """A sync request to a peer failed. ``kind`` says how; ``peer`` names the peer."""


class SyncStats(ServeStats):
    """``refused`` counts malformed requests (bad framing, msgpack, fields, range, swarm)."""

    __slots__ = ()

    @property
    def malformed(self) -> int:
        return self.refused


def _is_height(x: object) -> bool:
    return type(x) is int and x >= 1


# -- server ---------------------------------------------------------------------------


def _parse_request(body: bytes, swarm_id: bytes) -> tuple[int, int]:
    try:
        doc = unpack_body(body)
    except Exception:  # msgpack raises many unrelated types on garbage
        raise RequestRefused("undecodable") from None
    if not isinstance(doc, dict) or set(doc) != {"swarm", "from", "to"}:
        raise RequestRefused("bad_request")
    first, last = doc["from"], doc["to"]
    if doc["swarm"] != swarm_id:
        raise RequestRefused("wrong_swarm")
    if not (_is_height(first) and _is_height(last)) or last < first or last - first + 1 > MAX_BATCH:
        raise RequestRefused("bad_range")
    return first, last


def _fit(decisions: list[Decision], first: int, last: int) -> list[Decision]:
    """The provider's answer clamped to consecutive heights from ``first`` and to the
    response size limit (whole decisions only)."""
    out: list[Decision] = []
    size = 64  # map header, key, list header: generous
    for expected, d in zip(range(first, last + 1), decisions):
        height, block, cert = d
        if height != expected:
            break
        size += len(block) + len(cert) + 32
        if size > MAX_RESPONSE_BYTES:
            break
        out.append((height, bytes(block), bytes(cert)))
    return out


async def serve_sync(
    net_or_host,
    swarm_id: bytes,
    provider: Provider,
    *,
    read_timeout: float = READ_TIMEOUT,
    stats: SyncStats | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer sync requests on ``net_or_host`` (a ``Libp2pNetwork`` or a libp2p host)
    until cancelled. ``provider(first, last)`` returns the stored decisions at heights
    ``first..last`` in order (fewer past its tip). Hands its ``SyncStats`` to
    ``task_status``. A bad request gets an error answer (or, when no answer can be
    written, a closed stream) and is counted; it never reaches the host's tasks."""
    async def respond(body: bytes) -> bytes:
        first, last = _parse_request(body, swarm_id)
        decisions = _fit(await provider(first, last), first, last)
        return encode_frame({"decisions": [list(d) for d in decisions]})

    await serve_requests(net_or_host, SYNC_PROTOCOL, respond, name="sync", max_request_bytes=MAX_REQUEST_BYTES,
                         max_concurrent=MAX_CONCURRENT, read_timeout=read_timeout,
                         stats=stats if stats is not None else SyncStats(), task_status=task_status)


# -- client ---------------------------------------------------------------------------


def _parse_response(body: bytes, first: int, last: int, peer: str) -> list[Decision]:
    try:
        doc = unpack_body(body)
    except Exception:
        raise SyncError(SyncFailure.MALFORMED, "response is not msgpack", peer) from None
    if isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str):
        raise SyncError(SyncFailure.REMOTE_ERROR, doc["error"][:200], peer)
    if not isinstance(doc, dict) or set(doc) != {"decisions"} or not isinstance(doc["decisions"], list):
        raise SyncError(SyncFailure.MALFORMED, "response is not a decisions map", peer)
    items = doc["decisions"]
    if len(items) > last - first + 1:
        raise SyncError(SyncFailure.MALFORMED, f"{len(items)} decisions for {last - first + 1} heights", peer)
    out: list[Decision] = []
    for expected, item in zip(range(first, last + 1), items):
        if not (isinstance(item, list) and len(item) == 3):
            raise SyncError(SyncFailure.MALFORMED, "a decision is not [height, block, certificate]", peer)
        height, block, cert = item
        if type(height) is not int or height != expected:
            raise SyncError(SyncFailure.MALFORMED, f"height {height!r} where {expected} was due", peer)
        if not (isinstance(block, bytes) and isinstance(cert, bytes)):
            raise SyncError(SyncFailure.MALFORMED, f"height {height}: block or certificate not bytes", peer)
        out.append((height, block, cert))
    return out


async def fetch_decisions(
    net, peer_id: str, swarm_id: bytes, first: int, last: int, timeout: float = READ_TIMEOUT
) -> list[Decision]:
    """The decisions at heights ``first..last`` (inclusive, at most ``MAX_BATCH``) from
    ``peer_id``: consecutive from ``first``, possibly fewer. Raises ``SyncError`` when
    the peer cannot be reached, does not answer within ``timeout`` (the whole exchange),
    or answers badly. The blocks and certificates are NOT verified here."""
    if not (_is_height(first) and _is_height(last)) or last < first or last - first + 1 > MAX_BATCH:
        raise LocalProtocolError(f"heights {first!r}..{last!r}: need 1 <= from <= to, at most {MAX_BATCH}")
    request = encode_frame({"swarm": bytes(swarm_id), "from": first, "to": last})
    if len(request) - FRAME_PREFIX.size > MAX_REQUEST_BYTES:
        raise LocalProtocolError("sync request too large (swarm id?)")
    host = host_of(net)
    stream = None
    try:
        with trio.fail_after(timeout):
            try:
                stream = await host.new_stream(ID.from_base58(peer_id), [SYNC_PROTOCOL])
            except Exception as exc:  # libp2p raises many types: no connection, protocol refused
                raise SyncError(SyncFailure.UNREACHABLE, f"{type(exc).__name__}: {exc}", peer_id) from None
            try:
                await stream.write(request)
                body = await read_frame(stream, MAX_RESPONSE_BYTES)
            except FrameTooLarge as big:
                raise SyncError(SyncFailure.TOO_LARGE, f"response of {big.args[0]} bytes", peer_id) from None
            except Exception as exc:
                raise SyncError(SyncFailure.CLOSED, f"{type(exc).__name__}: {exc}", peer_id) from None
    except trio.TooSlowError:
        raise SyncError(SyncFailure.TIMEOUT, f"no answer within {timeout}s", peer_id) from None
    finally:
        if stream is not None:
            with trio.move_on_after(1.0, shield=True):
                try:
                    await stream.close()
                except Exception:
                    pass
    return _parse_response(body, first, last, peer_id)


async def fetch_from_any(
    net, peers: Iterable[str], swarm_id: bytes, first: int, last: int, timeout: float = READ_TIMEOUT
) -> tuple[str, list[Decision]]:
    """Ask ``peers`` in order (``timeout`` each) and return ``(peer, decisions)`` from
    the first that answers with at least one decision. If every peer that answered had
    none, returns ``(that peer, [])``; if none answered, raises the last ``SyncError``
    (``UNREACHABLE`` when ``peers`` is empty). Unverified: see the module docstring."""
    empty: str | None = None
    last_error: SyncError | None = None
    for peer in peers:
        try:
            decisions = await fetch_decisions(net, peer, swarm_id, first, last, timeout)
        except SyncError as exc:
            log.debug("sync from %s failed: %s", peer, exc)
            last_error = exc
            continue
        if decisions:
            return peer, decisions
        if empty is None:
            empty = peer
    if empty is not None:
        return empty, []
    raise last_error or SyncError(SyncFailure.UNREACHABLE, "no peers to ask")
