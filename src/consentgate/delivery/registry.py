"""The device registry and the template store (tenant-scoped, no raw identifiers).

A device belongs to a subject (``subject_ref``). It holds at most one current app key:
registering again with the same ``kid`` refreshes the device; with a new ``kid`` it rotates
(the old key is revoked at once). Expired or revoked keys are never returned as usable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from consentgate.consent.subjects import HashedIdentifier, SubjectLinks
from consentgate.delivery.planner import DeviceKey, RegisteredDevice
from consentgate.delivery.templates import Template
from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import from_micros, to_micros
from consentgate.errors import InvalidInput, NotFound
from consentgate.ledger.store import LedgerStore
from consentgate.storage.engine import read_tx, write_tx
from consentgate.storage.tables import devices, templates


@dataclass(frozen=True, slots=True)
class AppKey:
    """A parsed device public key (from its JWK)."""

    kid: str
    suite: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    device: RegisteredDevice
    public_key: bytes | None


class Registry:
    def __init__(
        self, engine: Engine, links: SubjectLinks, ledger: LedgerStore, clock: Clock
    ) -> None:
        self._engine = engine
        self._links = links
        self._ledger = ledger
        self._clock = clock

    # -- devices -----------------------------------------------------------------------------
    def register_device(
        self,
        tenant: str,
        subject: HashedIdentifier | str,
        *,
        rcs: bool,
        native_e2ee: bool,
        key: AppKey | None,
        expires_at: datetime | None,
    ) -> tuple[str, bool]:
        """(device_id, created). ``subject`` is a raw identifier's hashes or a known hashed id."""
        now = to_micros(self._clock.now())
        expires = None if expires_at is None else to_micros(expires_at)
        if expires is not None and expires <= now:
            raise InvalidInput("expires_at is in the past", field="expires_at")
        with write_tx(self._engine) as conn:
            # The ledger head lock serialises subject creation with ingest for this tenant.
            self._ledger.lock_head(conn, tenant)
            if isinstance(subject, str):
                known = self._links.known_hashed(conn, tenant, [subject])
                if subject not in known:
                    raise NotFound("no subject with this hashed_id")
                ref = known[subject]
            else:
                (ref,) = self._links.resolve_or_create(conn, tenant, [subject], now)
            current = conn.execute(
                select(devices.c.id, devices.c.key_kid)
                .where(
                    devices.c.tenant_id == tenant,
                    devices.c.subject_ref == ref,
                    devices.c.revoked_us.is_(None),
                )
                .order_by(devices.c.created_us.desc())
            ).all()
            values = {
                "rcs": rcs,
                "native_e2ee": native_e2ee,
                "key_kid": None if key is None else key.kid,
                "key_suite": None if key is None else key.suite,
                "public_key": None if key is None else key.public_key,
                "expires_us": expires,
                "updated_us": now,
            }
            same = [r.id for r in current if key is not None and r.key_kid == key.kid]
            if same:
                conn.execute(update(devices).where(devices.c.id == same[0]).values(**values))
                return same[0], False
            if current:  # a new kid rotates: the previous keys stop being usable now
                conn.execute(
                    update(devices)
                    .where(devices.c.id.in_([r.id for r in current]))
                    .values(revoked_us=now, updated_us=now)
                )
            device_id = str(uuid.uuid4())
            conn.execute(
                insert(devices).values(
                    id=device_id, tenant_id=tenant, subject_ref=ref, created_us=now, **values
                )
            )
            return device_id, True

    def revoke_device(self, tenant: str, device_id: str) -> None:
        now = to_micros(self._clock.now())
        with write_tx(self._engine) as conn:
            done = conn.execute(
                update(devices)
                .where(
                    devices.c.tenant_id == tenant,
                    devices.c.id == device_id,
                    devices.c.revoked_us.is_(None),
                )
                .values(revoked_us=now, updated_us=now)
            )
            if done.rowcount == 0:
                raise NotFound("no such device")

    def device_for(self, tenant: str, subject_ref: str) -> DeviceRecord | None:
        """The subject's current device, if any (its key may be expired: the planner judges)."""
        with read_tx(self._engine) as conn:
            row = conn.execute(
                select(devices)
                .where(
                    devices.c.tenant_id == tenant,
                    devices.c.subject_ref == subject_ref,
                    devices.c.revoked_us.is_(None),
                )
                .order_by(devices.c.created_us.desc())
                .limit(1)
            ).one_or_none()
        return None if row is None else _record(row)

    def devices_for(self, tenant: str, subject_refs: Sequence[str]) -> dict[str, DeviceRecord]:
        """:meth:`device_for` for many subjects in one read (subjects without one are left
        out): the newest unrevoked device of each."""
        found: dict[str, DeviceRecord] = {}
        refs = sorted(set(subject_refs))
        with read_tx(self._engine) as conn:
            for start in range(0, len(refs), 900):
                rows = conn.execute(
                    select(devices)
                    .where(
                        devices.c.tenant_id == tenant,
                        devices.c.subject_ref.in_(refs[start : start + 900]),
                        devices.c.revoked_us.is_(None),
                    )
                    .order_by(devices.c.created_us)  # the newest comes last and is kept
                )
                for row in rows:
                    found[row.subject_ref] = _record(row)
        return found

    # -- templates ---------------------------------------------------------------------------
    def create_template(self, tenant: str, template: Template) -> str:
        with write_tx(self._engine) as conn:
            conn.execute(
                insert(templates).values(
                    id=template.template_id,
                    tenant_id=tenant,
                    name=template.name,
                    text=template.text,
                    rich_card=None
                    if template.rich_card is None
                    else json.dumps(template.rich_card),
                    sensitive=template.sensitive,
                    created_us=to_micros(self._clock.now()),
                )
            )
        return template.template_id

    def template(self, tenant: str, template_id: str) -> Template:
        with read_tx(self._engine) as conn:
            row = conn.execute(
                select(templates).where(
                    templates.c.tenant_id == tenant, templates.c.id == template_id
                )
            ).one_or_none()
        if row is None:
            raise NotFound("no such template")
        return Template(
            row.id,
            row.name,
            row.text,
            None if row.rich_card is None else json.loads(row.rich_card),
            bool(row.sensitive),
        )


def _record(row: Any) -> DeviceRecord:
    """A device row as the planner sees it."""
    key = (
        None
        if row.key_kid is None
        else DeviceKey(
            row.key_kid,
            row.key_suite,
            None if row.expires_us is None else from_micros(int(row.expires_us)),
        )
    )
    return DeviceRecord(
        row.id,
        RegisteredDevice(bool(row.rcs), bool(row.native_e2ee), key),
        None if row.public_key is None else bytes(row.public_key),
    )
