"""Key files: one 32-byte ed25519 seed is both the libp2p host identity and the key that
signs envelopes (py-libp2p's ed25519 signatures are PyNaCl's, byte for byte).

A key file is a small TOML document, mode 0600:

    # Conclave identity key. Keep it secret: it is this peer's identity and signing key.
    type = "ed25519"
    seed = "<64 hex digits>"
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing
from nacl.exceptions import BadSignatureError

from p2p.errors import KeyFileError

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_HEADER = "# Conclave identity key. Keep it secret: it is this peer's identity and signing key.\n"


@dataclass(frozen=True, slots=True)
class Identity:
    """A peer's private identity. ``repr`` never shows the seed."""

    seed: bytes = field(repr=False)
    _signing_key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_BYTES:
            raise KeyFileError(f"an ed25519 seed is {SEED_BYTES} bytes")
        object.__setattr__(self, "_signing_key", nacl.signing.SigningKey(self.seed))

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(SEED_BYTES))

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature


class _VerifiedSignatures:
    """Signatures already found valid, keyed by a hash of (key, signature, message).

    The same signed bytes are checked more than once on the way to a decision: a ballot
    when its reveal arrives and again inside every block that carries it, a motion's
    envelope at the gate and again in the block. A hash costs about 1 us, a curve
    check about 60 us. Only successes are kept (a forgery is checked every time), and
    the oldest entries go first once the table is full."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: dict[bytes, None] = {}
        self._lock = threading.Lock()  # the store's and the model's threads verify too

    @staticmethod
    def key(public_key: bytes, message: bytes, signature: bytes) -> bytes:
        return hashlib.sha256(public_key + signature + message).digest()

    def __contains__(self, key: bytes) -> bool:
        return key in self._seen

    def add(self, key: bytes) -> None:
        with self._lock:
            self._seen[key] = None
            if len(self._seen) > self.capacity:
                del self._seen[next(iter(self._seen))]


VERIFIED = _VerifiedSignatures(1 << 16)  # 32-byte keys: about 6 MB when full


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s ed25519 signature of ``message``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    key = VERIFIED.key(public_key, message, signature)
    if key in VERIFIED:
        return True
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    VERIFIED.add(key)
    return True


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (``12D3KooW...``) of an ed25519 public key."""
    # Imported here so that code which only signs does not pay libp2p's import time.
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)).to_base58()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Recover the ed25519 public key from a ``12D3KooW...`` peer id (identity multihash)."""
    from libp2p.crypto.serialization import deserialize_public_key
    from libp2p.peer.id import ID

    try:
        raw = ID.from_base58(peer_id).to_bytes()
    except Exception as exc:  # base58 and multihash raise assorted types
        raise ValueError(f"not a peer id: {peer_id!r}") from exc
    # identity multihash: 0x00, varint length, then the protobuf-encoded public key
    if len(raw) < 2 or raw[0] != 0x00:
        raise ValueError(f"peer id {peer_id!r} does not embed its public key")
    key = deserialize_public_key(raw[2:])
    return key.to_bytes()


def write_key_file(path: Path, identity: Identity) -> None:
    """Write ``identity`` to ``path`` with mode 0600. Refuses to overwrite anything."""
    text = f'{_HEADER}type = "ed25519"\nseed = "{identity.seed.hex()}"\n'
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_key_file(path: Path) -> Identity:
    """Load a key file; refuses one that group or others may read (as ssh does)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file (create one with `conclave keys new {path}`)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; "
            f"a key must be private to its owner (chmod 600 {path})"
        )
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: not a Conclave key file ({exc})") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    if doc.get("type") != "ed25519":
        raise KeyFileError(f"{path}: field 'type' must be \"ed25519\", got {doc.get('type')!r}")
    seed_hex = doc.get("seed")
    try:
        seed = bytes.fromhex(seed_hex) if isinstance(seed_hex, str) else b""
    except ValueError:
        seed = b""
    if len(seed) != SEED_BYTES:
        raise KeyFileError(f"{path}: field 'seed' must be {SEED_BYTES * 2} hex digits")
    return Identity(seed)
