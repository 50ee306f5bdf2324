"""CoAP bridge (gateway/coap_bridge.py): aiocoap's own client and raw datagrams from protocols/coap.py, with
the
MQTT republish checked on a real Mosquitto through a paho subscriber."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time

import aiocoap
import paho.mqtt.client as mqtt
import pytest
from aiocoap.numbers.codes import Code

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.links.coap_bridge import CoAPBridge, paho_publisher
from lookout.protocols import canonical, coap, signing

TIMEOUT = 5.0
SITE = "dongshan"


def now_ms() -> int:
    return int(time.time() * 1000)


def hb(seq: int = 1) -> bytes:
    return canonical.dumpb({"seq": seq, "up_s": 120, "hb_s": 30, "bat_mv": 3650, "rssi": -87})


def evt(key: bytes | None, seq: int = 1, **extra) -> bytes:
    m = {"id": "sen-05-e%d" % seq, "seq": seq, "ts": now_ms(), "kind": "pir", "sev": "general", "conf": 80}
    m.update(extra)
    if key is not None:
        signing.sign(key, "evt", m)
    return canonical.dumpb(m)


class Recorder:
    """A publish callback that records instead of talking to a broker (for the error-path tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, int, bool]] = []

    def __call__(self, topic, payload, qos, retain):
        self.calls.append((topic, payload, qos, retain))


class Subscriber:
    def __init__(self, host: str, port: int, topic: str) -> None:
        self.q: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
        self.c.on_message = lambda _c, _u, m: self.q.put((m.topic, m.payload, m.qos, m.retain))
        ready = threading.Event()
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.c.connect(host, port)
        self.c.loop_start()
        assert ready.wait(TIMEOUT), "subscriber got no SUBACK"

    def get(self):
        return self.q.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def publisher_client(host: str, port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-coap")
    ok = threading.Event()
    c.on_connect = lambda *_a: ok.set()
    c.connect(host, port)
    c.loop_start()
    assert ok.wait(TIMEOUT)
    return c


async def post(port: int, path: str, payload: bytes, content_format: int | None = 50, code=Code.POST):
    ctx = await aiocoap.Context.create_client_context()
    try:
        req = aiocoap.Message(code=code, uri="coap://127.0.0.1:%d%s" % (port, path), payload=payload)
        if content_format is not None:
            req.opt.content_format = content_format
        return await asyncio.wait_for(ctx.request(req).response, TIMEOUT)
    finally:
        await ctx.shutdown()


@pytest.fixture
def keystore(tmp_path):
    ks = KeyStore(tmp_path / "keys.db")
    ks.ensure("sen-05", SITE, "sensor", meta={"transport": "coap"})
    yield ks
    ks.close()


def test_hb_and_signed_evt_republished_to_mosquitto(mosquitto, keystore):
    sub = Subscriber(mosquitto.host, mosquitto.port, "lookout/v1/+/+/#")
    pub = publisher_client(mosquitto.host, mosquitto.port)
    key = keystore.get("sen-05").hmac_key
    ev = evt(key)

    async def run():
        async with CoAPBridge(paho_publisher(pub), port=0, keystore=keystore) as br:
            r1 = await post(br.port, "/v1/dongshan/sen-05/hb", hb())
            r2 = await post(br.port, "/v1/dongshan/sen-05/evt", ev)
            return r1, r2, br.stats

    try:
        r1, r2, stats = asyncio.run(run())
        assert r1.code == Code.CHANGED and r2.code == Code.CHANGED
        assert stats == {"accepted": 2, "rejected": 0, "unavailable": 0}
        # same topics and the same bytes an MQTT node would have published; evt at QoS 1 as topics.py says
        assert sub.get() == ("lookout/v1/dongshan/sen-05/hb", hb(), 0, False)
        topic, payload, qos, retain = sub.get()
        assert (topic, payload, qos, retain) == ("lookout/v1/dongshan/sen-05/evt", ev, 1, False)
        signing.verify(key, "evt", json.loads(payload))  # the MAC survives the bridge
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.close()


def test_error_codes_with_diagnostics(keystore):
    rec = Recorder()
    key = keystore.get("sen-05").hmac_key
    bad_mac = json.loads(evt(key))
    bad_mac["conf"] = 99  # altered after signing
    keystore.ensure("spk-01", "xishan", "speaker")

    cases = [
        # (path, payload, content_format, method, expected code, text in diagnostic)
        (
            "/v1/dongshan/sen-05/hb",
            canonical.dumpb({"up_s": 1, "hb_s": 30}),
            50,
            Code.POST,
            Code.BAD_REQUEST,
            "seq",
        ),
        ("/v1/dongshan/sen-05/hb", b"{not json", 50, Code.POST, Code.BAD_REQUEST, "payload"),
        (
            "/v1/dongshan/sen-05/loc",
            canonical.dumpb({"seq": 1, "ts": now_ms(), "lat": 1, "lon": 2, "fix": 0, "src": "gps"}),
            50,
            Code.POST,
            Code.BAD_REQUEST,
            "fix",
        ),
        ("/v1/dongshan/sen-05/cmd", hb(), 50, Code.POST, Code.NOT_FOUND, "channel"),
        ("/v2/dongshan/sen-05/hb", hb(), 50, Code.POST, Code.NOT_FOUND, "uri-path"),
        ("/v1/Dong/sen-05/hb", hb(), 50, Code.POST, Code.NOT_FOUND, "site"),
        ("/v1/dongshan/sen-05/hb", hb(), 0, Code.POST, Code.UNSUPPORTED_CONTENT_FORMAT, "content-format"),
        ("/v1/dongshan/sen-05/hb", hb(), 50, Code.PUT, Code.METHOD_NOT_ALLOWED, "POST"),
        ("/v1/dongshan/sen-05/hb", b"x" * 1100, 50, Code.POST, Code.REQUEST_ENTITY_TOO_LARGE, "1024"),
        ("/v1/dongshan/sen-05/evt", evt(None), 50, Code.POST, Code.UNAUTHORIZED, "mac"),
        ("/v1/dongshan/sen-05/evt", canonical.dumpb(bad_mac), 50, Code.POST, Code.UNAUTHORIZED, "mac"),
        ("/v1/dongshan/ghost-9/hb", hb(), 50, Code.POST, Code.FORBIDDEN, "not provisioned"),
        ("/v1/dongshan/spk-01/hb", hb(), 50, Code.POST, Code.FORBIDDEN, "xishan"),
    ]

    async def run():
        out = []
        async with CoAPBridge(rec, port=0, keystore=keystore) as br:
            for path, payload, cf, method, *_ in cases:
                out.append(await post(br.port, path, payload, cf, method))
        return out

    for case, resp in zip(cases, asyncio.run(run()), strict=True):
        path, _p, _cf, _m, code, text = case
        assert resp.code == code, (path, resp.code, resp.payload)
        assert text in resp.payload.decode(), (path, resp.payload)
    assert rec.calls == []  # nothing rejected reached MQTT


def test_state_birth_is_retained_and_dev_mode_skips_keys():
    rec = Recorder()
    birth = canonical.dumpb({"online": True, "kind": "sensor", "bdseq": 3, "fw": "0.1.0", "hb_s": 600})
    death = canonical.dumpb({"online": False, "bdseq": 3, "reason": "battery"})

    async def run():
        async with CoAPBridge(rec, port=0) as br:  # no keystore: dev mode, no provisioning check
            return [await post(br.port, "/v1/dongshan/sen-07/state", p) for p in (birth, death)]

    assert [r.code for r in asyncio.run(run())] == [Code.CHANGED, Code.CHANGED]
    assert rec.calls == [
        ("lookout/v1/dongshan/sen-07/state", birth, 1, True),
        ("lookout/v1/dongshan/sen-07/state", death, 1, True),
    ]


def test_broker_down_is_503_with_max_age(mosquitto):
    """The paho adapter with its client's broker stopped: 5.03 with Max-Age, nothing acknowledged."""
    pub = publisher_client(mosquitto.host, mosquitto.port)
    mosquitto.stop()
    deadline = time.monotonic() + TIMEOUT
    while pub.is_connected() and time.monotonic() < deadline:  # paho's thread notices the closed socket
        time.sleep(0.02)
    assert not pub.is_connected()

    async def run():
        async with CoAPBridge(paho_publisher(pub), port=0) as br:
            return await post(br.port, "/v1/dongshan/sen-05/evt", evt(None)), dict(br.stats)

    try:
        r, stats = asyncio.run(run())
    finally:
        pub.loop_stop()
    assert r.code == Code.SERVICE_UNAVAILABLE and r.opt.max_age == 30
    assert stats == {"accepted": 0, "rejected": 1, "unavailable": 1}


def test_raw_datagram_from_project_codec_and_dedup(mosquitto, keystore):
    """A node speaking protocols/coap.py (what the firmware sends), including a retransmitted CON."""
    sub = Subscriber(mosquitto.host, mosquitto.port, "lookout/v1/+/+/hb")
    pub = publisher_client(mosquitto.host, mosquitto.port)
    req = coap.make_request(
        coap.POST,
        "/v1/dongshan/sen-05/hb",
        mid=0x1234,
        token=b"\x5a\x01",
        payload=hb(7),
        content_format=coap.JSON,
    )
    datagram = coap.encode(req)

    async def run():
        async with CoAPBridge(paho_publisher(pub), port=0, keystore=keystore) as br:
            loop = asyncio.get_running_loop()
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(("127.0.0.1", br.port))
            replies = []
            try:
                for _ in range(2):  # the second send is a retransmission (same MID, same token)
                    await loop.sock_sendall(s, datagram)
                    replies.append(await asyncio.wait_for(loop.sock_recv(s, 2048), TIMEOUT))
            finally:
                s.close()
            return replies, dict(br.stats)

    try:
        replies, stats = asyncio.run(run())
        for raw in replies:
            resp = coap.decode(raw)
            assert resp.mtype == coap.ACK and resp.mid == 0x1234 and resp.token == b"\x5a\x01"
            assert resp.code == coap.CHANGED
        assert stats["accepted"] == 1  # the duplicate was answered from the message-layer cache
        assert sub.get() == ("lookout/v1/dongshan/sen-05/hb", hb(7), 0, False)
        # not republished twice: the next message is a marker the bridge's client published after both sends
        pub.publish("lookout/v1/dongshan/sen-05/hb", b"fence", qos=1).wait_for_publish(TIMEOUT)
        assert sub.get()[:2] == ("lookout/v1/dongshan/sen-05/hb", b"fence")
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.close()
