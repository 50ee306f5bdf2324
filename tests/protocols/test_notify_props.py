"""Property tests (CPython) for notifications: round trips; arbitrary or mutated bytes raise only MessageError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import notify
from protocols.errors import MessageError

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
texts = st.text(st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
                min_size=1, max_size=200)


@st.composite
def notifications(draw):
    opt = st.one_of(st.none(), st.integers(-900000000, 900000000))
    return notify.notification(draw(st.from_regex(r"[A-Za-z0-9._-]{1,48}", fullmatch=True)), draw(ids),
                               draw(ids), draw(st.sampled_from(notify.STATES.split("/"))),
                               draw(st.integers(1420070400000, 2 ** 47)), draw(st.from_regex(r"[a-z0-9_]{1,24}",
                                                                                           fullmatch=True)),
                               draw(st.sampled_from(("info", "general", "serious", "critical"))), draw(texts),
                               draw(opt), draw(opt), draw(st.one_of(st.none(), ids)), draw(st.one_of(st.none(), ids)))


@settings(max_examples=200)
@given(notifications())
def test_round_trip(m):
    assert notify.decode(notify.encode(m)) == m


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_message_error(data):
    try:
        notify.decode(data)
    except MessageError:
        pass


@settings(max_examples=300)
@given(notifications(), st.integers(0, 10_000), st.integers(0, 255))
def test_mutated_notification_raises_only_message_error(m, pos, byte):
    data = bytearray(notify.encode(m))
    data[pos % len(data)] = byte
    try:
        notify.decode(bytes(data))
    except MessageError:
        pass
