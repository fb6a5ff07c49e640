"""Storage per subject, consent event and message on PostgreSQL, for the capacity model.

Loads known counts through the real code paths (``core.ingest`` batches for consent events, a
real campaign dispatched to the sandbox carrier over loopback for messages, one CRM endpoint
so each outbox event queues a delivery), runs VACUUM
ANALYZE, then reads for each table its rows, its heap and total size (indexes and TOAST
included; partitioned tables summed over ``pg_partition_tree``) and the average
``pg_column_size`` of a row. The bytes per subject / event / message in
``docs/operations.md`` ("Capacity model") come from this.

    python -m bench.sizes [--subjects 20000] [--recipients 5000]   # writes bench/sizes.json
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from tests.integration.test_sandbox_providers import Served

from bench import pgcluster
from bench.common import machine_info
from consentgate.bootstrap import build
from consentgate.config import load_settings
from consentgate.consent.ingest import EventInput
from consentgate.delivery.templates import Template
from consentgate.sandbox import create_sandbox
from consentgate.sandbox.fastpath import RbmFastPath

TABLES = (
    "ledger_entries",
    "ledger_nodes",
    "checkpoints",
    "consent_state",
    "subject_links",
    "messages",
    "message_events",
    "revocable_messages",
    "campaign_recipients",
    "outbox_events",
    "outbox_deliveries",
)
OUT = Path(__file__).with_name("sizes.json")


def _events(phones: list[str], purpose: str, status: str, tag: str, at: str) -> list[EventInput]:
    return [
        EventInput(
            consent_id=f"{tag}-{i}",
            consent_type=purpose,
            status=status,
            timestamp=at,
            source="web",
            phone=p,
        )
        for i, p in enumerate(phones)
    ]


def _table_sizes(dsn: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        names = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " UNION SELECT relname FROM pg_class WHERE relkind = 'p'"
            )
        }
        for table in TABLES:
            if table not in names:
                continue
            row = conn.execute(
                # A plain table has no partition tree: its own sizes then.
                "SELECT coalesce(sum(pg_total_relation_size(relid)),"
                f" pg_total_relation_size('{table}')),"
                f" coalesce(sum(pg_relation_size(relid)), pg_relation_size('{table}')),"
                f" coalesce(sum(pg_indexes_size(relid)), pg_indexes_size('{table}')),"
                " count(*) FILTER (WHERE isleaf)"
                f" FROM pg_partition_tree('{table}')"
            ).fetchone()
            stats = conn.execute(
                f"SELECT count(*), coalesce(avg(pg_column_size(t.*)), 0) FROM {table} t"
            ).fetchone()
            assert row is not None
            assert stats is not None
            total, heap, indexes = int(row[0]), int(row[1]), int(row[2])
            rows = int(stats[0])
            found[table] = {
                "rows": rows,
                "partitions": int(row[3]) if int(row[3]) > 1 else 0,
                "total_bytes": total,
                "heap_bytes": heap,
                "index_bytes": indexes,
                "avg_row_bytes": round(float(stats[1]), 1),
                "index_bytes_per_row": round(indexes / rows, 1) if rows else None,
                # Includes the dead versions this load left behind (rows updated as they
                # moved through a queue): an upper bound of what autovacuum lets be reused.
                "total_bytes_per_row": round(total / rows, 1) if rows else None,
            }
    return found


def run(subjects: int, recipients: int) -> dict[str, Any]:
    cluster = pgcluster.start()
    try:
        cluster.execute("CREATE DATABASE sizes")
        token_rbm, token_twilio = "rbm-" + uuid.uuid4().hex, "tw-" + uuid.uuid4().hex
        with Served(RbmFastPath(create_sandbox(None, token_rbm, token_twilio))) as carrier:
            data = Path(cluster.base) / "var"
            app = build(
                load_settings(
                    {
                        "CONSENTGATE_DATA_DIR": str(data),
                        "CONSENTGATE_DATABASE_URL": cluster.url("sizes"),
                        "CONSENTGATE_SANDBOX_URL": carrier.url,
                        "CONSENTGATE_SANDBOX_RBM_TOKEN": token_rbm,
                        "CONSENTGATE_SANDBOX_TWILIO_TOKEN": token_twilio,
                    }
                )
            )
            try:
                app.tenants.create("acme", "GB")
                # One CRM endpoint: every consent change and send decision queues a delivery
                # (no relay runs here, so they stay pending, as in a backlog).
                app.endpoints.create(
                    "acme", "http://127.0.0.1:9/crm", ["consent.changed", "message.decided"]
                )
                phones = [f"+4479111{i:05d}" for i in range(subjects)]
                at = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                withdrawn = phones[: subjects // 10]
                batches = (
                    ("marketing_rcs", "granted", "g", phones),
                    ("analytics", "granted", "a", phones),
                    ("marketing_rcs", "withdrawn", "w", withdrawn),
                )
                events = 0
                for purpose, status, tag, who in batches:
                    for start in range(0, len(who), 1000):
                        chunk = who[start : start + 1000]
                        app.ingest.ingest(
                            "acme",
                            "GB",
                            _events(chunk, purpose, status, f"{tag}{start}", at),
                            batch=True,
                        )
                        events += len(chunk)
                audience = phones[-recipients:]
                devices = [{"phone": p, "rcs": True, "native_e2ee": True} for p in audience]
                httpx.put(
                    f"{carrier.url}/devices", json={"devices": devices}, timeout=60
                ).raise_for_status()
                template = app.registry.create_template(
                    "acme", Template(str(uuid.uuid4()), "sale", "Our sale starts now", None, False)
                )
                cid = app.campaigns.create("acme", template, "marketing_rcs")
                body = ("phone\n" + "\n".join(audience) + "\n").encode()
                app.campaigns.upload("acme", "GB", cid, iter([body]), "text/csv")
                app.campaigns.send("acme", cid)
                while app.campaigns.dispatch_once() > 0:
                    pass
                status = app.campaigns.status("acme", cid)
            finally:
                app.close()
        sizes = _table_sizes(cluster.dsn("sizes"))
        return {
            "machine": machine_info(),
            "postgresql": cluster.server_version(),
            "loaded": {
                "subjects": subjects,
                "consent_events": events,
                "purposes_per_subject": 2,
                "campaign_recipients": recipients,
                "crm_endpoints": 1,
                "campaign": {k: status.get(k) for k in ("sent", "skipped", "status")},
            },
            "tables": sizes,
        }
    finally:
        pgcluster.destroy(cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20_000)
    parser.add_argument("--recipients", type=int, default=5_000)
    args = parser.parse_args()
    result = run(args.subjects, args.recipients)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["tables"], indent=2))


if __name__ == "__main__":
    main()
