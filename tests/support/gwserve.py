"""Run a gateway's serve loop for the length of a test block (CPython integration tests)."""

from __future__ import annotations

import asyncio
import contextlib


@contextlib.asynccontextmanager
async def serving(gateway):
    """Enter ``gateway`` (a ``gateway.service.Gateway``), run ``serve()`` as a task, and stop it on the way out.

    When the block fails, the loop is still stopped and awaited (its own error, if any, is not allowed to hide
    the block's), so a failing test leaves no serve task running into the next one."""
    async with gateway as gw:
        task = asyncio.create_task(gw.serve())
        try:
            yield gw
        except BaseException:
            gw.stop()
            with contextlib.suppress(BaseException):
                await task
            raise
        gw.stop()
        await task
