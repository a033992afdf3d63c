"""What goes into the core (inputs, named in the past tense) and what comes out
(effects, in the imperative). All frozen, all validated on construction."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from consensus.errors import LocalProtocolError
from consensus.evidence import Evidence
from consensus.qc import QuorumCertificate
from consensus.safety import SafetyState
from consensus.types import Block, SignedProposal, SignedVote, VoteType


class TimeoutKind(enum.IntEnum):
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3
    REBROADCAST = 4  # not in the paper: resend our messages when a round makes no progress


def _position(height: int, round: int) -> None:
    if not isinstance(height, int) or height < 1 or not isinstance(round, int) or round < 0:
        raise LocalProtocolError(f"height must be >= 1 and round >= 0, got {height}/{round}")


# --- inputs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """Begin the current height (Tendermint L10: upon start do StartRound(0))."""


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    proposal: SignedProposal


@dataclass(frozen=True, slots=True)
class VoteReceived:
    vote: SignedVote


@dataclass(frozen=True, slots=True)
class TimeoutFired:
    kind: TimeoutKind
    height: int
    round: int

    def __post_init__(self) -> None:
        _position(self.height, self.round)


@dataclass(frozen=True, slots=True)
class ValueReady:
    """The application's answer to ``RequestValue``: the block to propose."""

    height: int
    round: int
    block: Block

    def __post_init__(self) -> None:
        _position(self.height, self.round)


@dataclass(frozen=True, slots=True)
class ValueValidated:
    """The application's answer to ``ValidateValue`` (Tendermint's valid(v))."""

    height: int
    block_hash: bytes
    valid: bool


@dataclass(frozen=True, slots=True)
class VotePersisted:
    """The driver made ``state`` durable (the answer to ``PersistVote``)."""

    state: SafetyState


@dataclass(frozen=True, slots=True)
class DecisionReceived:
    """A decided block and its commit certificate, fetched while catching up."""

    block: Block
    certificate: QuorumCertificate

    def __post_init__(self) -> None:
        if self.certificate.type is not VoteType.PRECOMMIT or self.certificate.value != self.block.hash:
            raise LocalProtocolError("a decision's certificate must be precommits for its block")


Input = (
    Started | ProposalReceived | VoteReceived | TimeoutFired | ValueReady | ValueValidated | VotePersisted
    | DecisionReceived
)


# --- effects -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    message: SignedProposal | SignedVote


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    kind: TimeoutKind
    height: int
    round: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class RequestValue:
    """Ask the application for a block to propose (Tendermint L18: getValue())."""

    height: int
    round: int
    prev_hash: bytes


@dataclass(frozen=True, slots=True)
class ValidateValue:
    """Ask the application whether ``block`` is valid; answer with ``ValueValidated``."""

    height: int
    round: int
    block: Block


@dataclass(frozen=True, slots=True)
class PersistVote:
    """Make ``state`` durable, then answer ``VotePersisted``: nothing is signed before."""

    state: SafetyState


@dataclass(frozen=True, slots=True)
class Decide:
    height: int
    round: int
    block: Block
    certificate: QuorumCertificate


@dataclass(frozen=True, slots=True)
class ReportEvidence:
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class ReportRoundChange:
    height: int
    round: int
    proposer: int


@dataclass(frozen=True, slots=True)
class RequestDecision:
    """Others have moved past ``height``: fetch its block and commit certificate."""

    height: int


Effect = (
    Broadcast | ScheduleTimeout | RequestValue | ValidateValue | PersistVote | Decide | ReportEvidence
    | ReportRoundChange | RequestDecision
)
