"""The drone bridge's part of gateway.toml: ``[mavlink]``, ``[[mavlink.endpoint]]``, ``[[mavlink.route]]``, ``[[drone]]``.

Theory of operation: ``config.from_dict`` hands the two raw tables to ``parse``, which checks them the way the rest
of the file is checked (every error names its key as the operator wrote it, e.g. ``[[mavlink.endpoint]] #2
(radio).url: ...``; unknown keys are errors) and returns a frozen ``MavlinkConfig`` or None when there is no
``[mavlink]`` section. Coordinates are written in degrees in the file (what a map shows) and held as WGS-84 degE7
integers, the unit of the whole protocol. Nothing here opens a port: the bridge (gateway/links/mavlink) does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lookout.protocols.topics import is_valid_id

SCHEMES = ("udpin", "udpout", "tcp", "serial")
BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 921600, 1500000)


@dataclass(frozen=True)
class EndpointConfig:
    """One MAVLink link. ``forward``: a ground station on the duty desk that gets the raw stream (and may command)."""

    name: str
    url: str
    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    baud: int = 0
    forward: bool = False
    block: tuple[str, ...] = ()


@dataclass(frozen=True)
class DroneConfig:
    id: str
    sysid: int
    compid: int = 1  # MAV_COMP_ID_AUTOPILOT1
    signed: bool = True
    endpoint: str | None = None


@dataclass(frozen=True)
class RouteConfig:
    """A named patrol route: (lat degE7, lon degE7, alt_m above home) per waypoint."""

    name: str
    points: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class MavlinkConfig:
    endpoints: tuple[EndpointConfig, ...] = ()
    drones: tuple[DroneConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    system_id: int = 245  # the bridge's own GCS id; 255 is what QGC/MAVProxy use (and ArduPilot's SYSID_MYGCS)
    component_id: int = 190  # MAV_COMP_ID_MISSIONPLANNER
    heartbeat_hz: int = 1  # ground stations send HEARTBEAT at 1 Hz (MAVLink heartbeat microservice)
    link_timeout_ms: int = 3000  # no packet this long: link-lost (MAVSDK 3 s; MAVProxy 5 s)
    hb_s: int = 5  # the drone's proxy heartbeat on MQTT (the registry's min_hb_s is 5)
    loc_hz: int = 2  # location publishes per drone per second, at most
    status_hz: int = 1  # heartbeat publishes on a change (mode, armed, battery), at most
    stream_hz: int = 10  # GLOBAL_POSITION_INT rate asked of the autopilot (SET_MESSAGE_INTERVAL); 0 = don't ask
    ack_timeout_ms: int = 1000  # COMMAND_ACK wait per attempt (MAVSDK 0.5 s on a direct link; radios are slower)
    max_alt_m: int = 120  # no goto/takeoff/orbit/mission point above this height over home (China: light UAS 120 m)
    area: tuple[tuple[int, int], ...] = ()  # operating area polygon (degE7); empty = no geofence
    routes_by_name: dict[str, RouteConfig] = field(default_factory=dict, compare=False)


class _T:
    """Reads one table, collecting errors that name ``where.key``."""

    def __init__(self, errors: list[str], where: str, table: Any):
        self.errors = errors
        self.where = where
        if table is None:
            table = {}
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table, got {table!r}")
            table = {}
        self.t = table
        self.used: set[str] = set()

    def err(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.where}.{key}: {msg}")

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        self.used.add(key)
        v = self.t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.err(key, f"expected integer {lo}..{hi}, got {v!r}")
            return default
        return v

    def boolean(self, key: str, default: bool) -> bool:
        self.used.add(key)
        v = self.t.get(key, default)
        if not isinstance(v, bool):
            self.err(key, f"expected true or false, got {v!r}")
            return default
        return v

    def text(self, key: str, default: str | None) -> str | None:
        self.used.add(key)
        v = self.t.get(key, default)
        if v is not None and not isinstance(v, str):
            self.err(key, f"expected a string, got {v!r}")
            return default
        return v

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.t.get(key)

    def finish(self) -> None:
        for k in self.t:
            if k not in self.used:
                self.err(k, "unknown key")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _degE7(lat: Any, lon: Any) -> tuple[int, int] | None:
    if not (_num(lat) and _num(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return round(lat * 1e7), round(lon * 1e7)


def parse_url(url: str) -> tuple[str, str, int, str, int] | str:
    """``udpin:HOST:PORT``, ``udpout:HOST:PORT``, ``tcp:HOST:PORT``, ``serial:DEVICE:BAUD`` -> (scheme, host, port,
    path, baud), or the rule it breaks (a string)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in SCHEMES:
        return f"expected one of {', '.join(s + ':' for s in SCHEMES)}..., got {url!r}"
    head, sep, tail = rest.rpartition(":")
    if not sep or not head or not tail.isdigit():
        what = "DEVICE:BAUD" if scheme == "serial" else "HOST:PORT"
        return f"expected {scheme}:{what}, got {url!r}"
    if scheme == "serial":
        if int(tail) not in BAUDS:
            return f"baud {tail}: expected one of {', '.join(map(str, BAUDS))}"
        return scheme, "", 0, head, int(tail)
    host = head[1:-1] if head.startswith("[") and head.endswith("]") else head
    port = int(tail)
    if not 0 <= port <= 65535 or (port == 0 and scheme != "udpin"):
        return f"port {port}: expected 1..65535" + (" (0 = any free port, udpin only)" if scheme != "udpin" else "")
    return scheme, host, port, "", 0


def _points(t: _T, key: str, default_alt: int, max_alt: int) -> tuple[tuple[int, int, int], ...]:
    raw = t.raw(key)
    if not isinstance(raw, list) or not 1 <= len(raw) <= 100:
        t.err(key, f"expected a list of 1..100 [lat, lon] or [lat, lon, alt_m] points, got {raw!r}")
        return ()
    out = []
    for i, p in enumerate(raw):
        ok = isinstance(p, list) and len(p) in (2, 3)
        ll = _degE7(p[0], p[1]) if ok else None
        alt = p[2] if ok and len(p) == 3 else default_alt
        if ll is None or isinstance(alt, bool) or not isinstance(alt, int) or not 1 <= alt <= max_alt:
            t.err(f"{key}[{i}]", f"expected [lat, lon] in degrees (WGS-84) or [lat, lon, alt_m] with alt_m "
                                 f"1..{max_alt}, got {p!r}")
            continue
        out.append((ll[0], ll[1], alt))
    return tuple(out)


def parse(mav: Any, drones: Any, errors: list[str]) -> MavlinkConfig | None:
    """Check ``[mavlink]`` (with its endpoint and route arrays) and ``[[drone]]``; None without ``[mavlink]``."""
    if mav is None:
        if drones:
            errors.append("[[drone]]: needs a [mavlink] section with at least one [[mavlink.endpoint]]")
        return None
    m = _T(errors, "[mavlink]", mav)
    system_id = m.integer("system_id", 245, 1, 255)
    component_id = m.integer("component_id", 190, 0, 255)
    heartbeat_hz = m.integer("heartbeat_hz", 1, 1, 10)
    link_timeout_ms = m.integer("link_timeout_ms", 3000, 500, 600_000)
    hb_s = m.integer("hb_s", 5, 1, 3600)
    loc_hz = m.integer("loc_hz", 2, 1, 50)
    status_hz = m.integer("status_hz", 1, 1, 10)
    stream_hz = m.integer("stream_hz", 10, 0, 50)
    ack_timeout_ms = m.integer("ack_timeout_ms", 1000, 50, 30_000)
    max_alt_m = m.integer("max_alt_m", 120, 1, 10_000)
    area: tuple[tuple[int, int], ...] = ()
    raw_area = m.raw("area")
    if raw_area is not None:
        pts = []
        if not isinstance(raw_area, list) or len(raw_area) < 3:
            m.err("area", f"expected a polygon of at least 3 [lat, lon] points in degrees, got {raw_area!r}")
        else:
            for i, p in enumerate(raw_area):
                ll = _degE7(p[0], p[1]) if isinstance(p, list) and len(p) == 2 else None
                if ll is None:
                    m.err(f"area[{i}]", f"expected [lat, lon] in degrees (WGS-84), got {p!r}")
                else:
                    pts.append(ll)
        area = tuple(pts)

    endpoints: list[EndpointConfig] = []
    raw_eps = m.raw("endpoint")
    if not isinstance(raw_eps, list) or not raw_eps:
        m.err("endpoint", "expected at least one [[mavlink.endpoint]] table")
        raw_eps = []
    for i, e in enumerate(raw_eps, 1):
        name = e.get("name") if isinstance(e, dict) else None
        t = _T(errors, f"[[mavlink.endpoint]] #{i}" + (f" ({name})" if isinstance(name, str) else ""), e)
        nm = t.text("name", None)
        if nm is None or not is_valid_id(nm):
            t.err("name", f"expected an id of 1-32 chars [a-z0-9_-], got {nm!r}")
        elif any(x.name == nm for x in endpoints):
            t.err("name", f"{nm!r} is used by another endpoint")
        url = t.text("url", None)
        parsed = parse_url(url) if url is not None else "required (udpin:HOST:PORT, udpout:, tcp:, serial:DEV:BAUD)"
        if isinstance(parsed, str):
            t.err("url", parsed)
            parsed = ("udpin", "", 0, "", 0)
        forward = t.boolean("forward", False)
        block = t.raw("block")
        if block is None:
            block = []
        if not isinstance(block, list) or not all(isinstance(b, str) and b.isupper() for b in block):
            t.err("block", f"expected a list of MAVLink message names (e.g. \"PARAM_VALUE\"), got {block!r}")
            block = []
        t.finish()
        endpoints.append(EndpointConfig(nm or f"endpoint{i}", url or "", parsed[0], parsed[1], parsed[2], parsed[3],
                                        parsed[4], forward, tuple(block)))

    routes: list[RouteConfig] = []
    raw_routes = m.raw("route") or []
    if not isinstance(raw_routes, list):
        m.err("route", "expected [[mavlink.route]] tables")
        raw_routes = []
    for i, r in enumerate(raw_routes, 1):
        name = r.get("name") if isinstance(r, dict) else None
        t = _T(errors, f"[[mavlink.route]] #{i}" + (f" ({name})" if isinstance(name, str) else ""), r)
        nm = t.text("name", None)
        if nm is None or not is_valid_id(nm):
            t.err("name", f"expected an id of 1-32 chars [a-z0-9_-], got {nm!r}")
        elif any(x.name == nm for x in routes):
            t.err("name", f"{nm!r} is used by another route")
        alt = t.integer("alt_m", 40, 1, max_alt_m)
        waypoints = _points(t, "points", alt, max_alt_m)
        t.finish()
        routes.append(RouteConfig(nm or f"route{i}", waypoints))
    m.finish()

    out: list[DroneConfig] = []
    if drones is None:
        drones = []
    if not isinstance(drones, list):
        errors.append("[[drone]]: expected an array of tables ([[drone]])")
        drones = []
    names = {e.name for e in endpoints}
    for i, d in enumerate(drones, 1):
        did = d.get("id") if isinstance(d, dict) else None
        t = _T(errors, f"[[drone]] #{i}" + (f" ({did})" if isinstance(did, str) else ""), d)
        sysid = t.integer("sysid", 0, 1, 255) if "sysid" in t.t else 0
        if "sysid" not in t.t:
            t.err("sysid", "required (the drone's MAVLink system id, 1..255)")
        dev_id = t.text("id", f"drone-{sysid}")
        if dev_id is None or not is_valid_id(dev_id):
            t.err("id", f"expected an id of 1-32 chars [a-z0-9_-], got {dev_id!r}")
        compid = t.integer("compid", 1, 1, 255)
        signed = t.boolean("signed", True)
        ep = t.text("endpoint", None)
        if ep is not None and ep not in names:
            t.err("endpoint", f"{ep!r} is not a [[mavlink.endpoint]] name ({', '.join(sorted(names)) or 'none'})")
        if sysid and sysid == system_id:
            t.err("sysid", f"{sysid} is the bridge's own [mavlink].system_id")
        if sysid and any(x.sysid == sysid for x in out):
            t.err("sysid", f"{sysid} is used by another drone")
        if dev_id and any(x.id == dev_id for x in out):
            t.err("id", f"{dev_id!r} is used by another drone")
        t.finish()
        out.append(DroneConfig(dev_id or f"drone-{sysid}", sysid, compid, signed, ep))
    return MavlinkConfig(tuple(endpoints), tuple(out), tuple(routes), system_id, component_id, heartbeat_hz,
                         link_timeout_ms, hb_s, loc_hz, status_hz, stream_hz, ack_timeout_ms, max_alt_m, area,
                         {r.name: r for r in routes})


__all__ = ["DroneConfig", "EndpointConfig", "MavlinkConfig", "RouteConfig", "parse", "parse_url"]
