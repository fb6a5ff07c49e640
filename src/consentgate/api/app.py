"""The FastAPI app factory: routers, problem handlers, body limits. No business rules."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from consentgate import __version__
from consentgate.api import openapi, problems
from consentgate.api.hotpath import HotPath
from consentgate.api.limits import BodyLimit, NoNul
from consentgate.api.routers import analytics as analytics_router
from consentgate.api.routers import audit as audit_router
from consentgate.api.routers import callbacks, cmp, consent, delivery, health, ledger, receipts
from consentgate.api.routers import crm as crm_router
from consentgate.api.routers import metrics as metrics_router
from consentgate.api.routers import privacy as privacy_router
from consentgate.bootstrap import App
from consentgate.observability.http import AccessLog
from consentgate.sandbox import create_sandbox
from consentgate.sandbox.fastpath import RbmFastPath


def create_app(core: App) -> FastAPI:
    app = FastAPI(
        # FastAPI's OpenTelemetry hooks off: metrics are Prometheus (/metrics), and checking
        # whether OTel is configured cost ~40 µs on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="consentgate",
        version=__version__,
        description=(
            "Consent-gated, end-to-end encrypted RCS messaging with a provable consent ledger. "
            "Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457 problems."
        ),
    )
    app.state.consentgate = core
    problems.install(app)
    app.include_router(health.router)
    app.include_router(metrics_router.router)
    app.include_router(consent.router)
    app.include_router(ledger.router)
    app.include_router(receipts.router)
    app.include_router(audit_router.router)
    app.include_router(cmp.router)
    app.include_router(delivery.router)
    app.include_router(callbacks.router)
    app.include_router(crm_router.router)
    app.include_router(privacy_router.router)
    app.include_router(analytics_router.router)
    openapi.install(app)  # request bodies and problem responses, as served
    if not core.settings.consent.sandbox_url:
        # The sandbox carrier is the default provider: serve it here, at /sandbox.
        app.mount(
            "/sandbox",
            RbmFastPath(  # RBM sends without FastAPI's per-request cost (sandbox/fastpath.py)
                create_sandbox(
                    f"{core.settings.consent.public_url}/v1/providers/rbm/callbacks",
                    core.sandbox_secrets["rbm"],
                    core.sandbox_secrets["twilio"],
                    http=httpx.Client(timeout=5.0),
                )
            ),
        )
    # Innermost of ours: the busiest routes, answered without the router (api/hotpath.py).
    app.add_middleware(HotPath, core=core)
    app.add_middleware(NoNul)  # outside the hot path too
    app.add_middleware(BodyLimit, max_bytes=core.settings.server.max_body_bytes)
    # Outermost: times and logs every request (413s included) by its route template.
    app.add_middleware(AccessLog, metrics=core.metrics)
    return app
