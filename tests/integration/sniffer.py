"""A traffic recorder for the integration tests: joins a swarm as an observer connected
to every validator (it follows their frames, which go to each other directly) and writes every validly signed consensus vote it sees, one hex line each, so a test can
run the evidence detector over a whole run's traffic (not just what each peer kept).

    python -m tests.integration.sniffer SWARM_FILE OUT_FILE

Prints ``ready`` once subscribed; stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

from agents.peer import PeerGate
from agents.run import dial_targets
from p2p.envelope import MessageType
from p2p.keys import Identity
from p2p.libp2p_net import NetworkConfig, run_libp2p_network
from p2p.net import MessageArrived
from p2p.swarmfile import load_swarm_file


async def main(swarm_file: Path, out: Path) -> None:
    swarm = load_swarm_file(swarm_file)
    gate = PeerGate(swarm)
    # It follows the validators' frames, which each validator sends only to the followers
    # connected to it: redial a restarted validator within a second, not after a backoff.
    cfg = NetworkConfig(Identity.generate(), swarm.topic, ("/ip4/127.0.0.1/tcp/0",), dial_targets(swarm, []),
                        backoff_initial=0.2, backoff_max=1.0, gate=gate, validators=swarm.validator_peer_ids)
    with open(out, "a", buffering=1) as f, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            net = await nursery.start(run_libp2p_network, cfg)
            print("ready", flush=True)

            async def record() -> None:
                async for event in net.events:
                    if isinstance(event, MessageArrived) and event.verdict is not None \
                            and event.verdict.type is MessageType.VOTE:
                        f.write(event.verdict.payload.encode().hex() + "\n")

            nursery.start_soon(record)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), Path(sys.argv[2]))
