"""Agreement by real `conclave peer` processes over libp2p on 127.0.0.1, each running
the real default model: the flows issue 5 names, end to end.

Every wait is for a logged event, bounded. Durable logs are read back with
`conclave log --json`, as an operator would; the traffic of the crash test is recorded
by a separate subscriber (tests/integration/sniffer.py) and checked for conflicting
signatures with the evidence detector.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agents.procs import PeerProcess, free_tcp_ports, run_conclave
from agents.run import dial_targets, propose_many
from consensus.evidence import find_equivocations
from consensus.types import SignedVote
from agents.valset import consensus_valset
from p2p.keys import Identity, write_key_file
from p2p.messages import Motion
from tests.integration.conftest import Swarm, wait_joined

pytestmark = pytest.mark.integration

AGREE_TIMEOUT = 180.0  # inference by four models sharing two cores dominates
CATCH_UP_TIMEOUT = 60.0
SUBMIT_INTERVAL = 1.1  # clients are rate-limited to one motion a second by default

TOPICS = [
    ("Adopt the revised data-retention policy?", ("approve", "reject")),
    ("Which region should host the next replica?", ("eu-west", "us-east")),
    ("Release version 0.2 this week?", ("approve", "reject", "defer")),
    ("Require two reviewers for consensus changes?", ("approve", "reject")),
    ("Rotate signing keys every 90 days?", ("approve", "reject")),
    ("Which log format should be the default?", ("text", "json")),
    ("Publish benchmark results in the README?", ("approve", "reject")),
    ("Fund a security audit before mainnet?", ("approve", "reject", "defer")),
    ("Move the weekly sync to Wednesday?", ("approve", "reject")),
    ("Allow observers to submit motions?", ("approve", "reject")),
]


def motions(n: int, tag: str = "") -> list[Motion]:
    return [Motion(f"{text}{tag}", options) for text, options in (TOPICS * 3)[:n]]


def submit(swarm: Swarm, batch: list[Motion]) -> list[str]:
    # A fresh client key per call: run in this process, an earlier client's host may
    # leave its connections open, and py-libp2p then serves no new connection from the
    # same peer id (separate `conclave propose` processes do not have this problem).
    result = trio.run(propose_many, swarm.cfg, Identity.generate(), batch, dial_targets(swarm.cfg, []), 30.0,
                      SUBMIT_INTERVAL)
    return result["motion_ids"]


def wait_agreed(peers, motion_ids: list[str], timeout: float = AGREE_TIMEOUT) -> None:
    for p in peers:
        try:
            p.wait_for(lambda evs: set(motion_ids) <= {e.get("motion_id") for e in evs if e["event"] == "agreement"},
                       timeout, f"agreement on {len(motion_ids)} motions")
        except TimeoutError:
            for e in p.events[-40:]:  # what it was doing instead: shown with the failure
                print(f"[{p.name}] {e.get('ts')} {e['event']}: {e.get('msg')}")
            raise


def wait_height(p: PeerProcess, height: int, timeout: float = CATCH_UP_TIMEOUT) -> None:
    """Until ``p`` has decided ``height`` (logged now, or stored before it started)."""
    def reached(evs: list[dict]) -> bool:
        return any((e["event"] == "block_committed" and e["height"] >= height)
                   or (e["event"] == "peer_started" and e["height"] >= height) for e in evs)

    p.wait_for(reached, timeout, f"decided height {height}")


def agreement_counts(p: PeerProcess) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in p.named("agreement"):
        counts[e["motion_id"]] = counts.get(e["motion_id"], 0) + 1
    return counts


def durable_log(data_dir: Path) -> list[dict]:
    res = run_conclave("log", "--data", str(data_dir), "--json")
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def assert_same_chain(swarm: Swarm, names: list[str]) -> list[dict]:
    logs = {n: durable_log(swarm.dir / n) for n in names}
    first = logs[names[0]]
    assert first, "no decisions stored"
    assert [d["height"] for d in first] == list(range(1, len(first) + 1))
    for n, docs in logs.items():
        assert [d["block_hash"] for d in docs] == [d["block_hash"] for d in first], f"{n} has another chain"
    return first


def scrape(port: int) -> dict[str, float]:
    """The peer's /metrics, as {"name{label=value}": value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_four_validators_agree_on_ten_motions(swarm: Swarm) -> None:
    ports = dict(zip([v.name for v in swarm.cfg.validators], free_tcp_ports(len(swarm.cfg.validators)), strict=True))
    peers = {v.name: swarm.start(v.name, "--metrics", str(ports[v.name]), model=None) for v in swarm.cfg.validators}
    for p in peers.values():
        wait_joined(p, set(peers) - {p.name})
    ids = submit(swarm, motions(10))
    wait_agreed(peers.values(), ids)
    for p in peers.values():
        counts = agreement_counts(p)
        assert all(counts[m] == 1 for m in ids), f"{p.name}: {counts}"
        assert not p.named("evidence")
    tip = max(e["height"] for e in peers["v1"].named("block_committed"))

    scraped = {name: scrape(port) for name, port in ports.items()}
    for metrics in scraped.values():
        assert metrics["conclave_height"] == tip
        assert metrics["conclave_peers_connected"] >= 3
        assert metrics["conclave_messages_in_total{type=vote}"] > 0
        assert metrics["conclave_commit_latency_seconds_count"] >= 1
        assert sum(v for k, v in metrics.items() if k.startswith("conclave_motions_resolved_total{")) == 10
    # The slowest model's ballots may all come after their motions were decided (and are
    # dropped): count ballots over the swarm, where a quorum of 3 must have committed.
    committers = [m for m in scraped.values() if m["conclave_messages_out_total{type=ballot_commit}"] >= 1]
    assert len(committers) >= 3
    assert all(m["conclave_ballot_latency_seconds_count"] >= 1 for m in committers)

    res = run_conclave("status", "--swarm", str(swarm.file), "--json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["name"] for r in rows] == list(peers) and all(r["reachable"] for r in rows)
    assert all(r["status"]["height"] == tip and r["status"]["peers"] >= 3 for r in rows), rows
    for p in peers.values():
        p.stop()
    chain = assert_same_chain(swarm, list(peers))
    decided = [m["motion_id"] for d in chain for m in d["motions"]]
    assert sorted(decided) == sorted(ids)  # each motion once, in one block
    for d in chain:
        for m in d["motions"]:
            assert m["outcome"] in m["options"] or m["outcome"] == "no-supermajority"
            assert sum(m["tally"].values()) >= 3  # closed by a quorum of the 4 equal validators
        assert len(d["certificate_signers"]) >= 3


def test_a_validator_killed_mid_height_catches_up_and_never_signs_a_conflicting_vote(swarm: Swarm) -> None:
    traffic = swarm.dir / "votes.hex"
    sniffer = subprocess.Popen([sys.executable, "-m", "tests.integration.sniffer", str(swarm.file), str(traffic)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert sniffer.stdout.readline().strip() == b"ready"
        peers = swarm.start_all(model=None)
        first = submit(swarm, motions(3))
        # Kill v2 as soon as the first motion is decided: the others are mid-way through
        # the next ones (ballots, or a height's votes).
        peers["v1"].wait_event("agreement", AGREE_TIMEOUT, motion_id=first[0])
        peers["v2"].stop(signal.SIGKILL)
        survivors = [peers[n] for n in ("v1", "v3", "v4")]
        while_down = submit(swarm, motions(1, " (while v2 is down)"))
        wait_agreed(survivors, first + while_down)

        tip = max(e["height"] for e in peers["v1"].named("block_committed"))
        again = swarm.start("v2", model=None)  # same key, same data directory
        wait_joined(again, {"v1", "v3", "v4"})
        wait_height(again, tip)
        again.wait_event("catchup_finished", CATCH_UP_TIMEOUT)  # it caught up over sync
        after = submit(swarm, motions(2, " (after the restart)"))
        wait_agreed(survivors + [again], after)
        height_after = max(e["height"] for e in again.named("agreement"))
    finally:
        sniffer.send_signal(signal.SIGTERM)
        sniffer.wait(10)
    votes = [SignedVote.decode(bytes.fromhex(line)) for line in traffic.read_text().split()]
    valset = consensus_valset(swarm.cfg)
    assert find_equivocations(votes, valset, swarm.cfg.swarm_id) == []
    v2 = [i for i, v in enumerate(swarm.cfg.validators) if v.name == "v2"][0]
    assert any(sv.vote.validator == v2 and sv.vote.height >= height_after for sv in votes), \
        "v2 never voted after its restart"
    for p in survivors + [again]:
        assert not p.named("evidence"), p.name
    for p in survivors + [again]:
        p.stop()
    assert_same_chain(swarm, ["v1", "v2", "v3", "v4"])


def test_a_late_validator_catches_up_from_genesis_and_an_observer_follows(swarm: Swarm) -> None:
    early = {n: swarm.start(n, model=None) for n in ("v1", "v2", "v3")}
    for p in early.values():
        wait_joined(p, {"v1", "v2", "v3"} - {p.name})
    for m in motions(5):  # one at a time: five decisions, five heights
        (motion_id,) = submit(swarm, [m])
        wait_agreed(early.values(), [motion_id])
    assert max(e["height"] for e in early["v1"].named("block_committed")) == 5

    late = swarm.start("v4", model=None)
    observer_key = swarm.dir / "observer.key"
    write_key_file(observer_key, Identity.generate())
    observer = swarm.start("observer", key=observer_key)
    for p in (late, observer):
        wait_height(p, 5)
        p.wait_event("catchup_finished", CATCH_UP_TIMEOUT)  # logged once the fetched batch is applied
    assert observer.named("peer_started")[0]["role"] == "observer"
    wait_joined(observer, {"v1", "v2", "v3", "v4"})
    new = submit(swarm, motions(1, " (with everyone)"))
    wait_agreed([*early.values(), late, observer], new)
    all_ids = {e["motion_id"] for e in early["v1"].named("agreement")}
    assert {e["motion_id"] for e in observer.named("agreement")} == all_ids  # every agreement, also the old ones
    for p in [*early.values(), late, observer]:
        p.stop()
    assert_same_chain(swarm, ["v1", "v2", "v3", "v4", "observer"])


def test_a_silent_proposer_is_replaced_by_a_round_change(swarm: Swarm) -> None:
    peers = swarm.start_all(model=None)
    first = submit(swarm, motions(1))
    wait_agreed(peers.values(), first)
    height = max(e["height"] for e in peers["v1"].named("block_committed")) + 1
    silent = swarm.cfg.validators[consensus_valset(swarm.cfg).proposer(height, 0)].name
    peers[silent].proc.send_signal(signal.SIGSTOP)  # alive, connected, and silent
    try:
        others = [p for n, p in peers.items() if n != silent]
        second = submit(swarm, motions(1, " (the proposer is silent)"))
        wait_agreed(others, second)
        changes = [e for p in others for e in p.named("round_changed") if e["height"] == height]
        assert changes, "decided without a round change: the silent proposer was not needed?"
    finally:
        peers[silent].proc.send_signal(signal.SIGCONT)
    wait_agreed([peers[silent]], second, CATCH_UP_TIMEOUT)
    for p in peers.values():
        p.stop()
    chain = assert_same_chain(swarm, list(peers))
    silent_key = [v.public_key.hex() for v in swarm.cfg.validators if v.name == silent][0]
    assert chain[height - 1]["proposer"] != silent_key
    assert chain[height - 1]["round"] >= 1
