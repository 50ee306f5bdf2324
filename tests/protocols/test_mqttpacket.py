"""MQTT 3.1.1 codec: golden vectors from the spec's byte layouts; runs under CPython and MicroPython."""

from mqtttest import drain, events_in_steps
from ptest import raises

from protocols import mqttpacket as mp
from protocols.errors import LocalProtocolError, MQTTPacketError

# The worked example of docs/PROTOCOL.md §15, laid out field by field as in MQTT 3.1.1 §3.1.
CONNECT_GOLDEN = (
    b"\x10\x47"  # fixed header: CONNECT (1 << 4), remaining length 71
    + b"\x00\x04MQTT"  # §3.1.2.1 protocol name
    + b"\x04"  # §3.1.2.2 protocol level 4 = 3.1.1
    # §3.1.2.3 flags: user 0x80 | password 0x40 | will retain 0x20 | will qos 1 0x08 | will 0x04 | clean 0x02
    + b"\xee"
    + b"\x00\x3c"  # §3.1.2.10 keepalive 60 s
    + b"\x00\x06node-1"  # §3.1.3.1 client id
    + b"\x00\x1alookout/v1/s1/node-1/state"  # §3.1.3.2 will topic (26 bytes)
    + b"\x00\x07offline"  # §3.1.3.3 will message
    + b"\x00\x06node-1"  # §3.1.3.4 user name
    + b"\x00\x06secret"  # §3.1.3.5 password
)


def pub(topic, payload, qos=0, retain=False, dup=False, packet_id=None):
    return mp.Packet(mp.PUBLISH, topic=topic, payload=payload, qos=qos, retain=retain, dup=dup,
                     packet_id=packet_id)


def test_connect_golden_with_will_and_credentials():
    got = mp.encode_connect("node-1", clean_session=True, keepalive=60, username="node-1", password=b"secret",
                            will_topic="lookout/v1/s1/node-1/state", will_payload=b"offline", will_qos=1,
                            will_retain=True)
    assert got == CONNECT_GOLDEN, got


def test_connect_spec_example_variable_header():
    # §3.1.2.10 Figure 3.6 (non-normative): keepalive 10, user, password, will qos 1, will flag, clean session
    got = mp.encode_connect("c", True, 10, "u", "p", "w", b"", 1, False)
    assert got[2:12] == b"\x00\x04MQTT\x04\xce\x00\x0a"


def test_connect_minimal():
    assert mp.encode_connect("a", keepalive=0) == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01a"
    assert mp.encode_connect("a", clean_session=False, keepalive=1)[9] == 0x00


def test_connect_misuse():
    with raises(LocalProtocolError, match="username"):
        mp.encode_connect("a", password="p")
    with raises(LocalProtocolError, match="will_topic"):
        mp.encode_connect("a", will_qos=1)
    with raises(LocalProtocolError, match="keepalive"):
        mp.encode_connect("a", keepalive=65536)
    with raises(LocalProtocolError, match="client_id"):
        mp.encode_connect("", clean_session=False)
    with raises(LocalProtocolError, match="wildcard"):
        mp.encode_connect("a", will_topic="a/#")
    assert mp.encode_connect("", clean_session=True)[12:14] == b"\x00\x00"  # §3.1.3.1 zero-length id allowed


def test_publish_golden():
    assert mp.encode_publish("a/b", b"hi", qos=1, retain=True, packet_id=10) == \
        b"\x33\x09\x00\x03a/b\x00\x0ahi"
    assert mp.encode_publish("a/b", b"hi", qos=1, retain=True, dup=True, packet_id=10)[0] == 0x3B
    assert mp.encode_publish("a/b", "hi") == b"\x30\x07\x00\x03a/bhi"
    assert mp.encode_publish("a/b") == b"\x30\x05\x00\x03a/b"


def test_publish_misuse():
    with raises(LocalProtocolError, match="dup"):
        mp.encode_publish("a", b"", qos=0, dup=True)
    with raises(LocalProtocolError, match="packet_id"):
        mp.encode_publish("a", b"", qos=1, packet_id=0)
    with raises(LocalProtocolError, match="packet_id"):
        mp.encode_publish("a", b"", qos=1, packet_id=65536)
    with raises(LocalProtocolError, match="packet_id"):
        mp.encode_publish("a", b"", qos=0, packet_id=3)
    with raises(LocalProtocolError, match="qos"):
        mp.encode_publish("a", b"", qos=2, packet_id=1)
    with raises(LocalProtocolError, match="wildcard"):
        mp.encode_publish("a/+", b"")
    with raises(LocalProtocolError, match="empty"):
        mp.encode_publish("", b"")
    with raises(LocalProtocolError, match="payload"):
        mp.encode_publish("a", 5)


def test_subscribe_unsubscribe_golden():
    assert mp.encode_subscribe(1, [("cmd/#", 1)]) == b"\x82\x0a\x00\x01\x00\x05cmd/#\x01"
    assert mp.encode_subscribe(258, [("a", 0), ("b/+", 1)]) == b"\x82\x0c\x01\x02\x00\x01a\x00\x00\x03b/+\x01"
    assert mp.encode_unsubscribe(2, ["cmd/#"]) == b"\xa2\x09\x00\x02\x00\x05cmd/#"
    with raises(LocalProtocolError, match="at least one"):
        mp.encode_subscribe(1, [])
    with raises(LocalProtocolError, match="at least one"):
        mp.encode_unsubscribe(1, [])
    with raises(LocalProtocolError, match="qos"):
        mp.encode_subscribe(1, [("a", 3)])


def test_small_packets_golden():
    assert mp.encode_puback(10) == b"\x40\x02\x00\x0a"
    assert mp.PINGREQ_BYTES == b"\xc0\x00"
    assert mp.DISCONNECT_BYTES == b"\xe0\x00"
    with raises(LocalProtocolError, match="packet_id"):
        mp.encode_puback(0)


def test_varint_edges():
    # MQTT 3.1.1 §2.2.3 Table 2.4
    table = [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"),
             (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f")]
    for value, enc in table:
        assert mp.encode_varint(value) == enc, value
        assert mp.decode_varint(enc) == (value, len(enc)), value
        assert mp.decode_varint(b"\x99" + enc + b"\x00", 1) == (value, 1 + len(enc))
        assert mp.decode_varint(enc[:-1]) is None  # ends inside the number
    with raises(LocalProtocolError, match="remaining_length"):
        mp.encode_varint(268435456)
    with raises(LocalProtocolError):
        mp.encode_varint(-1)


def test_varint_rejects_fifth_byte():
    with raises(MQTTPacketError, match="4th byte"):
        mp.decode_varint(b"\xff\xff\xff\xff\x7f")
    with raises(MQTTPacketError, match="4th byte"):
        mp.decode_varint(b"\x80\x80\x80\x80")  # rejected without waiting for the 5th
    r = mp.PacketReader()
    with raises(MQTTPacketError, match="remaining_length"):
        r.receive_data(b"\x30\xff\xff\xff\xff\x7f")
    assert mp.decode_varint(b"\x80\x00") == (0, 2)  # non-minimal: accepted (3.1.1 does not forbid it)


def test_decode_connack():
    for raw, sp, rc, name in [(b"\x20\x02\x00\x00", False, 0, "accepted"),
                              (b"\x20\x02\x01\x00", True, 0, "accepted"),
                              (b"\x20\x02\x00\x04", False, 4, "bad user name or password"),
                              (b"\x20\x02\x00\x05", False, 5, "not authorized")]:
        r = mp.PacketReader()
        r.receive_data(raw)
        ev = r.next_event()
        assert ev == mp.Packet(mp.CONNACK, session_present=sp, return_code=rc)
        assert (ev.type, ev.session_present, ev.return_code) == (mp.CONNACK, sp, rc)
        assert mp.CONNACK_NAMES[ev.return_code] == name
        assert r.next_event() is mp.NEED_DATA


def test_decode_connack_errors():
    for raw, field in [(b"\x20\x02\x00\x06", "connack_return_code"), (b"\x20\x02\x02\x00", "connack_flags"),
                       (b"\x20\x02\x01\x04", "session_present"), (b"\x21\x02\x00\x00", "flags"),
                       (b"\x20\x03\x00\x00\x00", "remaining_length")]:
        r = mp.PacketReader()
        r.receive_data(raw)
        with raises(MQTTPacketError, match=field):
            r.next_event()


def test_decode_suback_puback_unsuback_pingresp():
    r = mp.PacketReader()
    r.receive_data(b"\x90\x05\x00\x01\x01\x80\x00" + b"\x40\x02\x00\x0a" + b"\xb0\x02\x00\x07" + b"\xd0\x00")
    assert drain(r) == [mp.Packet(mp.SUBACK, packet_id=1, return_codes=[1, 0x80, 0]),
                          mp.Packet(mp.PUBACK, packet_id=10), mp.Packet(mp.UNSUBACK, packet_id=7),
                          mp.Packet(mp.PINGRESP)]
    assert mp.Packet(mp.PUBACK, packet_id=10) != mp.Packet(mp.UNSUBACK, packet_id=10)
    assert mp.Packet(mp.PUBACK, packet_id=10) != mp.Packet(mp.PUBACK, packet_id=11)
    assert mp.Packet(mp.PINGRESP) != "PINGRESP"
    assert repr(mp.Packet(mp.PUBACK, packet_id=10)).startswith("Packet(PUBACK, ")


def test_decode_ack_errors():
    cases = [(b"\x90\x03\x00\x01\x03", "suback_return_code"), (b"\x90\x02\x00\x01", "remaining_length"),
             (b"\x40\x02\x00\x00", "packet_id"), (b"\x40\x03\x00\x01\x00", "remaining_length"),
             (b"\x42\x02\x00\x01", "flags"), (b"\xd0\x01\x00", "remaining_length"),
             (b"\x00\x00", "packet_type"), (b"\xf0\x00", "packet_type"), (b"\x10\x00", "CONNECT"),
             (b"\x50\x02\x00\x01", "QoS 2"), (b"\xc0\x00", "PINGREQ")]
    for raw, match in cases:
        r = mp.PacketReader()
        r.receive_data(raw)
        with raises(MQTTPacketError, match=match):
            r.next_event()


def test_decode_publish():
    r = mp.PacketReader()
    r.receive_data(b"\x30\x07\x00\x03a/bhi" + b"\x3b\x09\x00\x03a/b\x00\x0ahi" + b"\x30\x05\x00\x03a/b"
                   + b"\x31\x0a\x00\x08\xe6\xb0\xb4\xe5\xba\x93/x")
    assert drain(r) == [pub("a/b", b"hi", 0, False, False, None),
                          pub("a/b", b"hi", 1, True, True, 10),
                          pub("a/b", b"", 0, False, False, None),
                          pub("\u6c34\u5e93/x", b"", 0, True, False, None)]


def test_decode_publish_errors():
    cases = [(b"\x34\x07\x00\x01a\x00\x01hi", "QoS 2"), (b"\x36\x05\x00\x01a\x00\x01", "qos"),
             (b"\x38\x03\x00\x01a", "dup"), (b"\x30\x03\x00\x01#", "wildcard"),
             (b"\x30\x02\x00\x00", "empty"),
             (b"\x30\x04\x00\x02\xc0\x80", "lead byte"),
             (b"\x30\x05\x00\x03\xe0\x80\x80", "overlong"), (b"\x30\x05\x00\x03\xed\xa0\x80", "surrogate"),
             (b"\x30\x03\x00\x01\x00", "U+0000"), (b"\x30\x03\x00\x01\xff", "lead byte"),
             (b"\x30\x04\x00\x02\xe6\xb0", "truncated"), (b"\x30\x04\x00\x02a\x41", "topic"),
             (b"\x30\x03\x00\x05a", "runs past"), (b"\x32\x03\x00\x01a", "runs past"),
             (b"\x32\x05\x00\x01a\x00\x00", "packet_id"), (b"\x30\x01\x00", "remaining_length")]
    for raw, match in cases:
        r = mp.PacketReader()
        r.receive_data(raw)
        if match == "topic":  # b"a\x41" is valid: "aA"
            assert r.next_event() == pub("aA", b"", 0, False, False, None)
            continue
        with raises(MQTTPacketError, match=match):
            r.next_event()


def test_reader_whole_bytewise_and_trailing():
    # CONNACK, SUBACK id 1 granted 1, PUBLISH, PINGRESP, PUBACK id 9
    stream = (b"\x20\x02\x00\x00" + b"\x90\x03\x00\x01\x01" + mp.encode_publish("cmd/x", b"\x00\x01", 1, packet_id=5)
              + b"\xd0\x00" + mp.encode_puback(9))
    expected = [mp.Packet(mp.CONNACK, session_present=False, return_code=0),
                mp.Packet(mp.SUBACK, packet_id=1, return_codes=[1]), pub("cmd/x", b"\x00\x01", 1, False, False, 5),
                mp.Packet(mp.PINGRESP), mp.Packet(mp.PUBACK, packet_id=9)]
    whole = mp.PacketReader()
    whole.receive_data(stream)
    assert drain(whole) == expected
    assert events_in_steps(mp.PacketReader(), stream, 1) == expected
    trailing = mp.PacketReader()
    trailing.receive_data(stream + b"\x30\x10\x00")  # the start of a packet that has not arrived yet
    assert drain(trailing) == expected
    assert trailing.next_event() is mp.NEED_DATA


def test_reader_end_of_stream():
    r = mp.PacketReader()
    r.receive_data(b"\xd0\x00")
    r.receive_data(b"")
    assert r.next_event() == mp.Packet(mp.PINGRESP)
    assert r.next_event() is mp.CLOSED
    with raises(LocalProtocolError, match="end of stream"):
        r.receive_data(b"\xd0\x00")
    r2 = mp.PacketReader()
    r2.receive_data(b"\x30\x05\x00")
    r2.receive_data(b"")
    with raises(MQTTPacketError, match="inside a packet"):
        r2.next_event()


def test_reader_max_packet_size_rejects_before_buffering():
    r = mp.PacketReader(max_packet_size=100)
    with raises(MQTTPacketError, match="limit is 100"):
        r.receive_data(b"\x30\xff\x7f")  # announces 16383 bytes: rejected from the header alone
    with raises(MQTTPacketError, match="limit is 100"):  # sticky: MQTT cannot resynchronise a stream
        r.next_event()
    ok = mp.PacketReader(max_packet_size=100)
    pkt = mp.encode_publish("t", b"x" * 95)  # 2 + 2 + 1 + 95 = 100 bytes: exactly at the limit
    assert len(pkt) == 100
    ok.receive_data(pkt)
    assert ok.next_event().payload == b"x" * 95
    default = mp.PacketReader()
    assert default.max_packet_size == 65536
    with raises(MQTTPacketError, match="limit"):
        default.receive_data(b"\x30\xfd\xff\x03")  # 65533 + 4 header bytes = 65537


def test_error_after_malformed_is_sticky():
    r = mp.PacketReader()
    r.receive_data(b"\x36\x00")
    with raises(MQTTPacketError):
        r.next_event()
    with raises(MQTTPacketError):
        r.receive_data(b"\xd0\x00")


def test_loopback_publish_round_trip():
    for qos, pid in ((0, None), (1, 1), (1, 65535)):
        for retain in (False, True):
            pkt = mp.encode_publish("lookout/v1/s1/n1/evt", b"\xff" * 300, qos, retain, False, pid)
            r = mp.PacketReader()
            r.receive_data(pkt)
            want = pub("lookout/v1/s1/n1/evt", b"\xff" * 300, qos, retain, False, pid)
            assert r.next_event() == want


def test_topic_filter_validation():
    for ok in ("#", "+", "+/+", "/+", "a/+/c/#", "sport/tennis/#", "$SYS/#"):
        assert mp.encode_unsubscribe(1, [ok]) == mp.frame(0xA2, bytes((0, 1, 0, len(ok))) + ok.encode())
    for bad in ("a/#/b", "a#", "a/b+", "", "sport+", "#/a"):
        with raises(LocalProtocolError, match="topic_filter"):
            mp.encode_unsubscribe(1, [bad])
    with raises(LocalProtocolError, match="U+0000"):
        mp.encode_publish("a\x00b")
