"""The node's CoAP uplink (firmware/lib/lookout_node/coap_link.py) against real peers on 127.0.0.1: a tiny aiocoap
server, a UDP sink that never answers, aiocoap's separate-response path, and end to end through the gateway's
CoAP bridge into a real Mosquitto (paho subscriber)."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time

import aiocoap
import aiocoap.resource
import paho.mqtt.client as paho
import pytest
from aiocoap.numbers.codes import Code

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.links.coap_bridge import CoAPBridge, paho_publisher
from lookout.protocols import canonical, coap, messages, signing
from lookout.tools import firmware_host

firmware_host.install()

from lookout_node import coap_link, mqtt
from lookout_node.uplink import make_uplink

TIMEOUT = 5.0
SITE, DEV = "dongshan", "sen-05"
FAST = {"ack_timeout_ms": 60, "poll_ms": 5, "backoff_min_ms": 20, "backoff_max_ms": 100}


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hb(seq: int = 1) -> bytes:
    return messages.encode("hb", {"seq": seq, "up_s": 120, "hb_s": 30, "bat_mv": 3650, "rssi": -87})


class Recording(aiocoap.resource.Resource, aiocoap.resource.PathCapable):
    """Records every request; answers ``code`` (or never, when ``hang``)."""

    def __init__(self, code=Code.CHANGED, diagnostic=b"", hang=False):
        super().__init__()
        self.code = code
        self.diagnostic = diagnostic
        self.hang = hang
        self.requests: list[tuple[str, str, int | None, bytes]] = []

    async def render(self, request):
        self.requests.append(("/" + "/".join(request.opt.uri_path), str(request.code),
                              request.opt.content_format and int(request.opt.content_format),
                              bytes(request.payload)))
        if self.hang:
            await asyncio.sleep(3600)
        return aiocoap.Message(code=self.code, payload=self.diagnostic)

    def get_link_description(self):
        return {}


async def serve(resource):
    port = udp_port()
    ctx = await aiocoap.Context.create_server_context(resource, bind=("127.0.0.1", port), transports=["udp6"])
    return ctx, port


def new_link(port, **kw):
    opts = dict(FAST)
    opts.update(kw)
    return coap_link.CoAPLink("127.0.0.1", port, site=SITE, device=DEV, **opts)


def test_confirmable_posts_to_aiocoap_server():
    async def run():
        res = Recording()
        ctx, port = await serve(res)
        lk = new_link(port)
        try:
            ok1 = await lk.send("hb", hb(1))
            ok2 = await lk.send("loc", b'{"seq":1}')
            await lk.publish("lookout/v1/%s/%s/evt" % (SITE, DEV), b'{"id":"e"}', 1)  # node.py's call shape
            return ok1, ok2, res.requests, lk
        finally:
            await lk.disconnect(publish_will=False)
            await ctx.shutdown()

    ok1, ok2, reqs, lk = asyncio.run(run())
    assert ok1 and ok2
    assert reqs == [("/v1/dongshan/sen-05/hb", "POST", 50, hb(1)),
                    ("/v1/dongshan/sen-05/loc", "POST", 50, b'{"seq":1}'),
                    ("/v1/dongshan/sen-05/evt", "POST", 50, b'{"id":"e"}')]
    assert lk.delivered == 3 and lk.retransmits == 0 and lk.connects == 1


def test_4_00_is_reported_false_and_dropped_by_publish():
    async def run():
        res = Recording(Code.BAD_REQUEST, b"seq: required field missing from hb message")
        ctx, port = await serve(res)
        lk = new_link(port)
        try:
            r = await lk.post("hb", b'{"up_s":1}')
            ok = await lk.send("hb", b'{"up_s":1}')
            await lk.publish("lookout/v1/%s/%s/hb" % (SITE, DEV), b'{"up_s":1}')  # no raise: dropped, counted
            return r, ok, lk, lk.is_connected()
        finally:
            await lk.disconnect(publish_will=False)
            await ctx.shutdown()

    r, ok, lk, up = asyncio.run(run())
    assert r.kind == coap_link.REJECTED and r.code == coap.BAD_REQUEST and "seq" in r.diagnostic
    assert ok is False
    assert lk.rejected == 1 and "4.00" in lk.last_error
    assert up  # the gateway answered: a rejected message does not take the link down


def test_silent_peer_gives_up_after_max_retransmit():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.05)
    port = sink.getsockname()[1]

    async def run():
        lk = new_link(port, ack_timeout_ms=30, max_retransmit=3)
        lk.connected.set()
        try:
            ok = await lk.send("evt", b"{}")
            with pytest.raises(mqtt.NotConnected):
                await lk.publish("lookout/v1/%s/%s/evt" % (SITE, DEV), b"{}", 1)  # down now: outbox keeps it
            return ok, lk
        finally:
            await lk.disconnect(publish_will=False)

    ok, lk = asyncio.run(run())
    got = []
    while True:
        try:
            got.append(sink.recv(2048))
        except TimeoutError:
            break
    sink.close()
    assert ok is False and lk.timeouts == 1 and not lk.is_connected()
    assert len(got) == 1 + 3  # the first transmission and MAX_RETRANSMIT retransmissions, no more
    assert len(set(got)) == 1 and coap.decode(got[0]).mtype == coap.CON  # same datagram, same MID


def test_acked_but_no_separate_response_times_out():
    async def run():
        res = Recording(hang=True)  # aiocoap sends an empty ACK, then the response never comes
        ctx, port = await serve(res)
        lk = new_link(port, response_timeout_ms=600)
        try:
            r = await lk.post("evt", b"{}")
            return r
        finally:
            await lk.disconnect(publish_will=False)
            await ctx.shutdown()

    r = asyncio.run(run())
    assert r.kind == coap_link.TIMEOUT and "separate response" in r.diagnostic


def test_start_brings_link_up_with_birth_and_recovers_after_server_starts():
    port = udp_port()

    async def run():
        lk = new_link(port, birth=("lookout/v1/%s/%s/state" % (SITE, DEV), b'{"online":true}', 1, True))
        lk.start()
        await asyncio.sleep(0.3)  # nobody listens yet: probing with backoff
        assert not lk.is_connected()
        res = Recording()
        ctx = await aiocoap.Context.create_server_context(res, bind=("127.0.0.1", port), transports=["udp6"])
        try:
            await asyncio.wait_for(lk.connected.wait(), TIMEOUT)
            return res.requests, lk
        finally:
            await lk.disconnect(publish_will=False)
            await ctx.shutdown()

    reqs, lk = asyncio.run(run())
    assert reqs and reqs[0][0] == "/v1/dongshan/sen-05/state" and reqs[0][3] == b'{"online":true}'
    assert lk.connects == 1


# ---- end to end: CoAP link -> gateway CoAP bridge -> Mosquitto -> paho -----------------------------------------

def test_end_to_end_through_bridge_to_mosquitto(mosquitto, tmp_path):
    ks = KeyStore(tmp_path / "keys.db")
    key = ks.ensure(DEV, SITE, "sensor", meta={"transport": "coap"}).hmac_key
    q: queue.Queue = queue.Queue()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-sub")
    ready = threading.Event()
    sub.on_message = lambda _c, _u, m: q.put((m.topic, m.payload, m.qos, m.retain))
    sub.on_subscribe = lambda *_a: ready.set()
    sub.on_connect = lambda c, *_a: c.subscribe("lookout/v1/+/+/#", qos=1)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gw-coap")
    pub_ok = threading.Event()
    pub.on_connect = lambda *_a: pub_ok.set()
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    assert ready.wait(TIMEOUT) and pub_ok.wait(TIMEOUT)

    ev = {"id": "sen-05-0-1", "seq": 1, "ts": int(time.time() * 1000), "kind": "pir", "sev": "general", "conf": 80}
    signing.sign(key, "evt", ev)
    evt_bytes = messages.encode("evt", ev)
    birth = messages.encode("birth", messages.birth("sensor", 4, "lookout-node/0.1.0", 600, site=SITE))
    cfg = {"id": DEV, "site": SITE, "role": "sensor", "key": key.hex(), "transport": "coap",
           "broker": {"host": "127.0.0.1", "port": 1}, "coap": {"host": "127.0.0.1", "port": 0}}

    async def run():
        async with CoAPBridge(paho_publisher(pub), port=0, keystore=ks) as br:
            cfg["coap"]["port"] = br.port
            lk = make_uplink(cfg, birth=("lookout/v1/%s/%s/state" % (SITE, DEV), birth, 1, True),
                             client_id=DEV, clean_session=False, **FAST)
            lk.start()
            await asyncio.wait_for(lk.connected.wait(), TIMEOUT)
            await lk.publish("lookout/v1/%s/%s/hb" % (SITE, DEV), hb(7), 0)
            await lk.publish("lookout/v1/%s/%s/evt" % (SITE, DEV), evt_bytes, 1)
            forged = dict(ev, conf=99)  # altered after signing: the bridge answers 4.01 -> outbox keeps it
            with pytest.raises(mqtt.NotConnected):
                await lk.publish("lookout/v1/%s/%s/evt" % (SITE, DEV), canonical.dumpb(forged), 1)
            stats = dict(br.stats)
            await lk.disconnect(publish_will=False)
            return stats

    try:
        stats = asyncio.run(run())
        got = [q.get(timeout=TIMEOUT) for _ in range(3)]
        assert got[0][0] == "lookout/v1/dongshan/sen-05/state" and got[0][2] == 1
        signed_birth = json.loads(got[0][1])
        signing.verify(key, "state", signed_birth)  # make_uplink signed it; the bridge checked it
        assert {k: v for k, v in signed_birth.items() if k != "mac"} == json.loads(birth)
        assert got[1] == ("lookout/v1/dongshan/sen-05/hb", hb(7), 0, False)
        assert got[2][:2] == ("lookout/v1/dongshan/sen-05/evt", evt_bytes) and got[2][2] == 1
        signing.verify(key, "evt", json.loads(got[2][1]))  # the node's MAC survived CoAP + bridge + MQTT
        assert stats == {"accepted": 3, "rejected": 1, "unavailable": 0}
        # the forged event never reached MQTT: the next message on the topic is a marker the bridge's own client
        # published after it (one client, QoS 1: the broker keeps the order)
        pub.publish("lookout/v1/%s/%s/evt" % (SITE, DEV), b"fence", qos=1).wait_for_publish(TIMEOUT)
        assert q.get(timeout=TIMEOUT)[:2] == ("lookout/v1/dongshan/sen-05/evt", b"fence")
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
        ks.close()


# ---- the real node app (SimNode: firmware on the host HAL) reporting over CoAP ----------------------------------

def test_sensor_node_app_reports_over_coap(tmp_path):
    from lookout.simulators.node import SimNode, make_config
    calls = []

    async def run():
        async with CoAPBridge(lambda *a: calls.append(a), port=0) as br:
            cfg = make_config(DEV, SITE, "sensor", "cd" * 32, transport="coap", hb_s=5,
                              coap={"host": "127.0.0.1", "port": br.port, "ack_timeout_ms": 100})
            sim = SimNode(tmp_path / "node", cfg, mqtt_opts={"backoff_min_ms": 20, "backoff_max_ms": 200})
            await sim.start()
            await sim.wait_online(TIMEOUT)
            sim.node.emit_event("pir", "general", conf=80)
            for _ in range(250):
                if any(c[0].endswith("/evt") for c in calls) and any(c[0].endswith("/hb") for c in calls):
                    break
                await asyncio.sleep(0.02)
            await sim.stop()  # graceful: the death goes out as a POST to state
            return sim

    asyncio.run(run())
    chans = [c[0].rsplit("/", 1)[1] for c in calls]
    assert chans[0] == "state" and json.loads(calls[0][1])["online"] is True
    for c in (calls[0], calls[-1]):  # birth and death carry the node's MAC (the gateway believes no other)
        signing.verify(bytes.fromhex("cd" * 32), "state", json.loads(c[1]))
    assert "hb" in chans and "evt" in chans
    ev = json.loads(next(c[1] for c in calls if c[0].endswith("/evt")))
    signing.verify(bytes.fromhex("cd" * 32), "evt", ev)
    assert chans[-1] == "state" and json.loads(calls[-1][1])["online"] is False
