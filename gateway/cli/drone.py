"""``lookout drone ...``: fly the site's drones through the gateway's command path, and list them.

Every subcommand is an operator request like ``lookout command`` (authenticated, journaled under the operator's
name, answered with the drone's result), so ``lookout drone goto uav-1 30.25 120.15 --alt 40`` is the same as
``lookout command uav-1 goto lat=302500000 lon=1201500000 alt_m=40``. Positions are typed in degrees (WGS-84, what
a map shows) and sent as degE7 integers, the protocol's unit. ``lookout drone list`` shows battery, flight mode and
link quality; ``lookout devices`` and ``watch`` append the same table when the site has drones.

Screen text offers zh-CN: with ``LOOKOUT_LANG=zh`` (or a ``zh_*`` LANG) the table headings are in Chinese.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lookout.gateway.cli.common import (
    CODE_EXIT,
    EXIT_FAILED,
    EXIT_OK,
    Usage,
    call,
    conn_parent,
    delivery,
    delivery_parent,
    one,
    run_report,
)

HEAD = {"en": ("DRONE", "STATE", "MODE", "ARMED", "BAT", "GPS", "LINK", "LOSS", "LAT", "LON", "ALT"),
        "zh": ("无人机", "状态", "飞行模式", "解锁", "电量", "定位", "链路", "丢包", "纬度", "经度", "高度")}
WORDS = {"zh": {"yes": "是", "no": "否", "ok": "正常", "lost": "中断", "online": "在线", "stale": "迟滞",
                "offline": "离线", "unknown": "未知", "drones": "架无人机"},
         "en": {"drones": "drone(s)"}}
GPS_FIX = {0: "none", 1: "no fix", 2: "2D", 3: "3D", 4: "DGPS", 5: "RTK float", 6: "RTK", 7: "static", 8: "PPP"}


def lang() -> str:
    v = os.environ.get("LOOKOUT_LANG") or os.environ.get("LANG") or ""
    return "zh" if v.lower().startswith("zh") else "en"


def _w(word: str, lg: str) -> str:
    return WORDS.get(lg, {}).get(word, word)


def drone_table(devs: list[dict[str, Any]], lg: str | None = None) -> str:
    """Drones with battery, mode and link quality; empty text when there are none."""
    lg = lg or lang()
    drones = [d for d in devs if d.get("kind") == "drone"]
    if not drones:
        return ""
    rows = []
    for d in drones:
        i = d.get("info") or {}
        loc = d.get("loc") or {}
        bat = f"{i['bat_pct']}%" if i.get("bat_pct") is not None else f"{i['bat_mv'] / 1000:.1f}V" \
            if i.get("bat_mv") is not None else "-"
        loss = f"{i['loss_pct']}%" if i.get("loss_pct") is not None else "-"
        alt = loc.get("alt_mm")
        rows.append((d["id"], _w(d["state"], lg), str(i.get("state") or "-"),
                     _w("yes" if i.get("armed") else "no", lg) if "armed" in i else "-", bat,
                     GPS_FIX.get(i.get("gps_fix", -1), "-"), _w(str(i.get("link") or "-"), lg), loss,
                     f"{loc['lat'] / 1e7:.6f}" if "lat" in loc else "-",
                     f"{loc['lon'] / 1e7:.6f}" if "lon" in loc else "-",
                     f"{alt / 1000:.1f}" if alt is not None else "-"))
    cols = HEAD[lg]
    w = [max(_width(c), *(_width(r[k]) for r in rows)) for k, c in enumerate(cols)]
    lines = ["  ".join(_pad(c, w[k]) for k, c in enumerate(cols))]
    lines += ["  ".join(_pad(v, w[k]) for k, v in enumerate(r)) for r in rows]
    lines.append(f"{len(drones)} {_w('drones', lg)}")
    return "\n".join(lines)


def _width(s: str) -> int:
    """Columns on a terminal: CJK characters take two."""
    return sum(2 if "\u2e80" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef" else 1 for ch in s)


def _pad(s: str, n: int) -> str:
    return s + " " * (n - _width(s))


def degE7(v: str, what: str, lo: float) -> int:
    try:
        x = float(v)
    except ValueError:
        raise Usage(f"{what} {v!r}: expected degrees, e.g. 30.2512345") from None
    if not -lo <= x <= lo:
        raise Usage(f"{what} {x}: expected -{lo:g}..{lo:g} degrees")
    return round(x * 1e7)


def cmd_drone(args: argparse.Namespace) -> int:
    name = args.action.replace("-", "_")
    a: dict[str, Any] = {}
    try:
        if getattr(args, "lat", None) is not None:
            a["lat"] = degE7(args.lat, "latitude", 90)
        if getattr(args, "lon", None) is not None:
            a["lon"] = degE7(args.lon, "longitude", 180)
    except Usage as e:
        print(f"lookout drone {args.action}: {e}", file=sys.stderr)
        return 2
    for key, attr, scale in (("alt_m", "alt", 1), ("radius_m", "radius", 1), ("speed_cms", "speed", 100)):
        v = getattr(args, attr, None)
        if v is not None:
            a[key] = round(v * scale)
    for key in ("mode", "route", "points"):
        if getattr(args, key, None):
            a[key] = getattr(args, key)
    if getattr(args, "ccw", False):
        a["ccw"] = True
    if name == "mission":
        a["start"] = not args.no_start
        a["rtl"] = not args.no_rtl
    req = {"to": args.drone, "name": name, "args": a, **delivery(args)}
    return call(args, lambda: run_report(args, "command", req))


def cmd_list(args: argparse.Namespace) -> int:
    async def go() -> int:
        r = await one(args, "devices", {"kind": "drone"})
        if r["code"] != "ok":
            print(f"{r['code']}: {r.get('error')}", file=sys.stderr)
            return CODE_EXIT.get(r["code"], EXIT_FAILED)
        devs = r["data"]["devices"]
        print(json.dumps(devs, ensure_ascii=False, indent=1) if args.json else drone_table(devs) or "no drones")
        return EXIT_OK
    return call(args, go)


def register(subparsers: Any) -> None:
    conn, deliv = conn_parent(), delivery_parent()
    p = subparsers.add_parser("drone", help="fly the site's drones (goto, orbit, rtl, land, photo, mission ...)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = sub.add_parser("list", parents=[conn], help="drones with battery, mode and link quality")
    s.set_defaults(func=cmd_list)

    def action(name: str, helptext: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, parents=[conn, deliv], help=helptext)
        s.add_argument("drone", help="drone id")
        s.set_defaults(func=cmd_drone)
        return s

    s = action("goto", "fly to a position and hold there (refused outside the operating area)")
    s.add_argument("lat", help="latitude, degrees (WGS-84)")
    s.add_argument("lon", help="longitude, degrees (WGS-84)")
    s.add_argument("--alt", type=int, required=True, help="height above home, m")
    s.add_argument("--speed", type=float, help="ground speed, m/s")
    s = action("orbit", "circle a point (default: where the drone is)")
    s.add_argument("--radius", type=int, required=True, help="m")
    s.add_argument("--lat")
    s.add_argument("--lon")
    s.add_argument("--alt", type=int, help="height above home, m (default: current)")
    s.add_argument("--speed", type=float, help="m/s")
    s.add_argument("--ccw", action="store_true", help="counter-clockwise")
    s = action("takeoff", "climb to a height (the drone must be armed, in guided mode)")
    s.add_argument("--alt", type=int, required=True, help="height above home, m")
    for name, helptext in (("rtl", "return to launch and land"), ("land", "land where it is"),
                           ("hold", "stop and hold position"), ("arm", "arm the motors"),
                           ("disarm", "disarm (refused in flight)"), ("photo", "take a geotagged photo"),
                           ("video-start", "start recording"), ("video-stop", "stop recording")):
        action(name, helptext)
    s = action("set-mode", "change flight mode (guided, loiter, rtl, land, auto, brake, ...)")
    s.add_argument("mode")
    s = action("mission", "upload a patrol route and start it")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--route", help="a [[mavlink.route]] name from the gateway's config")
    g.add_argument("--points", help='"lat,lon[,alt_m];lat,lon[,alt_m];..." in degrees (at most 15)')
    s.add_argument("--alt", type=int, help="height above home for points without one, m (default 40)")
    s.add_argument("--no-start", action="store_true", help="upload only")
    s.add_argument("--no-rtl", action="store_true", help="do not return to launch at the end")
