"""Scenario tests: every scenario file that ships with `lookout demo` runs against Mosquitto — the real gateway with
the file's linkage rules, firmware nodes, recorders on ptys, drones over UDP — and its ``[expect]`` must hold:
warning within X s of the detection, the officer and drone with the shortest ETA chosen (the journal's ranking),
arrival, the clip verified, the incident closed, no duplicate warning from one intruder, the journal chain valid.
Plus the scenario format's validation and what --speed does to the rules."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from importlib import resources

import pytest

from lookout.gateway.demo import scenario as scenarios
from lookout.gateway.demo import timescale
from lookout.gateway.demo.script import Demo, night_zone
from lookout.gateway.linkage import rules

SPEED = 30  # the default story (~5 scenario minutes) in ~11 s of wall time


@pytest.mark.parametrize("name", scenarios.shipped())
def test_scenario_file_runs_to_its_expected_outcome(name, mosquitto, tmp_path):
    sc_path = tmp_path / name  # a copy: --scenario FILE reads any file, the shipped ones included
    sc_path.write_bytes(resources.files("lookout.gateway.demo").joinpath("scenarios", name).read_bytes())
    out = io.StringIO()
    demo = Demo(speed=SPEED, scenario=str(sc_path), broker=mosquitto.url, data_dir=str(tmp_path / "data"), out=out,
                web=None)
    code = asyncio.run(demo.run())
    text = out.getvalue()
    o = demo.result
    assert o is not None, text[-3000:]
    failed = [f"{c.name}: {c.detail}" for c in o.checks if not c.ok]
    assert code == 0 and not failed, "\n".join(failed) + "\n" + text[-4000:]
    x = demo.sc.expect
    # the same facts, read here without outcome.py's help: the gateway's incident and the world's devices
    inc = o.inc
    assert inc is not None and inc.state == "closed"
    assert [h["state"] for h in inc.history][-2:] == ["on_scene", "closed"]
    officer = next(u for u in inc.units.values() if u.get("unit") == "officer")
    assert officer["officer"] == x.officer and officer["arrived_ms"] >= officer["ts"]
    person = demo.world.people[x.officer]
    assert person.sim.uploads and person.sim.uploads[-1]["clip"] == inc.evidence[0]["clip"]
    plays = {dev: len(sim.plays) for dev, sim in demo.world.nodes.items() if sim.plays}
    assert sum(plays.values()) == x.broadcasts and all(n == 1 for n in plays.values()), plays
    if x.drone:
        drone = demo.world.drones[x.drone]
        assert x.drone in inc.units and drone.vehicle.armed is not None
    for dev in set(demo.world.drones) - {x.drone}:  # the others were never told to fly
        assert not [c for c in demo.rec.commands.values() if c.device == dev]
    assert "result       OK" in text and o.journal["ok"]


def test_scenario_files_are_checked_with_errors_that_name_the_key():
    good = scenarios.load()
    assert good.name == "night-ferry" and good.expect.officer == "p-li" and "night_ferry.toml" in good.origin
    bad = {"scenario": {"name": "Bad Name", "site": "dongshan", "colour": "red"},
           "node": [{"id": "spk-1", "role": "horn", "lat": 95.0, "lon": 119.6},
                    {"id": "spk-1", "role": "speaker", "lat": 29.9, "lon": 119.6}],
           "officer": [{"id": "p-1", "recorder": "bwc-1", "lat": 29.9, "lon": 119.6, "busy": "yes"}],
           "event": [{"at_s": 5, "intruder": "spk-1"}, {"at_s": 1, "silence": "nobody", "intruder": "spk-1"}],
           "expect": {"officer": "p-9", "warning_within_s": 0}}
    with pytest.raises(scenarios.ScenarioError) as e:
        scenarios.parse(bad, "bad.toml")
    errs = "\n".join(e.value.errors)
    for want in ("[scenario].name: expected an id", "[scenario].colour: unknown key",
                 "[[node]] #1.role: expected speaker | sensor | camera, got 'horn'",
                 "[[node]] #1.lat: expected decimal degrees -90..90, got 95.0", "[[node]] #2.id: 'spk-1' is used twice",
                 "[[officer]] #1.busy: expected bool", "[[event]] #1.intruder: 'spk-1' is not a sensor or camera",
                 "[[event]] #2: give exactly one of intruder", "[[event]] #2.silence: 'nobody' is not a [[node]]",
                 "bad.toml.linkage: the gateway needs at least one [[linkage.rule]]",
                 "[expect].officer: 'p-9' is not an [[officer]]", "[expect].warning_within_s: expected seconds > 0"):
        assert want in errs, errs



def test_a_scenario_file_that_is_not_toml_is_refused_by_the_demo(tmp_path):
    (tmp_path / "s.toml").write_bytes(b"[scenario\n")
    with pytest.raises(ValueError, match=r"s\.toml: TOML syntax error"):
        Demo(scenario=str(tmp_path / "s.toml"))


def test_speed_scales_the_rules_delays_and_speeds_not_their_decisions():
    cfg = rules.from_table(good_linkage())
    fast = timescale.linkage(cfg, 15)
    r, f = cfg.rules[0], fast.rules[0]
    assert (r.escalate_after_s, f.escalate_after_s) == (90, 6) and (r.cooldown_s, f.cooldown_s) == (600, 40)
    assert (r.match.persist_s, f.match.persist_s) == (120, 8) and f.match.persist_count == 3
    assert f.match.hours == r.match.hours and f.act == r.act and f.escalate == r.escalate  # what acts is the same
    p, q = cfg.dispatch, fast.dispatch
    assert q.officer_mps == p.officer_mps * 15 and q.drone_mps == p.drone_mps * 15 and q.drone_launch_s == 2
    assert q.cutoff_s == 60 and fast.absorb_s == 40 and fast.auto_close_s == 120
    # an ETA scales exactly: the same unit, 15 times sooner
    from lookout.gateway.linkage.dispatch import eta_s

    assert abs(eta_s("recorder", 1000, q, "dongshan") * 15 - eta_s("recorder", 1000, p, "dongshan")) < 1e-6
    assert timescale.linkage(cfg, 1) is cfg
    assert timescale.hb_s(15) == 5 and timescale.hb_s(2) == 15  # never under the firmware's 5 s


def test_night_zone_puts_the_site_clock_at_the_scenario_hour():
    for utc_hour in range(24):
        now = datetime(2026, 6, 1, utc_hour, 17, tzinfo=UTC)
        zone = night_zone(22, now)
        cfg = rules.from_table({"timezone": zone})
        assert cfg.local_minute("x", int(now.timestamp() * 1000)) == 22 * 60 + 17, zone


def good_linkage():
    return {"rule": [{"name": "r", "cooldown_s": 600,
                      "match": {"kind": "presence", "hours": "19:00-06:00", "persist": {"count": 3, "within_s": 120}},
                      "act": {"broadcast": {"clip": "nofish", "within_m": 600}},
                      "escalate": {"after_s": 90, "officer": True}}]}
