"""A validator's signature on a checkpoint, gossiped so that the designated submitter
can gather a quorum (envelope type ``CHECKPOINT_SIGNATURE``).

The payload is a msgpack map: ``checkpoint`` (bin: ``Checkpoint.encode()``) and
``signature`` (bin 65: the chain key's ``r || s || v`` over the anchor's digest of that
checkpoint, ``consensus.anchor.digest``). The envelope is signed by the validator's
ed25519 key; the chain signature must recover to the same validator's chain address.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from consensus.checkpoint import Checkpoint
from consensus.errors import RemoteProtocolError as ConsensusRemoteError
from p2p.chainkeys import SIGNATURE_BYTES
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.messages import decode_payload_map


@dataclass(frozen=True, slots=True)
class CheckpointSignature:
    checkpoint: Checkpoint
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, Checkpoint):
            raise LocalProtocolError("checkpoint must be a Checkpoint")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise LocalProtocolError(f"a checkpoint signature is {SIGNATURE_BYTES} bytes")

    def encode(self) -> bytes:
        return msgpack.packb({"checkpoint": self.checkpoint.encode(), "signature": self.signature},
                             use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> CheckpointSignature:
        doc = decode_payload_map(data, "checkpoint signature")
        raw = doc.get("checkpoint")
        if not isinstance(raw, bytes):
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, "checkpoint signature: 'checkpoint' must be bytes")
        try:
            checkpoint = Checkpoint.decode(raw)
            return cls(checkpoint, doc.get("signature"))
        except (ConsensusRemoteError, LocalProtocolError) as exc:
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"checkpoint signature: {exc}") from None
