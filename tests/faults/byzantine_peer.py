"""A lying validator, for tests only (issue 8, part 3). It holds a real validator key
and the swarm's direct links, but runs no honest node: it watches the traffic and,
once per height and round it sees,

- votes twice at each step: a prevote for the proposed block and one for another value,
  a precommit for a block that does not exist and one for the real block;
- when it is the proposer, proposes two different blocks;
- replays old envelopes as they were (its own and others'), and old votes of others in
  new envelopes of its own;
- for every motion, commits to one ballot and reveals another with the same salt.

It prints one JSON line per act (``event``: ``byz_*``) so that a test can tell what it
did, and ``byz_ready`` once its links are up.

    python -m tests.faults.byzantine_peer SWARM_FILE KEY_FILE
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import sys
import time
from pathlib import Path

import trio

from agents.ballot_messages import Commitments, Reveals
from agents.commitment import Reveal, commit
from agents.deliberation import FixedDeliberator
from agents.peer import Outbox, PeerGate
from agents.run import dial_targets, listen_addrs_for
from agents.valset import consensus_valset
from consensus.types import Block, Proposal, SignedProposal, SignedVote, Vote, VoteType
from p2p.envelope import MessageType
from p2p.keys import read_key_file
from p2p.libp2p_net import NetworkConfig, run_libp2p_network
from p2p.net import MessageArrived
from p2p.swarmfile import load_swarm_file

REPLAYS_PER_ROUND = 3
KEPT = 64  # old envelopes kept for replay


def say(event: str, **fields) -> None:
    print(json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "level": "info", "event": event, **fields}),
          flush=True)


class Liar:
    def __init__(self, swarm, identity, outbox: Outbox, net) -> None:
        self.swarm, self.identity, self.outbox, self.net = swarm, identity, outbox, net
        self.valset = consensus_valset(swarm)
        self.index = self.valset.index_of(identity.public_key)
        self.rounds_done: set[tuple[int, int]] = set()
        self.proposed: set[tuple[int, int]] = set()
        self.old: list[bytes] = []  # raw envelopes seen, for replay
        self.old_votes: list[SignedVote] = []
        self.tip_hash = swarm.swarm_id  # the last block we saw proposed with a quorum's interest

    def _vote(self, kind: VoteType, height: int, round: int, value: bytes | None) -> bytes:
        vote = Vote(kind, height, round, value, self.index)
        return SignedVote(vote, self.identity.sign(vote.signing_bytes(self.swarm.swarm_id))).encode()

    async def on_message(self, ev: MessageArrived) -> None:
        verdict = ev.verdict
        if verdict is None:
            return
        self.old = (self.old + [ev.data])[-KEPT:]
        payload = verdict.payload
        if verdict.type is MessageType.PROPOSAL:
            p = payload.proposal
            await self.equivocate(p.height, p.round, p.block.hash)
        elif verdict.type is MessageType.VOTE:
            v = payload.vote
            self.old_votes = (self.old_votes + [payload])[-KEPT:]
            if self.valset.proposer(v.height, v.round) == self.index:
                await self.propose_twice(v.height, v.round)
            await self.equivocate(v.height, v.round, v.value)
        elif verdict.type is MessageType.MOTION:
            await self.mismatched_ballot(verdict.envelope.message_id, payload)

    async def equivocate(self, height: int, round: int, value: bytes | None) -> None:
        if (height, round) in self.rounds_done or value is None:
            return
        self.rounds_done.add((height, round))
        other = hashlib.sha256(b"a block nobody proposed %d %d" % (height, round)).digest()
        for kind in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            await self.outbox.send(MessageType.VOTE, self._vote(kind, height, round, value))
            await self.outbox.send(MessageType.VOTE, self._vote(kind, height, round, other))
        say("byz_double_vote", height=height, round=round, value=value.hex(), other=other.hex())
        await self.replay(height, round)

    async def propose_twice(self, height: int, round: int) -> None:
        if (height, round) in self.proposed:
            return
        self.proposed.add((height, round))
        for tag in (b"first", b"second"):
            block = Block(height, self.tip_hash, self.identity.public_key, b"equivocation " + tag)
            proposal = Proposal(height, round, block, -1, self.index)
            signed = SignedProposal(proposal, self.identity.sign(proposal.signing_bytes(self.swarm.swarm_id)))
            await self.outbox.send(MessageType.PROPOSAL, signed.encode())
        say("byz_double_proposal", height=height, round=round)

    async def replay(self, height: int, round: int) -> None:
        # As they were: each gate must see these as replays.
        for data in self.old[:REPLAYS_PER_ROUND]:
            await self.net.publish(data)
        # Others' old votes in envelopes of our own: valid envelopes, stale votes.
        for sv in self.old_votes[:REPLAYS_PER_ROUND]:
            await self.outbox.send(MessageType.VOTE, sv.encode())
        say("byz_replayed", height=height, round=round, verbatim=min(len(self.old), REPLAYS_PER_ROUND),
            rewrapped=min(len(self.old_votes), REPLAYS_PER_ROUND))

    async def mismatched_ballot(self, motion_id: bytes, motion) -> None:
        committed = await FixedDeliberator(self.identity, self.swarm.swarm_id).ballot(motion_id, motion)
        fields = {f.name: getattr(committed, f.name) for f in dataclasses.fields(committed)
                  if f.name not in ("voter", "signature", "timings")}
        fields["choice"] = next(o for o in motion.options if o != committed.choice)
        revealed = type(committed).sign(self.identity, **fields)
        salt = hashlib.sha256(b"salt " + motion_id).digest()
        await self.outbox.send(MessageType.BALLOT_COMMIT, Commitments((commit(committed, salt, self.identity),)).encode())
        await self.outbox.send(MessageType.BALLOT_REVEAL, Reveals((Reveal(revealed, salt),)).encode())
        say("byz_mismatched_reveal", motion_id=motion_id.hex(), committed=committed.choice, revealed=revealed.choice)


async def main(swarm_file: Path, key_file: Path) -> None:
    swarm = load_swarm_file(swarm_file)
    identity = read_key_file(key_file)
    cfg = NetworkConfig(identity, swarm.topic, listen_addrs_for(swarm, identity, []), dial_targets(swarm, []),
                        backoff_initial=0.2, backoff_max=1.0, gate=PeerGate(swarm),
                        validators=swarm.validator_peer_ids)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            net = await nursery.start(run_libp2p_network, cfg)
            liar = Liar(swarm, identity, Outbox(swarm, identity, net, time.time_ns()), net)
            say("byz_ready", peer_id=identity.peer_id)

            async def lie() -> None:
                async for event in net.events:
                    if isinstance(event, MessageArrived):
                        await liar.on_message(event)

            nursery.start_soon(lie)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), Path(sys.argv[2]))
