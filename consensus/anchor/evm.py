"""The ``CheckpointRegistry`` on any EVM chain, over web3.py.

Blocking (web3's HTTP provider is synchronous): callers on trio run these methods in a
worker thread. Transactions are signed locally with a chain key (``p2p.chainkeys``), so
any node will do, unlocked accounts or not. Every submission is first simulated with
``eth_call``: a refusal comes back as ``AnchorRejected`` naming the contract's own error
(``WrongCheckpointNumber``, ``InsufficientPower``, ...), the same on every backend
(anvil, a public node, or eth-tester in process, whose exceptions differ from web3's).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

from eth_account import Account
from eth_utils import keccak, to_checksum_address
from eth_abi import decode
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3Exception

from consensus.anchor.artifact import registry_artifact
from consensus.anchor.digest import checkpoint_digest
from consensus.checkpoint import Checkpoint
from consensus.errors import ConsensusError, LocalProtocolError
from p2p.chainkeys import recover_address

RECEIPT_TIMEOUT_S = 30.0


class AnchorError(ConsensusError):
    """Base class of the anchoring errors."""


class AnchorRejected(AnchorError):
    """The contract refused the call. ``reason`` is its error's name (or the revert
    message of a ``require``), ``args`` the error's arguments."""

    def __init__(self, reason: str, args: tuple = ()) -> None:
        super().__init__(f"{reason}{args if args else ''}")
        self.reason, self.error_args = reason, args


class ChainUnavailable(AnchorError):
    """The node could not be reached, or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Anchored:
    """A checkpoint as the registry holds it."""

    number: int
    first_height: int
    last_height: int
    root: bytes
    validator_set_hash: bytes
    prev_checkpoint_hash: bytes
    anchored_at_block: int
    submitter: str


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    block_number: int
    gas_used: int


def _custom_errors(abi: list[dict]) -> dict[bytes, tuple[str, list[str]]]:
    out = {}
    for item in abi:
        if item.get("type") == "error":
            types = [i["type"] for i in item["inputs"]]
            out[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types)
    return out


class EvmRegistry:
    def __init__(self, w3: Web3, address: str) -> None:
        art = registry_artifact()
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=art["abi"])
        self._errors = _custom_errors(art["abi"])
        self._chain_id: int | None = None

    # --- deploying --------------------------------------------------------------------

    @classmethod
    def deploy(cls, w3: Web3, swarm_id: bytes, validators: Sequence[tuple[str, int]], key: bytes) -> EvmRegistry:
        """Deploy a registry for ``swarm_id`` and ``validators`` ((address, power), in
        the swarm file's order), paid by ``key``; returns it once mined."""
        art = registry_artifact()
        factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        addresses = [to_checksum_address(a) for a, _ in validators]
        powers = [p for _, p in validators]
        if not addresses or len(set(a.lower() for a in addresses)) != len(addresses):
            raise LocalProtocolError("a registry needs at least one validator, each listed once")
        if not all(isinstance(p, int) and p > 0 for p in powers):
            raise LocalProtocolError("every validator's power must be a positive integer")
        tx = factory.constructor(swarm_id, addresses, powers)
        receipt = _send(w3, tx, key)
        if receipt["contractAddress"] is None:
            raise AnchorRejected("deployment failed")
        return cls(w3, receipt["contractAddress"])

    # --- reading ----------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = _rpc(lambda: self.w3.eth.chain_id)
        return self._chain_id

    def digest(self, checkpoint: Checkpoint) -> bytes:
        return checkpoint_digest(checkpoint, self.chain_id, self.address)

    def count(self) -> int:
        return _rpc(self.contract.functions.checkpointCount().call)

    def get(self, number: int) -> Anchored | None:
        if not 1 <= number <= self.count():
            return None
        c = _rpc(self.contract.functions.getCheckpoint(number).call)
        return Anchored(number, c[0], c[1], bytes(c[2]), bytes(c[3]), bytes(c[4]), c[5], c[6])

    def swarm_id(self) -> bytes:
        return bytes(_rpc(self.contract.functions.swarmId().call))

    # --- writing ----------------------------------------------------------------------

    def submit(self, checkpoint: Checkpoint, signatures: Sequence[bytes], key: bytes) -> Receipt:
        """Anchor ``checkpoint`` with ``signatures`` (65 bytes each, any order: they are
        sorted by signer here, as the contract requires). ``AnchorRejected`` if the
        contract refuses (simulated first, so a refusal costs no gas)."""
        c = checkpoint
        call = self.contract.functions.submit(
            c.number, c.first_height, c.last_height, c.root, c.validator_set_hash, c.prev_checkpoint_hash,
            self.in_signer_order(c, signatures),
        )
        sender = Account.from_key(key).address
        self._simulate(call, sender)
        receipt = _send(self.w3, call, key)
        if receipt["status"] != 1:
            self._simulate(call, sender)  # tells why, if it still fails
            raise AnchorRejected("reverted")
        return Receipt(receipt["transactionHash"].to_0x_hex(), receipt["blockNumber"], receipt["gasUsed"])

    def in_signer_order(self, checkpoint: Checkpoint, signatures: Sequence[bytes]) -> list[bytes]:
        """Sorted by signer address, as the contract requires (unrecoverable ones last:
        the contract will name them)."""
        digest = self.digest(checkpoint)

        def key(sig: bytes) -> int:
            signer = recover_address(digest, sig)
            return int(signer, 16) if signer else 1 << 160

        return sorted(signatures, key=key)

    def _simulate(self, call, sender: str) -> None:
        try:
            call.call({"from": sender})
        except ContractCustomError as exc:
            raise self._decode(exc.data) from None
        except ContractLogicError as exc:
            data = getattr(exc, "data", None)
            if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
                raise self._decode(data) from None
            raise AnchorRejected(str(exc.message or exc).removeprefix("execution reverted: ")) from None
        except Web3Exception as exc:
            raise ChainUnavailable(str(exc)) from None
        except Exception as exc:  # eth-tester raises its own TransactionFailed
            if type(exc).__name__ == "TransactionFailed":
                raise self._decode_text(exc) from None
            raise

    def _decode(self, data: object) -> AnchorRejected:
        raw = bytes.fromhex(data[2:]) if isinstance(data, str) else bytes(data or b"")
        known = self._errors.get(raw[:4])
        if known is None:
            if raw[:4] == bytes.fromhex("08c379a0"):  # Error(string), from require()
                return AnchorRejected(decode(["string"], raw[4:])[0])
            return AnchorRejected("reverted", (raw.hex(),))
        name, types = known
        return AnchorRejected(name, tuple(decode(types, raw[4:])))

    def _decode_text(self, exc: BaseException) -> AnchorRejected:
        # web3's eth-tester provider re-raises with the revert data formatted into a
        # message; the original exception, with the raw bytes, is its __context__.
        seen: BaseException | None = exc
        while seen is not None:
            arg = seen.args[0] if seen.args else None
            if isinstance(arg, BaseException):
                arg = arg.args[0] if arg.args else None
            if isinstance(arg, (bytes, bytearray)):
                return self._decode(bytes(arg))
            seen = seen.__context__
        text = str(exc.args[0] if exc.args else exc).removeprefix("execution reverted: ")
        if text[:2] in ("b'", 'b"'):  # the data as a bytes literal: parse it, never eval it
            try:
                return self._decode(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                pass
        return AnchorRejected(text or "reverted")


def _rpc(fn):
    try:
        return fn()
    except (Web3Exception, OSError) as exc:  # requests' errors are OSErrors
        raise ChainUnavailable(f"{type(exc).__name__}: {exc}") from None


def _send(w3: Web3, call, key: bytes) -> dict:
    """Build, sign with ``key``, send, and wait for the receipt."""
    account = Account.from_key(key)

    def go():
        tx = call.build_transaction({
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": w3.eth.chain_id,
        })
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)

    try:
        return _rpc(go)
    except ChainUnavailable:
        raise
    except TimeExhausted as exc:
        raise ChainUnavailable(f"no receipt within {RECEIPT_TIMEOUT_S}s: {exc}") from None

