"""`conclave chain deploy`: put a swarm's CheckpointRegistry on an EVM chain and record
it in the swarm file's ``[chain]`` section, so that every peer anchors there."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from consensus.anchor.evm import AnchorError, EvmRegistry
from p2p.chainkeys import chain_address, chain_private_key
from p2p.errors import ConfigError
from p2p.keys import Identity
from p2p.swarmfile import ChainConfig, SwarmConfig, load_swarm_file, render_swarm_file


def connect(rpc: str):
    from web3 import Web3  # noqa: PLC0415

    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 10}))
    try:
        w3.eth.chain_id
    except Exception as exc:  # requests/web3 raise many types for a node that is not there
        raise ConfigError(f"--rpc {rpc}: no EVM node answers there ({type(exc).__name__})") from None
    return w3


def fund_from_node(w3, addresses: list[str], wei: int = 10**18) -> bool:
    """Give ``addresses`` gas money from the node's first unlocked account (a dev node
    such as anvil has some); False if the node has none."""
    try:
        accounts = w3.eth.accounts
    except Exception:
        return False
    if not accounts:
        return False
    for a in addresses:
        if w3.eth.get_balance(a) < wei // 10:
            w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": accounts[0], "to": a, "value": wei}))
    return True


def deploy(swarm_file: Path, rpc: str, payer: Identity, fund: bool = True) -> SwarmConfig:
    """Deploy the registry for the swarm in ``swarm_file``, paid by ``payer``'s chain key;
    rewrite the file's [chain] to point at it. Returns the updated config."""
    swarm = load_swarm_file(swarm_file)
    missing = [v.name for v in swarm.validators if not v.chain_address]
    if missing:
        raise ConfigError(f"{swarm_file}: validators {', '.join(missing)} have no chain_address")
    w3 = connect(rpc)
    payer_address = chain_address(payer.seed)
    if fund:
        fund_from_node(w3, [payer_address] + [v.chain_address for v in swarm.validators])
    if w3.eth.get_balance(payer_address) == 0:
        raise ConfigError(f"the deploying key's chain address {payer_address} has no funds on {rpc}: send it some")
    try:
        registry = EvmRegistry.deploy(w3, swarm.swarm_id, [(v.chain_address, v.power) for v in swarm.validators],
                                      chain_private_key(payer.seed))
    except AnchorError as exc:
        raise ConfigError(f"deploying the registry failed: {exc}") from None
    updated = replace(swarm, chain=ChainConfig("evm", swarm.chain.ledger, rpc, w3.eth.chain_id, registry.address))
    swarm_file.write_text(render_swarm_file(updated))
    return updated
