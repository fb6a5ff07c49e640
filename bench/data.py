"""Synthetic, deterministic inputs: valid GB mobile numbers, consent events, ledger leaves."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import phonenumbers

from consentgate.consent.ingest import EventInput
from consentgate.domain.consent import DEFAULT_PURPOSES
from consentgate.ledger.store import NewLeaf

PURPOSES = [p.name for p in DEFAULT_PURPOSES]
SOURCES = ["web", "android", "ios", "api"]


def phone_numbers(count: int, seed: int) -> list[str]:
    """``count`` distinct valid GB mobile numbers, in national format ("07xxx xxxxxx")."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        national = f"7{rng.randrange(400, 1000):03d}{rng.randrange(1_000_000):06d}"
        if national in seen:
            continue
        seen.add(national)
        if phonenumbers.is_valid_number(phonenumbers.parse("+44" + national)):
            out.append(f"0{national[:4]} {national[4:]}")
    return out


def events(phones: list[str], count: int, seed: int, tag: str) -> list[EventInput]:
    """``count`` events over ``phones``: each pass visits every subject once, shuffled, so
    every subject has an event once ``count >= len(phones)``."""
    rng = random.Random(seed)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[EventInput] = []
    order: list[str] = []
    for k in range(count):
        if k % len(phones) == 0:
            order = phones[:]
            rng.shuffle(order)
        instant = base - timedelta(seconds=rng.randrange(365 * 86400))
        out.append(
            EventInput(
                consent_id=f"{tag}-{k:08d}",
                consent_type=rng.choice(PURPOSES),
                status="granted" if rng.random() < 0.8 else "withdrawn",
                timestamp=instant.strftime("%Y-%m-%dT%H:%M:%SZ"),
                source=rng.choice(SOURCES),
                phone=order[k % len(phones)],
                cmp_version="cmp-6.2" if k % 2 else None,
                policy_version="2026-01" if k % 3 else None,
            )
        )
    return out


def _uuid_text(value: int) -> str:
    h = f"{value % (1 << 128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_LEAF = (
    '{"consent_id":"%s","consent_type":"%s","seq":%d,"status":"granted",'
    '"subject_ref":"%s","tenant":"tree","timestamp":"2025-06-01T12:00:00Z","v":1}'
)


def synthetic_leaves(start: int, count: int, received_us: int) -> Iterator[NewLeaf]:
    """Leaves for the big proof tree: compact sorted-key JSON made by formatting (it is the
    tree being measured, not the serializer), unique ids, realistic column values."""
    sha256 = hashlib.sha256
    for seq in range(start, start + count):
        subject = _uuid_text(seq * 2654435761)
        consent_id = f"tree-{seq:09d}"
        purpose = PURPOSES[seq % 4]
        leaf = (_LEAF % (consent_id, purpose, seq, subject)).encode()
        yield NewLeaf(
            seq=seq,
            event_id=_uuid_text((seq + 1) * 11400714819323198485),
            subject_ref=subject,
            consent_type=purpose,
            status="granted",
            ts_us=1_748_779_200_000_000,
            received_us=received_us,
            consent_id=consent_id,
            content_hash=sha256(leaf).digest(),
            leaf=leaf,
        )
