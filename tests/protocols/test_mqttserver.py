"""MQTT 3.1.1 broker side (protocols/mqttserver.py): golden vectors, client packets decoded, the client codec
piped into the server codec and back; runs under CPython and MicroPython."""

from mqtttest import drain, events_in_steps
from ptest import raises

from protocols import mqttpacket as mp
from protocols import mqttserver as ms
from protocols.errors import LocalProtocolError, MQTTPacketError

# docs/PROTOCOL.md §15 worked example (the same bytes as test_mqttpacket's CONNECT_GOLDEN)
CONNECT_GOLDEN = (b"\x10\x47\x00\x04MQTT\x04\xee\x00\x3c\x00\x06node-1\x00\x1alookout/v1/s1/node-1/state"
                  b"\x00\x07offline\x00\x06node-1\x00\x06secret")


def _decode_one(raw):
    r = ms.server_reader()
    r.receive_data(raw)
    return r.next_event()


def test_broker_encoders_golden():
    assert ms.encode_connack(0, True) == b"\x20\x02\x01\x00"
    assert ms.encode_connack(5) == b"\x20\x02\x00\x05"
    assert ms.encode_suback(1, [1, 0x80]) == b"\x90\x04\x00\x01\x01\x80"
    assert ms.encode_unsuback(7) == b"\xb0\x02\x00\x07"
    assert ms.encode_pingresp() == b"\xd0\x00"
    assert (ms.CONNECT, ms.PUBLISH, ms.SUBSCRIBE, ms.PINGREQ, ms.DISCONNECT) == (1, 3, 8, 12, 14)


def test_broker_encoders_misuse():
    with raises(LocalProtocolError, match="return_code"):
        ms.encode_connack(6)
    with raises(LocalProtocolError, match="session_present"):
        ms.encode_connack(4, True)
    with raises(LocalProtocolError, match="return_codes"):
        ms.encode_suback(1, [])
    with raises(LocalProtocolError, match="0x80"):
        ms.encode_suback(1, [3])
    with raises(LocalProtocolError, match="packet_id"):
        ms.encode_suback(0, [1])
    with raises(LocalProtocolError, match="packet_id"):
        ms.encode_unsuback(65536)


def test_server_encoders_read_by_the_client():
    r = mp.PacketReader()
    r.receive_data(ms.encode_connack(0, True) + ms.encode_suback(258, [0, 1, 2, 0x80]) + ms.encode_unsuback(7)
                   + ms.encode_pingresp() + ms.encode_connack(4))
    assert drain(r) == [mp.Packet(mp.CONNACK, session_present=True, return_code=0),
                          mp.Packet(mp.SUBACK, packet_id=258, return_codes=[0, 1, 2, 0x80]),
                          mp.Packet(mp.UNSUBACK, packet_id=7), mp.Packet(mp.PINGRESP),
                          mp.Packet(mp.CONNACK, session_present=False, return_code=4)]


def test_decode_connect_golden():
    p = _decode_one(CONNECT_GOLDEN)
    assert p == mp.Packet(ms.CONNECT, level=4, client_id="node-1", clean_session=True, keepalive=60,
                          will_topic="lookout/v1/s1/node-1/state", will_payload=b"offline", will_qos=1,
                          will_retain=True, username="node-1", password=b"secret")
    p = _decode_one(mp.encode_connect("a", False, 0))
    assert (p.client_id, p.clean_session, p.keepalive, p.will_topic, p.username, p.password) == \
        ("a", False, 0, None, None, None)
    p = _decode_one(mp.encode_connect("", True, 10, "u"))
    assert (p.client_id, p.username, p.password) == ("", "u", None)


def test_client_packets_piped_into_the_server():
    stream = (mp.encode_connect("n1", keepalive=30) + mp.encode_subscribe(1, [("cmd/#", 1), ("a/+", 0)])
              + mp.encode_publish("a/b", b"hi", 1, True, True, 10) + mp.encode_publish("a/b", "x")
              + mp.encode_puback(3) + mp.encode_unsubscribe(2, ["cmd/#"]) + mp.PINGREQ_BYTES
              + mp.DISCONNECT_BYTES)
    expected = [mp.Packet(ms.CONNECT, level=4, client_id="n1", clean_session=True, keepalive=30, will_topic=None,
                          will_payload=None, will_qos=0, will_retain=False, username=None, password=None),
                mp.Packet(ms.SUBSCRIBE, packet_id=1, topics=[("cmd/#", 1), ("a/+", 0)]),
                mp.Packet(ms.PUBLISH, topic="a/b", payload=b"hi", qos=1, retain=True, dup=True, packet_id=10),
                mp.Packet(ms.PUBLISH, topic="a/b", payload=b"x", qos=0, retain=False, dup=False, packet_id=None),
                mp.Packet(ms.PUBACK, packet_id=3), mp.Packet(ms.UNSUBSCRIBE, packet_id=2, filters=["cmd/#"]),
                mp.Packet(ms.PINGREQ), mp.Packet(ms.DISCONNECT)]
    whole = ms.server_reader()
    whole.receive_data(stream)
    assert drain(whole) == expected
    assert events_in_steps(ms.server_reader(), stream, 1) == expected
    trailing = ms.server_reader()
    trailing.receive_data(stream + b"\x82\x0a\x00")  # the start of a SUBSCRIBE that has not arrived yet
    assert drain(trailing) == expected
    trailing.receive_data(b"")
    with raises(MQTTPacketError, match="inside a packet"):
        trailing.next_event()


def test_decode_client_packet_errors():
    cases = [
        (b"\x80\x06\x00\x01\x00\x01a\x01", "flags"),  # SUBSCRIBE flags must be 0b0010
        (b"\x82\x02\x00\x01", "at least one"),  # no filter
        (b"\x82\x06\x00\x01\x00\x01a\x03", "qos"),  # requested QoS 3
        (b"\x82\x05\x00\x01\x00\x01a", "missing"),  # filter without its QoS byte
        (b"\x82\x07\x00\x01\x00\x02a#\x01", "topic_filter"),  # '#' not a whole level
        (b"\x82\x06\x00\x00\x00\x01a\x01", "packet_id"),
        (b"\x82\x01\x00", "remaining_length"),
        (b"\x82\x06\x00\x01\x00\x05a\x01", "runs past"),
        (b"\xa2\x05\x00\x01\x00\x01\xff", "lead byte"),  # UNSUBSCRIBE filter is not UTF-8
        (b"\xc0\x01\x00", "remaining_length"), (b"\xe1\x00", "flags"),
        (b"\x20\x02\x00\x00", "CONNACK"), (b"\xd0\x00", "PINGRESP"), (b"\x90\x03\x00\x01\x00", "SUBACK"),
        (b"\xf0\x00", "packet_type"), (b"\x62\x02\x00\x01", "QoS 2"), (b"\x34\x05\x00\x01a\x00\x01", "QoS 2"),
        (b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x00\x00\x00", "protocol_name"),
        (b"\x10\x08\x00\x04MQTT\x04\x02", "remaining_length"),
        (b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x00\x00\x00", "connect_flags"),  # reserved bit 0
        (b"\x10\x0c\x00\x04MQTT\x04\x42\x00\x00\x00\x00", "connect_flags"),  # password without user name
        (b"\x10\x0c\x00\x04MQTT\x04\x1a\x00\x00\x00\x00", "connect_flags"),  # will QoS 3
        (b"\x10\x0c\x00\x04MQTT\x04\x22\x00\x00\x00\x00", "connect_flags"),  # will retain without a will
        (b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x00\x00", "remaining_length"),  # a byte after the fields
        (b"\x10\x0c\x00\x04MQTT\x04\x82\x00\x00\x00\x00", "username"),  # user name flag, no user name
        (b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01\x00", "U+0000"),  # client id "\0"
        (b"\x10\x11\x00\x04MQTT\x04\x06\x00\x00\x00\x00\x00\x01#\x00\x00", "wildcard"),  # will topic "#"
    ]
    for raw, match in cases:
        with raises(MQTTPacketError, match=match):
            _decode_one(raw)


def test_protocol_level_is_reported_not_rejected():
    # §3.1.2.2: the server answers CONNACK 1 to a level it does not support, so the decoder hands it over.
    p = _decode_one(b"\x10\x0c\x00\x04MQTT\x03\x02\x00\x00\x00\x00")
    assert (p.type, p.level, p.client_id) == (ms.CONNECT, 3, "")


def test_server_reader_errors_are_sticky_and_bounded():
    r = ms.server_reader(max_packet_size=64)
    with raises(MQTTPacketError, match="limit is 64"):
        r.receive_data(mp.encode_publish("t", b"x" * 100))
    with raises(MQTTPacketError, match="limit is 64"):
        r.next_event()


def test_topic_matches_spec_examples():
    # MQTT 3.1.1 §4.7.1.2, §4.7.1.3, §4.7.2
    yes = [("sport/tennis/player1/#", "sport/tennis/player1"), ("sport/tennis/player1/#",
                                                                  "sport/tennis/player1/ranking"),
           ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"), ("sport/#", "sport"),
           ("#", "sport/tennis"), ("sport/tennis/+", "sport/tennis/player1"), ("sport/+", "sport/"),
           ("+/+", "/finance"), ("/+", "/finance"), ("+", "a"), ("$SYS/#", "$SYS/broker"),
           ("$SYS/monitor/+", "$SYS/monitor/Clients"), ("a/b", "a/b")]
    no = [("sport/tennis/+", "sport/tennis/player1/ranking"), ("sport/+", "sport"), ("+", "/finance"),
          ("#", "$SYS/broker"), ("+/monitor/Clients", "$SYS/monitor/Clients"), ("a/b", "a/b/c"),
          ("a/b/c", "a/b"), ("a/+", "b/c")]
    for f, t in yes:
        assert ms.topic_matches(f, t), (f, t)
    for f, t in no:
        assert not ms.topic_matches(f, t), (f, t)
