"""One drone as the bridge knows it: the latest value of each telemetry item, its link, and its MQTT messages.

Theory of operation
-------------------
``update(msg, now_ms)`` takes each message the vehicle sends and keeps the latest value per item (position,
battery, mode, GPS, home), the mavlink2rest model, and says which MQTT topic the message makes dirty (``loc``,
``hb`` or none). The bridge decimates per topic and, when it publishes, asks for ``loc_message``/``hb_message``,
built from the state at that moment: the newest values go out, never an old sample.

Link quality: each (endpoint, component) stream's MAVLink ``seq`` is followed; a jump of n > 1 counts n - 1 lost
frames (wrapping at 256; a jump back is a reordered or repeated frame, not loss). ``loss_pct`` is computed over the
frames since the previous heartbeat publish, so it shows the link as it is now; the totals go to metrics.

Mapping to the Lookout contract (docs/PROTOCOL.md §19): GLOBAL_POSITION_INT -> ``loc`` (lat/lon degE7 as they
are, ``alt_mm`` above MSL, ``spd_cms`` from vx/vy, ``hdg_cd``), GPS_RAW_INT -> ``fix``/``sats``/``hdop``,
SYS_STATUS/BATTERY_STATUS -> ``bat_mv``/``bat_pct``, HEARTBEAT -> ``state`` (the flight mode) and ``x_armed``,
HOME_POSITION -> ``x_home_*``.
"""

from __future__ import annotations

import collections
import math
from typing import Any

from lookout.gateway.core.config_mavlink import DroneConfig
from lookout.gateway.links.mavlink.codec import MAV, flavour, mode_name
from lookout.gateway.links.mavlink.decimate import Decimator

# MAVLink GPS_FIX_TYPE -> the NMEA GGA quality the loc schema uses (1 GPS, 2 DGPS, 4 RTK, 5 float RTK, 6 dead
# reckoning). No fix but a position: the autopilot's estimate, i.e. dead reckoning.
FIX_TO_QUALITY = {0: 6, 1: 6, 2: 1, 3: 1, 4: 2, 5: 5, 6: 4, 7: 1, 8: 2}
STATE_NAMES = {MAV.MAV_STATE_UNINIT: "uninit", MAV.MAV_STATE_BOOT: "boot", MAV.MAV_STATE_CALIBRATING: "calibrating",
               MAV.MAV_STATE_STANDBY: "standby", MAV.MAV_STATE_ACTIVE: "active", MAV.MAV_STATE_CRITICAL: "critical",
               MAV.MAV_STATE_EMERGENCY: "emergency", MAV.MAV_STATE_POWEROFF: "poweroff",
               MAV.MAV_STATE_FLIGHT_TERMINATION: "termination"}
UINT16_MAX = 0xFFFF

LOC, HB = "loc", "hb"


def valid_position(lat: int, lon: int) -> bool:
    """A position the loc schema accepts (degE7 on the globe); anything else from a vehicle is dropped."""
    return -900_000_000 <= lat <= 900_000_000 and -1_800_000_000 <= lon <= 1_800_000_000


class Vehicle:
    """State of one configured drone (``DroneConfig``), updated message by message."""

    def __init__(self, cfg: DroneConfig, key: bytes | None, loc_hz: int, status_hz: int, tail: float = 0.5):
        self.id = cfg.id
        self.sysid = cfg.sysid
        self.compid = cfg.compid
        self.signed = cfg.signed
        self.key = key  # MAVLink 2 signing secret and the proxy's HMAC key for res/evt; never logged
        self.home_endpoint = cfg.endpoint
        # link
        self.link = "unknown"  # unknown -> up -> lost -> up ...
        self.last_rx_ms: int | None = None
        self.up_since_ms: int | None = None
        self.lost_since_ms: int | None = None
        self.route: tuple[Any, Any] | None = None  # (endpoint, peer) it was last heard on: where we send to it
        self.seqs: dict[tuple[int, int], int] = {}
        self.received = 0
        self.lost = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._win = (0, 0)  # (received, lost) at the last heartbeat publish
        self.loss_pct = 0
        # telemetry (latest values)
        self.autopilot: int | None = None
        self.vtype: int | None = None
        self.base_mode = 0
        self.custom_mode = 0
        self.system_status = 0
        self.armed = False
        self.mode = "unknown"
        self.bat_mv: int | None = None
        self.bat_pct: int | None = None
        self.fix_type: int | None = None
        self.sats: int | None = None
        self.hdop: int | None = None
        self.pos: tuple[int, int, int, int, int, int, int] | None = None  # lat, lon, alt_mm, rel_mm, vx, vy, hdg
        self.pos_ms: int | None = None
        self.home: tuple[int, int, int] | None = None
        self.last_text: str | None = None
        # MQTT side
        self.bdseq = 0
        self.seq = {"hb": 0, "loc": 0, "evt": 0, "res": 0}
        self.dec = {LOC: Decimator(loc_hz, tail), HB: Decimator(status_hz, tail)}
        self.timers: dict[str, Any] = {}
        self.photos: collections.OrderedDict[int, None] = collections.OrderedDict()

    # -- link ------------------------------------------------------------------------------------------------
    def count_seq(self, stream: tuple[int, int], seq: int) -> None:
        last = self.seqs.get(stream)
        self.seqs[stream] = seq
        self.received += 1
        if last is not None:
            gap = (seq - last - 1) & 0xFF
            if gap and gap < 128:
                self.lost += gap

    def window_loss(self) -> int:
        """Loss % over the frames since the last call (the heartbeat publish), 0 with no traffic."""
        r0, l0 = self._win
        r, lost = self.received - r0, self.lost - l0
        self._win = (self.received, self.lost)
        if r + lost:
            self.loss_pct = min(100, round(100 * lost / (r + lost)))
        return self.loss_pct

    # -- telemetry -------------------------------------------------------------------------------------------
    def update(self, msg: Any, t: str, now_ms: int) -> str | None:
        """Keep the latest values of one message of type ``t``; the topic it makes dirty, or None."""
        if t == "GLOBAL_POSITION_INT":
            self.pos = (msg.lat, msg.lon, msg.alt, msg.relative_alt, msg.vx, msg.vy, msg.hdg)
            self.pos_ms = now_ms
            return LOC
        if t == "HEARTBEAT":
            if msg.type == MAV.MAV_TYPE_GCS or msg.autopilot == MAV.MAV_AUTOPILOT_INVALID:
                return None  # a ground station or a peripheral on the vehicle's system id
            armed = bool(msg.base_mode & MAV.MAV_MODE_FLAG_SAFETY_ARMED)
            mode = mode_name(msg.autopilot, msg.base_mode, msg.custom_mode)
            changed = armed != self.armed or mode != self.mode or msg.system_status != self.system_status
            self.autopilot, self.vtype, self.base_mode = msg.autopilot, msg.type, msg.base_mode
            self.custom_mode, self.system_status, self.armed, self.mode = msg.custom_mode, msg.system_status, armed, mode
            return HB if changed else None
        if t == "SYS_STATUS":
            return self._battery(msg.voltage_battery, msg.battery_remaining)
        if t == "BATTERY_STATUS":
            v = msg.voltages[0] if msg.voltages and msg.voltages[0] != UINT16_MAX else UINT16_MAX
            return self._battery(v, msg.battery_remaining)
        if t == "GPS_RAW_INT":
            fix = msg.fix_type
            sats = None if msg.satellites_visible == 255 else msg.satellites_visible
            hdop = None if msg.eph == UINT16_MAX else min(msg.eph, 9999)
            changed = fix != self.fix_type
            self.fix_type, self.sats, self.hdop = fix, sats, hdop
            return HB if changed else None
        if t == "HOME_POSITION":
            home = (msg.latitude, msg.longitude, msg.altitude)
            changed = home != self.home
            self.home = home
            return HB if changed else None
        return None

    def _battery(self, mv: int, pct: int) -> str | None:
        mv_ = None if mv in (UINT16_MAX, 0) else min(mv, 60000)
        pct_ = None if pct < 0 else min(pct, 100)
        changed = (pct_ is not None and self.bat_pct is not None and pct_ // 5 != self.bat_pct // 5)
        self.bat_mv = mv_ if mv_ is not None else self.bat_mv
        self.bat_pct = pct_ if pct_ is not None else self.bat_pct
        return HB if changed else None

    # -- Lookout messages ------------------------------------------------------------------------------------
    def next_seq(self, ch: str) -> int:
        self.seq[ch] += 1
        return self.seq[ch]

    def loc_message(self, now_ms: int) -> dict[str, Any] | None:
        """The ``loc`` message of the newest position (None before the first fix or at 0,0: no position)."""
        if self.pos is None:
            return None
        lat, lon, alt, rel, vx, vy, hdg = self.pos
        if lat == 0 and lon == 0:
            return None
        if not valid_position(lat, lon):
            self.dropped["invalid"] += 1  # an autopilot's nonsense: no location rather than a wrong one
            return None
        m: dict[str, Any] = {"seq": self.next_seq("loc"), "ts": self.pos_ms or now_ms, "lat": lat, "lon": lon,
                             "alt_mm": max(-1_000_000, min(alt, 100_000_000)),
                             "spd_cms": min(100_000, int(math.hypot(vx, vy))),
                             "fix": FIX_TO_QUALITY.get(self.fix_type if self.fix_type is not None else 3, 1),
                             "src": "mavlink", "x_rel_alt_mm": rel}
        if hdg != UINT16_MAX:
            m["hdg_cd"] = hdg % 36000
        if self.sats is not None:
            m["sats"] = min(self.sats, 99)
        if self.hdop is not None:
            m["hdop"] = self.hdop
        return m

    def hb_message(self, now_ms: int, hb_s: int) -> dict[str, Any]:
        up_ms = now_ms - self.up_since_ms if self.up_since_ms is not None else 0
        m: dict[str, Any] = {"seq": self.next_seq("hb"), "ts": now_ms, "up_s": max(0, up_ms // 1000), "hb_s": hb_s,
                             "fw": flavour(self.autopilot), "state": self.mode, "x_armed": self.armed,
                             "x_link": "ok" if self.link == "up" else "lost", "x_loss_pct": self.window_loss(),
                             "x_status": STATE_NAMES.get(self.system_status, "unknown"), "x_sysid": self.sysid}
        if self.bat_mv is not None:
            m["bat_mv"] = self.bat_mv
        if self.bat_pct is not None:
            m["bat_pct"] = self.bat_pct
        if self.fix_type is not None:
            m["x_gps_fix"] = self.fix_type
        if self.home is not None:
            m["x_home_lat"], m["x_home_lon"], m["x_home_alt_mm"] = self.home
        if self.last_text:
            m["x_text"] = self.last_text
        return m

    def new_photo(self, index: int) -> bool:
        """True the first time an image index is seen this session (a camera may repeat CAMERA_IMAGE_CAPTURED)."""
        if index in self.photos:
            return False
        self.photos[index] = None
        if len(self.photos) > 256:
            self.photos.popitem(last=False)
        return True

    def new_session(self) -> None:
        """Link (re)established: sequence numbers of the MQTT channels restart with the new birth."""
        self.seq = {k: 0 for k in self.seq}
        self.photos.clear()
        for d in self.dec.values():
            d.reset()


__all__ = ["FIX_TO_QUALITY", "HB", "LOC", "Vehicle"]
