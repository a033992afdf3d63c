"""Bad messages sent through a raw libp2p host are rejected and counted by every peer,
and the honest traffic still flows."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import trio

from agents.procs import propose_json
from p2p.envelope import ENVELOPE_VERSION, Envelope, MessageType, signing_bytes
from p2p.keys import Identity, write_key_file
from p2p.libp2p_net import NetworkConfig, run_libp2p_network
from p2p.messages import Motion, Status
from p2p.peerbook import DialTarget
from p2p.swarmfile import SwarmConfig
from tests.integration.conftest import DELIVERY_TIMEOUT, Swarm, received

pytestmark = pytest.mark.integration

EXPECTED = {
    "bad_signature": 1,
    "not_member": 1,
    "wrong_swarm": 1,
    "replay": 1,
    "too_large": 1,
    "undecodable": 1,
    "bad_payload": 1,
}
BURST = 8  # valid client motions in a row: more than the swarm's client_burst of 5


def attack_messages(cfg: SwarmConfig, attacker: Identity) -> tuple[list[bytes], list[bytes]]:
    """(bad messages, a burst of valid motions) from one attacker key."""
    seq = time.time_ns()
    motion = Motion("An honest-looking motion from the attacker").encode()
    valid = Envelope.seal(attacker, cfg.swarm_id, MessageType.MOTION, seq, motion).encode()
    victim = cfg.validators[0].public_key
    forged_sig = attacker.sign(signing_bytes(ENVELOPE_VERSION, cfg.swarm_id, MessageType.MOTION, victim, seq + 1, motion))
    forged = Envelope(ENVELOPE_VERSION, cfg.swarm_id, MessageType.MOTION, victim, seq + 1, motion, forged_sig).encode()
    status = Status("v9", "0.1.0", ()).encode()
    bad = [
        valid,
        valid,  # the same bytes again: a replay
        forged,  # claims to be v1, signed by the attacker
        Envelope.seal(attacker, cfg.swarm_id, MessageType.STATUS, seq + 2, status).encode(),  # validators only
        Envelope.seal(attacker, bytes(32), MessageType.MOTION, seq + 3, motion).encode(),  # another swarm
        Envelope.seal(attacker, cfg.swarm_id, MessageType.MOTION, seq + 4, b"\x93\x01\x02").encode(),  # not a map
        b"\xc1 not msgpack at all",
        b"\x00" * (cfg.params.max_message_bytes + 1),
    ]
    burst = [
        Envelope.seal(attacker, cfg.swarm_id, MessageType.MOTION, seq + 10 + i, Motion(f"Spam motion {i}").encode()).encode()
        for i in range(BURST)
    ]
    return bad, burst


async def send_raw(cfg: SwarmConfig, attacker: Identity, messages: list[bytes]) -> None:
    dial = tuple(DialTarget(v.peer_id, v.addrs) for v in cfg.validators)
    wanted = {v.peer_id for v in cfg.validators}
    net_cfg = NetworkConfig(attacker, cfg.topic, ("/ip4/127.0.0.1/tcp/0",), dial, subscribe=False)
    async with trio.open_nursery() as nursery:
        net = await nursery.start(run_libp2p_network, net_cfg)
        with trio.fail_after(DELIVERY_TIMEOUT):
            while not wanted <= net.topic_peers():
                await trio.sleep(0.05)  # no libp2p event for "subscribed": bounded poll
            for data in messages:
                await net.publish(data)
            await net.drain()
            await net.settle()
        nursery.cancel_scope.cancel()


def test_bad_messages_are_rejected_and_counted_and_honest_traffic_flows(swarm: Swarm) -> None:
    peers = swarm.start_all("--log-level", "debug")
    attacker = Identity.generate()
    bad, burst = attack_messages(swarm.cfg, attacker)
    trio.run(send_raw, swarm.cfg, attacker, bad + burst)

    client = swarm.dir / "client.key"
    write_key_file(client, Identity.generate())
    honest = propose_json(swarm.file, client, "Is the honest traffic still flowing?")["motion_id"]

    for p in peers.values():
        p.wait_event("motion_received", DELIVERY_TIMEOUT, motion_id=honest)

        def all_rejections_seen(events: list[dict]) -> bool:
            seen = Counter(e["reason"] for e in events if e["event"] == "message_rejected")
            return all(seen[r] >= n for r, n in EXPECTED.items()) and seen["rate_limited"] >= 1

        p.wait_for(all_rejections_seen, DELIVERY_TIMEOUT, "every rejection reason")
        assert received(p, honest) == 1
        spam = [e for e in p.named("motion_received") if e["text"].startswith("Spam motion")]
        assert len(spam) < BURST, f"{p.name} accepted the whole burst: no rate limit"

    for p in peers.values():
        p.stop()
        rejections = Counter(e["reason"] for e in p.named("message_rejected"))
        for reason, n in EXPECTED.items():
            assert rejections[reason] == n, f"{p.name}: {reason} seen {rejections[reason]} times, expected {n}"
        # The counters in the final summary agree with the logged rejections.
        assert p.named("peer_stopped")[0]["rejected"] == dict(rejections)
