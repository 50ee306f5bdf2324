"""Wire compatibility of protocols/coap.py with aiocoap (the gateway's CoAP stack): each decodes what the
other encodes, and for the same message both produce the same bytes. CPython only."""

from __future__ import annotations

import aiocoap
import pytest
from aiocoap.optiontypes import OpaqueOption
from hypothesis import given, settings
from hypothesis import strategies as st

from lookout.protocols import coap


def aio_message(mtype, mid, token, **kwargs) -> aiocoap.Message:
    # aiocoap deprecates passing mtype/mid/token to the constructor; set them the way its transports do
    m = aiocoap.Message(**kwargs)
    m.mtype = aiocoap.numbers.types.Type(mtype)
    m.mid = mid
    m.token = token
    return m


CASES = [
    # (our message, aiocoap message) pairs that must be the same datagram
    (coap.make_request(coap.GET, "/temperature", mid=0x7D34, token=b"\x20"),
     lambda: aio_message(aiocoap.CON, 0x7D34, b"\x20", code=aiocoap.GET, uri_path=("temperature",))),
    (coap.make_request(coap.POST, "/s/lvl", mid=0x0102, token=b"\xa1\xb2", payload=b'{"lvl":3}',
                       confirmable=False, content_format=coap.JSON, query=["u=cm"]),
     lambda: aio_message(aiocoap.NON, 0x0102, b"\xa1\xb2", code=aiocoap.POST, uri_path=("s", "lvl"),
                         uri_query=("u=cm",), content_format=50, payload=b'{"lvl":3}')),
    (coap.Message(coap.ACK, coap.CONTENT, 0x7D34, b"\x20", [(coap.CONTENT_FORMAT, b"\x3c")], b"\xa1\x01\x02"),
     lambda: aio_message(aiocoap.ACK, 0x7D34, b"\x20", code=aiocoap.CONTENT, content_format=60,
                         payload=b"\xa1\x01\x02")),
    (coap.Message(coap.ACK, coap.EMPTY, 0x1234),
     lambda: aio_message(aiocoap.ACK, 0x1234, b"", code=aiocoap.EMPTY)),
    (coap.Message(coap.RST, coap.EMPTY, 0xFFFF),
     lambda: aio_message(aiocoap.RST, 0xFFFF, b"", code=aiocoap.EMPTY)),
    (coap.Message(coap.CON, coap.PUT, 1, b"12345678", [(coap.URI_PATH, b"a" * 300)], b"x" * 500),
     lambda: aio_message(aiocoap.CON, 1, b"12345678", code=aiocoap.PUT, uri_path=("a" * 300,),
                         payload=b"x" * 500)),
]


@pytest.mark.parametrize("ours,theirs", CASES)
def test_same_bytes_both_ways(ours, theirs):
    aio = theirs()
    assert coap.encode(ours) == aio.encode()
    assert coap.decode(aio.encode()) == ours


def test_extended_options_from_aiocoap():
    aio = aio_message(aiocoap.CON, 1, b"", code=aiocoap.GET)
    aio.opt.size1 = 1152
    aio.opt.if_match = [b""]
    aio.opt.add_option(OpaqueOption(300, b"x" * 13))
    aio.opt.add_option(OpaqueOption(65535, b""))
    m = coap.decode(aio.encode())
    assert [n for n, _ in m.options] == [coap.IF_MATCH, coap.SIZE1, 300, 65535]
    assert coap.decode_uint(m.option(coap.SIZE1)) == 1152
    assert coap.encode(m) == aio.encode()


def test_aiocoap_decodes_ours():
    ours = coap.make_request(coap.GET, "/spk/zone%2F1/vol", mid=77, token=b"tok", query="a=1&b=2",
                             accept=coap.CBOR)
    m = aiocoap.Message.decode(coap.encode(ours))
    assert m.mtype == aiocoap.CON and m.mid == 77 and m.token == b"tok" and m.code == aiocoap.GET
    assert m.opt.uri_path == ("spk", "zone/1", "vol")
    assert m.opt.uri_query == ("a=1", "b=2")
    assert int(m.opt.accept) == 60
    resp = coap.make_response(ours, coap.REQUEST_ENTITY_TOO_LARGE, b"too big", content_format=coap.TEXT_PLAIN)
    r = aiocoap.Message.decode(coap.encode(resp))
    assert r.mtype == aiocoap.ACK and r.mid == 77 and r.token == b"tok"
    assert r.code == aiocoap.numbers.codes.Code.REQUEST_ENTITY_TOO_LARGE
    assert int(r.opt.content_format) == 0 and r.payload == b"too big"


# outside aiocoap's option registry (its largest number is 548), so aiocoap keeps the values opaque
_OPAQUE = st.integers(1000, 65535)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2), st.integers(0, 0xFFFF), st.binary(max_size=8),
       st.lists(st.text(max_size=20), max_size=4),
       st.lists(st.tuples(_OPAQUE, st.binary(max_size=40)), max_size=4),
       st.binary(max_size=50))
def test_aiocoap_agrees_on_random_messages(mtype, mid, token, path, opaque, payload):
    code = coap.CONTENT if mtype == coap.ACK else coap.POST
    options = [(coap.URI_PATH, s.encode()) for s in path] + opaque
    ours = coap.Message(mtype, code, mid, token, options, payload)
    raw = coap.encode(ours)
    m = aiocoap.Message.decode(raw)
    assert (int(m.mtype), int(m.code), m.mid, m.token, m.payload) == (mtype, code, mid, token, payload)
    assert list(m.opt.uri_path) == path
    got = sorted((int(o.number), o.encode()) for o in m.opt.option_list() if int(o.number) != coap.URI_PATH)
    assert got == sorted(opaque)
    # and back: aiocoap's own encoding of the same message is byte-identical to ours
    back = aio_message(mtype, mid, token, code=code, payload=payload)
    for o in m.opt.option_list():
        back.opt.add_option(o)
    assert back.encode() == raw
