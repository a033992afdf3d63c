"""`conclave demo`: a local swarm of peers as real processes, a few motions, a check
that every peer received each one exactly once, and a clean shutdown."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from agents.procs import PeerProcess, free_tcp_ports, propose_json
from agents.swarm_init import SWARM_FILE, init_swarm
from p2p.keys import Identity, write_key_file

MOTIONS = [
    ("Adopt the revised data-retention policy (delete raw logs after 30 days)?", "approve,reject"),
    ("Which region should host the next replica?", "eu-west,us-east,ap-south"),
    ("Release version 0.2 this week?", "approve,reject,defer"),
    ("Raise the per-client rate limit to 2 motions per second?", "approve,reject"),
    ("Which model family should new agents default to?", "smollm,qwen,llama"),
]
JOIN_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 20.0
SHOWN = {"peer_started", "peer_joined", "peer_left", "motion_received", "peer_stopped"}


def _show(name: str, event: dict) -> None:
    if event["event"] in SHOWN:
        print(f"  [{name}] {event['msg']}", flush=True)


def run_demo(validators: int = 4, motions: int = 3, directory: Path | None = None) -> int:
    if not 1 <= motions <= len(MOTIONS):
        print(f"conclave demo: --motions must be between 1 and {len(MOTIONS)}", file=sys.stderr)
        return 2
    workdir = directory or Path(tempfile.mkdtemp(prefix="conclave-demo-"))
    cfg = init_swarm(workdir, validators, "demo", free_tcp_ports(validators))
    swarm_file = workdir / SWARM_FILE
    client_key = workdir / "client.key"
    write_key_file(client_key, Identity.generate())
    print(f"== swarm 'demo' with {validators} validators in {workdir}", flush=True)
    peers: list[PeerProcess] = []
    ok = True
    try:
        for v in cfg.validators:
            args = ["--swarm", str(swarm_file), "--key", str(workdir / f"{v.name}.key"),
                    "--data", str(workdir / v.name)]
            peers.append(PeerProcess(v.name, args, on_event=_show))
        names = {v.name for v in cfg.validators}
        for p in peers:
            others = names - {p.name}
            p.wait_for(lambda evs, o=others: o <= {e.get("peer") for e in evs if e["event"] == "peer_joined"},
                       JOIN_TIMEOUT, "all validators joined")
        print(f"== all {validators} peers connected; proposing {motions} motions as a client", flush=True)
        results = []
        for text, options in MOTIONS[:motions]:
            start = time.monotonic()
            motion_id = propose_json(swarm_file, client_key, text, options)["motion_id"]
            for p in peers:
                p.wait_event("motion_received", DELIVERY_TIMEOUT, motion_id=motion_id)
            results.append((motion_id, text, time.monotonic() - start))
        print("== every peer received every motion:", flush=True)
        for motion_id, text, seconds in results:
            counts = [len([e for e in p.named("motion_received") if e["motion_id"] == motion_id]) for p in peers]
            exactly_once = all(c == 1 for c in counts)
            ok &= exactly_once
            print(f"   {motion_id[:12]}  {sum(counts)}/{len(peers)} peers"
                  f"{'' if exactly_once else ' (NOT exactly once!)'}  {seconds:.2f}s  {text}")
    except (TimeoutError, RuntimeError) as exc:
        print(f"== demo failed: {exc}", file=sys.stderr)
        ok = False
    finally:
        times = [p.stop() for p in peers]
        if times:
            print(f"== stopped {len(peers)} peers with SIGTERM (slowest {max(times):.2f}s)", flush=True)
        if directory is None and ok:
            shutil.rmtree(workdir, ignore_errors=True)
    print("== demo OK" if ok else "== demo FAILED", flush=True)
    return 0 if ok else 1
