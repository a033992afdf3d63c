"""A peer's durable store: one SQLite file, ``DIR/peer.sqlite3``.

What it keeps, and why it must survive a SIGKILL at any point:

- ``decisions``: the committed blocks with their commit certificates, one per height,
  contiguous from 1, each block linking the previous one's hash (height 1 links the
  genesis hash). Final: a stored decision is never replaced.
- ``safety``: the last vote state this validator authorised (``SafetyState``). It is
  written *before* the vote is signed and sent, and it only ever moves forward, so a
  restarted validator never signs something that conflicts with what it signed before.
- ``ballots``: this agent's own ballots with the salt of its commitment (to reveal after
  a restart what was committed before it, and never commit to a second ballot).
- ``commitments``: the ballot commitments received for each motion, one per voter.
- ``pending_motions``: motions received and not yet resolved, in arrival order, bounded.

Durability: WAL journal with ``synchronous=FULL``, so a method that returned has its
transaction fsynced; a crash loses at most the call that was running, never half of it.
Every public method is one transaction. Methods are synchronous (blocking disk work); from
trio, use the ``a<name>`` wrappers (``await store.aappend_decision(...)``) or
``await store.run(fn, *args)``, which run in a worker thread behind a
``CapacityLimiter(1)``, never on the event loop.

Errors: a file or directory that cannot be used, or that belongs to a newer program, is a
``ConfigError`` naming the path. Misuse (a decision that does not extend the chain, a
safety state that moves backwards) and corrupt rows on our own disk are
``StoreError``: a ``LocalProtocolError`` of both ``consensus.errors`` and ``p2p.errors``
(our fault, not a peer's). Moving the safety state backwards is a
``StoreConflictError``, which is also a ``consensus.errors.ConflictingVoteError``.

A lock (``flock`` on ``DIR/peer.lock``) keeps a second process from opening the same
store: two validators sharing one safety state could equivocate. The kernel drops it when
the holder dies, also by SIGKILL.

Schema changes: bump ``SCHEMA_VERSION`` and add ``MIGRATIONS[new_version]``, a function
that moves a connection from ``new_version - 1`` to ``new_version`` inside the open
transaction. ``open`` applies the missing steps in order and refuses a file written by a
newer schema.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from agents.ballot import Ballot
from agents.commitment import SALT_BYTES, Commitment, Reveal
from consensus import errors as cerrors
from consensus.qc import QuorumCertificate
from consensus.safety import SafetyState
from consensus.types import HASH_BYTES, Block, ValidatorSet, VoteType
from p2p import errors as perrors
from p2p.durable import fsync_directory
from p2p.errors import ConfigError

FILE_NAME = "peer.sqlite3"
LOCK_NAME = "peer.lock"
SCHEMA_VERSION = 1
GENESIS_PREV = bytes(HASH_BYTES)
DEFAULT_MAX_PENDING = 10_000
MOTION_ID_BYTES = 32

T = TypeVar("T")


class StoreError(cerrors.LocalProtocolError, perrors.LocalProtocolError):
    """Misuse of the store, or a corrupt row on our own disk (names the table and key)."""


class StoreConflictError(StoreError, cerrors.ConflictingVoteError):
    """A write would take back something this agent already made durable: a safety state
    earlier than the stored one (or another value at the same position), or a second,
    different ballot for a motion."""


class PendingMotionsFull(StoreError):
    """The pending-motion table holds its limit already."""


@dataclass(frozen=True, slots=True)
class Decision:
    height: int
    round: int
    block: Block
    certificate: QuorumCertificate

    @property
    def block_hash(self) -> bytes:
        return self.block.hash


@dataclass(frozen=True, slots=True)
class PendingMotion:
    motion_id: bytes
    envelope: bytes
    received_seq: int


# --- schema --------------------------------------------------------------------------


def _create_v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE decisions(height INTEGER PRIMARY KEY, block_hash BLOB NOT NULL UNIQUE,"
               " block BLOB NOT NULL, certificate BLOB NOT NULL, round INTEGER NOT NULL)")
    db.execute("CREATE TABLE safety(id INTEGER PRIMARY KEY CHECK (id = 1), state BLOB NOT NULL)")
    db.execute("CREATE TABLE ballots(motion_id BLOB PRIMARY KEY, ballot BLOB NOT NULL, salt BLOB NOT NULL)")
    db.execute("CREATE TABLE commitments(motion_id BLOB, voter BLOB, commitment BLOB NOT NULL,"
               " PRIMARY KEY(motion_id, voter))")
    db.execute("CREATE TABLE pending_motions(motion_id BLOB PRIMARY KEY, envelope BLOB NOT NULL,"
               " received_seq INTEGER NOT NULL)")
    db.execute("CREATE INDEX pending_motions_by_seq ON pending_motions(received_seq)")


# MIGRATIONS[v] takes a store at schema v - 1 (0: empty file) to schema v.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _create_v1}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


# --- helpers -------------------------------------------------------------------------


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _need_id(name: str, value: object) -> None:
    if not isinstance(value, bytes) or len(value) != MOTION_ID_BYTES:
        raise StoreError(f"{name} must be {MOTION_ID_BYTES} bytes")


def _short(b: bytes) -> str:
    return b.hex()[:16] + "..."


# What decoding our own rows may raise: the decoders report bad bytes as the peer's
# fault (RemoteProtocolError), but on our disk they are ours.
_DECODE_ERRORS = (cerrors.ConsensusError, perrors.ConclaveError, ValueError, TypeError)


def _in_thread(method: Callable[..., T]) -> Callable[..., Any]:
    async def wrapper(self: PeerStore, *args: Any, **kwargs: Any) -> T:
        return await self.run(method, self, *args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = "a" + method.__name__
    wrapper.__doc__ = f"``{method.__name__}`` in a worker thread (one at a time): await it from trio."
    return wrapper


class PeerStore:
    """Open with :meth:`open`; close with :meth:`close` (or use as a context manager)."""

    def __init__(self, path: Path, db: sqlite3.Connection, lock_fd: int, genesis_hash: bytes,
                 max_pending: int) -> None:
        self.path = path
        self.genesis_hash = genesis_hash
        self.max_pending = max_pending
        self._db: sqlite3.Connection | None = db
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()  # one transaction at a time, whatever thread calls
        self._limiter = trio.CapacityLimiter(1)

    # --- opening and closing -----------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path, *, genesis_hash: bytes = GENESIS_PREV,
             max_pending: int = DEFAULT_MAX_PENDING) -> PeerStore:
        """Open (creating if needed) the store in ``data_dir``. ``genesis_hash`` is the
        ``prev_hash`` of the block at height 1; a store holding a chain from another
        genesis is refused."""
        data_dir = Path(data_dir)
        if not isinstance(genesis_hash, bytes) or len(genesis_hash) != HASH_BYTES:
            raise StoreError(f"genesis_hash must be {HASH_BYTES} bytes")
        if not _is_uint(max_pending) or max_pending == 0:
            raise StoreError(f"max_pending must be a positive integer, got {max_pending!r}")
        path = data_dir / FILE_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{data_dir}: cannot create the data directory ({exc.strerror})") from None
        lock_fd = _lock(data_dir / LOCK_NAME, path)
        db = None
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise ConfigError(f"{path}: the file system does not support a WAL journal (got {mode!r})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            _migrate(db, path)
            fsync_directory(data_dir)  # the new file and its WAL survive a power loss too
            store = cls(path, db, lock_fd, genesis_hash, max_pending)
            store._check_genesis()
            return store
        except (sqlite3.Error, OSError) as exc:
            _abandon(db, lock_fd)
            raise ConfigError(f"{path}: cannot open the peer store ({exc})") from None
        except BaseException:
            _abandon(db, lock_fd)
            raise

    @classmethod
    def open_readonly(cls, data_dir: Path, *, genesis_hash: bytes = GENESIS_PREV) -> PeerStore:
        """Open an existing store to read it (``conclave log``) while its peer may be
        running: no lock is taken and nothing can be written."""
        path = Path(data_dir) / FILE_NAME
        if not path.is_file():
            raise ConfigError(f"{path}: no peer store here (is {data_dir} a peer's --data directory?)")
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
            version = _read_version(db)
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: cannot read the peer store ({exc})") from None
        if not _is_uint(version) or version > SCHEMA_VERSION:
            db.close()
            raise ConfigError(f"{path}: store schema version {version!r} is not one this program reads")
        return cls(path, db, -1, genesis_hash, DEFAULT_MAX_PENDING)

    def close(self) -> None:
        with self._mutex:
            if self._db is not None:
                self._db.close()
                self._db = None
                if self._lock_fd >= 0:
                    os.close(self._lock_fd)

    def __enter__(self) -> PeerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, one at a time. Cancellation waits
        for the running call to finish, so a transaction is never left half done."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._limiter)

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            db = self._db
            if db is None:
                raise StoreError(f"{self.path}: the store is closed")
            try:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot begin a transaction ({exc})") from None
            try:
                yield db
            except sqlite3.Error as exc:  # disk full, I/O error, ...: our side
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: {exc}") from None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: commit failed ({exc})") from None

    def _corrupt(self, table: str, key: str, why: object) -> StoreError:
        return StoreError(f"{self.path}: corrupt row in {table} at {key}: {why}")

    def _check_genesis(self) -> None:
        first = self.decision(1)
        if first is not None and first.block.prev_hash != self.genesis_hash:
            raise ConfigError(f"{self.path}: holds a chain from another genesis (height 1 links "
                              f"{first.block.prev_hash.hex()}, this swarm's genesis is {self.genesis_hash.hex()})")

    def integrity_check(self) -> list[str]:
        """SQLite's own check of the file: [] when sound, else what it found."""
        with self._tx(write=False) as db:
            rows = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
        return [] if rows == ["ok"] else rows

    def schema_version(self) -> int:
        with self._tx(write=False) as db:
            return _read_version(db)

    # --- decisions ---------------------------------------------------------------------

    def append_decision(self, height: int, round: int, block: Block, certificate: QuorumCertificate,
                        resolved_motions: Iterable[bytes] = ()) -> bool:
        """Append the decision at ``height``: the next height, linking the tip. True if
        appended; False if this very block is already decided there (the first stored
        certificate stays). ``resolved_motions`` leave the pending motions in the same
        transaction."""
        if not isinstance(block, Block) or not isinstance(certificate, QuorumCertificate):
            raise StoreError("append_decision takes a Block and a QuorumCertificate")
        if not _is_uint(height) or height == 0 or not _is_uint(round):
            raise StoreError(f"height must be >= 1 and round >= 0, got height {height!r} round {round!r}")
        if block.height != height:
            raise StoreError(f"height mismatch: the block is of height {block.height}, appended at {height}")
        c = certificate
        if (c.type, c.height, c.round, c.value) != (VoteType.PRECOMMIT, height, round, block.hash):
            raise StoreError(
                f"certificate mismatch at height {height}: need a precommit certificate for height {height} "
                f"round {round} block {_short(block.hash)}, got {c.type.name.lower()} height {c.height} "
                f"round {c.round} value {_short(c.value) if c.value else 'nil'}")
        resolved = list(resolved_motions)
        for m in resolved:
            _need_id("a resolved motion id", m)
        with self._tx() as db:
            row = db.execute("SELECT height, block_hash FROM decisions ORDER BY height DESC LIMIT 1").fetchone()
            last, tip = (row[0], row[1]) if row else (0, self.genesis_hash)
            if height <= last:
                stored = db.execute("SELECT block_hash FROM decisions WHERE height = ?", (height,)).fetchone()[0]
                if stored != block.hash:
                    raise StoreError(f"conflicting decision at height {height}: stored block {stored.hex()}, "
                                     f"got block {block.hash.hex()}")
                return False
            if height != last + 1:
                raise StoreError(f"height mismatch: got {height}, expected {last + 1}")
            if block.prev_hash != tip:
                raise StoreError(f"prev_hash mismatch at height {height}: got {block.prev_hash.hex()}, "
                                 f"but the hash at height {last} is {tip.hex()}")
            try:
                db.execute("INSERT INTO decisions(height, block_hash, block, certificate, round) VALUES (?,?,?,?,?)",
                           (height, block.hash, block.encode(), certificate.encode(), round))
            except sqlite3.IntegrityError:  # the same block hash at another height
                raise StoreError(f"block {block.hash.hex()} is already decided at another height") from None
            db.executemany("DELETE FROM pending_motions WHERE motion_id = ?", [(m,) for m in resolved])
        return True

    def decision(self, height: int) -> Decision | None:
        if not _is_uint(height):
            raise StoreError(f"height must be a non-negative integer, got {height!r}")
        with self._tx(write=False) as db:
            row = db.execute("SELECT height, block_hash, block, certificate, round FROM decisions WHERE height = ?",
                             (height,)).fetchone()
        return None if row is None else self._decision(row)

    def decisions(self, first: int, last: int) -> list[Decision]:
        """The stored decisions at heights ``first..last`` (both inclusive), in order;
        fewer (possibly none) when the chain ends before ``last``."""
        if not (_is_uint(first) and _is_uint(last)) or first == 0 or last < first - 1:
            raise StoreError(f"range {first!r}..{last!r} is not a range of heights from 1")
        with self._tx(write=False) as db:
            rows = db.execute("SELECT height, block_hash, block, certificate, round FROM decisions "
                              "WHERE height BETWEEN ? AND ? ORDER BY height", (first, last)).fetchall()
        return [self._decision(row) for row in rows]

    def _decision(self, row: tuple) -> Decision:
        height, block_hash, block_bytes, cert_bytes, round = row
        key = f"height {height}"
        try:
            block = Block.decode(block_bytes)
            cert = QuorumCertificate.decode(cert_bytes)
        except _DECODE_ERRORS as exc:
            raise self._corrupt("decisions", key, exc) from None
        if block.height != height or block.hash != block_hash:
            raise self._corrupt("decisions", key, "the block does not match its height and hash")
        if (cert.type, cert.height, cert.round, cert.value) != (VoteType.PRECOMMIT, height, round, block_hash):
            raise self._corrupt("decisions", key, "the certificate does not commit this block")
        return Decision(height, round, block, cert)

    def check_links(self, decisions: Iterable[Decision], prev_hash: bytes) -> bytes:
        """That each of ``decisions`` (in height order) links the block before it,
        starting from ``prev_hash``; returns the last one's hash. A stored block changed
        on disk, whatever its row says, changes its hash and so breaks the next link."""
        for d in decisions:
            if d.block.prev_hash != prev_hash:
                raise self._corrupt("decisions", f"height {d.height}",
                                    "its block does not link the block before it (changed on disk?)")
            prev_hash = d.block.hash
        return prev_hash

    def check_certificate(self, decision: Decision, valset: ValidatorSet, swarm_id: bytes) -> None:
        """That the decision's certificate carries a quorum of valid signatures: checked
        at start for the tip, which, with the links, vouches for every block below it."""
        why = decision.certificate.verify(valset, swarm_id)
        if why is not None:
            raise self._corrupt("decisions", f"height {decision.height}", f"its certificate does not verify: {why}")

    def last_height(self) -> int:
        """The last decided height; 0 before the first decision."""
        with self._tx(write=False) as db:
            return db.execute("SELECT COALESCE(MAX(height), 0) FROM decisions").fetchone()[0]

    def tip_hash(self) -> bytes:
        """The hash of the last decided block; the genesis hash before the first."""
        with self._tx(write=False) as db:
            row = db.execute("SELECT block_hash FROM decisions ORDER BY height DESC LIMIT 1").fetchone()
        return self.genesis_hash if row is None else row[0]

    # --- safety state ------------------------------------------------------------------

    def save_safety_state(self, state: SafetyState) -> bool:
        """Make ``state`` the durable watermark. True if written; False if it is exactly
        the stored state. Never moves backwards: an earlier (height, round, step), or
        another value at the same one, is a ``StoreConflictError``."""
        if not isinstance(state, SafetyState):
            raise StoreError("save_safety_state takes a SafetyState")
        encoded = state.encode()
        with self._tx() as db:
            row = db.execute("SELECT state FROM safety WHERE id = 1").fetchone()
            if row is not None:
                stored = self._safety(row[0])
                if stored == state:
                    return False
                if state.position < stored.position:
                    raise StoreConflictError(f"safety state would move backwards: stored {_pos(stored)}, "
                                             f"got {_pos(state)}")
                if state.position == stored.position and state.value != stored.value:
                    raise StoreConflictError(f"safety state at {_pos(state)} already holds another value")
            db.execute("INSERT INTO safety(id, state) VALUES (1, ?) "
                       "ON CONFLICT(id) DO UPDATE SET state = excluded.state", (encoded,))
        return True

    def load_safety_state(self) -> SafetyState | None:
        with self._tx(write=False) as db:
            row = db.execute("SELECT state FROM safety WHERE id = 1").fetchone()
        return None if row is None else self._safety(row[0])

    def _safety(self, data: object) -> SafetyState:
        if not isinstance(data, bytes):
            raise self._corrupt("safety", "id 1", "not a blob")
        try:
            return SafetyState.decode(data)
        except _DECODE_ERRORS as exc:
            raise self._corrupt("safety", "id 1", exc) from None

    # --- this agent's ballots ----------------------------------------------------------

    def save_ballot(self, motion_id: bytes, ballot: Ballot, salt: bytes) -> bool:
        """Keep this agent's ballot for ``motion_id`` and the salt it committed with.
        True if stored; False if exactly this is stored. Another ballot or salt for the
        same motion is refused: committing twice would be evidence against us."""
        return self.save_ballots([(motion_id, ballot, salt)]) == 1

    def save_ballots(self, ballots: Iterable[tuple[bytes, Ballot, bytes]]) -> int:
        """``save_ballot`` for several (motion id, ballot, salt) in one transaction (one
        fsync); how many were new. A conflict refuses them all."""
        rows = []
        for motion_id, ballot, salt in ballots:
            _need_id("motion_id", motion_id)
            if not isinstance(ballot, Ballot):
                raise StoreError("save_ballot takes a Ballot")
            if ballot.motion_id != motion_id:
                raise StoreError(f"the ballot is for motion {_short(ballot.motion_id)}, not {_short(motion_id)}")
            if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
                raise StoreError(f"salt must be {SALT_BYTES} bytes")
            rows.append((motion_id, ballot.encode(), salt))
        added = 0
        with self._tx() as db:
            for motion_id, encoded, salt in rows:
                row = db.execute("SELECT ballot, salt FROM ballots WHERE motion_id = ?", (motion_id,)).fetchone()
                if row is not None:
                    if (row[0], row[1]) == (encoded, salt):
                        continue
                    raise StoreConflictError(
                        f"a different ballot or salt is already stored for motion {motion_id.hex()}")
                db.execute("INSERT INTO ballots(motion_id, ballot, salt) VALUES (?,?,?)", (motion_id, encoded, salt))
                added += 1
        return added

    def ballot(self, motion_id: bytes) -> Reveal | None:
        """This agent's ballot for ``motion_id`` with its salt: what to reveal."""
        return self.ballots([motion_id]).get(motion_id)

    def ballots(self, motion_ids: Iterable[bytes]) -> dict[bytes, Reveal]:
        """``ballot`` for several motions in one read: those stored, by motion id."""
        ids = list(motion_ids)
        for m in ids:
            _need_id("motion_id", m)
        found: dict[bytes, Reveal] = {}
        with self._tx(write=False) as db:
            for motion_id in ids:
                row = db.execute("SELECT ballot, salt FROM ballots WHERE motion_id = ?", (motion_id,)).fetchone()
                if row is not None:
                    found[motion_id] = self._reveal_row(motion_id, row)
        return found

    def _reveal_row(self, motion_id: bytes, row) -> Reveal:
        key = f"motion {motion_id.hex()}"
        try:
            reveal = Reveal(Ballot.decode(row[0]), row[1])
        except _DECODE_ERRORS as exc:
            raise self._corrupt("ballots", key, exc) from None
        if reveal.ballot.motion_id != motion_id:
            raise self._corrupt("ballots", key, "the ballot is for another motion")
        return reveal

    # --- commitments -------------------------------------------------------------------

    def save_commitment(self, commitment: Commitment) -> bool:
        """Keep a voter's commitment for a motion. True if stored; False if this one is
        stored already. A *different* commitment from the same voter for the same motion
        is refused (the first stays; the caller turns the pair into evidence)."""
        if not isinstance(commitment, Commitment):
            raise StoreError("save_commitment takes a Commitment")
        c = commitment
        encoded = c.encode()
        with self._tx() as db:
            row = db.execute("SELECT commitment FROM commitments WHERE motion_id = ? AND voter = ?",
                             (c.motion_id, c.voter)).fetchone()
            if row is not None:
                if row[0] == encoded:
                    return False
                raise StoreConflictError(f"another commitment from voter {c.voter.hex()} for motion "
                                         f"{c.motion_id.hex()} is already stored")
            db.execute("INSERT INTO commitments(motion_id, voter, commitment) VALUES (?,?,?)",
                       (c.motion_id, c.voter, encoded))
        return True

    def commitments(self, motion_id: bytes) -> list[Commitment]:
        """The commitments stored for ``motion_id``, ordered by voter key."""
        _need_id("motion_id", motion_id)
        with self._tx(write=False) as db:
            rows = db.execute("SELECT voter, commitment FROM commitments WHERE motion_id = ? ORDER BY voter",
                              (motion_id,)).fetchall()
        out = []
        for voter, data in rows:
            key = f"motion {motion_id.hex()} voter {voter.hex() if isinstance(voter, bytes) else repr(voter)}"
            try:
                c = Commitment.decode(data)
            except _DECODE_ERRORS as exc:
                raise self._corrupt("commitments", key, exc) from None
            if (c.motion_id, c.voter) != (motion_id, voter):
                raise self._corrupt("commitments", key, "the commitment is for another motion or voter")
            out.append(c)
        return out

    # --- pending motions ---------------------------------------------------------------

    def add_pending_motion(self, motion_id: bytes, envelope: bytes) -> bool:
        """Keep a received, unresolved motion (its signed envelope, as received). True if
        added; False if already pending. ``PendingMotionsFull`` at ``max_pending``."""
        added, full = self.add_pending_motions([(motion_id, envelope)])
        if full:
            raise PendingMotionsFull(
                f"{self.path}: {self.max_pending} motions pending already, the limit is {self.max_pending}")
        return bool(added)

    def add_pending_motions(self, motions: Iterable[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
        """``add_pending_motion`` for several (motion id, envelope), in order, in one
        transaction (one fsync): (the ids added, the ids refused because ``max_pending``
        motions were pending). Ids already pending are in neither."""
        items = list(motions)
        for motion_id, envelope in items:
            _need_id("motion_id", motion_id)
            if not isinstance(envelope, bytes) or not envelope:
                raise StoreError("a pending motion's envelope must be non-empty bytes")
        added: list[bytes] = []
        full: list[bytes] = []
        with self._tx() as db:
            count, last_seq = db.execute(
                "SELECT COUNT(*), COALESCE(MAX(received_seq), 0) FROM pending_motions").fetchone()
            for motion_id, envelope in items:
                if db.execute("SELECT 1 FROM pending_motions WHERE motion_id = ?", (motion_id,)).fetchone():
                    continue
                if count >= self.max_pending:
                    full.append(motion_id)
                    continue
                last_seq += 1
                count += 1
                db.execute("INSERT INTO pending_motions(motion_id, envelope, received_seq) VALUES (?,?,?)",
                           (motion_id, envelope, last_seq))
                added.append(motion_id)
        return added, full

    def remove_pending_motion(self, motion_id: bytes) -> bool:
        """True if it was pending."""
        return self.remove_pending_motions([motion_id]) == 1

    def remove_pending_motions(self, motion_ids: Iterable[bytes]) -> int:
        """Remove several in one transaction; how many were pending."""
        ids = list(motion_ids)
        for m in ids:
            _need_id("motion_id", m)
        with self._tx() as db:
            before = db.total_changes
            db.executemany("DELETE FROM pending_motions WHERE motion_id = ?", [(m,) for m in ids])
            return db.total_changes - before

    def pending_motions(self) -> list[PendingMotion]:
        """In the order they were received."""
        with self._tx(write=False) as db:
            rows = db.execute("SELECT motion_id, envelope, received_seq FROM pending_motions "
                              "ORDER BY received_seq").fetchall()
        out = []
        for motion_id, envelope, seq in rows:
            if not isinstance(motion_id, bytes) or len(motion_id) != MOTION_ID_BYTES:
                raise self._corrupt("pending_motions", f"motion {motion_id!r}", "not a 32-byte motion id")
            if not isinstance(envelope, bytes) or not envelope or not _is_uint(seq):
                raise self._corrupt("pending_motions", f"motion {motion_id.hex()}", "bad envelope or sequence")
            out.append(PendingMotion(motion_id, envelope, seq))
        return out

    def pending_count(self) -> int:
        with self._tx(write=False) as db:
            return db.execute("SELECT COUNT(*) FROM pending_motions").fetchone()[0]

    # --- async wrappers (worker thread, one at a time) ---------------------------------

    aappend_decision = _in_thread(append_decision)
    adecision = _in_thread(decision)
    adecisions = _in_thread(decisions)
    alast_height = _in_thread(last_height)
    atip_hash = _in_thread(tip_hash)
    asave_safety_state = _in_thread(save_safety_state)
    aload_safety_state = _in_thread(load_safety_state)
    asave_ballot = _in_thread(save_ballot)
    asave_ballots = _in_thread(save_ballots)
    aballot = _in_thread(ballot)
    aballots = _in_thread(ballots)
    asave_commitment = _in_thread(save_commitment)
    acommitments = _in_thread(commitments)
    aadd_pending_motion = _in_thread(add_pending_motion)
    aadd_pending_motions = _in_thread(add_pending_motions)
    aremove_pending_motion = _in_thread(remove_pending_motion)
    aremove_pending_motions = _in_thread(remove_pending_motions)
    apending_motions = _in_thread(pending_motions)
    apending_count = _in_thread(pending_count)
    aclose = _in_thread(close)


def _pos(state: SafetyState) -> str:
    return f"height {state.height} round {state.round} {state.step.name.lower()}"


def _lock(lock_path: Path, path: Path) -> int:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"{lock_path}: cannot create the store's lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"{path}: the peer store is in use by another process (or another open store); "
                          "two peers must never share a data directory") from None
    return fd


def _abandon(db: sqlite3.Connection | None, lock_fd: int) -> None:
    if db is not None:
        db.close()
    os.close(lock_fd)


def _read_version(db: sqlite3.Connection) -> int:
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone():
        return 0
    row = db.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
    return 0 if row is None else row[0]


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _read_version(db)
        if not _is_uint(version):
            raise ConfigError(f"{path}: schema_version holds {version!r}, not a version number")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{path}: written by a newer Conclave (store schema version {version}; this "
                              f"program reads versions up to {SCHEMA_VERSION}): upgrade Conclave to use it")
        if version == 0:
            others = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                                "AND name != 'schema_version'").fetchall()
            if others:
                raise ConfigError(f"{path}: not a Conclave peer store (it holds tables "
                                  f"{', '.join(sorted(r[0] for r in others))} but no schema version)")
            db.execute("CREATE TABLE IF NOT EXISTS schema_version(id INTEGER PRIMARY KEY CHECK (id = 1),"
                       " version INTEGER NOT NULL)")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](db)
        if version != SCHEMA_VERSION:
            db.execute("INSERT INTO schema_version(id, version) VALUES (1, ?) "
                       "ON CONFLICT(id) DO UPDATE SET version = excluded.version", (SCHEMA_VERSION,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
