"""The consensus core in whole-cluster simulation (``consensus/sim/``).

The sweep runs 300 seeds each of n=4,f=1 and n=7,f=2, every run with loss, duplication,
delays (hence reordering) and a partition that heals, and Byzantine validators whose
behaviours are drawn from the seed. Every run must keep agreement, validity and honest
non-equivocation after every step, and decide every height after the network heals.
The other tests show that the pieces are real: the checkers catch crafted violations
(and real ones when f exceeds the bound), a seed replays identically, and a failing run
prints the command that replays it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nacl.signing
import pytest

from agents.cli import main
from consensus.events import Decide
from consensus.evidence import DuplicateVoteEvidence
from consensus.qc import QuorumCertificate
from consensus.sim import BEHAVIOURS, Checker, NetworkConfig, Rng, Simulation, scenario
from consensus.sim.byzantine import DOUBLE_VOTE, EQUIVOCATE, INVALID_MARK, INVALID_VALUE, SILENT
from consensus.sim.harness import GENESIS, SWARM_ID, make_valset, validator_seed
from consensus.sim.network import Network, Partition, random_partition
from consensus.types import Block, Proposal, SignedProposal, SignedVote, Step, Vote, VoteType

ROOT = Path(__file__).resolve().parents[2]
SEEDS, CHUNK, HEIGHTS = 300, 50, 3
CHAOS = {"heights": HEIGHTS, "drop": 0.1, "duplicate": 0.05, "partition": True}


# --- the sweep -----------------------------------------------------------------------


@pytest.mark.parametrize("n, f, first", [(n, f, s) for n, f in ((4, 1), (7, 2)) for s in range(0, SEEDS, CHUNK)])
def test_sweep_keeps_safety_and_liveness_under_byzantine_validators_and_a_bad_network(n: int, f: int, first: int) -> None:
    failures: list[str] = []
    behaviours: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    double_voting, unreported = 0, []
    for seed in range(first, first + CHUNK):
        r = scenario(n, f, seed, **CHAOS).run()
        if not r.ok:
            failures.append(f"seed {seed}: {r.safety_violations or r.liveness_failure}\n  replay: {r.replay}")
            continue
        assert r.heights_decided == HEIGHTS
        assert r.partition is not None and r.partition.t_heal > r.partition.t_split
        assert len(r.byzantine) == f
        # Messages an honest validator sent are never refused by another honest one.
        assert not r.honest_rejected, f"seed {seed}: {r.honest_rejected}\n  replay: {r.replay}"
        # Evidence only when someone double votes or proposes twice (and never against an
        # honest validator: the checker fails the run if it is).
        if any(DOUBLE_VOTE in b and SILENT not in b for b in r.byzantine.values()):
            double_voting += 1
            if r.evidence_reported == 0:
                # Possible but rare: both votes must reach one honest validator before it
                # decides that height (after that, they are stale and ignored).
                unreported.append(seed)
        elif not any(EQUIVOCATE in b and SILENT not in b for b in r.byzantine.values()):
            # (a proposer that equivocates is proved only in rounds it is the proposer of)
            assert r.evidence_reported == 0, f"seed {seed}: {r.byzantine} {r.evidence_reported}"
        behaviours.update(b for bs in r.byzantine.values() for b in bs)
        rejected.update(r.rejected)
        ignored.update(r.ignored)
    assert not failures, f"{len(failures)} of {CHUNK} runs failed:\n" + "\n".join(failures)
    assert double_voting >= 10 and len(unreported) <= double_voting // 10, (double_voting, unreported)
    # Every behaviour took part, and the adversary's messages did reach the core's checks.
    assert set(behaviours) == set(BEHAVIOURS), behaviours
    for reason in ("bad_signature", "wrong_proposer", "not_member"):
        assert rejected[reason] > 0, rejected
    for reason in ("stale_height", "future_height", "far_future_round"):
        assert ignored[reason] > 0, ignored


def test_the_sweep_draws_every_behaviour_and_a_quorumless_partition_per_seed() -> None:
    """Cheap (nothing runs): what the sweep's seeds configure."""
    for n, f in ((4, 1), (7, 2)):
        seen: Counter[str] = Counter()
        for seed in range(SEEDS):
            sim = scenario(n, f, seed, **CHAOS)
            p = sim.partition
            assert p is not None and 0 <= p.t_split < p.t_heal
            assert sorted(i for g in p.groups for i in g) == list(range(n))
            assert all(not sim.valset.is_quorum(len(g)) for g in p.groups)
            assert sim.network_config.drop == 0.1 and sim.network_config.duplicate == 0.05
            assert len(sim.honest) == n - f
            for b in sim.byz.values():
                assert b.behaviours and (b.behaviours == (SILENT,) or SILENT not in b.behaviours)
                seen.update(b.behaviours)
        assert min(seen[b] for b in BEHAVIOURS) >= 30, seen


# --- scripted scenarios --------------------------------------------------------------


def test_an_invalid_block_gets_nil_prevotes_and_is_never_decided() -> None:
    # Validator 3 is proposer at height 3 round 0 ((3 + 0) % 4) and proposes a block
    # its application marked invalid; the honest applications reject it.
    sim = Simulation(4, 1, seed=11, heights=4, behaviours={3: (INVALID_VALUE,)})
    r = sim.run()
    assert r.ok and r.heights_decided == 4, r
    invalid = [(h, rd, v) for (h, rd, v) in sim.checker.proposed if h == 3 and rd == 0]
    assert len(invalid) == 1
    for i in sorted(sim.honest):
        prevote = sim.checker.signed[(i, 3, 0, int(Step.PREVOTE))]
        assert isinstance(prevote, Vote) and prevote.value is None
        assert not sim.decided[i][3].block.payload.startswith(INVALID_MARK)
        assert sim.decided[i][3].certificate.round >= 1


def test_a_two_two_partition_decides_nothing_until_it_heals() -> None:
    net = NetworkConfig(partition=True, groups=((0, 1), (2, 3)), t_split=0, t_heal=2000)
    sim = Simulation(4, 0, seed=3, heights=2, network=net)
    r = sim.run()
    assert r.ok and r.heights_decided == 2, r
    assert sim.decisions and all(t >= 2000 for t, *_ in sim.decisions)
    assert r.virtual_ms < 2000 + 5000


def test_a_validator_cut_off_alone_catches_up_after_the_heal() -> None:
    # 0, 1, 2 hold a quorum and go on deciding; 3 hears nothing until 3000 ms, then
    # catches up through decision requests.
    net = NetworkConfig(partition=True, groups=((0, 1, 2), (3,)), t_split=0, t_heal=3000)
    sim = Simulation(4, 0, seed=5, heights=3, network=net)
    r = sim.run()
    assert r.ok and r.heights_decided == 3, r
    early = [(t, h) for t, i, h, _ in sim.decisions if i != 3 and t < 3000]
    assert len(early) >= 3 * 3  # the quorum side did not wait
    assert all(t >= 3000 for t, i, *_ in sim.decisions if i == 3)
    assert r.ignored.get("future_height", 0) > 0  # 3 was told it was behind


def test_silent_and_equivocating_byzantine_validators_cost_rounds_not_safety() -> None:
    for behaviours in ((SILENT,), (EQUIVOCATE, DOUBLE_VOTE)):
        for seed in range(10):
            r = Simulation(7, 2, seed, heights=3, behaviours=behaviours).run()
            assert r.ok and r.heights_decided == 3, (behaviours, r.replay, r.safety_violations, r.liveness_failure)


# --- determinism ---------------------------------------------------------------------


def test_a_seed_replays_identically_and_seeds_differ() -> None:
    a = scenario(4, 1, 42, **CHAOS).run()
    b = scenario(4, 1, 42, **CHAOS).run()
    assert a == b
    c = scenario(4, 1, 43, **CHAOS).run()
    assert c != a
    assert (c.steps, c.virtual_ms, c.partition) != (a.steps, a.virtual_ms, a.partition)


def test_a_seed_replays_identically_in_another_process_whatever_the_hash_seed() -> None:
    code = ("from consensus.sim import scenario; "
            "print(repr(scenario(7, 2, 9, heights=2, drop=0.1, duplicate=0.05, partition=True).run()))")
    outputs = {
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": hs, "PATH": "/usr/bin:/bin"}).stdout
        for hs in ("0", "1", "12345")
    }
    assert len(outputs) == 1
    assert "SimResult(seed=9" in outputs.pop()


def test_rng_is_splitmix64_and_its_helpers_stay_in_range() -> None:
    r = Rng(0)
    assert [r.next_u64() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    r = Rng(2024)
    draws = [r.randint(3, 7) for _ in range(2000)]
    assert set(draws) == {3, 4, 5, 6, 7}
    assert all(0.0 <= r.random() < 1.0 for _ in range(1000))
    items = list(range(20))
    r.shuffle(items)
    assert sorted(items) == list(range(20)) and items != list(range(20))
    assert r.choice("abc") in "abc"
    assert Rng(5).fork("x").next_u64() == Rng(5).fork("x").next_u64() != Rng(5).fork("y").next_u64()
    with pytest.raises(ValueError):
        r.randint(2, 1)


# --- the network ---------------------------------------------------------------------


def test_network_loses_duplicates_delays_and_reorders_as_configured() -> None:
    net = Network(NetworkConfig(d_min=1, d_max=20, drop=0.2, duplicate=0.1), Rng(1), None)
    copies = [net.arrivals(100, 0, 1) for _ in range(20_000)]
    lost = sum(1 for c in copies if not c) / len(copies)
    doubled = sum(1 for c in copies if len(c) == 2) / len(copies)
    assert 0.18 < lost < 0.22 and 0.07 < doubled < 0.09
    times = [t for c in copies for t in c]
    assert min(times) == 101 and max(times) == 120
    firsts = [c[0] for c in copies if c]
    assert any(b < a for a, b in zip(firsts, firsts[1:]))  # sent in order, arriving out of order


def test_partition_cuts_across_groups_only_while_split() -> None:
    p = Partition(((0, 1), (2, 3)), t_split=100, t_heal=200)
    net = Network(NetworkConfig(), Rng(1), p)
    assert net.arrivals(150, 0, 2) == [] and net.arrivals(150, 3, 1) == []
    assert net.arrivals(150, 0, 1) and net.arrivals(150, 2, 3)
    assert net.arrivals(99, 0, 2) and net.arrivals(200, 0, 2)
    for n in (3, 4, 7, 10, 13):
        valset = make_valset(n)
        for seed in range(50):
            groups = random_partition(Rng(seed), valset)
            assert sorted(i for g in groups for i in g) == list(range(n))
            assert len(groups) >= 2 and all(not valset.is_quorum(len(g)) for g in groups)


# --- the checkers are not vacuous ----------------------------------------------------

VALSET = make_valset(4)
KEYS = [nacl.signing.SigningKey(validator_seed(i)) for i in range(4)]


def _vote(i: int, type: VoteType, h: int, r: int, value: bytes | None) -> SignedVote:
    v = Vote(type, h, r, value, i)
    return SignedVote(v, KEYS[i].sign(v.signing_bytes(SWARM_ID)).signature)


def _proposal(h: int, r: int, prev: bytes, payload: bytes) -> tuple[Block, SignedProposal]:
    proposer = VALSET.proposer(h, r)
    block = Block(h, prev, VALSET.validators[proposer].public_key, payload)
    p = Proposal(h, r, block, -1, proposer)
    return block, SignedProposal(p, KEYS[proposer].sign(p.signing_bytes(SWARM_ID)).signature)


def _commit(block: Block, r: int, signers: tuple[int, ...]) -> Decide:
    qc = QuorumCertificate.from_votes([_vote(i, VoteType.PRECOMMIT, block.height, r, block.hash) for i in signers], 4)
    return Decide(block.height, r, block, qc)


def _checker(honest: tuple[int, ...] = (0, 1, 2, 3)) -> Checker:
    return Checker(VALSET, SWARM_ID, frozenset(honest))


def test_checker_accepts_a_correct_chain_of_decisions() -> None:
    c = _checker()
    a, sa = _proposal(1, 0, GENESIS, b"a")
    b, sb = _proposal(2, 1, a.hash, b"b")
    c.saw_proposal(sa)
    c.saw_proposal(sb)
    for i in range(4):
        c.on_decide(i, _commit(a, 0, (0, 1, 2)))
        c.on_decide(i, _commit(b, 1, (1, 2, 3)))
    assert c.violations == []


def test_checker_catches_two_honest_validators_deciding_different_blocks() -> None:
    c = _checker()
    a, sa = _proposal(1, 0, GENESIS, b"a")
    b, sb = _proposal(1, 0, GENESIS, b"b")
    c.saw_proposal(sa)
    c.saw_proposal(sb)
    c.on_decide(0, _commit(a, 0, (0, 1, 2)))
    assert c.violations == []
    c.on_decide(3, _commit(b, 0, (1, 2, 3)))
    assert len(c.violations) == 1 and c.violations[0].startswith("agreement: at height 1")


def test_checker_catches_invalid_decisions() -> None:
    c = _checker()
    a, sa = _proposal(1, 0, GENESIS, b"a")
    c.saw_proposal(sa)
    never, _ = _proposal(1, 0, GENESIS, b"never proposed")
    wrong_bytes = tuple(KEYS[i].sign(b"not the vote").signature for i in range(3))
    cases = [
        (never, _commit(never, 0, (0, 1, 2)), "was never proposed"),
        (a, _commit(a, 0, (0, 1)), "does not verify"),  # 2 of 4: no quorum
        (a, Decide(1, 0, a, QuorumCertificate(VoteType.PRECOMMIT, 1, 0, a.hash, b"\x07", wrong_bytes)),
         "does not verify"),
    ]
    for _, decide, needle in cases:
        c = _checker()
        c.saw_proposal(sa)
        c.on_decide(0, decide)
        assert any(needle in v for v in c.violations), (needle, c.violations)
    # Not chained to the previous decision, or skipping a height.
    c = _checker()
    c.saw_proposal(sa)
    c.on_decide(0, _commit(a, 0, (0, 1, 2)))
    stray, sstray = _proposal(2, 0, GENESIS, b"stray")
    c.saw_proposal(sstray)
    c.on_decide(0, _commit(stray, 0, (0, 1, 2)))
    assert any("does not chain" in v for v in c.violations), c.violations
    c = _checker()
    far, sfar = _proposal(3, 0, GENESIS, b"far")
    c.saw_proposal(sfar)
    c.on_decide(1, _commit(far, 0, (0, 1, 2)))
    assert any("right after height 0" in v for v in c.violations), c.violations
    # A block the application rejects.
    c = _checker()
    bad, sbad = _proposal(1, 0, GENESIS, INVALID_MARK + b" payload")
    c.saw_proposal(sbad)
    c.on_decide(2, _commit(bad, 0, (0, 1, 2)))
    assert any("application rejects" in v for v in c.violations), c.violations


def test_checker_ignores_a_proposal_signed_by_someone_not_the_proposer() -> None:
    c = _checker()
    a, sa = _proposal(1, 0, GENESIS, b"a")
    other = (VALSET.proposer(1, 0) + 1) % 4
    forged = SignedProposal(sa.proposal, KEYS[other].sign(sa.proposal.signing_bytes(SWARM_ID)).signature)
    c.saw_proposal(forged)
    c.on_decide(0, _commit(a, 0, (0, 1, 2)))
    assert any("never proposed" in v for v in c.violations)


def test_checker_catches_an_honest_validator_signing_twice() -> None:
    c = _checker()
    x = b"\x11" * 32
    c.on_broadcast(2, _vote(2, VoteType.PREVOTE, 1, 0, x))
    c.on_broadcast(2, _vote(2, VoteType.PREVOTE, 1, 0, x))  # a rebroadcast: fine
    c.on_broadcast(2, _vote(2, VoteType.PRECOMMIT, 1, 0, None))  # another step: fine
    c.on_broadcast(2, _vote(2, VoteType.PREVOTE, 1, 1, None))  # another round: fine
    c.on_broadcast(1, _vote(2, VoteType.PREVOTE, 1, 0, None))  # relaying another's message: not 1's
    assert c.violations == []
    c.on_broadcast(2, _vote(2, VoteType.PREVOTE, 1, 0, None))
    assert len(c.violations) == 1 and c.violations[0].startswith("equivocation: honest validator 2")
    a, sa = _proposal(1, 0, GENESIS, b"a")
    b, sb = _proposal(1, 0, GENESIS, b"b")
    proposer = VALSET.proposer(1, 0)
    c.on_broadcast(proposer, sa)
    c.on_broadcast(proposer, sb)
    assert len(c.violations) == 2 and "step propose" in c.violations[1]


def test_checker_catches_evidence_against_an_honest_validator() -> None:
    c = _checker(honest=(0, 1, 2))
    x = b"\x22" * 32
    c.on_evidence(0, DuplicateVoteEvidence.of(_vote(3, VoteType.PREVOTE, 1, 0, x), _vote(3, VoteType.PREVOTE, 1, 0, None)))
    assert c.violations == []  # 3 is Byzantine: that is what evidence is for
    c.on_evidence(0, DuplicateVoteEvidence.of(_vote(1, VoteType.PREVOTE, 1, 0, x), _vote(1, VoteType.PREVOTE, 1, 0, None)))
    assert c.violations == ["validator 0 reported evidence against honest validator 1"]


def test_the_simulation_catches_real_violations_when_f_exceeds_the_bound() -> None:
    """n=4 with f=2 coordinated equivocators is outside what BFT can survive: the whole
    pipeline (behaviours, network, checks) must find a disagreement for some seed."""
    broken = [r for r in (Simulation(4, 2, seed, heights=3, behaviours=(EQUIVOCATE, DOUBLE_VOTE)).run()
                          for seed in range(20)) if r.safety_violations]
    assert broken, "no violation found with f=2 of 4: the checks or the adversary are toothless"
    assert any(v.startswith("agreement:") for r in broken for v in r.safety_violations)
    assert not broken[0].ok and "--byzantine 2" in broken[0].replay


# --- replaying a failure -------------------------------------------------------------


def test_replay_command_names_every_setting() -> None:
    sim = scenario(4, 1, 5, heights=2, drop=0.1, duplicate=0.05, partition=True)
    assert sim.replay_command() == ("conclave simulate --validators 4 --byzantine 1 --runs 1 --seed 5 --heights 2 "
                                    "--drop 0.1 --duplicate 0.05 --partition")
    assert scenario(7, 2, 0, behaviours=(SILENT,)).replay_command() == (
        "conclave simulate --validators 7 --byzantine 2 --runs 1 --seed 0 --heights 3 --behaviours silent")
    custom = Simulation(4, 1, 5, network=NetworkConfig(d_max=50))
    assert custom.replay_command().endswith("# plus custom network: rebuild the Simulation in Python")


def test_a_failing_run_prints_the_command_that_replays_it(capsys: pytest.CaptureFixture[str]) -> None:
    # 95% loss: nothing can be decided in time, whatever the core does.
    failing = scenario(4, 1, 8, heights=2, drop=0.95).run()
    assert failing.liveness_failure is not None and "decided 0 of 2 heights" in failing.liveness_failure
    expected = "conclave simulate --validators 4 --byzantine 1 --runs 1 --seed 8 --heights 2 --drop 0.95"
    assert failing.replay == expected

    # Several runs through the CLI: run i uses seed 7 + i; the failing one is named.
    assert main(["simulate", "--validators", "4", "--byzantine", "1", "--runs", "2", "--seed", "7",
                 "--heights", "2", "--drop", "0.95"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert 8 in summary["failed_seeds"] and summary["liveness_failures"] == len(summary["failed_seeds"])
    assert expected in err.splitlines()[1 + 2 * summary["failed_seeds"].index(8)]

    # The printed command replays that run alone, identically.
    argv = shlex.split(expected)
    assert argv[:2] == ["conclave", "simulate"]
    assert main(argv[1:]) == 1
    out, err = capsys.readouterr()
    replayed = json.loads(out)
    assert replayed["failed_seeds"] == [8] and replayed["runs"] == 1
    assert replayed["heights_decided"] == failing.heights_decided and replayed["liveness_failures"] == 1
    assert f"replay: {expected}" in err


# --- the command line ----------------------------------------------------------------


def test_cli_prints_one_json_line_summing_runs_with_consecutive_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["simulate", "--validators", "4", "--byzantine", "0", "--runs", "3", "--seed", "100", "--heights", "2"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert set(summary) == {"runs", "validators", "byzantine", "heights_decided", "safety_violations",
                            "liveness_failures", "mean_rounds_per_height", "messages_per_height", "elapsed_s",
                            "failed_seeds"}
    runs = [scenario(4, 0, s, heights=2).run() for s in (100, 101, 102)]
    assert rc == 0 and err == ""
    assert summary["runs"] == 3 and summary["validators"] == 4 and summary["byzantine"] == 0
    assert summary["heights_decided"] == sum(r.heights_decided for r in runs) == 6
    assert summary["safety_violations"] == 0 and summary["liveness_failures"] == 0 and summary["failed_seeds"] == []
    assert summary["mean_rounds_per_height"] == 1.0
    assert summary["messages_per_height"] == pytest.approx(sum(r.messages_per_height for r in runs) / 3, abs=0.01)
    assert summary["elapsed_s"] >= 0


@pytest.mark.parametrize("argv, needle", [
    (["--validators", "4", "--byzantine", "2"], "--byzantine 2"),
    (["--validators", "6", "--byzantine", "2"], "--byzantine 2"),
    (["--validators", "4", "--byzantine", "-1"], "--byzantine -1"),
    (["--validators", "0"], "--validators 0"),
    (["--validators", "4", "--runs", "0"], "--runs 0"),
    (["--validators", "4", "--heights", "0"], "--heights 0"),
    (["--validators", "4", "--drop", "1.5"], "--drop 1.5"),
    (["--validators", "4", "--duplicate", "-0.1"], "--duplicate -0.1"),
    (["--validators", "4", "--byzantine", "1", "--behaviours", "silent,lying"], "lying"),
])
def test_cli_rejects_bad_arguments_with_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and needle in err and "Traceback" not in err


def test_strict_quorums_keep_agreement_even_with_exactly_one_third_byzantine() -> None:
    """A quorum is *more than* 2/3 of the power. With n=6 and f=2 coordinated equivocators
    (exactly 1/3, beyond what liveness needs but not what safety needs), two quorums of 5
    still share an honest validator, so no two honest validators ever decide differently.
    Were the threshold 2/3 inclusive, quorums of 4 could be all-Byzantine in their overlap:
    measured, 13 of these 30 seeds then break agreement."""
    for seed in range(30):
        result = Simulation(6, 2, seed, heights=3, behaviours=(EQUIVOCATE, DOUBLE_VOTE)).run()
        assert result.safety_violations == (), result.replay
