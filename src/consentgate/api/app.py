"""The FastAPI app factory: routers, problem handlers, body limits. No business rules."""

from __future__ import annotations

from fastapi import FastAPI

from consentgate import __version__
from consentgate.api import problems
from consentgate.api.limits import BodyLimit
from consentgate.api.routers import cmp, consent, health, ledger, receipts
from consentgate.bootstrap import App


def create_app(core: App) -> FastAPI:
    app = FastAPI(
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
    app.include_router(consent.router)
    app.include_router(ledger.router)
    app.include_router(receipts.router)
    app.include_router(cmp.router)
    app.add_middleware(BodyLimit, max_bytes=core.settings.server.max_body_bytes)
    return app
