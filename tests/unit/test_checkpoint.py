"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes (Ed25519).

Interoperability is pinned by known answers from outside this code base: RFC 8032 §7.1
test 1 for Ed25519 and the example key and note of Go's ``golang.org/x/mod/sumdb/note``.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from consentgate.crypto import signing
from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import (
    Checkpoint,
    NoteError,
    key_hash,
    parse_checkpoint_body,
    parse_verifier_key,
    signature_line,
    split_note,
    verifier_key,
    verify_note,
)

DASH = "\u2014"
ORIGIN = "consentgate.local/ledger/acme"


def make_key() -> tuple[bytes, bytes]:
    return signing.generate_signing_key()


def sign_body(body: bytes, name: str, seed: bytes) -> str:
    public = signing.public_from_seed(seed)
    return body.decode() + "\n" + signature_line(name, public, signing.sign(seed, body))


def make_note(size: int = 7, name: str = ORIGIN) -> tuple[str, str, Checkpoint, bytes]:
    """A signed note over a real tree root; returns (note, verifier key, checkpoint, seed)."""
    seed, public = make_key()
    root = merkle.root_of([merkle.leaf_hash(bytes([i])) for i in range(size)])
    cp = Checkpoint(name, size, root)
    return sign_body(cp.body(), name, seed), verifier_key(name, public), cp, seed


def test_checkpoint_body_is_origin_size_root_lines() -> None:
    root = hashlib.sha256(b"root").digest()
    body = Checkpoint(ORIGIN, 300, root).body()
    assert body == f"{ORIGIN}\n300\n{base64.b64encode(root).decode()}\n".encode()
    lines = body.decode().split("\n")
    assert lines == [ORIGIN, "300", base64.b64encode(root).decode(), ""]
    assert parse_checkpoint_body(body) == Checkpoint(ORIGIN, 300, root)
    assert Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT).body().split(b"\n")[1] == b"0"


def test_signature_line_format() -> None:
    seed, public = make_key()
    body = Checkpoint(ORIGIN, 1, merkle.leaf_hash(b"x")).body()
    sig = signing.sign(seed, body)
    line = signature_line(ORIGIN, public, sig)
    assert line.startswith("\u2014 ")  # EM DASH, not a hyphen
    assert line.endswith("\n")
    assert line.count("\n") == 1
    dash, name, blob = line[:-1].split(" ")
    assert (dash, name) == (DASH, ORIGIN)
    raw = base64.b64decode(blob, validate=True)
    assert len(raw) == 4 + 64
    assert raw[:4] == key_hash(ORIGIN, public)
    assert raw[4:] == sig
    assert signing.verify(public, raw[4:], body)


def test_key_hash_is_sha256_of_name_newline_type_and_key() -> None:
    _, public = make_key()
    expected = hashlib.sha256(ORIGIN.encode() + b"\n" + b"\x01" + public).digest()[:4]
    assert key_hash(ORIGIN, public) == expected
    assert key_hash(ORIGIN + "x", public) != expected


def test_verifier_key_round_trip() -> None:
    _, public = make_key()
    text = verifier_key(ORIGIN, public)
    name, hash_hex, encoded = text.split("+", 2)
    assert name == ORIGIN
    assert hash_hex == key_hash(ORIGIN, public).hex()
    assert len(hash_hex) == 8
    assert base64.b64decode(encoded) == b"\x01" + public
    assert parse_verifier_key(text) == (ORIGIN, public)
    assert parse_verifier_key("  " + text + "\n") == (ORIGIN, public)


def test_verifier_keys_whose_base64_contains_plus_round_trip() -> None:
    """Key names carry no '+', but base64 keys often do: the split must be on the first two."""
    seeds = [hashlib.sha256(bytes([i])).digest() for i in range(64)]
    texts = [verifier_key(ORIGIN, signing.public_from_seed(seed)) for seed in seeds]
    with_plus = [t for t in texts if "+" in t.split("+", 2)[2]]
    assert with_plus  # the fixed seeds include such keys, so the case is exercised
    for seed, text in zip(seeds, texts, strict=True):
        assert parse_verifier_key(text) == (ORIGIN, signing.public_from_seed(seed))


def sigs_line(note: str) -> str:
    return note.partition("\n\n")[2]


def test_verify_note_accepts_a_good_note() -> None:
    note, vkey, cp, _ = make_note()
    assert verify_note(note, [vkey]) == cp
    body, sigs = split_note(note)
    assert body == cp.body()
    assert [name for name, _ in sigs] == [ORIGIN]
    assert note == cp.body().decode() + "\n" + sigs_line(note)


def test_verify_note_finds_the_known_key_among_several() -> None:
    note, vkey, cp, _ = make_note()
    _, other = make_key()
    others = [verifier_key("someone.else/log", other), verifier_key(ORIGIN, other)]
    assert verify_note(note, [*others, vkey]) == cp
    assert verify_note(note, [vkey, *others]) == cp


def test_verify_note_accepts_extra_signatures_by_unknown_keys() -> None:
    note, vkey, cp, _ = make_note()
    witness_seed, witness_pub = make_key()
    extra = signature_line("witness", witness_pub, signing.sign(witness_seed, cp.body()))
    assert verify_note(note + extra, [vkey]) == cp
    assert verify_note(cp.body().decode() + "\n" + extra + sigs_line(note), [vkey]) == cp


def _replace_line(note: str, index: int, value: str) -> str:
    lines = note.split("\n")
    lines[index] = value
    return "\n".join(lines)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda n: _replace_line(n, 0, ORIGIN + "x"), id="origin"),
        pytest.param(lambda n: _replace_line(n, 1, "8"), id="size+1"),
        pytest.param(lambda n: _replace_line(n, 1, "6"), id="size-1"),
        pytest.param(
            lambda n: _replace_line(
                n, 2, base64.b64encode(hashlib.sha256(b"other").digest()).decode()
            ),
            id="root",
        ),
        pytest.param(lambda n: n.replace("\n\n", "\nextension line\n\n", 1), id="extra-body-line"),
    ],
)
def test_verify_note_rejects_a_tampered_body(tamper: object) -> None:
    note, vkey, _, _ = make_note()
    bad = tamper(note)  # type: ignore[operator]
    assert bad != note
    with pytest.raises(NoteError):
        verify_note(bad, [vkey])


@pytest.mark.parametrize("position", [0, 3, 4, 30, 67])
def test_verify_note_rejects_a_tampered_signature(position: int) -> None:
    note, vkey, _, _ = make_note()
    body, _, line = note.partition("\n\n")
    dash, name, blob = line[:-1].split(" ")
    raw = bytearray(base64.b64decode(blob))
    raw[position] ^= 0x01
    bad = f"{body}\n\n{dash} {name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(NoteError):
        verify_note(bad, [vkey])


def test_verify_note_rejects_wrong_keys() -> None:
    note, _, _, _ = make_note()
    _, other = make_key()
    with pytest.raises(NoteError):
        verify_note(note, [verifier_key(ORIGIN, other)])  # same name, other key
    with pytest.raises(NoteError):
        verify_note(note, [])


def test_verify_note_rejects_a_good_signature_under_another_name() -> None:
    seed, public = make_key()
    cp = Checkpoint(ORIGIN, 1, merkle.leaf_hash(b"a"))
    note = sign_body(cp.body(), "other.example/log", seed)
    with pytest.raises(NoteError):
        verify_note(note, [verifier_key(ORIGIN, public)])
    assert verify_note(note, [verifier_key("other.example/log", public)]) == cp


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda n: "", id="empty"),
        pytest.param(lambda n: n.replace("\n\n", "\n", 1), id="no-blank-line"),
        pytest.param(lambda n: n[:-1], id="no-final-newline"),
        pytest.param(lambda n: n.replace(DASH, "-"), id="hyphen-not-em-dash"),
        pytest.param(lambda n: n.replace(DASH, "\u2013"), id="en-dash"),
        pytest.param(lambda n: n.replace(DASH + " ", DASH + "  "), id="double-space"),
        pytest.param(lambda n: n + "\n", id="trailing-blank-line"),
        pytest.param(lambda n: n[: n.rindex(" ")] + " !!notbase64!!\n", id="signature-not-base64"),
        pytest.param(lambda n: n[: n.rindex(" ")] + " AAAA\n", id="signature-too-short"),
        pytest.param(lambda n: n.partition("\n\n")[0] + "\n\n", id="no-signature"),
        pytest.param(lambda n: n.replace("\n", "\r\n"), id="crlf"),
    ],
)
def test_verify_note_rejects_malformed_notes(mangle: object) -> None:
    note, vkey, _, _ = make_note()
    with pytest.raises(NoteError):
        verify_note(mangle(note), [vkey])  # type: ignore[operator]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"{ORIGIN}\n007\n{base64.b64encode(bytes(32)).decode()}\n", id="leading-zero"),
        pytest.param(f"{ORIGIN}\n-1\n{base64.b64encode(bytes(32)).decode()}\n", id="negative"),
        pytest.param(f"{ORIGIN}\n 7\n{base64.b64encode(bytes(32)).decode()}\n", id="space"),
        pytest.param(f"{ORIGIN}\n7\n{base64.b64encode(bytes(31)).decode()}\n", id="short-root"),
        pytest.param(f"{ORIGIN}\n7\nnot base64!\n", id="root-not-base64"),
        pytest.param(f"{ORIGIN}\n7\n", id="two-lines"),
        pytest.param(f"\n7\n{base64.b64encode(bytes(32)).decode()}\n", id="empty-origin"),
    ],
)
def test_a_validly_signed_but_malformed_checkpoint_is_rejected(body: str) -> None:
    seed, public = make_key()
    note = sign_body(body.encode(), ORIGIN, seed)
    with pytest.raises(NoteError):
        verify_note(note, [verifier_key(ORIGIN, public)])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no-plus-signs",
        "name+deadbeef",
        "name+deadbeef+!!!",
        "name+00000000+" + base64.b64encode(b"\x01" + bytes(32)).decode(),  # hash mismatch
    ],
)
def test_parse_verifier_key_rejects_malformed_keys(text: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(text)


def test_parse_verifier_key_rejects_other_algorithms_and_lengths() -> None:
    _, public = make_key()
    for raw in (b"\x02" + public, b"\x01" + public[:31], b"\x01" + public + b"\x00"):
        digest = hashlib.sha256(ORIGIN.encode() + b"\n" + raw).digest()[:4].hex()
        with pytest.raises(NoteError):
            parse_verifier_key(f"{ORIGIN}+{digest}+{base64.b64encode(raw).decode()}")


def test_parse_verifier_key_rejects_a_tampered_key() -> None:
    _, public = make_key()
    name, hash_hex, encoded = verifier_key(ORIGIN, public).split("+", 2)
    other_key = bytearray(base64.b64decode(encoded))
    other_key[5] ^= 0x80
    with pytest.raises(NoteError):
        parse_verifier_key(f"{name}+{hash_hex}+{base64.b64encode(bytes(other_key)).decode()}")
    with pytest.raises(NoteError):
        parse_verifier_key(f"{name}x+{hash_hex}+{encoded}")


# --- known answers ---------------------------------------------------------------------------

# RFC 8032 §7.1, TEST 1 (empty message).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

# golang.org/x/mod/sumdb/note, package documentation and example_test.go.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG_LINE = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_rfc8032_known_answer() -> None:
    assert signing.public_from_seed(RFC8032_SEED) == RFC8032_PUBLIC
    assert signing.sign(RFC8032_SEED, b"") == RFC8032_SIG
    assert signing.verify(RFC8032_PUBLIC, RFC8032_SIG, b"")
    assert not signing.verify(RFC8032_PUBLIC, RFC8032_SIG, b"\x00")


def test_verifier_key_from_fixed_seed_is_stable() -> None:
    name = "example.com/log"
    text = verifier_key(name, signing.public_from_seed(RFC8032_SEED))
    expected_hash = hashlib.sha256(name.encode() + b"\n\x01" + RFC8032_PUBLIC).digest()[:4]
    encoded_key = base64.b64encode(b"\x01" + RFC8032_PUBLIC).decode()
    expected = f"{name}+{expected_hash.hex()}+{encoded_key}"
    assert text == expected
    assert text == verifier_key(name, signing.public_from_seed(bytes(RFC8032_SEED)))
    name_part, hash_part, key_part = text.split("+", 2)
    assert name_part == name
    assert len(hash_part) == 8
    assert hash_part == hash_part.lower()
    int(hash_part, 16)
    assert len(key_part) == 44  # base64 of 33 bytes


def test_go_sumdb_note_known_answer() -> None:
    name, hash_hex, encoded = GO_SKEY.removeprefix("PRIVATE+KEY+").split("+", 2)
    raw = base64.b64decode(encoded)
    assert raw[0] == 1
    seed = raw[1:]
    public = signing.public_from_seed(seed)
    assert key_hash(name, public).hex() == hash_hex == "c74f20a3"
    assert verifier_key(name, public) == GO_VKEY
    assert parse_verifier_key(GO_VKEY) == (name, public)
    signature = signing.sign(seed, GO_TEXT.encode())
    assert signature_line(name, public, signature) == GO_SIG_LINE
    body, sigs = split_note(GO_TEXT + "\n" + GO_SIG_LINE)
    assert body == GO_TEXT.encode()
    [(sig_name, blob)] = sigs
    assert sig_name == name
    assert blob[:4] == key_hash(name, public)
    assert signing.verify(public, blob[4:], body)
    # The Go note's text is not a checkpoint, so it must not pass as one.
    with pytest.raises(NoteError):
        verify_note(GO_TEXT + "\n" + GO_SIG_LINE, [GO_VKEY])


def test_a_checkpoint_signed_with_the_go_key_verifies() -> None:
    _, _, encoded = GO_SKEY.removeprefix("PRIVATE+KEY+").split("+", 2)
    seed = base64.b64decode(encoded)[1:]
    cp = Checkpoint(
        "PeterNeumann", 2, merkle.root_of([merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")])
    )
    note = sign_body(cp.body(), "PeterNeumann", seed)
    assert verify_note(note, [GO_VKEY]) == cp
