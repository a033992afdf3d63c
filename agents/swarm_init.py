"""`conclave swarm init`: a new swarm file plus one key file per validator."""

from __future__ import annotations

from pathlib import Path

from p2p.errors import ConfigError
from p2p.chainkeys import chain_address
from p2p.keys import Identity, write_key_file
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic, render_swarm_file

SWARM_FILE = "swarm.toml"


def init_swarm(
    directory: Path, validators: int, name: str = "local", ports: list[int] | None = None,
    host: str = "127.0.0.1", params: Params | None = None,
) -> SwarmConfig:
    """Write ``directory/swarm.toml`` and ``directory/v<i>.key``; refuses to overwrite."""
    if not 1 <= validators <= 100:
        raise ConfigError(f"--validators must be between 1 and 100, got {validators}")
    if ports is not None and len(ports) != validators:
        raise ConfigError("one port per validator is needed")
    directory.mkdir(parents=True, exist_ok=True)
    swarm_path = directory / SWARM_FILE
    # Check every file first, so a refusal leaves nothing half-written behind.
    for path in [swarm_path] + [directory / f"v{i}.key" for i in range(1, validators + 1)]:
        if path.exists():
            raise ConfigError(f"{path}: already exists; refusing to overwrite a swarm")
    members = []
    for i in range(1, validators + 1):
        identity = Identity.generate()
        write_key_file(directory / f"v{i}.key", identity)
        addrs = (f"/ip4/{host}/tcp/{ports[i - 1]}",) if ports else ()
        members.append(Validator(f"v{i}", identity.peer_id, identity.public_key, 1, addrs,
                                 chain_address(identity.seed)))
    cfg = SwarmConfig(name, default_topic(name), PROTOCOL_VERSION, tuple(members), params or Params())
    swarm_path.write_text(render_swarm_file(cfg))
    return cfg
