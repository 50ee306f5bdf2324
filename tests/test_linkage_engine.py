"""The linkage engine with plain data: rules -> incidents -> actions, cool-downs, escalation, dispatch, restart.

The engine's seams are its injected functions: ``issue`` (here a recorder of calls that creates a real
``Command`` and tells the engine synchronously, as ``CommandService.prepare`` does), ``publish``, ``views``. The
journal is the real one (SQLite). The real gateway, Mosquitto and firmware speakers are in test_linkage_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from aiowait import aio

from lookout.gateway.core.commands import Command
from lookout.gateway.core.journal import Journal
from lookout.gateway.linkage import rules
from lookout.gateway.linkage.engine import Linkage
from lookout.protocols import notify

# 2025-06-01 23:30 in Asia/Shanghai (15:30 UTC): inside a "19:00-06:00" window
NIGHT = int(datetime(2025, 6, 1, 15, 30, tzinfo=UTC).timestamp() * 1000)
NOON = int(datetime(2025, 6, 1, 4, 0, tzinfo=UTC).timestamp() * 1000)
FERRY = (299050000, 1196100000)
ZONES = {"ferry": ("sen-ferry",)}


def view(dev, kind, lat, lon, state="online", ts=None, **info):
    v = {"id": dev, "site": "dongshan", "kind": kind, "state": state, "loc": {"lat": lat, "lon": lon}}
    if ts is not None:
        v["loc"]["ts"] = ts
    for k in ("officer", "busy"):  # top level in a device view (operator_api.device_view), like the bridges fill it
        if k in info:
            v[k] = info.pop(k)
    if info:
        v["info"] = info
    return v


SPEAKERS = [view("spk-ferry", "speaker", 299062000, 1196108000),  # ~155 m
            view("spk-dam", "speaker", 299140000, 1196120000),  # ~1 km
            view("spk-off", "speaker", 299051000, 1196101000, state="offline")]


def table(**over):
    t = {"timezone": "Asia/Shanghai", "absorb_m": 300, "absorb_s": 600,
         "contact": [{"id": "cadre-wang", "name": "王建国", "lat": 29.9071, "lon": 119.6122},
                     {"id": "cadre-far", "name": "far away", "lat": 30.2, "lon": 120.0}],
         "rule": [{"name": "night-ferry", "cooldown_s": 300,
                   "match": {"kind": "presence", "hours": "19:00-06:00"},
                   "act": {"broadcast": {"clip": "nofish", "within_m": 600, "priority": "priority"}},
                   "escalate": {"after_s": 120, "officer": True, "drone": "orbit", "notify": {"within_m": 3000}}}]}
    t.update(over)
    return t


class World:
    """The engine with a clock, device views, and recorders of what it issued and published."""

    def __init__(self, tmp_path, t=None, views=None, db="incidents.db"):
        self.now = NIGHT
        self.views = list(SPEAKERS if views is None else views)
        self.calls: list[dict] = []
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.cmds: dict[str, Command] = {}
        self.journal = Journal(tmp_path / "journal.db")
        self.cfg = rules.from_table(t or table(), ZONES)
        self.tmp = tmp_path
        self.link = self.make(db)

    def make(self, db):
        return Linkage(self.cfg, site="dongshan", zones=ZONES, journal=self.journal,
                       views=lambda: self.views, view=lambda i: next((v for v in self.views if v["id"] == i), None),
                       issue=self.issue, publish=lambda *a: self.published.append(a),
                       spawn=lambda coro, name=None: asyncio.get_running_loop().create_task(coro, name=name),
                       clock=lambda: self.now, db_path=self.tmp / db,
                       reload_from=lambda: rules.from_table(self.reload_table))

    async def issue(self, op_id, op, a, name, args, rid):
        c = Command(f"c{len(self.calls) + 1}", a["to"], "dongshan", name, args, a["priority"], self.now,
                    self.now + 120000, status="sent", op=op_id)
        self.calls.append({"op_id": op_id, "op": op, "to": a["to"], "name": name, "args": args, "id": c.id})
        self.cmds[c.id] = c
        self.link.on_command(c, "new")  # CommandService.prepare tells its listeners synchronously
        return {"code": "ok", "data": {"results": [{"device": a["to"], "id": c.id, "status": "sent"}]}}

    def result(self, cid, status):
        c = self.cmds[cid]
        c.status = status
        self.link.on_command(c, "sent")

    def event(self, dev="sen-ferry", kind="presence", sev="general", eid=None, latlon=FERRY, **kw):
        self.n = getattr(self, "n", 0) + 1
        m = {"id": eid or f"{dev}-0-{self.n}", "seq": self.n, "ts": self.now, "kind": kind, "sev": sev, **kw}
        if latlon:
            m["lat"], m["lon"] = latlon
        return self.link.on_event("dongshan", dev, m, self.now)

    def entries(self, kind="incident"):
        return [e for e in self.journal.entries() if e.kind == kind]


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


# -- rules --------------------------------------------------------------------------------------------------------

def test_time_window_wraps_past_midnight_in_the_site_time_zone():
    cfg = rules.from_table(table())
    r = cfg.rules[0]

    def at(h, m):  # local time in Shanghai (UTC+8) on 2025-06-01/02
        ms = int(datetime(2025, 6, 1, 0, 0, tzinfo=UTC).timestamp() * 1000) + ((h - 8) * 60 + m) * 60000
        return r.matches("dongshan", "presence", "general", (), cfg.local_minute("dongshan", ms))

    assert at(23, 30) and at(0, 10) and at(5, 59) and at(19, 0)
    assert not at(6, 0) and not at(12, 0) and not at(18, 59)
    # the same instant is another local time in another site's zone
    cfg2 = rules.from_table(table(site={"dongshan": {"timezone": "Europe/Berlin"}}))
    assert cfg2.local_minute("dongshan", NIGHT) == 17 * 60 + 30
    assert rules.parse_hours("06:00-19:00").contains(12 * 60)
    for bad in ("25:00-01:00", "06:00", "6-7", "07:00-07:00", "07:60-08:00"):
        assert rules.parse_hours(bad) is None, bad


def test_rule_errors_name_the_rule_and_the_key():
    bad = table(rule=[
        {"name": "night-ferry", "match": {"hours": "19-06", "severity": ["loud"], "typo": 1},
         "act": {"broadcast": {"clip": "nofish", "within_m": 600, "zone": "nowhere"}}},
        {"name": "Bad Name!", "act": {"officer": "yes"}},
        {"name": "esc", "escalate": {"officer": True}, "act": {"notify": {"contacts": ["nobody"]}}},
        {"name": "night-ferry", "act": {"officer": True}},
    ], speed={"officer_mps": 0})
    try:
        rules.from_table(bad, {"ferry": ("sen-ferry",)}, "linkage.toml")
    except rules.RulesError as e:
        errs = e.errors
    else:
        raise AssertionError("invalid rules accepted")
    text = "\n".join(errs)
    assert "rule 'night-ferry': match.hours: expected \"HH:MM-HH:MM\"" in text
    assert "rule 'night-ferry': match.severity: 'loud': expected one of info, general, serious, critical" in text
    assert "rule 'night-ferry': match.typo: unknown key" in text
    assert "rule 'night-ferry': act.broadcast: give exactly one of within_m" in text
    assert "rule 'night-ferry': act.broadcast.zone: 'nowhere' is not in [zones]" in text
    assert "rule 'Bad Name!': name: expected a name of 1-27 chars" in text
    assert "rule 'Bad Name!': act.officer: expected true or false, got 'yes'" in text
    assert "rule 'esc': escalate.after_s: required" in text
    assert "rule 'esc': act.notify.contacts: 'nobody' is not a [[contact]] id" in text
    assert "rule 'night-ferry': name: duplicate rule name" in text
    assert "linkage.toml: speed.officer_mps: expected a number 0.5..60, got 0" in text


def test_the_example_rules_file_is_valid():
    from pathlib import Path

    p = Path(__file__).resolve().parents[1] / "deploy" / "linkage.example.toml"
    cfg = rules.from_table(rules.read_toml(p), {"ferry": ("sen-ferry",)}, str(p))
    assert [r.name for r in cfg.rules] == ["night-ferry", "serious-anywhere"]
    assert cfg.dispatch.road("dongshan") == 2.5 and cfg.dispatch.road("elsewhere") == 1.2
    assert cfg.contacts["cadre-wang"].lat == 299071000


# -- incidents and actions ----------------------------------------------------------------------------------------

@aio
async def test_one_intruder_one_incident_one_broadcast_then_cooldown(tmp_path):
    w = World(tmp_path)
    inc = w.event()
    await settle()
    assert inc is not None and inc.state == "open"
    assert [(c["to"], c["name"], c["op_id"]) for c in w.calls] == [("spk-ferry", "play", "rule.night-ferry")]
    w.result("c1", "accepted")
    assert inc.state == "warned" and inc.history[-1]["by"] == "rule.night-ferry"
    # the intruder stays: ten more detections within the window join the incident, nobody is warned again
    for _ in range(10):
        w.now += 20_000
        assert w.event(latlon=(299051000, 1196101000)) is inc
    await settle()
    assert len(w.calls) == 1 and inc.detections == 11
    # an operator closes it; the intruder comes back within the cool-down: a new incident, but no broadcast
    r = await w.link.handle_op("op-1", "incident", {"action": "close", "incident": inc.id, "why": "left"}, "r1")
    assert r["code"] == "ok" and inc.state == "closed"
    w.now += 30_000
    inc2 = w.event()
    await settle()
    assert inc2 is not inc and len(w.calls) == 1
    assert any("cool-down" in e.summary for e in w.entries())
    # past the cool-down (and outside the absorb window) the next intruder is warned again
    w.now += 700_000
    inc3 = w.event()
    await settle()
    assert inc3 not in (inc, inc2) and len(w.calls) == 2
    # outside the time window nothing happens at all
    w.now = NOON
    assert w.event(latlon=(299140000, 1196120000)) is None


@aio
async def test_persistence_needs_n_detections_within_t(tmp_path):
    t = table()
    t["rule"][0]["match"]["persist"] = {"count": 3, "within_s": 60}
    w = World(tmp_path, t)
    assert w.event() is None
    w.now += 40_000
    assert w.event() is None
    w.now += 40_000  # the first one is 80 s old now: two in the window
    assert w.event() is None
    w.now += 10_000
    inc = w.event()  # three within 60 s
    await settle()
    assert inc is not None and len(w.calls) == 1


@aio
async def test_escalation_dispatches_nearest_officer_and_drone_and_notifies(tmp_path):
    views = SPEAKERS + [
        view("rec-1", "recorder", 299100000, 1196150000, officer="zhang"),  # ~740 m
        view("rec-2", "recorder", 299060000, 1196110000, officer="li"),  # ~145 m, nearest
        view("rec-3", "recorder", 299050500, 1196100500, officer="zhao", busy=True),
        view("rec-4", "recorder", 299050500, 1196100500, state="offline", officer="qian"),
        view("rec-5", "recorder", 299600000, 1196100000, officer="sun"),  # 6 km: beyond 15 min at 2.5x road
        view("uav-1", "drone", 299000000, 1196000000, bat_pct=90, link="ok", armed=True),  # in the air: no launch
        view("uav-2", "drone", 299050000, 1196100000, bat_pct=20, link="ok"),
        view("uav-3", "drone", 299050000, 1196100000, bat_pct=90, link="lost"),
    ]
    w = World(tmp_path, table(site={"dongshan": {"road_factor": 2.5}}), views)
    inc = w.event()
    await settle()
    w.result("c1", "accepted")
    w.now += 119_000
    w.link.tick(w.now)
    await settle()
    assert len(w.calls) == 1  # not yet
    w.now += 1_000
    w.link.tick(w.now)
    await settle()
    names = [(c["to"], c["name"]) for c in w.calls[1:]]
    assert names == [("rec-2", "dispatch"), ("rec-2", "record_start"), ("uav-1", "orbit")], names
    d = w.calls[1]["args"]
    assert d["incident"] == inc.id and (d["lat"], d["lon"]) == FERRY and d["eta_s"] == round(145.3 * 2.5 / 8.3)
    assert w.calls[3]["args"] == {"lat": FERRY[0], "lon": FERRY[1], "alt_m": 60, "radius_m": 50}  # MAVLink's
    assert "请前往 29.90500,119.61000" in d["text"] and "Go to" in d["text"] and len(d["text"]) <= 200
    # the journal explains the officer choice: candidates with ETAs, the others with reasons
    [ex] = [json.loads(e.detail) for e in w.entries() if "dispatch officer li" in e.summary]
    assert [c["device"] for c in ex["candidates"]] == ["rec-2", "rec-1"]
    assert all(c["eta_s"] > 0 for c in ex["candidates"])
    why = {s["device"]: s["why"] for s in ex["skipped"]}
    assert why["rec-3"] == "busy" and why["rec-4"] == "offline" and "beyond the 900 s cut-off" in why["rec-5"]
    [dx] = [json.loads(e.detail) for e in w.entries() if "dispatch drone uav-1" in e.summary]
    dwhy = {s["device"]: s["why"] for s in dx["skipped"]}
    assert dwhy["uav-2"].startswith("battery 20 %") and dwhy["uav-3"] == "link lost"
    # the cadre within 3 km got a notification a phone app can decode; the far one did not
    [(topic, payload, qos, retain)] = w.published
    assert topic == "lookout/v1/dongshan/cadre-wang/notify" and qos == 1 and retain
    n = notify.decode(payload)
    assert n["incident"] == inc.id and n["state"] == "warned" and "请就近前往" in n["text"]
    # the recorder accepts: dispatched; its position arrives within 50 m: on scene; the operator closes
    w.result("c2", "accepted")
    assert inc.state == "dispatched"
    rec2 = next(v for v in w.views if v["id"] == "rec-2")
    rec2["loc"] = {"lat": 299050200, "lon": 1196100200}
    w.link.on_location("rec-2")
    assert inc.state == "on_scene" and inc.history[-1]["by"] == "rec-2"
    r = await w.link.handle_op("op-1", "incident", {"action": "close", "incident": inc.id}, None)
    assert r["code"] == "ok"
    assert [h["state"] for h in inc.history] == ["open", "warned", "dispatched", "on_scene", "closed"]
    assert [h["by"] for h in inc.history] == ["rule.night-ferry", "rule.night-ferry", "rule.night-ferry",
                                                "rec-2", "op-1"]
    assert notify.decode(w.published[-1][1])["state"] == "closed"
    await settle()  # closing releases the units: the officer's recorder is cleared, the drone flies home
    assert [(c["to"], c["name"], c["op_id"]) for c in w.calls[-2:]] == [("rec-2", "clear", "op-1"),
                                                                         ("uav-1", "rtl", "op-1")]
    assert w.journal.verify().ok


@aio
async def test_a_drone_on_the_ground_is_launched_first_and_a_refused_step_ends_the_order(tmp_path):
    views = SPEAKERS + [view("uav-1", "drone", 299000000, 1196000000, bat_pct=90, link="ok", armed=False)]
    w = World(tmp_path, table(rule=[{"name": "drone-only", "match": {"kind": "presence"},
                                     "act": {"drone": {"action": "goto", "alt_m": 40}}}]), views)
    done: dict[str, str] = {}

    async def issue(op_id, op, a, name, args, rid):  # the autopilot's verdict on each step, at once
        r = await World.issue(w, op_id, op, a, name, args, rid)
        status = done.get(name, "done")
        w.result(w.calls[-1]["id"], status)
        return r if status == "done" else {"code": "failed", "error": status}

    w.link.issue = issue
    inc = w.event()
    for _ in range(10):
        await settle()
    assert [(c["name"], c["args"]) for c in w.calls] == [
        ("set_mode", {"mode": "guided"}), ("arm", {}), ("takeoff", {"alt_m": 40}),
        ("goto", {"lat": FERRY[0], "lon": FERRY[1], "alt_m": 40})]
    assert inc.state == "dispatched" and inc.history[-1]["why"] == "uav-1 accepted the drone order"
    await w.link.handle_op("op-1", "incident", {"action": "close", "incident": inc.id}, None)
    await settle()
    assert [(c["name"], c["to"]) for c in w.calls[4:]] == [("rtl", "uav-1")]
    # another incident, the drone's arming refused (low battery, say): no take-off, the unit released
    done["arm"] = "rejected"
    inc2 = w.event(dev="sen-north", latlon=(299125000, 1196080000))
    for _ in range(10):
        await settle()
    assert [c["name"] for c in w.calls[5:]] == ["set_mode", "arm"]
    assert inc2.units == {} and inc2.state == "open"
    assert any("arm to uav-1 for launch: failed" in e.summary for e in w.entries())


@aio
async def test_an_officers_clip_is_the_evidence_and_closes_the_incident_on_scene(tmp_path):
    for close in (True, False):
        views = SPEAKERS + [view("rec-2", "recorder", 299060000, 1196110000, officer="li")]
        t = table(close_on_evidence=close, rule=[{"name": "r", "match": {"kind": "presence"}, "act": {"officer": True}}])
        w = World(tmp_path / str(close), t, views)
        inc = w.event()
        await settle()
        w.result(w.calls[0]["id"], "accepted")
        assert inc.state == "dispatched"
        clip = {"device": "rec-2", "sha256": "ab" * 32, "clip": "c.mp4", "size": 10, "officer": "li"}
        w.link.on_evidence({**clip, "end_ms": w.now - 60_000})  # recorded before the dispatch: not this case's
        w.link.on_evidence({**clip, "device": "rec-9", "end_ms": w.now})  # another recorder: not its officer
        assert inc.evidence == [] and inc.state == "dispatched"
        w.views[-1]["loc"] = {"lat": FERRY[0] + 200, "lon": FERRY[1]}  # ~2 m away
        w.now += 30_000
        w.link.on_location("rec-2")
        assert inc.state == "on_scene" and inc.units["rec-2"]["arrived_m"] <= 3
        w.link.on_evidence({**clip, "end_ms": w.now})
        assert [e["sha256"] for e in inc.evidence] == ["ab" * 32]
        assert inc.state == ("closed" if close else "on_scene")
        assert any("evidence from rec-2" in e.summary for e in w.entries())
        await settle()
        assert [c["name"] for c in w.calls[2:]] == (["clear"] if close else [])


@aio
async def test_no_escalation_once_dispatched_and_failed_order_releases_the_unit(tmp_path):
    views = SPEAKERS + [view("rec-2", "recorder", 299060000, 1196110000, officer="li")]
    w = World(tmp_path, views=views)
    inc = w.event()
    await settle()
    r = await w.link.handle_op("op-1", "incident", {"action": "dispatch", "incident": inc.id, "to": "li"}, "r")
    assert r["code"] == "ok" and w.calls[-2]["to"] == "rec-2" and w.calls[-2]["op_id"] == "op-1"
    w.result(w.calls[-2]["id"], "accepted")
    assert inc.state == "dispatched" and inc.history[-1]["by"] == "op-1"
    n = len(w.calls)
    w.now += 200_000
    w.link.tick(w.now)
    await settle()
    assert len(w.calls) == n and any("not needed" in e.summary for e in w.entries())
    # a second incident elsewhere: li is busy on the first one, so nobody is left
    inc2 = w.event(dev="sen-north", latlon=(299125000, 1196080000))
    await settle()
    r = await w.link.handle_op("op-1", "incident", {"action": "show", "incident": inc2.id}, None)
    [officers, _drones] = r["data"]["ranking"]
    assert officers["candidates"] == [] and officers["skipped"] == [{"device": "rec-2",
                                                                      "why": "busy on another incident"}]
    # an order the recorder rejects releases it
    w.result(w.calls[n - 2]["id"], "rejected")  # (the first incident's dispatch order)
    assert "rec-2" not in inc.units


@aio
async def test_restart_keeps_open_incidents_and_their_escalation_timer(tmp_path):
    views = SPEAKERS + [view("rec-2", "recorder", 299060000, 1196110000, officer="li")]
    w = World(tmp_path, views=views)
    inc = w.event()
    await settle()
    w.result("c1", "done")
    assert inc.state == "warned" and inc.escalate_at_ms == NIGHT + 120_000
    w.link.close()
    # the gateway restarts 60 s later
    w.now += 60_000
    w.link = w.make("incidents.db")
    again = w.link.store.get(inc.id)
    assert again is not None and again.active and again.state == "warned"
    assert again.escalate_at_ms == NIGHT + 120_000 and again.commands == {"c1": "broadcast"}
    w.now = NIGHT + 119_999
    w.link.tick(w.now)
    await settle()
    assert len(w.calls) == 1
    w.now = NIGHT + 120_000
    w.link.tick(w.now)
    await settle()
    assert [c["name"] for c in w.calls[1:]] == ["dispatch", "record_start"]  # no drone in this world
    assert w.calls[1]["to"] == "rec-2"
    # a follow-up after the restart still joins the incident (no second warning)
    w.now += 5_000
    assert w.event().id == inc.id
    # and new incidents get fresh ids
    w.now += 5_000
    other = w.event(dev="sen-north", latlon=(299125000, 1196080000))
    assert other.id != inc.id


@aio
async def test_reload_good_rules_replace_bad_rules_keep_the_old(tmp_path):
    w = World(tmp_path)
    w.reload_table = {"rule": [{"name": "x", "match": {"hours": "nonsense"}, "act": {"officer": True}}]}
    assert w.link.reload() is False
    assert [r.name for r in w.link.cfg.rules] == ["night-ferry"]
    [e] = [e for e in w.journal.entries() if e.kind == "system"]
    assert "NOT reloaded" in e.summary and "match.hours" in e.detail
    w.reload_table = table(rule=[{"name": "day", "match": {"kind": "presence"},
                                  "act": {"broadcast": {"clip": "nofish", "within_m": 2000}}}])
    assert w.link.reload() is True
    w.now = NOON
    assert w.event() is not None
    await settle()
    assert [c["to"] for c in w.calls] == ["spk-ferry", "spk-dam"]


@aio
async def test_bad_or_odd_events_never_raise(tmp_path):
    w = World(tmp_path)
    inc = w.event(latlon=None)  # no position in the event and none known for the device: incident, no speaker
    await settle()
    assert inc is not None and inc.lat is None and w.calls == []
    assert any("no live speaker" in e.summary for e in w.entries())
    w.now += 200_000
    w.link.tick(w.now)  # escalation without a position: journaled, nothing sent
    await settle()
    assert w.calls == [] and any("cannot rank" in e.summary for e in w.entries())
    assert w.link.on_event("dongshan", "x", {"id": "x"}, w.now) is None  # missing fields: logged, counted
    assert w.link.errors == 1
    r = await w.link.handle_op("op-1", "incident", {"action": "ack", "incident": "inc-999"}, None)
    assert r["code"] == "bad_request"


@aio
async def test_zone_broadcast_and_a_bound_on_open_incidents(tmp_path, monkeypatch):
    from lookout.gateway.linkage import engine

    t = table(rule=[{"name": "ferry-zone", "match": {"zone": "ferry"},
                     "act": {"broadcast": {"zone": "ferry", "clip": "nofish", "priority": "emergency"}}},
                    {"name": "elsewhere", "match": {"zone": ["z0", "z1", "z2", "z3", "z4", "z5"]},
                     "act": {"notify": {"contacts": ["cadre-wang"]}}}])
    w = World(tmp_path, t)
    inc = w.event()  # the device is in [zones].ferry: the zone matches though the event names none
    await settle()
    assert inc is not None and inc.zone == "ferry"
    assert [(c["to"], c["name"], c["args"]) for c in w.calls] == [("ferry", "play", {"clip": "nofish", "repeat": 1})]
    # a flood of detections from everywhere opens at most MAX_ACTIVE incidents
    monkeypatch.setattr(engine, "MAX_ACTIVE", 3)
    for i in range(6):
        w.now += 1000
        w.event(dev=f"sen-{i}", latlon=(290000000 + i * 1000000, 1190000000), zone=f"z{i}")
    assert len(w.link.store.active) == 3 and w.link.refused == 4
    assert any("opens no new one" in e.summary for e in w.entries())
