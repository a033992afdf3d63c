"""The compiled ``CheckpointRegistry`` (committed beside its source; see compile.mjs)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "CheckpointRegistry.sol"
ARTIFACT = HERE / "CheckpointRegistry.json"
COMPILER = HERE / "compile.mjs"


@cache
def registry_artifact() -> dict:
    """``abi``, ``bytecode`` (creation), ``deployedBytecode``, ``compiler``, ``settings``."""
    return json.loads(ARTIFACT.read_text())
