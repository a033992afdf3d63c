"""The swarm file: p2p/swarmfile.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from p2p.chainkeys import chain_address
from p2p.errors import ConfigError
from p2p.keys import Identity
from p2p.swarmfile import (
    ChainConfig,
    PROTOCOL_VERSION,
    Params,
    SwarmConfig,
    Validator,
    compute_swarm_id,
    default_topic,
    load_swarm_file,
    multiaddr_problem,
    render_swarm_file,
)

NAMES = ("alice", "bob", "carol", "dave")
IDENTITIES = tuple(Identity(bytes([i + 1]) * 32) for i in range(len(NAMES)))
MODEL = "ab" * 32


def validator(i: int, power: int = 1, name: str | None = None) -> Validator:
    ident = IDENTITIES[i]
    return Validator(
        name or NAMES[i], ident.peer_id, ident.public_key, power, (f"/ip4/127.0.0.1/tcp/{9000 + i}",),
        chain_address(ident.seed),
    )


def make_swarm(n: int = 4, name: str = "test", **params) -> SwarmConfig:
    return SwarmConfig(
        name=name,
        topic=default_topic(name),
        protocol_version=PROTOCOL_VERSION,
        validators=tuple(validator(i) for i in range(n)),
        params=Params(**params),
    )


def write(tmp_path, text: str, filename: str = "swarm.toml"):
    path = tmp_path / filename
    path.write_text(text)
    return path


def good_text() -> str:
    return render_swarm_file(make_swarm(allowed_models=(MODEL,)))


def sections(text: str) -> list[list[str]]:
    """Split TOML text into sections: [preamble], [swarm], [params], [[validators]] x n."""
    out: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.startswith("["):
            out.append([])
        out[-1].append(line)
    return out


def join(secs: list[list[str]]) -> str:
    return "\n".join(line for sec in secs for line in sec) + "\n"


def find_section(secs: list[list[str]], section: str) -> list[str]:
    """``section`` is "swarm", "params" or "validators[i]"."""
    if section.startswith("validators["):
        index = int(section[len("validators[") : -1])
        matching = [s for s in secs if s and s[0] == "[[validators]]"]
        return matching[index]
    return next(s for s in secs if s and s[0] == f"[{section}]")


def set_key(section: str, key: str, value: str | None):
    """An edit: set (or, with None, delete) ``key`` in ``section`` of the good text."""

    def edit(text: str) -> str:
        secs = sections(text)
        sec = find_section(secs, section)
        for j, line in enumerate(sec):
            if line.startswith(f"{key} = "):
                if value is None:
                    del sec[j]
                else:
                    sec[j] = f"{key} = {value}"
                return join(secs)
        assert value is not None, f"{section}.{key} not in the rendered file"
        sec.append(f"{key} = {value}")
        return join(secs)

    return edit


def drop_section(text: str, header: str) -> str:
    return join([s for s in sections(text) if not (s and s[0] == header)])


def drop_validators(text: str) -> str:
    return drop_section(text, "[[validators]]")


def copy_key_of(src: int, dst: int):
    def edit(text: str) -> str:
        secs = sections(text)
        src_sec, dst_sec = find_section(secs, f"validators[{src}]"), find_section(secs, f"validators[{dst}]")
        for key in ("peer_id", "public_key"):
            line = next(line for line in src_sec if line.startswith(f"{key} = "))
            j = next(j for j, line in enumerate(dst_sec) if line.startswith(f"{key} = "))
            dst_sec[j] = line
        return join(secs)

    return edit


def prepend(line: str):
    return lambda text: line + "\n" + text


# --- round trip and swarm id ----------------------------------------------------------


def test_render_then_load_is_the_same_config(tmp_path):
    cfg = make_swarm(allowed_models=(MODEL, "cd" * 32))
    loaded = load_swarm_file(write(tmp_path, render_swarm_file(cfg)))
    assert loaded == cfg
    assert loaded.swarm_id == cfg.swarm_id
    assert loaded.validators[2].public_key == IDENTITIES[2].public_key


def test_round_trip_with_every_parameter_changed(tmp_path):
    params = dict(
        max_message_bytes=4096,
        replay_window=64,
        max_tracked_senders=16,
        client_rate_per_s=0.25,
        client_burst=2,
        status_interval_ms=1000,
        dial_backoff_initial_ms=10,
        dial_backoff_max_ms=100,
        timeout_propose_ms=10,
        timeout_prevote_ms=11,
        timeout_precommit_ms=12,
        timeout_delta_ms=0,
        checkpoint_interval=1,
        motion_deadline_ms=100,
        reveal_timeout_ms=10,
        ballot_rebroadcast_ms=100,
        max_pending_motions=1,
        max_pending_per_sender=1,
        max_resolutions_per_block=1,
        anchor_grace_ms=100,
        allowed_models=(),
    )
    assert set(params) == set(Params.LIMITS) | {"allowed_models"}
    cfg = make_swarm(**params)
    assert load_swarm_file(write(tmp_path, render_swarm_file(cfg))) == cfg


def test_chain_addresses_are_part_of_the_swarm_id_and_read_in_any_case(tmp_path):
    cfg = make_swarm()
    moved = replace(cfg, validators=(replace(cfg.validators[0], chain_address=chain_address(bytes(32))),
                                     *cfg.validators[1:]))
    assert moved.swarm_id != cfg.swarm_id
    text = render_swarm_file(cfg).replace(cfg.validators[2].chain_address, cfg.validators[2].chain_address.lower())
    assert load_swarm_file(write(tmp_path, text)) == cfg  # normalised to the checksummed form
    bare = replace(cfg, validators=tuple(replace(v, chain_address="") for v in cfg.validators))
    assert "chain_address" not in render_swarm_file(bare)
    assert load_swarm_file(write(tmp_path, render_swarm_file(bare), "bare.toml")) == bare


def test_chain_config_round_trips_outside_the_swarm_id_and_the_ledger_is_beside_the_file(tmp_path):
    cfg = make_swarm()
    evm = replace(cfg, chain=ChainConfig("evm", "l.jsonl", "http://127.0.0.1:8545", 31337,
                                         chain_address(IDENTITIES[0].seed)))
    assert evm.swarm_id == cfg.swarm_id
    loaded = load_swarm_file(write(tmp_path, render_swarm_file(evm)))
    assert loaded == evm and loaded.chain.registry == evm.chain.registry
    assert loaded.ledger_path() == tmp_path.resolve() / "l.jsonl"
    assert load_swarm_file(write(tmp_path, render_swarm_file(cfg), "plain.toml")).chain == ChainConfig()


def test_round_trip_of_awkward_strings(tmp_path):
    cfg = replace(make_swarm(n=1), topic='/conclave/"quoted"\\back\tslash/ünï/v1')
    assert cfg.swarm_id != make_swarm(n=1).swarm_id
    assert load_swarm_file(write(tmp_path, render_swarm_file(cfg))) == cfg


def test_round_trip_with_unequal_powers_and_no_addrs(tmp_path):
    vals = tuple(replace(validator(i), power=p, addrs=()) for i, p in enumerate((1, 2, 3, 2**62)))
    cfg = SwarmConfig("powers", default_topic("powers"), PROTOCOL_VERSION, vals)
    loaded = load_swarm_file(write(tmp_path, render_swarm_file(cfg)))
    assert loaded == cfg
    assert loaded.total_power == 6 + 2**62


def test_rendered_file_names_its_swarm_id():
    cfg = make_swarm()
    assert f"# swarm id: {cfg.swarm_id.hex()}" in render_swarm_file(cfg)


def test_topic_defaults_from_the_name(tmp_path):
    text = set_key("swarm", "topic", None)(good_text())
    assert load_swarm_file(write(tmp_path, text)).topic == "/conclave/test/v1"


def test_params_default_when_the_table_is_absent(tmp_path):
    assert load_swarm_file(write(tmp_path, drop_section(good_text(), "[params]"))).params == Params()


def test_lookups_by_key_and_peer_id():
    cfg = make_swarm()
    assert cfg.validator_by_key(IDENTITIES[1].public_key).name == "bob"
    assert cfg.validator_by_peer_id(IDENTITIES[3].peer_id).name == "dave"
    assert cfg.validator_by_key(Identity.generate().public_key) is None
    assert cfg.validator_by_peer_id(Identity.generate().peer_id) is None
    assert cfg.total_power == 4


def test_swarm_id_is_deterministic_and_32_bytes():
    assert make_swarm().swarm_id == make_swarm().swarm_id == compute_swarm_id(make_swarm())
    assert len(make_swarm().swarm_id) == 32


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda vs: vs[:3], id="validator-removed"),
        pytest.param(lambda vs: vs + (replace(vs[0], name="erin", public_key=Identity.generate().public_key),), id="validator-added"),
        pytest.param(lambda vs: (replace(vs[0], power=2),) + vs[1:], id="power-changed"),
        pytest.param(lambda vs: (replace(vs[0], name="alicia"),) + vs[1:], id="name-changed"),
        pytest.param(lambda vs: (replace(vs[0], public_key=Identity.generate().public_key),) + vs[1:], id="key-changed"),
        pytest.param(lambda vs: (vs[1], vs[0]) + vs[2:], id="order-changed"),
    ],
)
def test_swarm_id_changes_with_the_validator_set(change):
    base = make_swarm()
    changed = SwarmConfig(base.name, base.topic, base.protocol_version, change(base.validators), base.params)
    assert changed.swarm_id != base.swarm_id


def test_swarm_id_changes_with_name_and_topic():
    base = make_swarm()
    assert make_swarm(name="other").swarm_id != base.swarm_id
    moved = SwarmConfig(base.name, "/elsewhere", base.protocol_version, base.validators, base.params)
    assert moved.swarm_id != base.swarm_id


def test_swarm_id_ignores_listen_addresses():
    base = make_swarm()
    moved = tuple(replace(v, addrs=("/dns4/example.org/tcp/1",)) for v in base.validators)
    assert SwarmConfig(base.name, base.topic, base.protocol_version, moved, base.params).swarm_id == base.swarm_id


# --- broken files ---------------------------------------------------------------------

BROKEN = [
    # validators
    pytest.param(set_key("validators[1]", "power", "0"), "validators[1].power", id="power-zero"),
    pytest.param(set_key("validators[1]", "power", "-3"), "validators[1].power", id="power-negative"),
    pytest.param(set_key("validators[1]", "power", str(2**62 + 1)), "validators[1].power", id="power-huge"),
    pytest.param(set_key("validators[1]", "power", '"1"'), "validators[1].power", id="power-string"),
    pytest.param(set_key("validators[1]", "power", "true"), "validators[1].power", id="power-bool"),
    pytest.param(set_key("validators[1]", "power", "1.5"), "validators[1].power", id="power-float"),
    pytest.param(set_key("validators[1]", "power", None), "validators[1].power", id="power-missing"),
    pytest.param(
        set_key("validators[0]", "peer_id", f'"{IDENTITIES[1].peer_id}"'), "validators[0].peer_id", id="peer-id-mismatch"
    ),
    pytest.param(set_key("validators[0]", "peer_id", '"12D3KooWnot"'), "validators[0].peer_id", id="peer-id-garbage"),
    pytest.param(set_key("validators[0]", "public_key", '"' + "zz" * 32 + '"'), "validators[0].public_key", id="key-not-hex"),
    pytest.param(set_key("validators[0]", "public_key", '"' + "00" * 31 + '"'), "validators[0].public_key", id="key-short"),
    pytest.param(set_key("validators[0]", "public_key", '"' + "00" * 33 + '"'), "validators[0].public_key", id="key-long"),
    pytest.param(set_key("validators[0]", "public_key", "7"), "validators[0].public_key", id="key-int"),
    pytest.param(set_key("validators[2]", "name", '"alice"'), "validators[2].name", id="name-duplicate"),
    pytest.param(set_key("validators[2]", "name", '"Carol"'), "validators[2].name", id="name-uppercase"),
    pytest.param(set_key("validators[2]", "name", '"carol\\n"'), "validators[2].name", id="name-trailing-newline"),
    pytest.param(set_key("validators[2]", "name", '"-carol"'), "validators[2].name", id="name-leading-dash"),
    pytest.param(set_key("validators[2]", "name", '"' + "c" * 64 + '"'), "validators[2].name", id="name-too-long"),
    pytest.param(copy_key_of(1, 3), "validators[3].public_key", id="key-duplicate"),
    pytest.param(set_key("validators[0]", "addrs", '["localhost:9000"]'), "validators[0].addrs[0]", id="addr-not-multiaddr"),
    pytest.param(
        set_key("validators[0]", "addrs", '["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/udp/9000"]'),
        "validators[0].addrs[1]",
        id="addr-udp",
    ),
    pytest.param(set_key("validators[0]", "addrs", "[9000]"), "validators[0].addrs[0]", id="addr-int"),
    pytest.param(set_key("validators[0]", "addrs", '"/ip4/127.0.0.1/tcp/1"'), "validators[0].addrs", id="addrs-not-list"),
    pytest.param(set_key("validators[1]", "powr", "1"), "validators[1].powr", id="validator-unknown-field"),
    pytest.param(set_key("validators[1]", "chain_address", '"0x1234"'), "validators[1].chain_address",
                 id="chain-address-short"),
    pytest.param(set_key("validators[1]", "chain_address", '"' + "0x" + "g" * 40 + '"'),
                 "validators[1].chain_address", id="chain-address-not-hex"),
    pytest.param(set_key("validators[1]", "chain_address", '"' + chain_address(IDENTITIES[1].seed).swapcase()
                         .replace("0X", "0x") + '"'), "validators[1].chain_address", id="chain-address-bad-checksum"),
    pytest.param(set_key("validators[1]", "chain_address", "7"), "validators[1].chain_address",
                 id="chain-address-int"),
    pytest.param(drop_validators, "validators", id="validators-missing"),
    pytest.param(lambda t: "validators = []\n" + drop_validators(t), "validators", id="validators-empty"),
    pytest.param(lambda t: "validators = [1]\n" + drop_validators(t), "validators[0]", id="validator-not-table"),
    # params
    pytest.param(set_key("params", "max_message_bytes", "2000000"), "params.max_message_bytes", id="max-bytes-high"),
    pytest.param(set_key("params", "max_message_bytes", "100"), "params.max_message_bytes", id="max-bytes-low"),
    pytest.param(set_key("params", "max_message_bytes", "1e5"), "params.max_message_bytes", id="max-bytes-float"),
    pytest.param(set_key("params", "client_rate_per_s", '"fast"'), "params.client_rate_per_s", id="rate-string"),
    pytest.param(set_key("params", "client_rate_per_s", "true"), "params.client_rate_per_s", id="rate-bool"),
    pytest.param(set_key("params", "client_rate_per_s", "nan"), "params.client_rate_per_s", id="rate-nan"),
    pytest.param(set_key("params", "client_rate_per_s", "inf"), "params.client_rate_per_s", id="rate-inf"),
    pytest.param(set_key("params", "replay_window", "8"), "params.replay_window", id="window-small"),
    pytest.param(
        lambda t: set_key("params", "dial_backoff_max_ms", "200")(set_key("params", "dial_backoff_initial_ms", "500")(t)),
        "params.dial_backoff_max_ms",
        id="backoff-max-below-initial",
    ),
    pytest.param(set_key("params", "allowed_models", '["not-a-digest"]'), "params.allowed_models[0]", id="model-not-hex"),
    pytest.param(
        set_key("params", "allowed_models", f'["{MODEL}", "{MODEL.upper()}"]'), "params.allowed_models[1]", id="model-upper"
    ),
    pytest.param(set_key("params", "allowed_models", "[1]"), "params.allowed_models[0]", id="model-int"),
    pytest.param(set_key("params", "allowed_models", f'"{MODEL}"'), "params.allowed_models", id="models-not-list"),
    pytest.param(set_key("params", "tmeout_propose_ms", "3000"), "params.tmeout_propose_ms", id="params-typo"),
    # swarm
    pytest.param(set_key("swarm", "protocol_version", "2"), "swarm.protocol_version", id="version-2"),
    pytest.param(set_key("swarm", "protocol_version", '"1"'), "swarm.protocol_version", id="version-string"),
    pytest.param(set_key("swarm", "protocol_version", None), "swarm.protocol_version", id="version-missing"),
    pytest.param(set_key("swarm", "name", '"Bad Name"'), "swarm.name", id="swarm-name-bad"),
    pytest.param(set_key("swarm", "name", '""'), "swarm.name", id="swarm-name-empty"),
    pytest.param(set_key("swarm", "name", None), "swarm.name", id="swarm-name-missing"),
    pytest.param(set_key("swarm", "topic", '""'), "swarm.topic", id="topic-empty"),
    pytest.param(set_key("swarm", "topic", '"' + "t" * 201 + '"'), "swarm.topic", id="topic-long"),
    pytest.param(set_key("swarm", "colour", '"blue"'), "swarm.colour", id="swarm-unknown-field"),
    pytest.param(lambda t: drop_section(t, "[swarm]"), "swarm", id="swarm-missing"),
    pytest.param(lambda t: "swarm = 5\n" + drop_section(t, "[swarm]"), "swarm", id="swarm-not-table"),
    pytest.param(lambda t: "params = 5\n" + drop_section(t, "[params]"), "params", id="params-not-table"),
    pytest.param(prepend("extra = 1"), "extra", id="top-level-unknown-field"),
    # chain
    pytest.param(set_key("chain", "kind", '"bitcoin"'), "chain.kind", id="chain-kind-unknown"),
    pytest.param(set_key("chain", "kind", '"evm"'), "chain.rpc", id="chain-evm-without-rpc"),
    pytest.param(set_key("chain", "rpc", '"localhost:8545"'), "chain.rpc", id="chain-rpc-not-url"),
    pytest.param(set_key("chain", "registry", '"0x12"'), "chain.registry", id="chain-registry-bad"),
    pytest.param(set_key("chain", "chain_id", "-1"), "chain.chain_id", id="chain-id-negative"),
    pytest.param(set_key("chain", "ledger", '""'), "chain.ledger", id="chain-ledger-empty"),
    pytest.param(set_key("chain", "rpcc", '"http://x"'), "chain.rpcc", id="chain-unknown-field"),
]


@pytest.mark.parametrize(("edit", "field"), BROKEN)
def test_broken_file_names_the_field(tmp_path, edit, field):
    text = edit(good_text())
    assert text != good_text()
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_swarm_file(path)
    message = str(info.value)
    prefix = f"{path}: "
    assert message.startswith(prefix), message
    named = message[len(prefix) :]
    assert named.startswith(f"{field}:") or named.startswith(f"{field} "), message


def test_the_good_text_loads(tmp_path):
    # guards the table above: every row differs from a file that loads
    assert load_swarm_file(write(tmp_path, good_text())).name == "test"


def test_peer_id_mismatch_says_what_was_expected(tmp_path):
    text = set_key("validators[0]", "peer_id", f'"{IDENTITIES[1].peer_id}"')(good_text())
    with pytest.raises(ConfigError) as info:
        load_swarm_file(write(tmp_path, text))
    assert IDENTITIES[0].peer_id in str(info.value)


def test_duplicate_name_names_the_first_holder(tmp_path):
    text = set_key("validators[2]", "name", '"alice"')(good_text())
    with pytest.raises(ConfigError, match=r"validators\[2\]\.name: duplicates validators\[0\]"):
        load_swarm_file(write(tmp_path, text))


def test_not_toml_at_all(tmp_path):
    path = write(tmp_path, "this is [not toml = at all\n")
    with pytest.raises(ConfigError) as info:
        load_swarm_file(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_binary_file_is_not_toml(tmp_path):
    path = tmp_path / "swarm.toml"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_swarm_file(path)


def test_missing_file_names_the_path_and_the_command(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        load_swarm_file(path)
    assert str(path) in str(info.value)
    assert "conclave swarm init" in str(info.value)


@pytest.mark.parametrize(
    ("addr", "ok"),
    [
        ("/ip4/127.0.0.1/tcp/9000", True),
        ("/ip6/::1/tcp/9000", True),
        ("/dns4/example.org/tcp/4001", True),
        ("/ip4/127.0.0.1/udp/9000", False),
        ("/ip4/127.0.0.1", False),
        ("127.0.0.1:9000", False),
        ("", False),
    ],
)
def test_multiaddr_problem(addr, ok):
    problem = multiaddr_problem(addr)
    if ok:
        assert problem is None
    else:
        assert isinstance(problem, str)
        assert repr(addr) in problem


@pytest.mark.parametrize(
    "change",
    [{name: Params.LIMITS[name][1]} for name in Params.LIMITS] + [{"allowed_models": ("ab" * 32,)}],
    ids=[*Params.LIMITS, "allowed_models"],
)
def test_swarm_id_changes_with_every_parameter(change):
    base = make_swarm()
    changed = SwarmConfig(base.name, base.topic, base.protocol_version, base.validators, replace(base.params, **change))
    assert changed.params != base.params
    assert changed.swarm_id != base.swarm_id
