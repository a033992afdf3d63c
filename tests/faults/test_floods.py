"""Short version of the floods scenario (issue 8, part 4; tests/faults/flood_run.py):
a member and a stranger flood three honest peers for a few seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.flood_run import run_floods

pytestmark = pytest.mark.integration


def test_honest_peers_decide_through_a_flood_ban_both_flooders_and_stay_small(tmp_path: Path) -> None:
    report = run_floods(tmp_path, seconds=8.0, motions=2, say=lambda _: None)
    assert report.problems() == [], report
    # Each flooder got thousands of messages out (the load was real) ...
    assert all(n >= 2000 for n in report.sent.values()), report.sent
    # ... and the honest peers dropped most of it unread once the senders were banned:
    # far fewer reached their gates than were sent.
    for name, screened in report.screened.items():
        assert screened > 0 and report.rejected[name] < sum(report.sent.values()) / 10, report
