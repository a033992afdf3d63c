"""Heights, rounds, validator sets, blocks, proposals and votes, with the canonical
byte encodings that are hashed and signed.

Every signed encoding starts with a domain tag naming the protocol, the message type and
its version, and carries the swarm id, so a signature made for one swarm or one kind of
message is useless anywhere else. Encodings are msgpack arrays (bin for bytes).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

import msgpack
import nacl.exceptions
import nacl.signing

from consensus.errors import LocalProtocolError, RemoteProtocolError

HASH_BYTES = 32
KEY_BYTES = 32
SIG_BYTES = 64
NIL = None  # a vote for no block

BLOCK_DOMAIN = b"conclave/block/v1\x00"
PROPOSAL_DOMAIN = b"conclave/proposal/v1\x00"
VOTE_DOMAIN = b"conclave/vote/v1\x00"
VALSET_DOMAIN = b"conclave/validator-set/v1\x00"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, what: str) -> list:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise RemoteProtocolError(f"bad_{what}", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, list):
        raise RemoteProtocolError(f"bad_{what}", "not an array")
    return obj


def is_uint(value: object) -> bool:
    # bool is an int to Python; msgpack's true must not spell 1.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_bytes(value: object, n: int) -> bool:
    return isinstance(value, bytes) and len(value) == n


def is_hash(value: object) -> bool:
    return is_bytes(value, HASH_BYTES)


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if not is_bytes(public_key, KEY_BYTES) or not is_bytes(signature, SIG_BYTES):
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


class VoteType(enum.IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


class Step(enum.IntEnum):
    """A round's steps, ordered: a validator's own messages only ever move forward."""

    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


# --- validator set -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validator:
    public_key: bytes
    power: int

    def __post_init__(self) -> None:
        if not is_bytes(self.public_key, KEY_BYTES):
            raise LocalProtocolError(f"a validator's public key is {KEY_BYTES} bytes")
        if not is_uint(self.power) or self.power == 0:
            raise LocalProtocolError(f"voting power must be a positive integer, got {self.power!r}")


@dataclass(frozen=True, slots=True)
class ValidatorSet:
    """An ordered validator set. Thresholds are strict: a quorum holds *more than* 2/3
    of the power, and f+1 means *more than* 1/3."""

    validators: tuple[Validator, ...]
    total_power: int = field(init=False)
    _index: dict[bytes, int] = field(init=False, repr=False, compare=False)
    _cumulative: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.validators:
            raise LocalProtocolError("a validator set needs at least one validator")
        index = {v.public_key: i for i, v in enumerate(self.validators)}
        if len(index) != len(self.validators):
            raise LocalProtocolError("a validator appears twice in the set")
        cumulative, total = [], 0
        for v in self.validators:
            total += v.power
            cumulative.append(total)
        object.__setattr__(self, "total_power", total)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_cumulative", tuple(cumulative))

    def __len__(self) -> int:
        return len(self.validators)

    def index_of(self, public_key: bytes) -> int | None:
        return self._index.get(public_key)

    def is_quorum(self, power: int) -> bool:
        """More than 2/3 of the total power (Tendermint's 2f+1)."""
        return 3 * power > 2 * self.total_power

    def is_one_third(self, power: int) -> bool:
        """More than 1/3 of the total power (Tendermint's f+1): at least one honest."""
        return 3 * power > self.total_power

    def power_of(self, indices: set[int] | frozenset[int]) -> int:
        return sum(self.validators[i].power for i in indices)

    def proposer(self, height: int, round: int) -> int:
        """Weighted round robin: slot (height + round) mod total power, each validator
        holding as many consecutive slots as it has power. Deterministic, and every
        validator is proposer in proportion to its power."""
        slot = (height + round) % self.total_power
        lo, hi = 0, len(self._cumulative) - 1
        while lo < hi:  # first index whose cumulative power exceeds the slot
            mid = (lo + hi) // 2
            if self._cumulative[mid] > slot:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def hash(self) -> bytes:
        return sha256(VALSET_DOMAIN + pack([[v.public_key, v.power] for v in self.validators]))


# --- blocks --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """What consensus orders at one height. The payload is opaque here; the application
    validates it (``ValidateValue``)."""

    height: int
    prev_hash: bytes
    proposer: bytes  # public key
    payload: bytes
    hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_uint(self.height) or self.height == 0:
            raise LocalProtocolError(f"block height must be >= 1, got {self.height!r}")
        if not is_bytes(self.prev_hash, HASH_BYTES):
            raise LocalProtocolError("prev_hash must be 32 bytes")
        if not is_bytes(self.proposer, KEY_BYTES):
            raise LocalProtocolError("proposer must be a 32-byte public key")
        if not isinstance(self.payload, bytes):
            raise LocalProtocolError("payload must be bytes")
        object.__setattr__(self, "hash", sha256(BLOCK_DOMAIN + self._fields()))

    def _fields(self) -> bytes:
        return pack([self.height, self.prev_hash, self.proposer, self.payload])

    def encode(self) -> bytes:
        return self._fields()

    @classmethod
    def decode(cls, data: bytes) -> Block:
        obj = unpack(data, "block")
        try:
            return cls(*obj)
        except (TypeError, LocalProtocolError) as exc:
            raise RemoteProtocolError("bad_block", str(exc)) from None


# --- proposals and votes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proposal:
    """⟨PROPOSAL, h, r, v, vr⟩ (Tendermint L19): ``valid_round`` is -1 or the round in
    which the proposer saw the block get a prevote quorum."""

    height: int
    round: int
    block: Block
    valid_round: int
    proposer: int  # index in the validator set

    def __post_init__(self) -> None:
        if not is_uint(self.height) or self.height == 0 or not is_uint(self.round):
            raise LocalProtocolError("proposal height must be >= 1 and round >= 0")
        if not isinstance(self.block, Block) or self.block.height != self.height:
            raise LocalProtocolError("a proposal's block must be of the proposal's height")
        if not isinstance(self.valid_round, int) or isinstance(self.valid_round, bool):
            raise LocalProtocolError("valid_round must be an int")
        if not (self.valid_round == -1 or 0 <= self.valid_round < self.round):
            raise LocalProtocolError(f"valid_round {self.valid_round} must be -1 or below round {self.round}")
        if not is_uint(self.proposer):
            raise LocalProtocolError("proposer must be a validator index")

    def signing_bytes(self, swarm_id: bytes) -> bytes:
        return PROPOSAL_DOMAIN + pack([swarm_id, self.height, self.round, self.block.hash, self.valid_round,
                                       self.proposer])


@dataclass(frozen=True, slots=True)
class SignedProposal:
    proposal: Proposal
    signature: bytes

    def __post_init__(self) -> None:
        if not is_bytes(self.signature, SIG_BYTES):
            raise LocalProtocolError(f"a signature is {SIG_BYTES} bytes")

    def verify(self, valset: ValidatorSet, swarm_id: bytes) -> bool:
        p = self.proposal
        if p.proposer >= len(valset):
            return False
        key = valset.validators[p.proposer].public_key
        # A fresh proposal (valid_round -1) must be built by its signer; a re-proposal
        # of an earlier round's valid value (L16) carries the block as first proposed.
        if p.valid_round == -1 and p.block.proposer != key:
            return False
        return verify_ed25519(key, p.signing_bytes(swarm_id), self.signature)

    def encode(self) -> bytes:
        p = self.proposal
        return pack([p.height, p.round, p.block.encode(), p.valid_round, p.proposer, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedProposal:
        obj = unpack(data, "proposal")
        try:
            height, round, block, valid_round, proposer, signature = obj
            return cls(Proposal(height, round, Block.decode(block), valid_round, proposer), signature)
        except (TypeError, ValueError, LocalProtocolError) as exc:
            raise RemoteProtocolError("bad_proposal", str(exc)) from None


@dataclass(frozen=True, slots=True)
class Vote:
    """⟨PREVOTE|PRECOMMIT, h, r, id(v) or nil⟩ from validator ``validator``."""

    type: VoteType
    height: int
    round: int
    value: bytes | None  # block hash, or NIL
    validator: int  # index in the validator set

    def __post_init__(self) -> None:
        if not isinstance(self.type, VoteType):
            raise LocalProtocolError(f"vote type must be a VoteType, got {self.type!r}")
        if not is_uint(self.height) or self.height == 0 or not is_uint(self.round):
            raise LocalProtocolError("vote height must be >= 1 and round >= 0")
        if self.value is not None and not is_bytes(self.value, HASH_BYTES):
            raise LocalProtocolError("a vote's value is a 32-byte block hash or nil")
        if not is_uint(self.validator):
            raise LocalProtocolError("validator must be an index")

    @property
    def step(self) -> Step:
        return Step.PREVOTE if self.type is VoteType.PREVOTE else Step.PRECOMMIT

    def signing_bytes(self, swarm_id: bytes) -> bytes:
        return VOTE_DOMAIN + pack([swarm_id, int(self.type), self.height, self.round, self.value, self.validator])


@dataclass(frozen=True, slots=True)
class SignedVote:
    vote: Vote
    signature: bytes

    def __post_init__(self) -> None:
        if not is_bytes(self.signature, SIG_BYTES):
            raise LocalProtocolError(f"a signature is {SIG_BYTES} bytes")

    def verify(self, valset: ValidatorSet, swarm_id: bytes) -> bool:
        v = self.vote
        if v.validator >= len(valset):
            return False
        return verify_ed25519(valset.validators[v.validator].public_key, v.signing_bytes(swarm_id), self.signature)

    def encode(self) -> bytes:
        v = self.vote
        return pack([int(v.type), v.height, v.round, v.value, v.validator, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedVote:
        obj = unpack(data, "vote")
        try:
            vtype, height, round, value, validator, signature = obj
            return cls(Vote(VoteType(vtype), height, round, value, validator), signature)
        except (TypeError, ValueError, LocalProtocolError) as exc:
            raise RemoteProtocolError("bad_vote", str(exc)) from None
