"""The pool of motions in flight: agents/motion_pool.py.

Pure and clock-free (the caller passes ``now``), so every case is a table row. Motions,
ballots, commitments and reveals are really signed by test identities (no LLM)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from agents.ballot import Ballot, ModelFingerprint, Sampling
from agents.commitment import Commitment, Reveal, commit
from agents.motion_pool import MAX_ORPHAN_REVEALS, Admission, BallotVerdict, MotionPool, Progress
from agents.resolution import NO_SUPERMAJORITY, Closing, check_resolution
from p2p.envelope import Envelope, MessageType
from p2p.errors import LocalProtocolError
from p2p.keys import Identity
from p2p.messages import Motion
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic

V = tuple(Identity(bytes([0x30 + i]) * 32) for i in range(6))  # the swarms use the first 4, "many" all 6
OUTSIDER = Identity(b"\x66" * 32)
ALICE, BOB = Identity(b"\x77" * 32), Identity(b"\x78" * 32)  # clients who submit motions
SALT, OTHER_SALT = bytes(range(32)), bytes(range(1, 33))
OPTIONS = ("approve", "reject")
FP = ModelFingerprint("ab" * 32, 2048, Sampling(), "conclave-prompt/1", "cd" * 32, "ef" * 32, "0.3.16")
DEADLINE_S = 10.0


def make_swarm(name: str, powers: tuple[int, ...] = (1, 1, 1, 1), **params) -> SwarmConfig:
    members = tuple(Validator(f"v{i}", V[i].peer_id, V[i].public_key, p) for i, p in enumerate(powers))
    p = Params(**{"motion_deadline_ms": int(DEADLINE_S * 1000), **params})
    return SwarmConfig(name, default_topic(name), PROTOCOL_VERSION, members, p)


SWARM = make_swarm("pooltest")
OTHER = make_swarm("elsewhere")
UNEQUAL = make_swarm("unequal", (4, 3, 2, 1))  # total 10: a quorum needs 7
SMALL = make_swarm("small", max_pending_motions=3, max_pending_per_sender=2)


@dataclass(frozen=True)
class M:
    """One signed MOTION envelope and what the pool is given for it."""

    id: bytes
    envelope: bytes
    motion: Motion
    sender: bytes
    swarm: SwarmConfig


def make_motion(text: str = "Ship it?", options: tuple[str, ...] = OPTIONS, *, seq: int = 1,
                sender: Identity = ALICE, swarm: SwarmConfig = SWARM) -> M:
    motion = Motion(text, options)
    env = Envelope.seal(sender, swarm.swarm_id, MessageType.MOTION, seq, motion.encode())
    return M(env.message_id, env.encode(), motion, sender.public_key, swarm)


def add(pool: MotionPool, m: M, now: float = 0.0) -> Admission:
    return pool.add_motion(m.id, m.envelope, m.motion, m.sender, now)


def make_ballot(voter: Identity, m: M, choice: str = "approve", swarm: SwarmConfig | None = None,
                **changes) -> Ballot:
    fields = dict(swarm_id=(swarm or m.swarm).swarm_id, motion_id=m.id, motion_text=m.motion.text,
                  options=m.motion.options, choice=choice, reason="Tested.", fingerprint=FP)
    fields.update(changes)
    return Ballot.sign(voter, **fields)


def pair(voter: Identity, m: M, choice: str = "approve", salt: bytes = SALT, **changes) -> tuple[Commitment, Reveal]:
    b = make_ballot(voter, m, choice, **changes)
    return commit(b, salt, voter), Reveal(b, salt)


def cast_all(pool: MotionPool, m: M, *choices: str | None) -> None:
    """``choices[i]`` is V[i]'s ballot (committed and revealed), None for none."""
    assert m.swarm is pool.swarm
    for i, choice in enumerate(choices):
        if choice is not None:
            c, r = pair(V[i], m, choice)
            assert pool.add_commitment(c) is BallotVerdict.ADDED
            assert pool.add_reveal(r) is BallotVerdict.ADDED


M1 = make_motion()
M2 = make_motion("Other?", seq=2)
M3 = make_motion("Third?", seq=3)
M_BOB = make_motion("Bob asks?", seq=1, sender=BOB)
M_BOB2 = make_motion("Bob asks again?", seq=2, sender=BOB)


# --- admission -----------------------------------------------------------------------

# Each row: steps on a SMALL pool (3 motions in all, 2 per sender), then one last
# add_motion and the verdict it must get.  Steps: ("add", motion), ("decide", motion),
# ("discard", motion).
ADMISSION_CASES = {
    "added": ([], M1, Admission.ADDED),
    "duplicate": ([("add", M1)], M1, Admission.DUPLICATE),
    "decided before": ([("add", M1), ("decide", M1)], M1, Admission.DECIDED_BEFORE),
    "decided, never seen here": ([("decide", M1)], M1, Admission.DECIDED_BEFORE),
    "second from one sender": ([("add", M1)], M2, Admission.ADDED),
    "per-sender limit": ([("add", M1), ("add", M2)], M3, Admission.SENDER_FULL),
    "other senders unaffected by one's limit": ([("add", M1), ("add", M2)], M_BOB, Admission.ADDED),
    "pool full": ([("add", M1), ("add", M2), ("add", M_BOB)], M_BOB2, Admission.POOL_FULL),
    "pool full beats the sender limit": ([("add", M1), ("add", M2), ("add", M_BOB)], M3, Admission.POOL_FULL),
    "discard frees a pool slot": ([("add", M1), ("add", M2), ("add", M_BOB), ("discard", M1)], M_BOB2,
                                  Admission.ADDED),
    "discard frees a sender slot": ([("add", M1), ("add", M2), ("discard", M2)], M3, Admission.ADDED),
    "a decision frees both slots": ([("add", M1), ("add", M2), ("add", M_BOB), ("decide", M2)], M3,
                                    Admission.ADDED),
    "discarding an unknown motion frees nothing": ([("add", M1), ("add", M2), ("discard", M3)], M3,
                                                   Admission.SENDER_FULL),
    "a discarded motion may come back": ([("add", M1), ("discard", M1)], M1, Admission.ADDED),
}


@pytest.mark.parametrize("steps, last, expected", list(ADMISSION_CASES.values()), ids=list(ADMISSION_CASES))
def test_admission(steps, last: M, expected: Admission) -> None:
    pool = MotionPool(SMALL)
    for op, m in steps:
        if op == "add":
            assert add(pool, m) is Admission.ADDED, f"setup: {op} {m.motion.text}"
        elif op == "decide":
            pool.mark_decided([m.id])
        else:
            pool.discard(m.id)
    before = [e.motion_id for e in pool.pending()]
    assert add(pool, last, now=5.0) is expected
    after = [e.motion_id for e in pool.pending()]
    if expected is Admission.ADDED:
        assert after == before + [last.id]
        entry = pool.get(last.id)
        assert (entry.envelope, entry.motion, entry.sender, entry.first_seen) == \
            (last.envelope, last.motion, last.sender, 5.0)
    else:
        assert after == before  # a refusal changes nothing
        if expected is Admission.DUPLICATE:
            assert pool.get(last.id).first_seen == 0.0  # the first sighting is kept


def test_decided_motions_from_the_constructor() -> None:
    pool = MotionPool(SWARM, {M1.id})
    assert pool.is_decided(M1.id) and not pool.is_decided(M2.id)
    assert add(pool, M1) is Admission.DECIDED_BEFORE
    assert add(pool, M2) is Admission.ADDED and len(pool) == 1


def test_mark_decided_forgets_pending_and_ignores_unknown() -> None:
    pool = MotionPool(SWARM)
    add(pool, M1), add(pool, M2)
    pool.mark_decided([M1.id, M3.id])
    assert [e.motion_id for e in pool.pending()] == [M2.id]
    assert pool.get(M1.id) is None and pool.is_decided(M1.id) and pool.is_decided(M3.id)
    with pytest.raises(LocalProtocolError, match="not pending"):
        pool.progress(M1.id)


# --- commitments ---------------------------------------------------------------------


def _commit(voter: Identity = V[0], m: M = M1, salt: bytes = SALT, **changes) -> Commitment:
    return pair(voter, m, salt=salt, **changes)[0]


def _forged(c: Commitment) -> Commitment:
    return dataclasses.replace(c, signature=bytes(reversed(c.signature)))


def _other_swarm() -> Commitment:
    # The voter's real signature, over a ballot for our motion id but another swarm.
    b = make_ballot(V[0], M1, swarm=OTHER)
    return commit(b, SALT, V[0])


def _signed_by_another() -> Commitment:
    # V[1] signs a commitment that names V[0] as its voter.
    c = _commit(V[0])
    return dataclasses.replace(c, signature=V[1].sign(c.signing_bytes()))


# Each row: commitments given first (all must be ADDED), then the one under test.
COMMITMENT_CASES = {
    "added": ([], lambda: _commit(), BallotVerdict.ADDED),
    "not a validator": ([], lambda: _commit(OUTSIDER), BallotVerdict.NOT_VALIDATOR),
    "motion not seen yet: kept": ([], lambda: _commit(m=M2), BallotVerdict.EARLY),
    "motion decided": ([], lambda: _commit(m=M3), BallotVerdict.UNKNOWN_MOTION),
    "duplicate": ([lambda: _commit()], lambda: _commit(), BallotVerdict.DUPLICATE),
    "conflicting second commitment": ([lambda: _commit()], lambda: _commit(salt=OTHER_SALT), BallotVerdict.CONFLICT),
    "conflicting choice": ([lambda: _commit()], lambda: _commit(choice="reject"), BallotVerdict.CONFLICT),
    "another voter is no conflict": ([lambda: _commit()], lambda: _commit(V[1]), BallotVerdict.ADDED),
    "bad signature": ([], lambda: _forged(_commit()), BallotVerdict.MISMATCH),
    "signed by someone else": ([], _signed_by_another, BallotVerdict.MISMATCH),
    "other swarm": ([], _other_swarm, BallotVerdict.MISMATCH),
}


@pytest.mark.parametrize("given, make, expected", list(COMMITMENT_CASES.values()), ids=list(COMMITMENT_CASES))
def test_commitments(given, make, expected: BallotVerdict) -> None:
    pool = MotionPool(SWARM, decided={M3.id})
    add(pool, M1)
    for g in given:
        assert pool.add_commitment(g()) is BallotVerdict.ADDED
    before = dict(pool.get(M1.id).commitments)
    c = make()
    assert pool.add_commitment(c) is expected
    after = pool.get(M1.id).commitments
    if expected is BallotVerdict.ADDED:
        assert after[c.voter] == c and len(after) == len(before) + 1
    else:
        assert after == before  # kept the first; nothing else stored


def test_a_forged_second_commitment_is_a_mismatch_not_the_voters_conflict() -> None:
    pool = MotionPool(SWARM)
    add(pool, M1)
    assert pool.add_commitment(_commit()) is BallotVerdict.ADDED
    assert pool.add_commitment(_forged(_commit(salt=OTHER_SALT))) is BallotVerdict.MISMATCH


# --- reveals -------------------------------------------------------------------------


def _reveal(voter: Identity = V[0], m: M = M1, salt: bytes = SALT, **changes) -> Reveal:
    return pair(voter, m, salt=salt, **changes)[1]


def _misquoting_pair() -> tuple[Commitment, Reveal]:
    # A consistent commitment and reveal, but the ballot quotes another text for M1's id.
    return pair(V[0], M1, motion_text="Ship something else?")


def _other_options_pair() -> tuple[Commitment, Reveal]:
    return pair(V[0], M1, options=("yes", "no"), choice="yes")


# Each row: commitments given first, then the reveal under test, its verdict, and
# whether it then counts as revealed.
REVEAL_CASES = {
    "added": ([lambda: _commit()], lambda: _reveal(), BallotVerdict.ADDED, True),
    "not a validator": ([], lambda: _reveal(OUTSIDER), BallotVerdict.NOT_VALIDATOR, False),
    "motion not seen yet: kept": ([], lambda: _reveal(m=M2), BallotVerdict.EARLY, False),
    "motion decided": ([], lambda: _reveal(m=M3), BallotVerdict.UNKNOWN_MOTION, False),
    "before its commitment: waiting": ([], lambda: _reveal(), BallotVerdict.WAITING, False),
    "another salt than committed": ([lambda: _commit()], lambda: _reveal(salt=OTHER_SALT), BallotVerdict.MISMATCH,
                                    False),
    "another choice than committed": ([lambda: _commit()], lambda: _reveal(choice="reject"),
                                      BallotVerdict.MISMATCH, False),
    "another voter's commitment only": ([lambda: _commit(V[1])], lambda: _reveal(), BallotVerdict.WAITING, False),
    "text mismatch": ([lambda: _misquoting_pair()[0]], lambda: _misquoting_pair()[1], BallotVerdict.MISMATCH,
                      False),
    "options mismatch": ([lambda: _other_options_pair()[0]], lambda: _other_options_pair()[1],
                         BallotVerdict.MISMATCH, False),
}


@pytest.mark.parametrize("given, make, expected, counts", list(REVEAL_CASES.values()), ids=list(REVEAL_CASES))
def test_reveals(given, make, expected: BallotVerdict, counts: bool) -> None:
    pool = MotionPool(SWARM, decided={M3.id})
    add(pool, M1)
    for g in given:
        assert pool.add_commitment(g()) is BallotVerdict.ADDED
    r = make()
    assert pool.add_reveal(r) is expected
    entry = pool.get(M1.id)
    assert (r.ballot.voter in entry.reveals) is counts
    if counts:
        assert pool.add_reveal(r) is BallotVerdict.DUPLICATE


def test_ballots_that_outrun_their_motion_are_applied_when_it_arrives() -> None:
    pool = MotionPool(SWARM)
    (c0, r0), (c1, r1) = pair(V[0], M1), pair(V[1], M1)
    # Reveal before commitment, and both before the motion: all kept, none counted yet.
    for item, add_item in ((r0, pool.add_reveal), (c0, pool.add_commitment), (c1, pool.add_commitment),
                           (r1, pool.add_reveal)):
        assert add_item(item) is BallotVerdict.EARLY
    assert pool.add_commitment(c0) is BallotVerdict.EARLY and pool.early_ballots == 4  # a re-send: kept once
    assert add(pool, M1) is Admission.ADDED
    entry = pool.get(M1.id)
    assert set(entry.commitments) == set(entry.reveals) == {V[0].public_key, V[1].public_key}
    assert pool.progress(M1.id) == Progress(2, 2) and pool.early_ballots == 0


def test_early_ballots_are_checked_when_applied_and_bounded_per_voter(monkeypatch) -> None:
    import agents.motion_pool as mp
    monkeypatch.setattr(mp, "MAX_EARLY_BALLOTS", 2 * len(SWARM.validators))  # two per voter
    pool = MotionPool(SWARM)
    assert pool.add_commitment(_forged(_commit(m=M1))) is BallotVerdict.EARLY
    assert pool.add_commitment(_commit(m=M2)) is BallotVerdict.EARLY
    assert pool.add_commitment(_commit(m=M3)) is BallotVerdict.UNKNOWN_MOTION  # V[0]'s share is full
    assert pool.add_commitment(_commit(V[1], m=M3)) is BallotVerdict.EARLY  # another voter's is not
    add(pool, M1)
    assert not pool.get(M1.id).commitments  # the forged one was checked on arrival of M1, and refused
    assert pool.add_commitment(_commit(m=M3)) is BallotVerdict.EARLY  # V[0]'s share has room again
    pool.mark_decided([M2.id, M3.id])  # decided elsewhere: what waited for them goes
    assert pool.early_ballots == 0


def test_a_reveal_before_its_commitment_is_applied_when_the_commitment_arrives() -> None:
    pool = MotionPool(SWARM)
    add(pool, M1)
    c, r = pair(V[2], M1)
    assert pool.add_reveal(r) is BallotVerdict.WAITING
    assert pool.add_reveal(r) is BallotVerdict.WAITING  # kept once, not twice
    assert pool.progress(M1.id) == Progress(0, 0)
    assert pool.add_commitment(c) is BallotVerdict.ADDED
    entry = pool.get(M1.id)
    assert entry.reveals == {V[2].public_key: r} and not entry.orphans
    assert pool.progress(M1.id) == Progress(1, 1)


def test_an_orphan_that_does_not_open_the_commitment_is_dropped() -> None:
    pool = MotionPool(SWARM)
    add(pool, M1)
    c, _ = pair(V[0], M1)
    assert pool.add_reveal(_reveal(salt=OTHER_SALT)) is BallotVerdict.WAITING
    assert pool.add_commitment(c) is BallotVerdict.ADDED
    entry = pool.get(M1.id)
    assert not entry.reveals and not entry.orphans
    assert pool.add_reveal(_reveal()) is BallotVerdict.ADDED  # the right one still counts


def test_orphans_are_bounded_per_motion() -> None:
    many = make_swarm("many", (1,) * 6)
    pool = MotionPool(many)
    m1 = make_motion(swarm=many)
    add(pool, m1)
    for i in range(6):
        assert pool.add_reveal(_reveal(V[i], m1)) is BallotVerdict.WAITING
    orphans = pool.get(m1.id).orphans
    assert list(orphans) == [v.public_key for v in V[:MAX_ORPHAN_REVEALS]]
    # A voter already waiting may replace its orphan (the newest is kept).
    newer = _reveal(V[0], m1, choice="reject")
    assert pool.add_reveal(newer) is BallotVerdict.WAITING
    assert orphans[V[0].public_key] == newer
    # A voter whose orphan was not kept still counts once its commitment and reveal arrive.
    c5, r5 = pair(V[5], m1)
    assert pool.add_commitment(c5) is BallotVerdict.ADDED
    assert pool.progress(m1.id) == Progress(1, 0)
    assert pool.add_reveal(r5) is BallotVerdict.ADDED
    assert pool.progress(m1.id) == Progress(1, 1)


def test_progress_counts_power_not_heads() -> None:
    pool = MotionPool(UNEQUAL)
    m1 = make_motion(swarm=UNEQUAL)
    add(pool, m1)
    assert pool.progress(m1.id) == Progress(0, 0)
    c0, r0 = pair(V[0], m1)  # power 4
    c3, r3 = pair(V[3], m1)  # power 1
    c2, _ = pair(V[2], m1)  # power 2
    for c in (c0, c3, c2):
        assert pool.add_commitment(c) is BallotVerdict.ADDED
    assert pool.progress(m1.id) == Progress(7, 0)
    assert pool.add_reveal(r0) is BallotVerdict.ADDED
    assert pool.add_reveal(r3) is BallotVerdict.ADDED
    assert pool.progress(m1.id) == Progress(7, 5)
    # Quorum: strictly more than 2/3 of 10.
    assert [p for p in range(11) if pool.is_quorum(p)] == [7, 8, 9, 10]
    with pytest.raises(LocalProtocolError, match="not pending"):
        pool.progress(M2.id)


# --- resolvable ----------------------------------------------------------------------


def test_quorum_needs_more_than_two_thirds_of_total_power() -> None:
    three = make_swarm("three", (1, 1, 1))  # exactly 2/3 is 2 of 3: not enough
    pool = MotionPool(three)
    m1 = make_motion(swarm=three)
    add(pool, m1)
    cast_all(pool, m1, "approve", "approve")
    assert pool.resolvable(DEADLINE_S - 0.001, 10) == []
    cast_all(pool, m1, None, None, "reject")
    [res] = pool.resolvable(0.0, 10)
    assert (res.closing, res.outcome, res.tally, res.motion_id) == (Closing.QUORUM, NO_SUPERMAJORITY, (2, 1), m1.id)
    check_resolution(res, three, deadline_passed=lambda _m: False)  # a validator would accept it


@pytest.mark.parametrize("voters, quorum", [
    ((0, 3), False),  # 4 + 1 = 5 of 10
    ((1, 2, 3), False),  # 3 + 2 + 1 = 6 of 10: short of 2/3
    ((0, 3, 2), True),  # 4 + 1 + 2 = 7 > 20/3
    ((0, 1), True),  # 7
])
def test_quorum_with_unequal_powers(voters, quorum: bool) -> None:
    pool = MotionPool(UNEQUAL)
    m1 = make_motion(swarm=UNEQUAL)
    add(pool, m1)
    cast_all(pool, m1, *("approve" if i in voters else None for i in range(4)))
    out = pool.resolvable(1.0, 10)
    assert bool(out) is quorum
    if quorum:
        assert out[0].closing is Closing.QUORUM and out[0].outcome == "approve"


def test_committed_but_unrevealed_ballots_do_not_count() -> None:
    pool = MotionPool(SWARM)
    add(pool, M1)
    for v in V[:4]:
        assert pool.add_commitment(_commit(v)) is BallotVerdict.ADDED
    cast_all(pool, M1, None, None, None, None)
    assert pool.resolvable(0.0, 10) == []
    assert pool.progress(M1.id) == Progress(4, 0)


def test_deadline_resolves_with_whatever_was_revealed() -> None:
    pool = MotionPool(SWARM)
    add(pool, M1, now=100.0)
    add(pool, M2, now=100.0)
    cast_all(pool, M1, "approve", "reject")
    assert pool.resolvable(100.0 + DEADLINE_S - 0.001, 10) == []
    assert not pool.deadline_passed(M1.id, 100.0 + DEADLINE_S - 0.001)
    assert pool.deadline_passed(M1.id, 100.0 + DEADLINE_S)
    r1, r2 = pool.resolvable(100.0 + DEADLINE_S, 10)
    assert (r1.motion_id, r1.closing, r1.outcome, r1.tally, len(r1.ballots)) == \
        (M1.id, Closing.DEADLINE, NO_SUPERMAJORITY, (1, 1), 2)
    assert (r2.motion_id, r2.closing, r2.tally, r2.ballots) == (M2.id, Closing.DEADLINE, (0, 0), ())
    for res in (r1, r2):
        check_resolution(res, SWARM, deadline_passed=lambda m: pool.deadline_passed(m, 100.0 + DEADLINE_S))


def test_a_quorum_closes_before_the_deadline_and_wins_over_it() -> None:
    pool = MotionPool(SWARM)
    add(pool, M1)
    cast_all(pool, M1, "approve", "approve", "approve")
    assert [r.closing for r in pool.resolvable(0.0, 10)] == [Closing.QUORUM]
    assert [r.closing for r in pool.resolvable(DEADLINE_S * 5, 10)] == [Closing.QUORUM]
    assert pool.resolvable(0.0, 10)[0].outcome == "approve"


def test_resolvable_is_oldest_first_and_respects_the_limit() -> None:
    pool = MotionPool(SWARM)
    motions = [make_motion(f"Motion {i}?", seq=i + 1) for i in range(5)]
    for i, m in enumerate(motions):
        add(pool, m, now=float(i))
    cast_all(pool, motions[3], "approve", "approve", "approve")  # resolvable by quorum at once
    cast_all(pool, motions[1], "reject", "reject", "reject")
    assert [r.motion_id for r in pool.resolvable(0.0, 10)] == [motions[1].id, motions[3].id]
    assert [r.motion_id for r in pool.resolvable(0.0, 1)] == [motions[1].id]
    # After the deadline of motions 0-2 (first seen at 0, 1, 2): arrival order, skipping 4.
    now = 2.0 + DEADLINE_S
    assert [r.motion_id for r in pool.resolvable(now, 10)] == [m.id for m in motions[:4]]
    assert [r.motion_id for r in pool.resolvable(now, 3)] == [m.id for m in motions[:3]]
    assert pool.resolvable(now, 0) == []
    pool.mark_decided([motions[0].id, motions[1].id])
    assert [r.motion_id for r in pool.resolvable(now, 10)] == [motions[2].id, motions[3].id]


def test_deadline_passed_for_unknown_or_decided_motions_is_true() -> None:
    pool = MotionPool(SWARM)
    assert pool.deadline_passed(M1.id, 0.0)
    add(pool, M1, now=50.0)
    assert not pool.deadline_passed(M1.id, 50.0)
    pool.mark_decided([M1.id])
    assert pool.deadline_passed(M1.id, 50.0)


def test_a_resolution_carries_the_commitments_it_opens() -> None:
    pool = MotionPool(SWARM)
    add(pool, M1)
    cast_all(pool, M1, "approve", "approve", "reject", "approve")
    [res] = pool.resolvable(0.0, 1)
    assert [c.voter for c in res.ballots] == sorted(v.public_key for v in V[:4])
    entry = pool.get(M1.id)
    for c in res.ballots:
        assert c.commitment == entry.commitments[c.voter] and c.reveal == entry.reveals[c.voter]
    assert (res.outcome, res.tally) == ("approve", (3, 1))
