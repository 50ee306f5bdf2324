"""The linkage engine (联动): verified events in, incidents and actions out, through the normal command path.

Theory of operation
-------------------
The service (gateway/service/app.py) feeds ``Linkage`` four things and gives it four functions:

- in: every verified event (``on_event``; the de-duplication of the hardening issue will sit in front of it),
  position updates (``on_location``; ``tick`` also looks at dispatched units, whatever bridge moved them), every
  command status change (``on_command``, a CommandService listener) and the clock (``tick``, every 250 ms);
- out: ``issue`` = ``OperatorAPI.command`` (the operator path: resolve, sign, send, journal, wait for results),
  called with ``rule.<name>`` as the operator so the journal and the signed command say which rule acted;
  ``publish`` (QoS 1 notifications for contacts); ``views``/``view`` (the registry's device views);
  ``spawn`` (background tasks, so an event never waits for a speaker).

An event that matches a rule (rules.py) joins the open incident of the same place and time window
(incidents.py ``absorbs``) or, once the rule's persistence is met (N detections in T s per rule and place),
opens one. Each rule's ``act`` runs once per incident and at most once per place per ``cooldown_s``: one
intruder walking past a PIR sensor for ten minutes gets one warning, not fifty. ``escalate`` actions run
``after_s`` later if the incident is still ``open`` or ``warned``; the deadline is stored on the incident, so
it survives a restart. Which command belongs to which incident is known from the moment it is created: the
task that issues it sets a context variable, and CommandService tells its listeners about a new command
synchronously in that task (``_ISSUING``). A broadcast the speaker accepted makes the incident ``warned``; a
dispatch order the officer's recorder or the drone accepted makes it ``dispatched``; a dispatched unit within
``on_scene_m`` makes it ``on_scene``. Every step is journaled (kind ``incident``) with who caused it; dispatch
choices with their candidates, ETAs and the reasons others were skipped.

Operator ops (``incidents``, ``incident`` show/ack/dispatch/close, ``coverage``) come through
``handle_op`` from the operator API. Nothing here raises into the MQTT callback: entry points log and journal
their own failures (a bad rule or event never stops the gateway).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lookout.gateway.core.journal import Journal
from lookout.gateway.linkage import coverage, dispatch
from lookout.gateway.linkage.geo import haversine_m
from lookout.gateway.linkage.incidents import Incident, IncidentError, IncidentStore, absorbs, transition
from lookout.gateway.linkage.rules import (
    RULE_ID_PREFIX,
    Actions,
    Broadcast,
    DroneAction,
    LinkageConfig,
    Notify,
    Rule,
    RulesError,
)
from lookout.protocols import notify as notifymsg
from lookout.protocols import opapi, topics
from lookout.protocols.errors import LocalProtocolError

log = logging.getLogger("lookout.linkage")

# (op_id, op, args, command name, command args, request id) -> operator response (OperatorAPI.command)
IssueFn = Callable[[str, str, dict[str, Any], str, dict[str, Any], str | None], Awaitable[dict[str, Any]]]
PublishFn = Callable[[str, bytes, int, bool], None]  # (topic, payload, qos, retain), fire and forget
ViewsFn = Callable[[], list[dict[str, Any]]]
ViewFn = Callable[[str], dict[str, Any] | None]
SpawnFn = Callable[..., "asyncio.Task[Any]"]

# the commands the recorder and drone bridges carry out (docs/PROTOCOL.md §16, §19 "Commands", §20 "Commands")
RECORDER_DISPATCH = "dispatch"  # args: incident, lat, lon, text, kind, sev, eta_s — go there
RECORDER_RECORD = "record_start"  # args: incident — start recording (evidence from the moment of dispatch)
RECORDER_CLEAR = "clear"  # the incident is closed: the officer is free again
DRONE_RETURN = "rtl"  # the incident is closed: the drone flies home
DRONE_LAUNCH_WAIT_S = 90  # a take-off is done when the height is reached (the bridge allows 120 s in all)
SPEAKER_KINDS = ("speaker",)
LIVE = ("online", "stale")
WARNED_ON = ("accepted", "done")  # a speaker that accepted a play is playing (it reports the finish as done)
DISPATCHED_ON = ("accepted", "done")
FAILED = ("failed", "rejected", "expired", "timeout", "refused")
CMD_WAIT_S = 15  # how long an action's task waits for the device's acceptance before journaling the outcome
CMD_TTL_S = 120  # a warning or a dispatch order older than this is useless: never queue them for later
MAX_PLACES = 10_000  # persistence windows and cool-downs remembered (oldest dropped)
MAX_ACTIVE = 500  # open incidents; past this a detection that would open another is journaled, not opened
SEV_ZH = {"info": "提示", "general": "一般", "serious": "严重", "critical": "紧急"}

_ISSUING: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("linkage_issuing", default=None)


class Linkage:
    def __init__(self, cfg: LinkageConfig, *, site: str, zones: dict[str, tuple[str, ...]], journal: Journal,
                 views: ViewsFn, view: ViewFn, issue: IssueFn, publish: PublishFn, spawn: SpawnFn,
                 clock: Callable[[], int], db_path: str | Path | None,
                 reload_from: Callable[[], LinkageConfig] | None = None) -> None:
        self.cfg = cfg
        self.site = site
        self.zones = zones
        self.journal = journal
        self.views = views
        self.view = view
        self.issue = issue
        self.publish = publish
        self.spawn = spawn
        self.clock = clock
        self.reload_from = reload_from
        self.store = IncidentStore(db_path)
        self._cmd: dict[str, str] = {}  # command id -> incident id, while the command is not final
        for inc in self.store.active.values():
            for cid in inc.commands:
                self._cmd[cid] = inc.id
        self._seen: dict[tuple[str, str], list[int]] = {}  # (rule, place) -> detection times (persistence)
        self._acted: dict[tuple[str, str], int] = {}  # (rule, place) -> when its act last ran (cool-down)
        self.errors = 0
        self.refused = 0  # detections that found MAX_ACTIVE incidents open

    def close(self) -> None:
        self.store.close()

    # -- rules ----------------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: read the rules again; a bad file keeps the rules in force and says why (journal, log)."""
        if self.reload_from is None:
            return False
        try:
            new = self.reload_from()
        except RulesError as e:
            self.journal.append("system", f"linkage rules NOT reloaded ({len(e.errors)} error(s)); keeping "
                                f"{len(self.cfg.rules)} rule(s) from {self.cfg.origin}",
                                detail={"errors": e.errors[:50]})
            log.error("linkage rules not reloaded, keeping the old ones: %s", "; ".join(e.errors[:5]))
            return False
        self.cfg = new
        self.journal.append("system", f"linkage rules reloaded from {new.origin}: {len(new.rules)} rule(s)",
                            detail={"rules": [r.name for r in new.rules], "contacts": len(new.contacts)})
        log.info("linkage rules reloaded from %s: %d rule(s)", new.origin, len(new.rules))
        return True

    def _rule(self, name: str) -> Rule | None:
        return next((r for r in self.cfg.rules if r.name == name), None)

    # -- inputs ---------------------------------------------------------------------------------------------
    def on_event(self, site: str, dev: str, msg: dict[str, Any], now: int) -> Incident | None:
        """A verified (MAC-checked) event. Returns the incident it opened or joined, if any."""
        try:
            return self._on_event(site, dev, msg, now)
        except Exception:  # noqa: BLE001 - a bug here must not drop the MQTT link's callback
            self.errors += 1
            log.exception("linkage failed on event %s from %s", msg.get("id"), dev)
            return None

    def _zones_of(self, dev: str, msg: dict[str, Any]) -> tuple[str, ...]:
        zs = [msg["zone"]] if msg.get("zone") else []
        zs += [z for z, members in self.zones.items() if dev in members and z not in zs]
        return tuple(zs)

    def _on_event(self, site: str, dev: str, msg: dict[str, Any], now: int) -> Incident | None:
        if not self.cfg.rules and not self.store.active:
            return None
        zones = self._zones_of(dev, msg)
        lat, lon = msg.get("lat"), msg.get("lon")
        if lat is None or lon is None:
            loc = (self.view(dev) or {}).get("loc") or {}
            lat, lon = loc.get("lat"), loc.get("lon")
        minute = self.cfg.local_minute(site, now)
        kind, sev = msg["kind"], msg["sev"]
        matched = [r for r in self.cfg.rules if r.matches(site, kind, sev, zones, minute)]
        if not matched:
            return None
        inc = self._absorbing(site, lat, lon, zones, now)
        if inc is not None:
            inc.detections += 1
            inc.last_ms = now
            inc.event_ids = (inc.event_ids + [msg["id"]])[-20:]
            self.journal.append("incident", f"incident {inc.id}: {sev} {kind} at {dev} joins it "
                                f"({inc.detections} detections)", device=dev, ts=now,
                                detail={"incident": inc.id, "event": msg["id"], "state": inc.state})
        place = zones[0] if zones else dev
        for rule in matched:
            if not self._persisted(rule, place, now):
                continue
            if inc is None:
                if len(self.store.active) >= MAX_ACTIVE:
                    self.refused += 1
                    if self.refused == 1 or self.refused % 100 == 0:
                        self.journal.append("incident", f"{len(self.store.active)} incidents open: event "
                                            f"{msg['id']} from {dev} opens no new one ({self.refused} so far)",
                                            device=dev, ts=now, detail={"event": msg["id"], "rule": rule.name})
                    return None
                inc = self._open(site, dev, msg, lat, lon, zones, rule, now)
            if rule.name in inc.rules:
                continue  # this rule already acted on this incident: the detection was absorbed
            inc.rules.append(rule.name)
            last = self._acted.get((rule.name, place))
            if last is not None and now - last < rule.cooldown_s * 1000:
                self.journal.append("incident", f"incident {inc.id}: rule {rule.name} in cool-down at {place} "
                                    f"({(rule.cooldown_s * 1000 - (now - last)) // 1000} s left): no action",
                                    operator=rule.operator, ts=now, detail={"incident": inc.id, "place": place})
            else:
                self._remember(self._acted, (rule.name, place), now)
                self._act(inc, rule, rule.act, "act")
            if rule.escalate is not None and inc.escalate_at_ms is None and rule.name not in inc.escalated:
                inc.escalate_at_ms = now + (rule.escalate_after_s or 0) * 1000
                inc.escalate_rule = rule.name
        if inc is not None:
            self.store.save(inc)
        return inc

    def _persisted(self, rule: Rule, place: str, now: int) -> bool:
        n, within = rule.match.persist_count, rule.match.persist_s
        if n <= 1:
            return True
        key = (rule.name, place)
        times = [t for t in self._seen.get(key, ()) if now - t <= within * 1000] + [now]
        self._remember(self._seen, key, times)
        return len(times) >= n

    @staticmethod
    def _remember(d: dict[Any, Any], key: Any, value: Any) -> None:
        d.pop(key, None)
        d[key] = value
        while len(d) > MAX_PLACES:
            d.pop(next(iter(d)))

    def _absorbing(self, site: str, lat: int | None, lon: int | None, zones: tuple[str, ...],
                   now: int) -> Incident | None:
        best: tuple[float, Incident] | None = None
        for inc in self.store.active.values():
            if absorbs(inc, site, lat, lon, zones, now, self.cfg.absorb_m, self.cfg.absorb_s):
                d = 0.0
                if lat is not None and lon is not None and inc.lat is not None and inc.lon is not None:
                    d = haversine_m(inc.lat, inc.lon, lat, lon)
                if best is None or d < best[0]:
                    best = (d, inc)
        return best[1] if best else None

    def _open(self, site: str, dev: str, msg: dict[str, Any], lat: int | None, lon: int | None,
              zones: tuple[str, ...], rule: Rule, now: int) -> Incident:
        inc = Incident(self.store.new_id(), site, msg["kind"], msg["sev"], lat, lon, zones[0] if zones else None,
                       dev, now, last_ms=now, event_ids=[msg["id"]])
        inc.history.append({"state": "open", "ts": now, "by": rule.operator, "why": f"event {msg['id']}"})
        self.journal.append("incident", f"incident {inc.id} opened: {msg['sev']} {msg['kind']} at {dev} "
                            f"(rule {rule.name})", operator=rule.operator, device=dev, ts=now,
                            detail={"incident": inc.id, "event": msg["id"], "lat": lat, "lon": lon,
                                    "zone": inc.zone, "rule": rule.name})
        self.store.save(inc)
        return inc

    def on_location(self, dev: str) -> None:
        """A device reported a position: a dispatched unit may have arrived."""
        try:
            for inc in list(self.store.active.values()):
                if inc.state in ("dispatched", "on_scene") and dev in inc.units:
                    self._check_arrival(inc, dev, self.clock())
        except Exception:  # noqa: BLE001 - see on_event
            self.errors += 1
            log.exception("linkage failed on a position of %s", dev)

    def _check_arrival(self, inc: Incident, dev: str, now: int) -> None:
        """A unit within ``on_scene_m`` of the event (a drone sent to orbit: of its circle) has arrived; the first
        one to arrive puts the incident on scene."""
        unit = inc.units.get(dev)
        loc = (self.view(dev) or {}).get("loc") or {}
        if (unit is None or unit.get("arrived_ms") is not None or inc.lat is None or inc.lon is None
                or not isinstance(loc.get("lat"), int) or not isinstance(loc.get("lon"), int)):
            return
        d = haversine_m(inc.lat, inc.lon, loc["lat"], loc["lon"])
        if d > self.cfg.on_scene_m + int(unit.get("radius_m") or 0):
            return
        unit["arrived_ms"], unit["arrived_m"] = now, round(d)
        since = f", {(now - unit['ts']) / 1000:.1f} s after dispatch" if isinstance(unit.get("ts"), int) else ""
        what = f"officer {unit['officer']} ({dev})" if unit.get("officer") else dev
        self.journal.append("incident", f"incident {inc.id}: {what} arrived, {round(d)} m from the event{since}",
                            device=dev, ts=now, detail={"incident": inc.id, "unit": unit.get("unit"),
                                                        "dist_m": round(d), "eta_s": unit.get("eta_s")})
        if inc.state == "dispatched":
            self._move(inc, "on_scene", now, dev, f"{dev} within {round(d)} m")
        else:
            self.store.save(inc)

    def on_command(self, c: Any, old: str) -> None:
        """CommandService listener: bind new commands to the incident whose task issued them; follow results."""
        try:
            if old == "new":
                ctx = _ISSUING.get()
                if ctx is not None and ctx[0] in self.store.active:
                    mine = self.store.active[ctx[0]]
                    mine.commands[c.id] = ctx[1]
                    self._cmd[c.id] = mine.id
                    self.store.save(mine)
                if ctx is None:
                    return
            inc_id = self._cmd.get(c.id)
            if inc_id is None:
                return
            inc = self.store.active.get(inc_id)
            if c.final:
                self._cmd.pop(c.id, None)
            if inc is None:
                return
            purpose = inc.commands.get(c.id, "")
            now = self.clock()
            if purpose == "broadcast" and c.status in WARNED_ON and inc.state == "open":
                self._move(inc, "warned", now, c.op or "gateway", f"{c.device} playing ({c.status})")
            elif purpose in ("officer", "drone") and c.status in DISPATCHED_ON and inc.state in ("open", "warned"):
                self._move(inc, "dispatched", now, c.op or "gateway", f"{c.device} accepted the {purpose} order")
            elif purpose in ("officer", "drone", "launch") and c.status in FAILED and c.device in inc.units:
                del inc.units[c.device]
                self.journal.append("incident", f"incident {inc.id}: {purpose} order to {c.device} {c.status}; "
                                    "unit released", operator=c.op, device=c.device, ts=now,
                                    detail={"incident": inc.id, "command": c.id, "code": c.code})
                self.store.save(inc)
        except Exception:  # noqa: BLE001 - see on_event
            self.errors += 1
            log.exception("linkage failed on command %s", getattr(c, "id", "?"))

    def tick(self, now: int) -> None:
        """Escalation deadlines, arrivals, auto-close."""
        try:
            for inc in list(self.store.active.values()):
                if inc.escalate_at_ms is not None and now >= inc.escalate_at_ms:
                    self._escalate(inc, now)
                if inc.state in ("dispatched", "on_scene"):
                    for dev in list(inc.units):
                        if inc.state in ("dispatched", "on_scene"):
                            self._check_arrival(inc, dev, now)
                if (inc.state in ("open", "warned") and not inc.units and inc.escalate_at_ms is None
                        and now - max(inc.last_ms, inc.opened_ms) > self.cfg.auto_close_s * 1000):
                    self._move(inc, "closed", now, "gateway", f"no detection for {self.cfg.auto_close_s} s")
        except Exception:  # noqa: BLE001 - see on_event
            self.errors += 1
            log.exception("linkage tick failed")

    def _escalate(self, inc: Incident, now: int) -> None:
        name = inc.escalate_rule or "?"
        inc.escalate_at_ms, inc.escalate_rule = None, None
        inc.escalated.append(name)
        rule = self._rule(name)
        if inc.state not in ("open", "warned"):
            self.journal.append("incident", f"incident {inc.id}: escalation of rule {name} not needed "
                                f"({inc.state})", operator=RULE_ID_PREFIX + name, ts=now, detail={"incident": inc.id})
        elif rule is None or rule.escalate is None:
            self.journal.append("incident", f"incident {inc.id}: rule {name} no longer escalates (rules "
                                "reloaded); escalation dropped", ts=now, detail={"incident": inc.id})
        else:
            self.journal.append("incident", f"incident {inc.id} escalated by rule {name}: still {inc.state} "
                                f"{(now - inc.opened_ms) // 1000} s after opening", operator=rule.operator,
                                ts=now, detail={"incident": inc.id, "after_s": rule.escalate_after_s})
            self._act(inc, rule, rule.escalate, "escalate")
        self.store.save(inc)

    def _move(self, inc: Incident, new: str, now: int, by: str, why: str) -> None:
        h = transition(inc, new, now, by, why)
        took = now - inc.opened_ms
        self.journal.append("incident", f"incident {inc.id}: {h['from']} -> {new} by {by} ({why}; "
                            f"{took / 1000:.1f} s after opening)", operator=by, ts=now,
                            detail={"incident": inc.id, "from": h["from"], "to": new, "why": why,
                                    "since_open_ms": took})
        self.store.save(inc)
        if new == "closed":
            for cid in list(inc.commands):
                self._cmd.pop(cid, None)
            self._release(inc, by)
            for contact in inc.notified:
                self._send_notification(inc, contact, f"事件 {inc.id} 已关闭，感谢协助。Incident {inc.id} closed.",
                                        None)

    # -- actions --------------------------------------------------------------------------------------------
    def _act(self, inc: Incident, rule: Rule, a: Actions, stage: str) -> None:
        if a.broadcast is not None:
            self._broadcast(inc, rule, a.broadcast)
        if a.officer:
            self.send_unit(inc, "officer", rule.operator, record=a.record)
        if a.drone is not None:
            self.send_unit(inc, "drone", rule.operator, drone=a.drone)
        if a.notify is not None:
            self._notify(inc, rule, a.notify)

    def _broadcast(self, inc: Incident, rule: Rule, b: Broadcast) -> None:
        by = rule.operator
        a = {"clip": b.clip, "repeat": b.repeat, "priority": b.priority, "queue": False, "wait": "accepted",
             "wait_s": CMD_WAIT_S, "ttl_s": CMD_TTL_S}
        args: dict[str, Any] = {"clip": b.clip, "repeat": b.repeat}
        if b.volume is not None:
            a["volume"] = args["volume"] = b.volume
        if b.zone is not None:
            targets = [b.zone]
            detail: dict[str, Any] = {"zone": b.zone}
        else:
            near = self.speakers_near(inc, b.within_m or 0)
            targets = [s for s, _ in near[:b.max_speakers]]
            detail = {"within_m": b.within_m, "speakers": [{"device": s, "dist_m": d} for s, d in near]}
            if not targets:
                self.journal.append("incident", f"incident {inc.id}: rule {rule.name}: no live speaker within "
                                    f"{b.within_m} m; no warning broadcast", operator=by,
                                    detail={"incident": inc.id, **detail})
                return
        self.journal.append("incident", f"incident {inc.id}: rule {rule.name} broadcasts {b.clip} on "
                            f"{', '.join(targets)}", operator=by, detail={"incident": inc.id, "clip": b.clip,
                                                                          "priority": b.priority, **detail})
        for t in targets:
            self._spawn_issue(inc, "broadcast", by, "broadcast", {"to": t, **a}, "play", args)

    def speakers_near(self, inc: Incident, within_m: int) -> list[tuple[str, int]]:
        """Live speakers with a position within ``within_m`` of the incident, nearest first (straight line:
        sound crosses the water)."""
        if inc.lat is None or inc.lon is None:
            return []
        out = []
        for v in self.views():
            loc = v.get("loc") or {}
            if v.get("kind") not in SPEAKER_KINDS or v.get("state") not in LIVE or not isinstance(loc.get("lat"), int):
                continue
            d = haversine_m(inc.lat, inc.lon, loc["lat"], loc["lon"])
            if d <= within_m:
                out.append((v["id"], round(d)))
        return sorted(out, key=lambda x: (x[1], x[0]))

    def assigned(self) -> set[str]:
        return {d for i in self.store.active.values() for d in i.units}

    def send_unit(self, inc: Incident, unit: str, by: str, record: bool = True, drone: DroneAction | None = None,
                  to: dict[str, Any] | None = None) -> list[asyncio.Task[Any]]:
        """Send the nearest available officer or drone (or the operator's choice ``to``, a device view).
        The ranking goes to the journal with every candidate's ETA and why the others were skipped. Returns the
        tasks issuing the orders (the first one is the order itself; an operator's request waits for it)."""
        now = self.clock()
        if inc.lat is None or inc.lon is None:
            self.journal.append("incident", f"incident {inc.id}: no position, cannot rank {unit}s", operator=by,
                                detail={"incident": inc.id})
            return []
        ranking = dispatch.rank(self.views(), inc.lat, inc.lon, unit, self.cfg.dispatch, now, inc.site,
                                assigned=self.assigned())
        if to is not None:
            dev = to["id"]
            cand = next((c for c in ranking.candidates if c.device == dev), None)
            chosen: dict[str, Any] = {"device": dev, "unit": unit, "by": by, "override": True}
            if cand is not None:
                chosen["eta_s"] = cand.eta_s
            officer = to.get(dispatch.VIEW_OFFICER)
        elif ranking.best is not None:
            best = ranking.best
            dev, officer = best.device, best.officer
            chosen = {"device": dev, "unit": unit, "by": by, "eta_s": best.eta_s}
        else:
            self.journal.append("incident", f"incident {inc.id}: no {unit} available within "
                                f"{ranking.cutoff_s // 60} min", operator=by, ts=now,
                                detail={"incident": inc.id, **ranking.explain()})
            return []
        if officer:
            chosen["officer"] = officer
        chosen["ts"] = now
        d = drone or DroneAction()
        if unit == "drone" and d.action == "orbit":
            chosen["radius_m"] = d.radius_m  # on scene once on its circle
        inc.units[dev] = chosen
        what = f"officer {officer} (recorder {dev})" if unit == "officer" else f"drone {dev}"
        eta = f", ETA {chosen['eta_s']} s" if "eta_s" in chosen else ""
        self.journal.append("incident", f"incident {inc.id}: {'operator override: ' if to else ''}dispatch "
                            f"{what}{eta}", operator=by, device=dev, ts=now,
                            detail={"incident": inc.id, **ranking.explain(), "chosen": dev,
                                    "override": to is not None})
        self.store.save(inc)
        base = {"to": dev, "priority": 3, "queue": False, "wait": "accepted", "wait_s": CMD_WAIT_S,
                "ttl_s": CMD_TTL_S}
        if unit == "officer":
            args: dict[str, Any] = {"incident": inc.id, "lat": inc.lat, "lon": inc.lon, "kind": inc.kind,
                                    "sev": inc.sev, "text": self._order_text(inc, chosen.get("eta_s"))}
            if "eta_s" in chosen:
                args["eta_s"] = chosen["eta_s"]
            tasks = [self._spawn_issue(inc, "officer", by, "command",
                                       {**base, "name": RECORDER_DISPATCH, "args": args}, RECORDER_DISPATCH, args)]
            if record:
                rargs = {"incident": inc.id}
                tasks.append(self._spawn_issue(inc, "record", by, "command",
                                               {**base, "name": RECORDER_RECORD, "args": rargs}, RECORDER_RECORD,
                                               rargs))
            return tasks
        # a drone: MAVLink positions and heights only (the incident is known from the command's binding here)
        args = {"lat": inc.lat, "lon": inc.lon, "alt_m": d.alt_m}
        if d.action == "orbit":
            args["radius_m"] = d.radius_m
        view = to if to is not None else (self.view(dev) or {})
        steps: list[tuple[str, str, dict[str, Any]]] = []
        if not (view.get("info") or {}).get(dispatch.INFO_ARMED):
            # on the ground: guided mode, arm, take off, then the order (the ETA's launch_s is this)
            steps = [("launch", "set_mode", {"mode": "guided"}), ("launch", "arm", {}),
                     ("launch", "takeoff", {"alt_m": d.alt_m})]
        steps.append(("drone", d.action, args))
        return [self.spawn(self._drone_steps(inc.id, by, dev, base, steps), name=f"linkage-{inc.id}-drone")]

    async def _drone_steps(self, inc_id: str, by: str, dev: str, base: dict[str, Any],
                           steps: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
        """Launch (if needed) and send the order, one step after the other, each to the autopilot's final
        verdict; the first step that fails ends the sequence (journaled by ``_issue``; the unit is released)."""
        r: dict[str, Any] = {"code": "internal", "error": "no step"}
        for purpose, name, args in steps:
            a = {**base, "name": name, "args": args, "wait": "final",
                 "wait_s": DRONE_LAUNCH_WAIT_S if name == "takeoff" else CMD_WAIT_S}
            r = await self._issue(inc_id, purpose, by, "command", a, name, args)
            if r.get("code") != "ok":
                break
        return r

    def _order_text(self, inc: Incident, eta: Any) -> str:
        """What the officer reads on the recorder's screen (zh-CN first, then English), at most 200 chars."""
        where = f"{(inc.lat or 0) / 1e7:.5f},{(inc.lon or 0) / 1e7:.5f}"
        zone = f" {inc.zone}" if inc.zone else ""
        eta_zh = f"，预计 {max(1, round(eta / 60))} 分钟" if isinstance(eta, int) else ""
        eta_en = f", ETA {max(1, round(eta / 60))} min" if isinstance(eta, int) else ""
        return (f"【{inc.site}{zone}】{SEV_ZH.get(inc.sev, inc.sev)}事件 {inc.id}（{inc.kind}）：请前往 {where}{eta_zh}。"
                f"Go to {where}{eta_en}.")[:200]

    def _release(self, inc: Incident, by: str) -> None:
        """The incident is closed: its officers' recorders are cleared (they are free again), its drones fly
        home. Each order goes through the command path like any other and is journaled."""
        base = {"priority": 3, "queue": False, "wait": "accepted", "wait_s": CMD_WAIT_S, "ttl_s": CMD_TTL_S}
        for dev, u in inc.units.items():
            name = DRONE_RETURN if u.get("unit") == "drone" else RECORDER_CLEAR
            self._spawn_issue(inc, "release", by, "command", {**base, "to": dev, "name": name, "args": {}}, name, {})

    def on_evidence(self, info: dict[str, Any]) -> None:
        """A recorder clip was verified and filed (gateway/service/recorders.py): if its recorder is a unit of an
        open incident and the clip ends after the dispatch, it is that incident's evidence; with
        ``close_on_evidence`` an incident on scene whose officer's clip is in is closed."""
        try:
            dev, sha = info.get("device"), info.get("sha256")
            if not isinstance(dev, str) or not isinstance(sha, str):
                return
            now = self.clock()
            for inc in list(self.store.active.values()):
                u = inc.units.get(dev)
                end = info.get("end_ms")
                if u is None or (isinstance(end, int) and isinstance(u.get("ts"), int) and end < u["ts"]):
                    continue
                inc.evidence.append({"sha256": sha, "device": dev, "clip": info.get("clip"),
                                     "size": info.get("size"), "ts": now})
                self.journal.append("incident", f"incident {inc.id}: evidence from {dev}: clip {info.get('clip')} "
                                    f"sha256:{sha[:16]}… verified and filed", device=dev, ts=now,
                                    detail={"incident": inc.id, "sha256": sha, "clip": info.get("clip"),
                                            "size": info.get("size"), "officer": info.get("officer")})
                self.store.save(inc)
                if self.cfg.close_on_evidence and inc.state == "on_scene" and u.get("arrived_ms") is not None:
                    self._move(inc, "closed", now, "gateway", f"evidence from {dev} verified (sha256:{sha[:16]}…)")
        except Exception:  # noqa: BLE001 - see on_event
            self.errors += 1
            log.exception("linkage failed on evidence from %s", info.get("device"))

    def _spawn_issue(self, inc: Incident, purpose: str, by: str, op: str, a: dict[str, Any], name: str,
                     args: dict[str, Any]) -> asyncio.Task[Any]:
        return self.spawn(self._issue(inc.id, purpose, by, op, a, name, args), name=f"linkage-{inc.id}-{purpose}")

    async def _issue(self, inc_id: str, purpose: str, by: str, op: str, a: dict[str, Any], name: str,
                     args: dict[str, Any]) -> dict[str, Any]:
        _ISSUING.set((inc_id, purpose))  # this task's context: CommandService's "new" callback sees it
        try:
            r = await self.issue(by, op, a, name, dict(args), None)
        except Exception as e:  # noqa: BLE001 - journaled: an action that failed must leave a trace
            r = {"code": "internal", "error": f"{type(e).__name__}: {e}"}
        if r.get("code") not in ("ok", "queued"):
            self.journal.append("incident", f"incident {inc_id}: {name} to {a['to']} for {purpose}: "
                                f"{r.get('code')} {r.get('error') or ''}".rstrip(), operator=by, device=a["to"],
                                detail={"incident": inc_id, "code": r.get("code"), "error": r.get("error")})
        return r

    def _notify(self, inc: Incident, rule: Rule, n: Notify) -> None:
        ids = list(n.contacts)
        dists: dict[str, int] = {}
        if n.within_m is not None and inc.lat is not None and inc.lon is not None:
            for c in self.cfg.contacts.values():
                d = round(haversine_m(inc.lat, inc.lon, c.lat, c.lon))
                dists[c.id] = d
                if d <= n.within_m and c.id not in ids:
                    ids.append(c.id)
        ids = [i for i in ids if i in self.cfg.contacts and i not in inc.notified]
        if not ids:
            self.journal.append("incident", f"incident {inc.id}: rule {rule.name}: no contact to notify",
                                operator=rule.operator, detail={"incident": inc.id, "within_m": n.within_m})
            return
        where = f"{inc.lat / 1e7:.5f},{inc.lon / 1e7:.5f}" if inc.lat is not None and inc.lon is not None else "-"
        text = (f"【{inc.site}】{SEV_ZH.get(inc.sev, inc.sev)}事件 {inc.id}（{inc.kind}）位置 {where}，"
                f"请就近前往协助控制现场。Please go to {where} and hold the scene.")
        for cid in ids:
            if self._send_notification(inc, cid, text, rule.name):
                inc.notified.append(cid)
                c = self.cfg.contacts[cid]
                self.journal.append("incident", f"incident {inc.id}: notified {c.name} ({cid})"
                                    + (f", {dists[cid]} m away" if cid in dists else ""), operator=rule.operator,
                                    device=cid, detail={"incident": inc.id, "contact": cid,
                                                        "topic": topics.topic(inc.site, cid, "notify")})
        self.store.save(inc)

    def _send_notification(self, inc: Incident, contact: str, text: str, rule: str | None) -> bool:
        m = notifymsg.notification(f"{inc.id}.{len(inc.history)}", inc.id, inc.site, inc.state, self.clock(),
                                   inc.kind, inc.sev, text[:200], inc.lat, inc.lon, inc.zone, rule)
        try:
            self.publish(topics.topic(inc.site, contact, "notify"), notifymsg.encode(m), 1, True)
            return True
        except (LocalProtocolError, ConnectionError, OSError) as e:
            self.journal.append("incident", f"incident {inc.id}: notification to {contact} failed: {e}",
                                device=contact, detail={"incident": inc.id})
            return False

    # -- operator ops ---------------------------------------------------------------------------------------
    async def handle_op(self, op_id: str, op: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]:
        if op == "incidents":
            st = a.get("state", "active")
            incs = self.store.list(None if st == "active" else st, a["limit"])
            self.journal.append("operator", f"{op_id} listed incidents ({st})", operator=op_id, detail=a)
            return opapi.response(rid, "ok", {"incidents": [i.summary() for i in incs]})
        if op == "coverage":
            cut = a.get("cutoff_s")
            params = self.cfg.dispatch
            if cut is not None:
                params = replace(params, cutoff_s=cut)
            rep = coverage.compute(self.views(), params, self.clock(), self.site)
            self.journal.append("operator", f"{op_id} asked for coverage: {len(rep['uncovered'])} point(s) "
                                f"outside the {params.cutoff_s // 60} min circle", operator=op_id,
                                detail={"uncovered": rep["uncovered"], "cutoff_s": params.cutoff_s})
            return opapi.response(rid, "ok", rep)
        return await self._incident_op(op_id, a, rid)

    async def _incident_op(self, op_id: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]:
        action, iid = a["action"], a["incident"]
        inc = self.store.get(iid)
        if inc is None:
            self.journal.append("operator", f"{op_id} incident {action} {iid}: unknown", operator=op_id)
            return opapi.response(rid, "bad_request", error=f"no incident {iid!r}")
        now = self.clock()
        if action == "show":
            self.journal.append("operator", f"{op_id} looked at incident {iid}", operator=op_id,
                                detail={"incident": iid})
            data = inc.to_dict()
            data["times"] = {s: inc.at(s) for s in ("open", "warned", "dispatched", "on_scene", "closed")}
            data["contacts"] = [{"id": c, "name": self.cfg.contacts[c].name, "phone": self.cfg.contacts[c].phone}
                                for c in inc.notified if c in self.cfg.contacts]
            if inc.active and inc.lat is not None and inc.lon is not None:
                views = self.views()
                data["ranking"] = [dispatch.rank(views, inc.lat, inc.lon, u, self.cfg.dispatch, now, inc.site,
                                                 assigned=self.assigned() - set(inc.units)).explain()
                                   for u in ("officer", "drone")]
            return opapi.response(rid, "ok", data)
        if not inc.active:
            self.journal.append("operator", f"{op_id} incident {action} {iid} refused: closed", operator=op_id)
            return opapi.response(rid, "failed", error=f"incident {iid} is closed")
        if action == "ack":
            inc.acked_by = op_id
            self.journal.append("incident", f"incident {iid} acknowledged by {op_id}", operator=op_id, ts=now,
                                detail={"incident": iid, "state": inc.state})
            self.store.save(inc)
            return opapi.response(rid, "ok", inc.summary())
        if action == "close":
            why = a.get("why") or "closed by the operator"
            self._move(inc, "closed", now, op_id, why)
            return opapi.response(rid, "ok", inc.summary())
        # dispatch --to
        unit = dispatch.find_unit(self.views(), a["to"])
        if unit is None:
            self.journal.append("operator", f"{op_id} dispatch for {iid} to {a['to']} refused: no such officer, "
                                "recorder or drone", operator=op_id, detail={"incident": iid, "to": a["to"]})
            return opapi.response(rid, "unknown_device", error=f"{a['to']!r} is no officer, recorder or drone")
        kind = "drone" if unit.get("kind") == dispatch.DRONE_KIND else "officer"
        drone = DroneAction(a.get("drone") or "orbit") if kind == "drone" else None
        tasks = self.send_unit(inc, kind, op_id, record=True, drone=drone, to=unit)
        if not tasks:
            return opapi.response(rid, "failed", inc.summary(), error=f"incident {iid} has no position")
        done, _ = await asyncio.wait(tasks[:1], timeout=CMD_WAIT_S + 5)
        r = next(iter(done)).result() if done else {"code": "timeout", "error": "no answer yet"}
        data = {**inc.summary(), "order": r.get("data")}
        return opapi.response(rid, r.get("code", "internal"), data, error=r.get("error"))


__all__ = ["DISPATCHED_ON", "RECORDER_DISPATCH", "RECORDER_RECORD", "WARNED_ON", "IncidentError", "Linkage"]
