"""Hypothesis properties of clip transfer (CPython only)."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import cliptransfer as ct
from protocols.errors import LocalProtocolError, TransferError

TS = 1717000000000
IDS = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,47}\Z")


@st.composite
def clips(draw):
    data = draw(st.binary(min_size=1, max_size=3000))
    chunk = draw(st.integers(64, 700))
    return ct.ClipSender(data, chunk, draw(IDS), draw(st.integers(0, 0xFFFFFFFF)),
                         draw(st.sampled_from(ct.KINDS)), "audio/wav", draw(st.integers(0, ct.MS_MAX))), data


@settings(max_examples=200, deadline=None)
@given(clips(), st.randoms(use_true_random=False), st.integers(0, 5))
def test_any_order_with_duplicates_completes(clip, rnd, dups):
    s, data = clip
    assert ct.decode_manifest(s.manifest.encode()) == s.manifest
    r = ct.ClipReceiver(s.manifest.encode(), len(data))
    order = list(range(s.manifest.chunks))
    order += [rnd.randrange(len(order)) for _ in range(dups)]
    rnd.shuffle(order)
    seen = set()
    for i in order:
        res = r.receive_payload(s.chunk(i))
        if i in seen:
            assert res == ct.DUPLICATE
        else:
            seen.add(i)
            assert res == (ct.COMPLETE if len(seen) == s.manifest.chunks else ct.ACCEPTED)
        expect_missing = [i for i in range(s.manifest.chunks) if i not in seen]
        assert [i for a, b in r.missing() for i in range(a, b)] == expect_missing
    assert r.usable and r.sink.data == data


@settings(max_examples=200, deadline=None)
@given(clips(), st.integers(0, 10 ** 6), st.integers(1, 255))
def test_corrupted_chunk_never_usable(clip, where, flip):
    s, data = clip
    r = ct.ClipReceiver(s.manifest, len(data))
    n = s.manifest.chunks
    bad_index = where % n
    try:
        for i in range(n):
            p = bytearray(s.chunk(i))
            if i == bad_index:
                p[10 + where % (len(p) - 10)] ^= flip
            r.receive_payload(bytes(p))
    except TransferError as e:
        assert e.code == "hash_mismatch"
    assert not r.usable and r.state == ct.FAILED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_transfer_error(data):
    for fn in (ct.decode_manifest, ct.decode_chunk, ct.decode_status):
        try:
            fn(data)
        except TransferError:
            pass


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                       max_leaves=8)
FIELDS = st.sampled_from(ct.MANIFEST_KEYS + ("x_a", "zz"))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS, JSONISH, max_size=4))
def test_mutated_manifest_only_transfer_error(changes):
    s = ct.ClipSender(b"x" * 300, 128, "a.wav", 1, "audio", "audio/wav", TS)
    d = s.manifest.to_dict()
    d.update(changes)
    try:
        m = ct.decode_manifest(json.dumps(d).encode())
    except TransferError as e:
        assert e.code == "bad_manifest"
        return
    assert ct.is_safe_clip_id(m.clip_id) and m.chunks * m.chunk_size >= m.size


@settings(max_examples=200, deadline=None)
@given(clips(), st.binary(max_size=80))
def test_arbitrary_chunk_payload_rejected_or_ignored(clip, payload):
    s, data = clip
    r = ct.ClipReceiver(s.manifest, len(data))
    try:
        res = r.receive_payload(payload)
    except TransferError:
        return
    assert res in (ct.ACCEPTED, ct.COMPLETE)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_clip_id_rule_matches_regex(s):
    import re
    ok = re.fullmatch(r"[A-Za-z0-9_.-]{1,48}", s) is not None and not s.startswith(".")
    assert ct.is_safe_clip_id(s) == ok
    if not ok:
        try:
            ct.ClipSender(b"x", 64, s, 1, "audio", "audio/wav", TS)
        except LocalProtocolError:
            pass
        else:
            raise AssertionError("accepted %r" % s)


@settings(max_examples=200, deadline=None)
@given(clips(), st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 900)), max_size=40))
def test_stream_pieces_in_any_overlap_end_bit_exact(clip, cuts):
    """Pieces that extend the prefix (with overlaps, duplicates, gaps refused) always leave exactly the clip."""
    s, data = clip
    r = ct.ClipReceiver(s.manifest, len(data))
    for back, n in cuts + [(0, len(data))]:
        off = max(0, r.offset - back)
        if r.state == ct.COMPLETE or off >= len(data):
            break
        res = r.receive_at(off, s.data_at(off, n))
        assert res in (ct.ACCEPTED, ct.DUPLICATE, ct.COMPLETE)
    while r.state != ct.COMPLETE:
        r.receive_at(r.offset, s.data_at(r.offset, 1000))
    assert r.sink.data == data and r.offset == len(data) and r.received == s.manifest.chunks


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_data_raises_only_transfer_errors(b):
    try:
        p = ct.decode_data(b)
    except TransferError:
        return
    assert ct.encode_data(p.tid, p.offset, bytes(p.data)) == b
