"""`conclave verify`: prove one decision against the anchored checkpoint, as a stranger
holding only the swarm file would.

Steps, each with its own verdict when it fails:
1. find the decision (by height, or the block that resolved a motion) in a peer's data
   directory or from a running peer over /conclave/sync/1.0.0 (``not_found``);
2. its commit certificate: precommits for this block, at this height, signed by
   validators holding more than 2/3 of the power of the swarm file's set
   (``certificate_invalid``);
3. the checkpoint that covers the height: its blocks must chain by hash to this block,
   and the anchor must hold it (``not_yet_anchored``, ``chain_unreachable``), for this
   swarm and validator set (``wrong_anchor``);
4. the Merkle root of those blocks must be the anchored root (``root_mismatch``), and the
   inclusion proof of this block must verify against it (``not_included``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agents.resolution import decode_payload
from agents.storage import Decision
from agents.valset import consensus_valset
from consensus.anchor.evm import AnchorError
from consensus.checkpoint import Checkpoint
from consensus.errors import LocalProtocolError
from consensus.merkle import InclusionProof, inclusion_proof, merkle_root
from consensus.qc import QuorumCertificate
from consensus.types import Block, VoteType
from p2p.errors import RemoteProtocolError
from p2p.swarmfile import SwarmConfig

REASONS = ("not_found", "certificate_invalid", "not_yet_anchored", "chain_unreachable", "wrong_anchor",
           "root_mismatch", "not_included")

# Reads decisions: (first, last) -> the decisions at those heights, in order (fewer at the tip).
DecisionReader = Callable[[int, int], list[Decision]]


@dataclass(frozen=True, slots=True)
class Verdict:
    valid: bool
    reason: str | None  # one of REASONS when not valid
    detail: str
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"valid": self.valid, "reason": self.reason, "detail": self.detail, **self.evidence}

    def describe(self) -> str:
        head = "VALID" if self.valid else f"INVALID ({self.reason})"
        lines = [f"{head}: {self.detail}"]
        lines += [f"  {k}: {v}" for k, v in self.evidence.items()]
        return "\n".join(lines)


def _invalid(reason: str, detail: str, **evidence) -> Verdict:
    assert reason in REASONS
    return Verdict(False, reason, detail, evidence)


def find(read: DecisionReader, target: str, batch: int = 64) -> Decision | None:
    """The decision at height ``target`` (digits), or the one resolving motion ``target``
    (hex id, or a prefix of at least 8 hex digits)."""
    if target.isdigit():
        found = read(int(target), int(target))
        return found[0] if found else None
    wanted = target.lower()
    first = 1
    while True:
        decisions = read(first, first + batch - 1)
        for d in decisions:
            try:
                ids = [r.motion_id.hex() for r in decode_payload(d.block.payload)]
            except RemoteProtocolError:
                continue
            if any(m.startswith(wanted) for m in ids):
                return d
        if len(decisions) < batch:
            return None
        first += batch


def check_certificate(swarm: SwarmConfig, d: Decision) -> str | None:
    qc: QuorumCertificate = d.certificate
    if qc.type is not VoteType.PRECOMMIT or qc.height != d.height or qc.value != d.block.hash:
        return "the certificate is not for this block at this height"
    if d.block.height != d.height:
        return f"the block says height {d.block.height}, stored at {d.height}"
    return qc.verify(consensus_valset(swarm), swarm.swarm_id)


def verify(swarm: SwarmConfig, read: DecisionReader, target: str, anchor, proof: InclusionProof | None = None,
           ) -> Verdict:
    """The verdict on decision ``target``. ``anchor``: an ``agents.anchoring.AnchorClient``
    (None: the swarm anchors nowhere). ``proof``: check this inclusion proof instead of
    the one computed from the range's blocks (a proof handed over by someone else)."""
    d = find(read, target)
    if d is None:
        return _invalid("not_found", f"no decision {'at height ' if target.isdigit() else 'resolving motion '}"
                        f"{target} in this source")
    block_hash = d.block.hash.hex()
    base = {"height": d.height, "block_hash": block_hash}
    problem = check_certificate(swarm, d)
    if problem:
        return _invalid("certificate_invalid", problem, **base)
    signers = d.certificate.indices()
    base["certificate"] = f"{consensus_valset(swarm).power_of(set(signers))}/{swarm.total_power} of the power " \
                          f"({', '.join(swarm.validators[i].name for i in signers)})"
    k = swarm.params.checkpoint_interval
    number = (d.height - 1) // k + 1
    first, last = (number - 1) * k + 1, number * k
    base["checkpoint"] = f"{number} (heights {first}..{last})"
    if anchor is None:
        return _invalid("not_yet_anchored", "this swarm anchors nowhere ([chain] kind = \"none\")", **base)
    blocks = _range(read, first, last)
    if len(blocks) < last - first + 1:
        return _invalid("not_yet_anchored", f"the swarm has not decided height {last} yet, which closes "
                        f"checkpoint {number}", **base)
    for a, b in zip(blocks, blocks[1:]):
        if b.prev_hash != a.hash:
            return _invalid("root_mismatch", f"the blocks at {a.height} and {b.height} do not chain", **base)
    try:
        count = anchor.count()
        record = anchor.get(number) if count >= number else None
    except (AnchorError, OSError) as exc:
        return _invalid("chain_unreachable", f"{anchor.name}: {exc}", **base)
    if record is None:
        return _invalid("not_yet_anchored", f"{anchor.name} holds {count} checkpoint(s), not {number} yet", **base)
    evidence = {**base, "anchor": anchor.name, "anchored_root": record.root.hex(),
                "anchored_at": record.anchored_at_block, "submitter": record.submitter}
    if (record.first_height, record.last_height) != (first, last):
        return _invalid("wrong_anchor", f"the anchored checkpoint covers {record.first_height}.."
                        f"{record.last_height}, not {first}..{last}", **evidence)
    if record.validator_set_hash != consensus_valset(swarm).hash():
        return _invalid("wrong_anchor", "the anchored checkpoint names another validator set", **evidence)
    hashes = [b.hash for b in blocks]
    if merkle_root(hashes) != record.root:
        return _invalid("root_mismatch", "the blocks this source holds for the checkpoint's heights do not "
                        "hash to the anchored root", **evidence)
    proof = proof or inclusion_proof(hashes, d.height - first)
    try:
        anchored = Checkpoint(swarm.swarm_id, number, first, last, record.root, record.validator_set_hash,
                              record.prev_checkpoint_hash)
    except LocalProtocolError as exc:  # what the anchor holds is not a well-formed checkpoint
        return _invalid("wrong_anchor", f"the anchored checkpoint is malformed: {exc}", **evidence)
    if not anchored.includes(d.height, d.block.hash, proof):  # index, size and path against the root
        return _invalid("not_included", "the inclusion proof does not lead from this block to the anchored root",
                        **evidence)
    motions = []
    try:
        motions = [f"{r.motion_id.hex()[:12]} -> {r.outcome}" for r in decode_payload(d.block.payload)]
    except RemoteProtocolError:
        pass
    evidence["proof"] = proof.encode().hex()
    if motions:
        evidence["motions"] = "; ".join(motions)
    return Verdict(True, None, f"decision at height {d.height} is certified and anchored in checkpoint {number}",
                   evidence)


def _range(read: DecisionReader, first: int, last: int, batch: int = 64) -> list[Block]:
    out: list[Block] = []
    for start in range(first, last + 1, batch):
        got = read(start, min(last, start + batch - 1))
        out += [d.block for d in got]
        if len(got) < min(last, start + batch - 1) - start + 1:
            break
    return out
