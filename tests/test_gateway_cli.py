"""CLI end to end: `lookout gateway` as a subprocess, operator commands through gateway.cli.main()."""

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
from lookout.simulators.fakenode import FakeNode

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def running(mosquitto, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ks = KeyStore(data / "keystore.db")
    token = ks.add_operator("op-1", "Duty officer", "operator")
    spk = ks.ensure("spk-01", "dongshan", "speaker")
    ks.ensure("spk-02", "dongshan", "speaker")  # provisioned, offline
    ks.close()
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\nid = "gw-1"\nsite = "dongshan"\ndata_dir = "data"\n'
                    f'[broker]\nurl = "{mosquitto.url}"\n[commands]\nretry_s = 1\nwait_s = 5\n')
    proc = subprocess.Popen([sys.executable, "-m", "lookout", "gateway", "--config", str(conf)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    node = FakeNode(mosquitto.host, mosquitto.port, "spk-01", "dongshan", spk.hmac_key).start()
    env = {"LOOKOUT_BROKER": mosquitto.url, "LOOKOUT_SITE": "dongshan", "LOOKOUT_OPERATOR": "op-1",
           "LOOKOUT_TOKEN": token}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield proc, node, data
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        node.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_online(capsys, dev="spk-01", timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if main(["devices", "--json", "--timeout", "3"]) == 0:
            devs = json.loads(capsys.readouterr().out)["data"]["devices"]
            if any(d["id"] == dev and d["state"] == "online" for d in devs):
                return devs
        else:
            capsys.readouterr()
        time.sleep(0.2)
    raise AssertionError(f"{dev} not online")


def test_cli_end_to_end(running, capsys):
    proc, node, data = running
    devs = wait_online(capsys)
    assert {d["id"] for d in devs} >= {"gw-1", "spk-01"}

    assert main(["devices", "--state", "online"]) == 0
    out = capsys.readouterr().out
    assert "spk-01" in out and "device(s)" in out

    assert main(["broadcast", "--to", "spk-01", "--clip", "nofish", "--repeat", "2", "--priority", "emergency"]) == 0
    assert "done" in capsys.readouterr().out
    assert node.received[-1]["name"] == "play" and node.received[-1]["args"]["repeat"] == 2
    assert node.received[-1]["prio"] == 3

    assert main(["command", "spk-01", "set_volume", "volume=40"]) == 0
    assert node.received[-1]["args"] == {"volume": 40}
    capsys.readouterr()

    # offline target: queued (exit 0, says so) vs refused (exit 3)
    assert main(["broadcast", "--to", "spk-02", "--clip", "nofish"]) == 0
    assert "queued, will be sent on its next birth" in capsys.readouterr().out
    assert main(["stop", "--to", "spk-02", "--no-queue"]) == 3
    cap = capsys.readouterr()
    assert "refused" in cap.out and "offline" in cap.err

    # usage errors: unknown device, bad argument
    assert main(["command", "nope", "play"]) == 2
    assert "unknown device" in capsys.readouterr().err
    assert main(["broadcast", "--to", "spk-01", "--clip", "x", "--volume", "300"]) == 2
    assert "args.volume" in capsys.readouterr().err
    assert main(["command", "spk-01", "play", "novalue"]) == 2

    assert main(["locate", "spk-01"]) == 1  # no location yet
    node.location(301234567, 1201234567)
    end = time.monotonic() + 10  # the gateway process files the fix when it gets to it: poll, bounded
    while main(["locate", "spk-01"]) != 0 and time.monotonic() < end:
        capsys.readouterr()
        time.sleep(0.1)
    assert "lat 30.123457" in capsys.readouterr().out

    assert main(["journal", "--verify"]) == 0
    assert "journal ok" in capsys.readouterr().out
    out = data / "shift.json"
    assert main(["journal", "--export", "--format", "json", "-o", str(out)]) == 0
    exp = json.loads(out.read_text())
    kinds = {e["kind"] for e in exp["entries"]}
    assert {"system", "state", "command", "result", "operator"} <= kinds
    assert any(e["operator"] == "op-1" and "broadcast" in e["summary"] for e in exp["entries"])
    assert main(["journal", "--last", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5

    assert main(["watch", "--count", "1"]) == 0
    assert "spk-01" in capsys.readouterr().out

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_cli_wrong_token_and_config_error(running, capsys, tmp_path):
    wait_online(capsys)
    assert main(["devices", "--token", "wrong"]) == 2
    assert "unauthorized" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nsite = "dongshan"\n[broker]\nport = "x"\n')
    assert main(["gateway", "--config", str(bad)]) == 2
    assert "[broker].port: unknown key" in capsys.readouterr().err


def test_cli_missing_connection_settings(capsys, monkeypatch):
    for k in ("LOOKOUT_SITE", "LOOKOUT_OPERATOR", "LOOKOUT_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    assert main(["devices", "--site", "s"]) == 2
    assert "missing --operator/LOOKOUT_OPERATOR, --token/LOOKOUT_TOKEN" in capsys.readouterr().err
