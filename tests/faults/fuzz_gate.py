"""Fuzzing what a peer does with bytes from a stranger: the frame splitter, the
envelope decoder, the validator and every payload decoder behind it, as the receive
path (``p2p.libp2p_net._admit_frame`` through ``agents.peer.PeerGate``) runs them, and
the block check a validator makes of an accepted proposal.

Inputs are mutations of a corpus of real messages of every type. Random bytes stop at
the first byte of msgpack or at the signature, so most mutations are re-sealed with a
member's key: then the payload decoders see them. The property, for every input:

- each envelope of the frame is either accepted (and its payload re-encodes to bytes
  that decode to the same value) or rejected with a ``RemoteProtocolError`` whose
  reason the validator counted, exactly once;
- nothing else is raised, and no input takes longer than ``SLOW_S`` to judge.

    python -m tests.faults.fuzz_gate [--inputs 100000] [--seed 1] [--only INDEX]

A failure prints the command that replays it (seed and input index).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import msgpack
import trio

from agents.ballot_messages import Commitments, Reveals
from agents.checkpoint_signature import CheckpointSignature
from agents.commitment import Reveal, commit
from agents.deliberation import FixedDeliberator
from agents.peer import PEER_DECODERS
from agents.resolution import Closing, CastBallot, check_payload, decode_payload, encode_payload, resolve
from consensus.checkpoint import Checkpoint
from consensus.types import Block, Proposal, SignedProposal, SignedVote, Vote, VoteType
from p2p.chainkeys import SIGNATURE_BYTES as CHAIN_SIGNATURE_BYTES
from p2p.bundle import encode_bundle, split_frame
from p2p.envelope import MAX_SEQ, Envelope, MessageType, signing_bytes
from p2p.errors import RemoteProtocolError
from p2p.keys import Identity
from p2p.messages import Motion, Status
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic
from p2p.validation import Accepted, MessageValidator

FRESH = "envelope-fields-max-seq"  # the strategy whose inputs are judged by a new validator
SLOW_S = 1.0  # one frame judged slower than this is a failure (a hang in the making)
MEMBERS = tuple(Identity(bytes([0xA0 + i]) * 32) for i in range(4))
CLIENT = Identity(bytes([0xB0]) * 32)
STRANGER = Identity(bytes([0xB1]) * 32)
# Rate limits and the replay window are tested elsewhere; here they would only hide the
# decoders behind rate_limited and replay.
PARAMS = Params(client_rate_per_s=1e9, client_burst=10**9, max_message_bytes=64 * 1024)
SWARM = SwarmConfig("fuzz", default_topic("fuzz"), PROTOCOL_VERSION,
                    tuple(Validator(f"v{i}", m.peer_id, m.public_key, 1) for i, m in enumerate(MEMBERS)), PARAMS)

INTERESTING = (0, 1, -1, 2, 255, 256, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), True, False, None,
               0.5, float("nan"), float("inf"), "", "x", "approve", "\u0000", "é" * 300, b"", b"\x00" * 31,
               b"\x00" * 32, b"\x01" * 33, b"\x02" * 64, b"\xff" * 65, [], {}, [[[[]]]], {"": None})


@dataclass(frozen=True, slots=True)
class Seed:
    """One real message: who sends it, its type and its payload."""

    name: str
    sender: Identity
    type: MessageType
    payload: bytes


def _motion_envelope(text: str, seq: int) -> Envelope:
    return Envelope.seal(CLIENT, SWARM.swarm_id, MessageType.MOTION, seq, Motion(text).encode())


def build_corpus() -> list[Seed]:
    """Real, valid messages of every type the gate decodes."""
    motion_env = _motion_envelope("Adopt the fuzzing suite?", 1)
    motion_id = motion_env.message_id
    motion = Motion.decode(motion_env.payload)
    salt = hashlib.sha256(b"salt").digest()
    casts = []
    for m in MEMBERS[:3]:
        ballot = trio.run(FixedDeliberator(m, SWARM.swarm_id).ballot, motion_id, motion)
        casts.append(CastBallot(commit(ballot, salt, m), Reveal(ballot, salt)))
    resolution = resolve(motion_env.encode(), casts, SWARM, Closing.QUORUM)
    block = Block(1, SWARM.swarm_id, MEMBERS[0].public_key, encode_payload([resolution]))
    proposal = Proposal(1, 0, block, -1, 0)
    signed_proposal = SignedProposal(proposal, MEMBERS[0].sign(proposal.signing_bytes(SWARM.swarm_id)))
    votes = []
    for kind, value in ((VoteType.PREVOTE, block.hash), (VoteType.PRECOMMIT, None)):
        vote = Vote(kind, 1, 0, value, 1)
        votes.append(SignedVote(vote, MEMBERS[1].sign(vote.signing_bytes(SWARM.swarm_id))))
    checkpoint = Checkpoint(SWARM.swarm_id, 1, 1, 1, block.hash, hashlib.sha256(b"valset").digest(), bytes(32))
    return [
        Seed("motion", CLIENT, MessageType.MOTION, motion_env.payload),
        Seed("motion-3-options", CLIENT, MessageType.MOTION, Motion("Which?", ("a", "b", "c")).encode()),
        Seed("status", MEMBERS[2], MessageType.STATUS, Status("v2", "conclave 0.1", ("/ip4/10.0.0.1/tcp/1",)).encode()),
        Seed("commitments", MEMBERS[0], MessageType.BALLOT_COMMIT, Commitments(tuple(c.commitment for c in casts)).encode()),
        Seed("reveals", MEMBERS[1], MessageType.BALLOT_REVEAL, Reveals(tuple(c.reveal for c in casts)).encode()),
        Seed("proposal", MEMBERS[0], MessageType.PROPOSAL, signed_proposal.encode()),
        Seed("prevote", MEMBERS[1], MessageType.VOTE, votes[0].encode()),
        Seed("precommit-nil", MEMBERS[1], MessageType.VOTE, votes[1].encode()),
        Seed("checkpoint-signature", MEMBERS[3], MessageType.CHECKPOINT_SIGNATURE,
             CheckpointSignature(checkpoint, b"\x07" * CHAIN_SIGNATURE_BYTES).encode()),
    ]


# --- mutators: each takes the random source and bytes, and returns new bytes --------------


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """A few byte-level edits, as AFL's havoc stage makes them."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:  # flip one bit
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1 and out:  # an interesting byte
            out[rng.randrange(len(out))] = rng.choice((0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC4, 0xDC, 0xDD, 0xDE, 0xFF))
        elif op == 2:  # insert random bytes
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and out:  # delete a range
            del out[pos:pos + rng.randint(1, 16)]
        elif op == 4:  # truncate
            del out[pos:]
        elif op == 5 and out:  # duplicate a chunk
            start = rng.randrange(len(out))
            out[pos:pos] = out[start:start + rng.randint(1, 64)]
        else:  # a length header that lies: msgpack bin32 / array32 / map32 claiming a lot
            out[pos:pos] = bytes([rng.choice((0xC6, 0xDD, 0xDF))]) + rng.randbytes(4)
    return bytes(out)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    if depth < 2 and rng.random() < 0.2:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.5:
        return rng.choice(INTERESTING)
    return rng.choice((rng.randint(-(2**63), 2**64 - 1), rng.randbytes(rng.randint(0, 70)),
                       "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 20)))))


def _nodes(obj: object, path: tuple = ()) -> Iterator[tuple]:
    """Every place in a decoded msgpack tree, as a path of keys and indices."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, path + (i,))


def _unpack(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def mutate_structure(rng: random.Random, data: bytes) -> bytes:
    """Decode the msgpack tree, change one place (replace, drop, add a key, or recurse
    into a bin field that is msgpack itself, as nested messages are), encode again."""
    try:
        obj = _unpack(data)
    except Exception:  # noqa: BLE001 - not msgpack (already mutated): fall back to bytes
        return mutate_bytes(rng, data)
    paths = list(_nodes(obj))
    path = rng.choice(paths)
    if not path:
        obj = _random_value(rng)
    else:
        _change(rng, obj, path)
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # an int msgpack cannot hold
        return mutate_bytes(rng, data)


def _change(rng: random.Random, obj: object, path: tuple) -> None:
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    key, current = path[-1], parent[path[-1]]
    op = rng.randrange(4)
    if op == 0 and isinstance(current, bytes):
        try:
            _unpack(current)
            parent[key] = mutate_structure(rng, current)
        except Exception:  # noqa: BLE001 - an opaque bin field: edit its bytes
            parent[key] = mutate_bytes(rng, current)
    elif op == 1:
        del parent[key]
    elif op == 2 and isinstance(parent, dict):
        parent[rng.choice(("extra", "text", "options", "items", "signature", 7))] = _random_value(rng)
    else:
        parent[key] = _random_value(rng)


# --- building one input --------------------------------------------------------------------


@dataclass
class Sealer:
    """Signs with increasing sequence numbers, so re-sealed inputs are not replays."""

    seq: int = 1

    def seal(self, sender: Identity, mtype: int, payload: bytes, *, version: int = 1,
             swarm_id: bytes = SWARM.swarm_id, seq: int | None = None) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        body = signing_bytes(version, swarm_id, mtype, sender.public_key, seq, payload)
        return msgpack.packb([version, swarm_id, mtype, sender.public_key, seq, payload, sender.sign(body)],
                             use_bin_type=True)


def make_input(rng: random.Random, corpus: list[Seed], sealer: Sealer) -> tuple[str, bytes]:
    """(strategy, frame): one fuzz input."""
    seed = rng.choice(corpus)
    strategy = rng.choices(("payload-bytes", "payload-structure", "envelope-fields", "frame-bytes", "bundle"),
                           weights=(3, 5, 1, 2, 1))[0]
    if strategy == "payload-bytes":
        return strategy, sealer.seal(seed.sender, seed.type, mutate_bytes(rng, seed.payload))
    if strategy == "payload-structure":
        payload = seed.payload
        for _ in range(rng.randint(1, 3)):
            payload = mutate_structure(rng, payload)
        return strategy, sealer.seal(seed.sender, seed.type, payload)
    if strategy == "envelope-fields":
        sender = rng.choice(MEMBERS + (CLIENT, STRANGER))
        mtype = rng.choice((int(seed.type), int(rng.choice(list(MessageType))), 0, 8, 2**64 - 1))
        seq = rng.choice((None, None, 0, 1, MAX_SEQ))
        # The highest sequence number shuts its sender out of the shared validator for
        # good (every later one is older than the window): such inputs get their own.
        return strategy if seq != MAX_SEQ else FRESH, sealer.seal(
            sender, mtype, seed.payload, version=rng.choice((1, 1, 0, 2)),
            swarm_id=rng.choice((SWARM.swarm_id, bytes(32))), seq=seq)
    if strategy == "frame-bytes":
        return strategy, mutate_bytes(rng, sealer.seal(seed.sender, seed.type, seed.payload))
    parts = [make_input(rng, corpus, sealer)[1] for _ in range(rng.randint(2, 4))]
    frame = encode_bundle(parts)
    return strategy, frame if rng.random() < 0.7 else mutate_structure(rng, frame)


# --- judging one input ---------------------------------------------------------------------


class FuzzFailure(AssertionError):
    """The gate broke its contract on an input."""


class _Slow(BaseException):
    pass


@dataclass
class Report:
    inputs: int = 0
    envelopes: int = 0
    accepted: Counter = field(default_factory=Counter)  # by message type name
    rejected: Counter = field(default_factory=Counter)  # by reason
    strategies: Counter = field(default_factory=Counter)
    blocks_checked: int = 0
    blocks_rejected: int = 0
    slowest_ms: float = 0.0
    seconds: float = 0.0


def _never(_motion_id: bytes) -> bool:
    return False


def judge(validator: MessageValidator, frame: bytes, report: Report) -> None:
    """Run ``frame`` through the receive path; raise ``FuzzFailure`` on a broken rule."""
    try:
        parts = split_frame(frame)
    except RemoteProtocolError as exc:
        report.rejected[f"frame {exc.reason.value}"] += 1
        return
    for part in parts:
        report.envelopes += 1
        before = validator.rejected.copy(), validator.accepted
        try:
            verdict = validator.validate(part, 0.0)
        except RemoteProtocolError as exc:
            if validator.rejected - before[0] != Counter({exc.reason: 1}) or validator.accepted != before[1]:
                raise FuzzFailure(f"rejection {exc.reason.value} was not counted exactly once") from None
            report.rejected[exc.reason.value] += 1
            continue
        if validator.accepted != before[1] + 1 or validator.rejected != before[0]:
            raise FuzzFailure("an acceptance was not counted exactly once")
        _check_accepted(validator, verdict, report)


def _check_accepted(validator: MessageValidator, verdict: Accepted, report: Report) -> None:
    decode = validator.decoders[verdict.type]
    again = decode(verdict.payload.encode())
    if again != verdict.payload:
        raise FuzzFailure(f"accepted {verdict.type.name} does not survive re-encoding: {verdict.payload!r:.200}")
    report.accepted[verdict.type.name] += 1
    if isinstance(verdict.payload, SignedProposal):
        # What a validator does next with a proposal (AgentNode.validate): only a
        # RemoteProtocolError may come out of judging its block.
        report.blocks_checked += 1
        try:
            check_payload(decode_payload(verdict.payload.proposal.block.payload), SWARM,
                          deadline_passed=_never, already_decided=_never)
        except RemoteProtocolError:
            report.blocks_rejected += 1


def _on_alarm(_signum, _frame) -> None:
    raise _Slow


def run(inputs: int, seed: int, only: int | None = None,
        progress: Callable[[Report], None] | None = None, every: int = 10_000,
        decoders: Mapping[MessageType, Callable[[bytes], object]] = PEER_DECODERS) -> Report:
    """Judge ``inputs`` generated inputs (or just input ``only``) with a peer's
    decoders; raise ``FuzzFailure`` naming the seed and index of the first that breaks
    the rules."""
    rng, sealer, corpus = random.Random(seed), Sealer(), build_corpus()
    validator = MessageValidator(SWARM, decoders)
    report = Report()
    start = time.monotonic()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for index in range(inputs):
            strategy, frame = make_input(rng, corpus, sealer)
            if only is not None and index != only:
                continue
            report.inputs += 1
            report.strategies[strategy] += 1
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, SLOW_S)
            try:
                judge(MessageValidator(SWARM, decoders) if strategy == FRESH else validator, frame, report)
            except _Slow:
                raise FuzzFailure(_where(seed, index, frame, f"took over {SLOW_S} s")) from None
            except FuzzFailure as exc:
                raise FuzzFailure(_where(seed, index, frame, str(exc))) from None
            except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer looks for
                raise FuzzFailure(_where(seed, index, frame, f"raised {type(exc).__name__}: {exc}")) from exc
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            report.slowest_ms = max(report.slowest_ms, 1000 * (time.perf_counter() - t0))
            if progress is not None and report.inputs % every == 0:
                report.seconds = time.monotonic() - start
                progress(report)
    finally:
        signal.signal(signal.SIGALRM, old)
    report.seconds = time.monotonic() - start
    return report


def _where(seed: int, index: int, frame: bytes, what: str) -> str:
    return (f"input {index} of seed {seed} {what}\n  frame: {frame[:200].hex()}{'...' if len(frame) > 200 else ''}\n"
            f"  replay: python -m tests.faults.fuzz_gate --seed {seed} --inputs {index + 1} --only {index}")


def summary(report: Report) -> str:
    rejected = sum(report.rejected.values())
    lines = [f"{report.inputs} inputs ({', '.join(f'{k} {v}' for k, v in sorted(report.strategies.items()))}), "
             f"{report.envelopes} envelopes in {report.seconds:.1f} s; slowest {report.slowest_ms:.1f} ms",
             f"accepted {sum(report.accepted.values())}: "
             + ", ".join(f"{k} {v}" for k, v in report.accepted.most_common()),
             f"rejected {rejected}: " + ", ".join(f"{k} {v}" for k, v in report.rejected.most_common()),
             f"proposals' blocks judged {report.blocks_checked}, rejected {report.blocks_rejected}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=int, default=None, help="judge only this input (to replay a failure)")
    args = parser.parse_args(argv)

    def progress(r: Report) -> None:
        print(f"  {r.inputs} inputs, {sum(r.accepted.values())} accepted, {sum(r.rejected.values())} rejected, "
              f"{r.seconds:.0f} s", flush=True)

    try:
        report = run(args.inputs, args.seed, args.only, progress)
    except FuzzFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
