"""Property tests for the MQTT broker side (CPython only): whatever the client codec encodes, the server reader
decodes to the same fields, in any split; junk bytes raise only MQTTPacketError; ``topic_matches`` against a
recursive restatement of §4.7."""

from hypothesis import given, settings
from hypothesis import strategies as st
from mqtttest import events_in_steps, feed_all

from protocols import mqttpacket as mp
from protocols import mqttserver as ms

text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)
topic_level = st.text(st.characters(blacklist_characters="+#/\x00", blacklist_categories=("Cs",)), max_size=8)
topics = st.lists(topic_level, min_size=1, max_size=5).map("/".join).filter(lambda t: 0 < len(t.encode()) <= 200)
filters = st.lists(st.one_of(topic_level, st.just("+")), min_size=1, max_size=4).flatmap(
    lambda lv: st.sampled_from(["/".join(lv), "/".join(lv + ["#"])])).filter(lambda f: len(f.encode()) > 0)
pids = st.integers(1, 65535)


@settings(max_examples=250)
@given(text, st.booleans(), st.integers(0, 65535), st.one_of(st.none(), text), st.one_of(st.none(), st.binary(
    max_size=20)), st.one_of(st.none(), topics), st.binary(max_size=40), st.integers(0, 2), st.booleans())
def test_connect_round_trip(cid, clean, keepalive, user, password, will_topic, will_payload, will_qos, will_retain):
    clean = clean or not cid
    if user is None:
        password = None
    if will_topic is None:
        will_qos, will_retain = 0, False
    r = ms.server_reader()
    r.receive_data(mp.encode_connect(cid, clean, keepalive, user, password, will_topic, will_payload, will_qos,
                                     will_retain))
    assert r.next_event() == mp.Packet(ms.CONNECT, level=4, client_id=cid, clean_session=clean,
                                       keepalive=keepalive, will_topic=will_topic,
                                       will_payload=None if will_topic is None else will_payload,
                                       will_qos=will_qos, will_retain=will_retain, username=user,
                                       password=password)
    assert r.next_event() is mp.NEED_DATA


@settings(max_examples=200)
@given(st.lists(st.one_of(
    st.builds(lambda pid, items: (mp.encode_subscribe(pid, items),
                                  mp.Packet(ms.SUBSCRIBE, packet_id=pid, topics=items)),
              pids, st.lists(st.tuples(filters, st.integers(0, 2)), min_size=1, max_size=4)),
    st.builds(lambda pid, fl: (mp.encode_unsubscribe(pid, fl), mp.Packet(ms.UNSUBSCRIBE, packet_id=pid, filters=fl)),
              pids, st.lists(filters, min_size=1, max_size=4)),
    st.builds(lambda t, p, pid: (mp.encode_publish(t, p, 1, False, False, pid),
                                 mp.Packet(ms.PUBLISH, topic=t, payload=p, qos=1, retain=False, dup=False,
                                           packet_id=pid)), topics, st.binary(max_size=300), pids),
    st.builds(lambda pid: (mp.encode_puback(pid), mp.Packet(ms.PUBACK, packet_id=pid)), pids),
    st.just((mp.PINGREQ_BYTES, mp.Packet(ms.PINGREQ))),
    st.just((mp.DISCONNECT_BYTES, mp.Packet(ms.DISCONNECT))),
), min_size=1, max_size=6), st.integers(1, 50))
def test_client_packets_decode_in_any_split(pairs, step):
    stream = b"".join(raw for raw, _ in pairs)
    expected = [p for _, p in pairs]
    assert events_in_steps(ms.server_reader(), stream, step) == expected


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_arbitrary_bytes_raise_only_mqtt_errors(data, step):
    feed_all(ms.server_reader(max_packet_size=1024), data, step)


@settings(max_examples=300)
@given(st.lists(st.one_of(
    st.builds(lambda c, u, w: mp.encode_connect(c, True, 60, u, b"pw" if u else None, w, b"bye", int(bool(w)),
                                                bool(w)),
              text, st.one_of(st.none(), text), st.one_of(st.none(), topics)),
    st.builds(lambda pid, items: mp.encode_subscribe(pid, items), pids,
              st.lists(st.tuples(filters, st.integers(0, 2)), min_size=1, max_size=3)),
    st.builds(lambda t, p, pid: mp.encode_publish(t, p, 1, True, False, pid), topics, st.binary(max_size=60), pids),
    st.just(mp.PINGREQ_BYTES)), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(1, 64))
def test_mutated_packets_raise_only_mqtt_errors(packets, flips, step):
    data = bytearray(b"".join(packets))
    for pos, val in flips:
        data[pos % len(data)] = val
    feed_all(ms.server_reader(max_packet_size=1024), bytes(data), step)


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["a", "b", "", "$x", "+", "#"]), min_size=1, max_size=4),
       st.lists(st.sampled_from(["a", "b", "", "$x"]), min_size=1, max_size=4))
def test_topic_matches_agrees_with_reference(flevels, tlevels):
    flt = "/".join(flevels)
    topic = "/".join(tlevels)
    try:
        mp.encode_unsubscribe(1, [flt])
    except Exception:
        return
    assert ms.topic_matches(flt, topic) == _reference_match(flevels, tlevels)


def _reference_match(fl, tl):
    """Recursive restatement of §4.7 (independent of the implementation's loop)."""
    if tl[0].startswith("$") and fl[0] in ("+", "#"):
        return False

    def rec(i, j):
        if i == len(fl):
            return j == len(tl)
        if fl[i] == "#":
            return True
        if j == len(tl):
            return False
        return (fl[i] == "+" or fl[i] == tl[j]) and rec(i + 1, j + 1)

    return rec(0, 0)
