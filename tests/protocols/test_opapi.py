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
