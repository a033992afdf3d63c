"""Deliberation: a motion in, a signed ballot out; and the replay that checks one."""

from __future__ import annotations

from dataclasses import dataclass

from agents.ballot import ASK_SWARM_ID, Ballot, Timings, motion_digest
from agents.llm import Answer, ModelRuntime
from p2p.keys import Identity


def timings_of(answer: Answer, load_ms: float) -> Timings:
    t = answer.timings
    return Timings(load_ms=round(load_ms, 2), prompt_ms=t["prefix_ms"] + t["prompt_ms"], generate_ms=t["generate_ms"],
                   total_ms=t["total_ms"], prompt_tokens=t["prompt_tokens"], cached_tokens=t["cached_tokens"])


def make_ballot(runtime: ModelRuntime, identity: Identity, persona: str, motion_text: str, options: tuple[str, ...],
                *, swarm_id: bytes = ASK_SWARM_ID, motion_id: bytes | None = None) -> Ballot:
    """Blocking: run the model on the motion and sign what it chose."""
    options = tuple(options)
    answer = runtime.answer(persona, motion_text, options)
    return Ballot.sign(
        identity, swarm_id=swarm_id, motion_id=motion_id or motion_digest(motion_text, options),
        motion_text=motion_text, options=options, choice=answer.choice, reason=answer.reason,
        fingerprint=runtime.fingerprint(persona, options), timings=timings_of(answer, runtime.load_ms),
    )


@dataclass(frozen=True, slots=True)
class ReplayResult:
    match: bool
    recorded: tuple[str, str]  # (choice, reason) in the ballot
    replayed: tuple[str, str]  # (choice, reason) now
    fingerprint_diff: tuple[str, ...]  # signed fingerprint fields that differ
    signature_valid: bool

    def describe(self) -> str:
        if self.match:
            return "MATCH"
        lines = ["DIFFERENT"]
        if not self.signature_valid:
            lines.append("  signature: does not verify (the ballot was altered after signing)")
        lines.append(f"  recorded: {self.recorded[0]!r} because {self.recorded[1]!r}")
        lines.append(f"  replayed: {self.replayed[0]!r} because {self.replayed[1]!r}")
        if self.fingerprint_diff:
            lines.append(f"  fingerprint differs in: {', '.join(self.fingerprint_diff)}")
        return "\n".join(lines)


def replay(ballot: Ballot, runtime: ModelRuntime, persona: str) -> ReplayResult:
    """Re-run the ballot's inference here; MATCH needs the same output *and* a valid
    signature (an altered ballot whose text happens to replay is still DIFFERENT)."""
    answer = runtime.answer(persona, ballot.motion_text, ballot.options)
    ours = runtime.fingerprint(persona, ballot.options)
    diff = tuple(ballot.fingerprint.diff(ours))
    valid = ballot.verify()
    same = (answer.choice, answer.reason) == (ballot.choice, ballot.reason)
    return ReplayResult(same and valid and not diff, (ballot.choice, ballot.reason), (answer.choice, answer.reason),
                        diff, valid)
