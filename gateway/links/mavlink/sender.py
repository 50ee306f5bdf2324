"""The MAVLink command and mission protocols, done once for every Lookout drone command (MAVSDK's command sender).

Theory of operation
-------------------
``CommandSender.run(sysid, compid, spec)`` sends one COMMAND_LONG (or COMMAND_INT, for commands with a position)
and waits for the COMMAND_ACK that names the same command (mavlink.io "Command Protocol"):
- no ACK within ``ack_timeout_s``: send again, COMMAND_LONG with ``confirmation`` + 1 (so the autopilot knows it
  is a resend, not a second request), at most ``command_retries`` times, then ``timeout``;
- ``MAV_RESULT_IN_PROGRESS``: the command runs; its ``progress`` goes to ``on_progress`` and we wait up to
  ``in_progress_s`` for each further ACK (no resend: it arrived), until a final result or ``command_cap_s``;
- any other result is final and returned as an ``Outcome`` (a result name, never an exception: MAVSDK's habit).
One command of a given MAV_CMD per vehicle at a time: the ACK names only the command, so a second one waits.

``MissionUploader.upload`` is the mission upload (mavlink.io "Mission Protocol"): MISSION_COUNT, then one
MISSION_ITEM_INT per MISSION_REQUEST_INT (or legacy MISSION_REQUEST) the vehicle asks for, until MISSION_ACK. Each
step waits ``mission_timeout_s`` and resends what we last sent, at most ``mission_retries`` times.

Both only build messages and hand them to ``send(sysid, msg)``: the bridge signs and routes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lookout.gateway.links.mavlink.codec import MAV, MISSION_RESULT_NAMES, RESULT_NAMES
from lookout.gateway.links.mavlink.tuning import Tuning

Send = Callable[[int, Any], None]  # (target sysid, message) -> packed, signed and routed by the bridge

# MAV_RESULT -> our outcome name (the MAV_RESULT name itself travels with it)
RESULTS = {MAV.MAV_RESULT_ACCEPTED: "success", MAV.MAV_RESULT_TEMPORARILY_REJECTED: "temporarily_rejected",
           MAV.MAV_RESULT_DENIED: "denied", MAV.MAV_RESULT_UNSUPPORTED: "unsupported",
           MAV.MAV_RESULT_FAILED: "failed", MAV.MAV_RESULT_IN_PROGRESS: "in_progress",
           6: "cancelled",  # MAV_RESULT_CANCELLED: newer than this pymavlink's dialect
           MAV.MAV_RESULT_COMMAND_LONG_ONLY: "command_long_only", MAV.MAV_RESULT_COMMAND_INT_ONLY: "command_int_only"}


@dataclass(frozen=True)
class Spec:
    """One MAVLink command. ``use_int``: COMMAND_INT with x/y as degE7 integers in ``frame``."""

    command: int
    p1: float = 0.0
    p2: float = 0.0
    p3: float = 0.0
    p4: float = 0.0
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    use_int: bool = False
    frame: int = MAV.MAV_FRAME_GLOBAL_RELATIVE_ALT

    def message(self, sysid: int, compid: int, attempt: int) -> Any:
        if self.use_int:
            return MAV.MAVLink_command_int_message(sysid, compid, self.frame, self.command, 0, 0, self.p1, self.p2,
                                                   self.p3, self.p4, int(self.x), int(self.y), self.z)
        return MAV.MAVLink_command_long_message(sysid, compid, self.command, min(attempt, 255), self.p1, self.p2,
                                                self.p3, self.p4, self.x, self.y, self.z)


@dataclass(frozen=True)
class Outcome:
    """How a command or an upload ended: ``result`` is ``success``, a MAV_RESULT/MAV_MISSION_RESULT outcome name,
    ``timeout`` or ``no_route``; ``mav_result`` the protocol's own name for it (None when nothing answered)."""

    result: str
    mav_result: str | None = None
    detail: str = ""
    attempts: int = 1
    progress: int | None = None

    @property
    def ok(self) -> bool:
        return self.result == "success"


class CommandSender:
    def __init__(self, own_sysid: int, send: Send, tuning: Tuning):
        self.own = own_sysid
        self.send = send
        self.tuning = tuning
        self._queues: dict[tuple[int, int], asyncio.Queue[Any]] = {}
        self._locks: dict[tuple[int, int], asyncio.Lock] = {}

    def on_ack(self, sysid: int, msg: Any) -> None:
        """A COMMAND_ACK from ``sysid`` (already authenticated by the router)."""
        tgt = getattr(msg, "target_system", 0)
        if tgt not in (0, self.own):
            return  # an ACK for another ground station on the same link
        q = self._queues.get((sysid, msg.command))
        if q is not None:
            q.put_nowait(msg)

    async def run(self, sysid: int, compid: int, spec: Spec,
                  on_progress: Callable[[int | None], None] | None = None) -> Outcome:
        key = (sysid, spec.command)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            q: asyncio.Queue[Any] = asyncio.Queue()
            self._queues[key] = q
            try:
                return await self._run(sysid, compid, spec, q, on_progress)
            finally:
                self._queues.pop(key, None)

    async def _run(self, sysid: int, compid: int, spec: Spec, q: asyncio.Queue[Any],
                   on_progress: Callable[[int | None], None] | None) -> Outcome:
        t = self.tuning
        attempts = 0
        for attempt in range(1 + t.command_retries):
            attempts = attempt + 1
            try:
                self.send(sysid, spec.message(sysid, compid, attempt))
            except ConnectionError as e:
                return Outcome("no_route", None, str(e), attempts)
            ack = await _get(q, t.ack_timeout_s)
            if ack is None:
                continue
            loop = asyncio.get_running_loop()
            cap = loop.time() + t.command_cap_s
            progress = None
            while ack is not None and ack.result == MAV.MAV_RESULT_IN_PROGRESS:
                progress = ack.progress if ack.progress <= 100 else None  # 255 = progress unknown
                if on_progress is not None:
                    on_progress(progress)
                ack = await _get(q, max(0.0, min(t.in_progress_s, cap - loop.time())))
            if ack is None:
                return Outcome("timeout", RESULT_NAMES[MAV.MAV_RESULT_IN_PROGRESS],
                               f"in progress, then no final COMMAND_ACK within {t.in_progress_s:g} s", attempts,
                               progress)
            name = RESULT_NAMES.get(ack.result, f"MAV_RESULT_{ack.result}")
            return Outcome(RESULTS.get(ack.result, "failed"), name, "", attempts, progress)
        return Outcome("timeout", None, f"no COMMAND_ACK after {attempts} attempts "
                                        f"({t.ack_timeout_s:g} s each)", attempts)


class MissionUploader:
    def __init__(self, own_sysid: int, send: Send, tuning: Tuning):
        self.own = own_sysid
        self.send = send
        self.tuning = tuning
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def on_message(self, sysid: int, msg: Any) -> None:
        """MISSION_REQUEST_INT, MISSION_REQUEST or MISSION_ACK from ``sysid``."""
        if getattr(msg, "target_system", 0) not in (0, self.own) or getattr(msg, "mission_type", 0) != 0:
            return
        q = self._queues.get(sysid)
        if q is not None:
            q.put_nowait(msg)

    async def upload(self, sysid: int, compid: int, items: list[Any]) -> Outcome:
        """Upload ``items`` (MISSION_ITEM_INT messages numbered 0..n-1) as the vehicle's mission."""
        lock = self._locks.setdefault(sysid, asyncio.Lock())
        async with lock:
            q: asyncio.Queue[Any] = asyncio.Queue()
            self._queues[sysid] = q
            try:
                return await self._upload(sysid, compid, items, q)
            finally:
                self._queues.pop(sysid, None)

    async def _upload(self, sysid: int, compid: int, items: list[Any], q: asyncio.Queue[Any]) -> Outcome:
        t = self.tuning
        last = MAV.MAVLink_mission_count_message(sysid, compid, len(items), MAV.MAV_MISSION_TYPE_MISSION)
        tries = 0
        sent = 0
        while True:
            try:
                self.send(sysid, last)
            except ConnectionError as e:
                return Outcome("no_route", None, str(e), sent + 1)
            sent += 1
            msg = await _get(q, t.mission_timeout_s)
            if msg is None:
                tries += 1
                if tries > t.mission_retries:
                    return Outcome("timeout", None, f"no answer to {last.get_type()} after {tries} tries "
                                                    f"({t.mission_timeout_s:g} s each)", sent)
                continue
            tries = 0
            kind = msg.get_type()
            if kind == "MISSION_ACK":
                name = MISSION_RESULT_NAMES.get(msg.type, f"MAV_MISSION_{msg.type}")
                if msg.type == MAV.MAV_MISSION_ACCEPTED:
                    return Outcome("success", name, f"{len(items)} items", sent)
                return Outcome(name.removeprefix("MAV_MISSION_").lower(), name, "vehicle refused the mission", sent)
            if not 0 <= msg.seq < len(items):
                return Outcome("failed", None, f"vehicle asked for item {msg.seq} of {len(items)}", sent)
            last = items[msg.seq]


async def _get(q: asyncio.Queue[Any], timeout: float) -> Any:
    """The next queued message within ``timeout`` s, else None (asyncio.timeout: a cancel is never lost)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            return await q.get()
    return None


__all__ = ["CommandSender", "MissionUploader", "Outcome", "Spec"]
