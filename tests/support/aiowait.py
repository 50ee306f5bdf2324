"""Bounded polling for asyncio tests on CPython: wait for a condition instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import functools
import time


async def until(pred, timeout: float = 8.0, what: str = "condition", seen=None):
    """``pred()``'s first truthy value, polled every 20 ms; AssertionError naming ``what`` on timeout, with
    ``seen()`` (what the test had observed so far) appended when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if r:
            return r
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}" + ("" if seen is None else f"; seen: {seen()!r}"))


def aio(fn):
    """Run an async test in a fresh event loop (no pytest-asyncio here), bounded at 40 s so a hang fails the
    test itself; fixtures pass through."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        asyncio.run(asyncio.wait_for(fn(*a, **kw), 40))
    return wrapper
