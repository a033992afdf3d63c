"""Checkpoints: every K heights, a commitment to the blocks decided since the last one.

A checkpoint names its swarm, its sequence number, the inclusive height range it covers,
the Merkle root (``consensus.merkle``) over the hashes of the blocks at those heights in
order, the hash of the validator set that decided them, and the hash of the previous
checkpoint (32 zero bytes for checkpoint 1), so checkpoints form a chain of their own.

The anchoring work will have a quorum of validators sign :meth:`Checkpoint.signing_bytes`
(domain-separated, canonical msgpack) and one of them submit it to a chain. Note: the
contract will need an EVM-friendly digest (keccak-based, as secp256k1 signatures are
checked on chain over it); that on-chain digest will be defined by the anchoring work
and must be bound to the chain id and the contract address, so that a signature for one
deployment cannot be replayed to another. ``signing_bytes``/``hash`` here are the
off-chain identity of a checkpoint and what ``prev_checkpoint_hash`` links.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.merkle import HASH_BYTES, InclusionProof, _unpack, merkle_root, verify_inclusion
from consensus.types import is_hash, is_uint

SIGNING_DOMAIN = b"conclave/checkpoint/v1\x00"
SWARM_ID_BYTES = 32
MAX_UINT64 = 2**64 - 1
ZERO_HASH = bytes(HASH_BYTES)
_FIELDS = 7


@dataclass(frozen=True, slots=True)
class Checkpoint:
    swarm_id: bytes
    number: int  # 1, 2, 3, ...
    first_height: int  # inclusive
    last_height: int  # inclusive
    root: bytes  # merkle_root(block hashes of first_height..last_height)
    validator_set_hash: bytes
    prev_checkpoint_hash: bytes  # ZERO_HASH for number 1, else the previous checkpoint's hash()

    def __post_init__(self) -> None:
        if not isinstance(self.swarm_id, bytes) or len(self.swarm_id) != SWARM_ID_BYTES:
            raise LocalProtocolError(f"swarm_id must be {SWARM_ID_BYTES} bytes")
        if not is_uint(self.number) or not 1 <= self.number <= MAX_UINT64:
            raise LocalProtocolError(f"number must be a uint64 >= 1, got {self.number!r}")
        for name in ("first_height", "last_height"):
            value = getattr(self, name)
            if not is_uint(value) or value > MAX_UINT64:
                raise LocalProtocolError(f"{name} must be a uint64, got {value!r}")
        if self.first_height > self.last_height:
            raise LocalProtocolError(f"first_height {self.first_height} > last_height {self.last_height}")
        for name in ("root", "validator_set_hash", "prev_checkpoint_hash"):
            if not is_hash(getattr(self, name)):
                raise LocalProtocolError(f"{name} must be {HASH_BYTES} bytes")
        if (self.number == 1) != (self.prev_checkpoint_hash == ZERO_HASH):
            raise LocalProtocolError("prev_checkpoint_hash must be zero exactly for checkpoint 1")

    @property
    def size(self) -> int:
        """How many blocks the checkpoint covers (the Merkle tree's size)."""
        return self.last_height - self.first_height + 1

    def _fields(self) -> list[object]:
        return [self.swarm_id, self.number, self.first_height, self.last_height,
                self.root, self.validator_set_hash, self.prev_checkpoint_hash]

    def signing_bytes(self) -> bytes:
        """What a quorum signs: the domain, then the fields in order as canonical msgpack."""
        return SIGNING_DOMAIN + msgpack.packb(self._fields(), use_bin_type=True)

    def hash(self) -> bytes:
        return hashlib.sha256(self.signing_bytes()).digest()

    def encode(self) -> bytes:
        return msgpack.packb(self._fields(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        """Parse :meth:`encode`'s output; ``RemoteProtocolError("bad_checkpoint")`` otherwise."""
        obj = _unpack(data, "bad_checkpoint")
        if not isinstance(obj, list) or len(obj) != _FIELDS:
            raise RemoteProtocolError("bad_checkpoint", f"expected an array of {_FIELDS}")
        try:
            checkpoint = cls(*obj)
        except LocalProtocolError as exc:
            raise RemoteProtocolError("bad_checkpoint", str(exc)) from None
        if checkpoint.encode() != data:
            raise RemoteProtocolError("bad_checkpoint", "not the canonical encoding")
        return checkpoint

    def includes(self, height: int, block_hash: bytes, proof: InclusionProof) -> bool:
        """True iff ``proof`` shows ``block_hash`` at ``height`` under this checkpoint's root.

        Checks the proof's index and size against the height range, which the root alone
        does not bind (see ``consensus.merkle``). Never raises.
        """
        if not isinstance(proof, InclusionProof) or not is_uint(height):
            return False
        if not self.first_height <= height <= self.last_height:
            return False
        if proof.size != self.size or proof.index != height - self.first_height:
            return False
        return verify_inclusion(block_hash, proof, self.root)


def checkpoint_for(
    swarm_id: bytes,
    number: int,
    block_hashes: Sequence[bytes],
    first_height: int,
    validator_set_hash: bytes,
    prev: Checkpoint | None,
) -> Checkpoint:
    """The checkpoint over ``block_hashes`` (heights ``first_height``, ``first_height + 1``, ...).

    ``prev`` is the previous checkpoint (None for number 1); the new one must continue it:
    same swarm, the next number, and the height right after its last.
    """
    if not block_hashes:
        raise LocalProtocolError("a checkpoint covers at least one block")
    if prev is None:
        prev_hash = ZERO_HASH
    else:
        if not isinstance(prev, Checkpoint):
            raise LocalProtocolError(f"prev must be a Checkpoint or None, got {type(prev).__name__}")
        if prev.swarm_id != swarm_id:
            raise LocalProtocolError("prev belongs to another swarm")
        if number != prev.number + 1:
            raise LocalProtocolError(f"checkpoint {number} does not follow checkpoint {prev.number}")
        if first_height != prev.last_height + 1:
            raise LocalProtocolError(
                f"first_height {first_height} does not follow prev.last_height {prev.last_height}"
            )
        prev_hash = prev.hash()
    if not is_uint(first_height):
        raise LocalProtocolError(f"first_height must be a uint64, got {first_height!r}")
    last_height = first_height + len(block_hashes) - 1
    return Checkpoint(swarm_id, number, first_height, last_height, merkle_root(block_hashes),
                      validator_set_hash, prev_hash)
