"""Linkage rules (联动规则): which verified events open an incident, and what the gateway does about it.

Theory of operation
-------------------
The rules are TOML, either inline under ``[linkage]`` in gateway.toml or in their own file that ``[linkage]
rules = "linkage.toml"`` names (relative to gateway.toml); deploy/linkage.example.toml is a commented example.
``load(table, base, zones)`` validates the whole thing at once and raises ``RulesError`` listing every problem,
each naming the rule and the key as the file spells them (``rule "night-ferry": act.broadcast.within_m: expected
integer 1..20000, got 0``); unknown keys are errors, so a typo never falls back to a default silently. The
result is a tree of frozen dataclasses; nothing else in the gateway reads this TOML. SIGHUP reloads the file
(gateway/service/app.py); a reload that fails keeps the rules in force and journals why.

A rule has ``match`` (event kind, site, zone, local time window, severity, persistence: N detections in T s),
``act`` (at once: broadcast, dispatch, drone, notify), an optional ``escalate`` (the same actions, ``after_s``
seconds later if the incident is still open or only warned) and ``cooldown_s`` (the ``act`` of one rule runs
at most once per place in that time; an incident runs each rule's ``act`` once anyway). Matching is a pure
function of the event and the local time (``Rule.matches``), so tests drive it with plain data.
"""

from __future__ import annotations

import tomllib
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lookout.gateway.core.config import Config
from lookout.gateway.linkage.dispatch import DispatchParams
from lookout.gateway.linkage.geo import to_e7

SEVERITIES = ("info", "general", "serious", "critical")
PRIORITIES = ("background", "normal", "priority", "emergency")
DRONE_ACTIONS = ("goto", "orbit")
MAX_RULES = 200
MAX_CONTACTS = 500
RULE_ID_PREFIX = "rule."  # the operator field of a rule's commands: "rule.<name>" (the wire's op is [A-Za-z0-9._-])


class RulesError(Exception):
    """The linkage rules are invalid; ``errors`` lists every problem, each naming its rule and key."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Hours:
    """A local time window [start, end) in minutes of the day; start > end wraps past midnight."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


@dataclass(frozen=True)
class Match:
    kinds: tuple[str, ...] = ()  # empty = any
    sites: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    hours: Hours | None = None
    persist_count: int = 1  # this many matching detections ...
    persist_s: int = 0  # ... within this many seconds (per rule and place)


@dataclass(frozen=True)
class Broadcast:
    clip: str
    within_m: int | None = None  # speakers within this straight-line range of the event, nearest first
    zone: str | None = None  # ... or every speaker of this [zones] entry
    priority: int = 2
    repeat: int = 1
    volume: int | None = None
    max_speakers: int = 3


@dataclass(frozen=True)
class DroneAction:
    action: str = "orbit"  # goto | orbit
    radius_m: int = 50
    alt_m: int = 60


@dataclass(frozen=True)
class Notify:
    contacts: tuple[str, ...] = ()
    within_m: int | None = None


@dataclass(frozen=True)
class Actions:
    broadcast: Broadcast | None = None
    officer: bool = False  # dispatch the nearest available officer (by travel time)
    record: bool = True  # ... and tell the officer's recorder to start recording
    drone: DroneAction | None = None
    notify: Notify | None = None

    @property
    def empty(self) -> bool:
        return self.broadcast is None and not self.officer and self.drone is None and self.notify is None


@dataclass(frozen=True)
class Rule:
    name: str
    match: Match
    act: Actions
    escalate: Actions | None = None
    escalate_after_s: int | None = None
    cooldown_s: int = 300

    @property
    def operator(self) -> str:
        """Who the journal and the signed commands name as the actor."""
        return RULE_ID_PREFIX + self.name

    def matches(self, site: str, kind: str, sev: str, zones: tuple[str, ...], minute: int) -> bool:
        """Does an event (``zones``: its own ``zone`` and the [zones] its device belongs to) at local ``minute``
        of the day match? Persistence is counted by the caller."""
        m = self.match
        return ((not m.kinds or kind in m.kinds) and (not m.sites or site in m.sites)
                and (not m.zones or any(z in m.zones for z in zones))
                and (not m.severities or sev in m.severities)
                and (m.hours is None or m.hours.contains(minute)))


@dataclass(frozen=True)
class Contact:
    """A village cadre (村干部) who can hold a scene; notified on ``lookout/v1/<site>/<id>/notify``."""

    id: str
    name: str
    lat: int
    lon: int
    phone: str | None = None  # shown in `lookout incident show`; never sent anywhere


@dataclass(frozen=True)
class LinkageConfig:
    rules: tuple[Rule, ...] = ()
    contacts: dict[str, Contact] = field(default_factory=dict)
    timezone: str = "Asia/Shanghai"
    site_timezones: dict[str, str] = field(default_factory=dict)
    dispatch: DispatchParams = field(default_factory=DispatchParams)
    absorb_m: int = 300  # a detection this close to an open incident ...
    absorb_s: int = 600  # ... within this long of its last detection joins it instead of opening another
    auto_close_s: int = 1800  # an incident nobody was dispatched to closes after this long without detections
    on_scene_m: int = 50  # a dispatched unit this close to the incident is on scene
    close_on_evidence: bool = True  # an incident on scene closes when its officer's recorder clip is verified
    origin: str = "(none)"  # the file (or "gateway.toml [linkage]") the rules came from

    def tz(self, site: str) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.site_timezones.get(site, self.timezone))

    def local_minute(self, site: str, now_ms: int) -> int:
        t = datetime.fromtimestamp(now_ms / 1000, self.tz(site))
        return t.hour * 60 + t.minute


# -- validation ---------------------------------------------------------------------------------------------------

def _is_name(v: Any, n: int = 32) -> bool:
    if not isinstance(v, str) or not 0 < len(v) <= n:
        return False
    return all("a" <= c <= "z" or "0" <= c <= "9" or (i and c in "-_") for i, c in enumerate(v))


class _T:
    """Reads one table, collecting errors that name ``where`` + key; ``finish`` reports unknown keys."""

    def __init__(self, errors: list[str], where: str, table: Any, prefix: str = ""):
        self.errors, self.where, self.prefix = errors, where, prefix
        if table is None:
            table = {}
        if not isinstance(table, dict):
            self.err("", f"expected a table, got {table!r}")
            table = {}
        self.t: dict[str, Any] = table
        self.used: set[str] = set()

    def err(self, key: str, msg: str) -> None:
        name = (self.prefix + key).rstrip(".")
        self.errors.append(f"{self.where}: {name}: {msg}" if name else f"{self.where}: {msg}")

    def has(self, key: str) -> bool:
        self.used.add(key)
        return key in self.t

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.t.get(key)

    def integer(self, key: str, default: int | None, lo: int, hi: int) -> int | None:
        self.used.add(key)
        v = self.t.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.err(key, f"expected integer {lo}..{hi}, got {v!r}")
            return default
        return v

    def num(self, key: str, default: float, lo: float, hi: float) -> float:
        self.used.add(key)
        v = self.t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            self.err(key, f"expected a number {lo:g}..{hi:g}, got {v!r}")
            return default
        return float(v)

    def flag(self, key: str, default: bool) -> bool:
        self.used.add(key)
        v = self.t.get(key, default)
        if not isinstance(v, bool):
            self.err(key, f"expected true or false, got {v!r}")
            return default
        return v

    def text(self, key: str, default: str | None, check=None, rule: str = "a string") -> str | None:
        self.used.add(key)
        v = self.t.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or not v or (check is not None and not check(v)):
            self.err(key, f"expected {rule}, got {v!r}")
            return default
        return v

    def names(self, key: str, allowed: tuple[str, ...] | None = None, rule: str = "ids of [a-z0-9_-]"
              ) -> tuple[str, ...]:
        """A string or a list of strings -> tuple; each an id (or one of ``allowed``)."""
        self.used.add(key)
        v = self.t.get(key)
        if v is None:
            return ()
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
            self.err(key, f"expected a string or a list of strings, got {v!r}")
            return ()
        bad = [x for x in items if (x not in allowed if allowed is not None else not _is_name(x))]
        if bad:
            want = "one of " + ", ".join(allowed) if allowed is not None else rule
            self.err(key, f"{bad[0]!r}: expected {want}")
            return ()
        return tuple(items)

    def sub(self, key: str) -> _T:
        self.used.add(key)
        return _T(self.errors, self.where, self.t.get(key), self.prefix + key + ".")

    def finish(self) -> None:
        for k in self.t:
            if k not in self.used:
                self.err(k, "unknown key")


def _hhmm(s: str) -> int | None:
    h, sep, m = s.partition(":")
    if not sep or not (h.isdigit() and m.isdigit() and len(m) == 2 and 1 <= len(h) <= 2):
        return None
    hh, mm = int(h), int(m)
    if hh == 24 and mm == 0:
        return 1440
    return hh * 60 + mm if hh < 24 and mm < 60 else None


def parse_hours(v: str) -> Hours | None:
    """"HH:MM-HH:MM" -> Hours (end before start wraps past midnight); None if malformed or empty."""
    a, sep, b = v.partition("-")
    s, e = _hhmm(a.strip()), _hhmm(b.strip())
    if not sep or s is None or e is None or s == e or s == 1440:
        return None
    return Hours(s, e % 1440 if e != 1440 else 1440)


def _priority(t: _T, key: str, default: int) -> int:
    v = t.raw(key)
    if v is None:
        return default
    if isinstance(v, str) and v in PRIORITIES:
        return PRIORITIES.index(v)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 3:
        return v
    t.err(key, f"expected one of {', '.join(PRIORITIES)} or 0..3, got {v!r}")
    return default


def _actions(t: _T, zones: dict[str, Any], contacts: dict[str, Contact], escalate: bool) -> Actions:
    bc = None
    if t.has("broadcast"):
        b = t.sub("broadcast")
        clip = b.text("clip", None, lambda s: _is_name(s.replace(".", "-"), 48), "a clip id ([a-z0-9_.-])")
        within = b.integer("within_m", None, 1, 20000)
        zone = b.text("zone", None, _is_name, "a zone id")
        if clip is None and "clip" not in b.t:
            b.err("clip", "required (the warning clip to play)")
        if (within is None) == (zone is None) and ("within_m" in b.t) == ("zone" in b.t):
            b.err("", "give exactly one of within_m (speakers in range) or zone (a [zones] entry)")
        if zone is not None and zone not in zones:
            b.err("zone", f"{zone!r} is not in [zones] of gateway.toml")
        bc = Broadcast(clip or "-", within, zone, _priority(b, "priority", 2), b.integer("repeat", 1, 1, 20) or 1,
                       b.integer("volume", None, 0, 100), b.integer("max_speakers", 3, 1, 50) or 3)
        b.finish()
    officer = t.flag("officer", False)
    record = t.flag("record", True)
    drone = None
    if t.has("drone"):
        v = t.t["drone"]
        if isinstance(v, str):
            if v not in DRONE_ACTIONS:
                t.err("drone", f"expected one of {', '.join(DRONE_ACTIONS)} or a table, got {v!r}")
            else:
                drone = DroneAction(v)
        else:
            d = t.sub("drone")
            action = d.text("action", "orbit", lambda s: s in DRONE_ACTIONS, "one of goto, orbit") or "orbit"
            drone = DroneAction(action, d.integer("radius_m", 50, 5, 2000) or 50, d.integer("alt_m", 60, 10, 500) or 60)
            d.finish()
    notify = None
    if t.has("notify"):
        n = t.sub("notify")
        ids = n.names("contacts")
        for c in ids:
            if c not in contacts:
                n.err("contacts", f"{c!r} is not a [[contact]] id")
        within = n.integer("within_m", None, 1, 50000)
        if not ids and within is None and not [e for e in n.errors if "notify." in e]:
            n.err("", "give contacts (a list of [[contact]] ids) or within_m (contacts near the event)")
        notify = Notify(ids, within)
        n.finish()
    return Actions(bc, officer, record, drone, notify)


def _rule(i: int, r: Any, errors: list[str], zones: dict[str, Any], contacts: dict[str, Contact]) -> Rule | None:
    name = r.get("name") if isinstance(r, dict) else None
    where = f"rule {name!r}" if isinstance(name, str) else f"rule #{i + 1}"
    t = _T(errors, where, r)
    before = len(errors)
    nm = t.text("name", None, lambda s: _is_name(s, 32 - len(RULE_ID_PREFIX)),
               f"a name of 1-{32 - len(RULE_ID_PREFIX)} chars [a-z0-9_-]")
    if nm is None and "name" not in t.t:
        t.err("name", "required")
    cooldown = t.integer("cooldown_s", 300, 0, 86400) or 0
    m = t.sub("match")
    hours = None
    hv = m.text("hours", None)
    if hv is not None:
        hours = parse_hours(hv)
        if hours is None:
            m.err("hours", f'expected "HH:MM-HH:MM" local time (an end before the start wraps past midnight; '
                           f'omit it for all day), got {hv!r}')
    count, within_s = 1, 0
    if m.has("persist"):
        p = m.sub("persist")
        count = p.integer("count", 1, 1, 100) or 1
        within_s = p.integer("within_s", 60, 1, 86400) or 60
        p.finish()
    match = Match(m.names("kind", rule="event kinds of [a-z0-9_]"), m.names("site"), m.names("zone"),
                  m.names("severity", SEVERITIES), hours, count, within_s)
    m.finish()
    act = _actions(t.sub("act"), zones, contacts, False) if t.has("act") else Actions()
    esc = None
    after = None
    if t.has("escalate"):
        e = t.sub("escalate")
        after = e.integer("after_s", None, 1, 86400)
        if after is None and "after_s" not in e.t:
            e.err("after_s", "required (seconds the incident may stay open or warned before escalating)")
        esc = _actions(e, zones, contacts, True)
        e.finish()
        if esc.empty:
            e.err("", "no action (broadcast, officer, drone or notify)")
    if act.empty and esc is None:
        t.err("act", "the rule does nothing: give act and/or escalate actions")
    t.finish()
    if len(errors) > before or nm is None:
        return None
    return Rule(nm, match, act, esc, after, cooldown)


def from_table(d: dict[str, Any], zones: dict[str, Any] | None = None, origin: str = "[linkage]") -> LinkageConfig:
    """Validate a parsed rules table; raise RulesError listing every problem."""
    zones = zones or {}
    errors: list[str] = []
    top = _T(errors, origin, d)

    def tz_ok(s: str) -> bool:
        try:
            zoneinfo.ZoneInfo(s)
            return True
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            return False

    tzname = top.text("timezone", "Asia/Shanghai", tz_ok, "an IANA time zone such as Asia/Shanghai") \
        or "Asia/Shanghai"
    cutoff = top.integer("cutoff_s", 900, 60, 4 * 3600) or 900
    absorb_m = top.integer("absorb_m", 300, 1, 20000) or 300
    absorb_s = top.integer("absorb_s", 600, 1, 86400) or 600
    auto_close = top.integer("auto_close_s", 1800, 60, 7 * 86400) or 1800
    on_scene = top.integer("on_scene_m", 50, 5, 2000) or 50
    close_on_evidence = top.flag("close_on_evidence", True)
    sp = top.sub("speed")
    officer_mps = sp.num("officer_mps", 8.3, 0.5, 60.0)
    drone_mps = sp.num("drone_mps", 12.0, 1.0, 60.0)
    sp.finish()
    dr = top.sub("drone")
    min_bat = dr.integer("min_battery_pct", 40, 0, 100) or 0
    launch_s = dr.integer("launch_s", 30, 0, 600) or 0
    dr.finish()
    max_fix_age = top.integer("max_fix_age_s", 300, 5, 86400) or 300
    road_default = top.num("road_factor", 1.2, 1.0, 10.0)
    site_tz: dict[str, str] = {}
    road: dict[str, float] = {}
    st = top.sub("site")
    for sname in list(st.t):
        s = _T(errors, origin, st.t[sname], f"site.{sname}.")
        st.used.add(sname)
        if not _is_name(sname):
            s.err("", "site id must be 1-32 chars [a-z0-9_-]")
        stz = s.text("timezone", None, tz_ok, "an IANA time zone")
        if stz:
            site_tz[sname] = stz
        if s.has("road_factor"):
            road[sname] = s.num("road_factor", road_default, 1.0, 10.0)
        s.finish()
    contacts: dict[str, Contact] = {}
    cl = top.raw("contact") or []
    if not isinstance(cl, list) or len(cl) > MAX_CONTACTS:
        top.err("contact", f"expected at most {MAX_CONTACTS} [[contact]] tables")
        cl = []
    for i, c in enumerate(cl):
        cid = c.get("id") if isinstance(c, dict) else None
        ct = _T(errors, f"contact {cid!r}" if isinstance(cid, str) else f"contact #{i + 1}", c)
        n0 = len(errors)
        cid = ct.text("id", None, _is_name, "an id of 1-32 chars [a-z0-9_-] (their broker login)")
        name = ct.text("name", None, lambda s: len(s) <= 60, "a name of 1-60 chars")
        lat = ct.num("lat", 0.0, -90.0, 90.0)
        lon = ct.num("lon", 0.0, -180.0, 180.0)
        phone = ct.text("phone", None, lambda s: len(s) <= 24, "a phone number")
        for k in ("id", "name", "lat", "lon"):
            if k not in ct.t:
                ct.err(k, "required")
        ct.finish()
        if cid in contacts:
            ct.err("id", "duplicate contact id")
        if len(errors) == n0 and cid is not None:
            contacts[cid] = Contact(cid, name or cid, to_e7(lat), to_e7(lon), phone)
    rl = top.raw("rule") or []
    if not isinstance(rl, list) or len(rl) > MAX_RULES:
        top.err("rule", f"expected at most {MAX_RULES} [[rule]] tables")
        rl = []
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, r in enumerate(rl):
        rule = _rule(i, r, errors, zones, contacts)
        name = r.get("name") if isinstance(r, dict) else None
        if isinstance(name, str):
            if name in seen:
                errors.append(f"rule {name!r}: name: duplicate rule name")
            seen.add(name)
        if rule is not None:
            rules.append(rule)
    top.finish()
    if errors:
        raise RulesError(errors)
    params = DispatchParams(cutoff_s=cutoff, officer_mps=officer_mps, drone_mps=drone_mps,
                            road_factor=road_default, site_road_factor=road, min_battery_pct=min_bat,
                            drone_launch_s=launch_s, max_fix_age_s=max_fix_age)
    return LinkageConfig(tuple(rules), contacts, tzname, site_tz, params, absorb_m, absorb_s, auto_close,
                         on_scene, close_on_evidence, origin)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_bytes().decode())
    except OSError as e:
        raise RulesError([f"{path}: cannot read ({e.strerror})"]) from None
    except UnicodeDecodeError:
        raise RulesError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as e:
        raise RulesError([f"{path}: TOML syntax error: {e}"]) from None


def load(table: dict[str, Any], base: Path | None = None, zones: dict[str, Any] | None = None) -> LinkageConfig:
    """The ``[linkage]`` table of gateway.toml -> rules. ``rules = FILE`` (relative to ``base``, gateway.toml's
    folder) reads the rules from that file; otherwise the table itself holds them."""
    if "rules" in table:
        extra = [k for k in table if k != "rules"]
        if extra:
            raise RulesError([f"[linkage].{extra[0]}: with rules = FILE every other key belongs in that file"])
        v = table["rules"]
        if not isinstance(v, str) or not v:
            raise RulesError([f"[linkage].rules: expected a file name, got {v!r}"])
        p = Path(v)
        if not p.is_absolute() and base is not None:
            p = base / p
        return from_table(read_toml(p), zones, str(p))
    return from_table(table, zones, "gateway.toml [linkage]")


def load_from_gateway_toml(path: Path, zones: dict[str, Any] | None = None) -> LinkageConfig:
    """Re-read only the ``[linkage]`` part of gateway.toml (SIGHUP); other sections need a restart."""
    d = read_toml(path)
    t = d.get("linkage") or {}
    if not isinstance(t, dict):
        raise RulesError([f"{path}: [linkage]: expected a table"])
    return load(t, path.resolve().parent, zones)


def from_config(cfg: Config) -> LinkageConfig:
    """The rules of a loaded gateway configuration (no ``[linkage]``: no rules, nothing happens)."""
    return load(cfg.linkage, cfg.source.parent if cfg.source else None, cfg.zones)


def reloader(cfg: Config) -> Callable[[], LinkageConfig]:
    """What SIGHUP runs: gateway.toml's [linkage] read again (and the rules file it names)."""
    src = cfg.source
    if src is None:
        return lambda: from_config(cfg)
    return lambda: load_from_gateway_toml(src, cfg.zones)


__all__ = ["Actions", "Broadcast", "Contact", "DroneAction", "Hours", "LinkageConfig", "Match", "Notify",
           "Rule", "RulesError", "from_config", "from_table", "load", "load_from_gateway_toml", "parse_hours",
           "reloader"]
