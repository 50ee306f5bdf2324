"""Recorder bridge: body-worn recorders on serial ports (pyserial), one protocol session per port.

Theory of operation
-------------------
``RecorderPort`` owns one serial device (a USB-CDC dock, a UART, a radio modem): pyserial opens and configures
it (raw 8N1 at the configured baud), then its file descriptor is driven from the event loop (``add_reader`` /
``add_writer``, non-blocking ``os.read``/``os.write``: no thread per port, as mavlink-router does). Bytes go into
a ``protocols.serialsession.SerialSession`` (role gateway), events come out and are handled at once, *then* the
session's output (acknowledgements included) is written: an ACK therefore always means "handled" (a clip piece
is in the file, a result is in the MQTT link's queue). A timer per port runs the session's retransmissions.

Which recorder is on the port is learnt from the authenticated HELLO (the keystore's recorder key), never from
the port's name. Per recorder the bridge keeps the port its latest session runs on (a recorder moved from a dock
to a radio is followed; an older session of the same id is closed).

What the bridge does with a recorder's frames, through the ``host`` (gateway/service/recorders.py) so that this
package stays a link and imports nothing above ``core``:

- HEARTBEAT, LOCATION: validated (protocols/messages.py ``hb``/``loc``) and published unchanged on the
  recorder's ``hb``/``loc`` topics, as any node would: the registry sees the recorder like every device;
- EVENT, RESULT: validated and published unchanged on ``evt``/``res`` (the recorder signed them with its key);
- CATALOG: handed to ``host.catalog`` (custody: ``recorded``);
- CLIP_OFFER, CLIP_DATA: ``host.offer`` / ``host.piece`` (the evidence store), whose status goes back as
  CLIP_DONE;
- CLIP_DONE: the recorder's answer to a clip the gateway pushes (a voice message, ``push_clip``).

Commands go the other way: ``send_command(device, wire)`` queues the signed command bytes on the recorder's
session and returns when the recorder acknowledged the frame (as an MQTT transport returns on PUBACK); the
results come back as RESULT frames. Anything malformed is counted and logged, never raised: a bad byte stream
cannot take the bridge down (tests/test_recorder_bridge.py feeds it hypothesis-made garbage).

``RecorderWatcher`` is the hot-plug part: every ``scan_ms`` it expands the configured globs; a new path gets a
port, a vanished path's port is closed, and a port that failed while its path still exists is reopened after a
short back-off. A closed port ends its recorder's session: ``host.offline`` (the service publishes its death).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from lookout.protocols import cliptransfer, messages, serialsession, topics
from lookout.protocols import serialframe as sf
from lookout.protocols.errors import MessageError, SessionError, TransferError

log = logging.getLogger("lookout.recorders")

COMMAND_ACK_TIMEOUT_S = 15.0  # a COMMAND frame unacknowledged this long: the transport reports failure (the
#                               command path retries); 10 resends of RTO <= 8 s fit within a minute, see defaults
PUSH_TIMEOUT_S = 120.0  # a voice clip (~40 KB of G.711A) at 9600 baud takes ~45 s
REOPEN_S = 2.0  # a port that failed while its device path still exists is opened again after this
IDLE_FRAMES = 2  # the line is idle after two largest-frame times (+ 20 ms) without data: a held partial frame is
#                 reported and dropped. Shorter cut frames that a pty or USB driver delivered in two reads
#                 (measured: 25% more resends at 921,600 baud with a 5 ms idle time)


def mono_ms() -> int:
    return int(time.monotonic() * 1000)


class RecorderHost(Protocol):
    """What the bridge needs from the service (implemented by gateway/service/recorders.py)."""

    site: str
    gateway_id: str

    def key_for(self, device_id: str) -> bytes | None: ...

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...

    def online(self, device_id: str, info: dict[str, Any], port: str) -> None: ...

    def offline(self, device_id: str, reason: str) -> None: ...

    def offer(self, device_id: str, payload: bytes, officer: str | None) -> dict[str, Any]: ...

    def piece(self, device_id: str, tid: int, offset: int, data: Any) -> dict[str, Any] | None: ...

    def catalog(self, device_id: str, clips: list[dict[str, Any]], officer: str | None) -> None: ...

    def security(self, device_id: str | None, code: str, detail: str, port: str) -> None: ...


class RecorderPort:
    """One serial device path and the session on it."""

    def __init__(self, bridge: RecorderBridge, path: str):
        self.bridge = bridge
        self.path = path
        self.ser: Any = None
        self.fd: int | None = None
        self.session: serialsession.SerialSession | None = None
        self.device: str | None = None
        self.officer: str | None = None
        self.info: dict[str, Any] = {}
        self._out = b""
        self._writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = True
        self.opened_ms = 0
        self.stats = {"bytes_in": 0, "bytes_out": 0, "bad_payloads": 0, "frames": 0}
        self._pushes: dict[int, tuple[serialsession.ClipPush, asyncio.Future[None]]] = {}

    # -- open / close -----------------------------------------------------------------------------------------
    def open(self) -> None:
        import serial  # pyserial: termios set-up (raw 8N1, baud) for every kind of serial device

        cfg = self.bridge
        self.ser = serial.Serial(self.path, baudrate=cfg.baud, timeout=0, write_timeout=0, exclusive=True)
        self.fd = self.ser.fileno()
        os.set_blocking(self.fd, False)
        self.session = serialsession.SerialSession(serialsession.GATEWAY, cfg.host.gateway_id,
                                                   key_for=cfg.host.key_for, rand=os.urandom, mtu=cfg.mtu,
                                                   win=cfg.window, repair=cfg.repair)
        self.closed = False
        self.opened_ms = mono_ms()
        self.session.start(self.opened_ms)  # a probe: a recorder that is already up says HELLO now
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self._readable)
        self._flush()
        log.info("recorder port %s open (%d baud)", self.path, cfg.baud)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self._loop
        for h in (self._timer, self._idle):
            if h is not None:
                h.cancel()
        if self.fd is not None and loop is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(self.fd)
            if self._writing:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_writer(self.fd)
        self._writing = False
        with contextlib.suppress(Exception):
            self.ser.close()
        self.fd = None
        if self.session is not None:
            self.session.close(reason)
            self._events()
        self._session_ended(reason)
        log.info("recorder port %s closed: %s", self.path, reason)

    # -- I/O --------------------------------------------------------------------------------------------------
    def _readable(self) -> None:
        if self.fd is None:
            return
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EIO: the device went away (USB unplugged, pty closed)
            self.close(f"read failed: {errno.errorcode.get(e.errno or 0, str(e.errno))}")
            self.bridge.port_failed(self)
            return
        if not data:
            self.close("end of file")
            self.bridge.port_failed(self)
            return
        self.stats["bytes_in"] += len(data)
        assert self.session is not None
        now = mono_ms()
        self.session.receive_data(data, now)
        self._events()
        self._flush()
        if self.session.decoder.buffered:
            if self._idle is not None:
                self._idle.cancel()
            idle_s = 0.02 + IDLE_FRAMES * (self.bridge.mtu + sf.OVERHEAD) * 10 / self.bridge.baud
            assert self._loop is not None
            self._idle = self._loop.call_later(idle_s, self._line_idle)

    def _line_idle(self) -> None:
        self._idle = None
        if self.session is not None and not self.closed:
            self.session.line_idle(mono_ms())
            self._events()
            self._flush()

    def _flush(self) -> None:
        """Write what the session has (after the events were handled), and arm its next timer."""
        if self.closed or self.session is None or self.fd is None:
            return
        now = mono_ms()
        self._out += self.session.data_to_send(now)
        if self._out:
            try:
                n = os.write(self.fd, self._out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self.close(f"write failed: {errno.errorcode.get(e.errno or 0, str(e.errno))}")
                self.bridge.port_failed(self)
                return
            self.stats["bytes_out"] += n
            self._out = self._out[n:]
            loop = self._loop
            assert loop is not None
            if self._out and not self._writing:
                loop.add_writer(self.fd, self._flush)
                self._writing = True
            elif not self._out and self._writing:
                loop.remove_writer(self.fd)
                self._writing = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = self.session.next_timer(now)
        if t is not None:
            assert self._loop is not None
            self._timer = self._loop.call_later(max(t, 1) / 1000, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self.closed:
            self._events()
            self._flush()

    # -- session events ---------------------------------------------------------------------------------------
    def _events(self) -> None:
        s = self.session
        if s is None:
            return
        while True:
            ev = s.next_event()
            if ev is serialsession.NEED_DATA:
                return
            try:
                self._event(ev)
            except Exception:  # a handler bug must not leave the port half-handled; the session goes on
                log.exception("recorder port %s: handling %r failed", self.path, ev)

    def _event(self, ev: Any) -> None:
        host = self.bridge.host
        if isinstance(ev, serialsession.Received):
            self._frame(ev)
        elif isinstance(ev, serialsession.Acked):
            if isinstance(ev.ref, asyncio.Future) and not ev.ref.done():
                ev.ref.set_result(None)
            elif isinstance(ev.ref, tuple):
                p = self._pushes.get(ev.ref[1])
                if p is not None:
                    p[0].on_acked(ev.ref)
                    self._pump()
        elif isinstance(ev, serialsession.Dropped):
            if isinstance(ev.ref, asyncio.Future) and not ev.ref.done():
                ev.ref.set_exception(ConnectionError(f"recorder session ended ({ev.reason})"))
        elif isinstance(ev, serialsession.Established):
            # a new handshake on this port replaces the old session (another recorder on the same port: offline)
            self._session_ended("rehello" if self.device in (None, ev.peer) else "replaced on this port")
            self.device = ev.peer
            self.info = dict(ev.info)
            self.officer = self.bridge.officer_of(ev.peer, ev.info.get("officer"))
            self.bridge.attach(self)
            host.online(ev.peer, {**ev.info, "officer": self.officer}, self.path)
        elif isinstance(ev, serialsession.Lost):
            if ev.reason == "timeout":
                self._session_ended("timeout")
        elif isinstance(ev, serialsession.Refused):
            host.security(ev.peer, ev.code, ev.message, self.path)

    def _session_ended(self, reason: str) -> None:
        if self.device is None:
            return
        dev = self.device
        self.device = None
        for _push, fut in self._pushes.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"recorder session ended ({reason})"))
        self._pushes.clear()
        if self.bridge.detach(self, dev) and reason != "rehello":
            self.bridge.host.offline(dev, reason)

    def _bad(self, what: str, e: Exception) -> None:
        self.stats["bad_payloads"] += 1
        log.warning("recorder %s on %s: bad %s: %s", self.device, self.path, what, e)

    def _frame(self, ev: serialsession.Received) -> None:
        host = self.bridge.host
        dev = self.device
        if dev is None:
            return
        self.stats["frames"] += 1
        t, p = ev.type, ev.payload
        if t in (sf.TYPE_HEARTBEAT, sf.TYPE_LOCATION, sf.TYPE_EVENT, sf.TYPE_RESULT):
            ch = {sf.TYPE_HEARTBEAT: "hb", sf.TYPE_LOCATION: "loc", sf.TYPE_EVENT: "evt", sf.TYPE_RESULT: "res"}[t]
            try:
                messages.decode(ch, p)
            except MessageError as e:
                self._bad(ch, e)
                return
            host.publish(topics.topic(host.site, dev, ch), bytes(p), topics.qos(ch), False)
        elif t == sf.TYPE_CATALOG:
            try:
                cat = serialsession.decode_catalog(p, self.session.mtu_eff if self.session else 1024)
            except SessionError as e:
                self._bad("catalogue", e)
                return
            host.catalog(dev, cat["clips"], self.officer)
        elif t == sf.TYPE_CLIP_OFFER:
            self._status(host.offer(dev, bytes(p), self.officer))
        elif t == sf.TYPE_CLIP_DATA:
            try:
                piece = cliptransfer.decode_data(p)
            except TransferError as e:
                self._bad("clip piece", e)
                return
            st = host.piece(dev, piece.tid, piece.offset, piece.data)
            if st is not None:
                self._status(st)
        elif t == sf.TYPE_CLIP_DONE:
            try:
                st = cliptransfer.decode_status(p)
            except TransferError as e:
                self._bad("clip status", e)
                return
            push = self._pushes.get(st["tid"])
            if push is not None:
                push[0].on_status(st)
                self._push_check(st["tid"])
                self._pump()
        else:
            self._bad("frame", ValueError(f"{sf.TYPE_NAMES.get(t, t)} is not sent by a recorder"))

    def _status(self, st: dict[str, Any]) -> None:
        assert self.session is not None
        try:
            self.session.send(sf.TYPE_CLIP_DONE, cliptransfer.encode_status(st))
        except Exception as e:  # noqa: BLE001 - queue full: the recorder offers again and gets it then
            log.warning("recorder %s: clip status not queued: %s", self.device, e)

    # -- gateway -> recorder ----------------------------------------------------------------------------------
    async def send_command(self, wire: bytes, timeout: float = COMMAND_ACK_TIMEOUT_S) -> None:
        s = self.session
        if s is None or not s.established or self.closed:
            raise ConnectionError(f"no session with a recorder on {self.path}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        s.send(sf.TYPE_COMMAND, wire, ref=fut)
        self._flush()
        async with asyncio.timeout(timeout):
            await fut

    async def push_clip(self, clip_id: str, data: bytes, mime: str, tid: int,
                        timeout: float = PUSH_TIMEOUT_S) -> None:
        """Send a clip (a voice message) to the recorder; returns when it says ``complete``."""
        s = self.session
        if s is None or not s.established or self.closed:
            raise ConnectionError(f"no session with a recorder on {self.path}")
        sender = cliptransfer.ClipSender(data, 1024, clip_id, tid, "audio", mime, int(time.time() * 1000))
        push = serialsession.ClipPush(s, sender, sender.manifest.encode())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pushes[tid] = (push, fut)
        push.start()
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                await fut
        finally:
            self._pushes.pop(tid, None)

    def _push_check(self, tid: int) -> None:
        p = self._pushes.get(tid)
        if p is None or p[1].done():
            return
        push, fut = p
        if push.state == push.DONE:
            fut.set_result(None)
        elif push.state == push.FAILED:
            fut.set_exception(RuntimeError(f"recorder refused the clip: {push.error}"))

    def _pump(self) -> None:
        for push, _fut in list(self._pushes.values()):
            while push.pump():  # one piece per call (the session queues one bulk frame at a time)
                self._flush()
        self._flush()


class RecorderBridge:
    """All recorder ports. ``host``: the service side (RecorderHost). Ports come from ``RecorderWatcher``."""

    def __init__(self, host: RecorderHost, *, baud: int = 115200, mtu: int = 1024, window: int = 64,
                 officer_of: Callable[[str, str | None], str | None] | None = None, repair: bool = True):
        self.host = host
        self.repair = repair  # single-bit CRC repair (off only to measure what it is worth: bench)
        self.baud, self.mtu, self.window = baud, mtu, window
        self.ports: dict[str, RecorderPort] = {}
        self.by_device: dict[str, RecorderPort] = {}
        self.failed: dict[str, float] = {}  # path -> when it may be opened again
        self._officer_of = officer_of
        self._tids = int(time.time()) & 0xFFFFFF  # transfer ids of gateway -> recorder clips

    def officer_of(self, device: str, claimed: str | None) -> str | None:
        return self._officer_of(device, claimed) if self._officer_of else claimed

    def open_port(self, path: str) -> RecorderPort | None:
        if path in self.ports:
            return self.ports[path]
        port = RecorderPort(self, path)
        try:
            port.open()
        except Exception as e:  # noqa: BLE001 - not a tty, busy, permission, gone again: try later
            log.warning("recorder port %s: cannot open: %s", path, e)
            self.failed[path] = time.monotonic() + REOPEN_S
            with contextlib.suppress(Exception):
                if port.ser is not None:
                    port.ser.close()
            return None
        self.ports[path] = port
        self.failed.pop(path, None)
        return port

    def close_port(self, path: str, reason: str) -> None:
        port = self.ports.pop(path, None)
        if port is not None:
            port.close(reason)
        self.failed.pop(path, None)

    def port_failed(self, port: RecorderPort) -> None:
        if self.ports.get(port.path) is port:
            del self.ports[port.path]
            self.failed[port.path] = time.monotonic() + REOPEN_S

    def attach(self, port: RecorderPort) -> None:
        assert port.device is not None
        old = self.by_device.get(port.device)
        if old is not None and old is not port:
            log.warning("recorder %s moved from %s to %s", port.device, old.path, port.path)
            old.device = None  # its session is stale; the recorder talks on the new port now
            if old.session is not None:
                old.session.close("superseded")
                old._events()  # commands waiting on the old port fail now (the command path re-sends them)
        self.by_device[port.device] = port

    def detach(self, port: RecorderPort, device: str) -> bool:
        """True if ``port`` was the recorder's current port (then it is offline now)."""
        if self.by_device.get(device) is port:
            del self.by_device[device]
            return True
        return False

    def port_of(self, device: str) -> RecorderPort:
        port = self.by_device.get(device)
        if port is None or port.closed or port.session is None or not port.session.established:
            raise ConnectionError(f"recorder {device} is not connected")
        return port

    async def send_command(self, device: str, wire: bytes) -> None:
        await self.port_of(device).send_command(wire)

    async def push_clip(self, device: str, clip_id: str, data: bytes, mime: str) -> None:
        self._tids = (self._tids + 1) & 0xFFFFFFFF
        await self.port_of(device).push_clip(clip_id, data, mime, self._tids)

    def close(self) -> None:
        for path in list(self.ports):
            self.close_port(path, "gateway stopping")

    def connected(self) -> list[str]:
        return sorted(self.by_device)


class RecorderWatcher:
    """Hot-plug: expand the device globs every ``scan_ms``; open new paths, close vanished ones."""

    def __init__(self, bridge: RecorderBridge, patterns: tuple[str, ...] | list[str], scan_ms: int = 1000):
        self.bridge = bridge
        self.patterns = tuple(patterns)
        self.scan_s = scan_ms / 1000
        self.scans = 0

    def present(self) -> set[str]:
        out: set[str] = set()
        for pat in self.patterns:
            for p in glob.glob(pat):
                if os.path.exists(p):  # a dangling link (a device half gone) does not count
                    out.add(p)
        return out

    def scan(self) -> None:
        self.scans += 1
        now = time.monotonic()
        have = self.present()
        b = self.bridge
        for path in list(b.ports):
            if path not in have:
                b.close_port(path, "device removed")
        for path in list(b.failed):
            if path not in have:
                del b.failed[path]
        for path in sorted(have):
            if path not in b.ports and b.failed.get(path, 0) <= now:
                b.open_port(path)

    async def run(self) -> None:
        while True:
            try:
                self.scan()
            except Exception:  # a scan must never stop the watcher
                log.exception("recorder device scan failed")
            await asyncio.sleep(self.scan_s)


__all__ = ["RecorderBridge", "RecorderHost", "RecorderPort", "RecorderWatcher"]
