"""The frame every page shares: the ``View`` record and ``page()``, which renders a view's template for the
signed-in operator with the navigation, the language catalog and the boot data its scripts read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

import lookout.gateway.web.i18n as i18n
from lookout.gateway.web.api import NEAR_M
from lookout.gateway.web.console import CONSOLE, session_of


@dataclass(frozen=True)
class View:
    name: str
    path: str
    template: str
    scripts: tuple[str, ...]
    nav: str | None = None  # catalog key of its navigation label; None = not in the navigation bar


NAV: list[View] = []  # filled by views/__init__.py in navigation order


def page(request: web.Request, view: View, **extra: Any) -> web.Response:
    """Render ``view``'s template in the common frame for the signed-in operator."""
    console = request.app[CONSOLE]
    s = session_of(request)
    cfg = console.gw.cfg
    t = i18n.for_lang(s.lang)
    boot = {"lang": s.lang, "tz": cfg.web.timezone, "site": cfg.site, "view": view.name, "me": s.op_id,
            "circle_m": cfg.web.circle_m, "near_m": NEAR_M, "t": dict(t), "zones": sorted(cfg.zones), **extra}

    def static(name: str) -> str:
        return str(request.app.router["pub-static"].url_for(filename=name))

    html = console.jinja.get_template(view.template).render(
        t=t, lang=s.lang, me=s, site=cfg.site, view=view.name, nav=NAV, csrf=s.csrf, boot=boot,
        scripts=view.scripts, static=static, langs=i18n.LANGS, **extra)
    return web.Response(text=html, content_type="text/html", charset="utf-8")


__all__ = ["NAV", "View", "page"]
