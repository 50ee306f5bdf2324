"""The console's pages: one module, one template and one script per view.

Each view module defines ``VIEW`` (its path, template, scripts and navigation label, ``frame.View``) and may
define ``context(request) -> dict`` for what its template needs beyond the common frame. ``MODULES`` lists them
in navigation order; adding a page (the incidents view that comes with the linkage work) is a new module here,
a template in templates/ and a script in static/, plus one entry in ``MODULES``. Pages carry no device data:
their scripts draw it from the live feed (gateway/web/live.py), always as text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

import lookout.gateway.web.views.clips as clips
import lookout.gateway.web.views.device as device
import lookout.gateway.web.views.devices as devices
import lookout.gateway.web.views.frame as frame
import lookout.gateway.web.views.journal as journal
import lookout.gateway.web.views.map as map_view
import lookout.gateway.web.views.wall as wall

MODULES: tuple[Any, ...] = (map_view, devices, device, journal, clips, wall)
frame.NAV[:] = [m.VIEW for m in MODULES if m.VIEW.nav]


def _handler(mod: Any) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def h(request: web.Request) -> web.Response:
        extra = mod.context(request) if hasattr(mod, "context") else {}
        return frame.page(request, mod.VIEW, **extra)
    h.__name__ = f"view_{mod.VIEW.name}"
    return h


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/map")


def routes() -> list[tuple[str, str, Any, str]]:
    out: list[tuple[str, str, Any, str]] = [("GET", "/", root, "root")]
    for m in MODULES:
        out.append(("GET", m.VIEW.path, _handler(m), f"view-{m.VIEW.name}"))
    return out


__all__ = ["MODULES", "routes"]
