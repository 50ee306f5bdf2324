from ptest import raises

from protocols import topics
from protocols.errors import LocalProtocolError, TopicError


def test_build_and_parse_round_trip():
    t = topics.topic("dongshan", "spk-01", "cmd")
    assert t == "lookout/v1/dongshan/spk-01/cmd"
    assert topics.parse(t) == ("dongshan", "spk-01", "cmd", None)
    t2 = topics.topic("dongshan", "cam-02", "up", "x7f3")
    assert topics.parse(t2.encode()) == ("dongshan", "cam-02", "up", "x7f3")


def test_device_at_fixed_level_for_acl():
    for ch in topics.CHANNELS:
        assert topics.topic("s1", "dev-9", ch).split("/")[3] == "dev-9"


def test_build_rejects_bad_ids():
    for bad in ("", "Upper", "-lead", "a/b", "a+b", "x" * 33, "sp ace", "#", None, 7):
        with raises(LocalProtocolError):
            topics.topic("site", bad, "hb")
        with raises(LocalProtocolError, match="site"):
            topics.topic(bad, "dev", "hb")
    with raises(LocalProtocolError, match="channel"):
        topics.topic("site", "dev", "nope")


def test_parse_rejects_with_precise_reason():
    cases = (
        ("lookout/v2/s/d/hb", "version"),
        ("other/v1/s/d/hb", "prefix"),
        ("lookout/v1/s/d", "levels"),
        ("lookout/v1/s/d/hb/x/y", "levels"),
        ("lookout/v1/s/D/hb", "device"),
        ("lookout/v1/s/d/zz", "channel"),
        ("lookout/v1/s/d/up/../", "levels"),
    )
    for t, word in cases:
        with raises(TopicError, match=word):
            topics.parse(t)
    with raises(TopicError, match="UTF-8"):
        topics.parse(b"lookout/v1/\xff/d/hb")
    with raises(TopicError, match="limit"):
        topics.parse("lookout/v1/" + "a" * 200)


def test_filters_and_channel_properties():
    assert topics.device_filter() == "lookout/v1/+/+/#"
    assert topics.device_filter("s", "+", "state") == "lookout/v1/s/+/state"
    assert topics.retained("state") is True
    assert topics.retained("cmd") is False
    assert topics.qos("cmd") == 1
