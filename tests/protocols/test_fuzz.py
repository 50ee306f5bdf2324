"""Every decoder, fed seeded mutations of golden inputs, raises only its own error: on CPython and, the point of
this module, on real MicroPython, where a node would otherwise crash on one bad packet (see tests/support/fuzz.py).
The CPython-only hypothesis modules (``*_props.py``) explore further; this one keeps the property on both runtimes.
"""

from fuzz import only_raises

from protocols import (cliptransfer, coap, messages, mqttpacket, mqttserver, nmea, opapi, serialframe, serialsession,
                       signing, topics)
from protocols.errors import (CoAPError, FrameError, MessageError, MQTTPacketError, NMEAError, SessionError,
                              TopicError, TransferError)

T0 = 1764000000000
KEY = bytes(range(32))
N = 250


def test_messages():
    hb = messages.encode("hb", {"seq": 5, "up_s": 100, "hb_s": 30, "rssi": -70, "fw": "0.1.0", "err": "x\u00e9"})
    loc = messages.encode("loc", {"seq": 1, "ts": T0, "lat": 1, "lon": 2, "fix": 1, "src": "gps"})
    cmd = messages.command("c1", "spk-01", "play", {"clip": "nofish", "repeat": 2, "l": [1, "a"]}, T0, T0 + 1, 1, 3)
    cmdb = messages.encode("cmd", signing.sign(KEY, "cmd", cmd))
    evt = messages.encode("evt", {"id": "e1", "seq": 1, "ts": T0, "kind": "presence", "sev": "info",
                                  "evidence": ["sha256:" + "0" * 64]})
    golden = [hb, loc, cmdb, evt]
    for kind in ("hb", "loc", "cmd", "evt", "res", "birth"):
        assert only_raises(lambda d, k=kind: messages.decode(k, d), golden, MessageError, N, seed=len(kind)) > N


def test_signed_command_checks():
    cmd = messages.encode("cmd", signing.sign(KEY, "cmd", messages.command("c1", "spk-01", "stop", {}, T0, T0 + 9,
                                                                           1, 3)))

    def check(d):
        signing.check_command(KEY, messages.decode("cmd", d), "spk-01", 0, T0)

    from protocols.errors import AuthError
    only_raises(check, [cmd], (MessageError, AuthError), N)


def test_topics():
    only_raises(topics.parse, [b"lookout/v1/s1/spk-01/cmd", b"lookout/v1/s1/cam-2/up/x7"], TopicError, N)


def test_nmea():
    golden = [b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
              b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
              b"$GPVTG,,,,,,,,,N*30"]
    only_raises(nmea.parse_sentence, golden, NMEAError, N)

    def stream(d):
        r = nmea.NMEAReader()
        r.receive_data(d + b"\r\n" + d)
        for _ in range(100):
            if r.next_event() is nmea.NEED_DATA:
                break
        r.receive_data(b"")

    only_raises(stream, golden, (), N, seed=7)  # a stream reader reports garbage as events, never raises


def test_serial_frames():
    golden = [serialframe.encode_frame(serialframe.TYPE_HELLO, 1, b'{"dev":"bwc-0001"}'),
              serialframe.encode_frame(serialframe.TYPE_ACK, 9, serialframe.encode_ack(7))]
    only_raises(serialframe.decode_frame, golden, FrameError, N)

    def stream(d):
        dec = serialframe.FrameDecoder()
        dec.receive_data(d + golden[0])
        for _ in range(200):
            if dec.next_event() is serialframe.NEED_DATA:
                break

    only_raises(stream, golden, (), N, seed=3)

    def repair(d):  # the single-bit repair never raises, whatever the bytes
        serialframe.correct_single_bit(d)

    only_raises(repair, [g[serialframe.HEADER_LEN:] for g in golden], (), N, seed=4)


def test_serial_session_payloads_and_streams():
    hello = b'{"dev":"bwc-0001","fw":"1","hs":1,"mtu":1024,"nr":"000102030405060708090a0b0c0d0e0f","v":[1],"win":8}'
    cat = (b'{"clips":[{"end":2,"id":"a.mp4","kind":"video","mime":"video/mp4","sha256":"' + b"0" * 64
           + b'","size":5,"start":1}],"v":1}')
    only_raises(serialsession.decode_hello, [hello, b'{"gw":"gw-1","hs":0}'], SessionError, N)
    only_raises(serialsession.decode_catalog, [cat], SessionError, N, seed=2)
    keys = {"bwc-0001": bytes(range(32))}

    def gateway_end(d):  # a gateway session fed mutated bytes: events, never an exception
        g = serialsession.SerialSession("gateway", "gw-1", key_for=keys.get, rand=lambda n: bytes(n))
        g.receive_data(d, 0)
        g.line_idle(1)
        for _ in range(50):
            if g.next_event() is serialsession.NEED_DATA:
                break
        g.data_to_send(2)

    frames = [serialframe.encode_frame(serialframe.TYPE_HELLO, 0, hello),
              serialframe.encode_frame(serialframe.TYPE_CLIP_DATA, 3, b"\x00" * 12 + b"tail")]
    only_raises(gateway_end, frames, (), N, seed=3)


def test_clip_transfer():
    s = cliptransfer.ClipSender(bytes(range(200)), 64, "warn-01.wav", 7, "audio", "audio/wav", T0)
    golden = [s.manifest.encode(), s.chunk(0), s.chunk(3)]
    only_raises(cliptransfer.decode_manifest, golden, TransferError, N)
    only_raises(cliptransfer.decode_chunk, golden, TransferError, N, seed=2)
    only_raises(cliptransfer.decode_status, [b'{"have":3,"id":"a","missing":[[2,3]],"state":"receiving",'
                                             b'"tid":7,"v":1}'], TransferError, N, seed=3)

    def receive(d):
        rx = cliptransfer.ClipReceiver(s.manifest, 4096)
        rx.receive_payload(d)

    only_raises(receive, golden[1:], TransferError, N, seed=4)
    only_raises(cliptransfer.decode_data, [cliptransfer.encode_data(7, 1008, b"tail")], TransferError, N, seed=5)


def test_coap():
    req = coap.make_request(coap.POST, "/v1/s1/sen-05/hb", mid=0x1234, token=b"\x5a\x01", payload=b'{"seq":1}',
                            content_format=coap.JSON)
    only_raises(coap.decode, [coap.encode(req), bytes.fromhex("40017d34bb74656d7065726174757265")], CoAPError, N)


def test_mqtt_packets():
    golden = [mqttserver.encode_connack(0, True), mqttserver.encode_suback(1, [1, 0x80]),
              mqttpacket.encode_publish("a/b", b"hi", qos=1, packet_id=10), mqttpacket.encode_puback(3),
              mqttserver.encode_pingresp()]
    only_raises(lambda d: _mqtt_stream(mqttpacket.PacketReader(), d), golden, MQTTPacketError, N)


def test_mqtt_client_packets_at_the_server():
    golden = [mqttpacket.encode_connect("n1", False, 60, "n1", b"pw", "s/n1", b"bye", 1, True),
              mqttpacket.encode_subscribe(1, [("cmd/#", 1), ("a/+", 0)]), mqttpacket.encode_unsubscribe(2, ["a/+"]),
              mqttpacket.encode_publish("a/b", b"hi", qos=1, packet_id=10), mqttpacket.PINGREQ_BYTES]
    only_raises(lambda d: _mqtt_stream(mqttserver.server_reader(), d), golden, MQTTPacketError, N, seed=7)


def _mqtt_stream(r, d):
    r.receive_data(d)
    for _ in range(50):
        if r.next_event() is mqttpacket.NEED_DATA:
            break


def test_operator_api():
    req = opapi.encode_request(opapi.request("r1", "broadcast", "tok", {"to": "spk-01", "clip": "nofish"}))
    only_raises(opapi.decode_request, [req], opapi.OpAPIError, N)
    only_raises(opapi.decode_response, [opapi.encode_response(opapi.response("r1", "ok", {"n": 1}))],
                opapi.OpAPIError, N, seed=5)
