"""The dispatch worker: threads that work the campaign queue until stopped.

With more than one thread, one thread's database work (claim, keys, consent, record) overlaps
another's provider requests; claims are exclusive (leases, a write transaction each), so the
threads never work the same recipient.
"""

from __future__ import annotations

import logging
import threading

from consentgate.delivery.campaigns import CampaignService

log = logging.getLogger("consentgate.worker")


class DispatchWorker:
    def __init__(
        self, campaigns: CampaignService, idle_seconds: float = 0.05, threads: int = 1
    ) -> None:
        self._campaigns = campaigns
        self._idle = idle_seconds
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"dispatch-{n}", daemon=True)
            for n in range(max(1, threads))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                handled = self._campaigns.dispatch_once(cancel=self._stop)
            except Exception as exc:  # the store is down, say: claims expire, retry later
                log.warning("dispatch pass failed (%s); retrying", type(exc).__name__)
                handled = 0
            if handled == 0:
                self._stop.wait(self._idle)
