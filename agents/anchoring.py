"""Checkpoints, signed by the validators and anchored by one of them, in turn.

Every ``checkpoint_interval`` (K) heights, each validator computes checkpoint n over the
blocks it decided at heights (n-1)K+1 .. nK (``consensus.checkpoint``), signs the
anchor's digest of it with its chain key, and gossips the signature. Validator
(n - 1) mod N is the designated submitter; the k-th next in line submits once the
checkpoint has not landed k * ``anchor_grace_ms`` after a quorum of signatures was
gathered (a transmission schedule, as Chainlink OCR's). A duplicate submission is
harmless: the anchor refuses a number it holds already, which counts as landed.

Every anchor call blocks (JSON-RPC, or the ledger's flock and fsync), so each runs in a
worker thread with a timeout; a chain that cannot be reached is retried with backoff and
never stalls agreement, which does not wait for anchoring at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from agents.checkpoint_signature import CheckpointSignature
from agents.logs import emit
from agents.storage import PeerStore
from agents.valset import consensus_valset
from consensus.anchor.evm import AnchorError, AnchorRejected, Anchored, ChainUnavailable
from consensus.checkpoint import Checkpoint, checkpoint_for
from consensus.errors import LocalProtocolError
from p2p.chainkeys import chain_private_key, recover_address, sign_digest
from p2p.envelope import MessageType
from p2p.errors import ConfigError
from p2p.keys import Identity
from p2p.swarmfile import SwarmConfig

log = logging.getLogger("conclave.peer")

CALL_TIMEOUT_S = 30.0
POLL_EVERY_S = 2.0  # how often the anchor is asked how many checkpoints it holds
RETRY_MAX_S = 30.0
RESEND_EVERY_S = 5.0  # our signature of a checkpoint not yet anchored (gossip loses messages)
MAX_FUTURE_CHECKPOINTS = 8  # signatures kept for checkpoints we have not computed yet


class AnchorClient(Protocol):
    """One anchor (the ledger or an EVM registry), as the service uses it. Blocking."""

    name: str

    def digest(self, checkpoint: Checkpoint) -> bytes: ...
    def count(self) -> int: ...
    def get(self, number: int) -> Anchored | None: ...
    def submit(self, checkpoint: Checkpoint, signatures: list[bytes]) -> dict: ...


class LedgerClient:
    def __init__(self, path: Path, swarm: SwarmConfig, submitter: str, create: bool = True) -> None:
        from consensus.anchor.ledger import Ledger  # noqa: PLC0415

        if not path.exists() and not create:
            raise ChainUnavailable(f"{path}: no ledger file here (none anchored yet, or another machine's)")
        if not path.exists():
            try:
                Ledger.create(path, swarm.swarm_id, [(v.chain_address, v.power) for v in swarm.validators])
            except (LocalProtocolError, OSError) as exc:  # another peer created it first, a bad set, a read-only disk
                if not path.exists():
                    raise ConfigError(f"{path}: cannot create the ledger ({exc})") from None
        self.ledger = Ledger(path)
        if self.ledger.swarm_id != swarm.swarm_id:
            raise ConfigError(f"{path}: a ledger of another swarm")
        self.name, self.submitter = f"ledger {path}", submitter
        self.unit = "line"  # where a checkpoint lands

    def digest(self, checkpoint: Checkpoint) -> bytes:
        return self.ledger.digest(checkpoint)

    def count(self) -> int:
        return self.ledger.count()

    def get(self, number: int) -> Anchored | None:
        return self.ledger.get(number)

    def submit(self, checkpoint: Checkpoint, signatures: list[bytes]) -> dict:
        pos = self.ledger.submit(checkpoint, signatures, self.submitter)
        return {"ledger": str(self.ledger.path), "line": pos.line, "record_hash": pos.record_hash}


class EvmClient:
    def __init__(self, swarm: SwarmConfig, key: bytes | None) -> None:
        from web3 import Web3  # noqa: PLC0415

        from consensus.anchor.evm import EvmRegistry  # noqa: PLC0415

        c = swarm.chain
        if not c.registry:
            raise ConfigError("chain.registry is empty: deploy the registry first "
                              "(conclave chain deploy --swarm FILE --rpc URL --key FILE)")
        w3 = Web3(Web3.HTTPProvider(c.rpc, request_kwargs={"timeout": 10}))
        self.registry = EvmRegistry(w3, c.registry)
        self.key = key
        self.name = f"registry {c.registry} at {c.rpc}"
        self.unit = "block"

    def digest(self, checkpoint: Checkpoint) -> bytes:
        return self.registry.digest(checkpoint)

    def count(self) -> int:
        return self.registry.count()

    def get(self, number: int) -> Anchored | None:
        return self.registry.get(number)

    def submit(self, checkpoint: Checkpoint, signatures: list[bytes]) -> dict:
        if self.key is None:
            raise AnchorRejected("observers do not submit")
        r = self.registry.submit(checkpoint, signatures, self.key)
        return {"tx_hash": r.tx_hash, "block": r.block_number, "gas_used": r.gas_used}


def open_anchor(swarm: SwarmConfig, identity: Identity | None, submitter: str,
                create: bool = True) -> AnchorClient | None:
    """The swarm's anchor (``[chain]``), or None when it anchors nowhere. ``create``: a
    missing ledger file is made (peers) rather than reported (``conclave verify``)."""
    kind = swarm.chain.kind
    if kind == "none":
        return None
    missing = [v.name for v in swarm.validators if not v.chain_address]
    if missing:
        raise ConfigError(f"validators {', '.join(missing)} have no chain_address in the swarm file: "
                          "checkpoints cannot be anchored (set [chain] kind = \"none\" to run without)")
    if kind == "ledger":
        return LedgerClient(swarm.ledger_path(), swarm, submitter, create)
    return EvmClient(swarm, chain_private_key(identity.seed) if identity is not None else None)


@dataclass(slots=True)
class Pending:
    checkpoint: Checkpoint | None = None  # ours, once we decided its last height
    digest: bytes | None = None
    signatures: dict[str, bytes] = field(default_factory=dict)  # chain address -> signature
    early: list[tuple[str, CheckpointSignature]] = field(default_factory=list)  # before we had ours
    quorum_at: float | None = None
    sent_at: float | None = None  # when we last sent our signature


class CheckpointService:
    """Driven from one task (``run_anchoring``); the node hands it decided heights and
    checkpoint signatures through ``events``."""

    def __init__(self, swarm: SwarmConfig, identity: Identity, store: PeerStore, anchor: AnchorClient,
                 send: Callable, clock: Callable[[], float] = trio.current_time) -> None:
        self.swarm, self.identity, self.store, self.anchor = swarm, identity, store, anchor
        self._send, self._clock = send, clock
        self.k = swarm.params.checkpoint_interval
        self.grace = swarm.params.anchor_grace_ms / 1000
        self.member = swarm.validator_by_key(identity.public_key)
        self.index = next((i for i, v in enumerate(swarm.validators) if v.public_key == identity.public_key), None)
        self.power = {v.chain_address: v.power for v in swarm.validators}
        self.total = swarm.total_power
        self.valset_hash = consensus_valset(swarm).hash()
        self.pending: dict[int, Pending] = {}
        self.computed: Checkpoint | None = None  # the last checkpoint we computed
        self.anchored = 0  # highest number known to be anchored
        self._next_poll = 0.0
        self._backoff = 1.0
        self._limiter = trio.CapacityLimiter(1)

    async def _call(self, fn, *args):
        with trio.fail_after(CALL_TIMEOUT_S):
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=True)

    # --- inputs -----------------------------------------------------------------------

    async def decided(self, height: int) -> None:
        """Compute (and, as a validator, sign) every checkpoint the chain now completes."""
        while True:
            number = (self.computed.number + 1) if self.computed else 1
            last = number * self.k
            if last > height:
                return
            first = last - self.k + 1
            decisions = await self.store.adecisions(first, last)
            cp = checkpoint_for(self.swarm.swarm_id, number, [d.block.hash for d in decisions], first,
                                self.valset_hash, self.computed)
            self.computed = cp
            if number <= self.anchored:
                continue
            p = self.pending.setdefault(number, Pending())
            p.checkpoint = cp
            await self._sign(number, p)

    async def _sign(self, number: int, p: Pending) -> None:
        """Our signature of checkpoint ``number`` (needs the anchor's digest, which for a
        chain needs its id: a chain that is down now is asked again on the next tick)."""
        cp = p.checkpoint
        try:
            p.digest = await self._call(self.anchor.digest, cp)
        except (AnchorError, trio.TooSlowError) as exc:
            emit(log, "anchor_unavailable", f"checkpoint {number}: cannot reach the anchor ({exc})",
                 logging.WARNING, number=number, error=str(exc))
            return
        if self.member is not None:
            sig = sign_digest(self.identity.seed, p.digest)
            p.signatures[self.member.chain_address] = sig
            await self._send_signature(p)
            emit(log, "checkpoint_signed", f"CHECKPOINT {number} signed: heights {cp.first_height}.."
                 f"{cp.last_height}, root {cp.root.hex()[:16]}", number=number, first_height=cp.first_height,
                 last_height=cp.last_height, root=cp.root.hex())
        for sender, early in p.early:
            self._add(number, p, sender, early)
        p.early.clear()
        self._check_quorum(number, p)

    async def _send_signature(self, p: Pending) -> None:
        p.sent_at = self._clock()
        sig = p.signatures[self.member.chain_address]
        await self._send(MessageType.CHECKPOINT_SIGNATURE, CheckpointSignature(p.checkpoint, sig).encode())

    def signature_arrived(self, sender_chain_address: str, msg: CheckpointSignature) -> None:
        number = msg.checkpoint.number
        if number <= self.anchored:
            return
        p = self.pending.get(number)
        if p is None or p.checkpoint is None or p.digest is None:
            ahead = number - (self.computed.number if self.computed else 0)
            if 0 < ahead <= MAX_FUTURE_CHECKPOINTS:
                p = self.pending.setdefault(number, Pending())
                if len(p.early) < len(self.swarm.validators) * 2:
                    p.early.append((sender_chain_address, msg))
            return
        self._add(number, p, sender_chain_address, msg)
        self._check_quorum(number, p)

    def _add(self, number: int, p: Pending, sender: str, msg: CheckpointSignature) -> None:
        if msg.checkpoint != p.checkpoint or p.digest is None:
            emit(log, "checkpoint_mismatch", f"checkpoint {number} from {sender} differs from ours", logging.WARNING,
                 number=number, sender=sender)
            return
        if recover_address(p.digest, msg.signature) != sender:
            emit(log, "checkpoint_bad_signature", f"checkpoint {number}: a signature does not recover to its "
                 f"sender {sender}", logging.WARNING, number=number, sender=sender)
            return
        p.signatures[sender] = msg.signature

    def _check_quorum(self, number: int, p: Pending) -> None:
        power = sum(self.power.get(a, 0) for a in p.signatures)
        if p.quorum_at is None and 3 * power > 2 * self.total:
            p.quorum_at = self._clock()

    # --- submitting -------------------------------------------------------------------

    def _my_turn_at(self, number: int, p: Pending) -> float | None:
        if self.index is None or p.quorum_at is None:
            return None
        rank = (self.index - (number - 1)) % len(self.swarm.validators)
        return p.quorum_at + rank * self.grace

    async def tick(self) -> None:
        now = self._clock()
        if now >= self._next_poll:
            self._next_poll = now + POLL_EVERY_S
            await self.observe()
        for number, p in list(self.pending.items()):
            if p.checkpoint is not None and p.digest is None:
                await self._sign(number, p)  # the anchor was unreachable when it was due
            elif p.sent_at is not None and now - p.sent_at >= RESEND_EVERY_S:
                await self._send_signature(p)
        for number in sorted(self.pending):
            if number != self.anchored + 1:
                continue  # in order: the anchor accepts only the next one
            p = self.pending[number]
            due = self._my_turn_at(number, p)
            if due is not None and now >= due:
                await self._submit(number, p)
            break

    async def observe(self, quietly: bool = False) -> None:
        """Learn how many checkpoints the anchor holds (``quietly`` at start: those
        landed before this peer started are not news)."""
        try:
            count = await self._call(self.anchor.count)
        except (AnchorError, trio.TooSlowError) as exc:
            emit(log, "anchor_unavailable", f"cannot read the anchor ({exc})", logging.DEBUG, error=str(exc))
            return
        if quietly:
            self.anchored = max(self.anchored, count)
            for n in [n for n in self.pending if n <= count]:
                del self.pending[n]
            return
        while self.anchored < count:
            number = self.anchored + 1
            record = await self._call(self.anchor.get, number)
            self._landed(number, record, None)

    async def _submit(self, number: int, p: Pending) -> None:
        try:
            evidence = await self._call(self.anchor.submit, p.checkpoint, list(p.signatures.values()))
        except AnchorRejected as exc:
            if exc.reason == "WrongCheckpointNumber":  # someone else landed it first: harmless
                await self.observe()
                return
            emit(log, "anchor_rejected", f"checkpoint {number} refused by the anchor: {exc}", logging.WARNING,
                 number=number, reason=exc.reason)
            self._retry_later(p)
            return
        except (ChainUnavailable, AnchorError, trio.TooSlowError) as exc:
            emit(log, "anchor_unavailable", f"checkpoint {number}: {exc}; retrying", logging.WARNING,
                 number=number, error=str(exc))
            self._retry_later(p)
            return
        self._backoff = 1.0
        self._landed(number, None, evidence)

    def _retry_later(self, p: Pending) -> None:
        p.quorum_at = (p.quorum_at or self._clock()) + self._backoff
        self._backoff = min(2 * self._backoff, RETRY_MAX_S)

    def _landed(self, number: int, record: Anchored | None, evidence: dict | None) -> None:
        if number <= self.anchored:
            return
        self.anchored = number
        p = self.pending.pop(number, None)
        cp = p.checkpoint if p and p.checkpoint else None
        first = record.first_height if record else cp.first_height
        last = record.last_height if record else cp.last_height
        root = (record.root if record else cp.root).hex()
        where = evidence or ({"anchored_at": record.anchored_at_block, "submitter": record.submitter} if record else {})
        if "tx_hash" in where:
            how = f"tx {where['tx_hash']} in block {where['block']}"
        elif "line" in where:
            how = f"line {where['line']} (record {where['record_hash'][:16]})"
        else:
            how = f"{getattr(self.anchor, 'unit', 'at')} {where.get('anchored_at')}, submitted by {where.get('submitter')}"
        emit(log, "checkpoint_anchored", f"ANCHORED checkpoint {number} (heights {first}..{last}, root {root[:16]}) "
             f"on {self.anchor.name}: {how}", number=number, first_height=first, last_height=last, root=root,
             submitted_by_us=evidence is not None, **where)


@dataclass(frozen=True, slots=True)
class Decided:
    height: int


@dataclass(frozen=True, slots=True)
class SignatureArrived:
    sender_chain_address: str
    message: CheckpointSignature


async def run_anchoring(service: CheckpointService, events: trio.MemoryReceiveChannel, start_height: int,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The service's loop: catch up with the chain on disk, then events and a tick."""
    task_status.started()
    await service.observe(quietly=True)
    await service.decided(start_height)
    while True:
        with trio.move_on_after(1.0):
            event = await events.receive()
            if isinstance(event, Decided):
                await service.decided(event.height)
            elif isinstance(event, SignatureArrived):
                service.signature_arrived(event.sender_chain_address, event.message)
        await service.tick()
