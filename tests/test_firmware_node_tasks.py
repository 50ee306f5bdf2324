"""The real node firmware (SimNode, host hardware layer) against Mosquitto, with a paho "gateway": local warning
while the gateway is unreachable, snapshot upload resumed from the gateway clip store's missing-ranges status,
GPS location end to end, and an outage long enough to overflow the outbox (``dropped`` counted, newest kept)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from aiowait import aio, until
from test_firmware_node import KEY, SITE, Gateway

from lookout.gateway.clips.store import ClipStore
from lookout.protocols import cliptransfer, messages, nmea, signing, topics
from lookout.simulators.node import SimNode, make_config

pytestmark = pytest.mark.mosquitto

QUICK = {"debounce_ms": 0, "min_interval_s": 0, "sensitivity": 100}


@pytest.fixture
def gw(mosquitto):
    g = Gateway(mosquitto)
    yield g
    g.close()


@aio
async def test_local_warning_only_while_gateway_unreachable_and_event_delivered_later(tmp_path, mosquitto, gw):
    cfg = make_config("sen-lw", SITE, "sensor", KEY.hex(), mosquitto.host, mosquitto.port,
                      local_warning={"enabled": True, "clip": "nofish"}, sensor=dict(QUICK, offline_after_s=1))
    n = SimNode(tmp_path / "node", cfg, pir=True, speed=4)
    n.add_clip("nofish", ms=200)
    gw.device = "sen-lw"
    await n.start()
    await n.wait_online()
    n.trigger_pir()  # gateway reachable: event only, no local sound
    await gw.wait_for(lambda: len(gw.of("evt")) == 1, what="online event")
    assert "detail" not in gw.of("evt")[0] and n.plays == []
    n.network(False)
    await until(lambda: (n.node.offline_for_ms() or 0) >= 1000, what="offline for offline_after_s")
    n.trigger_pir()
    await until(lambda: n.plays and n.plays[0]["t_end"] is not None, what="local warning played")
    assert [(p["tag"], p["cut"]) for p in n.plays] == [("nofish", False)]
    assert len(n.node.outbox) == 1 and n.node.sensor.local_warnings == 1
    n.network(True)
    # the first event is sent again too (acknowledged shortly before the link broke: node.py ``_replay``);
    # the gateway drops such a copy by its id
    await gw.wait_for(lambda: len({e["id"] for e in gw.of("evt")}) == 2, what="event after reconnect")
    evts = {e["id"]: e for e in gw.of("evt")}
    ev = evts["sen-lw-0-2"]
    signing.verify(KEY, "evt", ev)
    assert ev["detail"] == "local warning played" and ev["kind"] == "presence"
    assert len(n.plays) == 1
    await n.stop()


class _Journal:
    def __init__(self):
        self.entries = []

    def append(self, kind, summary, *, device=None, detail=None, ts=None, operator=None):
        self.entries.append((kind, summary, detail))
        return type("Entry", (), {"seq": len(self.entries)})()


class _Keys:
    def get(self, device):
        return type("Identity", (), {"hmac_key": KEY})() if device == "cam-01" else None


@aio
async def test_snapshot_upload_resumed_from_clipstore_status(tmp_path, mosquitto, gw):
    cfg = make_config("cam-01", SITE, "camera", KEY.hex(), mosquitto.host, mosquitto.port)
    n = SimNode(tmp_path / "node", cfg, camera=True)
    image = bytes((i * 31 + 7) & 0xFF for i in range(5 * 4096 + 100))  # 6 chunks of 4 KiB
    n.hal.camera.image = image
    sha = hashlib.sha256(image).hexdigest()
    seen: set[int] = set()

    def lose(topic, payload):  # chunks 1 and 3 are lost on their first trip
        if "/up/" not in topic or payload[:1] == b"{":
            return False
        i = cliptransfer.decode_chunk(payload).index
        first = i not in seen
        seen.add(i)
        return first and i in (1, 3)

    n.hal.lose_tx = lose
    clock = [1_700_000_000_000]
    store = ClipStore(tmp_path / "gw", _Journal(), _Keys(), clock=lambda: clock[0],
                      send=lambda site, dev, tid, p: gw.c.publish(topics.topic(site, dev, "dl", str(tid)), p, 1))
    fed = 0

    def pump():  # the gateway's up/<tid> handler: feed the clip store in arrival order
        nonlocal fed
        with gw.lock:
            new = gw.msgs[fed:]
            fed = len(gw.msgs)
        for t, p, _ in new:
            site, dev, ch, sub = topics.parse(t)
            if ch == "up":
                store.on_message(site, dev, sub, p)
        return store.get(sha)

    gw.device = "cam-01"
    await n.start()
    await n.wait_online()  # online = every SUBACK in, dl/+ included (the node's client sets it after them)
    gw.send("s1", "snapshot")
    done = (await gw.final("s1"))[0]
    assert done["status"] == "done" and done["data"]["sha256"] == sha
    tid = done["data"]["tid"]
    await until(lambda: pump() is None and store.uploads.get(("cam-01", tid)) and
                store.uploads[("cam-01", tid)].rx.received == 4, what="4 of 6 chunks at the store")
    assert store.uploads[("cam-01", tid)].rx.missing() == [(1, 2), (3, 4)]
    clock[0] += store.stall_ms  # stalled: the store asks on dl/<tid>
    store.tick()
    ev = await until(pump, what="evidence filed after resume")
    assert ev["size"] == len(image) and ev["auth"] == "signed"
    assert (tmp_path / "gw" / "evidence" / f"{sha}.jpg").read_bytes() == image
    assert n.node.sensor.resent == 2
    # the store's final word is not needed; the node forgets the snapshot after UPLOAD_KEEP_MS or a final status
    final = cliptransfer.encode_status({"v": 1, "tid": tid, "id": done["data"]["clip"], "state": "complete",
                                        "have": 6})
    gw.c.publish(topics.topic(SITE, "cam-01", "dl", str(tid)), final, 1)
    await until(lambda: tid not in n.node.sensor.uploads, what="node forgets a completed upload")
    store.close()
    await n.stop()


@aio
async def test_gps_location_end_to_end(tmp_path, mosquitto, gw):
    n = SimNode(tmp_path / "node", make_config("spk-gps", SITE, "speaker", KEY.hex(), mosquitto.host,
                                                mosquitto.port, loc_s=1), gps=True)
    gw.device = "spk-gps"
    await n.start()
    await n.wait_online()
    n.feed_gps(b"$GPGGA,garbage*7F\r\n\x00\xff")
    gga = nmea.encode_gga(36000000, -301234567, -1201234567, 4, satellites=12, hdop_x100=70, alt_mm=-5000)
    n.feed_gps(gga)
    loc = (await gw.wait_for(lambda: [m for m in gw.of("loc") if m["src"] == "gps"], what="gps loc"))[0]
    messages.validate("loc", loc)
    rd = nmea.NMEAReader()
    rd.receive_data(gga)
    want = rd.next_event()
    assert (loc["lat"], loc["lon"], loc["fix"], loc["sats"], loc["alt_mm"]) == (want.lat_e7, want.lon_e7, 4, 12,
                                                                               -5000)
    assert n.node.errors == 0
    await n.stop()


@aio
async def test_outage_overflowing_the_outbox_drops_oldest_and_counts(tmp_path, mosquitto, gw):
    n = SimNode(tmp_path / "node", make_config("sen-ov", SITE, "sensor", KEY.hex(), mosquitto.host,
                                               mosquitto.port, sensor=QUICK, hb_s=5), pir=True)
    gw.device = "sen-ov"
    await n.start()
    await n.wait_online()
    mosquitto.stop()
    gw.subscribed.clear()
    await until(lambda: not n.node.online(), what="node sees the broker gone")
    made = 80
    for _ in range(made):
        n.trigger_pir()
        await asyncio.sleep(0)
    await until(lambda: n.node.seq["evt"] == made, what="events generated")
    ob = n.node.outbox
    kept, dropped = len(ob), ob.dropped
    assert dropped > 0 and kept + dropped == made and kept <= 64
    assert n.node.heartbeat()["dropped"] == dropped and n.node.heartbeat()["outbox"] == kept
    n.network(False)
    mosquitto.start()
    await gw.wait_for(lambda: gw.subscribed.is_set(), what="gateway resubscribed")
    n.network(True)
    evts = await gw.wait_for(lambda: len(gw.of("evt")) >= kept and gw.of("evt"), timeout=15,
                             what="queued events delivered")
    assert sorted(e["seq"] for e in evts) == list(range(made - kept + 1, made + 1))  # the newest survive
    await until(lambda: len(ob) == 0, what="outbox emptied by PUBACKs")  # they reach the node after us
    assert ob.dropped == dropped
    hb = await gw.wait_for(lambda: [h for h in gw.of("hb") if h["dropped"]], timeout=8, what="heartbeat")
    assert hb[0]["dropped"] == dropped
    await n.stop()
