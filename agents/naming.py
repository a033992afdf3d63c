"""How peers and motions are named in logs: short, readable, never ambiguous."""

from __future__ import annotations

from p2p.keys import peer_id_from_public_key
from p2p.swarmfile import SwarmConfig


def describe_sender(swarm: SwarmConfig, public_key: bytes | None = None, peer_id: str | None = None) -> str:
    v = swarm.validator_by_key(public_key) if public_key is not None else swarm.validator_by_peer_id(peer_id or "")
    if v is not None:
        return v.name
    if peer_id is None and public_key is not None:
        peer_id = peer_id_from_public_key(public_key)
    return f"client {peer_id[:8]}…{peer_id[-6:]}" if peer_id else "unknown"


def short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
