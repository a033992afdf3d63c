"""Deliberation: a motion in, a signed ballot out; and the replay that checks one."""

from __future__ import annotations

import hashlib
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


class LlmDeliberator:
    """A validator's ballots from its local model (``agents.node.Deliberator``)."""

    def __init__(self, runtime: ModelRuntime, identity: Identity, persona: str, swarm_id: bytes,
                 timeout_s: float = 60.0) -> None:
        self.runtime, self.identity, self.persona, self.swarm_id = runtime, identity, persona, swarm_id
        self.timeout_s = timeout_s

    async def ballot(self, motion_id: bytes, motion) -> Ballot:
        answer = await self.runtime.answer_async(self.persona, motion.text, motion.options, self.timeout_s)
        return Ballot.sign(
            self.identity, swarm_id=self.swarm_id, motion_id=motion_id, motion_text=motion.text,
            options=motion.options, choice=answer.choice, reason=answer.reason,
            fingerprint=self.runtime.fingerprint(self.persona, motion.options),
            timings=timings_of(answer, self.runtime.load_ms),
        )


FIXED_MODEL_SHA256 = hashlib.sha256(b"conclave fixed-choice model").hexdigest()


class FixedDeliberator:
    """Ballots that cost nothing: a choice given by a function of the motion (the first
    option by default). For fast tests and for benchmarks of the agreement alone; its
    fingerprint names no real model, so a swarm with ``allowed_models`` refuses it."""

    def __init__(self, identity: Identity, swarm_id: bytes, choose=None) -> None:
        self.identity, self.swarm_id = identity, swarm_id
        self.choose = choose or (lambda motion: motion.options[0])

    async def ballot(self, motion_id: bytes, motion) -> Ballot:
        from agents.ballot import ModelFingerprint, Sampling  # noqa: PLC0415

        digest = hashlib.sha256(b"fixed").hexdigest()
        fingerprint = ModelFingerprint(FIXED_MODEL_SHA256, 1, Sampling(), "fixed-1", digest, digest, "none")
        return Ballot.sign(
            self.identity, swarm_id=self.swarm_id, motion_id=motion_id, motion_text=motion.text,
            options=motion.options, choice=self.choose(motion), reason="fixed choice", fingerprint=fingerprint,
        )
