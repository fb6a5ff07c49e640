"""Checkpoint signing outside the append: the checkpoint worker and on-demand signing.

``consentgate worker --kind checkpoint`` (also in ``all`` and in ``serve``'s in-process
workers) runs :class:`CheckpointWorker`: every ``CONSENTGATE_CHECKPOINT_INTERVAL_SECONDS`` it
signs a checkpoint for each tenant whose ledger head has moved past its newest checkpoint,
and on PostgreSQL makes the coming months' partitions (:mod:`consentgate.storage.partitions`).

Any number of these workers may run against one database. A tenant is signed under a
per-tenant transaction-scoped advisory lock (PostgreSQL; on SQLite the single writer lock
does it), and the head is re-read after the lock is taken, so one tree size is signed once:
a worker that finds the lock held skips the tenant for this pass, and one that gets it after
another worker committed finds the size already signed. Appends never wait for a signer:
the head row is only read, never locked.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from consentgate.domain.clock import Clock
from consentgate.domain.timeutil import to_micros
from consentgate.ledger.store import LedgerStore, SignedCheckpoint
from consentgate.storage import partitions
from consentgate.storage.engine import read_tx, write_tx

log = logging.getLogger("consentgate.checkpoint")

_TRY_LOCK = (
    "SELECT pg_try_advisory_xact_lock(hashtextextended('consentgate.checkpoint/' || %(t)s, 0))"
)
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('consentgate.checkpoint/' || %(t)s, 0))"
PARTITION_CHECK_SECONDS = 600.0  # month partitions are made months ahead: a rare check will do


def _locked(conn: Connection, tenant: str, *, wait: bool) -> bool:
    if conn.dialect.name != "postgresql":
        return True  # write_tx holds SQLite's one writer lock already
    if wait:
        conn.exec_driver_sql(_LOCK, {"t": tenant})
        return True
    return bool(conn.exec_driver_sql(_TRY_LOCK, {"t": tenant}).scalar())


def sign_tenant(
    engine: Engine, ledger: LedgerStore, clock: Clock, tenant: str, *, wait: bool = True
) -> SignedCheckpoint | None:
    """Sign ``tenant``'s head if it moved; None if there was nothing to sign (or, with
    ``wait=False``, another signer holds the tenant right now)."""
    with write_tx(engine) as conn:
        if not _locked(conn, tenant, wait=wait):
            return None
        return ledger.sign_head(conn, tenant, to_micros(clock.now()))


@dataclass
class PassResult:
    signed: list[tuple[str, int]] = field(default_factory=list)  # (tenant, tree size)
    partitions: list[str] = field(default_factory=list)


class CheckpointSigner:
    """One pass over the moved tenants (and, when due, the month partitions)."""

    def __init__(self, engine: Engine, ledger: LedgerStore, clock: Clock) -> None:
        self._engine = engine
        self._ledger = ledger
        self._clock = clock

    def run_once(self, *, ensure_partitions: bool = True) -> PassResult:
        result = PassResult()
        with read_tx(self._engine) as conn:
            moved = self._ledger.moved_tenants(conn)
        for tenant in moved:
            signed = sign_tenant(self._engine, self._ledger, self._clock, tenant, wait=False)
            if signed is not None:
                result.signed.append((tenant, signed.tree_size))
                log.info(
                    "checkpoint signed",
                    extra={"tenant": tenant, "tree_size": signed.tree_size, "kid": signed.kid},
                )
        if ensure_partitions and self._engine.dialect.name == "postgresql":
            with write_tx(self._engine) as conn:
                result.partitions = partitions.ensure_month_partitions(
                    conn, to_micros(self._clock.now())
                )
            for name in result.partitions:
                log.info("partition created", extra={"partition": name})
        return result


class CheckpointWorker:
    """A thread that runs :meth:`CheckpointSigner.run_once` every ``interval`` seconds."""

    def __init__(self, signer: CheckpointSigner, interval: float) -> None:
        self._signer = signer
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        next_partition_check = time.monotonic()
        while not self._stop.is_set():
            due = time.monotonic() >= next_partition_check
            try:
                self._signer.run_once(ensure_partitions=due)
                if due:
                    next_partition_check = time.monotonic() + PARTITION_CHECK_SECONDS
            except Exception as exc:  # the store is down, say: the next pass tries again
                log.warning("checkpoint pass failed (%s); retrying", type(exc).__name__)
            self._stop.wait(self._interval)
