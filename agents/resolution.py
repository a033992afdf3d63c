"""Resolutions: how a motion ended, in a form any validator can check without an LLM.

The proposer of a height packs resolved motions into its block; every other validator
must judge that block before voting for it, cheaply and without running a model
(DESIGN.md, "The flow of one motion", steps 3 and 4). So a resolution carries all the
evidence its judgement needs and asks no one to be trusted:

- the motion's envelope exactly as received, so the submitter's signature can be
  checked and the motion id (the envelope's message id) recomputed by anyone;
- every counted ballot beside the signed commitment it opens, so anyone can see later
  that the ballot counted is the one committed to before the reveals;
- the outcome, the tally and why the motion was closed, which a validator recomputes
  from the ballots and compares rather than believes.

An option wins with strictly more than 2/3 of the swarm's *total* power, not of the
power that happened to reveal: otherwise two of four equal validators could decide a
motion alone whenever the other two were slow. A quorum closing uses the same strict
rule as the consensus's own quorums (``ValidatorSet.is_quorum``). Whether a motion's
deadline has passed is a local judgement: this module has no clock, so the caller
supplies it (``deadline_passed``).

Wire form (msgpack, bytes as bin)::

    resolution = [motion_envelope, [[commitment.encode(), reveal.encode()], ...],
                  outcome, [power per option...], closing]
    block payload = [PAYLOAD_VERSION, [resolution, ...]]   # 1 to 256 resolutions

Errors: building a resolution wrongly is our misuse (``LocalProtocolError``); bytes
that are not a resolution are the sender's fault (``RemoteProtocolError``,
``BAD_PAYLOAD``); a well-formed resolution that does not hold up is
``InvalidResolution`` (also a ``RemoteProtocolError``), whose ``field`` names the check.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import msgpack

from agents.ballot import Ballot
from agents.commitment import Commitment, Reveal, RevealMismatch, check_reveal
from consensus.types import is_uint
from p2p.envelope import ENVELOPE_VERSION, Envelope, MessageType, decode_envelope
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.messages import MAX_OPTION_LEN, MAX_OPTIONS, NO_SUPERMAJORITY, Motion
from p2p.swarmfile import SwarmConfig

PAYLOAD_VERSION = 1
MAX_RESOLUTIONS_PER_BLOCK = 256
_RESOLUTION_FIELDS = 5
_PAYLOAD_FIELDS = 2


class Closing(enum.IntEnum):
    """Why a motion was closed. Numbers are part of the block format: never reuse one."""

    QUORUM = 1  # ballots revealed from validators holding more than 2/3 of the power
    DEADLINE = 2  # its deadline passed with fewer


class InvalidResolution(RemoteProtocolError):
    """A well-formed resolution that a validator must refuse. ``field`` names the check:
    ``motion_envelope``, ``motion_type``, ``swarm``, ``motion_signature``, ``motion``,
    ``commitment``, ``voter``, ``reveal.<RevealMismatch.field>``, ``ballot``, ``model``,
    ``tally``, ``outcome``, ``closing``; for a block, also ``payload``,
    ``duplicate_motion`` and ``already_decided``."""

    def __init__(self, field: str, why: str, motion_id: bytes | None = None) -> None:
        where = f"resolution of motion {motion_id.hex()[:16]}..." if motion_id else "resolution"
        super().__init__(RejectReason.BAD_PAYLOAD, f"{where}: {field}: {why}")
        self.field = field
        self.why = why
        self.motion_id = motion_id


def _bad(detail: str) -> NoReturn:
    raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, detail)


def _unpack(data: bytes, what: str) -> object:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        _bad(f"{what}: not msgpack ({type(exc).__name__})")


def _supermajority(power: int, total_power: int) -> bool:
    # Strict: exactly 2/3 is not enough, as for the consensus's quorums.
    return 3 * power > 2 * total_power


def _power_of(swarm: SwarmConfig) -> dict[bytes, int]:
    return {v.public_key: v.power for v in swarm.validators}


def _short(key: bytes) -> str:
    return key.hex()[:16] + "..."


# --- counting --------------------------------------------------------------------------


def tally(options: tuple[str, ...], ballots: Iterable[Ballot], power_of: Mapping[bytes, int],
          total_power: int) -> tuple[str, tuple[int, ...]]:
    """The outcome and the power behind each option (in ``options``' order).

    The outcome is the option holding more than 2/3 of ``total_power``, else
    ``NO_SUPERMAJORITY``. Raises ``LocalProtocolError`` on a voter counted twice, a voter
    without power, or a choice that is not an option."""
    if not is_uint(total_power) or total_power == 0:
        raise LocalProtocolError(f"tally: total power must be a positive integer, got {total_power!r}")
    powers = dict.fromkeys(options, 0)
    if len(powers) != len(options):
        raise LocalProtocolError(f"tally: options must be distinct, got {list(options)}")
    seen: set[bytes] = set()
    for ballot in ballots:
        if ballot.voter in seen:
            raise LocalProtocolError(f"tally: voter {_short(ballot.voter)} is counted twice")
        if ballot.voter not in power_of:
            raise LocalProtocolError(f"tally: voter {_short(ballot.voter)} is not a validator")
        if ballot.choice not in powers:
            raise LocalProtocolError(f"tally: choice {ballot.choice!r} is not one of {list(options)}")
        seen.add(ballot.voter)
        powers[ballot.choice] += power_of[ballot.voter]
    counts = tuple(powers.values())
    # Within the total, at most one option can pass 2/3: the outcome is never ambiguous.
    if sum(counts) > total_power:
        raise LocalProtocolError(f"tally: {sum(counts)} power revealed of a total of {total_power}")
    winners = [option for option, power in powers.items() if _supermajority(power, total_power)]
    return (winners[0] if winners else NO_SUPERMAJORITY), counts


# --- the resolution of one motion ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CastBallot:
    """A revealed ballot beside the commitment it opens."""

    commitment: Commitment
    reveal: Reveal

    def __post_init__(self) -> None:
        if not isinstance(self.commitment, Commitment):
            raise LocalProtocolError("a cast ballot's commitment must be a Commitment")
        if not isinstance(self.reveal, Reveal):
            raise LocalProtocolError("a cast ballot's reveal must be a Reveal")
        if self.reveal.ballot.voter != self.commitment.voter:
            raise LocalProtocolError("a cast ballot's reveal and commitment are from different voters")

    @property
    def voter(self) -> bytes:
        return self.commitment.voter

    @property
    def ballot(self) -> Ballot:
        return self.reveal.ballot

    def to_obj(self) -> list:
        return [self.commitment.encode(), self.reveal.encode()]

    @classmethod
    def from_obj(cls, obj: object) -> CastBallot:
        """Raises ``RemoteProtocolError(BAD_PAYLOAD)`` naming the bad part."""
        if not isinstance(obj, list) or len(obj) != 2 or not all(isinstance(part, bytes) for part in obj):
            _bad("must be an array of two bin (commitment, reveal)")
        commitment, reveal = Commitment.decode(obj[0]), Reveal.decode(obj[1])
        try:
            return cls(commitment, reveal)
        except LocalProtocolError as exc:
            _bad(str(exc))


@dataclass(frozen=True, slots=True)
class Resolution:
    """How one motion ended. Holds its shape by construction (types, ballots sorted by
    voter with each voter once, so one set of ballots has one encoding); whether it is
    *right* for a swarm is ``check_resolution``'s question."""

    motion_envelope: bytes  # Envelope.encode() of the MOTION, exactly as received
    ballots: tuple[CastBallot, ...]
    outcome: str
    tally: tuple[int, ...]
    closing: Closing

    def __post_init__(self) -> None:
        if not isinstance(self.motion_envelope, bytes):
            raise LocalProtocolError("motion_envelope must be bytes")
        if not isinstance(self.ballots, tuple) or not all(isinstance(c, CastBallot) for c in self.ballots):
            raise LocalProtocolError("ballots must be a tuple of CastBallot")
        voters = [c.voter for c in self.ballots]
        if any(a >= b for a, b in zip(voters, voters[1:])):
            raise LocalProtocolError("ballots must be sorted by voter, each voter once")
        if not isinstance(self.outcome, str) or not 1 <= len(self.outcome) <= MAX_OPTION_LEN:
            raise LocalProtocolError(f"outcome must be 1 to {MAX_OPTION_LEN} characters, got {self.outcome!r}")
        if not isinstance(self.tally, tuple) or not 2 <= len(self.tally) <= MAX_OPTIONS \
                or not all(is_uint(p) for p in self.tally):
            raise LocalProtocolError(f"tally must be 2 to {MAX_OPTIONS} non-negative integers, got {self.tally!r}")
        if not isinstance(self.closing, Closing):
            raise LocalProtocolError(f"closing must be a Closing, got {self.closing!r}")

    @property
    def envelope(self) -> Envelope:
        """Raises ``RemoteProtocolError`` if the bytes are no envelope (``check_resolution`` says so first)."""
        return decode_envelope(self.motion_envelope)

    @property
    def motion_id(self) -> bytes:
        return self.envelope.message_id

    @property
    def motion(self) -> Motion:
        return Motion.decode(self.envelope.payload)

    def revealed_power(self, power_of: Mapping[bytes, int]) -> int:
        unknown = [c.voter for c in self.ballots if c.voter not in power_of]
        if unknown:
            raise LocalProtocolError(f"voter {_short(unknown[0])} has no power in this validator set")
        return sum(power_of[c.voter] for c in self.ballots)

    def to_obj(self) -> list:
        return [self.motion_envelope, [c.to_obj() for c in self.ballots], self.outcome, list(self.tally),
                int(self.closing)]

    def encode(self) -> bytes:
        return msgpack.packb(self.to_obj(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes | list) -> Resolution:
        """From wire bytes or an already unpacked array (inside a block payload).
        Raises ``RemoteProtocolError(BAD_PAYLOAD, "resolution: ...")``."""
        obj = _unpack(data, "resolution") if isinstance(data, bytes) else data
        if not isinstance(obj, list) or len(obj) != _RESOLUTION_FIELDS:
            _bad(f"resolution: must be an array of {_RESOLUTION_FIELDS}")
        envelope, ballots, outcome, counts, closing = obj
        if not isinstance(ballots, list):
            _bad("resolution: ballots must be an array")
        if not isinstance(counts, list):
            _bad("resolution: tally must be an array")
        cast = tuple(_decode_cast(i, item) for i, item in enumerate(ballots))
        try:
            return cls(envelope, cast, outcome, tuple(counts), _closing(closing))
        except LocalProtocolError as exc:
            _bad(f"resolution: {exc}")


def _decode_cast(i: int, obj: object) -> CastBallot:
    try:
        return CastBallot.from_obj(obj)
    except RemoteProtocolError as exc:
        _bad(f"resolution: ballots[{i}]: {exc.detail}")


def _closing(value: object) -> Closing:
    # Closing(True) would be QUORUM: msgpack's true must not spell 1.
    if is_uint(value):
        try:
            return Closing(value)
        except ValueError:
            pass
    _bad(f"resolution: closing must be one of {[int(c) for c in Closing]}, got {value!r}")


def resolve(motion_envelope: bytes, cast: Iterable[CastBallot], swarm: SwarmConfig,
            closing: Closing) -> Resolution:
    """The resolution of a motion from the ballots revealed for it (in any order).

    Checks only what building needs (``LocalProtocolError``): the proposer should still
    run ``check_resolution`` on what it packs, as every validator will."""
    try:
        env = decode_envelope(motion_envelope)
        motion = Motion.decode(env.payload)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"resolve: not a motion envelope ({exc.detail})") from None
    if env.type != MessageType.MOTION:
        raise LocalProtocolError(f"resolve: envelope type {env.type} is not MOTION")
    ballots = tuple(sorted(cast, key=lambda c: c.voter))
    power_of = _power_of(swarm)
    outcome, counts = tally(motion.options, (c.ballot for c in ballots), power_of, swarm.total_power)
    res = Resolution(motion_envelope, ballots, outcome, counts, closing)
    if closing is Closing.QUORUM and not _supermajority(res.revealed_power(power_of), swarm.total_power):
        raise LocalProtocolError("resolve: a QUORUM closing needs ballots from more than 2/3 of the power")
    return res


def describe_tally(res: Resolution, swarm: SwarmConfig) -> str:
    """Short human form for logs, e.g. ``approve 3, reject 1 of 4``."""
    parts = [f"{option} {power}" for option, power in zip(res.motion.options, res.tally) if power]
    return f"{', '.join(parts) or 'none'} of {swarm.total_power}"


# --- block payload ---------------------------------------------------------------------


def _count_problem(n: int) -> str | None:
    # A block exists to resolve motions: one without any would only burn a height.
    if not 1 <= n <= MAX_RESOLUTIONS_PER_BLOCK:
        return f"a block holds 1 to {MAX_RESOLUTIONS_PER_BLOCK} resolutions, got {n}"
    return None


def encode_payload(resolutions: Sequence[Resolution]) -> bytes:
    problem = _count_problem(len(resolutions))
    if problem:
        raise LocalProtocolError(f"encode_payload: {problem}")
    if not all(isinstance(r, Resolution) for r in resolutions):
        raise LocalProtocolError("encode_payload: every item must be a Resolution")
    return msgpack.packb([PAYLOAD_VERSION, [r.to_obj() for r in resolutions]], use_bin_type=True)


def decode_payload(data: bytes) -> tuple[Resolution, ...]:
    """A block's resolutions. Raises ``RemoteProtocolError(BAD_PAYLOAD)`` naming the problem."""
    obj = _unpack(data, "block payload")
    if not isinstance(obj, list) or len(obj) != _PAYLOAD_FIELDS:
        _bad(f"block payload: must be an array of {_PAYLOAD_FIELDS} (version, resolutions)")
    version, items = obj
    if not is_uint(version) or version != PAYLOAD_VERSION:
        _bad(f"block payload: version {version!r}, this peer reads version {PAYLOAD_VERSION}")
    if not isinstance(items, list):
        _bad("block payload: resolutions must be an array")
    problem = _count_problem(len(items))
    if problem:
        _bad(f"block payload: {problem}")
    return tuple(_decode_resolution(i, item) for i, item in enumerate(items))


def _decode_resolution(i: int, obj: object) -> Resolution:
    if not isinstance(obj, list):
        _bad(f"block payload: resolutions[{i}]: must be an array")
    try:
        return Resolution.decode(obj)
    except RemoteProtocolError as exc:
        _bad(f"block payload: resolutions[{i}]: {exc.detail}")


# --- what a validator checks -----------------------------------------------------------


def check_resolution(res: Resolution, swarm: SwarmConfig, *, deadline_passed: Callable[[bytes], bool]) -> None:
    """Everything a validator checks without the LLM. Raises ``InvalidResolution``
    naming the first check that fails; returns if all pass.

    ``deadline_passed(motion_id)`` is the caller's own judgement of the motion's
    deadline; it is asked only for a DEADLINE closing."""
    motion_id, motion = _check_motion(res, swarm)
    # Each voter appears once: that is Resolution's own invariant, so not checked here.
    for cast in res.ballots:
        _check_cast(cast, motion, motion_id, swarm)
    _check_count(res, motion, motion_id, swarm)
    _check_closing(res, motion_id, swarm, deadline_passed)


def _check_motion(res: Resolution, swarm: SwarmConfig) -> tuple[bytes, Motion]:
    try:
        env = decode_envelope(res.motion_envelope)
    except RemoteProtocolError as exc:
        raise InvalidResolution("motion_envelope", exc.detail) from None
    if env.version != ENVELOPE_VERSION:
        raise InvalidResolution("motion_envelope", f"envelope version {env.version}")
    if env.type != MessageType.MOTION:
        raise InvalidResolution("motion_type", f"envelope type {env.type} is not MOTION")
    motion_id = env.message_id
    if env.swarm_id != swarm.swarm_id:
        raise InvalidResolution("swarm", "the motion is for another swarm", motion_id)
    if not env.signature_valid():
        raise InvalidResolution("motion_signature", "the motion envelope's signature does not verify", motion_id)
    try:
        return motion_id, Motion.decode(env.payload)
    except RemoteProtocolError as exc:
        raise InvalidResolution("motion", exc.detail, motion_id) from None


def _check_cast(cast: CastBallot, motion: Motion, motion_id: bytes, swarm: SwarmConfig) -> None:
    commitment, ballot, who = cast.commitment, cast.ballot, _short(cast.voter)
    if commitment.swarm_id != swarm.swarm_id:
        raise InvalidResolution("commitment", f"{who}'s commitment is for another swarm", motion_id)
    if commitment.motion_id != motion_id:
        raise InvalidResolution("commitment", f"{who}'s commitment is for another motion", motion_id)
    if swarm.validator_by_key(commitment.voter) is None:
        raise InvalidResolution("voter", f"{who} is not a validator of the swarm", motion_id)
    try:
        check_reveal(commitment, cast.reveal)
    except RevealMismatch as exc:
        raise InvalidResolution(f"reveal.{exc.field}", f"{who}: {exc}", motion_id) from None
    # check_reveal tied the ballot's swarm and motion ids to the commitment's, checked above;
    # the text and options are not in the id's reach, so a signed ballot could misquote them.
    if (ballot.motion_text, ballot.options) != (motion.text, motion.options):
        raise InvalidResolution("ballot", f"{who}'s ballot quotes another text or options than the motion",
                                motion_id)
    allowed = swarm.params.allowed_models
    if allowed and ballot.fingerprint.model_sha256 not in allowed:
        raise InvalidResolution("model", f"{who} ran model {ballot.fingerprint.model_sha256[:16]}..., "
                                "which the swarm does not allow", motion_id)


def _check_count(res: Resolution, motion: Motion, motion_id: bytes, swarm: SwarmConfig) -> None:
    outcome, counts = tally(motion.options, (c.ballot for c in res.ballots), _power_of(swarm), swarm.total_power)
    if res.tally != counts:
        raise InvalidResolution("tally", f"says {list(res.tally)}, the ballots give {list(counts)}", motion_id)
    if res.outcome != outcome:
        raise InvalidResolution("outcome", f"says {res.outcome!r}, the ballots give {outcome!r}", motion_id)


def _check_closing(res: Resolution, motion_id: bytes, swarm: SwarmConfig,
                   deadline_passed: Callable[[bytes], bool]) -> None:
    if res.closing is Closing.QUORUM:
        revealed = res.revealed_power(_power_of(swarm))
        if not _supermajority(revealed, swarm.total_power):
            raise InvalidResolution("closing", f"closed by quorum with {revealed} of {swarm.total_power} "
                                    "power revealed (needs more than 2/3)", motion_id)
    elif not deadline_passed(motion_id):
        raise InvalidResolution("closing", "deadline not passed", motion_id)


def check_payload(resolutions: Sequence[Resolution], swarm: SwarmConfig, *,
                  deadline_passed: Callable[[bytes], bool], already_decided: Callable[[bytes], bool]) -> None:
    """A block's resolutions, as a validator judges a proposal: each one checked, no
    motion resolved twice in the block, none resolved by an earlier block."""
    problem = _count_problem(len(resolutions))
    if problem:
        raise InvalidResolution("payload", problem)
    if len(resolutions) > swarm.params.max_resolutions_per_block:
        raise InvalidResolution("payload", f"{len(resolutions)} resolutions, the swarm allows "
                                f"{swarm.params.max_resolutions_per_block} per block")
    seen: set[bytes] = set()
    for res in resolutions:
        check_resolution(res, swarm, deadline_passed=deadline_passed)
        motion_id = res.motion_id
        if motion_id in seen:
            raise InvalidResolution("duplicate_motion", "the block resolves this motion twice", motion_id)
        if already_decided(motion_id):
            raise InvalidResolution("already_decided", "an earlier block resolved this motion", motion_id)
        seen.add(motion_id)
