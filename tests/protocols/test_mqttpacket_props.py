"""Property tests for the MQTT client codec (CPython only): round trips; junk bytes raise only MQTTPacketError.

The broker-to-client packets are made with protocols/mqttserver.py's encoders."""

from hypothesis import given, settings
from hypothesis import strategies as st
from mqtttest import drain, events_in_steps, feed_all

from protocols import mqttpacket as mp
from protocols import mqttserver as ms

# Topic names: printable text without wildcards or U+0000 (surrogates cannot be UTF-8 encoded anyway).
topic_level = st.text(st.characters(blacklist_characters="+#/\x00", blacklist_categories=("Cs",)), max_size=8)
topics = st.lists(topic_level, min_size=1, max_size=5).map("/".join).filter(
    lambda t: 0 < len(t.encode()) <= 200)
payloads = st.binary(max_size=600)


@settings(max_examples=300)
@given(st.integers(0, mp.MAX_REMAINING_LENGTH))
def test_varint_round_trip(n):
    enc = mp.encode_varint(n)
    assert 1 <= len(enc) <= 4
    assert mp.decode_varint(enc) == (n, len(enc))


@settings(max_examples=250)
@given(topics, payloads, st.sampled_from([0, 1]), st.booleans(), st.booleans(), st.integers(1, 65535))
def test_publish_round_trip(topic, payload, qos, retain, dup, pid):
    dup = dup and qos == 1
    pkt = mp.encode_publish(topic, payload, qos, retain, dup, pid if qos else None)
    r = mp.PacketReader()
    r.receive_data(pkt)
    assert r.next_event() == mp.Packet(mp.PUBLISH, topic=topic, payload=payload, qos=qos, retain=retain, dup=dup,
                                       packet_id=pid if qos else None)
    assert r.next_event() is mp.NEED_DATA


@settings(max_examples=200)
@given(st.lists(st.one_of(
    st.builds(ms.encode_connack, st.integers(0, 5)),
    st.builds(ms.encode_suback, st.integers(1, 65535), st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1,
                                                                max_size=4)),
    st.builds(mp.encode_puback, st.integers(1, 65535)),
    st.builds(ms.encode_unsuback, st.integers(1, 65535)),
    st.just(ms.encode_pingresp()),
    st.builds(lambda t, p, pid: mp.encode_publish(t, p, 1, False, False, pid), topics, payloads,
              st.integers(1, 65535)),
), min_size=1, max_size=6), st.integers(1, 50))
def test_any_split_gives_the_same_events(packets, step):
    stream = b"".join(packets)
    whole = mp.PacketReader()
    whole.receive_data(stream)
    expected = drain(whole)
    assert len(expected) == len(packets)
    assert events_in_steps(mp.PacketReader(), stream, step) == expected


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_arbitrary_bytes_raise_only_mqtt_errors(data, step):
    feed_all(mp.PacketReader(max_packet_size=1024), data, step)


@settings(max_examples=300)
@given(st.lists(st.one_of(
    st.builds(ms.encode_connack, st.integers(0, 5)),
    st.builds(lambda t, p, pid: mp.encode_publish(t, p, 1, True, False, pid), topics, payloads,
              st.integers(1, 65535)),
    st.just(ms.encode_pingresp())), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(1, 64))
def test_mutated_packets_raise_only_mqtt_errors(packets, flips, step):
    data = bytearray(b"".join(packets))
    for pos, val in flips:
        data[pos % len(data)] = val
    feed_all(mp.PacketReader(max_packet_size=1024), bytes(data), step)
