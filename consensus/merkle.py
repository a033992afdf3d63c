"""Merkle trees over block hashes, in the style of RFC 6962 (Certificate Transparency).

    MTH([])      = SHA-256(b"")
    MTH([d0])    = SHA-256(0x00 || d0)                          (leaf hash)
    MTH(D[0:n])  = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  (node hash)

where ``k`` is the largest power of two strictly smaller than ``n``. An odd leaf is never
duplicated, so ``[a, b, c]`` and ``[a, b, c, c]`` have different roots (the ambiguity of
CVE-2012-2459 cannot arise), and the 0x00/0x01 prefixes keep a leaf from posing as an
inner node (second-preimage attack).

Inclusion proofs are RFC 6962's audit paths (sibling hashes, deepest first), checked
with the algorithm of RFC 9162, section 2.1.3.2. A proof binds the leaf to its index and
to the root; the tree *size* is bound to the root only by whoever signed the root (here:
the checkpoint, whose height range fixes the size). Some proofs verify under more than
one size, e.g. leaf 0 of a 3-leaf tree and leaf 0 of a 4-leaf tree have the same path
shape, so callers must check ``proof.size`` against what the signed root commits to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.types import HASH_BYTES, is_hash, is_uint

MAX_TREE_SIZE = 2**64 - 1
MAX_PATH_LENGTH = 64  # a tree of at most 2**64 - 1 leaves is at most 64 levels deep
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over ``leaves`` (each a 32-byte hash), in order."""
    hashes = _leaf_hashes(leaves)
    return _root(hashes, 0, len(hashes)) if hashes else EMPTY_ROOT


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Where a leaf sits (``index`` in a tree of ``size`` leaves) and its audit path."""

    index: int
    size: int
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not is_uint(self.size) or not 1 <= self.size <= MAX_TREE_SIZE:
            raise LocalProtocolError(f"size must be an int in [1, 2**64), got {self.size!r}")
        if not is_uint(self.index) or self.index >= self.size:
            raise LocalProtocolError(f"index must be an int in [0, size={self.size}), got {self.index!r}")
        if not isinstance(self.path, tuple) or len(self.path) > MAX_PATH_LENGTH:
            raise LocalProtocolError(f"path must be a tuple of at most {MAX_PATH_LENGTH} hashes")
        if not all(is_hash(p) for p in self.path):
            raise LocalProtocolError(f"every path element must be {HASH_BYTES} bytes")

    def encode(self) -> bytes:
        return msgpack.packb([self.index, self.size, list(self.path)], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> InclusionProof:
        """Parse :meth:`encode`'s output; ``RemoteProtocolError("bad_inclusion_proof")`` otherwise."""
        obj = _unpack(data, "bad_inclusion_proof")
        if not isinstance(obj, list) or len(obj) != 3 or not isinstance(obj[2], list):
            raise RemoteProtocolError("bad_inclusion_proof", "expected [index, size, [path...]]")
        try:
            proof = cls(obj[0], obj[1], tuple(obj[2]))
        except LocalProtocolError as exc:
            raise RemoteProtocolError("bad_inclusion_proof", str(exc)) from None
        if proof.encode() != data:
            raise RemoteProtocolError("bad_inclusion_proof", "not the canonical encoding")
        return proof


def inclusion_proof(leaves: Sequence[bytes], index: int) -> InclusionProof:
    """The audit path of ``leaves[index]`` (RFC 6962, section 2.1.1)."""
    hashes = _leaf_hashes(leaves)
    if not is_uint(index) or index >= len(hashes):
        raise LocalProtocolError(f"index {index!r} out of range for {len(hashes)} leaves")
    path: list[bytes] = []
    _path(hashes, 0, len(hashes), index, path)
    return InclusionProof(index, len(hashes), tuple(path))


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> bool:
    """True iff ``proof`` shows ``leaf`` at ``proof.index`` under ``root``. Never raises."""
    if not (is_hash(leaf) and is_hash(root) and isinstance(proof, InclusionProof)):
        return False
    fn, sn = proof.index, proof.size - 1
    r = leaf_hash(leaf)
    for p in proof.path:
        if sn == 0:  # path longer than the tree is deep
            return False
        if fn & 1 or fn == sn:  # p is a left sibling (or we are a right-edge node)
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:  # climb the levels where we had no sibling
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root  # sn != 0: path shorter than the tree is deep


# --- internals ---------------------------------------------------------------------


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return hashes[lo]
    mid = lo + _split(hi - lo)
    return node_hash(_root(hashes, lo, mid), _root(hashes, mid, hi))


def _path(hashes: Sequence[bytes], lo: int, hi: int, m: int, out: list[bytes]) -> None:
    if hi - lo == 1:
        return
    k = _split(hi - lo)
    if m < k:
        _path(hashes, lo, lo + k, m, out)
        out.append(_root(hashes, lo + k, hi))
    else:
        _path(hashes, lo + k, hi, m - k, out)
        out.append(_root(hashes, lo, lo + k))


def _leaf_hashes(leaves: Sequence[bytes]) -> list[bytes]:
    for i, leaf in enumerate(leaves):
        if not is_hash(leaf):
            raise LocalProtocolError(f"leaf {i} must be {HASH_BYTES} bytes, got {leaf!r:.40}")
    return [leaf_hash(leaf) for leaf in leaves]


def _unpack(data: bytes, reason: str) -> object:
    if not isinstance(data, bytes):
        raise RemoteProtocolError(reason, "expected bytes")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=len(data), max_str_len=0)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise RemoteProtocolError(reason, f"not msgpack: {type(exc).__name__}") from None
