"""The simulated reservoir of a scenario: nodes running the real firmware, officers with body-worn recorders,
drones, an intruder. Everything here is the *world*; nothing here decides what the gateway does.

Theory of operation
-------------------
``SimWorld`` provisions an identity for every device in the demo's key store (as ``lookout provision`` would),
then runs each device on its real link: a ``SimNode`` per ``[[node]]`` (MQTT to the broker), a ``SimRecorder`` per
``[[officer]]`` on a pseudo-terminal the gateway's recorder bridge picks up (``recorder_glob``), a ``SimDrone`` per
``[[drone]]`` over UDP to the gateway's MAVLink endpoint. ``play`` runs the story on the scenario clock (wall
seconds × speed): an intruder walks past a sensor's PIR every ``every_s`` until an officer has dealt with them; a
node's application hangs (its tasks stop, its TCP session stays up, so only the heartbeat timeout can tell).

People behave as people do, from what their devices show them: an officer walks the beat (``patrol_mps``, on foot)
until the recorder shows a dispatch order, then travels to the place it names (road distance = the straight line ×
the site's road factor, at the officer speed of the rules, so the gateway's ETA is what it takes), deals with the
intruder for ``handle_s``, stops recording (the clip then uploads by itself), and resumes the beat once the
recorder's task is cleared. Drones need no behaviour: their autopilots obey the gateway's MAVLink commands.
Every step is told through ``say`` as a ``WORLD`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookout.gateway.demo import timescale
from lookout.gateway.demo.scenario import Event, Officer, Scenario
from lookout.gateway.linkage.geo import haversine_m
from lookout.simulators.drone import Config as DroneConfig
from lookout.simulators.drone import SimDrone
from lookout.simulators.node import SimNode, make_config, wav_bytes
from lookout.simulators.recorder import LineConfig, OfficerWalk, SimRecorder

log = logging.getLogger("lookout.demo.world")

CLIP = "nofish"  # the warning every speaker holds: "禁止钓鱼，请离开" (no fishing, please leave)
CLIP_MS = 6000  # its length in real time (played at the demo's speed)
PIR_GAP_S = 0.4  # two PIR edges this far apart: a person walking past (sensitivity 50 needs two within 3 s)
TICK_S = 0.05  # how often the world looks at its people
DRONE_CRUISE_MPS = 12.0  # the simulated drones' cruise speed when the rules do not say ([linkage.speed])
HANDLED_M = 200.0  # an officer on scene deals with the intruders this close


@dataclass
class Person:
    """An officer in the world: the recorder they carry and what they are doing."""

    officer: Officer
    sim: SimRecorder
    doing: str = "patrol"  # patrol | going | on_scene | done
    target: tuple[int, int] | None = None
    since: float = 0.0  # wall time the current activity began
    incident: str | None = None


@dataclass
class Intruder:
    event: Event
    node: str
    lat: int
    lon: int
    next_at: float  # wall time of the next PIR pass
    handled: bool = False
    passes: int = 0


@dataclass
class SimWorld:
    sc: Scenario
    speed: float
    data: Path
    url: str
    say: Callable[[str], None] = print
    nodes: dict[str, SimNode] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)  # officer id -> person
    drones: dict[str, SimDrone] = field(default_factory=dict)
    intruders: list[Intruder] = field(default_factory=list)
    silenced: list[str] = field(default_factory=list)
    t0: float = 0.0  # wall time the story began

    # -- set-up -----------------------------------------------------------------------------------------------
    def recorder_glob(self) -> str:
        return str(self.data / "dev" / "rec-*")

    def speeds(self) -> tuple[float, float]:
        """(officer m/s on the road, drone m/s) as the scenario's rules state them (real time)."""
        sp = self.sc.linkage.get("speed") or {}
        return float(sp.get("officer_mps", 8.3)), float(sp.get("drone_mps", DRONE_CRUISE_MPS))

    def road_factor(self) -> float:
        site = (self.sc.linkage.get("site") or {}).get(self.sc.site) or {}
        return float(site.get("road_factor", self.sc.linkage.get("road_factor", 1.2)))

    def provision(self, ks: Any) -> None:
        """Identities for every device, as `lookout provision` makes them."""
        from lookout.gateway.admin.provision import provision_drone, provision_recorder

        for n in self.sc.nodes:
            ks.ensure(n.id, self.sc.site, n.role)
        for o in self.sc.officers:
            if ks.get(o.recorder) is None:
                provision_recorder(ks, o.recorder, self.sc.site, officer=o.id)
        for d in self.sc.drones:
            if ks.get(d.id) is None:
                provision_drone(ks, d.id, self.sc.site, d.sysid)

    async def start(self, ks: Any, mavlink_port: int | None, stack: contextlib.AsyncExitStack) -> None:
        from urllib.parse import urlsplit

        u = urlsplit(self.url)
        s = self.speed
        hb = timescale.hb_s(s)
        for n in self.sc.nodes:
            cfg = make_config(n.id, self.sc.site, n.role, bytes(ks.get(n.id).hmac_key).hex(), u.hostname,
                              u.port or 1883, hb_s=hb, loc_s=max(1, round(5 / s)),
                              position={"lat": n.lat, "lon": n.lon, "alt_mm": 112000},
                              sensor={"sensitivity": 50, "debounce_ms": 200,
                                      "min_interval_s": timescale.seconds(30, s)})
            cfg["broker"]["keepalive"] = 30
            sim = SimNode(self.data / "nodes" / n.id, cfg, speed=s, pir=n.role != "speaker",
                          camera=n.role == "camera")
            if n.role == "speaker":
                sim.add_clip(CLIP, wav_bytes(CLIP_MS))
            self.nodes[n.id] = sim
        for i, o in enumerate(self.sc.officers):
            walk = OfficerWalk(lat=o.lat, lon=o.lon, speed_cms=round(self.sc.world.patrol_mps * 100), seed=i + 1)
            rec = SimRecorder(o.recorder, bytes(ks.get(o.recorder).hmac_key), self.data / "recorders" / o.recorder,
                              self.data / "dev" / f"rec-{i + 1}", LineConfig(baud=self.sc.world.baud), officer=o.id,
                              hb_s=max(1, round(30 / s)), loc_s=1, walk=walk)
            self.people[o.id] = Person(o, rec)
        stack.push_async_callback(self.stop)
        for sim in self.nodes.values():
            await sim.start()
        for p in self.people.values():
            await p.sim.start()
        _, drone_mps = self.speeds()
        for d in self.sc.drones:
            if mavlink_port is None:
                break
            dcfg = DroneConfig(sysid=d.sysid, lat=d.lat / 1e7, lon=d.lon / 1e7, speed=drone_mps * s,
                               climb=2.5 * s, sink=1.5 * s, battery_pct=float(d.battery_pct),
                               drain_air=0.05 * s, drain_ground=0.002 * s)
            sim_d = SimDrone(dcfg, f"udp:127.0.0.1:{mavlink_port}", key=bytes(ks.get(d.id).hmac_key))
            self.drones[d.id] = await stack.enter_async_context(sim_d)

    async def stop(self) -> None:
        for p in self.people.values():
            with contextlib.suppress(Exception):
                await p.sim.stop()
        for dev, sim in self.nodes.items():
            try:
                await (sim.kill() if dev in self.silenced else sim.stop())
            except Exception as e:  # noqa: BLE001 - shutting down: report, keep stopping the rest
                log.warning("stopping %s: %r", dev, e)

    # -- the story --------------------------------------------------------------------------------------------
    def scenario_s(self) -> float:
        return (time.monotonic() - self.t0) * self.speed if self.t0 else 0.0

    def begin(self) -> None:
        self.t0 = time.monotonic()
        for p in self.people.values():
            if p.officer.busy:
                p.sim.start_recording()
                self.say(f"WORLD   {p.officer.name} ({p.officer.id}) is recording another matter: busy")

    async def play(self, stop: asyncio.Event) -> None:
        """Run the story until ``stop`` is set."""
        pending = list(self.sc.events)
        while not stop.is_set():
            now = time.monotonic()
            while pending and self.t0 + pending[0].at_s / self.speed <= now:
                self._happen(pending.pop(0), now)
            self._intruders(now)
            self._officers(now)
            await asyncio.sleep(TICK_S)

    def _happen(self, e: Event, now: float) -> None:
        if e.silence:
            node = self.nodes[e.silence].node
            for t in list(node.tasks if node is not None else []):
                t.cancel()  # heartbeat, location, sender... gone; the MQTT client keeps pinging: no last will
            self.silenced.append(e.silence)
            self.say(f"WORLD   {e.silence} hangs: its application stops, its TCP session stays up (MQTT keepalive),"
                     f" so no last will; only the missing heartbeats can tell")
        elif e.intruder:
            n = self.sc.node(e.intruder)
            assert n is not None  # checked when the scenario was loaded
            self.intruders.append(Intruder(e, n.id, n.lat, n.lon, now))
            self.say(f"WORLD   someone walks onto the bank at {n.name} ({n.id}) at night, with a fishing rod")

    def _intruders(self, now: float) -> None:
        for x in self.intruders:
            if x.handled or now < x.next_at:
                continue
            x.passes += 1
            x.next_at = now + x.event.every_s / self.speed
            sim = self.nodes[x.node]
            sim.trigger_pir()
            asyncio.get_running_loop().call_later(PIR_GAP_S, sim.trigger_pir)
            if x.passes > 1:
                self.say(f"WORLD   the intruder is still at {x.node} (pass {x.passes} of the PIR)")

    def _officers(self, now: float) -> None:
        officer_mps, _ = self.speeds()
        road = self.road_factor()
        for p in self.people.values():
            sim, who = p.sim, f"{p.officer.name} ({p.officer.id})"
            order = sim.dispatch
            if order is not None and p.doing == "patrol" and isinstance(order.get("lat"), int):
                p.target = (order["lat"], order["lon"])
                p.incident = order.get("incident")
                dist = haversine_m(sim.walk.lat, sim.walk.lon, *p.target)
                # straight to the place at the road speed over the road factor: the road, in its own time
                sim.walk.head_to(*p.target, speed_cms=round(officer_mps / road * self.speed * 100))
                p.doing, p.since = "going", now
                self.say(f"WORLD   {who} reads the order on the recorder and sets off for {p.incident}: "
                         f"{dist:.0f} m in a straight line, {dist * road:.0f} m by road")
            elif p.doing == "going" and p.target is not None and sim.walk.distance_m(*p.target) < 1.0:
                p.doing, p.since = "on_scene", now
                self.say(f"WORLD   {who} is at the place ({(now - self.t0) * self.speed:.0f} s scenario time)")
            elif p.doing == "on_scene" and now - p.since >= self.sc.world.handle_s / self.speed:
                p.doing, p.since = "done", now
                gone = [x for x in self.intruders if not x.handled
                        and haversine_m(x.lat, x.lon, sim.walk.lat, sim.walk.lon) <= HANDLED_M]
                for x in gone:
                    x.handled = True
                what = "talks the angler off the bank" if gone else "finds nobody there"
                if sim.recording is not None:
                    clip = sim.stop_recording(self.sc.world.clip_kb * 1024)
                    meta = sim.clip(clip) or {}
                    self.say(f"WORLD   {who} {what} and stops recording: clip {clip} "
                             f"({meta.get('size', 0) // 1024} KB, sha256 {str(meta.get('sha256'))[:16]}…) "
                             "goes up the recorder's link")
                else:
                    self.say(f"WORLD   {who} {what}")
            elif p.doing in ("on_scene", "done") and order is None:
                p.doing, p.target = "patrol", None
                sim.walk.target = None
                sim.walk.speed_cms = round(self.sc.world.patrol_mps * 100)
                self.say(f"WORLD   {who}'s recorder shows no task any more: back on the beat")

    def drone_alt_m(self, dev: str) -> float | None:
        d = self.drones.get(dev)
        return None if d is None else d.vehicle.alt

    def officer_of(self, recorder: str) -> Officer | None:
        return next((p.officer for p in self.people.values() if p.officer.recorder == recorder), None)


__all__ = ["CLIP", "Intruder", "Person", "SimWorld"]
