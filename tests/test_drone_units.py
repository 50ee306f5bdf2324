"""Drone bridge units, no network: config, decimation, MAVLink 2 signing, commands -> MAVLink, geofence, telemetry
mapping, and the command/mission protocols against an in-process vehicle (simulated time where it matters)."""

from __future__ import annotations

import asyncio
import hashlib
import re

import pytest
from aiowait import aio
from pymavlink.dialects.v20 import ardupilotmega as mav

from lookout.gateway.core.config import ConfigError, from_dict
from lookout.gateway.core.config_mavlink import DroneConfig
from lookout.gateway.links.mavlink import actions
from lookout.gateway.links.mavlink.codec import Encoder, Parser, mode_name, mode_number
from lookout.gateway.links.mavlink.decimate import Decimator
from lookout.gateway.links.mavlink.sender import CommandSender, MissionUploader, Spec
from lookout.gateway.links.mavlink.signing import SigningClock, Verifier, now_10us
from lookout.gateway.links.mavlink.tuning import Tuning
from lookout.gateway.links.mavlink.vehicle import Vehicle
from lookout.protocols import messages

KEY = bytes(range(32))
BASE = {"gateway": {"site": "s1", "data_dir": "/tmp/x"}}
AREA = [[30.20, 120.10], [30.20, 120.20], [30.30, 120.20], [30.30, 120.10]]


def mcfg(**mavlink):
    d = {**BASE, "mavlink": {"endpoint": [{"name": "radio", "url": "udpin:127.0.0.1:0"}], **mavlink}}
    return from_dict(d).mavlink


def errors(d):
    with pytest.raises(ConfigError) as e:
        from_dict({**BASE, **d})
    return "\n".join(e.value.errors)


# -- config ------------------------------------------------------------------------------------------------------

def test_config_parses_endpoints_drones_routes_and_area():
    cfg = from_dict({**BASE, "mavlink": {
        "endpoint": [{"name": "radio", "url": "serial:/dev/ttyUSB0:57600"},
                     {"name": "lte", "url": "udpin:0.0.0.0:14550"},
                     {"name": "desk", "url": "udpout:[::1]:14551", "forward": True, "block": ["PARAM_VALUE"]},
                     {"name": "sitl", "url": "tcp:127.0.0.1:5760"}],
        "route": [{"name": "north", "points": [[30.25, 120.15], [30.26, 120.16, 60]]}],
        "area": AREA, "link_timeout_ms": 5000},
        "drone": [{"id": "uav-1", "sysid": 1, "endpoint": "radio"}, {"sysid": 7, "signed": False}]}).mavlink
    radio, lte, desk, sitl = cfg.endpoints
    assert (radio.scheme, radio.path, radio.baud) == ("serial", "/dev/ttyUSB0", 57600)
    assert (lte.scheme, lte.host, lte.port) == ("udpin", "0.0.0.0", 14550)
    assert (desk.host, desk.forward, desk.block) == ("::1", True, ("PARAM_VALUE",))
    assert sitl.scheme == "tcp" and cfg.link_timeout_ms == 5000 and cfg.heartbeat_hz == 1 and cfg.loc_hz == 2
    assert [(d.id, d.sysid, d.signed) for d in cfg.drones] == [("uav-1", 1, True), ("drone-7", 7, False)]
    assert cfg.routes_by_name["north"].points == ((302500000, 1201500000, 40), (302600000, 1201600000, 60))
    assert cfg.area[0] == (302000000, 1201000000)


def test_config_errors_name_the_key():
    text = errors({"mavlink": {"endpoint": [{"name": "radio", "url": "serial:/dev/ttyUSB0:12345"},
                                            {"name": "radio", "url": "http://x", "speed": 1}],
                               "area": [[30, 120], [31, 121]], "loc_hz": 0},
                   "drone": [{"sysid": 1, "endpoint": "nope"}, {"id": "Bad Id", "sysid": 1}, {"id": "x"}]})
    for expected in ("[[mavlink.endpoint]] #1 (radio).url: baud 12345: expected one of",
                     "[[mavlink.endpoint]] #2 (radio).name: 'radio' is used by another endpoint",
                     "[[mavlink.endpoint]] #2 (radio).url: expected one of udpin:, udpout:, tcp:, serial:",
                     "[[mavlink.endpoint]] #2 (radio).speed: unknown key",
                     "[mavlink].area: expected a polygon of at least 3",
                     "[mavlink].loc_hz: expected integer 1..50, got 0",
                     "[[drone]] #1.endpoint: 'nope' is not a [[mavlink.endpoint]] name (radio)",
                     "[[drone]] #2 (Bad Id).id: expected an id",
                     "[[drone]] #2 (Bad Id).sysid: 1 is used by another drone",
                     "[[drone]] #3 (x).sysid: required"):
        assert expected in text, f"{expected!r} not in\n{text}"
    assert "[[drone]]: needs a [mavlink] section" in errors({"drone": [{"sysid": 1}]})


# -- decimation --------------------------------------------------------------------------------------------------

def test_decimation_limits_the_rate_and_always_delivers_the_latest_value():
    """50 Hz in for 2 s, then silence: at most 2 Hz out, with the timer run as the bridge runs it, and the value
    that went out last is the last one that came in (no stale tail)."""
    d = Decimator(2)
    published: list[tuple[int, int]] = []  # (time, value)
    latest = None
    timer = None
    for i in range(100):  # a sample every 20 ms
        now = i * 20
        if timer is not None and now >= timer:
            if d.flush(timer):
                published.append((timer, latest))
            timer = None
        latest = i
        if d.offer(now):
            published.append((now, i))
        elif timer is None:
            timer = d.due_ms()
    assert timer is not None and d.flush(timer)  # the stream stopped: the held value goes out on its timer
    published.append((timer, latest))
    times = [t for t, _ in published]
    assert all(b - a >= 500 for a, b in zip(times, times[1:], strict=False))
    assert len(published) == 5  # t = 0, 500, 1000, 1500 and the tail
    assert published[-1][1] == 99 and timer - 1980 <= 750  # the last sample, at most 1.5 periods late
    assert [v for _, v in published[:4]] == [0, 25, 50, 75]  # steady stream: each goes out as it arrives


# -- MAVLink 2 signing -------------------------------------------------------------------------------------------

def signed_sender(key=KEY, ts=None, sysid=1):
    m = mav.MAVLink(None, sysid, 1)
    m.signing.secret_key = key
    m.signing.sign_outgoing = True
    m.signing.link_id = 3
    m.signing.timestamp = now_10us() if ts is None else ts
    return m


def frame(m, msg=None):
    msg = msg or mav.MAVLink_heartbeat_message(2, 3, 0, 0, 4, 3)
    b = msg.pack(m)
    m.seq = (m.seq + 1) % 256
    return b


def test_verifier_accepts_good_frames_and_names_each_bad_one():
    v = Verifier()
    v.set_key(1, KEY)
    good = signed_sender()
    f1, f2 = frame(good), frame(good)
    assert v.verify(f1, 1, 1) is None and v.verify(f2, 1, 1) is None
    assert v.verify(f1, 1, 1) == "replay"  # the same frame again (timestamp not above the stream's last)
    assert v.verify(frame(mav.MAVLink(None, 1, 1)), 1, 1) == "unsigned"
    assert v.verify(frame(signed_sender(bytes(32))), 1, 1) == "bad_signature"
    tampered = bytearray(frame(good))
    tampered[12] ^= 1
    assert v.verify(bytes(tampered), 1, 1) == "bad_signature"
    old = signed_sender(ts=now_10us() - 2 * 6_000_000, sysid=1)  # a new stream starting 2 minutes ago
    old.signing.link_id = 9
    assert v.verify(frame(old), 1, 1) == "replay"
    assert v.verify(frame(mav.MAVLink(None, 2, 1)), 2, 1) is None  # no key for sysid 2: not our business


def test_encoder_signs_what_pymavlink_verifies_and_timestamps_never_repeat():
    enc = Encoder(245, 190, SigningClock())
    rx = mav.MAVLink(None)
    rx.robust_parsing = True
    rx.signing.secret_key = KEY
    rx.signing.timestamp = now_10us()
    msg = mav.MAVLink_command_long_message(1, 1, 400, 0, 1, 0, 0, 0, 0, 0, 0)
    frames = [enc.pack(msg, i, KEY, link_id=2) for i in range(3)]
    got = [rx.parse_buffer(f)[0] for f in frames]
    assert [g.get_type() for g in got] == ["COMMAND_LONG"] * 3 and all(g.get_signed() for g in got)
    stamps = [int.from_bytes(f[-12:-6], "little") for f in frames]
    assert stamps == sorted(set(stamps)) and abs(stamps[0] - now_10us()) < 100_000
    assert rx.parse_buffer(frames[0])[0].get_type() == "BAD_DATA"  # replayed: pymavlink refuses it too
    plain = enc.pack(msg, 4)
    assert not plain[2] & 1 and Parser().feed(plain)[0].get_type() == "COMMAND_LONG"


# -- commands, arguments, geofence ---------------------------------------------------------------------------------

def test_check_refuses_bad_commands_and_the_geofence_before_anything_is_sent():
    cfg = mcfg(area=AREA, max_alt_m=100)
    inside = {"lat": 302500000, "lon": 1201500000, "alt_m": 40}
    assert actions.check("goto", inside, cfg) is None
    assert actions.check("goto", {**inside, "lat": 303500000}, cfg)[0] == "geofence"
    code, detail = actions.check("goto", {**inside, "alt_m": 150}, cfg)
    assert code == "geofence" and "above the site's limit of 100 m" in detail
    assert actions.check("orbit", {"lat": 302998000, "lon": 1201500000, "radius_m": 50}, cfg)[0] == "geofence"
    assert actions.check("orbit", {"lat": 302500000, "lon": 1201500000, "radius_m": 50}, cfg) is None
    assert actions.check("mission", {"points": "30.25,120.15;30.35,120.15"}, cfg)[0] == "geofence"
    assert actions.check("takeoff", {"alt_m": 101}, cfg)[0] == "geofence"
    assert actions.check("goto", {"lat": 302500000, "lon": 1201500000}, cfg) == ("bad_args", "alt_m: required by goto")
    assert actions.check("goto", {**inside, "lat": "30.25"}, cfg)[0] == "bad_args"
    assert actions.check("goto", {**inside, "yaw": 3}, cfg)[0] == "bad_args"
    assert actions.check("set_mode", {"mode": "warp"}, cfg)[0] == "bad_args"
    assert actions.check("play", {}, cfg)[0] == "unknown_command"
    assert actions.check("mission", {"points": "30.25,north"}, cfg)[0] == "bad_args"
    assert actions.check("mission", {"route": "nope"}, cfg)[0] == "bad_args"
    assert actions.check("goto", {**inside, "lat": 303500000}, mcfg()) is None  # no area configured: no fence


def test_plans_carry_positions_as_degE7_integers():
    cfg = mcfg()
    [step] = actions.plan("goto", {"lat": 302512345, "lon": 1201598765, "alt_m": 40}, cfg, None)
    msg = step.spec.message(1, 1, 0)
    assert msg.get_type() == "COMMAND_INT" and msg.command == mav.MAV_CMD_DO_REPOSITION
    assert (msg.x, msg.y, msg.z, msg.frame) == (302512345, 1201598765, 40, mav.MAV_FRAME_GLOBAL_RELATIVE_ALT)
    resend = actions.plan("rtl", {}, cfg, None)[0].spec.message(1, 1, 2)
    assert resend.get_type() == "COMMAND_LONG" and resend.confirmation == 2
    upload, start = actions.plan("mission", {"points": "30.25,120.15;30.26,120.16,60"}, cfg, (302400000, 1201400000, 20))
    items = actions.mission_items(1, 1, upload.points)
    assert [(i.seq, i.command, i.x, i.z) for i in items] == [
        (0, mav.MAV_CMD_NAV_WAYPOINT, 302400000, 20), (1, mav.MAV_CMD_NAV_WAYPOINT, 302500000, 40),
        (2, mav.MAV_CMD_NAV_WAYPOINT, 302600000, 60), (3, mav.MAV_CMD_NAV_RETURN_TO_LAUNCH, 0, 0)]
    assert start.spec.command == mav.MAV_CMD_MISSION_START
    assert actions.mode_spec(mav.MAV_AUTOPILOT_ARDUPILOTMEGA, "hold").p2 == 5  # ArduCopter LOITER
    px4 = actions.mode_spec(mav.MAV_AUTOPILOT_PX4, "hold")
    assert (px4.p2, px4.p3) == (4, 3)  # PX4 AUTO.LOITER
    assert mode_name(3, 1, 4) == "guided" and mode_name(3, 1, 99) == "mode_99" and mode_number(3, "rtl") == 6


# -- telemetry mapping ---------------------------------------------------------------------------------------------

def test_vehicle_maps_mavlink_to_valid_lookout_messages_and_counts_loss():
    v = Vehicle(DroneConfig("uav-1", 1), KEY, 2, 1)
    v.link, v.up_since_ms = "up", 1_800_000_000_000
    assert v.update(mav.MAVLink_heartbeat_message(2, 3, 1 | 128, 4, 4, 3), "HEARTBEAT", 0) == "hb"
    v.update(mav.MAVLink_sys_status_message(0, 0, 0, 0, 15400, 500, 64, 0, 0, 0, 0, 0, 0), "SYS_STATUS", 0)
    v.update(mav.MAVLink_gps_raw_int_message(0, 3, 0, 0, 0, 90, 100, 0, 0, 11), "GPS_RAW_INT", 0)
    v.update(mav.MAVLink_home_position_message(302400000, 1201400000, 20000, 0, 0, 0, [1, 0, 0, 0], 0, 0, 0),
             "HOME_POSITION", 0)
    gp = mav.MAVLink_global_position_int_message(0, 302500000, 1201500000, 60000, 40000, 300, 400, 0, 9000)
    assert v.update(gp, "GLOBAL_POSITION_INT", 1_800_000_000_100) == "loc"
    loc = messages.validate("loc", v.loc_message(1_800_000_000_200))
    assert (loc["lat"], loc["alt_mm"], loc["spd_cms"], loc["hdg_cd"], loc["fix"], loc["src"]) == \
        (302500000, 60000, 500, 9000, 1, "mavlink")
    assert loc["ts"] == 1_800_000_000_100 and loc["x_rel_alt_mm"] == 40000
    for s in (0, 1, 2, 5, 6):  # frames 3 and 4 lost
        v.count_seq((0, 1), s)
    hb = messages.validate("hb", v.hb_message(1_800_000_003_000, 5))
    assert (hb["state"], hb["x_armed"], hb["bat_mv"], hb["bat_pct"], hb["x_gps_fix"], hb["x_link"]) == \
        ("guided", True, 15400, 64, 3, "ok")
    assert hb["x_loss_pct"] == 29 and hb["up_s"] == 3 and hb["x_home_lat"] == 302400000  # 2 of 7
    assert v.hb_message(1_800_000_004_000, 5)["x_loss_pct"] == 29  # no new frames: the last window stands


# -- command and mission protocols -----------------------------------------------------------------------------------

class FakeAutopilot:
    """Answers what the sender sends, as scripted: a list of replies per attempt (None = the ACK is lost)."""

    def __init__(self, script):
        self.script = list(script)
        self.got = []
        self.sender = None

    def send(self, sysid, msg):
        self.got.append(msg)
        replies = self.script.pop(0) if self.script else []
        loop = asyncio.get_running_loop()
        for i, r in enumerate(replies or []):
            loop.call_later(0.01 * (i + 1), self.sender.on_ack, sysid, r)


def ack(result, progress=0, cmd=mav.MAV_CMD_NAV_TAKEOFF, to=245):
    return mav.MAVLink_command_ack_message(cmd, result, progress, 0, to, 190)


FAST = Tuning(ack_timeout_s=0.05, in_progress_s=0.2, mission_timeout_s=0.05)


@aio
async def test_sender_resends_with_confirmation_after_a_lost_ack():
    ap = FakeAutopilot([None, [ack(mav.MAV_RESULT_ACCEPTED)]])
    ap.sender = s = CommandSender(245, ap.send, FAST)
    out = await s.run(1, 1, Spec(mav.MAV_CMD_NAV_TAKEOFF, z=10))
    assert out.ok and out.attempts == 2 and out.mav_result == "MAV_RESULT_ACCEPTED"
    assert [m.confirmation for m in ap.got] == [0, 1]


@aio
async def test_sender_waits_through_in_progress_and_reports_progress():
    ap = FakeAutopilot([[ack(5, 10), ack(5, 60), ack(0, 100)]])
    ap.sender = s = CommandSender(245, ap.send, FAST)
    seen = []
    out = await s.run(1, 1, Spec(mav.MAV_CMD_NAV_TAKEOFF, z=10), seen.append)
    assert out.ok and seen == [10, 60] and len(ap.got) == 1  # no resend once the command is in progress


@aio
async def test_sender_outcomes_for_refusal_silence_and_foreign_acks():
    ap = FakeAutopilot([[ack(mav.MAV_RESULT_DENIED, to=99), ack(mav.MAV_RESULT_DENIED)]])
    ap.sender = s = CommandSender(245, ap.send, FAST)
    out = await s.run(1, 1, Spec(mav.MAV_CMD_NAV_TAKEOFF))
    assert (out.result, out.mav_result, out.attempts) == ("denied", "MAV_RESULT_DENIED", 1)  # the ACK to 99 ignored
    ap.script = [None] * 4
    out = await s.run(1, 1, Spec(mav.MAV_CMD_NAV_TAKEOFF))
    assert (out.result, out.mav_result, out.attempts) == ("timeout", None, 4) and len(ap.got) == 5
    ap.script = [[ack(5, 10)]]
    out = await s.run(1, 1, Spec(mav.MAV_CMD_NAV_TAKEOFF))
    assert (out.result, out.mav_result, out.progress) == ("timeout", "MAV_RESULT_IN_PROGRESS", 10)


@aio
async def test_mission_upload_retries_lost_steps_and_reports_the_vehicle_verdict():
    sent = []
    up = None

    def send(sysid, msg):
        sent.append(msg.get_type() + (f"#{msg.seq}" if hasattr(msg, "seq") else ""))
        loop = asyncio.get_running_loop()
        n = len(sent)
        if n == 1:
            return  # the first MISSION_COUNT is lost
        if msg.get_type() == "MISSION_COUNT":
            reply = mav.MAVLink_mission_request_int_message(245, 190, 0, 0)
        elif msg.seq + 1 < 3:
            reply = mav.MAVLink_mission_request_int_message(245, 190, msg.seq + 1, 0)
        else:
            reply = mav.MAVLink_mission_ack_message(245, 190, verdict, 0)
        loop.call_soon(up.on_message, sysid, reply)

    verdict = mav.MAV_MISSION_ACCEPTED
    up = MissionUploader(245, send, FAST)
    items = actions.mission_items(1, 1, ((1, 1, 1), (2, 2, 2), (3, 3, 3)))
    out = await up.upload(1, 1, items)
    assert out.ok and sent == ["MISSION_COUNT", "MISSION_COUNT", "MISSION_ITEM_INT#0", "MISSION_ITEM_INT#1",
                               "MISSION_ITEM_INT#2"]
    sent.clear()
    verdict = mav.MAV_MISSION_NO_SPACE
    out = await up.upload(1, 1, items)
    assert (out.result, out.mav_result) == ("no_space", "MAV_MISSION_NO_SPACE")
    sent.clear()
    silent = MissionUploader(245, lambda sysid, msg: sent.append(msg), FAST)
    out = await silent.upload(1, 1, items)
    assert out.result == "timeout" and len(sent) == 1 + FAST.mission_retries


def test_parser_survives_garbage_and_corrupt_frames():
    good = frame(mav.MAVLink(None, 1, 1))
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    p = Parser()
    out = p.feed(b"\x00garbage" + bytes(bad) + good) + p.feed(good[:5]) + p.feed(good[5:])
    kinds = [m.get_type() for m in out]
    assert kinds.count("HEARTBEAT") == 2 and "BAD_DATA" in kinds
    assert hashlib.sha256(bytes(out[-1].get_msgbuf())).digest() == hashlib.sha256(good).digest()


def test_the_documented_examples_are_true():
    """deploy/gateway.example.toml's drone part, uncommented, is a valid config; the drone examples of
    docs/PROTOCOL.md §19 carry MACs that verify with the key 00 01 .. 1f."""
    import json
    import tomllib
    from pathlib import Path

    from lookout.gateway.core.commands import mac_hex

    root = Path(__file__).resolve().parents[1]
    text = (root / "deploy" / "gateway.example.toml").read_text()
    part = text[text.index("# [mavlink]"):]
    toml = "\n".join(ln[2:] if ln.startswith("# ") else "" if ln.startswith("#") else ln for ln in part.splitlines())
    cfg = from_dict({**BASE, **tomllib.loads(toml)}).mavlink
    assert [e.name for e in cfg.endpoints] == ["radio", "desk"] and cfg.drones[0].id == "uav-1" and cfg.area
    doc = (root / "docs" / "PROTOCOL.md").read_text()
    drones = doc[doc.index("## 19. Drones"):]
    signed = [json.loads(b) for b in re.findall(r"```json lookout:(?:evt|res)\n(.*?)\n```", drones, re.DOTALL)]
    assert len(signed) == 3
    for m in signed:
        purpose = "evt" if "kind" in m else "res"
        assert m["mac"] == mac_hex(KEY, purpose, m)
