"""Subjects: the link from keyed hashes (one per salt version) to a random ``subject_ref``.

The ledger and the state view know only ``subject_ref``. This table is the one place that
ties it to a person, so erasure can delete the links and leave the ledger unlinkable.
A raw identifier seen after a salt rotation is hashed under every version: whichever hash is
already linked gives the ``subject_ref``, and the current-version hash is linked to it too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from consentgate.crypto.keystore import KeyStore
from consentgate.domain.identity import Identifier
from consentgate.errors import Conflict, InvalidInput, NotFound
from consentgate.storage import lean

_HASHED_ID = re.compile(r"^[0-9a-f]{64}$")
_LINK_COLUMNS = ("tenant_id", "hashed_id", "salt_version", "subject_ref", "created_us")


@dataclass(frozen=True, slots=True)
class HashedIdentifier:
    """An identifier's keyed hashes under every salt version (the raw value is gone)."""

    by_version: dict[int, str]

    @property
    def current_version(self) -> int:
        return max(self.by_version)

    @property
    def current(self) -> str:
        return self.by_version[self.current_version]


def check_hashed_id(value: str, *, field: str = "hashed_id") -> str:
    if not isinstance(value, str) or not _HASHED_ID.match(value):
        raise InvalidInput(f"{field} must be 64 lower-case hex characters", field=field)
    return value


class SubjectLinks:
    def __init__(self, keystore: KeyStore) -> None:
        self._keys = keystore

    def hash_identifier(self, tenant: str, identifier: Identifier) -> HashedIdentifier:
        data = identifier.value.encode()
        return HashedIdentifier(
            {
                v: self._keys.keyed_hash(tenant, v, data).hex()
                for v in self._keys.salt_versions(tenant)
            }
        )

    def current_hashes(self, tenant: str, e164: Sequence[str]) -> list[str]:
        """The current-version hashed id of each normalised value (a campaign audience: what
        :meth:`hash_identifier` gives as ``.current``), with the salt looked up once."""
        version = self._keys.salt_versions(tenant)[-1]
        digests = self._keys.keyed_hash_many(tenant, version, [v.encode() for v in e164])
        return [d.hex() for d in digests]

    def _links(self, conn: Connection, tenant: str, hashes: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(hashes))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            # A lean statement (consentgate.storage.lean): every ingest commit runs it.
            params: dict[str, object] = {"t": tenant}
            marks = lean.placeholders("h", wanted[start : start + 500], params)
            sql = (
                "SELECT hashed_id, subject_ref FROM subject_links "  # noqa: S608
                f"WHERE tenant_id = :t AND hashed_id IN ({marks})"
            )
            for hashed_id, ref in lean.rows(conn, sql, params):
                found[hashed_id] = ref
        return found

    def resolve_or_create(
        self, conn: Connection, tenant: str, identities: list[HashedIdentifier], now_us: int
    ) -> list[str]:
        """The subject_ref of each identity, creating subjects and current-version links as
        needed. Call inside the tenant's write transaction (after the ledger head lock)."""
        links = self._links(conn, tenant, (h for i in identities for h in i.by_version.values()))
        new_rows: dict[str, dict[str, object]] = {}
        refs: list[str] = []
        for identity in identities:
            known = {links[h] for h in identity.by_version.values() if h in links}
            if len(known) > 1:
                raise Conflict("this identifier is linked to more than one subject")
            pending = new_rows.get(identity.current)
            if known:
                ref = known.pop()
            elif pending is not None:
                ref = str(pending["subject_ref"])
            else:
                ref = str(uuid.uuid4())
            if identity.current not in links and identity.current not in new_rows:
                new_rows[identity.current] = {
                    "tenant_id": tenant,
                    "hashed_id": identity.current,
                    "salt_version": identity.current_version,
                    "subject_ref": ref,
                    "created_us": now_us,
                }
            refs.append(ref)
        lean.insert_rows(conn, "subject_links", _LINK_COLUMNS, list(new_rows.values()))
        return refs

    def known_hashed(self, conn: Connection, tenant: str, hashed_ids: list[str]) -> dict[str, str]:
        """hashed_id → subject_ref for those of ``hashed_ids`` that are linked."""
        return self._links(conn, tenant, hashed_ids)

    def resolve_hashed(self, conn: Connection, tenant: str, hashed_id: str) -> str:
        ref = self._links(conn, tenant, [check_hashed_id(hashed_id)]).get(hashed_id)
        if ref is None:
            raise NotFound("no subject with this hashed_id")
        return ref

    def find(
        self, conn: Connection, tenant: str, identity: HashedIdentifier
    ) -> tuple[str, str] | None:
        """(subject_ref, newest linked hashed_id) — the hash a caller can use in URLs — or
        None when the identifier was never recorded. Reads never create links."""
        links = self._links(conn, tenant, identity.by_version.values())
        refs = set(links.values())
        if len(refs) > 1:
            raise Conflict("this identifier is linked to more than one subject")
        if not refs:
            return None
        newest = max(v for v, h in identity.by_version.items() if h in links)
        return refs.pop(), identity.by_version[newest]
