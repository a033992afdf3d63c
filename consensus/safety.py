"""Safety rules: the one holder of the signing key (as Diem's SafetyRules).

A validator must never sign two different messages for the same (height, round, step),
nor go back to an earlier step, also across a crash. So signing is two-phase:

1. ``authorize(msg)`` checks the message against the last authorised (height, round,
   step, value) and returns the new ``SafetyState``; the core emits it as a
   ``PersistVote`` effect.
2. Once the driver reports it durable (``VotePersisted``), ``persisted(state)`` raises the
   durable watermark, and only then will ``sign_*`` sign a message at or below it.

After a restart, the rules are rebuilt from the last persisted state: re-signing that
exact message is allowed (idempotent), anything conflicting or earlier is refused with
``ConflictingVoteError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.signing

from consensus.errors import ConflictingVoteError, LocalProtocolError, RemoteProtocolError
from consensus.types import HASH_BYTES, Proposal, SignedProposal, SignedVote, Step, Vote, pack, unpack


@dataclass(frozen=True, slots=True, order=True)
class SafetyState:
    """The last message this validator authorised to sign."""

    height: int
    round: int
    step: Step
    value: bytes | None  # block hash (proposal or vote), or nil
    # The lock (Tendermint L38-L39) at that moment: a validator that forgot its lock in
    # a crash could prevote against it, as a Byzantine one would ("amnesia").
    locked_round: int = -1
    locked_value: bytes | None = None

    def __post_init__(self) -> None:
        for v in (self.value, self.locked_value):
            if v is not None and len(v) != HASH_BYTES:
                raise LocalProtocolError("a safety state's values are block hashes or nil")
        if (self.locked_round == -1) != (self.locked_value is None):
            raise LocalProtocolError("a lock has both a round and a value, or neither")

    @property
    def position(self) -> tuple[int, int, int]:
        return (self.height, self.round, int(self.step))

    def encode(self) -> bytes:
        return pack([self.height, self.round, int(self.step), self.value, self.locked_round, self.locked_value])

    @classmethod
    def decode(cls, data: bytes) -> SafetyState:
        """Our own persisted state: corruption is a local problem, not a peer's."""
        try:
            height, round, step, value, locked_round, locked_value = unpack(data, "safety_state")
            return cls(height, round, Step(step), value, locked_round, locked_value)
        except (ValueError, TypeError, RemoteProtocolError) as exc:
            raise LocalProtocolError(f"corrupt safety state: {exc}") from None


Signable = Vote | Proposal


def _position_and_value(msg: Signable) -> tuple[tuple[int, int, int], bytes | None]:
    if isinstance(msg, Proposal):
        return (msg.height, msg.round, int(Step.PROPOSE)), msg.block.hash
    return (msg.height, msg.round, int(msg.step)), msg.value


class SafetyRules:
    def __init__(self, seed: bytes, swarm_id: bytes, validator: int, persisted: SafetyState | None = None) -> None:
        self._key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)
        self.swarm_id = swarm_id
        self.validator = validator
        self.authorized = persisted  # highest authorised (may not be durable yet)
        self.durable = persisted  # highest known durable
        # Everything authorised at the current height: signable again (re-broadcast)
        # once durable, as it can never conflict with itself.
        self._pending: dict[tuple[int, int, int], bytes | None] = {}

    def authorize(self, msg: Signable, lock: tuple[int, bytes | None] = (-1, None)) -> SafetyState:
        """Check ``msg`` against everything authorised before; the state to persist
        (with the caller's current ``lock``, so that it survives a restart too)."""
        pos, value = _position_and_value(msg)
        last = self.authorized
        if last is not None:
            if pos < last.position:
                raise ConflictingVoteError(f"{_describe(pos)} is before {_describe(last.position)}, already signed")
            if pos == last.position and value != last.value:
                raise ConflictingVoteError(f"already signed another value at {_describe(pos)}")
        state = SafetyState(pos[0], pos[1], Step(pos[2]), value, *lock)
        self.authorized = state
        if self._pending and next(iter(self._pending))[0] < pos[0]:
            self._pending.clear()  # a new height: what was authorised below it is done
        self._pending[pos] = value
        return state

    def persisted(self, state: SafetyState) -> None:
        """The driver made ``state`` durable."""
        if self.durable is None or state.position > self.durable.position:
            self.durable = state

    def sign_vote(self, vote: Vote) -> SignedVote:
        if vote.validator != self.validator:
            raise LocalProtocolError(f"these rules sign for validator {self.validator}, not {vote.validator}")
        self._check_signable(vote)
        return SignedVote(vote, self._key.sign(vote.signing_bytes(self.swarm_id)).signature)

    def sign_proposal(self, proposal: Proposal) -> SignedProposal:
        if proposal.proposer != self.validator:
            raise LocalProtocolError("a proposal is signed only by its own proposer")
        if proposal.valid_round == -1 and proposal.block.proposer != self.public_key:
            raise LocalProtocolError("a fresh proposal must carry a block built by its proposer")
        self._check_signable(proposal)
        return SignedProposal(proposal, self._key.sign(proposal.signing_bytes(self.swarm_id)).signature)

    def _check_signable(self, msg: Signable) -> None:
        pos, value = _position_and_value(msg)
        durable = self.durable
        if durable is None or pos > durable.position:
            raise LocalProtocolError(f"{_describe(pos)} is not persisted yet: persist before signing")
        authorised_now = self._pending.get(pos, ...) == value
        is_last = pos == durable.position and value == durable.value
        if not (authorised_now or is_last):
            raise ConflictingVoteError(f"{_describe(pos)} with this value was never authorised")


def _describe(pos: tuple[int, int, int]) -> str:
    return f"height {pos[0]} round {pos[1]} {Step(pos[2]).name.lower()}"
