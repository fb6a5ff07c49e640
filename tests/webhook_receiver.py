"""A real webhook receiver for tests: an HTTP server on loopback (its own threads) that
answers each request as a plan says (a status, or a stall longer than the relay's timeout)
and records everything it was sent, in arrival order."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 204
    stall: float = 0.0  # seconds to wait before answering (a timeout, for a short one)


#: (webhook-id, attempt number of that id, starting at 1) → how to answer.
Plan = Callable[[str, int], Reply]


@dataclass(frozen=True)
class Received:
    order: int  # arrival order over all requests
    webhook_id: str
    attempt: int
    headers: dict[str, str]
    body: bytes
    reply: Reply
    answered: int  # order of the moment it was answered (same counter as ``order``)


class Receiver:
    def __init__(self, plan: Plan | None = None) -> None:
        self.plan: Plan = plan or (lambda _id, _n: Reply())
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._clock = itertools.count()
        self._attempts: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the relay expects

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                webhook_id = headers.get("webhook-id", "")
                with receiver._lock:
                    order = next(receiver._clock)
                    attempt = receiver._attempts.get(webhook_id, 0) + 1
                    receiver._attempts[webhook_id] = attempt
                reply = receiver.plan(webhook_id, attempt)
                if reply.stall:
                    time.sleep(reply.stall)
                try:
                    self.send_response(reply.status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the relay gave up waiting and closed the connection
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            order, webhook_id, attempt, headers, body, reply, next(receiver._clock)
                        )
                    )

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return sorted(self.received, key=lambda r: r.order)

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
