"""Scenario files for `lookout demo` and the scenario tests: a simulated reservoir, its story, the gateway's rules
and what must come out.

Theory of operation
-------------------
A scenario is one TOML file (``gateway/demo/scenarios/*.toml`` ship with the package; ``--scenario FILE`` reads
another). It holds two kinds of thing, kept apart on purpose:

- **the world** the demo simulates and drives: ``[[node]]`` (loudspeakers, sensors, cameras running the real
  firmware), ``[[officer]]`` (a body-worn recorder each, on a pseudo-terminal), ``[[drone]]`` (MAVLink over UDP),
  ``[world]`` (how officers move and how long they take on scene) and ``[[event]]`` (the story: an intruder at a
  sensor, a node that hangs), at scenario seconds after every device is online;
- **the gateway's configuration**: ``[zones]`` and ``[linkage]`` exactly as gateway.toml spells them (rules,
  contacts, speeds), so the same rules can be pasted into a real deployment. Every decision in a run (which
  speaker warns, who is sent, when an incident closes) is the gateway's, from these rules.

``[expect]`` says what a run must show (warning latency, the officer and drone chosen, arrival, the clip
verified, the incident closed, nodes offline, how many warnings one intruder got); gateway/demo/outcome.py checks
it against the gateway's own records. ``load`` validates the whole file and raises ``ScenarioError`` listing
every problem with its table and key; unknown keys are errors. Positions are WGS-84 decimal degrees in the file
(degE7 on the wire). The linkage rules themselves are validated by gateway/linkage/rules.py when the gateway
starts, with the same error messages an operator sees for gateway.toml.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

ROLES = ("speaker", "sensor", "camera")
DEFAULT = "night_ferry"  # the scenario `lookout demo` plays without --scenario
MAX_ITEMS = 40  # nodes, officers, drones or events: a demo, not a county


class ScenarioError(Exception):
    """The scenario file is invalid; ``errors`` lists every problem, each naming its table and key."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Node:
    id: str
    role: str
    name: str
    lat: int  # degE7
    lon: int


@dataclass(frozen=True)
class Officer:
    id: str  # the officer's id (the recorder is issued to them)
    recorder: str  # the recorder's device id
    name: str
    lat: int
    lon: int
    busy: bool = False  # recording another matter when the story starts


@dataclass(frozen=True)
class Drone:
    id: str
    sysid: int
    name: str
    lat: int
    lon: int
    battery_pct: int = 100


@dataclass(frozen=True)
class Event:
    at_s: float  # scenario seconds after every device is online
    intruder: str | None = None  # a sensor node: someone is there until an officer has dealt with them
    every_s: float = 30.0  # ... walking past its PIR this often
    silence: str | None = None  # a node whose application hangs (no last will: its TCP session stays up)


@dataclass(frozen=True)
class World:
    patrol_mps: float = 1.4  # officers walk their beat until dispatched (on foot)
    handle_s: float = 60.0  # an officer on scene deals with the intruder this long, then stops recording
    clip_kb: int = 96  # the size of that clip (a demo's serial line carries it in about a second)
    baud: int = 921600  # the recorders' serial line
    local_hour: int | None = None  # run with the site's clock at this hour (rules' `hours` are local time)


@dataclass(frozen=True)
class Expect:
    warning_within_s: float | None = None  # wall seconds from the detection to the speaker playing (latency)
    broadcasts: int | None = None  # warnings for the incident (one intruder: one)
    incidents: int | None = None
    officer: str | None = None  # the officer chosen (the journal's ranking must also put them first)
    drone: str | None = None
    drone_arrives: bool = False
    on_scene_within_s: float | None = None  # scenario seconds from the dispatch to the first arrival
    clip_verified: bool = False  # the officer's clip filed as the incident's evidence, its hash checked again
    closed: bool = False
    notified: tuple[str, ...] = ()  # contact ids whose phone got the notification
    offline: tuple[str, ...] = ()  # nodes the registry must have marked offline


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    site: str
    site_name: str
    nodes: tuple[Node, ...]
    officers: tuple[Officer, ...]
    drones: tuple[Drone, ...]
    events: tuple[Event, ...]
    world: World
    expect: Expect
    zones: dict[str, list[str]] = field(default_factory=dict)
    linkage: dict[str, Any] = field(default_factory=dict)
    end_s: float = 1800.0  # scenario seconds: a story not over by then failed
    origin: str = "-"

    def node(self, dev: str) -> Node | None:
        return next((n for n in self.nodes if n.id == dev), None)

    def points(self) -> list[tuple[int, int]]:
        return ([(x.lat, x.lon) for x in self.nodes] + [(x.lat, x.lon) for x in self.officers]
                + [(x.lat, x.lon) for x in self.drones])


class _T:
    """One table's keys, read with checks; errors name ``where`` and the key."""

    def __init__(self, errors: list[str], where: str, table: Any):
        self.errors, self.where = errors, where
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table, got {table!r}")
            table = {}
        self.t: dict[str, Any] = table
        self.used: set[str] = set()

    def err(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.where}.{key}: {msg}" if key else f"{self.where}: {msg}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False,
            check: Any = None, rule: str = "") -> Any:
        self.used.add(key)
        if key not in self.t:
            if required:
                self.err(key, "required")
            return default
        v = self.t[key]
        ok = isinstance(v, kind) and not (isinstance(v, bool) and kind in (int, float, (int, float)))
        if not ok or (check is not None and not check(v)):
            self.err(key, f"expected {rule or getattr(kind, '__name__', kind)}, got {v!r}")
            return default
        return v

    def ident(self, key: str, required: bool = True) -> str:
        return str(self.get(key, str, "-", required, _is_id, "an id of 1-32 chars [a-z0-9_-]"))

    def deg(self, key: str, lo: float, hi: float) -> int:
        v = self.get(key, (int, float), 0, True, lambda x: lo <= x <= hi, f"decimal degrees {lo:g}..{hi:g}")
        return round(float(v) * 1e7)

    def finish(self) -> None:
        for k in self.t:
            if k not in self.used:
                self.err(k, "unknown key")


def _is_id(v: str) -> bool:
    return 0 < len(v) <= 32 and all("a" <= c <= "z" or "0" <= c <= "9" or (i and c in "-_") for i, c in enumerate(v))


def _items(top: _T, key: str) -> list[Any]:
    v = top.get(key, list, [])
    if len(v) > MAX_ITEMS:
        top.err(key, f"at most {MAX_ITEMS} entries, got {len(v)}")
        return []
    return list(v)


def parse(d: dict[str, Any], origin: str = "-") -> Scenario:
    """Validate a parsed scenario; raise ScenarioError listing every problem."""
    errors: list[str] = []
    top = _T(errors, origin, d)
    sc = _T(errors, "[scenario]", top.get("scenario", dict, {}, True))
    name = sc.ident("name")
    title = sc.get("title", str, name, check=lambda s: 0 < len(s) <= 120, rule="a title of 1-120 chars")
    site = sc.ident("site")
    site_name = sc.get("site_name", str, site, check=lambda s: 0 < len(s) <= 60, rule="a name of 1-60 chars")
    end_s = float(sc.get("end_s", (int, float), 1800, check=lambda x: 10 <= x <= 86400, rule="seconds 10..86400"))
    sc.finish()

    wt = _T(errors, "[world]", top.get("world", dict, {}))
    world = World(
        float(wt.get("patrol_mps", (int, float), 1.4, check=lambda x: 0 <= x <= 10, rule="m/s 0..10")),
        float(wt.get("handle_s", (int, float), 60, check=lambda x: 0 <= x <= 3600, rule="seconds 0..3600")),
        int(wt.get("clip_kb", int, 96, check=lambda x: 1 <= x <= 4096, rule="KB 1..4096")),
        int(wt.get("baud", int, 921600, check=lambda x: 9600 <= x <= 4_000_000, rule="baud 9600..4000000")),
        wt.get("local_hour", int, None, check=lambda x: 0 <= x <= 23, rule="an hour 0..23"))
    wt.finish()

    ids: set[str] = set()

    def unique(t: _T, key: str, v: str) -> None:
        if v in ids:
            t.err(key, f"{v!r} is used twice")
        ids.add(v)

    nodes = []
    for i, raw in enumerate(_items(top, "node")):
        t = _T(errors, f"[[node]] #{i + 1}", raw)
        dev = t.ident("id")
        unique(t, "id", dev)
        role = t.get("role", str, "sensor", True, lambda s: s in ROLES, " | ".join(ROLES))
        nodes.append(Node(dev, role, t.get("name", str, dev), t.deg("lat", -90, 90), t.deg("lon", -180, 180)))
        t.finish()
    officers = []
    for i, raw in enumerate(_items(top, "officer")):
        t = _T(errors, f"[[officer]] #{i + 1}", raw)
        who, rec = t.ident("id"), t.ident("recorder")
        unique(t, "id", who)
        unique(t, "recorder", rec)
        officers.append(Officer(who, rec, t.get("name", str, who), t.deg("lat", -90, 90), t.deg("lon", -180, 180),
                                bool(t.get("busy", bool, False))))
        t.finish()
    drones = []
    sysids: set[int] = set()
    for i, raw in enumerate(_items(top, "drone")):
        t = _T(errors, f"[[drone]] #{i + 1}", raw)
        dev = t.ident("id")
        unique(t, "id", dev)
        sysid = int(t.get("sysid", int, 1, True, lambda x: 1 <= x <= 244, "a MAVLink system id 1..244"))
        if sysid in sysids:
            t.err("sysid", f"{sysid} is used twice")
        sysids.add(sysid)
        drones.append(Drone(dev, sysid, t.get("name", str, dev), t.deg("lat", -90, 90), t.deg("lon", -180, 180),
                            int(t.get("battery_pct", int, 100, check=lambda x: 0 <= x <= 100, rule="0..100"))))
        t.finish()
    node_ids = {n.id: n for n in nodes}
    events = []
    for i, raw in enumerate(_items(top, "event")):
        t = _T(errors, f"[[event]] #{i + 1}", raw)
        at = float(t.get("at_s", (int, float), 0, True, lambda x: 0 <= x <= 86400, "seconds 0..86400"))
        intr = t.get("intruder", str, None)
        sil = t.get("silence", str, None)
        every = float(t.get("every_s", (int, float), 30, check=lambda x: 1 <= x <= 3600, rule="seconds 1..3600"))
        if (intr is None) == (sil is None):
            t.err("", "give exactly one of intruder (a sensor node id) or silence (a node id)")
        if intr is not None and (intr not in node_ids or node_ids[intr].role == "speaker"):
            t.err("intruder", f"{intr!r} is not a sensor or camera [[node]]")
        if sil is not None and sil not in node_ids:
            t.err("silence", f"{sil!r} is not a [[node]]")
        events.append(Event(at, intr, every, sil))
        t.finish()
    if not nodes:
        top.err("node", "at least one [[node]]")
    if not any(e.intruder for e in events):
        top.err("event", "the story needs an intruder ([[event]] with intruder = a sensor node)")

    zones: dict[str, list[str]] = {}
    zt = _T(errors, "[zones]", top.get("zones", dict, {}))
    for z in list(zt.t):
        members = zt.get(z, list, [], check=lambda v: all(isinstance(x, str) for x in v), rule="a list of node ids")
        for m in members:
            if m not in node_ids:
                zt.err(z, f"{m!r} is not a [[node]]")
        zones[z] = list(members)
    linkage = top.get("linkage", dict, {})
    if not linkage.get("rule"):
        top.err("linkage", "the gateway needs at least one [[linkage.rule]] (it is what decides everything)")

    ex = _T(errors, "[expect]", top.get("expect", dict, {}))
    pos = (lambda x: x > 0, "seconds > 0")
    strs = (lambda v: all(isinstance(x, str) for x in v), "a list of ids")
    expect = Expect(
        ex.get("warning_within_s", (int, float), None, check=pos[0], rule=pos[1]),
        ex.get("broadcasts", int, None, check=lambda x: x >= 0, rule="a count >= 0"),
        ex.get("incidents", int, None, check=lambda x: x >= 0, rule="a count >= 0"),
        ex.get("officer", str, None), ex.get("drone", str, None), bool(ex.get("drone_arrives", bool, False)),
        ex.get("on_scene_within_s", (int, float), None, check=pos[0], rule=pos[1]),
        bool(ex.get("clip_verified", bool, False)), bool(ex.get("closed", bool, False)),
        tuple(ex.get("notified", list, [], check=strs[0], rule=strs[1])),
        tuple(ex.get("offline", list, [], check=strs[0], rule=strs[1])))
    ex.finish()
    if expect.officer and expect.officer not in {o.id for o in officers}:
        ex.err("officer", f"{expect.officer!r} is not an [[officer]]")
    if expect.drone and expect.drone not in {x.id for x in drones}:
        ex.err("drone", f"{expect.drone!r} is not a [[drone]]")
    for dev in expect.offline:
        if dev not in node_ids:
            ex.err("offline", f"{dev!r} is not a [[node]]")
    top.finish()
    if errors:
        raise ScenarioError(errors)
    return Scenario(name, title, site, site_name, tuple(nodes), tuple(officers), tuple(drones),
                    tuple(sorted(events, key=lambda e: e.at_s)), world, expect, zones, linkage, end_s, origin)


def load(path: str | Path | None = None) -> Scenario:
    """A scenario file, or the default one shipped with the package."""
    if path is None:
        ref = resources.files("lookout.gateway.demo").joinpath("scenarios", f"{DEFAULT}.toml")
        return parse(_toml(ref.read_bytes(), f"{DEFAULT}.toml"), f"{DEFAULT}.toml (built in)")
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ScenarioError([f"{p}: cannot read ({e.strerror})"]) from None
    return parse(_toml(data, str(p)), str(p))


def _toml(data: bytes, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise ScenarioError([f"{where}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError([f"{where}: TOML syntax error: {e}"]) from None


def shipped() -> list[str]:
    """The names of the scenario files that ship with the package (the scenario tests run each)."""
    d = resources.files("lookout.gateway.demo").joinpath("scenarios")
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".toml"))


__all__ = ["DEFAULT", "Drone", "Event", "Expect", "Node", "Officer", "Scenario", "ScenarioError", "World", "load",
           "parse", "shipped"]
