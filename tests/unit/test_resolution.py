"""Resolutions and block payloads: agents/resolution.py.

Ballots here are really signed and committed by test identities (fast, no LLM)."""

from __future__ import annotations

import dataclasses
import functools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ballot import Ballot, ModelFingerprint, Sampling
from agents.commitment import Commitment, Reveal, commit, commitment_digest
from agents.resolution import (
    MAX_RESOLUTIONS_PER_BLOCK,
    NO_SUPERMAJORITY,
    PAYLOAD_VERSION,
    CastBallot,
    Closing,
    InvalidResolution,
    Resolution,
    check_payload,
    check_resolution,
    decode_payload,
    describe_tally,
    encode_payload,
    resolve,
    tally,
)
from p2p.envelope import Envelope, MessageType, decode_envelope
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.keys import Identity
from p2p.messages import Motion
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic

V = tuple(Identity(bytes([0x30 + i]) * 32) for i in range(4))
OUTSIDER = Identity(b"\x66" * 32)
CLIENT = Identity(b"\x77" * 32)
SALT = bytes(range(32))
OTHER_SALT = bytes(range(1, 33))
OPTIONS = ("approve", "reject")
MODEL = "ab" * 32
FP = ModelFingerprint(MODEL, 2048, Sampling(), "conclave-prompt/1", "cd" * 32, "ef" * 32, "0.3.16")
NS = NO_SUPERMAJORITY


def make_swarm(name: str, powers: tuple[int, ...] = (1, 1, 1, 1), allowed_models: tuple[str, ...] = ()) -> SwarmConfig:
    members = tuple(Validator(f"v{i}", V[i].peer_id, V[i].public_key, p) for i, p in enumerate(powers))
    return SwarmConfig(name, default_topic(name), PROTOCOL_VERSION, members, Params(allowed_models=allowed_models))


SWARM = make_swarm("restest")
OTHER = make_swarm("elsewhere")
UNEQUAL = make_swarm("unequal", (4, 3, 2, 1))
THREE = make_swarm("three", (1, 1, 1))
STRICT = make_swarm("strict", allowed_models=("cd" * 32,))
LENIENT = make_swarm("lenient", allowed_models=("cd" * 32, MODEL))


def motion_env(swarm: SwarmConfig = SWARM, text: str = "Ship it?", options: tuple[str, ...] = OPTIONS,
               seq: int = 1, mtype: MessageType = MessageType.MOTION, payload: bytes | None = None) -> bytes:
    body = Motion(text, options).encode() if payload is None else payload
    return Envelope.seal(CLIENT, swarm.swarm_id, mtype, seq, body).encode()


M1 = motion_env()
M2 = motion_env(text="Other?", seq=2)
M1_ID = decode_envelope(M1).message_id


def ballot(identity: Identity, env: bytes, choice: str = "approve", **changes) -> Ballot:
    e = decode_envelope(env)
    motion = Motion.decode(e.payload)
    fields = dict(swarm_id=e.swarm_id, motion_id=e.message_id, motion_text=motion.text, options=motion.options,
                  choice=choice, reason="Tested.", fingerprint=FP)
    fields.update(changes)
    return Ballot.sign(identity, **fields)


@functools.cache
def cast(identity: Identity, env: bytes = M1, choice: str = "approve", **changes) -> CastBallot:
    b = ballot(identity, env, choice, **changes)
    return CastBallot(commit(b, SALT, identity), Reveal(b, SALT))


def casts(env: bytes, *choices: str | None) -> list[CastBallot]:
    """``choices[i]`` is V[i]'s choice, None for no ballot."""
    return [cast(V[i], env, c) for i, c in enumerate(choices) if c is not None]


def forge(env: bytes, cast_ballots, closing: Closing = Closing.DEADLINE, outcome: str = NS,
          counts: tuple[int, ...] = (0, 0)) -> Resolution:
    """A resolution that skips resolve()'s checks, to show check_resolution's."""
    return Resolution(env, tuple(sorted(cast_ballots, key=lambda c: c.voter)), outcome, counts, closing)


def yes(_motion_id: bytes) -> bool:
    return True


def no(_motion_id: bytes) -> bool:
    return False


VALID = resolve(M1, casts(M1, "approve", "approve", "approve"), SWARM, Closing.QUORUM)


# --- tally ---------------------------------------------------------------------------

THREE_OPTIONS = ("approve", "reject", "abstain")
A, R, X = THREE_OPTIONS

TALLY_CASES = {
    "3 of 4 equal": ((1, 1, 1, 1), (A, A, A, None), A, (3, 0, 0)),
    "all 4": ((1, 1, 1, 1), (A, A, A, A), A, (4, 0, 0)),
    "2-2 split": ((1, 1, 1, 1), (A, A, R, R), NS, (2, 2, 0)),
    "exactly 2/3 of 3 is not enough": ((1, 1, 1), (A, A, None), NS, (2, 0, 0)),
    "exactly 2/3 of 6 is not enough": ((2, 2, 2), (A, A, R), NS, (4, 2, 0)),
    "unanimous but only half the total revealed": ((1, 1, 1, 1), (A, A, None, None), NS, (2, 0, 0)),
    "unequal: the heavy one alone": ((4, 3, 2, 1), (A, R, R, R), NS, (4, 6, 0)),
    "unequal: 7 of 10": ((4, 3, 2, 1), (A, A, R, None), A, (7, 2, 0)),
    "unequal: 6 of 10 by three voters": ((4, 3, 2, 1), (R, A, A, A), NS, (6, 4, 0)),
    "unequal: one voter with 7 of 10": ((1, 1, 1, 7), (None, None, None, R), R, (0, 7, 0)),
    "third option wins": ((1, 1, 1, 1), (X, X, X, X), X, (0, 0, 4)),
    "no ballots": ((1, 1, 1, 1), (None, None, None, None), NS, (0, 0, 0)),
}


@pytest.mark.parametrize("powers, choices, outcome, counts", TALLY_CASES.values(), ids=TALLY_CASES.keys())
def test_tally(powers, choices, outcome, counts):
    ballots = [ballot(V[i], motion_env(options=THREE_OPTIONS), c) for i, c in enumerate(choices) if c]
    power_of = {V[i].public_key: p for i, p in enumerate(powers)}
    assert tally(THREE_OPTIONS, ballots, power_of, sum(powers)) == (outcome, counts)


def test_tally_refuses_misuse():
    power_of = {v.public_key: 1 for v in V}
    b = ballot(V[0], M1)
    with pytest.raises(LocalProtocolError, match="counted twice"):
        tally(OPTIONS, [b, b], power_of, 4)
    with pytest.raises(LocalProtocolError, match="counted twice"):
        tally(OPTIONS, [b, ballot(V[0], M1, "reject")], power_of, 4)
    with pytest.raises(LocalProtocolError, match="is not a validator"):
        tally(OPTIONS, [ballot(OUTSIDER, M1)], power_of, 4)
    with pytest.raises(LocalProtocolError, match="choice 'approve' is not one of"):
        tally(("yes", "no"), [b], power_of, 4)
    with pytest.raises(LocalProtocolError, match="total power"):
        tally(OPTIONS, [b], power_of, 0)
    with pytest.raises(LocalProtocolError, match="5 power revealed of a total of 4"):
        tally(OPTIONS, [b], {V[0].public_key: 5}, 4)


# --- building ------------------------------------------------------------------------


def test_resolve_sorts_ballots_and_tallies():
    unordered = list(reversed(casts(M1, "approve", "reject", "approve", "approve")))
    res = resolve(M1, unordered, SWARM, Closing.QUORUM)
    assert [c.voter for c in res.ballots] == sorted(v.public_key for v in V)
    assert (res.outcome, res.tally, res.closing) == ("approve", (3, 1), Closing.QUORUM)
    assert res.motion_id == M1_ID and res.motion == Motion("Ship it?", OPTIONS)
    assert res.envelope.encode() == M1 and res.revealed_power({v.public_key: 2 for v in V}) == 8


def test_resolve_refuses_misuse():
    with pytest.raises(LocalProtocolError, match="QUORUM closing needs"):
        resolve(M1, casts(M1, "approve", "approve"), SWARM, Closing.QUORUM)
    with pytest.raises(LocalProtocolError, match="counted twice"):
        resolve(M1, [cast(V[0]), cast(V[0], choice="reject")], SWARM, Closing.DEADLINE)
    with pytest.raises(LocalProtocolError, match="not a validator"):
        resolve(M1, [cast(OUTSIDER)], SWARM, Closing.DEADLINE)
    with pytest.raises(LocalProtocolError, match="not a motion envelope"):
        resolve(b"\xc1", [], SWARM, Closing.DEADLINE)
    with pytest.raises(LocalProtocolError, match="is not MOTION"):
        resolve(motion_env(mtype=MessageType.STATUS), [], SWARM, Closing.DEADLINE)
    with pytest.raises(LocalProtocolError, match="closing must be a Closing"):
        resolve(M1, [], SWARM, 2)


def test_the_dataclasses_hold_their_shape():
    c0, c1 = cast(V[0]), cast(V[1])
    with pytest.raises(LocalProtocolError, match="different voters"):
        CastBallot(c0.commitment, c1.reveal)
    with pytest.raises(LocalProtocolError, match="must be a Commitment"):
        CastBallot(c0.commitment.encode(), c0.reveal)
    with pytest.raises(LocalProtocolError, match="must be a Reveal"):
        CastBallot(c0.commitment, c0.ballot)
    first, second = sorted([c0, c1], key=lambda c: c.voter)
    for bad in [(second, first), (first, first)]:
        with pytest.raises(LocalProtocolError, match="sorted by voter, each voter once"):
            Resolution(M1, bad, NS, (2, 0), Closing.DEADLINE)
    for change, words in [(dict(ballots=[first]), "tuple of CastBallot"), (dict(tally=(1,)), "tally must be"),
                          (dict(tally=(True, 0)), "tally must be"), (dict(tally=(-1, 0)), "tally must be"),
                          (dict(outcome=""), "outcome must be"), (dict(closing=1), "closing must be"),
                          (dict(motion_envelope="x"), "motion_envelope must be bytes")]:
        with pytest.raises(LocalProtocolError, match=words):
            dataclasses.replace(VALID, **change)


def test_describe_tally():
    assert describe_tally(resolve(M1, casts(M1, "approve", "approve", "reject", "approve"), SWARM, Closing.QUORUM),
                          SWARM) == "approve 3, reject 1 of 4"
    assert describe_tally(VALID, SWARM) == "approve 3 of 4"
    assert describe_tally(resolve(M1, [], SWARM, Closing.DEADLINE), SWARM) == "none of 4"
    env = motion_env(UNEQUAL)
    res = resolve(env, [cast(V[0], env, "reject"), cast(V[3], env, "approve")], UNEQUAL, Closing.DEADLINE)
    assert describe_tally(res, UNEQUAL) == "approve 1, reject 4 of 10"


# --- encoding ------------------------------------------------------------------------


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_encoding_is_the_documented_array():
    assert msgpack.unpackb(VALID.encode(), raw=False) == [
        M1, [[c.commitment.encode(), c.reveal.encode()] for c in VALID.ballots], "approve", [3, 0], 1]
    assert msgpack.unpackb(encode_payload([VALID]), raw=False) == [PAYLOAD_VERSION, [VALID.to_obj()]]


@functools.cache
def resolution_of(choices: tuple[str | None, ...], closing: Closing, env: bytes = M1) -> Resolution:
    return resolve(env, casts(env, *choices), SWARM, closing)


CHOICES = st.tuples(*[st.sampled_from([None, "approve", "reject"])] * 4)


@st.composite
def resolutions(draw, env: bytes = M1) -> Resolution:
    choices = draw(CHOICES)
    quorum = sum(c is not None for c in choices) >= 3
    closing = draw(st.sampled_from([Closing.QUORUM, Closing.DEADLINE])) if quorum else Closing.DEADLINE
    return resolution_of(choices, closing, env)


@settings(max_examples=60, deadline=None)
@given(res=resolutions())
def test_resolution_round_trips_and_checks(res):
    assert Resolution.decode(res.encode()) == res
    assert Resolution.decode(res.to_obj()) == res
    assert decode_payload(encode_payload([res])) == (res,)
    check_resolution(res, SWARM, deadline_passed=yes)


MOTIONS = tuple(motion_env(text=f"Motion {i}?", seq=10 + i) for i in range(4))


@settings(max_examples=30, deadline=None)
@given(block=st.lists(st.sampled_from(MOTIONS), min_size=1, max_size=4, unique=True).flatmap(
    lambda envs: st.tuples(*[resolutions(env) for env in envs])))
def test_payload_round_trips_and_checks(block):
    assert decode_payload(encode_payload(block)) == block
    check_payload(block, SWARM, deadline_passed=yes, already_decided=lambda _m: False)


def test_encode_payload_refuses_misuse():
    with pytest.raises(LocalProtocolError, match="1 to 256 resolutions, got 0"):
        encode_payload([])
    with pytest.raises(LocalProtocolError, match="got 257"):
        encode_payload([VALID] * (MAX_RESOLUTIONS_PER_BLOCK + 1))
    with pytest.raises(LocalProtocolError, match="must be a Resolution"):
        encode_payload([VALID.encode()])
    assert len(decode_payload(encode_payload([VALID] * MAX_RESOLUTIONS_PER_BLOCK))) == MAX_RESOLUTIONS_PER_BLOCK


OBJ = VALID.to_obj()
PAIR = OBJ[1][0]
C_MAP = msgpack.unpackb(PAIR[0], raw=False)


def with_resolution(index: int, value) -> bytes:
    obj = list(OBJ)
    obj[index] = value
    return pack([1, [obj]])


def with_pair(pair) -> bytes:
    return with_resolution(1, [pair, *OBJ[1][1:]])


MALFORMED = {
    "not msgpack": (b"\xc1", "block payload: not msgpack"),
    "trailing bytes": (encode_payload([VALID]) + b"\x00", "not msgpack (ExtraData)"),
    "a map": (pack({"version": 1}), "must be an array of 2"),
    "a bare resolution": (pack(OBJ), "must be an array of 2"),
    "wrong version": (pack([2, [OBJ]]), "version 2, this peer reads version 1"),
    "boolean version": (pack([True, [OBJ]]), "version True"),
    "empty": (pack([1, []]), "1 to 256 resolutions, got 0"),
    "too many": (pack([1, [OBJ] * (MAX_RESOLUTIONS_PER_BLOCK + 1)]), "1 to 256 resolutions, got 257"),
    "resolutions not an array": (pack([1, {"a": OBJ}]), "resolutions must be an array"),
    "resolution as bin": (pack([1, [VALID.encode()]]), "resolutions[0]: must be an array"),
    "resolution too short": (pack([1, [OBJ[:4]]]), "resolutions[0]: resolution: must be an array of 5"),
    "envelope not bin": (with_resolution(0, "x"), "motion_envelope must be bytes"),
    "ballots not an array": (with_resolution(1, b""), "ballots must be an array"),
    "ballot not a pair": (with_resolution(1, [PAIR[0]]), "ballots[0]: must be an array of two bin"),
    "commitment not a map": (with_pair([b"\x00", PAIR[1]]), "ballots[0]: commitment: payload must be a map"),
    "commitment garbage": (with_pair([b"\xc1", PAIR[1]]), "ballots[0]: commitment: not msgpack"),
    "commitment short signature": (with_pair([pack(C_MAP | {"signature": b"x"}), PAIR[1]]),
                                   "ballots[0]: commitment: signature must be 64 bytes"),
    "reveal garbage": (with_pair([PAIR[0], b"\xc1"]), "ballots[0]: reveal: not msgpack"),
    "reveal's ballot garbage": (with_pair([PAIR[0], pack({"ballot": b"\x00", "salt": SALT})]),
                                "ballots[0]: ballot: payload must be a map"),
    "reveal by another voter": (with_pair([PAIR[0], OBJ[1][1][1]]), "different voters"),
    "unsorted voters": (with_resolution(1, list(reversed(OBJ[1]))), "sorted by voter"),
    "duplicate voter": (with_resolution(1, [PAIR, PAIR]), "sorted by voter, each voter once"),
    "outcome not a string": (with_resolution(2, 1), "outcome must be"),
    "tally not an array": (with_resolution(3, 3), "tally must be an array"),
    "tally of strings": (with_resolution(3, ["3", "0"]), "tally must be 2 to 16 non-negative integers"),
    "negative tally": (with_resolution(3, [3, -1]), "tally must be"),
    "unknown closing": (with_resolution(4, 3), "closing must be one of [1, 2], got 3"),
    "boolean closing": (with_resolution(4, True), "got True"),
}


@pytest.mark.parametrize("data, words", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_payloads_are_rejected_naming_the_problem(data, words):
    with pytest.raises(RemoteProtocolError) as info:
        decode_payload(data)
    assert info.value.reason is RejectReason.BAD_PAYLOAD
    assert info.value.detail.startswith("block payload: ")
    assert words in info.value.detail


def test_resolution_decode_names_itself():
    with pytest.raises(RemoteProtocolError, match="bad_payload: resolution: not msgpack"):
        Resolution.decode(b"\xc1")
    with pytest.raises(RemoteProtocolError, match="bad_payload: resolution: ballots\\[0\\]: commitment"):
        Resolution.decode(pack([M1, [[b"\x00", PAIR[1]]], "approve", [3, 0], 1]))


GOOD_PAYLOAD = encode_payload([VALID, resolution_of(("approve", None, "reject", None), Closing.DEADLINE, M2)])


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=64),
    st.integers(0, len(GOOD_PAYLOAD)).map(lambda n: GOOD_PAYLOAD[:n]),
    st.tuples(st.integers(0, len(GOOD_PAYLOAD) - 1), st.integers(0, 255)).map(
        lambda iv: GOOD_PAYLOAD[:iv[0]] + bytes([iv[1]]) + GOOD_PAYLOAD[iv[0] + 1:]),
))
def test_decode_payload_raises_only_remote_protocol_errors(data):
    try:
        decode_payload(data)
    except RemoteProtocolError as exc:
        assert exc.reason is RejectReason.BAD_PAYLOAD


REVEAL_DOC = msgpack.unpackb(PAIR[1], raw=False)
BALLOT_DOC = msgpack.unpackb(REVEAL_DOC["ballot"], raw=False)
ANY = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.binary(max_size=40)
                   | st.text(max_size=40), lambda inner: st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(sorted(BALLOT_DOC)), value=ANY)
def test_any_mistyped_ballot_field_is_a_remote_error(key, value):
    reveal = pack({"ballot": pack(BALLOT_DOC | {key: value}), "salt": SALT})
    try:
        decode_payload(with_pair([PAIR[0], reveal]))
    except RemoteProtocolError as exc:
        assert exc.reason is RejectReason.BAD_PAYLOAD


# --- what a validator checks -----------------------------------------------------------


def forged_motion_signature() -> Resolution:
    env = dataclasses.replace(decode_envelope(M1), signature=CLIENT.sign(b"something else")).encode()
    return forge(env, casts(M1, "approve", "approve", "approve"), Closing.QUORUM, "approve", (3, 0))


def other_swarm() -> Resolution:
    env = motion_env(OTHER)
    return resolve(env, casts(env, "approve", "approve", "approve"), OTHER, Closing.QUORUM)


def reveal_for(identity: Identity, committed: Ballot, revealed: Ballot, salt: bytes = SALT) -> CastBallot:
    return CastBallot(commit(committed, SALT, identity), Reveal(revealed, salt))


def commitment_for_m1_ballot_for_m2() -> CastBallot:
    b = ballot(V[0], M2)
    c = Commitment.sign(V[0], swarm_id=SWARM.swarm_id, motion_id=M1_ID, digest=commitment_digest(b, SALT))
    return CastBallot(c, Reveal(b, SALT))


def forged_commitment() -> CastBallot:
    good = cast(V[0])
    return CastBallot(dataclasses.replace(good.commitment, signature=V[0].sign(b"else")), good.reveal)


def strict_model() -> Resolution:
    env = motion_env(STRICT)
    return resolve(env, casts(env, "approve", "approve", "approve"), STRICT, Closing.QUORUM)


def one(c: CastBallot) -> Resolution:
    return forge(M1, [c])


def envelope_version_2() -> bytes:
    e = decode_envelope(M1)
    return Envelope(2, e.swarm_id, e.type, e.sender, e.seq, e.payload, e.signature).encode()


def quorum_of(swarm: SwarmConfig, *choices: str | None) -> Resolution:
    env = motion_env(swarm)
    cb = casts(env, *choices)
    outcome, counts = tally(OPTIONS, [c.ballot for c in cb], {v.public_key: v.power for v in swarm.validators},
                            swarm.total_power)
    return forge(env, cb, Closing.QUORUM, outcome, counts)


FAILURES = {
    "envelope garbage": (lambda: forge(b"\xc1", []), SWARM, "motion_envelope", "not msgpack"),
    "envelope version": (lambda: forge(envelope_version_2(), []), SWARM, "motion_envelope", "envelope version 2"),
    "not a motion envelope": (lambda: forge(motion_env(mtype=MessageType.STATUS), []), SWARM, "motion_type",
                              "is not MOTION"),
    "motion for another swarm": (other_swarm, SWARM, "swarm", "another swarm"),
    "forged motion signature": (forged_motion_signature, SWARM, "motion_signature", "does not verify"),
    "payload not a motion": (lambda: forge(motion_env(payload=b"\xc1"), []), SWARM, "motion", "motion: not msgpack"),
    "commitment for another swarm": (lambda: one(cast(V[0], swarm_id=OTHER.swarm_id)), SWARM, "commitment",
                                     "commitment is for another swarm"),
    "ballot for another motion": (lambda: one(cast(V[0], M2)), SWARM, "commitment",
                                  "commitment is for another motion"),
    "committed to this motion, revealed for another": (lambda: one(commitment_for_m1_ballot_for_m2()), SWARM,
                                                       "reveal.motion", "the ballot is for motion"),
    "non-validator voter": (lambda: one(cast(OUTSIDER)), SWARM, "voter", "is not a validator of the swarm"),
    "reveal with another salt": (lambda: one(reveal_for(V[0], ballot(V[0], M1), ballot(V[0], M1), OTHER_SALT)),
                                 SWARM, "reveal.digest", "do not hash to the committed digest"),
    "reveal of another ballot": (lambda: one(reveal_for(V[0], ballot(V[0], M1), ballot(V[0], M1, "reject"))),
                                 SWARM, "reveal.digest", "committed digest"),
    "forged commitment": (lambda: one(forged_commitment()), SWARM, "reveal.commitment_signature", "not signed"),
    "ballot misquotes the text": (lambda: one(cast(V[0], motion_text="Ship it now?")), SWARM, "ballot",
                                  "another text or options"),
    "ballot misquotes the options": (lambda: one(cast(V[0], options=("approve", "reject", "abstain"))), SWARM,
                                     "ballot", "another text or options"),
    "model not allowed": (strict_model, STRICT, "model", "which the swarm does not allow"),
    "wrong tally": (lambda: dataclasses.replace(VALID, tally=(4, 0)), SWARM, "tally",
                    "says [4, 0], the ballots give [3, 0]"),
    "tally of another length": (lambda: dataclasses.replace(VALID, tally=(3, 0, 0)), SWARM, "tally", "[3, 0, 0]"),
    "wrong outcome": (lambda: dataclasses.replace(VALID, outcome="reject"), SWARM, "outcome",
                      "says 'reject', the ballots give 'approve'"),
    "outcome claimed without supermajority": (
        lambda: forge(M1, casts(M1, "approve", "approve", "reject", "reject"), Closing.QUORUM, "approve", (2, 2)),
        SWARM, "outcome", "the ballots give 'no-supermajority'"),
    "quorum closing with half": (lambda: quorum_of(SWARM, "approve", "approve"), SWARM, "closing",
                                 "closed by quorum with 2 of 4"),
    "quorum closing with exactly 2/3": (lambda: quorum_of(THREE, "approve", "reject"), THREE, "closing",
                                        "2 of 3 power revealed"),
    "quorum closing with 6 of 10": (lambda: quorum_of(UNEQUAL, "approve", None, "approve"), UNEQUAL, "closing",
                                    "6 of 10"),
    "deadline closing before the deadline": (lambda: resolution_of(("approve", None, None, None), Closing.DEADLINE),
                                             SWARM, "closing", "deadline not passed"),
}


@pytest.mark.parametrize("build, swarm, field, words", FAILURES.values(), ids=FAILURES.keys())
def test_check_resolution_names_the_failing_check(build, swarm, field, words):
    with pytest.raises(InvalidResolution) as info:
        check_resolution(build(), swarm, deadline_passed=no)
    err = info.value
    assert isinstance(err, RemoteProtocolError) and err.reason is RejectReason.BAD_PAYLOAD
    assert err.field == field
    assert words in err.why and f": {field}: " in str(err)


def deadline_res(*choices: str | None, env: bytes = M1, swarm: SwarmConfig = SWARM) -> Resolution:
    return resolve(env, casts(env, *choices), swarm, Closing.DEADLINE)


VALID_CASES = {
    "quorum of 3 of 4": (VALID, SWARM),
    "quorum of 4, no supermajority": (resolution_of(("approve", "reject", "approve", "reject"), Closing.QUORUM),
                                      SWARM),
    "deadline with 2 of 4": (deadline_res("approve", None, "approve"), SWARM),
    "deadline with no ballots": (deadline_res(), SWARM),
    "deadline with everyone": (deadline_res("reject", "reject", "reject", "reject"), SWARM),
    "unequal: 7 of 10 by quorum": (resolve(motion_env(UNEQUAL), casts(motion_env(UNEQUAL), "approve", "approve"),
                                           UNEQUAL, Closing.QUORUM), UNEQUAL),
    "allowed model": (deadline_res("approve", env=motion_env(LENIENT), swarm=LENIENT), LENIENT),
}


@pytest.mark.parametrize("res, swarm", VALID_CASES.values(), ids=VALID_CASES.keys())
def test_valid_resolutions_pass(res, swarm):
    asked = []
    check_resolution(res, swarm, deadline_passed=lambda m: asked.append(m) or True)
    assert asked == ([res.motion_id] if res.closing is Closing.DEADLINE else [])


def test_a_duplicate_voter_never_reaches_check_resolution():
    # One voter, two different ballots: neither resolve, nor the dataclass, nor the decoder takes it.
    twice = [cast(V[0]), cast(V[0], choice="reject")]
    with pytest.raises(LocalProtocolError, match="counted twice"):
        resolve(M1, twice, SWARM, Closing.DEADLINE)
    with pytest.raises(LocalProtocolError, match="each voter once"):
        forge(M1, twice, counts=(1, 1))
    with pytest.raises(RemoteProtocolError, match="each voter once"):
        decode_payload(with_resolution(1, [c.to_obj() for c in twice]))


# --- the block -----------------------------------------------------------------------

SECOND = deadline_res("approve", "reject", env=M2)


def test_check_payload_accepts_a_good_block():
    check_payload(decode_payload(encode_payload([VALID, SECOND])), SWARM, deadline_passed=yes,
                  already_decided=lambda m: m not in (VALID.motion_id, SECOND.motion_id))


@pytest.mark.parametrize("block, decided, field", [
    ([VALID, SECOND, VALID], (), "duplicate_motion"),
    ([VALID, resolution_of(("approve", "approve", "approve", "reject"), Closing.QUORUM)], (), "duplicate_motion"),
    ([SECOND, VALID], (M1_ID,), "already_decided"),
    ([VALID, dataclasses.replace(SECOND, outcome="approve")], (), "outcome"),
    ([], (), "payload"),
], ids=["same resolution twice", "two resolutions of one motion", "decided earlier", "second one wrong", "empty"])
def test_check_payload_rejects(block, decided, field):
    with pytest.raises(InvalidResolution) as info:
        check_payload(block, SWARM, deadline_passed=yes, already_decided=lambda m: m in decided)
    assert info.value.field == field and info.value.reason is RejectReason.BAD_PAYLOAD


def test_check_payload_asks_about_each_motion():
    asked = []
    check_payload([VALID, SECOND], SWARM, deadline_passed=lambda m: asked.append(("deadline", m)) or True,
                  already_decided=lambda m: asked.append(("decided", m)) or False)
    assert asked == [("decided", M1_ID), ("deadline", SECOND.motion_id), ("decided", SECOND.motion_id)]
