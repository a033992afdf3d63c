"""Coverage-guided fuzzing of the receive gate with atheris (libFuzzer for Python).

The first byte of an input picks what the rest is: 0, a whole frame as it comes off
the wire; k >= 1, the payload of the k-th message type, sealed by a member so that
the payload decoders run behind a valid signature. The rules are fuzz_gate's: an
uncaught exception or a broken counting rule is a crash, and atheris writes the input
that caused it to ``crash-<hash>`` for replay (``python tests/faults/atheris_gate.py
crash-<hash>``).

    python tests/faults/atheris_gate.py -atheris_runs=100000 [corpus directory ...]

With no corpus directory, it starts from fuzz_gate's corpus of real messages.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["p2p", "agents", "consensus"]):
    from p2p.validation import MessageValidator
    from agents.peer import PEER_DECODERS
    from tests.faults.fuzz_gate import MEMBERS, SWARM, Report, Sealer, build_corpus, judge

CORPUS = build_corpus()
TYPES = sorted({seed.type for seed in CORPUS})
SENDERS = {seed.type: seed.sender for seed in CORPUS}
VALIDATOR = MessageValidator(SWARM, PEER_DECODERS)
SEALER = Sealer()
REPORT = Report()


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % (len(TYPES) + 1), data[1:]
    if mode == 0:
        frame = rest
    else:
        mtype = TYPES[mode - 1]
        frame = SEALER.seal(SENDERS.get(mtype, MEMBERS[0]), int(mtype), rest)
    judge(VALIDATOR, frame, REPORT)


def seed_corpus(directory: Path) -> None:
    """One file per real message: as a payload (its type's mode) and as a frame (mode 0)."""
    for i, seed in enumerate(CORPUS):
        (directory / f"payload-{i}").write_bytes(bytes([TYPES.index(seed.type) + 1]) + seed.payload)
        (directory / f"frame-{i}").write_bytes(b"\x00" + SEALER.seal(seed.sender, int(seed.type), seed.payload))


def main() -> None:
    args = list(sys.argv)
    with tempfile.TemporaryDirectory(prefix="atheris-gate-") as tmp:
        if not any(not a.startswith("-") for a in args[1:]):
            seed_corpus(Path(tmp))
            args.append(tmp)
        atheris.Setup(args, one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
