"""Recorders in the running gateway: the recorder bridge's host, the command transport for kind ``recorder``,
clip announcements and retention.

Theory of operation
-------------------
gateway/links/recorder.py moves frames; this module decides what they mean for the gateway, as the recorder's
*proxy* on MQTT (docs/PROTOCOL.md §20, "The recorder on MQTT"):

- a session coming up publishes the recorder's retained **birth** on ``lookout/v1/<site>/<rec>/state`` (kind
  ``recorder``, ``bdseq`` = the boot counter from its HELLO, its ``hb_s``, its commands as ``caps``, its officer as
  ``x_officer``); the port closing or the session timing out publishes its **death**. Heartbeats and fixes go out
  unchanged on ``hb``/``loc``; events and results (signed by the recorder itself) on ``evt``/``res``. So the
  registry, the journal and the command path treat a recorder exactly like a node, through the gateway's own
  subscription. Births and deaths are not signed (no device's are); the recorder's identity behind them was
  proved by its HELLO MAC;
- commands: ``RecorderTransport`` is registered for ``Device.transport == "recorder"``: the signed command bytes
  go to the recorder's session; ``play_voice`` first pushes the audio clip it names (from the gateway's audio
  store) over the link, unless the recorder has it;
- clips: offers and pieces go to the evidence store (gateway/clips/store.py ``recorder_offer``/``recorder_piece``),
  catalogues to custody (``recorded``); a filed clip is announced on the **gateway's** own ``evt`` topic (kind
  ``clip_stored``, with ``evidence: ["sha256:<hex>"]``), signed with the gateway's key when the key store holds
  one (``lookout provision gateway``), since it is the gateway's statement that the bytes matched;
- retention: every hour ``Custody.sweep`` removes the bytes of clips past ``retention_days`` that are not held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from lookout.gateway.core.commands import mac_hex
from lookout.gateway.core.registry import Device
from lookout.gateway.links.recorder import RecorderBridge, RecorderWatcher
from lookout.protocols import messages, topics

log = logging.getLogger("lookout.recorders")

COMMANDS = ("record_start", "record_stop", "mark", "dispatch", "clear", "play_voice", "status")
SWEEP_S = 3600.0
MAX_SECURITY = 10  # journaled refusals per port before only powers of two are (a flood cannot fill the journal)


class RecorderTransport:
    """Commands to serial recorders: returns when the recorder acknowledged the COMMAND frame."""

    def __init__(self, svc: RecorderService):
        self.svc = svc

    async def send(self, device: Device, wire: bytes, cmd: dict[str, Any]) -> None:
        if cmd.get("name") == "play_voice":
            await self.svc.push_voice(device.id, cmd.get("args") or {})
        await self.svc.bridge.send_command(device.id, wire)
        self.svc.gw.metrics.messages_out.labels("cmd").inc()


class RecorderService:
    """``async with RecorderService(gateway)``: the bridge, the hot-plug watcher and the retention sweep."""

    def __init__(self, gw: Any):
        self.gw = gw
        cfg = gw.cfg
        rc = cfg.recorders
        self.site = cfg.site
        self.gateway_id = cfg.gateway_id
        self.bridge = RecorderBridge(self, baud=rc.baud, mtu=rc.mtu, window=rc.window, officer_of=self._officer_of)
        self.watcher = RecorderWatcher(self.bridge, rc.devices, rc.scan_ms)
        self.boots: dict[str, int] = {}
        self._refusals: dict[str, int] = {}
        self._evt_seq = 0
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> RecorderService:
        gw = self.gw
        gw.commands.register_transport("recorder", RecorderTransport(self))
        gw.clipstore.on_recording = self.announce
        self.watcher.scan()  # recorders already docked are opened before the service reports ready
        self._tasks = [gw.spawn(self.watcher.run(), name="recorder-watch"),
                       gw.spawn(self._sweep_loop(), name="recorder-retention")]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.bridge.close()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                gone = self.gw.clipstore.custody.sweep()
                if gone:
                    log.info("retention removed %d recorder clip(s)", len(gone))
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(SWEEP_S)

    # -- host of the bridge -----------------------------------------------------------------------------------
    def key_for(self, device_id: str) -> bytes | None:
        ident = self.gw.keystore.get(device_id)
        if ident is None or ident.kind != "recorder" or ident.site != self.site:
            return None
        return bytes(ident.hmac_key)

    def _officer_of(self, device_id: str, claimed: str | None) -> str | None:
        """The officer the recorder is issued to (key store), else the one signed in on it (its HELLO)."""
        ident = self.gw.keystore.get(device_id)
        assigned = ident.meta.get("officer") if ident is not None else None
        return assigned if isinstance(assigned, str) and assigned else claimed

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        link = self.gw.link
        if link is None:
            log.warning("recorder message for %s dropped: gateway link not open", topic)
            return
        link.publish_nowait(topic, payload, qos, retain)  # paho keeps QoS 1 messages across a broker outage

    def online(self, device_id: str, info: dict[str, Any], port: str) -> None:
        reg = self.gw.registry
        dev = reg.ensure(device_id, self.site, "recorder")
        dev.transport = "recorder"
        boot = int(info.get("boot") or 0)
        self.boots[device_id] = boot
        birth = messages.birth("recorder", boot, str(info.get("fw") or "?")[:32], int(info.get("hb_s") or 30),
                               ts=self.gw.clock(), caps=COMMANDS, site=self.site)
        if info.get("officer"):
            birth["x_officer"] = info["officer"]
        birth["x_port"] = port[-64:]
        self.publish(topics.topic(self.site, device_id, "state"), messages.encode("birth", birth), 1, True)
        log.info("recorder %s online on %s (boot %d, officer %s)", device_id, port, boot, info.get("officer"))

    def offline(self, device_id: str, reason: str) -> None:
        death = messages.death(self.boots.get(device_id, 0), reason[:200])
        self.publish(topics.topic(self.site, device_id, "state"), messages.encode("death", death), 1, True)
        log.info("recorder %s offline: %s", device_id, reason)

    def offer(self, device_id: str, payload: bytes, officer: str | None) -> dict[str, Any]:
        return self.gw.clipstore.recorder_offer(self.site, device_id, payload, officer)  # type: ignore[no-any-return]

    def piece(self, device_id: str, tid: int, offset: int, data: Any) -> dict[str, Any] | None:
        return self.gw.clipstore.recorder_piece(device_id, tid, offset, data)  # type: ignore[no-any-return]

    def catalog(self, device_id: str, clips: list[dict[str, Any]], officer: str | None) -> None:
        for c in clips:
            self.gw.clipstore.custody.recorded(self.site, device_id, c, officer, "catalog")

    def security(self, device_id: str | None, code: str, detail: str, port: str) -> None:
        n = self._refusals[port] = self._refusals.get(port, 0) + 1
        log.warning("recorder session on %s refused (%s): %s: %s", port, device_id, code, detail)
        if n <= MAX_SECURITY or n & (n - 1) == 0:
            self.gw.journal.append("security", f"recorder session on {port} refused: {code}", device=device_id,
                                   detail={"code": code, "why": detail[:200], "port": port, "refusals": n})

    # -- voice messages and announcements ---------------------------------------------------------------------
    async def push_voice(self, device_id: str, args: dict[str, Any]) -> None:
        clip = str(args.get("clip") or "")
        data = self.gw.clipdist.audio.read(clip, args.get("sha256"))
        if data is None:
            raise LookupError(f"voice clip {clip!r} is not in the gateway's audio store")
        await self.bridge.push_clip(device_id, clip, data, "audio/wav")

    def announce(self, info: dict[str, Any]) -> None:
        """A recorder clip was filed: tell MQTT (the gateway's own ``evt``), with the evidence reference."""
        sha = info.get("sha256")
        if not sha:
            return
        self._evt_seq += 1
        evt: dict[str, Any] = {"id": "clip-" + sha[:40], "seq": self._evt_seq, "ts": self.gw.clock(),
                               "kind": "clip_stored", "sev": "info", "evidence": ["sha256:" + sha],
                               "detail": f"recorder {info.get('device')} clip {info.get('clip')} "
                                         f"({info.get('size')} B) verified and filed"[:200],
                               "x_recorder": info.get("device"), "x_clip": info.get("clip"),
                               "x_size": info.get("size"), "x_start": info.get("start_ms"),
                               "x_end": info.get("end_ms"), "x_hold": bool(info.get("hold"))}
        if info.get("officer"):
            evt["x_officer"] = info["officer"]
        t = info.get("track")
        if isinstance(t, dict):
            evt["lat"], evt["lon"] = t["lat1"], t["lon1"]
        evt = {k: v for k, v in evt.items() if v is not None}
        me = self.gw.keystore.get(self.gateway_id)
        if me is not None:
            evt["mac"] = mac_hex(me.hmac_key, "evt", evt)
        self.publish(topics.topic(self.site, self.gateway_id, "evt"), messages.encode("evt", evt), 1, False)
        linkage = getattr(self.gw, "linkage", None)
        if linkage is not None:  # the clip may be an open incident's evidence (and close it)
            linkage.on_evidence(info)


__all__ = ["COMMANDS", "RecorderService", "RecorderTransport"]
