"""The digest a validator's chain key signs for a checkpoint, exactly as the contract's
``digest()`` computes it: keccak256 of the ABI encoding of the domain, the chain id, the
registry's address, the swarm id and the checkpoint's fields. Binding the chain id and
the contract address means a quorum's signatures for one deployment cannot be replayed
to another; binding the swarm id, not to another swarm's registry either.
"""

from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from consensus.checkpoint import Checkpoint
from consensus.errors import LocalProtocolError

DOMAIN = keccak(b"conclave/checkpoint/v1")
_TYPES = ["bytes32", "uint256", "address", "bytes32", "uint256", "uint64", "uint64", "bytes32", "bytes32", "bytes32"]


def checkpoint_digest(checkpoint: Checkpoint, chain_id: int, registry: str) -> bytes:
    if not isinstance(chain_id, int) or chain_id <= 0:
        raise LocalProtocolError(f"chain id must be a positive integer, got {chain_id!r}")
    c = checkpoint
    return keccak(encode(_TYPES, [
        DOMAIN, chain_id, to_checksum_address(registry), c.swarm_id, c.number, c.first_height, c.last_height,
        c.root, c.validator_set_hash, c.prev_checkpoint_hash,
    ]))
