"""`conclave log`: the decisions in a peer's durable log, for people and for machines.

Reads the store without locking it, so it works beside a running peer. Each decision is
shown with its block hash, its commit certificate's signers and every motion it
resolved; ``--json`` gives one object per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from agents.naming import short
from agents.resolution import decode_payload
from agents.storage import Decision, PeerStore
from p2p.errors import RemoteProtocolError

BATCH = 256


def decisions(store: PeerStore, first: int = 1) -> Iterator[Decision]:
    last = store.last_height()
    for start in range(first, last + 1, BATCH):
        yield from store.decisions(start, min(last, start + BATCH - 1))


def decision_doc(d: Decision) -> dict:
    """One decision as plain JSON-able data."""
    doc = {"height": d.height, "round": d.round, "block_hash": d.block.hash.hex(),
           "prev_hash": d.block.prev_hash.hex(), "proposer": d.block.proposer.hex(),
           "certificate_signers": d.certificate.indices(), "motions": []}
    try:
        resolutions = decode_payload(d.block.payload)
    except RemoteProtocolError as exc:
        doc["payload_error"] = exc.detail
        return doc
    for r in resolutions:
        motion = r.motion
        doc["motions"].append({
            "motion_id": r.motion_id.hex(), "text": motion.text, "options": list(motion.options),
            "outcome": r.outcome, "tally": dict(zip(motion.options, r.tally, strict=True)),
            "closing": r.closing.name.lower(), "voters": [c.voter.hex() for c in r.ballots],
        })
    return doc


def render_text(doc: dict) -> list[str]:
    signers = ",".join(str(i) for i in doc["certificate_signers"])
    lines = [f"h={doc['height']} block {doc['block_hash'][:16]} round {doc['round']} "
             f"signed by validators [{signers}]"]
    if "payload_error" in doc:
        lines.append(f"    (payload unreadable: {doc['payload_error']})")
    for m in doc["motions"]:
        tally = ", ".join(f"{o} {p}" for o, p in m["tally"].items() if p) or "no ballots"
        lines.append(f"    {m['motion_id'][:12]} -> {m['outcome']} ({tally}; {m['closing']}) \"{short(m['text'], 70)}\"")
    return lines


def print_log(data_dir: Path, as_json: bool, first: int = 1) -> int:
    """Print the log; the number of decisions shown."""
    store = PeerStore.open_readonly(data_dir)
    try:
        n = 0
        for d in decisions(store, first):
            doc = decision_doc(d)
            if as_json:
                print(json.dumps(doc, ensure_ascii=False))
            else:
                print("\n".join(render_text(doc)))
            n += 1
        return n
    finally:
        store.close()
