"""Coverage of the 15-minute enforcement circle (15分钟执法圈): which nodes no officer or drone can reach in time.

Theory of operation
-------------------
``compute(views, params, now_ms, site)`` is a pure function of the registry's device views: for every node with a
position (speaker, sensor, camera) it ranks the officers and drones exactly as dispatch does (dispatch.py), except
that a busy unit still counts (coverage is about where the units are, not who is free right now), and records
the fastest of each with its ETA. A node with no unit within ``cutoff_s`` is *uncovered*. Each available unit
gets its circle: the straight-line radius it covers in the cut-off (drone: (cutoff - launch) × speed; officer:
cutoff × speed / the site's road factor), which is what the map draws; the table uses the ETAs.

``render_svg`` and ``render_png`` draw the same scene (one list of shapes from ``_scene``): nodes, units, their
circles, uncovered nodes ringed in red, a scale bar and a legend, in English or zh-CN. The PNG is drawn with
Pillow (no browser, no system library); Chinese labels in the PNG need a CJK font on the machine
(``CJK_FONTS``), otherwise the PNG falls back to English and says so in ``render_png``'s return value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from lookout.gateway.linkage.dispatch import DRONE_KIND, OFFICER_KIND, VIEW_OFFICER, DispatchParams, rank
from lookout.gateway.linkage.geo import LocalProjection

NODE_KINDS = ("speaker", "sensor", "camera")
W, H, MARGIN = 960, 720, 48
MAP_W = W - 250  # the legend has the strip to the right of the map
COLORS = {"speaker": "#1f77b4", "sensor": "#2ca02c", "camera": "#9467bd", "officer": "#ff7f0e",
          "drone": "#d62728", "uncovered": "#d62728"}
LABELS = {
    "en": {"title": "Coverage of the {min}-minute circle — site {site}", "speaker": "speaker",
           "sensor": "sensor", "camera": "camera", "officer": "officer (recorder)", "drone": "drone",
           "uncovered": "outside the circle", "circle": "reach in {min} min", "summary":
           "{cov} of {n} node(s) covered; {unc} outside"},
    "zh-CN": {"title": "{min}分钟执法圈覆盖图 — 站点 {site}", "speaker": "广播喇叭", "sensor": "感知节点",
              "camera": "摄像节点", "officer": "执法人员（执法记录仪）", "drone": "无人机", "uncovered": "圈外节点",
              "circle": "{min}分钟可达范围", "summary": "{n} 个节点中 {cov} 个在圈内，{unc} 个在圈外"},
}
CJK_FONTS = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
             "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
             "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
             "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
             "/usr/share/fonts/truetype/arphic/uming.ttc")


def compute(views: list[dict[str, Any]], p: DispatchParams, now_ms: int, site: str) -> dict[str, Any]:
    """The coverage report: points (nodes) with their nearest officer and drone, units with circles, the
    uncovered node ids and a per-site count."""
    points: list[dict[str, Any]] = []
    for v in views:
        loc = v.get("loc") or {}
        if v.get("kind") not in NODE_KINDS or not isinstance(loc.get("lat"), int):
            continue
        lat, lon = loc["lat"], loc["lon"]
        pt: dict[str, Any] = {"id": v["id"], "kind": v["kind"], "site": v.get("site", site),
                              "state": v.get("state"), "lat": lat, "lon": lon}
        best = None
        for unit in ("officer", "drone"):
            r = rank(views, lat, lon, unit, p, now_ms, pt["site"], ignore_busy=True)
            c = r.best
            pt[unit] = {"device": c.device, "eta_s": c.eta_s, "dist_m": c.dist_m} if c else None
            if c and (best is None or c.eta_s < best):
                best = c.eta_s
        pt["eta_s"] = best
        pt["covered"] = best is not None
        points.append(pt)
    units: list[dict[str, Any]] = []
    for v in views:
        if v.get("kind") not in (OFFICER_KIND, DRONE_KIND):
            continue
        loc = v.get("loc") or {}
        unit = "drone" if v["kind"] == DRONE_KIND else "officer"
        avail = rank([v], loc.get("lat", 0), loc.get("lon", 0), unit, p, now_ms, v.get("site", site),
                     ignore_busy=True)
        why = next((w for d, w in avail.skipped if not w.startswith("ETA")), None)
        u: dict[str, Any] = {"id": v["id"], "unit": unit, "officer": v.get(VIEW_OFFICER),
                             "available": why is None, "why": why}
        if isinstance(loc.get("lat"), int):
            u.update(lat=loc["lat"], lon=loc["lon"],
                     radius_m=round(p.radius_m(v["kind"], v.get("site", site))) if why is None else 0)
        units.append(u)
    sites: dict[str, dict[str, Any]] = {}
    for pt in points:
        s = sites.setdefault(pt["site"], {"site": pt["site"], "points": 0, "covered": 0, "uncovered": []})
        s["points"] += 1
        if pt["covered"]:
            s["covered"] += 1
        else:
            s["uncovered"].append(pt["id"])
    return {"site": site, "cutoff_s": p.cutoff_s, "ts": now_ms, "points": sorted(points, key=lambda x: x["id"]),
            "units": sorted(units, key=lambda x: x["id"]),
            "uncovered": sorted(pt["id"] for pt in points if not pt["covered"]),
            "sites": sorted(sites.values(), key=lambda s: s["site"])}


# -- drawing ------------------------------------------------------------------------------------------------------

def _nice(m: float) -> int:
    """A round scale-bar length not longer than ``m`` metres."""
    if m < 1:
        return 1
    e = 10 ** int(math.floor(math.log10(m)))
    for f in (5, 2, 1):
        if f * e <= m:
            return int(f * e)
    return int(e)


def _scene(rep: dict[str, Any], lang: str) -> list[dict[str, Any]]:
    """Shapes in pixel coordinates (origin top left), in drawing order."""
    L = LABELS.get(lang, LABELS["en"])
    mins = rep["cutoff_s"] // 60
    placed = [(x["lat"], x["lon"]) for x in rep["points"]] + [(u["lat"], u["lon"]) for u in rep["units"]
                                                                if "lat" in u]
    out: list[dict[str, Any]] = [{"t": "title", "x": MARGIN, "y": 28, "text": L["title"].format(
        min=mins, site=rep["site"])}]
    if not placed:
        out.append({"t": "text", "x": MARGIN, "y": H // 2, "text": "-", "color": "#333333"})
        return out
    lat0 = (min(a for a, _ in placed) + max(a for a, _ in placed)) // 2
    lon0 = (min(b for _, b in placed) + max(b for _, b in placed)) // 2
    proj = LocalProjection(lat0, lon0)
    xy = [proj.xy(a, b) for a, b in placed]
    span = max(500.0, max(abs(x) for x, _ in xy) * 2, max(abs(y) for _, y in xy) * 2) * 1.3
    scale = min(MAP_W - 2 * MARGIN, H - 2 * MARGIN - 80) / span  # px per metre
    cx, cy = MAP_W / 2, (H - 40) / 2 + 20

    def px(lat: int, lon: int) -> tuple[float, float]:
        x, y = proj.xy(lat, lon)
        return cx + x * scale, cy - y * scale

    for u in rep["units"]:
        if u.get("radius_m"):
            x, y = px(u["lat"], u["lon"])
            out.append({"t": "circle", "x": x, "y": y, "r": u["radius_m"] * scale, "color": COLORS[u["unit"]]})
    marks: list[tuple[float, float, str, str]] = []
    for pt in rep["points"]:
        x, y = px(pt["lat"], pt["lon"])
        if not pt["covered"]:
            out.append({"t": "ring", "x": x, "y": y, "r": 11, "color": COLORS["uncovered"]})
        marks.append((x, y, pt["kind"], pt["id"]))
    for u in rep["units"]:
        if "lat" in u:
            x, y = px(u["lat"], u["lon"])
            label = u["id"] + (f" ({u['officer']})" if u.get("officer") else "") + ("" if u["available"]
                                                                                    else f" - {u['why']}")
            marks.append((x, y, u["unit"], label))
    taken = [(x - 8, y - 8, x + 8, y + 8) for x, y, _, _ in marks]
    for x, y, kind, label in marks:
        lx, ly = _place(label, x, y, taken)
        m = {"t": "marker", "x": x, "y": y, "kind": kind, "color": COLORS[kind], "label": label, "lx": lx, "ly": ly}
        if abs(ly + 8 - y) > 22:  # moved away to stay readable: a leader line says whose label it is
            ex = lx if lx > x else lx + _text_w(label)
            m["leader"] = (ex, ly + 8)
        out.append(m)
    bar = _nice(span / 5)
    y0 = H - 30
    out.append({"t": "scale", "x": MARGIN, "y": y0, "w": bar * scale,
                "text": f"{bar} m" if bar < 1000 else f"{bar / 1000:g} km"})
    n, unc = len(rep["points"]), len(rep["uncovered"])
    out.append({"t": "text", "x": MARGIN, "y": 50, "color": "#333333",
                "text": L["summary"].format(cov=n - unc, n=n, unc=unc)})
    ly = 72
    for key in ("speaker", "sensor", "camera", "officer", "drone", "uncovered"):
        out.append({"t": "legend", "x": MAP_W + 20, "y": ly, "kind": key, "color": COLORS[key], "text": L[key]})
        ly += 20
    out.append({"t": "legend", "x": MAP_W + 20, "y": ly, "kind": "circle", "color": COLORS["officer"],
                "text": L["circle"].format(min=mins)})
    return out


def _text_w(s: str) -> float:
    return sum(13 if ord(c) >= 0x1100 else 7.5 for c in s)


def _place(label: str, x: float, y: float, taken: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    """Top-left corner of a label next to (x, y) that overlaps no label or marker placed so far (greedy: the
    first free spot of a few around the marker, else the first one)."""
    w, h = _text_w(label), 16
    spots = [(10, -20), (10, 4), (-10 - w, -20), (-10 - w, 4), (-w / 2, -30), (-w / 2, 12)]
    spots += [(dx, dy + k * sign) for k in (18, 36, 54, 72) for sign in (-1, 1) for dx, dy in spots[:4]]
    for dx, dy in spots:
        box = (x + dx, y + dy, x + dx + w, y + dy + h)
        if box[0] < 2 or box[2] > MAP_W + 10 or box[1] < 60 or box[3] > H - 40:
            continue
        if all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3] for t in taken):
            taken.append(box)
            return box[0], box[1]
    taken.append((x + 10, y - 20, x + 10 + w, y - 6))
    return x + 10, y - 20


def _svg_marker(kind: str, x: float, y: float, color: str) -> str:
    if kind == "speaker":
        return f'<polygon points="{x:.1f},{y - 7:.1f} {x - 7:.1f},{y + 6:.1f} {x + 7:.1f},{y + 6:.1f}" fill="{color}"/>'
    if kind in ("sensor", "camera"):
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{color}"/>'
    if kind == "drone":
        return (f'<polygon points="{x:.1f},{y - 8:.1f} {x + 8:.1f},{y:.1f} {x:.1f},{y + 8:.1f} {x - 8:.1f},{y:.1f}"'
                f' fill="{color}"/>')
    if kind == "uncovered":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="none" stroke="{color}" stroke-width="2.5"/>'
    if kind == "circle":
        return (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="{color}" fill-opacity="0.15" stroke="{color}"'
                f' stroke-dasharray="3,2"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}" stroke="#ffffff" stroke-width="1.5"/>'


def render_svg(rep: dict[str, Any], lang: str = "en") -> str:
    """The coverage map as a standalone SVG document (every label escaped)."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             'font-family="Noto Sans CJK SC, Microsoft YaHei, PingFang SC, sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="#f7f9fb"/>', '<g clip-path="none">']
    for s in _scene(rep, lang):
        t, x, y = s["t"], s["x"], s["y"]
        if t == "title":
            parts.append(f'<text x="{x}" y="{y}" font-size="18" font-weight="bold">{escape(s["text"])}</text>')
        elif t == "text":
            parts.append(f'<text x="{x}" y="{y}" fill="{s["color"]}">{escape(s["text"])}</text>')
        elif t == "circle":
            c = s["color"]
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{s["r"]:.1f}" fill="{c}" fill-opacity="0.10" '
                         f'stroke="{c}" stroke-opacity="0.7" stroke-dasharray="6,4"/>')
        elif t == "ring":
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{s["r"]}" fill="none" stroke="{s["color"]}" '
                         'stroke-width="2.5"/>')
        elif t == "marker":
            if "leader" in s:
                parts.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{s["leader"][0]:.1f}" y2="{s["leader"][1]:.1f}" '
                             'stroke="#888888" stroke-width="0.8"/>')
            parts.append(_svg_marker(s["kind"], x, y, s["color"]))
            parts.append(f'<text x="{s["lx"]:.1f}" y="{s["ly"] + 11:.1f}" fill="#222222">{escape(s["label"])}</text>')
        elif t == "scale":
            parts.append(f'<line x1="{x}" y1="{y}" x2="{x + s["w"]:.1f}" y2="{y}" stroke="#222222" '
                         'stroke-width="3"/>')
            parts.append(f'<text x="{x}" y="{y - 6}">{escape(s["text"])}</text>')
        elif t == "legend":
            parts.append(_svg_marker(s["kind"], x, y - 4, s["color"]))
            parts.append(f'<text x="{x + 14}" y="{y}">{escape(s["text"])}</text>')
    parts.append("</g></svg>")
    return "\n".join(parts) + "\n"


def _font(size: int, lang: str) -> tuple[Any, bool]:
    """A Pillow font; (font, True) if it can draw Chinese."""
    from PIL import ImageFont

    if lang == "zh-CN":
        for f in CJK_FONTS:
            if Path(f).exists():
                return ImageFont.truetype(f, size), True
    return ImageFont.load_default(size), False


def render_png(rep: dict[str, Any], path: str | Path, lang: str = "en") -> str:
    """Draw the coverage map to ``path`` with Pillow; returns the language actually used (zh-CN falls back
    to en when the machine has no CJK font)."""
    from PIL import Image, ImageColor, ImageDraw

    font, cjk = _font(13, lang)
    if lang == "zh-CN" and not cjk:
        lang = "en"
    big = _font(18, lang)[0]
    img = Image.new("RGBA", (W, H), "#f7f9fb")
    scene = _scene(rep, lang)
    for s in scene:
        if s["t"] == "circle":  # each on its own layer: drawing replaces pixels, compositing blends them
            shade = Image.new("RGBA", (W, H), (0, 0, 0, 0))
            r, g, b = ImageColor.getrgb(s["color"])[:3]
            x, y, rad = s["x"], s["y"], s["r"]
            ImageDraw.Draw(shade).ellipse((x - rad, y - rad, x + rad, y + rad), fill=(r, g, b, 26),
                                          outline=(r, g, b, 170), width=2)
            img = Image.alpha_composite(img, shade)
    d = ImageDraw.Draw(img)

    def marker(kind: str, x: float, y: float, color: str) -> None:
        if kind == "speaker":
            d.polygon([(x, y - 7), (x - 7, y + 6), (x + 7, y + 6)], fill=color)
        elif kind in ("sensor", "camera"):
            d.rectangle((x - 5, y - 5, x + 5, y + 5), fill=color)
        elif kind == "drone":
            d.polygon([(x, y - 8), (x + 8, y), (x, y + 8), (x - 8, y)], fill=color)
        elif kind == "uncovered":
            d.ellipse((x - 7, y - 7, x + 7, y + 7), outline=color, width=3)
        elif kind == "circle":
            d.ellipse((x - 7, y - 7, x + 7, y + 7), outline=color, width=1)
        else:
            d.ellipse((x - 6, y - 6, x + 6, y + 6), fill=color, outline="#ffffff", width=2)

    for s in scene:
        t, x, y = s["t"], s["x"], s["y"]
        if t == "title":
            d.text((x, y - 18), s["text"], fill="#000000", font=big)
        elif t == "text":
            d.text((x, y - 12), s["text"], fill=s["color"], font=font)
        elif t == "ring":
            r = s["r"]
            d.ellipse((x - r, y - r, x + r, y + r), outline=s["color"], width=3)
        elif t == "marker":
            if "leader" in s:
                d.line((x, y, *s["leader"]), fill="#888888", width=1)
            marker(s["kind"], x, y, s["color"])
            d.text((s["lx"], s["ly"] - 1), s["label"], fill="#222222", font=font)
        elif t == "scale":
            d.line((x, y, x + s["w"], y), fill="#222222", width=3)
            d.text((x, y - 20), s["text"], fill="#222222", font=font)
        elif t == "legend":
            marker(s["kind"], x, y - 4, s["color"])
            d.text((x + 14, y - 12), s["text"], fill="#222222", font=font)
    img.convert("RGB").save(str(path), "PNG")
    return lang


__all__ = ["LABELS", "compute", "render_png", "render_svg"]
