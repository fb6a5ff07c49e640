"""consentgate.ledger.merkle against RFC 9162 known answers, the subtree-draft digests, a literal
transcription of the RFC's recursive definitions, and mutation/round-trip properties."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consentgate.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    Coord,
    ProofError,
    build_proof,
    consistency_proof_plan,
    fold_right,
    frontier_coords,
    inclusion_proof_plan,
    leaf_hash,
    node_hash,
    plan_coords,
    range_coords,
    root_of,
    subtree_consistency_proof_plan,
    subtree_inclusion_proof_plan,
    verify_consistency,
    verify_inclusion,
    verify_subtree_consistency,
    verify_subtree_inclusion,
)

VECTORS = Path(__file__).parents[1] / "vectors" / "rfc9162"
KINDS = ("inclusion", "consistency", "subtreeinclusion", "subtreeconsistency")
VECTOR_FILES = sorted(p for kind in KINDS for p in (VECTORS / kind).rglob("*.json"))

# A fixed tree big enough for every test; perfect subtrees never change as a tree grows, so the
# nodes of this tree serve proofs for every smaller size too.
MAX_LEAVES = 5000
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_LEAVES)]


def _perfect_nodes(leaves: Sequence[bytes]) -> dict[Coord, bytes]:
    """Every perfect subtree of the tree, level by level, independently of the module."""
    nodes: dict[Coord, bytes] = {(0, i): h for i, h in enumerate(leaves)}
    level = 1
    while 1 << level <= len(leaves):
        for index in range(len(leaves) >> level):
            left, right = nodes[(level - 1, 2 * index)], nodes[(level - 1, 2 * index + 1)]
            nodes[(level, index)] = node_hash(left, right)
        level += 1
    return nodes


NODES = _perfect_nodes(LEAVES)


@cache
def _root(size: int) -> bytes:
    return root_of(LEAVES[:size])


def _fetch(plan: list[list[Coord]], size: int) -> dict[Coord, bytes]:
    """What the storage layer does: one query for exactly the plan's coords."""
    coords = plan_coords(plan)
    assert all((index + 1) << level <= size for level, index in coords), "node beyond the tree"
    return {coord: NODES[coord] for coord in coords}


def _prove_inclusion(index: int, size: int) -> list[bytes]:
    plan = inclusion_proof_plan(index, size)
    return build_proof(plan, _fetch(plan, size))


def _prove_consistency(size1: int, size2: int) -> list[bytes]:
    plan = consistency_proof_plan(size1, size2)
    return build_proof(plan, _fetch(plan, size2))


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


OTHER = hashlib.sha256(b"not in any tree").digest()


# --- RFC 9162 2.1.3.1 / 2.1.4.1 transcribed literally, as an oracle for proof generation ---


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _rfc_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*_rfc_path(m, d[:k]), root_of(d[k:])]
    return [*_rfc_path(m - k, d[k:]), root_of(d[:k])]


def _rfc_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [root_of(d)]
    k = _k(n)
    if m <= k:
        return [*_rfc_subproof(m, d[:k], b), root_of(d[k:])]
    return [*_rfc_subproof(m - k, d[k:], False), root_of(d[:k])]


# --- Known-answer vectors from transparency-dev/merkle ----------------------------------------


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _run_vector(kind: str, case: dict[str, Any]) -> None:
    proof = [_b64(h) for h in case["proof"] or []]
    if kind == "inclusion":
        verify_inclusion(
            _b64(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b64(case["root"])
        )
    elif kind == "subtreeinclusion":
        verify_subtree_inclusion(
            _b64(case["leafHash"]),
            case["leafIdx"],
            case["start"],
            case["end"],
            proof,
            _b64(case["root"]),
        )
    elif kind == "consistency":
        verify_consistency(
            case["size1"], case["size2"], proof, _b64(case["root1"]), _b64(case["root2"])
        )
    else:
        verify_subtree_consistency(
            case["start"],
            case["end"],
            case["size"],
            proof,
            _b64(case["root1"]),
            _b64(case["root2"]),
        )


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.relative_to(VECTORS).as_posix())
def test_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    kind = path.relative_to(VECTORS).parts[0]
    if case["wantErr"]:
        with pytest.raises(ProofError):
            _run_vector(kind, case)
    else:
        _run_vector(kind, case)


def test_every_vector_folder_is_present() -> None:
    # An empty parametrisation would silently pass, so make a missing folder loud.
    for kind in KINDS:
        cases = [json.loads(p.read_text()) for p in (VECTORS / kind).rglob("*.json")]
        assert any(not c["wantErr"] for c in cases), kind
        assert any(c["wantErr"] for c in cases), kind
    assert len(VECTOR_FILES) >= 500


# --- Subtree vectors of draft-ietf-plants-merkle-tree-certs (as in transparency-dev/merkle) ---
#
# The draft publishes one rolling SHA-256 over every subtree hash / proof of a 130-leaf tree with
# d[i] = bytes([i]); matching it pins down proof *generation*, which the JSON vectors don't touch.

DRAFT_MAX = 130
DRAFT_NODES = _perfect_nodes([leaf_hash(bytes([i])) for i in range(DRAFT_MAX)])


def _draft_valid(start: int, end: int) -> bool:
    size = end - start
    return start == end or start % (1 << (size - 1).bit_length()) == 0


def _draft_line(prefix: str, proof: Sequence[bytes]) -> bytes:
    return (prefix + "".join(f" {h.hex()}" for h in proof) + "\n").encode()


def _draft_ranges(limit: int) -> list[tuple[int, int]]:
    return [(s, e) for e in range(limit + 1) for s in range(e + 1) if _draft_valid(s, e)]


def test_draft_subtree_hash_digest() -> None:
    digest = hashlib.sha256()
    for start, end in _draft_ranges(DRAFT_MAX):
        if start == end:
            value = EMPTY_ROOT
        else:
            value = fold_right([DRAFT_NODES[c] for c in range_coords(start, end)])
        digest.update(f"[{start}, {end}) {value.hex()}\n".encode())
    assert digest.hexdigest() == "b82806ad4265bb151c1119c0f4db437bb4d1a1f887b3a7fba1cd4ebf552e3e81"


def test_draft_subtree_inclusion_digest() -> None:
    digest = hashlib.sha256()
    for start, end in _draft_ranges(DRAFT_MAX):
        for index in range(start, end):
            proof = build_proof(subtree_inclusion_proof_plan(index, start, end), DRAFT_NODES)
            digest.update(_draft_line(f"{index} [{start}, {end})", proof))
    assert digest.hexdigest() == "ac2a8f989e44d99e399db448050ff5f19757df53cfb716aa81015d3955d8163f"


def test_draft_subtree_consistency_digest() -> None:
    digest = hashlib.sha256()
    for size in range(DRAFT_MAX + 1):
        for start, end in _draft_ranges(size):
            proof = build_proof(subtree_consistency_proof_plan(start, end, size), DRAFT_NODES)
            digest.update(_draft_line(f"[{start}, {end}) {size}", proof))
    assert digest.hexdigest() == "10fa99b37bf9bf9ffa26b412fbd98bd75363256d0b75d61bc4538b9c9c5a0a74"


# --- Hashes and ranges ------------------------------------------------------------------------

# RFC 6962 test tree (certificate-transparency): roots of its first 1..8 leaves.
RFC6962_LEAVES = [bytes.fromhex(x) for x in ("", "00", "10", "2021", "3031", "40414243")] + [
    bytes.fromhex("5051525354555657"),
    bytes.fromhex("606162636465666768696a6b6c6d6e6f"),
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_hash_primitives() -> None:
    assert HASH_SIZE == 32
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()
    assert root_of([]) == EMPTY_ROOT
    assert issubclass(ProofError, ValueError)


@pytest.mark.parametrize("size", range(1, 9))
def test_root_of_matches_rfc6962_known_roots(size: int) -> None:
    leaves = [leaf_hash(d) for d in RFC6962_LEAVES[:size]]
    assert root_of(leaves).hex() == RFC6962_ROOTS[size - 1]
    compact = CompactRange()
    for h in leaves:
        compact.append(h)
    assert compact.root().hex() == RFC6962_ROOTS[size - 1]


def test_range_coords_examples() -> None:
    assert range_coords(0, 1) == [(0, 0)]
    assert range_coords(0, 6) == [(2, 0), (1, 2)]
    assert range_coords(4, 6) == [(1, 2)]
    assert range_coords(8, 11) == [(1, 4), (0, 10)]
    assert range_coords(16, 29) == [(3, 2), (2, 6), (0, 28)]
    assert frontier_coords(0) == []
    assert frontier_coords(13) == [(3, 0), (2, 2), (0, 12)]


@pytest.mark.parametrize(
    ("start", "end"), [(0, 0), (3, 3), (2, 1), (-1, 1), (3, 5), (1, 3), (2, 5)]
)
def test_range_coords_rejects_invalid_ranges(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="subtree range"):
        range_coords(start, end)


def test_fold_and_frontier_edge_cases() -> None:
    with pytest.raises(ValueError, match="empty"):
        fold_right([])
    assert fold_right([OTHER]) == OTHER
    with pytest.raises(ValueError, match="negative"):
        frontier_coords(-1)


def test_range_coords_fold_to_the_rfc_hash_of_every_aligned_range() -> None:
    for end in range(1, 71):
        for start in range(end):
            if not _draft_valid(start, end):
                continue
            coords = range_coords(start, end)
            assert fold_right([NODES[c] for c in coords]) == root_of(LEAVES[start:end])
            levels = [level for level, _ in coords]
            assert levels == sorted(levels, reverse=True)
            assert len(coords) == (end - start).bit_count()


# --- Round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(1, 71))
def test_inclusion_round_trip_every_index(size: int) -> None:
    leaves = LEAVES[:size]
    for index in range(size):
        proof = _prove_inclusion(index, size)
        assert proof == _rfc_path(index, leaves)
        verify_inclusion(LEAVES[index], index, size, proof, _root(size))


@pytest.mark.parametrize("size2", range(1, 41))
def test_consistency_round_trip_every_size1(size2: int) -> None:
    for size1 in range(1, size2 + 1):
        proof = _prove_consistency(size1, size2)
        expected = [] if size1 == size2 else _rfc_subproof(size1, LEAVES[:size2], True)
        assert proof == expected
        verify_consistency(size1, size2, proof, _root(size1), _root(size2))


@pytest.mark.parametrize("end", range(1, 41))
def test_subtree_round_trips(end: int) -> None:
    for start in range(end):
        if not _draft_valid(start, end):
            continue
        sub_root = root_of(LEAVES[start:end])
        for index in range(start, end):
            plan = subtree_inclusion_proof_plan(index, start, end)
            proof = build_proof(plan, _fetch(plan, end))
            verify_subtree_inclusion(LEAVES[index], index, start, end, proof, sub_root)
        for size in range(end, 41):
            plan = subtree_consistency_proof_plan(start, end, size)
            proof = build_proof(plan, _fetch(plan, size))
            verify_subtree_consistency(start, end, size, proof, sub_root, _root(size))
            if proof:
                with pytest.raises(ProofError):
                    verify_subtree_consistency(start, end, size, proof[:-1], sub_root, _root(size))
            with pytest.raises(ProofError):
                verify_subtree_consistency(start, end, size, proof, _flip(sub_root), _root(size))


def test_plan_edge_cases() -> None:
    assert consistency_proof_plan(0, 7) == []
    assert consistency_proof_plan(7, 7) == []
    assert inclusion_proof_plan(0, 1) == []
    for bad_inclusion in ((5, 5), (-1, 5), (0, 0)):
        with pytest.raises(ValueError, match="not in a tree"):
            inclusion_proof_plan(*bad_inclusion)
    for bad_consistency in ((5, 3), (-1, 3)):
        with pytest.raises(ValueError, match="no consistency proof"):
            consistency_proof_plan(*bad_consistency)
    with pytest.raises(ValueError, match="valid subtree"):
        subtree_inclusion_proof_plan(3, 3, 5)
    with pytest.raises(ValueError, match="not in the subtree"):
        subtree_inclusion_proof_plan(2, 4, 6)
    with pytest.raises(ValueError, match="valid subtree"):
        subtree_consistency_proof_plan(2, 5, 8)
    assert subtree_consistency_proof_plan(3, 3, 8) == []
    with pytest.raises(KeyError):
        build_proof(inclusion_proof_plan(0, 2), {})


# --- Mutations must be rejected -----------------------------------------------------------


def _assert_all_raise(check: Callable[..., None], variants: list[tuple[Any, ...]]) -> None:
    for args in variants:
        with pytest.raises(ProofError):
            check(*args)


def _assert_inclusion_mutants_rejected(index: int, size: int, proof: list[bytes]) -> None:
    leaf, root = LEAVES[index], _root(size)
    variants: list[tuple[Any, ...]] = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size, proof, _flip(root)),
        (leaf, index, size, proof, OTHER),
        (_flip(leaf), index, size, proof, root),
        (leaf, index, size, [*proof, OTHER], root),
        (leaf, index, size, [OTHER, *proof], root),
        (leaf, index, size, [*proof, b""], root),
    ]
    for i, h in enumerate(proof):
        variants.append((leaf, index, size, [*proof[:i], _flip(h, i % 8), *proof[i + 1 :]], root))
        variants.append((leaf, index, size, proof[:i] + proof[i + 1 :], root))
        variants.append((leaf, index, size, [*proof[:i], OTHER, *proof[i:]], root))
    _assert_all_raise(verify_inclusion, variants)


def _assert_consistency_mutants_rejected(size1: int, size2: int, proof: list[bytes]) -> None:
    root1, root2 = _root(size1), _root(size2)
    variants: list[tuple[Any, ...]] = [
        (size1 - 1, size2, proof, root1, root2),
        (size1 + 1, size2, proof, root1, root2),
        (size1, size2 * 2, proof, root1, root2),
        (size1, size2, proof, _flip(root1), root2),
        (size1, size2, proof, root1, _flip(root2)),
        (size1, size2, [*proof, OTHER], root1, root2),
        (size1, size2, [OTHER, *proof], root1, root2),
        (size1, size2, [*proof, root1], root1, root2),
    ]
    if root1 != root2:
        variants.append((size1, size2, proof, root2, root1))
    for i, h in enumerate(proof):
        variants.append(
            (size1, size2, [*proof[:i], _flip(h, i % 8), *proof[i + 1 :]], root1, root2)
        )
        variants.append((size1, size2, proof[:i] + proof[i + 1 :], root1, root2))
    _assert_all_raise(verify_consistency, variants)


@pytest.mark.parametrize("size", range(1, 71))
def test_inclusion_mutations_rejected(size: int) -> None:
    for index in range(size):
        _assert_inclusion_mutants_rejected(index, size, _prove_inclusion(index, size))


@pytest.mark.parametrize("size2", range(1, 41))
def test_consistency_mutations_rejected(size2: int) -> None:
    for size1 in range(1, size2 + 1):
        _assert_consistency_mutants_rejected(size1, size2, _prove_consistency(size1, size2))


def test_verifiers_reject_malformed_arguments() -> None:
    root = _root(4)
    proof = _prove_inclusion(1, 4)
    _assert_all_raise(
        verify_inclusion,
        [
            (LEAVES[1][:-1], 1, 4, proof, root),
            (LEAVES[1], 1, 0, [], root),
            (LEAVES[1], -1, 4, proof, root),
        ],
    )
    _assert_all_raise(
        verify_consistency,
        [
            (0, 0, [], EMPTY_ROOT, EMPTY_ROOT),
            (0, 4, [], EMPTY_ROOT, root),
            (3, 2, [], root, root),
            # A known first root that is not a hash must not be hashed into a second root.
            (2, 4, [NODES[(1, 1)]], b"short", node_hash(b"short", NODES[(1, 1)])),
        ],
    )
    _assert_all_raise(
        verify_subtree_inclusion,
        [(LEAVES[1], 1, 1, 3, [], root), (LEAVES[1], 0, 1, 2, [], LEAVES[1])],
    )
    _assert_all_raise(
        verify_subtree_consistency,
        [(0, 3, 2, [], root, root), (1, 1, 2, [], root, root), (2, 5, 8, [], root, root)],
    )


def test_empty_subtree_is_consistent_with_any_tree() -> None:
    # Mirrors the reference vectors: nothing about the second root is claimed or checked.
    verify_subtree_consistency(2, 2, 5, [], EMPTY_ROOT, OTHER)
    with pytest.raises(ProofError):
        verify_subtree_consistency(2, 2, 5, [EMPTY_ROOT], EMPTY_ROOT, OTHER)


# --- Properties on larger trees -------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_round_trip_large(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_LEAVES), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = _prove_inclusion(index, size)
    verify_inclusion(LEAVES[index], index, size, proof, _root(size))
    _assert_inclusion_mutants_rejected(index, size, proof)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_round_trip_large(data: st.DataObject) -> None:
    size2 = data.draw(st.integers(1, MAX_LEAVES), label="size2")
    size1 = data.draw(st.integers(1, size2), label="size1")
    proof = _prove_consistency(size1, size2)
    verify_consistency(size1, size2, proof, _root(size1), _root(size2))
    _assert_consistency_mutants_rejected(size1, size2, proof)


def test_plans_on_a_million_leaves_stay_small_and_fast() -> None:
    rng = random.Random(9162)
    n = 1_000_000
    sizes = [n, n - 1, 2**20 - 1, 2**19 + 2**18 - 1, *(rng.randint(1, n) for _ in range(500))]
    worst = 0
    started = time.perf_counter()
    for size in sizes:
        for index in (0, size // 2, size - 1, rng.randrange(size)):
            coords = plan_coords(inclusion_proof_plan(index, size))
            assert len(coords) <= 2 * size.bit_length()
            worst = max(worst, len(coords))
        for size1 in (1, size // 2 + 1, size - 1, rng.randint(1, size)):
            coords = plan_coords(consistency_proof_plan(size1, size))
            assert len(coords) <= 2 * size.bit_length()
            worst = max(worst, len(coords))
    elapsed = time.perf_counter() - started
    assert worst < 1000
    # ~4000 plans; each is O(log^2 n) integer work, a few hundred microseconds at worst.
    assert elapsed < 5.0


# --- CompactRange ---------------------------------------------------------------------------

leaf_hashes = st.lists(st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE), max_size=300)


@settings(max_examples=60, deadline=None)
@given(leaf_hashes)
def test_compact_range_matches_reference_tree(leaves: list[bytes]) -> None:
    compact = CompactRange()
    reported: dict[Coord, bytes] = {}
    for h in leaves:
        for coord, value in compact.append(h):
            assert coord not in reported
            reported[coord] = value
    assert compact.size == len(leaves)
    assert compact.root() == root_of(leaves)
    naive = _perfect_nodes(leaves)
    assert reported == {c: v for c, v in naive.items() if c[0] >= 1}
    assert compact.hashes == [naive[c] for c in frontier_coords(len(leaves))]


@settings(max_examples=60, deadline=None)
@given(leaf_hashes, st.data())
def test_compact_range_restored_mid_way_continues_identically(
    leaves: list[bytes], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(leaves)), label="cut")
    original = CompactRange()
    for h in leaves[:cut]:
        original.append(h)
    restored = CompactRange(original.size, original.hashes)
    assert restored.root() == original.root() == root_of(leaves[:cut])
    for h in leaves[cut:]:
        assert restored.append(h) == original.append(h)
        assert restored.hashes == original.hashes
    assert restored.root() == root_of(leaves)


def test_compact_range_roots_at_every_size() -> None:
    compact = CompactRange()
    assert compact.root() == EMPTY_ROOT
    for size, h in enumerate(LEAVES[:300], start=1):
        compact.append(h)
        assert compact.root() == _root(size)


def test_compact_range_validation_and_copying() -> None:
    with pytest.raises(ValueError, match="frontier hashes"):
        CompactRange(3, [OTHER])
    with pytest.raises(ValueError, match="frontier hashes"):
        CompactRange(0, [OTHER])
    with pytest.raises(ValueError, match="negative"):
        CompactRange(-1)
    with pytest.raises(ValueError, match="bytes"):
        CompactRange(1, [b"short"])
    compact = CompactRange(1, [OTHER])
    with pytest.raises(ValueError, match="bytes"):
        compact.append(b"short")
    compact.hashes.append(OTHER)
    assert compact.hashes == [OTHER]
    assert compact.append(LEAVES[0]) == [((1, 0), node_hash(OTHER, LEAVES[0]))]
