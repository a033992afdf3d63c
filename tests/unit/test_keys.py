"""Key files and identities: p2p/keys.py."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PrivateKey

from p2p.errors import ConfigError, KeyFileError
from p2p.keys import (
    SEED_BYTES,
    Identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
    read_key_file,
    verify_signature,
    write_key_file,
)

FIXED_SEED = bytes(range(32))


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_text_key(path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    os.chmod(path, mode)


# --- round trip and file mode ---------------------------------------------------------


def test_write_then_read_gives_the_same_identity(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "me.key"
    write_key_file(path, ident)
    loaded = read_key_file(path)
    assert loaded == ident
    assert loaded.seed == ident.seed
    assert loaded.public_key == ident.public_key
    assert loaded.peer_id == ident.peer_id


def test_key_file_mode_is_exactly_0600(tmp_path):
    path = tmp_path / "me.key"
    write_key_file(path, Identity.generate())
    assert mode_of(path) == 0o600


def test_key_file_mode_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "me.key"
        write_key_file(path, Identity.generate())
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600


def test_key_file_contents_are_the_documented_toml(tmp_path):
    path = tmp_path / "me.key"
    write_key_file(path, Identity(FIXED_SEED))
    text = path.read_text()
    assert text.startswith("#")
    assert 'type = "ed25519"' in text
    assert f'seed = "{FIXED_SEED.hex()}"' in text


def test_refuses_to_overwrite_and_leaves_the_existing_file_untouched(tmp_path):
    path = tmp_path / "me.key"
    first = Identity.generate()
    write_key_file(path, first)
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as info:
        write_key_file(path, Identity.generate())
    assert str(path) in str(info.value)
    assert "overwrite" in str(info.value)
    assert path.read_bytes() == before
    assert read_key_file(path) == first


def test_refuses_to_overwrite_a_non_key_file_too(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("precious\n")
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(path, Identity.generate())
    assert path.read_text() == "precious\n"


def test_write_into_missing_directory_is_a_key_file_error_naming_the_path(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "me.key"
    with pytest.raises(KeyFileError) as info:
        write_key_file(path, Identity.generate())
    assert str(path) in str(info.value)


def test_key_file_error_is_a_config_error():
    assert issubclass(KeyFileError, ConfigError)


# --- refusing to load -----------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_refuses_a_key_readable_by_group_or_others(tmp_path, mode):
    path = tmp_path / "me.key"
    write_key_file(path, Identity.generate())
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    message = str(info.value)
    assert "chmod 600" in message
    assert str(path) in message
    assert f"{mode:04o}" in message


def test_accepts_a_key_readable_only_by_its_owner(tmp_path):
    path = tmp_path / "me.key"
    ident = Identity.generate()
    write_key_file(path, ident)
    os.chmod(path, 0o400)
    assert read_key_file(path) == ident


def test_missing_key_file_names_the_path_and_the_command(tmp_path):
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "conclave keys new" in message


def test_malformed_key_file_is_a_key_file_error_naming_the_path(tmp_path):
    path = tmp_path / "me.key"
    write_text_key(path, "this is = = not toml [\n")
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    assert str(path) in str(info.value)
    assert "not a Conclave key file" in str(info.value)


def test_binary_garbage_key_file_is_a_key_file_error(tmp_path):
    path = tmp_path / "me.key"
    path.write_bytes(b"\xff\xfe\x00garbage")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not a Conclave key file"):
        read_key_file(path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (f'type = "rsa"\nseed = "{FIXED_SEED.hex()}"\n', "type"),
        (f'seed = "{FIXED_SEED.hex()}"\n', "type"),
        (f'type = 1\nseed = "{FIXED_SEED.hex()}"\n', "type"),
        ('type = "ed25519"\n', "seed"),
        ('type = "ed25519"\nseed = "00"\n', "seed"),
        (f'type = "ed25519"\nseed = "{FIXED_SEED.hex()}00"\n', "seed"),
        (f'type = "ed25519"\nseed = "{FIXED_SEED.hex()[:-1]}"\n', "seed"),
        ('type = "ed25519"\nseed = "' + "zz" * 32 + '"\n', "seed"),
        ('type = "ed25519"\nseed = 12\n', "seed"),
    ],
)
def test_bad_fields_are_named(tmp_path, text, field):
    path = tmp_path / "me.key"
    write_text_key(path, text)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    message = str(info.value)
    assert f"field '{field}'" in message
    assert str(path) in message


def test_identity_rejects_a_seed_of_the_wrong_length():
    with pytest.raises(KeyFileError, match=str(SEED_BYTES)):
        Identity(b"\x00" * 31)
    with pytest.raises(KeyFileError):
        Identity(b"\x00" * 33)


# --- peer ids and signatures ----------------------------------------------------------


def test_peer_id_is_the_libp2p_ed25519_form():
    ident = Identity(FIXED_SEED)
    expected = Ed25519PrivateKey.from_bytes(FIXED_SEED).get_public_key()
    from libp2p.peer.id import ID

    assert ident.peer_id == ID.from_pubkey(expected).to_base58()
    assert ident.peer_id.startswith("12D3KooW")
    assert ident.public_key == expected.to_bytes()


@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_public_key_from_peer_id_inverts_peer_id(seed):
    ident = Identity(seed)
    assert ident.peer_id.startswith("12D3KooW")
    assert peer_id_from_public_key(ident.public_key) == ident.peer_id
    assert public_key_from_peer_id(ident.peer_id) == ident.public_key


@pytest.mark.parametrize("bad", ["", "not-a-peer-id", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"])
def test_public_key_from_peer_id_rejects_non_ed25519_ids(bad):
    with pytest.raises(ValueError):
        public_key_from_peer_id(bad)


@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=512))
def test_signature_is_byte_identical_to_libp2p_host_key(seed, msg):
    ours = Identity(seed).sign(msg)
    theirs = Ed25519PrivateKey.from_bytes(seed).sign(msg)
    assert ours == theirs
    assert len(ours) == 64
    assert verify_signature(Identity(seed).public_key, msg, ours)


def test_verify_signature_rejects_tampering_and_wrong_lengths():
    ident = Identity(FIXED_SEED)
    sig = ident.sign(b"hello")
    assert verify_signature(ident.public_key, b"hello", sig)
    assert not verify_signature(ident.public_key, b"hellp", sig)
    assert not verify_signature(ident.public_key, b"hello", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify_signature(Identity.generate().public_key, b"hello", sig)
    assert not verify_signature(ident.public_key[:31], b"hello", sig)
    assert not verify_signature(ident.public_key, b"hello", sig[:63])


def test_identity_repr_hides_the_seed():
    ident = Identity(FIXED_SEED)
    text = repr(ident)
    assert FIXED_SEED.hex() not in text
    assert repr(FIXED_SEED) not in text
    assert FIXED_SEED.hex() not in str(ident)


def test_generated_identities_differ():
    assert Identity.generate().seed != Identity.generate().seed


# --- memoized verification (p2p.keys.VERIFIED) -----------------------------------------


def fresh_signed(message: bytes | None = None) -> tuple[Identity, bytes, bytes]:
    """A new key and message, so nothing about them is in the global table yet."""
    ident = Identity.generate()
    msg = message if message is not None else b"memo " + os.urandom(16)
    return ident, msg, ident.sign(msg)


class CountingVerifyKey:
    """Stands in for nacl's VerifyKey and counts the curve checks."""

    calls = 0
    real = None  # nacl's VerifyKey, set by the fixture before it is patched

    def __init__(self, key: bytes) -> None:
        self._inner = self.real(key)

    def verify(self, message: bytes, signature: bytes):
        type(self).calls += 1
        return self._inner.verify(message, signature)


@pytest.fixture
def curve_checks(monkeypatch):
    """Counts p2p.keys' curve checks (only its own view of nacl is patched)."""
    import types

    import nacl.signing

    import p2p.keys

    counter = type("Counter", (CountingVerifyKey,), {"calls": 0, "real": nacl.signing.VerifyKey})
    signing = types.SimpleNamespace(SigningKey=nacl.signing.SigningKey, VerifyKey=counter)
    monkeypatch.setattr(p2p.keys, "nacl", types.SimpleNamespace(signing=signing))
    return counter


def test_a_valid_signature_verifies_twice_the_second_time_from_the_table(curve_checks):
    from p2p.keys import VERIFIED, _VerifiedSignatures

    ident, msg, sig = fresh_signed()
    key = _VerifiedSignatures.key(ident.public_key, msg, sig)
    assert key not in VERIFIED
    assert verify_signature(ident.public_key, msg, sig)
    assert key in VERIFIED
    assert curve_checks.calls == 1
    assert verify_signature(ident.public_key, msg, sig)
    assert curve_checks.calls == 1  # answered from the table
    assert VERIFIED.key(ident.public_key, msg, sig) == key


def test_a_forged_signature_is_never_memoized_and_stays_false(curve_checks):
    from p2p.keys import VERIFIED

    ident, msg, sig = fresh_signed()
    forgeries = [
        Identity.generate().sign(msg),  # someone else's signature
        sig[:-1] + bytes([sig[-1] ^ 1]),  # one bit flipped
        bytes(64),
        b"\xff" * 64,
    ]
    for forged in forgeries:
        for _ in range(3):
            assert not verify_signature(ident.public_key, msg, forged)
        assert VERIFIED.key(ident.public_key, msg, forged) not in VERIFIED
    assert curve_checks.calls == 3 * len(forgeries)  # checked every time
    # Wrong lengths never reach the curve nor the table.
    assert not verify_signature(ident.public_key, msg, sig[:63])
    assert not verify_signature(ident.public_key[:31], msg, sig)
    assert VERIFIED.key(ident.public_key, msg, sig[:63]) not in VERIFIED
    assert curve_checks.calls == 3 * len(forgeries)


def test_a_memoized_signature_is_false_for_another_message_or_key():
    from p2p.keys import VERIFIED

    ident, msg, sig = fresh_signed()
    assert verify_signature(ident.public_key, msg, sig)
    for other in (msg + b"\x00", msg[:-1], b"", b"memo"):
        assert not verify_signature(ident.public_key, other, sig)
        assert VERIFIED.key(ident.public_key, other, sig) not in VERIFIED
    assert not verify_signature(Identity.generate().public_key, msg, sig)
    # Moving bytes between the signature and the message does not alias a table entry.
    assert not verify_signature(ident.public_key, sig[-1:] + msg, sig[:-1] + msg[:1])
    assert verify_signature(ident.public_key, msg, sig)


def test_the_table_evicts_the_oldest_first():
    from p2p.keys import _VerifiedSignatures

    table = _VerifiedSignatures(capacity=3)
    keys = [bytes([i]) * 32 for i in range(6)]
    for k in keys[:3]:
        table.add(k)
    assert all(k in table for k in keys[:3])
    table.add(keys[3])
    assert keys[0] not in table
    assert all(k in table for k in keys[1:4])
    table.add(keys[1])  # already there: no growth, and it keeps its place (first in, first out)
    assert all(k in table for k in keys[1:4])
    table.add(keys[4])
    assert keys[1] not in table
    assert all(k in table for k in keys[2:5])
    table.add(keys[5])
    assert [k in table for k in keys] == [False, False, False, True, True, True]


def test_an_evicted_signature_still_verifies(monkeypatch, curve_checks):
    import p2p.keys
    from p2p.keys import _VerifiedSignatures

    monkeypatch.setattr(p2p.keys, "VERIFIED", _VerifiedSignatures(capacity=2))
    signed = [fresh_signed() for _ in range(3)]
    for ident, msg, sig in signed:
        assert verify_signature(ident.public_key, msg, sig)
    assert curve_checks.calls == 3
    ident, msg, sig = signed[0]  # evicted by the third
    assert p2p.keys.VERIFIED.key(ident.public_key, msg, sig) not in p2p.keys.VERIFIED
    assert verify_signature(ident.public_key, msg, sig)
    assert curve_checks.calls == 4
    ident, msg, sig = signed[2]  # still there
    assert verify_signature(ident.public_key, msg, sig)
    assert curve_checks.calls == 4


def test_the_global_table_is_bounded():
    from p2p.keys import VERIFIED

    assert VERIFIED.capacity == 1 << 16
