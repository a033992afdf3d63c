"""The embedded ledger anchor (consensus/anchor/ledger.py): the registry's checks, a
durable hash-linked file, shared by processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest

from consensus.anchor.evm import AnchorRejected
from consensus.anchor.ledger import LEDGER_CHAIN_ID, Ledger, LedgerCorrupt
from consensus.checkpoint import Checkpoint, checkpoint_for
from consensus.errors import LocalProtocolError
from p2p.chainkeys import chain_address, sign_digest

SEEDS = [bytes([0x20 + i]) * 32 for i in range(4)]
SWARM = hashlib.sha256(b"ledger test swarm").digest()
VALSET = hashlib.sha256(b"validator set").digest()
FIRST = checkpoint_for(SWARM, 1, [hashlib.sha256(b"%d" % i).digest() for i in range(5)], 1, VALSET, None)
SECOND = checkpoint_for(SWARM, 2, [hashlib.sha256(b"x%d" % i).digest() for i in range(5)], 6, VALSET, FIRST)


def make(tmp_path: Path, powers=(1, 1, 1, 1)) -> Ledger:
    return Ledger.create(tmp_path / "ledger.jsonl", SWARM, [(chain_address(s), p) for s, p in zip(SEEDS, powers)])


def sigs(ledger: Ledger, cp: Checkpoint, signers) -> list[bytes]:
    return [sign_digest(SEEDS[i], ledger.digest(cp)) for i in signers]


def reason(ledger: Ledger, cp: Checkpoint, signatures) -> tuple:
    with pytest.raises(AnchorRejected) as info:
        ledger.submit(cp, signatures, "v1")
    return info.value.reason, info.value.error_args


def test_a_quorum_anchors_in_order_and_another_process_reads_it(tmp_path) -> None:
    ledger = make(tmp_path)
    pos = ledger.submit(FIRST, sigs(ledger, FIRST, [0, 1, 2]), "v1")
    ledger.submit(SECOND, sigs(ledger, SECOND, [1, 2, 3]), "v2")
    again = Ledger(ledger.path)  # as another process would open it
    assert again.count() == 2 and again.ledger_id == ledger.ledger_id
    got = again.get(1)
    assert (got.first_height, got.last_height, got.root, got.submitter) == (1, 5, FIRST.root, "v1")
    assert again.position(1) == pos and again.get(3) is None


@pytest.mark.parametrize(("powers", "signers", "expected"), [
    ((1, 1, 1, 1), [0, 1], "InsufficientPower"),
    ((3, 1, 1, 1), [0, 1], "InsufficientPower"),  # exactly 2/3
    ((1, 1, 1, 1), [0, 0, 1], "SignersNotAscending"),  # a signer counts once
])
def test_the_registrys_rules_apply(tmp_path, powers, signers, expected) -> None:
    ledger = make(tmp_path, powers)
    assert reason(ledger, FIRST, sigs(ledger, FIRST, signers))[0] == expected
    assert ledger.count() == 0


def test_order_heights_and_foreign_signatures(tmp_path) -> None:
    ledger = make(tmp_path)
    assert reason(ledger, SECOND, sigs(ledger, SECOND, [0, 1, 2])) == ("WrongCheckpointNumber", (1, 2))
    ledger.submit(FIRST, sigs(ledger, FIRST, [0, 1, 2]), "v1")
    assert reason(ledger, FIRST, sigs(ledger, FIRST, [0, 1, 2])) == ("WrongCheckpointNumber", (2, 1))
    gap = Checkpoint(SWARM, 2, 7, 9, SECOND.root, VALSET, FIRST.hash())
    assert reason(ledger, gap, sigs(ledger, gap, [0, 1, 2]))[0] == "WrongHeights"
    (tmp_path / "x").mkdir()
    other = make(tmp_path / "x")  # another ledger with the same validators
    foreign = [sign_digest(SEEDS[i], other.digest(SECOND)) for i in (0, 1, 2)]
    assert reason(ledger, SECOND, foreign)[0] == "UnknownSigner"
    assert reason(ledger, SECOND, [b"\x00" * 65])[0] == "BadSignature"
    assert ledger.digest(FIRST) != other.digest(FIRST) and LEDGER_CHAIN_ID > 2**62


def test_a_torn_append_is_ignored_then_cut_off(tmp_path) -> None:
    ledger = make(tmp_path)
    ledger.submit(FIRST, sigs(ledger, FIRST, [0, 1, 2]), "v1")
    with open(ledger.path, "a") as f:
        f.write('{"number": 2, "first_hei')  # a crash mid-append
    assert ledger.count() == 1
    ledger.submit(SECOND, sigs(ledger, SECOND, [0, 1, 2]), "v2")
    assert ledger.count() == 2 and ledger.path.read_text().endswith("\n")


def test_tampering_breaks_the_hash_links(tmp_path) -> None:
    ledger = make(tmp_path)
    ledger.submit(FIRST, sigs(ledger, FIRST, [0, 1, 2]), "v1")
    ledger.submit(SECOND, sigs(ledger, SECOND, [0, 1, 2]), "v2")
    lines = ledger.path.read_text().splitlines()
    doc = json.loads(lines[1])
    doc["root"] = "00" * 32
    ledger.path.write_text("\n".join([lines[0], json.dumps(doc, sort_keys=True), lines[2]]) + "\n")
    with pytest.raises(LedgerCorrupt, match="line 3"):
        ledger.count()


def test_creating_refuses_to_overwrite_and_bad_validators(tmp_path) -> None:
    make(tmp_path)
    with pytest.raises(LocalProtocolError, match="refusing"):
        make(tmp_path)
    with pytest.raises(LocalProtocolError):
        Ledger.create(tmp_path / "b.jsonl", SWARM, [("0x123", 1)])


def _race(path: str, seeds: list[bytes], start, out) -> None:
    ledger = Ledger(Path(path))
    signatures = [sign_digest(s, ledger.digest(FIRST)) for s in seeds]
    start.wait()
    try:
        ledger.submit(FIRST, signatures, "racer")
        out.put("anchored")
    except AnchorRejected as exc:
        out.put(exc.reason)


def test_two_processes_submitting_at_once_anchor_once(tmp_path) -> None:
    ledger = make(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(ledger.path), SEEDS[:3], start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert results == ["WrongCheckpointNumber", "anchored"]
    assert ledger.count() == 1


def _open_as_soon_as_it_exists(path: str, ready, out) -> None:
    p = Path(path)
    ready.set()
    for _ in range(50_000_000):  # bounded spin: the creator is a few ms away
        if p.exists():
            break
    try:
        out.put(Ledger(p).swarm_id.hex())
    except LedgerCorrupt as exc:
        out.put(f"LedgerCorrupt: {exc}")


def test_a_ledger_being_created_is_never_seen_incomplete(tmp_path) -> None:
    """Peers of one machine share the ledger file and the first to start creates it: a
    peer that opened it between the creator's O_CREAT and its write saw an empty file and
    died with LedgerCorrupt (found by test_swarm, about 1 start in 25). The file now
    appears complete or not at all."""
    ctx = multiprocessing.get_context("spawn")
    for trial in range(20):
        path = tmp_path / f"ledger{trial}.jsonl"
        ready, out = ctx.Event(), ctx.Queue()
        reader = ctx.Process(target=_open_as_soon_as_it_exists, args=(str(path), ready, out))
        reader.start()
        try:
            assert ready.wait(60)
            Ledger.create(path, SWARM, [(chain_address(s), 1) for s in SEEDS])
            assert out.get(timeout=60) == SWARM.hex(), f"trial {trial}"
        finally:
            reader.join(30)
    assert not [p.name for p in tmp_path.iterdir() if not p.name.endswith(".jsonl")]  # no temporary left
