"""CoAP uplink without a network: URI building, response-code mapping, and whole exchanges against a scripted
fake gateway socket (retransmission, timeout, separate response, the MQTTClient-compatible publish policy).

Runs under CPython (pytest) and MicroPython (tests/test_micropython_dual.py; the wasm port has no sockets, so the
gateway is a fake behind the link's ``sock_factory`` hook).
"""

import asyncio

from ptest import raises

try:
    from lookout_node import coap_link
except ImportError:  # CPython: firmware/lib is /lib on a device
    import sys

    sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/firmware/lib")
    from lookout_node import coap_link

from lookout_node import mqtt, uplink

from protocols import coap
from protocols.errors import LocalProtocolError

KEY = "ab" * 32


def _drive(coro):
    if hasattr(asyncio, "run"):
        asyncio.run(coro)
        return None
    return coro


class FakeGateway:
    """A UDP socket stand-in: ``script`` is a list, one entry per datagram the node sends: None = lose it,
    a response code = piggybacked answer, "sep" = empty ACK then a CON separate 2.04, "rst" = Reset."""

    def __init__(self, script=None, default=coap.CHANGED, payload=b"", options=None):
        self.script = list(script or [])
        self.default = default
        self.payload = payload
        self.options = options or []
        self.sent = []  # decoded messages the node sent
        self.inbox = []
        self.closed = False

    def factory(self, host, port):
        self.addr = (host, port)
        return self

    def send(self, data):
        m = coap.decode(data)
        self.sent.append(m)
        if m.mtype == coap.ACK or (m.mtype == coap.CON and m.code == coap.EMPTY and self.script == ["ping"]):
            if m.mtype == coap.CON:
                self.inbox.append(coap.encode_empty(coap.RST, m.mid))
            return len(data)
        what = self.script.pop(0) if self.script else self.default
        if what is None:
            return len(data)
        if what == "rst":
            self.inbox.append(coap.encode_empty(coap.RST, m.mid))
        elif what == "sep":
            self.inbox.append(coap.encode_empty(coap.ACK, m.mid))
            self.inbox.append(coap.encode(coap.Message(coap.CON, coap.CHANGED, 0x7777, m.token)))
        else:
            r = coap.make_response(m, what, self.payload)
            for n, v in self.options:
                r.add_option(n, v)
            self.inbox.append(coap.encode(r))
        return len(data)

    def recv(self, n):
        if not self.inbox:
            raise OSError(11, "EAGAIN")
        return self.inbox.pop(0)

    def close(self):
        self.closed = True


def link(gw, **kw):
    opts = {"site": "dongshan", "device": "sen-01", "ack_timeout_ms": 10, "poll_ms": 2, "rand": lambda: 0.0,
            "backoff_min_ms": 5, "backoff_max_ms": 20, "sock_factory": gw.factory}
    opts.update(kw)
    return coap_link.CoAPLink("127.0.0.1", 5683, **opts)


# ---- pure helpers ------------------------------------------------------------------------------------------

def test_uri_path():
    assert coap_link.uri_path("dongshan", "sen-01", "hb") == "/v1/dongshan/sen-01/hb"
    assert coap_link.uri_path("s", "d", "state") == "/v1/s/d/state"
    with raises(LocalProtocolError, match="channel 'res'"):
        coap_link.uri_path("s", "d", "res")
    with raises(LocalProtocolError, match="device"):
        coap_link.uri_path("s", "Bad/Id", "hb")
    with raises(LocalProtocolError, match="site"):
        coap_link.uri_path("", "d", "hb")


def test_request_bytes_golden():
    gw = FakeGateway()
    lk = link(gw)
    lk._mid = 0x1233
    m = lk._request("/v1/s/d/hb", b'{"seq":1}')
    # CON POST mid 0x1234, token 4 bytes (rand() = 0), Uri-Path v1/s/d/hb, Content-Format 50, payload
    assert coap.encode(m) == bytes.fromhex("44021234" "00000000" "b27631" "0173" "0164" "026862" "1132"
                                           "ff") + b'{"seq":1}'


def test_channel_of():
    assert coap_link.channel_of("hb", "s", "d") == "hb"
    assert coap_link.channel_of("lookout/v1/s/d/evt", "s", "d") == "evt"
    with raises(LocalProtocolError, match="not this node"):
        coap_link.channel_of("lookout/v1/s/other/evt", "s", "d")
    with raises(LocalProtocolError, match="sub-level"):
        coap_link.channel_of("lookout/v1/s/d/up/7", "s", "d")


def test_classify():
    assert coap_link.classify(coap.CHANGED) == coap_link.OK
    assert coap_link.classify(coap.CREATED) == coap_link.OK
    for c in (coap.BAD_REQUEST, coap.NOT_FOUND, coap.METHOD_NOT_ALLOWED, coap.REQUEST_ENTITY_TOO_LARGE,
              coap.UNSUPPORTED_CONTENT_FORMAT, coap.BAD_OPTION):
        assert coap_link.classify(c) == coap_link.REJECTED, coap.code_str(c)
    assert coap_link.classify(coap.UNAUTHORIZED) == coap_link.REFUSED
    assert coap_link.classify(coap.FORBIDDEN) == coap_link.REFUSED
    assert coap_link.classify(coap_link.TOO_MANY_REQUESTS) == coap_link.RETRY
    assert coap_link.classify(coap.SERVICE_UNAVAILABLE) == coap_link.RETRY
    assert coap_link.classify(coap.INTERNAL_SERVER_ERROR) == coap_link.RETRY


def test_result_of():
    req = coap.make_request(coap.POST, "/v1/s/d/hb", 5, b"tk")
    r = coap_link.result_of(coap.make_response(req, coap.BAD_REQUEST, b"seq: required field missing"))
    assert r.kind == coap_link.REJECTED and r.code == coap.BAD_REQUEST
    assert r.diagnostic == "seq: required field missing"
    resp = coap.make_response(req, coap.SERVICE_UNAVAILABLE)
    resp.add_option(coap.MAX_AGE, 30)
    r = coap_link.result_of(resp)
    assert r.kind == coap_link.RETRY and r.max_age_s == 30
    r = coap_link.result_of(coap.decode(coap.encode_empty(coap.RST, 5)))
    assert r.kind == coap_link.RESET and not r.ok


# ---- exchanges against the fake gateway --------------------------------------------------------------------

def test_post_ok_piggybacked():
    async def body():
        gw = FakeGateway()
        lk = link(gw)
        assert await lk.send("hb", b'{"seq":1}') is True
        m = gw.sent[0]
        assert m.mtype == coap.CON and m.code == coap.POST
        assert coap.uri_path(m) == "/v1/dongshan/sen-01/hb"
        assert coap.content_format(m) == coap.JSON and m.payload == b'{"seq":1}'
        assert lk.is_connected() and lk.delivered == 1 and lk.retransmits == 0
        assert await lk.send("loc", b"{}") is True
        assert gw.sent[1].mid == (m.mid + 1) & 0xFFFF  # §4.4: a new MID per new message
    return _drive(body())


def test_retransmits_same_mid_until_acked():
    async def body():
        gw = FakeGateway([None, None, coap.CHANGED])
        lk = link(gw)
        r = await lk.post("evt", b"{}")
        assert r.ok and r.retransmits == 2
        assert len(gw.sent) == 3
        assert gw.sent[0].mid == gw.sent[1].mid == gw.sent[2].mid
        assert coap.encode(gw.sent[0]) == coap.encode(gw.sent[2])  # a retransmission is the same datagram
    return _drive(body())


def test_gives_up_after_max_retransmit():
    async def body():
        gw = FakeGateway(default=None)
        lk = link(gw, max_retransmit=3)
        lk.connected.set()
        assert await lk.send("hb", b"{}") is False
        assert len(gw.sent) == 1 + 3
        assert lk.timeouts == 1 and not lk.is_connected()
        assert "timeout" in lk.last_error
    return _drive(body())


def test_separate_response_is_acked():
    async def body():
        gw = FakeGateway(["sep"])
        lk = link(gw)
        assert await lk.send("evt", b"{}") is True
        acks = [m for m in gw.sent if m.mtype == coap.ACK]
        assert len(acks) == 1 and acks[0].mid == 0x7777 and acks[0].code == coap.EMPTY
    return _drive(body())


def test_rst_is_a_failure():
    async def body():
        gw = FakeGateway(["rst"])
        lk = link(gw)
        r = await lk.post("hb", b"{}")
        assert r.kind == coap_link.RESET and not lk.is_connected()
    return _drive(body())


def test_publish_policy():
    async def body():
        gw = FakeGateway([coap.CHANGED, coap.BAD_REQUEST, coap.SERVICE_UNAVAILABLE])
        gw.payload = b"seq: required"
        lk = link(gw)
        lk.connected.set()
        await lk.publish("lookout/v1/dongshan/sen-01/evt", b"{}", 1)  # 2.04: delivered
        await lk.publish("lookout/v1/dongshan/sen-01/evt", b"{}", 1)  # 4.00: dropped, counted, link stays up
        assert lk.rejected == 1 and "4.00" in lk.last_error and lk.is_connected()
        with raises(mqtt.NotConnected):  # 5.03: the outbox keeps it
            await lk.publish("lookout/v1/dongshan/sen-01/evt", b"{}", 1)
        assert not lk.is_connected()
        with raises(mqtt.NotConnected):  # down: refused at once, nothing sent
            await lk.publish("lookout/v1/dongshan/sen-01/hb", b"{}")
        assert len(gw.sent) == 3
        lk.connected.set()
        await lk.publish("lookout/v1/dongshan/sen-01/res", b"{}", 1)  # no CoAP resource: dropped locally
        assert lk.rejected == 2 and len(gw.sent) == 3
    return _drive(body())


def test_forbidden_takes_the_link_down():
    async def body():
        gw = FakeGateway([coap.FORBIDDEN])
        lk = link(gw)
        lk.connected.set()
        with raises(mqtt.NotConnected):
            await lk.publish("lookout/v1/dongshan/sen-01/hb", b"{}")
        assert lk.rejected == 0 and not lk.is_connected()
    return _drive(body())


def test_start_posts_birth_then_disconnect_posts_will():
    async def body():
        gw = FakeGateway([None, coap.SERVICE_UNAVAILABLE, coap.CHANGED])
        lk = link(gw, birth=("lookout/v1/dongshan/sen-01/state", b'{"online":true}', 1, True),
                  will=("lookout/v1/dongshan/sen-01/state", b'{"online":false}', 1, True))
        await lk.subscribe("lookout/v1/dongshan/sen-01/cmd", 1)
        lk.start()
        for _ in range(500):
            if lk.is_connected():
                break
            await asyncio.sleep_ms(2) if hasattr(asyncio, "sleep_ms") else await asyncio.sleep(0.002)
        assert lk.is_connected() and lk.connects == 1
        births = [m for m in gw.sent if m.payload == b'{"online":true}']
        assert len(births) >= 2 and coap.uri_path(births[-1]) == "/v1/dongshan/sen-01/state"
        await lk.disconnect(publish_will=True)
        assert gw.sent[-1].payload == b'{"online":false}' and gw.closed and not lk.is_connected()
    return _drive(body())


def test_ping():
    async def body():
        gw = FakeGateway(["ping"])
        lk = link(gw)
        assert await lk.ping() is True
        assert gw.sent[0].code == coap.EMPTY and gw.sent[0].mtype == coap.CON
    return _drive(body())


def test_socket_error_is_transient():
    async def body():
        def broken(host, port):
            raise OSError(101, "ENETUNREACH")

        lk = link(FakeGateway(), sock_factory=broken)
        lk.connected.set()
        r = await lk.post("hb", b"{}")
        assert r.kind == coap_link.ERROR and not lk.is_connected()
    return _drive(body())


def test_make_uplink_picks_transport():
    cfg = {"id": "sen-01", "site": "dongshan", "role": "sensor", "key": KEY, "transport": "coap",
           "broker": {"host": "127.0.0.1", "port": 1883}, "coap": {"host": "10.0.0.2", "max_retransmit": 2}}
    lk = uplink.make_uplink(cfg, client_id="sen-01", username="sen-01", password=None, clean_session=False,
                            on_log=None, backoff_min_ms=50)
    assert isinstance(lk, coap_link.CoAPLink)
    assert lk.host == "10.0.0.2" and lk.port == 5683 and lk.max_retransmit == 2 and lk.backoff_min_ms == 50
    cfg["transport"] = "mqtt"
    c = uplink.make_uplink(cfg, client_id="sen-01", keepalive_s=30, max_retransmit=9)
    assert isinstance(c, mqtt.MQTTClient) and c.port == 1883 and c.client_id == "sen-01"
    cfg["transport"] = "smoke"
    with raises(ValueError, match="transport"):
        uplink.make_uplink(cfg)


def test_make_uplink_signs_birth_and_will_for_coap():
    """State over CoAP reaches MQTT under the gateway's login, so the bridge and the gateway believe a birth or
    death only with the device's MAC (purpose ``state``): make_uplink signs both in CoAP mode."""
    from protocols import messages, signing

    cfg = {"id": "sen-01", "site": "dongshan", "role": "sensor", "key": KEY, "transport": "coap",
           "broker": {"host": "127.0.0.1", "port": 1883}, "coap": {"host": "10.0.0.2"}}
    topic = "lookout/v1/dongshan/sen-01/state"
    birth = messages.encode("birth", messages.birth("sensor", 7, "0.1.0", 600, caps=["ping"], site="dongshan"))
    death = messages.encode("death", messages.death(7, "connection lost"))
    lk = uplink.make_uplink(cfg, birth=(topic, birth, 1, True), will=(topic, death, 1, True))
    key = bytes.fromhex(KEY)
    for (t, payload, qos, retain), kind in ((lk.birth, "birth"), (lk.will, "death")):
        msg = messages.decode(kind, payload)
        signing.verify(key, "state", msg)  # raises AuthError if not
        assert (t, qos, retain) == (topic, 1, True) and msg["bdseq"] == 7
