"""Fuzzing every network-facing entry of a running gateway and node, not only the decoders (issue 17).

``World`` runs the real gateway (MQTT via Mosquitto, the CoAP bridge, the MAVLink bridge with a simulated signed
drone, the recorder bridge with a recorder on a real pty) and a real firmware speaker (SimNode). Each entry
gets seeded mutations of valid inputs (``fuzz.inputs``: bit flips, truncation, insertions, splices, noise)
through the real transport:

- ``mqtt:<channel>``: the gateway's subscriptions (``state hb loc evt res up/<tid> opreq``), published on Mosquitto;
- ``node:<topic>``: the node's subscriptions (``cmd``, ``dl/<tid>``, its gateway's ``state``), published likewise;
- ``coap``: datagrams to the CoAP bridge's UDP port;
- ``mavlink``: datagrams to the MAVLink endpoint's UDP port (from another address than the drone's);
- ``serial``: the byte stream from a body-worn recorder's pty into the recorder bridge, beside the recorder's
  live session: half the cases raw bytes (mutations of its captured authenticated frames, of a stranger's
  HELLO, of frames with wrong tags or an undefined type), half frames of the session itself with mutated
  payloads and types, so the payload decoders past the tag are reached too;
- ``config:gateway`` and ``config:node``: gateway.toml and a node's config.json as files, through the loaders.

After each network entry the world must still serve (``serving``): the operator API answers over MQTT, a broadcast
to the speaker ends ``done``, the drone is online and answers a command, a valid CoAP request gets 2.04, the
recorder's port is open (or reopened) and a heartbeat it sends reaches the registry (saying HELLO again if the
garbage ended its session); and no handler may have raised (an ERROR with a traceback in the gateway's log,
"handler raised" in the node's).
``bench/fuzz_entries.py`` runs every entry with 10,000 cases; the tests with a few hundred.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from fuzz import inputs

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_drone, provision_operator, provision_recorder
from lookout.gateway.core import config as cfgmod
from lookout.gateway.core.config import from_dict
from lookout.gateway.links.opclient import OperatorClient
from lookout.gateway.service.app import Gateway
from lookout.protocols import canonical, cliptransfer, coap, defaults, messages, opapi, serialsession, signing
from lookout.protocols import serialframe as sf
from lookout.simulators.drone import Config as DroneConfig
from lookout.simulators.drone import SimDrone
from lookout.simulators.node import SimNode, make_config
from lookout.simulators.serialline import PtyCable

SITE = "dongshan"
REC = "bwc-0001"  # the recorder on the serial entry
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


def mono_ms() -> int:
    return int(time.monotonic() * 1000)


# frame types a recorder-side session may send (the bridge refuses COMMAND and CLIP_CHUNK from a recorder)
SENDABLE = tuple(sorted(t for t in sf.TYPE_NAMES if t not in (sf.TYPE_HELLO, sf.TYPE_ACK, sf.TYPE_NACK)))


class RecorderLine:
    """A body-worn recorder's end of a real pty at the gateway's device glob: a recorder-side
    ``SerialSession`` with the recorder's key, pumped by the event loop (handshake, acknowledgements, resends,
    a heartbeat every ``hb_s``). ``inject`` puts raw bytes on the same wire, in order with the session's
    frames, so the fuzz's garbage shares the line with a live session, as line noise would. ``capture``
    collects what the session writes (authenticated frames: golden input for the raw cases)."""

    def __init__(self, path: Path, device: str, key: bytes, hb_s: int = 30):
        self.cable = PtyCable(path)
        self.device, self.hb_s = device, hb_s
        self.session = serialsession.SerialSession(serialsession.RECORDER, device, key=key, rand=os.urandom,
                                                   fw="fuzz-1", hb_s=hb_s)
        self.capture: list[bytes] | None = None
        self.handshakes = 0
        self.refused = 0
        self._tx = bytearray()
        self._rx_ms = 0
        self._next_hb = 0
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self.cable.plug()
        assert self.cable.master is not None
        asyncio.get_running_loop().add_reader(self.cable.master, self._wake.set)
        self.session.start(mono_ms())
        self._task = asyncio.create_task(self._run(), name="fuzz-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.cable.master is not None:
            asyncio.get_running_loop().remove_reader(self.cable.master)
        self.cable.unplug()

    def heartbeat(self, **extra: Any) -> bytes:
        self._seq += 1
        return messages.encode("hb", {"seq": self._seq, "ts": int(time.time() * 1000), "up_s": self._seq,
                                      "hb_s": self.hb_s, "fw": "fuzz-1", "bat_pct": 80, "bat_mv": 4080,
                                      "state": "idle", **extra})

    def send(self, ftype: int, payload: bytes) -> None:
        self.session.send(ftype, payload)
        self._wake.set()

    def inject(self, data: bytes) -> None:
        self._tx += data
        self._wake.set()

    def hello(self) -> None:
        """Say HELLO again now (a fresh nonce), as a recorder whose session went away does."""
        self.session.start(mono_ms())
        self._wake.set()

    @property
    def unsent(self) -> bool:
        """Bytes the pty has not taken yet."""
        return bool(self._tx)

    @property
    def busy(self) -> bool:
        """Bytes not yet taken by the pty, or frames the gateway has not acknowledged yet."""
        s = self.session
        return bool(self._tx) or s.in_flight > 0 or s.room() < defaults.SERIAL_MAX_QUEUE

    async def _run(self) -> None:
        while True:
            delay = self._step()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def _step(self) -> float:
        now = mono_ms()
        s = self.session
        data = self.cable.read()
        if data:
            s.receive_data(data, now)
            self._rx_ms = now
        elif s.decoder.buffered and now - self._rx_ms > 50:
            s.line_idle(now)
        while (ev := s.next_event()) is not serialsession.NEED_DATA:
            if isinstance(ev, serialsession.Established):
                self.handshakes += 1
                self._next_hb = now
            elif isinstance(ev, serialsession.Refused):
                self.refused += 1
        if s.established and now >= self._next_hb and s.room() > 0:
            self._next_hb = now + self.hb_s * 1000
            s.send(sf.TYPE_HEARTBEAT, self.heartbeat())
        out = s.data_to_send(now)
        if out:
            self._tx += out
            if self.capture is not None:
                self.capture.append(out)
        if self._tx:
            del self._tx[:self.cable.write(bytes(self._tx[:65536]))]
        t = s.next_timer(mono_ms())
        waits = [0.25, max(0.0, (self._next_hb - now) / 1000) if s.established else 0.25]
        if t is not None:
            waits.append(t / 1000)
        if self._tx or (s.decoder.buffered and not data):
            waits.append(0.002)
        return max(0.0005, min(waits))


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
        self.rec_key = provision_recorder(self.ks, REC, SITE, officer="p-0421").hmac_key
        self.rec_path = tmp / "dev" / "rec-1"
        self.cfg = from_dict({
            "gateway": {"id": "gw-1", "site": SITE, "data_dir": str(tmp / "data")},
            "broker": {"url": broker.url}, "coap": {"listen": "127.0.0.1:0"},
            "commands": {"retry_s": 2, "wait_s": 8},
            "mavlink": {"endpoint": [{"name": "radio", "url": "udpin:127.0.0.1:0"}], "area": AREA,
                        "max_alt_m": 100, "ack_timeout_ms": 300},
            "drone": [{"id": "uav-1", "sysid": 1}],
            # baud: the bridge's idle-line timeout follows it (a pty ignores it); 3 Mbaud as in the recorder
            # tests
            "recorders": {"devices": [str(tmp / "dev" / "rec-*")], "scan_ms": 100, "baud": 3_000_000}})
        self.rec = RecorderLine(self.rec_path, REC, self.rec_key)
        self.probes = 0  # heartbeats the serial check sent
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
        await self.rec.start()
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
        await self.rec.stop()
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
        await self.serial_serving(deadline)
        assert self.errors.records == [], self.errors.records[:5]
        assert self.node_errors == [], self.node_errors[:5]

    async def serial_serving(self, deadline: float) -> None:
        """The recorder's port is open (or was reopened by the watcher), and a heartbeat the recorder sends
        now reaches the registry through the bridge and MQTT; if the garbage ended its session, the recorder
        says HELLO again (on the gateway's probe, or by itself: a refused one would wait 30 s, so it is
        restarted)."""
        bridge = self.gw.recorders.bridge
        path, rec = str(self.rec_path), self.rec
        self.probes += 1
        marker = f"probe-{self.probes}"
        sent = 0.0
        down_since = time.monotonic()

        def seen() -> str:
            port = bridge.ports.get(path)
            d = self.gw.registry.get(REC)
            return (f"recorder: port {'open' if port and not port.closed else 'closed'}"
                    f"{' (session up)' if port and port.session and port.session.established else ''}, "
                    f"bridge has {bridge.connected()}, recorder session {rec.session.state} "
                    f"(handshakes {rec.handshakes}, refused {rec.refused}, room {rec.session.room()}), "
                    f"registry {d and d.state} {d and d.info.get('x_task')}, waiting for {marker}")
        while True:
            port = bridge.ports.get(path)
            d = self.gw.registry.get(REC)
            if (sent and d is not None and d.state == "online" and d.info.get("x_task") == marker
                    and port is not None and not port.closed and bridge.by_device.get(REC) is port):
                break
            assert time.monotonic() < deadline, seen()
            # again every second: a heartbeat handled after it (the recorder's own, a late fuzz case) replaces
            # the registry's view of the last one
            if (time.monotonic() - sent > 1 and port is not None and not port.closed
                    and rec.session.room() > 0):
                rec.send(sf.TYPE_HEARTBEAT, rec.heartbeat(x_task=marker))
                sent = time.monotonic()
            if rec.session.established:
                down_since = time.monotonic()
            elif time.monotonic() - down_since > 5:
                rec.hello()
                down_since = time.monotonic()
            await asyncio.sleep(0.02)

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

    def golden_serial(self) -> list[bytes]:
        """What a recorder sends in its session (as simulators/recorder.py does), each as its frame type's
        byte and the payload: heartbeat, fix, signed event and result, catalogue, a signed clip offer and its
        two pieces (the clip is filed), a clip status."""
        now = int(time.time() * 1000)
        k = self.rec_key
        clip = bytes(range(256)) * 6
        sender = cliptransfer.ClipSender(clip, 1024, "fuzz-0001.mp4", 41, "video", "video/mp4", now - 60_000)
        manifest = sender.manifest.to_dict()
        manifest.update({"x_start": now - 60_000, "x_end": now})
        signing.sign(k, "up", manifest)
        evt = signing.sign(k, "evt", {"id": f"{REC}-1-1", "seq": 1, "ts": now, "kind": "mark", "sev": "info",
                                      "lat": 302500000, "lon": 1201500000})
        res = signing.sign(k, "res", messages.result("c0000000001", "done", ts=now, data={"shown": True}))
        loc = {"seq": 1, "ts": now, "lat": 302500000, "lon": 1201500000, "spd_cms": 120, "hdg_cd": 9000,
               "fix": 1, "sats": 9, "hdop": 90, "src": "gps"}
        entry = {"id": "fuzz-0001.mp4", "sha256": hashlib.sha256(clip).hexdigest(), "size": len(clip),
                 "start": now - 60_000, "end": now, "kind": "video", "mime": "video/mp4", "up": False,
                 "mark": False}
        frames = [(sf.TYPE_HEARTBEAT, self.rec.heartbeat()), (sf.TYPE_LOCATION, messages.encode("loc", loc)),
                  (sf.TYPE_EVENT, messages.encode("evt", evt)), (sf.TYPE_RESULT, messages.encode("res", res)),
                  (sf.TYPE_CATALOG, serialsession.encode_catalog({"v": 1, "part": 0, "parts": 1,
                                                                  "clips": [entry]})),
                  (sf.TYPE_CLIP_OFFER, canonical.dumpb(manifest)),
                  (sf.TYPE_CLIP_DATA, cliptransfer.encode_data(41, 0, clip[:1000])),
                  (sf.TYPE_CLIP_DATA, cliptransfer.encode_data(41, 1000, clip[1000:])),
                  (sf.TYPE_CLIP_DONE, cliptransfer.encode_status({"v": 1, "tid": 7, "id": "gohome", "have": 1,
                                                                  "state": "complete", "off": 100}))]
        return [bytes([t]) + p for t, p in frames]

    def raw_serial(self, captured: list[bytes]) -> list[bytes]:
        """Raw golden: the session's own authenticated frames as they went over the wire (split from what was
        captured), and frames no session made: a stranger's HELLO (it ends the gateway's session, so the
        recorder must say HELLO again), frames with wrong tags, a type version 1 does not define."""
        dec = sf.FrameDecoder(max_payload=sf.MAX_WIRE_PAYLOAD)
        dec.receive_data(b"".join(captured))
        out = []
        while (ev := dec.next_event()) is not sf.NEED_DATA:
            if isinstance(ev, sf.Frame):
                out.append(sf.encode_frame(ev.type, ev.seq, ev.payload, sf.MAX_WIRE_PAYLOAD))
        hs1 = {"hs": 1, "dev": REC, "v": [1], "mtu": 1024, "win": 64, "nr": "00" * 16, "fw": "x", "boot": 0,
               "hb_s": 30}
        unknown = bytearray(sf.encode_frame(sf.TYPE_HEARTBEAT, 5, b"{}" + bytes(4)))
        unknown[3] = 0x7E  # the type byte; header crc over bytes 2..7 again
        struct.pack_into(">H", unknown, 8, sf.crc16(bytes(unknown[2:8])))
        hello = serialsession.encode_hello(hs1)
        return out + [sf.encode_frame(sf.TYPE_HELLO, 0, hello, serialsession.MAX_HELLO),
                      sf.encode_frame(sf.TYPE_HEARTBEAT, 9, self.rec.heartbeat() + bytes(4)),
                      sf.encode_frame(sf.TYPE_ACK, 3, sf.encode_ack(3, 0xFF) + bytes(4)),
                      sf.encode_frame(sf.TYPE_NACK, 2, sf.encode_nack(2, sf.NACK_BAD_CRC) + bytes(4)),
                      bytes(unknown)]

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

    async def _rec_send(self, item: bytes, deadline: float) -> None:
        """One session case: the first byte picks the frame type (any a session may carry), the rest is the
        payload (cut to what the session carries); waits for room in the recorder's queue."""
        rec = self.rec
        t = item[0] if item else sf.TYPE_HEARTBEAT
        t = t if t in SENDABLE else SENDABLE[t % len(SENDABLE)]
        while rec.session.room() <= 0:
            assert time.monotonic() < deadline, f"the recorder's queue stayed full ({rec.session.state})"
            await asyncio.sleep(0.002)
        limit = (rec.session.mtu_eff if rec.session.established else rec.session.mtu) - serialsession.TAG_LEN
        rec.send(t, item[1:limit + 1])

    async def _rec_quiet(self, deadline: float, acked: bool = False) -> None:
        """Until the pty took every byte (and, with ``acked``, the gateway acknowledged every frame)."""
        rec = self.rec
        while rec.busy if acked else rec.unsent:
            assert time.monotonic() < deadline, f"the recorder line did not drain ({rec.session.state})"
            await asyncio.sleep(0.002)

    async def serial(self, count: int, seed: int, block: int = 10) -> int:
        """Half the cases raw bytes on the line (mutations of the session's captured frames and of frames no
        session made: bad CRCs, tags, lengths, garbage), half frames of the live session with mutated payloads
        (past the tag: the bridge's payload decoders and the evidence store); ``block`` of each in turn."""
        rec = self.rec
        deadline = time.monotonic() + 30 + count / 20
        golden = self.golden_serial()
        frames = inputs(golden, count - count // 2, seed + 1)
        rec.capture = []
        for _ in golden:  # inputs() yields the goldens first: sent intact, their wire bytes captured
            await self._rec_send(next(frames), deadline)
        await self._rec_quiet(deadline, acked=True)
        raws = inputs(self.raw_serial(rec.capture), count // 2, seed)
        rec.capture = None
        n = len(golden)
        while True:
            garbage = [next(raws, None) for _ in range(block)]
            chunk = [g for g in garbage if g is not None]
            if chunk:
                rec.inject(b"".join(chunk))
            sent = 0
            for item in frames:
                await self._rec_send(item, deadline)
                sent += 1
                if sent == block:
                    break
            n += len(chunk) + sent
            if not chunk and not sent:
                break
            await self._rec_quiet(deadline)
        await self._rec_quiet(deadline, acked=True)  # the gateway handled every frame (and the bytes before)
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
        self.current = "serial"
        self.counts["serial"] = await self.serial(count, seed)
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
