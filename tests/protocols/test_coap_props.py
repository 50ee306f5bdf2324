"""Hypothesis properties of the CoAP codec (CPython only)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import coap
from protocols.coap import CoAPError, Message, decode, encode

REQUEST_CODES = st.integers(1, 0x1F)
RESPONSE_CODES = st.integers(0x40, 0xBF)
OPTIONS = st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=300)), max_size=coap.COAP_MAX_OPTIONS)


@st.composite
def messages(draw):
    mtype = draw(st.integers(0, 3))
    mid = draw(st.integers(0, 0xFFFF))
    if mtype == coap.RST or (mtype != coap.NON and draw(st.booleans()) and draw(st.booleans())):
        return Message(mtype, coap.EMPTY, mid)
    if mtype == coap.ACK:
        code = draw(RESPONSE_CODES)
    else:
        code = draw(st.one_of(REQUEST_CODES, RESPONSE_CODES))
    return Message(mtype, code, mid, draw(st.binary(max_size=8)), draw(OPTIONS), draw(st.binary(max_size=64)))


@settings(max_examples=300, deadline=None)
@given(messages())
def test_round_trip(m):
    data = encode(m)
    d = decode(data)
    assert d == m
    assert encode(d) == data
    assert coap.rst_for(data) == (coap.encode_empty(coap.RST, m.mid) if m.mtype == coap.CON and m.code == 0
                                  else None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_only_coap_error(data):
    try:
        m = decode(data)
    except CoAPError as e:
        assert e.action in (coap.ACTION_RST, coap.ACTION_IGNORE)
        assert e.field
    else:
        assert encode(m) == data  # the option encoding is canonical
    r = coap.rst_for(data)
    assert r is None or (len(r) == 4 and r[0] == 0x70 and r[2:] == data[2:4])


@settings(max_examples=300, deadline=None)
@given(messages(), st.data())
def test_mutated_bytes_only_coap_error(m, data):
    raw = bytearray(encode(m))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[data.draw(st.integers(0, len(raw))):]
        else:
            i = data.draw(st.integers(0, len(raw)))
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=3))
    try:
        d = decode(bytes(raw))
    except CoAPError:
        return
    assert encode(d) == bytes(raw)


SEG = st.text(st.characters(blacklist_characters="/%", blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(SEG, max_size=6), st.lists(st.text(max_size=10).filter(lambda q: "&" not in q), max_size=4))
def test_path_round_trip(segs, query):
    path = "/" + "/".join(segs)
    m = coap.make_request(coap.GET, path, query=query)
    d = decode(encode(m))
    assert coap.uri_path(d) == path.replace("?", "%3F")
    assert coap.uri_query(d) == query
    assert coap.uri_path(decode(encode(coap.make_request(coap.GET, coap.uri_path(d))))) == coap.uri_path(d)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1), st.lists(st.integers(0, 5000), min_size=1, max_size=60),
       st.lists(st.binary(max_size=20)))
def test_transmitter_bounded(rand01, steps, junk):
    t = coap.Transmitter(coap.make_request(coap.GET, "/x", mid=1, token=b"t"))
    t.start(0, rand01)
    for d in junk:
        t.on_datagram(d)  # never raises on arbitrary input
    now, sends = 0, 0
    for s in steps + [10 ** 6] * 6:
        now += s
        if t.poll(now) is not None:
            sends += 1
    assert sends <= coap.COAP_MAX_RETRANSMIT
    assert t.state in (coap.TIMEOUT, coap.DONE, coap.RESET, coap.ACKED)
