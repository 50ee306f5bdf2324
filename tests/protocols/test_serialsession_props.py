"""Hypothesis properties of the recorder link session (CPython only)."""

import serialsim as ss
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import serialsession
from protocols import serialframe as sf
from protocols.errors import SessionError

from test_serialsession import CATALOG, HS1, HS2, HS3


def mutations():
    golden = st.sampled_from([HS1, HS2, HS3, CATALOG])
    return st.one_of(st.binary(max_size=600), st.builds(
        lambda g, i, b: g[:i % (len(g) + 1)] + bytes([b]) + g[i % (len(g) + 1) + 1:], golden,
        st.integers(0, 700), st.integers(0, 255)))


@settings(max_examples=400, deadline=None)
@given(mutations())
def test_hello_and_catalog_decoders_raise_only_their_error(b):
    for fn in (serialsession.decode_hello, serialsession.decode_catalog):
        try:
            d = fn(b)
        except SessionError:
            continue
        enc = serialsession.encode_hello if fn is serialsession.decode_hello else serialsession.encode_catalog
        assert fn(enc(d)) == d  # whatever is accepted re-encodes to something equal


def _drain(s):
    while s.next_event() is not serialsession.NEED_DATA:
        pass


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12), st.booleans())
def test_random_bytes_never_crash_either_end(chunks, open_first):
    rec, gw = ss.pair()
    link = ss.Link(rec, gw, bps=92160)
    if open_first:
        ss.connect(link)
    for i, c in enumerate(chunks):
        for s in (rec, gw):
            s.receive_data(c, link.now + i)
            s.line_idle(link.now + i)
            _drain(s)
            s.data_to_send(link.now + i)
    # and the link still works afterwards (a new handshake if the garbage ended the session)
    if rec.state == "idle":
        rec.start(link.now)
    rec.send(sf.TYPE_EVENT, b'{"after":1}')
    link.run(lambda: any(isinstance(e, serialsession.Received) and e.payload == b'{"after":1}'
                         for e in link.gw_events), 60000)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 10 ** 6), st.sampled_from([0.0, 1e-5, 1e-4, 3e-4]), st.sampled_from([0.0, 1e-5, 1e-4]),
       st.integers(1, 12000), st.sampled_from([1, 4, 64]))
def test_any_noise_any_window_the_clip_arrives_bit_exact(seed, ber, drop, size, win):
    from test_serialsession import transfer

    rec, gw, link, pusher = transfer(size, ber=ber, drop=drop, seed=seed, win=win)
    assert rec.in_flight <= win and pusher.push.stream.resent_confirmed == 0
