"""NMEA 0183 reader/parser: golden sentences (checksums verified independently), feeding whole / byte by byte /
with trailing data, garbage, overlong lines. Runs unchanged on CPython and MicroPython."""

import binascii

from ptest import raises

from protocols import nmea
from protocols.errors import LocalProtocolError, NMEAError

# Classic textbook pair (NMEA FAQ) and a u-blox receiver description example.
GGA_MUNICH = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
RMC_MUNICH = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
GGA_UBLOX = b"$GPGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*5B\r\n"
RMC_UBLOX = b"$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57\r\n"
VTG_UBLOX = b"$GPVTG,77.52,T,,M,0.004,N,0.008,K,A*06\r\n"
# No fix yet (u-blox / multi-GNSS module output before the first fix).
GGA_NOFIX = b"$GPGGA,,,,,,0,00,99.99,,,,,,*48\r\n"
RMC_NOFIX = b"$GPRMC,,V,,,,,,,,,,N*53\r\n"
GNRMC_NOFIX = b"$GNRMC,,V,,,,,,,,,,M*4E\r\n"
VTG_NOFIX = b"$GPVTG,,,,,,,,,N*30\r\n"
# Southern / western hemispheres, other talkers, NMEA 4.1 nav status, leap second, old VTG, negative altitude.
RMC_SYDNEY = b"$GNRMC,003214.00,A,3351.56760,S,15112.94260,E,0.012,,150625,,,A,V*02\r\n"
GGA_RIO = b"$GPGGA,201530.50,2254.57780,S,04312.38520,W,2,11,0.78,12.3,M,-5.4,M,1.2,0000*5A\r\n"
GGA_NEWYORK = b"$GNGGA,134500.000,4042.77000,N,07400.36000,W,1,14,0.9,10.0,M,-34.2,M,,*42\r\n"
GGA_BEIJING = b"$BDGGA,061212.00,3954.87600,N,11623.79800,E,1,09,1.1,52.7,M,-9.6,M,,*53\r\n"
RMC_LEAP = b"$GLRMC,235960.000,A,3133.38400,N,03528.86400,E,1.5,359.99,311216,4.3,E,D*26\r\n"
VTG_OLD = b"$GAVTG,054.7,034.4,005.5,010.2*45\r\n"
GGA_DEADSEA = b"$GBGGA,080000.00,3130.00000,N,03525.00000,E,1,07,1.50,-430.2,M,19.0,M,,*65\r\n"
RMC_HALF = b"$GPRMC,123519,A,0000.000003,S,00000.000003,W,0.0,360.0,010180,,,A*7F\r\n"
GSV = b"$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74\r\n"
PUBX = b"$PUBX,00,081350.00,4717.113210,N*5B\r\n"
TXT = b"$GPTXT,01,01,02,ANTSTATUS=OK*3B\r\n"


def events(reader):
    out = []
    while True:
        ev = reader.next_event()
        if ev is nmea.NEED_DATA or ev is nmea.CLOSED:
            return out, ev
        out.append(ev)


def feed_whole(data, eof=True):
    r = nmea.NMEAReader()
    r.receive_data(data)
    if eof:
        r.receive_data(b"")
    return events(r)


def feed_bytes(data, eof=True):
    r = nmea.NMEAReader()
    out = []
    for i in range(len(data)):
        r.receive_data(data[i:i + 1])
        evs, last = events(r)
        assert last is nmea.NEED_DATA
        out.extend(evs)
    if eof:
        r.receive_data(b"")
    evs, last = events(r)
    return out + evs, last


# ---- golden sentences ---------------------------------------------------------------------------------------


def test_gga_textbook():
    s = nmea.parse_sentence(GGA_MUNICH)
    assert isinstance(s, nmea.GGA)
    assert s.talker == "GP" and s.sentence_type == "GGA"
    assert s.time_ms == 45319000  # 12:35:19
    assert s.lat_e7 == 481173000  # 48 + 7.038/60
    assert s.lon_e7 == 115166667  # 11 + 31.000/60 = 11.51666666.. rounded
    assert s.fix_quality == 1 and s.satellites == 8 and s.hdop_x100 == 90
    assert s.alt_mm == 545400 and s.geoid_sep_mm == 46900
    assert s.dgps_age_ms is None and s.dgps_station is None
    assert s.valid is True


def test_rmc_textbook():
    s = nmea.parse_sentence(RMC_MUNICH)
    assert isinstance(s, nmea.RMC)
    assert s.valid is True and s.status == "A"
    assert (s.lat_e7, s.lon_e7) == (481173000, 115166667)
    assert s.speed_cms == 1152  # 22.4 kn * 463/9 = 1152.36
    assert s.course_cdeg == 8440
    assert s.date == (1994, 3, 23)
    assert s.magvar_cdeg == -310  # 3.1 W
    assert s.mode is None and s.nav_status is None
    assert s.epoch_ms == 764426119000  # 1994-03-23T12:35:19Z


def test_ublox_examples():
    g = nmea.parse_sentence(GGA_UBLOX)
    assert g.time_ms == 34045000  # 09:27:25
    assert g.lat_e7 == 472852332  # 47 + 17.11399/60 = 47.28523316..
    assert g.lon_e7 == 85652650  # 8 + 33.91590/60 = 8.565265
    assert g.hdop_x100 == 101 and g.alt_mm == 499600 and g.geoid_sep_mm == 48000
    r = nmea.parse_sentence(RMC_UBLOX)
    assert r.time_ms == 30959000 and r.speed_cms == 0 and r.course_cdeg == 7752
    assert r.date == (2002, 12, 9) and r.mode == "A" and r.valid is True
    assert r.magvar_cdeg is None
    v = nmea.parse_sentence(VTG_UBLOX)
    assert isinstance(v, nmea.VTG)
    assert v.course_cdeg == 7752 and v.course_mag_cdeg is None and v.speed_cms == 0 and v.mode == "A"


def test_southern_and_eastern():
    s = nmea.parse_sentence(RMC_SYDNEY)
    assert s.talker == "GN"
    assert s.lat_e7 == -338594600  # 33 + 51.5676/60 = 33.85946, south
    assert s.lon_e7 == 1512157100  # 151 + 12.9426/60
    assert s.speed_cms == 1 and s.course_cdeg is None
    assert s.date == (2025, 6, 15) and s.time_ms == 1934000
    assert s.mode == "A" and s.nav_status == "V" and s.valid is True
    assert s.epoch_ms == 1749947534000


def test_southern_and_western():
    g = nmea.parse_sentence(GGA_RIO)
    assert g.lat_e7 == -229096300 and g.lon_e7 == -432064200
    assert g.time_ms == 72930500 and g.fix_quality == 2 and g.satellites == 11 and g.hdop_x100 == 78
    assert g.alt_mm == 12300 and g.geoid_sep_mm == -5400
    assert g.dgps_age_ms == 1200 and g.dgps_station == 0


def test_northern_and_western():
    g = nmea.parse_sentence(GGA_NEWYORK)
    assert g.lat_e7 == 407128333 and g.lon_e7 == -740060000
    assert g.time_ms == 49500000 and g.satellites == 14


def test_other_talkers():
    g = nmea.parse_sentence(GGA_BEIJING)
    assert g.talker == "BD" and g.lat_e7 == 399146000 and g.lon_e7 == 1163966333 and g.time_ms == 22332000
    d = nmea.parse_sentence(GGA_DEADSEA)
    assert d.talker == "GB" and d.alt_mm == -430200 and d.lat_e7 == 315000000 and d.lon_e7 == 354166667


def test_leap_second_and_magvar_east():
    s = nmea.parse_sentence(RMC_LEAP)
    assert s.talker == "GL"
    assert s.time_ms == 86400000  # 23:59:60.000
    assert s.date == (2016, 12, 31)
    assert s.epoch_ms == 1483228800000  # POSIX time: the leap second shares 2017-01-01T00:00:00Z
    assert s.lat_e7 == 315564000 and s.lon_e7 == 354810667
    assert s.speed_cms == 77 and s.course_cdeg == 35999 and s.magvar_cdeg == 430 and s.mode == "D"


def test_old_vtg_layout():
    v = nmea.parse_sentence(VTG_OLD)
    assert v.talker == "GA"
    assert v.course_cdeg == 5470 and v.course_mag_cdeg == 3440
    assert v.speed_cms == 283  # from km/h: 10.2 * 250/9 = 283.33
    assert v.mode is None


def test_rounding_half_away_from_zero_and_course_360():
    s = nmea.parse_sentence(RMC_HALF)
    assert s.lat_e7 == -1 and s.lon_e7 == -1  # 0.000003' = 0.5e-7 degree
    assert s.course_cdeg == 0  # 360.0 is north
    assert s.speed_cms == 0
    assert s.date == (1980, 1, 1) and s.epoch_ms == 315578119000


def test_no_fix_fields_are_none():
    g = nmea.parse_sentence(GGA_NOFIX)
    assert g.time_ms is None and g.lat_e7 is None and g.lon_e7 is None and g.alt_mm is None
    assert g.fix_quality == 0 and g.satellites == 0 and g.hdop_x100 == 9999
    assert g.valid is False
    for line in (RMC_NOFIX, GNRMC_NOFIX):
        r = nmea.parse_sentence(line)
        assert r.valid is False and r.status == "V"
        assert r.lat_e7 is None and r.speed_cms is None and r.date is None and r.epoch_ms is None
    v = nmea.parse_sentence(VTG_NOFIX)
    assert v.course_cdeg is None and v.speed_cms is None and v.mode == "N"


def test_rmc_status_v_with_position_is_not_valid():
    line = nmea.encode_sentence("GPRMC,123519,V,4807.038,N,01131.000,E,0.0,,230394,,,N")
    r = nmea.parse_sentence(line)
    assert r.valid is False and r.lat_e7 == 481173000


def test_rmc_mode_n_is_not_valid():
    r = nmea.parse_sentence(nmea.encode_sentence("GPRMC,123519,A,4807.038,N,01131.000,E,0.0,,230394,,,N"))
    assert r.valid is False


def test_missing_trailing_fields_are_none():
    g = nmea.parse_sentence(nmea.encode_sentence("GPGGA,123519,4807.038,N,01131.000,E,1"))
    assert g.fix_quality == 1 and g.satellites is None and g.alt_mm is None and g.valid is True


def test_fields_of_spaces_are_empty():
    g = nmea.parse_sentence(nmea.encode_sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M, ,M, , "))
    assert g.geoid_sep_mm is None and g.dgps_age_ms is None


def test_unknown_and_proprietary_sentences_are_generic():
    s = nmea.parse_sentence(GSV)
    assert type(s) is nmea.Sentence
    assert s.talker == "GP" and s.sentence_type == "GSV" and s.fields[:3] == ["3", "1", "11"] and len(s.fields) == 19
    p = nmea.parse_sentence(PUBX)
    assert p.talker == "P" and p.sentence_type == "UBX" and p.fields == ["00", "081350.00", "4717.113210", "N"]
    t = nmea.parse_sentence(TXT.rstrip(b"\r\n"))
    assert t.sentence_type == "TXT" and t.fields[3] == "ANTSTATUS=OK"


def test_lowercase_checksum_and_bare_lf_accepted():
    assert nmea.parse_sentence(GGA_NOFIX.replace(b"\r\n", b"\n")).hdop_x100 == 9999
    assert nmea.parse_sentence(b"$GNRMC,,V,,,,,,,,,,M*4e").status == "V"


# ---- bad sentences ------------------------------------------------------------------------------------------


def test_bad_checksum():
    with raises(NMEAError, match="checksum") as r:
        nmea.parse_sentence(GGA_MUNICH.replace(b"*47", b"*48"))
    assert "computed 47" in str(r.value) and r.value.code == "bad_nmea"
    with raises(NMEAError, match="checksum"):
        nmea.parse_sentence(GGA_MUNICH.replace(b"545.4", b"545.5"))


def test_checksum_required_and_well_formed():
    with raises(NMEAError, match="checksum: missing"):
        nmea.parse_sentence(b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,\r\n")
    with raises(NMEAError, match="checksum"):
        nmea.parse_sentence(b"$GPGGA,1*4\r\n")
    with raises(NMEAError, match="hex"):
        nmea.parse_sentence(b"$GPGGA,1*4G\r\n")


def test_structure_errors():
    with raises(NMEAError, match="start"):
        nmea.parse_sentence(b"GPGGA,1*00")
    with raises(NMEAError, match="start"):
        nmea.parse_sentence(b"")
    with raises(NMEAError, match="character"):
        nmea.parse_sentence(b"$GPG\xffA,1*00")
    with raises(NMEAError, match="character"):
        nmea.parse_sentence(b"$GPGGA,$GPRMC*00")
    with raises(NMEAError, match="address"):
        nmea.parse_sentence(nmea.encode_sentence("GPGGAX,1"))
    with raises(NMEAError, match="address"):
        nmea.parse_sentence(nmea.encode_sentence("gpgga,1"))
    with raises(NMEAError, match="length"):
        nmea.parse_sentence(b"$GPTXT," + b"A" * 80 + b"*00")


def test_field_errors_name_the_field():
    cases = [
        ("GPGGA,123519,4807.038,X,01131.000,E,1", "GGA.lat_hemisphere"),
        ("GPGGA,123519,4807.038,,01131.000,E,1", "GGA.lat_hemisphere"),
        ("GPGGA,123519,4867.038,N,01131.000,E,1", "GGA.lat"),  # 67 minutes
        ("GPGGA,123519,9100.000,N,01131.000,E,1", "GGA.lat"),
        ("GPGGA,123519,4807.038,N,18100.000,E,1", "GGA.lon"),
        ("GPGGA,123519,48O7.038,N,01131.000,E,1", "GGA.lat"),
        ("GPGGA,126019,4807.038,N,01131.000,E,1", "GGA.time"),
        ("GPGGA,1235,4807.038,N,01131.000,E,1", "GGA.time"),
        ("GPGGA,123519,4807.038,N,01131.000,E,9", "GGA.quality"),
        ("GPGGA,123519,4807.038,N,01131.000,E,1,08,-0.9", "GGA.hdop"),
        ("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,F", "GGA.altitude"),
        ("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,5.4.4,M", "GGA.altitude"),
        ("GPRMC,123519,X,4807.038,N,01131.000,E", "RMC.status"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,-1.0", "RMC.speed"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,1.0,360.5", "RMC.course"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,1.0,1.0,300294", "RMC.date"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,1.0,1.0,290223", "RMC.date"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,1.0,1.0,290224,3.1,", "RMC.magvar_dir"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,1.0,1.0,290224,,,AD", "RMC.mode"),
        ("GPVTG,77.52,X,,M,0.004,N,0.008,K,A", "VTG.course"),
    ]
    for body, field in cases:
        with raises(NMEAError) as r:
            nmea.parse_sentence(nmea.encode_sentence(body))
        assert r.value.field == field, (body, r.value.field, str(r.value))
    # 29 Feb 2024 is a date; 2000 was a leap year, 2100 will not be (outside the 2-digit window anyway).
    assert nmea.parse_sentence(nmea.encode_sentence("GPRMC,,V,,,,,,,290224")).date == (2024, 2, 29)
    assert nmea.parse_sentence(nmea.encode_sentence("GPRMC,,V,,,,,,,290200")).date == (2000, 2, 29)
    assert nmea.parse_sentence(nmea.encode_sentence("GPRMC,,V,,,,,,,311279")).date == (2079, 12, 31)
    assert nmea.parse_sentence(nmea.encode_sentence("GPRMC,,V,,,,,,,010180")).date == (1980, 1, 1)


def test_parse_accepts_str_and_rejects_other_types():
    assert nmea.parse_sentence(GGA_MUNICH.decode()).lat_e7 == 481173000
    with raises(LocalProtocolError):
        nmea.parse_sentence(12)


# ---- reader ---------------------------------------------------------------------------------------------------

STREAM = GGA_MUNICH + RMC_MUNICH + GSV + GGA_NOFIX + RMC_SYDNEY + VTG_UBLOX


def test_reader_whole_buffer():
    evs, last = feed_whole(STREAM)
    assert last is nmea.CLOSED
    assert [type(e).__name__ for e in evs] == ["GGA", "RMC", "Sentence", "GGA", "RMC", "VTG"]
    assert evs[0] == nmea.parse_sentence(GGA_MUNICH)
    assert evs[4].lat_e7 == -338594600


def test_reader_byte_by_byte_equals_whole():
    assert feed_bytes(STREAM) == feed_whole(STREAM)


def test_reader_trailing_partial_sentence_waits():
    r = nmea.NMEAReader()
    r.receive_data(GGA_MUNICH + RMC_MUNICH[:30])
    evs, last = events(r)
    assert len(evs) == 1 and last is nmea.NEED_DATA
    r.receive_data(RMC_MUNICH[30:])
    evs, last = events(r)
    assert len(evs) == 1 and evs[0].speed_cms == 1152 and last is nmea.NEED_DATA


def test_reader_bare_lf_and_blank_lines():
    data = GGA_MUNICH.replace(b"\r\n", b"\n") + b"\r\n\n" + RMC_MUNICH
    evs, _ = feed_whole(data)
    assert [type(e).__name__ for e in evs] == ["GGA", "RMC"]


def test_reader_garbage_between_sentences():
    data = (b"\x00\xff\xfe" + GGA_MUNICH + b"noise\r\n" + b"A,4807.038,N*47\r\n" + RMC_MUNICH
            + b"\x80\x81\r\n" + GGA_MUNICH.replace(b"*47", b"*00") + VTG_UBLOX)
    for evs, last in (feed_whole(data), feed_bytes(data)):
        assert last is nmea.CLOSED
        kinds = [type(e).__name__ for e in evs]
        assert kinds == ["NMEABadSentence", "GGA", "NMEABadSentence", "NMEABadSentence", "RMC",
                         "NMEABadSentence", "NMEABadSentence", "VTG"], kinds
        assert evs[0].raw == b"\x00\xff\xfe" and "start" in evs[0].reason
        assert evs[2].raw == b"noise"
        assert "checksum" in evs[6].reason and evs[6].raw == GGA_MUNICH.replace(b"*47", b"*00")[:-2]
    assert feed_whole(data) == feed_bytes(data)


def test_reader_resyncs_on_dollar_after_uart_overrun():
    data = GGA_MUNICH[:25] + RMC_MUNICH  # the GGA lost its tail, the RMC starts right after it
    evs, _ = feed_whole(data)
    assert [type(e).__name__ for e in evs] == ["NMEABadSentence", "RMC"]
    assert evs[0].raw == GGA_MUNICH[:25]
    assert feed_bytes(data) == feed_whole(data)


def test_reader_overlong_line_is_discarded_and_reading_goes_on():
    data = GGA_MUNICH + b"$GPTXT," + b"X" * 200 + b"*00\r\n" + RMC_MUNICH + b"Y" * 300 + b"\r\n" + VTG_UBLOX
    for evs, last in (feed_whole(data), feed_bytes(data)):
        kinds = [type(e).__name__ for e in evs]
        assert kinds == ["GGA", "NMEABadSentence", "RMC", "NMEABadSentence", "VTG"], kinds
        assert "longer than 80" in evs[1].reason and len(evs[1].raw) == 81
        assert evs[1].raw.startswith(b"$GPTXT,XXX")
        assert evs[3].raw == b"Y" * 81
    assert feed_whole(data) == feed_bytes(data)


def test_reader_longest_legal_line():
    body = "GPTXT," + "Z" * 71  # 1 + 77 + 3 = 81 > 80
    with raises(LocalProtocolError):
        nmea.encode_sentence(body)
    line = nmea.encode_sentence(body[:-1])
    assert len(line) == 82
    evs, _ = feed_bytes(line + line.replace(b"\r\n", b"\n"))
    assert [type(e).__name__ for e in evs] == ["Sentence", "Sentence"]
    overlong = line[:-5] + b"Z" + line[-5:]  # 81 characters before CR LF (checksum now wrong, but length first)
    for evs, _ in (feed_whole(overlong + GSV), feed_bytes(overlong + GSV)):
        assert [type(e).__name__ for e in evs] == ["NMEABadSentence", "Sentence"]
        assert "longer" in evs[0].reason and evs[0].raw == overlong[:81]


def test_reader_end_of_stream():
    evs, last = feed_whole(GGA_MUNICH + RMC_MUNICH[:-2])  # last line unterminated but complete
    assert [type(e).__name__ for e in evs] == ["GGA", "RMC"] and last is nmea.CLOSED
    evs, last = feed_whole(GGA_MUNICH + RMC_MUNICH[:20])  # truncated
    assert [type(e).__name__ for e in evs] == ["GGA", "NMEABadSentence"] and last is nmea.CLOSED
    r = nmea.NMEAReader()
    r.receive_data(b"")
    assert r.next_event() is nmea.CLOSED
    with raises(LocalProtocolError):
        r.receive_data(GGA_MUNICH)
    assert r.next_event() is nmea.CLOSED and r.next_event() is nmea.CLOSED


def test_reader_buffer_is_bounded():
    r = nmea.NMEAReader(max_buffer=200)
    r.receive_data(STREAM[:100])
    with raises(LocalProtocolError, match="max_buffer"):
        r.receive_data(STREAM[100:250])
    evs, last = events(r)
    assert [type(e).__name__ for e in evs] == ["GGA"]  # the RMC's head waits in the buffer
    r.receive_data(b"Q" * 100)  # 33 + 100 bytes with no line end: reported as soon as it exceeds a line
    evs, last = events(r)
    assert len(evs) == 1 and evs[0].raw == (RMC_MUNICH[:33] + b"Q" * 100)[:81] and last is nmea.NEED_DATA
    r.receive_data(b"Q" * 200)  # garbage is dropped as it is read, so the reader keeps going
    evs, last = events(r)
    assert evs == [] and last is nmea.NEED_DATA and r.bad_count == 1
    r.receive_data(b"\r\n" + GGA_MUNICH)
    evs, last = events(r)
    assert [type(e).__name__ for e in evs] == ["GGA"]


def test_reader_bad_count():
    r = nmea.NMEAReader()
    r.receive_data(b"junk\r\n" + GGA_MUNICH + b"more junk\n")
    evs, _ = events(r)
    assert len(evs) == 3 and r.bad_count == 2


def test_reader_rejects_bad_limits():
    with raises(LocalProtocolError):
        nmea.NMEAReader(max_line=4)
    with raises(LocalProtocolError):
        nmea.NMEAReader(max_line=100, max_buffer=50)


def test_reader_larger_max_line_for_proprietary_output():
    line = b"$PUBX,00,081350.00,4717.113210,N,00833.915187,E,546.589,G3,2.1,2.0,0.007,77.52,0.007,,0.92,1.19,0.77,9,0,0"
    line = nmea.encode_sentence(line[1:], max_line=200)
    r = nmea.NMEAReader(max_line=200)
    r.receive_data(line)
    evs, _ = events(r)
    assert evs[0].sentence_type == "UBX" and len(evs[0].fields) == 20
    evs, _ = feed_whole(line)
    assert type(evs[0]) is nmea.NMEABadSentence


# ---- encoders and time --------------------------------------------------------------------------------------


def test_encode_sentence():
    assert nmea.encode_sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") == GGA_MUNICH
    assert nmea.encode_sentence(b"GPVTG,77.52,T,,M,0.004,N,0.008,K,A") == VTG_UBLOX
    for bad in ("GP*GA", "GP$GA", "GPGGA\r", "GP\xe9GA"):
        with raises(LocalProtocolError):
            nmea.encode_sentence(bad)


def test_checksum_helper():
    assert nmea.checksum("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") == 0x47
    assert nmea.checksum(b"") == 0


def test_encode_gga_rmc_vtg_round_trip():
    gga = nmea.encode_gga(45319250, -338594600, -432064201, 2, 11, 78, -430200, 46900, talker="GN")
    assert gga == b"$GNGGA,123519.250,3351.5676,S,04312.385206,W,2,11,0.78,-430.2,M,46.9,M,,*50\r\n"
    g = nmea.parse_sentence(gga)
    assert (g.time_ms, g.lat_e7, g.lon_e7, g.fix_quality, g.satellites, g.hdop_x100, g.alt_mm, g.geoid_sep_mm) == \
        (45319250, -338594600, -432064201, 2, 11, 78, -430200, 46900)
    rmc = nmea.encode_rmc(86400999, (2016, 12, 31), True, 900000000, -1800000000, 1152, 35999, "D")
    assert rmc == b"$GPRMC,235960.999,A,9000.0,N,18000.0,W,22.393,359.99,311216,,,D*7B\r\n"
    r = nmea.parse_sentence(rmc)
    assert (r.time_ms, r.date, r.valid, r.lat_e7, r.lon_e7, r.speed_cms, r.course_cdeg, r.mode) == \
        (86400999, (2016, 12, 31), True, 900000000, -1800000000, 1152, 35999, "D")
    vtg = nmea.encode_vtg(7752, 1234, "A")
    assert vtg == b"$GPVTG,77.52,T,,,23.987,N,44.424,K,A*42\r\n"
    v = nmea.parse_sentence(vtg)
    assert (v.course_cdeg, v.speed_cms, v.mode) == (7752, 1234, "A")
    nofix = nmea.parse_sentence(nmea.encode_gga(None, None, None, 0, 0, 9999))
    assert nofix.lat_e7 is None and nofix.time_ms is None and nofix.valid is False
    norm = nmea.parse_sentence(nmea.encode_rmc(None, None, False, None, None))
    assert norm.status == "V" and norm.date is None


def test_encoders_reject_misuse():
    with raises(LocalProtocolError):
        nmea.encode_gga(0, 900000001, 0, 1)
    with raises(LocalProtocolError):
        nmea.encode_gga(0, 0, 0, 9)
    with raises(LocalProtocolError):
        nmea.encode_rmc(0, (2080, 1, 1), True, 0, 0)
    with raises(LocalProtocolError):
        nmea.encode_rmc(0, (2023, 2, 29), True, 0, 0)
    with raises(LocalProtocolError):
        nmea.encode_rmc(86401000, None, True, 0, 0)
    with raises(LocalProtocolError):
        nmea.encode_vtg(36000, 0)


def test_utc_ms_days_from_civil():
    assert nmea.days_from_civil(1970, 1, 1) == 0
    assert nmea.days_from_civil(2000, 3, 1) == 11017
    assert nmea.days_from_civil(1969, 12, 31) == -1
    assert nmea.utc_ms((1970, 1, 1), 0) == 0
    assert nmea.utc_ms((2025, 6, 15), 1934000) == 1749947534000
    assert nmea.utc_ms((2024, 2, 29), 86399999) == 1709251199999
    assert nmea.utc_ms((2079, 12, 31), 0) == 3471206400000
    with raises(LocalProtocolError):
        nmea.utc_ms((2023, 2, 29), 0)
    with raises(LocalProtocolError):
        nmea.utc_ms(None, 0)
    with raises(LocalProtocolError):
        nmea.utc_ms((2023, 1, 1), 86401000)


def test_events_compare_by_value():
    a = nmea.parse_sentence(GGA_MUNICH)
    b = nmea.parse_sentence(GGA_MUNICH)
    assert a == b and not (a != b)
    assert a != nmea.parse_sentence(GGA_UBLOX)
    assert nmea.NMEABadSentence("x", b"y") == nmea.NMEABadSentence("x", b"y")
    assert "GGA(" in repr(a) and repr(nmea.NEED_DATA) == "NEED_DATA"


def test_docs_worked_example():
    # docs/PROTOCOL.md §13, "Worked example": the no-fix VTG byte for byte and its checksum.
    assert binascii.hexlify(VTG_NOFIX) == b"244750565447" + b"2c" * 9 + b"4e2a33300d0a"
    assert nmea.checksum(b"GPVTG") == 0x52 and nmea.checksum(b"GPVTG,,,,,,,,,") == 0x7E
    assert nmea.checksum(b"GPVTG,,,,,,,,,N") == 0x30
    assert nmea.checksum("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") == 0x47
    with raises(LocalProtocolError):
        nmea.NMEAReader().receive_data("text")
