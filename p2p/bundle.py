"""Bundles: several envelopes in one pubsub message (wire format section 1).

py-libp2p's gossip costs about the same per message whatever its size, up to a few
hundred kilobytes, and saturates at tens of messages a second per peer. The sender
therefore packs everything that is waiting to go into one pubsub message: a lone
envelope travels as itself, two or more as the msgpack array ``[0, [envelope, ...]]``.
An envelope is an array of 7, so the first byte (0x92 against 0x97) tells them apart.
Each envelope keeps its own signature and is judged on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from p2p.errors import RejectReason, RemoteProtocolError

BUNDLE_MARKER = 0x92  # msgpack fixarray of 2: [0, [...]]
BUNDLE_VERSION = 0
MAX_BUNDLE_ENVELOPES = 1024
ITEM_OVERHEAD = 5  # msgpack bin header of one envelope in the bundle


def encode_bundle(envelopes: Sequence[bytes]) -> bytes:
    """The pubsub data for ``envelopes``: the envelope itself when there is one."""
    if len(envelopes) == 1:
        return envelopes[0]
    return msgpack.packb([BUNDLE_VERSION, list(envelopes)], use_bin_type=True)


def split_frame(data: bytes) -> list[bytes]:
    """The envelopes in one pubsub message. Raises ``RemoteProtocolError``
    (``undecodable``) for a malformed bundle; a single envelope is returned as is,
    for the envelope decoder to judge."""
    if not data or data[0] != BUNDLE_MARKER:
        return [data]
    try:
        obj = msgpack.unpackb(data, raw=False, max_bin_len=len(data), max_str_len=0, max_map_len=0,
                              max_array_len=MAX_BUNDLE_ENVELOPES)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise RemoteProtocolError(RejectReason.UNDECODABLE, f"bundle is not msgpack: {type(exc).__name__}") from None
    if not (isinstance(obj, list) and len(obj) == 2 and type(obj[0]) is int and obj[0] == BUNDLE_VERSION
            and isinstance(obj[1], list) and 2 <= len(obj[1]) <= MAX_BUNDLE_ENVELOPES
            and all(isinstance(e, bytes) for e in obj[1])):
        raise RemoteProtocolError(RejectReason.UNDECODABLE,
                                  f"a bundle is [0, [2 to {MAX_BUNDLE_ENVELOPES} envelopes as bin]]")
    return obj[1]
