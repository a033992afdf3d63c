"""Short versions of the bad-bytes fuzzing (issue 8): tests/faults/fuzz_gate.py's
mutation fuzzer, generated payloads from hypothesis, and a coverage-guided atheris run.
``make faults`` runs the long ones (at least 100,000 inputs each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.peer import PEER_DECODERS
from p2p.errors import RejectReason
from p2p.validation import Accepted, MessageValidator

from tests.faults.fuzz_gate import SWARM, FuzzFailure, Report, Sealer, build_corpus, judge, run

ROOT = Path(__file__).resolve().parents[2]
CORPUS = build_corpus()


def test_every_message_of_the_corpus_is_accepted_as_it_is():
    # Mutations of messages the gate would refuse anyway would fuzz nothing behind it.
    validator, sealer = MessageValidator(SWARM, PEER_DECODERS), Sealer()
    for seed in CORPUS:
        verdict = validator.validate(sealer.seal(seed.sender, int(seed.type), seed.payload), 0.0)
        assert isinstance(verdict, Accepted) and verdict.type is seed.type, seed.name
    assert {seed.type for seed in CORPUS} == set(PEER_DECODERS)


def test_twenty_thousand_mutated_frames_are_each_accepted_or_rejected_with_a_counted_reason():
    report = run(20_000, seed=8)
    assert report.inputs == 20_000 and report.envelopes >= 20_000
    # The inputs reach every stage of the gate, and past it into every decoder.
    reached = set(report.rejected)
    expected = {r.value for r in RejectReason} - {RejectReason.TOO_LARGE.value, RejectReason.RATE_LIMITED.value}
    assert expected <= reached, expected - reached
    assert set(report.accepted) == {t.name for t in PEER_DECODERS}
    assert report.blocks_checked > 0 and report.blocks_rejected > 0


def test_a_decoder_that_breaks_the_rules_is_caught_with_the_command_that_replays_it():
    def broken(data: bytes):
        raise ValueError("a decoder bug")

    decoders = {**PEER_DECODERS, next(iter(PEER_DECODERS)): broken}
    with pytest.raises(FuzzFailure, match=r"raised ValueError: a decoder bug[\s\S]*replay: python -m "
                                          r"tests\.faults\.fuzz_gate --seed 3 --inputs \d+ --only \d+"):
        run(1000, seed=3, decoders=decoders)


def test_replaying_one_input_judges_only_that_one():
    assert run(50, seed=4, only=49).inputs == 1


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=40)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _field_names() -> list[str]:
    """The keys the real payloads use, at any depth, so that generated maps hit them."""
    names: set[str] = set()

    def walk(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                names.add(k)
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, bytes):
            try:
                walk(msgpack.unpackb(obj, raw=False))
            except Exception:  # noqa: BLE001 - an opaque bin field
                pass

    for seed in CORPUS:
        walk(msgpack.unpackb(seed.payload, raw=False))
    return sorted(names)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(CORPUS) - 1),
       payload=st.dictionaries(st.sampled_from(_field_names()), _values, max_size=6) | _values)
def test_generated_payloads_behind_a_valid_signature_are_accepted_or_rejected_with_a_counted_reason(index, payload):
    seed = CORPUS[index]
    validator = MessageValidator(SWARM, PEER_DECODERS)
    judge(validator, Sealer().seal(seed.sender, int(seed.type), msgpack.packb(payload, use_bin_type=True)), Report())
    assert validator.accepted + sum(validator.rejected.values()) == 1


def test_coverage_guided_fuzzing_with_atheris_finds_no_crash():
    pytest.importorskip("atheris")
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "faults" / "atheris_gate.py"), "-atheris_runs=5000"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Done 5000 " in res.stderr


def test_make_faults_prints_a_row_per_scenario_and_fails_on_a_violation(monkeypatch, capsys):
    from tests.faults import run_faults

    monkeypatch.setattr(run_faults, "FUZZ_INPUTS", 300)
    assert run_faults.main(["--only", "fuzz"]) == 0
    out = capsys.readouterr().out
    assert "| bad bytes: mutated messages | 600 | - | 0 | 0 | - |" in out, out

    def violated() -> run_faults.Row:
        return run_faults.Row("a broken scenario", 1, safety_violations=1, detail="two blocks at height 3")

    monkeypatch.setitem(run_faults.SCENARIOS, "broken", violated)
    assert run_faults.main(["--only", "broken"]) == 1
    assert "two blocks at height 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_faults.main(["--only", "nonsense"])
