"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes (Ed25519).

A checkpoint body is three lines: origin, decimal tree size, base64 root hash. A signed note
is the body, a blank line, then one line per signature::

    — <key name> <base64(4-byte key hash || 64-byte Ed25519 signature)>

The key hash is ``SHA-256(name || "\\n" || 0x01 || public key)[:4]``; a verifier key is
``<name>+<hex key hash>+<base64(0x01 || public key)>``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from consentgate.crypto import signing
from consentgate.encoding import b64decode_strict

_ED25519 = 0x01
_DASH = "\u2014"


class NoteError(ValueError):
    """The note is malformed or carries no valid signature by a known key."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes

    def body(self) -> bytes:
        root = base64.b64encode(self.root_hash).decode()
        return f"{self.origin}\n{self.size}\n{root}\n".encode()


def key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([_ED25519]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    encoded = base64.b64encode(bytes([_ED25519]) + public_key).decode()
    return f"{name}+{key_hash(name, public_key).hex()}+{encoded}"


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """``name+hash+key`` → (name, raw Ed25519 public key), checking the embedded hash."""
    try:
        name, hash_hex, encoded = text.strip().split("+", 2)
        raw = b64decode_strict(encoded)
    except ValueError:
        raise NoteError("malformed verifier key") from None
    if len(raw) != 33 or raw[0] != _ED25519:
        raise NoteError("verifier key is not an Ed25519 key")
    if key_hash(name, raw[1:]).hex() != hash_hex.lower():
        raise NoteError("verifier key hash does not match its key")
    return name, raw[1:]


def signature_line(name: str, public_key: bytes, signature: bytes) -> str:
    blob = base64.b64encode(key_hash(name, public_key) + signature).decode()
    return f"{_DASH} {name} {blob}\n"


def parse_checkpoint_body(body: bytes) -> Checkpoint:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("checkpoint is not UTF-8") from None
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "" or not lines[0]:
        raise NoteError("checkpoint body must be origin, size and root lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not size_text.isdigit() or (size_text.startswith("0") and size_text != "0"):
        raise NoteError("checkpoint tree size is not a canonical decimal")
    try:
        root = b64decode_strict(root_text)
    except ValueError:
        raise NoteError("checkpoint root is not base64") from None
    if len(root) != 32:
        raise NoteError("checkpoint root is not a SHA-256 hash")
    return Checkpoint(origin, int(size_text), root)


def split_note(note: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Split a signed note into its body and (key name, base64-decoded signature blob) pairs."""
    body, sep, sigs = note.partition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise NoteError("signed note must be body, blank line, signature lines")
    parsed: list[tuple[str, bytes]] = []
    for line in sigs[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH:
            raise NoteError("malformed signature line")
        try:
            parsed.append((parts[1], b64decode_strict(parts[2])))
        except ValueError:
            raise NoteError("signature is not base64") from None
    return (body + "\n").encode(), parsed


def verify_note(note: str, verifier_keys: list[str]) -> Checkpoint:
    """Return the checkpoint if at least one signature verifies under one of the keys."""
    body, sigs = split_note(note)
    keys = [parse_verifier_key(k) for k in verifier_keys]
    for name, blob in sigs:
        for key_name, public in keys:
            if (
                key_name == name
                and blob[:4] == key_hash(name, public)
                and signing.verify(public, blob[4:], body)
            ):
                return parse_checkpoint_body(body)
    raise NoteError("no valid signature by a known key")
