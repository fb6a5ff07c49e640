"""Join tokens and conversions: attribution without handing out an identifier.

A send's join token is ``HMAC-SHA256(join key of the month, hashed_id)``, base64url: the
subject's newest-salt-version ``hashed_id`` (through ``subject_links``) under a random key
the key store creates for each calendar month on first use and never lets out
(:meth:`KeyStore.join_macs`). So within a month the same person always gets the same token,
whichever campaign, and tokens of different months cannot be linked. Conversions come back as
tokens of a month; attribution counts those that match a campaign's send tokens of that month.
The tokens are computed on demand and never stored for sends; only returned conversion tokens
are stored (one row per distinct token and month).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, Connection, func, select

from consentgate.analytics.budget import insert_ignore
from consentgate.analytics.rules import (
    DAY_US,
    SENT_ACTIONS,
    day_label,
    encode_token,
    month_range_us,
)
from consentgate.crypto.keystore import KeyStore
from consentgate.storage.tables import analytics_conversions, messages, subject_links


def _sends(tenant: str, campaign_id: str) -> list[ColumnElement[bool]]:
    return [
        messages.c.tenant_id == tenant,
        messages.c.campaign_id == campaign_id,
        messages.c.action.in_(SENT_ACTIONS),
        messages.c.subject_ref.is_not(None),
    ]


def send_hashed_ids(conn: Connection, tenant: str, campaign_id: str, month: str) -> list[str]:
    """The newest-salt-version hashed_id of every subject the campaign sent to in ``month``
    (erased subjects have no link left and drop out)."""
    start, end = month_range_us(month)
    refs = (
        select(messages.c.subject_ref)
        .distinct()
        .where(*_sends(tenant, campaign_id), messages.c.created_us >= start)
        .where(messages.c.created_us < end)
        .scalar_subquery()
    )
    newest: dict[str, tuple[int, str]] = {}
    rows = conn.execute(
        select(
            subject_links.c.subject_ref, subject_links.c.salt_version, subject_links.c.hashed_id
        ).where(subject_links.c.tenant_id == tenant, subject_links.c.subject_ref.in_(refs))
    )
    for ref, version, hashed_id in rows:
        best = newest.get(ref)
        # Newest salt version; a tie (not expected) resolved the same way every time.
        if best is None or (version, hashed_id) > (best[0], best[1]):
            newest[ref] = (int(version), str(hashed_id))
    return sorted(h for _, h in newest.values())


def campaign_months(conn: Connection, tenant: str, campaign_id: str) -> list[str]:
    """The calendar months in which the campaign sent anything, oldest first."""
    days = conn.execute(
        select(messages.c.created_us // DAY_US).distinct().where(*_sends(tenant, campaign_id))
    ).scalars()
    return sorted({day_label(int(d))[:7] for d in days})


def join_tokens(
    keystore: KeyStore, tenant: str, month: str, hashed_ids: Sequence[str]
) -> list[str]:
    """The month's join token of each hashed_id, sorted (so their order says nothing)."""
    macs = keystore.join_macs(tenant, month, [h.encode() for h in hashed_ids])
    return sorted({encode_token(m) for m in macs})


def record_conversions(
    conn: Connection, tenant: str, month: str, tokens: Sequence[str], now_us: int
) -> int:
    """Store distinct conversion tokens of ``month``; the number new (replays add nothing)."""
    rows = [{"tenant_id": tenant, "month": month, "token": t, "created_us": now_us} for t in tokens]
    return insert_ignore(conn, analytics_conversions, rows)


def matched_conversions(conn: Connection, tenant: str, month: str, tokens: Sequence[str]) -> int:
    """How many of ``tokens`` were recorded as conversions of ``month``."""
    matched = 0
    for start in range(0, len(tokens), 500):
        matched += int(
            conn.execute(
                select(func.count())
                .select_from(analytics_conversions)
                .where(
                    analytics_conversions.c.tenant_id == tenant,
                    analytics_conversions.c.month == month,
                    analytics_conversions.c.token.in_(tokens[start : start + 500]),
                )
            ).scalar_one()
        )
    return matched
