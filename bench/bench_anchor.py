"""Anchoring costs, side by side in one run, on a fresh anvil started here:

- gas per checkpoint for 4, 7 and 16 validators (a quorum's signatures, each checked by
  ecrecover in the contract), and the gas per signature;
- submit-to-receipt latency on anvil (median and p90 over the run);
- time to verify one decision (certificate, Merkle proof, the anchored checkpoint read
  back over JSON-RPC), and, beside it, against the embedded ledger.

Writes bench/results/anchor.json; the last line is the headline figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nacl.signing  # noqa: E402
from web3 import Web3  # noqa: E402

from agents.anchoring import EvmClient, LedgerClient  # noqa: E402
from agents.storage import Decision  # noqa: E402
from agents.valset import consensus_valset  # noqa: E402
from agents.verify import verify  # noqa: E402
from consensus.anchor.anvil import Anvil  # noqa: E402
from consensus.anchor.evm import EvmRegistry  # noqa: E402
from consensus.checkpoint import checkpoint_for  # noqa: E402
from consensus.qc import QuorumCertificate  # noqa: E402
from consensus.types import Block, SignedVote, Vote, VoteType  # noqa: E402
from p2p.chainkeys import chain_address, chain_private_key, sign_digest  # noqa: E402
from p2p.keys import Identity  # noqa: E402
from p2p.swarmfile import PROTOCOL_VERSION, ChainConfig, Params, SwarmConfig, Validator, default_topic  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "anchor.json"
K = 8  # heights per checkpoint in the verify measurement


def swarm_of(n: int, base_dir: Path, chain: ChainConfig = ChainConfig()) -> tuple[SwarmConfig, list[bytes]]:
    seeds = [hashlib.sha256(b"bench validator %d" % i).digest() for i in range(n)]
    vals = tuple(Validator(f"v{i}", Identity(s).peer_id, Identity(s).public_key, 1, (), chain_address(s))
                 for i, s in enumerate(seeds))
    return SwarmConfig("bench", default_topic("bench"), PROTOCOL_VERSION, vals, Params(checkpoint_interval=K),
                       chain, base_dir), seeds


def quorum(n: int) -> int:
    return 2 * n // 3 + 1


def fund(w3: Web3, addresses) -> None:
    for a in addresses:
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": a,
                                                                      "value": 10**18}))


def gas_and_latency(w3: Web3, n: int, checkpoints: int, payer: bytes) -> dict:
    swarm, seeds = swarm_of(n, Path("."))
    reg = EvmRegistry.deploy(w3, swarm.swarm_id, [(chain_address(s), 1) for s in seeds], payer)
    gas, latency, prev = [], [], None
    for number in range(1, checkpoints + 1):
        blocks = [hashlib.sha256(b"%d %d" % (number, i)).digest() for i in range(K)]
        cp = checkpoint_for(swarm.swarm_id, number, blocks, (number - 1) * K + 1, consensus_valset(swarm).hash(), prev)
        d = reg.digest(cp)
        sigs = [sign_digest(s, d) for s in seeds[: quorum(n)]]
        start = time.perf_counter()
        receipt = reg.submit(cp, sigs, payer)
        latency.append((time.perf_counter() - start) * 1000)
        gas.append(receipt.gas_used)
        prev = cp
    # The first checkpoint also pays for new storage slots of the array: report both.
    return {"validators": n, "signatures": quorum(n), "gas_first": gas[0], "gas_steady": statistics.median(gas[1:]),
            "gas_per_signature": round(statistics.median(gas[1:]) / quorum(n)),
            "submit_to_receipt_ms_p50": statistics.median(latency),
            "submit_to_receipt_ms_p90": sorted(latency)[int(0.9 * (len(latency) - 1))]}


def chain_of(swarm: SwarmConfig, seeds: list[bytes], heights: int) -> list[Decision]:
    out, prev = [], swarm.swarm_id
    for h in range(1, heights + 1):
        block = Block(h, prev, Identity(seeds[0]).public_key, b"bench payload %d" % h)
        votes = []
        for i, s in enumerate(seeds[: quorum(len(seeds))]):
            v = Vote(VoteType.PRECOMMIT, h, 0, block.hash, i)
            votes.append(SignedVote(v, nacl.signing.SigningKey(s).sign(v.signing_bytes(swarm.swarm_id)).signature))
        out.append(Decision(h, 0, block, QuorumCertificate.from_votes(votes, len(seeds))))
        prev = block.hash
    return out


def verify_time(anchor, swarm: SwarmConfig, seeds: list[bytes], decisions: list[Decision], rounds: int) -> float:
    cp = checkpoint_for(swarm.swarm_id, 1, [d.block.hash for d in decisions[:K]], 1, consensus_valset(swarm).hash(), None)
    anchor.submit(cp, [sign_digest(s, anchor.digest(cp)) for s in seeds[: quorum(len(seeds))]])
    read = lambda a, b: [d for d in decisions if a <= d.height <= b]  # noqa: E731
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        verdict = verify(swarm, read, str(1 + r % K), anchor)
        times.append((time.perf_counter() - start) * 1000)
        assert verdict.valid, verdict.describe()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,7,16")
    parser.add_argument("--checkpoints", type=int, default=12, help="checkpoints submitted per size")
    parser.add_argument("--verify-rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, verify_ms = [], {}
    with Anvil() as node, tempfile.TemporaryDirectory() as tmp:
        w3 = Web3(Web3.HTTPProvider(node.url))
        payer = chain_private_key(b"\x01" * 32)
        fund(w3, [chain_address(b"\x01" * 32)])
        print(f"{'validators':>10} {'sigs':>5} {'gas first':>10} {'gas steady':>11} {'gas/sig':>8} "
              f"{'receipt p50 ms':>15} {'p90 ms':>7}")
        for n in sizes:
            row = gas_and_latency(w3, n, max(2, args.checkpoints), payer)
            rows.append(row)
            print(f"{n:>10} {row['signatures']:>5} {row['gas_first']:>10} {row['gas_steady']:>11.0f} "
                  f"{row['gas_per_signature']:>8} {row['submit_to_receipt_ms_p50']:>15.1f} "
                  f"{row['submit_to_receipt_ms_p90']:>7.1f}", flush=True)
        # Verifying one decision, against the registry on anvil and against the ledger.
        swarm, seeds = swarm_of(4, Path(tmp))
        registry = EvmRegistry.deploy(w3, swarm.swarm_id, [(chain_address(s), 1) for s in seeds], payer)
        evm_swarm, _ = swarm_of(4, Path(tmp), ChainConfig("evm", "l.jsonl", node.url, w3.eth.chain_id,
                                                          registry.address))
        decisions = chain_of(swarm, seeds, K)
        evm = EvmClient(evm_swarm, payer)
        verify_ms["evm"] = verify_time(evm, evm_swarm, seeds, decisions, args.verify_rounds)
        ledger = LedgerClient(Path(tmp) / "ledger.jsonl", swarm, "bench")
        verify_ms["ledger"] = verify_time(ledger, swarm, seeds, decisions, args.verify_rounds)
    print(f"verify one decision: {verify_ms['evm']:.1f} ms against anvil, {verify_ms['ledger']:.1f} ms against "
          f"the ledger (ratio {verify_ms['evm'] / verify_ms['ledger']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "checkpoint anchoring on anvil (gas, submit-to-receipt) and verifying one decision",
        "python": platform.python_version(), "machine": platform.machine(), "heights_per_checkpoint": K,
        "results": rows, "verify_one_decision_ms": {k: round(v, 2) for k, v in verify_ms.items()},
    }, indent=2) + "\n")
    lo, hi = rows[0], rows[-1]
    marginal = (hi["gas_steady"] - lo["gas_steady"]) / max(1, hi["signatures"] - lo["signatures"])
    print(f"headline: {hi['gas_steady']:.0f} gas per checkpoint at {hi['validators']} validators, "
          f"{marginal:.0f} gas per extra signature; submit-to-receipt p50 "
          f"{statistics.median(r['submit_to_receipt_ms_p50'] for r in rows):.1f} ms; "
          f"verify one decision {verify_ms['evm']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
