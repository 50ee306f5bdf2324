"""The simulated multicopter on its own, in simulated time: it flies, drains its battery, drifts in the wind unless
it holds, and answers commands with ArduCopter's ACK semantics."""

from __future__ import annotations

import math

from pymavlink.dialects.v20 import ardupilotmega as mav

from lookout.simulators.drone.vehicle import M_PER_DEG, MODES, Config, SimVehicle

A, D, T, IP = (mav.MAV_RESULT_ACCEPTED, mav.MAV_RESULT_DENIED, mav.MAV_RESULT_TEMPORARILY_REJECTED,
               mav.MAV_RESULT_IN_PROGRESS)


def cmd(v, command, *p, confirmation=0, now=0.0):
    p = list(p) + [0.0] * (7 - len(p))
    [ack] = v.handle(mav.MAVLink_command_long_message(1, 1, command, confirmation, *p), now, (245, 190))
    return ack.result


def run(v, t0, t1, dt=0.05):
    out = []
    t = t0
    while t < t1:
        t = round(t + dt, 6)
        v.step(t)
        out += v.pending(t, (245, 190))
    return out


def dist_m(v, lat, lon):
    return math.hypot((v.lat - lat) * M_PER_DEG, (v.lon - lon) * M_PER_DEG * math.cos(math.radians(lat)))


def test_flight_commands_follow_ardupilot_ack_semantics():
    v = SimVehicle(Config(), 0.0)
    assert cmd(v, mav.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 10) == D  # disarmed
    assert cmd(v, mav.MAV_CMD_NAV_RETURN_TO_LAUNCH) == D
    assert cmd(v, mav.MAV_CMD_COMPONENT_ARM_DISARM, 1) == A and v.armed
    assert cmd(v, mav.MAV_CMD_DO_SET_MODE, 1, MODES["guided"]) == A
    assert cmd(v, mav.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 10) == IP
    assert cmd(v, mav.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 10, confirmation=1) == IP  # our own resend
    assert cmd(v, mav.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 10) == T  # a new request mid-takeoff
    acks = [m for m in run(v, 0, 6) if m.get_type() == "COMMAND_ACK"]
    assert [a.result for a in acks][-1] == A and all(a.result == IP for a in acks[:-1]) and len(acks) >= 3
    assert [a.progress for a in acks[:-1]] == sorted(a.progress for a in acks[:-1])
    assert abs(v.alt - 10) < 0.5
    assert cmd(v, mav.MAV_CMD_COMPONENT_ARM_DISARM, 0) == D  # not in flight
    assert cmd(v, 31337) == mav.MAV_RESULT_UNSUPPORTED


def test_it_flies_to_a_target_returns_home_and_lands():
    v = SimVehicle(Config(speed=10.0), 0.0)
    v.armed, v.mode = True, MODES["guided"]
    cmd(v, mav.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 20)
    run(v, 0, 10)
    target = (30.2509, 120.1500)  # ~100 m north
    m = mav.MAVLink_command_int_message(1, 1, 3, mav.MAV_CMD_DO_REPOSITION, 0, 0, -1, 1, 0, math.nan,
                                        int(target[0] * 1e7), int(target[1] * 1e7), 20)
    assert v.handle(m, 10.0, (245, 190))[0].result == A
    run(v, 10, 15)
    d = dist_m(v, *target)
    assert 40 < d < 60  # 5 s at 10 m/s of 100 m
    run(v, 15, 22)
    assert dist_m(v, *target) < 1.0
    assert cmd(v, mav.MAV_CMD_NAV_RETURN_TO_LAUNCH, now=22) == A and v.mode == MODES["rtl"]
    texts = [m.text for m in run(v, 22, 60) if m.get_type() == "STATUSTEXT"]
    assert not v.armed and v.alt == 0 and dist_m(v, 30.25, 120.15) < 1.0
    assert "Disarming motors" in texts


def test_battery_drains_faster_in_flight_and_wind_only_moves_what_does_not_hold():
    v = SimVehicle(Config(wind_n=3.0, battery_pct=50.0), 0.0)
    run(v, 0, 10)
    ground = 50.0 - v.battery
    v.armed, v.mode, v.alt = True, MODES["guided"], 10.0
    lat0 = v.lat
    run(v, 10, 20)
    assert (50.0 - ground - v.battery) > 20 * ground  # flying drains an order of magnitude faster
    assert dist_m(v, lat0, v.lon) < 1.0  # guided without a target: it holds against the wind
    v.mode = MODES["rtl"]
    v.home = (v.lat + 0.002, v.lon, 20.0)  # fly north 220 m: with the wind behind it, it gets there sooner
    run(v, 20, 30)
    assert (v.lat - lat0) * M_PER_DEG > 100
    msg = v.message("SYS_STATUS", 30.0)
    assert msg.battery_remaining == int(v.battery) and 14000 < msg.voltage_battery < 16800


def test_telemetry_rates_and_set_message_interval():
    v = SimVehicle(Config(pos_hz=10), 0.0)
    seen = []
    t = 0.0
    while t < 2.0:
        seen += [m.get_type() for m in v.telemetry(t)]
        t = round(t + 0.01, 6)
    assert 19 <= seen.count("GLOBAL_POSITION_INT") <= 21 and 2 <= seen.count("HEARTBEAT") <= 3
    assert cmd(v, mav.MAV_CMD_SET_MESSAGE_INTERVAL, mav.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, 20_000, now=2.0) == A
    assert v.rates["GLOBAL_POSITION_INT"] == 50
    assert cmd(v, mav.MAV_CMD_SET_MESSAGE_INTERVAL, 999_999, 20_000) == mav.MAV_RESULT_UNSUPPORTED
