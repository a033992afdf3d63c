"""Status: ask one peer how it is doing, over a libp2p request/response stream.

An operator (``conclave status``) wants each validator's own view: its height, round and
step, how many peers it sees, how many motions wait. Gossip does not answer that: the
periodic STATUS broadcast says who a peer is, not where its consensus stands, and only
to the swarm's members. A direct request does, to anyone who can connect, and the answer
is known to come from the asked peer because the libp2p connection (Noise) is
authenticated to its peer id.

Protocol ``/conclave/status/1.0.0``, one request per stream, framed as
``/conclave/sync/1.0.0`` is (4-byte big-endian length, then a msgpack body; the framing
helpers are ``p2p.sync``'s):

- request:  ``{"swarm": swarm_id (bytes)}``; body at most ``MAX_REQUEST_BYTES``.
- response: ``{"status": {str: value, ...}}``, the packed status at most
  ``MAX_STATUS_BYTES``; or ``{"error": "reason"}`` (``wrong_swarm``, ``bad_request``,
  ``undecodable``, ``too_large``, ``busy``, ``unavailable``).

The server is generic: what the status holds is the peer's business (its
``provider()``); this layer only checks that it is a map with string keys that packs to
msgpack a client can read, within the size limit. The contents are informational and
unauthenticated beyond the connection: never feed them to consensus.

Status is public to anyone who knows the swarm id (it is in the swarm file): a status
provider must not put secrets in it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from p2p.errors import LocalProtocolError

# The framing is shared with the catch-up protocol rather than copied (see the report
# on making these public in p2p.sync).
from p2p.reqresp import (
    FRAME_PREFIX,
    FrameTooLarge,
    RequestError,
    RequestFailure,
    RequestRefused,
    RequestUnavailable,
    ServeStats,
    encode_frame,
    host_of,
    read_frame,
    serve_requests,
    unpack_body,
)

log = logging.getLogger("conclave.p2p.status")

STATUS_PROTOCOL = TProtocol("/conclave/status/1.0.0")
MAX_SWARM_ID_BYTES = 64  # sha256 today; room for a longer id, not for junk
MAX_REQUEST_BYTES = 128
MAX_STATUS_BYTES = 64 * 1024
_WRAPPER_BYTES = 8  # msgpack of {"status": <value>} around the value: map header, "status"
MAX_RESPONSE_BYTES = MAX_STATUS_BYTES + _WRAPPER_BYTES
READ_TIMEOUT = 5.0
MAX_CONCURRENT = 8  # requests served at once; more are answered "busy"
MAX_ERROR_CHARS = 200

StatusProvider = Callable[[], dict]


StatusFailure = RequestFailure  # the names this module has always offered


class StatusError(RequestError):
    """A status request to a peer failed. ``kind`` says how; ``peer`` names the peer."""


StatusStats = ServeStats  # served, refused, busy, failed


def _check_swarm_id(swarm_id: object) -> bytes:
    if not isinstance(swarm_id, (bytes, bytearray)) or not 1 <= len(swarm_id) <= MAX_SWARM_ID_BYTES:
        raise LocalProtocolError(f"swarm id must be 1..{MAX_SWARM_ID_BYTES} bytes, got {swarm_id!r:.80}")
    return bytes(swarm_id)


# -- server ---------------------------------------------------------------------------


def _parse_request(body: bytes, swarm_id: bytes) -> None:
    try:
        doc = unpack_body(body)
    except Exception:  # msgpack raises many unrelated types on garbage
        raise RequestRefused("undecodable") from None
    if not isinstance(doc, dict) or set(doc) != {"swarm"} or not isinstance(doc["swarm"], bytes):
        raise RequestRefused("bad_request")
    if doc["swarm"] != swarm_id:
        raise RequestRefused("wrong_swarm")


def status_frame(status: object) -> bytes:
    """The framed ``{"status": status}`` answer. Raises ``LocalProtocolError`` when
    ``status`` is not a map of str keys, does not pack, would not unpack on a client
    (e.g. non-string keys inside), or packs to more than ``MAX_STATUS_BYTES``: a bug in
    the provider, not the asking peer's fault."""
    if not isinstance(status, dict) or not all(isinstance(k, str) for k in status):
        raise LocalProtocolError(f"a status must be a dict with str keys, got {type(status).__name__}")
    try:
        frame = encode_frame({"status": status})
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"status does not pack to msgpack: {exc}") from None
    body = frame[FRAME_PREFIX.size :]
    if len(body) - _WRAPPER_BYTES > MAX_STATUS_BYTES:
        raise LocalProtocolError(f"status packs to {len(body) - _WRAPPER_BYTES} bytes; the limit is {MAX_STATUS_BYTES}")
    try:
        unpack_body(body)  # what a client does: strict map keys, no ext types
    except Exception as exc:  # msgpack's error types vary
        raise LocalProtocolError(f"status would not decode on a client: {exc}") from None
    return frame


async def serve_status(
    net_or_host,
    swarm_id: bytes,
    provider: StatusProvider,
    *,
    read_timeout: float = READ_TIMEOUT,
    stats: StatusStats | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer status requests on ``net_or_host`` (a ``Libp2pNetwork`` or a libp2p host)
    until cancelled. ``provider()`` is called once per request, in the event loop: it
    must return at once (read in-memory state; no I/O). Hands its ``StatusStats`` to
    ``task_status``. A bad request gets an error answer (or, when none can be written,
    a closed stream) and is counted; it never reaches the host's tasks."""
    swarm_id = _check_swarm_id(swarm_id)

    async def respond(body: bytes) -> bytes:
        _parse_request(body, swarm_id)
        try:
            return status_frame(provider())
        except Exception:  # our own provider's bug: say so in our log, not on the wire
            log.warning("status provider failed; answering 'unavailable'", exc_info=True)
            raise RequestUnavailable("unavailable") from None

    await serve_requests(net_or_host, STATUS_PROTOCOL, respond, name="status", max_request_bytes=MAX_REQUEST_BYTES,
                         max_concurrent=MAX_CONCURRENT, read_timeout=read_timeout,
                         stats=stats if stats is not None else StatusStats(), task_status=task_status)


# -- client ---------------------------------------------------------------------------


def _parse_response(body: bytes, peer: str) -> dict:
    try:
        doc = unpack_body(body)
    except Exception:  # msgpack raises many unrelated types on garbage
        raise StatusError(StatusFailure.MALFORMED, "response is not msgpack", peer) from None
    if isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str):
        raise StatusError(StatusFailure.REMOTE_ERROR, doc["error"][:MAX_ERROR_CHARS], peer)
    if not isinstance(doc, dict) or set(doc) != {"status"} or not isinstance(doc["status"], dict):
        raise StatusError(StatusFailure.MALFORMED, "response is not a status map", peer)
    status = doc["status"]
    if not all(isinstance(k, str) for k in status):
        raise StatusError(StatusFailure.MALFORMED, "status keys are not all strings", peer)
    return status


def _open_failure(exc: Exception) -> StatusFailure:
    # py-libp2p reports "connected, but the protocol was refused" as a StreamFailure
    # caused by a MultiselectClientError whose text says so; anything else (no
    # connection, no address, negotiation timeout) is plain unreachable.
    cause = exc.__cause__
    if isinstance(exc, MultiselectClientError):
        cause = exc
    if isinstance(cause, MultiselectClientError) and "not supported" in str(cause):
        return StatusFailure.UNSUPPORTED
    return StatusFailure.UNREACHABLE


async def fetch_status(net, peer_id: str, swarm_id: bytes, timeout: float = READ_TIMEOUT) -> dict:
    """``peer_id``'s status map. Raises ``StatusError`` when the peer cannot be reached
    or does not speak the protocol, does not answer within ``timeout`` (the whole
    exchange), or answers badly (``REMOTE_ERROR`` carries its reason, e.g.
    ``wrong_swarm``). ``LocalProtocolError`` for a bad argument."""
    swarm_id = _check_swarm_id(swarm_id)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise LocalProtocolError(f"timeout must be a positive number of seconds, got {timeout!r}")
    try:
        peer = ID.from_base58(peer_id)
    except Exception:  # base58 and multihash raise assorted types
        raise LocalProtocolError(f"not a peer id: {peer_id!r:.80}") from None
    request = encode_frame({"swarm": swarm_id})
    host = host_of(net)
    stream = None
    try:
        with trio.fail_after(timeout):
            try:
                stream = await host.new_stream(peer, [STATUS_PROTOCOL])
            except Exception as exc:  # libp2p raises many types: no connection, protocol refused
                kind = _open_failure(exc)
                detail = (
                    f"does not speak {STATUS_PROTOCOL} (an older agent?)"
                    if kind is StatusFailure.UNSUPPORTED
                    else f"{type(exc).__name__}: {exc}"
                )
                raise StatusError(kind, detail, peer_id) from None
            try:
                await stream.write(request)
                body = await read_frame(stream, MAX_RESPONSE_BYTES)
            except FrameTooLarge as big:
                raise StatusError(StatusFailure.TOO_LARGE, f"response of {big.args[0]} bytes", peer_id) from None
            except Exception as exc:  # EOF, reset, closed: libp2p's types vary
                raise StatusError(StatusFailure.CLOSED, f"{type(exc).__name__}: {exc}", peer_id) from None
    except trio.TooSlowError:
        raise StatusError(StatusFailure.TIMEOUT, f"no answer within {timeout}s", peer_id) from None
    finally:
        if stream is not None:
            with trio.move_on_after(1.0, shield=True):
                try:
                    await stream.close()
                except Exception:  # already reset by the other side
                    pass
    return _parse_response(body, peer_id)
