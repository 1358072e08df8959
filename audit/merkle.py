"""RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing, proofs and verifiers.

Pure functions over SHA-256: no I/O, no state beyond what the caller passes in.

* ``leaf_hash(entry) = SHA-256(0x00 || entry)``, ``node_hash(l, r) = SHA-256(0x01 || l || r)``
  (RFC 9162 §2.1.1); the 0x00/0x01 prefixes keep a leaf from ever passing for an inner node.
* :func:`inclusion_proof` / :func:`consistency_proof` follow the PATH and PROOF definitions of
  RFC 9162 §2.1.3.1 and §2.1.4.1.
* :func:`verify_inclusion` / :func:`verify_consistency` are the verification algorithms of
  RFC 9162 §2.1.3.2 and §2.1.4.2, step for step, plus the edge cases the RFC leaves to the
  caller (sizes of zero, equal sizes, an old size larger than the new one). Every failure is a
  :class:`~audit.errors.ProofError`.
* :class:`MerkleAccumulator` rolls leaves into a root in O(log n) memory, so verifying a
  log of millions of events never holds every hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from audit.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleAccumulator",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the tree with no leaves: SHA-256 of the empty string (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """Return the RFC 9162 leaf hash ``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class MerkleTree:
    """An immutable tree over ``leaf_hashes`` that answers roots and proofs.

    Raises ``ValueError`` if a leaf hash is not 32 bytes.

    Every level is kept, so a proof costs O(log n) lookups after an O(n) build. Levels
    pair nodes left to right and carry an unpaired last node up unchanged; that yields
    exactly the RFC 9162 shape (left subtree = the largest power of two below the size),
    and node ``i`` of level ``L`` is ``MTH(D[i*2^L : min((i+1)*2^L, n)])``, which is every
    subtree hash the RFC's PATH and PROOF definitions ask for.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        level = list(leaf_hashes)
        for h in level:
            if len(h) != HASH_SIZE:
                raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(h)}")
        self._size = len(level)
        levels = [level]
        sha256 = hashlib.sha256
        while len(level) > 1:
            paired = [
                sha256(_NODE_PREFIX + level[i] + level[i + 1]).digest()
                for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
            levels.append(level)
        self._levels = levels

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._size

    def root(self) -> bytes:
        """Return the Merkle tree hash of all leaves (``EMPTY_ROOT`` when there are none)."""
        if self._size == 0:
            return EMPTY_ROOT
        return self._levels[-1][0]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """Return the RFC 9162 §2.1.3.1 audit path ``PATH(index, D[n])``.

        Raises ``ValueError`` if ``index`` is not a leaf of this tree.
        """
        if not 0 <= index < self._size:
            raise ValueError(f"leaf index {index} is outside a tree of size {self._size}")
        # PATH(m, D[start:end]) descends into the half holding m and appends the other
        # half's hash after the deeper part of the path, so siblings are collected
        # top-down and reversed at the end.
        siblings: list[bytes] = []
        start, end = 0, self._size
        while end - start > 1:
            k = _largest_power_of_two_below(end - start)
            if index < start + k:
                siblings.append(self._subtree(start + k, end))
                end = start + k
            else:
                siblings.append(self._subtree(start, start + k))
                start += k
        siblings.reverse()
        return siblings

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """Return the RFC 9162 §2.1.4.1 consistency proof ``PROOF(old_size, D[n])``.

        The proof for ``old_size == n`` is empty. Raises ``ValueError`` unless
        ``0 < old_size <= n``: the RFC defines no proof from the empty tree.
        """
        if not 0 < old_size <= self._size:
            raise ValueError(
                f"no consistency proof from size {old_size} to a tree of size {self._size}"
            )
        # SUBPROOF(m, D[start:end], b) recurses into one half and appends the other half's
        # hash after the deeper part, so as in inclusion_proof the outer hashes are
        # collected top-down and reversed at the end.
        outer: list[bytes] = []
        start, end, m, whole_old_tree = 0, self._size, old_size, True
        while m != end - start:
            k = _largest_power_of_two_below(end - start)
            if m <= k:
                outer.append(self._subtree(start + k, end))
                end = start + k
            else:
                outer.append(self._subtree(start, start + k))
                start += k
                m -= k
                whole_old_tree = False
        outer.reverse()
        if whole_old_tree:
            # SUBPROOF(m, D[m], true) is empty: the verifier already holds that root.
            return outer
        return [self._subtree(start, end), *outer]

    def _subtree(self, start: int, end: int) -> bytes:
        """Return ``MTH(D[start:end])`` for a range the RFC recursion can produce.

        Such a range is either a perfect subtree aligned on its size or a right edge
        ending at ``n``; both are single nodes of the level structure.
        """
        level = (end - start - 1).bit_length()
        return self._levels[level][start >> level]


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the RFC 9162 Merkle tree hash ``MTH(D[n])`` of ``leaf_hashes``.

    Raises ``ValueError`` if a leaf hash is not 32 bytes.
    """
    accumulator = MerkleAccumulator()
    accumulator.extend(leaf_hashes)
    return accumulator.root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the audit path for leaf ``index`` in the tree of ``leaf_hashes``.

    Raises ``ValueError`` if ``index`` is outside the tree. For many proofs over one
    tree, build a :class:`MerkleTree` once instead.
    """
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the proof that the first ``old_size`` leaves are a prefix of ``leaf_hashes``.

    Raises ``ValueError`` unless ``0 < old_size <= len(leaf_hashes)``.
    """
    return MerkleTree(leaf_hashes).consistency_proof(old_size)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    Implements RFC 9162 §2.1.3.2. Returns ``None`` on success; raises
    :class:`~audit.errors.ProofError` naming the first thing that is wrong otherwise.
    """
    _require_hash("leaf hash", leaf_hash)
    _require_hash("root hash", root)
    _require_proof_hashes(proof)
    # Step 1 (a negative index is the Python spelling of the unsigned wrap-around the
    # RFC's integers cannot express, so it is refused the same way).
    if index < 0 or index >= tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of size {tree_size}")
    # Steps 2-4.
    fn, sn = index, tree_size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof is longer than a tree of size {tree_size} needs")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise ProofError(f"inclusion proof is shorter than a tree of size {tree_size} needs")
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} does not lead to the root of the tree "
            f"of size {tree_size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(old_size, old_root)`` is a prefix of ``(new_size, new_root)``.

    Implements RFC 9162 §2.1.4.2 for ``0 < old_size < new_size``. The RFC defines no
    proof outside that range, so:

    * equal sizes need an empty proof and equal roots (the empty tree's root must be
      ``EMPTY_ROOT``);
    * ``old_size == 0 < new_size`` is refused: an empty tree proves nothing about the
      newer one, and answering "consistent" would let a truncated history pass;
    * ``old_size > new_size`` (a log that shrank) is refused.

    Returns ``None`` on success; raises :class:`~audit.errors.ProofError` otherwise.
    """
    _require_proof_hashes(proof)
    if old_size < 0 or new_size < 0:
        raise ProofError(f"tree sizes must not be negative (got {old_size} and {new_size})")
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} is larger than new tree size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError(
                f"consistency proof between equal sizes ({old_size}) must be empty, "
                f"got {len(proof)} hashes"
            )
        if old_size == 0 and (old_root != EMPTY_ROOT or new_root != EMPTY_ROOT):
            raise ProofError("a tree of size 0 must have the empty-tree root hash")
        if old_root != new_root:
            raise ProofError(f"trees of equal size {old_size} have different root hashes")
        return
    if old_size == 0:
        raise ProofError("no consistency proof is defined from the empty tree (size 0)")
    _require_hash("old root hash", old_root)
    _require_hash("new root hash", new_root)

    # Step 1.
    if not proof:
        raise ProofError(
            f"consistency proof from size {old_size} to size {new_size} must not be empty"
        )
    # Step 2: for a perfect old tree the proof omits its root, which the verifier holds.
    path = [old_root, *proof] if old_size & (old_size - 1) == 0 else list(proof)
    # Steps 3-4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise ProofError(
                f"consistency proof is longer than sizes {old_size} -> {new_size} need"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError(f"consistency proof is shorter than sizes {old_size} -> {new_size} need")
    if fr != old_root:
        raise ProofError(f"consistency proof does not reproduce the root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not reproduce the root of size {new_size}")


class MerkleAccumulator:
    """Incremental RFC 9162 root over appended leaf hashes, in O(log n) memory.

    Holds the roots of the perfect subtrees that make up the tree so far (one per set bit
    of the size, largest first), the "compact range" ``[0, n)``. ``root()`` always equals
    :func:`root` over every leaf appended so far.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash. Raises ``ValueError`` if it is not 32 bytes."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf_hash)}")
        stack = self._stack
        stack.append(leaf_hash)
        self._size += 1
        # Each trailing zero bit of the new size marks two equal perfect subtrees at
        # the top of the stack that now merge into one twice as large.
        carry = self._size
        while not carry & 1:
            right = stack.pop()
            stack[-1] = hashlib.sha256(_NODE_PREFIX + stack[-1] + right).digest()
            carry >>= 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append every leaf hash of ``leaf_hashes`` in order (see :meth:`append`)."""
        for h in leaf_hashes:
            self.append(h)

    @property
    def stack(self) -> tuple[bytes, ...]:
        """The perfect subtree roots of the compact range, largest (leftmost) first.

        Their sizes are the set bits of :attr:`size`, highest first.
        """
        return tuple(self._stack)

    def append_subtree(self, subtree_root: bytes, height: int) -> None:
        """Append a perfect subtree of ``2**height`` leaves given by its root hash.

        Equivalent to appending its leaves one by one. Raises ``ValueError`` unless the
        current size is a multiple of ``2**height`` (the subtree must sit aligned, as it
        does in the full tree) or if the hash is not 32 bytes.
        """
        if len(subtree_root) != HASH_SIZE:
            raise ValueError(f"a subtree root is {HASH_SIZE} bytes, got {len(subtree_root)}")
        if height < 0 or self._size % (1 << height):
            raise ValueError(f"a subtree of 2**{height} leaves cannot follow {self._size}")
        stack = self._stack
        stack.append(subtree_root)
        self._size += 1 << height
        carry = self._size >> height
        while not carry & 1:
            right = stack.pop()
            stack[-1] = hashlib.sha256(_NODE_PREFIX + stack[-1] + right).digest()
            carry >>= 1

    def copy(self) -> MerkleAccumulator:
        """An independent accumulator in the same state."""
        twin = MerkleAccumulator()
        twin._size = self._size
        twin._stack = list(self._stack)
        return twin

    def root(self) -> bytes:
        """Return the Merkle tree hash of every leaf so far (``EMPTY_ROOT`` if none)."""
        if not self._stack:
            return EMPTY_ROOT
        # The smaller subtrees sit on the right, so fold from the right-hand end.
        stack = self._stack
        r = stack[-1]
        for left in reversed(stack[:-1]):
            r = node_hash(left, r)
        return r


def _largest_power_of_two_below(n: int) -> int:
    """Return the largest power of two strictly less than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _require_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _require_proof_hashes(proof: Sequence[bytes]) -> None:
    for position, element in enumerate(proof):
        if len(element) != HASH_SIZE:
            raise ProofError(f"proof hash {position} must be {HASH_SIZE} bytes, got {len(element)}")
