"""The hash chain of decided blocks, in memory: height -> block hash, each linking the last.

Height 0 is the genesis (its hash is given, e.g. the swarm's genesis-file hash, and is
the ``prev_hash`` of height 1); decided blocks start at height 1. Nothing is ever
removed: a decision is final. Proofs of inclusion are made over the hashes of a
checkpoint's height range, in order, matching ``consensus.checkpoint``.
"""

from __future__ import annotations

from consensus.errors import LocalProtocolError
from consensus.merkle import HASH_BYTES, InclusionProof, inclusion_proof
from consensus.types import is_hash, is_uint


class BlockChain:
    def __init__(self, genesis_hash: bytes) -> None:
        if not is_hash(genesis_hash):
            raise LocalProtocolError(f"genesis_hash must be {HASH_BYTES} bytes")
        self._hashes: list[bytes] = [genesis_hash]  # index = height

    @property
    def height(self) -> int:
        """The last decided height (0 before the first block)."""
        return len(self._hashes) - 1

    @property
    def tip(self) -> bytes:
        """The hash at :attr:`height` (the genesis hash before the first block)."""
        return self._hashes[-1]

    @property
    def genesis_hash(self) -> bytes:
        return self._hashes[0]

    def append(self, height: int, block_hash: bytes, prev_hash: bytes) -> None:
        """Add the block decided at ``height``; it must be the next one and link the tip."""
        if not is_uint(height) or height != self.height + 1:
            raise LocalProtocolError(f"height mismatch: got {height!r}, expected {self.height + 1}")
        if not is_hash(block_hash):
            raise LocalProtocolError(f"block_hash must be {HASH_BYTES} bytes")
        if not is_hash(prev_hash):
            raise LocalProtocolError(f"prev_hash must be {HASH_BYTES} bytes")
        if prev_hash != self.tip:
            raise LocalProtocolError(
                f"prev_hash mismatch at height {height}: got {prev_hash.hex()}, "
                f"but the hash at height {self.height} is {self.tip.hex()}"
            )
        self._hashes.append(block_hash)

    def hash_at(self, height: int) -> bytes:
        """The block hash at ``height`` (0: the genesis hash)."""
        self._check_range(height, height)
        return self._hashes[height]

    def hashes(self, first: int, last: int) -> list[bytes]:
        """The block hashes at heights ``first..last``, both inclusive, in order."""
        self._check_range(first, last)
        return self._hashes[first:last + 1]

    def proof(self, height: int, first: int, last: int) -> InclusionProof:
        """The proof that the block at ``height`` is in the Merkle tree over ``first..last``
        (a checkpoint's range): verify it against that checkpoint's root."""
        self._check_range(first, last)
        if not is_uint(height) or not first <= height <= last:
            raise LocalProtocolError(f"height {height!r} is outside the range {first}..{last}")
        return inclusion_proof(self.hashes(first, last), height - first)

    def _check_range(self, first: int, last: int) -> None:
        if not (is_uint(first) and is_uint(last)) or not first <= last <= self.height:
            raise LocalProtocolError(f"range {first!r}..{last!r} is not within 0..{self.height}")
