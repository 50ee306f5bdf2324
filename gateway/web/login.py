"""Signing in and out of the console (the rules are in auth.py).

The operator id is checked against the key store like an MQTT request's (``verify_operator``: the token), or
against the scrypt hash of the password set with ``lookout provision operator --password`` (checked in a worker
thread: ~50 ms of CPU must not stall the event loop that carries the nodes' traffic). Sign-in, refusal and
sign-out are journaled; the secret never is.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from typing import Any

from aiohttp import web

import lookout.gateway.web.i18n as i18n
from lookout.gateway.admin.passwords import verify_password
from lookout.gateway.web.auth import MAX_FAILS, WINDOW_S
from lookout.gateway.web.console import CONSOLE, COOKIE, PRE_COOKIE, session_of, set_session_cookie
from lookout.protocols.topics import is_valid_id


def _safe_next(v: Any) -> str:
    """Only a path on this console (no scheme, no ``//host``): an open redirect would help phishing."""
    if isinstance(v, str) and v.startswith("/") and not v.startswith("//") and "\\" not in v and len(v) < 512:
        return v
    return "/map"


def _form(request: web.Request, status: int = 200, error: str | None = None, op_id: str = "",
          nxt: str = "/map") -> web.Response:
    console = request.app[CONSOLE]
    lang = request.query.get("lang") or console.cfg.lang
    if lang not in i18n.LANGS:
        lang = console.cfg.lang
    pre = secrets.token_urlsafe(24)
    html = console.jinja.get_template("login.html").render(
        t=i18n.for_lang(lang), lang=lang, langs=i18n.LANGS, site=console.gw.cfg.site, pre=pre, error=error,
        op_id=op_id, next=nxt,
        static=lambda name: str(request.app.router["pub-static"].url_for(filename=name)))
    resp = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    resp.set_cookie(PRE_COOKIE, pre, httponly=True, samesite="Strict", path="/login",
                    secure=console.cfg.cookie_secure)
    return resp


async def login_form(request: web.Request) -> web.Response:
    return _form(request, nxt=_safe_next(request.query.get("next")))


async def login(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    form = await request.post()
    op_id, secret = str(form.get("operator", "")).strip(), str(form.get("secret", ""))
    nxt = _safe_next(form.get("next"))
    t = i18n.for_lang(str(form.get("lang") or console.cfg.lang))
    pre_cookie, pre_form = request.cookies.get(PRE_COOKIE, ""), str(form.get("pre", ""))
    if not pre_cookie or not hmac.compare_digest(pre_cookie.encode(), pre_form.encode()):
        return _form(request, 403, t.login_expired_form, op_id if is_valid_id(op_id) else "", nxt)
    keys = (f"op:{op_id[:48]}", f"ip:{request.remote}")
    if console.guard.locked(*keys):
        return _form(request, 429, t.login_locked.format(minutes=int(WINDOW_S // 60)), "", nxt)
    ks = console.gw.keystore
    how: str | None = None
    if is_valid_id(op_id) and secret:
        if ks.verify_operator(op_id, secret) is not None:
            how = "token"
        elif await asyncio.to_thread(verify_password, secret, ks.operator_password(op_id)):
            how = "password"
    op = ks.get_operator(op_id) if how else None
    if op is None or how is None:
        locked = console.guard.fail(*keys)
        console.gw.journal.append(
            "security", f"web sign-in as {op_id[:48]!r} refused" + (" (now locked out)" if locked else ""),
            operator=op_id[:48] if is_valid_id(op_id) else None,
            detail={"from": request.remote, "locked": locked, "max_fails": MAX_FAILS})
        return _form(request, 401, t.login_failed, op_id if is_valid_id(op_id) else "", nxt)
    console.guard.ok(*keys)
    lang = console.prefs.lang(op.op_id) or console.cfg.lang
    s = console.sessions.create(op.op_id, op.name, op.role, lang, how)
    console.gw.journal.append("operator", f"{op.op_id} signed in to the web console", operator=op.op_id,
                              detail={"how": how, "from": request.remote})
    resp = web.HTTPFound(nxt)
    set_session_cookie(console, resp, s.sid)
    resp.del_cookie(PRE_COOKIE, path="/login")
    raise resp


async def logout(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    s = session_of(request)
    console.sessions.drop(s.sid)
    console.gw.journal.append("operator", f"{s.op_id} signed out of the web console", operator=s.op_id)
    for ws in list(s.sockets):
        await ws.close()
    resp = web.json_response({"ok": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/login", login_form, "pub-login-form"),
    ("POST", "/login", login, "pub-login"),
    ("POST", "/logout", logout, "logout"),
]

__all__ = ["ROUTES"]
