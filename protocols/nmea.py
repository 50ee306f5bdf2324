"""NMEA 0183 for the GNSS module on a node's UART: a streaming reader, a one-line parser and encoders.

Theory of operation: a sentence is ``$`` + address (talker + formatter, e.g. ``GNRMC``) + ``,fields`` + ``*hh``
+ CR LF, at most 82 characters (``defaults.NMEA_MAX_LINE``); ``hh`` is the XOR of every byte between ``$`` and
``*``. ``NMEAReader`` cuts the byte stream into lines (ended by CR or LF, so CR LF, a bare LF and a bare CR all
work, or by a ``$`` that starts a new sentence before the old one ended, which is what a UART overrun looks
like) and hands each line to ``parse_sentence``.
Garbage never kills the reader: a line that fails becomes an ``NMEABadSentence`` event and reading goes on.
``parse_sentence`` itself raises ``NMEAError``.

Decoded values are integers in Lookout wire units, computed from the decimal *strings* by digit manipulation
(never through a float), so an ESP32 with 32-bit floats and the gateway get bit-identical results:

    lat_e7 / lon_e7   degrees * 10**7, WGS-84, S and W negative
    alt_mm            millimetres above mean sea level (GGA), geoid_sep_mm likewise
    speed_cms         centimetres per second (1 knot = 1852 m/h = 463/9 cm/s; 1 km/h = 250/9 cm/s)
    course_cdeg       centidegrees true, 0..35999
    hdop_x100         HDOP * 100
    time_ms           UTC milliseconds of the day; date = (year, month, day)

Rounding: half away from zero at the last kept unit, except time of day (truncated to the millisecond).
An empty field (no fix yet) decodes to None. Only GGA, RMC and VTG are decoded (from any talker); every other
well-formed sentence, proprietary ones (``$P...``) included, becomes a ``Sentence`` with its raw fields.
"""

from . import defaults
from .errors import LocalProtocolError, NMEAError


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")  # next_event(): feed more bytes
CLOSED = _Sentinel("CLOSED")  # next_event(): receive_data(b"") was called and everything has been read

_E7 = 10000000
_HEX = "0123456789ABCDEF"


# ---- events -------------------------------------------------------------------------------------------------


class _Event:
    def __eq__(self, other):
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        d = self.__dict__
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (k, d[k]) for k in sorted(d)))


class NMEABadSentence(_Event):
    """A line the reader could not accept; ``reason`` is the NMEAError text, ``raw`` the offending bytes
    (at most max_line - 1 of them for an overlong line)."""

    def __init__(self, reason, raw):
        self.reason = reason
        self.raw = raw


class Sentence(_Event):
    """Any well-formed sentence. ``fields`` holds the raw strings after the address (checksum excluded)."""

    def __init__(self, talker, sentence_type, fields):
        self.talker = talker  # "GP", "GN", "BD", ...; "P" for proprietary sentences
        self.sentence_type = sentence_type  # "GGA", "RMC", ...; for "$PUBX" it is "UBX"
        self.fields = fields


class GGA(Sentence):
    """Global positioning system fix data: position, altitude, fix quality."""

    def __init__(self, talker, fields):
        Sentence.__init__(self, talker, "GGA", fields)
        f = _Fields(fields)
        self.time_ms = _time(f.get(0), "GGA.time")
        self.lat_e7 = _coord(f.get(1), f.get(2), 2, "N", "S", "GGA.lat")
        self.lon_e7 = _coord(f.get(3), f.get(4), 3, "E", "W", "GGA.lon")
        self.fix_quality = _uint(f.get(5), "GGA.quality", 8)  # 0 none, 1 GPS, 2 DGPS, 4/5 RTK, 6 dead reckoning
        self.satellites = _uint(f.get(6), "GGA.satellites", 99)
        self.hdop_x100 = _unsigned_scaled(f.get(7), 2, "GGA.hdop")
        self.alt_mm = _with_unit(f.get(8), f.get(9), "M", 3, "GGA.altitude")
        self.geoid_sep_mm = _with_unit(f.get(10), f.get(11), "M", 3, "GGA.geoid_separation")
        self.dgps_age_ms = _unsigned_scaled(f.get(12), 3, "GGA.dgps_age")
        self.dgps_station = _uint(f.get(13), "GGA.dgps_station", 1023)
        self.valid = bool(self.fix_quality) and self.lat_e7 is not None and self.lon_e7 is not None


class RMC(Sentence):
    """Recommended minimum data: position, speed, course, date; ``valid`` is status A and mode not N."""

    def __init__(self, talker, fields):
        Sentence.__init__(self, talker, "RMC", fields)
        f = _Fields(fields)
        self.time_ms = _time(f.get(0), "RMC.time")
        status = f.get(1)
        if status != "A" and status != "V":
            raise NMEAError("got %r, expected 'A' (valid) or 'V' (warning)" % status, field="RMC.status")
        self.status = status
        self.lat_e7 = _coord(f.get(2), f.get(3), 2, "N", "S", "RMC.lat")
        self.lon_e7 = _coord(f.get(4), f.get(5), 3, "E", "W", "RMC.lon")
        self.speed_cms = _knots(f.get(6), "RMC.speed")
        self.course_cdeg = _course(f.get(7), "RMC.course")
        self.date = _date(f.get(8), "RMC.date")
        mv = _unsigned_scaled(f.get(9), 2, "RMC.magvar")
        if mv is not None:
            if mv > 18000:
                raise NMEAError("got %r, expected 0..180 degrees" % f.get(9), field="RMC.magvar")
            mv = _signed(mv, f.get(10), "E", "W", "RMC.magvar_dir")
        self.magvar_cdeg = mv  # east positive
        self.mode = _mode(f.get(11), "RMC.mode")  # NMEA 2.3+: A autonomous, D differential, E estimated, N invalid
        self.nav_status = _mode(f.get(12), "RMC.nav_status")  # NMEA 4.1+
        self.valid = status == "A" and self.mode != "N"
        self.epoch_ms = None
        if self.date is not None and self.time_ms is not None:
            self.epoch_ms = utc_ms(self.date, self.time_ms)


class VTG(Sentence):
    """Course and speed over ground. Both the NMEA 2.x+ layout (with unit letters) and the 4-field NMEA 1.x
    layout are read; speed comes from the km/h field when present (finer resolution), else from knots."""

    def __init__(self, talker, fields):
        Sentence.__init__(self, talker, "VTG", fields)
        f = _Fields(fields)
        if len(fields) >= 8:
            self.course_cdeg = _course(_unit_checked(f, 0, "T", "VTG.course"), "VTG.course")
            self.course_mag_cdeg = _course(_unit_checked(f, 2, "M", "VTG.course_mag"), "VTG.course_mag")
            knots = _unit_checked(f, 4, "N", "VTG.speed_knots")
            kmh = _unit_checked(f, 6, "K", "VTG.speed_kmh")
            self.mode = _mode(f.get(8), "VTG.mode")
        else:
            self.course_cdeg = _course(f.get(0), "VTG.course")
            self.course_mag_cdeg = _course(f.get(1), "VTG.course_mag")
            knots = f.get(2)
            kmh = f.get(3)
            self.mode = None
        if kmh:
            self.speed_cms = _kmh(kmh, "VTG.speed_kmh")
        else:
            self.speed_cms = _knots(knots, "VTG.speed_knots")


_DECODERS = {"GGA": GGA, "RMC": RMC, "VTG": VTG}


# ---- streaming reader ---------------------------------------------------------------------------------------


class NMEAReader:
    """Bytes from the UART in, sentence objects out (h11 style).

    ``receive_data(b)`` appends bytes (``b""`` marks end of stream); ``next_event()`` returns a ``Sentence``
    (``GGA``/``RMC``/``VTG`` when decoded), an ``NMEABadSentence``, ``NEED_DATA`` or, after end of stream,
    ``CLOSED``. Call ``next_event()`` until ``NEED_DATA`` after each ``receive_data``; holding more than
    ``max_buffer`` unread bytes is API misuse (LocalProtocolError), so memory stays bounded.
    """

    def __init__(self, max_line=defaults.NMEA_MAX_LINE, max_buffer=defaults.NMEA_MAX_BUFFER):
        if max_line < 8 or max_buffer < max_line:
            raise LocalProtocolError("max_line %r must be >= 8 and <= max_buffer %r" % (max_line, max_buffer))
        self.max_line = max_line
        self.max_buffer = max_buffer
        self._buf = b""
        self._eof = False
        self._discarding = False  # inside an overlong line: drop bytes up to the next CR, LF or '$'
        self.bad_count = 0  # NMEABadSentence events produced so far (a health figure for the node)

    def receive_data(self, data):
        if self._eof:
            raise LocalProtocolError("receive_data() after end of stream")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError("receive_data() takes bytes, got %s" % type(data).__name__)
        if not data:
            self._eof = True
            return
        if len(self._buf) + len(data) > self.max_buffer:
            raise LocalProtocolError("%d unread bytes + %d new exceed max_buffer %d: call next_event() until "
                                     "NEED_DATA before feeding more" % (len(self._buf), len(data), self.max_buffer))
        self._buf = self._buf + bytes(data)

    def next_event(self):
        limit = self.max_line - 2  # characters before CR LF
        while True:
            buf = self._buf
            end = _line_end(buf)
            if self._discarding:
                if end < 0:
                    self._buf = b""
                    if self._eof:
                        self._discarding = False
                        return CLOSED
                    return NEED_DATA
                self._buf = buf[end:]
                self._discarding = False
                continue
            if end < 0:
                if len(buf) > limit:  # no terminator yet and already too long: report now, drop the rest
                    self._discarding = True
                    self._buf = b""
                    return self._bad("line longer than %d characters, at most %d allowed" % (limit, limit),
                                     buf[:limit + 1])
                if not self._eof:
                    return NEED_DATA
                if not buf:
                    return CLOSED
                end = len(buf)  # an unterminated last line: parse it, its checksum still protects it
            line = buf[:end]
            self._buf = buf[end:] if end < len(buf) and buf[end] == 0x24 else buf[end + 1:]
            if not line:
                continue
            if len(line) > limit:
                return self._bad("line longer than %d characters, at most %d allowed" % (limit, limit),
                                 line[:limit + 1])
            try:
                return parse_sentence(line, self.max_line)
            except NMEAError as e:
                return self._bad(str(e), line)

    def _bad(self, reason, raw):
        self.bad_count += 1
        return NMEABadSentence(reason, raw)


def _line_end(buf):
    """Index of the first CR or LF, or of a '$' after the first byte (a sentence cut short by a UART overrun is
    followed directly by the next one's '$'); -1 when the line is not complete yet."""
    end = -1
    for sep in (b"\r", b"\n"):
        i = buf.find(sep)
        if i >= 0 and (end < 0 or i < end):
            end = i
    i = buf.find(b"$", 1)
    if i >= 0 and (end < 0 or i < end):
        end = i
    return end


# ---- one line -----------------------------------------------------------------------------------------------


def checksum(body):
    """XOR of the bytes of ``body`` (the text between '$' and '*')."""
    if isinstance(body, str):
        body = body.encode()
    cs = 0
    for b in body:
        cs ^= b
    return cs


def parse_sentence(line, max_line=defaults.NMEA_MAX_LINE):
    """One sentence (bytes, with or without the trailing CR LF) -> GGA / RMC / VTG / Sentence.

    Raises NMEAError for anything that is not a well-formed, checksummed sentence, or whose GGA/RMC/VTG
    fields break their format. The '*hh' checksum is required (every GNSS module sends it).
    """
    if isinstance(line, str):
        line = line.encode()
    elif not isinstance(line, (bytes, bytearray)):
        raise LocalProtocolError("line must be bytes, got %s" % type(line).__name__)
    line = bytes(line)
    if line[-2:] == b"\r\n":
        line = line[:-2]
    elif line[-1:] == b"\n":
        line = line[:-1]
    n = len(line)
    if n > max_line - 2:
        raise NMEAError("%d characters before CR LF, at most %d allowed" % (n, max_line - 2), field="length")
    if n == 0 or line[0] != 0x24:
        raise NMEAError("got %r, expected '$'" % line[:1], field="start")
    for i in range(1, n):
        c = line[i]
        if c < 0x20 or c > 0x7E or c == 0x24 or c == 0x21:
            raise NMEAError("byte 0x%02x at offset %d, expected printable ASCII other than '$' and '!'" % (c, i),
                            field="character")
    star = line.find(b"*")
    if star < 0:
        raise NMEAError("missing, expected '*hh' at the end", field="checksum")
    if star != n - 3:
        raise NMEAError("'*' at offset %d, expected exactly two hex digits after it at the end" % star,
                        field="checksum")
    want = _hex_byte(line[star + 1:])
    body = line[1:star]
    got = checksum(body)
    if want != got:
        raise NMEAError("sentence says %s, computed %02X (XOR of the bytes between '$' and '*')"
                        % (line[star + 1:].decode(), got), field="checksum")
    parts = body.decode().split(",")
    address = parts[0]
    fields = parts[1:]
    if not _is_address(address):
        raise NMEAError("got %r, expected 2 talker + 3 formatter characters [A-Z0-9], or P + maker code"
                        % address, field="address")
    if address[0] == "P":
        return Sentence("P", address[1:], fields)
    talker = address[:2]
    stype = address[2:]
    cls = _DECODERS.get(stype)
    if cls is None:
        return Sentence(talker, stype, fields)
    return cls(talker, fields)


def _is_address(a):
    if not a or len(a) > 10:
        return False
    for c in a:
        if not ("A" <= c <= "Z" or "0" <= c <= "9"):
            return False
    if a[0] == "P":
        return len(a) >= 2
    return len(a) == 5 and "A" <= a[0] <= "Z"


def _hex_byte(b):
    v = 0
    for c in b:
        if 0x30 <= c <= 0x39:
            d = c - 0x30
        elif 0x41 <= c <= 0x46:
            d = c - 0x37
        elif 0x61 <= c <= 0x66:  # lower case is not NMEA but some loggers write it; the value is unambiguous
            d = c - 0x57
        else:
            raise NMEAError("got %r, expected two hex digits" % b, field="checksum")
        v = v * 16 + d
    return v


# ---- field decoders (all integer arithmetic on digit strings) ---------------------------------------------


class _Fields:
    """Field access where a missing trailing field or one of only spaces counts as empty."""

    def __init__(self, fields):
        self.fields = fields

    def get(self, i):
        if i >= len(self.fields):
            return ""
        return self.fields[i].strip(" ")


def _is_digits(s):
    for c in s:
        if c < "0" or c > "9":
            return False
    return True


def _split_decimal(s, field):
    """'-12.345' -> (negative, '12', '345'); raises unless [-]digits[.digits] with at least one digit."""
    neg = s[:1] == "-"
    if neg:
        s = s[1:]
    dot = s.find(".")
    if dot < 0:
        ip, fp = s, ""
    else:
        ip, fp = s[:dot], s[dot + 1:]
    if not (ip or fp) or not _is_digits(ip) or not _is_digits(fp):
        raise NMEAError("got %r, expected a decimal number" % s, field=field)
    return neg, ip, fp


def _scaled(s, digits, field):
    """Decimal string -> round(value * 10**digits), half away from zero; '' -> None."""
    if not s:
        return None
    neg, ip, fp = _split_decimal(s, field)
    if len(fp) <= digits:
        v = int((ip + fp + "0" * (digits - len(fp))) or "0")
    else:
        v = int((ip + fp[:digits]) or "0")
        if fp[digits] >= "5":
            v += 1
    return -v if neg else v


def _unsigned_scaled(s, digits, field):
    v = _scaled(s, digits, field)
    if v is not None and s[:1] == "-":
        raise NMEAError("got %r, expected a number >= 0" % s, field=field)
    return v


def _ratio(s, num, den, field):
    """Non-negative decimal string times num/den, rounded half up; '' -> None."""
    if not s:
        return None
    neg, ip, fp = _split_decimal(s, field)
    if neg:
        raise NMEAError("got %r, expected a number >= 0" % s, field=field)
    n = int((ip + fp) or "0")
    d = den * 10 ** len(fp)
    return (2 * n * num + d) // (2 * d)


def _knots(s, field):
    return _ratio(s, 463, 9, field)  # 1 kn = 185200 cm / 3600 s


def _kmh(s, field):
    return _ratio(s, 250, 9, field)  # 1 km/h = 100000 cm / 3600 s


def _uint(s, field, maximum):
    if not s:
        return None
    if not _is_digits(s):
        raise NMEAError("got %r, expected an integer 0..%d" % (s, maximum), field=field)
    v = int(s)
    if v > maximum:
        raise NMEAError("got %d, expected 0..%d" % (v, maximum), field=field)
    return v


def _signed(v, letter, pos, neg, field):
    if letter == pos:
        return v
    if letter == neg:
        return -v
    raise NMEAError("got %r, expected %r or %r" % (letter, pos, neg), field=field)


def _coord(s, hemi, deg_digits, pos, neg, field):
    """'ddmm.mmmm' (lat) / 'dddmm.mmmm' (lon) + hemisphere letter -> signed degrees * 1e7."""
    if not s:
        return None
    dot = s.find(".")
    ip, fp = (s, "") if dot < 0 else (s[:dot], s[dot + 1:])
    if not (2 <= len(ip) <= 2 + deg_digits) or not _is_digits(ip) or not _is_digits(fp):
        raise NMEAError("got %r, expected %s" % (s, "d" * deg_digits + "mm.mmmm"), field=field)
    deg = int(ip[:-2] or "0")
    minutes = int(ip[-2:])
    if minutes >= 60:
        raise NMEAError("got %r, minutes %d not below 60" % (s, minutes), field=field)
    scale = 60 * 10 ** len(fp)
    frac = int(ip[-2:] + fp) * _E7
    v = deg * _E7 + (2 * frac + scale) // (2 * scale)
    limit = 90 if deg_digits == 2 else 180
    if v > limit * _E7:
        raise NMEAError("got %r, more than %d degrees" % (s, limit), field=field)
    return _signed(v, hemi, pos, neg, field + "_hemisphere")


def _course(s, field):
    v = _unsigned_scaled(s, 2, field)
    if v is None:
        return None
    if v > 36000:
        raise NMEAError("got %r, expected 0..360 degrees" % s, field=field)
    return v % 36000


def _with_unit(s, unit, want, digits, field):
    v = _scaled(s, digits, field)
    if v is not None and unit != want:
        raise NMEAError("unit %r, expected %r" % (unit, want), field=field)
    return v


def _unit_checked(f, i, want, field):
    s = f.get(i)
    if s and f.get(i + 1) != want:
        raise NMEAError("unit %r, expected %r" % (f.get(i + 1), want), field=field)
    return s


def _mode(s, field):
    if not s:
        return None
    if len(s) != 1 or not ("A" <= s <= "Z"):
        raise NMEAError("got %r, expected one letter" % s, field=field)
    return s


def _time(s, field):
    """'hhmmss[.sss]' -> UTC ms of day (fraction truncated to the millisecond); second 60 allowed (leap)."""
    if not s:
        return None
    dot = s.find(".")
    ip, fp = (s, "") if dot < 0 else (s[:dot], s[dot + 1:])
    if len(ip) != 6 or not _is_digits(ip) or not _is_digits(fp):
        raise NMEAError("got %r, expected hhmmss.sss" % s, field=field)
    h, m, sec = int(ip[:2]), int(ip[2:4]), int(ip[4:])
    if h > 23 or m > 59 or sec > 60 or (sec == 60 and (h, m) != (23, 59)):
        raise NMEAError("got %r, expected hh 00-23, mm 00-59, ss 00-59 (60 only at 23:59, a leap second)" % s,
                        field=field)
    ms = int((fp[:3] + "000")[:3])
    return ((h * 60 + m) * 60 + sec) * 1000 + ms


def _days_in_month(y, m):
    if m == 2:
        return 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _date(s, field):
    """'ddmmyy' -> (year, month, day), two-digit year pivoted at defaults.NMEA_CENTURY_PIVOT."""
    if not s:
        return None
    if len(s) != 6 or not _is_digits(s):
        raise NMEAError("got %r, expected ddmmyy" % s, field=field)
    d, m, yy = int(s[:2]), int(s[2:4]), int(s[4:])
    y = 2000 + yy if yy < defaults.NMEA_CENTURY_PIVOT else 1900 + yy
    if not 1 <= m <= 12 or not 1 <= d <= _days_in_month(y, m):
        raise NMEAError("got %r, not a calendar date" % s, field=field)
    return (y, m, d)


# ---- time ---------------------------------------------------------------------------------------------------


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil, integers only)."""
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400  # 0..399
    mp = m - 3 if m > 2 else m + 9  # March = 0
    doy = (153 * mp + 2) // 5 + d - 1  # 0..365
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy  # 0..146096
    return era * 146097 + doe - 719468


def utc_ms(date, time_ms):
    """(year, month, day) + UTC ms of day -> Unix epoch ms (no leap seconds: second 60 runs into the next day)."""
    try:
        y, m, d = date
    except (TypeError, ValueError):
        raise LocalProtocolError("date must be (year, month, day), got %r" % (date,))
    if not (isinstance(y, int) and isinstance(m, int) and isinstance(d, int) and isinstance(time_ms, int)):
        raise LocalProtocolError("date and time_ms must be integers, got %r, %r" % (date, time_ms))
    if not 1 <= m <= 12 or not 1 <= d <= _days_in_month(y, m) or not 0 <= time_ms < 86401000:
        raise LocalProtocolError("not a UTC date/time: %r, %r ms" % (date, time_ms))
    return days_from_civil(y, m, d) * 86400000 + time_ms


# ---- encoders (simulators, tests) ---------------------------------------------------------------------------


def encode_sentence(body, max_line=defaults.NMEA_MAX_LINE):
    """'GPGGA,...' -> b'$GPGGA,...*hh\\r\\n'. Raises LocalProtocolError for reserved characters or length."""
    if isinstance(body, str):
        body = body.encode()
    body = bytes(body)
    for c in body:
        if c < 0x20 or c > 0x7E or c == 0x24 or c == 0x2A or c == 0x21:
            raise LocalProtocolError("body byte 0x%02x: expected printable ASCII other than '$', '*', '!'" % c)
    if len(body) + 6 > max_line:
        raise LocalProtocolError("sentence of %d characters, at most %d allowed" % (len(body) + 6, max_line))
    cs = checksum(body)
    return b"$" + body + b"*" + (_HEX[cs >> 4] + _HEX[cs & 15]).encode() + b"\r\n"


def _fmt_fixed(v, digits):
    """Integer v / 10**digits as a decimal string with trailing fraction zeros dropped (keeps one digit)."""
    sign = "-" if v < 0 else ""
    v = -v if v < 0 else v
    p = 10 ** digits
    fp = str(v % p)
    fp = "0" * (digits - len(fp)) + fp
    while len(fp) > 1 and fp[-1] == "0":
        fp = fp[:-1]
    return "%s%d.%s" % (sign, v // p, fp)


def _opt(v, fmt):
    return "" if v is None else fmt(v)


def _pad(n, width):
    s = str(n)
    return "0" * (width - len(s)) + s


def _fmt_time(t):
    if not isinstance(t, int) or not 0 <= t < 86401000:
        raise LocalProtocolError("time_ms must be an int 0..86400999, got %r" % (t,))
    s, ms = t // 1000, t % 1000
    if s >= 86400:  # the leap second 23:59:60
        h, m, sec = 23, 59, 60
    else:
        h, m, sec = s // 3600, s // 60 % 60, s % 60
    return _pad(h, 2) + _pad(m, 2) + _pad(sec, 2) + "." + _pad(ms, 3)


def _fmt_coord(v, deg_digits, pos, neg):
    """Degrees * 1e7 -> ('dddmm.mmmmmm', letter); 6 minute decimals make the round trip exact."""
    limit = 90 if deg_digits == 2 else 180
    if not isinstance(v, int) or not -limit * _E7 <= v <= limit * _E7:
        raise LocalProtocolError("coordinate must be an int within +-%d * 1e7, got %r" % (limit, v))
    a = -v if v < 0 else v
    m6 = (a % _E7) * 6  # minutes * 1e6
    text = _pad(a // _E7, deg_digits) + _pad(m6 // 1000000, 2) + "." + _pad(m6 % 1000000, 6)
    while text[-1] == "0" and text[-2] != ".":
        text = text[:-1]
    return text, (neg if v < 0 else pos)


def _fmt_cdeg(v):
    if not isinstance(v, int) or not 0 <= v < 36000:
        raise LocalProtocolError("course_cdeg must be an int 0..35999, got %r" % (v,))
    return _fmt_fixed(v, 2)


def _fmt_knots(cms):
    if not isinstance(cms, int) or cms < 0:
        raise LocalProtocolError("speed_cms must be an int >= 0, got %r" % (cms,))
    return _fmt_fixed((2 * cms * 9000 + 463) // (2 * 463), 3)  # milli-knots; decodes back to cms exactly


def _check_int(v, lo, hi, name):
    if v is not None and (not isinstance(v, int) or not lo <= v <= hi):
        raise LocalProtocolError("%s must be None or an int %d..%d, got %r" % (name, lo, hi, v))


def encode_gga(time_ms, lat_e7, lon_e7, fix_quality, satellites=None, hdop_x100=None, alt_mm=None,
               geoid_sep_mm=None, talker="GP", max_line=defaults.NMEA_MAX_LINE):
    """A GGA sentence; a None position/altitude leaves its fields empty (no fix)."""
    _check_int(fix_quality, 0, 8, "fix_quality")
    _check_int(satellites, 0, 99, "satellites")
    _check_int(hdop_x100, 0, 9999, "hdop_x100")
    _check_int(alt_mm, -10 ** 9, 10 ** 9, "alt_mm")
    _check_int(geoid_sep_mm, -10 ** 9, 10 ** 9, "geoid_sep_mm")
    lat, ns = ("", "") if lat_e7 is None else _fmt_coord(lat_e7, 2, "N", "S")
    lon, ew = ("", "") if lon_e7 is None else _fmt_coord(lon_e7, 3, "E", "W")
    body = [talker + "GGA", _opt(time_ms, _fmt_time), lat, ns, lon, ew, _opt(fix_quality, str),
            _opt(satellites, lambda n: _pad(n, 2)), _opt(hdop_x100, lambda v: _fmt_fixed(v, 2)),
            _opt(alt_mm, lambda v: _fmt_fixed(v, 3)), "" if alt_mm is None else "M",
            _opt(geoid_sep_mm, lambda v: _fmt_fixed(v, 3)), "" if geoid_sep_mm is None else "M", "", ""]
    return encode_sentence(",".join(body), max_line)


def encode_rmc(time_ms, date, valid, lat_e7, lon_e7, speed_cms=None, course_cdeg=None, mode=None,
               talker="GP", max_line=defaults.NMEA_MAX_LINE):
    """An RMC sentence (NMEA 2.3 layout with mode indicator when ``mode`` is given)."""
    d = ""
    if date is not None:
        try:
            y, m, dd = date
        except (TypeError, ValueError):
            raise LocalProtocolError("date must be (year, month, day), got %r" % (date,))
        pivot = defaults.NMEA_CENTURY_PIVOT
        if not (isinstance(y, int) and 1900 + pivot <= y < 2000 + pivot):
            raise LocalProtocolError("year %r cannot be written as 2 digits (window %d..%d)"
                                     % (y, 1900 + pivot, 1999 + pivot))
        if not (isinstance(m, int) and isinstance(dd, int) and 1 <= m <= 12 and 1 <= dd <= _days_in_month(y, m)):
            raise LocalProtocolError("not a calendar date: %r" % (date,))
        d = _pad(dd, 2) + _pad(m, 2) + _pad(y % 100, 2)
    lat, ns = ("", "") if lat_e7 is None else _fmt_coord(lat_e7, 2, "N", "S")
    lon, ew = ("", "") if lon_e7 is None else _fmt_coord(lon_e7, 3, "E", "W")
    body = [talker + "RMC", _opt(time_ms, _fmt_time), "A" if valid else "V", lat, ns, lon, ew,
            _opt(speed_cms, _fmt_knots), _opt(course_cdeg, _fmt_cdeg), d, "", ""]
    if mode is not None:
        body.append(mode)
    return encode_sentence(",".join(body), max_line)


def encode_vtg(course_cdeg, speed_cms, mode=None, talker="GP", max_line=defaults.NMEA_MAX_LINE):
    """A VTG sentence; km/h is written to 3 decimals (cm/s * 36 exactly) so the round trip is exact."""
    if speed_cms is not None and (not isinstance(speed_cms, int) or speed_cms < 0):
        raise LocalProtocolError("speed_cms must be None or an int >= 0, got %r" % (speed_cms,))
    c = _opt(course_cdeg, _fmt_cdeg)
    body = [talker + "VTG", c, "T" if c else "", "", "", _opt(speed_cms, _fmt_knots),
            "" if speed_cms is None else "N", _opt(speed_cms, lambda v: _fmt_fixed(v * 36, 3)),
            "" if speed_cms is None else "K"]
    if mode is not None:
        body.append(mode)
    return encode_sentence(",".join(body), max_line)
