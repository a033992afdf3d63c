"""The worked example in docs/wire-format.md is recomputed here, so the document can
never drift from the code. To regenerate the block after a deliberate wire change:

    .venv/bin/python tests/unit/test_wire_format_example.py
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import msgpack

from p2p.envelope import SIGNING_DOMAIN, Envelope, MessageType, decode_envelope
from p2p.keys import Identity, verify_signature
from p2p.messages import Motion
from p2p.swarmfile import PROTOCOL_VERSION, SwarmConfig, Validator, default_topic
from p2p.validation import MessageValidator

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
BEGIN, END = "<!-- worked-example:begin -->", "<!-- worked-example:end -->"
NAMES = ("alice", "bob", "carol", "dave")
SEQ = 1_700_000_000_000_000_000
HEX_LINE = 64  # hex digits per line in the document


def example() -> dict[str, str]:
    """Every value the document shows, recomputed from the code."""
    ids = [Identity(bytes(range(32 * i, 32 * i + 32))) for i in range(len(NAMES))]
    validators = tuple(Validator(n, i.peer_id, i.public_key, 1) for n, i in zip(NAMES, ids, strict=True))
    swarm = SwarmConfig("example", default_topic("example"), PROTOCOL_VERSION, validators)
    # Written out as section 5 of the document lists it, not taken from the code's tables.
    params = [
        [name, getattr(swarm.params, name)]
        for name in (
            "max_message_bytes", "replay_window", "max_tracked_senders", "client_rate_per_s", "client_burst",
            "status_interval_ms", "dial_backoff_initial_ms", "dial_backoff_max_ms", "timeout_propose_ms",
            "timeout_prevote_ms", "timeout_precommit_ms", "timeout_delta_ms", "checkpoint_interval",
            "motion_deadline_ms", "reveal_timeout_ms", "ballot_rebroadcast_ms", "max_pending_motions",
            "max_pending_per_sender", "max_resolutions_per_block", "anchor_grace_ms",
        )
    ] + [["allowed_models", []]]
    assert isinstance(swarm.params.client_rate_per_s, float)  # encoded as float 64
    genesis = msgpack.packb(
        ["conclave/swarm-id/v1", swarm.name, swarm.topic, swarm.protocol_version,
         [[v.name, v.public_key, v.power, v.chain_address] for v in validators], params],
        use_bin_type=True,
    )
    payload = Motion("Adopt the wire format?", ("approve", "reject")).encode()
    env = Envelope.seal(ids[0], swarm.swarm_id, MessageType.MOTION, SEQ, payload)
    values = {"alice.seed": ids[0].seed.hex(), "alice.peer_id": ids[0].peer_id}
    for name, ident in zip(NAMES, ids, strict=True):
        values[f"{name}.public_key"] = ident.public_key.hex()
    values |= {
        "swarm.topic": swarm.topic,
        "swarm.genesis": genesis.hex(),
        "swarm.swarm_id": swarm.swarm_id.hex(),
        "motion.seq": str(SEQ),
        "motion.payload": payload.hex(),
        "motion.signed_bytes": env.signed_bytes().hex(),
        "motion.signature": env.signature.hex(),
        "motion.message_id": env.message_id.hex(),
        "motion.envelope": env.encode().hex(),
    }
    return values


def render(values: dict[str, str]) -> str:
    """The fenced block between the markers, as it appears in the document."""
    lines = ["```text"]
    for key, value in values.items():
        lines.append(f"{key}:")
        if re.fullmatch(r"[0-9a-f]+", value) and len(value) > HEX_LINE:
            lines += [f"  {value[i:i + HEX_LINE]}" for i in range(0, len(value), HEX_LINE)]
        else:
            lines.append(f"  {value}")
    lines.append("```")
    return "\n".join(lines)


def parse_doc() -> dict[str, str]:
    text = DOC.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{DOC} must hold the markers once each"
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    values: dict[str, str] = {}
    key = None
    for line in block.splitlines():
        if not line.strip() or line.startswith("```"):
            continue
        if not line.startswith(" "):
            key = line.rstrip().removesuffix(":")
            assert key not in values, f"{key} appears twice in the worked example"
            values[key] = ""
        else:
            assert key is not None, f"value without a label: {line!r}"
            values[key] += line.strip()
    return values


def test_worked_example_in_the_doc_matches_the_code():
    documented = parse_doc()
    computed = example()
    assert list(documented) == list(computed)
    for key, value in computed.items():
        assert documented[key] == value, f"docs/wire-format.md: {key} differs from the code"


def test_worked_example_block_is_rendered_verbatim():
    assert render(example()) in DOC.read_text()


def test_worked_example_is_internally_consistent():
    """Checks an independent implementer would make, from the document's values alone."""
    doc = parse_doc()
    b = {k: bytes.fromhex(v) for k, v in doc.items() if re.fullmatch(r"([0-9a-f]{2})+", v)}
    assert Identity(b["alice.seed"]).public_key == b["alice.public_key"]
    assert hashlib.sha256(b["swarm.genesis"]).digest() == b["swarm.swarm_id"]
    signed = b["motion.signed_bytes"]
    assert signed.startswith(SIGNING_DOMAIN)
    assert msgpack.unpackb(signed[len(SIGNING_DOMAIN) :]) == [
        1, b["swarm.swarm_id"], 1, b["alice.public_key"], int(doc["motion.seq"]), b["motion.payload"]
    ]
    assert verify_signature(b["alice.public_key"], signed, b["motion.signature"])
    assert hashlib.sha256(signed).digest() == b["motion.message_id"]
    env = decode_envelope(b["motion.envelope"])
    assert env.signed_bytes() == signed
    assert env.signature == b["motion.signature"]
    assert msgpack.unpackb(b["motion.envelope"])[6] == b["motion.signature"]
    assert msgpack.unpackb(b["motion.payload"]) == {"text": "Adopt the wire format?", "options": ["approve", "reject"]}


def test_worked_example_is_accepted_by_the_validator():
    ids = [Identity(bytes(range(32 * i, 32 * i + 32))) for i in range(len(NAMES))]
    validators = tuple(Validator(n, i.peer_id, i.public_key, 1) for n, i in zip(NAMES, ids, strict=True))
    swarm = SwarmConfig("example", default_topic("example"), PROTOCOL_VERSION, validators)
    accepted = MessageValidator(swarm).validate(bytes.fromhex(parse_doc()["motion.envelope"]), now=0.0)
    assert accepted.payload == Motion("Adopt the wire format?")
    assert accepted.validator is not None and accepted.validator.name == "alice"


if __name__ == "__main__":
    print(BEGIN)
    print(render(example()))
    print(END)
