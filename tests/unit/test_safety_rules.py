"""SafetyRules: the one holder of a validator's key. Two-phase signing (authorise, persist,
then sign), no conflicting or earlier message ever, also across a restart from the
persisted SafetyState."""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.errors import ConflictingVoteError, LocalProtocolError, RemoteProtocolError
from consensus.safety import SafetyRules, SafetyState
from consensus.types import Block, Proposal, Step, Validator, ValidatorSet, Vote, VoteType

SWARM = hashlib.sha256(b"safety swarm").digest()
SEEDS = [hashlib.sha256(b"safety validator %d" % i).digest() for i in range(4)]
PKS = [bytes(nacl.signing.SigningKey(s).verify_key) for s in SEEDS]
VALSET = ValidatorSet(tuple(Validator(pk, 1) for pk in PKS))
GENESIS = hashlib.sha256(b"safety genesis").digest()
ME = 1
PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT


def block(payload: bytes, height: int = 5, creator: int = ME) -> Block:
    return Block(height, GENESIS, PKS[creator], payload)


V, W = block(b"v"), block(b"w")


def vote(type: VoteType, round: int, value: Block | None, height: int = 5) -> Vote:
    return Vote(type, height, round, value.hash if value is not None else None, ME)


def proposal(round: int, b: Block = V, vr: int = -1) -> Proposal:
    return Proposal(b.height, round, b, vr, ME)


def rules(persisted: SafetyState | None = None) -> SafetyRules:
    return SafetyRules(SEEDS[ME], SWARM, ME, persisted)


def authorize_and_persist(r: SafetyRules, msg, lock=(-1, None)) -> SafetyState:
    state = r.authorize(msg, lock)
    r.persisted(state)
    return state


# --- two-phase signing --------------------------------------------------------------------


def test_refuses_to_sign_what_was_never_authorised() -> None:
    with pytest.raises(LocalProtocolError) as info:
        rules().sign_vote(vote(PREVOTE, 0, V))
    assert type(info.value) is LocalProtocolError
    assert "not persisted" in str(info.value)


def test_refuses_to_sign_before_the_state_is_persisted() -> None:
    r = rules()
    state = r.authorize(vote(PREVOTE, 0, V))
    assert (state.height, state.round, state.step, state.value) == (5, 0, Step.PREVOTE, V.hash)
    with pytest.raises(LocalProtocolError) as info:
        r.sign_vote(vote(PREVOTE, 0, V))
    assert type(info.value) is LocalProtocolError and "persist before signing" in str(info.value)
    r.persisted(state)
    assert r.sign_vote(vote(PREVOTE, 0, V)).verify(VALSET, SWARM)


def test_signs_once_persisted_and_the_signature_verifies() -> None:
    r = rules()
    state = r.authorize(vote(PRECOMMIT, 2, V))
    r.persisted(state)
    sv = r.sign_vote(vote(PRECOMMIT, 2, V))
    assert sv.vote == vote(PRECOMMIT, 2, V)
    assert sv.verify(VALSET, SWARM)
    assert not sv.verify(VALSET, hashlib.sha256(b"other swarm").digest())


def test_a_proposal_is_signed_once_persisted() -> None:
    r = rules()
    state = r.authorize(proposal(3))
    assert (state.step, state.value) == (Step.PROPOSE, V.hash)
    with pytest.raises(LocalProtocolError):
        r.sign_proposal(proposal(3))
    r.persisted(state)
    sp = r.sign_proposal(proposal(3))
    assert sp.verify(VALSET, SWARM)


def test_persisting_a_later_state_covers_earlier_authorised_messages_of_the_height() -> None:
    r = rules()
    r.authorize(proposal(0))
    r.authorize(vote(PREVOTE, 0, V))
    last = r.authorize(vote(PRECOMMIT, 0, V))
    r.persisted(last)
    # All three were authorised at this height and are below the durable watermark:
    # signable (again), e.g. for re-broadcast.
    assert r.sign_proposal(proposal(0)).verify(VALSET, SWARM)
    assert r.sign_vote(vote(PREVOTE, 0, V)).verify(VALSET, SWARM)
    assert r.sign_vote(vote(PRECOMMIT, 0, V)).verify(VALSET, SWARM)
    # A value that was never authorised at a covered position is refused.
    with pytest.raises(ConflictingVoteError):
        r.sign_vote(vote(PREVOTE, 0, W))
    with pytest.raises(ConflictingVoteError):
        r.sign_vote(vote(PREVOTE, 0, None))


def test_an_older_persisted_state_does_not_lower_the_watermark() -> None:
    r = rules()
    first = authorize_and_persist(r, vote(PREVOTE, 0, V))
    second = authorize_and_persist(r, vote(PRECOMMIT, 0, V))
    r.persisted(first)  # a late acknowledgement
    assert r.durable == second
    assert r.sign_vote(vote(PRECOMMIT, 0, V)).verify(VALSET, SWARM)


def test_signs_only_for_its_own_validator_index() -> None:
    r = rules()
    other = Vote(PREVOTE, 5, 0, V.hash, ME + 1)
    authorize_and_persist(r, other)
    with pytest.raises(LocalProtocolError):
        r.sign_vote(other)


def test_signs_no_proposal_carrying_another_proposer_index() -> None:
    r = rules()
    p = Proposal(5, 0, block(b"x", creator=2), -1, 2)
    authorize_and_persist(r, p)
    with pytest.raises(LocalProtocolError):
        r.sign_proposal(p)


def test_signs_a_re_proposal_of_a_block_created_by_another_validator() -> None:
    r = rules()
    p = Proposal(5, 4, block(b"y", creator=2), 2, ME)
    authorize_and_persist(r, p)
    assert r.sign_proposal(p).proposal == p


# --- conflicts ----------------------------------------------------------------------------


CONFLICTS = [
    # (what was authorised, what is then refused)
    ("another value, same (h, r, prevote)", vote(PREVOTE, 3, V), vote(PREVOTE, 3, W)),
    ("nil after a value, same (h, r, prevote)", vote(PREVOTE, 3, V), vote(PREVOTE, 3, None)),
    ("a value after nil, same (h, r, precommit)", vote(PRECOMMIT, 3, None), vote(PRECOMMIT, 3, V)),
    ("another block, same (h, r, propose)", proposal(3, V), proposal(3, W)),
    ("a prevote after the precommit of the round", vote(PRECOMMIT, 3, V), vote(PREVOTE, 3, V)),
    ("a proposal after the prevote of the round", vote(PREVOTE, 3, V), proposal(3, V)),
    ("an earlier round", vote(PREVOTE, 3, V), vote(PRECOMMIT, 2, V)),
    ("an earlier height", vote(PREVOTE, 0, V), vote(PRECOMMIT, 9, V, height=4)),
]


@pytest.mark.parametrize("first, second", [pytest.param(a, b, id=n) for n, a, b in CONFLICTS])
def test_authorize_refuses_conflicting_or_earlier_messages(first, second) -> None:
    r = rules()
    state = authorize_and_persist(r, first)
    with pytest.raises(ConflictingVoteError):
        r.authorize(second)
    assert r.authorized == state  # nothing changed
    # ... also after a restart from the persisted bytes.
    restarted = rules(SafetyState.decode(state.encode()))
    with pytest.raises(ConflictingVoteError):
        restarted.authorize(second)
    assert restarted.authorized == state


def test_authorize_refuses_while_the_state_is_not_yet_persisted_too() -> None:
    r = rules()
    r.authorize(vote(PREVOTE, 0, V))  # authorised, not durable
    with pytest.raises(ConflictingVoteError):
        r.authorize(vote(PREVOTE, 0, W))


def test_later_positions_are_allowed_and_proposals_count_as_step_propose() -> None:
    r = rules()
    steps = []
    for msg in (proposal(0), vote(PREVOTE, 0, V), vote(PRECOMMIT, 0, None), proposal(1, W),
                vote(PREVOTE, 1, None), vote(PREVOTE, 0, V, height=6)):
        steps.append(authorize_and_persist(r, msg).position)
    assert steps == [(5, 0, 1), (5, 0, 2), (5, 0, 3), (5, 1, 1), (5, 1, 2), (6, 0, 2)]
    assert int(Step.PROPOSE) < int(Step.PREVOTE) < int(Step.PRECOMMIT)


def test_authorising_the_identical_message_again_is_idempotent() -> None:
    r = rules()
    a = authorize_and_persist(r, vote(PRECOMMIT, 1, V), (1, V.hash))
    b = authorize_and_persist(r, vote(PRECOMMIT, 1, V), (1, V.hash))
    assert a == b
    assert r.sign_vote(vote(PRECOMMIT, 1, V)).verify(VALSET, SWARM)


# --- restart --------------------------------------------------------------------------------


def test_after_restart_the_identical_last_message_may_be_signed_again() -> None:
    before = rules()
    state = authorize_and_persist(before, vote(PRECOMMIT, 4, V), (4, V.hash))
    old = before.sign_vote(vote(PRECOMMIT, 4, V))
    after = rules(SafetyState.decode(state.encode()))
    # Without authorising again (e.g. re-broadcast of the last vote) ...
    assert after.sign_vote(vote(PRECOMMIT, 4, V)) == old  # ed25519 is deterministic
    # ... and after authorising it again.
    again = after.authorize(vote(PRECOMMIT, 4, V), (4, V.hash))
    after.persisted(again)
    assert after.sign_vote(vote(PRECOMMIT, 4, V)) == old


def test_after_restart_nothing_else_at_or_below_the_last_position_is_signed() -> None:
    before = rules()
    authorize_and_persist(before, proposal(4, V))
    authorize_and_persist(before, vote(PREVOTE, 4, V))
    state = authorize_and_persist(before, vote(PRECOMMIT, 4, V), (4, V.hash))
    after = rules(SafetyState.decode(state.encode()))
    # The pre-crash prevote and proposal were signable before the crash; not any more: the
    # restarted rules only know the last message.
    with pytest.raises(ConflictingVoteError):
        after.sign_vote(vote(PREVOTE, 4, V))
    with pytest.raises(ConflictingVoteError):
        after.sign_proposal(proposal(4, V))
    with pytest.raises(ConflictingVoteError):
        after.sign_vote(vote(PRECOMMIT, 4, W))
    with pytest.raises(LocalProtocolError):
        after.sign_vote(vote(PREVOTE, 5, V))  # later: not authorised, not persisted
    # Moving forward still works.
    nxt = authorize_and_persist(after, vote(PREVOTE, 5, None), (4, V.hash))
    assert after.sign_vote(vote(PREVOTE, 5, None)).verify(VALSET, SWARM)
    assert (nxt.locked_round, nxt.locked_value) == (4, V.hash)


# --- the persisted state --------------------------------------------------------------------


def test_the_lock_is_carried_in_the_state_and_survives_encode_decode() -> None:
    r = rules()
    state = r.authorize(vote(PRECOMMIT, 2, V), (2, V.hash))
    assert (state.locked_round, state.locked_value) == (2, V.hash)
    decoded = SafetyState.decode(state.encode())
    assert decoded == state
    assert (decoded.locked_round, decoded.locked_value) == (2, V.hash)
    unlocked = r.authorize(vote(PRECOMMIT, 3, None))
    assert (unlocked.locked_round, unlocked.locked_value) == (-1, None)


def test_a_state_must_have_a_whole_lock_and_hash_sized_values() -> None:
    with pytest.raises(LocalProtocolError):
        SafetyState(1, 0, Step.PREVOTE, None, 2, None)
    with pytest.raises(LocalProtocolError):
        SafetyState(1, 0, Step.PREVOTE, None, -1, V.hash)
    with pytest.raises(LocalProtocolError):
        SafetyState(1, 0, Step.PREVOTE, b"short", -1, None)


def test_decoding_garbage_state_is_an_error() -> None:
    # Our own persisted state: corruption is our problem (LocalProtocolError), not a peer's.
    with pytest.raises(LocalProtocolError):
        SafetyState.decode(b"\xc1 not msgpack")


hashes = st.one_of(st.none(), st.binary(min_size=32, max_size=32))


@given(
    height=st.integers(1, 2**40), round=st.integers(0, 2**20), step=st.sampled_from(list(Step)),
    value=hashes, lock=st.one_of(st.just((-1, None)), st.tuples(st.integers(0, 2**20), st.binary(min_size=32, max_size=32))),
)
def test_state_encode_decode_round_trip(height, round, step, value, lock) -> None:
    s = SafetyState(height, round, step, value, *lock)
    assert SafetyState.decode(s.encode()) == s
    assert SafetyState.decode(s.encode()).position == (height, round, int(step))
