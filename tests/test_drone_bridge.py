"""The drone bridge against the drone simulator over real links (UDP sockets, a pseudo-terminal), no broker:
what it publishes is collected as the gateway's MQTT link would send it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket

from aiowait import aio, until
from pymavlink.dialects.v20 import ardupilotmega as mav

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_drone
from lookout.gateway.core.commands import check_signature
from lookout.gateway.core.config import from_dict
from lookout.gateway.core.journal import Journal
from lookout.gateway.core.metrics import Metrics
from lookout.gateway.core.registry import Registry
from lookout.gateway.links.mavlink import DroneBridge
from lookout.gateway.links.mavlink.signing import now_10us
from lookout.gateway.links.mavlink.tuning import Tuning
from lookout.protocols import messages
from lookout.simulators.drone import Config, SimDrone

SITE = "s1"
FAST = Tuning(ack_timeout_s=0.3, in_progress_s=3.0, watchdog_s=0.05)


class World:
    """A bridge and what it published, with its key store and journal in ``tmp``."""

    def __init__(self, tmp, endpoints, drones=({"id": "uav-1", "sysid": 1},), **mavlink):
        self.cfg = from_dict({"gateway": {"site": SITE, "data_dir": str(tmp)},
                              "mavlink": {"endpoint": list(endpoints), **mavlink}, "drone": list(drones)})
        self.ks = KeyStore(tmp / "ks.db")
        self.keys = {d["sysid"]: provision_drone(self.ks, d.get("id", f"drone-{d['sysid']}"), SITE,
                                                 d["sysid"]).hmac_key for d in drones}
        self.registry = Registry(self.cfg.registry)
        self.journal = Journal(tmp / "journal.db")
        self.metrics = Metrics()
        self.out: list[tuple[str, bytes, int, bool]] = []
        self.bridge = DroneBridge(self.cfg.mavlink, SITE, self.ks, self.registry, self.journal, self.publish,
                                  metrics=self.metrics, data_dir=tmp, tuning=FAST)

    def publish(self, topic, payload, qos, retain):
        self.out.append((topic, payload, qos, retain))

    def got(self, dev, channel):
        return [json.loads(p) for t, p, _, _ in self.out if t == f"lookout/v1/{SITE}/{dev}/{channel}"]

    def results(self, cid, dev="uav-1"):
        return [r for r in self.got(dev, "res") if r["id"] == cid]

    def close(self):
        self.journal.close()
        self.ks.close()


def port_of(bridge, i=0):
    return bridge.router.endpoints[i].local_port


async def command(w, name, args=None, cid=None, timeout=8.0):
    """Run one command through the transport as the command service would; its final result."""
    v = w.bridge.vehicles["uav-1"]
    cid = cid or f"c-{name}-{len(w.out)}"
    await w.bridge.transport.send(w.registry.get("uav-1"), b"", {"id": cid, "name": name, "args": args or {}})
    await until(lambda: any(messages.is_final(r["status"]) for r in w.results(cid)), timeout, f"{name} result",
                seen=lambda: w.results(cid))
    res = w.results(cid)
    for r in res:  # every result is signed with the drone's key, purpose res
        assert check_signature(w.ks, "uav-1", "res", r) is None
    assert v.link == "up"
    return res


@aio
async def test_serial_pty_link_takeoff_goto_rtl_with_results(tmp_path):
    """Over a real pseudo-terminal (pyserial on the gateway side): the link comes up, telemetry is published,
    takeoff reports IN_PROGRESS then done, goto and rtl come back done with the MAV_RESULT name."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    w = World(tmp_path, [{"name": "radio", "url": f"serial:{path}:57600"}])
    try:
        async with w.bridge, SimDrone(Config(sysid=1), f"fd:{master}", key=w.keys[1]) as sim:
            await until(lambda: w.got("uav-1", "loc") and w.got("uav-1", "hb"), 5, "telemetry over the pty")
            birth = w.got("uav-1", "state")[0]
            assert birth["online"] and birth["kind"] == "drone" and "goto" in birth["caps"]
            assert messages.validate("loc", w.got("uav-1", "loc")[0])["src"] == "mavlink"
            assert (await command(w, "arm"))[-1]["status"] == "done"
            assert (await command(w, "set_mode", {"mode": "guided"}))[-1]["status"] == "done"
            res = await command(w, "takeoff", {"alt_m": 3})
            assert [r["status"] for r in res][0] == "accepted" and res[-1]["status"] == "done"
            assert res[0]["data"]["mav_result"] == "MAV_RESULT_IN_PROGRESS" and "progress" in res[0]["data"]
            res = await command(w, "goto", {"lat": 302501000, "lon": 1201501000, "alt_m": 5})
            assert res[-1] == {**res[-1], "status": "done", "data": {"mav_result": "MAV_RESULT_ACCEPTED"}}
            assert sim.vehicle.target == (30.2501, 120.1501, 5.0)
            for name, args in (("orbit", {"radius_m": 20}), ("hold", {}), ("video_start", {}), ("video_stop", {})):
                assert (await command(w, name, args))[-1]["status"] == "done", name
            assert sim.vehicle.mode == 5 and sim.vehicle.orbit is None  # hold = ArduCopter LOITER
            res = await command(w, "mission", {"points": "30.2502,120.1502;30.2503,120.1503,6"})
            assert [r["data"].get("phase") for r in res] == ["uploaded", None] and res[-1]["data"]["items"] == 3
            assert sim.vehicle.mode == 3 and len(sim.vehicle.mission) == 4  # AUTO; home + 2 points + RTL
            sim.vehicle._say(mav.MAV_SEVERITY_CRITICAL, "EKF variance")  # an autopilot emergency
            await until(lambda: [e for e in w.got("uav-1", "evt") if e["kind"] == "autopilot"], 2, "the event")
            evt = [e for e in w.got("uav-1", "evt") if e["kind"] == "autopilot"][0]
            assert (evt["sev"], evt["detail"]) == ("critical", "EKF variance")
            assert check_signature(w.ks, "uav-1", "evt", evt) is None
            res = await command(w, "rtl")
            assert res[-1]["status"] == "done" and sim.vehicle.mode == 6
            assert (await command(w, "takeoff", {"alt_m": 3}))[-1]["code"] == "denied"  # in RTL, not guided
            assert sim.rejected == 0 and w.bridge.vehicles["uav-1"].dropped == {}
    finally:
        os.close(slave)
        w.close()


@aio
async def test_gateway_drops_unsigned_and_badly_signed_telemetry_and_replays(tmp_path):
    """A drone configured as signed: frames without a signature, with the wrong key, or replayed never reach the
    registry, MQTT or a ground station; each is counted per endpoint and per drone, and in the metrics."""
    w = World(tmp_path, [{"name": "radio", "url": "udpin:127.0.0.1:0"}], link_timeout_ms=500)
    try:
        async with w.bridge:
            port = port_of(w.bridge)
            v = w.bridge.vehicles["uav-1"]
            async with SimDrone(Config(sysid=1), f"udp:127.0.0.1:{port}"):  # no key: unsigned
                await until(lambda: v.dropped["unsigned"] >= 10, 3, "unsigned frames dropped")
            async with SimDrone(Config(sysid=1), f"udp:127.0.0.1:{port}", key=bytes(32)):  # someone else's key
                await until(lambda: v.dropped["bad_signature"] >= 10, 3, "forged frames dropped")
            assert v.link != "up" and not w.got("uav-1", "loc") and not w.got("uav-1", "hb")
            assert all(not s["online"] for s in w.got("uav-1", "state"))  # only the "no link" death
            # a signed frame captured off the air and played back is a replay
            sender = mav.MAVLink(None, 1, 1)
            sender.signing.secret_key, sender.signing.sign_outgoing = w.keys[1], True
            sender.signing.timestamp = now_10us()
            frame = mav.MAVLink_heartbeat_message(2, 3, 1, 0, 3, 3).pack(sender)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(frame, ("127.0.0.1", port))
                await until(lambda: v.link == "up", 2, "the genuine frame")
                s.sendto(frame, ("127.0.0.1", port))
                await until(lambda: v.dropped["replay"] == 1, 2, "the replay dropped")
            st = w.bridge.router.endpoints[0].stats
            assert st.dropped["unsigned"] == v.dropped["unsigned"] and st.dropped["replay"] == 1
            text = _metrics(w.metrics)
            assert 'lookout_mavlink_dropped_total{endpoint="radio",reason="unsigned"}' in text
            assert 'lookout_drone_dropped_total{drone="uav-1",reason="bad_signature"}' in text
    finally:
        w.close()


def _metrics(m):
    from prometheus_client import generate_latest
    return generate_latest(m.registry).decode()


@aio
async def test_signed_simulator_refuses_unsigned_and_forged_commands(tmp_path):
    """The simulated autopilot with signing set up (pymavlink's own signing code) ignores an unsigned or wrongly
    signed ARM, and obeys a correctly signed one."""
    key = bytes(range(32))
    async with SimDrone(Config(sysid=1), "udpin:127.0.0.1:0", key=key) as sim:
        port = sim.link.local_port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)

            def arm(k):
                m = mav.MAVLink(None, 245, 190)
                if k is not None:
                    m.signing.secret_key, m.signing.sign_outgoing = k, True
                    m.signing.timestamp = now_10us()
                return mav.MAVLink_command_long_message(1, 1, 400, 0, 1, 0, 0, 0, 0, 0, 0).pack(m)

            s.sendto(arm(None), ("127.0.0.1", port))
            await until(lambda: sim.rejected == 1, 2, "unsigned command refused")
            s.sendto(arm(bytes(32)), ("127.0.0.1", port))
            await until(lambda: sim.rejected == 2, 2, "forged command refused")
            assert not sim.vehicle.armed and sim.vehicle.commands_seen == []
            s.sendto(arm(key), ("127.0.0.1", port))
            await until(lambda: sim.vehicle.armed, 2, "signed command obeyed")
            rx = mav.MAVLink(None)
            rx.robust_parsing = True
            rx.signing.secret_key, rx.signing.timestamp = key, now_10us()
            acks = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    acks += [m for m in rx.parse_buffer(s.recv(4096)) or [] if m.get_type() == "COMMAND_ACK"]
            assert [(a.command, a.result) for a in acks] == [(400, 0)] and acks[0].get_signed()


@aio
async def test_router_keeps_the_pilots_ground_station_in_control(tmp_path):
    """The raw stream reaches a forward endpoint (the duty desk's QGC/MAVProxy) minus what it blocks and minus the
    bridge's own ACKs; the ground station's signed command reaches the drone and its ACK comes back to it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as qgc:
        qgc.bind(("127.0.0.1", 0))
        qgc.setblocking(False)
        w = World(tmp_path, [{"name": "radio", "url": "udpin:127.0.0.1:0"},
                             {"name": "desk", "url": f"udpout:127.0.0.1:{qgc.getsockname()[1]}", "forward": True,
                              "block": ["ATTITUDE"]}])
        try:
            async with w.bridge, SimDrone(Config(sysid=1), f"udp:127.0.0.1:{port_of(w.bridge)}", key=w.keys[1]) as sim:
                await until(lambda: w.bridge.vehicles["uav-1"].link == "up", 3, "link up")
                assert (await command(w, "arm"))[-1]["status"] == "done"  # a COMMAND_ACK to the bridge (245)
                rx = mav.MAVLink(None)
                rx.robust_parsing = True
                seen: list = []

                def drain():
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            seen.extend(rx.parse_buffer(qgc.recv(4096)) or [])
                    return seen
                await until(lambda: {"HEARTBEAT", "GLOBAL_POSITION_INT"} <= {m.get_type() for m in drain()}, 3,
                            "the raw stream at the desk")
                assert all(m.get_srcSystem() == 1 for m in seen) and "ATTITUDE" not in {m.get_type() for m in seen}
                assert not [m for m in seen if m.get_type() == "COMMAND_ACK"]  # the bridge's ACK stayed with us
                pilot = mav.MAVLink(None, 255, 190)
                pilot.signing.secret_key, pilot.signing.sign_outgoing = w.keys[1], True
                pilot.signing.timestamp = now_10us()
                qgc.sendto(mav.MAVLink_command_long_message(1, 1, mav.MAV_CMD_DO_SET_MODE, 0, 1, 5, 0, 0, 0, 0, 0)
                           .pack(pilot), w.bridge.router.endpoints[1]._transport.get_extra_info("sockname"))
                await until(lambda: sim.vehicle.mode == 5, 3, "the pilot's mode change")
                await until(lambda: any(m.get_type() == "COMMAND_ACK" and m.target_system == 255 for m in drain()),
                            3, "the ACK back at the desk")
                assert w.bridge.router.gcs_routes[255][0].name == "desk"
        finally:
            w.close()


@aio
async def test_link_loss_and_recovery_are_published_and_journaled(tmp_path):
    """Silence for longer than link_timeout_ms: a last heartbeat saying the link is lost, the retained death
    (reason link-lost) and a journal entry; frames again: a new birth (next bdseq) and "link restored"."""
    w = World(tmp_path, [{"name": "radio", "url": "udpin:127.0.0.1:0"}], link_timeout_ms=500)
    try:
        async with w.bridge, SimDrone(Config(sysid=1), f"udp:127.0.0.1:{port_of(w.bridge)}", key=w.keys[1]) as sim:
            v = w.bridge.vehicles["uav-1"]
            await until(lambda: v.link == "up", 3, "link up")
            sim.cut(1.2)
            await until(lambda: v.link == "lost", 2, "link lost")
            states = w.got("uav-1", "state")
            assert states[-1] == {"bdseq": 0, "online": False, "reason": "link-lost"}
            assert w.got("uav-1", "hb")[-1]["x_link"] == "lost"
            await until(lambda: v.link == "up", 3, "link restored")
            assert w.got("uav-1", "state")[-1]["online"] and w.got("uav-1", "state")[-1]["bdseq"] == 1
            w.journal.drain()
            lines = [e.summary for e in w.journal.entries() if e.kind == "state"]
            assert lines[0] == "drone uav-1 link up (sysid 1 on radio)"
            assert lines[1].startswith("drone uav-1 link lost: no MAVLink frame for 0.")
            assert re.fullmatch(r"drone uav-1 link restored after \d+\.\d s", lines[2])
            assert json.loads((tmp_path / "mavlink.json").read_text()) == {"bdseq": {"uav-1": 1}}
    finally:
        w.close()


@aio
async def test_decimation_publishes_a_50hz_stream_at_2hz_and_the_last_position_last(tmp_path):
    w = World(tmp_path, [{"name": "radio", "url": "udpin:127.0.0.1:0"}], loc_hz=2, link_timeout_ms=5000,
              stream_hz=0)  # keep the simulator's 50 Hz (the bridge would ask for 10)
    try:
        async with w.bridge, SimDrone(Config(sysid=1, pos_hz=50), f"udp:127.0.0.1:{port_of(w.bridge)}",
                                      key=w.keys[1]) as sim:
            v = w.bridge.vehicles["uav-1"]
            await until(lambda: v.link == "up", 3, "link up")
            sim.vehicle.armed, sim.vehicle.mode, sim.vehicle.alt = True, 4, 10.0
            sim.vehicle.target = (30.26, 120.16, 10.0)  # flying: every sample differs
            n0, t0 = v.received, asyncio.get_running_loop().time()
            await asyncio.sleep(1.6)
            sim.cut(5)
            rate = (v.received - n0) / (asyncio.get_running_loop().time() - t0)
            await asyncio.sleep(1.0)  # longer than 1.5 periods: the tail has gone out
            locs = w.got("uav-1", "loc")
            assert rate > 50  # the stream really was 50 Hz of positions (and ~10 Hz of the rest)
            assert 3 <= len(locs) <= 6
            last = locs[-1]
            assert (last["lat"], last["lon"]) == v.pos[:2]  # the newest position, not an older sample
            assert [m["seq"] for m in locs] == list(range(1, len(locs) + 1))
    finally:
        w.close()


@aio
async def test_tcp_and_udpout_links_and_measured_faults(tmp_path):
    """The other two transports (a TCP client to SITL's kind of port, udpout to a drone listening), and a lossy,
    corrupting link: loss is measured from sequence gaps per drone and per link, corrupt frames are counted, and
    the link stays up."""
    async with SimDrone(Config(sysid=1), "tcpin:127.0.0.1:0") as tcp_sim, \
            SimDrone(Config(sysid=2), "udpin:127.0.0.1:0") as udp_sim:
        w = World(tmp_path, [{"name": "sitl", "url": f"tcp:127.0.0.1:{tcp_sim.link.local_port}"},
                             {"name": "radio", "url": f"udpout:127.0.0.1:{udp_sim.link.local_port}"}],
                  drones=({"id": "uav-1", "sysid": 1, "signed": False}, {"id": "uav-2", "sysid": 2, "signed": False}),
                  stream_hz=50)
        try:
            async with w.bridge:
                v1, v2 = w.bridge.vehicles["uav-1"], w.bridge.vehicles["uav-2"]
                await until(lambda: v1.link == "up" and v2.link == "up", 5, "both links up")
                assert (v1.route[0].name, v2.route[0].name) == ("sitl", "radio")
                await until(lambda: udp_sim.vehicle.rates["GLOBAL_POSITION_INT"] == 50, 2,
                            "SET_MESSAGE_INTERVAL asked at link up and obeyed")
                udp_sim.faults.loss_pct, udp_sim.faults.corrupt_pct = 20, 5
                r0, l0 = v2.received, v2.lost
                h0 = udp_sim.vehicle.gcs_heartbeats, tcp_sim.vehicle.gcs_heartbeats
                await asyncio.sleep(2.0)
                beats = (udp_sim.vehicle.gcs_heartbeats - h0[0], tcp_sim.vehicle.gcs_heartbeats - h0[1])
                assert all(1 <= b <= 3 for b in beats), beats  # the bridge's own HEARTBEAT, 1 Hz, to each drone
                loss = 100 * (v2.lost - l0) / (v2.received - r0 + v2.lost - l0)
                assert 12 < loss < 45, loss  # ~20 % dropped plus the corrupt ones (a bad length byte can take more)
                radio = w.bridge.router.endpoints[1].stats
                assert radio.bad > 0 and radio.lost > 0 and w.bridge.router.endpoints[0].stats.lost == 0
                assert v2.link == "up"
                hb = messages.validate("hb", v2.hb_message(0 + 1_800_000_000_000, 5))
                assert hb["x_loss_pct"] > 5
        finally:
            w.close()


@aio
async def test_out_of_range_telemetry_is_dropped_and_counted_and_the_link_survives(tmp_path):
    """A vehicle sending nonsense (a latitude of 200 degrees, a photo geotag off the globe) must not take the link
    down (over TCP an exception in the protocol callback would close the connection): the bad value is dropped and
    counted, everything after it still arrives."""
    async with SimDrone(Config(sysid=1), "tcpin:127.0.0.1:0") as sim:
        w = World(tmp_path, [{"name": "sitl", "url": f"tcp:127.0.0.1:{sim.link.local_port}"}],
                  drones=({"id": "uav-1", "sysid": 1, "signed": False},), stream_hz=0)
        try:
            async with w.bridge:
                v = w.bridge.vehicles["uav-1"]
                await until(lambda: v.link == "up" and w.got("uav-1", "loc"), 5, "link up")
                ep = w.bridge.router.endpoints[0]
                transport = ep._transport
                sim.vehicle.rates["GLOBAL_POSITION_INT"] = 0  # only our frames from now on
                await asyncio.sleep(0.6)
                n = len(w.got("uav-1", "loc"))
                sim.emit(mav.MAVLink_global_position_int_message(0, 2_000_000_000, 1201500000, 0, 0, 0, 0, 0, 0))
                sim.emit(mav.MAVLink_camera_image_captured_message(0, 0, 1, 2_000_000_000, 4_000_000_000 - 2**32, 0,
                                                                   0, [1, 0, 0, 0], 7, 1, b"x"))
                await asyncio.sleep(0.6)
                sim.emit(mav.MAVLink_global_position_int_message(0, 302600000, 1201600000, 0, 0, 0, 0, 0, 0))
                await until(lambda: len(w.got("uav-1", "loc")) > n, 3, "the good position after the bad one")
                assert w.got("uav-1", "loc")[-1]["lat"] == 302600000
                assert all(abs(m["lat"]) <= 900_000_000 for m in w.got("uav-1", "loc"))
                assert ep._transport is transport and ep.up  # the same TCP connection: never dropped
                assert v.dropped["invalid"] >= 1
                photo = [e for e in w.got("uav-1", "evt") if e["kind"] == "photo"]
                assert photo and "lat" not in photo[0]  # the event, without the impossible geotag
        finally:
            w.close()
