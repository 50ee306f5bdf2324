"""A simulated multicopter that answers MAVLink the way ArduCopter does (sans-IO: messages and time in, messages out).

Theory of operation
-------------------
``SimVehicle.step(now_s)`` advances simple kinematics: the copter flies toward a target at ``speed`` m/s (climbs
at ``climb`` 2.5, sinks at ``sink`` 1.5 m/s; to an orbit's circle at ``speed``, round it at the orbit's), drifts with the wind unless it holds position, and drains its battery (4S, faster in
the air). ``handle(msg, now_s)`` takes one message from a ground station and returns the replies (COMMAND_ACK,
mission protocol, parameters); ``telemetry(now_s)`` returns the stream messages that are due at their rates.

Command semantics follow the MAVLink command protocol as ArduPilot answers it:
- ``DENIED`` for flight commands while disarmed (takeoff, reposition, orbit, RTL, land, mission start) and for
  arming with a low battery;
- NAV_TAKEOFF runs: ``IN_PROGRESS`` with its progress (once a second) until the height is reached, then
  ``ACCEPTED``. A resend of it (``confirmation`` > 0) is answered ``IN_PROGRESS`` again; a new takeoff request
  (``confirmation`` 0) while one runs is ``TEMPORARILY_REJECTED``;
- everything else is ``ACCEPTED`` at once (or ``UNSUPPORTED`` if we do not implement it);
- IMAGE_START_CAPTURE also sends CAMERA_IMAGE_CAPTURED with the position (a geotagged photo).
Modes are ArduCopter's custom_mode numbers (GUIDED 4, LOITER 5, RTL 6, LAND 9, AUTO 3, BRAKE 17 ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mav

M_PER_DEG = 111_320.0
MODES = {"stabilize": 0, "alt_hold": 2, "auto": 3, "guided": 4, "loiter": 5, "rtl": 6, "land": 9, "poshold": 16,
         "brake": 17}
CLIMB, SINK = 2.5, 1.5  # m/s
ORBIT_REACH_M = 20.0  # farther than this outside an orbit's circle the copter flies to it at cruise speed
RTL_ALT = 15.0  # m above home (ArduCopter RTL_ALT default)
FULL_MV, EMPTY_MV = 16800, 14000  # 4S LiPo
DEFAULT_RATES = {"HEARTBEAT": 1.0, "GLOBAL_POSITION_INT": 10.0, "SYS_STATUS": 1.0, "BATTERY_STATUS": 0.5,
                 "GPS_RAW_INT": 2.0, "VFR_HUD": 2.0, "ATTITUDE": 4.0, "HOME_POSITION": 0.1}


@dataclass
class Config:
    sysid: int = 1
    compid: int = 1
    lat: float = 30.2500000  # where it stands at boot (home), WGS-84 degrees
    lon: float = 120.1500000
    ground_msl_m: float = 20.0
    speed: float = 8.0  # m/s horizontal
    pos_hz: float = 10.0  # GLOBAL_POSITION_INT rate (10..50 Hz on real autopilots)
    battery_pct: float = 100.0
    drain_air: float = 0.05  # %/s in flight (about 30 min on a full pack)
    drain_ground: float = 0.002  # %/s armed or idle on the ground
    wind_n: float = 0.0  # m/s, drifts the copter while it is not holding a target
    wind_e: float = 0.0
    climb: float = CLIMB  # m/s up (a demo that compresses time raises it with ``speed``)
    sink: float = SINK  # m/s down


class SimVehicle:
    def __init__(self, cfg: Config, now_s: float = 0.0):
        self.cfg = cfg
        self.boot_s = now_s
        self.lat, self.lon = cfg.lat, cfg.lon
        self.alt = 0.0  # m above home
        self.vn = self.ve = self.vd = 0.0
        self.heading = 0.0
        self.home = (cfg.lat, cfg.lon, cfg.ground_msl_m)
        self.armed = False
        self.mode = MODES["stabilize"]
        self.battery = cfg.battery_pct
        self.target: tuple[float, float, float] | None = None  # lat, lon, alt
        self.orbit: tuple[float, float, float, float, float] | None = None  # lat, lon, radius (+cw), speed, alt
        self.takeoff: float | None = None  # target alt of a running takeoff
        self.takeoff_reported = -10.0
        self.hold: tuple[float, float, float] | None = None  # where a holding copter stays (it fights the wind)
        self.photo_due: int | None = None
        self.mission: list[Any] = []
        self.upload: list[Any | None] | None = None  # items of a mission upload in progress
        self.wp = 0
        self.recording = False
        self.image_index = 0
        self.rates = dict(DEFAULT_RATES, GLOBAL_POSITION_INT=cfg.pos_hz)
        self.due: dict[str, float] = {k: now_s for k in self.rates}
        self.texts: list[tuple[int, str]] = []
        self.params = {"SYSID_THISMAV": float(cfg.sysid), "RTL_ALT": RTL_ALT * 100, "WPNAV_SPEED": cfg.speed * 100,
                       "BATT_CAPACITY": 5200.0, "FENCE_ENABLE": 0.0}
        self.last_step = now_s
        self.gcs_seen_s: float | None = None
        self.gcs_heartbeats = 0
        self.commands_seen: list[tuple[int, int]] = []  # (command, confirmation) as received: tests read it

    # -- helpers ---------------------------------------------------------------------------------------------
    def _say(self, severity: int, text: str) -> None:
        self.texts.append((severity, text))

    def _flying(self) -> bool:
        return self.armed and self.alt > 0.2

    def _move_to(self, lat: float, lon: float, alt: float, dt: float, speed: float) -> float:
        dn = (lat - self.lat) * M_PER_DEG
        de = (lon - self.lon) * M_PER_DEG * math.cos(math.radians(self.lat))
        dist = math.hypot(dn, de)
        step = min(dist, speed * dt)
        if dist > 0.01:
            self.vn, self.ve = dn / dist * step / dt, de / dist * step / dt
            self.heading = math.degrees(math.atan2(de, dn)) % 360
        else:
            self.vn = self.ve = 0.0
        self._climb(alt, dt)
        return dist - step

    def _climb(self, alt: float, dt: float) -> None:
        dz = alt - self.alt
        rate = self.cfg.climb if dz > 0 else self.cfg.sink
        self.vd = -max(-rate, min(rate, dz / dt)) if dt > 0 else 0.0

    # -- physics ---------------------------------------------------------------------------------------------
    def step(self, now_s: float) -> None:
        dt = now_s - self.last_step
        if dt <= 0:
            return
        self.last_step = now_s
        self.vn = self.ve = self.vd = 0.0
        if self.armed:
            self._fly(dt, now_s)
            self.lat += self.vn * dt / M_PER_DEG
            self.lon += self.ve * dt / (M_PER_DEG * math.cos(math.radians(self.lat)))
            self.alt = max(0.0, self.alt - self.vd * dt)
        self.battery = max(0.0, self.battery - (self.cfg.drain_air if self._flying() else self.cfg.drain_ground) * dt)
        if self._flying() and self.battery < 10 and self.mode not in (MODES["rtl"], MODES["land"]):
            self._say(mav.MAV_SEVERITY_CRITICAL, "Battery failsafe")
            self.mode = MODES["rtl"]

    def _fly(self, dt: float, now_s: float) -> None:
        m = self.mode
        held = False
        if self.takeoff is not None:
            self._climb(self.takeoff, dt)
        elif m == MODES["guided"] and self.orbit is not None:
            clat, clon, r, speed, alt = self.orbit
            ang = math.atan2((self.lon - clon) * math.cos(math.radians(clat)), self.lat - clat)
            ang += (speed / max(abs(r), 1.0)) * dt * (1 if r > 0 else -1)
            lat = clat + abs(r) * math.cos(ang) / M_PER_DEG
            lon = clon + abs(r) * math.sin(ang) / (M_PER_DEG * math.cos(math.radians(clat)))
            far = math.hypot((clat - self.lat) * M_PER_DEG,
                             (clon - self.lon) * M_PER_DEG * math.cos(math.radians(clat))) > abs(r) + ORBIT_REACH_M
            self._move_to(lat, lon, alt, dt, self.cfg.speed if far else speed * 2)  # to the circle at cruise speed
        elif m == MODES["guided"] and self.target is not None:
            self._move_to(*self.target, dt, self.cfg.speed)
        elif m == MODES["rtl"]:
            hl, ho, _ = self.home
            left = self._move_to(hl, ho, max(self.alt, RTL_ALT), dt, self.cfg.speed)
            if left < 0.5:
                self._climb(0.0, dt)
        elif m == MODES["land"]:
            self._climb(0.0, dt)
        elif m == MODES["auto"] and self.wp < len(self.mission):
            it = self.mission[self.wp]
            if it.command == mav.MAV_CMD_NAV_RETURN_TO_LAUNCH:
                self.mode = MODES["rtl"]
            elif self._move_to(it.x / 1e7, it.y / 1e7, it.z, dt, self.cfg.speed) < 1.0 and abs(self.alt - it.z) < 1:
                self.wp += 1
                self._say(mav.MAV_SEVERITY_INFO, f"Reached waypoint #{self.wp}")
        elif self._flying():  # loiter, brake, guided without a target, mission done: stay where it is
            held = True
            if self.hold is None:
                self.hold = (self.lat, self.lon, self.alt)
            self._move_to(*self.hold, dt, self.cfg.speed)
        if not held:
            self.hold = None
        if self._flying():  # the wind pushes; a controller steering to a target corrects it on the next step
            self.vn += self.cfg.wind_n
            self.ve += self.cfg.wind_e
        if m in (MODES["land"], MODES["rtl"]) and self.alt <= 0.05 and self.vd >= 0 and self.takeoff is None:
            self.armed = False
            self._say(mav.MAV_SEVERITY_INFO, "Disarming motors")

    # -- protocol --------------------------------------------------------------------------------------------
    def _ack(self, command: int, result: int, progress: int = 0, to: tuple[int, int] = (0, 0)) -> Any:
        return mav.MAVLink_command_ack_message(command, result, progress, 0, to[0], to[1])

    def handle(self, msg: Any, now_s: float, src: tuple[int, int] = (0, 0)) -> list[Any]:
        """Replies to one message from a ground station ``src`` = (sysid, compid)."""
        t = msg.get_type()
        tgt = getattr(msg, "target_system", None)
        if tgt not in (None, 0, self.cfg.sysid):
            return []
        if t == "HEARTBEAT":
            if msg.type == mav.MAV_TYPE_GCS:
                self.gcs_seen_s = now_s
                self.gcs_heartbeats += 1
            return []
        if t in ("COMMAND_LONG", "COMMAND_INT"):
            conf = msg.confirmation if t == "COMMAND_LONG" else 0
            self.commands_seen.append((msg.command, conf))
            return [self._ack(msg.command, *self._command(msg, t, conf, now_s), to=src)]
        if t == "SET_MODE":
            ok = self._set_mode(msg.custom_mode)
            return [self._ack(mav.MAVLINK_MSG_ID_SET_MODE, mav.MAV_RESULT_ACCEPTED if ok else mav.MAV_RESULT_FAILED,
                              to=src)]
        if t == "MISSION_COUNT":
            self.upload = [None] * msg.count
            if msg.count == 0:
                self.mission, self.upload = [], None
                return [mav.MAVLink_mission_ack_message(src[0], src[1], mav.MAV_MISSION_ACCEPTED, 0)]
            return [mav.MAVLink_mission_request_int_message(src[0], src[1], 0, 0)]
        if t in ("MISSION_ITEM_INT", "MISSION_ITEM"):
            return self._mission_item(msg, t, src)
        if t == "MISSION_REQUEST_LIST":
            return [mav.MAVLink_mission_count_message(src[0], src[1], len(self.mission), 0)]
        if t in ("MISSION_REQUEST_INT", "MISSION_REQUEST"):
            if 0 <= msg.seq < len(self.mission):
                return [self.mission[msg.seq]]
            return []
        if t == "PARAM_REQUEST_LIST":
            return [self._param(i) for i in range(len(self.params))]
        if t == "PARAM_REQUEST_READ":
            names = list(self.params)
            pid = _text(msg.param_id)
            i = names.index(pid) if pid in names else msg.param_index
            return [self._param(i)] if 0 <= i < len(names) else []
        if t == "PARAM_SET":
            pid = _text(msg.param_id)
            if pid in self.params:
                self.params[pid] = msg.param_value
                return [self._param(list(self.params).index(pid))]
            return []
        if t == "REQUEST_DATA_STREAM":
            return []  # rates stay as they are (MAVProxy asks; ArduPilot would scale its streams)
        return []

    def _param(self, i: int) -> Any:
        name = list(self.params)[i]
        return mav.MAVLink_param_value_message(name.encode(), self.params[name], mav.MAV_PARAM_TYPE_REAL32,
                                               len(self.params), i)

    def _mission_item(self, msg: Any, t: str, src: tuple[int, int]) -> list[Any]:
        if self.upload is None or not 0 <= msg.seq < len(self.upload):
            return [mav.MAVLink_mission_ack_message(src[0], src[1], mav.MAV_MISSION_INVALID_SEQUENCE, 0)]
        if t == "MISSION_ITEM":  # float lat/lon: store as the int form
            msg = mav.MAVLink_mission_item_int_message(msg.target_system, msg.target_component, msg.seq, msg.frame,
                                                       msg.command, 0, msg.autocontinue, msg.param1, msg.param2,
                                                       msg.param3, msg.param4, int(msg.x * 1e7), int(msg.y * 1e7),
                                                       msg.z, 0)
        self.upload[msg.seq] = mav.MAVLink_mission_item_int_message(
            self.cfg.sysid, self.cfg.compid, msg.seq, msg.frame, msg.command, 0, msg.autocontinue, msg.param1,
            msg.param2, msg.param3, msg.param4, msg.x, msg.y, msg.z, 0)
        nxt = next((i for i, x in enumerate(self.upload) if x is None), None)
        if nxt is not None:
            return [mav.MAVLink_mission_request_int_message(src[0], src[1], nxt, 0)]
        self.mission, self.upload, self.wp = list(self.upload), None, 1
        self._say(mav.MAV_SEVERITY_INFO, f"Flight plan received ({len(self.mission)} items)")
        return [mav.MAVLink_mission_ack_message(src[0], src[1], mav.MAV_MISSION_ACCEPTED, 0)]

    def _set_mode(self, custom: int) -> bool:
        if custom not in MODES.values():
            return False
        if custom != MODES["guided"]:
            self.target = self.orbit = None
        self.hold = None
        if custom == MODES["auto"]:
            self.wp = max(self.wp, 1)
        self.mode = custom
        return True

    def _command(self, msg: Any, t: str, conf: int, now_s: float) -> tuple[int, int]:
        """(MAV_RESULT, progress) for one COMMAND_LONG/INT."""
        c = msg.command
        A, D = mav.MAV_RESULT_ACCEPTED, mav.MAV_RESULT_DENIED
        if t == "COMMAND_INT":
            p = (msg.param1, msg.param2, msg.param3, msg.param4, msg.x / 1e7, msg.y / 1e7, msg.z)
        else:
            p = (msg.param1, msg.param2, msg.param3, msg.param4, msg.param5, msg.param6, msg.param7)
        if c == mav.MAV_CMD_NAV_TAKEOFF:
            if self.takeoff is not None:
                return (mav.MAV_RESULT_IN_PROGRESS, self._takeoff_progress()) if conf else \
                    (mav.MAV_RESULT_TEMPORARILY_REJECTED, 0)
            if not self.armed or self.mode != MODES["guided"] or self.alt > 1.0:
                return D, 0
            self.takeoff = float(p[6])
            self.takeoff_reported = now_s
            return mav.MAV_RESULT_IN_PROGRESS, 0
        if c == mav.MAV_CMD_COMPONENT_ARM_DISARM:
            if p[0] >= 0.5:
                if self.battery < 15:
                    self._say(mav.MAV_SEVERITY_CRITICAL, "PreArm: Battery below minimum arming capacity")
                    return D, 0
                if not self.armed:
                    self._say(mav.MAV_SEVERITY_INFO, "Arming motors")
                self.armed = True
                return A, 0
            if self._flying() and int(p[1]) != 21196:
                return D, 0
            self.armed = False
            self.takeoff = None
            return A, 0
        if c == mav.MAV_CMD_DO_SET_MODE:
            return (A if self._set_mode(int(p[1])) else mav.MAV_RESULT_UNSUPPORTED), 0
        if c in (mav.MAV_CMD_DO_REPOSITION, mav.MAV_CMD_DO_ORBIT, mav.MAV_CMD_NAV_RETURN_TO_LAUNCH,
                 mav.MAV_CMD_NAV_LAND, mav.MAV_CMD_MISSION_START):
            if not self.armed or (c in (mav.MAV_CMD_DO_REPOSITION, mav.MAV_CMD_DO_ORBIT) and not self._flying()):
                return D, 0
            if c == mav.MAV_CMD_DO_REPOSITION:
                if int(p[1]) & mav.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE or self.mode == MODES["guided"]:
                    self._set_mode(MODES["guided"])
                    alt = self.alt if math.isnan(p[6]) else p[6]
                    self.target = (p[4], p[5], alt)
                    return A, 0
                return D, 0
            if c == mav.MAV_CMD_DO_ORBIT:
                self._set_mode(MODES["guided"])
                here = t == "COMMAND_INT" and msg.x == 2 ** 31 - 1
                clat, clon = (self.lat, self.lon) if here else (p[4], p[5])
                speed = 5.0 if math.isnan(p[1]) else p[1]
                self.orbit = (clat, clon, p[0] or 20.0, speed, self.alt if math.isnan(p[6]) else p[6])
                return A, 0
            if c == mav.MAV_CMD_MISSION_START:
                if len(self.mission) < 2:
                    return D, 0
                self._set_mode(MODES["auto"])
                return A, 0
            self._set_mode(MODES["rtl"] if c == mav.MAV_CMD_NAV_RETURN_TO_LAUNCH else MODES["land"])
            return A, 0
        if c == mav.MAV_CMD_IMAGE_START_CAPTURE:
            self.image_index += 1
            self.photo_due = self.image_index
            return A, 0
        if c == mav.MAV_CMD_VIDEO_START_CAPTURE:
            self.recording = True
            return A, 0
        if c == mav.MAV_CMD_VIDEO_STOP_CAPTURE:
            self.recording = False
            return A, 0
        if c == mav.MAV_CMD_SET_MESSAGE_INTERVAL:
            name = mav.mavlink_map[int(p[0])].msgname if int(p[0]) in mav.mavlink_map else None
            if name not in self.rates:
                return mav.MAV_RESULT_UNSUPPORTED, 0
            self.rates[name] = DEFAULT_RATES[name] if p[1] == 0 else (0.0 if p[1] < 0 else 1e6 / p[1])
            self.due[name] = now_s
            return A, 0
        if c == mav.MAV_CMD_GET_HOME_POSITION:  # the older form of REQUEST_MESSAGE(HOME_POSITION), MAVProxy sends it
            self.due["HOME_POSITION"] = now_s
            return A, 0
        if c == mav.MAV_CMD_REQUEST_MESSAGE:
            name = mav.mavlink_map[int(p[0])].msgname if int(p[0]) in mav.mavlink_map else None
            if name not in self.rates:
                return mav.MAV_RESULT_UNSUPPORTED, 0
            self.due[name] = now_s  # sent with the next telemetry
            return A, 0
        return mav.MAV_RESULT_UNSUPPORTED, 0

    def _takeoff_progress(self) -> int:
        if self.takeoff is None or self.takeoff <= 0:
            return 100
        return max(0, min(99, int(100 * self.alt / self.takeoff)))

    # -- what the vehicle sends --------------------------------------------------------------------------------
    def pending(self, now_s: float, src: tuple[int, int] = (0, 0)) -> list[Any]:
        """Messages caused by what happened since the last call: takeoff progress and end, photos, status texts."""
        out: list[Any] = []
        if self.takeoff is not None:
            if self.alt >= self.takeoff - 0.3:
                self.takeoff = None
                self._say(mav.MAV_SEVERITY_INFO, "Takeoff complete")
                out.append(self._ack(mav.MAV_CMD_NAV_TAKEOFF, mav.MAV_RESULT_ACCEPTED, 100, src))
            elif now_s - self.takeoff_reported >= 1.0:
                self.takeoff_reported = now_s
                out.append(self._ack(mav.MAV_CMD_NAV_TAKEOFF, mav.MAV_RESULT_IN_PROGRESS, self._takeoff_progress(),
                                     src))
        if self.photo_due:
            self.photo_due = None
            lat, lon = int(self.lat * 1e7), int(self.lon * 1e7)
            out.append(mav.MAVLink_camera_image_captured_message(
                self._boot_ms(now_s), 0, 1, lat, lon, int((self.home[2] + self.alt) * 1000), int(self.alt * 1000),
                [1, 0, 0, 0], self.image_index, 1, f"sim://{self.cfg.sysid}/IMG_{self.image_index:04d}.JPG".encode()))
        for sev, text in self.texts:
            out.append(mav.MAVLink_statustext_message(sev, text.encode()[:50], 0, 0))
        self.texts.clear()
        return out

    def _boot_ms(self, now_s: float) -> int:
        return int((now_s - self.boot_s) * 1000) & 0xFFFFFFFF

    def telemetry(self, now_s: float) -> list[Any]:
        """The stream messages due now, each at its rate (SET_MESSAGE_INTERVAL changes a rate)."""
        out = []
        for name, hz in self.rates.items():
            if hz <= 0 or now_s < self.due[name]:
                continue
            self.due[name] = max(self.due[name] + 1.0 / hz, now_s - 1.0 / hz)
            out.append(self.message(name, now_s))
        return out

    def message(self, name: str, now_s: float) -> Any:
        lat, lon = int(self.lat * 1e7), int(self.lon * 1e7)
        msl_mm = int((self.home[2] + self.alt) * 1000)
        if name == "HEARTBEAT":
            base = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | mav.MAV_MODE_FLAG_STABILIZE_ENABLED
            if self.armed:
                base |= mav.MAV_MODE_FLAG_SAFETY_ARMED
            if self.mode in (MODES["guided"], MODES["auto"], MODES["rtl"]):
                base |= mav.MAV_MODE_FLAG_GUIDED_ENABLED
            state = mav.MAV_STATE_ACTIVE if self.armed else mav.MAV_STATE_STANDBY
            if self.battery < 10:
                state = mav.MAV_STATE_CRITICAL
            return mav.MAVLink_heartbeat_message(mav.MAV_TYPE_QUADROTOR, mav.MAV_AUTOPILOT_ARDUPILOTMEGA, base,
                                                 self.mode, state, 3)
        if name == "GLOBAL_POSITION_INT":
            return mav.MAVLink_global_position_int_message(
                self._boot_ms(now_s), lat, lon, msl_mm, int(self.alt * 1000), int(self.vn * 100), int(self.ve * 100),
                int(self.vd * 100), int(self.heading * 100) % 36000)
        if name == "SYS_STATUS":
            sensors = mav.MAV_SYS_STATUS_SENSOR_GPS | mav.MAV_SYS_STATUS_SENSOR_BATTERY
            healthy = sensors | mav.MAV_SYS_STATUS_GEOFENCE  # no fence, so never breached (MAVProxy reads it)
            return mav.MAVLink_sys_status_message(sensors, sensors, healthy, 300, self._mv(), 1500 if self._flying()
                                                  else 50, int(self.battery), 0, 0, 0, 0, 0, 0)
        if name == "BATTERY_STATUS":
            cells = [self._mv() // 4] * 4 + [65535] * 6
            return mav.MAVLink_battery_status_message(0, mav.MAV_BATTERY_FUNCTION_ALL, mav.MAV_BATTERY_TYPE_LIPO, 2500,
                                                      cells, 1500, int(5200 * (100 - self.battery) / 100), -1,
                                                      int(self.battery))
        if name == "GPS_RAW_INT":
            return mav.MAVLink_gps_raw_int_message(int((now_s - self.boot_s) * 1e6), 3, lat, lon, msl_mm, 90, 140,
                                                   int(math.hypot(self.vn, self.ve) * 100),
                                                   int(self.heading * 100) % 36000, 12)
        if name == "VFR_HUD":
            return mav.MAVLink_vfr_hud_message(0, math.hypot(self.vn, self.ve), int(self.heading) % 360,
                                               40 if self._flying() else 0, self.home[2] + self.alt, -self.vd)
        if name == "ATTITUDE":
            return mav.MAVLink_attitude_message(self._boot_ms(now_s), 0.0, 0.0, math.radians(self.heading), 0, 0, 0)
        if name == "HOME_POSITION":
            hl, ho, ha = self.home
            return mav.MAVLink_home_position_message(int(hl * 1e7), int(ho * 1e7), int(ha * 1000), 0, 0, 0,
                                                     [1, 0, 0, 0], 0, 0, 0)
        raise KeyError(name)

    def _mv(self) -> int:
        return int(EMPTY_MV + (FULL_MV - EMPTY_MV) * self.battery / 100)


def _text(raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace")
    return str(raw).rstrip("\0")


__all__ = ["MODES", "Config", "SimVehicle"]
