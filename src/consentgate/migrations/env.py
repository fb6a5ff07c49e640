"""Alembic environment: always run on a connection handed in by consentgate.storage.engine."""

from __future__ import annotations

from alembic import context

from consentgate.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable from the bare alembic CLI
    raise RuntimeError("run migrations through `consentgate migrate` (it provides the engine)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
