"""``/metrics`` for a process that serves no API (``consentgate worker --metrics-port``).

A worker's counters (dispatch sends, relay deliveries) exist only in its memory, so it needs
its own scrape endpoint. This is prometheus_client's WSGI exposition on a small threaded
server, behind the same optional bearer token as the API's ``GET /metrics``, with the
per-request stderr lines of ``wsgiref`` silenced (they would break the one-JSON-object-per-line
log and print client addresses).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, token: str = ""
) -> Callable[[], None]:
    """Serve ``registry`` on ``host:port`` in a daemon thread; returns a function that stops
    it. With ``token``, a request must carry ``Authorization: Bearer <token>``."""
    exposition = make_wsgi_app(registry)
    expected = f"Bearer {token}".encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if token and not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"a valid metrics bearer token is required\n"]
        result: Iterable[bytes] = exposition(environ, start_response)
        return result

    server = make_server(host, port, app, _Threading, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


__all__ = ["serve_metrics"]
