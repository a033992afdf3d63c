"""A validator's re-sends of its own ballots back off exponentially (agents/node.py)."""

from __future__ import annotations

import pytest

from agents.node import MAX_RESEND_BACKOFF, OwnBallot

EVERY = 5.0
# Each row: re-sends so far, seconds since the last send, whether the next one is due.
CASES = {
    "first re-send after one period": (0, 5.0, True),
    "not before": (0, 4.9, False),
    "second waits two periods": (1, 9.9, False),
    "second after two periods": (1, 10.0, True),
    "third after four": (2, 20.0, True),
    "capped": (MAX_RESEND_BACKOFF + 5, EVERY * 2 ** MAX_RESEND_BACKOFF, True),
    "capped, not before": (MAX_RESEND_BACKOFF + 5, EVERY * 2 ** MAX_RESEND_BACKOFF - 0.1, False),
}


@pytest.mark.parametrize("resends, since, due", list(CASES.values()), ids=list(CASES))
def test_resend_backoff(resends: int, since: float, due: bool) -> None:
    own = OwnBallot(None, None, committed_at=0.0, last_sent=100.0, resends=resends)
    assert own.resend_due(100.0 + since, EVERY) is due
