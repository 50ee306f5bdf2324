"""Short garbage-collection pauses for a gateway holding thousands of devices.

Theory of operation
-------------------
CPython's full (generation 2) collection walks every container object alive, so its pause grows with what the
process holds: ~53,000 objects of loaded modules (pymavlink's generated dialect, aiohttp, paho...) cost ~22 ms,
20,000 devices another ~40 ms on this machine, and at 5,000-10,000 devices the command latency's tail was these
pauses (41-144 ms, issue 17). Those objects live as long as the process; walking them finds nothing to free.

``GCPolicy`` moves them out of the collector's way with ``gc.freeze()`` (the permanent generation, never
walked): once the gateway has started (a full collection first), again when the device count has grown by
``regrow`` since the last freeze (a site's nodes arriving: only the young generations are collected first, so no
full pause), and every ``period_s`` as housekeeping: ``gc.unfreeze()``, one full collection, ``gc.freeze()``, one
full pause an hour instead of one every few seconds. What it may delay: a reference cycle among objects frozen that
becomes garbage later waits until the next housekeeping (at most ``period_s``); anything freed by reference
counting (almost everything) is freed as always. Process-wide, so only the service entry point
(``service.app.run``) uses it, never a library caller. Objects that every device would add to the walk must not
be containers of their own (the MQTT link interns its per-topic handler tuples for that reason).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

REGROW = 0.2  # refreeze when the devices grew by this fraction since the last freeze
PERIOD_S = 3600.0  # and at least this often
CHECK_S = 10.0


class GCPolicy:
    def __init__(self, size: Callable[[], int], regrow: float = REGROW, period_s: float = PERIOD_S):
        self.size = size
        self.regrow = regrow
        self.period_s = period_s
        self.frozen_at_size = 0
        self.frozen_at = 0.0
        self.freezes = 0

    def freeze_now(self, full: bool = True) -> float:
        """Freeze what is alive: after a full collection (``full``: unfreeze first), or after collecting the
        young generations only (no full pause); returns the pause in seconds."""
        t = time.perf_counter()
        if full:
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()
        pause = time.perf_counter() - t
        self.frozen_at_size, self.frozen_at = self.size(), time.monotonic()
        self.freezes += 1
        log.debug("gc: %d objects frozen (%.1f ms)", gc.get_freeze_count(), pause * 1000)
        return pause

    def due(self) -> str | None:
        """``"housekeeping"`` (a full collection is due), ``"grown"`` (freeze the newcomers), or None."""
        if time.monotonic() - self.frozen_at >= self.period_s:
            return "housekeeping"
        if self.size() > self.frozen_at_size * (1 + self.regrow) + 100:
            return "grown"
        return None

    async def run(self, check_s: float = CHECK_S) -> None:
        self.freeze_now()
        try:
            while True:
                await asyncio.sleep(check_s)
                why = self.due()
                if why is not None:
                    self.freeze_now(full=why == "housekeeping")
        finally:
            gc.unfreeze()
