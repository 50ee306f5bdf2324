"""Property tests (CPython): round trips, and arbitrary or mutated input only ever raises the codec's error."""

from __future__ import annotations

import hashlib
import hmac
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import canonical, messages, signing, topics
from protocols.errors import AuthError, MessageError, TopicError

T0 = 1764000000000
ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
names = st.from_regex(r"[a-z0-9_]{1,24}", fullmatch=True)
# no lone surrogates: they have no UTF-8 form, so no JSON payload can carry them
texts = st.text(st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
                min_size=1, max_size=60)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), texts)
args = st.dictionaries(names, st.one_of(scalars, st.lists(scalars, max_size=4)), max_size=6)


@st.composite
def commands(draw):
    ts = draw(st.integers(T0, T0 + 10**9))
    return messages.command(draw(st.from_regex(r"[A-Za-z0-9._-]{1,48}", fullmatch=True)), draw(ids), draw(names),
                            draw(args), ts, ts + draw(st.integers(0, 10**6)), draw(st.integers(0, 3)),
                            draw(st.integers(1, 2**53)))


@settings(max_examples=200)
@given(commands(), st.binary(min_size=32, max_size=32))
def test_command_sign_encode_decode_verify(cmd, key):
    signing.sign(key, "cmd", cmd)
    back = messages.decode("cmd", messages.encode("cmd", cmd))
    assert back == cmd
    assert signing.check_command(key, back, cmd["to"], cmd["ctr"] - 1, cmd["ts"]) == cmd["ctr"]


@settings(max_examples=200)
@given(commands(), st.binary(min_size=32, max_size=32), st.data())
def test_any_single_field_change_breaks_the_mac(cmd, key, data):
    signing.sign(key, "cmd", cmd)
    field = data.draw(st.sampled_from(sorted(k for k in cmd if k != "mac")))
    tampered = dict(cmd)
    tampered[field] = data.draw(st.one_of(ids, st.integers(1, 2**53)).filter(lambda v: v != cmd[field]))
    try:
        signing.verify(key, "cmd", tampered)
    except AuthError as e:
        assert e.code == "bad_mac"
    else:
        raise AssertionError("tampered %s verified" % field)


@given(st.binary(max_size=300), st.binary(max_size=80))
def test_hmac_matches_stdlib(key, data):
    assert signing.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()


json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), c, max_size=4)),
                           max_leaves=12)


@given(json_values)
def test_canonical_is_json_and_sorted(v):
    text = canonical.dumps(v)
    assert json.loads(text) == v
    assert text == json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=300)
@given(st.sampled_from(sorted(messages.SCHEMAS)), st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_message_error(kind, data):
    try:
        messages.decode(kind, data)
    except MessageError:
        pass


@settings(max_examples=300)
@given(st.sampled_from(sorted(messages.SCHEMAS)), json_values)
def test_arbitrary_json_only_raises_message_error(kind, v):
    try:
        messages.decode(kind, json.dumps(v).encode())
    except MessageError:
        pass


@settings(max_examples=200)
@given(st.data())
def test_mutated_heartbeat_only_raises_message_error(data):
    good = bytearray(messages.encode("hb", {"seq": 5, "up_s": 100, "hb_s": 30, "rssi": -70, "fw": "0.1.0"}))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    try:
        messages.decode("hb", bytes(good))
    except MessageError:
        pass


@given(st.text(max_size=120) | st.binary(max_size=120))
def test_arbitrary_topics_only_raise_topic_error(t):
    try:
        site, dev, ch, sub = topics.parse(t)
    except TopicError:
        return
    assert topics.topic(site, dev, ch, sub) == (t if isinstance(t, str) else t.decode())


@given(ids, ids, st.sampled_from(sorted(topics.CHANNELS)), st.none() | ids)
def test_topic_round_trip(site, dev, ch, sub):
    assert topics.parse(topics.topic(site, dev, ch, sub)) == (site, dev, ch, sub)
