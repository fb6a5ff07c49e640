"""The dispatch worker: a thread that works the campaign queue until stopped."""

from __future__ import annotations

import logging
import threading

from consentgate.delivery.campaigns import CampaignService

log = logging.getLogger("consentgate.worker")


class DispatchWorker:
    def __init__(self, campaigns: CampaignService, idle_seconds: float = 0.05) -> None:
        self._campaigns = campaigns
        self._idle = idle_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                handled = self._campaigns.dispatch_once(cancel=self._stop)
            except Exception as exc:  # the store is down, say: claims expire, retry later
                log.warning("dispatch pass failed (%s); retrying", type(exc).__name__)
                handled = 0
            if handled == 0:
                self._stop.wait(self._idle)
