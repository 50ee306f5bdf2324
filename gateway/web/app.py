"""The web console's aiohttp application: one factory, one route table, one guard in front of every route.

Theory of operation
-------------------
``make_app(gw)`` builds the application around a running ``Gateway`` (gateway/service/app.py): the console reads
live state from it and sends every action through ``gw.ops`` (``OperatorAPI.handle``), the very call the MQTT
operator API makes, so the journal cannot tell a click from a ``lookout broadcast`` except by request id.

Routes are declared once in ``ROUTES`` (pages from gateway/web/views/, the JSON and file endpoints from api.py,
sign-in from login.py). ``guard`` runs before each of them:

- routes not named ``pub-*`` need a live session (pages redirect to /login, everything else answers 401);
- every request that is not GET/HEAD must come from the console's own origin (``Origin``, else
  ``Sec-Fetch-Site``) and carry the session's CSRF token (``X-CSRF-Token``): else 403, journaled under
  ``security`` when a session was present; the sign-in form has its own double-submit token (auth.py);
- the WebSocket (GET /ws) also checks ``Origin``, since browsers let any site open one (cross-site WebSocket
  hijacking).

Every response carries a Content-Security-Policy without inline scripts (``script-src 'self'``), so even a
rendering bug could not run an injected handler; the scripts themselves never build markup from data (they
set ``textContent``), which the browser tests check with the CSP's help removed from the question: they look for
the injected element in the DOM, not only for an alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

import lookout.gateway.web.api as api
import lookout.gateway.web.login as login
import lookout.gateway.web.views as views
from lookout.gateway.web.console import CONSOLE, COOKIE, HERE, SESSION, Console
from lookout.gateway.web.sitemap import SiteMap
from lookout.gateway.web.sitemap import load as load_sitemap

log = logging.getLogger("lookout.web")

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_BODY = 64 * 1024  # JSON actions are small; evidence and clips are only ever downloaded
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin == f"{request.scheme}://{request.host}"
    site = request.headers.get("Sec-Fetch-Site")
    return site in (None, "same-origin", "none")


def _refuse(request: web.Request, status: int, code: str, error: str) -> web.Response:
    if request.method in SAFE_METHODS and not request.path.startswith("/api/") and request.path != "/ws":
        if status == 401:
            nxt = request.path_qs if request.path not in ("/", "/login") else "/map"
            raise web.HTTPFound("/login?" + urlencode({"next": nxt}))
    return web.json_response({"ok": False, "code": code, "error": error}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE]
    console.requests += 1
    route = request.match_info.route
    public = bool(route.name and route.name.startswith("pub-")) or route.resource is None
    session = console.sessions.get(request.cookies.get(COOKIE), touch=not public)
    if session is not None:
        request[SESSION] = session
    unsafe = request.method not in SAFE_METHODS
    if (unsafe or request.path == "/ws") and not _same_origin(request):
        if session is not None:
            console.journal_security(f"web request from another origin refused ({request.method} {request.path})",
                                     session, request, origin=request.headers.get("Origin", "")[:100])
        return _refuse(request, 403, "forbidden", "cross-origin request refused")
    if public:
        return await handler(request)
    if session is None:
        return _refuse(request, 401, "unauthorized", "not signed in, or the session expired")
    if unsafe:
        token = request.headers.get("X-CSRF-Token")
        if token is None and request.content_type == "application/x-www-form-urlencoded":
            token = (await request.post()).get("csrf")  # type: ignore[assignment]
        if not session.check_csrf(token if isinstance(token, str) else None):
            console.journal_security(f"web action by {session.op_id} without a valid CSRF token refused",
                                     session, request, method=request.method)
            return _refuse(request, 403, "forbidden", "missing or wrong CSRF token")
    return await handler(request)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")  # no-referrer would make browsers send "Origin: null"
    if not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")


def make_app(gw: Any, sitemap: SiteMap | None = None, clock: Callable[[], float] | None = None) -> web.Application:
    """The console for ``gw``; ``sitemap`` defaults to ``[web].site_map`` (or a grid around the devices)."""
    if sitemap is None:
        sitemap = load_sitemap(gw.cfg.web.site_map) if gw.cfg.web.site_map else SiteMap()
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    console = Console(gw, sitemap, clock)
    app[CONSOLE] = console
    app.router.add_static("/static/", HERE / "static", name="pub-static", append_version=True)
    for method, path, handler, name in login.ROUTES + views.routes() + api.ROUTES:
        app.router.add_route(method, path, handler, name=name)
    app.on_response_prepare.append(_headers)
    app.cleanup_ctx.append(_live)
    return app


async def _live(app: web.Application):  # type: ignore[no-untyped-def]
    """The hub's push loop runs exactly as long as the application."""
    hub = app[CONSOLE].hub
    hub.attach()
    task = asyncio.create_task(hub.run(), name="web-live")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for cl in list(hub.clients):
        with contextlib.suppress(Exception):
            await cl.ws.close()


__all__ = ["MAX_BODY", "SAFE_METHODS", "guard", "make_app"]
