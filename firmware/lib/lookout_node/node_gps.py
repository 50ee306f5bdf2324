"""The GPS task: NMEA from the GNSS UART -> the node's fix, the clock, and a location report when it moved.

Loaded by node.py only on a board with a GPS (with protocols.nmea: ~18 KB of heap a node without GPS
never needs).
A fix that moved by more than ``LOC_MOVE_E7`` or changed quality is reported at once; the periodic report is
node.py's. Garbage on the UART comes out of the reader as bad sentences (counted) and never ends the task.
"""

from protocols import nmea

LOC_MOVE_E7 = 50  # ~5 m: a GPS position change that triggers an immediate location report


async def run(node):
    rd = nmea.NMEAReader()
    step = rd.max_buffer // 2  # a UART read can be bigger than the reader's bound: feed it in slices
    while True:
        data = await node.hal.gps.read()
        if not data:
            continue
        changed = False
        for i in range(0, len(data), step):
            rd.receive_data(data[i:i + step])
            while True:
                ev = rd.next_event()  # garbage comes out as NMEABadSentence (counted in rd.bad_count)
                if ev is nmea.NEED_DATA or ev is nmea.CLOSED:
                    break
                changed = on_event(node, ev) or changed
        if changed:
            await node._send_loc()


def on_event(node, ev):
    """Apply one NMEA event to ``node.fix`` (RMC also sets the clock); True when it should be reported now."""
    if isinstance(ev, nmea.RMC):
        if ev.valid and ev.epoch_ms is not None:
            node.hal.set_time_ms(ev.epoch_ms)
        if ev.valid and node.fix is not None:
            node.fix["spd_cms"] = ev.speed_cms
            if ev.course_cdeg is not None:
                node.fix["hdg_cd"] = ev.course_cdeg
        return False
    if not isinstance(ev, nmea.GGA):
        return False
    old = node.fix
    if not ev.valid:
        node.fix = None
        return old is not None
    node.fix = {"lat": ev.lat_e7, "lon": ev.lon_e7, "fix": ev.fix_quality, "sats": ev.satellites,
                "hdop": ev.hdop_x100, "alt_mm": ev.alt_mm,
                "spd_cms": old.get("spd_cms") if old else None, "hdg_cd": old.get("hdg_cd") if old else None}
    if old is None or old["fix"] != ev.fix_quality:
        return True
    return abs(old["lat"] - ev.lat_e7) > LOC_MOVE_E7 or abs(old["lon"] - ev.lon_e7) > LOC_MOVE_E7
