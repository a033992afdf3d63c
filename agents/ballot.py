"""Ballots: one agent's signed answer to a motion, with what it takes to replay it.

What is signed (``Ballot.signing_bytes``)::

    b"conclave/ballot/v1\\x00" + msgpack([swarm_id, motion_id, motion_text, [options...],
        choice, reason, fingerprint.signed_fields(), voter])

a msgpack *array* in that fixed order, bytes as bin, floats as float64, so two agents
that produce the same ballot produce the same bytes. Not signed: the fingerprint's
``model_file`` (a file name says nothing about the content; the sha256 does) and the
``timings`` (they differ on every run).

Outside a swarm (``conclave ask``) a ballot uses ``swarm_id = ASK_SWARM_ID`` (32 zero
bytes, which no swarm has) and ``motion_id = motion_digest(text, options)``.

Errors: building an invalid ballot is our misuse (``LocalProtocolError``); undecodable
wire bytes are the peer's fault (``RemoteProtocolError``, ``BAD_PAYLOAD``); a JSON
document that is not a ballot is ``BallotFormatError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

import msgpack

from agents.grammar import MAX_REASON_CHARS, check_options, check_reason
from p2p.errors import ConclaveError, LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature
from p2p.messages import Motion, decode_payload_map

BALLOT_DOMAIN = b"conclave/ballot/v1\x00"
MOTION_DOMAIN = b"conclave/motion/v1\x00"
ID_BYTES = 32
ASK_SWARM_ID = bytes(ID_BYTES)
JSON_FORMAT = "conclave-ballot/1"
_MAX_LABEL = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


class BallotError(ConclaveError):
    """Base class of the ballot and commitment errors."""


class BallotFormatError(BallotError):
    """A JSON document is not a ballot (names the field)."""


# --- field checks (raise LocalProtocolError: whoever built the object misused it) ------


def _fail(msg: str) -> None:
    raise LocalProtocolError(msg)


def _bytes(name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        _fail(f"{name} must be {size} bytes")


def _int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(f"{name} must be an integer from {lo} to {hi}, got {value!r}")


def _float(obj: object, name: str, lo: float, hi: float) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        _fail(f"{name} must be a number from {lo} to {hi}, got {value!r}")
    # 0 and 0.0 pack differently in msgpack: store floats so the signed bytes are canonical.
    object.__setattr__(obj, name, float(value))


def _hex64(name: str, value: object) -> None:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        _fail(f"{name} must be 64 lowercase hex digits, got {value!r}")


def _label(name: str, value: object) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_LABEL or not value.isprintable():
        _fail(f"{name} must be 1 to {_MAX_LABEL} printable characters, got {value!r}")


@dataclass(frozen=True, slots=True)
class Sampling:
    """Decoding parameters. ``temperature == 0.0`` means greedy (then the rest is moot)."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int = 0
    max_tokens: int = 256

    def __post_init__(self) -> None:
        _float(self, "temperature", 0.0, 100.0)
        _int("top_k", self.top_k, 0, 1 << 31)
        _float(self, "top_p", 0.0, 1.0)
        _int("seed", self.seed, 0, (1 << 32) - 1)  # llama.cpp seeds are uint32
        _int("max_tokens", self.max_tokens, 1, 1 << 20)


@dataclass(frozen=True, slots=True)
class ModelFingerprint:
    """What computation produced a ballot: enough to replay it, and to say why not."""

    model_sha256: str
    n_ctx: int
    sampling: Sampling
    prompt_template_version: str
    persona_sha256: str
    grammar_sha256: str
    llama_cpp_version: str
    model_file: str = field(default="", compare=False)  # informational, not signed

    def __post_init__(self) -> None:
        _hex64("model_sha256", self.model_sha256)
        _int("n_ctx", self.n_ctx, 1, 1 << 24)
        if not isinstance(self.sampling, Sampling):
            _fail("sampling must be a Sampling")
        _label("prompt_template_version", self.prompt_template_version)
        _hex64("persona_sha256", self.persona_sha256)
        _hex64("grammar_sha256", self.grammar_sha256)
        _label("llama_cpp_version", self.llama_cpp_version)
        if not isinstance(self.model_file, str) or len(self.model_file) > 255 \
                or "/" in self.model_file or "\\" in self.model_file:
            _fail(f"model_file must be a file name (no directory), got {self.model_file!r}")

    def signed_fields(self) -> list:
        s = self.sampling
        return [self.model_sha256, self.n_ctx, [s.temperature, s.top_k, s.top_p, s.seed, s.max_tokens],
                self.prompt_template_version, self.persona_sha256, self.grammar_sha256, self.llama_cpp_version]

    def diff(self, other: ModelFingerprint) -> list[str]:
        """Names of the signed fields that differ (``sampling.seed`` for nested ones)."""
        out = []
        for f in dataclasses.fields(self):
            if f.name == "model_file":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "sampling":
                out += [f"sampling.{g.name}" for g in dataclasses.fields(Sampling)
                        if getattr(mine, g.name) != getattr(theirs, g.name)]
            elif mine != theirs:
                out.append(f.name)
        return out

    def to_dict(self) -> dict:
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        doc["sampling"] = dataclasses.asdict(self.sampling)
        return doc

    @classmethod
    def from_dict(cls, doc: object) -> ModelFingerprint:
        doc = _need_map(doc, "fingerprint")
        sampling = _need_map(_need(doc, "sampling", "fingerprint"), "fingerprint.sampling")
        kwargs = {name: _need(doc, name, "fingerprint") for name in _FINGERPRINT_FIELDS}
        kwargs["model_file"] = doc.get("model_file", "")
        skw = {name: _need(sampling, name, "fingerprint.sampling") for name in _SAMPLING_FIELDS}
        return cls(sampling=Sampling(**skw), **kwargs)


# Looked up once: every received ballot is decoded with them.
_FINGERPRINT_FIELDS = tuple(f.name for f in dataclasses.fields(ModelFingerprint) if f.name not in ("sampling", "model_file"))
_SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(Sampling))


@dataclass(frozen=True, slots=True)
class Timings:
    """How long a ballot took. Travels beside the ballot in JSON; never signed."""

    load_ms: float
    prompt_ms: float
    generate_ms: float
    total_ms: float
    prompt_tokens: int
    cached_tokens: int

    def __post_init__(self) -> None:
        for name in ("load_ms", "prompt_ms", "generate_ms", "total_ms"):
            _float(self, name, 0.0, 1e12)
        _int("prompt_tokens", self.prompt_tokens, 0, 1 << 31)
        _int("cached_tokens", self.cached_tokens, 0, 1 << 31)


def motion_digest(text: str, options: tuple[str, ...] | list[str]) -> bytes:
    """sha256 of a motion's canonical encoding: the motion id for a ballot outside a swarm."""
    motion = Motion(text=text, options=check_options(options))
    return hashlib.sha256(MOTION_DOMAIN + msgpack.packb([motion.text, list(motion.options)])).digest()


@dataclass(frozen=True, slots=True)
class Ballot:
    swarm_id: bytes
    motion_id: bytes
    motion_text: str
    options: tuple[str, ...]
    choice: str
    reason: str
    fingerprint: ModelFingerprint
    voter: bytes
    signature: bytes
    timings: Timings | None = field(default=None, compare=False)  # not signed, not on the wire

    def __post_init__(self) -> None:
        _bytes("swarm_id", self.swarm_id, ID_BYTES)
        _bytes("motion_id", self.motion_id, ID_BYTES)
        if not isinstance(self.options, tuple):
            _fail("options must be a tuple")
        check_options(self.options)
        Motion(text=self.motion_text, options=self.options)  # the network's limits
        try:
            self.motion_text.encode("utf-8")
        except UnicodeEncodeError:
            _fail("motion_text is not valid unicode (lone surrogate)")
        if self.choice not in self.options:
            _fail(f"choice {self.choice!r} is not one of the options {list(self.options)}")
        problem = check_reason(self.reason, MAX_REASON_CHARS)
        if problem:
            _fail(problem)
        if not isinstance(self.fingerprint, ModelFingerprint):
            _fail("fingerprint must be a ModelFingerprint")
        _bytes("voter", self.voter, PUBLIC_KEY_BYTES)
        _bytes("signature", self.signature, SIGNATURE_BYTES)
        if self.timings is not None and not isinstance(self.timings, Timings):
            _fail("timings must be a Timings or None")

    @classmethod
    def sign(cls, identity: Identity, *, swarm_id: bytes, motion_id: bytes, motion_text: str,
             options: tuple[str, ...], choice: str, reason: str, fingerprint: ModelFingerprint,
             timings: Timings | None = None) -> Ballot:
        unsigned = cls(swarm_id, motion_id, motion_text, check_options(options), choice, reason, fingerprint,
                       identity.public_key, bytes(SIGNATURE_BYTES), timings)
        return dataclasses.replace(unsigned, signature=identity.sign(unsigned.signing_bytes()))

    def signing_bytes(self) -> bytes:
        body = [self.swarm_id, self.motion_id, self.motion_text, list(self.options), self.choice,
                self.reason, self.fingerprint.signed_fields(), self.voter]
        return BALLOT_DOMAIN + msgpack.packb(body, use_bin_type=True)

    def verify(self) -> bool:
        return verify_signature(self.voter, self.signing_bytes(), self.signature)

    def _doc(self, to_bytes) -> dict:
        return {"swarm_id": to_bytes(self.swarm_id), "motion_id": to_bytes(self.motion_id),
                "motion_text": self.motion_text, "options": list(self.options), "choice": self.choice,
                "reason": self.reason, "fingerprint": self.fingerprint.to_dict(),
                "voter": to_bytes(self.voter), "signature": to_bytes(self.signature)}

    @classmethod
    def _from_doc(cls, doc: dict, from_bytes, timings: Timings | None = None) -> Ballot:
        options = _need(doc, "options", "ballot")
        if not isinstance(options, list):
            _fail("field 'options' must be a list")
        return cls(
            from_bytes(doc, "swarm_id"), from_bytes(doc, "motion_id"), _need(doc, "motion_text", "ballot"),
            tuple(options), _need(doc, "choice", "ballot"), _need(doc, "reason", "ballot"),
            ModelFingerprint.from_dict(_need(doc, "fingerprint", "ballot")),
            from_bytes(doc, "voter"), from_bytes(doc, "signature"), timings,
        )

    def to_json(self) -> str:
        """Bytes as lowercase hex; ``timings`` (unsigned) beside the signed fields."""
        doc = {"format": JSON_FORMAT, **self._doc(bytes.hex)}
        doc["timings"] = dataclasses.asdict(self.timings) if self.timings else None
        return json.dumps(doc, ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Ballot:
        try:
            doc = _need_map(json.loads(text), "ballot")
            if doc.get("format") != JSON_FORMAT:
                _fail(f"field 'format' must be {JSON_FORMAT!r}, got {doc.get('format')!r}")
            raw = doc.get("timings")
            timings = None if raw is None else Timings(**{
                f.name: _need(_need_map(raw, "timings"), f.name, "timings") for f in dataclasses.fields(Timings)})
            return cls._from_doc(doc, _hex_field, timings)
        except (ValueError, LocalProtocolError) as exc:  # JSONDecodeError is a ValueError
            raise BallotFormatError(f"not a Conclave ballot: {exc}") from None

    def encode(self) -> bytes:
        """The wire form: a msgpack map of the signed fields (no timings)."""
        return msgpack.packb(self._doc(bytes), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Ballot:
        doc = decode_payload_map(data, "ballot")
        try:
            return cls._from_doc(doc, _bin_field)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"ballot: {exc}") from None


# --- document helpers (missing or mistyped fields are LocalProtocolError, converted) ---


def _need_map(doc: object, what: str) -> dict:
    if not isinstance(doc, dict):
        _fail(f"{what} must be a map")
    return doc


def _need(doc: dict, key: str, what: str) -> object:
    if key not in doc:
        _fail(f"{what} is missing field {key!r}")
    return doc[key]


def _hex_field(doc: dict, key: str) -> bytes:
    value = _need(doc, key, "ballot")
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        _fail(f"field {key!r} must be lowercase hex")
    return bytes.fromhex(value)


def _bin_field(doc: dict, key: str) -> bytes:
    value = _need(doc, key, "ballot")
    if not isinstance(value, bytes):
        _fail(f"field {key!r} must be bytes")
    return value
