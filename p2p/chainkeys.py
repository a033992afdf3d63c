"""A validator's chain key: the secp256k1 key it signs checkpoints with for an EVM chain.

It is derived from the same 32-byte seed as the validator's ed25519 identity (one key
file, nothing more to back up or lose): ``k = sha256(domain || seed || counter)``,
the first counter (from 0) that gives ``0 < k < n``. Its Ethereum address is listed
in the swarm file (``validators[*].chain_address``) and so is part of the swarm id.

Signatures are over a 32-byte digest (the contract's own, see
``consensus.anchor.digest``), 65 bytes ``r || s || v`` with ``v`` in {27, 28} and ``s``
in the lower half of the curve order, as Solidity's ``ecrecover`` wants them.
"""

from __future__ import annotations

import hashlib
import re

from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import to_checksum_address

from p2p.errors import LocalProtocolError

CHAIN_KEY_DOMAIN = b"conclave/chain-key/v1\x00"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGNATURE_BYTES = 65
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")


def chain_private_key(seed: bytes) -> bytes:
    """The 32-byte secp256k1 private key derived from an identity's ed25519 seed."""
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise LocalProtocolError("a chain key is derived from a 32-byte seed")
    for counter in range(256):  # one try suffices but for a chance of about 2**-128
        k = hashlib.sha256(CHAIN_KEY_DOMAIN + seed + bytes([counter])).digest()
        if 0 < int.from_bytes(k, "big") < SECP256K1_N:
            return k
    raise LocalProtocolError("no valid secp256k1 key from this seed")  # pragma: no cover


def chain_address(seed: bytes) -> str:
    """The checksummed Ethereum address of the chain key derived from ``seed``."""
    return keys.PrivateKey(chain_private_key(seed)).public_key.to_checksum_address()


def sign_digest(seed: bytes, digest: bytes) -> bytes:
    """``r || s || v`` (v = 27 or 28) over the 32-byte ``digest``, low-s."""
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise LocalProtocolError("a chain signature is over a 32-byte digest")
    sig = keys.PrivateKey(chain_private_key(seed)).sign_msg_hash(digest)
    s = sig.s
    v = sig.v
    if s > SECP256K1_N // 2:  # libsecp256k1 already normalises; keep ecrecover's rule explicit
        s, v = SECP256K1_N - s, 1 - v
    return sig.r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + v])


def recover_address(digest: bytes, signature: bytes) -> str | None:
    """The checksummed address that made ``signature`` over ``digest``, or None if it is
    not a valid signature (wrong length, v not 27/28, high s, no such point)."""
    if not (isinstance(digest, bytes) and len(digest) == 32 and isinstance(signature, bytes)
            and len(signature) == SIGNATURE_BYTES):
        return None
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    if v not in (27, 28) or not 0 < r < SECP256K1_N or not 0 < s <= SECP256K1_N // 2:
        return None
    try:
        public = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError):
        return None
    return public.to_checksum_address()


def normalise_address(text: object) -> str | None:
    """The checksummed form of an address written as ``0x`` and 40 hex digits (any case,
    but a mixed-case one must carry a valid checksum), or None."""
    if not isinstance(text, str) or not _ADDRESS.match(text):
        return None
    checksummed = to_checksum_address(text.lower())
    body = text[2:]
    if body != body.lower() and body != body.upper() and text != checksummed:
        return None  # mixed case with a wrong checksum: a typo, most likely
    return checksummed
