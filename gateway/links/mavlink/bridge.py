"""The drone bridge: MAVLink vehicles as Lookout devices, on MQTT and under the gateway's command path.

Theory of operation
-------------------
``async with DroneBridge(...) as bridge`` opens the endpoints of ``[mavlink]`` and runs three tasks: the ground
station HEARTBEAT (``heartbeat_hz``, signed per vehicle), the link watchdog and the periodic proxy heartbeat. The
gateway registers ``bridge.transport`` for devices whose transport is ``"drone"`` (set here for every vehicle).

Vehicles are the ``[[drone]]`` entries plus the key store's drone identities of this site (``lookout provision
drone``: id, key, ``meta.sysid``). Only they are bridged; other system ids are routed, never turned into devices.

The gateway is each drone's proxy on MQTT, in the same topics and payloads as any device (docs/PROTOCOL.md §19):
- link up (the first frame, or the first after a loss): a retained birth (kind ``drone``, a new ``bdseq`` per link
  session kept in ``data_dir/mavlink.json``), journaled; the autopilot is asked for its position rate
  (SET_MESSAGE_INTERVAL) and home position (REQUEST_MESSAGE);
- telemetry: ``loc`` and ``hb`` decimated per topic (``loc_hz``, ``status_hz``; the latest value always goes out,
  gateway/links/mavlink/decimate.py), and an ``hb`` at least every ``hb_s``;
- photos (CAMERA_IMAGE_CAPTURED) and autopilot emergencies (STATUSTEXT, severity CRITICAL or worse) as ``evt``,
  signed with the drone's key from the key store (purpose ``evt``); all STATUSTEXT go to the gateway log;
- link loss: no frame for ``link_timeout_ms`` -> a last ``hb`` with ``x_link: "lost"``, the retained death
  (``reason: "link-lost"``), a ``state`` journal entry; recovery when frames resume (a new birth).
The gateway's own subscription then feeds these into the registry like any node's, so one code path holds state.

Commands: the command service signs and stores the command and calls ``DroneTransport.send``; the bridge runs its
MAVLink steps (gateway/links/mavlink/actions.py, sender.py) and publishes the results as the drone's signed ``res``
(``accepted`` on MAV_RESULT_IN_PROGRESS with its progress, then ``done``/``failed``/``rejected`` with the MAV_RESULT
name in ``data.mav_result``). A command id seen before is not run again: its latest result is re-published.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from lookout.gateway.core.clock import now_ms
from lookout.gateway.core.commands import mac_hex
from lookout.gateway.core.config_mavlink import DroneConfig, MavlinkConfig
from lookout.gateway.core.registry import Device
from lookout.gateway.links.mavlink.actions import COMMANDS, Refused, mission_items, mode_spec, plan
from lookout.gateway.links.mavlink.actions import check as check_command
from lookout.gateway.links.mavlink.codec import MAV, SEVERITY_NAMES, Encoder, flavour
from lookout.gateway.links.mavlink.endpoints import make
from lookout.gateway.links.mavlink.router import Router
from lookout.gateway.links.mavlink.sender import CommandSender, MissionUploader, Outcome, Spec
from lookout.gateway.links.mavlink.signing import SigningClock, Verifier
from lookout.gateway.links.mavlink.tuning import Tuning
from lookout.gateway.links.mavlink.vehicle import HB, LOC, Vehicle, valid_position
from lookout.protocols import messages, topics
from lookout.protocols.errors import LocalProtocolError

log = logging.getLogger(__name__)
autopilot_log = logging.getLogger("lookout.drone")

Publish = Callable[[str, bytes, int, bool], None]  # (topic, payload, qos, retain): the gateway's MQTT link
STATUSTEXT_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
                     4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}
CAPS = COMMANDS


class BridgeError(Exception):
    """The bridge cannot start as configured (e.g. a signed drone without a key); the message says what to do."""


class DroneBridge:
    def __init__(self, cfg: MavlinkConfig, site: str, keystore: Any, registry: Any, journal: Any, publish: Publish,
                 *, metrics: Any = None, data_dir: Path | None = None, clock: Callable[[], int] = now_ms,
                 tuning: Tuning | None = None):
        self.cfg = cfg
        self.site = site
        self.keystore = keystore
        self.registry = registry
        self.journal = journal
        self.publish = publish
        self.clock = clock
        t = self.tuning = tuning or Tuning(ack_timeout_s=cfg.ack_timeout_ms / 1000)
        self._state_path = data_dir / "mavlink.json" if data_dir is not None else None
        self.signing_clock = SigningClock()
        self.verifier = Verifier(self.signing_clock)
        self.encoder = Encoder(cfg.system_id, cfg.component_id, self.signing_clock)
        self.vehicles: dict[str, Vehicle] = {}
        self.by_sysid: dict[int, Vehicle] = {}
        self.router = Router(cfg.system_id, self.verifier, self.by_sysid, self._on_vehicle, clock)
        self.sender = CommandSender(cfg.system_id, self.send_to, t)
        self.uploader = MissionUploader(cfg.system_id, self.send_to, t)
        self.transport = DroneTransport(self)
        self.metrics = metrics
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        self._results: dict[str, collections.OrderedDict[str, bytes]] = {}
        self._started_ms = 0
        self._photo_seq = 0
        self._mem_state: dict[str, int] = {}  # bdseq per drone when there is no data_dir (tests, bench)
        self.published = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._load_vehicles()
        for i, ec in enumerate(self.cfg.endpoints):
            self.router.add(make(ec, i, self.router.on_data, self.tuning))
        try:
            for ep in self.router.endpoints:
                await ep.open()
        except OSError as e:
            self._close_endpoints()
            raise BridgeError(f"MAVLink endpoint cannot be opened: {e}") from e
        if self.metrics is not None:
            from lookout.gateway.links.mavlink.metrics import BridgeCollector
            self.metrics.registry.register(BridgeCollector(self))
        self._started_ms = self.clock()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeats(), name="mavlink-heartbeat"),
                       loop.create_task(self._watchdog(), name="mavlink-watchdog"),
                       loop.create_task(self._status(), name="mavlink-status")]
        log.info("drone bridge: %d endpoint(s), %d drone(s): %s", len(self.router.endpoints), len(self.vehicles),
                 ", ".join(f"{v.id} (sysid {v.sysid}{', signed' if v.signed else ''})" for v in self.vehicles.values()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in [*self._tasks, *self._running.values(), *self._bg]:
            t.cancel()
        for t in [*self._tasks, *self._running.values(), *self._bg]:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # cancelled, or failed: we are stopping
                await t
        now = self.clock()
        for v in self.vehicles.values():
            if v.link == "up":
                self._death(v, "gateway-stopped", now)
        self._close_endpoints()

    def _close_endpoints(self) -> None:
        for ep in self.router.endpoints:
            ep.close()

    def _load_vehicles(self) -> None:
        """``[[drone]]`` entries, then key store drones of this site that the config does not name."""
        cfgs = list(self.cfg.drones)
        named = {d.id for d in cfgs} | {d.sysid for d in cfgs}
        for ident in self.keystore.list(kind="drone", site=self.site):
            sysid = ident.meta.get("sysid")
            if ident.device_id not in named and isinstance(sysid, int) and sysid not in named:
                cfgs.append(DroneConfig(ident.device_id, sysid))
        problems = []
        for d in cfgs:
            ident = self.keystore.get(d.id)
            key = ident.hmac_key if ident is not None and ident.kind == "drone" else None
            hint = f"lookout provision drone --id {d.id} --site {self.site} --sysid {d.sysid}"
            if d.signed and key is None:
                problems.append(f"drone {d.id}: signed = true but the key store has no drone key for it ({hint})")
                continue
            if ident is not None and ident.meta.get("sysid") not in (None, d.sysid):
                problems.append(f"drone {d.id}: [[drone]].sysid {d.sysid} but the key store has sysid "
                                f"{ident.meta.get('sysid')} ({hint} --force)")
                continue
            v = Vehicle(d, key, self.cfg.loc_hz, self.cfg.status_hz, self.tuning.tail_fraction)
            self.vehicles[v.id] = v
            self.by_sysid[v.sysid] = v
            if d.signed and key is not None:
                self.verifier.set_key(d.sysid, key)
            dev = self.registry.ensure(v.id, self.site, "drone")
            dev.transport = "drone"
        if problems:
            raise BridgeError("; ".join(problems))

    # -- sending ---------------------------------------------------------------------------------------------
    def send_to(self, sysid: int, msg: Any) -> None:
        """Pack ``msg`` for vehicle ``sysid`` (signed with its key if it is signed) and send it where it was last
        heard; ConnectionError when there is no way to it."""
        v = self.by_sysid.get(sysid)
        if v is None:
            raise ConnectionError(f"no vehicle with sysid {sysid}")
        route = v.route
        if route is None and v.home_endpoint is not None:
            route = (next(e for e in self.router.endpoints if e.name == v.home_endpoint), None)
        if route is None:
            raise ConnectionError(f"{v.id}: never heard on any link")
        ep, peer = route
        frame = self.encoder.pack(msg, ep.next_seq(), v.key if v.signed else None, ep.index)
        if not ep.send(frame, peer):
            raise ConnectionError(f"{v.id}: link {ep.name} is down")

    def _gcs_heartbeat(self) -> Any:
        return MAV.MAVLink_heartbeat_message(MAV.MAV_TYPE_GCS, MAV.MAV_AUTOPILOT_INVALID, 0, 0, MAV.MAV_STATE_ACTIVE, 3)

    async def _heartbeats(self) -> None:
        """Our HEARTBEAT at ``heartbeat_hz`` to every vehicle, signed with its key if it is signed: where it was
        last heard, or, not heard yet, on its configured endpoint or every vehicle link (a drone behind udpout,
        tcp or serial only starts talking once it hears a ground station)."""
        period = 1.0 / self.cfg.heartbeat_hz
        while True:
            for v in self.vehicles.values():
                hb = self._gcs_heartbeat()
                if v.route is not None:
                    with contextlib.suppress(ConnectionError):
                        self.send_to(v.sysid, hb)
                    continue
                for ep in self.router.endpoints:
                    if not ep.forward and ep.up and v.home_endpoint in (None, ep.name):
                        ep.send(self.encoder.pack(hb, ep.next_seq(), v.key if v.signed else None, ep.index))
            await asyncio.sleep(period)

    # -- receiving -------------------------------------------------------------------------------------------
    def _on_vehicle(self, v: Vehicle, m: Any, t: str, now: int) -> None:
        """One authenticated message from a vehicle (the router's fast path: keep it short)."""
        v.last_rx_ms = now
        if v.link != "up":
            self._link_up(v, now)
        topic = v.update(m, t, now)
        if topic is not None:
            self._offer(v, topic, now)
            return
        if t == "COMMAND_ACK":
            self.sender.on_ack(v.sysid, m)
        elif t in ("MISSION_REQUEST_INT", "MISSION_REQUEST", "MISSION_ACK"):
            self.uploader.on_message(v.sysid, m)
        elif t == "CAMERA_IMAGE_CAPTURED":
            self._photo(v, m, now)
        elif t == "STATUSTEXT":
            self._statustext(v, m, now)

    def _offer(self, v: Vehicle, topic: str, now: int) -> None:
        dec = v.dec[topic]
        if dec.offer(now):
            self._publish_topic(v, topic, now)
            return
        if topic not in v.timers:
            due = dec.due_ms()
            if due is not None:
                loop = asyncio.get_running_loop()
                v.timers[topic] = loop.call_later(max(0, due - now) / 1000, self._tail, v, topic)

    def _tail(self, v: Vehicle, topic: str) -> None:
        v.timers.pop(topic, None)
        now = self.clock()
        dec = v.dec[topic]
        if dec.flush(now):
            if v.link == "up":
                self._publish_topic(v, topic, now)
        elif dec.pending:
            self._offer_timer(v, topic, now)

    def _offer_timer(self, v: Vehicle, topic: str, now: int) -> None:
        due = v.dec[topic].due_ms()
        if due is not None and topic not in v.timers:
            v.timers[topic] = asyncio.get_running_loop().call_later(max(0, due - now) / 1000, self._tail, v, topic)

    def _publish_topic(self, v: Vehicle, topic: str, now: int) -> None:
        msg = v.loc_message(now) if topic == LOC else v.hb_message(now, self.cfg.hb_s)
        if msg is not None:
            self._send_mqtt(v, topic, self._encode(v, topic, msg))

    def _encode(self, v: Vehicle, kind: str, msg: dict[str, Any]) -> bytes:
        """The message as the contract allows it, or b"" (not published) when a vehicle's value breaks a rule:
        counted as ``invalid`` and logged, never raised into the link's receive path."""
        try:
            return messages.encode(kind, msg)
        except LocalProtocolError as e:
            v.dropped["invalid"] += 1
            log.warning("%s: %s not published: %s", v.id, kind, e)
            return b""

    def _send_mqtt(self, v: Vehicle, channel: str, payload: bytes, retain: bool = False) -> None:
        if not payload:
            return
        try:
            self.publish(topics.topic(self.site, v.id, channel), payload, topics.qos(channel), retain)
            self.published += 1
        except ConnectionError as e:
            log.debug("%s %s not published: %s", v.id, channel, e)

    def _photo(self, v: Vehicle, m: Any, now: int) -> None:
        if not v.new_photo(m.image_index):
            return
        ok = m.capture_result == 1
        url = _text(m.file_url)
        detail = (f"image {m.image_index}" + (f": {url}" if url else "")) if ok else f"capture {m.image_index} failed"
        evt: dict[str, Any] = {"kind": "photo" if ok else "photo_failed", "sev": "info", "detail": detail[:200],
                               "x_image": m.image_index, "x_alt_mm": m.alt, "x_rel_alt_mm": m.relative_alt}
        if (m.lat or m.lon) and valid_position(m.lat, m.lon):
            evt["lat"], evt["lon"] = m.lat, m.lon
        if url:
            evt["x_url"] = url[:200]
        self._event(v, evt, now)

    def _statustext(self, v: Vehicle, m: Any, now: int) -> None:
        text = _text(m.text)[:50]
        sev = m.severity
        autopilot_log.log(STATUSTEXT_LEVELS.get(sev, logging.INFO), "%s: [%s] %s", v.id,
                          SEVERITY_NAMES.get(sev, str(sev)).removeprefix("MAV_SEVERITY_"), text,
                          extra={"device": v.id})
        if sev <= MAV.MAV_SEVERITY_WARNING and text:
            v.last_text = text
            self._offer(v, HB, now)
        if sev <= MAV.MAV_SEVERITY_CRITICAL and text:
            self._event(v, {"kind": "autopilot", "sev": "critical", "detail": text}, now)

    def _event(self, v: Vehicle, body: dict[str, Any], now: int) -> None:
        if v.key is None:
            log.info("%s: %s event not published: no key in the key store to sign it", v.id, body["kind"])
            return
        seq = v.next_seq("evt")
        eid = f"{v.id}-{v.bdseq}-{seq}"
        msg = {"id": eid if len(eid) <= 48 else f"{v.id[:24]}-{v.bdseq}-{seq}", "seq": seq, "ts": now, **body}
        if v.pos is not None and "lat" not in msg and (v.pos[0] or v.pos[1]) and valid_position(*v.pos[:2]):
            msg["lat"], msg["lon"] = v.pos[0], v.pos[1]
        msg["mac"] = mac_hex(v.key, "evt", msg)
        self._send_mqtt(v, "evt", self._encode(v, "evt", msg))

    # -- link state ------------------------------------------------------------------------------------------
    def _link_up(self, v: Vehicle, now: int) -> None:
        was, lost_since = v.link, v.lost_since_ms
        v.link = "up"
        v.up_since_ms = now
        v.lost_since_ms = None
        v.bdseq = self._next_bdseq(v.id)
        v.new_session()
        ep = v.route[0].name if v.route is not None else "?"
        birth = messages.birth("drone", v.bdseq, flavour(v.autopilot), self.cfg.hb_s, ts=now, caps=CAPS,
                               site=self.site)
        self._send_mqtt(v, "state", messages.encode("birth", birth), retain=True)
        self._offer(v, HB, now)  # at once: the link is "ok" again in the same breath as the birth
        if was == "lost" and lost_since is not None:
            self.journal.append("state", f"drone {v.id} link restored after {(now - lost_since) / 1000:.1f} s",
                                device=v.id, ts=now, detail={"link": "up", "endpoint": ep, "sysid": v.sysid,
                                                             "bdseq": v.bdseq, "lost_ms": now - lost_since})
        else:
            self.journal.append("state", f"drone {v.id} link up (sysid {v.sysid} on {ep})", device=v.id, ts=now,
                                detail={"link": "up", "endpoint": ep, "sysid": v.sysid, "bdseq": v.bdseq})
        log.info("%s: MAVLink link up on %s (sysid %d, bdseq %d)", v.id, ep, v.sysid, v.bdseq)
        self._spawn(self._on_link_up(v))

    async def _on_link_up(self, v: Vehicle) -> None:
        """Ask for what we publish, at the rate we want it (MAVSDK: ask the autopilot before decimating)."""
        wanted = []
        if self.cfg.stream_hz:
            wanted.append(Spec(MAV.MAV_CMD_SET_MESSAGE_INTERVAL, MAV.MAVLINK_MSG_ID_GLOBAL_POSITION_INT,
                               1e6 / self.cfg.stream_hz))
        wanted.append(Spec(MAV.MAV_CMD_REQUEST_MESSAGE, MAV.MAVLINK_MSG_ID_HOME_POSITION))
        for spec in wanted:
            out = await self.sender.run(v.sysid, v.compid, spec)
            if not out.ok:
                log.info("%s: %s: %s %s", v.id, _cmd_name(spec.command), out.result, out.detail)

    def _link_lost(self, v: Vehicle, now: int) -> None:
        silent = now - (v.last_rx_ms or now)
        v.link = "lost"
        v.lost_since_ms = now
        for h in v.timers.values():
            h.cancel()
        v.timers.clear()
        self._send_mqtt(v, "hb", messages.encode("hb", v.hb_message(now, self.cfg.hb_s)))
        self._death(v, "link-lost", now)
        self.journal.append("state", f"drone {v.id} link lost: no MAVLink frame for {silent / 1000:.1f} s",
                            device=v.id, ts=now, detail={"link": "lost", "silent_ms": silent, "sysid": v.sysid,
                                                         "loss_pct": v.loss_pct, "bdseq": v.bdseq,
                                                         "timeout_ms": self.cfg.link_timeout_ms})
        log.warning("%s: MAVLink link lost (silent %d ms)", v.id, silent)

    def _death(self, v: Vehicle, reason: str, now: int) -> None:
        self._send_mqtt(v, "state", messages.encode("death", messages.death(v.bdseq, reason)), retain=True)

    async def _watchdog(self) -> None:
        timeout = self.cfg.link_timeout_ms
        while True:
            await asyncio.sleep(self.tuning.watchdog_s)
            now = self.clock()
            for v in self.vehicles.values():
                if v.link == "up" and v.last_rx_ms is not None and now - v.last_rx_ms > timeout:
                    self._link_lost(v, now)
                elif v.link == "unknown" and now - self._started_ms > timeout:
                    # never heard since we started: a retained birth from an earlier run must not say "online"
                    v.link = "lost"
                    v.lost_since_ms = now
                    v.bdseq = self._last_bdseq(v.id)
                    self._death(v, "no-link", now)

    async def _status(self) -> None:
        """A heartbeat per linked drone at least every ``hb_s`` (the registry's liveness deadline)."""
        while True:
            await asyncio.sleep(self.cfg.hb_s)
            now = self.clock()
            for v in self.vehicles.values():
                if v.link == "up":
                    self._offer(v, HB, now)

    def _next_bdseq(self, dev_id: str) -> int:
        state = self._read_state()
        bd = (int(state.get(dev_id, -1)) + 1) % 2 ** 31
        state[dev_id] = bd
        if self._state_path is not None:
            tmp = self._state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"bdseq": state}))
            tmp.replace(self._state_path)
        else:
            self._mem_state = state
        return bd

    def _last_bdseq(self, dev_id: str) -> int:
        return int(self._read_state().get(dev_id, 0))

    def _read_state(self) -> dict[str, int]:
        if self._state_path is None:
            return dict(self._mem_state)
        try:
            return dict(json.loads(self._state_path.read_text()).get("bdseq", {}))
        except (OSError, ValueError, AttributeError):
            return {}

    # -- commands --------------------------------------------------------------------------------------------
    def check(self, device: Device, name: str, args: dict[str, Any]) -> tuple[str, str] | None:
        return check_command(name, args, self.cfg)

    async def start_command(self, v: Vehicle, cmd: dict[str, Any]) -> None:
        cid = cmd["id"]
        cache = self._results.setdefault(v.id, collections.OrderedDict())
        if cid in cache:  # a re-send (retry, or after the link came back) of a command that ran: answer again
            self._send_mqtt(v, "res", cache[cid])
            return
        if cid in self._running:
            return
        if v.link != "up":
            raise ConnectionError(f"{v.id}: MAVLink link {v.link}")
        task = asyncio.get_running_loop().create_task(self._execute(v, cmd), name=f"drone-{cid}")
        self._running[cid] = task
        task.add_done_callback(lambda _t: self._running.pop(cid, None))
        # the task runs up to its first wait (the first COMMAND_* or MISSION_COUNT is then out) before we return:
        # "sent" means the bytes left, as for the MQTT transport
        await asyncio.sleep(0)

    async def _execute(self, v: Vehicle, cmd: dict[str, Any]) -> None:
        cid, name, args = cmd["id"], cmd["name"], cmd["args"]
        home = (v.home[0], v.home[1], v.home[2] // 1000) if v.home else None
        self._photo_seq += 1
        try:
            steps = plan(name, args, self.cfg, home, self._photo_seq)
        except Refused as e:
            self._result(v, cid, "rejected", e.code, e.detail)
            return
        out: Outcome | None = None
        data: dict[str, Any] = {}
        for i, step in enumerate(steps):
            if step.kind == "mission":
                items = mission_items(v.sysid, v.compid, step.points)
                out = await self.uploader.upload(v.sysid, v.compid, items)
                if out.ok and i + 1 < len(steps):
                    self._result(v, cid, "accepted", None, f"mission of {len(items) - 1} items uploaded",
                                 {"phase": "uploaded", "items": len(items) - 1, "mav_result": out.mav_result})
                data["items"] = len(items) - 1
            else:
                try:
                    spec = step.spec if step.kind == "cmd" else mode_spec(v.autopilot, step.mode or "")
                except Refused as e:
                    self._result(v, cid, "rejected", e.code, e.detail)
                    return
                assert spec is not None
                out = await self.sender.run(v.sysid, v.compid, spec, self._progress(v, cid, step.what))
            if not out.ok:
                break
        assert out is not None
        if out.mav_result:
            data["mav_result"] = out.mav_result
        if out.attempts > 1:
            data["attempts"] = out.attempts
        if out.ok:
            self._result(v, cid, "done", None, steps[-1].what, data)
        else:
            status, code = _final(out)
            self._result(v, cid, status, code, (out.detail or out.result)[:200], data)

    def _progress(self, v: Vehicle, cid: str, what: str) -> Callable[[int | None], None]:
        def report(p: int | None) -> None:
            data: dict[str, Any] = {"phase": "in_progress", "mav_result": "MAV_RESULT_IN_PROGRESS"}
            if p is not None:
                data["progress"] = p
            self._result(v, cid, "accepted", None, f"{what} in progress" + (f" ({p} %)" if p is not None else ""),
                         data)
        return report

    def _result(self, v: Vehicle, cid: str, status: str, code: str | None, detail: str | None,
                data: dict[str, Any] | None = None) -> None:
        msg = messages.result(cid, status, ts=self.clock(), detail=detail, code=code, data=data or None,
                              seq=v.next_seq("res"))
        if v.key is not None:
            msg["mac"] = mac_hex(v.key, "res", msg)
        payload = messages.encode("res", msg)
        if messages.is_final(status):
            cache = self._results.setdefault(v.id, collections.OrderedDict())
            cache[cid] = payload
            if len(cache) > self.tuning.results_kept:
                cache.popitem(last=False)
        self._send_mqtt(v, "res", payload)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    # -- views -----------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Links and vehicles as ``lookout drone links`` and the metrics show them."""
        return {"links": self.router.stats(),
                "drones": [{"id": v.id, "sysid": v.sysid, "signed": v.signed, "link": v.link,
                            "endpoint": v.route[0].name if v.route else None, "received": v.received, "lost": v.lost,
                            "loss_pct": v.loss_pct, "dropped": dict(v.dropped), "mode": v.mode, "armed": v.armed,
                            "bat_pct": v.bat_pct} for v in self.vehicles.values()],
                "unknown_sysids": dict(self.router.unknown)}


class DroneTransport:
    """The command service's transport for ``kind = "drone"`` devices (registered as ``"drone"``)."""

    def __init__(self, bridge: DroneBridge):
        self.bridge = bridge

    def check(self, device: Device, name: str, args: dict[str, Any]) -> tuple[str, str] | None:
        """Refusal (code, detail) before anything is stored as sent: unknown command, bad args, geofence."""
        return self.bridge.check(device, name, args)

    async def send(self, device: Device, wire: bytes, cmd: dict[str, Any]) -> None:
        v = self.bridge.vehicles.get(device.id)
        if v is None:
            raise ConnectionError(f"{device.id} is not a drone of this bridge")
        await self.bridge.start_command(v, cmd)


def _final(out: Outcome) -> tuple[str, str]:
    """An unsuccessful outcome -> (res status, code): the vehicle refusing is ``rejected``, anything else
    ``failed`` (codes are the MAV_RESULT / MAV_MISSION_RESULT suffix, lower case)."""
    if out.result == "timeout":
        return "failed", "no_ack" if out.mav_result is None else "timeout"
    if out.result == "no_route":
        return "failed", "no_route"
    if out.result in ("denied", "temporarily_rejected", "unsupported", "command_long_only", "command_int_only"):
        return "rejected", out.result
    return "failed", out.result[:24]


def _text(raw: Any) -> str:
    """MAVLink char[] text (bytes or str) as printable text: control characters dropped, NULs trimmed."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")
    return "".join(c for c in str(raw) if c >= " " and c != "\x7f").strip()


def _cmd_name(cmd: int) -> str:
    e = MAV.enums["MAV_CMD"].get(cmd)
    return e.name if e is not None else str(cmd)


__all__ = ["BridgeError", "DroneBridge", "DroneTransport"]
