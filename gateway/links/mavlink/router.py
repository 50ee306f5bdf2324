"""Routing between MAVLink endpoints, like mavlink-router, with the bridge as one more ground station.

Theory of operation
-------------------
Every frame read on any endpoint passes ``Router.on_data``. Per frame, in this order:
1. parse (pymavlink, per byte stream); a corrupt frame is counted (``bad``) and goes nowhere;
2. a frame on a *vehicle* endpoint from a vehicle the bridge knows (configured or provisioned, by system id) must
   verify if that vehicle is signed (gateway/links/mavlink/signing.py): unsigned, badly signed and replayed frames
   are dropped and counted, per endpoint and per vehicle, and never forwarded either;
3. sequence numbers are followed per (endpoint, sysid, compid) for the link's loss figure; the endpoint and peer
   become the vehicle's route, so what we send it goes back the way it last came (link failover for free);
4. the bridge gets the message (``on_vehicle``) and the raw frame is forwarded, unchanged, to every
   ``forward = true`` endpoint (a QGroundControl or MAVProxy on the duty desk), except message types that endpoint
   blocks and frames addressed to the bridge itself (our command ACKs);
5. a frame *from* a forward endpoint (the pilot's ground station) goes to the endpoint its target vehicle was last
   heard on, or to every vehicle endpoint when it targets no one; never back where it came from, and the bridge
   does not act on it. So the bridge never takes a drone away from the pilot's own ground station.
Frames from system ids the bridge does not know are routed (2, 4) but not bridged: they are not devices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lookout.gateway.links.mavlink.endpoints import Endpoint
from lookout.gateway.links.mavlink.signing import Verifier
from lookout.gateway.links.mavlink.vehicle import Vehicle

log = logging.getLogger(__name__)

OnVehicle = Callable[[Vehicle, Any, str, int], None]  # (vehicle, message, message type, now_ms)


class Router:
    def __init__(self, own_sysid: int, verifier: Verifier, vehicles: dict[int, Vehicle], on_vehicle: OnVehicle,
                 clock: Callable[[], int]):
        self.own = own_sysid
        self.verifier = verifier
        self.vehicles = vehicles  # by system id
        self.on_vehicle = on_vehicle
        self.clock = clock
        self.endpoints: list[Endpoint] = []
        self.gcs: list[Endpoint] = []  # forward endpoints
        self.unknown: dict[int, int] = {}  # frames from system ids that are no vehicle of ours, per sysid
        self.gcs_routes: dict[int, tuple[Endpoint, Any]] = {}  # ground station sysid -> where it was heard

    def add(self, ep: Endpoint) -> None:
        self.endpoints.append(ep)
        if ep.forward:
            self.gcs.append(ep)

    def on_data(self, ep: Endpoint, data: bytes, peer: Any) -> None:
        msgs = ep.parser(peer).feed(data)
        if not msgs:
            return
        now = self.clock()
        if ep.forward:
            for m in msgs:
                self._from_gcs(ep, m, peer)
            return
        st = ep.stats
        vehicles = self.vehicles
        gcs = self.gcs
        for m in msgs:
            t = m._type
            if t == "BAD_DATA":
                st.bad += 1
                continue
            hdr = m._header
            sysid = hdr.srcSystem
            compid = hdr.srcComponent
            st.rx_frames += 1
            veh = vehicles.get(sysid)
            if veh is not None:
                if veh.signed:
                    why = self.verifier.verify(m._msgbuf, sysid, compid)
                    if why is not None:
                        st.dropped[why] += 1
                        veh.dropped[why] += 1
                        continue
                st.count_seq(sysid, compid, hdr.seq)
                veh.count_seq((ep.index, compid), hdr.seq)
                route = veh.route
                if route is None or route[0] is not ep or route[1] != peer:
                    veh.route = (ep, peer)
                try:
                    self.on_vehicle(veh, m, t, now)
                except Exception:
                    veh.dropped["error"] += 1
                    if veh.dropped["error"] & (veh.dropped["error"] - 1) == 0:  # 1st, 2nd, 4th, 8th ...
                        log.exception("%s: %s frame could not be handled (%d so far)", veh.id, t,
                                      veh.dropped["error"])
            else:
                st.count_seq(sysid, compid, hdr.seq)
                self.unknown[sysid] = self.unknown.get(sysid, 0) + 1
            if gcs:
                if getattr(m, "target_system", 0) == self.own:
                    continue
                frame = m._msgbuf
                for g in gcs:
                    if t not in g.block:
                        g.send(frame)

    def _from_gcs(self, ep: Endpoint, m: Any, peer: Any) -> None:
        st = ep.stats
        t = m._type
        if t == "BAD_DATA":
            st.bad += 1
            return
        hdr = m._header
        st.rx_frames += 1
        st.count_seq(hdr.srcSystem, hdr.srcComponent, hdr.seq)
        self.gcs_routes[hdr.srcSystem] = (ep, peer)
        tgt = getattr(m, "target_system", 0)
        if tgt == self.own:
            return
        frame = m._msgbuf
        veh = self.vehicles.get(tgt) if tgt else None
        if veh is not None and veh.route is not None:
            out, to = veh.route
            if out is not ep:
                out.send(frame, to)
            return
        for out in self.endpoints:
            if out is not ep and not out.forward:
                out.send(frame)

    def stats(self) -> list[dict[str, Any]]:
        return [ep.describe() for ep in self.endpoints]


__all__ = ["Router"]
