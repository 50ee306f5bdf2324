"""The recorder bridge end to end: the real gateway (real Mosquitto) and simulated recorders on real
pseudo-terminals, paced lines with injected faults. Bulk tests run the line at a few Mbaud so they take seconds;
the paced-line throughput figures at 115,200 / 921,600 baud are bench/serial_goodput.py's."""

from __future__ import annotations

import asyncio
import logging
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
                def results():
                    return [r["status"] for r in (json.loads(p) for t, p, _ in list(lis.msgs)
                                                  if t.endswith("bwc-0001/res"))]
                # the listener is another MQTT client: its copies arrive when they arrive
                await until(lambda: len(results()) >= 4, 5, "the results on MQTT")
                assert results()[:4] == ["accepted", "done", "accepted", "done"]

                # a voice message from the center: the clip crosses the link first, then plays
                wav = _wav(8000)
                gw.clipdist.audio.put("gohome", wav)
                c = await gw.commands.issue("bwc-0001", "play_voice", {"clip": "gohome"})
                [c] = await gw.commands.wait([c.id], "final", 15)
                assert c.status == "done" and c.data["bytes"] == len(wav) and sim.played == ["gohome"]

                # the officer presses SOS: the recorder's signed event reaches the journal as any node's would
                eid = sim.press("sos", "serious", "需要支援")
                await until(lambda: [e for e in gw.journal.entries(kind="alert", device="bwc-0001")
                                     if json.loads(e.detail).get("id") == eid], 5, "sos alert")
                assert json.loads(gw.journal.entries(kind="alert", device="bwc-0001")[-1].detail)["kind"] == "sos"

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


@aio
async def test_noisy_paced_line_upload_is_bit_exact(mosquitto, tmp_path):
    """BER 1e-5 on every data bit plus random byte drops, both directions: the clip still lands bit-exact."""
    ks = KeyStore(tmp_path / "ks.db")
    sim = recorder(tmp_path, ks, line=LineConfig(baud=FAST, ber=1e-5, drop=2e-6, latency_ms=5, seed=11))
    clip = sim.record_clip(600_000)
    sha = sim.clip(clip)["sha256"]
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            async with sim:
                await until(lambda: (r := gw.clipstore.custody.get(sha)) and r["state"] == "stored", 30, "stored")
                assert gw.clipstore.custody.path(sha).read_bytes() == (sim.clips_dir / f"{clip}.bin").read_bytes()
                st = sim.stats()
                assert st["line_up"]["flipped"] > 10 and st["line_up"]["dropped"] > 0  # the line was noisy
                assert st["session"]["frames_resent"] > 0  # ... and selective resends repaired it
                await until(lambda: sim.uploads, 5, "recorder saw complete")
                assert sim.uploads[0]["resent_confirmed"] == 0
                port = gw.recorders.bridge.by_device["bwc-0001"]
                assert port.session.stats["frame_errors"] > 0 and not port.closed
    finally:
        ks.close()


@aio
async def test_cable_pull_mid_upload_resumes_without_resending_confirmed_bytes(mosquitto, tmp_path):
    ks = KeyStore(tmp_path / "ks.db")
    sim = recorder(tmp_path, ks, line=LineConfig(baud=1_000_000, latency_ms=10))
    clip = sim.record_clip(600_000)
    sha = sim.clip(clip)["sha256"]
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            async with sim:
                await until(lambda: sim.push and sim.push.stream.acked > 150_000, 15, "a third uploaded")
                sim.unplug()  # mid-transfer: the device vanishes from the gateway
                await until(lambda: gw.registry.get("bwc-0001").state == "offline", 5, "offline on pull")
                confirmed = sim.push.stream.acked
                u = gw.clipstore.uploads[("bwc-0001", sim.clip(clip)["tid"])]
                held = u.rx.offset
                assert held >= confirmed  # everything the recorder saw confirmed is in the gateway's file
                sim.plug()
                await until(lambda: (r := gw.clipstore.custody.get(sha)) and r["state"] == "stored", 15, "stored")
                await until(lambda: sim.uploads, 5, "recorder saw complete")
                up = sim.uploads[0]
                assert up["resent_confirmed"] == 0 and up["offers"] == 2
                [t] = [x for x in gw.clipstore.custody.trail(sha) if x["action"] == "uploaded"]
                assert t["duplicate_bytes"] == 0 and t["offers"] == 2  # not one byte arrived twice
                assert gw.clipstore.custody.path(sha).read_bytes() == (sim.clips_dir / f"{clip}.bin").read_bytes()
    finally:
        ks.close()


@aio
async def test_hot_plug_is_noticed_within_the_scan_period(mosquitto, tmp_path):
    ks = KeyStore(tmp_path / "ks.db")
    a = recorder(tmp_path, ks, "bwc-0001", "rec-a")
    b = recorder(tmp_path, ks, "bwc-0002", "rec-b", officer="p-0777")
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            assert gw.recorders.bridge.connected() == []
            async with a, b:  # two recorders docked on two ports while the gateway runs
                await until(lambda: gw.recorders.bridge.connected() == ["bwc-0001", "bwc-0002"], 3, "both docked")
                await until(lambda: all(gw.registry.get(d) and gw.registry.get(d).state == "online"
                                        for d in ("bwc-0001", "bwc-0002")), 3, "both online")
                a.unplug()
                await until(lambda: gw.registry.get("bwc-0001").state == "offline", 3, "unplug noticed")
                assert gw.registry.get("bwc-0002").state == "online"
                assert str(tmp_path / "dev" / "rec-a") not in gw.recorders.bridge.ports
                a.plug()
                await until(lambda: gw.registry.get("bwc-0001").state == "online", 3, "replug noticed")
                offline = [e for e in gw.journal.entries(kind="state", device="bwc-0001") if "-> offline" in e.summary]
                why = json.loads(offline[-1].detail)["reason"]  # the death says why: the read or the scan saw it
                assert why in ("end of file", "read failed: EIO", "device removed"), why
    finally:
        ks.close()


class LyingRecorder(SimRecorder):
    """Signs a manifest whose SHA-256 is not the file's (a corrupted or tampered recording)."""

    def manifest_for(self, meta, sender):
        sender.manifest.sha256 = "0" * 64
        return super().manifest_for(meta, sender)


@aio
async def test_a_clip_with_a_wrong_hash_is_never_published(mosquitto, tmp_path):
    ks = KeyStore(tmp_path / "ks.db")
    ident = provision_recorder(ks, "bwc-0009", SITE)
    sim = LyingRecorder("bwc-0009", ident.hmac_key, tmp_path / "bwc-0009", tmp_path / "dev" / "rec-9",
                        LineConfig(baud=FAST), hb_s=2)
    sim.record_clip(50_000)
    lis = Listener(mosquitto)
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            async with sim:
                await until(lambda: gw.clipstore.stats["failed"], 10, "hash check failed")
                await until(lambda: [e for e in gw.journal.entries(kind="security") if "hash_mismatch" in e.summary],
                            5, "security entry")
                evidence = gw.clipstore.dir
                assert [p.name for p in evidence.iterdir() if p.name != ".part"] == []
                assert list((evidence / ".part").iterdir()) == []  # the partial was discarded
                assert gw.clipstore.custody.find() == []  # nothing visible
                assert not [e for e in lis.on("gw-1", "evt") if e.get("kind") == "clip_stored"]
                assert not sim.uploads  # the recorder was told: failed, not uploaded
    finally:
        lis.close()
        ks.close()


@aio
async def test_gateway_killed_mid_upload_resumes_after_restart(mosquitto, tmp_path):
    """SIGKILL the gateway process mid-upload: the restarted one resumes from what the first confirmed."""
    import os
    import signal
    import subprocess
    import sys

    from lookout.gateway.clips.custody import Custody

    ks = KeyStore(tmp_path / "ks.db")
    sim = recorder(tmp_path, ks, line=LineConfig(baud=1_000_000, latency_ms=10))
    ks.close()
    clip = sim.record_clip(800_000)
    sha = sim.clip(clip)["sha256"]
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "gw-1"\nsite = "{SITE}"\ndata_dir = "{tmp_path / "data"}"\n'
                    f'keystore = "{tmp_path / "ks.db"}"\n[broker]\nurl = "{mosquitto.url}"\n'
                    f'[recorders]\ndevices = ["{tmp_path / "dev" / "rec-*"}"]\nscan_ms = 100\n')

    def start(n):
        log = open(tmp_path / f"gw{n}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([sys.executable, "-m", "lookout", "gateway", "--config", str(conf)],
                                stdout=log, stderr=subprocess.STDOUT), log

    gw1, log1 = start(1)
    gw2 = None
    try:
        async with sim:
            await until(lambda: sim.push and sim.push.stream.acked > 200_000, 20, "upload under way",
                        seen=lambda: (tmp_path / "gw1.log").read_text()[-2000:])
            os.kill(gw1.pid, signal.SIGKILL)  # no goodbye: whatever was in memory is gone
            gw1.wait(10)
            confirmed = sim.push.stream.acked
            gw2, log2 = start(2)
            await until(lambda: sim.uploads, 25, "upload finished by the new gateway",
                        seen=lambda: (tmp_path / "gw2.log").read_text()[-2000:])
            up = sim.uploads[0]
            assert up["resent_confirmed"] == 0 and up["offers"] >= 2, up
            assert confirmed > 200_000
            gw2.send_signal(signal.SIGTERM)
            assert gw2.wait(15) == 0
    finally:
        for p in (gw1, gw2):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
    c = Custody.open(tmp_path / "data")
    try:
        rec = c.get(sha)
        assert rec["state"] == "stored" and c.path(sha).read_bytes() == (sim.clips_dir / f"{clip}.bin").read_bytes()
        [t] = [x for x in c.trail(sha) if x["action"] == "uploaded"]
        assert t["restored"] is True and t["duplicate_bytes"] == 0  # resumed from the file; nothing arrived twice
        assert c.verify(sha, "test")["ok"]
    finally:
        c.close()


# ---- a bridge fed garbage: random bytes and random authenticated frames -------------------------------------

class FakeHost:
    site = SITE
    gateway_id = "gw-1"

    def __init__(self, key):
        self.key = key
        self.calls: list[tuple] = []

    def key_for(self, dev):
        return self.key if dev == "bwc-0001" else None

    def publish(self, topic, payload, qos, retain):
        self.calls.append(("publish", topic))

    def online(self, dev, info, port):
        self.calls.append(("online", dev))

    def offline(self, dev, reason):
        self.calls.append(("offline", dev))

    def offer(self, dev, payload, officer):
        self.calls.append(("offer", dev))
        return {"v": 1, "tid": 1, "id": "x", "state": "failed", "have": 0, "err": "busy"}

    def piece(self, dev, tid, off, data):
        self.calls.append(("piece", dev))
        return None

    def catalog(self, dev, clips, officer):
        self.calls.append(("catalog", dev))

    def security(self, dev, code, detail, port):
        self.calls.append(("security", code))


class Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_random_bytes_and_random_frames_never_crash_the_bridge(tmp_path):
    """Hypothesis drives one port over a real pty: raw garbage, then authenticated frames of every type with
    arbitrary payloads from a recorder holding the right key. The port stays open, nothing is logged as an
    error (every handler failure would be), and a good heartbeat still goes through at the end."""
    import os
    import time

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lookout.gateway.links.recorder import RecorderBridge
    from lookout.protocols import serialsession
    from lookout.protocols import serialframe as sf

    key = bytes(range(32))
    errors = Errors()
    logging.getLogger("lookout.recorders").addHandler(errors)
    loop = asyncio.new_event_loop()
    master, slave = os.openpty()
    os.set_blocking(master, False)
    host = FakeHost(key)
    bridge = RecorderBridge(host, baud=FAST)
    port = loop.run_until_complete(_open(bridge, os.ttyname(slave)))
    rec = serialsession.SerialSession("recorder", "bwc-0001", key=key, rand=os.urandom)

    def pump(seconds=0.3):
        """Run the loop while moving bytes between the pty master and the recorder session."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            loop.run_until_complete(asyncio.sleep(0.005))
            now = int(time.monotonic() * 1000)
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                data = b""
            if data:
                rec.receive_data(data, now)
            while rec.next_event() is not serialsession.NEED_DATA:
                pass
            out = rec.data_to_send(now)
            if out:
                os.write(master, out)

    rec.start(0)
    pump(1.0)
    assert rec.established and port.device == "bwc-0001"
    types = sorted(t for t in sf.TYPE_NAMES if t not in (sf.TYPE_HELLO, sf.TYPE_ACK, sf.TYPE_NACK))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=600), st.lists(st.tuples(st.sampled_from(types), st.binary(max_size=300)),
                                              max_size=4))
    def feed(raw, frames):
        os.write(master, raw)
        for t, payload in frames:
            if rec.established and rec.room() > 0:
                rec.send(t, payload)
        pump(0.05)
        assert not port.closed and not errors.records, errors.records

    try:
        feed()
        if not rec.established:  # the garbage may have ended the session: the recorder says hello again
            rec.start(int(time.monotonic() * 1000))
        pump(1.5)
        rec.send(sf.TYPE_HEARTBEAT, b'{"hb_s":30,"seq":1,"up_s":5}')
        pump(0.5)
        assert ("publish", topics.topic(SITE, "bwc-0001", "hb")) in host.calls
        assert port.stats["bad_payloads"] > 0 and not port.closed and not errors.records
    finally:
        logging.getLogger("lookout.recorders").removeHandler(errors)
        bridge.close()
        os.close(master)
        os.close(slave)
        loop.close()


async def _open(bridge, path):
    return bridge.open_port(path)


@aio
async def test_lookout_sim_recorder_starts_recorders_a_gateway_picks_up(mosquitto, tmp_path):
    """`lookout sim recorder` (its own process, each recorder's key from `lookout provision recorder --out`): two
    recorders appear by hot-plug, come online and upload their clips."""
    import json
    import subprocess
    import sys

    ks = KeyStore(tmp_path / "ks.db")
    keys = []
    for d in ("bwc-0001", "bwc-0002"):
        ident = provision_recorder(ks, d, SITE)
        keys += ["--key", str(tmp_path / f"{d}.json")]
        (tmp_path / f"{d}.json").write_text(json.dumps({"id": d, "site": SITE, "kind": "recorder",
                                                         "key": ident.hmac_key.hex()}))
    proc = subprocess.Popen([sys.executable, "-m", "lookout", "sim", "recorder", *keys,
                             "--dev-dir", str(tmp_path / "dev"),
                             "--state-dir", str(tmp_path / "state"), "--baud", str(FAST), "--clips", "1",
                             "--clip-size", "20000", "--hb-s", "2", "--duration", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cfg = from_dict({"gateway": {"id": "gw-1", "site": SITE, "data_dir": str(tmp_path / "data")},
                     "broker": {"url": mosquitto.url},
                     "recorders": {"devices": [str(tmp_path / "dev" / "bwc-*")], "scan_ms": 100}})
    try:
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await until(lambda: len(gw.clipstore.custody.find()) == 2, 20, "both clips stored")
            assert {r["device"] for r in gw.clipstore.custody.find()} == {"bwc-0001", "bwc-0002"}
            assert all(gw.registry.get(d).state == "online" for d in ("bwc-0001", "bwc-0002"))
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0]
        ks.close()
    assert "bwc-0001" in out and "[recorders] devices" in out and "upload(s) finished" in out, out
