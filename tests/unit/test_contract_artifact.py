"""The committed CheckpointRegistry artifact is what the committed source compiles to
(solcjs from npm, pinned in package.json; installed by `make setup`)."""

from __future__ import annotations

import hashlib
import json
import subprocess

from consensus.anchor.artifact import ARTIFACT, COMPILER, SOURCE, registry_artifact


def test_the_committed_bytecode_is_what_the_committed_source_compiles_to() -> None:
    res = subprocess.run(["node", str(COMPILER)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"solcjs failed:\n{res.stderr}"
    fresh = json.loads(res.stdout)
    committed = registry_artifact()
    assert fresh["sourceSha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    assert committed["sourceSha256"] == fresh["sourceSha256"], (
        f"{SOURCE.name} changed since {ARTIFACT.name} was built: run `node {COMPILER} > {ARTIFACT}`")
    assert committed["compiler"] == fresh["compiler"]
    assert committed["bytecode"] == fresh["bytecode"]
    assert committed["deployedBytecode"] == fresh["deployedBytecode"]
    assert committed["abi"] == fresh["abi"]


def test_the_artifact_has_what_the_anchor_uses() -> None:
    names = {item.get("name") for item in registry_artifact()["abi"]}
    assert {"submit", "digest", "checkpointCount", "getCheckpoint", "swarmId", "validators",
            "CheckpointAnchored", "InsufficientPower", "WrongCheckpointNumber"} <= names
