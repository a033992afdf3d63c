"""Process-level entry points: a peer, and a one-shot proposer, over real libp2p."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from agents.logs import emit
from agents import __version__
from agents.storage import PeerStore
from agents.peer import Outbox, PeerGate, serve_peer
from p2p.envelope import MessageType
from p2p.errors import ConfigError
from p2p.keys import Identity
from p2p.libp2p_net import NetworkConfig, run_libp2p_network
from p2p.messages import Motion
from p2p.peer_guard import PeerGuard
from p2p.peerbook import DialTarget
from p2p.swarmfile import SwarmConfig, multiaddr_problem

log = logging.getLogger("conclave.peer")
PROPOSE_GRACE = 2.0
GIL_SWITCH_INTERVAL_S = 0.0005  # see run_peer_process


def parse_bootstrap(addr: str) -> DialTarget:
    """``/ip4/1.2.3.4/tcp/9000/p2p/12D3KooW...`` -> DialTarget; names the problem."""
    head, sep, peer_id = addr.rpartition("/p2p/")
    if not sep or not peer_id or "/" in peer_id:
        raise ConfigError(f"--bootstrap {addr}: must end with /p2p/<peer id>")
    problem = multiaddr_problem(head)
    if problem:
        raise ConfigError(f"--bootstrap {addr}: {problem}")
    return DialTarget(peer_id, (head,))


def dial_targets(swarm: SwarmConfig, bootstrap: list[str]) -> tuple[DialTarget, ...]:
    targets = [DialTarget(v.peer_id, v.addrs) for v in swarm.validators if v.addrs]
    return tuple(targets + [parse_bootstrap(b) for b in bootstrap])


def listen_addrs_for(swarm: SwarmConfig, identity: Identity, listen: list[str]) -> tuple[str, ...]:
    for a in listen:
        problem = multiaddr_problem(a)
        if problem:
            raise ConfigError(f"--listen {a}: {problem}")
    if listen:
        return tuple(listen)
    me = swarm.validator_by_key(identity.public_key)
    if me is not None and me.addrs:
        return me.addrs
    return ("/ip4/127.0.0.1/tcp/0",)  # observers and clients: any free port


FIXED_MODEL = "fixed"  # --model fixed: zero-cost ballots (tests, benchmarks of agreement alone)


@dataclass(frozen=True, slots=True)
class PeerOptions:
    swarm: SwarmConfig
    identity: Identity
    listen: tuple[str, ...]
    dial: tuple[DialTarget, ...]
    data_dir: Path | None
    model: str | None = None  # a GGUF path, FIXED_MODEL, or None for the default model
    persona: str | None = None
    metrics_port: int | None = None
    threads: int | None = None  # llama.cpp threads (default: its own choice, all cores)


async def _deliberator(opts: PeerOptions):
    """This validator's ballot maker; the model is loaded in a worker thread."""
    from agents.deliberation import FixedDeliberator, LlmDeliberator  # noqa: PLC0415
    from agents.prompt import DEFAULT_PERSONA  # noqa: PLC0415

    if opts.model == FIXED_MODEL:
        return FixedDeliberator(opts.identity, opts.swarm.swarm_id)
    from agents.llm import ModelRuntime  # noqa: PLC0415 (imports llama.cpp)

    path = Path(opts.model) if opts.model else None
    persona = opts.persona or DEFAULT_PERSONA
    runtime = await trio.to_thread.run_sync(lambda: ModelRuntime(path, n_threads=opts.threads))
    warm_ms = await trio.to_thread.run_sync(runtime.warm_up, persona)
    emit(log, "model_loaded", f"model {runtime.path.name} loaded in {runtime.load_ms:.0f} ms, persona evaluated "
         f"in {warm_ms:.0f} ms (sha256 {runtime.sha256[:12]}…)", model=runtime.path.name, sha256=runtime.sha256,
         load_ms=round(runtime.load_ms, 1), warm_up_ms=round(warm_ms, 1))
    return LlmDeliberator(runtime, opts.identity, persona, opts.swarm.swarm_id)


def _fetcher(swarm: SwarmConfig, net):
    """Catch-up over /conclave/sync/1.0.0 from the connected validators, in turn."""
    from p2p.sync import fetch_from_any  # noqa: PLC0415

    attempts = itertools.count()

    async def fetch(first: int, last: int):
        peers = sorted(p for p in net.connected_peers() if swarm.validator_by_peer_id(p) is not None)
        if peers:  # start with another peer each time: one that serves bad data is not asked first forever
            k = next(attempts) % len(peers)
            peers = peers[k:] + peers[:k]
        return await fetch_from_any(net, peers, swarm.swarm_id, first, last, timeout=5.0)

    return fetch


async def _start_anchoring(nursery, swarm: SwarmConfig, identity: Identity, store: PeerStore, outbox: Outbox):
    """The checkpoint service, if the swarm anchors somewhere; its event channel."""
    from agents.anchoring import CheckpointService, open_anchor, run_anchoring  # noqa: PLC0415

    member = swarm.validator_by_key(identity.public_key)
    name = member.name if member else identity.peer_id
    anchor = await trio.to_thread.run_sync(open_anchor, swarm, identity, name)
    if anchor is None:
        return None
    send, recv = trio.open_memory_channel(256)
    service = CheckpointService(swarm, identity, store, anchor, outbox.send)
    await nursery.start(run_anchoring, service, recv, await store.alast_height())
    emit(log, "anchoring", f"anchoring every {swarm.params.checkpoint_interval} heights to {anchor.name}",
         interval=swarm.params.checkpoint_interval, anchor=anchor.name)
    return send


async def run_peer_process(opts: PeerOptions) -> None:
    """A peer until SIGINT or SIGTERM; then a clean shutdown (bounded, under 2 s)."""
    from agents.metrics import PeerMetrics, serve_metrics  # noqa: PLC0415
    from p2p.status import serve_status  # noqa: PLC0415
    from p2p.sync import serve_sync  # noqa: PLC0415

    # The store's fsyncs run in a worker thread, and the vote that waits for one waits
    # again for the GIL while the loop thread is busy: up to the switch interval, 5 ms by
    # default, three times on a height's critical path.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    swarm = opts.swarm
    is_validator = swarm.validator_by_key(opts.identity.public_key) is not None
    temp = None
    data_dir = opts.data_dir
    if data_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="conclave-peer-")
        data_dir = Path(temp.name)
        if is_validator:
            emit(log, "no_data_dir", "no --data: decisions and signed votes are not kept across restarts",
                 logging.WARNING)
    store = PeerStore.open(data_dir, genesis_hash=swarm.swarm_id, max_pending=swarm.params.max_pending_motions)
    metrics = PeerMetrics()
    guard = PeerGuard()
    gate = PeerGate(swarm, metrics=metrics, guard=guard)
    p = swarm.params
    cfg = NetworkConfig(opts.identity, swarm.topic, opts.listen, opts.dial,
                        p.dial_backoff_initial_ms / 1000, p.dial_backoff_max_ms / 1000, gate=gate,
                        validators=swarm.validator_peer_ids, guard=guard)
    try:
        deliberator = await _deliberator(opts) if is_validator else None
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                if opts.metrics_port is not None:
                    port = await nursery.start(serve_metrics, metrics, "127.0.0.1", opts.metrics_port)
                    emit(log, "metrics_listening", f"metrics on http://127.0.0.1:{port}/metrics", port=port)
                net = await nursery.start(run_libp2p_network, cfg)

                async def provide(first: int, last: int):
                    ds = await store.adecisions(first, last)
                    return [(d.height, d.block.encode(), d.certificate.encode()) for d in ds]

                await nursery.start(serve_sync, net, swarm.swarm_id, provide)
                outbox = Outbox(swarm, opts.identity, net, time.time_ns())  # shared: one sequence
                anchoring = await _start_anchoring(nursery, swarm, opts.identity, store, outbox)
                node = await nursery.start(
                    lambda task_status: serve_peer(
                        swarm, opts.identity, net, gate, store, first_seq=time.time_ns(),
                        deliberator=deliberator, fetch=_fetcher(swarm, net), metrics=metrics,
                        anchoring=anchoring, outbox=outbox, listen_addrs=net.listen_addrs,
                        task_status=task_status,
                    )
                )

                def status() -> dict:
                    return {**node.status(), "peers": len(net.connected_peers()), "version": __version__}

                await nursery.start(serve_status, net, swarm.swarm_id, status)
                async for signum in signals:
                    emit(log, "peer_stopping", f"received {signal.Signals(signum).name}, shutting down",
                         signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        store.close()
        if temp is not None:
            temp.cleanup()


async def propose(swarm: SwarmConfig, identity: Identity, motion: Motion, dial: tuple[DialTarget, ...],
                  timeout: float) -> dict:
    """Connect, publish one signed motion, wait until it is handed to the peers, exit."""
    result = await propose_many(swarm, identity, [motion], dial, timeout)
    return {"motion_id": result["motion_ids"][0], "peers": result["peers"], "options": list(motion.options)}


async def propose_many(swarm: SwarmConfig, identity: Identity, motions: list[Motion],
                       dial: tuple[DialTarget, ...], timeout: float, interval: float = 0.0) -> dict:
    """Publish several motions over one connection (one libp2p start-up, not one each),
    ``interval`` seconds apart (the swarm rate-limits each client)."""
    cfg = NetworkConfig(identity, swarm.topic, ("/ip4/127.0.0.1/tcp/0",), dial, subscribe=False)
    wanted = {t.peer_id for t in dial} - {identity.peer_id}
    async with trio.open_nursery() as nursery:
        net = await nursery.start(run_libp2p_network, cfg)
        # One subscribed peer is enough (gossip relays the rest), but give the others a
        # short grace so that the motions leave on as many links as possible.
        with trio.move_on_after(timeout):
            await wait_until(lambda: bool(net.topic_peers()))
        if not net.topic_peers():
            nursery.cancel_scope.cancel()
            raise ConfigError(f"no swarm peer reachable within {timeout}s (dialled {len(wanted)})")
        with trio.move_on_after(PROPOSE_GRACE):
            await wait_until(lambda: wanted <= net.topic_peers())
        outbox = Outbox(swarm, identity, net, time.time_ns())
        ids = []
        for i, motion in enumerate(motions):
            if i and interval:
                await trio.sleep(interval)
            env = await outbox.send(MessageType.MOTION, motion.encode())
            ids.append(env.message_id.hex())
        with trio.move_on_after(timeout):
            await net.drain()
            await net.settle()
        reached = sorted(net.topic_peers())
        nursery.cancel_scope.cancel()
    return {"motion_ids": ids, "peers": len(reached)}


async def wait_until(predicate, poll: float = 0.02) -> None:
    # libp2p exposes no event for "peer subscribed": poll its state (callers bound it).
    while not predicate():
        await trio.sleep(poll)


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)
