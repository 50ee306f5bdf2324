"""What a scenario run came to, read from the gateway's own records, and whether it is what ``[expect]`` says.

Theory of operation
-------------------
``collect`` reads the incident store (states and their times, units, evidence), the command store (the warnings
issued for the incident), the duty journal (the dispatch rankings with every candidate's ETA, the chain) and the
registry (nodes offline), plus two things only the world saw: what the cadres' phones received on MQTT and the
SHA-256 each recorder computed when it closed a file. The clip's bytes are hashed again through the custody
module (``Custody.verify``, what ``lookout clips verify`` does). ``check`` turns ``[expect]`` into named pass/fail
lines; the demo prints them and exits 1 on a failure, and tests/test_scenarios.py asserts them, so the demo and CI
judge a run by the same rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lookout.gateway.demo.scenario import Scenario
from lookout.gateway.linkage.incidents import Incident


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Outcome:
    speed: float
    incidents: list[Incident] = field(default_factory=list)
    inc: Incident | None = None  # the first incident of the run: the story's
    detection_ms: int | None = None  # the first detection (the sensor's own timestamp)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # play commands issued for the incident
    rankings: dict[str, dict[str, Any]] = field(default_factory=dict)  # "officer"/"drone" -> journal detail
    evidence: list[dict[str, Any]] = field(default_factory=list)  # + verify result and the source hash
    phones: dict[str, list[str]] = field(default_factory=dict)  # contact -> incident states it was told
    offline: dict[str, str] = field(default_factory=dict)  # node -> registry state now
    journal: dict[str, Any] = field(default_factory=dict)  # ok, entries, head, bad_seq
    checks: list[Check] = field(default_factory=list)

    def at(self, state: str) -> int | None:
        return self.inc.at(state) if self.inc is not None else None

    def since_detection_s(self, state: str) -> float | None:
        t = self.at(state)
        return None if t is None or self.detection_ms is None else (t - self.detection_ms) / 1000

    def scenario_s(self, wall_s: float | None) -> float | None:
        return None if wall_s is None else wall_s * self.speed

    def unit(self, kind: str) -> tuple[str, dict[str, Any]] | None:
        if self.inc is None:
            return None
        return next(((d, u) for d, u in self.inc.units.items() if u.get("unit") == kind), None)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def collect(gw: Any, sc: Scenario, speed: float, phones: dict[str, list[str]], source_sha: dict[str, str],
            verifier: str) -> Outcome:
    """Read the run's outcome from the gateway ``gw`` (in this process)."""
    out = Outcome(speed, phones=dict(phones))
    store = gw.linkage.store
    out.incidents = sorted(store.list("all", 100), key=lambda i: i.opened_ms)
    out.inc = out.incidents[0] if out.incidents else None
    gw.journal.flush()
    inc = out.inc
    if inc is not None:
        first = inc.event_ids[0] if inc.event_ids else None
        for e in gw.journal.entries(kind="alert", detail_has=first) if first else []:
            d = json.loads(e.detail)
            if d.get("id") == first:
                out.detection_ms = int(d.get("ts") or e.ts)
                break
        for cid, purpose in inc.commands.items():
            c = gw.commands.get(cid)
            if purpose == "broadcast" and c is not None:
                out.warnings.append({"id": c.id, "device": c.device, "status": c.status, "op": c.op,
                                     "clip": c.args.get("clip")})
        for e in gw.journal.entries(kind="incident", detail_has=f'"incident":"{inc.id}"'):
            d = json.loads(e.detail)
            if "candidates" in d and d.get("kind") in ("officer", "drone") and not d.get("override"):
                out.rankings.setdefault(d["kind"], d)
        for ev in inc.evidence:
            sha = ev["sha256"]
            v = gw.clipstore.custody.verify(sha, verifier)  # re-hash the stored bytes, check the trail
            out.evidence.append({**ev, "ok": v["ok"], "problems": v["problems"], "trail": v["trail"],
                                 "source_sha256": source_sha.get(ev.get("clip") or "", None)})
    for dev in sc.expect.offline:
        d = gw.registry.get(dev)
        out.offline[dev] = d.state if d is not None else "unknown"
    gw.journal.flush()
    v = gw.journal.verify()
    out.journal = {"ok": v.ok, "entries": v.entries, "bad_seq": v.bad_seq, "head": gw.journal.head()[1]}
    out.checks = check(out, sc)
    return out


def check(o: Outcome, sc: Scenario) -> list[Check]:
    """``[expect]`` as named pass/fail lines (the journal chain always)."""
    x = sc.expect
    inc = o.inc
    out: list[Check] = []
    if x.incidents is not None:
        out.append(Check("incidents", len(o.incidents) == x.incidents,
                         f"{len(o.incidents)} incident(s) opened (expected {x.incidents})"))
    if inc is None:
        out.append(Check("incident", False, "no incident was opened"))
    if x.warning_within_s is not None:
        w = o.since_detection_s("warned")
        out.append(Check("warning", w is not None and w <= x.warning_within_s,
                         f"warned {w * 1000:.0f} ms after the detection (limit {x.warning_within_s:g} s)" if w is not None
                         else "no speaker warned"))
    if x.broadcasts is not None:
        n = len(o.warnings)
        speakers = [w["device"] for w in o.warnings]
        twice = sorted({s for s in speakers if speakers.count(s) > 1})
        ok = n == x.broadcasts and not twice and all(w["status"] == "done" for w in o.warnings)
        out.append(Check("no duplicates", ok, f"{n} warning broadcast(s) for {inc.detections if inc else 0} "
                         f"detection(s) (expected {x.broadcasts}, each done, no speaker twice): "
                         + (", ".join(f"{w['device']} {w['status']}" for w in o.warnings) or "none")
                         + (f"; twice: {', '.join(twice)}" if twice else "")))
    if x.officer is not None:
        out.append(_chosen(o, "officer", x.officer))
    if x.drone is not None:
        out.append(_chosen(o, "drone", x.drone))
    if x.drone_arrives:
        u = o.unit("drone")
        ok = u is not None and u[1].get("arrived_ms") is not None
        out.append(Check("drone arrived", ok, f"{u[0]} arrived {u[1].get('arrived_m')} m from the event" if ok and u
                         else "no drone arrived"))
    if x.on_scene_within_s is not None:
        d, s = o.at("dispatched"), o.at("on_scene")
        took = None if d is None or s is None else (s - d) / 1000 * o.speed
        out.append(Check("on scene", took is not None and took <= x.on_scene_within_s,
                         f"on scene {took:.0f} s (scenario) after the dispatch (limit {x.on_scene_within_s:g} s)"
                         if took is not None else "never on scene"))
    if x.clip_verified:
        ev = o.evidence[0] if o.evidence else None
        ok = ev is not None and ev["ok"] and ev.get("source_sha256") == ev["sha256"]
        out.append(Check("clip verified", ok, f"clip {ev['clip']} sha256 {ev['sha256'][:16]}…: recorder's hash "
                         f"{'matches' if ev.get('source_sha256') == ev['sha256'] else 'DIFFERS'}, stored bytes "
                         f"{'re-hash OK' if ev['ok'] else 'FAILED ' + '; '.join(ev['problems'])}" if ev
                         else "no clip filed as the incident's evidence"))
    if x.closed:
        out.append(Check("closed", inc is not None and inc.state == "closed",
                         f"incident {inc.id} {inc.state}" + (f" ({inc.history[-1].get('why')})"
                                                              if inc.state == "closed" else "")
                         if inc else "no incident"))
    for c in x.notified:
        got = o.phones.get(c, [])
        out.append(Check(f"{c} notified", bool(got) and (inc is None or c in inc.notified),
                         f"{c}'s phone received {len(got)} notification(s): {', '.join(got) or '-'}"))
    for dev in x.offline:
        out.append(Check(f"{dev} offline", o.offline.get(dev) == "offline",
                         f"{dev} is {o.offline.get(dev)} in the registry"))
    j = o.journal
    out.append(Check("journal", bool(j.get("ok")), f"{j.get('entries')} entries, chain "
                     + ("verified" if j.get("ok") else f"BROKEN at seq {j.get('bad_seq')}")))
    return out


def _chosen(o: Outcome, kind: str, want: str) -> Check:
    """The unit the gateway sent is the expected one and the journal's ranking has it first (shortest ETA)."""
    u = o.unit(kind)
    r = o.rankings.get(kind)
    if u is None or r is None:
        return Check(f"{kind} chosen", False, f"no {kind} was dispatched"
                     + (f" ({'; '.join(s['device'] + ': ' + s['why'] for s in r['skipped'])})" if r else ""))
    dev, unit = u
    who = unit.get("officer") if kind == "officer" else dev
    etas = [c["eta_s"] for c in r["candidates"]]
    first = r["candidates"][0]["device"] if r["candidates"] else None
    ok = who == want and first == dev and etas == sorted(etas)
    others = ", ".join(f"{c['device']} {c['eta_s'] * o.speed:.0f} s" for c in r["candidates"][1:]) or "none"
    skipped = "; ".join(f"{s['device']}: {s['why']}" for s in r["skipped"]) or "none"
    return Check(f"{kind} chosen", ok, f"{who} ({dev}, ETA {unit.get('eta_s', 0) * o.speed:.0f} s, the shortest; "
                                       f"others {others}; skipped {skipped}) (expected {want})")


__all__ = ["Check", "Outcome", "check", "collect"]
