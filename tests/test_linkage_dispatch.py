"""Nearest dispatch by travel time and coverage of the 15-minute circle: pure functions over device views."""

from __future__ import annotations

import struct
import zlib

from lookout.gateway.linkage import coverage
from lookout.gateway.linkage.dispatch import DispatchParams, find_unit, rank
from lookout.gateway.linkage.geo import haversine_m

NOW = 1_764_000_000_000
FERRY = (299050000, 1196100000)


def v(dev, kind, lat, lon, state="online", ts=None, **info):
    d = {"id": dev, "site": "dongshan", "kind": kind, "state": state, "loc": {"lat": lat, "lon": lon}}
    if ts is not None:
        d["loc"]["ts"] = ts
    for k in ("officer", "busy"):  # top level in a device view (operator_api.device_view), like the bridges fill it
        if k in info:
            d[k] = info.pop(k)
    if info:
        d["info"] = info
    return d


def test_haversine_against_a_known_distance():
    # one arc-minute of latitude is one nautical mile (1852 m) to within 0.5 %
    assert abs(haversine_m(300000000, 1200000000, 300166667, 1200000000) - 1852) < 10


def test_officers_rank_by_eta_with_the_site_road_factor_and_cutoff():
    p = DispatchParams(officer_mps=10.0, road_factor=1.2, site_road_factor={"dongshan": 3.0}, cutoff_s=600)
    views = [v("rec-a", "recorder", 299080000, 1196100000, officer="a"),  # ~334 m north
             v("rec-b", "recorder", 299050000, 1196130000, officer="b"),  # ~289 m east
             v("rec-c", "recorder", 299250000, 1196100000, officer="c"),  # ~2.2 km: 667 s at 3x road > 600
             v("rec-d", "recorder", 299050000, 1196100000, state="stale", officer="d"),
             v("rec-e", "recorder", 299050000, 1196100000),  # no officer linked
             v("rec-f", "recorder", 299050000, 1196100000, ts=NOW - 301_000, officer="f"),
             v("rec-g", "recorder", 299050000, 1196100000, ts=NOW - 299_000, officer="g", busy=False),
             v("uav-1", "drone", 299050000, 1196100000, bat_pct=99)]  # not an officer
    r = rank(views, *FERRY, "officer", p, NOW, "dongshan", assigned={"rec-b"})
    assert [c.device for c in r.candidates] == ["rec-g", "rec-a"]
    a = r.candidates[1]
    assert a.officer == "a" and a.eta_s == round(haversine_m(*FERRY, 299080000, 1196100000) * 3.0 / 10.0)
    why = dict(r.skipped)
    assert why["rec-b"] == "busy on another incident" and why["rec-d"] == "stale"
    assert why["rec-e"] == "no officer linked to this recorder"
    assert why["rec-f"] == "position 301 s old (limit 300 s)"
    assert why["rec-c"].startswith("ETA 667 s beyond the 600 s cut-off")
    assert r.best is not None and r.best.device == "rec-g"
    ex = r.explain()
    assert ex["chosen"] == "rec-g" and ex["cutoff_s"] == 600 and len(ex["skipped"]) == 5
    # another site with the town road factor: the same officer is faster there
    r2 = rank(views[:1], *FERRY, "officer", p, NOW, "town")
    assert r2.candidates[0].eta_s == round(haversine_m(*FERRY, 299080000, 1196100000) * 1.2 / 10.0)


def test_drones_fly_straight_after_launch_and_need_battery_and_link():
    p = DispatchParams(drone_mps=10.0, drone_launch_s=30, min_battery_pct=40)
    views = [v("uav-1", "drone", 299150000, 1196100000, bat_pct=80, link="ok"),  # ~1.1 km: 30 + 111 s
             v("uav-2", "drone", 299060000, 1196100000, bat_pct=39, link="ok"),
             v("uav-3", "drone", 299060000, 1196100000, bat_pct=90, link="lost"),
             v("uav-4", "drone", 299060000, 1196100000, bat_pct=90, busy=True),
             v("uav-5", "drone", 299060000, 1196100000, link="ok"),
             v("uav-6", "drone", 299060000, 1196100000, bat_pct=90),  # no link field: the bridge did not say
             {"id": "uav-7", "site": "dongshan", "kind": "drone", "state": "online", "info": {"bat_pct": 90}}]
    r = rank(views, *FERRY, "drone", p, NOW, "dongshan")
    assert [c.device for c in r.candidates] == ["uav-6", "uav-1"]
    assert r.candidates[1].eta_s == round(30 + haversine_m(*FERRY, 299150000, 1196100000) / 10.0)
    why = dict(r.skipped)
    assert why == {"uav-2": "battery 39 % (needs 40 %)", "uav-3": "link lost", "uav-4": "busy",
                   "uav-5": "battery unknown % (needs 40 %)", "uav-7": "no position"}
    assert [c.device for c in rank(views, *FERRY, "drone", p, NOW, "dongshan", ignore_busy=True).candidates] == [
        "uav-4", "uav-6", "uav-1"]


def test_find_unit_by_device_or_officer():
    views = [v("rec-1", "recorder", 0, 0, officer="zhang"), v("uav-1", "drone", 0, 0), v("spk-1", "speaker", 0, 0)]
    assert find_unit(views, "zhang")["id"] == "rec-1"
    assert find_unit(views, "rec-1")["id"] == "rec-1" and find_unit(views, "uav-1")["id"] == "uav-1"
    assert find_unit(views, "spk-1") is None and find_unit(views, "nobody") is None


def coverage_world():
    return [v("sen-ferry", "sensor", *FERRY), v("spk-ferry", "speaker", 299062000, 1196108000),
            v("spk-remote", "speaker", 300150000, 1197200000),  # ~16 km away
            v("spk-noloc", "speaker", 0, 0) | {"loc": None},
            v("rec-1", "recorder", 299000000, 1196150000, officer="zhang", busy=True),
            v("uav-1", "drone", 299100000, 1196110000, bat_pct=80, link="ok"),
            v("uav-2", "drone", 299000000, 1196000000, bat_pct=15, link="ok")]


def test_coverage_table_data_and_circles():
    p = DispatchParams(site_road_factor={"dongshan": 2.5})
    rep = coverage.compute(coverage_world(), p, NOW, "dongshan")
    pts = {x["id"]: x for x in rep["points"]}
    assert set(pts) == {"sen-ferry", "spk-ferry", "spk-remote"}  # no position: not a point on the map
    assert pts["sen-ferry"]["covered"] and pts["sen-ferry"]["officer"]["device"] == "rec-1"  # busy still covers
    assert pts["sen-ferry"]["eta_s"] == min(pts["sen-ferry"]["officer"]["eta_s"], pts["sen-ferry"]["drone"]["eta_s"])
    assert rep["uncovered"] == ["spk-remote"] and pts["spk-remote"]["officer"] is None
    assert rep["sites"] == [{"site": "dongshan", "points": 3, "covered": 2, "uncovered": ["spk-remote"]}]
    units = {u["id"]: u for u in rep["units"]}
    assert units["rec-1"]["radius_m"] == round(900 * 8.3 / 2.5)
    assert units["uav-1"]["radius_m"] == (900 - 30) * 12
    assert not units["uav-2"]["available"] and units["uav-2"]["radius_m"] == 0
    # a shorter cut-off shrinks the circles and uncovers more
    rep5 = coverage.compute(coverage_world(), DispatchParams(cutoff_s=60, site_road_factor={"dongshan": 2.5}),
                            NOW, "dongshan")
    assert len(rep5["uncovered"]) >= 2


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return w, h


def test_maps_svg_and_png_escape_labels_and_draw_every_unit(tmp_path):
    world = coverage_world() + [v("rec-<x>", "recorder", 299010000, 1196090000, officer="a&b")]
    rep = coverage.compute(world, DispatchParams(), NOW, "dongshan")
    svg = coverage.render_svg(rep, "zh-CN")
    assert "rec-&lt;x&gt; (a&amp;b)" in svg and "<x>" not in svg
    assert svg.count('stroke-dasharray="6,4"') == 3  # three available units, three circles
    assert "15分钟执法圈覆盖图" in svg and "spk-remote" in svg
    assert "Coverage of the 15-minute circle" in coverage.render_svg(rep, "en")
    used = coverage.render_png(rep, tmp_path / "m.png", "en")
    assert used == "en" and _png_size((tmp_path / "m.png").read_bytes()) == (coverage.W, coverage.H)
    assert coverage.render_png(rep, tmp_path / "z.png", "zh-CN") in ("zh-CN", "en")
    empty = coverage.compute([], DispatchParams(), NOW, "dongshan")
    assert empty["uncovered"] == [] and "<svg" in coverage.render_svg(empty)
    coverage.render_png(empty, tmp_path / "e.png")
