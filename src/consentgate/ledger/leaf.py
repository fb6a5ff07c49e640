"""The leaf: the RFC 8785 canonical JSON of a consent event exactly as recorded.

One function makes the bytes (:func:`canonical`) so the hash domain is unambiguous. A leaf
names the person only by a random ``subject_ref``; nothing in it is derived from the
identifier, so erasing the hashed-id link leaves the leaf verifiable and unlinkable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import rfc8785

LEAF_VERSION = 1


def canonical(document: dict[str, Any]) -> bytes:
    return bytes(rfc8785.dumps(document))


@dataclass(frozen=True, slots=True)
class LeafEvent:
    """The recorded fields of a consent event; ``None`` fields are left out of the leaf."""

    tenant: str
    seq: int
    event_id: str
    subject_ref: str
    consent_type: str
    status: str
    timestamp: str
    received_at: str
    consent_id: str
    source: str
    cmp_version: str | None = None
    policy_version: str | None = None
    jurisdiction: str | None = None
    device: dict[str, Any] | None = None
    cmp_receipt: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "v": LEAF_VERSION,
            "tenant": self.tenant,
            "seq": self.seq,
            "event_id": self.event_id,
            "subject_ref": self.subject_ref,
            "consent_type": self.consent_type,
            "status": self.status,
            "timestamp": self.timestamp,
            "received_at": self.received_at,
            "consent_id": self.consent_id,
            "source": self.source,
        }
        for name in (
            "cmp_version",
            "policy_version",
            "jurisdiction",
            "device",
            "cmp_receipt",
            "evidence",
        ):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        return doc

    def to_bytes(self) -> bytes:
        return canonical(self.document())


def content_fingerprint(document: dict[str, Any]) -> bytes:
    """What makes two submissions of one ``consent_id`` identical: the leaf minus what the
    service assigns on arrival (seq, event id, receive time)."""
    content = {
        k: v for k, v in document.items() if k not in {"seq", "event_id", "received_at", "v"}
    }
    return hashlib.sha256(canonical(content)).digest()


def parse_leaf(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("leaf is not a JSON object")
    return doc
