"""Lookout drone commands: their arguments, the geofence, and the MAVLink steps each one takes.

Theory of operation
-------------------
``check(name, args, cfg)`` runs before anything is sent (the command path calls it through the transport while
the operator waits): an unknown command, a bad argument, or a position outside the site's operating area or above
its height limit refuses the command with a code (``unknown_command``, ``bad_args``, ``geofence``). ``plan`` turns
a checked command into steps for the bridge: a MAVLink command (``Spec``) for the command sender, a mode change
(resolved for the vehicle's autopilot), or a mission upload. Positions travel as degE7 integers (the protocol's
unit) and go into COMMAND_INT / MISSION_ITEM_INT as they are, so nothing is rounded on the way to the autopilot.

| Lookout command | MAVLink |
|---|---|
| ``goto`` lat, lon, alt_m [, speed_cms] | COMMAND_INT MAV_CMD_DO_REPOSITION (flag: switch to guided) |
| ``orbit`` radius_m [, lat, lon, alt_m, speed_cms, ccw] | COMMAND_INT MAV_CMD_DO_ORBIT |
| ``rtl`` / ``land`` / ``takeoff`` alt_m | COMMAND_LONG NAV_RETURN_TO_LAUNCH / NAV_LAND / NAV_TAKEOFF |
| ``hold`` / ``set_mode`` mode | COMMAND_LONG MAV_CMD_DO_SET_MODE (hold = loiter) |
| ``arm`` / ``disarm`` | COMMAND_LONG MAV_CMD_COMPONENT_ARM_DISARM |
| ``photo`` / ``video_start`` / ``video_stop`` | IMAGE_START_CAPTURE / VIDEO_START_CAPTURE / VIDEO_STOP_CAPTURE |
| ``mission`` route or points [, alt_m, start, rtl] | mission upload, then MAV_CMD_MISSION_START |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lookout.gateway.core.config_mavlink import MavlinkConfig
from lookout.gateway.links.mavlink.codec import MAV, flavour, known_modes, mode_number
from lookout.gateway.links.mavlink.sender import Spec

COMMANDS = ("goto", "orbit", "rtl", "land", "takeoff", "hold", "set_mode", "arm", "disarm", "photo", "video_start",
            "video_stop", "mission")
NAN = float("nan")
INT32_MAX = 2 ** 31 - 1  # DO_ORBIT x/y: "use the current position"
MAX_POINTS = 15  # inline mission points: one 400-character argument string; named routes may be longer
M_PER_DEG = 111_320.0  # metres per degree of latitude (WGS-84 mean, good to 0.5 % for a fence check)

# argument name -> (required, lo, hi) for integer arguments; strings and booleans are listed apart
INTS: dict[str, dict[str, tuple[bool, int, int]]] = {
    "goto": {"lat": (True, -900_000_000, 900_000_000), "lon": (True, -1_800_000_000, 1_800_000_000),
             "alt_m": (True, 1, 10_000), "speed_cms": (False, 10, 5000)},
    "orbit": {"lat": (False, -900_000_000, 900_000_000), "lon": (False, -1_800_000_000, 1_800_000_000),
              "alt_m": (False, 1, 10_000), "radius_m": (True, 5, 2000), "speed_cms": (False, 10, 2000)},
    "takeoff": {"alt_m": (True, 1, 10_000)},
    "mission": {"alt_m": (False, 1, 10_000)},
}
STRS = {"set_mode": {"mode"}, "mission": {"route", "points"}}
BOOLS = {"orbit": {"ccw"}, "mission": {"start", "rtl"}}


@dataclass(frozen=True)
class Step:
    """One thing the bridge does for a command: ``cmd`` (a Spec), ``mode`` (a mode name) or ``mission``."""

    kind: str
    spec: Spec | None = None
    mode: str | None = None
    points: tuple[tuple[int, int, int], ...] = ()
    what: str = ""


class Refused(Exception):
    """The command may not be sent: ``code`` (unknown_command, bad_args, geofence) and a message naming why."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check(name: str, args: dict[str, Any], cfg: MavlinkConfig) -> tuple[str, str] | None:
    """None if ``name(args)`` may be sent to a drone under ``cfg``, else (code, detail)."""
    try:
        _check(name, args, cfg)
    except Refused as e:
        return e.code, e.detail
    return None


def _check(name: str, args: dict[str, Any], cfg: MavlinkConfig) -> list[tuple[int, int, int]]:
    if name not in COMMANDS:
        raise Refused("unknown_command", f"drones have no command {name!r} (they have {', '.join(COMMANDS)})")
    ints, strs, bools = INTS.get(name, {}), STRS.get(name, set()), BOOLS.get(name, set())
    for k, v in args.items():
        if k in ints:
            _, lo, hi = ints[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise Refused("bad_args", f"{k}: expected an integer {lo}..{hi}, got {v!r}")
        elif k in strs:
            if not isinstance(v, str) or not v:
                raise Refused("bad_args", f"{k}: expected a string, got {v!r}")
        elif k in bools:
            if not isinstance(v, bool):
                raise Refused("bad_args", f"{k}: expected true or false, got {v!r}")
        else:
            raise Refused("bad_args", f"{k}: {name} takes no such argument"
                                      f" ({', '.join(sorted([*ints, *strs, *bools])) or 'none'})")
    for k, (req, _, _) in ints.items():
        if req and k not in args:
            raise Refused("bad_args", f"{k}: required by {name}")
    if ("lat" in args) != ("lon" in args):
        raise Refused("bad_args", "lat and lon: give both or neither")
    pts: list[tuple[int, int, int]] = []
    if name == "goto":
        pts = [(args["lat"], args["lon"], args["alt_m"])]
    elif name == "takeoff":
        _alt(args["alt_m"], cfg)
    elif name == "orbit":
        r = args["radius_m"]
        alt = args.get("alt_m", 0)
        if "lat" in args:
            pts = [(args["lat"], args["lon"], alt)] + circle(args["lat"], args["lon"], r, alt)
        elif alt:
            _alt(alt, cfg)
    elif name == "set_mode":
        if "mode" not in args:
            raise Refused("bad_args", "mode: required by set_mode")
        if args["mode"] not in known_modes():
            raise Refused("bad_args", f"mode: {args['mode']!r} is not one of {', '.join(known_modes())}")
    elif name == "mission":
        pts = mission_points(args, cfg)
    for lat, lon, alt in pts:
        if alt:
            _alt(alt, cfg)
        if cfg.area and not inside(lat, lon, cfg.area):
            raise Refused("geofence", f"{lat / 1e7:.7f},{lon / 1e7:.7f} is outside the site's operating area "
                                      "([mavlink].area)")
    return pts


def _alt(alt_m: int, cfg: MavlinkConfig) -> None:
    if alt_m > cfg.max_alt_m:
        raise Refused("geofence", f"alt_m {alt_m} is above the site's limit of {cfg.max_alt_m} m ([mavlink].max_alt_m)")


def mission_points(args: dict[str, Any], cfg: MavlinkConfig) -> list[tuple[int, int, int]]:
    """The waypoints of a ``mission``: a named ``route`` from the config, or inline ``points``
    (``"lat,lon[,alt_m];..."`` in degrees, WGS-84; ``alt_m`` is the default height)."""
    alt = args.get("alt_m", 40)
    if ("route" in args) == ("points" in args):
        raise Refused("bad_args", "route or points: give exactly one")
    if "route" in args:
        r = cfg.routes_by_name.get(args["route"])
        if r is None:
            raise Refused("bad_args", f"route: no [[mavlink.route]] named {args['route']!r} "
                                      f"({', '.join(sorted(cfg.routes_by_name)) or 'none configured'})")
        return list(r.points)
    out = []
    parts = [p for p in args["points"].split(";") if p.strip()]
    if not 1 <= len(parts) <= MAX_POINTS:
        raise Refused("bad_args", f"points: expected 1..{MAX_POINTS} points \"lat,lon[,alt_m];...\", got {len(parts)}")
    for i, p in enumerate(parts):
        f = p.split(",")
        try:
            lat, lon = float(f[0]), float(f[1])
            a = int(f[2]) if len(f) == 3 else alt
            if len(f) not in (2, 3) or not (-90 <= lat <= 90 and -180 <= lon <= 180 and 1 <= a <= 10_000):
                raise ValueError
        except (ValueError, IndexError):
            raise Refused("bad_args", f"points[{i}]: expected lat,lon[,alt_m] in degrees, got {p!r}") from None
        out.append((round(lat * 1e7), round(lon * 1e7), a))
    return out


def inside(lat: int, lon: int, poly: tuple[tuple[int, int], ...]) -> bool:
    """Point in polygon (even-odd rule) on degE7: a plane is good enough over a township's few kilometres."""
    n = len(poly)
    ins = False
    j = n - 1
    for i in range(n):
        yi, xi = poly[i]
        yj, xj = poly[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            ins = not ins
        j = i
    return ins


def circle(lat: int, lon: int, r_m: int, alt: int, n: int = 8) -> list[tuple[int, int, int]]:
    """``n`` points on a circle of ``r_m`` metres: an orbit is inside the area when its circle is."""
    dlat = r_m / M_PER_DEG * 1e7
    dlon = dlat / max(0.01, math.cos(math.radians(lat / 1e7)))
    return [(round(lat + dlat * math.cos(2 * math.pi * k / n)), round(lon + dlon * math.sin(2 * math.pi * k / n)), alt)
            for k in range(n)]


def plan(name: str, args: dict[str, Any], cfg: MavlinkConfig, home: tuple[int, int, int] | None,
         photo_seq: int = 0) -> list[Step]:
    """The steps of a checked command (raises Refused like ``check``); ``home`` is (lat, lon, m above MSL)."""
    pts = _check(name, args, cfg)
    frame = MAV.MAV_FRAME_GLOBAL_RELATIVE_ALT
    if name == "goto":
        speed = args.get("speed_cms", -100) / 100
        return [Step("cmd", Spec(MAV.MAV_CMD_DO_REPOSITION, speed, MAV.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE, 0, NAN,
                                 args["lat"], args["lon"], args["alt_m"], True, frame), what="reposition")]
    if name == "orbit":
        r = float(args["radius_m"]) * (-1 if args.get("ccw") else 1)
        speed = args["speed_cms"] / 100 if "speed_cms" in args else NAN
        x, y = (args["lat"], args["lon"]) if "lat" in args else (INT32_MAX, INT32_MAX)
        z = float(args["alt_m"]) if "alt_m" in args else NAN
        return [Step("cmd", Spec(MAV.MAV_CMD_DO_ORBIT, r, speed, 0, 0, x, y, z, True, frame), what="orbit")]
    if name == "rtl":
        return [Step("cmd", Spec(MAV.MAV_CMD_NAV_RETURN_TO_LAUNCH), what="return to launch")]
    if name == "land":
        return [Step("cmd", Spec(MAV.MAV_CMD_NAV_LAND, 0, 0, 0, NAN, 0, 0, 0), what="land")]
    if name == "takeoff":
        return [Step("cmd", Spec(MAV.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, NAN, 0, 0, args["alt_m"]), what="takeoff")]
    if name in ("arm", "disarm"):
        return [Step("cmd", Spec(MAV.MAV_CMD_COMPONENT_ARM_DISARM, 1.0 if name == "arm" else 0.0), what=name)]
    if name == "hold":
        return [Step("mode", mode="hold", what="hold")]
    if name == "set_mode":
        return [Step("mode", mode=args["mode"], what="set mode")]
    if name == "photo":
        return [Step("cmd", Spec(MAV.MAV_CMD_IMAGE_START_CAPTURE, 0, 0, 1, photo_seq), what="photo")]
    if name == "video_start":
        return [Step("cmd", Spec(MAV.MAV_CMD_VIDEO_START_CAPTURE, 0, 0), what="video start")]
    if name == "video_stop":
        return [Step("cmd", Spec(MAV.MAV_CMD_VIDEO_STOP_CAPTURE, 0), what="video stop")]
    # mission: ArduPilot keeps item 0 for home, so the route starts at seq 1 (home or, unknown, the first point)
    route = list(pts)
    if args.get("rtl", True):
        route.append((0, 0, 0))
    steps = [Step("mission", points=tuple([home or pts[0]] + route), what="mission upload")]
    if args.get("start", True):
        steps.append(Step("cmd", Spec(MAV.MAV_CMD_MISSION_START, 0, 0), what="mission start"))
    return steps


def mode_spec(autopilot: int | None, mode: str) -> Spec:
    """MAV_CMD_DO_SET_MODE for ``mode`` on this autopilot (Refused if it has no such mode)."""
    n = mode_number(autopilot, mode)
    if n is None:
        raise Refused("bad_args", f"mode: a {flavour(autopilot)} autopilot has no mode {mode!r}")
    if flavour(autopilot) == "px4":
        return Spec(MAV.MAV_CMD_DO_SET_MODE, MAV.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, (n >> 16) & 0xFF, (n >> 24) & 0xFF)
    return Spec(MAV.MAV_CMD_DO_SET_MODE, MAV.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, n)


def mission_items(sysid: int, compid: int, points: tuple[tuple[int, int, int], ...]) -> list[Any]:
    """MISSION_ITEM_INT messages: item 0 home (absolute frame), then waypoints; (0, 0, 0) is return to launch."""
    out = []
    for seq, (lat, lon, alt) in enumerate(points):
        if seq and (lat, lon, alt) == (0, 0, 0):
            cmd, frame = MAV.MAV_CMD_NAV_RETURN_TO_LAUNCH, MAV.MAV_FRAME_MISSION
        else:
            cmd = MAV.MAV_CMD_NAV_WAYPOINT
            frame = MAV.MAV_FRAME_GLOBAL if seq == 0 else MAV.MAV_FRAME_GLOBAL_RELATIVE_ALT
        out.append(MAV.MAVLink_mission_item_int_message(sysid, compid, seq, frame, cmd, 0, 1, 0, 0, 0, NAN,
                                                        lat, lon, float(alt), MAV.MAV_MISSION_TYPE_MISSION))
    return out


__all__ = ["COMMANDS", "Refused", "Step", "check", "circle", "inside", "mission_items", "mission_points",
           "mode_spec", "plan"]
