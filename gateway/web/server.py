"""Serving the console beside the gateway: ``async with WebConsole(gw): ...`` listens on ``[web].listen``.

The console runs in the gateway's own process and event loop: the live feed needs the registry, command and
journal listeners, which exist only there, and a second process would have to rebuild that state from the
retained registry topic (which operators may not read) and poll the journal. Actions still go through the
operator API's ``handle``, so nothing is gained by a separate process that would justify a second copy of the
state (docs/ARCHITECTURE.md, "Why these choices").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

from aiohttp import web

from lookout.gateway.web.app import make_app
from lookout.gateway.web.sitemap import SiteMap


class WebConsole:
    def __init__(self, gw: Any, listen: str | None = None, sitemap: SiteMap | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        """``clock``: monotonic seconds for session expiry (tests pass their own)."""
        self.gw = gw
        self.clock = clock
        self.listen = listen or gw.cfg.web.listen or "127.0.0.1:8080"
        self.sitemap = sitemap
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.url = ""

    async def __aenter__(self) -> Self:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        self.app = make_app(self.gw, self.sitemap, self.clock)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, host, int(port))
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def web_console(gw: Any) -> WebConsole:
    """For ``service.app.run(attach=...)``: the console on ``[web].listen``."""
    return WebConsole(gw)


__all__ = ["WebConsole", "web_console"]
