"""Validation of every incoming message, before any other code sees it.

The checks run cheapest first and a message is rejected at the first that fails:
size, decoding, version, swarm id, known type, sender membership, signature, payload,
replay, rate limit. Replay and rate state is updated only for messages whose signature
has been verified, so a forger cannot poison another sender's state.

Time is passed in (``now``, seconds on any monotonic clock), so this module is
deterministic and testable without sleeping.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from p2p.envelope import ENVELOPE_VERSION, Envelope, MessageType, decode_envelope
from p2p.errors import RejectReason, RemoteProtocolError
from p2p.messages import DECODERS, SENDERS, Payload, Senders
from p2p.swarmfile import SwarmConfig, Validator


@dataclass(frozen=True, slots=True)
class Accepted:
    envelope: Envelope
    type: MessageType
    payload: Payload
    validator: Validator | None  # the sender's entry in the validator set, if any


class ReplayWindow:
    """Anti-replay window per sender (as IPsec does): the highest sequence number seen
    and a bitmap of the ``size`` numbers below it. Older numbers are rejected outright.

    Senders are tracked in LRU order up to ``max_senders``. Validators are never
    evicted, so their replays are caught for ever; an evicted client starts afresh.
    """

    def __init__(self, size: int, max_senders: int, pinned: frozenset[bytes]) -> None:
        self.size, self.max_senders, self.pinned = size, max_senders, pinned
        self._state: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    def check_and_record(self, sender: bytes, seq: int) -> str | None:
        """None if (sender, seq) is new (and records it), else why it is a replay."""
        state = self._state.get(sender)
        if state is None:
            self._state[sender] = (seq, 1)
            self._evict()
            return None
        self._state.move_to_end(sender)
        top, bits = state
        if seq > top:
            shift = seq - top
            bits = ((bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self._state[sender] = (seq, bits)
            return None
        back = top - seq
        if back >= self.size:
            return f"seq {seq} is older than the window (highest {top})"
        if bits >> back & 1:
            return f"seq {seq} already seen"
        self._state[sender] = (top, bits | 1 << back)
        return None

    def _evict(self) -> None:
        over = len(self._state) - self.max_senders
        for sender in list(self._state):
            if over <= 0:
                break
            if sender not in self.pinned:
                del self._state[sender]
                over -= 1


class TokenBuckets:
    """Per-sender token buckets (rate per second, burst), bounded in LRU order."""

    def __init__(self, rate: float, burst: int, max_senders: int) -> None:
        self.rate, self.burst, self.max_senders = rate, burst, max_senders
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def take(self, sender: bytes, now: float) -> bool:
        tokens, last = self._buckets.pop(sender, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[sender] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_senders:
            self._buckets.popitem(last=False)
        return ok


class MessageValidator:
    """Checks raw wire bytes against one swarm. Counts every rejection by reason."""

    def __init__(self, swarm: SwarmConfig, decoders: Mapping[MessageType, Callable[[bytes], object]] = DECODERS) -> None:
        self.swarm = swarm
        self.decoders = decoders
        p = swarm.params
        self._members = {v.public_key: v for v in swarm.validators}
        self._replay = ReplayWindow(p.replay_window, p.max_tracked_senders, frozenset(self._members))
        self._buckets = TokenBuckets(p.client_rate_per_s, p.client_burst, p.max_tracked_senders)
        self.rejected: Counter[RejectReason] = Counter()
        self.accepted = 0

    def validate(self, data: bytes, now: float) -> Accepted:
        """Accept ``data`` or raise ``RemoteProtocolError`` (and count its reason)."""
        try:
            result = self._check(data, now)
        except RemoteProtocolError as exc:
            self.rejected[exc.reason] += 1
            raise
        self.accepted += 1
        return result

    def _check(self, data: bytes, now: float) -> Accepted:
        limit = self.swarm.params.max_message_bytes
        if len(data) > limit:
            raise RemoteProtocolError(RejectReason.TOO_LARGE, f"{len(data)} bytes > limit {limit}")
        env = decode_envelope(data)
        if env.version != ENVELOPE_VERSION:
            raise RemoteProtocolError(RejectReason.BAD_VERSION, f"envelope version {env.version}")
        if env.swarm_id != self.swarm.swarm_id:
            raise RemoteProtocolError(RejectReason.WRONG_SWARM, f"swarm id {env.swarm_id.hex()[:16]}...")
        try:
            mtype = MessageType(env.type)
        except ValueError:
            raise RemoteProtocolError(RejectReason.UNKNOWN_TYPE, f"type {env.type}") from None
        member = self._members.get(env.sender)
        if member is None and SENDERS[mtype] is Senders.VALIDATORS:
            raise RemoteProtocolError(RejectReason.NOT_MEMBER, f"{mtype.name} from a non-validator")
        if not env.signature_valid():
            raise RemoteProtocolError(RejectReason.BAD_SIGNATURE, f"{mtype.name} signature does not verify")
        decode = self.decoders.get(mtype)
        if decode is None:
            raise RemoteProtocolError(RejectReason.UNKNOWN_TYPE, f"{mtype.name} is not handled by this peer")
        payload = decode(env.payload)
        why = self._replay.check_and_record(env.sender, env.seq)
        if why is not None:
            raise RemoteProtocolError(RejectReason.REPLAY, why)
        if member is None and not self._buckets.take(env.sender, now):
            raise RemoteProtocolError(RejectReason.RATE_LIMITED, f"client over {self.swarm.params.client_rate_per_s}/s")
        return Accepted(env, mtype, payload, member)
