"""Fault injection (issue 17): the gateway process (``lookout gateway``) killed with SIGKILL while a camera's
snapshot upload is half done, commands wait in its queue for an offline speaker and an incident waits for its
escalation, then started again on the same data directory.

What must hold (docs/RELIABILITY.md, "Gateway crash"): the upload resumes and is filed under its verified
SHA-256; the queued command with time left is delivered when its speaker is born, the one whose deadline passed
is ``expired`` and never sent; the incident escalates at its original time (opened + ``after_s``), not at
restart + ``after_s``; the journal chain verifies. Real parts: Mosquitto, the gateway as a separate process,
firmware nodes (SimNode), an operator over MQTT.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiowait import until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_operator
from lookout.gateway.core.journal import Journal
from lookout.gateway.links.opclient import OperatorClient
from lookout.simulators.node import SimNode, make_config

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

SITE = "dongshan"
AFTER_S = 8  # escalation delay: longer than a kill and a restart take, so the timer must survive the restart
NODES = {"sen-ferry": ("sensor", 299050000, 1196100000), "spk-ferry": ("speaker", 299062000, 1196108000),
         "cam-01": ("camera", 299051000, 1196101000), "spk-01": ("speaker", 299300000, 1196300000)}

GATEWAY_TOML = """
[gateway]
id = "gw-1"
site = "{site}"
data_dir = "data"
log_level = "info"

[broker]
url = "{url}"

[registry]
min_hb_s = 1

[commands]
retry_s = 1
wait_s = 5

[zones]
ferry = ["sen-ferry"]

[linkage]
[[linkage.contact]]
id = "cadre-wang"
name = "王建国"
lat = 29.9071
lon = 119.6122

[[linkage.rule]]
name = "ferry-presence"
match = {{ kind = "presence", zone = "ferry" }}
act = {{ broadcast = {{ clip = "nofish", within_m = 600, priority = "priority" }} }}
escalate = {{ after_s = {after_s}, notify = {{ within_m = 3000 }} }}
"""


class GatewayProcess:
    """``python -m lookout gateway --config FILE`` as a child process, with its output in a file."""

    def __init__(self, conf: Path):
        self.conf = conf
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = open(self.conf.parent / f"gateway-{self.runs}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lookout", "gateway", "--config", str(self.conf)],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.conf.parent)
        log.close()

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.output()
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(15)
        return self.proc.returncode

    def output(self) -> str:
        return "".join((self.conf.parent / f"gateway-{i}.log").read_text(errors="replace")
                       for i in range(1, self.runs + 1))


async def _ask(cl: OperatorClient, op: str, args: dict | None = None) -> dict:
    r = await cl.request(op, args or {}, timeout=10)
    assert r["code"] in ("ok", "queued"), r
    return r


async def _answering(url: str, token: str, gw: GatewayProcess) -> OperatorClient:
    """An operator session once the gateway answers (it takes a second or two to start)."""
    deadline = time.monotonic() + 20
    while True:
        assert gw.proc is not None and gw.proc.poll() is None, gw.output()
        cl = OperatorClient(url, SITE, "op-1", token)
        await cl.__aenter__()
        try:
            await cl.request("status", {}, timeout=1)
            return cl
        except TimeoutError:
            await cl.__aexit__(None, None, None)
            assert time.monotonic() < deadline, "the gateway does not answer: " + gw.output()[-2000:]


def test_gateway_killed_mid_upload_with_queued_commands_and_an_open_incident(mosquitto, tmp_path):
    async def main():
        data = tmp_path / "data"
        data.mkdir()
        conf = tmp_path / "gateway.toml"
        conf.write_text(GATEWAY_TOML.format(site=SITE, url=mosquitto.url, after_s=AFTER_S))
        ks = KeyStore(data / "keystore.db")
        token = provision_operator(ks, "op-1", "Duty officer")
        sims: dict[str, SimNode] = {}
        for dev, (role, lat, lon) in NODES.items():
            ident = ks.ensure(dev, SITE, role)
            cfg = make_config(dev, SITE, "sensor" if role == "camera" else role,
                              binascii.hexlify(ident.hmac_key).decode(), mosquitto.host, mosquitto.port, hb_s=5,
                              position={"lat": lat, "lon": lon, "alt_mm": 0}, gateway="gw-1")
            sims[dev] = SimNode(tmp_path / "nodes" / dev, cfg, speed=20, camera=role == "camera")
            if role == "speaker":
                sims[dev].add_clip("nofish", ms=300)
        ks.close()
        image = bytes((i * 31 + 7) & 0xFF for i in range(5 * 4096 + 100))  # 6 chunks of 4 KiB
        sha = hashlib.sha256(image).hexdigest()
        sims["cam-01"].hal.camera.image = image
        gw = GatewayProcess(conf)
        gw.start()
        cl = await _answering(mosquitto.url, token, gw)
        try:
            for dev in ("sen-ferry", "spk-ferry", "cam-01"):  # spk-01 stays off: its commands wait in the queue
                await sims[dev].start()
            await until(lambda: all(s.node.gw is not None for d, s in sims.items() if d != "spk-01"), 10,
                        "nodes see the gateway online")
            devs = (await _ask(cl, "devices", {"state": "online"}))["data"]["devices"]
            assert {"sen-ferry", "spk-ferry", "cam-01"} <= {d["id"] for d in devs}

            # 1. two commands wait for spk-01: one with time to spare, one that expires while the gateway is down
            keep = await _ask(cl, "broadcast", {"to": "spk-01", "clip": "nofish", "repeat": 1, "priority": 1,
                                                "queue": True, "wait": "none", "ttl_s": 600})
            lapse = await _ask(cl, "broadcast", {"to": "spk-01", "clip": "nofish", "repeat": 1, "priority": 1,
                                                 "queue": True, "wait": "none", "ttl_s": 2})
            assert keep["code"] == lapse["code"] == "queued"
            keep_id, lapse_id = keep["data"]["results"][0]["id"], lapse["data"]["results"][0]["id"]

            # 2. an incident: a presence at the ferry, warned from spk-ferry; its escalation is due AFTER_S later
            sims["sen-ferry"].node.emit_event("presence", "general", conf=90)
            incs = await until_incident(cl, "warned")
            inc_id = incs[0]["id"]
            due_ms = incs[0]["escalate_at_ms"]
            assert due_ms == incs[0]["opened_ms"] + AFTER_S * 1000

            # 3. a snapshot upload that stalls after two chunks (the rest "lost on air")
            cam = sims["cam-01"]
            sent: list[str] = []

            def lose(topic: str, payload: bytes) -> bool:
                if "/up/" not in topic:
                    return False
                sent.append(topic)
                return payload[:1] != b"{" and len(sent) > 3  # manifest and two chunks get through
            cam.hal.lose_tx = lose
            asyncio.create_task(cam.node.sensor.take_snapshot())
            parts = data / "clips" / "evidence" / ".part"
            await until(lambda: len(sent) >= 7 and any(parts.glob("*.part")), 10, "a half-received upload")
            await asyncio.sleep(0.3)  # the two chunks are written

            # the crash
            await cl.__aexit__(None, None, None)
            gw.kill()
            killed_at = time.monotonic()
            cam.hal.lose_tx = None
            await asyncio.sleep(2.5)  # the short command's deadline passes while no gateway runs
            gw.start()
            cl = await _answering(mosquitto.url, token, gw)
            restarted_ms = int(time.time() * 1000)
            assert restarted_ms < due_ms, "restart took longer than the escalation delay: test is meaningless"

            # the upload resumes (the gateway asks for the missing chunks) and is filed under its hash
            evidence = data / "clips" / "evidence" / f"{sha}.jpg"
            await until(evidence.exists, 15, "the resumed upload filed", seen=lambda: gw.output()[-3000:])
            assert hashlib.sha256(evidence.read_bytes()).hexdigest() == sha
            r = await _ask(cl, "clips", {"action": "evidence", "sha256": sha})
            assert r["data"]["evidence"][0]["sha256"] == sha

            # the queued commands: spk-01 is born now
            await sims["spk-01"].start()
            await until(lambda: sims["spk-01"].plays, 10, "the queued broadcast played")
            # the incident escalates at its original time
            inc = await until_incident(cl, "warned", escalated=True, timeout=AFTER_S + 5)
            assert inc[0]["id"] == inc_id
            await asyncio.sleep(0.5)
            assert len(sims["spk-01"].plays) == 1  # the expired one never reached it
            r = await _ask(cl, "journal", {"verify": True})
            assert r["data"]["ok"], r
        finally:
            await cl.__aexit__(None, None, None)
            for s in sims.values():
                if s._task is not None and not s._task.done():
                    await s.stop()
            code = gw.stop()
        assert code == 0, gw.output()[-3000:]
        assert time.monotonic() - killed_at < 60

        # after a clean stop, what the files say
        db = sqlite3.connect(data / "commands.db")
        status = dict(db.execute("SELECT id, status FROM commands WHERE id IN (?, ?)", (keep_id, lapse_id)))
        db.close()
        assert status == {keep_id: "done", lapse_id: "expired"}, status
        j = Journal(data / "journal.db")
        try:
            assert j.verify().ok
            esc = [e for e in j.entries(kind="incident") if "escalat" in e.summary and inc_id in e.summary]
            assert esc and esc[0].ts >= due_ms, [(e.ts, e.summary) for e in j.entries(kind="incident")]
            starts = [e for e in j.entries(kind="system") if e.summary.startswith("gateway gw-1 started")]
            assert len(starts) == 2
        finally:
            j.close()
        assert "Traceback" not in gw.output(), gw.output()[-3000:]

    asyncio.run(asyncio.wait_for(main(), 100))


async def until_incident(cl: OperatorClient, state: str, escalated: bool = False, timeout: float = 10):
    """The active incidents once one is in ``state`` (and, with ``escalated``, has escalated)."""
    deadline = time.monotonic() + timeout
    while True:
        r = await cl.request("incidents", {}, timeout=5)
        incs = (r.get("data") or {}).get("incidents") or []
        if incs and incs[0]["state"] == state and (not escalated or incs[0]["escalate_at_ms"] is None):
            return incs
        assert time.monotonic() < deadline, f"no incident {state} (escalated={escalated}): {incs}"
        await asyncio.sleep(0.2)

