"""The peer store survives SIGKILL: a child process appends decisions and saves its safety
state, printing ``committed <h>`` only after both calls returned; the parent kills it
(SIGKILL, by pid) at some point and reopens the store. Everything the child reported is
there, the chain is contiguous and linked, every certificate verifies, the safety
watermark is at least the last reported one, and SQLite's integrity check passes.

This file is also the child: ``python test_storage_crash.py child DIR LIMIT``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import nacl.signing
import pytest

from agents.storage import PeerStore
from consensus.qc import QuorumCertificate
from consensus.safety import SafetyState
from consensus.types import Block, SignedVote, Step, Validator, ValidatorSet, Vote, VoteType

pytestmark = pytest.mark.integration

SWARM = hashlib.sha256(b"crash swarm").digest()
SEEDS = [hashlib.sha256(b"crash validator %d" % i).digest() for i in range(4)]
KEYS = [nacl.signing.SigningKey(s) for s in SEEDS]
PKS = [bytes(k.verify_key) for k in KEYS]
VALSET = ValidatorSet(tuple(Validator(pk, 1) for pk in PKS))
GENESIS = bytes(32)
LIMIT = 100_000  # the child never gets there: it is killed first
TIMEOUT = 60.0  # seconds for one child to report what the test waits for


def motion_id(h: int) -> bytes:
    return hashlib.sha256(b"crash motion %d" % h).digest()


def decision(height: int, prev: bytes) -> tuple[Block, QuorumCertificate]:
    """The block at ``height`` (deterministic) and a commit certificate signed by 3 of 4."""
    block = Block(height, prev, PKS[height % 4], b"resolutions decided at height %d" % height)
    votes = []
    for i in (0, 1, 3):
        vote = Vote(VoteType.PRECOMMIT, height, 0, block.hash, i)
        votes.append(SignedVote(vote, KEYS[i].sign(vote.signing_bytes(SWARM)).signature))
    return block, QuorumCertificate.from_votes(votes, len(KEYS))


def safety_state(block: Block) -> SafetyState:
    return SafetyState(block.height, 0, Step.PRECOMMIT, block.hash)


# --- the child -----------------------------------------------------------------------


def child(directory: Path, limit: int) -> None:
    """Resume from what is on disk and decide heights until killed. At each height, as a
    driver would: the next motion arrives, the decision resolves this height's motion,
    then the safety state moves on. A line is printed only once all three returned."""
    store = PeerStore.open(directory)
    start, prev = store.last_height() + 1, store.tip_hash()
    store.add_pending_motion(motion_id(start), b"envelope %d" % start)
    for h in range(start, limit + 1):
        block, qc = decision(h, prev)
        t0 = time.perf_counter_ns()
        store.add_pending_motion(motion_id(h + 1), b"envelope %d" % (h + 1))
        t1 = time.perf_counter_ns()
        store.append_decision(h, 0, block, qc, resolved_motions=[motion_id(h)])
        t2 = time.perf_counter_ns()
        store.save_safety_state(safety_state(block))
        t3 = time.perf_counter_ns()
        sys.stdout.write(f"committed {h} {t1 - t0} {t2 - t1} {t3 - t2}\n")
        sys.stdout.flush()
        prev = block.hash
    store.close()


# --- the parent ----------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.heights: list[int] = []
        self.ns: list[tuple[int, int, int]] = []  # (add pending, append decision, save safety) per height


def run_and_kill(directory: Path, kill_after: int) -> Report:
    """Start a child on ``directory``, SIGKILL it once it has reported ``kill_after``
    heights; return every height it reported (also those still in the pipe)."""
    proc = subprocess.Popen([sys.executable, __file__, "child", str(directory), str(LIMIT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            lines.put(raw.decode())
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    report = Report()

    def take(line: str) -> None:
        word, h, *ns = line.split()
        assert word == "committed", line
        report.heights.append(int(h))
        report.ns.append(tuple(int(x) for x in ns))

    try:
        deadline = time.monotonic() + TIMEOUT
        while len(report.heights) < kill_after:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"the child reported {len(report.heights)} of {kill_after} heights in {TIMEOUT} s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=10)
                pytest.fail(f"the child exited ({proc.returncode}) before it was killed: "
                            f"{proc.stderr.read().decode()}")  # type: ignore[union-attr]
            take(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the one we started, by pid
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    reader.join(timeout=10)
    assert not reader.is_alive()
    while (line := lines.get_nowait()) is not None:  # what it printed before it died
        take(line)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    return report


def check_store(directory: Path, reported: list[int]) -> int:
    """Everything reported is durable and consistent; the last height on disk."""
    with PeerStore.open(directory) as store:
        assert store.integrity_check() == []
        last = store.last_height()
        assert last >= max(reported), f"reported {max(reported)} committed, the store holds {last}"
        decided = store.decisions(1, last)
        assert [d.height for d in decided] == list(range(1, last + 1))  # contiguous from 1
        prev = GENESIS
        for d in decided:
            block, qc = decision(d.height, prev)  # links its predecessor, and is what was written
            assert (d.block, d.certificate) == (block, qc), f"height {d.height}"
            assert d.certificate.verify(VALSET, SWARM) is None
            prev = d.block.hash
        assert store.tip_hash() == prev
        state = store.load_safety_state()
        assert state is not None
        assert state.position >= (max(reported), 0, int(Step.PRECOMMIT))
        # saved right after its decision: the kill may fall between the two
        assert state.height in (last - 1, last)
        assert state == safety_state(decided[state.height - 1].block)
        # a decision removes its motion in the same transaction; the next one arrived before it
        pending = {p.motion_id for p in store.pending_motions()}
        assert motion_id(last + 1) in pending
        assert pending <= {motion_id(last + 1), motion_id(last + 2)}
        return last


def summarise(reports: list[Report]) -> str:
    rows = [ns for r in reports for ns in r.ns]
    per = [statistics.median(col) / 1e6 for col in zip(*rows, strict=True)]
    total = [sum(ns) / 1e6 for ns in rows]
    return (f"{len(rows)} heights: median ms add_pending {per[0]:.2f}, append_decision {per[1]:.2f}, "
            f"save_safety_state {per[2]:.2f}; per decided height median {statistics.median(total):.2f} ms, "
            f"mean {statistics.fmean(total):.2f} ms")


@pytest.mark.parametrize("kill_after", [5, 20, 50])
def test_sigkill_loses_nothing_that_was_reported_committed(tmp_path: Path, kill_after: int) -> None:
    report = run_and_kill(tmp_path, kill_after)
    assert report.heights == list(range(1, len(report.heights) + 1))
    assert len(report.heights) >= kill_after
    check_store(tmp_path, report.heights)
    print(f"\nkill after {kill_after}: {summarise([report])}")


def test_a_store_killed_again_and_again_resumes_each_time(tmp_path: Path) -> None:
    reports, last = [], 0
    for kill_after in (5, 20, 50):
        report = run_and_kill(tmp_path, kill_after)
        # it resumed just above what the last run left on disk
        assert report.heights == list(range(last + 1, last + 1 + len(report.heights)))
        last = check_store(tmp_path, report.heights)
        reports.append(report)
    assert last >= 75
    print(f"\nthree kills: {summarise(reports)}")


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(Path(sys.argv[2]), int(sys.argv[3]))
