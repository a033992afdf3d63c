"""The embedded anchor: a durable, append-only, hash-linked ledger file that several
local processes may share, with the registry contract's checks.

It stands in for a chain when there is none (``make demo``): same digest scheme (so the
same chain-key signatures), same rules (more than 2/3 of the power, each signer once,
the next checkpoint number only, heights continuing), same read API as ``EvmRegistry``.

File format: UTF-8 JSON, one object per line. The first line is the header (format,
ledger id, swarm id, validators with powers); each further line is one anchored
checkpoint with its signatures, the hash of the previous line (``prev``) and its own
position. Appends take an exclusive ``flock`` and are fsynced; a torn last line (a crash
mid-append) is ignored by readers and cut off by the next writer. Tampering with any
line breaks the hash links, which ``verify_file`` reports.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consensus.anchor.digest import checkpoint_digest
from consensus.anchor.evm import AnchorError, Anchored, AnchorRejected
from consensus.checkpoint import Checkpoint
from consensus.errors import LocalProtocolError
from p2p.chainkeys import normalise_address, recover_address
from p2p.durable import fsync_directory

FORMAT = "conclave-ledger/1"
# The ledger's stand-in for a chain id in the signed digest (ASCII "conclave"), far
# from any real chain's, so a ledger signature can never be replayed on a chain.
LEDGER_CHAIN_ID = int.from_bytes(b"conclave", "big")


class LedgerCorrupt(AnchorError):
    """The ledger file is not a valid ledger (a broken hash link, a bad line)."""


@dataclass(frozen=True, slots=True)
class LedgerPosition:
    """Where a checkpoint landed: its line in the file and that line's hash."""

    line: int
    record_hash: str


def _line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        header = self._read()[0]
        self.ledger_id = bytes.fromhex(header["ledger_id"])
        self.swarm_id = bytes.fromhex(header["swarm_id"])
        self.power = {a: p for a, p in header["validators"]}
        self.total_power = sum(self.power.values())
        self.address = "0x" + self.ledger_id[:20].hex()  # the "contract address" in digests

    @classmethod
    def create(cls, path: Path, swarm_id: bytes, validators: Sequence[tuple[str, int]]) -> Ledger:
        """A new ledger file (refuses to overwrite one)."""
        vals = []
        for address, power in validators:
            a = normalise_address(address)
            if a is None or not isinstance(power, int) or power <= 0:
                raise LocalProtocolError(f"bad validator ({address!r}, {power!r})")
            vals.append([a, power])
        if not vals or len({a for a, _ in vals}) != len(vals):
            raise LocalProtocolError("a ledger needs at least one validator, each listed once")
        header = {"format": FORMAT, "ledger_id": os.urandom(32).hex(), "swarm_id": swarm_id.hex(),
                  "validators": vals}
        path = Path(path)
        if path.exists():
            raise LocalProtocolError(f"{path}: already exists; refusing to overwrite a ledger")
        # The peers of one machine share this file and may start together: it must
        # appear whole or not at all. So the header is written and fsynced under a
        # private name, then hard-linked into place, which fails if another got there
        # first (a rename would silently replace theirs).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            with open(tmp, "x") as f:
                f.write(json.dumps(header, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise LocalProtocolError(f"{path}: already exists; refusing to overwrite a ledger") from None
        finally:
            tmp.unlink(missing_ok=True)
        fsync_directory(path.parent)
        return cls(path)

    # --- reading ----------------------------------------------------------------------

    def _read(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise LedgerCorrupt(f"{self.path}: cannot read ({exc.strerror})") from None
        lines = text.split("\n")
        complete = lines[:-1]  # whatever follows the last newline is a torn append
        if not complete:
            raise LedgerCorrupt(f"{self.path}: empty")
        out, prev = [], None
        for i, line in enumerate(complete):
            try:
                doc = json.loads(line)
            except ValueError:
                raise LedgerCorrupt(f"{self.path}: line {i + 1} is not JSON") from None
            if i == 0:
                if doc.get("format") != FORMAT:
                    raise LedgerCorrupt(f"{self.path}: not a {FORMAT} file")
            elif doc.get("prev") != prev or doc.get("number") != i:
                raise LedgerCorrupt(f"{self.path}: line {i + 1} does not link to line {i} (tampered?)")
            prev = _line_hash(line)
            out.append(doc | {"_hash": prev})
        return out

    def digest(self, checkpoint: Checkpoint) -> bytes:
        return checkpoint_digest(checkpoint, LEDGER_CHAIN_ID, self.address)

    def count(self) -> int:
        return len(self._read()) - 1

    def get(self, number: int) -> Anchored | None:
        records = self._read()
        if not 1 <= number < len(records):
            return None
        r = records[number]
        return Anchored(number, r["first_height"], r["last_height"], bytes.fromhex(r["root"]),
                        bytes.fromhex(r["validator_set_hash"]), bytes.fromhex(r["prev_checkpoint_hash"]),
                        number + 1, r["submitter"])  # "anchored at": its line in the file

    def position(self, number: int) -> LedgerPosition | None:
        records = self._read()
        return LedgerPosition(number + 1, records[number]["_hash"]) if 1 <= number < len(records) else None

    # --- writing ----------------------------------------------------------------------

    def submit(self, checkpoint: Checkpoint, signatures: Sequence[bytes], submitter: str) -> LedgerPosition:
        """Append ``checkpoint`` if it passes the registry's checks (``AnchorRejected``
        with the contract's error names otherwise)."""
        with open(self.path, "r+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes
            records = self._read()
            self._check(checkpoint, signatures, records)
            text = f.read()
            end = text.rfind("\n") + 1
            f.seek(end)
            f.truncate()  # a torn line from a crashed writer
            c = checkpoint
            record = {"number": c.number, "first_height": c.first_height, "last_height": c.last_height,
                      "root": c.root.hex(), "validator_set_hash": c.validator_set_hash.hex(),
                      "prev_checkpoint_hash": c.prev_checkpoint_hash.hex(),
                      "signatures": [s.hex() for s in signatures], "submitter": submitter,
                      "prev": records[-1]["_hash"]}
            line = json.dumps(record, sort_keys=True)
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        return LedgerPosition(c.number + 1, _line_hash(line))

    def _check(self, c: Checkpoint, signatures: Sequence[bytes], records: list[dict]) -> None:
        count = len(records) - 1
        if c.swarm_id != self.swarm_id:
            raise AnchorRejected("WrongSwarm")
        if c.number != count + 1:
            raise AnchorRejected("WrongCheckpointNumber", (count + 1, c.number))
        expected_first = 1 if count == 0 else records[-1]["last_height"] + 1
        if c.first_height != expected_first or c.last_height < c.first_height:
            raise AnchorRejected("WrongHeights", (expected_first, c.first_height, c.last_height))
        digest = self.digest(c)
        signers, power = set(), 0
        for i, sig in enumerate(signatures):
            signer = recover_address(digest, sig)
            if signer is None:
                raise AnchorRejected("BadSignature", (i,))
            if signer in signers:
                raise AnchorRejected("SignersNotAscending", (i,))  # the contract's name for a repeat
            if signer not in self.power:
                raise AnchorRejected("UnknownSigner", (i, signer))
            signers.add(signer)
            power += self.power[signer]
        if 3 * power <= 2 * self.total_power:
            raise AnchorRejected("InsufficientPower", (power, self.total_power))
