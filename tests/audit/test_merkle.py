"""RFC 9162 Merkle tree: the public probe vectors, known answers, and exhaustive proofs."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import ProofError
from audit.merkle import (
    EMPTY_ROOT,
    MerkleAccumulator,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The repository is checked out beside ``shared/``; SATCHEL_TEST_SHARED_DIR points elsewhere.
SHARED_DIR = Path(
    os.environ.get("SATCHEL_TEST_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared"
)
VECTORS_DIR = SHARED_DIR / "vectors" / "rfc9162"

# The leaf inputs of the RFC 6962 reference test tree, which the vectors' happy paths use.
RFC6962_INPUTS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
RFC6962_LEAVES = [leaf_hash(entry) for entry in RFC6962_INPUTS]

MAX_EXHAUSTIVE = 128
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(4096)]


def _probe_files(kind: str, pattern: str = "*.json") -> list[Any]:
    """One pytest param per probe file, or one failing placeholder if there are none."""
    files = sorted((VECTORS_DIR / kind).rglob(pattern)) if VECTORS_DIR.is_dir() else []
    if not files:
        return [pytest.param(None, id=f"{kind}-vectors-missing")]
    return [pytest.param(path, id=path.relative_to(VECTORS_DIR).as_posix()) for path in files]


def _load_probe(path: Path | None) -> dict[str, Any]:
    if path is None:
        pytest.fail(
            f"RFC 9162 vectors not found under {VECTORS_DIR}: they are required. Check the "
            "repository out beside shared/ or set SATCHEL_TEST_SHARED_DIR to the shared directory."
        )
    probe: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return probe


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _proof(probe: dict[str, Any]) -> list[bytes]:
    return [_b64(element) for element in probe["proof"] or []]


def _flip_bit(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[(bit // 8) % len(flipped)] ^= 1 << (bit % 8)
    return bytes(flipped)


# Reference definitions written straight from RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1
# (slow, recursive), used as an independent oracle for the real implementation.
def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _k(len(leaves))
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [_mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


@pytest.fixture(scope="module")
def roots() -> list[bytes]:
    """``roots[n]`` is the root of the first ``n`` of ``LEAVES``, up to the exhaustive limit."""
    accumulator = MerkleAccumulator()
    result = [accumulator.root()]
    for leaf in LEAVES[:MAX_EXHAUSTIVE]:
        accumulator.append(leaf)
        result.append(accumulator.root())
    return result


# --- The public probe vectors ---------------------------------------------------------


@pytest.mark.parametrize("path", _probe_files("inclusion"))
def test_inclusion_vector(path: Path | None) -> None:
    probe = _load_probe(path)
    args = (
        _b64(probe["leafHash"]),
        probe["leafIdx"],
        probe["treeSize"],
        _proof(probe),
        _b64(probe["root"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _probe_files("consistency"))
def test_consistency_vector(path: Path | None) -> None:
    probe = _load_probe(path)
    args = (
        probe["size1"],
        probe["size2"],
        _b64(probe["root1"]),
        _b64(probe["root2"]),
        _proof(probe),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


@pytest.mark.parametrize("path", _probe_files("inclusion", "[0-9]/happy-path.json"))
def test_inclusion_proofs_match_the_vectors(path: Path | None) -> None:
    probe = _load_probe(path)
    leaves = RFC6962_LEAVES[: probe["treeSize"]]
    assert leaves[probe["leafIdx"]] == _b64(probe["leafHash"])
    assert root(leaves) == _b64(probe["root"])
    assert inclusion_proof(leaves, probe["leafIdx"]) == _proof(probe)


@pytest.mark.parametrize("path", _probe_files("consistency", "[0-9]/happy-path.json"))
def test_consistency_proofs_match_the_vectors(path: Path | None) -> None:
    probe = _load_probe(path)
    leaves = RFC6962_LEAVES[: probe["size2"]]
    assert root(leaves[: probe["size1"]]) == _b64(probe["root1"])
    assert root(leaves) == _b64(probe["root2"])
    assert consistency_proof(leaves, probe["size1"]) == _proof(probe)


# --- Hashing and roots ----------------------------------------------------------------


def test_hashes_are_domain_separated() -> None:
    left, right = LEAVES[0], LEAVES[1]
    assert leaf_hash(left + right) != node_hash(left, right)
    assert root([]) == EMPTY_ROOT == MerkleTree([]).root() == MerkleAccumulator().root()
    assert root([left]) == left


def test_roots_agree_with_the_rfc_definition() -> None:
    for n in range(MAX_EXHAUSTIVE + 1):
        expected = _mth(LEAVES[:n])
        assert root(LEAVES[:n]) == expected, n
        assert MerkleTree(LEAVES[:n]).root() == expected, n


def test_accumulator_matches_root_after_every_append() -> None:
    accumulator = MerkleAccumulator()
    for n, leaf in enumerate(LEAVES[:1100], start=1):
        accumulator.append(leaf)
        assert accumulator.size == n
        assert accumulator.root() == MerkleTree(LEAVES[:n]).root(), n


def test_accumulator_memory_is_logarithmic() -> None:
    accumulator = MerkleAccumulator()
    accumulator.extend(LEAVES)
    # One stored hash per set bit of the size: 4096 leaves are one perfect subtree.
    assert accumulator.size == len(LEAVES)
    assert len(accumulator._stack) == 1
    accumulator.extend(LEAVES[:7])
    assert len(accumulator._stack) == 4


@pytest.mark.parametrize("height", [0, 1, 2, 3, 5])
def test_chunk_roots_and_partial_stacks_rebuild_every_root(height: int, roots: list[bytes]) -> None:
    # How verification in parallel rebuilds the tree: chunks of 2**height leaves, each
    # rolled up on its own, joined through append_subtree at every size.
    chunk = 1 << height
    prefix = MerkleAccumulator()
    for start in range(0, MAX_EXHAUSTIVE, chunk):
        part = MerkleAccumulator()
        for n, leaf in enumerate(LEAVES[start : start + chunk], start=start + 1):
            part.append(leaf)
            joined = prefix.copy()
            heights = [bit for bit in reversed(range(height + 1)) if part.size >> bit & 1]
            for node, bit in zip(part.stack, heights, strict=True):
                joined.append_subtree(node, bit)
            assert joined.size == n
            assert joined.root() == roots[n], n
        (whole,) = part.stack
        prefix.append_subtree(whole, height)
    assert prefix.root() == roots[prefix.size]


def test_a_misaligned_subtree_is_refused() -> None:
    accumulator = MerkleAccumulator()
    accumulator.extend(LEAVES[:3])
    with pytest.raises(ValueError, match="cannot follow 3"):
        accumulator.append_subtree(LEAVES[5], 1)
    with pytest.raises(ValueError, match="32 bytes"):
        accumulator.append_subtree(b"short", 0)
    assert accumulator.root() == root(LEAVES[:3])


def test_a_copy_is_independent() -> None:
    accumulator = MerkleAccumulator()
    accumulator.extend(LEAVES[:5])
    twin = accumulator.copy()
    twin.append(LEAVES[5])
    assert accumulator.root() == root(LEAVES[:5])
    assert twin.root() == root(LEAVES[:6])


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33])
def test_leaf_hashes_must_be_32_bytes(bad: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleAccumulator().append(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        root([LEAVES[0], bad])
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree([bad])


def test_proof_builders_refuse_sizes_outside_the_tree() -> None:
    leaves = LEAVES[:5]
    for index in (-1, 5):
        with pytest.raises(ValueError):
            inclusion_proof(leaves, index)
    for old_size in (-1, 0, 6):
        with pytest.raises(ValueError):
            consistency_proof(leaves, old_size)
    assert consistency_proof(leaves, 5) == []


# --- Inclusion proofs, exhaustively ---------------------------------------------------


def test_inclusion_proofs_agree_with_the_rfc_definition() -> None:
    for n in range(1, 65):
        tree = MerkleTree(LEAVES[:n])
        for index in range(n):
            assert tree.inclusion_proof(index) == _path(index, LEAVES[:n]), (n, index)


@pytest.mark.parametrize("n", range(1, MAX_EXHAUSTIVE + 1))
def test_inclusion_proofs_verify_and_detect_tampering(n: int, roots: list[bytes]) -> None:
    tree = MerkleTree(LEAVES[:n])
    tree_root = roots[n]
    assert tree.root() == tree_root
    for index in range(n):
        leaf = LEAVES[index]
        proof = tree.inclusion_proof(index)
        verify_inclusion(leaf, index, n, proof, tree_root)

        for position in range(len(proof)):
            # Vary the flipped bit so that the whole run touches every bit position.
            bit = (index * 37 + position * 11 + n) % 256
            tampered = [*proof]
            tampered[position] = _flip_bit(proof[position], bit)
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, n, tampered, tree_root)
        other_indices = {index - 1, index + 1, index ^ 1, n, -1} - {index}
        if n <= 32:
            other_indices |= set(range(n)) - {index}
        for other in sorted(other_indices):
            with pytest.raises(ProofError):
                verify_inclusion(leaf, other, n, proof, tree_root)
        with pytest.raises(ProofError):
            verify_inclusion(_flip_bit(leaf, index), index, n, proof, tree_root)
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, n, proof, _flip_bit(tree_root, index))
        with pytest.raises(ProofError, match="longer"):
            verify_inclusion(leaf, index, n, [*proof, leaf], tree_root)
        if proof:
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, n, proof[:-1], tree_root)


def test_inclusion_rejects_malformed_inputs_with_proof_error() -> None:
    tree = MerkleTree(LEAVES[:6])
    proof = tree.inclusion_proof(2)
    cases: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (LEAVES[2], 2, 6, [*proof[:1], proof[1][:31], *proof[2:]], tree.root()),
        (LEAVES[2][:31], 2, 6, proof, tree.root()),
        (LEAVES[2], 2, 6, proof, tree.root() + b"\x00"),
        (LEAVES[2], 2, -6, proof, tree.root()),
        (LEAVES[2], 2, 0, [], EMPTY_ROOT),
        (LEAVES[2], 2**64 + 2, 6, proof, tree.root()),
    ]
    for args in cases:
        with pytest.raises(ProofError):
            verify_inclusion(*args)


# --- Consistency proofs, exhaustively -------------------------------------------------


def test_consistency_proofs_agree_with_the_rfc_definition() -> None:
    for n in range(1, 65):
        tree = MerkleTree(LEAVES[:n])
        for m in range(1, n + 1):
            expected = _subproof(m, LEAVES[:n], True)
            assert tree.consistency_proof(m) == expected, (m, n)


@pytest.mark.parametrize("n", range(1, MAX_EXHAUSTIVE + 1))
def test_consistency_proofs_verify_and_detect_tampering(n: int, roots: list[bytes]) -> None:
    tree = MerkleTree(LEAVES[:n])
    new_root = roots[n]
    for m in range(1, n + 1):
        old_root = roots[m]
        proof = tree.consistency_proof(m)
        verify_consistency(m, n, old_root, new_root, proof)

        for position in range(len(proof)):
            bit = (m * 37 + position * 11 + n) % 256
            tampered = [*proof]
            tampered[position] = _flip_bit(proof[position], bit)
            with pytest.raises(ProofError):
                verify_consistency(m, n, old_root, new_root, tampered)
        with pytest.raises(ProofError):
            verify_consistency(m, n, _flip_bit(old_root, m), new_root, proof)
        with pytest.raises(ProofError):
            verify_consistency(m, n, old_root, _flip_bit(new_root, n), proof)
        with pytest.raises(ProofError, match="longer" if proof else "must be empty"):
            verify_consistency(m, n, old_root, new_root, [*proof, new_root])
        with pytest.raises(ProofError):
            verify_consistency(n, m, new_root, old_root, proof if m != n else [new_root])
        if proof:
            with pytest.raises(ProofError):
                verify_consistency(m, n, old_root, new_root, proof[:-1])
            with pytest.raises(ProofError):
                verify_consistency(m, n, old_root, new_root, [old_root, *proof])
        if m > 1:
            # The previous tree's root is not the root at size m.
            with pytest.raises(ProofError):
                verify_consistency(m, n, roots[m - 1], new_root, proof)


def test_consistency_edge_cases() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(3, 3, root(LEAVES[:3]), root(LEAVES[:3]), [])
    # The RFC defines no proof from the empty tree, so none is accepted.
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 3, EMPTY_ROOT, root(LEAVES[:3]), [])
    with pytest.raises(ProofError, match="negative"):
        verify_consistency(-1, 3, EMPTY_ROOT, root(LEAVES[:3]), [])
    with pytest.raises(ProofError, match="larger"):
        verify_consistency(4, 3, root(LEAVES[:4]), root(LEAVES[:3]), [])
    with pytest.raises(ProofError, match="32 bytes"):
        verify_consistency(2, 3, root(LEAVES[:2]), root(LEAVES[:3]), [b"short"])
    with pytest.raises(ProofError, match="32 bytes"):
        verify_consistency(2, 3, b"short", root(LEAVES[:3]), consistency_proof(LEAVES[:3], 2))


# --- Larger random trees --------------------------------------------------------------


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(data=st.data(), n=st.integers(min_value=1, max_value=len(LEAVES)))
def test_random_large_trees(data: st.DataObject, n: int) -> None:
    leaves = LEAVES[:n]
    tree = MerkleTree(leaves)
    accumulator = MerkleAccumulator()
    accumulator.extend(leaves)
    assert accumulator.root() == tree.root()

    index = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    verify_inclusion(leaves[index], index, n, tree.inclusion_proof(index), tree.root())

    m = data.draw(st.integers(min_value=1, max_value=n), label="old size")
    proof = tree.consistency_proof(m)
    old_root = MerkleTree(leaves[:m]).root()
    verify_consistency(m, n, old_root, tree.root(), proof)
    if proof:
        position = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="pos")
        bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
        tampered = [*proof]
        tampered[position] = _flip_bit(proof[position], bit)
        with pytest.raises(ProofError):
            verify_consistency(m, n, old_root, tree.root(), tampered)
