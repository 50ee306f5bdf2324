"""Defects found at scale (issue 17): each test holds a handful of devices and lowered limits, so that what broke
at thousands of devices shows in seconds.

- ``/metrics`` read the registry and the command table from the HTTP server's thread while the event loop changed
  them: "dictionary changed size during iteration", HTTP 500;
- the retained registry snapshot grew with the number of devices, past the broker's ``max_packet_size``: Mosquitto
  dropped the gateway for an oversized packet, the gateway reconnected and published it again, in a loop;
- the registry rewrote every touched row each second (~9 KB written per message ingested), and its liveness
  check scanned every device at least every 10 s: both O(devices) per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as paho
from aiowait import aio
from broker import Mosquitto
from gwserve import serving
from paho.mqtt.enums import CallbackAPIVersion
from test_gateway_commands import make_cfg, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.config import RegistryConfig
from lookout.gateway.core.gcpolicy import GCPolicy
from lookout.gateway.core.registry import (
    STATES,
    Device,
    Registry,
    effective_hb,
    on_alive,
    on_birth,
    on_death,
    on_tick,
)
from lookout.gateway.service.app import Gateway

BIRTH = {"online": True, "kind": "speaker", "bdseq": 0, "fw": "1.0", "hb_s": 30}


@aio
async def test_metrics_answer_while_devices_are_added(mosquitto, tmp_path):
    cfg = dataclasses.replace(make_cfg(tmp_path, mosquitto.url), metrics_listen="127.0.0.1:0")
    async with serving(Gateway(cfg, keystore=KeyStore(tmp_path / "ks.db"))) as gw:
        url = f"http://127.0.0.1:{gw.metrics_port}/metrics"
        stop = threading.Event()
        answers: list[int | str] = []

        def scrape() -> None:
            while not stop.is_set() and len(answers) < 400:
                try:
                    with urllib.request.urlopen(url, timeout=10) as r:
                        answers.append(r.status)
                except urllib.error.HTTPError as e:
                    answers.append(f"{e.code} {e.read()[:200]!r}")

        th = threading.Thread(target=scrape, daemon=True)
        th.start()
        try:
            now = gw.clock()
            t_end = time.monotonic() + 3
            i = 0
            while time.monotonic() < t_end and th.is_alive():  # the loop adds devices while the scrapes run
                for _ in range(100):
                    gw.registry.birth(f"spk-{i:06d}", "dongshan", BIRTH, now)
                    i += 1
                await asyncio.sleep(0)
        finally:
            stop.set()
            await asyncio.to_thread(th.join, 15)
        assert answers and all(a == 200 for a in answers), [a for a in answers if a != 200][:3]
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        assert f'lookout_devices{{kind="speaker",state="online"}} {float(i)}' in text


@aio
async def test_no_retained_message_grows_with_the_site(tmp_path):
    """A broker with a small ``max_packet_size`` (4 KiB here, 256 KiB in the generated config) and enough devices
    that a whole-site snapshot would be larger: the gateway stays connected, and every device's state is
    retained on the broker, each in a message of its own."""
    mq = Mosquitto(tmp_path / "broker", conf_extra="max_packet_size 4096\n").start()
    got: dict[str, bytes] = {}
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="t-registry")
    try:
        async with serving(Gateway(make_cfg(tmp_path, mq.url), keystore=KeyStore(tmp_path / "ks.db"))) as gw:
            drops = []
            gw.link.on_disconnect_cb = lambda: drops.append(time.monotonic())
            now = gw.clock()
            for i in range(40):
                gw.registry.birth(f"spk-{i:03d}", "dongshan", BIRTH, now)
            await asyncio.sleep(3.5)  # a few flushes: the old snapshot went out (and was refused) each second
            assert drops == [], f"the broker dropped the gateway {len(drops)} times"
            assert gw.link.connected.is_set()

            def on_message(c, u, m):  # noqa: ANN001 - paho's callback
                got[m.topic] = m.payload

            sub.on_message = on_message
            sub.on_connect = lambda c, u, f, rc, p: c.subscribe("lookout/v1/dongshan/gw-1/registry/#", 1)
            sub.connect(mq.host, mq.port)
            sub.loop_start()
            await until(lambda: len(got) >= 42, 10, "the retained registry")  # 40 + the gateway + the summary
            summary = json.loads(got["lookout/v1/dongshan/gw-1/registry"])
            assert summary["devices"] == 41 and summary["states"]["online"] == 41
            per = {t.rsplit("/", 1)[1]: json.loads(p) for t, p in got.items() if t.count("/") == 5}
            assert set(per) == set(gw.registry.devices)
            assert all(v["id"] == k and v["state"] == "online" for k, v in per.items())
            assert max(len(p) for p in got.values()) < 1024
    finally:
        sub.loop_stop()
        sub.disconnect()
        mq.stop()


# -- the registry at scale, with injected time -------------------------------------------------------------------

CFG = RegistryConfig(offline_after_missed=3, stale_after_missed=1, grace_ms=2000, min_hb_s=5, max_hb_s=600)
T0 = 1_800_000_000_000
SLICE = 25


def _site(r: Registry, n: int, t: int) -> list[str]:
    ids = [f"gps-{i:05d}" for i in range(n)]
    for d in ids:
        r.birth(d, "s1", {"online": True, "kind": "sensor", "bdseq": 0, "fw": "1.0", "hb_s": 30}, t)
    return ids


def _written(fn) -> int:  # noqa: ANN001 - a callable run with nothing else writing in this process
    def wchar() -> int:
        for line in open("/proc/self/io"):  # noqa: SIM115 - tiny procfs file
            if line.startswith("wchar:"):
                return int(line.split()[1])
        raise AssertionError("no wchar in /proc/self/io")
    before = wchar()
    fn()
    return wchar() - before


def test_registry_writes_stay_small_per_message(tmp_path):
    """Bytes written (``wchar`` of /proc/self/io: every write() of SQLite, WAL and checkpoints) per message
    ingested, for 10 simulated minutes of 300 GPS nodes at the documented rates (heartbeat 30 s, location 5 s),
    flushed every second as the service does. Rewriting every touched row each second wrote ~9 KB a message."""
    r = Registry(CFG, tmp_path / "registry.db")
    ids = _site(r, 300, T0)
    r.flush(None, T0)
    db = sqlite3.connect(tmp_path / "registry.db")
    msgs = 0

    def run() -> None:
        nonlocal msgs
        for s in range(1, 601):
            now = T0 + s * 1000
            for i, d in enumerate(ids):
                if (i + s) % 5 == 0:
                    r.location(d, "s1", {"seq": s, "ts": now, "lat": 300000000 + s, "lon": 1200000000, "src": "gps"},
                               now)
                    msgs += 1
                if (i + s) % 30 == 0:
                    r.heartbeat(d, "s1", {"seq": s, "up_s": s, "hb_s": 30, "bat_mv": 3900}, now)
                    msgs += 1
            r.tick(now)
            while r.flush(SLICE, now) == SLICE:
                pass
            if s % 60 == 0:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # what the checkpointer thread does

    written = _written(run)
    db.close()
    assert msgs > 40_000
    assert written / msgs <= 512, f"{written / msgs:.0f} bytes written per message"
    assert all(d.state == "online" for d in r.devices.values())
    r.close()
    again = Registry(CFG, tmp_path / "registry.db")  # the sweep and close() wrote the latest values
    assert again.get(ids[7]).last_loc["lat"] == r.get(ids[7]).last_loc["lat"]
    again.close()


def test_state_changes_reach_the_disk_within_a_flush(tmp_path):
    """What a crash must not lose is written at the next flush (every second in the service), not with the
    5-minute sweep: a new device, its birth, a state change."""
    p = tmp_path / "registry.db"
    r = Registry(CFG, p)
    [d] = _site(r, 1, T0)
    r.flush(None, T0)
    r.heartbeat(d, "s1", {"seq": 1, "hb_s": 30}, T0 + 1000)
    r.tick(T0 + 100_000)  # silent past 3 periods: offline
    r.flush(SLICE, T0 + 100_000)

    def on_disk() -> dict:
        db = sqlite3.connect(p)
        try:
            return json.loads(db.execute("SELECT doc FROM devices WHERE id = ?", (d,)).fetchone()[0])
        finally:
            db.close()

    assert on_disk()["state"] == "offline"
    r.death(d, "s1", {"online": False, "bdseq": 0}, T0 + 101_000)
    r.birth("new-1", "s1", {"online": True, "kind": "speaker", "bdseq": 3, "fw": "2.0", "hb_s": 30}, T0 + 101_000)
    r.flush(SLICE, T0 + 101_000)
    db = sqlite3.connect(p)
    assert json.loads(db.execute("SELECT doc FROM devices WHERE id = 'new-1'").fetchone()[0])["bdseq"] == 3
    db.close()
    r.close()


def test_a_tick_examines_only_the_devices_that_are_due(monkeypatch):
    """The liveness check was a scan of every device at least every 10 s; now a tick with nothing due looks at
    no device, and a device is examined about once per period whatever the size of the site."""
    from lookout.gateway.core import registry as mod

    calls = []
    real = mod.on_tick
    monkeypatch.setattr(mod, "on_tick", lambda dev, cfg, now: calls.append(dev.id) or real(dev, cfg, now))
    for n in (100, 1000):
        calls.clear()
        r = Registry(CFG)
        ids = _site(r, n, T0)
        for s in range(0, 30_000, 250):  # the service ticks every 250 ms; locations every 5 s
            now = T0 + s
            if s % 5000 == 0 and s:
                for d in ids:
                    r.location(d, "s1", {"seq": s // 5000, "ts": now, "lat": 1, "lon": 1, "src": "gps"}, now)
            r.tick(now)
        assert calls == []  # 30 s: the first deadline (30 s + 2 s grace) has not come
        for s in range(30_000, 120_000, 250):
            now = T0 + s
            if s % 5000 == 0:
                for d in ids:
                    r.location(d, "s1", {"seq": s // 5000, "ts": now, "lat": 1, "lon": 1, "src": "gps"}, now)
            r.tick(now)
        assert n * 2 <= len(calls) <= n * 4, (n, len(calls))  # ~once per period (90 s / ~30 s), never all per tick
        assert r.counts()["online"] == n


def test_the_deadline_heap_agrees_with_a_full_scan():
    """Random births, heartbeats, deaths, period changes, reconnects (rebase) and ticks on a few devices: after
    every tick the registry's states equal those of the pure state functions applied to every device."""
    rnd = random.Random(17)
    for _round in range(20):
        r = Registry(CFG)
        ref: dict[str, Device] = {}
        now = T0
        ids = [f"n{i}" for i in range(6)]
        for _step in range(300):
            now += rnd.choice((0, 100, 1000, 5000, 20_000, 60_000))
            d = rnd.choice(ids)
            op = rnd.random()
            if op < 0.1:
                m = {"online": True, "kind": "speaker", "bdseq": rnd.randrange(3), "fw": "1",
                     "hb_s": rnd.choice((5, 30, 60))}
                r.birth(d, "s", m, now)
                on_birth(ref.setdefault(d, Device(d, "s", "speaker")), m, CFG, now)
            elif op < 0.15:
                m = {"online": False, "bdseq": rnd.randrange(3)}
                r.death(d, "s", m, now)
                on_death(ref.setdefault(d, Device(d, "s")), m, now)
            elif op < 0.5:
                hb = rnd.choice((None, 5, 30))
                r.heartbeat(d, "s", {"hb_s": hb} if hb else {}, now)
                dev = ref.setdefault(d, Device(d, "s"))
                effective_hb(dev, hb, CFG, now)
                on_alive(dev, now)
            elif op < 0.55:
                r.rebase(now)
                for dev in ref.values():
                    if dev.live:
                        dev.armed_ms = now
            else:
                r.tick(now)
                for dev in ref.values():
                    on_tick(dev, CFG, now)
                assert {i: x.state for i, x in r.devices.items()} == {i: x.state for i, x in ref.items()}
        assert sum(r.counts().values()) == len(r.devices)
        assert r.counts() == {s: sum(1 for x in r.devices.values() if x.state == s) for s in STATES}


def test_gc_policy_keeps_long_lived_objects_out_of_full_collections():
    """Objects alive at a freeze are out of the collector's walk (a full collection's pause grows with what it
    walks); a site that grew by ``regrow`` is frozen again; stopping the policy gives everything back."""
    size = [1000]
    p = GCPolicy(lambda: size[0], regrow=0.2, period_s=3600)
    keep = [{"i": [i]} for i in range(20_000)]  # long-lived containers, like devices
    try:
        gc.collect()
        walked_before = len(gc.get_objects(generation=2))
        p.freeze_now()
        assert gc.get_freeze_count() >= len(keep) and len(gc.get_objects(generation=2)) < walked_before // 10
        assert not p.due()
        size[0] = 1150
        assert not p.due()
        size[0] = 1400  # +40 %
        assert p.due() == "grown"
        more = [{"j": [j]} for j in range(5000)]
        p.freeze_now(full=False)  # the newcomers join the frozen without a full collection
        assert gc.get_freeze_count() >= len(keep) + len(more) and p.due() is None
        p.frozen_at -= 3600
        assert p.due() == "housekeeping"

        async def briefly() -> None:
            t = asyncio.get_running_loop().create_task(p.run(check_s=0.01))
            await asyncio.sleep(0.05)
            assert p.freezes >= 2 and gc.get_freeze_count() > 0
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

        asyncio.run(briefly())
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
    assert len(keep) == 20_000
