"""The ``consentgate`` command line: thin Typer commands over the composition root."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import Connection

from consentgate.bootstrap import App, build
from consentgate.config import load_settings
from consentgate.crypto.keystore import KeyKind
from consentgate.errors import ConsentGateError, LedgerTampered, NotFound
from consentgate.ledger.store import SignedCheckpoint
from consentgate.ledger.verify import verify_tenant
from consentgate.storage.engine import read_tx
from consentgate.tenants.service import parse_scopes

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
tenant_cli = typer.Typer(no_args_is_help=True, help="Tenants and their API keys.")
keys_cli = typer.Typer(no_args_is_help=True, help="Salts and signing keys.")
ledger_cli = typer.Typer(no_args_is_help=True, help="The consent ledger.")
receipt_cli = typer.Typer(no_args_is_help=True, help="Consent receipts, checked offline.")
audit_cli = typer.Typer(no_args_is_help=True, help="Audit export bundles, checked offline.")
cli.add_typer(tenant_cli, name="tenant")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(ledger_cli, name="ledger")
cli.add_typer(receipt_cli, name="receipt")
cli.add_typer(audit_cli, name="audit")
retention_cli = typer.Typer(no_args_is_help=True, help="Retention of operational records.")
cli.add_typer(retention_cli, name="retention")
partitions_cli = typer.Typer(no_args_is_help=True, help="PostgreSQL table partitions.")
cli.add_typer(partitions_cli, name="partitions")

T = TypeVar("T")


def _emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@contextmanager
def _app() -> Iterator[App]:
    try:
        app = build(load_settings())
    except ConsentGateError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    try:
        yield app
    except LedgerTampered:
        raise
    except ConsentGateError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    finally:
        app.close()


def _demo_tenant(app: App) -> None:
    """On first start of the embedded default, create a demo tenant and show its key."""
    if app.tenants.any_tenant():
        return
    created = app.tenants.create("demo", "GB")
    path = app.settings.storage.data_dir / "demo-tenant.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(created, fh, indent=2)
    bar = "=" * 72
    typer.echo(
        f"\n{bar}\nCreated the demo tenant 'demo' (region GB).\n"
        f"  API key:        {created['api_key']}\n"
        f"  webhook secret: {created['webhook_secret']}\n"
        f"Saved to {path} (mode 0600). Shown once: only its hash is stored.\n{bar}\n",
        err=True,
    )


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    no_workers: Annotated[
        bool, typer.Option("--no-workers", help="API only, no background workers")
    ] = False,
    demo: Annotated[bool, typer.Option(help="Create a demo tenant on first start")] = False,
    log_level: Annotated[str, typer.Option(help="Log level (debug, info, warning, ...)")] = "info",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="HTTP worker processes sharing the port (one per core); background workers "
            "still run once, in the parent process",
        ),
    ] = 1,
) -> None:
    """Run the HTTP API (uvicorn). Migrations are applied at start-up. Logs go to stderr, one
    JSON object per line (CONSENTGATE_LOG_FORMAT=text for plain lines), scrubbed of anything
    shaped like a phone number or e-mail address; the access log names route templates."""
    import uvicorn

    from consentgate.api.app import create_app
    from consentgate.api.server import LOG_LEVEL_ENV
    from consentgate.observability.logs import configure_logging
    from consentgate.observability.metrics import share_across_processes

    try:
        settings = load_settings()
    except ConsentGateError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    configure_logging("text" if settings.server.log_format == "text" else "json", log_level)
    metrics_dir = settings.storage.data_dir / f"metrics-{os.getpid()}"
    if workers > 1:
        # A scrape reaches one of the processes: they keep their counters in shared files.
        share_across_processes(metrics_dir)
        # Worker processes start from the environment: give them the log level and the
        # sandbox carrier's credentials this process uses (random per process otherwise).
        os.environ[LOG_LEVEL_ENV] = log_level
        for name in (
            "CONSENTGATE_SANDBOX_RBM_TOKEN",
            "CONSENTGATE_SANDBOX_TWILIO_TOKEN",
            "CONSENTGATE_RBM_ACCESS_TOKEN",
        ):
            os.environ.setdefault(name, secrets.token_urlsafe(24))
    with _app() as app:
        if demo:
            _demo_tenant(app)
        app.start_background(workers=not no_workers)
        store = app.settings.storage.database_url.split("://", 1)[0]
        logging.getLogger("consentgate.serve").info(
            "consentgate listening on http://%s:%d (store: %s, %d HTTP process%s)",
            host,
            port,
            store,
            workers,
            "" if workers == 1 else "es",
            extra={"host": host, "port": port, "store": store, "workers": workers},
        )
        # uvicorn's own access log would print concrete paths (ids, sandbox phone numbers):
        # the AccessLog middleware logs route templates instead. log_config=None keeps the
        # handlers configured above.
        try:
            uvicorn.run(
                create_app(app) if workers == 1 else "consentgate.api.server:worker_app",
                factory=workers > 1,
                workers=workers,
                host=host,
                port=port,
                log_level=log_level,
                access_log=False,
                log_config=None,
                # uvicorn kills a worker that has not answered its supervisor's ping within
                # this many seconds (default 5): on a busy machine a worker still importing
                # the app was killed and restarted over and over.
                timeout_worker_healthcheck=60,
            )
        finally:
            if workers > 1:
                shutil.rmtree(metrics_dir, ignore_errors=True)


class WorkerKind(StrEnum):
    relay = "relay"
    dispatch = "dispatch"
    checkpoint = "checkpoint"
    all = "all"


@cli.command()
def worker(
    kind: Annotated[
        WorkerKind,
        typer.Option(
            help="relay (outbox → CRM/CMP webhooks), dispatch (campaigns), checkpoint (signs "
            "moved ledger heads every CONSENTGATE_CHECKPOINT_INTERVAL_SECONDS; makes month "
            "partitions ahead on PostgreSQL) or all"
        ),
    ] = WorkerKind.all,
    log_level: Annotated[str, typer.Option(help="Log level (debug, info, warning, ...)")] = "info",
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve this worker's Prometheus metrics on this port")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Interface for --metrics-port")] = "127.0.0.1",
) -> None:
    """Run background workers without the API until SIGTERM or SIGINT. Start as many as
    wanted: they share the queues through the database (claims with leases; on PostgreSQL
    FOR UPDATE SKIP LOCKED), and a killed one's claims are taken over when they expire.
    Their counters are served with --metrics-port (CONSENTGATE_METRICS_TOKEN applies)."""
    import signal
    import threading

    from consentgate.observability.logs import configure_logging

    try:
        log_format = load_settings().server.log_format
    except ConsentGateError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    configure_logging("text" if log_format == "text" else "json", log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    kinds = ("dispatch", "relay", "checkpoint") if kind is WorkerKind.all else (kind.value,)
    log = logging.getLogger("consentgate.worker")
    with _app() as app:
        app.start_background(kinds=kinds)
        stop_metrics = None
        if metrics_port is not None:
            from consentgate.observability.exposition import serve_metrics

            stop_metrics = serve_metrics(
                app.metrics.exposition_registry(),
                metrics_host,
                metrics_port,
                app.settings.server.metrics_token,
            )
        log.info(
            "consentgate worker running: %s",
            ", ".join(kinds),
            extra={"kinds": kinds, "metrics_port": metrics_port},
        )
        while not stop.wait(0.5):
            pass
        log.info("consentgate worker stopping")
        if stop_metrics is not None:
            stop_metrics()


@cli.command()
def migrate() -> None:
    """Apply database migrations (serve does this at start-up too)."""
    with _app():
        typer.echo("schema is up to date", err=True)


@tenant_cli.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Tenant name: lower-case letters, digits, hyphens")],
    region: Annotated[
        str | None, typer.Option(help="Default phone region (ISO 3166 alpha-2), e.g. GB")
    ] = None,
) -> None:
    """Create a tenant; prints its owner API key and webhook secret (shown once)."""
    with _app() as app:
        _emit(app.tenants.create(name, region))


@tenant_cli.command("add-key")
def tenant_add_key(
    name: str,
    scopes: Annotated[str, typer.Option(help="Comma-separated, e.g. audit:read")],
    label: Annotated[str | None, typer.Option(help="A note on whose key this is")] = None,
) -> None:
    """Add an API key with the given scopes; prints it (shown once)."""
    with _app() as app:
        key = app.tenants.add_key(name, parse_scopes(scopes), label)
        _emit({"tenant": name, "key_id": key.key_id, "api_key": key.api_key, "scopes": key.scopes})


@tenant_cli.command("list")
def tenant_list() -> None:
    """List tenant names."""
    with _app() as app:
        _emit(app.tenants.names())


class RotateKind(StrEnum):
    salt = "salt"
    signing = "signing"


@keys_cli.command("rotate")
def keys_rotate(
    tenant: Annotated[str, typer.Option(help="Tenant name")],
    kind: Annotated[RotateKind, typer.Option(help="salt or signing")],
) -> None:
    """Add a new current salt version or signing key; old ones keep verifying/matching."""
    with _app() as app:
        if not app.tenants.exists(tenant):
            typer.echo(f"error: no tenant named {tenant!r}", err=True)
            raise typer.Exit(2)
        ident = app.keystore.rotate(tenant, KeyKind(kind.value))
        field = "salt_version" if kind is RotateKind.salt else "kid"
        _emit({"tenant": tenant, "kind": kind.value, field: ident})


def _with_progress(tenant: str, run: Callable[[Callable[[int, int], None] | None], T]) -> T:
    if not sys.stderr.isatty():
        return run(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=None,
        transient=True,
    ) as bar:
        task = bar.add_task(f"verifying {tenant}", total=None)
        return run(lambda done, total: bar.update(task, completed=done, total=total))


@ledger_cli.command("verify")
def ledger_verify(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: all)")] = None,
    against_checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            help="A signed checkpoint saved earlier (`ledger checkpoint --out`); the ledger "
            "must extend it (consistency proof). Repeat for several tenants"
        ),
    ] = None,
) -> None:
    """Recompute every leaf, node, checkpoint and state row; exit 1 at the first bad seq, or
    when the ledger does not extend a saved checkpoint (shorter: acknowledged events lost)."""
    from consentgate.ledger.extends import NotExtended, check_extends

    with _app() as app:
        names = [tenant] if tenant else app.tenants.names()
        saved = _saved_checkpoints(app, names, against_checkpoint or [])
        reports = []
        for name in names:
            try:
                with read_tx(app.engine) as conn:
                    report = _with_progress(name, partial(verify_tenant, conn, name, app.ledger))
                    extends = [
                        check_extends(conn, name, app.ledger, n) for n in saved.get(name, [])
                    ]
            except LedgerTampered as exc:
                where = f"first bad seq: {exc.seq}" if exc.seq is not None else "not leaf-specific"
                typer.echo(f"TAMPERED tenant={name} {where}: {exc.detail}", err=True)
                _emit({"ok": False, "tenant": name, "first_bad_seq": exc.seq, "detail": exc.detail})
                raise typer.Exit(1) from None
            except NotExtended as exc:
                typer.echo(f"NOT EXTENDED tenant={name} ({exc.reason}): {exc.detail}", err=True)
                _emit(
                    {
                        "ok": False,
                        "tenant": name,
                        "reason": exc.reason,
                        "missing": exc.missing,
                        "detail": exc.detail,
                    }
                )
                raise typer.Exit(1) from None
            reports.append(report.as_dict() | {"extends": [e.as_dict() for e in extends]})
        _emit(reports)


def _saved_checkpoints(app: App, names: list[str], files: list[Path]) -> dict[str, list[str]]:
    """Saved checkpoint notes by tenant, matched by their origin line."""
    from consentgate.ledger.extends import note_origin

    by_origin = {app.ledger.origin(name): name for name in names}
    found: dict[str, list[str]] = {}
    for path in files:
        try:
            note = path.read_text()
            origin = note_origin(note)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            typer.echo(f"error: cannot read checkpoint {path}: {exc}", err=True)
            raise typer.Exit(2) from None
        if origin not in by_origin:
            typer.echo(
                f"error: {path} is a checkpoint of {origin!r}, no tenant verified here", err=True
            )
            raise typer.Exit(2)
        found.setdefault(by_origin[origin], []).append(note)
    return found


@ledger_cli.command("checkpoint")
def ledger_checkpoint(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: all)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write <tenant>.checkpoint files into this directory")
    ] = None,
) -> None:
    """Each tenant's latest signed checkpoint, to keep outside the database (before a backup,
    on a schedule): `ledger verify --against-checkpoint` proves a restored ledger extends it.
    When checkpoint workers sign (CONSENTGATE_CHECKPOINT_ON_COMMIT=false), the head is signed
    first, so the checkpoint covers every event acknowledged so far."""
    from consentgate.ledger.signer import sign_tenant

    with _app() as app:
        names = [tenant] if tenant else app.tenants.names()
        for name in names:
            if not app.tenants.exists(name):
                typer.echo(f"error: no tenant named {name!r}", err=True)
                raise typer.Exit(2)
            if not app.ledger.sign_on_commit:
                sign_tenant(app.engine, app.ledger, app.clock, name)
        with read_tx(app.engine) as conn:
            notes = {name: _latest_or_none(app, conn, name) for name in names}
    written: dict[str, Any] = {}
    for name, cp in notes.items():
        if cp is None:
            written[name] = {"tree_size": 0, "checkpoint": None}  # nothing recorded yet
        elif out is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{name}.checkpoint"
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_text(cp.note)
            os.replace(partial, path)  # run on a schedule: never leave a half-written file
            written[name] = {"tree_size": cp.tree_size, "file": str(path)}
        else:
            written[name] = {"tree_size": cp.tree_size, "checkpoint": cp.note}
    _emit(written)


def _latest_or_none(app: App, conn: Connection, tenant: str) -> SignedCheckpoint | None:
    try:
        return app.ledger.latest_checkpoint(conn, tenant)
    except NotFound:
        return None


@partitions_cli.command("ensure")
def partitions_ensure(
    months_ahead: Annotated[
        int, typer.Option(min=0, max=24, help="Months after this one to make partitions for")
    ] = 2,
) -> None:
    """Make the month partitions of the delivery-event table for this month and the next
    ones (checkpoint workers do this too); prints what was made and what exists. SQLite:
    nothing to do (its tables are not partitioned)."""
    from consentgate.domain.timeutil import to_micros
    from consentgate.storage import partitions
    from consentgate.storage.engine import write_tx

    with _app() as app:
        with write_tx(app.engine) as conn:
            made = partitions.ensure_month_partitions(
                conn, to_micros(app.clock.now()), months_ahead
            )
        with read_tx(app.engine) as conn:
            tables = {
                t: partitions.children(conn, t)
                for t in (*partitions.HASH_TABLES, *partitions.MONTH_TABLES)
            }
        _emit({"store": app.engine.dialect.name, "created": made, "partitions": tables})


@cli.command()
def backup(
    to: Annotated[Path, typer.Option(help="The backup file to create (never overwritten)")],
) -> None:
    """Online backup of the SQLite store (sqlite3 backup API: one consistent snapshot while the
    service writes), checked and synced; prints each tenant's tree size and checkpoint in it.
    PostgreSQL: pg_dump / pg_basebackup (docs/operations.md). Keys are not included."""
    from consentgate.storage.backup import backup_sqlite

    with _app() as app:
        _emit(backup_sqlite(app.engine, to).as_dict())


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        typer.echo(f"INVALID: cannot read {what} {path}: {exc}", err=True)
        raise typer.Exit(2) from None


def _read_verifier_keys(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        typer.echo(f"INVALID: cannot read verifier key {path}: {exc}", err=True)
        raise typer.Exit(2) from None


@receipt_cli.command("verify")
def receipt_verify(
    file: Annotated[Path, typer.Argument(help="The receipt bundle (JSON from the API)")],
    jwks: Annotated[Path, typer.Option(help="The tenant's JWKS (jwks.json)")],
    key: Annotated[
        Path,
        typer.Option(help="Ledger verifier key(s), one per line (GET /v1/ledger/key?all=true)"),
    ],
) -> None:
    """Check a receipt offline: JWS signature, claims vs leaf, inclusion proof, checkpoint.
    No database, no network. Exit 0 when everything holds, 1 with the reason otherwise."""
    from consentgate.consent.receipt_check import ReceiptInvalid, check_bundle

    bundle = _read_json(file, "receipt bundle")
    key_set = _read_json(jwks, "JWKS")
    verifiers = _read_verifier_keys(key)
    try:
        claims = check_bundle(bundle, key_set if isinstance(key_set, dict) else {}, verifiers)
    except ReceiptInvalid as exc:
        typer.echo(f"INVALID: {exc}", err=True)
        raise typer.Exit(1) from None
    _emit(
        {
            "ok": True,
            "sub": claims.get("sub"),
            "consent_type": claims.get("consent_type"),
            "status": claims.get("status"),
            "ledger_seq": claims.get("ledger_seq"),
        }
    )


@audit_cli.command("verify-bundle")
def audit_verify_bundle(
    file: Annotated[Path, typer.Argument(help="The export bundle, byte for byte as served")],
    jwks: Annotated[Path, typer.Option(help="The tenant's JWKS (jwks.json)")],
    key: Annotated[
        Path,
        typer.Option(help="Ledger verifier key(s), one per line (GET /v1/ledger/key?all=true)"),
    ],
) -> None:
    """Check an audit export offline: bundle signature, checkpoint, every inclusion proof,
    every receipt, and that each send's consent leaf was a grant in force at the send.
    No database, no network. Exit 0 with a summary, 1 with the first problem otherwise."""
    from consentgate.audit.bundle_check import BundleInvalid, verify_bundle

    try:
        raw = file.read_bytes()
    except OSError as exc:
        typer.echo(f"INVALID: cannot read audit bundle {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    key_set = _read_json(jwks, "JWKS")
    verifiers = _read_verifier_keys(key)
    try:
        summary = verify_bundle(raw, key_set if isinstance(key_set, dict) else {}, verifiers)
    except BundleInvalid as exc:
        typer.echo(f"INVALID: {exc}", err=True)
        raise typer.Exit(1) from None
    _emit(summary.as_dict())


@retention_cli.command("run")
def retention_run(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: all)")] = None,
    compact: Annotated[
        bool,
        typer.Option(
            help="Also rewrite the tables that held personal links (PostgreSQL VACUUM FULL: "
            "an exclusive lock per table while it runs; SQLite VACUUM)"
        ),
    ] = False,
) -> None:
    """Delete what outlived each tenant's retention settings, in short batches (never a
    ledger leaf, node or checkpoint); prints the rows deleted per table as JSON."""
    with _app() as app:
        _emit(app.retention.run([tenant] if tenant else None, compact=compact))


@cli.command()
def demo() -> None:
    """An end-to-end scenario against the sandbox carrier (throwaway data, loopback only)."""
    from consentgate import demo as scenario

    scenario.run()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
