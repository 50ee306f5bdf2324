"""A simulated body-worn recorder (执法记录仪) on a pseudo-terminal, speaking the recorder link protocol.

Theory of operation
-------------------
``SimRecorder`` is the device end of docs/PROTOCOL.md §20 over ``serialline.PtyCable`` and two
``serialline.PacedLine`` directions (paced, delayed, faults injected). It runs as one asyncio task: bytes that
have "arrived" go into its ``protocols.serialsession`` (role recorder), the events are handled, and frames are
pulled from the session only while the transmit FIFO has room, so the line is never faster than its baud rate.

What it does, like a real recorder:
- says HELLO (its key proves who it is) whenever the cable is plugged, it boots, or the gateway asks;
- sends a heartbeat every ``hb_s`` and on every status change (``state`` idle / recording / dispatched,
  battery, free storage, clips waiting for upload) and a GPS fix every ``loc_s`` from an officer walking a
  track (``OfficerWalk``);
- keeps its recordings as files under ``root/clips`` (the bytes, and a JSON sidecar with the SHA-256 it
  computed when it closed the file, start/end time, a track summary and the evidence mark), sends its catalogue
  after every handshake, and uploads each clip not yet confirmed, oldest first: CLIP_OFFER with a manifest
  signed with its key (purpose ``up``), then pieces from the gateway's confirmed offset
  (``serialsession.ClipPush``). A clip is marked uploaded only when the gateway says ``complete``;
- runs commands (``record_start``, ``record_stop``, ``mark``, ``dispatch``, ``clear``, ``play_voice``,
  ``status``) after ``signing.check_command`` (MAC with its key, target, counter, expiry), answering
  ``accepted`` then ``done``/``failed`` results signed with its key; a repeated command id gets the cached
  result; voice clips arrive from the gateway as CLIP_OFFER/CLIP_DATA before ``play_voice``;
- survives ``power_cycle()`` (boot counter + 1, files and upload flags kept) and ``unplug()``/``plug()``.

State that must survive a power loss (boot counter, last command counter, next transfer id) lives in
``root/state.json``. Times on the wire are Unix ms from ``wall()``; the line and the session use monotonic ms.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookout.protocols import canonical, cliptransfer, messages, serialsession, signing
from lookout.protocols import serialframe as sf
from lookout.protocols.errors import AuthError, MessageError, TransferError
from lookout.simulators.serialline import LineConfig, PacedLine, PtyCable

log = logging.getLogger("lookout.sim.recorder")

FIFO_BYTES = 4096  # a UART transmit FIFO plus the driver's buffer (Linux serial drivers keep 4 KB)
VIDEO_KBPS = 4000  # a 1080p body-cam stream (the size of a recording that ran for some seconds)
CATALOG_PER_FRAME = 4  # entries per CATALOG frame (~200 bytes each, a 1024-byte frame)
COMMANDS = ("record_start", "record_stop", "mark", "dispatch", "clear", "play_voice", "status")
BUSY_STATES = ("recording", "dispatched")


def mono_ms() -> int:
    return int(time.monotonic() * 1000)


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class OfficerWalk:
    """An officer on foot: ~1.4 m/s, heading drifting a few degrees per fix; or, once ``head_to`` gave a
    destination (the place a dispatch order named), straight there at ``speed_cms`` and standing still on
    arrival. Coordinates in degE7 (WGS-84)."""

    lat: int = 301234560  # 30.123456 N (a reservoir shore)
    lon: int = 1201234560  # 120.123456 E
    speed_cms: int = 140
    heading_cd: int = 9000
    seed: int = 1
    target: tuple[int, int] | None = None

    def head_to(self, lat: int, lon: int, speed_cms: int | None = None) -> None:
        self.target = (lat, lon)
        if speed_cms is not None:
            self.speed_cms = speed_cms

    def distance_m(self, lat: int, lon: int) -> float:
        dn = (lat - self.lat) / 1e7 * 111320
        de = (lon - self.lon) / 1e7 * 111320 * math.cos(math.radians(self.lat / 1e7))
        return math.hypot(dn, de)

    def step(self, dt_s: float) -> None:
        import random

        if self.target is not None:
            tl, to = self.target
            left = self.distance_m(tl, to)
            d = self.speed_cms / 100 * dt_s
            if left <= d:
                self.lat, self.lon = tl, to
                return
            self.heading_cd = round(math.degrees(math.atan2(
                (to - self.lon) * math.cos(math.radians(self.lat / 1e7)), tl - self.lat)) * 100) % 36000
            self.lat += round((tl - self.lat) * d / left)
            self.lon += round((to - self.lon) * d / left)
            return
        r = random.Random(self.seed + self.lat + self.lon)
        self.heading_cd = (self.heading_cd + r.randint(-1500, 1500)) % 36000
        d = self.speed_cms / 100 * dt_s
        h = math.radians(self.heading_cd / 100)
        self.lat += int(d * math.cos(h) / 111320 * 1e7)
        self.lon += int(d * math.sin(h) / (111320 * math.cos(math.radians(self.lat / 1e7))) * 1e7)


def clip_bytes(size: int, seed: str) -> bytes:
    """Deterministic 'video' of ``size`` bytes (SHA-256 in counter mode: incompressible, reproducible)."""
    out = bytearray()
    i = 0
    s = seed.encode()
    while len(out) < size:
        out += hashlib.sha256(s + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:size])


class SimRecorder:
    """One simulated recorder. ``await start()`` plugs the cable and runs; ``await stop()`` unplugs and stops."""

    def __init__(self, device_id: str, key: bytes, root: str | Path, device_path: str | Path,
                 line: LineConfig | None = None, *, officer: str | None = None, hb_s: int = 30, loc_s: int = 5,
                 mtu: int = 1024, win: int | None = None, fw: str = "bwc-sim-1.0", chunk: int = 4096,
                 walk: OfficerWalk | None = None, wall: Callable[[], int] = wall_ms,
                 piece_len: int | None = None):
        self.id = device_id
        self.key = key
        self.root = Path(root)
        self.clips_dir = self.root / "clips"
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        self.cable = PtyCable(device_path)
        self.line = line or LineConfig()
        self.officer = officer
        self.hb_s, self.loc_s, self.mtu, self.win, self.fw, self.chunk = hb_s, loc_s, mtu, win, fw, chunk
        self.walk = walk or OfficerWalk()
        self.wall = wall
        self.fixed_piece = piece_len  # bench: fixed block size (the stop-and-wait contrast)
        self.state_path = self.root / "state.json"
        self.persist = self._load_state()
        self.state = "idle"
        self.bat_pct = 87
        self.dispatch: dict[str, Any] | None = None
        self.recording: dict[str, Any] | None = None
        self.voice: dict[str, tuple[str, bytes]] = {}
        self.played: list[str] = []
        self.results: dict[str, list[bytes]] = {}  # command id -> signed results sent (a repeat gets them again)
        self.commands_run: list[dict[str, Any]] = []
        self.session: serialsession.SerialSession | None = None
        self.push: serialsession.ClipPush | None = None
        self.push_clip: str | None = None
        self.push_started_ms = 0
        self.uploads: list[dict[str, Any]] = []  # finished uploads: clip, bytes, resent, duration
        self._incoming: cliptransfer.ClipReceiver | None = None
        self._up = PacedLine(self.line, 0)
        self._down = PacedLine(self.line, 1)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._seq = {"hb": 0, "loc": 0, "evt": 0}
        self._next_hb = 0
        self._next_loc = 0
        self._retry_upload_at = 0
        self._status_dirty = False
        self._started = mono_ms()
        self._pending_out = b""
        self._last_rx = 0.0
        self._idle_s = 0.02 + 2 * (self.mtu + sf.OVERHEAD) / self.line.bytes_per_s
        self.established = asyncio.Event()
        self.refused: list[str] = []

    # -- persistence ------------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            d = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            d = {}
        return {"boot": int(d.get("boot", 0)), "ctr": int(d.get("ctr", 0)), "tid": int(d.get("tid", 1)),
                "evt": int(d.get("evt", 0))}

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.persist))
        tmp.replace(self.state_path)

    def clips(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.clips_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda c: (c["start"], c["id"]))

    def clip(self, clip_id: str) -> dict[str, Any] | None:
        p = self.clips_dir / f"{clip_id}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        p = self.clips_dir / f"{meta['id']}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(p)

    def record_clip(self, size: int, duration_s: int = 60, mark: bool = False, end_ms: int | None = None) -> str:
        """A finished recording of ``size`` bytes (closed now): hashed at the source, queued for upload."""
        end = end_ms if end_ms is not None else self.wall()
        start = end - duration_s * 1000
        clip_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(start / 1000)) + f"-{self.persist['tid']:04d}.mp4"
        data = clip_bytes(size, f"{self.id}/{clip_id}")
        (self.clips_dir / f"{clip_id}.bin").write_bytes(data)
        lat0, lon0 = self.walk.lat, self.walk.lon
        meta = {"id": clip_id, "sha256": hashlib.sha256(data).hexdigest(), "size": size, "start": start,
                "end": end, "kind": "video", "mime": "video/mp4", "up": False, "mark": mark,
                "track": [lat0, lon0, self.walk.lat, self.walk.lon, max(1, duration_s // max(1, self.loc_s))],
                "tid": self._next_tid(), "officer": self.officer}
        self._write_meta(meta)
        self._status_dirty = True
        self._send_catalog([meta])
        self._wake.set()
        return clip_id

    def _next_tid(self) -> int:
        t = self.persist["tid"]
        self.persist["tid"] = t + 1
        self._save_state()
        return t

    # -- lifecycle --------------------------------------------------------------------------------------------
    def _new_session(self) -> serialsession.SerialSession:
        return serialsession.SerialSession(serialsession.RECORDER, self.id, key=self.key, rand=os.urandom,
                                           mtu=self.mtu, win=self.win, fw=self.fw, boot=self.persist["boot"],
                                           hb_s=self.hb_s, officer=self.officer)

    async def start(self) -> None:
        self.persist["boot"] += 1
        self._save_state()
        self._running = True
        self.plug()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-{self.id}")

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.unplug()

    async def __aenter__(self) -> SimRecorder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def plug(self) -> None:
        """Cable in: a fresh pty at the device path, a new handshake."""
        self.cable.plug()
        loop = asyncio.get_running_loop()
        assert self.cable.master is not None
        loop.add_reader(self.cable.master, self._readable)
        self._up.clear()
        self._down.clear()
        self._up.cut = self._down.cut = False
        self.session = self._new_session()
        self.session.start(mono_ms())
        if self.push is not None:  # an upload cut short goes on over the new session (offered again)
            self.push.session = self.session
        self.established.clear()
        self._wake.set()

    def unplug(self) -> None:
        """Cable out: the device vanishes from the gateway; our session ends."""
        if self.cable.master is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.cable.master)
            except RuntimeError:
                pass
        self.cable.unplug()
        if self.session is not None:
            self.session.close("unplugged")
            self._drain_events()
        self._up.clear()
        self._down.clear()
        self._pending_out = b""
        self.established.clear()

    def cut_line(self, cut: bool = True) -> None:
        """A radio link that goes silent (out of range) without the device vanishing."""
        self._up.cut = self._down.cut = cut

    async def power_cycle(self) -> None:
        """Battery pulled and put back: RAM state gone, files and ``state.json`` kept, boot counter + 1."""
        await self.stop()
        self.persist = self._load_state()
        self.push = None
        self.push_clip = None
        self.recording = None
        self.state = "idle"
        self.results.clear()
        await self.start()

    # -- the loop ---------------------------------------------------------------------------------------------
    def _readable(self) -> None:
        data = self.cable.read()
        if data:
            self._down.push(data, time.monotonic())
        self._wake.set()

    async def _run(self) -> None:
        try:
            while self._running:
                delay = self._step()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a simulator bug must be loud, not a silent dead device
            log.exception("simulated recorder %s failed", self.id)
            raise

    def _step(self) -> float:
        now_s = time.monotonic()
        now = int(now_s * 1000)
        s = self.session
        if s is None or not self.cable.plugged:
            return 0.2
        data = self._down.pop(now_s)
        if data:
            s.receive_data(data, now)
            self._last_rx = now_s
        elif s.decoder.buffered and now_s - self._last_rx > self._idle_s:
            s.line_idle(now)  # the UART's idle-line timeout: two frame times of silence
        self._drain_events()
        self._timers(now)
        for _ in range(64):  # fill the transmit FIFO: a piece is made only when the line can take it
            if self.push is not None:
                self._pump()
            room = FIFO_BYTES - self._up.backlog(now_s)
            out = s.data_to_send(now, limit=max(0, room))
            if not out:
                break
            self._up.push(out, now_s)
        arrived = self._pending_out + self._up.pop(now_s)
        if arrived:
            n = self.cable.write(arrived)
            self._pending_out = arrived[n:][-65536:]
        # when to look again
        waits = [0.25]
        t = s.next_timer(now)
        if t is not None:
            waits.append(t / 1000)
        for line in (self._up, self._down):
            a = line.next_arrival()
            if a is not None:
                waits.append(a - now_s)
        if self._up.backlog(now_s) and (self.push is not None or s.in_flight):
            waits.append(max(0.001, (FIFO_BYTES // 2) / self.line.bytes_per_s))
        if self._pending_out:
            waits.append(0.005)
        waits.append(max(0.0, (min(self._next_hb, self._next_loc) - now) / 1000))
        return max(0.0005, min(waits))

    def _pump(self) -> None:
        if self.push is None:
            return
        if self.fixed_piece is not None and self.session is not None:
            self.session.piece_len = lambda: self.fixed_piece  # type: ignore[method-assign]
        self.push.pump()

    # -- events -----------------------------------------------------------------------------------------------
    def _drain_events(self) -> None:
        s = self.session
        if s is None:
            return
        while True:
            ev = s.next_event()
            if ev is serialsession.NEED_DATA:
                return
            if isinstance(ev, serialsession.Established):
                self.established.set()
                self._next_hb = 0  # a status at once
                self._send_catalog(self.clips())
                if self.push is not None:
                    self.push.on_session()
            elif isinstance(ev, serialsession.Received):
                self._on_frame(ev)
            elif isinstance(ev, serialsession.Acked):
                if isinstance(ev.ref, tuple) and self.push is not None:
                    self.push.on_acked(ev.ref)
            elif isinstance(ev, serialsession.Refused):
                self.refused.append(ev.code)
                log.warning("recorder %s: gateway refused the session: %s", self.id, ev.code)
            elif isinstance(ev, serialsession.Lost):
                self.established.clear()

    def _on_frame(self, ev: serialsession.Received) -> None:
        if ev.type == sf.TYPE_COMMAND:
            self._on_command(ev.payload)
        elif ev.type == sf.TYPE_CLIP_DONE:
            try:
                st = cliptransfer.decode_status(ev.payload)
            except TransferError as e:
                log.warning("recorder %s: bad clip status: %s", self.id, e)
                return
            self._on_status(st)
        elif ev.type == sf.TYPE_CLIP_OFFER:
            self._on_voice_offer(ev.payload)
        elif ev.type == sf.TYPE_CLIP_DATA:
            self._on_voice_piece(ev.payload)

    # -- uploads ----------------------------------------------------------------------------------------------
    def _timers(self, now: int) -> None:
        s = self.session
        if s is None or not s.established:
            return
        if now >= self._next_hb or self._status_dirty:
            self._status_dirty = False
            self._next_hb = now + self.hb_s * 1000
            self._send(sf.TYPE_HEARTBEAT, messages.encode("hb", self.heartbeat()))
        if now >= self._next_loc:
            if self._next_loc:
                self.walk.step((now - self._next_loc) / 1000 + self.loc_s)
            self._next_loc = now + self.loc_s * 1000
            self._seq["loc"] += 1
            self._send(sf.TYPE_LOCATION, messages.encode("loc", {
                "seq": self._seq["loc"], "ts": self.wall(), "lat": self.walk.lat, "lon": self.walk.lon,
                "spd_cms": self.walk.speed_cms, "hdg_cd": self.walk.heading_cd, "fix": 1, "sats": 9,
                "hdop": 90, "src": "gps"}))
        if self.push is None and now >= self._retry_upload_at:
            self._next_upload(now)

    def heartbeat(self) -> dict[str, Any]:
        self._seq["hb"] += 1
        pending = [c for c in self.clips() if not c["up"]]
        free = 32 * 1024 - sum(c["size"] for c in self.clips()) // (1024 * 1024)
        hb = {"seq": self._seq["hb"], "ts": self.wall(), "up_s": (mono_ms() - self._started) // 1000,
              "hb_s": self.hb_s, "fw": self.fw, "bat_pct": self.bat_pct, "bat_mv": 3600 + self.bat_pct * 6,
              "state": self.state, "x_free_mb": free, "x_pending": len(pending)}
        if self.recording:
            hb["x_rec"] = self.recording["id"]
        if self.dispatch:
            hb["x_task"] = self.dispatch.get("incident", "-")
        return hb

    def _send(self, ftype: int, payload: bytes) -> None:
        s = self.session
        if s is None or s.room() <= 0:
            return
        try:
            s.send(ftype, payload)
        except Exception as e:  # noqa: BLE001 - queue full or too large: a simulator logs and goes on
            log.warning("recorder %s: cannot send %s: %s", self.id, sf.TYPE_NAMES.get(ftype), e)
        self._wake.set()

    def _send_catalog(self, clips: list[dict[str, Any]]) -> None:
        s = self.session
        if s is None or not s.established or not clips:
            return
        parts = [clips[i:i + CATALOG_PER_FRAME] for i in range(0, len(clips), CATALOG_PER_FRAME)]
        for i, part in enumerate(parts):
            entries = [{k: c[k] for k in serialsession.CATALOG_ENTRY if k in c} for c in part]
            self._send(sf.TYPE_CATALOG, serialsession.encode_catalog(
                {"v": 1, "part": i, "parts": len(parts), "clips": entries}))

    def manifest_for(self, meta: dict[str, Any], sender: cliptransfer.ClipSender) -> bytes:
        d = sender.manifest.to_dict()
        d.update({"x_start": meta["start"], "x_end": meta["end"], "x_track": meta["track"]})
        if meta.get("officer"):
            d["x_officer"] = meta["officer"]
        if meta.get("mark"):
            d["x_mark"] = True
        signing.sign(self.key, "up", d)
        return canonical.dumpb(d)

    def _next_upload(self, now: int) -> None:
        s = self.session
        if s is None or not s.established:
            return
        for meta in self.clips():
            if meta["up"] or (self.recording and self.recording["id"] == meta["id"]):
                continue
            chunk = max(self.chunk, -(-meta["size"] // cliptransfer.defaults.CLIP_MAX_CHUNKS))
            f = open(self.clips_dir / f"{meta['id']}.bin", "rb")  # noqa: SIM115 - kept open while uploading
            sender = cliptransfer.ClipSender(f, chunk, meta["id"], meta["tid"], meta["kind"], meta["mime"],
                                             meta["start"])
            if sender.manifest.sha256 != meta["sha256"]:
                log.error("recorder %s: clip %s changed on flash", self.id, meta["id"])
                f.close()
                continue
            self.push = serialsession.ClipPush(s, sender, self.manifest_for(meta, sender))
            self.push_clip = meta["id"]
            self.push_started_ms = now
            fresh = meta.get("offered") != meta["tid"]
            if fresh:
                meta["offered"] = meta["tid"]  # kept in flash: after a power loss the offer waits for the offset
                self._write_meta(meta)
            self.push.start(fresh=fresh)
            return

    def _on_status(self, st: dict[str, Any]) -> None:
        p = self.push
        if p is None or st["tid"] != p.tid:
            return
        p.on_status(st)
        if p.state == p.DONE:
            meta = self.clip(self.push_clip or "")
            if meta is not None:
                meta["up"] = True
                self._write_meta(meta)
            self.uploads.append({"clip": self.push_clip, "tid": p.tid, "bytes": p.stream.sent,
                                 "resent": p.stream.resent, "resent_confirmed": p.stream.resent_confirmed,
                                 "resumes": p.stream.resumes, "ms": mono_ms() - self.push_started_ms,
                                 "offers": p.offers})
            self._close_push()
            self._status_dirty = True
        elif p.state == p.FAILED:
            log.warning("recorder %s: upload of %s failed: %s", self.id, self.push_clip, p.error)
            meta = self.clip(self.push_clip or "")
            if p.error == cliptransfer.E_HASH and meta is not None:
                meta["tid"] = self._next_tid()  # a fresh transfer (the failed one is closed for good)
                self._write_meta(meta)
            self._close_push()
            self._retry_upload_at = mono_ms() + 5000

    def _close_push(self) -> None:
        if self.push is not None:
            reader = self.push.stream.sender._reader
            if reader is not None:
                reader.close()
        self.push = None
        self.push_clip = None

    # -- voice clips from the gateway -------------------------------------------------------------------------
    def _on_voice_offer(self, payload: bytes) -> None:
        try:
            m = cliptransfer.decode_manifest(payload)
            have = self.voice.get(m.clip_id)
            if have is not None and have[0] == m.sha256:
                st = {"v": 1, "tid": m.tid, "id": m.clip_id, "state": "complete", "have": m.chunks, "off": m.size}
            else:
                if self._incoming is None or self._incoming.manifest != m:
                    self._incoming = cliptransfer.ClipReceiver(m, 1024 * 1024)
                st = self._incoming.status()
                st["off"] = self._incoming.offset
                st.pop("missing", None)
        except TransferError as e:
            st = {"v": 1, "tid": 0, "id": "x", "state": "failed", "have": 0, "err": e.code}
        self._send(sf.TYPE_CLIP_DONE, cliptransfer.encode_status(st))

    def _on_voice_piece(self, payload: bytes) -> None:
        rx = self._incoming
        try:
            p = cliptransfer.decode_data(payload)
            if rx is None or p.tid != rx.manifest.tid:
                return
            if rx.receive_at(p.offset, p.data) != cliptransfer.COMPLETE:
                return
            self.voice[rx.manifest.clip_id] = (rx.manifest.sha256, rx.sink.data)
        except TransferError:
            pass
        if rx is not None and rx.state in (cliptransfer.COMPLETE, cliptransfer.FAILED):
            st = rx.status()
            st["off"] = rx.offset
            st.pop("missing", None)
            self._send(sf.TYPE_CLIP_DONE, cliptransfer.encode_status(st))
            self._incoming = None

    # -- commands ---------------------------------------------------------------------------------------------
    def _result(self, cmd_id: str, status: str, code: str | None = None, detail: str | None = None,
                data: dict[str, Any] | None = None) -> None:
        msg = signing.sign(self.key, "res", messages.result(cmd_id, status, ts=self.wall(), code=code,
                                                            detail=detail, data=data))
        wire = messages.encode("res", msg)
        self.results.setdefault(cmd_id, []).append(wire)
        self._send(sf.TYPE_RESULT, wire)

    def _on_command(self, payload: bytes) -> None:
        try:
            cmd = messages.decode("cmd", payload)
        except MessageError as e:
            log.warning("recorder %s: bad command: %s", self.id, e)
            return
        if cmd["id"] in self.results:  # a redelivery: answer from the cache, never run twice
            for wire in self.results[cmd["id"]]:
                self._send(sf.TYPE_RESULT, wire)
            return
        try:
            ctr = signing.check_command(self.key, cmd, self.id, self.persist["ctr"], self.wall())
        except AuthError as e:
            self._result(cmd["id"], "rejected", code=e.code, detail=str(e)[:200])
            return
        self.persist["ctr"] = ctr
        self._save_state()
        self.commands_run.append(cmd)
        self._result(cmd["id"], "accepted")
        name, args = cmd["name"], cmd["args"]
        if name not in COMMANDS:
            self._result(cmd["id"], "rejected", code="unknown_command", detail=f"{name} is not a recorder command")
            return
        getattr(self, "_cmd_" + name)(cmd["id"], args)
        self._status_dirty = True

    def _cmd_record_start(self, cid: str, args: dict[str, Any]) -> None:
        if self.recording is not None:
            self._result(cid, "done", data={"clip": self.recording["id"], "already": True})
            return
        self._result(cid, "done", data={"clip": self.start_recording(args.get("incident"))})

    def start_recording(self, incident: str | None = None) -> str:
        """The officer presses record (or ``record_start``): returns the recording's id."""
        if self.recording is None:
            self.recording = {"id": f"rec-{self.persist['tid']:04d}", "start": self.wall(), "t0": mono_ms(),
                              "lat": self.walk.lat, "lon": self.walk.lon, "incident": incident}
            self.state = "recording"
            self._status_dirty = True
            self._wake.set()
        return str(self.recording["id"])

    def _cmd_record_stop(self, cid: str, args: dict[str, Any]) -> None:
        if self.recording is None:
            self._result(cid, "failed", code="not_recording", detail="no recording in progress")
            return
        clip_id = self.stop_recording(int(args.get("size") or 0) or None)
        meta = self.clip(clip_id)
        self._result(cid, "done", data={"clip": clip_id, "size": meta["size"] if meta else None,
                                        "sha256": meta["sha256"] if meta else None})

    def stop_recording(self, size: int | None = None) -> str:
        """The officer presses stop (or ``record_stop``): the recording becomes a clip of ``size`` bytes (default:
        its length at VIDEO_KBPS), hashed at the source and queued for upload. Returns the clip id."""
        r = self.recording
        if r is None:
            raise RuntimeError(f"recorder {self.id} is not recording")
        self.recording = None
        self.state = "dispatched" if self.dispatch else "idle"
        secs = max(1, (mono_ms() - r["t0"]) // 1000)
        self._status_dirty = True
        return self.record_clip(size or secs * VIDEO_KBPS * 125, duration_s=secs, mark=bool(r.get("mark")))

    def _cmd_mark(self, cid: str, args: dict[str, Any]) -> None:
        if self.recording is not None:
            self.recording["mark"] = True
            self._result(cid, "done", data={"clip": self.recording["id"]})
            return
        clips = self.clips()
        if not clips:
            self._result(cid, "failed", code="no_clip", detail="nothing recorded to mark")
            return
        meta = clips[-1]
        meta["mark"] = True
        self._write_meta(meta)
        self._send_catalog([meta])
        self._result(cid, "done", data={"clip": meta["id"]})

    def _cmd_dispatch(self, cid: str, args: dict[str, Any]) -> None:
        self.dispatch = dict(args)
        if self.state == "idle":
            self.state = "dispatched"
        self._result(cid, "done", data={"shown": True})

    def _cmd_clear(self, cid: str, args: dict[str, Any]) -> None:
        self.dispatch = None
        if self.state == "dispatched":
            self.state = "idle"
        self._result(cid, "done")

    def _cmd_play_voice(self, cid: str, args: dict[str, Any]) -> None:
        have = self.voice.get(str(args.get("clip")))
        if have is None or (args.get("sha256") and args["sha256"] != have[0]):
            self._result(cid, "failed", code="no_clip", detail="voice clip not on the recorder")
            return
        self.played.append(str(args.get("clip")))
        self._result(cid, "done", data={"clip": args.get("clip"), "bytes": len(have[1])})

    def _cmd_status(self, cid: str, args: dict[str, Any]) -> None:
        hb = self.heartbeat()
        self._result(cid, "done", data={"state": self.state, "bat_pct": self.bat_pct, "pending": hb["x_pending"],
                                        "free_mb": hb["x_free_mb"]})

    # -- events from the officer ------------------------------------------------------------------------------
    def press(self, kind: str = "mark", sev: str = "info", detail: str | None = None) -> str:
        """A button on the recorder: a signed event (``mark``: flag this moment; ``sos``: officer needs help)."""
        self.persist["evt"] += 1
        self._save_state()
        n = self.persist["evt"]
        evt: dict[str, Any] = {"id": f"{self.id}-{self.persist['boot']}-{n}", "seq": n, "ts": self.wall(),
                               "kind": kind, "sev": sev, "lat": self.walk.lat, "lon": self.walk.lon}
        if detail:
            evt["detail"] = detail
        if kind == "mark" and self.recording is not None:
            self.recording["mark"] = True
        signing.sign(self.key, "evt", evt)
        self._send(sf.TYPE_EVENT, messages.encode("evt", evt))
        return evt["id"]

    def stats(self) -> dict[str, Any]:
        s = self.session
        return {"line_up": {"sent": self._up.sent, "flipped": self._up.flipped, "dropped": self._up.dropped},
                "line_down": {"sent": self._down.sent, "flipped": self._down.flipped,
                              "dropped": self._down.dropped},
                "session": dict(s.stats) if s is not None else {}, "uploads": list(self.uploads)}


__all__ = ["COMMANDS", "LineConfig", "OfficerWalk", "SimRecorder", "clip_bytes"]
