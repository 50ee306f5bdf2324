"""The MAVLink codec: pymavlink's generated ardupilotmega dialect (MAVLink 2), used sans-IO.

Theory of operation
-------------------
pymavlink's generated ``MAVLink`` class is a byte codec: ``parse_buffer(bytes)`` returns the messages completed by
those bytes, and ``msg.pack(mav)`` returns a frame. That is all we take from it. Nothing here opens a port or calls
``mavutil`` (its blocking, polling connection layer stays out of the gateway, docs/ARCHITECTURE.md).

- ``Parser``: one per endpoint (a stream's framing state is per byte stream). ``robust_parsing`` makes a corrupt
  frame a ``BAD_DATA`` message instead of an exception, so a bad byte never stops a link. No signing key is set on
  the parser: a signed frame decodes like any other and ``signing.Verifier`` checks it with the key of the
  vehicle that sent it (pymavlink's parser holds one key; a link carries several vehicles).
- ``Encoder``: packs our own frames with a sequence number per link and, for a signed vehicle, its key, our link
  id and a timestamp that never repeats (MAVLink 2 signing, via pymavlink's ``sign_packet``).
- Mode tables for ArduPilot (custom_mode numbers of ArduCopter) and PX4 (main/sub mode bytes), by name.
"""

from __future__ import annotations

from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mav

from lookout.gateway.links.mavlink.signing import SigningClock

MAV = mav  # the dialect module: message classes, MAV_* constants, enums

RESULT_NAMES = {6: "MAV_RESULT_CANCELLED", **{k: e.name for k, e in mav.enums["MAV_RESULT"].items()}}
MISSION_RESULT_NAMES = {k: e.name for k, e in mav.enums["MAV_MISSION_RESULT"].items()}
SEVERITY_NAMES = {k: e.name for k, e in mav.enums["MAV_SEVERITY"].items()}

# ArduCopter custom_mode numbers (ArduPilot's Copter mode enum); names as Lookout shows them (lower case)
ARDUCOPTER_MODES = {0: "stabilize", 1: "acro", 2: "alt_hold", 3: "auto", 4: "guided", 5: "loiter", 6: "rtl",
                    7: "circle", 9: "land", 11: "drift", 13: "sport", 14: "flip", 15: "autotune", 16: "poshold",
                    17: "brake", 18: "throw", 19: "avoid_adsb", 20: "guided_nogps", 21: "smart_rtl"}
ARDUCOPTER_NUMBERS = {v: k for k, v in ARDUCOPTER_MODES.items()}
# PX4: custom_mode = main_mode << 16 | sub_mode << 24 (px4_custom_mode.h)
PX4_MODES = {1 << 16: "manual", 2 << 16: "altctl", 3 << 16: "posctl", (4 << 16) | (2 << 24): "takeoff",
             (4 << 16) | (3 << 24): "loiter", (4 << 16) | (4 << 24): "mission", (4 << 16) | (5 << 24): "rtl",
             (4 << 16) | (6 << 24): "land", 6 << 16: "offboard", 7 << 16: "stabilized"}
PX4_NUMBERS = {v: k for k, v in PX4_MODES.items()}
# Lookout's portable names for the commands that change mode (hold = stay where you are)
MODE_ALIASES = {"hold": {"ardupilot": "loiter", "px4": "loiter"}, "mission": {"ardupilot": "auto", "px4": "mission"},
                "auto": {"ardupilot": "auto", "px4": "mission"}}


def flavour(autopilot: int | None) -> str:
    return "px4" if autopilot == mav.MAV_AUTOPILOT_PX4 else "ardupilot"


def mode_name(autopilot: int | None, base_mode: int, custom_mode: int) -> str:
    """The flight mode as Lookout shows it; ``mode_<n>`` for a number we do not know."""
    if not base_mode & mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED:
        return "unknown"
    table = PX4_MODES if flavour(autopilot) == "px4" else ARDUCOPTER_MODES
    return table.get(custom_mode, f"mode_{custom_mode}")


def mode_number(autopilot: int | None, name: str) -> int | None:
    """custom_mode for ``name`` on this autopilot (aliases such as ``hold`` resolved), None if it has none."""
    fl = flavour(autopilot)
    name = MODE_ALIASES.get(name, {}).get(fl, name)
    return (PX4_NUMBERS if fl == "px4" else ARDUCOPTER_NUMBERS).get(name)


def known_modes() -> list[str]:
    return sorted(set(ARDUCOPTER_NUMBERS) | set(PX4_NUMBERS) | set(MODE_ALIASES))


class Parser:
    """Bytes of one link in, messages out (``BAD_DATA`` for corrupt frames, never an exception)."""

    __slots__ = ("_mav",)

    def __init__(self) -> None:
        self._mav = mav.MAVLink(None)
        self._mav.robust_parsing = True

    def feed(self, data: bytes) -> list[Any]:
        try:
            return self._mav.parse_buffer(data) or []
        except mav.MAVError:  # robust parsing reports as BAD_DATA; this is a last guard against a codec bug
            self._mav.buf = bytearray()
            self._mav.buf_index = 0
            return []


class Encoder:
    """Packs our own frames as (system_id, component_id), signed per target when a key is given."""

    def __init__(self, system_id: int, component_id: int, clock: SigningClock):
        self._mav = mav.MAVLink(None, system_id, component_id)
        self.clock = clock
        self.mav = self._mav  # for the *_encode message constructors

    def pack(self, msg: Any, seq: int, key: bytes | None = None, link_id: int = 0) -> bytes:
        m = self._mav
        m.seq = seq & 0xFF
        s = m.signing
        if key is None:
            s.sign_outgoing = False
            s.secret_key = None
            return bytes(msg.pack(m))
        s.secret_key = key
        s.sign_outgoing = True
        s.link_id = link_id & 0xFF
        s.timestamp = self.clock.next()
        try:
            return bytes(msg.pack(m))
        finally:
            s.secret_key = None
            s.sign_outgoing = False


def target_of(msg: Any) -> tuple[int, int]:
    """(target_system, target_component) of a message, (0, 0) = broadcast (messages without target fields)."""
    return getattr(msg, "target_system", 0) or 0, getattr(msg, "target_component", 0) or 0


__all__ = [
    "ARDUCOPTER_MODES",
    "MAV",
    "RESULT_NAMES",
    "Encoder",
    "Parser",
    "flavour",
    "known_modes",
    "mode_name",
    "mode_number",
    "target_of",
]
