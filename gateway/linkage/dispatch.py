"""Nearest dispatch by travel time (就近派警): rank officers and drones for a place, with the reasons.

Theory of operation
-------------------
Pure functions over the registry's device views (``operator_api.device_view`` dicts: ``id site kind state loc
info``, and for recorders and drones ``officer``/``busy``), so tests drive them with plain data and the journal
can record exactly what was weighed. Straight-line distance underestimates travel (road ≈ 1.2× in towns, far
more around water), so units rank by estimated time:

- an **officer** is a body-worn recorder (kind ``recorder``) linked to an officer (the view's ``officer``: the
  birth's ``x_officer``, from the key store or the recorder's HELLO); ETA = great-circle metres × the site's road
  factor / ``officer_mps``. Available: recorder ``online``, a position no older than ``max_fix_age_s``, not
  busy (the view's ``busy``: its heartbeat ``state`` is ``recording`` or ``dispatched``; or already assigned
  to an open incident here);
- a **drone** (kind ``drone``): ETA = ``drone_launch_s`` + great-circle metres / ``drone_mps`` (it flies
  straight). Available: ``online``, ``info.link == "ok"`` (the bridge's ``x_link``), ``info.bat_pct`` at
  least ``min_battery_pct``, a recent position, not busy (the view's ``busy``: armed in a mode that is someone
  else's flight, e.g. a mission, RTL, landing or a pilot's manual mode).

Units whose ETA exceeds ``cutoff_s`` (the 15-minute enforcement circle, 15分钟执法圈) are skipped with that
reason; the straight line alone is the pre-filter (a unit beyond ``cutoff × speed`` in a straight line cannot
make it). The names of the view fields the drone and recorder bridges fill are the constants below;
tests/test_linkage_units.py checks them against the real bridges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lookout.gateway.linkage.geo import haversine_m

OFFICER_KIND = "recorder"
DRONE_KIND = "drone"
VIEW_OFFICER = "officer"  # recorder view: the officer id the recorder is issued to
VIEW_BUSY = "busy"  # recorder/drone view: true while on another job
INFO_LINK = "link"  # drone view's info: "ok" while the telemetry link is up (hb x_link)
INFO_BATTERY = "bat_pct"  # drone view's info: battery percent (hb bat_pct)
INFO_ARMED = "armed"  # drone view's info: motors armed (hb x_armed); a disarmed drone is launched first
LINK_OK = "ok"


@dataclass(frozen=True)
class DispatchParams:
    cutoff_s: int = 900  # the 15-minute circle
    officer_mps: float = 8.3  # ~30 km/h: motorbike/car on village roads (configurable per deployment)
    drone_mps: float = 12.0  # cruise of a small multirotor
    road_factor: float = 1.2  # road ≈ 1.2 × straight line in towns (computer-aided dispatch practice)
    site_road_factor: dict[str, float] = field(default_factory=dict)  # far more around water
    min_battery_pct: int = 40
    drone_launch_s: int = 30  # take-off and climb before it flies towards the target
    max_fix_age_s: int = 300  # a position older than this is no basis for an ETA

    def road(self, site: str) -> float:
        return self.site_road_factor.get(site, self.road_factor)

    def radius_m(self, kind: str, site: str) -> float:
        """Straight-line radius of the cut-off circle around a unit of ``kind``."""
        if kind == DRONE_KIND:
            return max(0.0, self.cutoff_s - self.drone_launch_s) * self.drone_mps
        return self.cutoff_s * self.officer_mps / self.road(site)


@dataclass(frozen=True)
class Candidate:
    device: str
    kind: str
    dist_m: int
    eta_s: int
    officer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"device": self.device, "dist_m": self.dist_m, "eta_s": self.eta_s}
        if self.officer:
            d["officer"] = self.officer
        return d


@dataclass(frozen=True)
class Ranking:
    kind: str  # "officer" | "drone"
    candidates: tuple[Candidate, ...]  # available, within the cut-off, fastest first
    skipped: tuple[tuple[str, str], ...]  # (device, why)
    cutoff_s: int

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def explain(self) -> dict[str, Any]:
        """For the journal: every candidate with its ETA and every skipped unit with the reason."""
        return {"kind": self.kind, "cutoff_s": self.cutoff_s, "chosen": self.best.device if self.best else None,
                "candidates": [c.to_dict() for c in self.candidates],
                "skipped": [{"device": d, "why": w} for d, w in self.skipped]}


def _fix(v: dict[str, Any], now_ms: int, max_age_s: int) -> tuple[int, int] | str:
    loc = v.get("loc")
    if not isinstance(loc, dict) or not isinstance(loc.get("lat"), int) or not isinstance(loc.get("lon"), int):
        return "no position"
    ts = loc.get("ts")
    if isinstance(ts, int) and now_ms - ts > max_age_s * 1000:
        return f"position {(now_ms - ts) // 1000} s old (limit {max_age_s} s)"
    return loc["lat"], loc["lon"]


def eta_s(kind: str, dist_m: float, p: DispatchParams, site: str) -> float:
    if kind == DRONE_KIND:
        return p.drone_launch_s + dist_m / p.drone_mps
    return dist_m * p.road(site) / p.officer_mps


def rank(views: Iterable[dict[str, Any]], lat: int, lon: int, unit: str, p: DispatchParams, now_ms: int,
         site: str, assigned: Iterable[str] = (), ignore_busy: bool = False) -> Ranking:
    """Rank the available officers (``unit="officer"``) or drones (``unit="drone"``) for the point
    (``lat``, ``lon``) of ``site`` by ETA; ``assigned`` = devices already on an open incident."""
    kind = DRONE_KIND if unit == "drone" else OFFICER_KIND
    busy_ids = set(assigned)
    out: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for v in views:
        if v.get("kind") != kind:
            continue
        dev = v.get("id", "?")
        info = v.get("info") or {}
        if v.get("state") != "online":
            skipped.append((dev, f"{v.get('state', 'unknown')}"))
            continue
        officer = v.get(VIEW_OFFICER) if kind == OFFICER_KIND else None
        if kind == OFFICER_KIND and not officer:
            skipped.append((dev, "no officer linked to this recorder"))
            continue
        if kind == DRONE_KIND:
            if info.get(INFO_LINK, LINK_OK) != LINK_OK:
                skipped.append((dev, f"link {info.get(INFO_LINK)}"))
                continue
            bat = info.get(INFO_BATTERY)
            if not isinstance(bat, int) or bat < p.min_battery_pct:
                skipped.append((dev, f"battery {bat if bat is not None else 'unknown'} % "
                                     f"(needs {p.min_battery_pct} %)"))
                continue
        if not ignore_busy and (v.get(VIEW_BUSY) or dev in busy_ids):
            skipped.append((dev, "busy on another incident" if dev in busy_ids else "busy"))
            continue
        fix = _fix(v, now_ms, p.max_fix_age_s)
        if isinstance(fix, str):
            skipped.append((dev, fix))
            continue
        dist = haversine_m(lat, lon, fix[0], fix[1])
        eta = eta_s(kind, dist, p, site)
        if eta > p.cutoff_s:
            skipped.append((dev, f"ETA {round(eta)} s beyond the {p.cutoff_s} s cut-off ({round(dist)} m)"))
            continue
        out.append(Candidate(dev, kind, round(dist), round(eta), officer))
    out.sort(key=lambda c: (c.eta_s, c.dist_m, c.device))
    return Ranking(unit, tuple(out), tuple(skipped), p.cutoff_s)


def find_unit(views: Iterable[dict[str, Any]], who: str) -> dict[str, Any] | None:
    """An operator's ``--to``: a recorder or drone device id, or an officer id (-> the recorder issued to them)."""
    vs = list(views)
    for v in vs:
        if v.get("id") == who and v.get("kind") in (OFFICER_KIND, DRONE_KIND):
            return v
    for v in vs:
        if v.get("kind") == OFFICER_KIND and v.get(VIEW_OFFICER) == who:
            return v
    return None


__all__ = ["DRONE_KIND", "OFFICER_KIND", "VIEW_BUSY", "VIEW_OFFICER", "Candidate", "DispatchParams", "Ranking",
           "eta_s", "find_unit", "rank"]
