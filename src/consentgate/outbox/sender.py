"""The relay's HTTP seam: POST a batch of signed webhooks concurrently, report each outcome.
(The campaign dispatcher sends provider requests through it too: ``method``, the response
``body`` and a rate limiter's ``wait`` are for it.)

A thread pool of keep-alive ``http.client`` connections (one per thread and endpoint origin):
on loopback it sustains several thousand signed POSTs/s on one core, where the async httpx
client tops out at a few hundred (its connection pool, measured in the bench). Each request
is signed in its thread just before it is sent, so ``webhook-timestamp`` is the attempt's
time even late in a slow batch. Redirects are not followed (a 3xx is a failed attempt), and at
most 64 KiB of a response is read. A request not started by the batch's deadline (or once
``cancel`` is set: the process is stopping) is reported as not attempted, so a claim is never
worked past its lease and a stopping relay hands its unsent claims back at once.
"""

from __future__ import annotations

import http.client
import itertools
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

MAX_RESPONSE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    url: str
    body: bytes
    headers: Callable[[], dict[str, str]]  # called at send time (signs with that timestamp)
    method: str = "POST"
    # Called in the sending thread just before the request, with the batch's deadline: False
    # means "not before the deadline" (a rate limiter), and the request is not attempted.
    wait: Callable[[float], bool] | None = None


@dataclass(frozen=True, slots=True)
class Result:
    attempted: bool
    status: int | None = None  # the HTTP status, when a response came
    error: str | None = None  # None: a 2xx; else "http 500", "timeout", "connection error"
    body: bytes = b""  # the response body (at most MAX_RESPONSE bytes)

    @property
    def ok(self) -> bool:
        return self.attempted and self.error is None


class Sender(Protocol):
    def send_all(
        self,
        requests: Sequence[Request],
        deadline: float,
        cancel: threading.Event | None = None,
    ) -> list[Result]:
        """One result per request, in order. ``deadline``: ``time.monotonic()`` after which
        requests not yet started are returned unattempted; likewise once ``cancel`` is set."""
        ...

    def close(self) -> None: ...


class HttpSender:
    def __init__(self, concurrency: int, timeout: float) -> None:
        self._timeout = timeout
        self._concurrency = max(1, concurrency)
        self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="relay-http")
        self._local = threading.local()
        self._ssl = ssl.create_default_context()
        self._per_thread: list[dict[tuple[str, str], http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def send_all(
        self,
        requests: Sequence[Request],
        deadline: float,
        cancel: threading.Event | None = None,
    ) -> list[Result]:
        # A task per thread, each taking the next request until none is left (a future per
        # request cost more CPU than the request itself on loopback).
        results: list[Result | None] = [None] * len(requests)
        taken = itertools.count()

        def drain() -> None:
            for i in iter(taken.__next__, None):
                if i >= len(requests):
                    return
                results[i] = self._one(requests[i], deadline, cancel)

        tasks = [self._pool.submit(drain) for _ in range(min(self._concurrency, len(requests)))]
        for task in tasks:
            task.result()
        return [r if r is not None else Result(attempted=False) for r in results]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for conns in self._per_thread:
                for conn in conns.values():
                    conn.close()
                conns.clear()

    def _one(self, request: Request, deadline: float, cancel: threading.Event | None) -> Result:
        if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
            return Result(attempted=False)
        if request.wait is not None and not request.wait(deadline):
            return Result(attempted=False)
        try:
            status, body = self._post(request)
        except TimeoutError:
            return Result(True, None, "timeout")
        except (OSError, http.client.HTTPException, ValueError):
            return Result(True, None, "connection error")
        return Result(True, status, None if 200 <= status < 300 else f"http {status}", body)

    def _connections(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        conns: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None
        )
        if conns is None:
            conns = self._local.conns = {}
            with self._lock:
                self._per_thread.append(conns)
        return conns

    def _post(self, request: Request) -> tuple[int, bytes]:
        parts = urlsplit(request.url)
        origin = (parts.scheme, parts.netloc)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conns = self._connections()
        conn = conns.get(origin)
        reused = conn is not None
        if conn is None:
            conn = self._connect(parts.scheme, parts.hostname or "", parts.port)
            conns[origin] = conn
        try:
            return self._exchange(conn, path, request)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            conn.close()
            conns.pop(origin, None)
            if not reused:
                raise
            # A kept-alive connection the endpoint had closed: once more on a new one (the
            # receiver de-duplicates on webhook-id if the first did arrive).
            conn = self._connect(parts.scheme, parts.hostname or "", parts.port)
            conns[origin] = conn
            return self._exchange(conn, path, request)
        except BaseException:
            conn.close()
            conns.pop(origin, None)
            raise

    def _exchange(
        self, conn: http.client.HTTPConnection, path: str, request: Request
    ) -> tuple[int, bytes]:
        conn.request(request.method, path, body=request.body, headers=request.headers())
        response = conn.getresponse()
        body = response.read(MAX_RESPONSE)
        if not response.isclosed():  # more than we read: this connection cannot be reused
            conn.close()
        return response.status, body

    def _connect(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
        return conn
