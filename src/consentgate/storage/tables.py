"""The schema as SQLAlchemy Core tables (migrations create it; code queries through these).

Instants are integer microseconds since the epoch (``*_us``) so both engines order them alike.
No column holds a raw identifier: people appear as a keyed hash (``subject_links``) or as a
random ``subject_ref`` (everywhere else).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("region", String(2), nullable=True),
    Column("created_us", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),
    Column("label", String(100), nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger, nullable=True),
)

purposes = Table(
    "purposes",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("max_age_seconds", BigInteger, nullable=True),
    Column("description", String(200), nullable=False, default=""),
)

subject_links = Table(
    "subject_links",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("hashed_id", String(64), primary_key=True),
    Column("salt_version", Integer, nullable=False),
    Column("subject_ref", String(36), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Index("ix_subject_links_ref", "tenant_id", "subject_ref"),
)

ledger_heads = Table(
    "ledger_heads",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("tree_size", BigInteger, nullable=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    # Concatenated hashes of the perfect subtrees of frontier_coords(tree_size), left to right.
    Column("frontier", LargeBinary, nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False),
    Column("subject_ref", String(36), nullable=False),
    Column("consent_type", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("ts_us", BigInteger, nullable=False),
    Column("received_us", BigInteger, nullable=False),
    Column("consent_id", String(200), nullable=False),
    Column("content_hash", LargeBinary(32), nullable=False),
    Column("leaf", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    UniqueConstraint("tenant_id", "consent_id", name="uq_ledger_consent_id"),
    Index("ix_ledger_subject", "tenant_id", "subject_ref", "seq"),
)

ledger_nodes = Table(
    "ledger_nodes",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("kid", String(64), nullable=False),
    Column("created_us", BigInteger, nullable=False),
)

consent_state = Table(
    "consent_state",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("subject_ref", String(36), primary_key=True),
    Column("consent_type", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("effective_us", BigInteger, nullable=False),
    Column("event_seq", BigInteger, nullable=False),
    Column("consent_id", String(200), nullable=False),
    Column("expires_us", BigInteger, nullable=True),
    Column("updated_us", BigInteger, nullable=False),
)

APPEND_ONLY_TABLES = ("ledger_entries", "ledger_nodes", "checkpoints")

cmp_settings = Table(
    "cmp_settings",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("jwks", Text, nullable=True),
    Column("require_signed_receipts", Boolean, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

cmp_mappings = Table(
    "cmp_mappings",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("adapter", String(16), primary_key=True),
    Column("mapping", Text, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

# What a signed CMP webhook delivery answered, so a replayed webhook-id gets the same answer
# and records nothing twice. Written in the same transaction as the events it recorded.
webhook_receipts = Table(
    "webhook_receipts",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("webhook_id", String(200), primary_key=True),
    Column("status_code", SmallInteger, nullable=False),
    Column("response", Text, nullable=False),
    Column("received_us", BigInteger, nullable=False),
    Index("ix_webhook_receipts_time", "tenant_id", "received_us"),  # 0007: retention
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("subject_ref", String(36), nullable=False),
    Column("rcs", Boolean, nullable=False),
    Column("native_e2ee", Boolean, nullable=False),
    Column("key_kid", String(200), nullable=True),
    Column("key_suite", String(64), nullable=True),
    Column("public_key", LargeBinary, nullable=True),
    Column("expires_us", BigInteger, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger, nullable=True),
    Index("ix_devices_subject", "tenant_id", "subject_ref"),
)

templates = Table(
    "templates",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("text", Text, nullable=False),
    Column("rich_card", Text, nullable=True),
    Column("sensitive", Boolean, nullable=False),
    Column("created_us", BigInteger, nullable=False),
)

# On PostgreSQL (0009) the ledger tables and ``messages`` are HASH(tenant_id) partitioned,
# ``messages``' primary key there is (id, tenant_id) (0010), and ``message_events`` is
# RANGE(at_us) by month with primary key (id, at_us): see consentgate.storage.partitions.
messages = Table(
    "messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("request_hash", LargeBinary(32), nullable=False),
    Column("subject_ref", String(36), nullable=True),
    Column("consent_type", String(64), nullable=False),
    Column("template_id", String(36), nullable=False),
    Column("campaign_id", String(36), nullable=True),
    Column("action", String(16), nullable=False),
    Column("mode", String(32), nullable=True),
    Column("reason", String(32), nullable=True),
    Column("device_kid", String(200), nullable=True),
    Column("consent_seq", BigInteger, nullable=True),
    Column("provider", String(32), nullable=True),
    Column("provider_message_id", String(200), nullable=True),
    Column("status", String(16), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "idempotency_key", name="uq_messages_idempotency"),
    Index("ix_messages_provider_id", "provider", "provider_message_id"),
    Index("ix_messages_tenant_time", "tenant_id", "created_us"),
    Index("ix_messages_subject", "tenant_id", "subject_ref"),  # 0007: erasure
)

message_events = Table(
    "message_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("message_id", String(36), ForeignKey("messages.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Index("ix_message_events_message", "message_id"),  # created by 0003
    Index("ix_message_events_time", "tenant_id", "at_us"),  # 0007: retention
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("template_id", String(36), nullable=False),
    Column("consent_type", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

# The dispatch queue. state: pending (uploaded) → queued | skipped (pre-filter) → claimed
# (a worker holds it until due_us, its lease) → done. ``sealed``/``wrapped_key`` hold the
# number, encrypted, until done.
campaign_recipients = Table(
    "campaign_recipients",
    metadata,
    Column("campaign_id", String(36), ForeignKey("campaigns.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("hashed_id", String(64), nullable=True),  # NULL once its subject is erased
    Column("sealed", LargeBinary, nullable=True),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("state", String(16), nullable=False),
    Column("action", String(16), nullable=True),
    Column("mode", String(32), nullable=True),
    Column("reason", String(32), nullable=True),
    Column("message_id", String(36), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("due_us", BigInteger, nullable=False),
    Index("ix_recipients_due", "state", "due_us"),
    Index("ix_recipients_hashed", "tenant_id", "hashed_id"),  # 0007: erasure
)

# Revocation (0008). A message handed to a provider that can withdraw it (RBM) keeps its
# number, sealed as in the campaign queue (``context`` is the AEAD context), until it is
# delivered, revoked or a week old: RBM's revoke names the number in its path. state: held →
# revoke (a withdrawal asked for it; due_us: when next to try) → row deleted.
revocable_messages = Table(
    "revocable_messages",
    metadata,
    Column("message_id", String(36), primary_key=True),  # no FK: retention deletes decisions
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("subject_ref", String(36), nullable=False),
    Column("consent_type", String(64), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("provider_message_id", String(200), nullable=False),
    Column("context", String(120), nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("state", String(8), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("due_us", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Index("ix_revocable_subject", "tenant_id", "subject_ref", "consent_type"),
    Index("ix_revocable_due", "state", "due_us"),
)

# How far the revoker has read each tenant's ledger for withdrawals (the next seq to read).
revocation_cursors = Table(
    "revocation_cursors",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("next_seq", BigInteger, nullable=False),
)

# Outbox (0005): what CRM/CMP endpoints are to be told, written in the transaction of the
# change it reports, and one delivery per (event, endpoint). ``order_key`` is the subject's
# random subject_ref (``h:<hashed_id>`` for a message to someone who is no subject); ``body``
# the exact JSON every endpoint receives. Endpoint secrets are stored wrapped by the key store.
crm_endpoints = Table(
    "crm_endpoints",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("event_types", String(400), nullable=False),  # comma-separated
    Column("secret_wrapped", LargeBinary, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("disabled_us", BigInteger, nullable=True),
    Index("ix_crm_endpoints_tenant", "tenant_id", "active"),
)

_SERIAL = BigInteger().with_variant(Integer(), "sqlite")  # SQLite: the rowid itself
_PENDING = text("status = 'pending'")  # a literal, so SQLite can use the partial indexes

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("seq", _SERIAL, primary_key=True, autoincrement=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("event_id", String(32), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("order_key", String(80), nullable=False),
    Column("to_cmp", Boolean, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Index("ix_outbox_events_order_key", "tenant_id", "order_key"),
    Index("ix_outbox_events_time", "tenant_id", "created_us"),
)

# status: pending (due at due_us; while claimed, due_us is the claim's lease) → delivered |
# dead. A replay puts a delivered or dead one back to pending under the same webhook-id.
outbox_deliveries = Table(
    "outbox_deliveries",
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column(
        "event_seq",
        BigInteger,
        ForeignKey("outbox_events.seq", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("endpoint_id", String(32), ForeignKey("crm_endpoints.id"), nullable=False),
    Column("order_key", String(80), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("due_us", BigInteger, nullable=False),
    Column("claim", String(32), nullable=True),
    Column("queued_us", BigInteger, nullable=False),
    Column("last_attempt_us", BigInteger, nullable=True),
    Column("delivered_us", BigInteger, nullable=True),
    Column("last_status", SmallInteger, nullable=True),
    Column("last_error", String(64), nullable=True),
    Index("ix_outbox_deliveries_due", "due_us", sqlite_where=_PENDING, postgresql_where=_PENDING),
    Index(
        "ix_outbox_deliveries_order",
        "endpoint_id",
        "order_key",
        "event_seq",
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    ),
    Index("ix_outbox_deliveries_list", "tenant_id", "status", "id"),
    Index("ix_outbox_deliveries_event", "event_seq"),
    sqlite_autoincrement=True,  # a deleted delivery's id is never handed out again
)

# Analytics (0006). Epsilon is kept in integer micro-units so a budget adds up exactly.
analytics_settings = Table(
    "analytics_settings",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("k_threshold", Integer, nullable=False),
    Column("monthly_epsilon_micro", BigInteger, nullable=False),
    Column("require_dp", Boolean, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

# Privacy budget spent per tenant and calendar month (UTC, ``YYYY-MM``).
analytics_budget = Table(
    "analytics_budget",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("month", String(7), primary_key=True),
    Column("spent_micro", BigInteger, nullable=False),
)

# Every differentially private answer: its parameters and epsilon, never its values.
analytics_queries = Table(
    "analytics_queries",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("month", String(7), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("epsilon_micro", BigInteger, nullable=False),
    Column("query", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Index("ix_analytics_queries_month", "tenant_id", "month"),
)

# Conversion join tokens (HMAC under the month's join key), one row per distinct token.
analytics_conversions = Table(
    "analytics_conversions",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("month", String(7), primary_key=True),
    Column("token", String(43), primary_key=True),
    Column("created_us", BigInteger, nullable=False),
)

# Retention (0007): how long operational records are kept (no row: the documented defaults).
retention_settings = Table(
    "retention_settings",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("delivery_events_days", Integer, nullable=False),
    Column("send_decisions_days", Integer, nullable=False),
    Column("outbox_days", Integer, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

# Erased subjects (0007): random refs only (the ledger holds them too) and the erasure's leaf.
erasures = Table(
    "erasures",
    metadata,
    Column("tenant_id", String(63), ForeignKey("tenants.id"), primary_key=True),
    Column("subject_ref", String(36), primary_key=True),
    Column("ledger_seq", BigInteger, nullable=False),
    Column("erased_us", BigInteger, nullable=False),
)
