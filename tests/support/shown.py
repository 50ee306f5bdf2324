"""What the registry showed against the truth, sampled while a fault test cuts a link again and again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Shown:
    """The registry's state of ``device`` every 50 ms, beside ``really_up()`` at that moment."""

    def __init__(self, gw, device: str, really_up: Callable[[], bool]):
        self.gw, self.device, self.really_up = gw, device, really_up
        self.samples: list[tuple[float, bool, str]] = []  # (t, really up, state shown)

    async def run(self) -> None:
        while True:
            d = self.gw.registry.get(self.device)
            self.samples.append((time.monotonic(), self.really_up(), d.state if d else "unknown"))
            await asyncio.sleep(0.05)

    def wrong_for(self) -> float:
        """The longest span the state shown contradicted the truth (online while down, not online while up)."""
        worst, start = 0.0, None
        for t, up, st in self.samples:
            wrong = (st == "online") != up
            if wrong and start is None:
                start = t
            elif not wrong and start is not None:
                worst, start = max(worst, t - start), None
        if start is not None:
            worst = max(worst, self.samples[-1][0] - start)
        return worst
