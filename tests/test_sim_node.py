"""``lookout sim node`` (issue 11, item 6): the real firmware for provisioned configs, against a real gateway and
Mosquitto, as a separate process the way an installer runs it; ``--count`` for many; clear refusals.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from aiowait import aio, until
from gwserve import serving
from test_gateway_commands import make_cfg

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_device
from lookout.gateway.cli import sim as simcli
from lookout.gateway.cli.main import main
from lookout.gateway.service.app import Gateway

ROOT = Path(__file__).resolve().parents[1]


def provision(ks, tmp_path, mosquitto, dev, role="speaker"):
    return provision_device(ks, dev, "dongshan", role, tmp_path / dev, broker_host=mosquitto.host,
                            broker_port=mosquitto.port, quiet_hours=[])[2]


def start_sim(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lookout", "sim", "node", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def stop_sim(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(proc.communicate, timeout=20)
    return proc.returncode, out, err


@aio
async def test_sim_node_plays_a_broadcast_and_says_goodbye(mosquitto, tmp_path):
    ks = KeyStore(tmp_path / "ks.db")
    cfg_path = provision(ks, tmp_path, mosquitto, "spk-01")
    proc = start_sim("--config", str(cfg_path))
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online", 20,
                        "spk-01 online")
            dev = gw.registry.get("spk-01")
            assert dev.kind == "speaker" and dev.fw  # its own birth: the firmware, not a stand-in
            r = await gw.handle_op("op-1", "broadcast", {"to": "spk-01", "clip": "nofish", "repeat": 1,
                                                         "priority": 1, "queue": True, "wait": "final",
                                                         "wait_s": 15}, "b1")
            assert r["code"] == "ok" and r["data"]["results"][0]["data"]["played_ms"] >= 2000, r
            rc, out, err = await stop_sim(proc)
            assert rc == 0, err
            await until(lambda: gw.registry.get("spk-01").state == "offline", 10, "offline after its death")
            assert gw.registry.get("spk-01").reason == "death"
    finally:
        if proc.poll() is None:
            proc.kill()
        ks.close()
    lines = out.splitlines()
    assert lines[0].startswith(f"spk-01 (speaker) -> mqtt://127.0.0.1:{mosquitto.port}, flash ")
    assert "spk-01 online (boot 0)" in lines and "spk-01 played nofish (2000 ms)" in lines
    flash = cfg_path.parent / "sim-flash"
    assert json.loads((flash / "config.json").read_text())["id"] == "spk-01" and (flash / "clips" / "nofish").exists()


@aio
async def test_sim_node_count_runs_one_node_per_config(mosquitto, tmp_path):
    ks = KeyStore(tmp_path / "ks.db")
    for n in (1, 2, 3):
        provision(ks, tmp_path, mosquitto, f"sen-{n:02d}", role="sensor")
    proc = start_sim("--config", str(tmp_path / "sen-{n:02d}" / "config.json"), "--count", "3",
                     "--state", str(tmp_path / "flash"))
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            ids = ("sen-01", "sen-02", "sen-03")
            await until(lambda: all(gw.registry.get(d) and gw.registry.get(d).state == "online" for d in ids),
                        20, "three sensors online")
            rc, out, err = await stop_sim(proc)
            assert rc == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        ks.close()
    assert sorted(p.name for p in (tmp_path / "flash").iterdir()) == ["sen-01", "sen-02", "sen-03"]


def test_sim_node_refuses_what_would_not_boot(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "spk-01", "site": "dongshan", "role": "speaker", "key": "00"}))
    assert main(["sim", "node", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "key" in err
    assert main(["sim", "node", "--config", str(bad), "--count", "2"]) == 2
    assert "{n}" in capsys.readouterr().err
    assert main(["sim", "node", "--config", str(tmp_path / "none.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_sim_kinds_are_found_by_module_name():
    kinds = simcli.kinds()
    assert "node" in kinds
    for mod in kinds.values():
        assert isinstance(mod.HELP, str) and callable(mod.add_arguments) and callable(mod.run)
