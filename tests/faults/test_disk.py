"""A peer's own disk after a crash or in a stranger's hands (issue 8, part 6): a torn
write at the tail of the store's log is recovered to the last whole transaction, and a
stored decision changed on disk stops the real `conclave peer` at start, naming the
height, before it signs anything on top of it."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

import trio

from agents.procs import PeerProcess, conclave_command, free_tcp_ports
from agents.run import dial_targets, propose_many
from agents.run import FIXED_MODEL
from agents.storage import FILE_NAME, PeerStore
from agents.swarm_init import SWARM_FILE, init_swarm
from agents.valset import consensus_valset
from consensus.qc import QuorumCertificate
from consensus.types import Block, SignedVote, Vote, VoteType
from p2p.keys import Identity, read_key_file
from p2p.messages import Motion
from tests.faults.crash_loop import durable_chain, parse_chain
from tests.integration.conftest import Swarm, wait_joined

HEIGHTS = 3
START_TIMEOUT = 60.0
DECIDE_TIMEOUT = 60.0


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


# --- a data directory that cannot be written ------------------------------------------------


def _mount_namespaces() -> str | None:
    """Why this machine cannot give a process a private mount namespace, or None."""
    if os.geteuid() != 0:
        return f"private mounts need root (running as uid {os.geteuid()})"
    missing = [tool for tool in ("unshare", "nsenter", "mount") if shutil.which(tool) is None]
    if missing:
        return f"util-linux tools missing: {', '.join(missing)}"
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True,
                         timeout=10, stdin=subprocess.DEVNULL)
    return None if res.returncode == 0 else f"unshare -m failed: {res.stderr.strip()}"


@pytest.mark.integration
def test_a_read_only_data_directory_stops_the_peer_naming_it_and_changes_nothing(tmp_path: Path) -> None:
    chain = StoredChain(tmp_path)
    before = sorted((p.name, p.read_bytes()) for p in chain.data.iterdir() if p.is_file())
    no_mounts = _mount_namespaces()
    if no_mounts is None:
        # A read-only bind mount in a mount namespace of the peer's own: even root
        # cannot write there, and nothing outside the peer sees it.
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(chain.data)]
    else:  # not root: permissions are enough
        chain.data.chmod(0o500)
        for f in chain.data.iterdir():
            f.chmod(0o400)
        prefix = []
    args = ["--swarm", str(chain.root / SWARM_FILE), "--key", str(chain.root / "v1.key"), "--data", str(chain.data),
            "--threads", "1", "--model", FIXED_MODEL]
    peer = PeerProcess("v1", args, command=[*prefix, *conclave_command("peer", *args, "--log-format", "json")])
    try:
        code = peer.proc.wait(START_TIMEOUT)
    finally:
        peer.kill()
        chain.data.chmod(0o700)
    out = "\n".join(peer.raw)
    assert code == 2 and not peer.named("peer_started"), f"exit {code}: {out}"
    why = "read-only file system" if no_mounts is None else "permission denied"
    assert str(chain.data) in out and why in out.lower(), out
    assert sorted((p.name, p.read_bytes()) for p in chain.data.iterdir() if p.is_file()) == before


class PrivateDisk:
    """A small tmpfs mounted on ``path`` in a mount namespace of its own, held open by a
    sleeping process; commands run inside it with ``nsenter``. Killing the holder
    removes the namespace and the tmpfs with it, whatever the test did."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "900"],
                                       stdin=subprocess.DEVNULL)
        try:
            self._wait_unshared()
            self.run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        except BaseException:
            self.close()
            raise

    def _wait_unshared(self) -> None:
        # Until unshare has made the namespace, nsenter would enter the root one.
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10.0
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == ours:
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise RuntimeError("unshare -m did not make a mount namespace")
            time.sleep(0.01)

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.prefix(), *cmd], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in the private namespace failed: {res.stderr.strip()}")
        return res

    def fill(self) -> None:
        """Leave no free block: write until the file system says ENOSPC."""
        res = self.run("sh", "-c", f'cat /dev/zero > "{self.path}/filler"', check=False)
        assert "No space left" in res.stderr, res.stderr

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def _decide(swarm: Swarm, peers, text: str) -> str:
    motion = trio.run(propose_many, swarm.cfg, Identity.generate(), [Motion(text)], dial_targets(swarm.cfg, []),
                      30.0)["motion_ids"][0]
    for p in peers:
        p.wait_for(lambda evs: motion in {e.get("motion_id") for e in evs if e["event"] == "agreement"},
                   DECIDE_TIMEOUT, f"agreement on {motion}")
    return motion


@pytest.mark.integration
def test_a_full_disk_stops_the_peer_with_a_clear_error_and_it_resumes_whole_once_there_is_room(
        tmp_path: Path) -> None:
    """v1's data directory is a small file system of its own; once full, the next write
    (a motion, a vote or a decision) fails. v1 must stop at once, say the disk is full,
    and leave a store that opens whole: restarted with room, it has every decision it
    had and catches up with the three that went on deciding."""
    no_mounts = _mount_namespaces()
    if no_mounts is not None:
        pytest.skip(no_mounts)
    cfg = init_swarm(tmp_path, 4, "fulldisk", free_tcp_ports(4))
    swarm = Swarm(tmp_path, cfg)
    (tmp_path / "v1").mkdir()
    disk = PrivateDisk(tmp_path / "v1", "8m")
    try:
        args = ["--swarm", str(swarm.file), "--key", str(swarm.key("v1")), "--data", str(tmp_path / "v1"),
                "--threads", "1", "--model", FIXED_MODEL]

        def start_v1() -> PeerProcess:
            p = PeerProcess("v1", args, command=[*disk.prefix(), *conclave_command("peer", *args, "--log-format",
                                                                                    "json")])
            swarm.procs.append(p)
            return p

        def v1_chain() -> list[tuple[int, str]]:  # its store is visible only inside the namespace
            return parse_chain(disk.run(*conclave_command("log", "--data", str(tmp_path / "v1"), "--json")).stdout)

        v1 = start_v1()
        others = {n: swarm.start(n) for n in ("v2", "v3", "v4")}
        everyone = [v1, *others.values()]
        for p in everyone:
            wait_joined(p, {"v1", "v2", "v3", "v4"} - {p.name})
        _decide(swarm, everyone, "Decided before the disk fills?")
        kept = v1_chain()
        assert len(kept) >= 1
        disk.fill()
        motions = [_decide(swarm, others.values(), f"Decided while v1's disk is full, #{i}?") for i in range(2)]
        code = v1.proc.wait(DECIDE_TIMEOUT)
        out = "\n".join(v1.raw)
        assert code == 2, f"exit {code}: {out[-3000:]}"
        assert "disk is full" in out and str(tmp_path / "v1") in out, out[-3000:]

        disk.run("rm", str(tmp_path / "v1" / "filler"))
        v1 = start_v1()
        started = v1.wait_event("peer_started", START_TIMEOUT)
        assert started["height"] >= 1
        for m in motions:
            v1.wait_for(lambda evs, m=m: any(e.get("motion_id") == m for e in evs if e["event"] == "agreement"),
                        DECIDE_TIMEOUT, f"caught up to {m}")
        v1.stop()
        for p in others.values():
            p.stop()
        mine, theirs = v1_chain(), durable_chain(tmp_path / "v2")
        assert mine[:len(kept)] == kept and mine == theirs
    finally:
        for p in swarm.procs:
            p.kill()
        disk.close()
