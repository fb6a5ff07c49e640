"""``GET /metrics``: the App's Prometheus registry, text format (or OpenMetrics on request).

Open by default, like ``/healthz``: its labels are closed enums and tenant/purpose names,
never an identifier (see docs/metrics.md), and scrapers usually reach it on an internal
network. Set ``CONSENTGATE_METRICS_TOKEN`` to require ``Authorization: Bearer <token>``
(compared in constant time); it is not a tenant API key and grants nothing else.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

from consentgate.api.deps import get_app
from consentgate.errors import Unauthenticated

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus exposition format"},
        401: {"description": "CONSENTGATE_METRICS_TOKEN is set and the bearer token differs"},
    },
)
def metrics(request: Request) -> Response:
    """Process counters (consent events, gate decisions, sends by mode, fallbacks, receipts,
    webhook deliveries, HTTP requests) and queue gauges read from the store at scrape time."""
    core = get_app(request)
    expected = core.settings.server.metrics_token
    if expected:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            raise Unauthenticated("a valid metrics bearer token is required")
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(core.metrics.exposition_registry()), media_type=content_type)
