"""The short crash loop (issue 8, part 2): three SIGKILLs of validators of a real
4-peer swarm at seeded moments, each restarted from its own data directory. ``make
faults`` runs twenty (tests/faults/crash_loop.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.crash_loop import run_crash_loop

pytestmark = pytest.mark.integration
SEED = 5


def test_killed_validators_catch_up_every_time_and_nobody_signs_a_conflicting_vote(tmp_path: Path) -> None:
    report = run_crash_loop(tmp_path, kills=3, seed=SEED)
    replay = f"replay: python -m tests.faults.crash_loop --kills 3 --seed {SEED}"
    assert report.safety_violations == [], replay
    assert report.liveness_failures == [], replay
    assert report.kills == 3 and len(report.catch_up_s) == 3
    assert report.decisions >= 4  # a motion a round, and one at the end
