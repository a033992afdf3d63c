"""The ``consensus/`` package is a pure state machine: no clock, no randomness, no I/O.

Checked with ``ast`` (not regex), so that a comment or a string mentioning ``time`` is
no violation and ``import os.path`` or ``from time import monotonic`` is one. The one
documented exception is ``consensus/anchor/`` (chain anchors do I/O). A second check
keeps libp2p behind ``p2p/``: nothing else imports it directly.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSENSUS = ROOT / "consensus"
ANCHOR = CONSENSUS / "anchor"

IMPURE = frozenset({
    "trio", "time", "random", "socket", "asyncio", "threading", "libp2p", "os", "subprocess",
    "datetime", "secrets", "requests", "urllib", "select", "selectors",
})
_DYNAMIC_IMPORTERS = {"__import__", "import_module"}  # __import__("x"), importlib.import_module("x")


def imported_modules(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, top-level module) for every absolute import in ``source``.

    Covers ``import a.b``, ``from a.b import c`` and dynamic imports by a constant name;
    relative imports (``from . import x``, ``from .a import b``) stay inside the package
    and are left out.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            first = node.args[0]
            if name in _DYNAMIC_IMPORTERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value.split(".")[0]))
    return sorted(found)


def forbidden_imports(source: str, forbidden: Iterable[str] = IMPURE, filename: str = "<string>") -> list[tuple[int, str]]:
    banned = set(forbidden)
    return [(line, mod) for line, mod in imported_modules(source, filename) if mod in banned]


def python_files(directory: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    skipped = [e.resolve() for e in exclude]
    return sorted(
        p for p in directory.rglob("*.py")
        if not any(p.resolve().is_relative_to(s) for s in skipped) and "__pycache__" not in p.parts
    )


def violations(files: Iterable[Path], forbidden: Iterable[str], root: Path = ROOT) -> list[str]:
    """``file:line: imports mod`` for each forbidden import, paths relative to ``root``."""
    out = []
    for path in files:
        for line, mod in forbidden_imports(path.read_text(), forbidden, str(path)):
            out.append(f"{path.relative_to(root).as_posix()}:{line}: imports {mod}")
    return out


# --- the scanner itself ------------------------------------------------------------


@pytest.mark.parametrize("source, module", [
    ("import time\n", "time"),
    ("from time import monotonic\n", "time"),
    ("import os.path\n", "os"),
    ("from os.path import join\n", "os"),
    ("import urllib.request as r\n", "urllib"),
    ("import json, random\n", "random"),
    ("def f():\n    import trio\n    return trio\n", "trio"),
    ("try:\n    import asyncio\nexcept ImportError:\n    pass\n", "asyncio"),
    ("from libp2p.peer.id import ID\n", "libp2p"),
    ("from datetime import datetime as dt\n", "datetime"),
    ("mod = __import__('secrets')\n", "secrets"),
    ("import importlib\nm = importlib.import_module('socket')\n", "socket"),
])
def test_scanner_detects_impure_import(source: str, module: str) -> None:
    assert module in [mod for _, mod in forbidden_imports(source)]


def test_scanner_reports_the_line_of_each_import() -> None:
    source = "import hashlib\n\nfrom time import monotonic\nimport dataclasses\nimport os, random\n"
    assert forbidden_imports(source) == [(3, "time"), (5, "os"), (5, "random")]


@pytest.mark.parametrize("source", [
    "import hashlib\nfrom dataclasses import dataclass\nfrom typing import Any\n",
    "from . import messages\nfrom .tally import tally\nfrom ..p2p import x\n",  # relative: inside the package
    "import timeit_like_but_not_time as t\nimport osmium\n",  # prefixes of banned names are not banned
    "# import time\nx = 'import random'\n\"\"\"from os import path\"\"\"\n",  # comments and strings
    "from consensus.time_rules import x\nimport consensus.random_beacon\n",  # submodules named alike
    "def f(time, random):\n    return time.monotonic() + random.random()\n",  # names, not imports
])
def test_scanner_accepts_pure_source(source: str) -> None:
    assert forbidden_imports(source) == []


def test_violations_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "consensus").mkdir()
    (tmp_path / "consensus" / "state.py").write_text("import hashlib\nimport time\n\nfrom os import environ\n")
    (tmp_path / "consensus" / "pure.py").write_text("from .state import x\n")
    found = violations(python_files(tmp_path), IMPURE, root=tmp_path)
    assert found == ["consensus/state.py:2: imports time", "consensus/state.py:4: imports os"]


def test_python_files_skips_the_excluded_directory(tmp_path: Path) -> None:
    (tmp_path / "anchor").mkdir()
    (tmp_path / "sub").mkdir()
    for rel in ("a.py", "anchor/chain.py", "sub/b.py", "notes.txt"):
        (tmp_path / rel).write_text("import time\n")
    names = [p.relative_to(tmp_path).as_posix() for p in python_files(tmp_path, [tmp_path / "anchor"])]
    assert names == ["a.py", "sub/b.py"]


# --- the project -------------------------------------------------------------------


def test_consensus_package_exists_and_is_scanned() -> None:
    files = python_files(CONSENSUS, [ANCHOR])
    assert CONSENSUS / "__init__.py" in files
    assert all(not f.is_relative_to(ANCHOR) for f in files)


def test_consensus_is_pure() -> None:
    found = violations(python_files(CONSENSUS, [ANCHOR]), IMPURE)
    assert not found, "consensus/ must stay pure (only consensus/anchor/ may do I/O):\n" + "\n".join(found)


def _packages_outside_p2p() -> list[Path]:
    """Every project directory holding Python code, except p2p/ and tests/."""
    skip = {"p2p", "tests", "docs", "build", "dist"}
    return sorted(
        d for d in ROOT.iterdir()
        if d.is_dir() and d.name not in skip and not d.name.startswith(".") and not d.name.endswith(".egg-info")
    )


def test_libp2p_is_imported_only_under_p2p() -> None:
    dirs = _packages_outside_p2p()
    assert ROOT / "agents" in dirs and ROOT / "consensus" in dirs
    files = [f for d in dirs for f in python_files(d)] + sorted(ROOT.glob("*.py"))
    assert any(f.name == "cli.py" for f in files)
    found = violations(files, {"libp2p"})
    assert not found, "libp2p may be imported only under p2p/:\n" + "\n".join(found)


def test_p2p_does_import_libp2p() -> None:
    # The check above would pass vacuously if the scanner missed every libp2p import.
    found = violations(python_files(ROOT / "p2p"), {"libp2p"})
    assert any(v.startswith("p2p/libp2p_net.py:") for v in found)
