"""One HTTP worker process of ``consentgate serve --workers N``.

uvicorn starts N processes that share the listening socket and calls :func:`worker_app` in
each (a fresh interpreter: nothing is inherited but the environment). The parent process has
already applied migrations and runs the background workers (dispatch, relay) once, for all;
a worker process only answers requests. Consent caches stay exact across them: a commit in
one process bumps the shared generation counters before it is acknowledged
(:mod:`consentgate.gate.generations`), and on PostgreSQL each process also LISTENs.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

from consentgate.api.app import create_app
from consentgate.bootstrap import build
from consentgate.config import load_settings
from consentgate.observability.logs import configure_logging

#: Set by ``serve`` for its worker processes: the log level it was given.
LOG_LEVEL_ENV = "CONSENTGATE_SERVE_LOG_LEVEL"


def worker_app() -> FastAPI:
    """The app of one worker process (a uvicorn factory)."""
    settings = load_settings()
    configure_logging(
        "text" if settings.server.log_format == "text" else "json",
        os.environ.get(LOG_LEVEL_ENV, "info"),
    )
    # uvicorn's access log prints concrete paths (hashed ids, message ids, sandbox phone
    # numbers): the AccessLog middleware logs route templates instead. (uvicorn switched it
    # off before calling this factory; configure_logging switched it back on.)
    logging.getLogger("uvicorn.access").disabled = True
    core = build(settings, run_migrations=False)
    core.start_background(workers=False)  # on PostgreSQL, the LISTEN thread; nothing else
    return create_app(core)
