"""Many provider sends at once, for a dispatch batch: wire-format providers (RBM) through the
outbox relay's :class:`~consentgate.outbox.sender.HttpSender` (a thread pool of keep-alive
``http.client`` connections: on loopback several thousand requests/s where an httpx client
per request tops out at a few hundred), other providers' own ``send`` on a thread pool of
this module; each provider within its rate limit (:mod:`consentgate.delivery.ratelimit`).
Answers come back in order: a receipt, the provider's error, or None for a send never
attempted (past the batch's deadline or cancelled) that the caller hands back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from consentgate.delivery.providers.base import (
    OutboundMessage,
    Provider,
    ProviderError,
    ProviderUnavailable,
    SendReceipt,
    WireSender,
)
from consentgate.delivery.ratelimit import RateLimits
from consentgate.outbox.sender import Request, Result, Sender

Answer = SendReceipt | ProviderError | None


class Fanout:
    def __init__(self, sender: Sender | None, limits: RateLimits, concurrency: int) -> None:
        self._sender = sender
        self._limits = limits
        # Providers without a wire format of their own (a test fake) are called from here.
        self._pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="dispatch-send")
        self._wire: dict[str, bool] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def send_all(
        self,
        sends: Sequence[tuple[OutboundMessage, Provider]],
        deadline: float,
        cancel: threading.Event | None,
    ) -> list[SendReceipt | ProviderError | None]:
        """Every send at once: wire-format providers through the HTTP sender's keep-alive
        connections, others on this dispatcher's threads. None: not attempted."""
        answers: list[SendReceipt | ProviderError | None] = [None] * len(sends)
        wired = [(n, m, p) for n, (m, p) in enumerate(sends) if self._wired(p)]
        wired_at = {n for n, _, _ in wired}
        others = [
            self._pool.submit(self._send_one, m, p, deadline, cancel)
            for n, (m, p) in enumerate(sends)
            if n not in wired_at
        ]
        if wired and self._sender is not None:
            requests = [self._request(m, p) for _, m, p in wired]
            results = self._sender.send_all(requests, deadline, cancel)
            for (n, m, p), result in zip(wired, results, strict=True):
                answers[n] = _read(m, p, result)
        rest = iter(others)
        for n in range(len(sends)):
            if n not in wired_at:
                answers[n] = next(rest).result()
        return answers

    def _wired(self, provider: Provider) -> bool:
        """Whether the provider's sends go through the HTTP sender (a Protocol isinstance
        check is slow: asked once per provider)."""
        known = self._wire.get(provider.name)
        if known is None:
            known = self._wire[provider.name] = self._sender is not None and isinstance(
                provider, WireSender
            )
        return known

    def _request(self, message: OutboundMessage, provider: Provider) -> Request:
        wire = cast(WireSender, provider).send_request(message)
        headers = wire.headers
        return Request(
            wire.url, wire.body, lambda: headers, method=wire.method, wait=self._wait(provider)
        )

    def _wait(self, provider: Provider) -> Callable[[float], bool] | None:
        bucket = self._limits.bucket(provider.name)
        return None if bucket is None else bucket.acquire

    def _send_one(
        self,
        message: OutboundMessage,
        provider: Provider,
        deadline: float,
        cancel: threading.Event | None,
    ) -> SendReceipt | ProviderError | None:
        if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
            return None
        wait = self._wait(provider)
        if wait is not None and not wait(deadline):
            return None
        try:
            return provider.send(message)
        except ProviderError as exc:
            return exc


def _read(message: OutboundMessage, provider: Provider, result: Result) -> Any:
    """A wire result as the provider reads it: a receipt, a ProviderError, or None (untried)."""
    if not result.attempted:
        return None
    if result.status is None:
        detail = f"{getattr(provider, 'name', 'provider')}: {result.error}"
        return ProviderUnavailable(detail, maybe_sent=True)
    try:
        return cast(WireSender, provider).send_answer(message, result.status, result.body)
    except ProviderError as exc:
        return exc
