"""`conclave demo`: a local swarm of agent peers as real processes, real motions, real
agreements.

It writes a swarm (or reuses the one in ``--dir``), starts one ``conclave peer`` per
validator (each loading its own model, one CPU thread each since they share the
machine), puts sample motions to the swarm as a client, prints each agreement as it
happens, and exits 0 once every motion is resolved at every validator with identical
blocks at every height, or keeps running with ``--forever`` until Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from agents.procs import PeerProcess, free_tcp_ports
from agents.swarm_init import SWARM_FILE, init_swarm
from p2p.errors import ConfigError
from p2p.keys import Identity, read_key_file, write_key_file
from p2p.messages import Motion
from p2p.swarmfile import Params, SwarmConfig, load_swarm_file

SAMPLE_MOTIONS = [
    ("Adopt the revised data-retention policy: delete raw logs after 30 days?", ("approve", "reject")),
    ("Which region should host the next replica?", ("eu-west", "us-east", "ap-south")),
    ("Release version 0.2 this week, with the known flaky test marked as expected to fail?",
     ("approve", "reject", "defer")),
    ("Raise the per-client rate limit from 1 to 2 motions per second?", ("approve", "reject")),
    ("Require two reviewers for every change to the consensus core?", ("approve", "reject")),
    ("Should agents refuse motions that contain personal data such as e-mail addresses?", ("approve", "reject")),
    ("Move the weekly sync from Monday to Wednesday?", ("approve", "reject")),
    ("Rotate the validators' signing keys every 90 days?", ("approve", "reject")),
    ("Which log format should new deployments use by default?", ("text", "json")),
    ("Publish the benchmark results in the README, including the slow ones?", ("approve", "reject")),
    ("Fund a security audit of the checkpoint contract before mainnet?", ("approve", "reject", "defer")),
    ("Allow observers to submit motions, rate-limited like other clients?", ("approve", "reject")),
]
JOIN_TIMEOUT = 90.0  # models load first
PROPOSE_TIMEOUT = 30.0
SUBMIT_INTERVAL = 1.1  # the swarm's default client rate limit is one motion per second
PROGRESS_EVERY = 5.0
DEMO_CHECKPOINT_INTERVAL = 5  # a checkpoint every 5 heights, so that a short demo anchors some
ANCHOR_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    validators: int = 4
    motions: int = 10
    directory: Path | None = None
    forever: bool = False
    log_format: str = "text"
    model: str | None = None
    chain: str = "ledger"  # "ledger" (embedded), "anvil" (started here), or a JSON-RPC URL


def sample_motions(n: int) -> list[Motion]:
    out = []
    for i in range(n):
        text, options = SAMPLE_MOTIONS[i % len(SAMPLE_MOTIONS)]
        again = i // len(SAMPLE_MOTIONS)
        out.append(Motion(text if not again else f"{text} (asked again, {again + 1})", options))
    return out


class Console:
    """The demo's own output: readable lines, or one JSON object per line."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"
        self._lock = threading.Lock()

    def say(self, event: str, text: str, **fields) -> None:
        with self._lock:
            if self.json:
                ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                print(json.dumps({"ts": ts, "level": "info", "event": event, "msg": text, **fields},
                                 ensure_ascii=False), flush=True)
            else:
                print(text, flush=True)

    def peer_event(self, name: str, event: dict) -> None:
        with self._lock:
            if self.json:
                print(json.dumps({**event, "peer": name}, ensure_ascii=False), flush=True)
            elif event["event"] in ("round_changed", "evidence", "catchup_finished", "block_rejected"):
                print(f"  [{name}] {event['msg']}", flush=True)


class Agreements:
    """Which motion each peer has agreed on; prints each agreement once, when first seen."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.by_peer: dict[str, dict[str, dict]] = {}
        self.blocks: dict[str, dict[int, str]] = {}
        self._printed: set[str] = set()
        self._lock = threading.Lock()

    def on_event(self, name: str, event: dict) -> None:
        self.console.peer_event(name, event)
        kind = event.get("event")
        with self._lock:
            if kind == "agreement":
                self.by_peer.setdefault(name, {})[event["motion_id"]] = event
                first = event["motion_id"] not in self._printed
                self._printed.add(event["motion_id"])
            elif kind == "block_committed":
                self.blocks.setdefault(name, {})[event["height"]] = event["block_hash"]
                return
            else:
                return
        if first and not self.console.json:
            self.console.say("agreement", f"  {event['msg']}")

    def resolved_everywhere(self, names: list[str], motion_ids: list[str]) -> int:
        with self._lock:
            return sum(all(m in self.by_peer.get(n, {}) for n in names) for m in motion_ids)

    def chains_agree(self, names: list[str]) -> tuple[bool, int]:
        with self._lock:
            chains = [self.blocks.get(n, {}) for n in names]
        heights = set().union(*chains) if chains else set()
        same = all(len({c.get(h) for c in chains if h in c}) == 1 for h in heights)
        return same, len(heights)


def _prepare(opts: DemoOptions, workdir: Path) -> SwarmConfig:
    swarm_file = workdir / SWARM_FILE
    if swarm_file.exists():
        swarm = load_swarm_file(swarm_file)
        for v in swarm.validators:
            if read_key_file(workdir / f"{v.name}.key").public_key != v.public_key:
                raise ConfigError(f"{workdir / (v.name + '.key')}: not the key of validator {v.name}")
        return swarm
    init_swarm(workdir, opts.validators, "demo", free_tcp_ports(opts.validators),
               params=Params(checkpoint_interval=DEMO_CHECKPOINT_INTERVAL))
    return load_swarm_file(swarm_file)  # as the peers will read it (paths beside the file)


def _submit(swarm: SwarmConfig, client: Identity, motions: list[Motion]) -> list[str]:
    import trio  # noqa: PLC0415

    from agents.run import dial_targets, propose_many  # noqa: PLC0415 (imports libp2p)

    result = trio.run(propose_many, swarm, client, motions, dial_targets(swarm, []), PROPOSE_TIMEOUT,
                      SUBMIT_INTERVAL)
    return result["motion_ids"]


def run_demo(opts: DemoOptions) -> int:
    if not 1 <= opts.validators <= 16:
        print(f"conclave: error: --validators {opts.validators}: between 1 and 16 for a local demo", file=sys.stderr)
        return 2
    if not 0 <= opts.motions <= 100 or (opts.motions == 0 and not opts.forever):
        print(f"conclave: error: --motions {opts.motions}: between 1 and 100 (0 only with --forever)", file=sys.stderr)
        return 2
    console = Console(opts.log_format)
    workdir = opts.directory or Path(tempfile.mkdtemp(prefix="conclave-demo-"))
    try:
        swarm = _prepare(opts, workdir)
    except ConfigError as exc:
        print(f"conclave: error: {exc}", file=sys.stderr)
        return 2
    client_key = workdir / "client.key"
    if not client_key.exists():
        write_key_file(client_key, Identity.generate())
    client = read_key_file(client_key)
    anvil = None
    try:
        swarm, anvil = _setup_chain(opts, workdir, swarm, client, console)
    except ConfigError as exc:
        print(f"conclave: error: {exc}", file=sys.stderr)
        return 2
    names = [v.name for v in swarm.validators]
    console.say("demo_started", f"== swarm '{swarm.name}' with {len(names)} validators in {workdir}",
                dir=str(workdir), validators=names)
    agreements = Agreements(console)
    peers: list[PeerProcess] = []
    ok = False
    try:
        for v in swarm.validators:
            args = ["--swarm", str(workdir / SWARM_FILE), "--key", str(workdir / f"{v.name}.key"),
                    "--data", str(workdir / v.name), "--threads", "1"]
            if opts.model:
                args += ["--model", opts.model]
            peers.append(PeerProcess(v.name, args, on_event=agreements.on_event))
        _wait_started(console, peers, names)
        motions = sample_motions(opts.motions)
        ids: list[str] = []
        if motions:
            console.say("submitting", f"== all peers connected; putting {len(motions)} motions to the swarm "
                        f"(one a second: the swarm rate-limits clients)", motions=len(motions))
            submitted_at = time.monotonic()
            ids = _submit(swarm, client, motions)
            ok = _wait_resolved(console, agreements, names, ids, motions, submitted_at)
            if ok and swarm.chain.kind != "none":
                ok = _wait_anchored_and_verify(console, swarm, workdir / names[0], peers, agreements, names, ids)
        else:
            ok = True
        if ok and opts.forever:
            console.say("forever", f"== running until Ctrl-C; put more motions with: conclave propose --swarm "
                        f"{workdir / SWARM_FILE} --key {client_key} \"...\"")
            while all(p.proc.poll() is None for p in peers):
                time.sleep(0.5)
            console.say("demo_failed", "== a peer exited", level="error")
            ok = False
    except KeyboardInterrupt:
        console.say("interrupted", "== interrupted")
        ok = ok or opts.forever
    except (TimeoutError, RuntimeError, ConfigError) as exc:
        console.say("demo_failed", f"== demo failed: {exc}")
        ok = False
    finally:
        times = [p.stop() for p in peers]
        if times:
            console.say("stopped", f"== stopped {len(peers)} peers with SIGTERM (slowest {max(times):.2f} s)")
        if anvil is not None:
            anvil.stop()
        if opts.directory is None and ok:
            shutil.rmtree(workdir, ignore_errors=True)
        elif opts.directory is None:
            console.say("kept", f"== kept {workdir} for inspection (conclave log --data {workdir / names[0]})")
    console.say("demo_finished", "== demo OK" if ok else "== demo FAILED", ok=ok)
    return 0 if ok else 1


def _setup_chain(opts: DemoOptions, workdir: Path, swarm: SwarmConfig, client: Identity, console: Console):
    """Where checkpoints go: the ledger file (nothing to start), a fresh anvil, or the EVM
    node at a URL (which stays up afterwards, for `conclave verify`)."""
    if opts.chain == "ledger" or swarm.chain.registry:
        return swarm, None
    from agents.chain_deploy import deploy  # noqa: PLC0415
    from consensus.anchor.anvil import Anvil  # noqa: PLC0415

    anvil = None
    url = opts.chain
    if opts.chain == "anvil":
        anvil = Anvil().start()
        url = anvil.url
    elif not url.startswith(("http://", "https://")):
        raise ConfigError(f"--chain {opts.chain}: 'ledger', 'anvil' or an http(s) JSON-RPC URL")
    try:
        swarm = deploy(workdir / SWARM_FILE, url, client)
    except ConfigError:
        if anvil is not None:
            anvil.stop()
        raise
    console.say("registry_deployed", f"== CheckpointRegistry {swarm.chain.registry} deployed on {url} "
                f"(chain {swarm.chain.chain_id})", registry=swarm.chain.registry, rpc=url)
    return swarm, anvil


def _wait_anchored_and_verify(console: Console, swarm: SwarmConfig, data_dir: Path, peers: list[PeerProcess],
                              agreements: Agreements, names: list[str], ids: list[str]) -> bool:
    """Wait for every complete checkpoint to land, then verify each motion as a stranger would."""
    from agents.anchoring import open_anchor  # noqa: PLC0415
    from agents.storage import PeerStore  # noqa: PLC0415
    from agents.verify import verify  # noqa: PLC0415

    _, heights = agreements.chains_agree(names)
    complete = heights // swarm.params.checkpoint_interval
    if complete:
        console.say("anchoring", f"== waiting for {complete} checkpoint(s) to be anchored "
                    f"(every {swarm.params.checkpoint_interval} heights)")
        peers[0].wait_for(lambda evs: sum(e["event"] == "checkpoint_anchored" for e in evs) >= complete,
                          ANCHOR_TIMEOUT, f"{complete} checkpoints anchored")
        for e in peers[0].named("checkpoint_anchored")[:complete]:
            console.say("checkpoint", f"  {e['msg']}", number=e["number"])
    anchor = open_anchor(swarm, None, "demo", create=False)
    store = PeerStore.open_readonly(data_dir)
    try:
        verdicts = [verify(swarm, store.decisions, m, anchor) for m in ids]
    finally:
        store.close()
    valid = sum(v.valid for v in verdicts)
    pending = sum(v.reason == "not_yet_anchored" for v in verdicts)
    bad = [v for v in verdicts if not v.valid and v.reason != "not_yet_anchored"]
    console.say("verified", f"== conclave verify: {valid}/{len(ids)} motions VALID against {anchor.name}"
                + (f", {pending} in a checkpoint not complete yet" if pending else "")
                + (f", {len(bad)} INVALID: {bad[0].describe()}" if bad else ""),
                valid=valid, pending=pending, invalid=len(bad))
    return not bad


def _wait_started(console: Console, peers: list[PeerProcess], names: list[str]) -> None:
    console.say("starting", f"== starting {len(peers)} peers (each loads its model first)...")
    deadline = time.monotonic() + JOIN_TIMEOUT
    for i, p in enumerate(peers, 1):
        p.wait_event("peer_started", max(0.1, deadline - time.monotonic()))
        loaded = p.named("model_loaded")
        how = f": {loaded[0]['msg']}" if loaded else ""
        console.say("peer_ready", f"   {p.name} ready ({i}/{len(peers)}){how}", peer=p.name)
    for p in peers:
        others = set(names) - {p.name}
        p.wait_for(lambda evs, o=others: o <= {e.get("peer") for e in evs if e["event"] == "peer_joined"},
                   max(0.1, deadline - time.monotonic()), "every validator joined")


def _wait_resolved(console: Console, agreements: Agreements, names: list[str], ids: list[str],
                   motions: list[Motion], start: float) -> bool:
    budget = 60.0 + 30.0 * len(ids)  # inference on a shared CPU dominates
    last_report = start
    while True:
        done = agreements.resolved_everywhere(names, ids)
        if done == len(ids):
            break
        now = time.monotonic()
        if now - start > budget:
            console.say("demo_failed", f"== only {done}/{len(ids)} motions resolved at every peer in {budget:.0f} s")
            return False
        if now - last_report >= PROGRESS_EVERY:
            last_report = now
            console.say("progress", f"   ... {done}/{len(ids)} motions resolved at every peer "
                        f"({now - start:.0f} s; the agents are deliberating)", resolved=done, total=len(ids))
        time.sleep(0.2)
    same, heights = agreements.chains_agree(names)
    elapsed = time.monotonic() - start
    console.say("summary", f"== {len(ids)} motions resolved at all {len(names)} peers in {elapsed:.1f} s, "
                f"{heights} blocks; block hashes identical at every height: {'yes' if same else 'NO'}",
                motions=len(ids), heights=heights, identical=same, seconds=round(elapsed, 1))
    if not console.json:
        first = agreements.by_peer[names[0]]
        for motion_id, motion in zip(ids, motions, strict=True):
            ev = first[motion_id]
            console.say("outcome", f"   h={ev['height']:<3} {ev['outcome']:<17} {motion.text[:70]}")
    return same
