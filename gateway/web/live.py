"""Live state for the screens: what changed in the registry, the command path and the journal, pushed to every
open console over its WebSocket.

Theory of operation
-------------------
The hub listens where the gateway already reports (``Registry.add_watcher`` for every input that touched a
device, ``add_listener`` for transitions, ``CommandService`` status and progress listeners) and keeps, per
device, the few things the detail view shows that the registry does not remember: the last ``HB_KEEP``
heartbeats and a track of up to ``TRACK_KEEP`` positions (a new point only when the position moved), plus the
last ``CMD_KEEP`` commands. All of it lives in memory since the console started.

Device updates are coalesced: a watcher only marks the device dirty, and every ``PUSH_S`` the hub sends each
client one message with the latest view of every dirty device ("latest value always delivered", as
mavlink2rest does under decimation), so 200 nodes heart-beating cost one small message per half second, not
200. Command updates go out at once (an operator waits for "done"). Each client has a bounded queue; when a slow
browser lets it fill, further messages are dropped and counted, and the client gets a full snapshot instead
once there is room, so it never shows a stale mix.

The hub is a reader: nothing it pushes is an action, so nothing here journals; every action goes through
``OperatorAPI.handle`` (gateway/web/api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from lookout.gateway.core.commands import Command
from lookout.gateway.core.registry import Change, Device
from lookout.gateway.service.operator_api import device_view
from lookout.gateway.web.auth import Session, Sessions
from lookout.gateway.web.sitemap import SiteMap

log = logging.getLogger("lookout.web")

PUSH_S = 0.5  # device updates are coalesced over this period
CLIENT_QUEUE = 256  # messages waiting for one browser; past it: drop, count, resync with a snapshot
HB_KEEP = 20  # heartbeats kept per device for the detail view
TRACK_KEEP = 200  # positions kept per device (only moves are stored: a fixed node keeps one)
CMD_KEEP = 500  # recent commands kept for the screens
CLOSE_EXPIRED = 4401  # WebSocket close code: the session ended, sign in again


def command_view(c: Command) -> dict[str, Any]:
    v: dict[str, Any] = {k: getattr(c, k) for k in ("id", "device", "name", "status", "op", "group", "prio",
                                                      "issued_ms", "accepted_ms", "final_ms", "attempts")}
    for k in ("code", "detail", "data"):
        if getattr(c, k) is not None:
            v[k] = getattr(c, k)
    if c.args.get("clip"):
        v["clip"] = c.args["clip"]
    return v


class _History:
    __slots__ = ("beats", "last_hb", "last_loc", "track")

    def __init__(self) -> None:
        self.last_hb: int | None = None
        self.last_loc: int | None = None
        self.beats: deque[dict[str, Any]] = deque(maxlen=HB_KEEP)
        self.track: deque[tuple[int, int, int]] = deque(maxlen=TRACK_KEEP)  # (ts, lat, lon) degE7


class Client:
    """One open WebSocket; ``wall``: a wall display, whose watching keeps its session alive."""

    def __init__(self, ws: Any, session: Session, wall: bool) -> None:
        self.ws = ws
        self.session = session
        self.wall = wall
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(CLIENT_QUEUE)
        self.dropped = 0
        self.resync = False

    def put(self, msg: dict[str, Any]) -> None:
        if self.resync:
            self.dropped += 1
            return
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
            self.resync = True


class LiveHub:
    def __init__(self, gw: Any, sitemap: SiteMap, sessions: Sessions) -> None:
        self.gw = gw
        self.sitemap = sitemap
        self.sessions = sessions
        self.clients: set[Client] = set()
        self._dirty: set[str] = set()
        self._hist: dict[str, _History] = {}
        self._cmds: dict[str, dict[str, Any]] = {}
        self._journal_seq = 0
        self.pushed = 0

    def attach(self) -> None:
        gw = self.gw
        for d in gw.registry.devices.values():
            self._record(d)
        self.sitemap.settle_origin([(d.last_loc["lat"] / 1e7, d.last_loc["lon"] / 1e7)
                                    for d in gw.registry.devices.values()
                                    if d.last_loc and isinstance(d.last_loc.get("lat"), int)])
        gw.registry.add_watcher(self._touched)
        gw.registry.add_listener(self._changed)
        gw.commands.add_listener(self._command)
        gw.commands.add_progress_listener(self._progress)
        self._journal_seq = gw.journal.head()[0]

    # -- views -----------------------------------------------------------------------------------------------
    def device(self, d: Device) -> dict[str, Any]:
        v = device_view(d)
        v["last_hb_ms"] = d.last_hb_ms
        label = self.sitemap.labels.get(d.id)
        if label:
            v["label"] = label
        loc = d.last_loc
        xy = self.sitemap.project_e7(loc)
        if xy is not None and loc is not None:
            v["xy"] = xy
            for k in ("hdg_cd", "spd_cms", "fix"):
                if isinstance(loc.get(k), int):
                    v[k] = loc[k]
        return v

    def devices(self) -> list[dict[str, Any]]:
        return [self.device(d) for d in self.gw.registry.select()]

    def snapshot(self) -> dict[str, Any]:
        return {"t": "snapshot", "devices": self.devices(), "map": self.sitemap.to_json(),
                "commands": list(self._cmds.values())[-50:], "journal_seq": self.gw.journal.head()[0]}

    def history(self, device_id: str) -> dict[str, Any]:
        h = self._hist.get(device_id)
        cmds = [c for c in self._cmds.values() if c["device"] == device_id][-50:]
        if h is None:
            return {"heartbeats": [], "track": [], "commands": cmds}
        track = [{"ts": ts, "lat": la, "lon": lo, "xy": self.sitemap.project(la / 1e7, lo / 1e7)}
                 for ts, la, lo in h.track]
        return {"heartbeats": list(h.beats), "track": track, "commands": cmds}

    # -- inputs ----------------------------------------------------------------------------------------------
    def _record(self, d: Device) -> None:
        h = self._hist.get(d.id)
        if h is None:
            h = self._hist[d.id] = _History()
        if d.last_hb_ms is not None and d.last_hb_ms != h.last_hb:
            h.last_hb = d.last_hb_ms
            h.beats.append({"ts": d.last_hb_ms, **d.info})
        loc = d.last_loc
        if d.last_loc_ms is not None and d.last_loc_ms != h.last_loc and loc:
            h.last_loc = d.last_loc_ms
            la, lo = loc.get("lat"), loc.get("lon")
            if isinstance(la, int) and isinstance(lo, int) and (not h.track or h.track[-1][1:] != (la, lo)):
                h.track.append((int(loc.get("ts") or d.last_loc_ms), la, lo))

    def _touched(self, d: Device) -> None:
        self._record(d)
        self._dirty.add(d.id)

    def _changed(self, c: Change) -> None:
        self._dirty.add(c.device)

    def _remember(self, c: Command) -> dict[str, Any]:
        v = command_view(c)
        self._cmds.pop(c.id, None)
        self._cmds[c.id] = v
        if len(self._cmds) > CMD_KEEP:
            self._cmds.pop(next(iter(self._cmds)))
        return v

    def _command(self, c: Command, old: str) -> None:
        self.send_all({"t": "cmd", "cmd": self._remember(c)})

    def _progress(self, c: Command) -> None:
        self.send_all({"t": "cmd", "cmd": self._remember(c)})

    def send_all(self, msg: dict[str, Any]) -> None:
        for cl in self.clients:
            cl.put(msg)

    # -- the push loop ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(PUSH_S)
            try:
                self.tick()
            except Exception:  # a bug in one push must not end the screens' updates
                log.exception("web console push failed")

    def tick(self) -> None:
        if self._dirty:
            ids, self._dirty = self._dirty, set()
            if self.clients:  # the touched devices only (select() walked the whole table every half second)
                reg = self.gw.registry
                devs = [self.device(d) for d in (reg.get(i) for i in sorted(ids)) if d is not None]
                if devs:
                    self.send_all({"t": "devices", "devices": devs})
        seq = self.gw.journal.head()[0]
        if seq != self._journal_seq:
            self._journal_seq = seq
            self.send_all({"t": "journal", "head_seq": seq})
        for cl in list(self.clients):
            if cl.wall:
                self.sessions.get(cl.session.sid, touch=True)  # a wall display is watched, not clicked
            if cl.resync and cl.queue.empty():
                cl.resync = False
                cl.put(self.snapshot())
        for s in self.sessions.expire():
            self.gw.journal.append("operator", f"{s.op_id}'s web console session expired", operator=s.op_id,
                                   detail={"how": s.how})
            for ws in list(s.sockets):
                asyncio.get_running_loop().create_task(_close(ws))

    async def serve(self, ws: Any, session: Session, wall: bool) -> None:
        """Pump one client's queue into its WebSocket until either side closes."""
        cl = Client(ws, session, wall)
        self.clients.add(cl)
        session.sockets.add(ws)
        try:
            cl.put(self.snapshot())
            reader = asyncio.ensure_future(_drain_incoming(ws))
            try:
                while not ws.closed:
                    get = asyncio.ensure_future(cl.queue.get())
                    done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        break
                    await ws.send_json(get.result())
                    self.pushed += 1
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        except (ConnectionError, RuntimeError):
            pass  # the browser went away mid-send
        finally:
            self.clients.discard(cl)
            session.sockets.discard(ws)


async def _drain_incoming(ws: Any) -> None:
    """Browsers send nothing we act on; read until the socket closes (that is how a close is noticed)."""
    async for _msg in ws:
        pass


async def _close(ws: Any) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=CLOSE_EXPIRED, message=b"session expired")


__all__ = ["CLOSE_EXPIRED", "Client", "LiveHub", "command_view"]
