"""A peer's own disk after a crash or in a stranger's hands (issue 8, part 6): a torn
write at the tail of the store's log is recovered to the last whole transaction, and a
stored decision changed on disk stops the real `conclave peer` at start, naming the
height, before it signs anything on top of it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from agents.procs import PeerProcess, free_tcp_ports
from agents.run import FIXED_MODEL
from agents.storage import FILE_NAME, PeerStore
from agents.swarm_init import SWARM_FILE, init_swarm
from agents.valset import consensus_valset
from consensus.qc import QuorumCertificate
from consensus.types import Block, SignedVote, Vote, VoteType
from p2p.keys import read_key_file

HEIGHTS = 3
START_TIMEOUT = 60.0


class StoredChain:
    """A 4-validator swarm on disk and v1's store holding ``HEIGHTS`` real decisions,
    each certified by three of the swarm's own keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cfg = init_swarm(root, 4, "disk", free_tcp_ports(4))
        self.keys = {v.public_key: read_key_file(root / f"{v.name}.key") for v in self.cfg.validators}
        self.valset = consensus_valset(self.cfg)
        self.data = root / "v1"
        with PeerStore.open(self.data, genesis_hash=self.cfg.swarm_id) as store:
            prev = self.cfg.swarm_id
            for h in range(1, HEIGHTS + 1):
                block = Block(h, prev, self.cfg.validators[h % 4].public_key, b"no resolutions %d" % h)
                assert store.append_decision(h, 0, block, self.certificate(block))
                prev = block.hash

    def certificate(self, block: Block, value: bytes | None = None) -> QuorumCertificate:
        votes = []
        for i, v in enumerate(self.valset.validators[:3]):
            vote = Vote(VoteType.PRECOMMIT, block.height, 0, value or block.hash, i)
            votes.append(SignedVote(vote, self.keys[v.public_key].sign(vote.signing_bytes(self.cfg.swarm_id))))
        return QuorumCertificate.from_votes(votes, len(self.valset))

    def rewrite(self, height: int, payload: bytes, *, certify: bool = False, forge_certificate: bool = False) -> None:
        """Change the block at ``height`` on disk, and its row's hash with it, as a
        careful tamperer would; re-certify it with the real keys, or with the old
        signatures over the new hash (what one without the keys can do)."""
        db = sqlite3.connect(self.data / FILE_NAME, isolation_level=None)
        try:
            old = Block.decode(db.execute("SELECT block FROM decisions WHERE height = ?", (height,)).fetchone()[0])
            block = Block(old.height, old.prev_hash, old.proposer, payload)
            cert_bytes = db.execute("SELECT certificate FROM decisions WHERE height = ?", (height,)).fetchone()[0]
            if certify:
                cert_bytes = self.certificate(block).encode()
            elif forge_certificate:
                old_cert = QuorumCertificate.decode(cert_bytes)
                forged = [SignedVote(Vote(VoteType.PRECOMMIT, height, 0, block.hash, sv.vote.validator), sv.signature)
                          for sv in old_cert.votes()]
                cert_bytes = QuorumCertificate.from_votes(forged, len(self.valset)).encode()
            db.execute("UPDATE decisions SET block = ?, block_hash = ?, certificate = ? WHERE height = ?",
                       (block.encode(), block.hash, cert_bytes, height))
        finally:
            db.close()

    def start_peer(self) -> PeerProcess:
        return PeerProcess("v1", ["--swarm", str(self.root / SWARM_FILE), "--key", str(self.root / "v1.key"),
                                  "--data", str(self.data), "--threads", "1", "--model", FIXED_MODEL])


def refusal(chain: StoredChain) -> str:
    """What the peer printed when it refused to start (it must refuse)."""
    peer = chain.start_peer()
    try:
        code = peer.proc.wait(START_TIMEOUT)
    finally:
        peer.kill()
    assert not peer.named("peer_started"), "the peer started on a tampered chain"
    assert code == 2, f"exit {code}: {peer.raw[-5:]}"
    return "\n".join(peer.raw)


@pytest.mark.integration
def test_an_untouched_chain_is_loaded_at_its_height(tmp_path: Path) -> None:
    chain = StoredChain(tmp_path)
    peer = chain.start_peer()
    try:
        started = peer.wait_event("peer_started", START_TIMEOUT)
    finally:
        peer.stop()
    assert started["height"] == HEIGHTS


@pytest.mark.integration
def test_a_block_changed_below_the_tip_breaks_the_next_link(tmp_path: Path) -> None:
    chain = StoredChain(tmp_path)
    chain.rewrite(2, b"a different outcome", certify=True)  # even re-signed by a quorum
    out = refusal(chain)
    assert "corrupt row in decisions at height 3" in out and "does not link the block before it" in out, out


@pytest.mark.integration
def test_a_tip_changed_without_the_keys_fails_its_certificate(tmp_path: Path) -> None:
    chain = StoredChain(tmp_path)
    chain.rewrite(HEIGHTS, b"a different outcome", forge_certificate=True)
    out = refusal(chain)
    assert f"corrupt row in decisions at height {HEIGHTS}" in out and "certificate does not verify" in out, out


@pytest.mark.integration
def test_a_block_that_no_longer_matches_its_row_is_named(tmp_path: Path) -> None:
    chain = StoredChain(tmp_path)
    db = sqlite3.connect(chain.data / FILE_NAME, isolation_level=None)
    db.execute("UPDATE decisions SET block_hash = ? WHERE height = 1", (b"\x01" * 32,))
    db.close()
    out = refusal(chain)
    assert "corrupt row in decisions at height 1" in out and "does not match its height and hash" in out, out


def _snapshot(store_dir: Path, to: Path) -> Path:
    """The store's files as a crash would leave them: database and write-ahead log."""
    to.mkdir()
    for name in (FILE_NAME, FILE_NAME + "-wal"):
        shutil.copyfile(store_dir / name, to / name)
    return to


def test_a_torn_write_at_the_tail_of_the_log_is_recovered_to_the_last_whole_decision(tmp_path: Path) -> None:
    chain = StoredChain(tmp_path)
    with PeerStore.open(chain.data, genesis_hash=chain.cfg.swarm_id) as store:
        before = _snapshot(chain.data, tmp_path / "before")  # 3 decisions, in the log
        tip = store.decision(HEIGHTS).block
        block = Block(HEIGHTS + 1, tip.hash, tip.proposer, b"the fourth")
        store.append_decision(HEIGHTS + 1, 0, block, chain.certificate(block))
        after = _snapshot(chain.data, tmp_path / "after")
    wal_before = (before / (FILE_NAME + "-wal")).read_bytes()
    wal_after = (after / (FILE_NAME + "-wal")).read_bytes()
    assert len(wal_after) > len(wal_before) and wal_after.startswith(wal_before[:32])
    cases = {  # name: the log's bytes after the crash
        "cut in the last frame": wal_after[: len(wal_before) + (len(wal_after) - len(wal_before)) // 2],
        "garbage after it": wal_before + b"\x5a" * 5000,
        "the last frame flipped": wal_after[:-100] + bytes(b ^ 0xFF for b in wal_after[-100:]),
    }
    for name, wal in cases.items():
        torn = tmp_path / name.replace(" ", "-")
        torn.mkdir()
        shutil.copyfile(after / FILE_NAME, torn / FILE_NAME)
        (torn / (FILE_NAME + "-wal")).write_bytes(wal)
        with PeerStore.open(torn, genesis_hash=chain.cfg.swarm_id) as store:
            assert store.last_height() == HEIGHTS, name
            assert store.integrity_check() == [], name
            store.check_links(store.decisions(1, HEIGHTS), chain.cfg.swarm_id)
            # and it goes on from there: the lost decision is appended again
            assert store.append_decision(HEIGHTS + 1, 0, block, chain.certificate(block)), name
            assert store.last_height() == HEIGHTS + 1, name
