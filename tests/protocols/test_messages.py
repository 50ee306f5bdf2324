from ptest import raises

from protocols import canonical, messages, signing
from protocols.errors import AuthError, LocalProtocolError, MessageError

T0 = 1764000000000
KEY = bytes(range(32))


def hb(**kw):
    m = {"seq": 1, "ts": T0, "up_s": 30, "hb_s": 30, "rssi": -67, "bat_mv": 3950, "heap": 81234, "fw": "0.1.0"}
    m.update(kw)
    return m


def test_heartbeat_round_trip_is_canonical():
    data = messages.encode("hb", hb())
    assert data == (b'{"bat_mv":3950,"fw":"0.1.0","hb_s":30,"heap":81234,"rssi":-67,"seq":1,'
                    b'"ts":1764000000000,"up_s":30}')
    assert messages.decode("hb", data) == hb()


def test_decode_names_field_and_rule():
    cases = (
        (b'{"seq":1,"up_s":3,"hb_s":0}', "hb_s", "out of range"),
        (b'{"seq":"1","up_s":3,"hb_s":30}', "seq", "integer"),
        (b'{"seq":true,"up_s":3,"hb_s":30}', "seq", "integer"),
        (b'{"seq":1,"up_s":3.5,"hb_s":30}', "up_s", "integer"),
        (b'{"up_s":3,"hb_s":30}', "seq", "required"),
        (b'{"seq":1,"up_s":3,"hb_s":30,"bogus":1}', "bogus", "unknown"),
        (b'{"seq":1,"up_s":3,"hb_s":30,"ts":1764000000}', "ts", "out of range"),
    )
    for payload, field, word in cases:
        with raises(MessageError, match=word) as r:
            messages.decode("hb", payload)
        assert r.value.field == field


def test_extension_fields_allowed():
    m = messages.decode("hb", b'{"seq":1,"up_s":3,"hb_s":30,"x_vendor":"abc"}')
    assert m["x_vendor"] == "abc"


def test_payload_rejections():
    with raises(MessageError, match="empty"):
        messages.decode("hb", b"")
    with raises(MessageError, match="limit"):
        messages.decode("hb", b" " * (messages.MAX_PAYLOAD + 1))
    with raises(MessageError, match="JSON"):
        messages.decode("hb", b"{nope")
    with raises(MessageError, match="UTF-8"):
        messages.decode("hb", b'{"err":"\xff"}')
    with raises(MessageError, match="object"):
        messages.decode("hb", b"[1,2]")


def test_location_units_and_fix():
    loc = {"seq": 3, "ts": T0, "lat": 301234567, "lon": 1201234567, "alt_mm": 21500, "fix": 1, "src": "gps",
           "spd_cms": 120, "hdg_cd": 27000}
    assert messages.decode("loc", messages.encode("loc", loc)) == loc
    loc["fix"] = 0
    with raises(MessageError, match="fix"):
        messages.decode("loc", canonical.dumpb(loc))
    loc["fix"] = 1
    loc["lat"] = 900000001
    with raises(MessageError, match="range"):
        messages.decode("loc", canonical.dumpb(loc))


def test_event_with_evidence():
    e = {"id": "cam-02-3-17", "seq": 17, "ts": T0, "kind": "presence", "sev": "general", "conf": 80,
         "evidence": ["sha256:" + "ab" * 32, "snap-17"]}
    assert messages.decode("evt", messages.encode("evt", e)) == e
    e["evidence"] = ["sha256:xyz"]
    with raises(MessageError, match="sha256"):
        messages.decode("evt", canonical.dumpb(e))
    e["evidence"] = []
    e["sev"] = "apocalyptic"
    with raises(MessageError, match="not one of"):
        messages.decode("evt", canonical.dumpb(e))


def test_command_args_rules():
    c = messages.command("c-1", "spk-01", "play", {"clip": "nofish", "repeat": 2, "volume": 80}, T0, T0 + 60000,
                         2, 7)
    signing.sign(KEY, "cmd", c)
    assert messages.decode("cmd", messages.encode("cmd", c)) == c
    bad = dict(c)
    bad["args"] = {"volume": 80}
    with raises(MessageError, match="floats") as r:
        messages.decode("cmd", canonical.dumpb(bad).replace(b'"volume":80', b'"volume":0.8'))
    assert r.value.field == "args.volume"
    bad["args"] = {"x": {"nested": 1}}
    with raises(MessageError, match="unsupported"):
        messages.decode("cmd", canonical.dumpb(bad))
    bad["args"] = {}
    bad["exp"] = T0 - 1
    with raises(MessageError, match="expires before"):
        messages.decode("cmd", canonical.dumpb(bad))


def test_field_rules_each_type():
    """One case per schema type and character class: the error names the field and says the rule."""
    c = messages.command("c-1", "spk-01", "play", {}, T0, T0 + 60000, 1, 7)
    c["mac"] = "ab" * 32
    ok_args = {"on": True, "off": False, "none": None, "n": -3, "s": "x" * 400, "l": [1, True, None, "a"] * 4}
    # bools are valid args on both runtimes (MicroPython's bool is not an int subclass)
    assert messages.validate("cmd", dict(c, args=ok_args))["args"] is ok_args
    cases = (
        ({"args": {"s": "x" * 401}}, "args.s", "401 chars, limit 400"),
        ({"args": {"l": [1] * 17}}, "args.l", "17 items, limit 16"),
        ({"args": {"l": [1, [2]]}}, "args.l[1]", "nested"),
        ({"args": {"l": [1, 2.5]}}, "args.l[1]", "floats"),
        ({"args": {"Bad": 1}}, "args", "key 'Bad': expected 1..24 chars of [a-z0-9_]"),
        ({"args": {"": 1}}, "args", "non-empty"),
        ({"args": {"k" * 25: 1}}, "args", "1..24"),
        ({"args": dict(("k%d" % i, i) for i in range(17))}, "args", "17 keys, limit 16"),
        ({"args": []}, "args", "must be an object, got list"),
        ({"id": ""}, "id", "length 0, expected 1..48"),
        ({"id": "a b"}, "id", "'a b': expected chars of [A-Za-z0-9._-]"),
        ({"to": "x" * 33}, "to", "length 33, expected 1..32"),
        ({"name": "Play"}, "name", "chars of [a-z0-9_]"),
        ({"mac": "AB" * 32}, "mac", "lower-case hex"),
        ({"prio": 4}, "prio", "4 out of range 0..3"),
        ({"ctr": 0}, "ctr", "0 out of range 1..9007199254740992"),
        ({"exp": T0 * 1000}, "exp", "out of range 1420070400000..140737488355328"),
        ({"op": 5}, "op", "must be a string, got int"),
    )
    for change, field, text in cases:
        bad = dict(c)
        bad.update(change)
        with raises(MessageError, match=text) as r:
            messages.validate("cmd", bad)
        assert r.value.field == field, (change, r.value.field)
    r0 = {"id": "c-1", "status": "done"}
    enum_rule = "'ok' not one of accepted, done, failed, rejected"
    for change, field, text in (({"status": "ok"}, "status", enum_rule),
                                ({"detail": "a\nb"}, "detail", "no control characters"),
                                ({"seq": True}, "seq", "must be an integer, got bool")):
        with raises(MessageError, match=text) as r:
            messages.validate("res", dict(r0, **change))
        assert r.value.field == field
    with raises(MessageError, match="must be true or false") as r:
        messages.validate("death", {"online": 0, "bdseq": 1})
    assert r.value.field == "online"
    with raises(MessageError, match="must be false in a death") as r:
        messages.validate("death", {"online": True, "bdseq": 1})
    b = messages.birth("speaker", 1, "0.1.0", 30, caps=["play"] * 17)
    with raises(MessageError, match="17 items, limit 16") as r:
        messages.validate("birth", b)
    b["caps"] = ["play", "Stop"]
    with raises(MessageError, match="chars of [a-z0-9_]") as r:
        messages.validate("birth", b)
    assert r.value.field == "caps[1]"
    with raises(LocalProtocolError, match="unknown message kind"):
        messages.validate("nope", {})


def test_encode_rejects_non_string_keys():
    c = messages.command("c-1", "spk-01", "play", {1: 2}, T0, T0 + 60000, 1, 7)
    c["mac"] = "ab" * 32
    with raises(LocalProtocolError, match="string key"):
        messages.encode("cmd", c)
    with raises(LocalProtocolError, match="unknown field"):
        messages.encode("hb", {"seq": 1, "up_s": 1, "hb_s": 30, 7: 1})


def test_encode_invalid_is_local_error():
    with raises(LocalProtocolError, match="seq"):
        messages.encode("hb", {"up_s": 1, "hb_s": 30})
    with raises(LocalProtocolError, match="floats"):
        canonical.dumps({"a": 1.5})


def test_birth_and_death():
    b = messages.birth("speaker", 4, "0.1.0", 30, caps=["play", "stop"])
    assert messages.decode("birth", messages.encode("birth", b))["bdseq"] == 4
    d = messages.death(4)
    assert messages.decode("death", messages.encode("death", d)) == {"online": False, "bdseq": 4}
    with raises(MessageError, match="online"):
        messages.decode("birth", b'{"online":false,"kind":"speaker","bdseq":1,"fw":"x","hb_s":30}')


def test_result_status_final():
    r = messages.result("c-1", "done", ts=T0, detail="played 2x", data={"ms": 4100})
    assert messages.decode("res", messages.encode("res", r)) == r
    assert messages.is_final("done") and messages.is_final("rejected")
    assert not messages.is_final("accepted")


def test_canonical_escaping_and_order():
    assert canonical.dumps({"b": 1, "a": [True, None, "x\"y\\z\n\u00e9"]}) == '{"a":[true,null,"x\\"y\\\\z\\n\u00e9"],"b":1}'
    assert canonical.dumps({"mac": "00", "k": 1}, omit="mac") == '{"k":1}'


def test_hmac_vector_rfc4231_case2():
    mac = signing.hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    assert mac == bytes.fromhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_check_command_each_rule():
    def mk(**kw):
        c = messages.command("c-9", "spk-01", "stop", {}, T0, T0 + 30000, 1, 10)
        c.update(kw)
        return signing.sign(KEY, "cmd", c)

    assert signing.check_command(KEY, mk(), "spk-01", 9, T0 + 1) == 10
    forged = mk()
    forged["name"] = "play"
    with raises(AuthError) as r:
        signing.check_command(KEY, forged, "spk-01", 9, T0)
    assert r.value.code == "bad_mac"
    with raises(AuthError) as r:
        signing.check_command(bytes(32), mk(), "spk-01", 9, T0)
    assert r.value.code == "bad_mac"
    with raises(AuthError) as r:
        signing.check_command(KEY, mk(to="spk-02"), "spk-01", 9, T0)
    assert r.value.code == "wrong_device"
    with raises(AuthError) as r:
        signing.check_command(KEY, mk(), "spk-01", 10, T0)
    assert r.value.code == "replay"
    with raises(AuthError) as r:
        signing.check_command(KEY, mk(), "spk-01", 9, T0 + 30001)
    assert r.value.code == "expired"
    # no clock yet: the counter still protects
    assert signing.check_command(KEY, mk(), "spk-01", 9, None) == 10


def test_signature_is_bound_to_purpose():
    e = {"id": "e1", "seq": 1, "ts": T0, "kind": "presence", "sev": "info"}
    signing.sign(KEY, "evt", e)
    signing.verify(KEY, "evt", e)
    with raises(AuthError):
        signing.verify(KEY, "cmd", e)


def test_key_wrap_round_trip():
    new = bytes(range(100, 132))
    w = signing.wrap_key(KEY, new, 42)
    assert signing.unwrap_key(KEY, w, 42) == new
    assert signing.unwrap_key(KEY, w, 43) != new
    with raises(AuthError, match="hex"):
        signing.unwrap_key(KEY, "zz", 1)


def test_parsed_schemas_are_kept_by_the_gateway_not_by_a_node():
    # a node must not keep tables it builds after boot: long-lived objects scattered over its heap left no
    # 4 KB block for a clip chunk (tests/test_firmware_mpy32.py, the speaker on a 72 KB heap)
    import sys

    messages._FIELDS.clear()
    messages.validate("hb", hb())
    with raises(MessageError):
        messages.validate("hb", hb(seq=-1))
    if sys.implementation.name == "micropython":
        assert not messages.CACHE_SCHEMAS and messages._FIELDS == {}
    else:
        assert messages.CACHE_SCHEMAS and list(messages._FIELDS) == ["hb"]
