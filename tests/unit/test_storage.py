"""The peer's durable store (agents/storage.py): every table round-trips, the decision
chain only grows by linked heights, the safety watermark never moves backwards, a reopen
keeps everything, the schema version is checked, corrupt rows are named, and the async
wrappers do their disk work in a worker thread.

The trio tests run on the real clock: the store works in threads, and an autojump clock
would jump to a ``fail_after`` deadline while a thread is fsyncing."""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import nacl.signing
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import storage
from agents.ballot import Ballot, ModelFingerprint, Sampling
from agents.commitment import Reveal, check_reveal, commit
from agents.storage import (
    FILE_NAME,
    SCHEMA_VERSION,
    PeerStore,
    PendingMotionsFull,
    StoreConflictError,
    StoreError,
)
from consensus.errors import ConflictingVoteError, LocalProtocolError
from consensus.qc import QuorumCertificate
from consensus.safety import SafetyState
from consensus.types import Block, SignedVote, Step, Validator, ValidatorSet, Vote, VoteType
from p2p import errors as perrors
from p2p.errors import ConfigError
from p2p.keys import Identity

TIMEOUT = 10  # real seconds; each test takes milliseconds

SWARM = hashlib.sha256(b"storage swarm").digest()
SEEDS = [hashlib.sha256(b"storage validator %d" % i).digest() for i in range(4)]
KEYS = [nacl.signing.SigningKey(s) for s in SEEDS]
PKS = [bytes(k.verify_key) for k in KEYS]
VALSET = ValidatorSet(tuple(Validator(pk, 1) for pk in PKS))
GENESIS = bytes(32)
ME = Identity(SEEDS[0])
OTHERS = [Identity(s) for s in SEEDS[1:]]
FP = ModelFingerprint("ab" * 32, 2048, Sampling(), "conclave-prompt/1", "cd" * 32, "ef" * 32, "0.3.16")


def certificate(block: Block, round: int = 0, signers: tuple[int, ...] = (0, 1, 2),
                type: VoteType = VoteType.PRECOMMIT) -> QuorumCertificate:
    votes = []
    for i in signers:
        vote = Vote(type, block.height, round, block.hash, i)
        votes.append(SignedVote(vote, KEYS[i].sign(vote.signing_bytes(SWARM)).signature))
    return QuorumCertificate.from_votes(votes, len(KEYS))


def make_block(height: int, prev: bytes, payload: bytes = b"") -> Block:
    return Block(height, prev, PKS[height % 4], payload or b"resolutions at %d" % height)


def chain(n: int, genesis: bytes = GENESIS) -> list[tuple[Block, QuorumCertificate]]:
    out, prev = [], genesis
    for h in range(1, n + 1):
        b = make_block(h, prev)
        out.append((b, certificate(b)))
        prev = b.hash
    return out


def fill(store: PeerStore, n: int) -> list[tuple[Block, QuorumCertificate]]:
    decided = chain(n, store.genesis_hash)
    for h, (b, qc) in enumerate(decided, 1):
        assert store.append_decision(h, 0, b, qc) is True
    return decided


def motion_id(n: int) -> bytes:
    return hashlib.sha256(b"motion %d" % n).digest()


def ballot(n: int = 1, identity: Identity = ME, choice: str = "approve") -> Ballot:
    return Ballot.sign(identity, swarm_id=SWARM, motion_id=motion_id(n), motion_text=f"Motion {n}?",
                       options=("approve", "reject"), choice=choice, reason="Because.", fingerprint=FP)


def salt(n: int) -> bytes:
    return hashlib.sha256(b"salt %d" % n).digest()


@pytest.fixture
def store(tmp_path: Path):
    s = PeerStore.open(tmp_path / "peer")
    try:
        yield s
    finally:
        s.close()


def raw(store_dir: Path) -> sqlite3.Connection:
    """A second connection to the file, bypassing the store (to inspect or corrupt it)."""
    return sqlite3.connect(store_dir / FILE_NAME, isolation_level=None)


# --- opening -------------------------------------------------------------------------


def test_open_creates_the_directory_and_one_sqlite_file_in_wal_full_sync(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    with PeerStore.open(directory) as s:
        assert s.path == directory / FILE_NAME and s.path.is_file()
        db = s._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.schema_version() == SCHEMA_VERSION == 1
        assert s.integrity_check() == []
    con = raw(directory)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"schema_version", "decisions", "safety", "ballots", "commitments", "pending_motions"}
    columns = {r[1]: (r[2], r[3], r[5]) for r in con.execute("PRAGMA table_info(decisions)")}
    assert columns == {"height": ("INTEGER", 0, 1), "block_hash": ("BLOB", 1, 0), "block": ("BLOB", 1, 0),
                       "certificate": ("BLOB", 1, 0), "round": ("INTEGER", 1, 0)}
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    with pytest.raises(sqlite3.IntegrityError):  # the safety table holds one row, id 1
        con.execute("INSERT INTO safety(id, state) VALUES (2, x'00')")
    con.close()


def test_a_data_dir_that_is_a_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=str(blocker)):
        PeerStore.open(blocker)


def test_a_file_that_is_not_sqlite_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(ConfigError, match=rf"{tmp_path / FILE_NAME}: cannot open the peer store"):
        PeerStore.open(tmp_path)
    with pytest.raises(ConfigError, match="cannot open the peer store"):  # the failed open let go of its lock
        PeerStore.open(tmp_path)


def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / FILE_NAME)
    con.execute("CREATE TABLE customers(name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(ConfigError, match="not a Conclave peer store.*customers"):
        PeerStore.open(tmp_path)
    con = sqlite3.connect(tmp_path / FILE_NAME)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["customers"]
    con.close()


def test_a_store_from_a_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    PeerStore.open(tmp_path).close()
    con = raw(tmp_path)
    con.execute("UPDATE schema_version SET version = 7")
    con.close()
    with pytest.raises(ConfigError) as info:
        PeerStore.open(tmp_path)
    message = str(info.value)
    assert str(tmp_path / FILE_NAME) in message
    assert "newer" in message and "schema version 7" in message and f"up to {SCHEMA_VERSION}" in message


def test_the_migration_hook_upgrades_an_older_store_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with PeerStore.open(tmp_path) as s:
        fill(s, 2)
    calls = []

    def to_v2(db: sqlite3.Connection) -> None:
        calls.append(db.in_transaction)
        db.execute("CREATE TABLE evidence(id INTEGER PRIMARY KEY, data BLOB NOT NULL)")

    monkeypatch.setattr(storage, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(storage.MIGRATIONS, 2, to_v2)
    with PeerStore.open(tmp_path) as s:
        assert s.schema_version() == 2
        assert s.last_height() == 2  # the data came along
    with PeerStore.open(tmp_path) as s:
        assert s.schema_version() == 2
    assert calls == [True]  # ran once, inside the transaction that bumps the version
    monkeypatch.setattr(storage, "SCHEMA_VERSION", 1)
    with pytest.raises(ConfigError, match="schema version 2"):
        PeerStore.open(tmp_path)


def test_a_failing_migration_leaves_the_store_at_its_old_version(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    PeerStore.open(tmp_path).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done(x)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(storage, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(storage.MIGRATIONS, 2, broken)
    with pytest.raises(RuntimeError, match="migration bug"):
        PeerStore.open(tmp_path)
    monkeypatch.setattr(storage, "SCHEMA_VERSION", 1)
    with PeerStore.open(tmp_path) as s:
        assert s.schema_version() == 1
    con = raw(tmp_path)
    assert not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone()
    con.close()


def test_one_store_per_directory_at_a_time(tmp_path: Path) -> None:
    first = PeerStore.open(tmp_path)
    with pytest.raises(ConfigError, match="in use by another process"):
        PeerStore.open(tmp_path)
    first.close()
    PeerStore.open(tmp_path).close()  # the lock went with the close


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    s = PeerStore.open(tmp_path)
    s.close()
    s.close()  # twice is harmless
    with pytest.raises(StoreError, match="closed"):
        s.last_height()


# --- decisions -----------------------------------------------------------------------


def test_an_empty_store_is_at_genesis(store: PeerStore) -> None:
    assert store.last_height() == 0
    assert store.tip_hash() == GENESIS
    assert store.decision(1) is None
    assert store.decisions(1, 10) == []


def test_decisions_round_trip_with_verifiable_certificates(store: PeerStore) -> None:
    decided = fill(store, 5)
    assert store.last_height() == 5
    assert store.tip_hash() == decided[-1][0].hash
    for h, (b, qc) in enumerate(decided, 1):
        d = store.decision(h)
        assert d is not None
        assert (d.height, d.round, d.block, d.certificate) == (h, 0, b, qc)
        assert d.block_hash == b.hash == d.block.hash
        assert d.certificate.verify(VALSET, SWARM) is None
    assert [d.height for d in store.decisions(2, 4)] == [2, 3, 4]
    assert [d.block for d in store.decisions(4, 99)] == [decided[3][0], decided[4][0]]  # clipped at the tip
    assert store.decisions(6, 5) == []
    assert store.decision(6) is None
    with pytest.raises(LocalProtocolError, match="range"):
        store.decisions(0, 3)


def test_a_decision_keeps_its_round(store: PeerStore) -> None:
    b = make_block(1, GENESIS)
    assert store.append_decision(1, 3, b, certificate(b, round=3))
    assert store.decision(1).round == 3
    assert store.decision(1).certificate.round == 3


@pytest.mark.parametrize("height", [5, 9])
def test_append_refuses_a_height_that_skips_ahead(store: PeerStore, height: int) -> None:
    fill(store, 3)
    b = Block(height, store.tip_hash(), PKS[0], b"x")
    with pytest.raises(LocalProtocolError, match=f"height mismatch: got {height}, expected 4"):
        store.append_decision(height, 0, b, certificate(b))
    assert store.last_height() == 3 and store.decision(height) is None


def test_the_first_decision_is_at_height_1(store: PeerStore) -> None:
    b = Block(2, GENESIS, PKS[0], b"x")
    with pytest.raises(LocalProtocolError, match="height mismatch: got 2, expected 1"):
        store.append_decision(2, 0, b, certificate(b))
    for bad in (0, -1, True):
        with pytest.raises(LocalProtocolError, match="height must be >= 1"):
            store.append_decision(bad, 0, b, certificate(b))
    assert store.last_height() == 0


def test_append_refuses_a_block_that_does_not_link_the_tip_naming_both(store: PeerStore) -> None:
    decided = fill(store, 3)
    b = make_block(4, decided[1][0].hash)  # links height 2, not 3
    with pytest.raises(LocalProtocolError, match="prev_hash mismatch at height 4") as info:
        store.append_decision(4, 0, b, certificate(b))
    assert decided[1][0].hash.hex() in str(info.value) and decided[2][0].hash.hex() in str(info.value)
    assert store.last_height() == 3


def test_the_first_block_must_link_the_genesis_given_at_open(tmp_path: Path) -> None:
    genesis = hashlib.sha256(b"swarm genesis file").digest()
    with PeerStore.open(tmp_path, genesis_hash=genesis) as s:
        assert s.tip_hash() == genesis
        wrong = make_block(1, GENESIS)
        with pytest.raises(LocalProtocolError, match="prev_hash mismatch at height 1"):
            s.append_decision(1, 0, wrong, certificate(wrong))
        fill(s, 2)
    with pytest.raises(ConfigError, match="another genesis"):
        PeerStore.open(tmp_path)  # the default genesis is not this chain's
    with PeerStore.open(tmp_path, genesis_hash=genesis) as s:
        assert s.last_height() == 2


def test_append_refuses_a_certificate_for_something_else(store: PeerStore) -> None:
    b = make_block(1, GENESIS)
    other = make_block(1, GENESIS, b"another block")
    for bad in (certificate(other), certificate(b, round=1), certificate(b, type=VoteType.PREVOTE)):
        with pytest.raises(LocalProtocolError, match="certificate mismatch at height 1"):
            store.append_decision(1, 0, b, bad)
    with pytest.raises(LocalProtocolError, match="height mismatch: the block is of height 1, appended at 2"):
        store.append_decision(2, 0, b, certificate(b))
    assert store.last_height() == 0


def test_re_appending_the_same_decision_is_a_no_op(store: PeerStore) -> None:
    decided = fill(store, 3)
    b, qc = decided[1]
    assert store.append_decision(2, 0, b, qc) is False
    # the same block with another quorum (another signer set) is the same decision: the first stays
    other_qc = certificate(b, signers=(1, 2, 3))
    assert store.append_decision(2, 0, b, other_qc) is False
    assert store.decision(2).certificate == qc
    assert store.last_height() == 3


def test_a_conflicting_block_at_a_decided_height_is_refused(store: PeerStore) -> None:
    decided = fill(store, 3)
    rival = make_block(2, decided[0][0].hash, b"a rival block")
    with pytest.raises(LocalProtocolError, match="conflicting decision at height 2") as info:
        store.append_decision(2, 0, rival, certificate(rival))
    assert decided[1][0].hash.hex() in str(info.value) and rival.hash.hex() in str(info.value)
    assert store.decision(2).block == decided[1][0]


# --- safety state --------------------------------------------------------------------

H1, H2 = hashlib.sha256(b"v").digest(), hashlib.sha256(b"w").digest()


def test_safety_state_round_trips_and_moves_forward(store: PeerStore) -> None:
    assert store.load_safety_state() is None
    states = [SafetyState(1, 0, Step.PROPOSE, H1), SafetyState(1, 0, Step.PREVOTE, H1),
              SafetyState(1, 0, Step.PRECOMMIT, H1, 0, H1), SafetyState(1, 2, Step.PREVOTE, None, 0, H1),
              SafetyState(2, 0, Step.PREVOTE, H2)]
    for s in states:
        assert store.save_safety_state(s) is True
        assert store.load_safety_state() == s
    assert store.save_safety_state(states[-1]) is False  # the same state again


@pytest.mark.parametrize("earlier", [SafetyState(2, 0, Step.PROPOSE, H2), SafetyState(1, 9, Step.PRECOMMIT, H2),
                                     SafetyState(2, 0, Step.PREVOTE, H1), SafetyState(2, 0, Step.PREVOTE, None)])
def test_safety_state_never_moves_backwards_nor_changes_its_value(store: PeerStore, earlier: SafetyState) -> None:
    current = SafetyState(2, 0, Step.PREVOTE, H2)
    store.save_safety_state(current)
    with pytest.raises(ConflictingVoteError) as info:
        store.save_safety_state(earlier)
    assert isinstance(info.value, StoreConflictError)
    assert "height 2 round 0 prevote" in str(info.value)
    assert store.load_safety_state() == current


def test_a_lock_taken_at_the_same_position_is_kept(store: PeerStore) -> None:
    store.save_safety_state(SafetyState(3, 1, Step.PRECOMMIT, H1))
    locked = SafetyState(3, 1, Step.PRECOMMIT, H1, 1, H1)
    assert store.save_safety_state(locked) is True
    assert store.load_safety_state() == locked


positions = st.tuples(st.integers(1, 4), st.integers(0, 3), st.sampled_from(list(Step)), st.sampled_from([H1, H2]))


@settings(max_examples=25, deadline=None)
@given(st.lists(positions, min_size=1, max_size=12))
def test_the_stored_watermark_is_the_highest_accepted_state(seq: list) -> None:
    with tempfile.TemporaryDirectory() as d, PeerStore.open(Path(d)) as s:
        best = None
        for h, r, step, value in seq:
            state = SafetyState(h, r, step, value)
            allowed = best is None or state.position > best.position or state == best
            if allowed:
                s.save_safety_state(state)
                best = state
            else:
                with pytest.raises(ConflictingVoteError):
                    s.save_safety_state(state)
            assert s.load_safety_state() == best


# --- ballots and commitments ---------------------------------------------------------


def test_own_ballots_round_trip_as_reveals_that_open_their_commitments(store: PeerStore) -> None:
    b1, b2 = ballot(1), ballot(2, choice="reject")
    assert store.save_ballot(motion_id(1), b1, salt(1)) is True
    assert store.save_ballot(motion_id(2), b2, salt(2)) is True
    r1 = store.ballot(motion_id(1))
    assert r1 == Reveal(b1, salt(1))
    assert r1.ballot.verify()
    check_reveal(commit(b1, salt(1), ME), r1)  # the stored salt opens what was committed
    assert store.ballot(motion_id(2)).ballot.choice == "reject"
    assert store.ballot(motion_id(3)) is None


def test_a_second_different_ballot_for_a_motion_is_refused(store: PeerStore) -> None:
    store.save_ballot(motion_id(1), ballot(1), salt(1))
    assert store.save_ballot(motion_id(1), ballot(1), salt(1)) is False  # identical: no-op
    with pytest.raises(StoreConflictError, match=motion_id(1).hex()):
        store.save_ballot(motion_id(1), ballot(1, choice="reject"), salt(1))
    with pytest.raises(StoreConflictError):
        store.save_ballot(motion_id(1), ballot(1), salt(9))
    with pytest.raises(LocalProtocolError, match="is for motion"):
        store.save_ballot(motion_id(2), ballot(1), salt(1))
    with pytest.raises(LocalProtocolError, match="salt must be 32 bytes"):
        store.save_ballot(motion_id(5), ballot(5), b"short")
    assert store.ballot(motion_id(1)) == Reveal(ballot(1), salt(1))


def test_commitments_round_trip_per_motion_and_voter(store: PeerStore) -> None:
    voters = [ME, *OTHERS]
    made = {v.public_key: commit(ballot(1, v), salt(i), v) for i, v in enumerate(voters)}
    for c in made.values():
        assert store.save_commitment(c) is True
    elsewhere = commit(ballot(2), salt(0), ME)
    store.save_commitment(elsewhere)
    got = store.commitments(motion_id(1))
    assert [c.voter for c in got] == sorted(made)
    assert got == [made[k] for k in sorted(made)]
    assert all(c.verify() for c in got)
    assert store.commitments(motion_id(2)) == [elsewhere]
    assert store.commitments(motion_id(3)) == []


def test_a_second_different_commitment_from_a_voter_is_refused_and_the_first_stays(store: PeerStore) -> None:
    first = commit(ballot(1, OTHERS[0]), salt(1), OTHERS[0])
    second = commit(ballot(1, OTHERS[0], choice="reject"), salt(1), OTHERS[0])
    store.save_commitment(first)
    assert store.save_commitment(first) is False
    with pytest.raises(StoreConflictError, match="another commitment"):
        store.save_commitment(second)
    assert store.commitments(motion_id(1)) == [first]


# --- pending motions -----------------------------------------------------------------


def test_pending_motions_keep_arrival_order_and_drop_duplicates(store: PeerStore) -> None:
    for n in (3, 1, 2):
        assert store.add_pending_motion(motion_id(n), b"envelope %d" % n) is True
    assert store.add_pending_motion(motion_id(1), b"replayed") is False
    pending = store.pending_motions()
    assert [p.motion_id for p in pending] == [motion_id(3), motion_id(1), motion_id(2)]
    assert [p.envelope for p in pending] == [b"envelope 3", b"envelope 1", b"envelope 2"]
    assert [p.received_seq for p in pending] == sorted(p.received_seq for p in pending)
    assert store.remove_pending_motion(motion_id(1)) is True
    assert store.remove_pending_motion(motion_id(1)) is False
    assert store.add_pending_motion(motion_id(4), b"envelope 4")
    assert [p.motion_id for p in store.pending_motions()] == [motion_id(3), motion_id(2), motion_id(4)]
    assert store.remove_pending_motions([motion_id(3), motion_id(9), motion_id(4)]) == 2
    assert store.pending_count() == 1


def test_pending_motions_are_bounded(tmp_path: Path) -> None:
    with PeerStore.open(tmp_path, max_pending=3) as s:
        for n in range(3):
            s.add_pending_motion(motion_id(n), b"e")
        with pytest.raises(PendingMotionsFull, match="3 motions pending already, the limit is 3"):
            s.add_pending_motion(motion_id(3), b"e")
        assert isinstance(PendingMotionsFull("x"), LocalProtocolError)
        assert s.add_pending_motion(motion_id(0), b"e") is False  # a duplicate is not "full"
        assert s.pending_count() == 3
        s.remove_pending_motion(motion_id(1))
        assert s.add_pending_motion(motion_id(3), b"e") is True
    with PeerStore.open(tmp_path, max_pending=2) as s:  # a lower limit on reopen: nothing is lost
        assert s.pending_count() == 3
        with pytest.raises(PendingMotionsFull):
            s.add_pending_motion(motion_id(4), b"e")


def test_a_decision_removes_its_resolved_motions_in_the_same_transaction(store: PeerStore) -> None:
    for n in range(4):
        store.add_pending_motion(motion_id(n), b"e")
    b = make_block(1, GENESIS)
    wrong = make_block(2, GENESIS)
    with pytest.raises(LocalProtocolError):  # a refused decision removes nothing
        store.append_decision(2, 0, wrong, certificate(wrong), resolved_motions=[motion_id(0)])
    assert store.pending_count() == 4
    store.append_decision(1, 0, b, certificate(b), resolved_motions=[motion_id(0), motion_id(2)])
    assert [p.motion_id for p in store.pending_motions()] == [motion_id(1), motion_id(3)]


# --- reopening and corruption --------------------------------------------------------


def test_a_reopened_store_has_everything(tmp_path: Path) -> None:
    c = commit(ballot(1, OTHERS[1]), salt(5), OTHERS[1])
    state = SafetyState(4, 1, Step.PRECOMMIT, H1, 1, H1)
    with PeerStore.open(tmp_path) as s:
        decided = fill(s, 4)
        s.save_safety_state(state)
        s.save_ballot(motion_id(1), ballot(1), salt(1))
        s.save_commitment(c)
        s.add_pending_motion(motion_id(7), b"seven")
        s.add_pending_motion(motion_id(6), b"six")
    with PeerStore.open(tmp_path) as s:
        assert s.last_height() == 4 and s.tip_hash() == decided[-1][0].hash
        assert [(d.block, d.certificate) for d in s.decisions(1, 4)] == decided
        assert s.load_safety_state() == state
        with pytest.raises(ConflictingVoteError):  # the watermark survived too
            s.save_safety_state(SafetyState(4, 1, Step.PREVOTE, H1))
        assert s.ballot(motion_id(1)) == Reveal(ballot(1), salt(1))
        assert s.commitments(motion_id(1)) == [c]
        assert [(p.motion_id, p.envelope) for p in s.pending_motions()] == [(motion_id(7), b"seven"),
                                                                              (motion_id(6), b"six")]
        more = make_block(5, decided[-1][0].hash)
        assert s.append_decision(5, 0, more, certificate(more))  # and the chain goes on
        assert s.add_pending_motion(motion_id(8), b"eight")
        assert s.pending_motions()[-1].motion_id == motion_id(8)  # after the older ones
        assert s.integrity_check() == []


def corrupt(directory: Path, sql: str, *args: object) -> None:
    con = raw(directory)
    con.execute(sql, args)
    con.close()


def expect_corrupt(call, table: str, key: str) -> None:
    with pytest.raises(StoreError) as info:
        call()
    message = str(info.value)
    assert f"corrupt row in {table} at {key}" in message and FILE_NAME in message
    # our own disk: a local fault, under both packages' error hierarchies
    assert isinstance(info.value, LocalProtocolError) and isinstance(info.value, perrors.LocalProtocolError)


def test_corrupt_rows_are_reported_naming_the_table_and_key(store: PeerStore, tmp_path: Path) -> None:
    d = tmp_path / "peer"
    fill(store, 3)
    store.save_safety_state(SafetyState(3, 0, Step.PRECOMMIT, H1))
    store.save_ballot(motion_id(1), ballot(1), salt(1))
    voter = OTHERS[0].public_key
    store.save_commitment(commit(ballot(1, OTHERS[0]), salt(1), OTHERS[0]))

    corrupt(d, "UPDATE decisions SET block = ? WHERE height = 2", b"\xc1garbage")
    expect_corrupt(lambda: store.decision(2), "decisions", "height 2")
    expect_corrupt(lambda: store.decisions(1, 3), "decisions", "height 2")
    # decodable but not what the row says it is: a block of another height
    corrupt(d, "UPDATE decisions SET block = ? WHERE height = 3", make_block(4, GENESIS).encode())
    expect_corrupt(lambda: store.decision(3), "decisions", "height 3")
    corrupt(d, "UPDATE decisions SET certificate = ? WHERE height = 1", msgpack.packb([1, 2, 3]))
    expect_corrupt(lambda: store.decision(1), "decisions", "height 1")

    corrupt(d, "UPDATE safety SET state = ?", b"\x93\x01")
    expect_corrupt(store.load_safety_state, "safety", "id 1")
    expect_corrupt(lambda: store.save_safety_state(SafetyState(9, 0, Step.PROPOSE, H1)), "safety", "id 1")

    corrupt(d, "UPDATE ballots SET ballot = ?", msgpack.packb({"swarm_id": b"x"}))
    expect_corrupt(lambda: store.ballot(motion_id(1)), "ballots", f"motion {motion_id(1).hex()}")
    corrupt(d, "UPDATE ballots SET ballot = ?, salt = ?", ballot(1).encode(), b"short")
    expect_corrupt(lambda: store.ballot(motion_id(1)), "ballots", f"motion {motion_id(1).hex()}")

    corrupt(d, "UPDATE commitments SET commitment = ?", b"")
    expect_corrupt(lambda: store.commitments(motion_id(1)), "commitments",
                   f"motion {motion_id(1).hex()} voter {voter.hex()}")
    corrupt(d, "UPDATE commitments SET commitment = ?", commit(ballot(2, OTHERS[0]), salt(1), OTHERS[0]).encode())
    expect_corrupt(lambda: store.commitments(motion_id(1)), "commitments", f"motion {motion_id(1).hex()}")

    corrupt(d, "INSERT INTO pending_motions VALUES (?, ?, 1)", b"short id", b"e")
    expect_corrupt(store.pending_motions, "pending_motions", "motion b'short id'")


# --- from trio -----------------------------------------------------------------------


async def test_run_does_the_work_in_a_worker_thread(store: PeerStore) -> None:
    def where() -> threading.Thread:
        assert threading.current_thread() is not threading.main_thread()
        return threading.current_thread()

    with trio.fail_after(TIMEOUT):
        worker = await store.run(where)
    assert worker is not threading.current_thread()


async def test_every_async_wrapper_runs_its_sql_off_the_event_loop_thread(store: PeerStore) -> None:
    threads: set[threading.Thread] = set()
    store._db.set_trace_callback(lambda _stmt: threads.add(threading.current_thread()))
    decided = chain(2)
    c = commit(ballot(1, OTHERS[0]), salt(1), OTHERS[0])
    state = SafetyState(2, 0, Step.PRECOMMIT, decided[1][0].hash)
    with trio.fail_after(TIMEOUT):
        for h, (b, qc) in enumerate(decided, 1):
            assert await store.aappend_decision(h, 0, b, qc) is True
        assert await store.aappend_decision(2, 0, *decided[1]) is False
        assert (await store.adecision(2)).block == decided[1][0]
        assert [d.height for d in await store.adecisions(1, 2)] == [1, 2]
        assert await store.alast_height() == 2
        assert await store.atip_hash() == decided[1][0].hash
        assert await store.asave_safety_state(state) is True
        assert await store.aload_safety_state() == state
        with pytest.raises(ConflictingVoteError):
            await store.asave_safety_state(SafetyState(1, 0, Step.PRECOMMIT, H1))
        assert await store.asave_ballot(motion_id(1), ballot(1), salt(1)) is True
        assert await store.aballot(motion_id(1)) == Reveal(ballot(1), salt(1))
        assert await store.asave_commitment(c) is True
        assert await store.acommitments(motion_id(1)) == [c]
        assert await store.aadd_pending_motion(motion_id(1), b"e") is True
        assert [p.motion_id for p in await store.apending_motions()] == [motion_id(1)]
        assert await store.apending_count() == 1
        assert await store.aremove_pending_motions([motion_id(1)]) == 1
        assert await store.aremove_pending_motion(motion_id(1)) is False
    assert threads, "the trace callback saw no SQL"
    assert threading.main_thread() not in threads
    assert PeerStore.aappend_decision.__name__ == "aappend_decision"


async def test_the_event_loop_keeps_running_while_the_store_works(store: PeerStore) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    def slow() -> None:
        time.sleep(0.3)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.sleep(0)
            await store.run(slow)
            nursery.cancel_scope.cancel()
    assert ticks >= 10


async def test_concurrent_callers_are_serialised(store: PeerStore) -> None:
    active = max_active = 0
    lock = threading.Lock()

    def add(n: int) -> bool:
        nonlocal active, max_active
        with lock:
            active += 1
            max_active = max(max_active, active)
        try:
            time.sleep(0.002)
            return store.add_pending_motion(motion_id(n), b"e %d" % n)
        finally:
            with lock:
                active -= 1

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(store.run, add, n)
    assert max_active == 1
    assert store.pending_count() == 20
    assert await store.aclose() is None
    with pytest.raises(StoreError, match="closed"):
        await store.apending_count()
