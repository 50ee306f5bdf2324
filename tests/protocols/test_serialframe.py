"""Serial frame codec: golden vectors, CRC check value, resynchronisation. Runs on CPython and MicroPython."""

import struct

from ptest import raises

from protocols import serialframe as sf
from protocols.errors import FrameError, LocalProtocolError

HELLO_PAYLOAD = b'{"dev":"bwc-0001","fw":"1.2.0"}'
# Golden vectors (docs/PROTOCOL.md §14, "Worked examples")
HELLO_HEX = ("fbc101010001001f350f" "7b22646576223a226277632d30303031222c226677223a22312e322e30227d" "79ee")
ACK_HEX = "fbc1010500070002cd35" "0007" "6de8"
HEARTBEAT_HEX = "fbc10102ffff00008bf3" "ffff"
NACK_HEX = "fbc10106000800031ff7" "000101" "ef8c"
SACK_HEX = "fbc10105fffe0006bbd1" "fffe00000005" "faf4"


def unhex(s):
    return bytes(int(s[i:i + 2], 16) for i in range(0, len(s), 2))


HELLO = unhex(HELLO_HEX)


def raw_frame(ver, ftype, seq, payload, fcs=None):
    """Build a frame by hand (encode_frame refuses bad versions and unknown types)."""
    hdr = struct.pack(">BBHH", ver, ftype, seq, len(payload))
    if fcs is None:
        fcs = sf.crc16(payload)
    return sf.SYNC + hdr + struct.pack(">H", sf.crc16(hdr)) + payload + struct.pack(">H", fcs)


def collect(data, step=None, dec=None, eof=True):
    """Feed ``data`` in pieces of ``step`` bytes (all at once if None); return every event up to CLOSED."""
    if dec is None:
        dec = sf.FrameDecoder()
    out = []
    step = step or max(1, len(data))
    for i in range(0, len(data), step):
        dec.receive_data(data[i:i + step])
        while True:
            ev = dec.next_event()
            if ev is sf.NEED_DATA:
                break
            out.append(ev)
    if eof:
        dec.receive_data(b"")
        while True:
            ev = dec.next_event()
            if ev is sf.CLOSED:
                break
            assert ev is not sf.NEED_DATA
            out.append(ev)
    return out


def same_any_chunking(data):
    """The events must not depend on how the bytes were split."""
    whole = collect(data)
    for step in (1, 2, 3, 7, 64):
        assert collect(data, step) == whole, step
    return whole


def test_crc_check_value():
    # CRC-16/IBM-3740 a.k.a. CCITT-FALSE: poly 0x1021, init 0xFFFF, refin/refout false, xorout 0
    assert sf.crc16(b"123456789") == 0x29B1
    assert sf.crc16(b"") == 0xFFFF
    # not XMODEM (0x31C3), KERMIT (0x2189) or X-25 (0x906E)
    assert sf.crc16(b"123456789", 0) == 0x31C3  # same poly with init 0 is XMODEM
    # incremental == one shot
    assert sf.crc16(b"56789", sf.crc16(b"1234")) == 0x29B1
    # residue: CRC over data + its big-endian CRC is 0
    assert sf.crc16(b"123456789\x29\xb1") == 0
    assert sf.crc16_portable(b"123456789") == 0x29B1  # the plain loop (CPython's crc16 uses binascii)
    assert sf.crc16_portable(b"56789", sf.crc16_portable(b"1234", 0)) == 0x31C3


def test_golden_hello():
    assert sf.encode_frame(sf.TYPE_HELLO, 1, HELLO_PAYLOAD) == HELLO
    f = sf.decode_frame(HELLO)
    assert f.type == sf.TYPE_HELLO and f.seq == 1 and f.payload == HELLO_PAYLOAD and f.version == 1
    assert f.type_name == "HELLO"
    assert f.encode() == HELLO


def test_golden_ack_and_heartbeat():
    assert sf.encode_frame(sf.TYPE_ACK, 7, sf.encode_ack(7)) == unhex(ACK_HEX)
    assert sf.encode_frame(sf.TYPE_HEARTBEAT, 65535) == unhex(HEARTBEAT_HEX)
    f = sf.decode_frame(unhex(ACK_HEX))
    assert sf.decode_ack(f.payload) == (7, 0)
    assert sf.encode_frame(sf.TYPE_NACK, 8, sf.encode_nack(1, sf.NACK_BAD_CRC)) == unhex(NACK_HEX)
    f = sf.decode_frame(unhex(SACK_HEX))
    assert f.seq == 65534 and sf.acked_seqs(*sf.decode_ack(f.payload)) == [65534, 65535, 1]


def test_header_layout():
    f = HELLO
    assert f[0:2] == b"\xfb\xc1"
    assert f[2] == 1 and f[3] == sf.TYPE_HELLO
    assert struct.unpack(">HHH", f[4:10]) == (1, len(HELLO_PAYLOAD), sf.crc16(f[2:8]))
    assert struct.unpack(">H", f[-2:])[0] == sf.crc16(HELLO_PAYLOAD)
    assert len(f) == sf.encoded_len(len(HELLO_PAYLOAD)) == 12 + len(HELLO_PAYLOAD)


def test_encode_into_buffer_at_offset():
    buf = bytearray(100)
    end = sf.encode_frame_into(buf, 5, sf.TYPE_HELLO, 1, HELLO_PAYLOAD)
    assert end == 5 + len(HELLO)
    assert bytes(buf[5:end]) == HELLO
    assert buf[0:5] == bytearray(5)
    with raises(LocalProtocolError, match="too small"):
        sf.encode_frame_into(bytearray(20), 0, sf.TYPE_HELLO, 1, HELLO_PAYLOAD)
    mv = memoryview(bytearray(len(HELLO)))
    assert sf.encode_frame_into(mv, 0, sf.TYPE_HELLO, 1, HELLO_PAYLOAD) == len(HELLO)
    assert bytes(mv) == HELLO


def test_encode_rejects_misuse():
    with raises(LocalProtocolError, match="unknown frame type"):
        sf.encode_frame(0x7F, 1, b"")
    with raises(LocalProtocolError, match="seq"):
        sf.encode_frame(sf.TYPE_EVENT, 65536, b"")
    with raises(LocalProtocolError, match="seq"):
        sf.encode_frame(sf.TYPE_EVENT, -1, b"")
    with raises(LocalProtocolError, match="exceeds max_payload 1024"):
        sf.encode_frame(sf.TYPE_EVENT, 1, bytes(1025))
    with raises(LocalProtocolError, match="payload"):
        sf.encode_frame(sf.TYPE_EVENT, 1, "text")
    assert len(sf.encode_frame(sf.TYPE_CLIP_CHUNK, 1, bytes(1025), max_payload=2048)) == 1037


def test_decode_frame_errors():
    with raises(FrameError, match="sync") as r:
        sf.decode_frame(b"\x00" + HELLO)
    assert r.value.field == "sync" and r.value.code == "bad_frame"
    with raises(FrameError, match="header crc") as r:
        sf.decode_frame(HELLO[:4] + b"\x09" + HELLO[5:])
    assert r.value.field == "hcrc"
    with raises(FrameError, match="frame crc 0x79ef, computed 0x79ee") as r:
        sf.decode_frame(HELLO[:-1] + b"\xef")
    assert r.value.field == "fcs"
    with raises(FrameError, match="1 trailing bytes"):
        sf.decode_frame(HELLO + b"\x00")
    with raises(FrameError, match="stream ended 40 bytes into a 43-byte frame"):
        sf.decode_frame(HELLO[:40])
    with raises(FrameError, match="version 2, expected 1") as r:
        sf.decode_frame(raw_frame(2, sf.TYPE_HELLO, 1, b""))
    assert r.value.field == "version"
    with raises(FrameError, match="type 0x7f") as r:
        sf.decode_frame(raw_frame(1, 0x7F, 1, b""))
    assert r.value.field == "type"
    with raises(FrameError, match="length 31 exceeds max_payload 16"):
        sf.decode_frame(HELLO, max_payload=16)


def test_decoder_whole_bytewise_and_trailing():
    two = HELLO + sf.encode_frame(sf.TYPE_EVENT, 2, b'{"e":"rec"}')
    evs = same_any_chunking(two)
    assert [(e.type, e.seq) for e in evs] == [(sf.TYPE_HELLO, 1), (sf.TYPE_EVENT, 2)]
    # trailing partial frame is held until more arrives, then reported as truncated at end of stream
    dec = sf.FrameDecoder()
    dec.receive_data(HELLO + HELLO[:5])
    assert dec.next_event() == sf.Frame(sf.TYPE_HELLO, 1, HELLO_PAYLOAD)
    assert dec.next_event() is sf.NEED_DATA
    assert dec.buffered == 5
    dec.receive_data(HELLO[5:])
    assert dec.next_event() == sf.Frame(sf.TYPE_HELLO, 1, HELLO_PAYLOAD)
    assert dec.next_event() is sf.NEED_DATA


def test_resync_after_leading_garbage():
    evs = same_any_chunking(b"AT+OK\r\n\x00\xff" + HELLO)
    assert len(evs) == 2
    e = evs[0]
    assert isinstance(e, sf.FrameErrorEvent)
    assert e.reason == sf.GARBAGE and e.skipped == 9 and e.field == "sync"
    assert e.message == "9 bytes outside any frame (no sync marker 0xfbc1)"
    assert evs[1] == sf.Frame(sf.TYPE_HELLO, 1, HELLO_PAYLOAD)


def test_corrupted_payload_reports_bad_crc_with_seq():
    bad = bytearray(HELLO)
    bad[15] ^= 0x01
    evs = same_any_chunking(bytes(bad) + HELLO)
    assert len(evs) == 2
    e = evs[0]
    assert e.reason == sf.BAD_CRC and e.skipped == len(HELLO) and e.seq == 1 and e.type == sf.TYPE_HELLO
    assert e.field == "fcs"
    assert evs[1].seq == 1


def test_lost_bytes_mid_frame_do_not_hide_next_frame():
    nxt = sf.encode_frame(sf.TYPE_EVENT, 2, b'{"e":"sos"}' + bytes(40))
    evs = same_any_chunking(HELLO[:20] + nxt)
    assert len(evs) == 2
    assert evs[0].reason == sf.BAD_CRC and evs[0].skipped == 20 and evs[0].seq == 1
    assert evs[1].seq == 2 and evs[1].type == sf.TYPE_EVENT


def test_false_sync_in_garbage_and_payload():
    # a sync marker inside a payload is data; a bare sync marker in garbage fails its header crc
    payload = b"\xfb\xc1\x01\x01\x00\x01\x00\x05" + sf.SYNC * 4
    f = sf.encode_frame(sf.TYPE_CLIP_CHUNK, 9, payload)
    evs = same_any_chunking(b"\xfb\xc1\x01\x02\x03\x04\x05\x06\x07\x08\x09" + f)
    assert evs[0].reason == sf.BAD_HEADER_CRC and evs[0].skipped == 11 and evs[0].field == "hcrc"
    assert evs[1] == sf.Frame(sf.TYPE_CLIP_CHUNK, 9, payload)


def test_header_corruption_resync():
    bad = bytearray(HELLO)
    bad[7] ^= 0x80  # length field: would claim a huge payload without the header crc
    evs = same_any_chunking(bytes(bad) + HELLO)
    assert evs[0].reason == sf.BAD_HEADER_CRC and evs[0].skipped == len(HELLO)
    assert evs[1].seq == 1 and len(evs) == 2


def test_unknown_type_and_bad_version():
    unk = raw_frame(1, 0x7F, 300, b"xyz")
    evs = same_any_chunking(unk + HELLO)
    assert evs[0].reason == sf.UNKNOWN_TYPE and evs[0].skipped == len(unk)
    assert evs[0].seq == 300 and evs[0].type == 0x7F
    assert evs[1].seq == 1
    v2 = raw_frame(2, sf.TYPE_HELLO, 5, b"abc")
    evs = same_any_chunking(v2 + HELLO)
    assert evs[0].reason == sf.BAD_VERSION and evs[0].skipped == len(v2)
    assert evs[0].message == "version 2, expected 1"


def test_max_payload_configurable():
    dec = sf.FrameDecoder(max_payload=16, report_limit=100)
    small = sf.encode_frame(sf.TYPE_HEARTBEAT, 3, b"{}")
    evs = collect(HELLO + small, dec=dec)
    assert evs[0].reason == sf.TOO_LONG and evs[0].skipped == len(HELLO)
    assert evs[0].message == "length 31 exceeds max_payload 16"
    assert evs[1].seq == 3


def test_truncated_at_end_of_stream():
    evs = same_any_chunking(HELLO + HELLO[:-1])
    assert evs[0].seq == 1
    assert evs[1].reason == sf.TRUNCATED and evs[1].skipped == len(HELLO) - 1 and evs[1].seq == 1
    assert evs[1].message == "stream ended 42 bytes into a 43-byte frame"
    assert len(evs) == 2


def test_end_of_stream_is_sticky_and_final():
    dec = sf.FrameDecoder()
    dec.receive_data(b"")
    assert dec.next_event() is sf.CLOSED
    assert dec.next_event() is sf.CLOSED
    with raises(LocalProtocolError, match="after end of stream"):
        dec.receive_data(HELLO)


def test_line_idle_drops_partial_frame():
    dec = sf.FrameDecoder()
    dec.receive_data(HELLO[:30])
    assert dec.next_event() is sf.NEED_DATA
    dec.line_idle()
    e = dec.next_event()
    assert e.reason == sf.TRUNCATED and e.skipped == 30
    assert dec.next_event() is sf.NEED_DATA
    dec.receive_data(HELLO)
    assert dec.next_event().seq == 1
    assert dec.next_event() is sf.NEED_DATA


def test_long_noise_is_reported_in_bounded_runs():
    noise = bytes((i * 7 + 3) & 0x7F for i in range(2500))  # ASCII: no sync byte
    dec = sf.FrameDecoder(report_limit=1000)
    evs = collect(noise + HELLO, dec=dec)
    assert [e.skipped for e in evs[:3]] == [1000, 1000, 500]
    assert evs[3].seq == 1
    assert dec.bytes_skipped == 2500 and dec.errors == 3 and dec.frames == 1
    assert collect(noise + HELLO, 5, dec=sf.FrameDecoder(report_limit=1000)) == evs


def test_buffer_is_bounded():
    dec = sf.FrameDecoder(max_payload=64, max_buffer=200)
    with raises(LocalProtocolError, match="buffer full"):
        dec.receive_data(bytes(201))
    dec.receive_data(bytes(150))
    with raises(LocalProtocolError, match="max_buffer 200"):
        dec.receive_data(bytes(51))
    # draining makes room again
    e = dec.next_event()
    assert e.reason == sf.GARBAGE and e.skipped == 76  # one max frame (12 + 64) per report
    assert dec.next_event() is sf.NEED_DATA
    assert dec.buffered == 0  # zeros hold no sync byte: nothing kept back
    dec.receive_data(bytes(120))


def test_seq_wraps_back_to_back():
    frames = []
    seq = 65530
    for i in range(12):
        frames.append(sf.encode_frame(sf.TYPE_LOCATION, seq, b'{"i":%d}' % i))
        seq = sf.next_seq(seq)
    evs = collect(b"".join(frames), 13)
    assert [e.seq for e in evs] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3, 4, 5]
    assert evs[6].payload == b'{"i":6}'


def test_ack_payloads():
    assert sf.encode_ack(0x1234) == b"\x12\x34"
    assert sf.encode_ack(0x1234, 0b101) == b"\x12\x34\x00\x00\x00\x05"
    assert sf.decode_ack(b"\x12\x34\x00\x00\x00\x05") == (0x1234, 5)
    assert sf.acked_seqs(65534, 0b111) == [65534, 65535, 0, 1]
    assert sf.encode_ack(7, 1 << 40) == b"\x00\x07\x00\x00\x01\x00\x00\x00\x00\x00"  # 64-bit mask form
    assert sf.decode_ack(sf.encode_ack(7, (1 << 63) | 1)) == (7, (1 << 63) | 1)
    with raises(FrameError, match="ACK payload of 3 bytes, expected 2, 6 or 10"):
        sf.decode_ack(b"\x00\x01\x02")
    with raises(LocalProtocolError, match="mask"):
        sf.encode_ack(1, 1 << 64)


def test_nack_payloads():
    assert sf.encode_nack(7, sf.NACK_BAD_CRC) == b"\x00\x07\x01"
    assert sf.decode_nack(b"\x00\x07\x01") == (7, sf.NACK_BAD_CRC)
    assert sf.decode_nack(b"\x00\x07\xee") == (7, 0xEE)
    with raises(FrameError, match="expected 3"):
        sf.decode_nack(b"\x00")
    with raises(LocalProtocolError, match="NACK reason"):
        sf.encode_nack(7, 99)


def test_type_numbers_are_stable():
    assert (sf.TYPE_HELLO, sf.TYPE_HEARTBEAT, sf.TYPE_LOCATION, sf.TYPE_EVENT, sf.TYPE_ACK, sf.TYPE_NACK,
            sf.TYPE_COMMAND, sf.TYPE_RESULT) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert (sf.TYPE_CLIP_OFFER, sf.TYPE_CLIP_CHUNK, sf.TYPE_CLIP_DONE) == (0x10, 0x11, 0x12)
    assert sf.TYPE_ACK not in sf.NEEDS_ACK and sf.TYPE_HEARTBEAT not in sf.NEEDS_ACK
    assert sf.TYPE_EVENT in sf.NEEDS_ACK


def test_single_bit_correction():
    """correct_single_bit: CRC-16/CCITT syndromes locate one flipped bit (payload or fcs); two are detected."""
    good = unhex(HELLO_HEX)
    for i in (10, 20, 40, len(good) - 3, len(good) - 1):  # payload bits and both fcs bytes
        for b in (0, 3, 7):
            bad = bytearray(good)
            bad[i] ^= 1 << b
            assert sf.correct_single_bit(bad[sf.HEADER_LEN:]) == HELLO_PAYLOAD
            dec = sf.FrameDecoder(correct=True)
            dec.receive_data(bytes(bad))
            dec.receive_data(b"")
            f = dec.next_event()
            assert f.payload == HELLO_PAYLOAD and f.corrected and dec.corrected == 1
            plain = sf.FrameDecoder()  # off by default: the frame codec alone never guesses
            plain.receive_data(bytes(bad))
            plain.receive_data(b"")
            assert isinstance(plain.next_event(), sf.FrameErrorEvent)
    bad = bytearray(good)
    bad[12] ^= 1
    bad[30] ^= 0x80
    assert sf.correct_single_bit(bad[sf.HEADER_LEN:]) is None
    assert sf.correct_single_bit(good[sf.HEADER_LEN:]) == HELLO_PAYLOAD


def test_line_idle_reports_a_bad_last_frame_at_once():
    """A frame that failed its CRC and is followed by silence is reported when the line goes idle (so the
    receiver can NACK it), even though none of its bytes are still buffered."""
    bad = bytearray(unhex(HELLO_HEX))
    bad[sf.HEADER_LEN] ^= 0x01
    dec = sf.FrameDecoder()
    dec.receive_data(bytes(bad))
    assert dec.next_event() is sf.NEED_DATA and dec.buffered == 0
    dec.line_idle()
    ev = dec.next_event()
    assert isinstance(ev, sf.FrameErrorEvent) and ev.reason == "bad_crc" and ev.seq == 1
    assert dec.next_event() is sf.NEED_DATA
