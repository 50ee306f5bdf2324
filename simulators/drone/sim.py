"""A simulated drone on a real link: ``SimVehicle`` + pymavlink's codec + signing + fault injection, on asyncio.

Theory of operation
-------------------
``async with SimDrone(cfg, "udp:127.0.0.1:14550", key=...) as d`` opens the link and runs one task that, every
1/``tick_hz`` s, steps the physics and sends the telemetry that is due; every frame that arrives is parsed and
answered at once. With a ``key`` the drone behaves like an autopilot with MAVLink 2 signing set up: it signs what
it sends and ignores any frame that is unsigned, badly signed or replayed (pymavlink's own signing code, so the
gateway's signing is checked against an independent implementation); ``rejected`` counts them.

Faults (``Faults``, changeable while it runs): ``loss_pct`` of outgoing frames dropped, ``in_loss_pct`` of what
arrives (each read: a UDP datagram) dropped, ``corrupt_pct`` with one byte flipped, ``cut(seconds)`` (nothing in or
out, a link cut), ``drop_acks`` (the next n COMMAND_ACKs lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any, Self

from pymavlink.dialects.v20 import ardupilotmega as mav

from lookout.simulators.drone.link import Link, open_link
from lookout.simulators.drone.vehicle import Config, SimVehicle

EPOCH_2015_S = 1420070400


@dataclass
class Faults:
    loss_pct: float = 0.0
    in_loss_pct: float = 0.0  # the uplink: frames from the ground station lost
    corrupt_pct: float = 0.0
    drop_acks: int = 0
    cut_until: float = 0.0  # loop time
    seed: int = 1
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)


class SimDrone:
    def __init__(self, cfg: Config, link: str, key: bytes | None = None, faults: Faults | None = None,
                 tick_hz: float = 50.0):
        self.cfg = cfg
        self.link_spec = link
        self.key = key
        self.faults = faults or Faults()
        self.tick_hz = max(tick_hz, cfg.pos_hz)
        self.mav = mav.MAVLink(None, cfg.sysid, cfg.compid)
        self.mav.robust_parsing = True
        if key is not None:
            s = self.mav.signing
            s.secret_key = key
            s.sign_outgoing = True
            s.link_id = 0
            s.timestamp = (time.time_ns() - EPOCH_2015_S * 1_000_000_000) // 10_000
            s.allow_unsigned_callback = None  # unsigned frames are refused (what we want of a signed drone)
        self.vehicle: SimVehicle
        self.link: Link | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.received = 0
        self.rejected = 0  # frames refused by signing (unsigned, bad signature, replay)
        self.bad = 0  # frames that failed to parse
        self.gcs: tuple[int, int] = (0, 0)  # the last ground station that spoke to us (sysid, compid)

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def __aenter__(self) -> Self:
        self.vehicle = SimVehicle(self.cfg, self.now)
        self.link = await open_link(self.link_spec, self._on_bytes)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"simdrone-{self.cfg.sysid}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.link is not None:
            self.link.close()

    def cut(self, seconds: float) -> None:
        """Cut the link for ``seconds``: nothing is sent or heard (a drone behind a hill)."""
        self.faults.cut_until = self.now + seconds

    async def _run(self) -> None:
        period = 1.0 / self.tick_hz
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while True:
            now = loop.time()
            v = self.vehicle
            v.step(now)
            for m in v.pending(now, self.gcs):
                self.emit(m)
            for m in v.telemetry(now):
                self.emit(m)
            nxt += period
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            if loop.time() - nxt > 1.0:  # fell far behind (a stalled machine): don't send a burst
                nxt = loop.time()

    def emit(self, msg: Any) -> None:
        """Pack (and sign) one message and send it through the faults."""
        f = self.faults
        frame = bytearray(msg.pack(self.mav))
        self.mav.seq = (self.mav.seq + 1) % 256  # a lost frame still used its sequence number: the gap shows loss
        if self.now < f.cut_until:
            return
        if f.drop_acks and msg.get_type() == "COMMAND_ACK":
            f.drop_acks -= 1
            return
        if f.loss_pct and f.rng.random() * 100 < f.loss_pct:
            return
        if f.corrupt_pct and f.rng.random() * 100 < f.corrupt_pct:
            i = f.rng.randrange(1, len(frame))
            frame[i] ^= 0xFF
        if self.link is not None:
            self.link.send(bytes(frame))
            self.sent += 1

    def _on_bytes(self, data: bytes) -> None:
        f = self.faults
        if self.now < f.cut_until or (f.in_loss_pct and f.rng.random() * 100 < f.in_loss_pct):
            return
        try:
            msgs = self.mav.parse_buffer(data) or []
        except mav.MAVError:
            self.bad += 1
            return
        now = self.now
        for m in msgs:
            if m.get_type() == "BAD_DATA":
                if "signature" in str(getattr(m, "reason", "")):
                    self.rejected += 1
                else:
                    self.bad += 1
                continue
            self.received += 1
            src = (m.get_srcSystem(), m.get_srcComponent())
            if m.get_type() != "HEARTBEAT" or m.type == mav.MAV_TYPE_GCS:
                self.gcs = src
            self.vehicle.step(now)
            for r in self.vehicle.handle(m, now, src):
                self.emit(r)


__all__ = ["Faults", "SimDrone"]
