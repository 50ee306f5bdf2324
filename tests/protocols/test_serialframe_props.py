"""Hypothesis properties of the serial frame codec (CPython only)."""

import binascii

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import serialframe as sf
from protocols.errors import FrameError

TYPES = st.sampled_from(sorted(sf.TYPE_NAMES))
FRAMES = st.builds(sf.Frame, TYPES, st.integers(0, 0xFFFF), st.binary(max_size=200))


def drain(dec, out):
    while True:
        ev = dec.next_event()
        if ev is sf.NEED_DATA or ev is sf.CLOSED:
            return ev
        out.append(ev)


def feed(data, cuts, **kw):
    dec = sf.FrameDecoder(**kw)
    out = []
    pos = 0
    for c in sorted(set(cuts)) + [len(data)]:
        if c > pos:
            dec.receive_data(data[pos:c])
            assert drain(dec, out) is sf.NEED_DATA
            pos = c
    dec.receive_data(b"")
    assert drain(dec, out) is sf.CLOSED
    return out, dec


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_crc_matches_reference(data):
    # binascii.crc_hqx is the same poly without init/xorout: with init 0xFFFF it is CRC-16/IBM-3740
    assert sf.crc16(data) == binascii.crc_hqx(data, 0xFFFF)
    assert sf.crc16_portable(data) == binascii.crc_hqx(data, 0xFFFF)  # the loop MicroPython runs


@settings(max_examples=300, deadline=None)
@given(FRAMES)
def test_round_trip(f):
    wire = f.encode()
    assert sf.decode_frame(wire) == f
    buf = bytearray(len(wire) + 3)
    assert sf.encode_frame_into(buf, 3, f.type, f.seq, f.payload) == len(buf)
    assert bytes(buf[3:]) == wire


@settings(max_examples=200, deadline=None)
@given(st.lists(FRAMES, max_size=6), st.lists(st.integers(0, 2000), max_size=8))
def test_stream_of_good_frames_any_chunking(frames, cuts):
    wire = b"".join(f.encode() for f in frames)
    out, dec = feed(wire, [c for c in cuts if c < len(wire)])
    assert out == frames
    assert dec.bytes_skipped == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), FRAMES), max_size=5), st.binary(max_size=40),
       st.lists(st.integers(0, 2000), max_size=8))
def test_garbage_between_frames_never_loses_a_frame(items, tail, cuts):
    # garbage without the sync marker's first byte cannot start a false frame, so every frame must survive
    items = [(g.replace(b"\xfb", b"\x00"), f) for g, f in items]
    tail = tail.replace(b"\xfb", b"\x00")
    wire = b"".join(g + f.encode() for g, f in items) + tail
    out, dec = feed(wire, [c for c in cuts if c < len(wire)])
    frames = [e for e in out if isinstance(e, sf.Frame)]
    assert frames == [f for g, f in items]
    skipped = sum(e.skipped for e in out if isinstance(e, sf.FrameErrorEvent))
    assert skipped == sum(len(g) for g, f in items) + len(tail) == dec.bytes_skipped
    whole, _ = feed(wire, [])
    assert whole == out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_account_for_every_byte(data, cuts):
    out, _ = feed(data, [c for c in cuts if c < len(data)], max_payload=64, report_limit=100)
    consumed = sum(e.skipped for e in out if isinstance(e, sf.FrameErrorEvent))
    consumed += sum(sf.encoded_len(len(e.payload)) for e in out if isinstance(e, sf.Frame))
    assert consumed == len(data)
    assert all(e.skipped <= 100 + 76 for e in out if isinstance(e, sf.FrameErrorEvent))
    assert feed(data, [], max_payload=64, report_limit=100)[0] == out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_frame_only_frame_error(data):
    try:
        sf.decode_frame(data)
    except FrameError:
        pass
    for fn in (sf.decode_ack, sf.decode_nack):
        try:
            fn(data)
        except FrameError:
            pass


@settings(max_examples=300, deadline=None)
@given(FRAMES, FRAMES, st.integers(0, 10000), st.integers(1, 255))
def test_mutated_frame_is_caught_and_next_frame_survives(f, g, where, flip):
    wire = bytearray(f.encode())
    i = where % len(wire)
    wire[i] ^= flip
    out, _ = feed(bytes(wire) + g.encode(), [])
    # CRC-16 detects every error confined to one byte, so the mutated frame never comes out
    assert out[-1] == g
    assert f not in out[:-1] or f == g
    assert all(isinstance(e, sf.FrameErrorEvent) for e in out[:-1])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF), st.sampled_from(
    sorted(sf.NACK_REASONS)))
def test_ack_nack_round_trip(seq, mask, nseq, reason):
    assert sf.decode_ack(sf.encode_ack(seq, mask)) == (seq, mask)
    assert len(sf.acked_seqs(seq, mask)) == 1 + mask.bit_count()
    assert sf.decode_nack(sf.encode_nack(nseq, reason)) == (nseq, reason)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1024), st.data())
def test_one_bit_repaired_two_bits_detected(payload, data):
    wire = sf.encode_frame(sf.TYPE_EVENT, 1, payload)
    body = bytearray(wire[sf.HEADER_LEN:])
    nbits = len(body) * 8
    a = data.draw(st.integers(0, nbits - 1))
    one = bytearray(body)
    one[a >> 3] ^= 1 << (a & 7)
    assert sf.correct_single_bit(one) == payload
    b = data.draw(st.integers(0, nbits - 1).filter(lambda x: x != a))
    one[b >> 3] ^= 1 << (b & 7)
    assert sf.correct_single_bit(one) is None  # Hamming distance 4: a 2-bit error is never "repaired"
