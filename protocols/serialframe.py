"""Binary framing for body-worn recorders on a serial line (sans-IO; runs unchanged on MicroPython).

Theory of operation
-------------------
A serial line delivers a byte stream with no boundaries and, in the field, with noise: a cable plugged in
mid-frame, a recorder rebooting mid-write, a flipped bit. Each frame therefore starts with a 2-byte sync marker
and carries two checks:

    offset size field
    0      2    sync      0xFB 0xC1 (neither byte can occur in UTF-8 text, so JSON payloads never fake one)
    2      1    version   1
    3      1    type      TYPE_* below
    4      2    seq       uint16 big-endian, wraps 65535 -> 0
    6      2    length    uint16 big-endian, payload bytes, 0..max_payload (default 1024)
    8      2    hcrc      CRC-16 of bytes 2..7 (version, type, seq, length)
    10     N    payload
    10+N   2    fcs       CRC-16 of the payload (0xFFFF for an empty payload)

The CRC is CRC-16/IBM-3740, also sold as CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no input/output
reflection, xor-out 0x0000, check value of b"123456789" = 0x29B1.

The header CRC is what makes resynchronisation fast: a sync marker found by chance inside a payload is rejected
after 10 bytes instead of after waiting for a bogus length of data, and a corrupted length never stalls the
decoder. The decoder (h11 shape) buffers bytes, looks for the marker and validates; on any rejection it skips
exactly one byte (the first marker byte) and scans again, so a frame truncated by lost bytes never hides the
good frame after it. Rejected bytes are counted in a run; the run is reported as one ``FrameErrorEvent`` whose
``reason`` is the cause of the *first* rejection in the run (a bad CRC, then the rest of that frame skipped as
garbage, is reported as ``bad_crc`` with the total count). A run is reported just before the next good frame,
at end of stream / idle, or when it reaches ``report_limit`` bytes, so a noisy line still yields events. The
decisions depend only on the bytes, never on how they were chunked: feeding a buffer whole or byte by byte gives
identical events.

Delivery (windows, resends, duplicate suppression, authentication) is ``protocols/serialsession.py``'s business;
this module defines only the frames and the ACK/NACK payloads (``encode_ack``/``decode_ack``,
``encode_nack``/``decode_nack``).
"""

import struct
import sys

try:  # CPython: binascii.crc_hqx is this CRC in C (poly 0x1021, no reflection); MicroPython has no crc_hqx
    from binascii import crc_hqx as _crc_hqx
except ImportError:
    _crc_hqx = None  # type: ignore[assignment]

from . import defaults
from .errors import FrameError, LocalProtocolError

DEFAULT_MAX_PAYLOAD = defaults.SERIAL_MAX_PAYLOAD
DEFAULT_RX_CHUNK = defaults.SERIAL_RX_CHUNK

SYNC = b"\xfb\xc1"
SYNC0 = 0xFB
VERSION = 1
HEADER_LEN = 10
TRAILER_LEN = 2
OVERHEAD = HEADER_LEN + TRAILER_LEN
MAX_WIRE_PAYLOAD = 0xFFFF  # the length field's limit; a decoder's max_payload may only be lower

# Frame types (one byte). JSON-bearing types carry compact UTF-8 JSON (protocols/messages.py schemas);
# ACK/NACK carry the binary payloads below; CLIP_* carry protocols/cliptransfer.py payloads.
TYPE_HELLO = 0x01  # JSON {"dev": device id, "fw": firmware version, ...}; first frame after (re)connect
TYPE_HEARTBEAT = 0x02  # JSON or empty
TYPE_LOCATION = 0x03  # JSON location report
TYPE_EVENT = 0x04  # JSON event (button, recording started/stopped, low battery...)
TYPE_ACK = 0x05  # binary, see encode_ack
TYPE_NACK = 0x06  # binary, see encode_nack
TYPE_COMMAND = 0x07  # JSON command (gateway -> recorder)
TYPE_RESULT = 0x08  # JSON command result (recorder -> gateway)
TYPE_CLIP_OFFER = 0x10  # cliptransfer manifest (JSON)
TYPE_CLIP_CHUNK = 0x11  # cliptransfer chunk (binary)
TYPE_CLIP_DONE = 0x12  # cliptransfer status (JSON)
TYPE_CLIP_DATA = 0x13  # cliptransfer data at a byte offset (binary, see cliptransfer.encode_data)
TYPE_CATALOG = 0x14  # JSON clip catalogue (recorder -> gateway), protocols/serialsession.py

TYPE_NAMES = {
    TYPE_HELLO: "HELLO", TYPE_HEARTBEAT: "HEARTBEAT", TYPE_LOCATION: "LOCATION", TYPE_EVENT: "EVENT",
    TYPE_ACK: "ACK", TYPE_NACK: "NACK", TYPE_COMMAND: "COMMAND", TYPE_RESULT: "RESULT",
    TYPE_CLIP_OFFER: "CLIP_OFFER", TYPE_CLIP_CHUNK: "CLIP_CHUNK", TYPE_CLIP_DONE: "CLIP_DONE",
    TYPE_CLIP_DATA: "CLIP_DATA", TYPE_CATALOG: "CATALOG",
}
# Types the receiver must acknowledge (ACK or NACK). HEARTBEAT and LOCATION are periodic and superseded by the
# next one; ACK/NACK are never acknowledged.
# Inside a session (serialsession.py) every frame but HELLO, ACK and NACK is sequenced and acknowledged.
NEEDS_ACK = (TYPE_HELLO, TYPE_EVENT, TYPE_COMMAND, TYPE_RESULT, TYPE_CLIP_OFFER, TYPE_CLIP_CHUNK, TYPE_CLIP_DONE,
             TYPE_CLIP_DATA, TYPE_CATALOG)

# NACK reasons (one byte)
NACK_BAD_CRC = 1  # frame arrived with a bad fcs (seq known from the valid header): resend now
NACK_UNKNOWN_TYPE = 2  # type not understood by this peer: do not resend
NACK_BAD_PAYLOAD = 3  # payload failed validation (bad JSON, bad manifest...): do not resend
NACK_BUSY = 4  # receiver cannot take it now (queue full, flash busy): resend later
NACK_TOO_LARGE = 5  # length over the receiver's max_payload
NACK_REASONS = {NACK_BAD_CRC: "bad_crc", NACK_UNKNOWN_TYPE: "unknown_type", NACK_BAD_PAYLOAD: "bad_payload",
                NACK_BUSY: "busy", NACK_TOO_LARGE: "too_large"}

# Error event reasons (FrameErrorEvent.reason) and the header field each one is about (FrameError.field).
GARBAGE = "garbage"  # bytes before a sync marker
BAD_HEADER_CRC = "bad_header_crc"
BAD_VERSION = "bad_version"
TOO_LONG = "too_long"
BAD_CRC = "bad_crc"
UNKNOWN_TYPE = "unknown_type"
TRUNCATED = "truncated"  # stream ended / line went idle inside a frame
REASON_FIELDS = {GARBAGE: "sync", BAD_HEADER_CRC: "hcrc", BAD_VERSION: "version", TOO_LONG: "length",
                 BAD_CRC: "fcs", UNKNOWN_TYPE: "type", TRUNCATED: "length"}


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")  # returned forever after receive_data(b"") once the buffer is drained


def crc16(data, crc=0xFFFF):
    """CRC-16/IBM-3740 (CCITT-FALSE) of ``data``; pass a previous result as ``crc`` to continue.

    Table-free byte-wise form of poly 0x1021 (no 512-byte table in a node's RAM); on CPython the C
    ``binascii.crc_hqx`` (same polynomial, no reflection, no xor-out), ~100x faster at 921,600 baud.
    """
    if _crc_hqx is not None:
        return _crc_hqx(data, crc)
    return crc16_portable(data, crc)


def crc16_portable(data, crc=0xFFFF):
    """The same CRC in plain Python (what MicroPython runs; tests compare it with the C one)."""
    for b in data:
        x = ((crc >> 8) ^ b) & 0xFF
        x ^= x >> 4
        crc = ((crc << 8) ^ (x << 12) ^ (x << 5) ^ x) & 0xFFFF
    return crc


_SYNDROMES = {}  # type: dict  # CPython: syndrome -> bit position, built once per size (MicroPython: a loop)


def _syndrome_position(syn, nbits):
    """t such that x^t mod g == ``syn`` for t < nbits + 16, or -1 (g = 0x11021; no single-bit error fits)."""
    if sys.implementation.name != "micropython":
        tab = _SYNDROMES
        if tab.get("_n", 0) < nbits + 16:
            tab.clear()
            r = 1
            for t in range(nbits + 16):
                tab.setdefault(r, t)
                r = ((r << 1) ^ 0x1021) & 0xFFFF if r & 0x8000 else r << 1
            tab["_n"] = nbits + 16
        t = tab.get(syn, -1)
        return t if t < nbits + 16 else -1
    r = 1
    for t in range(nbits + 16):
        if r == syn:
            return t
        r = ((r << 1) ^ 0x1021) & 0xFFFF if r & 0x8000 else r << 1
    return -1


def correct_single_bit(data_and_fcs):
    """Repair one flipped bit in ``payload + fcs`` (bytes-like); return the corrected payload, or None.

    The CRC is linear: the syndrome ``crc16(payload) ^ fcs`` of a single flipped bit at distance k bits from the
    end of the payload is ``x^(k+16) mod g``, and of a flipped fcs bit j it is ``x^j``. CRC-16/CCITT's Hamming
    distance is 4 for frames up to 32,751 bits, so every 1-bit error is repaired and every 2-bit error is still
    detected (ATM's header check does the same with its CRC-8). A 3-bit error can be "repaired" into a wrong
    payload: only use this where a MAC checks the result, as the recorder session's tag does.
    """
    n = len(data_and_fcs) - TRAILER_LEN
    if n < 0:
        return None
    payload = data_and_fcs[:n]
    (fcs,) = struct.unpack_from(">H", data_and_fcs, n)
    syn = crc16(payload) ^ fcs
    if syn == 0:
        return bytes(payload)
    t = _syndrome_position(syn, n * 8)
    if t < 0:
        return None
    out = bytearray(payload)
    if t >= 16:  # a payload bit; t < 16: the fcs itself was hit and the payload is intact
        k = t - 16
        out[n - 1 - (k >> 3)] ^= 1 << (k & 7)
    return bytes(out)


class Frame:
    """One good frame. ``payload`` is bytes; ``corrected`` is True when one flipped payload bit was repaired."""

    corrected = False

    def __init__(self, type, seq, payload=b"", version=VERSION):
        self.type = type
        self.seq = seq
        self.payload = payload
        self.version = version

    @property
    def type_name(self):
        return TYPE_NAMES.get(self.type, "0x%02x" % self.type)

    def encode(self, max_payload=DEFAULT_MAX_PAYLOAD):
        return encode_frame(self.type, self.seq, self.payload, max_payload)

    def __eq__(self, other):
        return (isinstance(other, Frame) and self.type == other.type and self.seq == other.seq
                and bytes(self.payload) == bytes(other.payload) and self.version == other.version)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Frame(%s, seq=%d, payload=%r)" % (self.type_name, self.seq, bytes(self.payload))


class FrameErrorEvent:
    """``skipped`` bytes were discarded; ``reason`` names the first cause, ``message`` says what was seen.

    ``seq`` and ``type`` are set when the first rejected frame had a valid header (bad_crc, unknown_type,
    truncated after a good header), so the receiver can NACK that seq at once.
    """

    def __init__(self, reason, message, skipped, seq=None, type=None):
        self.reason = reason
        self.message = message
        self.skipped = skipped
        self.seq = seq
        self.type = type

    @property
    def field(self):
        return REASON_FIELDS.get(self.reason)

    def __eq__(self, other):
        return (isinstance(other, FrameErrorEvent) and self.reason == other.reason
                and self.message == other.message and self.skipped == other.skipped
                and self.seq == other.seq and self.type == other.type)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "FrameErrorEvent(%s, skipped=%d, seq=%r: %s)" % (self.reason, self.skipped, self.seq, self.message)


def _check_int(name, v, lo, hi):
    if type(v) is not int or v < lo or v > hi:
        raise LocalProtocolError("must be an integer %d..%d, got %r" % (lo, hi, v), field=name)


def _check_encode(ftype, seq, payload, max_payload):
    if ftype not in TYPE_NAMES:
        raise LocalProtocolError("unknown frame type %r, expected one of TYPE_*" % (ftype,), field="type")
    _check_int("seq", seq, 0, 0xFFFF)
    _check_int("max_payload", max_payload, 0, MAX_WIRE_PAYLOAD)
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("must be bytes, got %s" % type(payload).__name__, field="payload")
    n = len(payload)
    if n > max_payload:
        raise LocalProtocolError("payload of %d bytes exceeds max_payload %d" % (n, max_payload), field="length")
    return n


def encoded_len(payload_len):
    """Bytes on the wire for a payload of ``payload_len`` bytes."""
    return OVERHEAD + payload_len


def encode_frame_into(buf, offset, ftype, seq, payload=b"", max_payload=DEFAULT_MAX_PAYLOAD):
    """Write one frame into ``buf`` (bytearray or writable memoryview) at ``offset``; return the end offset."""
    n = _check_encode(ftype, seq, payload, max_payload)
    end = offset + OVERHEAD + n
    if offset < 0 or end > len(buf):
        raise LocalProtocolError("buffer of %d bytes too small for a %d-byte frame at offset %d"
                                 % (len(buf), OVERHEAD + n, offset), field="buf")
    buf[offset] = SYNC0
    buf[offset + 1] = SYNC[1]
    struct.pack_into(">BBHH", buf, offset + 2, VERSION, ftype, seq, n)
    mv = memoryview(buf)
    struct.pack_into(">H", buf, offset + 8, crc16(mv[offset + 2:offset + 8]))
    mv[offset + HEADER_LEN:offset + HEADER_LEN + n] = payload
    struct.pack_into(">H", buf, offset + HEADER_LEN + n, crc16(payload))
    return end


def encode_frame(ftype, seq, payload=b"", max_payload=DEFAULT_MAX_PAYLOAD):
    """Return the wire bytes of one frame."""
    n = _check_encode(ftype, seq, payload, max_payload)
    buf = bytearray(OVERHEAD + n)
    encode_frame_into(buf, 0, ftype, seq, payload, max_payload)
    return bytes(buf)


def _check_candidate(buf, p, avail, max_payload, final):
    """Judge the candidate frame at ``buf[p]`` (which starts with SYNC) with ``avail`` bytes available.

    Returns NEED_DATA, or (reason, message, skip, seq, type) for a rejection, or (None, length) for a good frame.
    """
    if avail < HEADER_LEN:
        if final:
            return (TRUNCATED, "stream ended %d bytes into a %d-byte header" % (avail, HEADER_LEN), 1, None, None)
        return NEED_DATA
    ver, ftype, seq, n, hcrc = struct.unpack_from(">BBHHH", buf, p + 2)
    calc = crc16(memoryview(buf)[p + 2:p + 8])
    if calc != hcrc:
        return (BAD_HEADER_CRC, "header crc 0x%04x, computed 0x%04x" % (hcrc, calc), 1, None, None)
    if ver != VERSION:
        return (BAD_VERSION, "version %d, expected %d" % (ver, VERSION), 1, None, None)
    if n > max_payload:
        return (TOO_LONG, "length %d exceeds max_payload %d" % (n, max_payload), 1, seq, ftype)
    total = OVERHEAD + n
    if avail < total:
        if final:
            return (TRUNCATED, "stream ended %d bytes into a %d-byte frame" % (avail, total), 1, seq, ftype)
        return NEED_DATA
    (fcs,) = struct.unpack_from(">H", buf, p + HEADER_LEN + n)
    calc = crc16(memoryview(buf)[p + HEADER_LEN:p + HEADER_LEN + n])
    if calc != fcs:
        return (BAD_CRC, "frame crc 0x%04x, computed 0x%04x" % (fcs, calc), 1, seq, ftype)
    if ftype not in TYPE_NAMES:
        return (UNKNOWN_TYPE, "type 0x%02x is not defined in version %d" % (ftype, VERSION), total, seq, ftype)
    return (None, n)


def decode_frame(data, max_payload=DEFAULT_MAX_PAYLOAD):
    """Decode exactly one complete frame (no leading or trailing bytes) or raise FrameError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("must be bytes, got %s" % type(data).__name__, field="data")
    avail = len(data)
    if avail < 2 or data[0] != SYNC0 or data[1] != SYNC[1]:
        raise FrameError("frame must start with sync 0xfbc1, got %r" % bytes(data[:2]), field="sync",
                         code="bad_frame")
    r = _check_candidate(data, 0, avail, max_payload, True)
    if r[0] is not None:
        raise FrameError(r[1], field=REASON_FIELDS[r[0]])
    n = r[1]
    if avail != OVERHEAD + n:
        raise FrameError("%d trailing bytes after a %d-byte frame" % (avail - OVERHEAD - n, OVERHEAD + n),
                         field="length")
    ver, ftype, seq = struct.unpack_from(">BBH", data, 2)
    return Frame(ftype, seq, bytes(data[HEADER_LEN:HEADER_LEN + n]), ver)


class FrameDecoder:
    """Stream decoder: ``receive_data(b)`` then ``next_event()`` until it returns NEED_DATA (or CLOSED).

    ``max_payload``: largest payload accepted (default 1024, protocols/defaults.py SERIAL_MAX_PAYLOAD).
    ``max_buffer``: bytes held at most; ``receive_data`` raises LocalProtocolError past it. Drain with
    ``next_event`` before feeding again; after NEED_DATA fewer than one max frame is held.
    ``report_limit``: a run of rejected bytes is reported once it reaches this many bytes.
    """

    def __init__(self, max_payload=DEFAULT_MAX_PAYLOAD, max_buffer=None, report_limit=None, correct=False):
        _check_int("max_payload", max_payload, 0, MAX_WIRE_PAYLOAD)
        self.correct = correct  # repair a payload with one flipped bit (see correct_single_bit)
        self.corrected = 0
        self.max_payload = max_payload
        self.max_frame = OVERHEAD + max_payload
        if max_buffer is None:
            max_buffer = self.max_frame + DEFAULT_RX_CHUNK
        _check_int("max_buffer", max_buffer, self.max_frame, 1 << 24)
        self.max_buffer = max_buffer
        if report_limit is None:
            report_limit = self.max_frame
        _check_int("report_limit", report_limit, 1, 1 << 30)
        self.report_limit = report_limit
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._idle = False
        self._run = None  # [reason, message, skipped, seq, type] of the pending error run
        self._ready = None  # a frame held back while its preceding error run is reported
        # counters for link statistics
        self.frames = 0
        self.errors = 0
        self.bytes_skipped = 0

    @property
    def buffered(self):
        """Bytes received but not yet consumed."""
        return len(self._buf) - self._pos

    def receive_data(self, data):
        """Add bytes from the line; ``b""`` means end of stream."""
        if self._eof:
            raise LocalProtocolError("receive_data after end of stream", field="data")
        if not data:
            self._eof = True
            return
        if self._pos:
            self._buf[0:self._pos] = b""
            self._pos = 0
        if len(self._buf) + len(data) > self.max_buffer:
            raise LocalProtocolError("buffer full: %d held + %d new > max_buffer %d; call next_event first"
                                     % (len(self._buf), len(data), self.max_buffer), field="data")
        self._buf.extend(data)
        self._idle = False

    def line_idle(self):
        """The line went quiet (the caller's inter-byte timeout): a partial frame held now is truncated.

        Lets the gateway report and drop a half frame at once instead of when the next bytes fill it, and
        reports a pending run of rejected bytes (e.g. the last frame failed its CRC) without waiting for the
        next good frame, so the receiver can NACK it at once.
        """
        if self.buffered or self._run is not None:
            self._idle = True

    def _discard(self, n, reason, message, seq=None, ftype=None):
        if self._run is None:
            self._run = [reason, message, 0, seq, ftype]
        self._run[2] += n
        self._pos += n
        self.bytes_skipped += n

    def _flush_run(self):
        r = self._run
        self._run = None
        self.errors += 1
        msg = r[1]
        if msg is None:  # garbage: worded from the total so it does not depend on how bytes were chunked
            msg = "%d bytes outside any frame (no sync marker 0xfbc1)" % r[2]
        return FrameErrorEvent(r[0], msg, r[2], r[3], r[4])

    def next_event(self):
        """Return the next Frame, FrameErrorEvent, NEED_DATA, or CLOSED (after end of stream)."""
        if self._ready is not None:
            ev = self._ready
            self._ready = None
            return ev
        buf = self._buf
        final = self._eof or self._idle
        while True:
            if self._run is not None and self._run[2] >= self.report_limit:
                return self._flush_run()
            p = self._pos
            avail = len(buf) - p
            if avail == 0:
                if final and self._run is not None:
                    return self._flush_run()
                self._idle = False
                return CLOSED if self._eof else NEED_DATA
            room = self.report_limit - (self._run[2] if self._run is not None else 0)
            i = buf.find(SYNC, p)
            if i < 0:
                # keep a trailing first marker byte: its partner may be in the next chunk
                keep = 1 if (not final and buf[len(buf) - 1] == SYNC0) else 0
                n = min(avail - keep, room)
                if n == 0:
                    return NEED_DATA
                self._discard(n, GARBAGE, None)
                continue
            if i > p:
                n = min(i - p, room)
                self._discard(n, GARBAGE, None)
                continue
            r = _check_candidate(buf, p, avail, self.max_payload, final)
            if r is NEED_DATA:
                return NEED_DATA
            fixed = None
            if r[0] == BAD_CRC and self.correct and r[4] in TYPE_NAMES:
                n = struct.unpack_from(">H", buf, p + 6)[0]
                fixed = correct_single_bit(memoryview(buf)[p + HEADER_LEN:p + OVERHEAD + n])
            if fixed is None and r[0] is not None:
                self._discard(r[2], r[0], r[1], r[3], r[4])  # a whole unknown-type frame goes at once
                continue
            n = r[1] if fixed is None else len(fixed)
            ver, ftype, seq = struct.unpack_from(">BBH", buf, p + 2)
            if fixed is None:
                frame = Frame(ftype, seq, bytes(memoryview(buf)[p + HEADER_LEN:p + HEADER_LEN + n]), ver)
            else:
                frame = Frame(ftype, seq, fixed, ver)
                frame.corrected = True
                self.corrected += 1
            self._pos = p + OVERHEAD + n
            self.frames += 1
            if self._run is not None:
                self._ready = frame
                return self._flush_run()
            return frame


def encode_ack(seq, mask=0):
    """ACK payload: ``seq`` (uint16 BE) received; ``mask`` bit i set = seq+1+i (mod 65536) received too.

    A plain ACK is 2 bytes; with a mask that fits 32 bits (selective ack of the next 32 seqs) it is 6 bytes, and
    with a wider one (up to the next 64 seqs, for a session window of 64 frames) it is 10 bytes.
    """
    _check_int("seq", seq, 0, 0xFFFF)
    _check_int("mask", mask, 0, 0xFFFFFFFFFFFFFFFF)
    if mask > 0xFFFFFFFF:
        return struct.pack(">HII", seq, mask >> 32, mask & 0xFFFFFFFF)
    if mask:
        return struct.pack(">HI", seq, mask)
    return struct.pack(">H", seq)


def decode_ack(payload):
    """Return (seq, mask) from an ACK payload, or raise FrameError."""
    n = len(payload)
    if n == 2:
        return struct.unpack(">H", payload)[0], 0
    if n == 6:
        return struct.unpack(">HI", payload)
    if n == 10:
        seq, hi, lo = struct.unpack(">HII", payload)
        return seq, (hi << 32) | lo
    raise FrameError("ACK payload of %d bytes, expected 2, 6 or 10" % n, field="ack")


def acked_seqs(seq, mask):
    """All seqs an ACK (seq, mask) acknowledges, in order."""
    out = [seq]
    i = 0
    while mask:
        if mask & 1:
            out.append((seq + 1 + i) & 0xFFFF)
        mask >>= 1
        i += 1
    return out


def encode_nack(seq, reason):
    """NACK payload: ``seq`` (uint16 BE) + ``reason`` (uint8, NACK_*)."""
    _check_int("seq", seq, 0, 0xFFFF)
    if reason not in NACK_REASONS:
        raise LocalProtocolError("unknown NACK reason %r, expected one of NACK_*" % (reason,), field="reason")
    return struct.pack(">HB", seq, reason)


def decode_nack(payload):
    """Return (seq, reason) from a NACK payload, or raise FrameError. Unknown reasons are kept as numbers."""
    if len(payload) != 3:
        raise FrameError("NACK payload of %d bytes, expected 3" % len(payload), field="nack")
    return struct.unpack(">HB", payload)


def next_seq(seq):
    """The sequence number after ``seq`` (uint16 wrap)."""
    return (seq + 1) & 0xFFFF
