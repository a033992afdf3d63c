"""The swarm file (``swarm.toml``): the one thing a newcomer needs to join a swarm.

It names the swarm and its gossip topic, lists the validators (name, peer id, ed25519
public key, voting power, and for local swarms their listen addresses) and holds the
parameters. Loading validates every field and names the bad one; unknown fields are
errors too, so a typo is never silently ignored.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from p2p.chainkeys import normalise_address
from p2p.errors import ConfigError
from p2p.keys import PUBLIC_KEY_BYTES, peer_id_from_public_key

PROTOCOL_VERSION = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")  # \Z: "$" would accept a trailing newline


@dataclass(frozen=True, slots=True)
class Params:
    """Swarm-wide parameters. Every peer of a swarm must use the same values."""

    max_message_bytes: int = 256 * 1024
    replay_window: int = 1024
    max_tracked_senders: int = 10_000
    client_rate_per_s: float = 1.0
    client_burst: int = 5
    status_interval_ms: int = 30_000
    dial_backoff_initial_ms: int = 500
    dial_backoff_max_ms: int = 30_000
    # Used by the agreement protocol (later work); fixed here so the genesis is complete.
    timeout_propose_ms: int = 3000
    timeout_prevote_ms: int = 1000
    timeout_precommit_ms: int = 1000
    timeout_delta_ms: int = 500
    checkpoint_interval: int = 10
    # The motion lifecycle: a motion resolves once ballots holding more than 2/3 of the
    # power are revealed, or with what was revealed when its deadline passes. A validator
    # reveals once more than 2/3 of the power has committed, or this long after its own
    # commitment; it re-sends its commitments and reveals of unresolved motions (gossip
    # loses messages).
    motion_deadline_ms: int = 120_000
    reveal_timeout_ms: int = 10_000
    ballot_rebroadcast_ms: int = 5_000
    max_pending_motions: int = 1000
    max_pending_per_sender: int = 100
    max_resolutions_per_block: int = 64
    # Anchoring: checkpoint n is submitted by validator (n - 1) mod N, or by the k-th next
    # in line once it has not landed k * anchor_grace_ms after a quorum signed it.
    anchor_grace_ms: int = 5000
    allowed_models: tuple[str, ...] = ()

    # (minimum, maximum) of each numeric field; loading checks them and names the field.
    LIMITS = {
        "max_message_bytes": (1024, 1_000_000),  # py-libp2p drops frames of 1 MiB silently
        "replay_window": (64, 1 << 20),
        "max_tracked_senders": (16, 10_000_000),
        "client_rate_per_s": (0.001, 10_000.0),
        "client_burst": (1, 100_000),
        "status_interval_ms": (1000, 3_600_000),
        "dial_backoff_initial_ms": (10, 60_000),
        "dial_backoff_max_ms": (100, 3_600_000),
        "timeout_propose_ms": (10, 600_000),
        "timeout_prevote_ms": (10, 600_000),
        "timeout_precommit_ms": (10, 600_000),
        "timeout_delta_ms": (0, 600_000),
        "checkpoint_interval": (1, 1_000_000),
        "motion_deadline_ms": (100, 86_400_000),
        "reveal_timeout_ms": (10, 3_600_000),
        "ballot_rebroadcast_ms": (100, 3_600_000),
        "max_pending_motions": (1, 1_000_000),
        "max_pending_per_sender": (1, 1_000_000),
        "max_resolutions_per_block": (1, 256),
        "anchor_grace_ms": (100, 3_600_000),
    }


CHAIN_KINDS = ("ledger", "evm", "none")


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """Where checkpoints are anchored (``[chain]``). Not part of the swarm id: the
    registry's address is known only after deploying it for that id, and a verifier
    checks the registry's own swarm id and validator set instead."""

    kind: str = "ledger"  # the embedded ledger file, an EVM chain, or no anchoring
    ledger: str = "ledger.jsonl"  # relative to the swarm file's directory
    rpc: str = ""  # JSON-RPC URL of an EVM node
    chain_id: int = 0  # 0: ask the node
    registry: str = ""  # the CheckpointRegistry's address ("" until `conclave chain deploy`)

    def __post_init__(self) -> None:
        if self.kind not in CHAIN_KINDS:
            raise ConfigError(f"chain.kind must be one of {', '.join(CHAIN_KINDS)}, got {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Validator:
    name: str
    peer_id: str
    public_key: bytes
    power: int
    addrs: tuple[str, ...] = ()
    # The checksummed address of the validator's chain key (p2p.chainkeys), which signs
    # checkpoints; "" when the swarm anchors nowhere that needs one.
    chain_address: str = ""


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    name: str
    topic: str
    protocol_version: int
    validators: tuple[Validator, ...]
    params: Params = field(default_factory=Params)
    chain: ChainConfig = field(default_factory=ChainConfig)
    base_dir: Path | None = field(default=None, compare=False)  # the swarm file's directory
    swarm_id: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "swarm_id", compute_swarm_id(self))

    @property
    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    def ledger_path(self) -> Path:
        path = Path(self.chain.ledger)
        return path if path.is_absolute() or self.base_dir is None else self.base_dir / path

    def validator_by_key(self, public_key: bytes) -> Validator | None:
        for v in self.validators:
            if v.public_key == public_key:
                return v
        return None

    @property
    def validator_peer_ids(self) -> frozenset[str]:
        return frozenset(v.peer_id for v in self.validators)

    def validator_by_peer_id(self, peer_id: str) -> Validator | None:
        for v in self.validators:
            if v.peer_id == peer_id:
                return v
        return None


def compute_swarm_id(cfg: SwarmConfig) -> bytes:
    """sha256 over the genesis: name, topic, version, the validator set in order, and
    every parameter, so that peers holding different parameters (and so judging
    messages differently) cannot take themselves for the same swarm. Addresses are left
    out: a validator may move without forking the swarm."""
    params = [[name, getattr(cfg.params, name)] for name in Params.LIMITS]
    params.append(["allowed_models", list(cfg.params.allowed_models)])
    genesis = [
        "conclave/swarm-id/v1",
        cfg.name,
        cfg.topic,
        cfg.protocol_version,
        [[v.name, v.public_key, v.power, v.chain_address] for v in cfg.validators],
        params,
    ]
    return hashlib.sha256(msgpack.packb(genesis, use_bin_type=True)).digest()


def default_topic(name: str) -> str:
    return f"/conclave/{name}/v{PROTOCOL_VERSION}"


# --- loading -------------------------------------------------------------------------


class _Fields:
    """Reads a TOML table, naming ``where.key`` in every error, and rejects unknown keys."""

    def __init__(self, path: Path, where: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {where or 'the file'} must be a table")
        self.path, self.where, self.table, self.used = path, where, table, set()

    def fail(self, key: str, problem: str) -> ConfigError:
        field = f"{self.where}.{key}" if self.where else key
        return ConfigError(f"{self.path}: {field}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        value = self.table[key]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(key, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {_kind_name(kind)}, got {type(value).__name__} {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown field (a typo?)")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _load_params(path: Path, table: Any) -> Params:
    f = _Fields(path, "params", table)
    defaults = Params()
    values: dict[str, Any] = {}
    for name, (lo, hi) in Params.LIMITS.items():
        default = getattr(defaults, name)
        kind = (int, float) if isinstance(default, float) else int
        value = f.get(name, kind, default)
        if not lo <= value <= hi:
            raise f.fail(name, f"must be between {lo} and {hi}, got {value}")
        values[name] = float(value) if isinstance(default, float) else value
    if values["dial_backoff_max_ms"] < values["dial_backoff_initial_ms"]:
        raise f.fail("dial_backoff_max_ms", "must not be less than dial_backoff_initial_ms")
    models = f.get("allowed_models", list, [])
    for i, m in enumerate(models):
        if not isinstance(m, str) or not re.fullmatch(r"[0-9a-f]{64}", m):
            raise f.fail(f"allowed_models[{i}]", "must be a sha256 hex digest (64 lowercase hex digits)")
    values["allowed_models"] = tuple(models)
    f.finish()
    return Params(**values)


def _load_validator(path: Path, i: int, table: Any) -> Validator:
    f = _Fields(path, f"validators[{i}]", table)
    name = f.get("name", str)
    if not _NAME_RE.match(name):
        raise f.fail("name", f"{name!r} must be 1-63 of a-z 0-9 _ - (starting with a letter or digit)")
    key_hex = f.get("public_key", str)
    try:
        public_key = bytes.fromhex(key_hex)
    except ValueError:
        public_key = b""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise f.fail("public_key", f"must be {PUBLIC_KEY_BYTES * 2} hex digits")
    peer_id = f.get("peer_id", str)
    try:
        expected = peer_id_from_public_key(public_key)
    except Exception as exc:  # libp2p rejects points off the curve with assorted errors
        raise f.fail("public_key", f"not an ed25519 public key ({exc})") from None
    if peer_id != expected:
        raise f.fail("peer_id", f"{peer_id!r} does not match public_key (expected {expected})")
    power = f.get("power", int)
    if not 1 <= power <= 2**62:
        raise f.fail("power", f"must be a positive integer, got {power}")
    addrs = f.get("addrs", list, [])
    for j, a in enumerate(addrs):
        if not isinstance(a, str):
            raise f.fail(f"addrs[{j}]", "must be a string")
        problem = multiaddr_problem(a)
        if problem:
            raise f.fail(f"addrs[{j}]", problem)
    chain = f.get("chain_address", str, "")
    chain_address = normalise_address(chain) if chain else ""
    if chain_address is None:
        raise f.fail("chain_address", f"{chain!r} is not an Ethereum address (0x and 40 hex digits, "
                     "mixed case only with a valid checksum)")
    f.finish()
    return Validator(name, peer_id, public_key, power, tuple(addrs), chain_address)


def multiaddr_problem(text: str) -> str | None:
    """None if ``text`` is a dialable TCP multiaddr, else what is wrong with it."""
    from multiaddr import Multiaddr

    try:
        ma = Multiaddr(text)
    except Exception as exc:  # multiaddr raises several types for bad input
        return f"{text!r} is not a multiaddr ({exc})"
    protos = [p.name for p in ma.protocols()]
    if "tcp" not in protos or not ({"ip4", "ip6", "dns", "dns4", "dns6"} & set(protos)):
        return f"{text!r} must be an ip4/ip6/dns TCP address such as /ip4/127.0.0.1/tcp/9000"
    return None


def load_swarm_file(path: Path) -> SwarmConfig:
    """Read and fully validate a swarm file. Raises ``ConfigError`` naming the field."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such swarm file (create one with `conclave swarm init DIR`)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    top = _Fields(path, "", doc)
    sw = _Fields(path, "swarm", top.get("swarm", dict))
    name = sw.get("name", str)
    if not _NAME_RE.match(name):
        raise sw.fail("name", f"{name!r} must be 1-63 of a-z 0-9 _ - (starting with a letter or digit)")
    topic = sw.get("topic", str, default_topic(name))
    if not topic or len(topic) > 200:
        raise sw.fail("topic", "must be 1 to 200 characters")
    version = sw.get("protocol_version", int)
    if version != PROTOCOL_VERSION:
        raise sw.fail("protocol_version", f"this peer speaks version {PROTOCOL_VERSION}, the file says {version}")
    sw.finish()
    params = _load_params(path, top.get("params", dict, {}))
    raw_validators = top.get("validators", list)
    if not raw_validators:
        raise top.fail("validators", "at least one validator is required")
    validators = tuple(_load_validator(path, i, t) for i, t in enumerate(raw_validators))
    for attr in ("name", "public_key"):
        seen: dict[Any, int] = {}
        for i, v in enumerate(validators):
            value = getattr(v, attr)
            if value in seen:
                raise ConfigError(f"{path}: validators[{i}].{attr}: duplicates validators[{seen[value]}]")
            seen[value] = i
    chain = _load_chain(path, top.get("chain", dict, {}))
    top.finish()
    return SwarmConfig(name, topic, version, validators, params, chain, path.resolve().parent)


def _load_chain(path: Path, table: Any) -> ChainConfig:
    f = _Fields(path, "chain", table)
    kind = f.get("kind", str, "ledger")
    if kind not in CHAIN_KINDS:
        raise f.fail("kind", f"must be one of {', '.join(CHAIN_KINDS)}, got {kind!r}")
    ledger = f.get("ledger", str, "ledger.jsonl")
    if not ledger:
        raise f.fail("ledger", "must be a file name or path")
    rpc = f.get("rpc", str, "")
    if rpc and not re.match(r"https?://[^/\s]+", rpc):
        raise f.fail("rpc", f"{rpc!r} must be an http:// or https:// URL")
    if kind == "evm" and not rpc:
        raise f.fail("rpc", "an evm chain needs the JSON-RPC URL of a node")
    chain_id = f.get("chain_id", int, 0)
    if chain_id < 0:
        raise f.fail("chain_id", f"must be positive (or 0: ask the node), got {chain_id}")
    registry = f.get("registry", str, "")
    if registry and normalise_address(registry) is None:
        raise f.fail("registry", f"{registry!r} is not an address (0x and 40 hex digits)")
    f.finish()
    return ChainConfig(kind, ledger, rpc, chain_id, normalise_address(registry) if registry else "")


# --- writing -------------------------------------------------------------------------


def render_swarm_file(cfg: SwarmConfig) -> str:
    """The TOML text of ``cfg``; ``load_swarm_file`` reads it back to an equal config."""
    lines = [
        "# Conclave swarm file: the genesis of one swarm. Give it to anyone who joins.",
        f"# swarm id: {cfg.swarm_id.hex()}",
        "",
        "[swarm]",
        f"name = {_q(cfg.name)}",
        f"topic = {_q(cfg.topic)}",
        f"protocol_version = {cfg.protocol_version}",
        "",
        "[params]",
    ]
    for name in Params.LIMITS:
        lines.append(f"{name} = {getattr(cfg.params, name)!r}")
    lines.append("allowed_models = [" + ", ".join(_q(m) for m in cfg.params.allowed_models) + "]")
    c = cfg.chain
    lines += ["", "# Where checkpoints are anchored (not part of the swarm id).", "[chain]", f"kind = {_q(c.kind)}",
              f"ledger = {_q(c.ledger)}"]
    if c.rpc:
        lines.append(f"rpc = {_q(c.rpc)}")
    if c.chain_id:
        lines.append(f"chain_id = {c.chain_id}")
    if c.registry:
        lines.append(f"registry = {_q(c.registry)}")
    for v in cfg.validators:
        lines += [
            "",
            "[[validators]]",
            f"name = {_q(v.name)}",
            f"peer_id = {_q(v.peer_id)}",
            f"public_key = {_q(v.public_key.hex())}",
            f"power = {v.power}",
            "addrs = [" + ", ".join(_q(a) for a in v.addrs) + "]",
        ] + ([f"chain_address = {_q(v.chain_address)}"] if v.chain_address else [])
    return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    # JSON string escaping is valid TOML basic-string escaping for these characters.
    import json

    return json.dumps(s, ensure_ascii=False)
