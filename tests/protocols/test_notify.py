"""Incident notifications (protocols/notify.py): golden vector, field errors, bad input. Both runtimes."""

from ptest import raises

from protocols import notify, topics
from protocols.errors import LocalProtocolError, MessageError

T0 = 1764000000000
GOLDEN = ('{"id":"inc-7.3","incident":"inc-7","kind":"presence","lat":299050000,"lon":1196100000,'
          '"rule":"night-ferry","sev":"general","site":"dongshan","state":"warned",'
          '"text":"【dongshan】一般事件 inc-7（presence）请就近前往协助控制现场。","ts":1764000000000,"zone":"ferry"}')


def golden_obj():
    return notify.notification("inc-7.3", "inc-7", "dongshan", "warned", T0, "presence", "general",
                               "【dongshan】一般事件 inc-7（presence）请就近前往协助控制现场。", 299050000, 1196100000,
                               "ferry", "night-ferry")


def test_golden_vector_round_trip():
    data = notify.encode(golden_obj())
    assert data == GOLDEN.encode()
    assert notify.decode(data) == golden_obj()
    assert notify.decode(data + b"\n") == golden_obj()  # trailing whitespace is still one JSON document


def test_optional_fields_left_out():
    m = notify.notification("i.1", "i", "s", "closed", T0, "presence", "general", "closed")
    assert "lat" not in m and "zone" not in m and "rule" not in m
    assert notify.decode(notify.encode(m)) == m


def test_field_errors_name_the_field():
    cases = (
        ('{"id":"a","incident":"i","site":"s","state":"gone","ts":%d,"kind":"k","sev":"general","text":"t"}'
         % T0, "state", "not one of"),
        ('{"id":"a","incident":"i","site":"s","state":"open","ts":%d,"kind":"k","sev":"general"}' % T0,
         "text", "required"),
        ('{"id":"a","incident":"i","site":"s","state":"open","ts":5,"kind":"k","sev":"general","text":"t"}',
         "ts", "out of range"),
        ('{"id":"a","incident":"i","site":"s","state":"open","ts":%d,"kind":"k","sev":"general","text":"t",'
         '"lat":1.5}' % T0, "lat", "integer"),
        ('{"id":"a","incident":"i","site":"s","state":"open","ts":%d,"kind":"k","sev":"general","text":"t",'
         '"phone":"138"}' % T0, "phone", "unknown"),
    )
    for payload, field, word in cases:
        with raises(MessageError, match=word) as r:
            notify.decode(payload.encode())
        assert r.value.field == field


def test_bad_input_raises_only_message_error():
    for payload in (b"", b"{", b"[]", b"\xff\xfe", b"null", b'"x"', b"{}" + b" " * 3000):
        with raises(MessageError):
            notify.decode(payload)


def test_encode_refuses_invalid_content():
    m = golden_obj()
    m["sev"] = "loud"
    with raises(LocalProtocolError):
        notify.encode(m)


def test_topic_is_a_retained_channel_of_the_contact():
    t = topics.topic("dongshan", "cadre-wang", "notify")
    assert t == "lookout/v1/dongshan/cadre-wang/notify"
    assert topics.parse(t) == ("dongshan", "cadre-wang", "notify", None)
    assert topics.retained("notify") and topics.qos("notify") == 1
