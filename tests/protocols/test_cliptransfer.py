"""Clip transfer: manifest, chunk layout, receiver state machine. Runs on CPython and MicroPython."""

import hashlib
import json

from ptest import raises

from protocols import cliptransfer as ct
from protocols import serialframe as sf
from protocols.errors import LocalProtocolError, TransferError

DATA = bytes(range(256)) * 2 + b"tail"  # 516 bytes -> 5 chunks of 128 (last one 4 bytes)
SHA = "0eab4186793e884baf23a388179b63638b6cbbec858076a086b7c358b8cd8613"
TS = 1717000000000
# Golden vectors (docs/PROTOCOL.md §12, "Worked examples")
MANIFEST_JSON = (b'{"chunk":128,"id":"warn-01.wav","kind":"audio","mime":"audio/wav","n":5,'
                 b'"sha256":"' + SHA.encode() + b'","size":516,"tid":7,"ts":1717000000000,"v":1}')
CHUNK4 = b"\x01\x00\x00\x00\x00\x07\x00\x00\x00\x04tail"
STATUS = b'{"have":3,"id":"warn-01.wav","missing":[[2,3],[4,5]],"state":"receiving","tid":7,"v":1}'


def sender(data=DATA, chunk=128):
    return ct.ClipSender(data, chunk, "warn-01.wav", 7, "audio", "audio/wav", TS)


def manifest_dict(**kw):
    d = json.loads(MANIFEST_JSON)
    for k, v in kw.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    return d


class FileLike:
    """A seekable reader like a MicroPython file opened 'rb'."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def seek(self, pos):
        self.pos = pos

    def read(self, n):
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def readinto(self, mv):
        out = self.read(len(mv))
        mv[0:len(out)] = out
        return len(out)


class FlashSink:
    """Records calls like a node's file-backed sink would see them."""

    def __init__(self, size):
        self.buf = bytearray(size)
        self.writes = []
        self.reads = 0
        self.committed = False
        self.discarded = False

    def write_at(self, offset, data):
        self.writes.append((offset, len(data)))
        self.buf[offset:offset + len(data)] = data

    def read_all(self, callback):
        self.reads += 1
        for i in range(0, len(self.buf), 100):
            callback(self.buf[i:i + 100])

    def commit(self):
        self.committed = True

    def discard(self):
        self.discarded = True


def test_sha256_of_vector():
    assert hashlib.sha256(DATA).digest() == bytes(int(SHA[i:i + 2], 16) for i in range(0, 64, 2))


def test_manifest_golden():
    s = sender()
    m = s.manifest
    assert (m.clip_id, m.tid, m.size, m.chunk_size, m.chunks, m.sha256) == ("warn-01.wav", 7, 516, 128, 5, SHA)
    assert m.encode() == MANIFEST_JSON
    assert ct.decode_manifest(MANIFEST_JSON) == m
    assert m.chunk_len(0) == 128 and m.chunk_len(4) == 4


def test_chunk_golden():
    s = sender()
    assert s.chunk(4) == CHUNK4
    c = ct.decode_chunk(CHUNK4)
    assert (c.tid, c.index, bytes(c.data)) == (7, 4, b"tail")
    assert ct.encode_chunk(7, 4, b"tail") == CHUNK4
    buf = bytearray(ct.CHUNK_HEADER_LEN + 128)
    n = s.chunk_into(4, buf)
    assert bytes(buf[:n]) == CHUNK4
    assert s.chunk(0)[:10] == b"\x01\x00\x00\x00\x00\x07\x00\x00\x00\x00"


def test_in_order_transfer_hashes_on_the_way():
    s = sender()
    sink = FlashSink(516)
    r = ct.ClipReceiver(s.manifest.encode(), 4096, sink)
    results = [r.receive_payload(p) for i, p in s.chunks()]
    assert results == [ct.ACCEPTED] * 4 + [ct.COMPLETE]
    assert r.complete and r.usable and r.state == ct.COMPLETE
    assert sink.reads == 0  # in-order: no re-read of flash
    assert sink.committed and not sink.discarded
    assert bytes(sink.buf) == DATA
    assert sink.writes == [(0, 128), (128, 128), (256, 128), (384, 128), (512, 4)]


def test_out_of_order_and_duplicates():
    s = sender()
    sink = FlashSink(516)
    r = ct.ClipReceiver(s.manifest, 4096, sink)
    order = [3, 0, 3, 4, 1, 0]
    got = [r.receive_payload(s.chunk(i)) for i in order]
    assert got == [ct.ACCEPTED, ct.ACCEPTED, ct.DUPLICATE, ct.ACCEPTED, ct.ACCEPTED, ct.DUPLICATE]
    assert r.missing() == [(2, 3)]
    assert r.missing_count == 1 and r.received == 4 and r.duplicates == 2
    assert not r.usable
    assert r.receive_payload(s.chunk(2)) == ct.COMPLETE
    assert sink.reads == 1 and bytes(sink.buf) == DATA
    # after completion a resent chunk is still an idempotent duplicate
    assert r.receive_payload(s.chunk(2)) == ct.DUPLICATE
    assert r.usable


def test_missing_ranges_for_resume():
    data = bytes(64 * 20)
    s = ct.ClipSender(data, 64, "snap.jpg", 1, "snapshot", "image/jpeg", TS)
    r = ct.ClipReceiver(s.manifest, 1 << 20)
    assert r.missing() == [(0, 20)]
    for i in (0, 1, 5, 9, 10, 11, 19):
        r.receive_payload(s.chunk(i))
    assert r.missing() == [(2, 5), (6, 9), (12, 19)]
    assert r.missing(limit=2) == [(2, 5), (6, 9)]
    st = r.status()
    assert st["state"] == "receiving" and st["have"] == 7 and st["missing"] == [[2, 5], [6, 9], [12, 19]]
    enc = ct.encode_status(r)
    assert enc == (b'{"have":7,"id":"snap.jpg","missing":[[2,5],[6,9],[12,19]],"state":"receiving",'
                   b'"tid":1,"v":1}')
    dec = ct.decode_status(enc)
    assert dec["missing"] == [(2, 5), (6, 9), (12, 19)]
    # the sender resends exactly those
    resent = [i for i, p in s.chunks(dec["missing"])]
    assert resent == [2, 3, 4, 6, 7, 8, 12, 13, 14, 15, 16, 17, 18]
    for i, p in s.chunks(dec["missing"]):
        r.receive_payload(p)
    assert r.usable and r.missing() == []
    assert bytes(r.sink.data) == data


def test_status_golden():
    s = sender()
    r = ct.ClipReceiver(s.manifest, 4096)
    for i in (0, 1, 3):
        r.receive_payload(s.chunk(i))
    assert ct.encode_status(r) == STATUS
    assert ct.decode_status(STATUS)["missing"] == [(2, 3), (4, 5)]


def test_hash_mismatch_fails_for_good():
    s = sender()
    d = manifest_dict(sha256="00" * 32)
    sink = FlashSink(516)
    r = ct.ClipReceiver(d, 4096, sink)
    for i in range(4):
        r.receive_payload(s.chunk(i))
    with raises(TransferError, match="not usable") as e:
        r.receive_payload(s.chunk(4))
    assert e.value.code == "hash_mismatch" and e.value.field == "sha256"
    assert r.state == ct.FAILED and not r.usable and r.error == "hash_mismatch"
    assert sink.discarded and not sink.committed
    assert r.status()["err"] == "hash_mismatch"
    with raises(LocalProtocolError, match="already failed"):
        r.receive_payload(s.chunk(0))


def test_tampered_chunk_detected_out_of_order():
    s = sender()
    r = ct.ClipReceiver(s.manifest, 4096)
    bad = bytearray(s.chunk(1))
    bad[20] ^= 0xFF
    r.receive_payload(bytes(bad))
    for i in (4, 3, 2):
        r.receive_payload(s.chunk(i))
    with raises(TransferError, match="sha256"):
        r.receive_payload(s.chunk(0))
    assert r.sink.discarded and not r.usable


def test_chunk_rejections_leave_state_unchanged():
    s = sender()
    r = ct.ClipReceiver(s.manifest, 4096)
    with raises(TransferError, match="transfer id 8, expected 7") as e:
        r.receive_payload(ct.encode_chunk(8, 0, bytes(128)))
    assert e.value.code == "wrong_transfer"
    with raises(TransferError, match="index 5 out of range 0..4") as e:
        r.receive_payload(ct.encode_chunk(7, 5, b"x"))
    assert e.value.code == "bad_chunk" and e.value.field == "index"
    with raises(TransferError, match="chunk 0 has 127 bytes, expected 128"):
        r.receive_payload(ct.encode_chunk(7, 0, bytes(127)))
    with raises(TransferError, match="chunk 4 has 5 bytes, expected 4"):
        r.receive_payload(ct.encode_chunk(7, 4, b"tails"))
    assert r.received == 0 and r.state == ct.RECEIVING and r.missing() == [(0, 5)]
    # a wrong-size duplicate is still a wrong size
    r.receive_payload(s.chunk(0))
    with raises(TransferError, match="expected 128"):
        r.receive_payload(ct.encode_chunk(7, 0, bytes(1)))


def test_decode_chunk_errors():
    with raises(TransferError, match="shorter than the 10-byte header") as e:
        ct.decode_chunk(b"\x01\x00\x00")
    assert e.value.code == "bad_chunk"
    with raises(TransferError, match="version 2, expected 1"):
        ct.decode_chunk(b"\x02" + CHUNK4[1:])
    with raises(TransferError, match="reserved byte 0x01"):
        ct.decode_chunk(b"\x01\x01" + CHUNK4[2:])
    c = ct.decode_chunk(CHUNK4[:10])  # an empty data part decodes; the receiver rejects its length
    assert len(c.data) == 0


def test_too_large_manifest():
    with raises(TransferError, match="exceeds this receiver's max_size 500") as e:
        ct.ClipReceiver(MANIFEST_JSON, 500)
    assert e.value.code == "too_large"


def test_manifest_validation():
    bad = [
        (dict(id="../etc/passwd"), "id"), (dict(id=".hidden"), "id"), (dict(id="a" * 49), "id"),
        (dict(id=""), "id"), (dict(id="a b"), "id"), (dict(id=5), "id"), (dict(id=None), "id"),
        (dict(size=0), "size"), (dict(size=True), "size"), (dict(size=516.0), "size"),
        (dict(n=4), "n"), (dict(chunk=10), "chunk"), (dict(chunk=1 << 20), "chunk"),
        (dict(sha256=SHA.upper()), "sha256"), (dict(sha256=SHA[:63]), "sha256"),
        (dict(kind="movie"), "kind"), (dict(mime="audio"), "mime"), (dict(mime="Audio/WAV"), "mime"),
        (dict(mime="a/b/c"), "mime"), (dict(ts=-1), "ts"), (dict(tid=1 << 32), "tid"), (dict(v=2), "v"),
        (dict(extra=1), "extra"), (dict(tid=None), "tid"),
    ]
    for kw, field in bad:
        with raises(TransferError) as e:
            ct.Manifest.from_dict(manifest_dict(**kw))
        assert e.value.field == field, (kw, e.value)
        assert e.value.code == "bad_manifest"
    m = ct.Manifest.from_dict(manifest_dict(x_site="res-3"))
    assert m.tid == 7
    for payload in (b"", b"[]", b"\xff\xfe", b"{", b"[" * 600, b"null", b"{" * 20 + b"}" * 20):
        with raises(TransferError) as e:
            ct.decode_manifest(payload)
        assert e.value.code == "bad_manifest"


def test_clip_id_rule():
    for ok in ("a", "warn-01.wav", "A_b.c-9", "x" * 48, "a..b"):
        assert ct.is_safe_clip_id(ok), ok
    for bad in ("", ".wav", "..", "a/b", "a\\b", "x" * 49, "名字", "a b", "a\x00", None, b"abc"):
        assert not ct.is_safe_clip_id(bad), bad
    with raises(LocalProtocolError, match="safe clip id"):
        ct.ClipSender(DATA, 128, "../x", 7, "audio", "audio/wav", TS)


def test_sender_from_reader():
    f = FileLike(DATA)
    s = ct.ClipSender(f, 128, "warn-01.wav", 7, "audio", "audio/wav", TS)
    assert s.manifest.encode() == MANIFEST_JSON
    assert s.chunk(4) == CHUNK4
    buf = bytearray(ct.CHUNK_HEADER_LEN + 128)
    n = s.chunk_into(1, buf)
    assert bytes(buf[:n]) == sender().chunk(1)
    r = ct.ClipReceiver(s.manifest, 4096)
    for i, p in s.chunks():
        r.receive_payload(p)
    assert r.usable and r.sink.data == DATA


def test_sender_misuse():
    with raises(LocalProtocolError, match="chunk_size"):
        ct.ClipSender(DATA, 10, "a", 1, "audio", "audio/wav", TS)
    with raises(LocalProtocolError, match="size"):
        ct.ClipSender(b"", 128, "a", 1, "audio", "audio/wav", TS)
    with raises(LocalProtocolError, match="kind"):
        ct.ClipSender(DATA, 128, "a", 1, "noise", "audio/wav", TS)
    s = sender()
    with raises(LocalProtocolError, match="out of range"):
        s.chunk(5)
    with raises(LocalProtocolError, match="too small"):
        s.chunk_into(0, bytearray(20))


def test_status_validation():
    good = b'{"have":0,"id":"a","missing":[[0,3]],"state":"receiving","tid":1,"v":1}'
    assert ct.decode_status(good)["missing"] == [(0, 3)]
    for bad in (b'{"have":0,"id":"a","missing":[[3,3]],"state":"receiving","tid":1,"v":1}',
                b'{"have":0,"id":"a","missing":[[4,5],[0,3]],"state":"receiving","tid":1,"v":1}',
                b'{"have":0,"id":"a","state":"lost","tid":1,"v":1}',
                b'{"have":0,"id":".a","state":"complete","tid":1,"v":1}',
                b'{"have":-1,"id":"a","state":"complete","tid":1,"v":1}',
                b'{"have":0,"id":"a","state":"complete","tid":1,"v":true}',
                b'{"have":0,"id":"a","state":"complete","tid":1,"v":1,"z":0}',
                b"[" * 50, b"\x00"):
        with raises(TransferError) as e:
            ct.decode_status(bad)
        assert e.value.code == "bad_status", bad


def test_over_serial_frames_back_to_back():
    """Sender -> CLIP_OFFER / CLIP_CHUNK frames -> decoder -> receiver, with line noise in between."""
    data = bytes((i * 31) & 0xFF for i in range(5000))
    s = ct.ClipSender(data, 1008, "rec-0042.mp4", 0xDEADBEEF, "video", "video/mp4", TS)
    wire = bytearray(sf.encode_frame(sf.TYPE_CLIP_OFFER, 1, s.manifest.encode()))
    seq = 2
    for i, p in s.chunks():
        wire += b"\x00noise\xfb"
        wire += sf.encode_frame(sf.TYPE_CLIP_CHUNK, seq, p)
        seq += 1
    dec = sf.FrameDecoder()
    r = None
    results = []
    for k in range(0, len(wire), 700):
        dec.receive_data(wire[k:k + 700])
        while True:
            ev = dec.next_event()
            if ev is sf.NEED_DATA:
                break
            if isinstance(ev, sf.FrameErrorEvent):
                continue
            if ev.type == sf.TYPE_CLIP_OFFER:
                r = ct.ClipReceiver(ev.payload, 1 << 20)
            else:
                results.append(r.receive_payload(ev.payload))
    assert results[-1] == ct.COMPLETE and r.usable and r.sink.data == data
    done = ct.encode_status(r)
    assert len(sf.encode_frame(sf.TYPE_CLIP_DONE, seq, done)) < 100


def test_stream_pieces_golden_and_resume_from_offset():
    """Serial streams: pieces by byte offset (docs/PROTOCOL.md §12, "Streams"); the held prefix is the resume point."""
    assert ct.encode_data(7, 1008, b"tail") == bytes.fromhex("00000007" "000003f0" "7461696c")
    p = ct.decode_data(bytes.fromhex("00000007000003f07461696c"))
    assert (p.tid, p.offset, bytes(p.data)) == (7, 1008, b"tail")
    for bad in (b"", b"\x00" * 8):
        with raises(TransferError) as e:
            ct.decode_data(bad)
        assert e.value.code == "bad_chunk"
    data = bytes((i * 7) & 0xFF for i in range(1000))
    s = ct.ClipSender(data, 128, "rec-1.mp4", 3, "video", "video/mp4", TS)
    r = ct.ClipReceiver(s.manifest, 1 << 20)
    assert r.receive_at(0, s.data_at(0, 300)) == ct.ACCEPTED
    assert r.offset == 300 and r.received == 2  # chunks 0 and 1 lie inside the prefix
    assert r.receive_at(100, s.data_at(100, 100)) == ct.DUPLICATE  # already held
    with raises(TransferError) as e:
        r.receive_at(400, s.data_at(400, 10))  # a gap: refused, nothing changes
    assert e.value.code == "bad_offset" and r.offset == 300
    assert r.receive_at(250, s.data_at(250, 150)) == ct.ACCEPTED  # overlap: only the new part is written
    st = ct.decode_status(ct.encode_status(r))
    assert st["off"] == 400 and st["state"] == "receiving"
    # the gateway restarts: a new receiver over the same sink resumes at the length held
    r2 = ct.ClipReceiver(s.manifest, 1 << 20, r.sink, offset=r.offset)
    assert r2.received == 3 and ct.decode_status(ct.encode_status(r2))["off"] == 400
    assert r2.receive_at(400, s.data_at(400, 600)) == ct.COMPLETE and r2.sink.data == data
    bad = ct.ClipReceiver(s.manifest, 1 << 20, offset=500)  # a sink of zeros: the replayed hash fails
    with raises(TransferError) as e:
        bad.receive_at(500, s.data_at(500, 500))
    assert e.value.code == "hash_mismatch" and bad.state == ct.FAILED
    with raises(LocalProtocolError):
        ct.ClipReceiver(s.manifest, 1 << 20, offset=1000)


def test_stream_sender_counts_what_it_sends_twice():
    data = bytes(range(256)) * 4
    ss = ct.StreamSender(ct.ClipSender(data, 128, "a", 1, "video", "video/mp4", TS))
    assert ss.next_piece(400) == (0, data[:400])
    ss.confirmed(400)
    assert ss.next_piece(400)[0] == 400
    ss.resume(600)  # the receiver held 600 (more than we knew): nothing is resent
    assert ss.next_piece(1000) == (600, data[600:]) and ss.done_sending
    assert ss.resent == 200 and ss.resent_confirmed == 0  # 600..800 went twice, none of it confirmed before
    ss.resume(300)  # a receiver that lost data: below what was confirmed
    ss.next_piece(200)
    assert ss.resent_confirmed == 200
    with raises(TransferError):
        ss.resume(5000)
