"""A simulated drone under the real gateway and a real Mosquitto: registry device, MQTT proxy, operator commands
through the command path (journaled, with results), resend on a lost ACK, geofence, link loss and recovery."""

from __future__ import annotations

import asyncio
import json

from aiowait import until
from gwserve import serving

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_drone
from lookout.gateway.core.config import from_dict
from lookout.gateway.service.app import Gateway
from lookout.simulators.drone import Config, SimDrone

AREA = [[30.20, 120.10], [30.20, 120.20], [30.30, 120.20], [30.30, 120.10]]


def make_cfg(tmp_path, url, **mavlink):
    return from_dict({
        "gateway": {"id": "gw-1", "site": "dongshan", "data_dir": str(tmp_path / "data")},
        "broker": {"url": url},
        "commands": {"retry_s": 5, "wait_s": 8},
        "mavlink": {"endpoint": [{"name": "radio", "url": "udpin:127.0.0.1:0"}], "area": AREA, "max_alt_m": 100,
                    "ack_timeout_ms": 300, **mavlink},
        "drone": [{"id": "uav-1", "sysid": 1}],
    })


async def op(gw, name, args=None, **kw):
    r = await gw.handle_op("op-1", "command", {"to": "uav-1", "name": name, "args": args or {}, "priority": 1,
                                               "queue": False, "wait": "final", "wait_s": 8, **kw})
    return r, r["data"]["results"][0] if r.get("data") else None


def test_drone_is_a_device_and_flies_through_the_command_path(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        key = provision_drone(ks, "uav-1", "dongshan", 1).hmac_key
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            port = gw.drones.router.endpoints[0].local_port
            async with SimDrone(Config(sysid=1, lat=30.25, lon=120.15), f"udp:127.0.0.1:{port}", key=key) as sim:
                def dev():
                    return gw.registry.get("uav-1")
                await until(lambda: dev().state == "online" and dev().last_loc and "bat_pct" in dev().info, 8,
                            "drone online with telemetry", seen=lambda: vars(dev()))
                d = dev()
                assert d.kind == "drone" and d.transport == "drone" and d.last_loc["src"] == "mavlink"
                assert d.info["state"] == "stabilize" and d.info["link"] == "ok" and d.info["armed"] is False
                assert 95 <= d.info["bat_pct"] <= 100 and d.info["gps_fix"] == 3 and d.info["loss_pct"] == 0

                r, res = await op(gw, "arm")
                assert r["code"] == "ok" and res["status"] == "done"
                r, res = await op(gw, "takeoff", {"alt_m": 3})  # not in guided mode: the autopilot says no
                assert r["code"] == "failed" and (res["status"], res["code"]) == ("rejected", "denied")
                assert res["data"]["mav_result"] == "MAV_RESULT_DENIED"
                await op(gw, "set_mode", {"mode": "guided"})
                r, res = await op(gw, "takeoff", {"alt_m": 3})
                assert res["status"] == "done" and res["data"]["mav_result"] == "MAV_RESULT_ACCEPTED"
                takeoff = gw.commands.get(res["id"])
                assert takeoff.accepted_ms is not None  # IN_PROGRESS made it accepted before it was done

                sim.faults.drop_acks = 1  # the first ACK of the goto is lost on the way back
                before = len(sim.vehicle.commands_seen)
                r, res = await op(gw, "goto", {"lat": 302505000, "lon": 1201505000, "alt_m": 5})
                assert res["status"] == "done" and res["data"]["attempts"] == 2
                assert sim.vehicle.commands_seen[before:] == [(192, 0), (192, 0)]  # COMMAND_INT: no confirmation

                sim.faults.drop_acks = 1
                r, res = await op(gw, "rtl")
                assert res["status"] == "done" and res["data"]["attempts"] == 2
                assert sim.vehicle.commands_seen[-2:] == [(20, 0), (20, 1)]  # resent with confirmation + 1

                n = len(sim.vehicle.commands_seen)
                r, res = await op(gw, "goto", {"lat": 304000000, "lon": 1201500000, "alt_m": 20})
                assert r["code"] == "failed" and (res["status"], res["code"]) == ("refused", "geofence")
                assert "outside the site's operating area" in res["detail"]
                await asyncio.sleep(0.3)
                assert len(sim.vehicle.commands_seen) == n  # nothing went to the drone

                r, res = await op(gw, "photo")
                assert res["status"] == "done"
                await until(lambda: [e for e in gw.journal.entries() if e.kind == "alert"], 3, "the photo event")

                gw.journal.drain()
                entries = gw.journal.entries(device="uav-1")
                results = [e.summary for e in entries if e.kind == "result"]
                assert any(s.startswith("takeoff ") and s.endswith(": accepted") for s in results)
                assert any(s.startswith("goto ") and s.endswith(": done") for s in results)
                assert any(s.startswith("rtl ") and s.endswith(": done") for s in results)
                assert [json.loads(e.detail)["code"] for e in entries if e.summary == "goto -> uav-1: refused"] == ["geofence"]
                photo = [e for e in gw.journal.entries() if e.kind == "alert"][0]
                assert photo.summary == "info photo at uav-1" and abs(json.loads(photo.detail)["lat"] - 302500000) < 10_000  # geotag
                assert all(e.operator == "op-1" for e in entries if e.kind in ("command", "result"))
                assert gw.journal.verify().ok
                assert gw.commands.forged == 0 and gw.commands.unsigned == 0
        ks.close()

    asyncio.run(asyncio.wait_for(main(), 40))


def test_link_loss_makes_the_drone_offline_and_its_return_online(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        key = provision_drone(ks, "uav-1", "dongshan", 1).hmac_key
        cfg = make_cfg(tmp_path, mosquitto.url, link_timeout_ms=500)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            port = gw.drones.router.endpoints[0].local_port
            async with SimDrone(Config(sysid=1), f"udp:127.0.0.1:{port}", key=key) as sim:
                def dev():
                    return gw.registry.get("uav-1")
                await until(lambda: dev().state == "online", 8, "online")
                sim.cut(1.5)
                await until(lambda: dev().state == "offline", 3, "offline after the link is lost",
                            seen=lambda: vars(dev()))
                assert dev().info["link"] == "lost" and dev().reason == "death"
                r, res = await op(gw, "rtl")
                assert r["code"] == "offline" and res["status"] == "refused"  # queue=False: not kept for later
                await until(lambda: dev().state == "online" and dev().info["link"] == "ok", 4, "online again")
                assert dev().bdseq == 1
                gw.journal.drain()
                states = [e.summary for e in gw.journal.entries(device="uav-1") if e.kind == "state"]
                assert "drone uav-1 link up (sysid 1 on radio)" in states
                assert any(s.startswith("drone uav-1 link lost") for s in states)
                assert any(s.startswith("uav-1 online -> offline") for s in states)
                assert any(s.startswith("drone uav-1 link restored") for s in states)
        ks.close()

    asyncio.run(asyncio.wait_for(main(), 40))
