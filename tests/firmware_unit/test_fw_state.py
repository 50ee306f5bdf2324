"""Outbox bounds and persistence, config validation and rollback, PIR debounce and rate limit (both runtimes)."""

from fwtest import MemFS

from ptest import raises

from lookout_node import config as cfgmod
from lookout_node.outbox import Outbox
from lookout_node.sensor import Detector, need_edges


KEY = "ab" * 32


def base_cfg():
    return {"id": "spk-01", "site": "dongshan", "role": "speaker", "key": KEY,
            "broker": {"host": "127.0.0.1", "port": 1883}, "x_future": {"kept": 1}}


# ---- outbox -------------------------------------------------------------------------------------------------

def test_outbox_fifo_and_ack():
    ob = Outbox(MemFS(), max_items=4)
    ob.put("a/res", b'{"n":1}')
    ob.put("a/res", '{"n":2}')
    assert len(ob) == 2
    assert ob.peek() == ("a/res", b'{"n":1}')
    assert ob.peek() == ("a/res", b'{"n":1}')  # peek does not remove: only an ack does
    iid, topic, payload = ob.take()
    assert (topic, payload) == ("a/res", b'{"n":1}') and ob.ack(iid)
    iid, topic, payload = ob.take()
    assert payload == b'{"n":2}' and ob.ack(iid) and not ob.ack(iid)
    assert ob.take() is None and ob.peek() is None


def test_outbox_drops_oldest_and_counts():
    ob = Outbox(MemFS(), max_items=3)
    for i in range(5):
        ob.put("t", '{"n":%d}' % i)
    assert len(ob) == 3 and ob.dropped == 2
    assert ob.peek() == ("t", b'{"n":2}')


def test_outbox_byte_bound():
    ob = Outbox(MemFS(), max_items=100, max_bytes=100)
    for i in range(10):
        ob.put("t", "x" * 20)
    assert ob.bytes <= 100 and ob.dropped == 6 and len(ob) == 4
    assert ob.put("t", "y" * 200) == 1  # larger than the whole box: dropped, counted
    assert ob.dropped == 7 and len(ob) == 4


def test_outbox_survives_reboot():
    fs = MemFS()
    ob = Outbox(fs, max_items=3)
    for i in range(4):
        ob.put("t", '{"n":%d}' % i)
    ob.ack(ob.take()[0])
    ob2 = Outbox(fs, max_items=3)
    assert len(ob2) == 2 and ob2.dropped == 1
    assert ob2.peek() == ("t", b'{"n":2}')


def test_outbox_corrupt_file_starts_empty():
    fs = MemFS()
    fs.write("outbox.0", b"{not json")
    assert len(Outbox(fs)) == 0


# ---- config -------------------------------------------------------------------------------------------------

def test_config_defaults_and_unknown_keys_kept():
    c = cfgmod.validate(base_cfg())
    assert c["hb_s"] == 30 and c["loc_s"] == 5 and c["broker"]["keepalive"] == 60
    assert c["x_future"] == {"kept": 1}


def test_config_rejects_bad_values_naming_field():
    cases = [("hb_s", 0, "hb_s"), ("hb_s", 1.5, "hb_s"), ("loc_s", 99999, "loc_s"), ("role", "drone", "role"),
             ("key", "zz" * 32, "key"), ("id", "Bad Id", "id"), ("quiet_hours", [22, 25], "quiet_hours[1]"),
             ("broker", {"host": "", "port": 1883}, "broker.host"), ("broker", {"host": "h", "port": 0},
                                                                     "broker.port"),
             ("position", {"lat": 910000000, "lon": 0}, "position.lat")]
    for key, value, field in cases:
        c = base_cfg()
        c[key] = value
        with raises(cfgmod.ConfigError) as r:
            cfgmod.validate(c)
        assert r.value.field == field, (key, r.value.field)


def test_config_needs_trial_only_for_connection_keys():
    a = cfgmod.validate(base_cfg())
    b = cfgmod.validate(cfgmod.merge(a, {"hb_s": 60}))
    assert not cfgmod.needs_trial(a, b)
    c = cfgmod.validate(cfgmod.merge(a, {"broker": {"host": "10.0.0.9"}}))
    assert c["broker"]["port"] == 1883  # nested merge keeps the rest
    assert cfgmod.needs_trial(a, c)


def test_config_trial_commit():
    import json

    fs = MemFS()
    st = cfgmod.ConfigStore(fs)
    old = cfgmod.validate(base_cfg())
    st.save(old)
    new = cfgmod.merge(old, {"broker": {"host": "10.0.0.9"}})
    st.begin_trial(old, new, "c9")
    st2 = cfgmod.ConfigStore(fs)  # restart onto the new config
    assert st2.boot()["broker"]["host"] == "10.0.0.9"
    assert st2.trial["cmd"] == "c9"
    assert st2.commit()["cmd"] == "c9"
    st3 = cfgmod.ConfigStore(fs)
    assert st3.boot()["broker"]["host"] == "10.0.0.9" and st3.trial is None
    assert json.loads(fs.read("config.json"))["broker"]["host"] == "10.0.0.9"


def test_config_rollback_on_timeout_and_on_crash_loop():
    fs = MemFS()
    old = cfgmod.validate(base_cfg())
    st = cfgmod.ConfigStore(fs)
    st.save(old)
    st.begin_trial(old, cfgmod.merge(old, {"broker": {"host": "10.0.0.9"}}), "c9")
    st = cfgmod.ConfigStore(fs)
    st.boot()
    note = st.rollback("no broker")
    assert note == {"cmd": "c9", "reason": "no broker"}
    st = cfgmod.ConfigStore(fs)
    assert st.boot()["broker"]["host"] == "127.0.0.1"
    assert st.take_rollback_note()["cmd"] == "c9"
    assert st.take_rollback_note() is None
    # crash loop: the node keeps restarting on the new config -> rolled back at boot
    st.begin_trial(old, cfgmod.merge(old, {"broker": {"host": "10.0.0.8"}}), "c10")
    for _ in range(cfgmod.MAX_TRIAL_BOOTS):
        assert cfgmod.ConfigStore(fs).boot()["broker"]["host"] == "10.0.0.8"
    st = cfgmod.ConfigStore(fs)
    assert st.boot()["broker"]["host"] == "127.0.0.1"
    assert st.take_rollback_note()["cmd"] == "c10"


def test_config_invalid_file_falls_back_to_backup():
    import json

    fs = MemFS()
    old = cfgmod.validate(base_cfg())
    fs.write("config.bak.json", json.dumps(old).encode())
    fs.write("config.json", b'{"id": "spk-01"}')
    assert cfgmod.ConfigStore(fs).boot()["site"] == "dongshan"


def test_config_boot_validates_fully_then_forgets_the_checker():
    """Boot runs the full validator (a hand-copied file must not take a bad value to the field) and then drops
    config_check from sys.modules: boot-time code does not stay in RAM; set_config imports it again."""
    import json
    import sys

    fs = MemFS()
    good = base_cfg()
    fs.write("config.bak.json", json.dumps(good).encode())
    c = base_cfg()
    c["hb_s"] = 2  # out of range: the full check refuses it, the backup is used
    fs.write("config.json", json.dumps(c).encode())
    store = cfgmod.ConfigStore(fs)
    got = store.boot()
    assert got["hb_s"] == 30 and got["x_future"] == {"kept": 1}  # the backup, defaults filled in
    assert store.take_rollback_note()["reason"] == "config.json is invalid"
    assert "lookout_node.config_check" not in sys.modules
    with raises(cfgmod.ConfigError) as r:
        cfgmod.validate(c)
    assert r.value.field == "hb_s"
    assert "lookout_node.config_check" in sys.modules
    for key, value in (("key", "zz" * 32), ("key", "ab" * 31), ("role", "drone"), ("transport", "udp"),
                       ("broker", "h")):
        c = base_cfg()
        c[key] = value
        with raises(cfgmod.ConfigError) as r:
            cfgmod.check_identity(c)
        assert r.value.field == key, (key, r.value.field)


# ---- PIR debounce / rate limit --------------------------------------------------------------------------------

def test_detector_debounces_bounces():
    d = Detector(debounce_ms=200, min_interval_s=0, sensitivity=100)
    assert d.feed(1000) == (1, 80)
    assert d.feed(1050) is None and d.feed(1100) is None  # contact bounce
    assert d.bounces == 2
    assert d.feed(1400) is not None


def test_detector_sensitivity_needs_more_edges():
    assert [need_edges(s) for s in (0, 24, 25, 74, 75, 100)] == [3, 3, 2, 2, 1, 1]
    d = Detector(debounce_ms=100, min_interval_s=0, sensitivity=0)
    assert d.feed(0) is None and d.feed(500) is None
    assert d.feed(1000) is not None
    assert d.feed(5000) is None and d.feed(9000) is None  # edges 4 s apart never add up (3 s window)


def test_detector_rate_limit_counts_suppressed():
    d = Detector(debounce_ms=100, min_interval_s=10, sensitivity=100)
    assert d.feed(0) == (1, 80)
    for t in (1000, 2000, 3000):
        assert d.feed(t) is None
    assert d.suppressed == 3
    assert d.feed(10500) == (4, 80)
    assert d.suppressed == 0
