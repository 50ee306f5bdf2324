"""The recorder bridge end to end: the real gateway (real Mosquitto) and simulated recorders on real
pseudo-terminals, paced lines with injected faults. Bulk tests run the line at a few Mbaud so they take seconds;
the paced-line throughput figures at 115,200 / 921,600 baud are bench/serial_goodput.py's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct

import paho.mqtt.client as paho
from aiowait import aio, until
from gwserve import serving

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_recorder
from lookout.gateway.core.config import from_dict
from lookout.gateway.service.app import Gateway
from lookout.gateway.service.operator_api import device_view
from lookout.protocols import topics
from lookout.simulators.recorder import LineConfig, SimRecorder

SITE = "dongshan"
FAST = 3_000_000  # baud: 300 KB/s, so a 300 KB clip takes a second


def make_cfg(tmp_path, url, **rec):
    return from_dict({
        "gateway": {"id": "gw-1", "site": SITE, "data_dir": str(tmp_path / "data")},
        "broker": {"url": url},
        "registry": {"min_hb_s": 1},
        "commands": {"retry_s": 2, "max_attempts": 3, "wait_s": 5},
        "recorders": {"devices": [str(tmp_path / "dev" / "rec-*")], "scan_ms": 100, **rec},
    })


def recorder(tmp_path, ks, dev="bwc-0001", name="rec-1", line=None, officer="p-0421", **kw):
    ident = ks.get(dev) or provision_recorder(ks, dev, SITE, officer=officer)
    return SimRecorder(dev, ident.hmac_key, tmp_path / dev, tmp_path / "dev" / name,
                       line or LineConfig(baud=FAST), hb_s=kw.pop("hb_s", 2), loc_s=kw.pop("loc_s", 1), **kw)


class Listener:
    """A paho subscriber on the site's topics (what any MQTT consumer of the gateway sees)."""

    def __init__(self, mosquitto):
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="listener")
        self.c.on_message = lambda c, u, m: self.msgs.append((m.topic, m.payload, m.retain))
        self.c.connect(mosquitto.host, mosquitto.port)
        self.c.subscribe(f"lookout/v1/{SITE}/#", 1)
        self.c.loop_start()

    def on(self, dev, ch):
        return [json.loads(p) for t, p, _r in self.msgs if t == topics.topic(SITE, dev, ch)]

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def custody_actions(gw, sha):
    return [t["action"] for t in gw.clipstore.custody.trail(sha)]


@aio
async def test_recorder_online_upload_commands_and_voice_round_trip(mosquitto, tmp_path):
    ks = KeyStore(tmp_path / "ks.db")
    sim = recorder(tmp_path, ks)
    clip = sim.record_clip(300_000, duration_s=90, mark=True)
    sha = sim.clip(clip)["sha256"]
    lis = Listener(mosquitto)
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            async with sim:
                await until(lambda: (d := gw.registry.get("bwc-0001")) and d.state == "online", 10, "online")
                dev = gw.registry.get("bwc-0001")
                assert dev.kind == "recorder" and dev.transport == "recorder" and dev.officer == "p-0421"
                # the docked clip uploads by itself; visible only once verified, announced on MQTT
                await until(lambda: (r := gw.clipstore.custody.get(sha)) and r["state"] == "stored", 15, "stored")
                path = gw.clipstore.custody.path(sha)
                assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
                assert path.read_bytes() == (sim.clips_dir / f"{clip}.bin").read_bytes()
                await until(lambda: any(e["kind"] == "clip_stored" for e in lis.on("gw-1", "evt")), 5, "announce")
                [ann] = [e for e in lis.on("gw-1", "evt") if e["kind"] == "clip_stored"]
                assert ann["evidence"] == ["sha256:" + sha] and ann["x_recorder"] == "bwc-0001"
                assert ann["x_officer"] == "p-0421" and ann["x_hold"] is True  # marked on the recorder
                assert custody_actions(gw, sha) == ["recorded", "held", "uploaded", "verified"]
                rec = gw.clipstore.custody.get(sha)
                assert rec["officer"] == "p-0421" and rec["end_ms"] - rec["start_ms"] == 90_000
                assert rec["track"]["fixes"] >= 1 and rec["size"] == 300_000
                await until(lambda: sim.clip(clip)["up"], 5, "recorder marks it uploaded")

                # heartbeat and location on MQTT in the devices' schema, published as the recorder's proxy
                await until(lambda: lis.on("bwc-0001", "loc") and lis.on("bwc-0001", "hb"), 5, "hb+loc")
                births = lis.on("bwc-0001", "state")
                assert births and births[-1]["kind"] == "recorder" and births[-1]["x_officer"] == "p-0421"
                await until(lambda: gw.registry.get("bwc-0001").last_loc, 5, "position")

                # commands by name through the command path; results signed by the recorder
                c = await gw.commands.issue("bwc-0001", "dispatch", {"text": "东岸渡口有人钓鱼，请前往处置",
                                                                     "lat": 301234560, "lon": 1201234560,
                                                                     "incident": "inc-7"})
                [c] = await gw.commands.wait([c.id], "final", 10)
                assert c.status == "done" and c.data == {"shown": True}, c
                c = await gw.commands.issue("bwc-0001", "record_start", {"incident": "inc-7"})
                [c] = await gw.commands.wait([c.id], "final", 10)
                assert c.status == "done"
                await until(lambda: device_view(gw.registry.get("bwc-0001"))["recording"], 5, "recording")
                v = device_view(gw.registry.get("bwc-0001"))
                assert v["busy"] and v["officer"] == "p-0421" and v["state"] == "online" and v["loc"]["lat"]
                assert [r["status"] for r in (json.loads(p) for t, p, _ in lis.msgs
                                              if t.endswith("bwc-0001/res"))][:2] == ["accepted", "done"]

                # a voice message from the center: the clip crosses the link first, then plays
                wav = _wav(8000)
                gw.clipdist.audio.put("gohome", wav)
                c = await gw.commands.issue("bwc-0001", "play_voice", {"clip": "gohome"})
                [c] = await gw.commands.wait([c.id], "final", 15)
                assert c.status == "done" and c.data["bytes"] == len(wav) and sim.played == ["gohome"]

                c = await gw.commands.issue("bwc-0001", "record_stop", {"size": 50_000})
                [c] = await gw.commands.wait([c.id], "final", 10)
                sha2 = c.data["sha256"]
                await until(lambda: (r := gw.clipstore.custody.get(sha2)) and r["state"] == "stored", 10, "2nd")
                await until(lambda: not device_view(gw.registry.get("bwc-0001"))["recording"], 5, "stopped")
                assert gw.journal.verify().ok
    finally:
        lis.close()
        ks.close()


def _wav(n):
    data = bytes(n * 2)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000,
                                                                                       16000, 2, 16)
            + b"data" + struct.pack("<I", len(data)) + data)
