"""The console's actions and reads: JSON over HTTP for actions, a WebSocket for the live feed, files.

Theory of operation
-------------------
``POST /api/op`` is the operator API itself: ``{"op": ..., "args": {...}}`` is validated by
``protocols/opapi.validate_args`` (the same checks an MQTT ``opreq`` gets, including its 4 KiB limit) and handed
to ``OperatorAPI.handle`` under the session's operator id with a request id ``web.<n>``, so the journal records
it exactly as from the CLI. The screen sends commands with ``wait: "none"`` and follows their results on the
live feed (accepted -> playing -> done), instead of holding a request open for half a minute.

The other endpoints translate what only a screen has into operator-API calls: a point on the map
(``/api/near``: the speakers within earshot, one ``broadcast`` each, nearest first; ``/api/goto``: a drone's
``goto`` command with the point in WGS-84 degE7), local times in the site's time zone (``/api/journal``), and
files (``/evidence/<sha256>``: the ``clips custody`` op journals the view or download first, then the bytes are
sent with a fixed content type; ``/audio/<clip>``: warning clips to preview, which are not evidence).
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

import lookout.gateway.web.i18n as i18n
from lookout.gateway.clips.store import EXT
from lookout.gateway.web.console import CONSOLE, Console, session_of
from lookout.protocols import opapi
from lookout.protocols.errors import MessageError
from lookout.protocols.topics import is_valid_id

WEB_OPS = ("devices", "broadcast", "stop", "command", "locate", "journal", "clips", "status")
NEAR_M = 600  # a horn loudspeaker is intelligible ~600 m across open water (the demo's design figure)
NEAR_MAX = 8  # at most this many speakers per "near a point" broadcast
_rid = itertools.count(1)
INLINE = ("image/jpeg", "image/png", "image/webp")  # shown in the page; everything else is a download


def _bad(error: str, status: int = 400) -> web.Response:
    return web.json_response({"ok": False, "code": "bad_request", "error": error}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=json.dumps({"ok": False, "code": "bad_request", "error": "not JSON"}),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"ok": False, "code": "bad_request",
                                                  "error": "expected a JSON object"}),
                                 content_type="application/json")
    return body


async def operate(console: Console, op_id: str, op: Any, args: Any) -> dict[str, Any]:
    """One operator-API request from the screen: validated like an MQTT ``opreq``, then ``OperatorAPI.handle``."""
    rid = f"web.{next(_rid)}"
    try:
        if op not in WEB_OPS:
            raise opapi.OpAPIError(f"{op!r} not one of {', '.join(WEB_OPS)}", field="op")
        if not isinstance(args, dict):
            raise opapi.OpAPIError("expected an object", field="args")
        size = len(json.dumps({"id": rid, "op": op, "args": args}))
        if size > opapi.MAX_REQUEST:
            raise opapi.OpAPIError(f"request is {size} bytes, limit {opapi.MAX_REQUEST}", field="payload")
        opapi.validate_args(op, args)
    except MessageError as e:
        console.gw.journal.append("operator", f"bad request from {op_id}", operator=op_id,
                                  detail={"error": str(e), "via": "web"})
        return opapi.response(rid, "bad_request", error=str(e))
    who = console.gw.keystore.get_operator(op_id)
    refused = console.gw.ops.refuse_role(op_id, who.role if who else "viewer", op, args, rid)
    return refused if refused is not None else await console.gw.ops.handle(op_id, op, args, rid)


async def api_op(request: web.Request) -> web.Response:
    body = await _body(request)
    resp = await operate(request.app[CONSOLE], session_of(request).op_id, body.get("op"), body.get("args", {}))
    return web.json_response(resp)


def _xy(body: dict[str, Any]) -> tuple[float, float]:
    x, y = body.get("x"), body.get("y")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e6
               for v in (x, y)):
        raise web.HTTPBadRequest(text=json.dumps({"ok": False, "code": "bad_request",
                                                  "error": "x, y: expected metres on the site map"}),
                                 content_type="application/json")
    return float(x), float(y)  # type: ignore[arg-type]


async def api_near(request: web.Request) -> web.Response:
    """Broadcast from the speakers within ``NEAR_M`` of a map point, nearest first (each its own request)."""
    console, s = request.app[CONSOLE], session_of(request)
    body = await _body(request)
    x, y = _xy(body)
    ranked = []
    for d in console.hub.devices():
        if d["kind"] == "speaker" and "xy" in d:
            dist = math.hypot(d["xy"][0] - x, d["xy"][1] - y)
            if dist <= NEAR_M:
                ranked.append((round(dist), d["id"]))
    ranked.sort()
    ranked = ranked[:NEAR_MAX]
    if not ranked:
        return web.json_response({"ok": False, "code": "unknown_device",
                                  "error": f"no loudspeaker within {NEAR_M} m of that point", "targets": []})
    lat, lon = console.sitemap.unproject(x, y)
    console.gw.journal.append(
        "operator", f"{s.op_id} chose the speakers near ({lat:.5f}, {lon:.5f}): "
        + ", ".join(f"{dev} {m} m" for m, dev in ranked), operator=s.op_id,
        detail={"lat": round(lat * 1e7), "lon": round(lon * 1e7), "radius_m": NEAR_M,
                "ranked": [{"device": dev, "m": m} for m, dev in ranked]})
    out = []
    for m, dev in ranked:
        args = {k: body[k] for k in ("clip", "repeat", "priority", "volume") if k in body}
        out.append({"device": dev, "m": m,
                    "response": await operate(console, s.op_id, "broadcast", {**args, "to": dev, "wait": "none"})})
    return web.json_response({"ok": all(r["response"]["ok"] for r in out), "targets": out})


async def api_goto(request: web.Request) -> web.Response:
    """Send a drone to a map point: the ``goto`` command (args lat, lon in degE7, alt_m) through the API."""
    console, s = request.app[CONSOLE], session_of(request)
    body = await _body(request)
    x, y = _xy(body)
    lat, lon = console.sitemap.unproject(x, y)
    args = {"to": body.get("to"), "name": "goto", "wait": "none",
            "args": {"lat": round(lat * 1e7), "lon": round(lon * 1e7), "alt_m": body.get("alt_m", 60)}}
    return web.json_response(await operate(console, s.op_id, "command", args))


async def api_device(request: web.Request) -> web.Response:
    """One device for its detail page: ``locate`` (journaled as from the CLI) plus the hub's recent history."""
    console, s = request.app[CONSOLE], session_of(request)
    dev = request.match_info["id"]
    if not is_valid_id(dev):
        return _bad(f"{dev[:60]!r} is not a device id")
    resp = await operate(console, s.op_id, "locate", {"device": dev})
    d = console.gw.registry.get(dev)
    view = console.hub.device(d) if d is not None else None
    ev = await operate(console, s.op_id, "clips", {"action": "evidence", "limit": 200})
    evidence = [e for e in (ev.get("data") or {}).get("evidence", []) if e.get("device") == dev][:20]
    return web.json_response({"ok": resp["ok"], "code": resp["code"], "error": resp.get("error"),
                              "device": view, **console.hub.history(dev), "evidence": evidence})


def _local_ms(v: Any, tz: ZoneInfo, field: str) -> int | None:
    if v in (None, ""):
        return None
    try:
        dt = datetime.fromisoformat(str(v))
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"ok": False, "code": "bad_request",
                                                  "error": f"{field}: expected YYYY-MM-DDTHH:MM"}),
                                 content_type="application/json") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return int(dt.timestamp() * 1000)


async def api_journal(request: web.Request) -> web.Response:
    """A page of the journal, newest first; ``from``/``to`` are local times in the site's time zone."""
    console, s = request.app[CONSOLE], session_of(request)
    body = await _body(request)
    tz = ZoneInfo(console.cfg.timezone)
    args: dict[str, Any] = {"desc": True, "limit": body.get("limit", 50)}
    for k in ("kind", "device", "operator", "before"):
        if body.get(k) not in (None, ""):
            args[k] = body[k]
    f, t = _local_ms(body.get("from"), tz, "from"), _local_ms(body.get("to"), tz, "to")
    if f is not None:
        args["from"] = f
    if t is not None:
        args["to"] = t
    return web.json_response(await operate(console, s.op_id, "journal", args))


async def api_lang(request: web.Request) -> web.Response:
    console, s = request.app[CONSOLE], session_of(request)
    lang = (await _body(request)).get("lang")
    if lang not in i18n.LANGS:
        return _bad(f"lang: expected one of {', '.join(i18n.LANGS)}")
    s.lang = lang
    console.prefs.set_lang(s.op_id, lang)
    return web.json_response({"ok": True, "lang": lang})


async def ws_live(request: web.Request) -> web.WebSocketResponse:
    console, s = request.app[CONSOLE], session_of(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4096)
    await ws.prepare(request)
    await console.hub.serve(ws, s, wall=request.query.get("screen") == "wall")
    return ws


async def evidence_file(request: web.Request) -> web.StreamResponse:
    """An evidence file: the access is a custody event (journaled by the ``clips custody`` op) before any byte."""
    console, s = request.app[CONSOLE], session_of(request)
    sha = request.match_info["sha"]
    access = request.query.get("access", "download")
    resp = await operate(console, s.op_id, "clips", {"action": "custody", "sha256": sha,
                                                     "access": "view" if access == "view" else "download"})
    if not resp["ok"]:
        return web.json_response(resp, status=404)
    ev = resp["data"]["evidence"]
    path = console.gw.clipstore.path(sha)
    if path is None or not path.is_file():
        return web.json_response({"ok": False, "code": "failed", "error": "the file is missing"}, status=410)
    mime = ev["mime"] if ev.get("mime") in EXT else "application/octet-stream"
    inline = access == "view" and mime in INLINE
    headers = {"Content-Type": mime, "X-Content-Type-Options": "nosniff",
               "Content-Disposition": ("inline" if inline else "attachment") + f'; filename="{ev["file"]}"'}
    return web.FileResponse(path, headers=headers)


async def audio_clip(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    clip = request.match_info["clip"]
    try:
        path = console.gw.clipdist.audio.path(clip)
    except Exception:  # noqa: BLE001 - ClipError: not a clip id
        return _bad("not a clip id", 404)
    if not path.is_file():
        return _bad("no such clip", 404)
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/ws", ws_live, "ws"),
    ("POST", "/api/op", api_op, "api-op"),
    ("POST", "/api/near", api_near, "api-near"),
    ("POST", "/api/goto", api_goto, "api-goto"),
    ("POST", "/api/journal", api_journal, "api-journal"),
    ("POST", "/api/lang", api_lang, "api-lang"),
    ("GET", "/api/device/{id}", api_device, "api-device"),
    ("GET", "/evidence/{sha}", evidence_file, "evidence"),
    ("GET", "/audio/{clip}", audio_clip, "audio"),
]

__all__ = ["NEAR_M", "ROUTES", "WEB_OPS", "operate"]
