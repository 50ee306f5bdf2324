"""Fuzzing every network-facing entry of a running gateway and node, not only the decoders (issue 17).

``World`` runs the real gateway (MQTT via Mosquitto, the CoAP bridge, the MAVLink bridge with a simulated signed
drone) and a real firmware speaker (SimNode). Each entry gets seeded mutations of valid inputs
(``fuzz.inputs``: bit flips, truncation, insertions, splices, noise) through the real transport:

- ``mqtt:<channel>``: the gateway's subscriptions (``state hb loc evt res up/<tid> opreq``), published on Mosquitto;
- ``node:<topic>``: the node's subscriptions (``cmd``, ``dl/<tid>``, its gateway's ``state``), published likewise;
- ``coap``: datagrams to the CoAP bridge's UDP port;
- ``mavlink``: datagrams to the MAVLink endpoint's UDP port (from another address than the drone's);
- ``config:gateway`` and ``config:node``: gateway.toml and a node's config.json as files, through the loaders.

After each network entry the world must still serve (``serving``): the operator API answers over MQTT, a broadcast
to the speaker ends ``done``, the drone is online and answers a command, a valid CoAP request gets 2.04; and no
handler may have raised (an ERROR with a traceback in the gateway's log, "handler raised" in the node's).
``bench/fuzz_entries.py`` runs every entry with 10,000 cases; the tests with a few hundred.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from fuzz import inputs

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_drone, provision_operator
from lookout.gateway.core import config as cfgmod
from lookout.gateway.core.config import from_dict
from lookout.gateway.links.opclient import OperatorClient
from lookout.gateway.service.app import Gateway
from lookout.protocols import canonical, cliptransfer, coap, messages, opapi, signing
from lookout.simulators.drone import Config as DroneConfig
from lookout.simulators.drone import SimDrone
from lookout.simulators.node import SimNode, make_config

SITE = "dongshan"
AREA = [[30.20, 120.10], [30.20, 120.20], [30.30, 120.20], [30.30, 120.10]]
GATEWAY_TOML = b"""[gateway]
id = "gw-1"
site = "dongshan"
data_dir = "data"

[broker]
url = "mqtt://127.0.0.1:1883"

[registry]
offline_after_missed = 3
min_hb_s = 5

[commands]
retry_s = 10

[zones]
ferry = ["sen-ferry"]

[linkage]
[[linkage.rule]]
name = "ferry"
match = { kind = "presence", zone = "ferry" }
act = { broadcast = { clip = "nofish", within_m = 600 } }
escalate = { after_s = 60, notify = { within_m = 3000 } }
"""


class Errors(logging.Handler):
    """Every record of the gateway's loggers at ERROR or with a traceback: a handler that raised."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(f"{record.name}: {record.getMessage()[:300]}")


class Publisher:
    """A paho client (its own thread) that publishes QoS 1 with a bounded window, so nothing is dropped."""

    def __init__(self, port: int):
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fuzzer")
        ok = threading.Event()
        self.c.on_connect = lambda *_a: ok.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ok.wait(10)

    def send(self, topic: str, payloads) -> int:
        n, last = 0, None
        for p in payloads:
            last = self.c.publish(topic, p, qos=1)
            n += 1
            if n % 20 == 0:
                last.wait_for_publish(10)
        if last is not None:
            last.wait_for_publish(10)
        return n

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class World:
    def __init__(self, tmp: Path, broker: Any, rebirth_ms: int = 2000):
        self.tmp, self.broker = tmp, broker
        self.rebirth_ms = rebirth_ms  # the gateway repeats its birth this often here (60 s in service)
        self.ks = KeyStore(tmp / "ks.db")
        self.token = provision_operator(self.ks, "op-1", "Fuzz")
        self.spk_key = self.ks.ensure("spk-01", SITE, "speaker").hmac_key
        self.fz_key = self.ks.ensure("fz-01", SITE, "sensor").hmac_key  # a device the fuzz talks as
        self.coap_key = self.ks.ensure("sen-05", SITE, "sensor", meta={"transport": "coap"}).hmac_key
        self.drone_key = provision_drone(self.ks, "uav-1", SITE, 1).hmac_key
        self.cfg = from_dict({
            "gateway": {"id": "gw-1", "site": SITE, "data_dir": str(tmp / "data")},
            "broker": {"url": broker.url}, "coap": {"listen": "127.0.0.1:0"},
            "commands": {"retry_s": 2, "wait_s": 8},
            "mavlink": {"endpoint": [{"name": "radio", "url": "udpin:127.0.0.1:0"}], "area": AREA,
                        "max_alt_m": 100, "ack_timeout_ms": 300},
            "drone": [{"id": "uav-1", "sysid": 1}]})
        self.node = SimNode(tmp / "spk", make_config("spk-01", SITE, "speaker", self.spk_key.hex(), broker.host,
                                                     broker.port, hb_s=5, gateway="gw-1"), speed=20,
                            log=self._node_log)
        self.node.add_clip("nofish", ms=200)
        self.node_errors: list[str] = []
        self.errors = Errors()
        self.gw: Gateway
        self.drone: SimDrone
        self.pub: Publisher
        self.counts: dict[str, int] = {}
        self.current = "start"  # the entry being fuzzed (for failure messages)

    def _node_log(self, level: str, text: str) -> None:
        if level == "error":
            self.node_errors.append(text)

    async def __aenter__(self) -> World:
        from lookout.gateway.service import app

        self._rebirth, app.REBIRTH_MS = app.REBIRTH_MS, self.rebirth_ms
        for name in ("lookout", "asyncio"):  # asyncio: what escapes a transport's callback (a library's handler)
            logging.getLogger(name).addHandler(self.errors)
        self.gw = await Gateway(self.cfg, keystore=self.ks).__aenter__()
        self._serve = asyncio.create_task(self.gw.serve())
        port = self.gw.drones.router.endpoints[0].local_port
        self.drone = await SimDrone(DroneConfig(sysid=1, lat=30.25, lon=120.15), f"udp:127.0.0.1:{port}",
                                    key=self.drone_key).__aenter__()
        await self.node.start()
        self.pub = await asyncio.to_thread(Publisher, self.broker.port)
        await self.serving()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pub.close()
        await self.node.stop() if self.node._task and not self.node._task.done() else None
        await self.drone.__aexit__(None, None, None)
        self.gw.stop()
        await asyncio.wait_for(self._serve, 15)
        await self.gw.__aexit__(None, None, None)
        self.ks.close()
        for name in ("lookout", "asyncio"):
            logging.getLogger(name).removeHandler(self.errors)
        from lookout.gateway.service import app

        app.REBIRTH_MS = self._rebirth

    async def gateway_seen(self, count: int) -> None:
        """After garbage on the gateway's state topic: wait until the node has worked through what the broker
        queued for it (a marker birth, published until the node handled it: its 16-message inbox drops what
        overflows, unacknowledged), then until it believes in its gateway again."""
        marker = messages.encode("birth", messages.birth("gateway", 0, "fuzz-marker", 30, site=SITE))
        topic = "lookout/v1/dongshan/gw-1/state"
        seen: list[bool] = []
        client = self.node.node.client
        handler = client.on_message

        last: list[bytes] = []

        def spy(m: Any) -> Any:
            if m.topic == topic:
                last[:] = (last + [bytes(m.payload[:48])])[-4:]
                if bytes(m.payload) == marker:
                    seen.append(True)
            return handler(m)
        client.on_message = spy
        try:
            deadline = time.monotonic() + 30 + count / 50  # the node handles a few hundred a second here
            while not seen:
                assert time.monotonic() < deadline, "the node did not work through the flood"
                await asyncio.to_thread(self.pub.send, topic, [marker])
                await asyncio.sleep(1.0)
            # what its full inbox dropped is unacknowledged: the broker still delivers some of it later, so the
            # last word can be garbage again until the gateway's next birth (repeated every rebirth_ms)
            t0 = time.monotonic()
            deadline = t0 + 60 + count / 100  # measured: 68 s after 10,000 cases (bench/fuzz_entries.py)
            while self.node.node.gw is None:
                assert time.monotonic() < deadline, (
                    f"the node never saw its gateway's birth again: connects {client.connects}, inbox dropped "
                    f"{client.dropped}, last on the topic {last}")
                await asyncio.sleep(0.1)
            self.settle_s = max(getattr(self, "settle_s", 0.0), time.monotonic() - t0)
        finally:
            client.on_message = handler

    # -- does it still serve? ----------------------------------------------------------------------------------
    async def serving(self, within_s: float = 15.0) -> None:
        """Serving again within ``within_s`` (a long flood leaves the node, which shares this process's event
        loop with the gateway, a backlog to work through first; it may even have reconnected meanwhile)."""
        try:
            await self._serving(within_s)
        except AssertionError as e:
            raise AssertionError(f"not serving after {self.current}: {e}") from None

    async def _serving(self, within_s: float) -> None:
        gw = self.gw
        deadline = time.monotonic() + within_s

        def seen() -> str:
            d, u = gw.registry.get("spk-01"), gw.registry.get("uav-1")
            return (f"speaker {d and d.state} (node sees its gateway: "
                    f"{self.node.node.gw is not None}, connected: {self.node.node.client.is_connected()}, connects "
                    f"{self.node.node.client.connects}, inbox dropped {self.node.node.client.dropped}), "
                    f"drone {u and u.state} {u and u.info.get('link')}")
        while not ((d := gw.registry.get("spk-01")) and d.state == "online" and self.node.node.gw is not None
                   and (u := gw.registry.get("uav-1")) and u.state == "online"):
            assert time.monotonic() < deadline, seen()
            await asyncio.sleep(0.05)
        async with OperatorClient(self.broker.url, SITE, "op-1", self.token) as cl:
            r = await cl.request("status", {}, timeout=10)
            assert r["code"] == "ok", r
            r = await cl.request("broadcast", {"to": "spk-01", "clip": "nofish", "repeat": 1, "priority": 1,
                                               "queue": False, "wait": "final", "wait_s": 8}, timeout=15)
            assert r["code"] == "ok" and r["data"]["results"][0]["status"] == "done", r
            r = await cl.request("command", {"to": "uav-1", "name": "set_mode", "args": {"mode": "guided"},
                                             "priority": 1, "queue": False, "wait": "final", "wait_s": 8},
                                 timeout=15)
            assert r["data"]["results"][0]["status"] == "done", r
        reply = await self.coap_exchange(coap.encode(self.coap_hb(mid=7)), answer=True)
        assert reply is not None and coap.decode(reply).code == coap.CHANGED, reply
        assert self.errors.records == [], self.errors.records[:5]
        assert self.node_errors == [], self.node_errors[:5]

    # -- golden inputs -----------------------------------------------------------------------------------------
    def golden_mqtt(self) -> dict[str, tuple[str, list[bytes]]]:
        now = int(time.time() * 1000)
        k = self.fz_key
        evt = signing.sign(k, "evt", {"id": "fz-01-0-1", "seq": 1, "ts": now, "kind": "presence", "sev": "general",
                                      "conf": 80, "lat": 299050000, "lon": 1196100000})
        res = signing.sign(k, "res", messages.result("c0000000001", "done", ts=now, data={"x": 1}, seq=1))
        sender = cliptransfer.ClipSender(bytes(range(256)) * 20, 1024, "snap-9", 9, "snapshot", "image/jpeg", now)
        manifest = json.loads(cliptransfer.encode_manifest(sender.manifest))
        manifest = signing.sign(k, "up", manifest)
        req = opapi.encode_request(opapi.request("r1", "broadcast", self.token,
                                                 {"to": "spk-01", "clip": "nofish", "repeat": 1, "priority": 1,
                                                  "queue": False, "wait": "none"}))
        dev = "lookout/v1/dongshan/fz-01/"
        return {
            "state": (dev + "state", [messages.encode("birth", messages.birth("sensor", 3, "fw", 30, ts=now)),
                                      messages.encode("death", messages.death(3, "connection lost"))]),
            "hb": (dev + "hb", [messages.encode("hb", {"seq": 4, "up_s": 9, "hb_s": 30, "fw": "x", "errs": 0,
                                                       "outbox": 0, "dropped": 0, "state": "ok", "ts": now})]),
            "loc": (dev + "loc", [messages.encode("loc", {"lat": 299050000, "lon": 1196100000, "fix": 1,
                                                          "src": "fixed", "seq": 2, "ts": now})]),
            "evt": (dev + "evt", [messages.encode("evt", evt)]),
            "res": (dev + "res", [messages.encode("res", res)]),
            "up": (dev + "up/9", [canonical.dumpb(manifest), sender.chunk(0), sender.chunk(1)]),
            "opreq": ("lookout/v1/dongshan/op-1/opreq", [req]),
        }

    def golden_node(self) -> dict[str, tuple[str, list[bytes]]]:
        now = int(time.time() * 1000)
        m = messages.command("c-fuzz", "spk-01", "play", {"clip": "nofish"}, now, now + 60_000, 1, 1)
        signing.sign(self.spk_key, "cmd", m)
        sender = cliptransfer.ClipSender(b"RIFF" + bytes(3000), 1024, "nofish", 77, "audio", "audio/wav", 0)
        status = cliptransfer.encode_status({"v": 1, "tid": 77, "id": "nofish", "state": "receiving", "have": 1,
                                             "missing": [[1, 3]]})
        birth = messages.encode("birth", messages.birth("gateway", 0, "gateway-0.1", 30, ts=now, site=SITE))
        base = "lookout/v1/dongshan/spk-01/"
        return {"cmd": (base + "cmd", [messages.encode("cmd", m)]),
                "dl": (base + "dl/77", [sender.chunk(0), sender.chunk(2), status]),
                "gwstate": ("lookout/v1/dongshan/gw-1/state",
                            [birth, messages.encode("death", messages.death(0, "connection lost"))])}

    # The node's entries go last, its gateway's state last of all: a long flood there leaves a tail (what the
    # node's full inbox dropped unacknowledged, the broker delivers later), which would blur the other checks.

    def coap_hb(self, mid: int = 1) -> coap.Message:
        hb = messages.encode("hb", {"seq": mid, "up_s": 1, "hb_s": 300, "fw": "x", "errs": 0, "outbox": 0,
                                    "dropped": 0, "state": "ok"})
        return coap.make_request(coap.POST, "/v1/dongshan/sen-05/hb", mid=mid, token=b"\x01\x02", payload=hb,
                                 content_format=coap.JSON)

    def golden_coap(self) -> list[bytes]:
        now = int(time.time() * 1000)
        evt = signing.sign(self.coap_key, "evt", {"id": "sen-05-0-1", "seq": 1, "ts": now, "kind": "presence",
                                                  "sev": "general"})
        return [coap.encode(self.coap_hb(3)),
                coap.encode(coap.make_request(coap.POST, "/v1/dongshan/sen-05/evt", mid=9, token=b"\x07",
                                              payload=messages.encode("evt", evt), content_format=coap.JSON)),
                coap.encode(coap.make_request(coap.GET, "/v1/dongshan/sen-05/hb", mid=10, token=b""))]

    def golden_mavlink(self) -> list[bytes]:
        from pymavlink.dialects.v20 import ardupilotmega as mav

        m = mav.MAVLink(None, 1, 1)
        frames = [m.heartbeat_encode(mav.MAV_TYPE_QUADROTOR, mav.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 0).pack(m),
                  m.global_position_int_encode(1000, 302500000, 1201500000, 5000, 5000, 0, 0, 0, 0).pack(m),
                  m.command_ack_encode(176, 0).pack(m)]
        signed = mav.MAVLink(None, 1, 1)
        signed.signing.secret_key = self.drone_key
        signed.signing.sign_outgoing = True
        signed.signing.timestamp = 1
        frames.append(signed.sys_status_encode(0, 0, 0, 500, 12000, 500, 90, 0, 0, 0, 0, 0, 0).pack(signed))
        return frames

    # -- entries -----------------------------------------------------------------------------------------------
    async def mqtt(self, name: str, topic: str, golden: list[bytes], count: int, seed: int) -> int:
        n = await asyncio.to_thread(self.pub.send, topic, list(inputs(golden, count, seed)))
        await asyncio.sleep(0.5)  # let the last ones be handled
        return n

    async def coap_exchange(self, datagram: bytes, answer: bool = False) -> bytes | None:
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", self.gw.coap.port))
            await loop.sock_sendall(s, datagram)
            if not answer:
                return None
            return await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
        finally:
            s.close()

    async def coap(self, count: int, seed: int) -> int:
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(("127.0.0.1", self.gw.coap.port))
        n = 0
        try:
            for d in inputs(self.golden_coap(), count, seed):
                if d:
                    await loop.sock_sendall(s, d)
                n += 1
                if n % 50 == 0:
                    await asyncio.sleep(0.01)  # the bridge answers; its socket buffer is not the subject
        finally:
            s.close()
        await asyncio.sleep(0.3)
        return n

    async def mavlink(self, count: int, seed: int) -> int:
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(("127.0.0.1", self.gw.drones.router.endpoints[0].local_port))
        n = 0
        try:
            for d in inputs(self.golden_mavlink(), count, seed):
                if d:
                    await loop.sock_sendall(s, d)
                n += 1
                if n % 50 == 0:
                    await asyncio.sleep(0.01)
        finally:
            s.close()
        await asyncio.sleep(0.3)
        return n

    async def network(self, count: int, seed: int = 1) -> dict[str, int]:
        """Every network entry, ``count`` cases each, the world checked after each; returns the counts."""
        within = 15 + count / 500
        for ch, (topic, golden) in self.golden_mqtt().items():
            self.current = f"mqtt:{ch}"
            self.counts[f"mqtt:{ch}"] = await self.mqtt(ch, topic, golden, count, seed)
            await self.serving(within)
        self.current = "coap"
        self.counts["coap"] = await self.coap(count, seed)
        await self.serving(within)
        self.current = "mavlink"
        self.counts["mavlink"] = await self.mavlink(count, seed)
        await self.serving(within)
        for name, (topic, golden) in self.golden_node().items():
            self.current = f"node:{name}"
            self.counts[f"node:{name}"] = await self.mqtt(name, topic, golden, count, seed)
            if name == "gwstate":
                await self.gateway_seen(count)
            await self.serving(within)
        return self.counts


def fuzz_configs(tmp: Path, count: int, seed: int = 1) -> dict[str, int]:
    """gateway.toml through ``config.load`` and the linkage rules, a node's config.json through the firmware's
    boot check: only their own errors, each line naming a key or the file."""
    from lookout.gateway.linkage import rules

    from lookout_node import config as nodecfg
    from lookout_node import hal

    counts = {}
    path = tmp / "gateway.toml"
    n = 0
    for data in inputs([GATEWAY_TOML], count, seed):
        path.write_bytes(data)
        try:
            cfg = cfgmod.load(path)
            rules.from_config(cfg)
        except cfgmod.ConfigError as e:
            assert e.errors and all(line.strip() and "\n" not in line for line in e.errors), e.errors
        except rules.RulesError as e:
            assert e.errors and all(line.strip() for line in e.errors), e.errors
        n += 1
    counts["config:gateway"] = n
    node_cfg = json.dumps(make_config("spk-01", SITE, "speaker", "11" * 32, gateway="gw-1",
                                      quiet_hours=[22, 6], volume=80)).encode()
    n = 0
    root = tmp / "node-flash"
    for data in inputs([node_cfg], count, seed):
        fs = hal.FileStore(str(root))
        fs.write("config.json", data)
        fs.remove("config.bak.json")
        try:
            nodecfg.ConfigStore(fs).boot()
        except ValueError as e:  # config_check.ConfigError: a fresh class after each boot (boot unloads it)
            assert type(e).__name__ == "ConfigError" and e.field and e.msg, e
        n += 1
    counts["config:node"] = n
    return counts


__all__ = ["World", "fuzz_configs"]
