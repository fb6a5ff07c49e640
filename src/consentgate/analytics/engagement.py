"""Engagement counts straight from ``messages`` and ``message_events``, grouped in SQL.

Only sent messages count (action ``sent`` or ``fallback``: something left for the person),
and only those still linked to a subject (an erased subject's sends have no
``subject_ref`` and drop out, as they must: they can be neither counted per person nor
bounded). A message is *delivered* when it has a ``delivered`` or ``read`` receipt and *read*
when it has a ``read`` receipt. Nothing leaves this module but counts per group.

For a differentially private answer each subject keeps only its earliest
``max_per_subject`` messages in the window (a ``ROW_NUMBER()`` per subject), the bound the
noise is sized to; the choice depends on that subject's own rows alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, distinct, exists, func, select

from consentgate.analytics.rules import (
    DAY_US,
    DELIVERED_KINDS,
    READ_KIND,
    SENT_ACTIONS,
    Dimension,
)
from consentgate.errors import NotFound
from consentgate.storage.tables import campaigns, message_events, messages, templates

#: A group key: one value per grouped dimension (days as days since the epoch).
Key = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Counts:
    subjects: int
    sent: int
    delivered: int
    read: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.subjects, self.sent, self.delivered, self.read)


def _column(dim: Dimension) -> Any:
    return {
        Dimension.DAY: messages.c.created_us // DAY_US,
        Dimension.MODE: messages.c.mode,
        Dimension.CONSENT_TYPE: messages.c.consent_type,
        Dimension.TEMPLATE_ID: messages.c.template_id,
        Dimension.CAMPAIGN: messages.c.campaign_id,
    }[dim]


def engagement_counts(
    conn: Connection,
    tenant: str,
    dims: Sequence[Dimension],
    *,
    campaign_id: str | None,
    from_us: int | None,
    to_us: int | None,
    max_per_subject: int | None,
) -> dict[Key, Counts]:
    """True counts per group present in the data (no suppression, no noise here)."""

    def receipt(kinds: Sequence[str]) -> Any:
        return case(
            (
                # By message id alone (the message is already the tenant's): a tenant
                # condition here lets a planner without statistics pick a tenant-wide index
                # (seen on SQLite: 15 s for 5,000 messages instead of milliseconds).
                exists().where(
                    message_events.c.message_id == messages.c.id,
                    message_events.c.kind.in_(kinds),
                ),
                1,
            ),
            else_=0,
        )

    columns = [
        messages.c.subject_ref.label("subject_ref"),
        *(_column(d).label(f"g_{d.value}") for d in dims),
        receipt(DELIVERED_KINDS).label("delivered"),
        receipt([READ_KIND]).label("read"),
    ]
    if max_per_subject is not None:
        columns.append(
            func.row_number()
            .over(
                partition_by=messages.c.subject_ref,
                order_by=(messages.c.created_us, messages.c.id),
            )
            .label("rank")
        )
    base = select(*columns).where(
        messages.c.tenant_id == tenant,
        messages.c.action.in_(SENT_ACTIONS),
        messages.c.subject_ref.is_not(None),
    )
    if campaign_id is not None:
        base = base.where(messages.c.campaign_id == campaign_id)
    if from_us is not None:
        base = base.where(messages.c.created_us >= from_us)
    if to_us is not None:
        base = base.where(messages.c.created_us < to_us)
    sub = base.subquery()
    keys = [sub.c[f"g_{d.value}"] for d in dims]
    query = select(
        *keys,
        func.count(distinct(sub.c.subject_ref)).label("subjects"),
        func.count().label("sent"),
        func.coalesce(func.sum(sub.c.delivered), 0).label("delivered"),
        func.coalesce(func.sum(sub.c.read), 0).label("read"),
    )
    if max_per_subject is not None:
        query = query.where(sub.c.rank <= max_per_subject)
    if keys:
        query = query.group_by(*keys)
    out: dict[Key, Counts] = {}
    for row in conn.execute(query):
        if not keys and row.sent == 0:
            continue  # an ungrouped aggregate over nothing: no group at all
        key = tuple(_value(d, v) for d, v in zip(dims, row[: len(keys)], strict=True))
        out[key] = Counts(int(row.subjects), int(row.sent), int(row.delivered), int(row.read))
    return out


def _value(dim: Dimension, value: Any) -> Any:
    if value is None:
        return None
    return int(value) if dim is Dimension.DAY else str(value)


def check_campaign(conn: Connection, tenant: str, campaign_id: str) -> tuple[str, str]:
    """(template_id, consent_type) of the tenant's campaign; NotFound otherwise."""
    row = conn.execute(
        select(campaigns.c.template_id, campaigns.c.consent_type).where(
            campaigns.c.tenant_id == tenant, campaigns.c.id == campaign_id
        )
    ).one_or_none()
    if row is None:
        raise NotFound("no such campaign")
    return str(row.template_id), str(row.consent_type)


def template_ids(conn: Connection, tenant: str) -> list[str]:
    return sorted(
        str(r[0])
        for r in conn.execute(select(templates.c.id).where(templates.c.tenant_id == tenant))
    )


def campaign_ids(conn: Connection, tenant: str) -> list[str]:
    return sorted(
        str(r[0])
        for r in conn.execute(select(campaigns.c.id).where(campaigns.c.tenant_id == tenant))
    )
