"""The linkage meets the real bridges: a rule's escalation dispatches a simulated officer's recorder (SimRecorder on a
pseudo-terminal, through the real recorder bridge) and a simulated drone (SimDrone over UDP, through the real MAVLink
bridge); the units arrive, the incident goes on scene, the officer's clip is filed as its evidence and closes it,
and the units are released. The sensor is the real firmware (SimNode); the broker is Mosquitto."""

from __future__ import annotations

import asyncio
import binascii
import json

from aiowait import until
from gwserve import serving

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_drone, provision_recorder
from lookout.gateway.core.config import from_dict
from lookout.gateway.linkage import dispatch
from lookout.gateway.linkage.geo import haversine_m
from lookout.gateway.service.app import Gateway
from lookout.gateway.service.operator_api import device_view
from lookout.simulators.drone import Config as DroneConfig
from lookout.simulators.drone import SimDrone
from lookout.simulators.node import SimNode, make_config
from lookout.simulators.recorder import LineConfig, OfficerWalk, SimRecorder

SITE = "dongshan"
FERRY = (299050000, 1196100000)
NEAR = (299077000, 1196100000)  # ~300 m north of the ferry
FAR = (299140000, 1196100000)  # ~1 km north
HOME = (29.9050, 119.6162)  # the drone's pad, ~600 m east
AREA = [[29.88, 119.58], [29.88, 119.64], [29.93, 119.64], [29.93, 119.58]]
FAST = 3_000_000  # baud: the clip takes a fraction of a second


def gateway_cfg(tmp_path, url):
    return from_dict({
        "gateway": {"id": "gw-1", "site": SITE, "data_dir": str(tmp_path / "data")},
        "broker": {"url": url},
        "registry": {"min_hb_s": 1},
        "commands": {"retry_s": 2, "max_attempts": 3, "wait_s": 5},
        "zones": {"ferry": ["sen-ferry"]},
        "recorders": {"devices": [str(tmp_path / "dev" / "rec-*")], "scan_ms": 100},
        "mavlink": {"endpoint": [{"name": "radio", "url": "udpin:127.0.0.1:0"}], "area": AREA, "max_alt_m": 120,
                    "ack_timeout_ms": 300},
        "drone": [{"id": "uav-1", "sysid": 1}],
        "linkage": {"rule": [{"name": "ferry-serious", "match": {"kind": "presence", "zone": "ferry"},
                              "escalate": {"after_s": 1, "officer": True,
                                           "drone": {"action": "orbit", "radius_m": 30, "alt_m": 40}}}]},
    })


def officer(tmp_path, ks, dev, name, who, at):
    key = provision_recorder(ks, dev, SITE, officer=who).hmac_key
    return SimRecorder(dev, key, tmp_path / dev, tmp_path / "dev" / name, LineConfig(baud=FAST), hb_s=2, loc_s=1,
                       walk=OfficerWalk(lat=at[0], lon=at[1], speed_cms=0))


def test_escalation_dispatches_a_real_recorder_and_drone_until_on_scene_evidence_and_release(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        ident = ks.ensure("sen-ferry", SITE, "sensor")
        ncfg = make_config("sen-ferry", SITE, "sensor", binascii.hexlify(ident.hmac_key).decode(), mosquitto.host,
                           mosquitto.port, hb_s=5, position={"lat": FERRY[0], "lon": FERRY[1], "alt_mm": 0},
                           sensor={"sensitivity": 100, "min_interval_s": 0, "debounce_ms": 0})
        sensor = SimNode(tmp_path / "nodes" / "sen-ferry", ncfg, speed=20, pir=True)
        near = officer(tmp_path, ks, "bwc-1", "rec-1", "p-near", NEAR)
        far = officer(tmp_path, ks, "bwc-2", "rec-2", "p-far", FAR)
        dkey = provision_drone(ks, "uav-1", SITE, 1).hmac_key
        async with serving(Gateway(gateway_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            port = gw.drones.router.endpoints[0].local_port
            dcfg = DroneConfig(sysid=1, lat=HOME[0], lon=HOME[1], speed=100.0, climb=20.0, sink=20.0)
            async with SimDrone(dcfg, f"udp:127.0.0.1:{port}", key=dkey) as drone:
                await sensor.start()
                await near.start()
                await far.start()
                units = ("sen-ferry", "bwc-1", "bwc-2", "uav-1")
                await until(lambda: all((d := gw.registry.get(i)) and d.state == "online" and d.last_loc
                                        for i in units), 10, "sensor, recorders and drone online with positions",
                            seen=lambda: {i: (d.state, bool(d.last_loc)) for i in units if (d := gw.registry.get(i))})
                await until(lambda: "bat_pct" in gw.registry.get("uav-1").info, 5, "drone battery")
                # what the bridges publish is what the ranking reads
                rv = device_view(gw.registry.get("bwc-1"))
                assert rv[dispatch.VIEW_OFFICER] == "p-near" and rv[dispatch.VIEW_BUSY] is False
                dv = device_view(gw.registry.get("uav-1"))
                info = dv["info"]
                assert info[dispatch.INFO_LINK] == dispatch.LINK_OK and info[dispatch.INFO_BATTERY] >= 90
                assert info[dispatch.INFO_ARMED] is False and dv[dispatch.VIEW_BUSY] is False

                sensor.trigger_pir()
                await until(lambda: gw.linkage.store.active, 5, "an incident")
                [inc] = gw.linkage.store.active.values()
                await until(lambda: inc.escalated, 5, "the escalation")
                # the officer's recorder gets the order (where, which incident, what to read) and records
                await until(lambda: near.dispatch is not None and near.recording is not None, 8,
                            "dispatch and record_start on the nearest recorder",
                            seen=lambda: [c["name"] for c in near.commands_run])
                assert far.dispatch is None and far.recording is None
                assert near.dispatch["incident"] == inc.id and (near.dispatch["lat"], near.dispatch["lon"]) == FERRY
                assert "请前往" in near.dispatch["text"] and "Go to" in near.dispatch["text"]
                assert near.recording["incident"] == inc.id and near.state == "recording"
                [pick] = [json.loads(e.detail) for e in gw.journal.entries(kind="incident")
                          if "dispatch officer p-near" in e.summary]
                etas = {c["device"]: c["eta_s"] for c in pick["candidates"]}
                assert pick["chosen"] == "bwc-1" and set(etas) == {"bwc-1", "bwc-2"} and etas["bwc-1"] < etas["bwc-2"]
                # the drone: launched (guided, armed, take-off), then the orbit around the event
                await until(lambda: drone.vehicle.orbit is not None, 15, "the orbit order",
                            seen=lambda: drone.vehicle.commands_seen)
                cmds = [c for c, _conf in drone.vehicle.commands_seen]
                assert [c for c in cmds if c in (176, 400, 22, 34)] == [176, 400, 22, 34]
                assert (round(drone.vehicle.orbit[0] * 1e7), round(drone.vehicle.orbit[1] * 1e7)) == FERRY
                # the officer walks there (the simulated world); the first unit within reach puts it on scene
                near.walk.head_to(*FERRY, speed_cms=6000)
                await until(lambda: inc.state in ("on_scene", "closed"), 15, "on scene",
                            seen=lambda: (inc.state, inc.units))
                await until(lambda: all(u.get("arrived_ms") for u in inc.units.values()), 15, "both units arrived",
                            seen=lambda: inc.units)
                d = haversine_m(*FERRY, round(drone.vehicle.lat * 1e7), round(drone.vehicle.lon * 1e7))
                assert d <= 30 + 50 + 30  # on its circle (radius 30 m), give or take a telemetry period
                assert inc.history[-1]["state"] == "on_scene"
                # the officer stops recording; the clip uploads, is verified, becomes the evidence, closes it
                clip = near.stop_recording(40_000)
                sha = near.clip(clip)["sha256"]
                closed = await until(lambda: gw.linkage.store.get(inc.id).state == "closed"
                                     and gw.linkage.store.get(inc.id), 10, "closed on evidence")
                assert [e["sha256"] for e in closed.evidence] == [sha]
                assert closed.history[-1]["by"] == "gateway" and "evidence" in closed.history[-1]["why"]
                # released: the recorder's task is cleared, the drone flies home
                await until(lambda: near.dispatch is None and drone.vehicle.mode == 6, 8, "units released",
                            seen=lambda: (near.dispatch, drone.vehicle.mode))
                await until(lambda: not device_view(gw.registry.get("bwc-1"))["busy"], 6, "the officer free again")
                assert gw.journal.verify().ok
            await near.stop()
            await far.stop()
            await sensor.stop()
        ks.close()

    asyncio.run(asyncio.wait_for(main(), 90))
