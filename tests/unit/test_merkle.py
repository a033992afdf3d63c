"""Merkle trees (RFC 6962 style): known roots, proofs that verify, and forgeries that do not."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.merkle import InclusionProof, inclusion_proof, merkle_root, verify_inclusion


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def L(x: bytes) -> bytes:  # leaf hash, written out
    return sha(b"\x00" + x)


def N(a: bytes, b: bytes) -> bytes:  # node hash, written out
    return sha(b"\x01" + a + b)


def mth(d: list[bytes]) -> bytes:
    """MTH straight from RFC 6962 section 2.1, on list slices: the reference to compare with."""
    if not d:
        return sha(b"")
    if len(d) == 1:
        return L(d[0])
    k = 1
    while k * 2 < len(d):
        k *= 2
    return N(mth(d[:k]), mth(d[k:]))


A, B, C, D, E = (bytes([i]) * 32 for i in range(1, 6))

leaf = st.binary(min_size=32, max_size=32)
distinct_leaves = st.lists(leaf, min_size=1, max_size=33, unique=True)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- roots ------------------------------------------------------------------------


def test_known_roots() -> None:
    assert merkle_root([]) == sha(b"")
    assert merkle_root([A]) == L(A)
    assert merkle_root([A, B]) == N(L(A), L(B))
    assert merkle_root([A, B, C]) == N(N(L(A), L(B)), L(C))
    assert merkle_root([A, B, C, D, E]) == N(N(N(L(A), L(B)), N(L(C), L(D))), L(E))


@given(st.lists(leaf, max_size=70))
def test_root_matches_the_rfc_definition(leaves: list[bytes]) -> None:
    assert merkle_root(leaves) == mth(leaves)


def test_odd_leaf_is_not_duplicated() -> None:
    # CVE-2012-2459: Bitcoin's tree gives [a, b, c] and [a, b, c, c] the same root.
    assert merkle_root([A, B, C]) != merkle_root([A, B, C, C])
    forged = inclusion_proof([A, B, C, C], 3)
    assert verify_inclusion(C, forged, merkle_root([A, B, C, C]))
    assert not verify_inclusion(C, forged, merkle_root([A, B, C]))
    assert not verify_inclusion(C, InclusionProof(3, 4, forged.path), merkle_root([A, B, C]))


def test_a_leaf_cannot_pose_as_an_inner_node() -> None:
    # Without the 0x00/0x01 prefixes, the two-leaf tree's root would be a one-leaf tree
    # over the concatenation; with them the 32-byte "leaf" N(L(A), L(B)) gives another root.
    assert merkle_root([N(L(A), L(B))]) != merkle_root([A, B])


@pytest.mark.parametrize("leaves", [[b"short"], [A, b"\x00" * 33], [A, "a" * 32]])
def test_leaves_must_be_32_bytes(leaves: list) -> None:
    with pytest.raises(LocalProtocolError, match="must be 32 bytes"):
        merkle_root(leaves)
    with pytest.raises(LocalProtocolError, match="must be 32 bytes"):
        inclusion_proof(leaves, 0)


# --- proofs -----------------------------------------------------------------------


def test_known_proofs() -> None:
    assert inclusion_proof([A], 0) == InclusionProof(0, 1, ())
    assert inclusion_proof([A, B, C], 0).path == (L(B), L(C))
    assert inclusion_proof([A, B, C], 2).path == (N(L(A), L(B)),)
    assert inclusion_proof([A, B, C, D, E], 3).path == (L(C), N(L(A), L(B)), L(E))


@pytest.mark.parametrize("index", [-1, 3, 4, True, 1.0])
def test_proof_index_out_of_range(index: object) -> None:
    with pytest.raises(LocalProtocolError):
        inclusion_proof([A, B, C], index)  # type: ignore[arg-type]


def test_no_proof_in_an_empty_tree() -> None:
    with pytest.raises(LocalProtocolError, match="out of range"):
        inclusion_proof([], 0)


@settings(max_examples=60)
@given(distinct_leaves)
def test_every_proof_verifies_and_binds_its_leaf(leaves: list[bytes]) -> None:
    root = merkle_root(leaves)
    for i, x in enumerate(leaves):
        proof = inclusion_proof(leaves, i)
        assert verify_inclusion(x, proof, root)
        assert not any(verify_inclusion(y, proof, root) for j, y in enumerate(leaves) if j != i)


@settings(max_examples=60)
@given(distinct_leaves, st.data())
def test_tampering_makes_a_proof_fail(leaves: list[bytes], data: st.DataObject) -> None:
    root = merkle_root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1), label="index")
    proof = inclusion_proof(leaves, i)
    x = leaves[i]
    bit = data.draw(st.integers(0, 255), label="bit")
    assert not verify_inclusion(flip(x, bit), proof, root)
    assert not verify_inclusion(x, proof, flip(root, bit))
    for k in range(len(proof.path)):
        path = proof.path[:k] + (flip(proof.path[k], bit),) + proof.path[k + 1:]
        assert not verify_inclusion(x, InclusionProof(i, proof.size, path), root)
    for j in range(proof.size):
        if j != i:
            assert not verify_inclusion(x, InclusionProof(j, proof.size, proof.path), root)
    if proof.path:
        assert not verify_inclusion(x, InclusionProof(i, proof.size, proof.path[:-1]), root)
        assert not verify_inclusion(x, InclusionProof(i, proof.size, proof.path[1:]), root)
    extra = data.draw(leaf, label="extra")
    assert not verify_inclusion(x, InclusionProof(i, proof.size, proof.path + (extra,)), root)
    assert not verify_inclusion(x, InclusionProof(i, proof.size, (extra,) + proof.path), root)


@settings(max_examples=60)
@given(distinct_leaves, st.data())
def test_another_size_verifies_only_with_the_same_path_shape(leaves: list[bytes], data: st.DataObject) -> None:
    # The root binds leaf and index, not the size: leaf 0 of 3 and leaf 0 of 4 climb the
    # same way. A changed size fails whenever that size gives a path of another length;
    # the checkpoint binds the size (see test_checkpoint).
    root = merkle_root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1), label="index")
    proof = inclusion_proof(leaves, i)
    size = data.draw(st.integers(i + 1, 2 * len(leaves) + 2).filter(lambda s: s != proof.size), label="size")
    other_length = len(inclusion_proof([leaves[0]] * size, i).path)
    accepted = verify_inclusion(leaves[i], InclusionProof(i, size, proof.path), root)
    if other_length != len(proof.path):
        assert not accepted


def test_changed_size_with_the_same_shape_is_accepted_by_the_root_alone() -> None:
    proof = inclusion_proof([A, B, C], 0)
    assert verify_inclusion(A, InclusionProof(0, 4, proof.path), merkle_root([A, B, C]))
    assert not verify_inclusion(A, InclusionProof(0, 2, proof.path), merkle_root([A, B, C]))
    assert not verify_inclusion(A, InclusionProof(0, 5, proof.path), merkle_root([A, B, C]))


@pytest.mark.parametrize("args", [
    (A[:31], inclusion_proof([A, B], 0), merkle_root([A, B])),
    (A, inclusion_proof([A, B], 0), merkle_root([A, B])[:31]),
    (A, "not a proof", merkle_root([A, B])),
    ("A" * 32, inclusion_proof([A, B], 0), merkle_root([A, B])),
    (None, None, None),
])
def test_verify_returns_false_on_bad_input(args: tuple) -> None:
    assert verify_inclusion(*args) is False


@pytest.mark.parametrize("index, size, path, message", [
    (0, 0, (), "size"),
    (3, 3, (), "index"),
    (-1, 3, (), "index"),
    (True, 3, (), "index"),
    (0, 2**64, (), "size"),
    (0, 2, [A], "tuple"),
    (0, 2, (A[:31],), "32 bytes"),
    (0, 2, (A,) * 65, "at most 64"),
])
def test_proof_validation(index: object, size: object, path: object, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        InclusionProof(index, size, path)  # type: ignore[arg-type]


# --- encoding ---------------------------------------------------------------------


@given(distinct_leaves, st.data())
def test_proof_encode_decode_round_trip(leaves: list[bytes], data: st.DataObject) -> None:
    proof = inclusion_proof(leaves, data.draw(st.integers(0, len(leaves) - 1)))
    wire = proof.encode()
    assert msgpack.unpackb(wire) == [proof.index, proof.size, list(proof.path)]
    assert InclusionProof.decode(wire) == proof


@pytest.mark.parametrize("wire", [
    b"",
    b"\xc1",
    msgpack.packb([0, 1]),
    msgpack.packb([0, 1, [], 9]),
    msgpack.packb([1, 1, []]),
    msgpack.packb([0, 2, [b"x" * 31]]),
    msgpack.packb([0, 2, ["a" * 32]]),
    msgpack.packb([0, 2, A]),
    msgpack.packb({"index": 0}),
    msgpack.packb([0, 1, []]) + b"\x00",
    b"\x93\xcc\x00\x01\x90",  # [0, 1, []] with index spelled as uint8: not canonical
])
def test_proof_decode_rejects_malformed_input(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        InclusionProof.decode(wire)
    assert info.value.reason == "bad_inclusion_proof"


@given(st.binary(max_size=200))
def test_proof_decode_of_garbage_raises_only_remote_errors(wire: bytes) -> None:
    try:
        proof = InclusionProof.decode(wire)
    except RemoteProtocolError as exc:
        assert exc.reason == "bad_inclusion_proof"
    else:
        assert proof.encode() == wire
