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
)
