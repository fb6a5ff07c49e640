"""RFC 9162 Merkle tree arithmetic for the consent ledger, and nothing else: the leaf and node
hashes, the reference tree hash, the compact range (frontier) that lets the ledger append
without rereading old leaves, proof *plans* (which stored perfect subtrees a proof is folded
from, so the storage layer can fetch them in one query) and the verifiers for inclusion,
consistency and the subtree variants of draft-ietf-plants-merkle-tree-certs. It is pure: no I/O,
no clock, no database; storage and signing live elsewhere.

Nodes are named by :data:`Coord` ``(level, index)``: the perfect subtree over leaves
``[index << level, (index + 1) << level)``. Level 0 is a leaf hash. Every hash a proof needs is a
right-to-left fold (:func:`fold_right`) of such perfect subtrees, because the RFC's split (the
largest power of two strictly below the size) always puts a perfect subtree on the left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Coord = tuple[int, int]

# Domain separation prefixes (RFC 9162 2.1.1): a leaf can never be mistaken for a node.
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(ValueError):
    """A proof did not verify, or its parameters cannot describe a valid proof."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The RFC's k: the largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _bit_ceil(n: int) -> int:
    """The smallest power of two ``>= n`` (``n >= 1``)."""
    return 1 << (n - 1).bit_length()


def _is_subtree(start: int, end: int) -> bool:
    """Whether ``[start, end)`` is a non-empty subtree in the sense of the subtree drafts.

    Aligning ``start`` to ``bit_ceil(end - start)`` is exactly what makes the range a node of some
    version of the tree (possibly one still growing on the right); it is also what every range
    produced by the RFC's recursion satisfies.
    """
    return 0 <= start < end and start % _bit_ceil(end - start) == 0


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[0:n]) computed straight from the RFC 9162 2.1.1 definition; the test oracle."""

    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaf_hashes[lo]
        mid = lo + _split(hi - lo)
        return node_hash(mth(lo, mid), mth(mid, hi))

    if not leaf_hashes:
        return EMPTY_ROOT
    return mth(0, len(leaf_hashes))


def range_coords(start: int, end: int) -> list[Coord]:
    """The perfect subtrees, left to right, whose :func:`fold_right` is MTH(D[start:end]).

    Only ranges the RFC recursion can produce have such a decomposition into nodes of the whole
    tree, so anything else (empty, negative, or ``start`` not a multiple of
    ``bit_ceil(end - start)``) is a ``ValueError``.
    """
    if not _is_subtree(start, end):
        raise ValueError(f"[{start}, {end}) is not a non-empty aligned subtree range")
    coords: list[Coord] = []
    position, remaining = start, end - start
    # The RFC peels off the largest power of two on the left each time, i.e. one perfect
    # subtree per set bit of the length, biggest first. Alignment keeps each one a real node.
    for level in range(remaining.bit_length() - 1, -1, -1):
        if remaining >> level & 1:
            coords.append((level, position >> level))
            position += 1 << level
    return coords


def fold_right(hashes: Sequence[bytes]) -> bytes:
    """Combine perfect-subtree hashes listed left to right into the hash of their range."""
    if not hashes:
        raise ValueError("cannot fold an empty list of hashes")
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


def frontier_coords(size: int) -> list[Coord]:
    """The perfect subtrees, left to right, that cover D[0:size]: one per set bit of ``size``."""
    if size < 0:
        raise ValueError(f"tree size {size} is negative")
    return range_coords(0, size) if size else []


# --- The shared walk behind every proof -------------------------------------------------------
#
# Inclusion, consistency and both subtree variants are one recursion (RFC 9162 2.1.3.1 PATH and
# 2.1.4.1 SUBPROOF, generalised by the subtree drafts): descend from the tree [lo, hi) towards the
# target subtree [start, end), recording one sibling per level. Generating a proof folds each
# sibling's range out of stored nodes; verifying climbs back up hashing the same siblings. Having
# one walk for both sides means a plan and its verifier cannot disagree about the shape.


@dataclass(frozen=True, slots=True)
class _Level:
    sibling: tuple[int, int]  # leaf range [a, b) whose hash the proof carries for this level
    sibling_on_left: bool
    # True when the target straddled the split: the left sibling is then part of the target
    # subtree itself, so it also rebuilds the target's own hash (only consistency proofs).
    in_target: bool


@dataclass(frozen=True, slots=True)
class _Path:
    levels: list[_Level]  # bottom-up, i.e. proof order
    # When the target straddled a split the verifier cannot start from the target's hash; the
    # proof then opens with the hash of this range (the target's last perfect subtree).
    seed: tuple[int, int] | None


def _walk(lo: int, hi: int, start: int, end: int) -> _Path:
    """Callers guarantee ``[lo, hi)`` and ``[start, end)`` are subtrees, the latter inside the
    former and aligned relative to ``lo``; both stay true at every step of the descent."""
    levels: list[_Level] = []
    straddled = False
    while not (start == lo and end == hi):
        mid = lo + _split(hi - lo)
        if end <= mid:
            levels.append(_Level((mid, hi), sibling_on_left=False, in_target=False))
            hi = mid
        elif start >= mid:
            levels.append(_Level((lo, mid), sibling_on_left=True, in_target=False))
            lo = mid
        else:
            # Alignment forces start == lo here, so the target is [lo, mid) + [mid, end).
            levels.append(_Level((lo, mid), sibling_on_left=True, in_target=True))
            lo = start = mid
            straddled = True
    levels.reverse()
    return _Path(levels, (lo, hi) if straddled else None)


def _plan(path: _Path) -> list[list[Coord]]:
    ranges = [path.seed] if path.seed is not None else []
    ranges += [level.sibling for level in path.levels]
    return [range_coords(a, b) for a, b in ranges]


def _climb(path: _Path, known: bytes, proof: Sequence[bytes], what: str) -> tuple[bytes, bytes]:
    """Hash ``proof`` up ``path``; returns (target hash, tree hash) as the proof claims them.

    ``known`` is the target's hash the verifier already trusts; it is only used when the path has
    no seed (otherwise the seed in the proof stands in for it and is checked against it later).
    """
    want = len(path.levels) + (path.seed is not None)
    if len(proof) != want:
        raise ProofError(f"{what} proof has {len(proof)} hashes, expected {want}")
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what} proof hash {i} is {len(h)} bytes, expected {HASH_SIZE}")
    hashes = iter(proof)
    if path.seed is not None:
        target = next(hashes)
    else:
        if path.levels:
            _check_hash(f"{what} known hash", known)
        target = known
    tree = target
    for level, sibling in zip(path.levels, hashes, strict=True):
        if level.sibling_on_left:
            tree = node_hash(sibling, tree)
            if level.in_target:
                target = node_hash(sibling, target)
        else:
            tree = node_hash(tree, sibling)
    return target, tree


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def _check_match(what: str, calculated: bytes, expected: bytes) -> None:
    if calculated != expected:
        raise ProofError(f"{what} calculated from the proof does not match the one given")


# --- Proof plans (generation) -----------------------------------------------------------------


def inclusion_proof_plan(index: int, size: int) -> list[list[Coord]]:
    """PATH(index, D[0:size]) (RFC 9162 2.1.3.1), leaf side first, as coords to fold."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _plan(_walk(0, size, index, index + 1))


def consistency_proof_plan(size1: int, size2: int) -> list[list[Coord]]:
    """PROOF(size1, D[0:size2]) (RFC 9162 2.1.4.1) as coords to fold.

    Empty when there is nothing to prove: equal sizes, or an empty first tree.
    """
    if not 0 <= size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    if size1 in (0, size2):
        return []
    return _plan(_walk(0, size2, 0, size1))


def subtree_inclusion_proof_plan(index: int, start: int, end: int) -> list[list[Coord]]:
    """Inclusion of leaf ``index`` in the subtree ``[start, end)``, as coords to fold."""
    if not _is_subtree(start, end):
        raise ValueError(f"[{start}, {end}) is not a valid subtree")
    if not start <= index < end:
        raise ValueError(f"leaf {index} is not in the subtree [{start}, {end})")
    return _plan(_walk(start, end, index, index + 1))


def subtree_consistency_proof_plan(start: int, end: int, size: int) -> list[list[Coord]]:
    """Consistency of the subtree ``[start, end)`` with D[0:size], as coords to fold."""
    if not 0 <= start <= end <= size:
        raise ValueError(f"[{start}, {end}) is not inside a tree of size {size}")
    if start == end:
        return []
    if not _is_subtree(start, end):
        raise ValueError(f"[{start}, {end}) is not a valid subtree")
    return _plan(_walk(0, size, start, end))


def plan_coords(plan: list[list[Coord]]) -> set[Coord]:
    """Every node a plan reads, so the caller can fetch them all in one query."""
    return {coord for element in plan for coord in element}


def build_proof(plan: list[list[Coord]], lookup: Mapping[Coord, bytes]) -> list[bytes]:
    """Fold the fetched node hashes into the proof; a missing coord raises ``KeyError``."""
    return [fold_right([lookup[coord] for coord in element]) for element in plan]


# --- Verification -----------------------------------------------------------------------------


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``."""
    _check_hash("leaf hash", leaf_hash)
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    _, calculated = _climb(_walk(0, size, index, index + 1), leaf_hash, proof, "inclusion")
    _check_match("root", calculated, root)


def verify_subtree_inclusion(
    leaf_hash: bytes, index: int, start: int, end: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the subtree ``[start, end)`` with ``root``."""
    _check_hash("leaf hash", leaf_hash)
    if not _is_subtree(start, end):
        raise ProofError(f"[{start}, {end}) is not a valid subtree")
    if not start <= index < end:
        raise ProofError(f"leaf {index} is not in the subtree [{start}, {end})")
    path = _walk(start, end, index, index + 1)
    _, calculated = _climb(path, leaf_hash, proof, "subtree inclusion")
    _check_match("subtree root", calculated, root)


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` leaves with ``root2`` extends the one with ``root1``."""
    if not 0 <= size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    if size1 == 0:
        # Every tree extends the empty one; a "proof" of that would prove nothing about root2.
        raise ProofError("consistency with the empty tree is meaningless")
    _verify_subtree_consistency(0, size1, size2, proof, root1, root2, "consistency")


def verify_subtree_consistency(
    start: int, end: int, size: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the subtree ``[start, end)`` with ``root1`` is part of the tree of ``size``
    leaves with ``root2``.

    As in the reference implementation, an empty subtree (``start == end``) is part of every tree:
    it verifies when ``root1`` is the empty root and the proof is empty, whatever ``root2`` is.
    """
    if not 0 <= start <= end <= size:
        raise ProofError(f"[{start}, {end}) is not inside a tree of size {size}")
    if start == end:
        if proof:
            raise ProofError("an empty subtree needs an empty proof")
        _check_match("empty subtree root", EMPTY_ROOT, root1)
        return
    if not _is_subtree(start, end):
        raise ProofError(f"[{start}, {end}) is not a valid subtree")
    _verify_subtree_consistency(start, end, size, proof, root1, root2, "subtree consistency")


def _verify_subtree_consistency(
    start: int,
    end: int,
    size: int,
    proof: Sequence[bytes],
    root1: bytes,
    root2: bytes,
    what: str,
) -> None:
    path = _walk(0, size, start, end)
    calculated1, calculated2 = _climb(path, root1, proof, what)
    if path.seed is not None:
        # The seed came from the proof, so the subtree's own hash must be rebuilt and checked too.
        _check_match("first root", calculated1, root1)
    _check_match("second root", calculated2, root2)


# --- Appending ------------------------------------------------------------------------------


class CompactRange:
    """The frontier of a tree of `size` leaves: the hashes of the perfect subtrees of
    :func:`frontier_coords` (``size``), left to right. Enough to append and to compute the root
    without reading any earlier leaf."""

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError(f"tree size {size} is negative")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {size.bit_count()} frontier hashes, got {len(hashes)}"
            )
        for i, h in enumerate(hashes):
            if len(h) != HASH_SIZE:
                raise ValueError(f"frontier hash {i} is {len(h)} bytes, expected {HASH_SIZE}")
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> list[bytes]:
        return list(self._hashes)

    def append(self, leaf_hash: bytes) -> list[tuple[Coord, bytes]]:
        """Add a leaf; return each perfect node (level >= 1) it completed, lowest first."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
        completed: list[tuple[Coord, bytes]] = []
        acc, level, size = leaf_hash, 0, self._size
        # Each trailing 1 bit of the old size is a frontier subtree of exactly the height the
        # new one has reached, waiting for a right sibling: merge until the carry stops.
        while size >> level & 1:
            acc = node_hash(self._hashes.pop(), acc)
            level += 1
            completed.append(((level, size >> level), acc))
        self._hashes.append(acc)
        self._size = size + 1
        return completed

    def root(self) -> bytes:
        return fold_right(self._hashes) if self._hashes else EMPTY_ROOT

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"
