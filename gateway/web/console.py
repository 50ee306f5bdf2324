"""The state the console's handlers share: the gateway, sessions, the live hub, templates, preferences."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

import lookout.gateway.web.i18n as i18n
from lookout.gateway.web.auth import LoginGuard, Session, Sessions
from lookout.gateway.web.live import LiveHub
from lookout.gateway.web.sitemap import SiteMap

HERE = Path(__file__).parent
COOKIE = "lk_sid"
PRE_COOKIE = "lk_pre"


class Console:
    """What the handlers share: the gateway, sessions, the live hub, templates, preferences."""

    def __init__(self, gw: Any, sitemap: SiteMap, clock: Callable[[], float] | None = None) -> None:
        wcfg = gw.cfg.web
        self.gw = gw
        self.cfg = wcfg
        self.sitemap = sitemap
        self.sessions = Sessions(wcfg.session_idle_s, wcfg.session_max_s, **({"clock": clock} if clock else {}))
        self.guard = LoginGuard(**({"clock": clock} if clock else {}))
        self.hub = LiveHub(gw, sitemap, self.sessions)
        self.prefs = Prefs(gw.cfg.data_dir / "web" / "prefs.json")
        self.requests = 0
        self.jinja = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                        autoescape=True, undefined=jinja2.StrictUndefined)

    def journal_security(self, summary: str, session: Session | None, request: web.Request,
                         **detail: Any) -> None:
        self.gw.journal.append("security", summary, operator=session.op_id if session else None,
                               detail={"from": request.remote, "path": request.path, **detail})


class Prefs:
    """Per-operator settings of the console (the language), in one small JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, dict[str, str]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def lang(self, op_id: str) -> str | None:
        v = self.data.get(op_id, {}).get("lang")
        return v if v in i18n.LANGS else None

    def set_lang(self, op_id: str, lang: str) -> None:
        self.data.setdefault(op_id, {})["lang"] = lang
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, ensure_ascii=False, sort_keys=True))
        os.replace(tmp, self.path)


CONSOLE = web.AppKey("console", Console)
SESSION = web.RequestKey("session", Session)  # set by app.guard for a signed-in request


def session_of(request: web.Request) -> Session:
    """The signed-in session of a guarded route (the guard put it there)."""
    return request[SESSION]


def set_session_cookie(console: Console, response: web.StreamResponse, sid: str) -> None:
    response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/", secure=console.cfg.cookie_secure)


__all__ = ["CONSOLE", "COOKIE", "SESSION", "Console", "PRE_COOKIE", "Prefs", "session_of", "set_session_cookie"]
