"""Operator API envelope and argument validation (runs under CPython and MicroPython)."""

import json

from ptest import raises

from protocols import opapi
from protocols.opapi import OpAPIError

GOLDEN_REQ = b'{"id": "a1.1", "op": "broadcast", "token": "t0k", "args": {"to": "spk-01", "clip": "nofish"}}'


def test_golden_request_is_normalised():
    req = opapi.decode_request(GOLDEN_REQ)
    a = req["args"]
    assert a["repeat"] == 1 and a["priority"] == 1 and a["queue"] is True and a["wait"] == "final"
    assert "volume" not in a


def test_priority_names_and_numbers():
    for name, n in (("background", 0), ("normal", 1), ("priority", 2), ("emergency", 3), (3, 3)):
        r = opapi.validate_request(opapi.request("x", "stop", "t", {"to": "spk-01", "priority": name}))
        assert r["args"]["priority"] == n
    with raises(OpAPIError, match="args.priority"):
        opapi.validate_request(opapi.request("x", "stop", "t", {"to": "spk-01", "priority": "loud"}))
    with raises(OpAPIError, match="args.priority"):
        opapi.validate_request(opapi.request("x", "stop", "t", {"to": "spk-01", "priority": True}))


def test_errors_name_the_field():
    cases = (
        ({"id": "x", "op": "nope", "token": "t"}, "op"),
        ({"id": "", "op": "devices", "token": "t"}, "id"),
        ({"id": "x", "op": "devices"}, "token"),
        ({"id": "x", "op": "devices", "token": "t", "extra": 1}, "extra"),
        ({"id": "x", "op": "broadcast", "token": "t", "args": {"clip": "c"}}, "args.to"),
        ({"id": "x", "op": "broadcast", "token": "t", "args": {"to": "a", "clip": "c", "volume": 101}},
         "args.volume"),
        ({"id": "x", "op": "broadcast", "token": "t", "args": {"to": "a", "clip": "c", "repeat": 0}}, "args.repeat"),
        ({"id": "x", "op": "command", "token": "t", "args": {"to": "a", "name": "Play"}}, "args.name"),
        ({"id": "x", "op": "command", "token": "t", "args": {"to": "a", "name": "p", "args": {"v": 1.5}}},
         "args.args"),
        ({"id": "x", "op": "command", "token": "t", "args": {"to": "a", "name": "p", "wait": "later"}},
         "args.wait"),
        ({"id": "x", "op": "devices", "token": "t", "args": {"state": "dead"}}, "args.state"),
        ({"id": "x", "op": "devices", "token": "t", "args": {"limit": 0}}, "args.limit"),
        ({"id": "x", "op": "devices", "token": "t", "args": {"after": "Spk 1"}}, "args.after"),
        ({"id": "x", "op": "journal", "token": "t", "args": {"limit": 0}}, "args.limit"),
        ({"id": "x", "op": "stop", "token": "t", "args": {"to": "a", "queue": 1}}, "args.queue"),
        ({"id": "x", "op": "locate", "token": "t", "args": {"device": "A B"}}, "args.device"),
    )
    for req, field in cases:
        with raises(OpAPIError) as r:
            opapi.validate_request(req)
        assert r.value.field == field, (req, r.value.field)
        assert r.value.code == "bad_request"


def test_bytes_never_raise_anything_else():
    for payload in (b"", b"\xff\xfe", b"[]", b"null", b"{", b'{"id": 5}', b"x" * 5000, GOLDEN_REQ[:-1],
                    GOLDEN_REQ + b"trailing"):
        with raises(OpAPIError):
            opapi.decode_request(payload)


def test_peek_id_and_response():
    assert opapi.peek_id(b'{"id": "r9", "op": 1}') == "r9"
    assert opapi.peek_id(b"garbage") is None
    r = opapi.response("r9", "queued", {"results": []})
    assert r == {"id": "r9", "ok": True, "code": "queued", "data": {"results": []}}
    back = opapi.decode_response(opapi.encode_response(r))
    assert back == r
    assert opapi.response("r9", "offline", error="spk-02 offline")["ok"] is False
    with raises(OpAPIError):
        opapi.decode_response(b'{"id": "r9", "code": "weird"}')


def test_encode_request_roundtrip():
    req = opapi.request("q.1", "journal", "tok", {"verify": True})
    data = opapi.encode_request(req)
    back = opapi.decode_request(data)
    assert back["args"]["verify"] is True and back["args"]["limit"] == 200
    assert json.loads(data)["op"] == "journal"


def _put_args(n_data, **kw):
    a = {"clip": "nofish", "size": 9000, "sha256": "ab" * 32, "chunk": 8192, "index": 0, "data": "QUJD" * n_data}
    a.update(kw)
    return a


def test_clip_put_gets_the_larger_envelope_only():
    big = opapi.encode_request(opapi.request("p.1", "clip_put", "t", _put_args(2048)))  # 8 KiB of base64 data
    assert 4096 < len(big) <= opapi.MAX_CLIP_PUT_REQUEST
    assert opapi.decode_request(big)["args"]["index"] == 0
    other = json.dumps({"id": "x", "op": "devices", "token": "t", "args": {"site": "a" * 20, "x": "y" * 5000}})
    with raises(OpAPIError, match="limit 4096"):
        opapi.decode_request(other.encode())
    with raises(OpAPIError, match="limit"):
        opapi.decode_request(b" " * (opapi.MAX_CLIP_PUT_REQUEST + 1))


def test_clip_put_and_clip_actions_validate():
    for bad, field in ((_put_args(1, sha256="AB" * 32), "args.sha256"), (_put_args(1, data="QUJ"), "args.data"),
                       (_put_args(2732), "args.data"), (_put_args(1, size=0), "args.size"),
                       (_put_args(1, chunk=32), "args.chunk"), (_put_args(1, clip="a/b"), "args.clip")):
        with raises(OpAPIError, match=field):
            opapi.validate_request(opapi.request("x", "clip_put", "t", bad))
    r = opapi.validate_request(opapi.request("x", "clips", "t", {"action": "progress", "dist": 7}))
    assert r["args"]["dist"] == 7
    with raises(OpAPIError, match="args.dist"):
        opapi.validate_request(opapi.request("x", "clips", "t", {"action": "progress"}))
    r = opapi.validate_request(opapi.request("x", "clips", "t", {"action": "evidence"}))
    assert r["args"]["limit"] == 100
    with raises(OpAPIError, match="args.sha256"):
        opapi.validate_request(opapi.request("x", "clips", "t", {"action": "evidence", "sha256": "zz"}))


def test_response_size_checked_before_parsing():
    with raises(opapi.OpAPIError, match="limit") as r:
        opapi.decode_response(b" " * (opapi.MAX_RESPONSE + 1))
    assert r.value.field == "payload"


def test_incident_ops_validate():
    v = opapi.validate_request
    a = v(opapi.request("x", "incidents", "t"))["args"]
    assert a == {"state": "active", "limit": 50}
    assert v(opapi.request("x", "incidents", "t", {"state": "on_scene", "limit": 5}))["args"]["state"] == "on_scene"
    a = v(opapi.request("x", "incident", "t", {"action": "dispatch", "incident": "inc-3", "to": "zhang",
                                               "drone": "goto"}))["args"]
    assert a["to"] == "zhang" and a["drone"] == "goto"
    assert v(opapi.request("x", "coverage", "t", {"cutoff_s": 600}))["args"]["cutoff_s"] == 600
    for op, args, field in (("incidents", {"state": "pending"}, "args.state"),
                            ("incidents", {"limit": 0}, "args.limit"),
                            ("incident", {"incident": "inc-3"}, "args.action"),
                            ("incident", {"action": "shout", "incident": "inc-3"}, "args.action"),
                            ("incident", {"action": "show"}, "args.incident"),
                            ("incident", {"action": "show", "incident": "INC 3"}, "args.incident"),
                            ("incident", {"action": "dispatch", "incident": "inc-3"}, "args.to"),
                            ("incident", {"action": "dispatch", "incident": "inc-3", "to": "x", "drone": "loop"},
                             "args.drone"),
                            ("incident", {"action": "close", "incident": "inc-3", "why": ""}, "args.why"),
                            ("coverage", {"cutoff_s": 5}, "args.cutoff_s")):
        with raises(OpAPIError, match=field):
            v(opapi.request("x", op, "t", args))


def test_journal_pages_and_custody_args_validate():
    r = opapi.validate_request(opapi.request("x", "journal", "t", {"kind": "alert", "operator": "admin:root",
                                                                  "desc": True, "before": 42}))
    a = r["args"]
    assert a["kind"] == "alert" and a["operator"] == "admin:root" and a["desc"] is True and a["before"] == 42
    assert opapi.validate_request(opapi.request("x", "journal", "t", {}))["args"]["desc"] is False
    for bad, field in (({"kind": "gossip"}, "args.kind"), ({"operator": "Op 1"}, "args.operator"),
                       ({"desc": 1}, "args.desc"), ({"before": 0}, "args.before"), ({"before": "9"}, "args.before")):
        with raises(OpAPIError, match=field):
            opapi.validate_request(opapi.request("x", "journal", "t", bad))
    sha = "ab" * 32
    r = opapi.validate_request(opapi.request("x", "clips", "t", {"action": "custody", "sha256": sha}))
    assert r["args"]["access"] == "none"
    for bad, field in (({"action": "custody"}, "args.sha256"), ({"action": "custody", "sha256": "AB" * 32},
                                                                "args.sha256"),
                       ({"action": "custody", "sha256": sha, "access": "copy"}, "args.access")):
        with raises(OpAPIError, match=field):
            opapi.validate_request(opapi.request("x", "clips", "t", bad))


def test_devices_pages_have_a_default_limit_and_a_byte_budget():
    a = opapi.validate_args("devices", {"after": "spk-01"})
    assert a["limit"] == opapi.DEVICES_PAGE and a["after"] == "spk-01"
    assert opapi.page_bytes() < opapi.MAX_RESPONSE
