"""The agent node: one peer's motions, ballots and agreement, run by one loop.

Everything that changes the node's state arrives as an event on one channel (network
messages, timer expiries, finished ballots, fetched decisions, a once-a-second tick)
and is handled to the end before the next: the consensus core, the motion pool and the
store never see two things at once, and no lock is needed. Slow work runs beside the
loop and reports back through the same channel: inference in the ballot worker, catch-up
requests in the catch-up worker, fsync in the store's worker thread.

The flow of one motion (DESIGN.md): a MOTION enters the pool (bounded, deduplicated,
kept on disk); a validator's ballot worker asks the LLM, stores the ballot and its salt
durably, and the node broadcasts the commitment; it reveals once more than 2/3 of the
power has committed (or after ``reveal_timeout_ms``); the motion is resolvable once
more than 2/3 of the power has revealed (or at its deadline). A height is started only
when this node has something to resolve, or when a peer's message shows that someone
else has; the proposer packs what is resolvable into a block; validators check blocks
without the LLM; a decision is stored with its certificate, then logged as one
``agreement`` line per motion.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from agents.anchoring import Decided, SignatureArrived
from agents.ballot import Ballot
from agents.ballot_messages import ENVELOPE_OVERHEAD, Commitments, Reveals, pack
from agents.catchup import CatchUp, DecisionsFetched, Fetch, run_catchup_worker
from agents.commitment import Commitment, Reveal, commit
from agents.driver import ConsensusDriver
from agents.logs import emit
from agents.metrics import PeerMetrics
from agents.naming import describe_sender, short
from agents.motion_pool import Admission, BallotVerdict, MotionPool
from agents.pacing import PACE_BURST, Alarm, Pacer, pace_interval
from agents.resolution import NO_SUPERMAJORITY, decode_payload, describe_tally, encode_payload, check_payload
from agents.storage import PeerStore
from agents.valset import consensus_valset
from consensus.core import Core, Timeouts
from consensus.errors import RemoteProtocolError as ConsensusRemoteError
from consensus.events import (
    Decide,
    DecisionReceived,
    Input,
    ProposalReceived,
    ReportEvidence,
    ReportRoundChange,
    RequestDecision,
    RequestValue,
    Started,
    TimeoutFired,
    ValidateValue,
    ValueReady,
    VoteReceived,
)
from consensus.qc import QuorumCertificate
from consensus.safety import SafetyRules, SafetyState
from consensus.types import Block, Step
from p2p.envelope import Envelope, MessageType, decode_envelope
from p2p.errors import LocalProtocolError, RemoteProtocolError
from p2p.keys import Identity
from p2p.messages import Motion
from p2p.net import MessageArrived, PeerConnected, PeerDisconnected, SwarmNetwork
from p2p.swarmfile import SwarmConfig
from p2p.validation import Accepted

log = logging.getLogger("conclave.peer")

BLOCK_OVERHEAD = 2048  # room in a message for the proposal and envelope around a block
TICK_S = 1.0
MAX_EVENTS_PER_PASS = 256  # events handled between two progress steps
BALLOT_BATCH_S = 0.02  # how long a quick ballot may wait to share a store transaction
MAX_BALLOT_BATCH = 256
MAX_RESEND_PER_TICK = 256  # own ballots re-sent per tick (they travel together: a few messages)
# Re-sends back off exponentially (ballot_rebroadcast_ms, then twice, four times... up to
# 2**6 times that). At a fixed period, an overloaded swarm of 16 re-sent its backlog
# every 5 s to every validator, and the re-sends (up to 43,000 duplicate items at one
# validator) took the capacity that the first copies needed: no height was decided.
MAX_RESEND_BACKOFF = 6


# --- events the node's loop handles besides network events ---------------------------


@dataclass(frozen=True, slots=True)
class TimerFired:
    timeout: TimeoutFired


@dataclass(frozen=True, slots=True)
class BallotReady:
    motion_id: bytes
    commitment: Commitment
    reveal: Reveal
    seconds: float  # inference time (0 when the ballot was stored before a restart)
    store_seconds: float = 0.0  # the store transaction that made it durable (shared by a batch)


@dataclass(frozen=True, slots=True)
class BallotFailed:
    motion_id: bytes
    error: str


@dataclass(frozen=True, slots=True)
class FlushDue:
    """The pacer allows our next ballot message (agents/pacing.py)."""


@dataclass(frozen=True, slots=True)
class Tick:
    pass


NodeEvent = TimerFired | BallotReady | BallotFailed | DecisionsFetched | Tick


class Deliberator(Protocol):
    """Makes this agent's ballot for a motion: ``agents.deliberation.LlmDeliberator``
    (the model), or ``FixedDeliberator`` (zero cost, for tests and benchmarks)."""

    async def ballot(self, motion_id: bytes, motion: Motion) -> Ballot: ...


@dataclass(slots=True)
class OwnBallot:
    commitment: Commitment
    reveal: Reveal
    committed_at: float
    last_sent: float
    revealed: bool = False
    resends: int = 0  # re-sent this many times: each waits twice as long as the one before

    def resend_due(self, now: float, every: float) -> bool:
        return now - self.last_sent >= every * (2 ** min(self.resends, MAX_RESEND_BACKOFF))


@dataclass(slots=True)
class NodeStats:
    motions: int = 0
    duplicates: int = 0
    decisions: int = 0
    agreements: int = 0
    ballots: dict = field(default_factory=dict)  # BallotVerdict -> count
    rejected_consensus: int = 0


def timeouts_of(swarm: SwarmConfig) -> Timeouts:
    p = swarm.params
    return Timeouts(p.timeout_propose_ms, p.timeout_prevote_ms, p.timeout_precommit_ms, p.timeout_delta_ms)


class AgentNode:
    """Build with :meth:`load` (reads the store), then run with :func:`serve_node`."""

    def __init__(self, swarm: SwarmConfig, identity: Identity, store: PeerStore, outbox, *,
                 deliberator: Deliberator | None, fetch: Fetch | None, metrics: PeerMetrics | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.swarm, self.identity, self.store, self.outbox = swarm, identity, store, outbox
        self.deliberator, self.fetch, self._clock = deliberator, fetch, clock
        self.metrics = metrics or PeerMetrics()
        self.valset = consensus_valset(swarm)
        self.member = swarm.validator_by_key(identity.public_key)
        self.name = self.member.name if self.member else f"observer-{identity.peer_id[-6:]}"
        self.index = self.valset.index_of(identity.public_key)
        self.pool = MotionPool(swarm)
        self.stats = NodeStats()
        self.mine: dict[bytes, OwnBallot] = {}
        # Own ballots not revealed yet, in the order committed, and the motions among
        # them that gained a commitment since the last pass: the reveal check looks at
        # these only, not at every pending motion (that scan was an eighth of a busy
        # validator's CPU with a backlog of thousands).
        self._unrevealed: dict[bytes, OwnBallot] = {}
        self._commit_seen: set[bytes] = set()
        self.core: Core | None = None
        self.driver: ConsensusDriver | None = None
        self._want: tuple[int, int] | None = None  # (height, round) we must propose at
        self._height_started_at: float | None = None
        self._rounds_this_height = 1
        self.catch_up = CatchUp(None, clock)  # given its queue by serve_node
        self._inbox: trio.MemorySendChannel | None = None
        self._ballot_queue: trio.MemorySendChannel | None = None
        self._peers: set[str] = set()
        # Our commitments and reveals wait here until the end of the current batch of
        # events, then leave together: one message each for all of them (flush_ballots).
        self._commit_out: list[Commitment] = []
        self._motions_in: list[tuple[bytes, Envelope, Motion]] = []
        self._reveal_out: list[Reveal] = []
        # What is gathered leaves at the pacer's pace; the alarm wakes the loop when it
        # may (both given by serve_node: without them, every pass sends what it has).
        self.pacer: Pacer | None = None
        self.alarm: Alarm | None = None
        # Decided heights and checkpoint signatures for the anchoring service, if any.
        self.anchoring: trio.MemorySendChannel | None = None

    @property
    def is_validator(self) -> bool:
        return self.index is not None

    async def load(self) -> None:
        """Rebuild the state from the store: the chain tip, the last signed vote (with
        its lock), the motions still pending and our ballots for them."""
        last = await self.store.alast_height()
        tip = await self.store.atip_hash()
        decided: set[bytes] = set()
        # The stored chain is checked before anything is built on it: the links all the
        # way, and the tip's certificate (a decision changed on disk is refused at start).
        linked, decision = self.store.genesis_hash, None
        for first in range(1, last + 1, 256):
            chunk = await self.store.adecisions(first, min(last, first + 255))
            linked = self.store.check_links(chunk, linked)
            for decision in chunk:
                decided.update(_motion_ids(decision.block))
        if decision is not None:
            self.store.check_certificate(decision, self.valset, self.swarm.swarm_id)
        self.pool = MotionPool(self.swarm, decided)
        safety = None
        durable: SafetyState | None = None
        if self.is_validator:
            durable = await self.store.aload_safety_state()
            safety = SafetyRules(self.identity.seed, self.swarm.swarm_id, self.index, durable)
        self.core = Core(swarm_id=self.swarm.swarm_id, valset=self.valset, height=last + 1, prev_hash=tip,
                         timeouts=timeouts_of(self.swarm), safety=safety, start_heights_at_once=False)
        self.driver = ConsensusDriver(self.core, self, self._clock)
        now = self._clock()
        pending = await self.store.apending_motions()
        # One read for all our stored ballots, not a store round trip per pending motion.
        own = await self.store.aballots([pm.motion_id for pm in pending]) if self.is_validator else {}
        for pm in pending:
            env = decode_envelope(pm.envelope)  # our own disk: written after validation
            self.pool.add_motion(pm.motion_id, pm.envelope, Motion.decode(env.payload), env.sender, now)
            stored = own.get(pm.motion_id)
            if stored is not None:
                c = commit(stored.ballot, stored.salt, self.identity)
                self.mine[pm.motion_id] = self._unrevealed[pm.motion_id] = OwnBallot(c, stored, now, now - 1e9)
                self._commit_seen.add(pm.motion_id)
                self.pool.add_commitment(c)
        self.metrics.set_height(last)
        self._resume_height = durable is not None and durable.height == last + 1

    # --- the loop -----------------------------------------------------------------------

    async def start(self) -> None:
        """After the services are up: resume a height we were voting in, ballot on
        motions that were pending without our ballot, and re-send what we committed."""
        if self._resume_height:
            await self._start_height()
        for entry in self.pool.pending():
            if self.is_validator and entry.motion_id not in self.mine:
                self._queue_ballot(entry.motion_id, entry.motion)
        await self.progress()

    async def handle(self, event: object) -> None:
        """One event, then whatever progress it allows."""
        await self.handle_event(event)
        await self.progress()

    async def handle_event(self, event: object) -> None:
        """One event, without the progress step: the loop takes every event that is
        already waiting, then makes progress once (see ``serve_node``)."""
        if isinstance(event, MessageArrived):
            if not isinstance(event.verdict, Accepted):
                raise LocalProtocolError("the network was not started with this peer's gate")
            await self.on_message(event.verdict)
        elif isinstance(event, TimerFired):
            await self.driver.handle(event.timeout)
        elif isinstance(event, BallotReady):
            await self._on_ballot_ready(event)
        elif isinstance(event, BallotFailed):
            emit(log, "ballot_failed", f"no ballot for motion {event.motion_id.hex()[:12]}: {event.error}",
                 logging.WARNING, motion_id=event.motion_id.hex(), error=event.error)
        elif isinstance(event, DecisionsFetched):
            await self._on_fetched(event)
        elif isinstance(event, FlushDue):
            pass  # the progress step after this pass sends what waits
        elif isinstance(event, Tick):
            await self._rebroadcast_ballots()
            if self.catch_up.retry_due():
                self.catch_up.request(self.core.height)
        elif isinstance(event, PeerConnected):
            self._peers.add(event.peer)
            self.metrics.set_peers_connected(len(self._peers))
            who = describe_sender(self.swarm, peer_id=event.peer)
            emit(log, "peer_joined", f"peer joined: {who} ({event.peer})", peer=who, peer_id=event.peer,
                 connected=len(self._peers))
            if self.swarm.validator_by_peer_id(event.peer) is not None:
                self.catch_up.request(self.core.height, probe=True)  # we may have been away
        elif isinstance(event, PeerDisconnected):
            self._peers.discard(event.peer)
            self.metrics.set_peers_connected(len(self._peers))
            who = describe_sender(self.swarm, peer_id=event.peer)
            emit(log, "peer_left", f"peer left: {who} ({event.peer})", peer=who, peer_id=event.peer,
                 connected=len(self._peers))

    async def on_message(self, accepted) -> None:
        t = accepted.type
        self.metrics.message_in(t)
        if t is MessageType.MOTION:
            await self._on_motion(accepted.envelope, accepted.payload)
        elif t is MessageType.PROPOSAL:
            await self.driver.handle(ProposalReceived(accepted.payload))
        elif t is MessageType.VOTE:
            await self.driver.handle(VoteReceived(accepted.payload))
        elif t is MessageType.BALLOT_COMMIT:
            for c in accepted.payload.items:
                verdict = self.pool.add_commitment(c)
                self._count(verdict)
                if verdict is BallotVerdict.ADDED and c.motion_id in self._unrevealed:
                    self._commit_seen.add(c.motion_id)
        elif t is MessageType.BALLOT_REVEAL:
            for r in accepted.payload.items:
                self._count(self.pool.add_reveal(r))
        elif t is MessageType.CHECKPOINT_SIGNATURE:
            if accepted.validator is not None and accepted.validator.chain_address:
                self._to_anchoring(SignatureArrived(accepted.validator.chain_address, accepted.payload))
        elif t is MessageType.STATUS:
            st = accepted.payload
            emit(log, "status_received", f"status from {st.name}: version {st.agent_version}", logging.DEBUG,
                 name=st.name, agent_version=st.agent_version, listen=list(st.listen_addrs))

    def _to_anchoring(self, event: object) -> None:
        if self.anchoring is None:
            return
        try:
            self.anchoring.send_nowait(event)
        except trio.WouldBlock:  # it is behind (a slow chain): it re-reads heights from the store
            emit(log, "anchoring_busy", "anchoring is behind; an event was dropped", logging.DEBUG)

    def _count(self, verdict: BallotVerdict) -> None:
        self.stats.ballots[verdict.value] = self.stats.ballots.get(verdict.value, 0) + 1
        if verdict in (BallotVerdict.CONFLICT, BallotVerdict.MISMATCH):
            emit(log, "ballot_rejected", f"ballot message rejected: {verdict.value}", logging.WARNING,
                 verdict=verdict.value)

    # --- motions and ballots ----------------------------------------------------------

    async def _on_motion(self, env: Envelope, motion: Motion) -> None:
        motion_id = env.message_id
        verdict = self.pool.add_motion(motion_id, env.encode(), motion, env.sender, self._clock())
        if verdict is not Admission.ADDED:
            self.stats.duplicates += verdict in (Admission.DUPLICATE, Admission.DECIDED_BEFORE)
            level = logging.DEBUG if verdict in (Admission.DUPLICATE, Admission.DECIDED_BEFORE) else logging.WARNING
            emit(log, "motion_dropped", f"motion {motion_id.hex()[:12]} not taken: {verdict.value}", level,
                 motion_id=motion_id.hex(), reason=verdict.value)
            return
        # Stored at the end of this pass, with every other motion that came in it: one
        # transaction (one fsync) for all of them (store_motions).
        self._motions_in.append((motion_id, env, motion))

    async def store_motions(self) -> None:
        """Store the motions taken in this pass, then ballot on them."""
        if not self._motions_in:
            return
        batch, self._motions_in = self._motions_in, []
        added, full = await self.store.aadd_pending_motions([(m, env.encode()) for m, env, _ in batch])
        added_ids, full_ids = set(added), set(full)
        for motion_id, env, motion in batch:
            if motion_id in full_ids:
                self.pool.discard(motion_id)
                emit(log, "motion_dropped", f"motion {motion_id.hex()[:12]} not taken: {self.store.max_pending} "
                     "motions are pending already", logging.WARNING, motion_id=motion_id.hex(), reason="store_full")
                continue
            if motion_id not in added_ids:
                continue  # pending already (stored before a restart)
            self.stats.motions += 1
            sender = describe_sender(self.swarm, public_key=env.sender)
            emit(log, "motion_received",
                 f'MOTION {motion_id.hex()[:12]} from {sender}: "{short(motion.text)}" [{" / ".join(motion.options)}]',
                 motion_id=motion_id.hex(), sender=sender, text=motion.text, options=list(motion.options))
            if self.is_validator:
                self._queue_ballot(motion_id, motion)

    def _queue_ballot(self, motion_id: bytes, motion: Motion) -> None:
        if self._ballot_queue is None or self.deliberator is None:
            return
        try:
            self._ballot_queue.send_nowait((motion_id, motion))
        except trio.WouldBlock:
            emit(log, "ballot_skipped", f"ballot queue full: no ballot for {motion_id.hex()[:12]}", logging.WARNING,
                 motion_id=motion_id.hex())

    async def _on_ballot_ready(self, ev: BallotReady) -> None:
        if self.pool.get(ev.motion_id) is None:
            return  # decided while we deliberated
        now = self._clock()
        self.mine[ev.motion_id] = self._unrevealed[ev.motion_id] = OwnBallot(ev.commitment, ev.reveal, now, now)
        self._commit_seen.add(ev.motion_id)
        self.pool.add_commitment(ev.commitment)
        b = ev.reveal.ballot
        if ev.seconds:
            self.metrics.observe_ballot(ev.seconds)
        emit(log, "ballot_committed",
             f"ballot for {ev.motion_id.hex()[:12]} committed ({ev.seconds:.2f} s of inference)",
             logging.DEBUG, motion_id=ev.motion_id.hex(), seconds=round(ev.seconds, 3),
             store_s=round(ev.store_seconds, 4), choice=b.choice)
        self._commit_out.append(ev.commitment)

    async def _reveal_when_due(self, now: float) -> None:
        # Reveal once more than 2/3 of the power has committed, or after reveal_timeout_ms.
        for motion_id in self._commit_seen:
            if motion_id in self._unrevealed and self.pool.get(motion_id) is not None \
                    and self.pool.is_quorum(self.pool.progress(motion_id).committed_power):
                self._reveal(motion_id)
        self._commit_seen.clear()
        reveal_after = self.swarm.params.reveal_timeout_ms / 1000
        for motion_id, own in list(self._unrevealed.items()):  # oldest first
            if self.pool.get(motion_id) is None:
                del self._unrevealed[motion_id]
            elif now - own.committed_at >= reveal_after:
                self._reveal(motion_id)
            else:
                break

    def _reveal(self, motion_id: bytes) -> None:
        own = self._unrevealed.pop(motion_id)
        own.revealed = True
        self.pool.add_reveal(own.reveal)
        self._reveal_out.append(own.reveal)

    async def _rebroadcast_ballots(self) -> None:
        # Gossip loses messages and peers restart: resend what we committed and revealed
        # for motions still open, each at most once per ballot_rebroadcast_ms.
        # A motion whose ballots we already see revealed by a quorum waits only for a
        # block (which carries its ballots): re-sending ours would be pure load, and with
        # a backlog of hundreds of resolvable motions it was most of the traffic.
        now, every = self._clock(), self.swarm.params.ballot_rebroadcast_ms / 1000
        due = [own for motion_id, own in self.mine.items()
               if self.pool.get(motion_id) is not None and own.resend_due(now, every)
               and not self.pool.is_quorum(self.pool.progress(motion_id).revealed_power)][:MAX_RESEND_PER_TICK]
        for own in due:
            own.last_sent = now
            own.resends += 1
            self._commit_out.append(own.commitment)
            if own.revealed:
                self._reveal_out.append(own.reveal)

    async def flush_ballots(self) -> None:
        """Send the commitments and reveals gathered since the last flush, as few
        messages as the size limit allows (commitments first: a reveal is useless to a
        peer that has not seen the commitment it opens)."""
        if not (self._commit_out or self._reveal_out):
            return
        if self.pacer is not None and self.alarm is not None:
            now = self._clock()
            if not self.pacer.try_send(now):
                self.alarm.set(self.pacer.ready_at(now))
                return
        budget = self.swarm.params.max_message_bytes - ENVELOPE_OVERHEAD
        for items, out_type, batch in ((self._commit_out, MessageType.BALLOT_COMMIT, Commitments),
                                       (self._reveal_out, MessageType.BALLOT_REVEAL, Reveals)):
            if not items:
                continue
            encoded = [i.encode() for i in items]
            items.clear()
            groups = pack(encoded, [len(e) for e in encoded], budget)
            for group in groups:
                await self._send(out_type, batch.encode_items(group))
            emit(log, "ballots_sent", f"sent {len(encoded)} {out_type.name.lower()} item{'s' if len(encoded) != 1 else ''} "
                 f"in {len(groups)} message{'s' if len(groups) != 1 else ''}", logging.DEBUG,
                 type=out_type.name.lower(), items=len(encoded), messages=len(groups))

    async def _send(self, type: MessageType, payload: bytes) -> None:
        await self.outbox.send(type, payload)
        self.metrics.message_out(type)

    # --- progress: reveal, start a height, propose ------------------------------------

    async def progress(self) -> None:
        """Reveal what is due, start a height or propose when motions are ready, and
        send our gathered ballot messages."""
        await self.store_motions()
        await self._advance()
        await self.flush_ballots()

    async def _advance(self) -> None:
        now = self._clock()
        if self.is_validator:
            await self._reveal_when_due(now)
        core = self.core
        if not self.is_validator:
            return
        if core.started and self._want != (core.height, core.round):
            return
        limit = self.swarm.params.max_resolutions_per_block
        ready = self.pool.resolvable(now, limit)
        if not ready:
            return
        if not core.started:
            await self._start_height()
        if self._want == (core.height, core.round) and core.step is Step.PROPOSE:
            self._want = None
            block, packed = self._build_block(ready)
            emit(log, "block_proposed", f"proposing a block at height {core.height} round {core.round} with "
                 f"{packed} of {len(ready)} ready resolutions ({len(block.payload)} bytes)",
                 logging.DEBUG, height=core.height, round=core.round, resolutions=packed, ready=len(ready),
                 bytes=len(block.payload))
            await self.driver.handle(ValueReady(core.height, core.round, block))

    async def _start_height(self) -> None:
        emit(log, "height_started", f"starting height {self.core.height}: motions are ready", logging.DEBUG,
             height=self.core.height)
        self._height_started_at = self._clock()
        self._rounds_this_height = 1
        await self.driver.handle(Started())

    def _build_block(self, ready: list) -> tuple[Block, int]:
        budget = self.swarm.params.max_message_bytes - BLOCK_OVERHEAD
        payload = encode_payload(ready)
        while len(payload) > budget and len(ready) > 1:
            ready = ready[: max(1, len(ready) // 2)]
            payload = encode_payload(ready)
        return Block(self.core.height, self.core.prev_hash, self.identity.public_key, payload), len(ready)

    # --- ConsensusApp -------------------------------------------------------------------

    async def broadcast(self, type: MessageType, payload: bytes) -> None:
        await self._send(type, payload)

    async def persist_vote(self, state: SafetyState) -> None:
        await self.store.asave_safety_state(state)

    def want_value(self, request: RequestValue) -> None:
        self._want = (request.height, request.round)

    def validate(self, request: ValidateValue) -> bool:
        now = self._clock()
        try:
            resolutions = decode_payload(request.block.payload)
            check_payload(resolutions, self.swarm, deadline_passed=lambda m: self.pool.deadline_passed(m, now),
                          already_decided=self.pool.is_decided)
        except RemoteProtocolError as exc:
            emit(log, "block_rejected", f"block {request.block.hash.hex()[:12]} at height {request.height} "
                 f"round {request.round} is invalid: {exc.detail}", logging.WARNING,
                 height=request.height, round=request.round, block_hash=request.block.hash.hex(), why=exc.detail)
            return False
        return True

    async def decided(self, d: Decide) -> None:
        try:
            resolutions = decode_payload(d.block.payload)
        except RemoteProtocolError as exc:  # certified by a quorum, yet unreadable here
            emit(log, "block_unreadable", f"decided block at height {d.height} has a payload we cannot read: "
                 f"{exc.detail}", logging.ERROR, height=d.height)
            resolutions = ()
        ids = [r.motion_id for r in resolutions]
        start = self._clock()
        await self.store.aappend_decision(d.height, d.round, d.block, d.certificate, resolved_motions=ids)
        store_seconds = self._clock() - start
        self.pool.mark_decided(ids)
        for m in ids:
            self.mine.pop(m, None)
            self._unrevealed.pop(m, None)
        self._to_anchoring(Decided(d.height))
        self._want = None
        power = self.valset.power_of(set(d.certificate.indices()))
        total = self.valset.total_power
        block_hash = d.block.hash.hex()
        latency = None if self._height_started_at is None else self._clock() - self._height_started_at
        self.metrics.set_height(d.height)
        if latency is not None:
            self.metrics.observe_commit(latency, self._rounds_this_height)
        self._height_started_at = None
        self.stats.decisions += 1
        emit(log, "block_committed",
             f"COMMITTED h={d.height} round {d.round} block {block_hash[:12]} with {len(ids)} "
             f"resolution{'s' if len(ids) != 1 else ''}, certificate {power}/{total}",
             height=d.height, round=d.round, block_hash=block_hash, resolutions=len(ids),
             certificate_power=power, total_power=total, store_s=round(store_seconds, 4),
             latency_s=None if latency is None else round(latency, 3))
        for r in resolutions:
            self._log_agreement(d, r, block_hash, power, total)

    def _log_agreement(self, d: Decide, r, block_hash: str, power: int, total: int) -> None:
        motion = r.motion
        self.stats.agreements += 1
        self.metrics.motion_resolved("no_supermajority" if r.outcome == NO_SUPERMAJORITY else "supermajority")
        tally = {o: p for o, p in zip(motion.options, r.tally, strict=True)}
        emit(log, "agreement",
             f'AGREED h={d.height} motion={r.motion_id.hex()[:12]} "{short(motion.text, 60)}" -> {r.outcome} '
             f"({describe_tally(r, self.swarm)}; closed by {r.closing.name.lower()}) "
             f"block {block_hash[:12]} cert {power}/{total}",
             height=d.height, motion_id=r.motion_id.hex(), text=short(motion.text, 200), outcome=r.outcome,
             tally=tally, closing=r.closing.name.lower(), block_hash=block_hash, certificate_power=power,
             total_power=total)

    def round_changed(self, change: ReportRoundChange) -> None:
        self.metrics.set_round(change.round)
        if change.round == 0:
            if self._height_started_at is None:  # joined on a peer's message, not by Started
                self._height_started_at, self._rounds_this_height = self._clock(), 1
            return  # a new height, not a round change
        self._rounds_this_height = change.round + 1
        proposer = self.swarm.validators[change.proposer].name
        emit(log, "round_changed", f"height {change.height}: round {change.round}, proposer {proposer}",
             height=change.height, round=change.round, proposer=proposer)

    def evidence(self, report: ReportEvidence) -> None:
        ev = report.evidence
        self.metrics.evidence()
        who = self.swarm.validators[ev.validator].name
        # ``kind`` says which decoder reads ``evidence``: DuplicateVoteEvidence for a
        # prevote or precommit, DuplicateProposalEvidence for a proposal.
        emit(log, "evidence", f"EVIDENCE: {who} signed two {ev.kind}s at height {ev.height} round {ev.round}",
             logging.WARNING, validator=who, height=ev.height, round=ev.round, kind=ev.kind,
             evidence=ev.encode().hex())

    def fetch_decision(self, request: RequestDecision) -> None:
        self.catch_up.request(request.height)

    def rejected(self, error: ConsensusRemoteError, input: Input) -> None:
        self.stats.rejected_consensus += 1
        self.metrics.rejection(error.reason if isinstance(error.reason, str) else "consensus")
        emit(log, "consensus_rejected", f"consensus message rejected: {error}", logging.DEBUG,
             reason=str(error.reason), detail=str(error))

    # --- catch-up -----------------------------------------------------------------------

    async def _on_fetched(self, ev: DecisionsFetched) -> None:
        if not self.catch_up.fetched(ev):
            return
        applied, start = 0, self.core.height
        for height, block_bytes, cert_bytes in ev.decisions:
            if height != self.core.height:
                if height < self.core.height:
                    continue
                break
            try:
                decision = DecisionReceived(Block.decode(block_bytes), QuorumCertificate.decode(cert_bytes))
            except (ConsensusRemoteError, LocalProtocolError) as exc:
                emit(log, "catchup_rejected", f"height {height} from {ev.peer}: {exc}", logging.WARNING,
                     height=height, peer=ev.peer, error=str(exc))
                break
            await self.driver.handle(decision)  # the core verifies the certificate
            if self.core.height != height + 1:
                break
            applied += 1
        if applied:
            self.metrics.catchup_decisions(applied)
            emit(log, "catchup_finished", f"caught up {applied} decision{'s' if applied != 1 else ''} "
                 f"(heights {start}..{start + applied - 1}) from {ev.peer}", first=start,
                 last=start + applied - 1, applied=applied, peer=ev.peer)
        self.catch_up.applied(applied, len(ev.decisions), self.core.height)

    def status(self) -> dict:
        core = self.core
        return {"name": self.name, "role": "validator" if self.is_validator else "observer",
                "height": core.height - 1, "round": core.round, "step": core.step.name.lower(),
                "started": core.started, "pending": len(self.pool)}


def _motion_ids(block: Block) -> list[bytes]:
    try:
        return [r.motion_id for r in decode_payload(block.payload)]
    except RemoteProtocolError:
        return []


# --- the workers and the service ------------------------------------------------------


async def run_ballot_worker(node: AgentNode, queue: trio.MemoryReceiveChannel, inbox: trio.MemorySendChannel,
                            task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Deliberate on motions one at a time (the LLM is the scarce resource) and hand
    each committed ballot to the loop. The ballot and its salt are on disk before the
    commitment leaves, so a restart reveals what was committed and never commits twice.

    The worker takes every motion already waiting, looks their stored ballots up in one
    read, and stores new ballots in one transaction, flushing at least every
    BALLOT_BATCH_S: a slow model commits each ballot as soon as it is made, while
    zero-cost ballots cost two store round trips per batch instead of two per motion
    (each round trip waits for a turn of a loop that libp2p keeps busy)."""
    task_status.started()
    async for first in queue:
        batch = [first]
        while len(batch) < MAX_BALLOT_BATCH:
            try:
                batch.append(queue.receive_nowait())
            except trio.WouldBlock:
                break
        batch = [(m, motion) for m, motion in batch if node.pool.get(m) is not None]  # else decided meanwhile
        stored = await node.store.aballots([m for m, _ in batch]) if batch else {}
        await _ballot_batch(node, batch, stored, inbox)


async def _ballot_batch(node: AgentNode, batch: list, stored: dict, inbox: trio.MemorySendChannel) -> None:
    from agents.llm import InferenceError  # noqa: PLC0415

    ready: list[BallotReady] = []
    new: list[tuple[bytes, Ballot, bytes]] = []

    async def flush() -> None:
        store_seconds = 0.0
        if new:
            start = trio.current_time()
            await node.store.asave_ballots(new)
            store_seconds = trio.current_time() - start
        for r in ready:
            await inbox.send(dataclasses.replace(r, store_seconds=store_seconds))
        ready.clear()
        new.clear()

    since = trio.current_time()
    for motion_id, motion in batch:
        if node.pool.get(motion_id) is None:
            continue  # decided while the model worked on the ones before it
        reveal = stored.get(motion_id)
        if reveal is not None:
            ready.append(BallotReady(motion_id, commit(reveal.ballot, reveal.salt, node.identity), reveal, 0.0))
        else:
            start = trio.current_time()
            try:
                ballot = await node.deliberator.ballot(motion_id, motion)
            except InferenceError as exc:
                await inbox.send(BallotFailed(motion_id, str(exc)))
                continue
            reveal = Reveal(ballot, secrets.token_bytes(32))
            new.append((motion_id, ballot, reveal.salt))
            ready.append(BallotReady(motion_id, commit(ballot, reveal.salt, node.identity), reveal,
                                     trio.current_time() - start))
        if trio.current_time() - since >= BALLOT_BATCH_S:
            await flush()
            since = trio.current_time()
    await flush()


async def serve_node(node: AgentNode, net: SwarmNetwork, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run ``node`` (already loaded) on ``net`` until cancelled or the network stops."""
    inbox_send, inbox = trio.open_memory_channel(1024)
    ballot_send, ballot_recv = trio.open_memory_channel(node.swarm.params.max_pending_motions)
    catchup_send, catchup_recv = trio.open_memory_channel(1)
    node._inbox, node._ballot_queue = inbox_send, ballot_send
    node.catch_up = CatchUp(catchup_send if node.fetch is not None else None, node._clock)  # no fetcher: none

    async def pump_network() -> None:
        async for event in net.events:
            await inbox_send.send(event)
        nursery.cancel_scope.cancel()  # the network has stopped: so do we

    async def tick() -> None:
        while True:
            await trio.sleep(TICK_S)
            await inbox_send.send(Tick())

    if node.is_validator:
        node.pacer, node.alarm = Pacer(pace_interval(len(node.swarm.validators)), PACE_BURST), Alarm()

    async with trio.open_nursery() as nursery:
        await nursery.start(node.driver.run_timers, lambda t: inbox_send.send(TimerFired(t)))
        if node.alarm is not None:
            await nursery.start(node.alarm.run, lambda: inbox_send.send(FlushDue()))
        if node.is_validator and node.deliberator is not None:
            await nursery.start(run_ballot_worker, node, ballot_recv, inbox_send)
        if node.fetch is not None:
            await nursery.start(run_catchup_worker, node.fetch, catchup_recv, inbox_send)
        nursery.start_soon(pump_network)
        nursery.start_soon(tick)
        await node.start()
        task_status.started(node)
        async for event in inbox:
            # Take what is already waiting, up to a bound, then make progress once: under
            # load one pass packs many ballots into one message and one block.
            await node.handle_event(event)
            for _ in range(MAX_EVENTS_PER_PASS - 1):
                try:
                    event = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                await node.handle_event(event)
            await node.progress()
