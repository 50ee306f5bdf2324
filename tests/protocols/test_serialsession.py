"""Recorder link session: handshake, tags, window, selective resends, resume. Runs on CPython and MicroPython.

The two ends talk over tests/support/serialsim.py's virtual line (paced, delayed, seeded errors), in virtual time.
"""

import struct

import serialsim as ss
from ptest import raises

from protocols import cliptransfer, serialsession, signing
from protocols import serialframe as sf
from protocols.errors import LocalProtocolError, SessionError

K = bytes(range(32))
NR = bytes(range(16))
NG = bytes(range(16, 32))
# Golden vectors (docs/PROTOCOL.md §20, "Worked example")
HS1 = (b'{"boot":7,"dev":"bwc-0001","fw":"1.2.0","hb_s":30,"hs":1,"mtu":1024,'
       b'"nr":"000102030405060708090a0b0c0d0e0f","officer":"p-0421","v":[1],"win":64}')
HS2 = (b'{"gw":"gw-1","hs":2,"mac":"d768ef8f8daeb64b16edab84add1a5fc066645d13943d2399fb754f5d4471310","mtu":1024,'
       b'"ng":"101112131415161718191a1b1c1d1e1f","nr":"000102030405060708090a0b0c0d0e0f","v":1,"win":64}')
HS3 = (b'{"dev":"bwc-0001","hs":3,"mac":"0df5e41abcb7e86329492bbef62597a71c98e23384be106d709d56259892ed0b",'
       b'"ng":"101112131415161718191a1b1c1d1e1f","nr":"000102030405060708090a0b0c0d0e0f"}')
KS = "dc2112b7c64cb2cae527d483da784da8e139827a0a039204d5f527ffd372c05d"
K_RG = "9573369198726a5c41458a0910506e69559f0939831162f6d75c57bd448d2ae1"
HB_FRAME = ("fbc10102000100300e50" "7b2268625f73223a33302c22736571223a312c227374617465223a2269646c65222c"
            "2275705f73223a36307d" "f2092426" "b4d8")
ACK_FRAME = "fbc10105000100063f11" "0001" "a7082620" "3e99"
DATA_FRAME = "fbc1011300020010dd69" "00000007000003f07461696c" "26829023" "7db4"
CATALOG = (b'{"clips":[{"end":1748766660000,"id":"20250601-083000.mp4","kind":"video","mark":true,"mime":"video/mp4",'
           b'"sha256":"0eab4186793e884baf23a388179b63638b6cbbec858076a086b7c358b8cd8613","size":516,'
           b'"start":1748766600000,"up":false}],"part":0,"parts":1,"v":1}')


def unhex(s):
    return bytes(int(s[i:i + 2], 16) for i in range(0, len(s), 2))


class Fixed:
    """rand(n) handing out the given nonces in turn."""

    def __init__(self, *vals):
        self.vals = list(vals)

    def __call__(self, n):
        return self.vals.pop(0)


def test_golden_handshake_and_session_keys():
    rec = serialsession.SerialSession("recorder", "bwc-0001", key=K, rand=Fixed(NR), fw="1.2.0", boot=7, hb_s=30,
                                      officer="p-0421", win=64)
    gw = serialsession.SerialSession("gateway", "gw-1", key_for={"bwc-0001": K}.get, rand=Fixed(NG), win=64)
    rec.start(0)
    f1 = sf.decode_frame(rec.data_to_send(0))
    assert f1.type == sf.TYPE_HELLO and f1.payload == HS1
    gw.receive_data(f1.encode(), 1)
    f2 = sf.decode_frame(gw.data_to_send(1))
    assert f2.payload == HS2
    rec.receive_data(f2.encode(), 2)
    assert isinstance(rec.next_event(), serialsession.Established)
    f3 = sf.decode_frame(rec.data_to_send(2))
    assert f3.payload == HS3
    gw.receive_data(f3.encode(), 3)
    ev = gw.next_event()
    assert isinstance(ev, serialsession.Established) and ev.peer == "bwc-0001" and ev.info["officer"] == "p-0421"
    ks = signing.hmac_sha256(K, b"lookout/1|serial|" + NG + NR)
    assert ks.hex() == KS and signing.hmac_sha256(ks, b"R>G").hex() == K_RG
    # the first session frame and the gateway's ACK of it, byte for byte
    rec.send(sf.TYPE_HEARTBEAT, b'{"hb_s":30,"seq":1,"state":"idle","up_s":60}')
    wire = rec.data_to_send(4)
    assert wire == unhex(HB_FRAME)
    gw.receive_data(wire, 5)
    ev = gw.next_event()
    assert isinstance(ev, serialsession.Received) and ev.type == sf.TYPE_HEARTBEAT and ev.seq == 1
    assert gw.data_to_send(5) == unhex(ACK_FRAME)
    rec.send(sf.TYPE_CLIP_DATA, cliptransfer.encode_data(7, 1008, b"tail"))
    assert rec.data_to_send(6) == unhex(DATA_FRAME)
    rec.receive_data(unhex(ACK_FRAME), 7)
    assert rec.in_flight == 1  # the heartbeat is confirmed, the piece not yet


def test_hello_codec():
    for raw in (HS1, HS2, HS3, b'{"gw":"gw-1","hs":0}'):
        d = serialsession.decode_hello(raw)
        assert serialsession.encode_hello(d) == raw
    signing.verify(K, "hello", serialsession.decode_hello(HS2))
    signing.verify(K, "hello", serialsession.decode_hello(HS3))
    for bad, field in ((b'{"hs":4}', "hs"), (b'{"hs":1,"dev":"bwc-0001","fw":"1","v":[1],"mtu":100,"win":4,'
                                               b'"nr":"000102030405060708090a0b0c0d0e0f"}', "mtu"),
                       (b'{"hs":0,"gw":"GW"}', "gw"), (b'{"hs":0}', "gw"), (b'{"hs":0,"gw":"g","z":1}', "z"),
                       (b'{"hs":3,"dev":"d","ng":"00","nr":"00","mac":"00"}', "nr"), (b"[1]", "hello"),
                       (b"\xff", "hello"), (b'{"hs":2,"gw":"g","nr":"000102030405060708090a0b0c0d0e0f"}', "v")):
        with raises(SessionError) as r:
            serialsession.decode_hello(bad)
        assert r.value.field == field, (bad, r.value)
    with raises(LocalProtocolError):
        serialsession.encode_hello({"hs": 9})


def test_catalog_codec():
    d = serialsession.decode_catalog(CATALOG)
    assert d["clips"][0]["mark"] is True and serialsession.encode_catalog(d) == CATALOG
    for bad in (b'{"v":2,"clips":[]}', b'{"v":1,"clips":[{"id":"../x"}]}', b'{"v":1,"part":2,"parts":1,"clips":[]}',
                b'{"v":1,"clips":[{"id":"a","sha256":"' + b"0" * 64 + b'","size":1,"start":5,"end":4,"kind":"video",'
                b'"mime":"video/mp4"}]}', b'{"v":1,"clips":{}}'):
        with raises(SessionError):
            serialsession.decode_catalog(bad)


def test_refusals_unknown_device_wrong_key_and_version():
    rec, gw = ss.pair()
    gw._key_for = {}.get
    link = ss.Link(rec, gw)
    rec.start(0)
    link.run(lambda: any(isinstance(e, serialsession.Refused) for e in link.rec_events), 5000)
    r = [e for e in link.rec_events if isinstance(e, serialsession.Refused)][0]
    assert r.code == "unknown_device" and not rec.established
    assert [e.code for e in link.gw_events if isinstance(e, serialsession.Refused)] == ["unknown_device"]
    # a recorder with the wrong key: it cannot verify the gateway's hs2, and never gets a session
    rec, gw = ss.pair()
    rec._key = bytes(32)
    link = ss.Link(rec, gw)
    rec.start(0)
    link.run(lambda: any(isinstance(e, serialsession.Refused) for e in link.rec_events), 5000)
    assert [e.code for e in link.rec_events if isinstance(e, serialsession.Refused)][0] == "bad_mac"
    assert not gw.established
    # a forged hs3 (right nonces, wrong key) is refused by the gateway
    rec, gw = ss.pair()
    link = ss.Link(rec, gw)
    rec.start(0)
    link.step()
    link.now += 100
    link.step()  # hs1 reached the gateway, hs2 is on its way
    dev, nr, ng = gw._pending[0], gw._pending[1], gw._pending[2]
    forged = signing.sign(bytes(32), "hello", {"hs": 3, "dev": dev, "ng": ng.hex(), "nr": nr.hex()})
    gw.receive_data(sf.encode_frame(sf.TYPE_HELLO, 0, serialsession.encode_hello(forged), 512), 200)
    ev = gw.next_event()
    assert isinstance(ev, serialsession.Refused) and ev.code == "bad_mac" and not gw.established
    # no common version
    rec, gw = ss.pair(versions=(9,))
    link = ss.Link(rec, gw)
    rec.start(0)
    link.run(lambda: any(isinstance(e, serialsession.Refused) for e in link.rec_events), 5000)
    assert [e.code for e in link.rec_events if isinstance(e, serialsession.Refused)] == ["version"]


def test_forged_and_replayed_frames_are_dropped():
    rec, gw = ss.pair()
    link = ss.Link(rec, gw)
    ss.connect(link)
    rec.send(sf.TYPE_EVENT, b'{"x":1}')
    wire = rec.data_to_send(link.now)
    f = sf.decode_frame(wire)
    # same header and CRCs, one tag bit flipped: CRC fine, tag not
    bad = bytearray(f.payload)
    bad[-1] ^= 1
    gw.receive_data(sf.encode_frame(f.type, f.seq, bytes(bad)), link.now)
    assert gw.next_event() is serialsession.NEED_DATA and gw.stats["bad_tags"] == 1
    assert gw.data_to_send(link.now) == b""  # nothing acknowledged
    gw.receive_data(wire, link.now)
    assert gw.next_event().payload == b'{"x":1}'
    # the same bytes in a later session (a recording of the line replayed) fail the new session's tag
    gw.receive_data(sf.encode_frame(sf.TYPE_HELLO, 0, b'{"boot":1,"dev":"bwc-0001","fw":"1","hs":1,"mtu":1024,'
                                                       b'"nr":"00000000000000000000000000000000","v":[1],"win":8}',
                                    512), link.now)
    rec2, _ = ss.pair(seed=99)
    link2 = ss.Link(rec2, gw)
    link2.now = link.now
    ss.connect(link2)
    tags = gw.stats["bad_tags"]
    gw.receive_data(wire, link2.now)
    while gw.next_event() is not serialsession.NEED_DATA:
        pass
    assert gw.stats["bad_tags"] == tags + 1


def test_a_hello_nobody_authenticated_does_not_end_the_open_session():
    # anyone who can write to the line can send a step-1 HELLO naming the recorder; the session it would replace
    # ends only once the new handshake proved the key (hs3), else one forged frame knocks the recorder offline
    rec, gw = ss.pair()
    link = ss.Link(rec, gw)
    ss.connect(link)
    hs1 = serialsession.encode_hello({"hs": 1, "dev": "bwc-0001", "fw": "x", "v": [1], "mtu": 1024, "win": 8,
                                      "nr": "ab" * 16, "boot": 1, "hb_s": 30})
    for _ in range(3):
        gw.receive_data(sf.encode_frame(sf.TYPE_HELLO, 0, hs1, 512), link.now)
        link.run(lambda: True)
    assert gw.established and rec.established
    assert not [e for e in link.gw_events if isinstance(e, serialsession.Lost)]
    rec.send(sf.TYPE_EVENT, b'{"still":1}')
    link.run(lambda: any(isinstance(e, serialsession.Received) and e.payload == b'{"still":1}'
                         for e in link.gw_events), 5000)
    # a forged hs3 for that pending handshake fails its MAC: still the same session
    hs3 = serialsession.encode_hello({"hs": 3, "dev": "bwc-0001", "ng": "00" * 16, "nr": "ab" * 16,
                                      "mac": "00" * 32})
    gw.receive_data(sf.encode_frame(sf.TYPE_HELLO, 0, hs3, 512), link.now)
    link.run(lambda: True)
    assert gw.established and not [e for e in link.gw_events if isinstance(e, serialsession.Lost)]
    # the real recorder rebooting (its own key) still replaces the session
    rec2 = serialsession.SerialSession("recorder", "bwc-0001", key=ss.KEY, rand=ss.Rng(8).bytes, boot=2)
    link.rec = rec2
    link.up.queue = []
    rec2.start(link.now)
    link.run(lambda: rec2.established and gw.established and gw._session_nr == rec2._nr, 10000)
    assert [e.reason for e in link.gw_events if isinstance(e, serialsession.Lost)] == ["rehello"]


def test_window_selective_resend_and_in_order_delivery():
    rec, gw = ss.pair(win=8)
    link = ss.Link(rec, gw, bps=92160, latency_ms=25)
    ss.connect(link)
    base = len(link.gw_events)
    for i in range(20):
        rec.send(sf.TYPE_EVENT, b'{"i":%d}' % i)
    wire = rec.data_to_send(link.now)
    frames = []
    dec = sf.FrameDecoder()
    dec.receive_data(wire)
    while True:
        f = dec.next_event()
        if f is sf.NEED_DATA:
            break
        frames.append(f)
    assert len(frames) == 8 and rec.in_flight == 8  # the gateway's window (8) bounds what is in flight
    gw.receive_data(b"".join(f.encode() for i, f in enumerate(frames) if i != 2), link.now)  # third one lost
    got = []
    while True:
        ev = gw.next_event()
        if ev is serialsession.NEED_DATA:
            break
        got.append(ev.payload)
    assert got == [b'{"i":0}', b'{"i":1}']  # the rest wait for the hole, in order
    rec.receive_data(gw.data_to_send(link.now), link.now)  # ACK 2 + mask: the line never reorders -> resend
    again = rec.data_to_send(link.now)
    assert sf.decode_frame(again[:sf.OVERHEAD + len(frames[2].payload)]) == frames[2]
    assert rec.stats["frames_resent"] == 1 and rec.stats["losses"] == 1
    gw.receive_data(again, link.now)
    link.run(lambda: not rec.in_flight and not rec._out, 20000)
    payloads = got + [e.payload for e in link.gw_events[base:] if isinstance(e, serialsession.Received)]
    assert payloads == [b'{"i":%d}' % i for i in range(20)]
    assert rec.stats["frames_resent"] == 1  # only the lost frame went twice


def test_nack_resends_at_once_and_ack_waits_for_the_caller():
    rec, gw = ss.pair()
    link = ss.Link(rec, gw)
    ss.connect(link)
    rec.send(sf.TYPE_EVENT, b'{"e":1}')
    f = sf.decode_frame(rec.data_to_send(link.now))
    p = bytearray(f.payload)
    p[0] ^= 0x40
    raw = bytearray(f.encode())
    raw[sf.HEADER_LEN] ^= 0x40  # two payload bits flipped: header fine, CRC bad and beyond repair -> NACK
    raw[sf.HEADER_LEN + 2] ^= 0x01
    gw.receive_data(bytes(raw), link.now + 100)
    gw.line_idle(link.now + 100)  # nothing follows: the decoder reports the bad frame now
    nack = sf.decode_frame(gw.data_to_send(link.now + 100))
    assert nack.type == sf.TYPE_NACK and sf.decode_nack(nack.payload[:3]) == (f.seq, sf.NACK_BAD_CRC)
    rec.receive_data(nack.encode(), link.now + 200)
    again = rec.data_to_send(link.now + 200)
    assert sf.decode_frame(again) == f  # byte for byte the same frame
    gw.receive_data(again, link.now + 300)
    ack = sf.decode_frame(gw.data_to_send(link.now + 300))  # delivered but not taken by the caller yet:
    assert sf.decode_ack(ack.payload[:-4]) == (f.seq - 1, 0)  # the ACK does not cover it
    assert gw.next_event().payload == b'{"e":1}'
    ack = sf.decode_frame(gw.data_to_send(link.now + 300))
    assert sf.decode_ack(ack.payload[:-4]) == (f.seq, 0)


def transfer(size, bps=92160, ber=0.0, drop=0.0, seed=3, win=None):
    rec, gw = ss.pair(win=win)
    link = ss.Link(rec, gw, bps=bps, latency_ms=25, ber=ber, drop=drop, seed=seed)
    ss.connect(link)
    data = ss.Rng(seed).bytes(size)
    pusher = ss.Pusher(rec, data)
    catcher = ss.Catcher(gw)
    link.on_rec = pusher
    link.on_gw = catcher
    pusher.push.start()
    link.run(lambda: pusher.push.state == "done", 300000)
    assert catcher.rx.state == "complete" and catcher.rx.sink.data == data
    return rec, gw, link, pusher


def test_noisy_line_transfer_is_bit_exact():
    rec, gw, link, pusher = transfer(24000, ber=1e-4, drop=2e-5)
    assert link.up.flipped + link.up.dropped > 0 and rec.stats["frames_resent"] > 0
    assert pusher.push.stream.resent_confirmed == 0
    assert rec.piece_len() < rec.mtu_eff - 12  # the pieces shrank on the noisy line


def test_piece_length_follows_the_error_rate():
    rec, gw = ss.pair()
    assert rec.piece_len() == 1024 - 4 - 8
    rec._bits, rec._loss = 1e6, 10.0  # p = 1e-5 -> L = sqrt(144 + 24 / 8e-5) - 12 ~ 536
    assert 520 <= rec.piece_len() <= 550
    rec._bits, rec._loss = 1e6, 1000.0
    assert rec.piece_len() == 128


def test_resume_after_gateway_restart_and_cable_pull_resends_nothing_confirmed():
    rec, gw = ss.pair()
    link = ss.Link(rec, gw, bps=92160, latency_ms=25)
    ss.connect(link)
    data = ss.Rng(1).bytes(60000)
    pusher = ss.Pusher(rec, data)
    catcher = ss.Catcher(gw)
    link.on_rec = pusher
    link.on_gw = catcher
    pusher.push.start()
    link.run(lambda: catcher.rx is not None and catcher.rx.offset > 20000, 60000)
    # the gateway dies: a new process, a new session; the partial file and its length survive
    held = catcher.rx.offset
    sink = catcher.rx.sink
    gw2 = serialsession.SerialSession("gateway", "gw-1", key_for={"bwc-0001": ss.KEY}.get, rand=ss.Rng(5).bytes)
    c2 = ss.Catcher(gw2)
    c2.rx = cliptransfer.ClipReceiver(catcher.rx.manifest, 1 << 30, sink, offset=held)
    link.gw = gw2
    link.on_gw = c2
    link.down.queue = []  # whatever the dead gateway had on the wire is gone
    gw2.start(link.now)  # its first act: a probe ("say HELLO")
    link.run(lambda: c2.rx.offset > held + 10000, 60000)
    assert pusher.push.stream.resumes == 1 and pusher.push.stream.resent_confirmed == 0
    # the cable is pulled for a while, then plugged back: the recorder re-handshakes and resumes
    link.up.cut = link.down.cut = True
    link.run(lambda: not rec.established, 120000)
    link.up.cut = link.down.cut = False
    link.run(lambda: pusher.push.state == "done", 120000)
    assert c2.rx.state == "complete" and c2.rx.sink.data == data
    assert pusher.push.stream.resumes == 2 and pusher.push.stream.resent_confirmed == 0
    assert c2.rx.duplicates == 0  # not one piece below the confirmed offset arrived again


def test_recorder_power_loss_resumes_from_the_gateways_offset():
    rec, gw = ss.pair()
    link = ss.Link(rec, gw, bps=92160, latency_ms=25)
    ss.connect(link)
    data = ss.Rng(2).bytes(40000)
    pusher = ss.Pusher(rec, data, tid=9)
    catcher = ss.Catcher(gw)
    link.on_rec = pusher
    link.on_gw = catcher
    pusher.push.start()
    link.run(lambda: catcher.rx is not None and catcher.rx.offset > 15000, 60000)
    held = catcher.rx.offset
    # power loss: a new session object (boot counter + 1) and a new sender of the same clip and tid
    rec2 = serialsession.SerialSession("recorder", "bwc-0001", key=ss.KEY, rand=ss.Rng(8).bytes, boot=1)
    p2 = ss.Pusher(rec2, data, tid=9)
    link.rec = rec2
    link.on_rec = p2
    link.up.queue = []
    rec2.start(link.now)
    link.run(lambda: rec2.established, 10000)
    p2.push.start(fresh=False)  # it offered this clip before the power loss (a flag kept in flash)
    link.run(lambda: p2.push.state == "done", 60000)
    assert catcher.rx.sink.data == data and catcher.rx.duplicates == 0
    assert p2.push.stream.sent == len(data) - held  # it started at the gateway's confirmed offset
    assert any(isinstance(e, serialsession.Lost) and e.reason == "rehello" for e in link.gw_events)


def test_session_survives_garbage_and_frames_without_session():
    rec, gw = ss.pair()
    for junk in (b"\xfb\xc1" * 50, bytes(range(256)), sf.encode_frame(sf.TYPE_EVENT, 3, b"{}"),
                 sf.encode_frame(sf.TYPE_ACK, 0, b"\x00"), sf.encode_frame(sf.TYPE_HELLO, 0, b"{"),
                 sf.encode_frame(sf.TYPE_HELLO, 0, b'{"hs":2,"gw":"gw-1","nr":"' + b"0" * 32 + b'","err":"x"}')):
        gw.receive_data(junk, 0)
        rec.receive_data(junk, 0)
    while gw.next_event() is not serialsession.NEED_DATA:
        pass
    probe = sf.decode_frame(gw.data_to_send(0))  # session frames without a session: "say HELLO"
    assert probe.type == sf.TYPE_HELLO and serialsession.decode_hello(probe.payload) == {"hs": 0, "gw": "gw-1"}
    assert gw.data_to_send(10) == b""  # at most one probe per SERIAL_PROBE_MS


def test_misuse_is_a_local_error():
    with raises(LocalProtocolError):
        serialsession.SerialSession("relay", "x", key=K, rand=Fixed())
    with raises(LocalProtocolError):
        serialsession.SerialSession("recorder", "x", key=b"short", rand=Fixed())
    rec, gw = ss.pair()
    with raises(LocalProtocolError):
        rec.send(sf.TYPE_ACK, b"")
    with raises(LocalProtocolError):
        rec.send(sf.TYPE_EVENT, bytes(2000))
    for _ in range(rec.room()):
        rec.send(sf.TYPE_EVENT, b"{}")
    with raises(LocalProtocolError):
        rec.send(sf.TYPE_EVENT, b"{}")


def test_carry_over_keeps_events_and_drops_clip_pieces():
    rec, gw = ss.pair()
    link = ss.Link(rec, gw)
    ss.connect(link)
    rec.send(sf.TYPE_EVENT, b'{"keep":1}', ref="evt")
    rec.send(sf.TYPE_CLIP_DATA, cliptransfer.encode_data(1, 0, b"x"), ref=("data", 1, 1))
    rec.data_to_send(link.now)  # both on the wire ... and lost with the session
    rec.receive_data(sf.encode_frame(sf.TYPE_HELLO, 0, b'{"gw":"gw-1","hs":0}', 512), link.now)
    evs = []
    while True:
        ev = rec.next_event()
        if ev is serialsession.NEED_DATA:
            break
        evs.append(ev)
    assert [type(e).__name__ for e in evs] == ["Dropped", "Lost"] and evs[0].ref == ("data", 1, 1)
    link.up.queue = []
    link.run(lambda: rec.established and gw.established and not rec.in_flight, 20000)
    got = [e.payload for e in link.gw_events if isinstance(e, serialsession.Received)]
    assert got[-1] == b'{"keep":1}'
    assert struct.unpack(">I", b"\x00" + bytes(3))[0] == 0


def test_one_flipped_bit_is_repaired_without_a_resend():
    """At BER 1e-5 nearly every damaged frame has one flipped bit: the CRC syndrome locates it, the tag confirms."""
    rec, gw = ss.pair()
    link = ss.Link(rec, gw)
    ss.connect(link)
    rec.send(sf.TYPE_EVENT, b'{"e":2}')
    raw = bytearray(rec.data_to_send(link.now))
    raw[sf.HEADER_LEN + 3] ^= 0x10
    gw.receive_data(bytes(raw), link.now + 50)
    ev = gw.next_event()
    assert isinstance(ev, serialsession.Received) and ev.payload == b'{"e":2}'
    assert gw.stats["corrected"] == 1 and gw.stats["frame_errors"] == 0
    rec.receive_data(gw.data_to_send(link.now + 50), link.now + 100)
    assert rec.in_flight == 0 and rec.stats["frames_resent"] == 0
