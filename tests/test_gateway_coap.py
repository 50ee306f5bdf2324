"""The CoAP bridge wired into the real gateway (``[coap] listen``) with a real Mosquitto: what a battery node
is told, and what reaches the journal.

- item 2 of issue 10: ``2.04 Changed`` only once the broker has the report (PUBACK); with the broker stopped the
  node gets ``5.03`` with Max-Age and keeps the report in its outbox;
- item 3: a signed event that arrives twice (a CoAP retransmission from a new source port after a wake-up, a
  QoS 1 redelivery, a gateway restart in between) is one alert; the copies are counted, not journaled as alerts;
- item 5: state over CoAP is signed by the device, and only CoAP devices may use the bridge at all.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiocoap
from aiocoap.numbers.codes import Code
from aiowait import until
from gwserve import serving

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.config import from_dict
from lookout.gateway.service.app import Gateway
from lookout.protocols import canonical, coap, messages, signing

SITE, DEV = "dongshan", "sen-05"
TIMEOUT = 5.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(tmp_path, url: str, port: int):
    return from_dict({"gateway": {"id": "gw-1", "site": SITE, "data_dir": str(tmp_path / "data")},
                      "broker": {"url": url}, "coap": {"listen": f"127.0.0.1:{port}"}})


def coap_keystore(tmp_path) -> KeyStore:
    ks = KeyStore(tmp_path / "ks.db")
    ks.ensure(DEV, SITE, "sensor", meta={"transport": "coap"})
    return ks


def event(key: bytes, eid: str = "sen-05-3-1", seq: int = 1) -> bytes:
    m = {"id": eid, "seq": seq, "ts": int(time.time() * 1000), "kind": "fishing", "sev": "serious", "conf": 90}
    return canonical.dumpb(signing.sign(key, "evt", m))


async def post(port: int, channel: str, payload: bytes) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    try:
        req = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/v1/{SITE}/{DEV}/{channel}",
                              payload=payload)
        req.opt.content_format = 50
        return await asyncio.wait_for(ctx.request(req).response, TIMEOUT)
    finally:
        await ctx.shutdown()


def alerts(gw) -> list[dict]:
    return [json.loads(e.detail) for e in gw.journal.entries(kind="alert")]


def test_2_04_only_after_the_broker_has_it_else_5_03_with_max_age(mosquitto, tmp_path):
    async def main():
        port = free_udp_port()
        ks = coap_keystore(tmp_path)
        key = ks.get(DEV).hmac_key
        async with serving(Gateway(config(tmp_path, mosquitto.url, port), keystore=ks)) as gw:
            mosquitto.stop()
            await until(lambda: not gw.link.connected.is_set(), TIMEOUT, "the link to drop")
            r = await post(port, "evt", event(key))
            assert r.code == Code.SERVICE_UNAVAILABLE, r
            assert r.opt.max_age is not None and r.opt.max_age >= 1  # when to try again (RFC 7252 §5.9.3.4)
            r = await post(port, "hb", messages.encode("hb", {"seq": 1, "up_s": 9, "hb_s": 600}))
            assert r.code == Code.SERVICE_UNAVAILABLE  # QoS 0 reports too: nothing is accepted into a void
            mosquitto.start()
            await until(lambda: gw.link.connected.is_set(), 15, "the link to come back")
            r = await post(port, "evt", event(key))  # the node's outbox sends it again
            assert r.code == Code.CHANGED, r
            await until(lambda: alerts(gw), TIMEOUT, "the alert")
            assert [a["id"] for a in alerts(gw)] == ["sen-05-3-1"]  # once: the refused copy never went out
        ks.close()

    asyncio.run(main())


def raw_post(port: int, payload: bytes, mid: int) -> bytes:
    """One CON POST of an event from a fresh UDP socket (a fresh source port, as after a node's wake-up)."""
    req = coap.make_request(coap.POST, f"/v1/{SITE}/{DEV}/evt", mid=mid, token=b"\x01\x02", payload=payload,
                            content_format=coap.JSON)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(("127.0.0.1", port))
        s.send(coap.encode(req))
        return s.recv(2048)


def duplicates(gw) -> float:
    return gw.metrics.registry.get_sample_value("lookout_duplicates_total", {"channel": "evt"}) or 0


def test_duplicate_event_is_one_alert_across_source_ports_mqtt_and_restart(mosquitto, tmp_path):
    async def main():
        import paho.mqtt.client as paho

        port = free_udp_port()
        ks = coap_keystore(tmp_path)
        key = ks.get(DEV).hmac_key
        e1 = event(key, "sen-05-3-1", 1)
        cfg = config(tmp_path, mosquitto.url, port)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            for _ in range(2):  # the same datagram, same MID and token, from two source ports
                ack = coap.decode(await asyncio.to_thread(raw_post, port, e1, 0x4242))
                assert ack.code == coap.CHANGED  # the copy is acknowledged too: the node must stop sending it
            pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="redeliver")
            pub.connect(mosquitto.host, mosquitto.port)
            pub.loop_start()
            pub.publish(f"lookout/v1/{SITE}/{DEV}/evt", e1, qos=1).wait_for_publish(TIMEOUT)  # a QoS 1 copy
            pub.disconnect()
            pub.loop_stop()
            await until(lambda: duplicates(gw) == 2, TIMEOUT, "both copies counted", seen=lambda: alerts(gw))
            fence = event(key, "sen-05-3-2", 2)  # after both copies: when it is journaled, they were handled
            assert (await post(port, "evt", fence)).code == Code.CHANGED
            await until(lambda: len(alerts(gw)) >= 2, TIMEOUT, "the fence event")
            assert [a["id"] for a in alerts(gw)] == ["sen-05-3-1", "sen-05-3-2"]
        async with serving(Gateway(cfg, keystore=ks)) as gw:  # restarted: the seen set came back from disk
            assert (await post(port, "evt", e1)).code == Code.CHANGED
            await until(lambda: duplicates(gw) == 1, TIMEOUT, "the copy after the restart counted")
            assert [a["id"] for a in alerts(gw)] == ["sen-05-3-1", "sen-05-3-2"]
        ks.close()

    asyncio.run(main())


def state(key: bytes | None, online: bool, bdseq: int = 4, hb_s: int = 600) -> bytes:
    m = messages.birth("sensor", bdseq, "0.1.0", hb_s, site=SITE) if online else messages.death(bdseq, "battery")
    if key is not None:
        signing.sign(key, "state", m)
    return canonical.dumpb(m)


def test_state_over_coap_is_signed_and_only_for_coap_devices(mosquitto, tmp_path):
    """Item 5: no unsigned birth/death through the bridge, none at all for an MQTT device; and the gateway does
    not believe a CoAP device's state that arrives unsigned over MQTT (the bridge's own broker login could
    publish it), nor any state whose MAC is wrong."""
    from test_gateway_commands import node

    async def main():
        port = free_udp_port()
        ks = coap_keystore(tmp_path)
        key = ks.get(DEV).hmac_key
        spk = node(mosquitto, ks, "spk-01")  # an MQTT loudspeaker
        async with serving(Gateway(config(tmp_path, mosquitto.url, port), keystore=ks)) as gw:
            await asyncio.to_thread(spk.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)

            async def post_as(device: str, channel: str, payload: bytes) -> aiocoap.Message:
                ctx = await aiocoap.Context.create_client_context()
                try:
                    req = aiocoap.Message(code=Code.POST, payload=payload,
                                          uri=f"coap://127.0.0.1:{port}/v1/{SITE}/{device}/{channel}")
                    return await asyncio.wait_for(ctx.request(req).response, TIMEOUT)
                finally:
                    await ctx.shutdown()

            death = canonical.dumpb(messages.death(0, "forged"))
            r = await post_as("spk-01", "state", death)  # a forged death for the loudspeaker
            assert r.code == Code.FORBIDDEN and b"not a CoAP device" in r.payload, r.payload
            r = await post_as("spk-01", "hb", messages.encode("hb", {"seq": 1, "up_s": 1, "hb_s": 86400}))
            assert r.code == Code.FORBIDDEN
            r = await post(port, "state", state(None, True, hb_s=86400))  # unsigned birth of a CoAP node
            assert r.code == Code.UNAUTHORIZED, r.payload
            r = await post(port, "state", state(bytes(32), True))  # signed with the wrong key
            assert r.code == Code.UNAUTHORIZED
            assert gw.registry.get(DEV) is None  # nothing reached the registry

            # the same unsigned birth straight onto MQTT, as the gateway's own login could publish it
            import paho.mqtt.client as paho
            pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="intruder")
            pub.connect(mosquitto.host, mosquitto.port)
            pub.loop_start()
            for payload in (state(None, True, hb_s=86400), state(bytes(32), True, hb_s=86400)):
                pub.publish(f"lookout/v1/{SITE}/{DEV}/state", payload, qos=1).wait_for_publish(TIMEOUT)
            pub.disconnect()
            pub.loop_stop()
            await until(lambda: len(gw.journal.entries(kind="security", device=DEV)) >= 2, TIMEOUT,
                        "the refused births journaled")
            assert gw.registry.get(DEV) is None or not gw.registry.get(DEV).live

            r = await post(port, "state", state(key, True))  # the node's own signed birth
            assert r.code == Code.CHANGED, r.payload
            await until(lambda: gw.registry.get(DEV) and gw.registry.get(DEV).live, TIMEOUT, "the signed birth")
            assert gw.registry.get(DEV).hb_s == 600 and gw.registry.get("spk-01").live
        spk.stop()
        ks.close()

    asyncio.run(main())
