"""The whole-cluster simulation: n cores over a simulated network, on a virtual clock.

One step = one event taken off a heap ordered by (virtual ms, sequence number), fed to
one validator, its effects carried out at once (messages and timers become later
events). Nothing depends on anything but the seed, so a seed replays identically.

The ``Checker`` sees every effect as it is produced, so its checks hold after every
step: agreement, validity, no honest equivocation. Liveness is checked at the end:
every honest validator must have decided the requested heights before a deadline
counted from the moment the network healed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import nacl.signing

from consensus.core import Core, Timeouts
from consensus.errors import RemoteProtocolError
from consensus.events import (
    Broadcast, Decide, DecisionReceived, Input, PersistVote, ProposalReceived, ReportEvidence, ReportRoundChange,
    RequestDecision, RequestValue, ScheduleTimeout, Started, TimeoutFired, ValidateValue, ValueReady,
    ValueValidated, VotePersisted, VoteReceived,
)
from consensus.evidence import Evidence
from consensus.safety import SafetyRules
from consensus.sim.byzantine import INVALID_MARK, Byzantine, Cabal, Send, choose_behaviours
from consensus.sim.network import Network, NetworkConfig, Partition, resolve_partition
from consensus.sim.rng import Rng
from consensus.types import Block, SignedProposal, SignedVote, Step, Validator, ValidatorSet, sha256

DEFAULT_TIMEOUTS = Timeouts(propose_ms=300, prevote_ms=100, precommit_ms=100, delta_ms=50)
SWARM_ID = sha256(b"conclave/sim/swarm")
GENESIS = b"\x00" * 32
APP_MS = 1  # the application's latency to build or check a block
ROUNDS_OF_SLACK = 20  # liveness: each height within this many base round durations


def validator_seed(i: int) -> bytes:
    return sha256(b"conclave/sim/key/%d" % i)


def make_valset(n: int) -> ValidatorSet:
    keys = [bytes(nacl.signing.SigningKey(validator_seed(i)).verify_key) for i in range(n)]
    return ValidatorSet(tuple(Validator(k, 1) for k in keys))


def app_payload(seed: int, height: int, round: int, proposer: int) -> bytes:
    return b"block seed=%d h=%d r=%d p=%d" % (seed, height, round, proposer)


def app_valid(block: Block) -> bool:
    return not block.payload.startswith(INVALID_MARK)


# --- the checks ----------------------------------------------------------------------


class Checker:
    """Safety checks over what honest validators do. Fed incrementally (every broadcast,
    decision and evidence as it happens); ``violations`` only grows."""

    def __init__(self, valset: ValidatorSet, swarm_id: bytes, honest: frozenset[int], genesis: bytes = GENESIS) -> None:
        self.valset, self.swarm_id, self.honest, self.genesis = valset, swarm_id, honest, genesis
        self.violations: list[str] = []
        self._first: dict[int, tuple[int, bytes]] = {}  # height -> (validator, block hash)
        self._last: dict[int, tuple[int, bytes]] = {}  # validator -> (height, hash) of its last decision
        self.signed: dict[tuple[int, int, int, int], object] = {}  # (validator, h, r, step) -> content
        self.proposed: set[tuple[int, int, bytes]] = set()  # (h, r, hash) validly proposed by proposer(h, r)
        self._seen_signatures: set[bytes] = set()
        self._good_certificates: set[bytes] = set()

    def _fail(self, text: str) -> None:
        self.violations.append(text)

    def saw_proposal(self, sp: SignedProposal) -> None:
        """Any proposal put on the wire, by anyone: remember the validly signed ones by
        the round's proposer (what a decision must come from)."""
        if sp.signature in self._seen_signatures:
            return
        self._seen_signatures.add(sp.signature)
        p = sp.proposal
        if p.proposer == self.valset.proposer(p.height, p.round) and sp.verify(self.valset, self.swarm_id):
            self.proposed.add((p.height, p.round, p.block.hash))

    def on_broadcast(self, i: int, msg: SignedProposal | SignedVote) -> None:
        if isinstance(msg, SignedProposal):
            content, signer = msg.proposal, msg.proposal.proposer
            key = (i, content.height, content.round, int(Step.PROPOSE))
        else:
            content, signer = msg.vote, msg.vote.validator
            key = (i, content.height, content.round, int(content.step))
        if signer != i:
            return  # relaying someone else's message: not ours to equivocate on
        known = self.signed.setdefault(key, content)
        if known != content:
            self._fail(f"equivocation: honest validator {i} signed two messages at height {key[1]} round {key[2]} "
                       f"step {Step(key[3]).name.lower()}: {known} and {content}")

    def on_decide(self, i: int, d: Decide) -> None:
        b, qc, h = d.block, d.certificate, d.height
        first = self._first.setdefault(h, (i, b.hash))
        if first[1] != b.hash:
            self._fail(f"agreement: at height {h} validator {first[0]} decided {first[1].hex()[:16]} "
                       f"but validator {i} decided {b.hash.hex()[:16]}")
        where = f"validity: validator {i} at height {h} round {d.round}"
        if b.height != h:
            self._fail(f"{where}: decided a block of height {b.height}")
        if (h, d.round, b.hash) not in self.proposed:
            self._fail(f"{where}: block {b.hash.hex()[:16]} was never proposed by the proposer of that round "
                       f"(validator {self.valset.proposer(h, d.round)})")
        if not app_valid(b):
            self._fail(f"{where}: decided a block the application rejects")
        if (qc.height, qc.round, qc.value) != (h, d.round, b.hash):
            self._fail(f"{where}: certificate is for {qc.height}/{qc.round}/{(qc.value or b'').hex()[:16]}")
        else:
            digest = sha256(qc.encode())
            if digest not in self._good_certificates:
                why = qc.verify(self.valset, self.swarm_id)
                if why is None:
                    self._good_certificates.add(digest)
                else:
                    self._fail(f"{where}: certificate does not verify: {why}")
        last_h, last_hash = self._last.get(i, (0, self.genesis))
        if h != last_h + 1:
            self._fail(f"{where}: decided height {h} right after height {last_h}")
        elif b.prev_hash != last_hash:
            self._fail(f"{where}: prev_hash {b.prev_hash.hex()[:16]} does not chain to {last_hash.hex()[:16]}")
        self._last[i] = (h, b.hash)

    def on_evidence(self, i: int, ev: Evidence) -> None:
        if not ev.verify(self.valset, self.swarm_id):
            self._fail(f"validator {i} reported evidence that does not verify: {ev}")
        if ev.validator in self.honest:
            self._fail(f"validator {i} reported evidence against honest validator {ev.validator}")

    def on_crash(self, i: int, inp: object, exc: Exception) -> None:
        self._fail(f"crash: honest validator {i} raised {type(exc).__name__}: {exc} on {type(inp).__name__}")


# --- the result ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimResult:
    seed: int
    n: int
    f: int
    heights: int  # requested
    heights_decided: int  # by every honest validator (the minimum)
    safety_violations: tuple[str, ...]
    liveness_failure: str | None
    rounds_per_height: float  # mean over honest decisions of (round + 1)
    messages_per_height: float  # broadcasts (published messages) per decided height
    deliveries_per_height: float  # point-to-point copies that arrived, per decided height
    steps: int
    virtual_ms: int
    evidence_reported: int
    rejected: dict[str, int]  # reason -> count, messages honest validators refused
    honest_rejected: dict[str, int]  # of those, messages that honest validators had sent
    ignored: dict[str, int]  # the honest cores' own counters (stale, far future...)
    byzantine: dict[int, tuple[str, ...]]
    partition: Partition | None
    replay: str  # the command that replays this run

    @property
    def ok(self) -> bool:
        return not self.safety_violations and self.liveness_failure is None


@dataclass(frozen=True, slots=True)
class _Request:
    """A catch-up request for the decision of ``height`` (request/response protocol)."""

    height: int


# --- the simulation ------------------------------------------------------------------


class Simulation:
    def __init__(
        self,
        n: int,
        f: int,
        seed: int,
        heights: int = 3,
        network: NetworkConfig = NetworkConfig(),
        behaviours: tuple[str, ...] | dict[int, tuple[str, ...]] | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_steps: int | None = None,
    ) -> None:
        """``behaviours``: None to draw each Byzantine validator's from the seed; a tuple
        to give all of them the same; a dict to name the Byzantine validators too.
        ``f`` may exceed (n - 1) / 3 here, to show that the checks catch what follows."""
        if n < 1 or f < 0 or f > n or heights < 1:
            raise ValueError(f"need n >= 1, 0 <= f <= n and heights >= 1, got n={n} f={f} heights={heights}")
        self.n, self.f, self.seed, self.heights = n, f, seed, heights
        self.network_config, self.timeouts = network, timeouts
        self.max_steps = max_steps if max_steps is not None else 200_000 + 2_000 * heights * n * n
        root = Rng(seed)
        setup = root.fork("setup")
        self.valset = make_valset(n)
        if isinstance(behaviours, dict):
            if len(behaviours) != f:
                raise ValueError(f"{len(behaviours)} Byzantine validators named, f={f}")
            chosen = {i: tuple(b) for i, b in sorted(behaviours.items())}
        else:
            bad = sorted(setup.sample(range(n), f))
            chosen = {i: tuple(behaviours) if behaviours is not None else choose_behaviours(setup) for i in bad}
        self.behaviours_arg = behaviours
        self.honest = frozenset(range(n)) - frozenset(chosen)
        self.partition = resolve_partition(network, setup, self.valset)
        self.net = Network(network, root.fork("network"), self.partition)
        cabal = Cabal(n, root.fork("cabal"))
        self.byz = {i: Byzantine(i, validator_seed(i), b, self.valset, SWARM_ID, root.fork(f"byzantine/{i}"), cabal)
                    for i, b in chosen.items()}
        self.cores: list[Core | None] = [
            None if i in self.byz and self.byz[i].silent else
            Core(swarm_id=SWARM_ID, valset=self.valset, height=1, prev_hash=GENESIS, timeouts=timeouts,
                 safety=SafetyRules(validator_seed(i), SWARM_ID, i))
            for i in range(n)
        ]
        self.checker = Checker(self.valset, SWARM_ID, self.honest)
        start = self.partition.t_heal if self.partition else 0
        round_ms = timeouts.propose_ms + timeouts.prevote_ms + timeouts.precommit_ms
        self.deadline = start + heights * ROUNDS_OF_SLACK * round_ms
        self.decided: list[dict[int, DecisionReceived]] = [{} for _ in range(n)]
        self._queue: list[tuple[int, int, int, int, object]] = []
        self._seq = 0
        self.now = self.steps = self.messages = self.deliveries = self.evidence = 0
        self._done = 0  # honest validators that decided every requested height
        self._rounds: list[int] = []
        self.decisions: list[tuple[int, int, int, int]] = []  # (virtual ms, validator, height, round)
        self.rejected: dict[str, int] = {}
        self.honest_rejected: dict[str, int] = {}

    # --- the event loop ---------------------------------------------------------------

    def _push(self, t: int, dst: int, src: int, item: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, dst, src, item))

    def run(self) -> SimResult:
        for i in range(self.n):
            self._push(0, i, i, Started())
        while self._queue and self.steps < self.max_steps and self._done < len(self.honest):
            t, _, dst, src, item = heapq.heappop(self._queue)
            if t > self.deadline:
                break
            self.now = t
            self.steps += 1
            self._step(dst, src, item)
            if self.checker.violations:
                break
        return self._result()

    def _step(self, dst: int, src: int, item: object) -> None:
        if isinstance(item, _Request):
            self._answer(dst, src, item.height)
            return
        core = self.cores[dst]
        if core is None:
            return  # silent
        if dst in self.byz and isinstance(item, (ProposalReceived, VoteReceived)):
            self.byz[dst].observe(item.proposal if isinstance(item, ProposalReceived) else item.vote)
        try:
            effects = core.handle(item)  # type: ignore[arg-type]
        except RemoteProtocolError as exc:
            if dst in self.honest:
                self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
                if src in self.honest and src != dst:
                    self.honest_rejected[exc.reason] = self.honest_rejected.get(exc.reason, 0) + 1
            return
        except Exception as exc:  # a bug in the core (or the harness): report, do not hide
            if dst in self.honest:
                self.checker.on_crash(dst, item, exc)
            else:  # a Byzantine node's core broke: it is Byzantine anyway; it goes quiet
                self.cores[dst] = None
            return
        for e in effects:
            self._effect(dst, e)

    def _effect(self, i: int, e: object) -> None:
        now, honest = self.now, i in self.honest
        if isinstance(e, Broadcast):
            self.messages += 1
            peers = [j for j in range(self.n) if j != i]
            if honest:
                self.checker.on_broadcast(i, e.message)
                sends = [Send(j, e.message) for j in peers]
            else:
                sends = self.byz[i].outgoing(e.message, peers, self.cores[i].height)  # type: ignore[union-attr]
            for s in sends:
                self._send(i, s.dst, s.message)
        elif isinstance(e, ScheduleTimeout):
            self._push(now + e.duration_ms, i, i, TimeoutFired(e.kind, e.height, e.round))
        elif isinstance(e, RequestValue):
            payload = app_payload(self.seed, e.height, e.round, i)
            if not honest:
                payload = self.byz[i].payload(payload)
            block = Block(e.height, e.prev_hash, self.valset.validators[i].public_key, payload)
            self._push(now + APP_MS, i, i, ValueReady(e.height, e.round, block))
        elif isinstance(e, ValidateValue):
            self._push(now + APP_MS, i, i, ValueValidated(e.height, e.block.hash, app_valid(e.block)))
        elif isinstance(e, PersistVote):
            self._push(now, i, i, VotePersisted(e.state))
        elif isinstance(e, Decide):
            self.decided[i][e.height] = DecisionReceived(e.block, e.certificate)
            self.decisions.append((now, i, e.height, e.round))
            if honest:
                self.checker.on_decide(i, e)
                self._rounds.append(e.round + 1)
                if len(self.decided[i]) == self.heights:
                    self._done += 1
        elif isinstance(e, ReportEvidence):
            if honest:
                self.evidence += 1
                self.checker.on_evidence(i, e.evidence)
        elif isinstance(e, RequestDecision):
            for j in range(self.n):
                if j != i:
                    for t in self.net.arrivals(now, i, j):
                        self._push(t, j, i, _Request(e.height))
        elif isinstance(e, ReportRoundChange):
            pass
        else:
            raise TypeError(f"unknown effect {e!r}")

    def _send(self, src: int, dst: int, msg: SignedProposal | SignedVote) -> None:
        inp: Input
        if isinstance(msg, SignedProposal):
            self.checker.saw_proposal(msg)
            inp = ProposalReceived(msg)
        else:
            inp = VoteReceived(msg)
        for t in self.net.arrivals(self.now, src, dst):
            self.deliveries += 1
            self._push(t, dst, src, inp)

    def _answer(self, j: int, requester: int, height: int) -> None:
        """Validator ``j`` answers a catch-up request: honest ones with the decision if
        they have it, Byzantine ones as their behaviours say."""
        reply = self.decided[j].get(height)
        if j in self.byz:
            core = self.cores[j]
            prev = core.prev_hash if core is not None and core.height == height else GENESIS
            reply = self.byz[j].answer(height, reply, prev)
        if reply is not None:
            for t in self.net.arrivals(self.now, j, requester):
                self._push(t, requester, j, reply)

    # --- the verdict ------------------------------------------------------------------

    def _result(self) -> SimResult:
        counts = {i: len(self.decided[i]) for i in sorted(self.honest)}
        decided = min(counts.values(), default=self.heights)
        liveness = None
        if not self.checker.violations and decided < self.heights:
            laggard = min(counts, key=counts.__getitem__)
            why = "step bound reached" if self.steps >= self.max_steps else f"deadline {self.deadline} ms passed"
            healed = f", network healed at {self.partition.t_heal} ms" if self.partition else ""
            liveness = (f"honest validator {laggard} decided {decided} of {self.heights} heights ({why}{healed}; "
                        f"it is at height {self.cores[laggard].height} round {self.cores[laggard].round})")  # type: ignore[union-attr]
        ignored: dict[str, int] = {}
        for i in sorted(self.honest):
            for reason, count in sorted(self.cores[i].ignored.items()):  # type: ignore[union-attr]
                ignored[reason] = ignored.get(reason, 0) + count
        per = max(decided, 1)
        return SimResult(
            seed=self.seed, n=self.n, f=self.f, heights=self.heights, heights_decided=decided,
            safety_violations=tuple(self.checker.violations), liveness_failure=liveness,
            rounds_per_height=sum(self._rounds) / len(self._rounds) if self._rounds else 0.0,
            messages_per_height=self.messages / per, deliveries_per_height=self.deliveries / per,
            steps=self.steps, virtual_ms=self.now, evidence_reported=self.evidence,
            rejected=dict(sorted(self.rejected.items())), honest_rejected=dict(sorted(self.honest_rejected.items())),
            ignored=dict(sorted(ignored.items())),
            byzantine={i: b.behaviours for i, b in self.byz.items()}, partition=self.partition,
            replay=self.replay_command(),
        )

    def replay_command(self) -> str:
        cmd = (f"conclave simulate --validators {self.n} --byzantine {self.f} --runs 1 --seed {self.seed} "
               f"--heights {self.heights}")
        c = self.network_config
        if c.drop:
            cmd += f" --drop {c.drop!r}"
        if c.duplicate:
            cmd += f" --duplicate {c.duplicate!r}"
        if c.partition:
            cmd += " --partition"
        if isinstance(self.behaviours_arg, tuple):
            cmd += f" --behaviours {','.join(self.behaviours_arg)}"
        scripted = NetworkConfig(drop=c.drop, duplicate=c.duplicate, partition=c.partition)
        custom = [name for name, differs in (
            ("network", c != scripted), ("timeouts", self.timeouts != DEFAULT_TIMEOUTS),
            ("behaviours", isinstance(self.behaviours_arg, dict)),
        ) if differs]
        if custom:
            cmd += f"  # plus custom {', '.join(custom)}: rebuild the Simulation in Python"
        return cmd


# --- many runs (what `conclave simulate` prints) -------------------------------------


def scenario(n: int, f: int, seed: int, heights: int = 3, drop: float = 0.0, duplicate: float = 0.0,
             partition: bool = False, behaviours: tuple[str, ...] | None = None) -> Simulation:
    """The simulation that ``conclave simulate`` runs for one seed."""
    return Simulation(n, f, seed, heights, NetworkConfig(drop=drop, duplicate=duplicate, partition=partition),
                      behaviours)


@dataclass(slots=True)
class Summary:
    runs: int
    validators: int
    byzantine: int
    heights_decided: int = 0
    safety_violations: int = 0
    liveness_failures: int = 0
    mean_rounds_per_height: float = 0.0
    messages_per_height: float = 0.0
    failed: list[SimResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "runs": self.runs, "validators": self.validators, "byzantine": self.byzantine,
            "heights_decided": self.heights_decided, "safety_violations": self.safety_violations,
            "liveness_failures": self.liveness_failures,
            "mean_rounds_per_height": round(self.mean_rounds_per_height, 4),
            "messages_per_height": round(self.messages_per_height, 2),
            "failed_seeds": [r.seed for r in self.failed],
        }


def run_many(n: int, f: int, runs: int, seed: int, **kwargs: object) -> Summary:
    """Run ``runs`` scenarios, run i with seed ``seed + i``."""
    summary = Summary(runs, n, f)
    rounds, messages = [], 0.0
    for i in range(runs):
        r = scenario(n, f, seed + i, **kwargs).run()  # type: ignore[arg-type]
        summary.heights_decided += r.heights_decided
        summary.safety_violations += len(r.safety_violations)
        summary.liveness_failures += r.liveness_failure is not None
        rounds.append(r.rounds_per_height)
        messages += r.messages_per_height * r.heights_decided
        if not r.ok:
            summary.failed.append(r)
    summary.mean_rounds_per_height = sum(rounds) / len(rounds) if rounds else 0.0
    summary.messages_per_height = messages / summary.heights_decided if summary.heights_decided else 0.0
    return summary
