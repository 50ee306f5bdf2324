"""`lookout gateway` with a rules file (subprocess, SIGHUP reload) and the operator's linkage commands through
gateway.cli.main(): incidents, incident show/ack/dispatch/close, coverage (table, SVG, PNG). Paho stand-in
nodes (simulators/fakenode.py) answer with signed results, one of them a drone that takes the orbit order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.cli.main import main
from lookout.gateway.core.journal import Journal
from lookout.protocols import messages
from lookout.simulators.fakenode import FakeNode

ROOT = Path(__file__).resolve().parents[1]
RULES = """
[[rule]]
name = "presence"
  [rule.match]
  kind = "presence"
  [rule.act]
  broadcast = { clip = "nofish", within_m = 600 }
"""
BAD_RULES = RULES.replace('within_m = 600', 'within_m = "far"')
SPOTS = {"spk-01": ("speaker", 299062000, 1196108000), "sen-01": ("sensor", 299050000, 1196100000),
         "uav-1": ("drone", 299010000, 1196050000), "spk-far": ("speaker", 299900000, 1197500000)}


def wait_for(pred, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = pred()
        if r:
            return r
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def running(mosquitto, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ks = KeyStore(data / "keystore.db")
    token = ks.add_operator("op-1", "Duty officer", "operator")
    keys = {d: ks.ensure(d, "dongshan", kind).hmac_key for d, (kind, _, _) in SPOTS.items()}
    ks.close()
    (tmp_path / "linkage.toml").write_text(RULES)
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\nid = "gw-1"\nsite = "dongshan"\ndata_dir = "data"\n'
                    f'[broker]\nurl = "{mosquitto.url}"\n[commands]\nretry_s = 1\nwait_s = 5\n'
                    f'[linkage]\nrules = "linkage.toml"\n')
    proc = subprocess.Popen([sys.executable, "-m", "lookout", "gateway", "--config", str(conf)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    env = {"LOOKOUT_BROKER": mosquitto.url, "LOOKOUT_SITE": "dongshan", "LOOKOUT_OPERATOR": "op-1",
           "LOOKOUT_TOKEN": token, "LOOKOUT_LANG": ""}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    nodes: dict[str, FakeNode] = {}
    try:
        yield proc, nodes, keys, data, tmp_path
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for n in nodes.values():
            n.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def devices(capsys):
    if main(["devices", "--json", "--timeout", "3"]) != 0:
        capsys.readouterr()
        return {}
    return {d["id"]: d for d in json.loads(capsys.readouterr().out)["data"]["devices"]}


def run_json(capsys, argv):
    code = main(argv + ["--json"])
    return code, json.loads(capsys.readouterr().out)


def test_incident_commands_coverage_and_sighup(running, mosquitto, capsys):
    proc, nodes, keys, data, tmp = running
    wait_for(lambda: devices(capsys).get("gw-1"), 15, "the gateway")
    for dev, (kind, lat, lon) in SPOTS.items():
        n = nodes[dev] = FakeNode(mosquitto.host, mosquitto.port, dev, "dongshan", keys[dev], kind=kind).start()
        n.location(lat, lon)
    drone = nodes["uav-1"]
    hb = messages.encode("hb", {"seq": 1, "up_s": 1, "hb_s": 30, "bat_pct": 90, "state": "loiter", "x_armed": True,
                                "x_link": "ok"})  # in the air, holding: ordered straight to the place
    drone._client.publish("lookout/v1/dongshan/uav-1/hb", hb, 0)
    wait_for(lambda: all(d.get("loc") and d["state"] == "online" for i, d in devices(capsys).items()
                         if i in SPOTS) and len(devices(capsys)) == 5, 10, "nodes online with positions")

    # coverage: a drone 6 km/h... well within 15 min of the reservoir nodes, the far speaker outside
    out = tmp / "cov"
    assert main(["coverage", "--out", str(out), "--lang", "zh-CN"]) == 0
    text = capsys.readouterr().out
    assert "圈外：spk-far" in text and "uav-1" in text and "覆盖图已保存" in text
    svg = (tmp / "cov.svg").read_text()
    assert svg.startswith("<svg") and "spk-far" in svg and "执法圈" in svg
    png = (tmp / "cov.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # a detection (no position in the event: the sensor's registry position is used) -> incident, warning
    nodes["sen-01"].event("sen-01-1", kind="presence")
    incs = wait_for(lambda: run_json(capsys, ["incidents"])[1], 10, "the incident")
    [inc] = incs
    assert inc["source"] == "sen-01"
    wait_for(lambda: nodes["spk-01"].received, 5, "the play command")
    assert nodes["spk-01"].received[0]["name"] == "play" and nodes["spk-01"].received[0]["op"] == "rule.presence"
    assert not nodes["spk-far"].received
    wait_for(lambda: run_json(capsys, ["incident", "show", inc["id"]])[1]["data"]["state"] == "warned", 5, "warned")
    assert main(["incidents", "--lang", "zh-CN"]) == 0
    assert "已警告" in capsys.readouterr().out

    # operator: acknowledge, send the drone (signed orbit order, accepted by the drone), it arrives
    assert main(["incident", "ack", inc["id"]]) == 0
    capsys.readouterr()
    assert main(["incident", "dispatch", inc["id"], "--to", "uav-1"]) == 0
    capsys.readouterr()
    [order] = drone.received
    assert order["name"] == "orbit" and order["op"] == "op-1" and set(order["args"]) == {"lat", "lon", "alt_m",
                                                                                           "radius_m"}
    assert (order["args"]["lat"], order["args"]["lon"]) == SPOTS["sen-01"][1:]
    drone.location(299050100, 1196100100)
    wait_for(lambda: run_json(capsys, ["incident", "show", inc["id"]])[1]["data"]["state"] == "on_scene", 5,
             "on scene")
    assert main(["incident", "show", inc["id"]]) == 0
    shown = capsys.readouterr().out
    assert "on_scene" in shown and "uav-1" in shown and "op-1" in shown
    assert main(["incident", "dispatch", inc["id"], "--to", "nobody"]) == 2
    capsys.readouterr()

    # SIGHUP: a bad rules file is refused and the old rules stay; a good one is taken
    (tmp / "linkage.toml").write_text(BAD_RULES)
    proc.send_signal(signal.SIGHUP)
    j = Journal(data / "journal.db")

    def system(word):
        return [e for e in j.entries() if e.kind == "system" and word in e.summary]

    wait_for(lambda: system("NOT reloaded"), 5, "the refused reload")
    assert "act.broadcast.within_m" in system("NOT reloaded")[0].detail
    assert proc.poll() is None
    (tmp / "linkage.toml").write_text(RULES.replace("600", "700"))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: system("reloaded from"), 5, "the reload")
    j.close()

    code, r = run_json(capsys, ["incident", "close", inc["id"], "--why", "drone saw nobody"])
    assert code == 0 and r["data"]["state"] == "closed"
    assert main(["incident", "ack", inc["id"]]) == 1  # closed: refused
    capsys.readouterr()
    assert main(["journal", "--verify"]) == 0


def test_gateway_refuses_to_start_on_bad_rules_and_names_them(tmp_path, capsys):
    (tmp_path / "linkage.toml").write_text(BAD_RULES + '\n[[contact]]\nid = "Cadre Wang"\n')
    conf = tmp_path / "gw.toml"
    conf.write_text('[gateway]\nid = "gw-1"\nsite = "dongshan"\ndata_dir = "data"\n'
                    '[linkage]\nrules = "linkage.toml"\n')
    assert main(["gateway", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "linkage: rule 'presence': act.broadcast.within_m: expected integer 1..20000, got 'far'" in err
    assert "contact 'Cadre Wang': id: expected an id" in err and "contact 'Cadre Wang': name: required" in err
    assert not (tmp_path / "data").exists()  # nothing started
    conf.write_text('[gateway]\nid = "gw-1"\nsite = "dongshan"\n[linkage]\nrules = "missing.toml"\n')
    assert main(["gateway", "--config", str(conf)]) == 2
    assert "missing.toml: cannot read" in capsys.readouterr().err
    conf.write_text('[gateway]\nid = "gw-1"\nsite = "dongshan"\n[linkage]\nrules = "linkage.toml"\ncutoff_s = 60\n')
    assert main(["gateway", "--config", str(conf)]) == 2
    assert "[linkage].cutoff_s: with rules = FILE every other key belongs in that file" in capsys.readouterr().err
    conf.write_text('linkage = 5\n[gateway]\nid = "gw-1"\nsite = "dongshan"\n')
    assert main(["gateway", "--config", str(conf)]) == 2
    assert "[linkage]: expected a table, got 5" in capsys.readouterr().err
