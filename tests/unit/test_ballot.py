"""Ballots and model fingerprints: agents/ballot.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ballot import (
    ASK_SWARM_ID,
    BALLOT_DOMAIN,
    Ballot,
    BallotError,
    BallotFormatError,
    ModelFingerprint,
    Sampling,
    Timings,
    motion_digest,
)
from agents.grammar import MAX_REASON_CHARS, check_reason, grammar_sha256, options_grammar
from agents.prompt import DEFAULT_PERSONA, PROMPT_TEMPLATE_VERSION, persona_sha256
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.keys import Identity
from p2p.messages import MAX_OPTION_LEN, MAX_OPTIONS, NO_SUPERMAJORITY

ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(1, 33)))
SWARM = hashlib.sha256(b"swarm").digest()
OPTIONS = ("approve", "reject")


def fingerprint(**changes) -> ModelFingerprint:
    fp = ModelFingerprint(
        model_sha256="ab" * 32, n_ctx=2048, sampling=Sampling(temperature=0.0, top_k=40, top_p=0.95, seed=7,
                                                              max_tokens=128),
        prompt_template_version=PROMPT_TEMPLATE_VERSION, persona_sha256=persona_sha256(DEFAULT_PERSONA),
        grammar_sha256=grammar_sha256(options_grammar(OPTIONS)), llama_cpp_version="0.3.16",
        model_file="smollm2-135m-instruct.q4_1.gguf",
    )
    return dataclasses.replace(fp, **changes)


def ballot(identity: Identity = ALICE, **changes) -> Ballot:
    fields = dict(swarm_id=SWARM, motion_id=motion_digest("Ship it?", OPTIONS), motion_text="Ship it?",
                  options=OPTIONS, choice="approve", reason="The change is tested.", fingerprint=fingerprint(),
                  timings=Timings(1.5, 20.0, 300.25, 321.75, 42, 30))
    fields.update(changes)
    return Ballot.sign(identity, **fields)


# --- signing --------------------------------------------------------------------------


def test_signed_ballot_verifies_and_is_deterministic():
    b = ballot()
    assert b.verify()
    assert b.voter == ALICE.public_key
    assert b.signing_bytes().startswith(BALLOT_DOMAIN)
    again = ballot()
    assert again.signature == b.signature and again.encode() == b.encode()  # ed25519 is deterministic


def test_signing_bytes_are_the_documented_array():
    b = ballot()
    body = msgpack.unpackb(b.signing_bytes()[len(BALLOT_DOMAIN):], raw=False)
    fp = b.fingerprint
    assert body == [SWARM, b.motion_id, "Ship it?", ["approve", "reject"], "approve", "The change is tested.",
                    [fp.model_sha256, 2048, [0.0, 40, 0.95, 7, 128], PROMPT_TEMPLATE_VERSION, fp.persona_sha256,
                     fp.grammar_sha256, "0.3.16"], ALICE.public_key]
    assert fp.model_file not in b.signing_bytes().decode("latin-1")  # informational only
    assert b"321.75" not in b.signing_bytes() and "timings" not in str(body)


SIGNED_CHANGES = {
    "swarm_id": dict(swarm_id=ASK_SWARM_ID),
    "motion_id": dict(motion_id=bytes(32)),
    "motion_text": dict(motion_text="Ship it now?"),
    "options": dict(options=("reject", "approve")),
    "options_added": dict(options=("approve", "reject", "abstain")),
    "choice": dict(choice="reject"),
    "reason": dict(reason="The change is tested!"),
    "voter": dict(voter=BOB.public_key),
    "signature": dict(signature=bytes(64)),
    "model_sha256": dict(fingerprint=fingerprint(model_sha256="cd" * 32)),
    "n_ctx": dict(fingerprint=fingerprint(n_ctx=4096)),
    "temperature": dict(fingerprint=fingerprint(sampling=Sampling(0.5, 40, 0.95, 7, 128))),
    "top_k": dict(fingerprint=fingerprint(sampling=Sampling(0.0, 41, 0.95, 7, 128))),
    "top_p": dict(fingerprint=fingerprint(sampling=Sampling(0.0, 40, 0.9, 7, 128))),
    "seed": dict(fingerprint=fingerprint(sampling=Sampling(0.0, 40, 0.95, 8, 128))),
    "max_tokens": dict(fingerprint=fingerprint(sampling=Sampling(0.0, 40, 0.95, 7, 129))),
    "prompt_template_version": dict(fingerprint=fingerprint(prompt_template_version="conclave-prompt/2")),
    "persona_sha256": dict(fingerprint=fingerprint(persona_sha256="00" * 32)),
    "grammar_sha256": dict(fingerprint=fingerprint(grammar_sha256="11" * 32)),
    "llama_cpp_version": dict(fingerprint=fingerprint(llama_cpp_version="0.3.17")),
}


@pytest.mark.parametrize("change", SIGNED_CHANGES.values(), ids=SIGNED_CHANGES.keys())
def test_tampering_any_signed_field_breaks_the_signature(change):
    b = ballot()
    tampered = dataclasses.replace(b, **change)  # keeps the old signature
    assert tampered != b
    assert not tampered.verify()
    assert not Ballot.decode(tampered.encode()).verify()
    assert not Ballot.from_json(tampered.to_json()).verify()


def test_unsigned_parts_can_change_without_breaking_the_signature():
    b = ballot()
    other = dataclasses.replace(b, fingerprint=fingerprint(model_file="renamed.gguf"),
                                timings=Timings(0, 0, 0, 0, 0, 0))
    assert other.verify() and other == b  # neither model_file nor timings is compared
    assert other.signing_bytes() == b.signing_bytes()


def test_bit_flip_in_signature_is_detected():
    b = ballot()
    sig = bytearray(b.signature)
    sig[10] ^= 1
    assert not dataclasses.replace(b, signature=bytes(sig)).verify()


# --- round trips ----------------------------------------------------------------------

option_items = st.text(min_size=1, max_size=MAX_OPTION_LEN).filter(lambda o: o.strip() == o and o and o != NO_SUPERMAJORITY)
reasons = st.text(min_size=1, max_size=MAX_REASON_CHARS).filter(lambda r: check_reason(r) is None)


@st.composite
def ballots(draw) -> Ballot:
    options = tuple(draw(st.lists(option_items, min_size=2, max_size=MAX_OPTIONS, unique=True)))
    text = draw(st.text(min_size=1, max_size=500).filter(str.strip))
    sampling = Sampling(draw(st.floats(0, 2)), draw(st.integers(0, 100)), draw(st.floats(0, 1)),
                        draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 4096)))
    fp = fingerprint(sampling=sampling, n_ctx=draw(st.integers(1, 1 << 16)),
                     model_sha256=draw(st.binary(min_size=32, max_size=32)).hex())
    timings = draw(st.none() | st.builds(Timings, st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e6),
                                         st.floats(0, 1e6), st.integers(0, 10**6), st.integers(0, 10**6)))
    return Ballot.sign(draw(st.sampled_from([ALICE, BOB])), swarm_id=draw(st.binary(min_size=32, max_size=32)),
                       motion_id=motion_digest(text, options), motion_text=text, options=options,
                       choice=draw(st.sampled_from(options)), reason=draw(reasons), fingerprint=fp, timings=timings)


@settings(max_examples=100, deadline=None)
@given(b=ballots())
def test_json_round_trip(b):
    back = Ballot.from_json(b.to_json())
    assert back == b and back.verify()
    assert back.timings == b.timings
    assert back.fingerprint.model_file == b.fingerprint.model_file
    assert back.signing_bytes() == b.signing_bytes()


@settings(max_examples=100, deadline=None)
@given(b=ballots())
def test_msgpack_round_trip(b):
    back = Ballot.decode(b.encode())
    assert back == b and back.verify()
    assert back.timings is None  # timings do not travel on the wire
    assert back.encode() == b.encode()


def test_json_layout():
    b = ballot()
    doc = json.loads(b.to_json())
    assert doc["format"] == "conclave-ballot/1"
    assert doc["swarm_id"] == SWARM.hex() and doc["voter"] == ALICE.public_key.hex()
    assert doc["signature"] == b.signature.hex()
    assert doc["choice"] == "approve" and doc["options"] == ["approve", "reject"]
    assert doc["fingerprint"]["sampling"] == {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "seed": 7,
                                              "max_tokens": 128}
    assert doc["timings"] == {"load_ms": 1.5, "prompt_ms": 20.0, "generate_ms": 300.25, "total_ms": 321.75,
                              "prompt_tokens": 42, "cached_tokens": 30}
    assert json.loads(ballot(timings=None).to_json())["timings"] is None


def test_json_timings_are_ignored_by_verification_but_choice_is_not():
    doc = json.loads(ballot().to_json())
    doc["timings"]["total_ms"] = 1.0
    assert Ballot.from_json(json.dumps(doc)).verify()
    del doc["timings"]
    assert Ballot.from_json(json.dumps(doc)).verify()
    doc["choice"] = "reject"
    assert not Ballot.from_json(json.dumps(doc)).verify()


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: "not json", "not a Conclave ballot"),
    (lambda d: [1, 2], "ballot must be a map"),
    (lambda d: {**d, "format": "other/1"}, "field 'format'"),
    (lambda d: {k: v for k, v in d.items() if k != "reason"}, "missing field 'reason'"),
    (lambda d: {**d, "voter": d["voter"].upper()}, "field 'voter' must be lowercase hex"),
    (lambda d: {**d, "voter": d["voter"][:-2]}, "voter must be 32 bytes"),
    (lambda d: {**d, "choice": "maybe"}, "choice 'maybe' is not one of the options"),
    (lambda d: {**d, "options": "approve"}, "'options' must be a list"),
    (lambda d: {**d, "fingerprint": {**d["fingerprint"], "n_ctx": "2048"}}, "n_ctx must be an integer"),
    (lambda d: {**d, "fingerprint": {**d["fingerprint"], "sampling": None}}, "fingerprint.sampling must be a map"),
    (lambda d: {**d, "timings": {"load_ms": 1}}, "timings is missing field 'prompt_ms'"),
    (lambda d: {**d, "timings": {**d["timings"], "total_ms": -1}}, "total_ms must be a number"),
])
def test_from_json_rejects_malformed_documents(mutate, match):
    doc = mutate(json.loads(ballot().to_json()))
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(BallotFormatError, match=match):
        Ballot.from_json(text)


def test_model_file_is_optional_in_json():
    doc = json.loads(ballot().to_json())
    del doc["fingerprint"]["model_file"]
    back = Ballot.from_json(json.dumps(doc))
    assert back.verify() and back.fingerprint.model_file == ""


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def wire(**changes) -> bytes:
    doc = msgpack.unpackb(ballot().encode(), raw=False)
    doc.update(changes)
    return pack({k: v for k, v in doc.items() if v is not None})


@pytest.mark.parametrize(("data", "detail"), [
    (b"\xc1", "not msgpack"),
    (b"", "not msgpack"),
    (pack([1, 2, 3]), "must be a map"),
    (pack({1: 2}), "not msgpack"),  # strict_map_key
    (wire(reason=None), "missing field 'reason'"),
    (wire(voter="ab" * 32), "field 'voter' must be bytes"),
    (wire(signature=b"short"), "signature must be 64 bytes"),
    (wire(choice="maybe"), "not one of the options"),
    (wire(options=["approve"]), "2 to 16 options"),
    (wire(reason="two\nlines"), "one line"),
    (wire(fingerprint={"model_sha256": "zz"}), "fingerprint is missing field 'sampling'"),
    (wire(fingerprint={**fingerprint().to_dict(), "model_sha256": "zz"}), "model_sha256 must be 64 lowercase hex"),
])
def test_decode_rejects_garbage_as_bad_payload(data, detail):
    with pytest.raises(RemoteProtocolError) as info:
        Ballot.decode(data)
    assert info.value.reason is RejectReason.BAD_PAYLOAD
    assert info.value.detail.startswith("ballot:")
    assert re.search(detail, info.value.detail)


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "match"), [
    (dict(choice="maybe"), "choice 'maybe' is not one of the options \\['approve', 'reject'\\]"),
    (dict(choice="Approve"), "not one of the options"),
    (dict(reason=""), "1 to 200 characters"),
    (dict(reason="x" * 201), "1 to 200 characters"),
    (dict(reason="line\nbreak"), "one line"),
    (dict(reason=" padded"), "start with a space"),
    (dict(options=("approve",)), "2 to 16 options"),
    (dict(options=("approve", "approve")), "distinct"),
    (dict(options="ab", choice="a"), "not one str"),
    (dict(motion_text=""), "must not be empty"),
    (dict(motion_text="x" * 4001), "limited to 4000"),
    (dict(motion_text="bad\ud800"), "lone surrogate"),
    (dict(swarm_id=b"short"), "swarm_id must be 32 bytes"),
    (dict(motion_id="00" * 32), "motion_id must be 32 bytes"),
    (dict(fingerprint="fp"), "fingerprint must be a ModelFingerprint"),
    (dict(timings=(1, 2)), "timings must be a Timings"),
])
def test_invalid_ballots_are_rejected(changes, match):
    with pytest.raises(LocalProtocolError, match=match):
        ballot(**changes)


def test_options_must_be_a_tuple_when_constructed_directly():
    b = ballot()
    with pytest.raises(LocalProtocolError, match="options must be a tuple"):
        dataclasses.replace(b, options=["approve", "reject"])


@pytest.mark.parametrize(("changes", "match"), [
    (dict(model_sha256="AB" * 32), "model_sha256 must be 64 lowercase hex"),
    (dict(model_sha256="ab" * 31), "model_sha256 must be 64 lowercase hex"),
    (dict(persona_sha256=""), "persona_sha256"),
    (dict(grammar_sha256=None), "grammar_sha256"),
    (dict(n_ctx=0), "n_ctx must be an integer"),
    (dict(n_ctx=True), "n_ctx must be an integer"),
    (dict(prompt_template_version=""), "prompt_template_version"),
    (dict(llama_cpp_version="0.3\n"), "llama_cpp_version"),
    (dict(model_file="/models/x.gguf"), "model_file must be a file name"),
    (dict(sampling={"temperature": 0}), "sampling must be a Sampling"),
])
def test_invalid_fingerprints_are_rejected(changes, match):
    with pytest.raises(LocalProtocolError, match=match):
        fingerprint(**changes)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(seed=2**32), "seed"),
    (dict(seed=-1), "seed"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(top_k=1.0), "top_k"),
])
def test_invalid_sampling_is_rejected(kwargs, match):
    with pytest.raises(LocalProtocolError, match=match):
        Sampling(**kwargs)


def test_integer_floats_are_stored_as_floats_so_signatures_agree():
    a = fingerprint(sampling=Sampling(temperature=0, top_p=1))
    b = fingerprint(sampling=Sampling(temperature=0.0, top_p=1.0))
    assert type(a.sampling.temperature) is float and type(a.sampling.top_p) is float
    assert ballot(fingerprint=a).signing_bytes() == ballot(fingerprint=b).signing_bytes()


# --- fingerprint diff -----------------------------------------------------------------


def test_diff_names_the_fields_that_differ():
    base = fingerprint()
    assert base.diff(base) == []
    assert base.diff(fingerprint(model_file="other.gguf")) == []  # informational only
    other = fingerprint(sampling=Sampling(0.0, 40, 0.95, 8, 128), grammar_sha256="11" * 32, n_ctx=512)
    assert base.diff(other) == ["n_ctx", "sampling.seed", "grammar_sha256"]
    assert other.diff(base) == base.diff(other)
    everything = ModelFingerprint("cd" * 32, 1, Sampling(1.0, 1, 0.5, 1, 1), "v2", "00" * 32, "11" * 32, "9")
    assert base.diff(everything) == [
        "model_sha256", "n_ctx", "sampling.temperature", "sampling.top_k", "sampling.top_p", "sampling.seed",
        "sampling.max_tokens", "prompt_template_version", "persona_sha256", "grammar_sha256", "llama_cpp_version",
    ]


# --- motion ids outside a swarm -------------------------------------------------------


def test_motion_digest():
    d = motion_digest("Ship it?", OPTIONS)
    assert len(d) == 32 and d == motion_digest("Ship it?", list(OPTIONS))
    assert d != motion_digest("Ship it!", OPTIONS)
    assert d != motion_digest("Ship it?", ("reject", "approve"))
    assert d != motion_digest("Ship it?", ("approve", "reject", "abstain"))
    # domain-separated: not the hash of the bare encoding
    assert d != hashlib.sha256(msgpack.packb(["Ship it?", list(OPTIONS)])).digest()
    assert d == hashlib.sha256(b"conclave/motion/v1\x00" + msgpack.packb(["Ship it?", list(OPTIONS)])).digest()
    with pytest.raises(LocalProtocolError, match="distinct"):
        motion_digest("x", ("a", "a"))
    with pytest.raises(LocalProtocolError, match="must not be empty"):
        motion_digest(" ", OPTIONS)


def test_ask_swarm_id_is_zero_and_error_hierarchy():
    assert ASK_SWARM_ID == bytes(32)
    assert issubclass(BallotFormatError, BallotError)
