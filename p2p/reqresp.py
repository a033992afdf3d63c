"""What the project's request/response protocols over libp2p streams share
(``/conclave/sync/1.0.0``, ``/conclave/status/1.0.0``): length-prefixed msgpack frames
read with a limit, one error type for a failed request, classified by how it failed.

A frame is a 4-byte big-endian length and a msgpack body. A length above the reader's
limit is refused before the body is read.
"""

from __future__ import annotations

import enum
import struct

import msgpack

from p2p.errors import RejectReason, RemoteProtocolError

FRAME_PREFIX = struct.Struct(">I")


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
