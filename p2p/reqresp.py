"""What the project's request/response protocols over libp2p streams share
(``/conclave/sync/1.0.0``, ``/conclave/status/1.0.0``): length-prefixed msgpack frames
read with a limit, one error type for a failed request, classified by how it failed.

A frame is a 4-byte big-endian length and a msgpack body. A length above the reader's
limit is refused before the body is read. ``serve_requests`` is the server side both
protocols run: bounded concurrency, bounded reads and writes, errors answered and
counted, never escaping into libp2p's tasks.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgpack
import trio

from p2p.errors import RejectReason, RemoteProtocolError

FRAME_PREFIX = struct.Struct(">I")
log = logging.getLogger("conclave.p2p.reqresp")


class RequestFailure(enum.StrEnum):
    TIMEOUT = "timeout"  # no complete answer in time
    UNREACHABLE = "unreachable"  # could not open a stream (not connected, dial failed)
    UNSUPPORTED = "unsupported"  # connected, but the peer does not speak the protocol
    TOO_LARGE = "too_large"  # a length prefix above the limit
    MALFORMED = "malformed"  # not msgpack, or not the shape the protocol defines
    REMOTE_ERROR = "remote_error"  # the peer answered {"error": ...}
    CLOSED = "closed"  # the stream ended or was reset mid-message


_REJECT = {RequestFailure.TOO_LARGE: RejectReason.TOO_LARGE}


class RequestError(RemoteProtocolError):
    """A request to a peer failed. ``kind`` says how; ``peer`` names the peer."""

    def __init__(self, kind: RequestFailure, detail: str, peer: str | None = None) -> None:
        super().__init__(_REJECT.get(kind, RejectReason.BAD_PAYLOAD), detail)
        self.args = (f"{kind.value}: {detail}" + (f" (peer {peer})" if peer else ""),)
        self.kind = kind
        self.peer = peer


class RequestRefused(Exception):
    """A request the server answers with ``{"error": reason}``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameTooLarge(Exception):
    """A length prefix above the limit; ``args[0]`` is the length."""


async def read_exact(stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf.extend(chunk)
    return bytes(buf)


async def read_frame(stream, limit: int) -> bytes:
    """One length-prefixed body; raises ``FrameTooLarge`` before reading a body over ``limit``."""
    (length,) = FRAME_PREFIX.unpack(await read_exact(stream, FRAME_PREFIX.size))
    if length > limit:
        raise FrameTooLarge(length)
    return await read_exact(stream, length) if length else b""


def encode_frame(doc: object) -> bytes:
    body = msgpack.packb(doc, use_bin_type=True)
    return FRAME_PREFIX.pack(len(body)) + body


def unpack_body(body: bytes) -> object:
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def host_of(net_or_host):
    # A Libp2pNetwork exposes its host; a bare libp2p host is accepted as is.
    return getattr(net_or_host, "host", net_or_host)


class RequestUnavailable(Exception):
    """The server cannot answer right now (its own fault, not the asker's): answered
    with ``{"error": reason}`` and counted as failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class ServeStats:
    served: int = 0  # requests answered
    refused: int = 0  # bad framing, msgpack, fields or swarm id: answered with an error
    busy: int = 0  # refused because the most requests allowed at once were in progress
    failed: int = 0  # server-side failures, timeouts, streams closed before an answer


Respond = Callable[[bytes], Awaitable[bytes]]


async def serve_requests(
    net_or_host,
    protocol,
    respond: Respond,
    *,
    name: str,
    max_request_bytes: int,
    max_concurrent: int,
    read_timeout: float,
    stats: ServeStats,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer requests of ``protocol``, one per stream, until cancelled.
    ``respond(request body)`` returns the framed answer, or raises ``RequestRefused``
    (the asker's fault) or ``RequestUnavailable`` (ours); each read, the answer and each
    write are bounded by ``read_timeout``. Hands ``stats`` to ``task_status``. Nothing a
    peer sends reaches the host's own tasks."""
    host = host_of(net_or_host)
    slots = trio.Semaphore(max_concurrent)

    async def answer(stream, frame: bytes) -> None:
        with trio.fail_after(read_timeout):  # a peer that does not read blocks our write
            await stream.write(frame)

    async def handle(stream) -> None:
        try:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                stats.busy += 1
                await answer(stream, encode_frame({"error": "busy"}))
                return
            try:
                with trio.fail_after(read_timeout):
                    try:
                        body = await read_frame(stream, max_request_bytes)
                    except FrameTooLarge:
                        raise RequestRefused("too_large") from None
                with trio.fail_after(read_timeout):
                    frame = await respond(body)
                await answer(stream, frame)
                stats.served += 1
            finally:
                slots.release()
        except (RequestRefused, RequestUnavailable) as no:
            if isinstance(no, RequestRefused):
                stats.refused += 1
            else:
                stats.failed += 1
            log.debug("%s request not answered: %s", name, no.reason)
            try:
                await answer(stream, encode_frame({"error": no.reason}))
            except Exception:  # the asker is gone: nothing more to tell it
                pass
        except trio.TooSlowError:
            stats.failed += 1
            log.debug("%s request timed out", name)
        except Exception as exc:  # stream closed or reset, or the responder failed
            stats.failed += 1
            log.debug("%s request failed: %r", name, exc)
        finally:
            with trio.move_on_after(1.0, shield=True):
                try:
                    await stream.close()
                except Exception:  # already reset by the other side
                    pass

    host.set_stream_handler(protocol, handle)
    try:
        task_status.started(stats)
        await trio.sleep_forever()
    finally:
        try:
            host.remove_stream_handler(protocol)
        except Exception as exc:  # the host is closing already
            log.debug("removing the %s handler: %s", name, exc)
