"""Simulated MAVLink drones (ArduCopter-like multicopters) for tests, the bench and ``lookout sim drone``.

``vehicle`` is the aircraft (kinematics, battery, modes, command semantics; sans-IO), ``link`` the radio/UDP/TCP
side, ``sim`` puts them together with signing and fault injection. ``fleet`` starts several with distinct system
ids, spread a few tens of metres apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from lookout.simulators.drone.sim import Faults, SimDrone
from lookout.simulators.drone.vehicle import Config, SimVehicle


@contextlib.asynccontextmanager
async def fleet(count: int, link: Callable[[int], str], first_sysid: int = 1,
                key: Callable[[int], bytes | None] = lambda sysid: None, **cfg: float) -> AsyncIterator[list[SimDrone]]:
    """``count`` drones, sysid ``first_sysid``..; ``link(sysid)`` and ``key(sysid)`` give each its link and key."""
    async with contextlib.AsyncExitStack() as stack:
        drones = []
        for i in range(count):
            sysid = first_sysid + i
            c = Config(sysid=sysid, **cfg)  # type: ignore[arg-type]
            c.lat += 0.0003 * i
            drones.append(await stack.enter_async_context(SimDrone(c, link(sysid), key=key(sysid))))
        yield drones


__all__ = ["Config", "Faults", "SimDrone", "SimVehicle", "fleet"]
