"""A flooding peer, for tests only (issue 8, part 4): joins a swarm with the given key
(a validator's, to flood as a member over its direct links; any other, to flood as a
stranger over gossip) and sends as fast as its links take, for ``--seconds``:

- ``motions``: validly signed motions, each new (a client's flood; the gate's rate limit
  is what stops it);
- ``votes``: the member's own signed nil prevotes for heights far ahead, each in a new
  envelope (valid, signed, never useful);
- ``garbage``: frames that are not envelopes.

It prints ``flood_ready`` when connected, then one ``flood_done`` line with the count
and rate it achieved.

    python -m tests.faults.flooder SWARM_FILE KEY_FILE --kind motions,garbage --seconds 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import trio

from agents.peer import Outbox
from agents.run import dial_targets, wait_until
from agents.valset import consensus_valset
from consensus.types import SignedVote, Vote, VoteType
from p2p.envelope import MessageType
from p2p.keys import read_key_file
from p2p.libp2p_net import NetworkConfig, run_libp2p_network
from p2p.messages import Motion
from p2p.swarmfile import load_swarm_file


KINDS = ("motions", "votes", "garbage")


def say(event: str, **fields) -> None:
    print(json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "level": "info", "event": event, **fields}),
          flush=True)


async def flood(swarm_file: Path, key_file: Path, kinds: list[str], seconds: float) -> None:
    swarm = load_swarm_file(swarm_file)
    identity = read_key_file(key_file)
    member = identity.peer_id in swarm.validator_peer_ids
    # A member listens where the swarm file says it does, as the validator it pretends to be.
    listen = swarm.validator_by_key(identity.public_key).addrs if member else ("/ip4/127.0.0.1/tcp/0",)
    cfg = NetworkConfig(identity, swarm.topic, tuple(listen), dial_targets(swarm, []),
                        validators=swarm.validator_peer_ids if member else frozenset())
    valset = consensus_valset(swarm)
    index = valset.index_of(identity.public_key)
    async with trio.open_nursery() as nursery:
        net = await nursery.start(run_libp2p_network, cfg)
        with trio.fail_after(30):
            await wait_until(lambda: bool(net.topic_peers()))
        with trio.move_on_after(3):  # the validators that are up, not those that are not
            await wait_until(lambda: swarm.validator_peer_ids - {identity.peer_id} <= net.topic_peers())
        outbox = Outbox(swarm, identity, net, time.time_ns())
        say("flood_ready", member=member)
        sent = 0
        start = trio.current_time()
        for i in itertools.count():
            if trio.current_time() - start >= seconds:
                break
            kind = kinds[i % len(kinds)]
            if kind == "motions":
                await outbox.send(MessageType.MOTION, Motion(f"Flood {os.getpid()} number {i}?").encode())
            elif kind == "votes" and index is not None:
                vote = Vote(VoteType.PREVOTE, 10**6 + i, 0, None, index)
                signed = SignedVote(vote, identity.sign(vote.signing_bytes(swarm.swarm_id)))
                await outbox.send(MessageType.VOTE, signed.encode())
            else:
                await net.publish(b"\x97" + os.urandom(64))
            sent += 1
        elapsed = trio.current_time() - start
        say("flood_done", sent=sent, seconds=round(elapsed, 2), per_s=round(sent / elapsed))
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("swarm", type=Path)
    parser.add_argument("key", type=Path)
    parser.add_argument("--kind", default="motions,garbage", help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    kinds = args.kind.split(",")
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kind: one or more of {', '.join(KINDS)}")
    trio.run(flood, args.swarm, args.key, kinds, args.seconds)


if __name__ == "__main__":
    main()
