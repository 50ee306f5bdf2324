"""Property tests (CPython) for the operator API codec: garbage only ever raises OpAPIError."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import opapi

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=20))
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), c, max_size=4)),
                           max_leaves=10)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_opapi_error(data):
    for fn in (opapi.decode_request, opapi.decode_response):
        try:
            fn(data)
        except opapi.OpAPIError:
            pass


@settings(max_examples=300)
@given(st.sampled_from(opapi.OPS), st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_arbitrary_args_only_raise_opapi_error(op, args):
    payload = json.dumps({"id": "r1", "op": op, "token": "t", "args": args}).encode()
    try:
        req = opapi.decode_request(payload)
    except opapi.OpAPIError:
        return
    # whatever was accepted re-encodes and decodes to the same request
    assert opapi.decode_request(opapi.encode_request(req)) == req


@given(ids, st.sampled_from(opapi.CODES), st.none() | st.dictionaries(ids, scalars, max_size=4))
def test_response_round_trip(rid, code, data):
    r = opapi.response(rid, code, data=data)
    assert opapi.decode_response(opapi.encode_response(r)) == r


@given(ids)
def test_devices_request_round_trip(rid):
    req = opapi.request(rid, "devices", "tok")
    assert opapi.decode_request(opapi.encode_request(req))["op"] == "devices"


@settings(max_examples=300)
@given(st.fixed_dictionaries({}, optional={"kind": json_values, "operator": json_values, "desc": json_values,
                                           "before": json_values, "after": json_values, "limit": json_values}))
def test_journal_page_args_only_raise_opapi_error(args):
    try:
        a = opapi.validate_args("journal", dict(args))
    except opapi.OpAPIError:
        return
    assert isinstance(a["desc"], bool) and (a.get("kind") is None or a["kind"] in opapi.JOURNAL_KINDS)


@settings(max_examples=200)
@given(json_values, json_values)
def test_custody_args_only_raise_opapi_error(sha, access):
    try:
        a = opapi.validate_args("clips", {"action": "custody", "sha256": sha, "access": access})
    except opapi.OpAPIError:
        return
    assert a["access"] in opapi.CUSTODY_ACCESS and len(a["sha256"]) == 64
