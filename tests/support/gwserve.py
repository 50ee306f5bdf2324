"""Run a gateway's serve loop for the length of a test block (CPython integration tests)."""

from __future__ import annotations

import asyncio
import contextlib

STOP_S = 15.0  # serve() returns within one tick of stop(); this only bounds a bug


@contextlib.asynccontextmanager
async def serving(gateway):
    """Enter ``gateway`` (a ``gateway.service.Gateway``), run ``serve()`` as a task, and stop it on the way out.

    ``serve()`` not returning within ``STOP_S`` of ``stop()`` fails the test (it is a gateway bug). When the
    block itself fails, that error is the one reported: the serve task is stopped, given ``STOP_S``, then
    cancelled, so a failing test leaves no serve task running into the next one and never hangs."""
    async with gateway as gw:
        task = asyncio.create_task(gw.serve())
        try:
            yield gw
        except BaseException:
            gw.stop()
            await asyncio.wait({task}, timeout=STOP_S)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        gw.stop()
        done, _ = await asyncio.wait({task}, timeout=STOP_S)
        if not done:
            task.cancel()
            raise AssertionError(f"serve() still running {STOP_S:g} s after stop()")
        await task
