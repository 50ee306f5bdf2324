"""The gateway against both brokers it supports: Mosquitto and the embedded amqtt broker (gateway/broker.py).

A representative subset of the end-to-end behaviour runs once per broker (``broker`` fixture): registry
transitions (birth, heartbeat, last will, heartbeat timeout), a command round trip with its result, and the
durable queue delivering on birth across a gateway restart. Plus the CoAP bridge inside a running gateway: a
heartbeat posted by aiocoap's own client marks the device online.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from gwserve import serving
from test_embedded_broker import BrokerThread
from test_gateway_commands import make_cfg, node, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.config import from_dict
from lookout.gateway.service.app import Gateway
from lookout.protocols import canonical


class _Embedded:
    """The embedded broker in its own loop thread, shaped like the ``mosquitto`` fixture (.host .port .url)."""

    def __init__(self, bt: BrokerThread):
        self.host, self.port = bt.broker.host, bt.broker.port
        self.url = bt.broker.url


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request, tmp_path):
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto")
    else:
        with BrokerThread() as bt:
            yield _Embedded(bt)


def test_registry_birth_heartbeat_will_and_timeout(broker, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        a = node(broker, ks, "spk-01")
        b = node(broker, ks, "spk-02", hb_s=1)  # announces 1 s and then stays silent
        cfg = make_cfg(tmp_path, broker.url, grace_ms=300, min_hb_s=1)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            reg = gw.registry
            await asyncio.to_thread(a.start)
            await until(lambda: reg.get("spk-01") and reg.get("spk-01").state == "online")
            assert reg.get("spk-01").reason == "birth"
            a.heartbeat()
            await until(lambda: reg.get("spk-01").last_hb_ms is not None)
            a.die()  # socket closed without DISCONNECT: the broker publishes the retained death (last will)
            await until(lambda: reg.get("spk-01").state == "offline", timeout=8)
            assert reg.get("spk-01").reason == "death"
            await asyncio.to_thread(b.start)
            await until(lambda: reg.get("spk-02") and reg.get("spk-02").state == "online")
            await until(lambda: reg.get("spk-02").state == "stale", timeout=5)
            await until(lambda: reg.get("spk-02").state == "offline", timeout=8)
            assert reg.get("spk-02").reason == "timeout"
            states = [(e.device, e.to_dict()["detail"].get("new")) for e in gw.journal.entries(kind="state")]
            assert ("spk-01", "offline") in states and ("spk-02", "stale") in states
        b.stop()
        ks.close()

    asyncio.run(main())


def test_command_round_trip_with_result(broker, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        n = node(broker, ks)
        async with serving(Gateway(make_cfg(tmp_path, broker.url), keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online")
            r = await gw.handle_op("op-1", "command", {"to": "spk-01", "name": "play",
                                                       "args": {"clip": "nofish", "repeat": 1}, "priority": 1,
                                                       "queue": False, "wait": "final", "wait_s": 5}, "r1")
            assert r["code"] == "ok", r
            [res] = r["data"]["results"]
            assert res["status"] == "done" and res["data"] == {"played": 1}
            assert [e.kind for e in gw.journal.entries(kind="result")] == ["result", "result"]  # accepted, done
            assert gw.journal.verify().ok
        n.stop()
        ks.close()

    asyncio.run(main())


def test_durable_queue_delivered_on_birth_after_restart(broker, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        n = node(broker, ks)
        cfg = make_cfg(tmp_path, broker.url)
        async with Gateway(cfg, keystore=ks) as gw:
            c = await gw.commands.issue("spk-01", "play", {"clip": "nofish"}, op="op-1", ttl_s=60)
            assert c.status == "queued"
        async with serving(Gateway(cfg, keystore=ks)) as gw:  # restarted: the queue came back from commands.db
            await asyncio.to_thread(n.start)
            [c2] = await gw.commands.wait([c.id], "final", 5)
            assert c2.status == "done" and c2.attempts == 1
            assert [m["id"] for m in n.received] == [c.id]
        n.stop()
        ks.close()

    asyncio.run(main())


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_coap_heartbeat_marks_device_online(tmp_path):
    """Gateway with ``[coap] listen`` and the embedded broker; aiocoap's client posts a heartbeat."""
    import aiocoap
    from aiocoap.numbers.codes import Code

    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        ks.ensure("sen-05", "dongshan", "sensor", meta={"transport": "coap"})
        port = _free_udp_port()
        cfg = from_dict({"gateway": {"id": "gw-1", "site": "dongshan", "data_dir": str(tmp_path / "data")},
                         "coap": {"listen": f"127.0.0.1:{port}"}})
        async with serving(Gateway(cfg, keystore=ks)) as gw:  # no broker configured: the embedded one
            assert gw.registry.get("sen-05") is None
            hb = canonical.dumpb({"seq": 1, "up_s": 120, "hb_s": 30, "bat_mv": 3650})
            ctx = await aiocoap.Context.create_client_context()
            try:
                req = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/v1/dongshan/sen-05/hb",
                                      payload=hb)
                req.opt.content_format = 50  # application/json
                resp = await asyncio.wait_for(ctx.request(req).response, 5)
            finally:
                await ctx.shutdown()
            assert resp.code == Code.CHANGED, resp
            await until(lambda: gw.registry.get("sen-05") is not None
                        and gw.registry.get("sen-05").state == "online")
            d = gw.registry.get("sen-05")
            assert d.info.get("bat_mv") == 3650 and d.last_hb_ms is not None
            assert d.last_hb_ms <= time.time_ns() // 1_000_000
        ks.close()

    asyncio.run(main())
