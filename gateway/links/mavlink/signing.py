"""MAVLink 2 message signing on the gateway side: verifying what vehicles send, timing what we send.

Theory of operation (the MAVLink 2 signing spec, mavlink.io "Message Signing"):
- a signed frame ends in ``link_id`` (1 byte), ``timestamp`` (6 bytes, little endian, units of 10 µs since
  2015-01-01 00:00 UTC) and ``signature`` = the first 6 bytes of SHA-256(secret_key + every byte of the frame
  before the signature);
- replay protection per stream ``(link_id, sysid, compid)``: a timestamp must be above the last one accepted on
  that stream; the first frame of a new stream is accepted only if its timestamp is at most one minute behind our
  own clock;
- what we send carries a timestamp above every timestamp we sent before (``SigningClock``).

``Verifier`` holds one key per vehicle system id: pymavlink's own parser holds a single key, and one link carries
several vehicles. A vehicle configured as signed gets nothing through unless the frame verifies: unsigned,
badly signed and replayed frames are dropped and counted by the caller under the code ``verify`` returns.
"""

from __future__ import annotations

import hashlib
import hmac
import time

EPOCH_2015_S = 1420070400  # 2015-01-01T00:00:00Z
NEW_STREAM_WINDOW = 6_000_000  # one minute in 10 µs units (the spec's limit for a new stream)
IFLAG_SIGNED = 0x01
SIG_LEN = 13  # link_id + timestamp + signature


def now_10us(unix_ns: int | None = None) -> int:
    """The signing clock's reading now: 10 µs units since 2015-01-01 UTC."""
    ns = time.time_ns() if unix_ns is None else unix_ns
    return (ns - EPOCH_2015_S * 1_000_000_000) // 10_000


class SigningClock:
    """Timestamps for what we sign: the wall clock in 10 µs units, strictly increasing even if the clock steps
    back or two frames are signed within 10 µs."""

    __slots__ = ("_last", "_now")

    def __init__(self, now=now_10us):
        self._now = now
        self._last = 0

    def next(self) -> int:
        t = self._now()
        self._last = t if t > self._last else self._last + 1
        return self._last

    def observe(self, ts: int) -> None:
        """The spec lets a signer move its clock up to the newest timestamp it accepted."""
        self._last = max(self._last, ts)


class Verifier:
    """Checks signed frames per vehicle; ``verify`` returns None (good) or the reason it is dropped."""

    def __init__(self, clock: SigningClock | None = None, now=now_10us):
        self._keys: dict[int, hashlib._Hash] = {}
        self._streams: dict[tuple[int, int, int], int] = {}
        self._clock = clock
        self._now = now

    def set_key(self, sysid: int, key: bytes | None) -> None:
        if key is None:
            self._keys.pop(sysid, None)
        else:
            if len(key) != 32:
                raise ValueError(f"MAVLink 2 signing key for sysid {sysid}: expected 32 bytes, got {len(key)}")
            self._keys[sysid] = hashlib.sha256(key)
        for k in [k for k in self._streams if k[1] == sysid]:
            del self._streams[k]

    def signs(self, sysid: int) -> bool:
        return sysid in self._keys

    def verify(self, frame: bytes | bytearray, sysid: int, compid: int) -> str | None:
        """``frame``: one whole MAVLink frame as received. None if it verifies with ``sysid``'s key, else
        ``unsigned``, ``bad_signature`` or ``replay``."""
        base = self._keys.get(sysid)
        if base is None:
            return None
        if len(frame) < 12 + SIG_LEN or frame[0] != 0xFD or not frame[2] & IFLAG_SIGNED:
            return "unsigned"
        h = base.copy()
        h.update(memoryview(frame)[:-6])
        if not hmac.compare_digest(h.digest()[:6], bytes(frame[-6:])):
            return "bad_signature"
        ts = int.from_bytes(frame[-12:-6], "little")
        stream = (frame[-13], sysid, compid)
        last = self._streams.get(stream)
        if last is None:
            if ts + NEW_STREAM_WINDOW < self._now():
                return "replay"  # a new stream that starts more than a minute in the past
        elif ts <= last:
            return "replay"
        self._streams[stream] = ts
        if self._clock is not None:
            self._clock.observe(ts)
        return None


__all__ = ["SigningClock", "Verifier", "now_10us"]
