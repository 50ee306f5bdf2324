"""Hypothesis properties of the NMEA codec (CPython only)."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import nmea
from protocols.errors import LocalProtocolError, NMEAError

GGA_MUNICH = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
RMC_SYDNEY = b"$GNRMC,003214.00,A,3351.56760,S,15112.94260,E,0.012,,150625,,,A,V*02\r\n"
VTG_UBLOX = b"$GPVTG,77.52,T,,M,0.004,N,0.008,K,A*06\r\n"
GOOD = GGA_MUNICH + RMC_SYDNEY + VTG_UBLOX

times = st.integers(0, 86400999)
lats = st.integers(-900000000, 900000000)
lons = st.integers(-1800000000, 1800000000)
dates = st.dates(min_value=__import__("datetime").date(1980, 1, 1),
                 max_value=__import__("datetime").date(2079, 12, 31)).map(lambda d: (d.year, d.month, d.day))


def drain(r):
    out = []
    while True:
        ev = r.next_event()
        if ev is nmea.NEED_DATA or ev is nmea.CLOSED:
            return out, ev
        out.append(ev)


@settings(max_examples=300, deadline=None)
@given(times, lats, lons, st.integers(0, 8), st.integers(0, 99), st.integers(0, 9999),
       st.integers(-500000, 9000000), st.integers(-110000, 90000), st.sampled_from(["GP", "GN", "BD", "GL"]))
def test_gga_round_trip(t, lat, lon, q, sats, hdop, alt, sep, talker):
    line = nmea.encode_gga(t, lat, lon, q, sats, hdop, alt, sep, talker=talker, max_line=120)
    g = nmea.parse_sentence(line, max_line=120)
    assert (g.talker, g.time_ms, g.lat_e7, g.lon_e7, g.fix_quality, g.satellites, g.hdop_x100, g.alt_mm,
            g.geoid_sep_mm) == (talker, t, lat, lon, q, sats, hdop, alt, sep)


@settings(max_examples=300, deadline=None)
@given(times, dates, st.booleans(), lats, lons, st.integers(0, 100000), st.integers(0, 35999),
       st.sampled_from([None, "A", "D", "E", "N"]))
def test_rmc_round_trip(t, date, valid, lat, lon, speed, course, mode):
    line = nmea.encode_rmc(t, date, valid, lat, lon, speed, course, mode)
    assert len(line) <= 82
    r = nmea.parse_sentence(line)
    assert (r.time_ms, r.date, r.lat_e7, r.lon_e7, r.speed_cms, r.course_cdeg, r.mode) == \
        (t, date, lat, lon, speed, course, mode)
    assert r.valid == (valid and mode != "N")
    assert r.epoch_ms == nmea.utc_ms(date, t)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(0, 35999)), st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_vtg_round_trip(course, speed):
    v = nmea.parse_sentence(nmea.encode_vtg(course, speed, "A"))
    assert (v.course_cdeg, v.speed_cms) == (course, speed)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 89), st.integers(0, 59), st.text("0123456789", min_size=0, max_size=12),
       st.sampled_from("NS"))
def test_latitude_matches_exact_rational(deg, minutes, frac, hemi):
    text = "%02d%02d" % (deg, minutes) + ("." + frac if frac else "")
    g = nmea.parse_sentence(nmea.encode_sentence("GPGGA,,%s,%s,,,0" % (text, hemi)))
    exact = (deg + (minutes + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)) / 60) * 10 ** 7
    want = int(exact + Fraction(1, 2))  # half up on the magnitude
    assert g.lat_e7 == (want if hemi == "N" else -want)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10 ** 6), st.integers(0, 4))
def test_knots_match_exact_rational(n, k):
    text = str(n) if k == 0 else "%d.%0*d" % (n // 10 ** k, k, n % 10 ** k)
    r = nmea.parse_sentence(nmea.encode_sentence("GPRMC,,V,,,,,%s" % text))
    assert r.speed_cms == int(Fraction(n, 10 ** k) * Fraction(185200, 3600) + Fraction(1, 2))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_arbitrary_bytes_only_raises_nmea_error(data):
    try:
        nmea.parse_sentence(data)
    except NMEAError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=78))
def test_parse_any_checksummed_body_only_raises_nmea_error(body):
    body = body.replace("$", "").replace("*", "").replace("!", "")
    line = nmea.encode_sentence(body)
    try:
        s = nmea.parse_sentence(line)
    except NMEAError:
        return
    assert isinstance(s, nmea.Sentence)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["GPGGA", "GNRMC", "GPVTG", "BDGGA"]), min_size=1, max_size=1),
       st.lists(st.text(alphabet="0123456789.-NSEWAVMTK ", max_size=12), max_size=14))
def test_known_types_with_random_fields_only_raise_nmea_error(addr, fields):
    body = ",".join(addr + fields)[:75]
    try:
        nmea.parse_sentence(nmea.encode_sentence(body))
    except NMEAError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_reader_never_raises_on_garbage_and_chunking_does_not_matter(data, chunk):
    stream = data + b"\r\n" + GOOD
    whole = nmea.NMEAReader()
    whole.receive_data(stream)
    whole.receive_data(b"")
    evs_whole, last = drain(whole)
    assert last is nmea.CLOSED
    pieces = nmea.NMEAReader()
    evs = []
    for i in range(0, len(stream), chunk):
        pieces.receive_data(stream[i:i + chunk])
        got, last = drain(pieces)
        assert last is nmea.NEED_DATA
        evs.extend(got)
    pieces.receive_data(b"")
    got, last = drain(pieces)
    evs.extend(got)
    assert evs == evs_whole
    # the good sentences after the garbage always come through
    assert [type(e).__name__ for e in evs_whole[-3:]] == ["GGA", "RMC", "VTG"]
    for e in evs_whole:
        if isinstance(e, nmea.NMEABadSentence):
            assert len(e.raw) <= 81


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_sentence_is_rejected_or_parsed(data):
    line = bytearray(data.draw(st.sampled_from([GGA_MUNICH, RMC_SYDNEY, VTG_UBLOX])))
    i = data.draw(st.integers(0, len(line) - 1))
    line[i] = data.draw(st.integers(0, 255))
    r = nmea.NMEAReader()
    r.receive_data(bytes(line))
    r.receive_data(b"")
    evs, last = drain(r)
    assert last is nmea.CLOSED
    for e in evs:
        assert isinstance(e, (nmea.Sentence, nmea.NMEABadSentence))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100))
def test_encode_sentence_local_error_only(body):
    try:
        line = nmea.encode_sentence(body)
    except LocalProtocolError:
        return
    assert nmea.checksum(line[1:-5]) == int(line[-4:-2], 16)
