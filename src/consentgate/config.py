"""Settings, in sections, built by :func:`load_settings` from the environment.

Nothing is read at import time: the composition root calls ``load_settings()`` once and
passes the sections down. Every variable is ``CONSENTGATE_*``; an optional TOML file named by
``CONSENTGATE_CONFIG`` supplies defaults that the environment overrides.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from consentgate.errors import InvalidInput


@dataclass(frozen=True)
class StorageSettings:
    data_dir: Path
    database_url: str
    sqlite_synchronous: str = "FULL"  # acknowledged means durable, power loss included
    busy_timeout_ms: int = 10_000
    pool_size: int = 10

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")


@dataclass(frozen=True)
class KeySettings:
    key_dir: Path
    master_key: str | None = None  # base64 of 32 bytes; else a generated 0600 key file


@dataclass(frozen=True)
class ConsentSettings:
    future_skew_seconds: int = 300
    max_batch: int = 1000
    log_origin_prefix: str = "consentgate.local/ledger"
    public_url: str = "http://127.0.0.1:8080"
    gate_cache_seconds: float = 30.0
    # Single-event ingest (API and CMP webhooks) when busy: how long a committing thread
    # waits for more events to share the transaction (consent.batcher). 0: never waits.
    ingest_linger_seconds: float = 0.002
    sandbox_url: str = ""  # default: <public_url>/sandbox
    # How long a dispatch claim (and a pending message claim) is held before another worker
    # may take it over: longer than any single send can take.
    dispatch_lease_seconds: float = 60.0
    # Ledger checkpoints: signed in every append commit (True), or only by the checkpoint
    # workers, every checkpoint_interval_seconds, for each tenant whose head moved (False).
    checkpoint_on_commit: bool = True
    checkpoint_interval_seconds: float = 1.0


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    log_format: str = "json"  # json | text: how `serve` writes its logs (docs/metrics.md)
    metrics_token: str = field(default="", repr=False)  # if set, GET /metrics needs it


@dataclass(frozen=True)
class WebhookSettings:
    """The outbox relay (CRM/CMP webhooks): retry schedule, HTTP, batching."""

    retry_base_seconds: float = 5.0  # first retry within [0, base]; doubles per failure
    retry_max_seconds: float = 3600.0  # cap of one retry's delay (before jitter)
    give_up_seconds: float = 3 * 86_400.0  # then the delivery is dead (a dead letter)
    timeout_seconds: float = 10.0  # per connect / read on the endpoint
    concurrency: int = 32  # requests in flight per relay process
    batch: int = 256  # deliveries claimed per pass
    lease_seconds: float = 120.0  # a claim not finished by then is taken over
    poll_seconds: float = 0.2  # idle wait between passes when nothing is due


@dataclass(frozen=True)
class DispatchSettings:
    """The campaign dispatcher (docs/campaigns.md): recipients claimed per pass, provider
    requests in flight per process, and each provider's rate limit in messages per second
    (``CONSENTGATE_PROVIDER_RATE_<NAME>``, e.g. ``..._RBM=500``; 0 = no limit)."""

    batch: int = 500
    concurrency: int = 32
    threads: int = 1  # dispatch threads per process (CONSENTGATE_DISPATCH_THREADS)
    provider_rates: dict[str, float] = field(
        default_factory=lambda: {"rbm": 3000.0, "sms": 100.0, "push": 1000.0}
    )


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    keys: KeySettings
    consent: ConsentSettings = field(default_factory=ConsentSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer", field=name) from None


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number", field=name) from None
    if not value >= minimum or value == float("inf"):
        raise InvalidInput(f"{name} must be a finite number >= {minimum}", field=name)
    return value


def _webhooks(env: Mapping[str, str]) -> WebhookSettings:
    w = WebhookSettings()
    return WebhookSettings(
        retry_base_seconds=_float(
            env, "CONSENTGATE_WEBHOOK_RETRY_BASE_SECONDS", w.retry_base_seconds
        ),
        retry_max_seconds=_float(env, "CONSENTGATE_WEBHOOK_RETRY_MAX_SECONDS", w.retry_max_seconds),
        give_up_seconds=_float(env, "CONSENTGATE_WEBHOOK_GIVE_UP_SECONDS", w.give_up_seconds),
        timeout_seconds=_float(env, "CONSENTGATE_WEBHOOK_TIMEOUT_SECONDS", w.timeout_seconds, 0.01),
        concurrency=max(1, _int(env, "CONSENTGATE_WEBHOOK_CONCURRENCY", w.concurrency)),
        batch=max(1, _int(env, "CONSENTGATE_WEBHOOK_BATCH", w.batch)),
        lease_seconds=_float(env, "CONSENTGATE_WEBHOOK_LEASE_SECONDS", w.lease_seconds, 1.0),
        poll_seconds=_float(env, "CONSENTGATE_WEBHOOK_POLL_SECONDS", w.poll_seconds, 0.001),
    )


def _dispatch(env: Mapping[str, str]) -> DispatchSettings:
    d = DispatchSettings()
    rates = dict(d.provider_rates)
    prefix = "CONSENTGATE_PROVIDER_RATE_"
    for key in env:
        if key.startswith(prefix) and key != prefix:
            rates[key[len(prefix) :].lower()] = _float(env, key, 0.0)
    return DispatchSettings(
        batch=max(1, _int(env, "CONSENTGATE_DISPATCH_BATCH", d.batch)),
        concurrency=max(1, _int(env, "CONSENTGATE_DISPATCH_CONCURRENCY", d.concurrency)),
        threads=max(1, _int(env, "CONSENTGATE_DISPATCH_THREADS", d.threads)),
        provider_rates=rates,
    )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(f"{name} must be true or false", field=name)


def _log_format(env: Mapping[str, str]) -> str:
    value = env.get("CONSENTGATE_LOG_FORMAT", "json").strip().lower() or "json"
    if value not in ("json", "text"):
        raise InvalidInput(
            "CONSENTGATE_LOG_FORMAT must be json or text", field="CONSENTGATE_LOG_FORMAT"
        )
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``) and the optional TOML file."""
    env: dict[str, str] = {}
    source = os.environ if environ is None else environ
    config_file = source.get("CONSENTGATE_CONFIG")
    if config_file:
        with open(config_file, "rb") as fh:
            for key, value in tomllib.load(fh).items():
                env[f"CONSENTGATE_{key.upper()}"] = str(value)
    env.update({k: v for k, v in source.items() if k.startswith("CONSENTGATE_")})

    data_dir = Path(env.get("CONSENTGATE_DATA_DIR", "./var")).resolve()
    database_url = env.get("CONSENTGATE_DATABASE_URL") or f"sqlite:///{data_dir / 'consentgate.db'}"
    if not (database_url.startswith("sqlite") or database_url.startswith("postgresql+psycopg")):
        raise InvalidInput(
            "CONSENTGATE_DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL",
            field="CONSENTGATE_DATABASE_URL",
        )
    return Settings(
        storage=StorageSettings(
            data_dir=data_dir,
            database_url=database_url,
            sqlite_synchronous=env.get("CONSENTGATE_SQLITE_SYNCHRONOUS", "FULL").upper(),
            busy_timeout_ms=_int(env, "CONSENTGATE_BUSY_TIMEOUT_MS", 10_000),
            pool_size=_int(env, "CONSENTGATE_POOL_SIZE", 10),
        ),
        keys=KeySettings(
            key_dir=Path(env.get("CONSENTGATE_KEY_DIR", str(data_dir / "keys"))).resolve(),
            master_key=env.get("CONSENTGATE_MASTER_KEY") or None,
        ),
        consent=ConsentSettings(
            future_skew_seconds=_int(env, "CONSENTGATE_FUTURE_SKEW_SECONDS", 300),
            log_origin_prefix=env.get("CONSENTGATE_LOG_ORIGIN_PREFIX", "consentgate.local/ledger"),
            public_url=env.get("CONSENTGATE_PUBLIC_URL", "http://127.0.0.1:8080").rstrip("/"),
            gate_cache_seconds=float(env.get("CONSENTGATE_GATE_CACHE_SECONDS", "30")),
            ingest_linger_seconds=float(env.get("CONSENTGATE_INGEST_LINGER_MS", "2")) / 1000,
            sandbox_url=env.get("CONSENTGATE_SANDBOX_URL", "").rstrip("/"),
            dispatch_lease_seconds=float(env.get("CONSENTGATE_DISPATCH_LEASE_SECONDS", "60")),
            checkpoint_on_commit=_bool(env, "CONSENTGATE_CHECKPOINT_ON_COMMIT", True),
            checkpoint_interval_seconds=_float(
                env, "CONSENTGATE_CHECKPOINT_INTERVAL_SECONDS", 1.0, 0.01
            ),
        ),
        server=ServerSettings(
            host=env.get("CONSENTGATE_HOST", "127.0.0.1"),
            port=_int(env, "CONSENTGATE_PORT", 8080),
            max_body_bytes=_int(env, "CONSENTGATE_MAX_BODY_BYTES", 4 * 1024 * 1024),
            log_format=_log_format(env),
            metrics_token=env.get("CONSENTGATE_METRICS_TOKEN", ""),
        ),
        webhooks=_webhooks(env),
        dispatch=_dispatch(env),
    )
