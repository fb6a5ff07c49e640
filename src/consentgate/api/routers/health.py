"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from consentgate.api.deps import get_app
from consentgate.errors import StoreUnavailable
from consentgate.storage.engine import read_tx

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up. (Async: a sync route costs a thread-pool hop per probe.)"""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """The store is reachable."""
    try:
        with read_tx(get_app(request).engine) as conn:
            conn.execute(text("SELECT 1"))
    except StoreUnavailable:
        return JSONResponse({"status": "unavailable", "store": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ready", "store": "ok"})
