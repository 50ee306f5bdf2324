"""`lookout sim drone` and `lookout drone ...` end to end: the gateway and the simulator as processes, the operator
commands through gateway.cli.main() over MQTT, signed with the key store's drone key on both sides."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_drone
from lookout.gateway.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def drone_site(mosquitto, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    with KeyStore(data / "keystore.db") as ks:
        token = ks.add_operator("op-1", "Duty officer", "operator")
        drone = provision_drone(ks, "uav-1", "dongshan", 1)
    key_file = tmp_path / "uav-1.json"  # what `lookout provision drone --out` writes, loaded into the drone
    key_file.write_text(json.dumps({"id": "uav-1", "site": "dongshan", "kind": "drone", "sysid": 1,
                                    "key": drone.hmac_key.hex()}))
    port = free_udp_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\nid = "gw-1"\nsite = "dongshan"\ndata_dir = "data"\n'
                    f'[broker]\nurl = "{mosquitto.url}"\n[commands]\nwait_s = 8\n'
                    f'[mavlink]\narea = [[30.2, 120.1], [30.2, 120.2], [30.3, 120.2], [30.3, 120.1]]\n'
                    f'[[mavlink.endpoint]]\nname = "radio"\nurl = "udpin:127.0.0.1:{port}"\n'
                    f'[[drone]]\nid = "uav-1"\nsysid = 1\n')
    gw = subprocess.Popen([sys.executable, "-m", "lookout", "gateway", "--config", str(conf)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    sim = subprocess.Popen([sys.executable, "-m", "lookout", "sim", "drone", "--key", str(key_file), "--link",
                            f"udp:127.0.0.1:{port}", "--duration", "60"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    for k, v in {"LOOKOUT_BROKER": mosquitto.url, "LOOKOUT_SITE": "dongshan", "LOOKOUT_OPERATOR": "op-1",
                 "LOOKOUT_TOKEN": token, "LOOKOUT_LANG": "en"}.items():
        monkeypatch.setenv(k, v)
    try:
        yield gw, sim, port
    finally:
        stop(sim)
        stop(gw)


def test_sim_drone_and_drone_commands_through_the_cli(drone_site, capsys):
    _gw, sim, port = drone_site
    assert sim.stdout is not None  # signed with the key provisioned for sysid 1, found through --config
    assert sim.stdout.readline().strip() == f"drone sysid 1 on udp:127.0.0.1:{port} (signed)"
    end = time.monotonic() + 15
    drones: list = []
    while time.monotonic() < end:
        if main(["drone", "list", "--json", "--timeout", "3"]) == 0:
            drones = json.loads(capsys.readouterr().out)
            if drones and drones[0]["state"] == "online" and (drones[0].get("info") or {}).get("link") == "ok":
                break
        else:
            capsys.readouterr()
        time.sleep(0.3)
    assert drones and drones[0]["id"] == "uav-1" and drones[0]["state"] == "online", drones
    assert drones[0]["info"]["state"] == "stabilize" and drones[0]["loc"]["src"] == "mavlink"

    assert main(["drone", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["DRONE", "STATE", "MODE", "ARMED", "BAT", "GPS", "LINK", "LOSS", "LAT", "LON", "ALT"]
    assert table[1].split()[:4] == ["uav-1", "online", "stabilize", "no"] and " ok " in table[1]

    assert main(["drone", "arm", "uav-1"]) == 0
    assert main(["drone", "set-mode", "uav-1", "guided"]) == 0
    assert main(["drone", "takeoff", "uav-1", "--alt", "2"]) == 0
    assert main(["drone", "goto", "uav-1", "30.2502", "120.1502", "--alt", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 4, out

    assert main(["drone", "goto", "uav-1", "31.0", "120.15", "--alt", "4"]) == 1
    out = capsys.readouterr()
    assert "refused" in out.out and "geofence" in out.out and "outside the site's operating area" in out.out

    assert main(["command", "uav-1", "rtl"]) == 0  # the generic command path reaches drones too
    assert " done " in capsys.readouterr().out

    os.environ["LOOKOUT_LANG"] = "zh"
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "无人机" in out and "飞行模式" in out and "uav-1" in out
