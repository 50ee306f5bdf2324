"""HMAC-SHA256 over canonical JSON: how a node knows a command is authentic, and the gateway an event.

Theory of operation (docs/SECURITY.md has the threat model):
- the MAC input is ``b"lookout/1|" + purpose + b"|" + canonical(message without "mac")``; ``purpose`` is the
  channel (``cmd``, ``res``, ``evt``, ``up``...) so a signed event can never be replayed as a command;
- a command also names its target (``to``), carries a per-device counter (``ctr``) that only grows, and an
  expiry (``exp``, Unix ms); ``check_command`` applies all four checks and says which one failed;
- HMAC is implemented over ``hashlib.sha256`` (RFC 2104) so nodes need no extra package; the comparison is
  constant-time (micropython-lib's ``hmac`` offers none).
- hex goes through ``bytes.hex()``/``bytes.fromhex()``, not ``binascii``: on some MicroPython builds binascii
  is a frozen Python module costing ~7 KB of heap, and a node needs nothing else from it.
"""

import hashlib

from . import canonical
from .errors import AuthError, LocalProtocolError

DOMAIN = b"lookout/1|"
KEY_LEN = 32


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def hmac_sha256(key, data):
    """RFC 2104 with SHA-256 (block size 64)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = bytes(key) + bytes(64 - len(key))
    h = hashlib.sha256(_xor(key, b"\x36" * 64))
    h.update(data)
    h2 = hashlib.sha256(_xor(key, b"\x5c" * 64))
    h2.update(h.digest())
    return h2.digest()


def compare_digest(a, b):
    """Constant-time equality for equal-length byte strings (length itself is not secret)."""
    if len(a) != len(b):
        return False
    r = 0
    for x, y in zip(a, b):
        r |= x ^ y
    return r == 0


def mac_input(purpose, msg):
    return DOMAIN + purpose.encode() + b"|" + canonical.dumpb(msg, omit="mac")


def compute_mac(key, purpose, msg):
    """Hex MAC of ``msg`` (a dict) for ``purpose``; ``msg["mac"]`` is ignored if present."""
    if len(key) != KEY_LEN:
        raise LocalProtocolError("key must be %d bytes, got %d" % (KEY_LEN, len(key)), field="key")
    return hmac_sha256(key, mac_input(purpose, msg)).hex()


def sign(key, purpose, msg):
    """Return ``msg`` with its ``mac`` field set (the dict is modified in place and returned)."""
    msg["mac"] = compute_mac(key, purpose, msg)
    return msg


def _unhex(s, field, code, what):
    try:
        return bytes.fromhex(s)
    except (ValueError, TypeError):  # fromhex: ValueError("non-hex digit") on both runtimes
        raise AuthError("%s is not hex" % what, field=field, code=code)


def verify(key, purpose, msg):
    """Raise AuthError(code="bad_mac") unless ``msg["mac"]`` matches."""
    got = msg.get("mac")
    if not isinstance(got, str) or len(got) != 64:
        raise AuthError("missing or malformed mac (expected 64 hex chars)", field="mac", code="bad_mac")
    if not compare_digest(_unhex(got, "mac", "bad_mac", "mac"), hmac_sha256(key, mac_input(purpose, msg))):
        raise AuthError("mac does not match (wrong key or altered message)", field="mac", code="bad_mac")


def check_command(key, cmd, device_id, last_ctr, now_ms):
    """Apply the four command checks in order; return the command's counter on success.

    Order matters: the MAC first, so nothing unauthenticated can move the counter; then the target, then
    replay (``ctr`` must exceed the last accepted counter), then expiry. ``now_ms`` is Unix ms, or None when
    the node has no trustworthy clock yet (the counter alone then guards against replay).
    """
    verify(key, "cmd", cmd)
    to = cmd.get("to")
    if to != device_id:
        raise AuthError("command is for %r, this device is %r" % (to, device_id), field="to", code="wrong_device")
    ctr = cmd.get("ctr")
    if not isinstance(ctr, int) or isinstance(ctr, bool) or ctr <= last_ctr:
        raise AuthError("counter %r not above last accepted %d (replay or stale)" % (ctr, last_ctr), field="ctr",
                        code="replay")
    exp = cmd.get("exp")
    if now_ms is not None and isinstance(exp, int) and exp < now_ms:
        raise AuthError("expired %d ms ago" % (now_ms - exp), field="exp", code="expired")
    return ctr


def wrap_key(old_key, new_key, ctr):
    """Encrypt a rotated key under the current one: ``new XOR HMAC(old, "rotate|<ctr>")``, hex.

    The rotation command itself is signed with the old key and carries ``ctr``, so the pad is never reused.
    """
    if len(new_key) != KEY_LEN:
        raise LocalProtocolError("new key must be %d bytes" % KEY_LEN, field="key")
    return _xor(new_key, hmac_sha256(old_key, b"rotate|" + str(ctr).encode())).hex()


def unwrap_key(old_key, wrapped_hex, ctr):
    wrapped = _unhex(wrapped_hex, "key", "bad_key", "wrapped key")
    if len(wrapped) != KEY_LEN:
        raise AuthError("wrapped key is %d bytes, expected %d" % (len(wrapped), KEY_LEN), field="key",
                        code="bad_key")
    return _xor(wrapped, hmac_sha256(old_key, b"rotate|" + str(ctr).encode()))
