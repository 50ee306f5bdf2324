"""The gateway's one clock: wall time in integer milliseconds, as every message and journal entry carries it.

Components take a ``clock`` callable (default ``now_ms``) instead of reading time themselves, so tests drive them
with a fake clock and never sleep.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Unix time in ms (UTC, wall clock; the registry re-bases its deadlines after a link outage)."""
    return time.time_ns() // 1_000_000


__all__ = ["now_ms"]
