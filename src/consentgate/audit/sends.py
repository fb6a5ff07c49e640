"""The send reports: every decided message in a time range, counts by mode, and fallbacks.

A send is named by its ``hashed_id`` (the subject's newest link; ``None`` once erased or
when the number was never known), never by a ``subject_ref``. ``at`` is when the message was
accepted (``created_us``); ``consent_seq`` is the ledger leaf whose grant allowed it. Pages
are keyset pages in (``created_us``, message id) order over ``ix_messages_tenant_time``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select

from consentgate.domain.timeutil import format_rfc3339, from_micros
from consentgate.storage.tables import messages, subject_links

#: Actions of messages that left the system (their mode is how).
WENT_OUT = ("sent", "fallback")


@dataclass(frozen=True, slots=True)
class Send:
    message_id: str
    hashed_id: str | None
    consent_type: str
    action: str
    mode: str | None
    reason: str | None
    consent_seq: int | None
    template_id: str
    campaign_id: str | None
    at_us: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "hashed_id": self.hashed_id,
            "consent_type": self.consent_type,
            "action": self.action,
            "mode": self.mode,
            "reason": self.reason,
            "consent_seq": self.consent_seq,
            "template_id": self.template_id,
            "campaign_id": self.campaign_id,
            "at": format_rfc3339(from_micros(self.at_us)),
        }

    def as_fallback(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "hashed_id": self.hashed_id,
            "mode": self.mode,
            "reason": self.reason,
            "at": format_rfc3339(from_micros(self.at_us)),
        }


def newest_link() -> Any:
    """The subject's newest hashed id, as a scalar subquery correlated with ``messages``."""
    return (
        select(subject_links.c.hashed_id)
        .where(
            subject_links.c.tenant_id == messages.c.tenant_id,
            subject_links.c.subject_ref == messages.c.subject_ref,
        )
        .order_by(subject_links.c.salt_version.desc(), subject_links.c.hashed_id)
        .limit(1)
        .scalar_subquery()
    )


def _in_range(tenant: str, from_us: int, to_us: int) -> Any:
    return and_(
        messages.c.tenant_id == tenant,
        messages.c.created_us >= from_us,
        messages.c.created_us < to_us,
        messages.c.action != "pending",
    )


def _select(tenant: str, from_us: int, to_us: int, fallbacks_only: bool) -> Select[Any]:
    query = select(
        messages.c.id,
        newest_link().label("hashed_id"),
        messages.c.consent_type,
        messages.c.action,
        messages.c.mode,
        messages.c.reason,
        messages.c.consent_seq,
        messages.c.template_id,
        messages.c.campaign_id,
        messages.c.created_us,
    ).where(_in_range(tenant, from_us, to_us))
    if fallbacks_only:
        query = query.where(messages.c.action == "fallback")
    return query


def sends(
    conn: Connection,
    tenant: str,
    from_us: int,
    to_us: int,
    *,
    after: tuple[int, str] | None = None,
    limit: int | None = None,
    fallbacks_only: bool = False,
    chunk: int = 5000,
) -> Iterator[Send]:
    """Decided messages accepted in [from, to), oldest first, after the ``after`` key; read in
    keyset chunks so a long report streams."""
    remaining = limit
    while remaining is None or remaining > 0:
        take = chunk if remaining is None else min(chunk, remaining)
        query = _select(tenant, from_us, to_us, fallbacks_only)
        if after is not None:
            at_us, message_id = after
            query = query.where(
                or_(
                    messages.c.created_us > at_us,
                    and_(messages.c.created_us == at_us, messages.c.id > message_id),
                )
            )
        rows = conn.execute(query.order_by(messages.c.created_us, messages.c.id).limit(take))
        got = 0
        for row in rows:
            got += 1
            yield Send(
                row.id,
                row.hashed_id,
                row.consent_type,
                row.action,
                row.mode,
                row.reason,
                None if row.consent_seq is None else int(row.consent_seq),
                row.template_id,
                row.campaign_id,
                int(row.created_us),
            )
            after = (int(row.created_us), row.id)
        if remaining is not None:
            remaining -= got
        if got < take:
            return


def counts(conn: Connection, tenant: str, from_us: int, to_us: int) -> dict[str, dict[str, int]]:
    """``by_mode`` (messages that went out) and ``by_action`` (every decision) in the range."""
    by_mode: dict[str, int] = {}
    by_action: dict[str, int] = {}
    rows = conn.execute(
        select(messages.c.action, messages.c.mode, func.count())
        .where(_in_range(tenant, from_us, to_us))
        .group_by(messages.c.action, messages.c.mode)
    )
    for action, mode, n in rows:
        by_action[action] = by_action.get(action, 0) + int(n)
        if action in WENT_OUT and mode is not None:
            by_mode[mode] = by_mode.get(mode, 0) + int(n)
    return {"by_mode": dict(sorted(by_mode.items())), "by_action": dict(sorted(by_action.items()))}
