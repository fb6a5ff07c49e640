"""Migration 0009 on a database that already holds data: the rows survive both directions,
the ledger still verifies, the tables are partitioned (catalogue), a per-tenant ledger read
touches one partition (EXPLAIN), month partitions are made ahead and take over rows that
had landed in the default partition. On SQLite the migration and the ensurer do nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from typer.testing import CliRunner

from consentgate.bootstrap import App
from consentgate.cli import cli
from consentgate.consent.ingest import EventInput
from consentgate.delivery.templates import Template
from consentgate.domain.clock import FixedClock
from consentgate.domain.identity import normalise_phone
from consentgate.domain.timeutil import format_rfc3339, to_micros
from consentgate.ledger.verify import verify_tenant
from consentgate.storage import partitions
from consentgate.storage.engine import alembic_config, read_tx, write_tx

WILD_US = 31_536_000_000_000  # 1971-01-01T00:00:00Z
TABLES = ("ledger_entries", "ledger_nodes", "checkpoints", "messages", "message_events")


def _populate(core: App, clock: FixedClock, tenant: str) -> None:
    now = format_rfc3339(clock.now())
    events = [
        EventInput(f"{tenant}-c{n}", "marketing_rcs", status, now, phone=f"+44791110{n:04d}")
        for n, status in enumerate(["granted", "granted", "withdrawn", "granted", "granted"])
    ]
    core.ingest.ingest(tenant, "GB", events, batch=False)
    core.ingest.ingest(tenant, "GB", events[:2], batch=True)  # replays: nothing new
    core.registry.create_template(tenant, Template(f"t-{tenant}", "hi", "Hi", None, False))
    for n in range(3):  # analytics: nobody consented, decided without a provider
        answer = core.messages.send(
            tenant,
            normalise_phone(f"+44791120{n:04d}", "GB"),
            "analytics",
            f"t-{tenant}",
            {},
            f"{tenant}-m{n}",
        )
        with write_tx(core.engine) as conn:
            for kind in ("delivered", "read"):
                conn.execute(
                    text(
                        "INSERT INTO message_events (id, tenant_id, message_id, kind, at_us) "
                        "VALUES (:i, :t, :m, :k, :a)"
                    ),
                    {
                        "i": str(uuid.uuid4()),
                        "t": tenant,
                        "m": answer["message_id"],
                        "k": kind,
                        "a": to_micros(clock.now()),
                    },
                )


def _snapshot(core: App) -> dict[str, list[Any]]:
    """Every row of the five tables, in a stable order."""
    with read_tx(core.engine) as conn:
        return {
            table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table}"))]
            for table in TABLES
        }


def _sorted(snapshot: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {table: sorted(rows, key=repr) for table, rows in snapshot.items()}


def _migrate(core: App, target: str) -> None:
    config = alembic_config()
    with core.engine.begin() as conn:
        config.attributes["connection"] = conn
        if target == "head":
            command.upgrade(config, target)
        else:
            command.downgrade(config, target)


def _verified(core: App, tenant: str) -> int:
    with read_tx(core.engine) as conn:
        return verify_tenant(conn, tenant, core.ledger).tree_size


def _plan_relations(conn: Connection, sql: str, params: dict[str, Any]) -> set[str]:
    plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), params).scalar_one()
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node:
            found.add(str(node["Relation Name"]))
        for child in node.get("Plans", []):
            walk(child)

    walk((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
    return found


@pytest.fixture
def two_tenants(core: App, clock: FixedClock) -> App:
    for name in ("acme", "globex"):
        core.tenants.create(name, "GB")
        _populate(core, clock, name)
    return core


def test_migration_converts_a_database_with_data(two_tenants: App, backend: str) -> None:
    core = two_tenants
    with write_tx(core.engine) as conn:  # a provider's wild receipt time: 1971
        conn.execute(
            text(
                "INSERT INTO message_events (id, tenant_id, message_id, kind, at_us) "
                "SELECT :i, tenant_id, id, 'read', :a FROM messages WHERE tenant_id = 'acme' "
                "LIMIT 1"
            ),
            {"i": str(uuid.uuid4()), "a": WILD_US},
        )
    before = _snapshot(core)
    assert len(before["ledger_entries"]) == 10 and len(before["message_events"]) == 13
    sizes = {t: _verified(core, t) for t in ("acme", "globex")}
    with read_tx(core.engine) as conn:
        assert all(partitions.is_partitioned(conn, t) is (backend == "pg") for t in TABLES)

    _migrate(core, "0008")  # back to plain tables (SQLite: nothing to undo)
    with read_tx(core.engine) as conn:
        assert not any(partitions.is_partitioned(conn, t) for t in TABLES)
    assert _sorted(_snapshot(core)) == _sorted(before)
    _migrate(core, "head")  # and forward again, over the data

    assert _sorted(_snapshot(core)) == _sorted(before)
    assert {t: _verified(core, t) for t in ("acme", "globex")} == sizes
    with read_tx(core.engine) as conn:
        if backend == "sqlite":
            assert not any(partitions.is_partitioned(conn, t) for t in TABLES)
            assert partitions.ensure_month_partitions(conn, to_micros(core.clock.now())) == []
            return
        for table in partitions.HASH_TABLES:
            assert partitions.is_partitioned(conn, table)
            assert partitions.children(conn, table) == [
                f"{table}_h{r}" for r in range(partitions.HASH_MODULUS)
            ]
        # messages' key leads with id (0010): a lookup by id alone is an index probe.
        key = conn.execute(
            text(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indexrelid = 'messages_pkey'::regclass"
            )
        ).scalar_one()
        assert key == "id"
        months = partitions.children(conn, "message_events")
        assert "message_events_default" in months
        assert len(months) <= 1 + 121 + partitions.MONTHS_AHEAD  # not one per month since 1971
        wild = conn.execute(
            text("SELECT tableoid::regclass::text FROM message_events WHERE at_us = :a"),
            {"a": WILD_US},
        ).scalar_one()
        assert wild == "message_events_default"
        this_month = partitions.Month.of_micros(to_micros(core.clock.now()))
        assert this_month.partition("message_events") in months
        # Each tenant's rows sit in exactly one hash partition, not the same one for both.
        homes = {
            tenant: {
                str(r[0])
                for r in conn.execute(
                    text(
                        "SELECT DISTINCT tableoid::regclass::text FROM ledger_entries "
                        "WHERE tenant_id = :t"
                    ),
                    {"t": tenant},
                )
            }
            for tenant in ("acme", "globex")
        }
        assert all(len(h) == 1 for h in homes.values())
        # A per-tenant ledger read is planned against that tenant's partition alone.
        assert (
            _plan_relations(
                conn,
                "SELECT leaf FROM ledger_entries WHERE tenant_id = :t AND seq = :s",
                {"t": "acme", "s": 3},
            )
            == homes["acme"]
        )
        assert _plan_relations(
            conn,
            "SELECT tree_size FROM checkpoints WHERE tenant_id = :t "
            "ORDER BY tree_size DESC LIMIT 1",
            {"t": "globex"},
        ) == {next(iter(homes["globex"])).replace("ledger_entries", "checkpoints")}
    # The append-only triggers hold on every partition, and appends still work.
    with pytest.raises(DBAPIError, match="append-only"), write_tx(core.engine) as conn:
        conn.execute(text("UPDATE ledger_entries SET status = 'granted' WHERE tenant_id = 'acme'"))
    with pytest.raises(DBAPIError, match="append-only"), write_tx(core.engine) as conn:
        conn.execute(text(f"TRUNCATE {next(iter(homes['acme']))}"))
    now = format_rfc3339(core.clock.now())
    core.ingest.ingest(
        "acme",
        "GB",
        [EventInput("acme-late", "marketing_rcs", "withdrawn", now, phone="+447911100001")],
        batch=False,
    )
    assert _verified(core, "acme") == sizes["acme"] + 1


def test_month_partitions_are_made_ahead_and_take_over_the_default(
    two_tenants: App, backend: str
) -> None:
    if backend != "pg":
        pytest.skip("month partitions exist on PostgreSQL only (SQLite: one plain table)")
    core = two_tenants
    now_us = to_micros(core.clock.now())
    later = partitions.months_to_ensure(now_us, 5)[-1]  # beyond what the migration made
    low, _ = later.bounds_us()
    with write_tx(core.engine) as conn:
        message_id = conn.execute(
            text("SELECT id FROM messages WHERE tenant_id = 'acme' LIMIT 1")
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO message_events (id, tenant_id, message_id, kind, at_us) "
                "VALUES (:i, 'acme', :m, 'read', :a)"
            ),
            {"i": str(uuid.uuid4()), "m": message_id, "a": low + 5},
        )
    with read_tx(core.engine) as conn:
        assert later.partition("message_events") not in partitions.children(conn, "message_events")
        where = conn.execute(
            text("SELECT tableoid::regclass::text FROM message_events WHERE at_us = :a"),
            {"a": low + 5},
        ).scalar_one()
        assert where == "message_events_default"
    with write_tx(core.engine) as conn:
        made = partitions.ensure_month_partitions(conn, low)
    assert made[0] == later.partition("message_events")
    assert len(made) == 1 + partitions.MONTHS_AHEAD
    with write_tx(core.engine) as conn:
        assert partitions.ensure_month_partitions(conn, low) == []  # already there
        where = conn.execute(
            text("SELECT tableoid::regclass::text FROM message_events WHERE at_us = :a"),
            {"a": low + 5},
        ).scalar_one()
        assert where == later.partition("message_events")
        moved = conn.execute(
            text("SELECT id, message_id FROM message_events WHERE at_us = :a"), {"a": low + 5}
        ).one()
    # The new partition carries the parent's keys: the same event twice is refused.
    with pytest.raises(IntegrityError), write_tx(core.engine) as conn:
        conn.execute(
            text(
                "INSERT INTO message_events (id, tenant_id, message_id, kind, at_us) "
                "VALUES (:i, 'acme', :m, 'read', :a)"
            ),
            {"i": moved.id, "m": moved.message_id, "a": low + 5},
        )


def test_partitions_ensure_command(env: dict[str, str], backend: str) -> None:
    result = CliRunner().invoke(cli, ["partitions", "ensure", "--months-ahead", "4"], env=env)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    if backend == "sqlite":
        assert out["created"] == [] and not any(out["partitions"].values())
        return
    now_us = to_micros(datetime.now(UTC))
    wanted = [m.partition("message_events") for m in partitions.months_to_ensure(now_us, 4)]
    assert out["created"] == wanted[3:]  # the migration made this month and the next two
    assert set(wanted) <= set(out["partitions"]["message_events"])
    assert len(out["partitions"]["ledger_entries"]) == partitions.HASH_MODULUS
    again = json.loads(CliRunner().invoke(cli, ["partitions", "ensure"], env=env).stdout)
    assert again["created"] == []
