"""CoAP codec and Transmitter: golden vectors (RFC 7252 Appendix A and docs/PROTOCOL.md §10), every rejection
path, retransmission timing with injected time. Runs under CPython and MicroPython alike."""

import binascii

from ptest import raises

from protocols import coap
from protocols.coap import (
    ACK,
    CON,
    NON,
    RST,
    CoAPError,
    Message,
    decode,
    encode,
    make_request,
    make_response,
    rst_for,
)
from protocols.defaults import COAP_EXCHANGE_LIFETIME_MS, COAP_NON_LIFETIME_MS
from protocols.errors import LocalProtocolError


def h(s):
    return binascii.unhexlify(s.replace(" ", ""))


# ---- golden vectors --------------------------------------------------------------------------------------

# RFC 7252 Appendix A, Figure 16/17: CON GET /temperature, MID 0x7d34, no token / token 0x20
GET_TEMP = h("40 01 7d34 bb 74656d7065726174757265")
GET_TEMP_TOKEN = h("41 01 7d34 20 bb 74656d7065726174757265")
# piggybacked 2.05 Content "22.3 C"
ACK_CONTENT = h("61 45 7d34 20 ff 32322e332043")
EMPTY_ACK = h("60 00 7d34")
PING = h("40 00 1234")
RST_1234 = h("70 00 1234")

# docs/PROTOCOL.md §10 worked examples
# NON POST /s/lvl?u=cm, MID 0x0102, token a1b2, Content-Format 50 (application/json), payload {"lvl":3}
DOC_POST = h("52 02 0102 a1b2 b1 73 03 6c766c 11 32 34 753d636d ff 7b226c766c223a337d")
# ACK 2.04 Changed piggybacked for a CON with token a1b2
DOC_CHANGED = h("62 44 0102 a1b2")
# options 1 (If-Match empty), 60 (Size1 = 1152), 300 (value 'x'*13), 65535 (empty)
DOC_EXT = h("40 01 0001 10 d2 2e 0480 dd e3 00 78787878787878787878787878 e0 fdc6")


def test_rfc_get_temperature():
    m = decode(GET_TEMP)
    assert m.mtype == CON and m.code == coap.GET and m.mid == 0x7D34 and m.token == b""
    assert m.options == [(coap.URI_PATH, b"temperature")]
    assert coap.uri_path(m) == "/temperature"
    assert encode(m) == GET_TEMP
    assert encode(make_request(coap.GET, "/temperature", mid=0x7D34)) == GET_TEMP
    assert encode(make_request(coap.GET, "/temperature", mid=0x7D34, token=b"\x20")) == GET_TEMP_TOKEN


def test_rfc_piggybacked_content():
    req = decode(GET_TEMP_TOKEN)
    resp = make_response(req, coap.CONTENT, b"22.3 C")
    assert resp.mtype == ACK and resp.mid == req.mid and resp.token == b"\x20"
    assert encode(resp) == ACK_CONTENT
    m = decode(ACK_CONTENT)
    assert m.code == coap.CONTENT and m.payload == b"22.3 C" and m.options == []
    assert m == resp


def test_empty_messages():
    m = decode(EMPTY_ACK)
    assert m.mtype == ACK and m.code == coap.EMPTY and m.mid == 0x7D34
    assert coap.encode_empty(ACK, 0x7D34) == EMPTY_ACK
    assert coap.ack_for(decode(GET_TEMP)) == EMPTY_ACK
    assert decode(PING).mtype == CON
    assert decode(RST_1234).mtype == RST
    assert encode(Message(RST, coap.EMPTY, 0x1234)) == RST_1234


def test_doc_post_json():
    m = make_request(coap.POST, "/s/lvl", mid=0x0102, token=b"\xa1\xb2", payload=b'{"lvl":3}',
                     confirmable=False, content_format=coap.JSON, query=["u=cm"])
    assert encode(m) == DOC_POST
    d = decode(DOC_POST)
    assert d == m
    assert coap.uri_path(d) == "/s/lvl"
    assert coap.uri_query(d) == ["u=cm"]
    assert coap.content_format(d) == 50
    assert d.is_request() and not d.is_response()


def test_doc_changed():
    req = decode(DOC_POST)
    req.mtype = CON
    assert encode(make_response(req, coap.CHANGED)) == DOC_CHANGED


def test_extended_option_deltas_and_lengths():
    m = Message(CON, coap.GET, 1)
    m.add_option(65535)
    m.add_option(300, b"x" * 13)
    m.add_option(coap.SIZE1, 1152)
    m.add_option(coap.IF_MATCH)
    assert encode(m) == DOC_EXT
    d = decode(DOC_EXT)
    assert [n for n, _ in d.options] == [1, 60, 300, 65535]
    assert coap.decode_uint(d.option(coap.SIZE1)) == 1152
    assert d.option(300) == b"x" * 13
    assert d.option(65535) == b""


def test_extended_boundaries_round_trip():
    # delta and length at each nibble boundary: 12 | 13 (1 ext byte) | 268 | 269 (2 ext bytes) | 65804
    for v in (0, 12, 13, 14, 268, 269, 270, 1000):
        m = Message(CON, coap.POST, 7, b"t", [(v, b"v" * v)], b"p")
        data = encode(m)
        assert decode(data) == m
        head = data[5]
        if v < 13:
            assert head == (v << 4) | v
        elif v < 269:
            assert head == 0xDD and data[6] == v - 13 and data[7] == v - 13
        else:
            assert head == 0xEE and data[6:8] == data[8:10] == bytes(((v - 269) >> 8, (v - 269) & 0xFF))
    big = Message(NON, coap.CONTENT, 1, b"", [(1, b"z" * 65804)])
    assert decode(encode(big)).option(1) == b"z" * 65804
    with raises(LocalProtocolError, match="65804"):
        encode(Message(NON, coap.CONTENT, 1, b"", [(1, b"z" * 65805)]))


def test_token_lengths():
    for n in range(9):
        tok = bytes(range(1, n + 1))
        data = encode(Message(CON, coap.GET, 9, tok))
        assert data[0] == 0x40 | n
        assert decode(data).token == tok
    for tkl in range(9, 16):
        data = bytes((0x40 | tkl, 1, 0, 9)) + b"\x00" * tkl
        with raises(CoAPError, match="token length: is %d" % tkl) as r:
            decode(data)
        assert r.value.action == coap.ACTION_RST and r.value.mid == 9
        with raises(CoAPError, match="expected 0..8") as r:
            decode(bytes((0x50 | tkl, 1, 0, 9)))
        assert r.value.action == coap.ACTION_IGNORE
    with raises(LocalProtocolError, match="token"):
        encode(Message(CON, coap.GET, 1, b"123456789"))


def test_options_sorted_and_repeatable_order_kept():
    m = Message(CON, coap.GET, 1)
    m.add_option(coap.URI_QUERY, "b=2")
    m.add_option(coap.URI_PATH, "z")
    m.add_option(coap.URI_QUERY, "a=1")
    m.add_option(coap.URI_PATH, "y")
    m.add_option(coap.URI_HOST, "node")
    for i in range(10):
        m.add_option(coap.URI_PATH, str(i))
    d = decode(encode(m))
    assert [n for n, _ in d.options][:1] == [coap.URI_HOST]
    assert coap.uri_path(d) == "/z/y/0/1/2/3/4/5/6/7/8/9"
    assert coap.uri_query(d) == ["b=2", "a=1"]
    assert d == m


def test_content_formats():
    cases = ((coap.TEXT_PLAIN, b""), (coap.JSON, b"\x32"), (coap.CBOR, b"\x3c"), (0x1234, b"\x12\x34"))
    for cf, want in cases:
        m = make_request(coap.PUT, "/x", content_format=cf)
        assert m.option(coap.CONTENT_FORMAT) == want
        assert coap.content_format(decode(encode(m))) == cf
    assert coap.content_format(make_request(coap.GET, "/x")) is None
    m = Message(CON, coap.GET, 1, b"", [(coap.CONTENT_FORMAT, b"\x00\x00\x01")])
    assert coap.content_format(m) is None  # over-long value is ignored (§5.4.3)


def test_codes():
    assert coap.code_str(coap.CREATED) == "2.01"
    assert coap.code_str(coap.CHANGED) == "2.04"
    assert coap.code_str(coap.CONTENT) == "2.05"
    assert coap.code_str(coap.BAD_REQUEST) == "4.00"
    assert coap.code_str(coap.UNAUTHORIZED) == "4.01"
    assert coap.code_str(coap.NOT_FOUND) == "4.04"
    assert coap.code_str(coap.METHOD_NOT_ALLOWED) == "4.05"
    assert coap.code_str(coap.REQUEST_ENTITY_TOO_LARGE) == "4.13"
    assert coap.code_str(coap.UNSUPPORTED_CONTENT_FORMAT) == "4.15"
    assert coap.code_str(coap.INTERNAL_SERVER_ERROR) == "5.00"
    assert (coap.GET, coap.POST, coap.PUT, coap.DELETE) == (1, 2, 3, 4)


def test_uri_helpers():
    m = make_request(coap.GET, "/a%2Fb/%25/c%3f", query="x=1&y=2", accept=coap.CBOR)
    assert m.option_values(coap.URI_PATH) == [b"a/b", b"%", b"c?"]
    assert coap.uri_path(m) == "/a%2Fb/%25/c%3F"
    assert coap.uri_query(m) == ["x=1", "y=2"]
    assert m.option(coap.ACCEPT) == b"\x3c"
    assert coap.uri_path(make_request(coap.GET, "")) == "/"
    assert coap.uri_path(make_request(coap.GET, "//a//")) == "/a"
    bad = Message(CON, coap.GET, 5, b"", [(coap.URI_PATH, b"\xff\xfe")])
    with raises(CoAPError, match="Uri-Path"):
        coap.uri_path(bad)
    bad = Message(CON, coap.GET, 5, b"", [(coap.URI_QUERY, b"\xc3")])
    with raises(CoAPError, match="Uri-Query"):
        coap.uri_query(bad)
    with raises(LocalProtocolError, match="percent"):
        make_request(coap.GET, "/a%2")
    with raises(LocalProtocolError, match="percent"):
        make_request(coap.GET, "/a%zz")
    with raises(LocalProtocolError, match="255"):
        make_request(coap.GET, "/" + "a" * 256)
    with raises(LocalProtocolError, match="255"):
        make_request(coap.GET, "/", query=["q" * 256])
    with raises(LocalProtocolError, match="method"):
        make_request(coap.CONTENT, "/")


def test_make_response():
    non = make_request(coap.GET, "/x", mid=1, token=b"tk", confirmable=False)
    r = make_response(non, coap.CONTENT, b"1", content_format=coap.TEXT_PLAIN, mid=2)
    assert r.mtype == NON and r.mid == 2 and r.token == b"tk" and r.option(coap.CONTENT_FORMAT) == b""
    with raises(LocalProtocolError, match="new message id"):
        make_response(non, coap.CONTENT)
    with raises(LocalProtocolError, match="response code"):
        make_response(non, coap.GET, mid=3)
    with raises(LocalProtocolError, match="ACK"):
        make_response(decode(EMPTY_ACK), coap.CONTENT)
    r = make_response(decode(GET_TEMP), coap.NOT_FOUND)
    assert encode(r) == h("60 84 7d34")


def test_unknown_critical():
    m = make_request(coap.GET, "/x")
    assert coap.unknown_critical(m) is None
    m.add_option(2049, b"")  # odd = critical, unknown
    m.add_option(2048, b"")  # even = elective
    assert coap.unknown_critical(m) == 2049
    assert coap.unknown_critical(m, known=(2049, coap.URI_PATH)) is None


# ---- rejection paths -------------------------------------------------------------------------------------

def reject(data, match, action=coap.ACTION_RST, field=None):
    with raises(CoAPError, match=match) as r:
        decode(data)
    e = r.value
    assert e.action == action, (data, e.action)
    assert e.code == "bad_coap"
    if field is not None:
        assert e.field == field
    return e


def test_reject_short_header():
    for n in range(4):
        e = reject(GET_TEMP[:n], "needs 4", coap.ACTION_IGNORE, "header")
        assert e.mid is None
        assert rst_for(GET_TEMP[:n]) is None


def test_reject_version():
    for v in (0, 2, 3):
        data = bytes(((v << 6) | 0x00, 1, 0x12, 0x34))
        e = reject(data, "is %d, expected 1" % v, coap.ACTION_IGNORE, "version")
        assert e.mid == 0x1234
        assert rst_for(data) is None


def test_reject_truncated_token():
    reject(h("48 01 0001 01020304"), "length 8 declared, only 4 bytes", field="token")


def test_reject_empty_with_bytes():
    e = reject(h("40 00 1234 ff"), "must end after the message id", field="code")
    assert e.mid == 0x1234
    reject(h("41 00 1234 00"), "got 1 more bytes")
    reject(h("60 00 1234 b1 61"), "Empty message", coap.ACTION_IGNORE)
    reject(h("50 00 1234"), "must not be Empty", coap.ACTION_IGNORE)


def test_reject_reserved_classes():
    for code in (0x20, 0x3F, 0xC0, 0xE5):
        e = reject(bytes((0x40, code, 0, 1)), "class %d is reserved" % (code >> 5), field="code")
        assert rst_for(bytes((0x40, code, 0, 1))) == h("70 00 0001")
        reject(bytes((0x50, code, 0, 1)), "reserved", coap.ACTION_IGNORE)
        assert e.mtype == CON


def test_reject_rst_and_ack_shapes():
    reject(h("70 45 0001"), "a Reset must be Empty", coap.ACTION_IGNORE)
    reject(h("60 01 0001"), "an ACK must be Empty or carry a response", coap.ACTION_IGNORE)


def test_reject_empty_payload_after_marker():
    reject(GET_TEMP + b"\xff", "followed by an empty payload", field="payload")
    assert rst_for(GET_TEMP + b"\xff") == h("70 00 7d34")
    assert decode(GET_TEMP + b"\xff!").payload == b"!"
    reject(h("40 01 0001 ff"), "offset 4")


def test_reject_reserved_nibbles():
    for b in (0xF0, 0xF1, 0xFE):
        reject(h("40 01 0001") + bytes((b,)), "nibble 15", field="option delta")
    for b in (0x0F, 0x1F, 0xDF, 0xEF):
        reject(h("40 01 0001") + bytes((b, 0, 0, 0)), "nibble 15", field="option length")


def test_reject_truncated_extensions():
    reject(h("40 01 0001 d0"), "nibble 13 needs 1 extension byte", field="option delta")
    reject(h("40 01 0001 e0 01"), "nibble 14 needs 2 extension bytes", field="option delta")
    reject(h("40 01 0001 0d"), "nibble 13 needs 1", field="option length")
    reject(h("40 01 0001 0e 00"), "only 1 left", field="option length")
    reject(h("40 01 0001 13 6162"), "option 1 declares 3 bytes, only 2 left", field="option length")
    reject(h("40 01 0001 0e 0000"), "declares 269 bytes")


def test_reject_option_number_overflow():
    assert decode(h("40 01 0001 e0 fef2")).options == [(65535, b"")]
    reject(h("40 01 0001 e0 fef2 10"), "65536 after delta 1", field="option number")
    reject(h("40 01 0001 e0 ffff"), "expected <= 65535")


def test_reject_too_many_options():
    data = h("40 01 0001") + b"\x00" * 32
    assert len(decode(data).options) == 32
    reject(data + b"\x00", "more than 32 options", field="options")
    with raises(CoAPError, match="more than 1"):
        decode(h("40 01 0001 00 00"), max_options=1)


def test_rst_for():
    assert rst_for(GET_TEMP) is None
    assert rst_for(PING) == RST_1234
    assert rst_for(EMPTY_ACK) is None
    assert rst_for(h("4f 01 abcd")) == h("70 00 abcd")
    assert rst_for(h("5f 01 abcd")) is None  # NON: silently ignored
    assert rst_for(h("6f 45 abcd")) is None  # ACK: silently ignored
    assert rst_for(h("40 01 abcd f1")) == h("70 00 abcd")


def test_trailing_data_and_prefixes():
    # a datagram has no framing: every prefix either decodes or raises CoAPError, never anything else
    for data in (GET_TEMP_TOKEN, ACK_CONTENT, DOC_POST, DOC_EXT):
        for i in range(len(data) + 1):
            try:
                decode(data[:i])
            except CoAPError:
                pass
        # trailing bytes after a payload are payload
        m = decode(DOC_POST + b"!!")
        assert m.payload == b'{"lvl":3}!!'
    # trailing bytes after options are more options
    m = decode(GET_TEMP + b"\x10")
    assert m.options[-1] == (coap.URI_PATH + 1, b"")
    # memoryview / bytearray input, fed whole
    assert decode(bytearray(GET_TEMP)) == decode(memoryview(GET_TEMP))


def test_encode_local_errors():
    for kw, match in (({"mtype": 4}, "type"), ({"code": 0x20}, "reserved"), ({"code": 256}, "code"),
                      ({"mid": 65536}, "message id"), ({"mid": -1}, "message id")):
        m = Message(CON, coap.GET, 1)
        for k in kw:
            setattr(m, k, kw[k])
        with raises(LocalProtocolError, match=match):
            encode(m)
    with raises(LocalProtocolError, match="Empty"):
        encode(Message(CON, coap.EMPTY, 1, b"t"))
    with raises(LocalProtocolError, match="Reset must be Empty"):
        encode(Message(RST, coap.CONTENT, 1))
    with raises(LocalProtocolError, match="option number"):
        encode(Message(CON, coap.GET, 1, b"", [(65536, b"")]))
    with raises(LocalProtocolError, match=">= 0"):
        coap.encode_uint(-1)
    assert coap.encode_uint(0) == b"" and coap.encode_uint(256) == b"\x01\x00"


# ---- Transmitter (§4.2) ----------------------------------------------------------------------------------

def req(token=b"\x20"):
    return make_request(coap.GET, "/temperature", mid=0x7D34, token=token)


def test_transmitter_timing_rand0_gives_up_after_62s():
    t = coap.Transmitter(req())
    first = t.start(1000, 0.0)
    assert first == GET_TEMP_TOKEN and t.state == coap.WAITING
    assert t.deadline_ms == 3000
    sends = []
    now = 1000
    while t.state == coap.WAITING and now < 200000:
        out = t.poll(now)
        if out is not None:
            assert out == first
            sends.append(now)
        now += 1
    # retransmissions at 2, 6, 14, 30 s after start; give up when the 32 s timeout ends (62 s)
    assert sends == [3000, 7000, 15000, 31000]
    assert t.state == coap.TIMEOUT and t.retransmits == 4
    assert now - 1 == 63000
    assert t.poll(10 ** 9) is None


def test_transmitter_timing_rand_max():
    t = coap.Transmitter(req())
    t.start(0, 1.0)
    assert t.timeout_ms == 3000
    assert t.poll(2999) is None
    assert t.poll(3000) == GET_TEMP_TOKEN and t.deadline_ms == 9000
    assert t.poll(9000) is not None and t.deadline_ms == 21000
    assert t.poll(21000) is not None and t.deadline_ms == 45000  # MAX_TRANSMIT_SPAN: last retransmit at 45 s
    assert t.poll(45000) is not None and t.deadline_ms == 93000
    assert t.poll(92999) is None and t.state == coap.WAITING
    assert t.poll(93000) is None and t.state == coap.TIMEOUT  # MAX_TRANSMIT_WAIT 93 s


def test_transmitter_half_random_and_late_poll():
    t = coap.Transmitter(req())
    t.start(0, 0.5)
    assert t.deadline_ms == 2500
    assert t.poll(4000) is not None  # polled late: next timeout counts from the actual send
    assert t.deadline_ms == 9000


def test_transmitter_piggybacked():
    t = coap.Transmitter(req())
    t.start(0, 0.0)
    assert t.on_datagram(h("61 45 7d35 20 ff 31")) is None  # wrong MID
    assert t.on_datagram(h("61 45 7d34 21 ff 31")) is None  # wrong token
    assert t.on_datagram(b"\x00") is None  # garbage
    m = t.on_datagram(ACK_CONTENT)
    assert m.payload == b"22.3 C" and t.state == coap.DONE and t.ack is None
    assert t.poll(10 ** 6) is None
    assert t.on_datagram(ACK_CONTENT) is None  # duplicate ACK ignored


def test_transmitter_separate_response():
    t = coap.Transmitter(req())
    t.start(0, 0.0)
    assert t.on_datagram(EMPTY_ACK).code == coap.EMPTY
    assert t.state == coap.ACKED and t.deadline_ms is None
    assert t.poll(10 ** 6) is None  # no more retransmissions
    assert t.on_datagram(EMPTY_ACK) is None
    sep = h("41 45 0099 20 ff 3232")  # CON 2.05 separate response, new MID, our token
    m = t.on_datagram(sep)
    assert m.payload == b"22" and t.state == coap.DONE
    assert t.ack == h("60 00 0099")
    assert t.on_datagram(sep) is None and t.ack == h("60 00 0099")  # duplicate: ACK again
    assert t.on_datagram(GET_TEMP) is None and t.ack is None


def test_transmitter_response_before_ack_and_reset():
    t = coap.Transmitter(req())
    t.start(0, 0.0)
    assert t.on_datagram(h("51 45 0099 21 ff 3232")) is None  # other token
    assert t.on_datagram(h("51 01 0099 20")) is None  # a request with our token is no response
    m = t.on_datagram(h("51 45 0099 20 ff 3232"))  # NON response, ACK lost
    assert m.mtype == NON and t.state == coap.DONE and t.ack is None
    t = coap.Transmitter(req())
    t.start(0, 0.0)
    assert t.on_datagram(h("70 00 7d33")) is None
    assert t.on_datagram(h("70 00 7d34")).mtype == RST and t.state == coap.RESET
    t = coap.Transmitter(req())
    t.start(0, 0.0)
    t.on_datagram(EMPTY_ACK)
    assert t.on_datagram(h("70 00 7d34")) is None and t.state == coap.ACKED  # RST after ACK: stale


def test_transmitter_misuse():
    with raises(LocalProtocolError, match="Confirmable"):
        coap.Transmitter(make_request(coap.GET, "/", confirmable=False))
    t = coap.Transmitter(req())
    with raises(LocalProtocolError, match="before start"):
        t.on_datagram(ACK_CONTENT)
    assert t.poll(0) is None
    with raises(LocalProtocolError, match="rand01"):
        t.start(0, 1.5)
    t.start(0, 0.0)
    with raises(LocalProtocolError, match="cannot start in state 'waiting'"):
        t.start(0, 0.0)
    t.cancel()
    assert t.state == coap.CANCELLED and t.poll(10 ** 6) is None
    with raises(LocalProtocolError, match="cannot cancel"):
        t.cancel()


def test_client_server_back_to_back():
    server_cache = coap.DedupCache()
    t = coap.Transmitter(make_request(coap.PUT, "/spk/vol", mid=0x10, token=b"ab", payload=b"7"))
    wire = t.start(0, 0.0)
    handled = []

    def server(data):
        m = decode(data)
        dup = server_cache.seen(("10.0.0.1", 5683), m, 0)
        if dup is not None:
            return dup
        handled.append(coap.uri_path(m))
        reply = encode(make_response(m, coap.CHANGED))
        server_cache.remember(("10.0.0.1", 5683), m, reply)
        return reply

    server(wire)  # reply lost
    again = t.poll(2000)
    reply = server(again)  # duplicate: cached reply, not handled twice
    assert handled == ["/spk/vol"]
    assert t.on_datagram(reply).code == coap.CHANGED and t.state == coap.DONE


# ---- DedupCache (§4.5) -----------------------------------------------------------------------------------

def test_dedup_lifetimes():
    c = coap.DedupCache(capacity=4)
    con = Message(CON, coap.GET, 5)
    non = Message(NON, coap.GET, 5)
    assert c.seen("a", con, 0) is None
    assert c.seen("a", con, 1) == b""
    c.remember("a", con, b"R")
    assert c.seen("a", con, COAP_EXCHANGE_LIFETIME_MS - 1) == b"R"
    assert c.seen("b", con, 5) is None  # other endpoint, same MID
    assert c.seen("a", con, COAP_EXCHANGE_LIFETIME_MS) is None  # expired: new again
    assert c.seen("n", non, 0) is None
    assert c.seen("n", non, COAP_NON_LIFETIME_MS - 1) == b""
    assert c.seen("n", non, COAP_NON_LIFETIME_MS) is None
    assert c.seen("a", Message(ACK, 0, 5), 0) is None
    with raises(LocalProtocolError, match="remember"):
        c.remember("zz", con, b"")


def test_dedup_bounded():
    c = coap.DedupCache(capacity=2)
    for mid in range(3):
        assert c.seen("e", Message(CON, coap.GET, mid), mid) is None
    assert len(c) == 2 and c.evicted == 1
    assert c.seen("e", Message(CON, coap.GET, 0), 10) is None  # evicted one is new again
    assert c.evicted == 2
    # expired entries are dropped before a live one is evicted
    c.seen("e", Message(CON, coap.GET, 9), 10 ** 7)
    assert c.evicted == 2 and len(c) == 1
    with raises(LocalProtocolError, match="capacity"):
        coap.DedupCache(capacity=0)
