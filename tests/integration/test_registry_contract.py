"""CheckpointRegistry on two chains: eth-tester (py-evm, in process) and anvil (a real
node on 127.0.0.1, started and stopped by pid). The same table of cases on each."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from web3 import EthereumTesterProvider, Web3

from consensus.anchor.anvil import Anvil
from consensus.anchor.digest import checkpoint_digest
from consensus.anchor.evm import AnchorRejected, EvmRegistry
from consensus.checkpoint import Checkpoint, checkpoint_for
from consensus.errors import LocalProtocolError
from p2p.chainkeys import SECP256K1_N, chain_address, chain_private_key, sign_digest

SEEDS = [bytes([0x10 + i]) * 32 for i in range(4)]
OUTSIDER = bytes([0x7F]) * 32
PAYER = bytes([0x42]) * 32
SWARM = hashlib.sha256(b"registry test swarm").digest()
VALSET = hashlib.sha256(b"validator set").digest()


def blocks(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + b"block %d" % i).digest() for i in range(n)]


FIRST = checkpoint_for(SWARM, 1, blocks(10), 1, VALSET, None)
SECOND = checkpoint_for(SWARM, 2, blocks(10, b"2"), 11, VALSET, FIRST)


@dataclass
class Chain:
    w3: Web3
    name: str

    def fund(self, *seeds: bytes) -> None:
        for s in seeds:
            self.w3.eth.send_transaction({"from": self.w3.eth.accounts[0], "to": chain_address(s), "value": 10**18})

    def deploy(self, powers=(1, 1, 1, 1), swarm: bytes = SWARM) -> EvmRegistry:
        return EvmRegistry.deploy(self.w3, swarm, [(chain_address(s), p) for s, p in zip(SEEDS, powers)],
                                  chain_private_key(PAYER))


@pytest.fixture(params=["eth-tester", "anvil"])
def chain(request) -> Iterator[Chain]:
    if request.param == "eth-tester":
        c = Chain(Web3(EthereumTesterProvider()), "eth-tester")
        c.fund(PAYER)
        yield c
    else:
        with Anvil() as node:
            c = Chain(Web3(Web3.HTTPProvider(node.url)), "anvil")
            c.fund(PAYER)
            yield c


def sigs(reg: EvmRegistry, cp: Checkpoint, signers, digest: bytes | None = None) -> list[bytes]:
    d = digest or reg.digest(cp)
    return [sign_digest(SEEDS[i] if isinstance(i, int) else i, d) for i in signers]


def submit(reg: EvmRegistry, cp: Checkpoint, signatures: list[bytes]):
    return reg.submit(cp, signatures, chain_private_key(PAYER))


def rejected(reg: EvmRegistry, cp: Checkpoint, signatures: list[bytes]) -> tuple[str, tuple]:
    with pytest.raises(AnchorRejected) as info:
        submit(reg, cp, signatures)
    return info.value.reason, info.value.error_args


def test_the_python_digest_is_the_contracts(chain: Chain) -> None:
    reg = chain.deploy()
    c = FIRST
    on_chain = reg.contract.functions.digest(c.number, c.first_height, c.last_height, c.root, c.validator_set_hash,
                                             c.prev_checkpoint_hash).call()
    assert bytes(on_chain) == checkpoint_digest(c, chain.w3.eth.chain_id, reg.address) == reg.digest(c)
    assert reg.swarm_id() == SWARM


def test_a_quorum_anchors_checkpoints_in_order(chain: Chain) -> None:
    reg = chain.deploy()
    receipt = submit(reg, FIRST, sigs(reg, FIRST, [3, 0, 2]))  # any order: sorted by signer for the contract
    assert receipt.gas_used > 0 and receipt.block_number >= 1
    assert reg.count() == 1
    got = reg.get(1)
    assert (got.first_height, got.last_height, got.root, got.validator_set_hash, got.prev_checkpoint_hash) == (
        1, 10, FIRST.root, VALSET, FIRST.prev_checkpoint_hash)
    assert got.anchored_at_block == receipt.block_number
    submit(reg, SECOND, sigs(reg, SECOND, [0, 1, 2, 3]))
    assert reg.count() == 2 and reg.get(2).prev_checkpoint_hash == FIRST.hash()
    assert reg.get(3) is None


@pytest.mark.parametrize(("powers", "signers", "ok"), [
    ((1, 1, 1, 1), [0, 1], False),  # 2 of 4
    ((1, 1, 1, 1), [0, 1, 2], True),  # 3 of 4
    ((3, 1, 1, 1), [0, 1], False),  # 4 of 6: exactly 2/3 is not enough
    ((3, 1, 1, 1), [0, 1, 2], True),  # 5 of 6
    ((3, 1, 1, 1), [1, 2, 3], False),  # 3 of 6: more signers, less power
])
def test_more_than_two_thirds_of_the_power_is_needed(chain: Chain, powers, signers, ok) -> None:
    reg = chain.deploy(powers)
    if ok:
        submit(reg, FIRST, sigs(reg, FIRST, signers))
        assert reg.count() == 1
    else:
        reason, args = rejected(reg, FIRST, sigs(reg, FIRST, signers))
        assert reason == "InsufficientPower" and args[1] == sum(powers)


def test_a_signer_counts_once(chain: Chain) -> None:
    reg = chain.deploy()
    two = sigs(reg, FIRST, [0, 1])
    assert rejected(reg, FIRST, two + [two[0]])[0] == "SignersNotAscending"


def test_signatures_for_another_chain_contract_or_swarm_do_not_count(chain: Chain) -> None:
    reg = chain.deploy()
    other_chain = checkpoint_digest(FIRST, chain.w3.eth.chain_id + 1, reg.address)
    assert rejected(reg, FIRST, sigs(reg, FIRST, [0, 1, 2], other_chain))[0] == "UnknownSigner"
    twin = chain.deploy()
    assert rejected(reg, FIRST, sigs(twin, FIRST, [0, 1, 2]))[0] == "UnknownSigner"
    elsewhere = chain.deploy(swarm=hashlib.sha256(b"another swarm").digest())
    assert rejected(elsewhere, FIRST, sigs(reg, FIRST, [0, 1, 2]))[0] == "UnknownSigner"
    assert reg.count() == twin.count() == elsewhere.count() == 0


def test_only_the_next_checkpoint_is_accepted(chain: Chain) -> None:
    reg = chain.deploy()
    assert rejected(reg, SECOND, sigs(reg, SECOND, [0, 1, 2])) == ("WrongCheckpointNumber", (1, 2))  # skipped
    submit(reg, FIRST, sigs(reg, FIRST, [0, 1, 2]))
    assert rejected(reg, FIRST, sigs(reg, FIRST, [0, 1, 2])) == ("WrongCheckpointNumber", (2, 1))  # old
    gap = Checkpoint(SWARM, 2, 12, 20, SECOND.root, VALSET, FIRST.hash())
    assert rejected(reg, gap, sigs(reg, gap, [0, 1, 2]))[0] == "WrongHeights"
    assert reg.count() == 1


def test_outsiders_and_malleated_or_malformed_signatures_are_refused(chain: Chain) -> None:
    reg = chain.deploy()
    good = sigs(reg, FIRST, [0, 1])
    assert rejected(reg, FIRST, good + sigs(reg, FIRST, [OUTSIDER]))[0] == "UnknownSigner"
    sig = sigs(reg, FIRST, [2])[0]
    s = int.from_bytes(sig[32:64], "big")
    high_s = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    assert rejected(reg, FIRST, good + [high_s])[0] == "BadSignature"
    assert rejected(reg, FIRST, good + [sig[:64]])[0] == "BadSignature"


def test_a_bad_validator_list_is_refused_before_deploying(chain: Chain) -> None:
    with pytest.raises(LocalProtocolError):
        EvmRegistry.deploy(chain.w3, SWARM, [(chain_address(SEEDS[0]), 1)] * 2, chain_private_key(PAYER))
    with pytest.raises(LocalProtocolError):
        EvmRegistry.deploy(chain.w3, SWARM, [(chain_address(SEEDS[0]), 0)], chain_private_key(PAYER))
