"""Incidents (事件): one intruder, one place, one case file, from detection to closing.

Theory of operation
-------------------
Lifecycle, as a table (``NEXT``): an illegal transition is a failed lookup that raises ``IncidentError``::

    open -> warned -> dispatched -> on_scene -> closed
      \\________\\_________\\____________\\______-> closed      (open -> dispatched also: dispatch before warning)

Each transition is appended to the incident's ``history`` with its time and *who* caused it (an operator id,
``rule.<name>``, a device id for on-scene, ``gateway`` for time-outs); the engine journals it too.
``absorbs(inc, ...)`` decides whether a new detection belongs to an incident: same site, within ``absorb_m``
of it (or in the same zone) and within ``absorb_s`` of its last detection.

Persistence: ``IncidentStore`` keeps every incident as a JSON document in SQLite (``incidents.db``, WAL), written
on each change (incidents change a few times a minute at most), and loads the ones not closed at start, so a
gateway restart keeps open incidents, their assigned units, the commands issued for them and their escalation
deadlines (``escalate_at_ms``: absolute Unix ms, so the timer fires at the same wall-clock time after a restart,
at once if that moment passed while the gateway was down).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookout.gateway.core import walstore
from lookout.gateway.linkage.geo import haversine_m

STATES = ("open", "warned", "dispatched", "on_scene", "closed")
ACTIVE = ("open", "warned", "dispatched", "on_scene")
NEXT = {
    "open": ("warned", "dispatched", "closed"),
    "warned": ("dispatched", "closed"),
    "dispatched": ("on_scene", "closed"),
    "on_scene": ("closed",),
    "closed": (),
}
MAX_EVENT_IDS = 20  # event ids kept on the incident (the count goes on; the journal has them all)


class IncidentError(Exception):
    """Misuse: an unknown incident or a transition the lifecycle does not allow."""

    def __init__(self, msg: str, code: str = "bad_request"):
        super().__init__(msg)
        self.code = code


@dataclass
class Incident:
    id: str
    site: str
    kind: str
    sev: str
    lat: int | None
    lon: int | None
    zone: str | None
    source: str  # the device whose detection opened it
    opened_ms: int
    state: str = "open"
    last_ms: int = 0  # last detection absorbed
    detections: int = 1
    event_ids: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)  # rules whose act ran for it
    history: list[dict[str, Any]] = field(default_factory=list)  # {state, ts, by, why}
    escalate_at_ms: int | None = None
    escalate_rule: str | None = None
    escalated: list[str] = field(default_factory=list)
    units: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> {unit, officer, by, eta_s}
    commands: dict[str, str] = field(default_factory=dict)  # command id -> purpose (broadcast/officer/drone/...)
    notified: list[str] = field(default_factory=list)  # contact ids told about it (they get the closing too)
    acked_by: str | None = None
    closed_why: str | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)  # recorder clips filed for it: sha256, device, clip

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Incident:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def active(self) -> bool:
        return self.state != "closed"

    def at(self, state: str) -> int | None:
        """When it first entered ``state``."""
        for h in self.history:
            if h["state"] == state:
                return int(h["ts"])
        return None

    def summary(self) -> dict[str, Any]:
        """The list view (``lookout incidents``)."""
        return {"id": self.id, "site": self.site, "state": self.state, "kind": self.kind, "sev": self.sev,
                "source": self.source, "zone": self.zone, "lat": self.lat, "lon": self.lon,
                "opened_ms": self.opened_ms, "last_ms": self.last_ms, "detections": self.detections,
                "units": sorted(self.units), "rules": list(self.rules), "acked_by": self.acked_by,
                "escalate_at_ms": self.escalate_at_ms, "evidence": [e["sha256"] for e in self.evidence]}


def transition(inc: Incident, new: str, ts: int, by: str, why: str = "") -> dict[str, Any]:
    """Move ``inc`` to ``new``; raises IncidentError if the lifecycle does not allow it. Returns the history
    entry (the engine journals it)."""
    if new not in NEXT.get(inc.state, ()):
        raise IncidentError(f"incident {inc.id} is {inc.state}; cannot go to {new}", "failed")
    old, inc.state = inc.state, new
    h = {"state": new, "from": old, "ts": ts, "by": by}
    if why:
        h["why"] = why
    inc.history.append(h)
    if new == "closed":
        inc.escalate_at_ms = None
    return h


def absorbs(inc: Incident, site: str, lat: int | None, lon: int | None, zones: tuple[str, ...], now_ms: int,
            absorb_m: int, absorb_s: int) -> bool:
    """Does a detection at (lat, lon) / in ``zones`` at ``now_ms`` belong to the open incident ``inc``?"""
    if not inc.active or inc.site != site or now_ms - max(inc.last_ms, inc.opened_ms) > absorb_s * 1000:
        return False
    if inc.zone is not None and inc.zone in zones:
        return True
    if lat is None or lon is None or inc.lat is None or inc.lon is None:
        return False
    return haversine_m(inc.lat, inc.lon, lat, lon) <= absorb_m


class IncidentStore:
    """Incidents by id; the active ones in memory, all of them in SQLite."""

    def __init__(self, path: str | Path | None):
        self.active: dict[str, Incident] = {}
        self._db: sqlite3.Connection | None = None
        self._n = 0
        if path is None:
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = walstore.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS incidents (n INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,"
                         " state TEXT NOT NULL, opened_ms INTEGER NOT NULL, doc TEXT NOT NULL)")
        row = self._db.execute("SELECT MAX(n) FROM incidents").fetchone()
        self._n = int(row[0] or 0)
        for (doc,) in self._db.execute("SELECT doc FROM incidents WHERE state != 'closed' ORDER BY n"):
            try:
                inc = Incident.from_dict(json.loads(doc))
            except (ValueError, TypeError):
                continue
            self.active[inc.id] = inc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def new_id(self) -> str:
        self._n += 1
        return f"inc-{self._n}"

    def save(self, inc: Incident) -> None:
        if inc.active:
            self.active[inc.id] = inc
        else:
            self.active.pop(inc.id, None)
        if self._db is None:
            return
        n = int(inc.id.rsplit("-", 1)[1])
        self._db.execute("INSERT OR REPLACE INTO incidents (n, id, state, opened_ms, doc) VALUES (?, ?, ?, ?, ?)",
                         (n, inc.id, inc.state, inc.opened_ms, json.dumps(inc.to_dict(), ensure_ascii=False)))
        self._db.commit()

    def get(self, inc_id: str) -> Incident | None:
        inc = self.active.get(inc_id)
        if inc is not None or self._db is None:
            return inc
        row = self._db.execute("SELECT doc FROM incidents WHERE id = ?", (inc_id,)).fetchone()
        return Incident.from_dict(json.loads(row[0])) if row else None

    def list(self, state: str | None = None, limit: int = 50) -> list[Incident]:
        """Newest first. ``state`` None = the active ones; "all"; or one state."""
        if state is None or self._db is None:
            out = [i for i in self.active.values() if state in (None, "all", i.state)]
            return sorted(out, key=lambda i: -i.opened_ms)[:limit]
        q = "SELECT doc FROM incidents"
        args: tuple[object, ...] = (limit,)
        if state != "all":
            q, args = q + " WHERE state = ?", (state, limit)
        rows = self._db.execute(q + " ORDER BY n DESC LIMIT ?", args).fetchall()
        return [Incident.from_dict(json.loads(r[0])) for r in rows]


__all__ = ["ACTIVE", "NEXT", "STATES", "Incident", "IncidentError", "IncidentStore", "absorbs", "transition"]
