"""Checkpoints anchored on a real EVM node (anvil, started here and stopped by pid) by
real `conclave peer` processes, and `conclave verify` run as a stranger would.

Ballots come from `--model fixed` here: what is under test is the checkpoint path
(signing, gossip, the submitter schedule, the contract, the verifier), and the real
model's seconds per ballot would only slow it down (tests/integration/test_agreement.py
runs the real model)."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
import trio
from web3 import Web3

from agents.chain_deploy import deploy
from agents.procs import PeerProcess, free_tcp_ports, run_conclave
from agents.run import dial_targets, propose_many
from agents.swarm_init import init_swarm
from consensus.anchor.anvil import Anvil
from consensus.anchor.evm import EvmRegistry
from consensus.merkle import InclusionProof
from consensus.types import Block
from p2p.keys import Identity, write_key_file
from p2p.messages import Motion
from p2p.swarmfile import Params, load_swarm_file
from tests.integration.conftest import Swarm

pytestmark = pytest.mark.integration

K = 3
AGREE_TIMEOUT = 60.0
ANCHOR_TIMEOUT = 60.0


@pytest.fixture
def anchored(tmp_path: Path):
    """A 4-validator swarm whose registry is deployed on a fresh anvil."""
    init_swarm(tmp_path, 4, "anchor", free_tcp_ports(4), params=Params(checkpoint_interval=K, anchor_grace_ms=2000))
    payer = tmp_path / "payer.key"
    write_key_file(payer, Identity.generate())
    with Anvil() as node:
        from p2p.keys import read_key_file  # noqa: PLC0415

        cfg = deploy(tmp_path / "swarm.toml", node.url, read_key_file(payer))
        s = Swarm(tmp_path, cfg)
        try:
            yield s, node
        finally:
            for p in s.procs:
                p.kill()


def submit_one_by_one(swarm: Swarm, peers, texts: list[str]) -> list[str]:
    """One motion per height: wait for each to be agreed before the next."""
    ids = []
    for text in texts:
        (mid,) = trio.run(propose_many, swarm.cfg, Identity.generate(), [Motion(text)], dial_targets(swarm.cfg, []),
                          30.0, 0.0)["motion_ids"]
        for p in peers:
            p.wait_event("agreement", AGREE_TIMEOUT, motion_id=mid)
        ids.append(mid)
    return ids


def wait_anchored(p: PeerProcess, number: int) -> dict:
    p.wait_for(lambda evs: any(e["event"] == "checkpoint_anchored" and e["number"] == number for e in evs),
               ANCHOR_TIMEOUT, f"checkpoint {number} anchored")
    return next(e for e in p.named("checkpoint_anchored") if e["number"] == number)


def verify_cli(swarm: Swarm, *args: str) -> tuple[int, dict]:
    res = run_conclave("verify", "--swarm", str(swarm.file), "--json", *args, timeout=60)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


def test_checkpoints_land_every_k_heights_and_every_decision_verifies(anchored) -> None:
    swarm, node = anchored
    peers = swarm.start_all()
    ids = submit_one_by_one(swarm, peers.values(), [f"Anchored motion {i}?" for i in range(2 * K + 1)])
    for number in (1, 2):
        events = [wait_anchored(p, number) for p in peers.values()]
        assert {(e["first_height"], e["last_height"]) for e in events} == {((number - 1) * K + 1, number * K)}
        assert sum(e["submitted_by_us"] for e in events) == 1  # one submission, seen by all
        assert all(p.named("checkpoint_signed") for p in peers.values())
    registry = EvmRegistry(Web3(Web3.HTTPProvider(node.url)), swarm.cfg.chain.registry)
    assert registry.count() == 2
    first_submitter = registry.get(1).submitter
    assert first_submitter == swarm.cfg.validators[0].chain_address  # validator (1 - 1) mod 4: v1

    # Every motion in a complete checkpoint is VALID, from a data directory and, as a
    # stranger holding only the swarm file, from a running peer.
    for mid in ids[: 2 * K]:
        rc, verdict = verify_cli(swarm, "--data", str(swarm.dir / "v3"), mid)
        assert (rc, verdict["valid"]) == (0, True), verdict
    v1 = peers["v1"].named("peer_started")[0]["listen"][0]
    rc, remote = verify_cli(swarm, "--from", v1, ids[0])
    assert (rc, remote["valid"]) == (0, True), remote
    # The 7th height opens checkpoint 3, which is not complete, so not anchored.
    rc, verdict = verify_cli(swarm, "--data", str(swarm.dir / "v3"), ids[-1])
    assert (rc, verdict["reason"]) == (1, "not_yet_anchored")

    # A tampered proof, and a tampered decision, are INVALID with their reason.
    good = verify_cli(swarm, "--data", str(swarm.dir / "v3"), "2")[1]
    proof = InclusionProof.decode(bytes.fromhex(good["proof"]))
    bent = InclusionProof(proof.index, proof.size, (bytes(32),) + tuple(proof.path[1:])).encode().hex()
    rc, verdict = verify_cli(swarm, "--data", str(swarm.dir / "v3"), "--proof", bent, "2")
    assert (rc, verdict["reason"]) == (1, "not_included")
    for p in peers.values():
        p.stop()
    copy = swarm.dir / "tampered"
    shutil.copytree(swarm.dir / "v3", copy)
    with sqlite3.connect(copy / "peer.sqlite3") as db:  # edited consistently, as a forger would
        (raw,) = db.execute("SELECT block FROM decisions WHERE height = 2").fetchone()
        forged = Block.decode(raw.replace(b"Anchored", b"Anchorex"))
        db.execute("UPDATE decisions SET block = ?, block_hash = ? WHERE height = 2", (forged.encode(), forged.hash))
    rc, verdict = verify_cli(swarm, "--data", str(copy), "2")
    assert (rc, verdict["reason"]) == (1, "certificate_invalid")

    node.stop()  # the chain goes away
    rc, verdict = verify_cli(swarm, "--data", str(swarm.dir / "v3"), "2")
    assert (rc, verdict["reason"]) == (1, "chain_unreachable")


def test_a_dead_designated_submitter_is_replaced_by_the_next_in_line(anchored) -> None:
    swarm, node = anchored
    peers = swarm.start_all()
    peers["v1"].stop(signal.SIGKILL)  # the designated submitter of checkpoint 1
    alive = [peers[n] for n in ("v2", "v3", "v4")]
    submit_one_by_one(swarm, alive, [f"Without v1, motion {i}?" for i in range(K)])
    events = {p.name: wait_anchored(p, 1) for p in alive}
    assert events["v2"]["submitted_by_us"] and not events["v3"]["submitted_by_us"]
    registry = EvmRegistry(Web3(Web3.HTTPProvider(node.url)), swarm.cfg.chain.registry)
    assert registry.get(1).submitter == load_swarm_file(swarm.file).validators[1].chain_address  # v2


def test_conclave_chain_deploy_records_a_registry_for_this_swarm(tmp_path: Path) -> None:
    init_swarm(tmp_path, 4, "deploy", free_tcp_ports(4))
    key = tmp_path / "payer.key"
    write_key_file(key, Identity.generate())
    before = load_swarm_file(tmp_path / "swarm.toml")
    with Anvil() as node:
        res = run_conclave("chain", "deploy", "--swarm", str(tmp_path / "swarm.toml"), "--rpc", node.url,
                           "--key", str(key), timeout=120)
        assert res.returncode == 0, res.stderr
        after = load_swarm_file(tmp_path / "swarm.toml")
        assert after.swarm_id == before.swarm_id  # [chain] is not part of the genesis
        assert (after.chain.kind, after.chain.rpc, after.chain.chain_id) == ("evm", node.url, node.chain_id)
        registry = EvmRegistry(Web3(Web3.HTTPProvider(node.url)), after.chain.registry)
        assert registry.swarm_id() == before.swarm_id
        assert registry.contract.functions.validators().call() == [v.chain_address for v in before.validators]
        assert after.chain.registry in res.stdout
    res = run_conclave("chain", "deploy", "--swarm", str(tmp_path / "swarm.toml"), "--rpc", node.url,
                       "--key", str(key), timeout=60)
    assert res.returncode == 2 and "no EVM node answers" in res.stderr  # anvil is gone
