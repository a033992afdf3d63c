"""The chain key derived from a validator's seed, and its signatures (p2p/chainkeys.py)."""

from __future__ import annotations

import hashlib

import pytest
from eth_keys import keys
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.chainkeys import (
    SECP256K1_N,
    chain_address,
    chain_private_key,
    normalise_address,
    recover_address,
    sign_digest,
)
from p2p.errors import LocalProtocolError

SEED = bytes(range(32))
DIGEST = hashlib.sha256(b"a checkpoint digest").digest()


def test_derivation_is_deterministic_domain_separated_and_not_the_seed() -> None:
    k = chain_private_key(SEED)
    assert k == chain_private_key(SEED) and k != SEED and k != hashlib.sha256(SEED).digest()
    assert chain_private_key(bytes(32)) != k
    assert 0 < int.from_bytes(k, "big") < SECP256K1_N
    assert chain_address(SEED) == keys.PrivateKey(k).public_key.to_checksum_address()


@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), digest=st.binary(min_size=32, max_size=32))
def test_a_signature_recovers_its_signer_and_is_low_s(seed: bytes, digest: bytes) -> None:
    sig = sign_digest(seed, digest)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2
    assert recover_address(digest, sig) == chain_address(seed)


def test_a_high_s_or_bad_v_or_other_digest_does_not_recover_the_signer() -> None:
    sig = sign_digest(SEED, DIGEST)
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    high = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # the malleated twin
    assert recover_address(DIGEST, high) is None
    assert recover_address(DIGEST, sig[:64] + b"\x01") is None
    assert recover_address(DIGEST, sig[:64]) is None
    other = hashlib.sha256(b"another digest").digest()
    assert recover_address(other, sig) != chain_address(SEED)


@pytest.mark.parametrize("bad", [b"", bytes(31), "not bytes"])
def test_bad_inputs_are_our_misuse(bad) -> None:
    with pytest.raises(LocalProtocolError):
        chain_private_key(bad)
    with pytest.raises(LocalProtocolError):
        sign_digest(SEED, bad)


def test_addresses_are_normalised_and_a_wrong_checksum_refused() -> None:
    a = chain_address(SEED)
    assert normalise_address(a) == a == normalise_address(a.lower()) == normalise_address("0x" + a[2:].upper())
    wrong = a[:2] + a[2:].swapcase()
    assert wrong.lower() != wrong and normalise_address(wrong) is None
    for bad in ("", "0x", a[:-1], a + "0", "1x" + a[2:], None, 7):
        assert normalise_address(bad) is None
