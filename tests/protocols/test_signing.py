"""signing.py on both runtimes: RFC 4231 vectors, pinned MAC / wrapped-key vectors (computed before hex moved from
binascii to bytes.hex/fromhex), and bad hex mapped to AuthError with the right code."""

from ptest import raises

from protocols import signing
from protocols.errors import AuthError, LocalProtocolError

KEY = bytes(range(32))


def test_hmac_rfc4231_case1_and_long_key_case6():
    assert signing.hmac_sha256(b"\x0b" * 20, b"Hi There") == bytes.fromhex(
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    # case 6: a key longer than the 64-byte block is hashed first
    assert signing.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First") == bytes.fromhex(
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_pinned_mac_and_wrapped_key():
    msg = {"id": "e1", "seq": 1, "txt": "caf\u00e9\n"}
    mac = "18fc05c231807fe27e37128784977ae2ad84a4405913267e57a49bd7edc19951"
    assert signing.compute_mac(KEY, "evt", msg) == mac
    assert signing.sign(KEY, "evt", msg)["mac"] == mac
    signing.verify(KEY, "evt", msg)
    new = bytes(range(100, 132))
    w = signing.wrap_key(KEY, new, 42)
    assert w == "29bf91fe6bd63d5f08437499beae93743710f04b127b4514a9f82269fb4993cc"
    assert signing.unwrap_key(KEY, w, 42) == new
    assert signing.unwrap_key(KEY, w.upper(), 42) == new


def test_bad_mac_hex_is_auth_error():
    msg = signing.sign(KEY, "evt", {"id": "e1"})
    for bad in ("zz" * 32, "g" + msg["mac"][1:], None, 5, msg["mac"][:-1], msg["mac"] + "0"):
        m = dict(msg)
        m["mac"] = bad
        with raises(AuthError) as r:
            signing.verify(KEY, "evt", m)
        assert r.value.code == "bad_mac" and r.value.field == "mac"
    m = dict(msg)
    m["mac"] = "0" * 64
    with raises(AuthError, match="does not match") as r:
        signing.verify(KEY, "evt", m)


def test_bad_wrapped_key_is_auth_error():
    for bad, word in (("zz", "hex"), ("abc", "hex"), (None, "hex"), ("ab" * 31, "31 bytes")):
        with raises(AuthError, match=word) as r:
            signing.unwrap_key(KEY, bad, 1)
        assert r.value.code == "bad_key" and r.value.field == "key"


def test_local_errors_for_bad_keys():
    with raises(LocalProtocolError, match="32 bytes"):
        signing.compute_mac(b"short", "evt", {})
    with raises(LocalProtocolError, match="32 bytes"):
        signing.wrap_key(KEY, b"short", 1)
