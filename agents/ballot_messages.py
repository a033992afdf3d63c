"""The ballot messages: many commitments, or many reveals, in one envelope.

py-libp2p's gossip carries tens of messages a second per peer, and each envelope costs
a signature check at every receiver; one message per ballot made the ballots, not the
agreement, the ceiling of a swarm's throughput. A validator therefore sends everything
it has to commit (or reveal) at one moment as one message (wire format section 8.3).
Each item keeps its own signature: a block carries single commitments and reveals,
which must stand on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from agents.commitment import Commitment, Reveal
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.messages import decode_payload_map

MAX_ITEMS = 1024  # per message; the message size limit usually binds first
ENVELOPE_OVERHEAD = 512  # what the envelope adds around a payload (about 150 bytes), with room
# msgpack framing of the map and of each item: what a batch adds to its items' bytes.
MAP_OVERHEAD = 16
ITEM_OVERHEAD = 5


def _items(cls_name: str, items: tuple, kind: type) -> None:
    if not isinstance(items, tuple) or not 1 <= len(items) <= MAX_ITEMS:
        raise LocalProtocolError(f"{cls_name} holds 1 to {MAX_ITEMS} items")
    if not all(isinstance(i, kind) for i in items):
        raise LocalProtocolError(f"{cls_name} holds {kind.__name__} items only")


def _decode_list(data: bytes, what: str, key: str) -> list[bytes]:
    doc = decode_payload_map(data, what)
    raw = doc.get(key)
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_ITEMS:
        raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"{what}: '{key}' must be a list of 1 to {MAX_ITEMS}")
    if not all(isinstance(b, bytes) for b in raw):
        raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"{what}: every item of '{key}' must be bytes")
    return raw


@dataclass(frozen=True, slots=True)
class Commitments:
    """BALLOT_COMMIT: one or more commitments (any voters, any motions)."""

    items: tuple[Commitment, ...]

    def __post_init__(self) -> None:
        _items("Commitments", self.items, Commitment)

    def encode(self) -> bytes:
        return self.encode_items([c.encode() for c in self.items])

    @staticmethod
    def encode_items(encoded: Sequence[bytes]) -> bytes:
        """The message for already encoded commitments (no decode-encode round trip)."""
        return msgpack.packb({"commitments": list(encoded)}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Commitments:
        return cls(tuple(Commitment.decode(b) for b in _decode_list(data, "commitments", "commitments")))


@dataclass(frozen=True, slots=True)
class Reveals:
    """BALLOT_REVEAL: one or more reveals (any voters, any motions)."""

    items: tuple[Reveal, ...]

    def __post_init__(self) -> None:
        _items("Reveals", self.items, Reveal)

    def encode(self) -> bytes:
        return self.encode_items([r.encode() for r in self.items])

    @staticmethod
    def encode_items(encoded: Sequence[bytes]) -> bytes:
        return msgpack.packb({"reveals": list(encoded)}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Reveals:
        return cls(tuple(Reveal.decode(b) for b in _decode_list(data, "reveals", "reveals")))


def pack(items: list, sizes: list[int], budget: int) -> list[tuple]:
    """Split ``items`` (whose encodings are ``sizes`` bytes long) into groups whose batch
    message fits in ``budget`` bytes, in order; an item too large on its own still goes
    alone (the receivers' size check will refuse it, as it would any message)."""
    groups: list[list] = []
    size = MAP_OVERHEAD
    for item, item_size in zip(items, sizes, strict=True):
        cost = item_size + ITEM_OVERHEAD
        if not groups or size + cost > budget or len(groups[-1]) >= MAX_ITEMS:
            groups.append([])
            size = MAP_OVERHEAD
        groups[-1].append(item)
        size += cost
    return [tuple(g) for g in groups]
