"""MQTT 3.1.1 packet codec, client side (sans-IO; runs unchanged on MicroPython).

Theory of operation: a node's MQTT client writes CONNECT, PUBLISH (QoS 0/1), SUBSCRIBE, UNSUBSCRIBE and
PUBACK with the ``encode_*`` functions (PINGREQ and DISCONNECT are the constants ``PINGREQ_BYTES`` and
``DISCONNECT_BYTES``) and feeds what it reads from the broker into a ``PacketReader``, which hands back one
``Packet`` per complete packet (CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK, PINGRESP). The reader never buffers more than one packet's worth of unparsed bytes: the fixed
header is decoded as soon as it arrives and a packet announcing more than ``max_packet_size`` bytes is
rejected before its body is buffered.

This module is resident on every node, so it holds only what a client needs: one event class, shared checks,
short messages, and every check written once (the encoders validate; the client relies on them). The broker
side (CONNACK/SUBACK/UNSUBACK/PINGRESP encoders, decoding what a client sends, ``topic_matches``, the full
packet-type table) is ``protocols/mqttserver.py``, used by tests and simulators; it builds on the checks here
(``check_*``, ``frame``, ``encode_packet_id``, ``read_packet_id``).

QoS 2 is not implemented: the client never asks for it (it subscribes with at most QoS 1, §3.8.4 "granted
QoS ... never higher than requested"), so a QoS 2 PUBLISH, PUBREC, PUBREL or PUBCOMP is a protocol violation.

Every error from bad bytes is an ``MQTTPacketError`` naming the field, the observed value and the rule; API
misuse (an invalid topic to publish, a packet id of 0, ...) is a ``LocalProtocolError``. Section numbers refer
to the OASIS MQTT Version 3.1.1 standard (29 October 2014). Errors take the field positionally (``err(msg,
field)``): a keyword argument costs bytecode at every call site of a module every node keeps loaded.
"""

from .errors import LocalProtocolError, MQTTPacketError

# The packet types a client receives (§2.2.1 Table 2.1); mqttserver has all fourteen.
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBACK = 9
UNSUBACK = 11
PINGRESP = 13

# §2.2.1, indexed by packet type; split only when an error message needs a name.
_NAMES = ("reserved CONNECT CONNACK PUBLISH PUBACK PUBREC PUBREL PUBCOMP SUBSCRIBE SUBACK UNSUBSCRIBE "
          "UNSUBACK PINGREQ PINGRESP DISCONNECT reserved")

# CONNACK return codes, §3.2.2.3 Table 3.1 (index = code; 6..255 are reserved)
CONNACK_NAMES = ("accepted", "unacceptable protocol version", "identifier rejected", "server unavailable",
                 "bad user name or password", "not authorized")

MAX_REMAINING_LENGTH = 268435455  # §2.2.3: four length bytes, 0xFF 0xFF 0xFF 0x7F

NEED_DATA = "NEED_DATA"  # next_event(): feed more bytes (compare with ``is``)
CLOSED = "CLOSED"  # next_event(): the peer ended the stream cleanly between packets


def packet_name(t):
    return _NAMES.split()[t]


class Packet:
    """One decoded packet: ``type`` (CONNACK, PUBLISH, ...) plus the fields of that type.

    CONNACK: ``session_present``, ``return_code`` (0 = accepted; ``CONNACK_NAMES[code]``). PUBLISH: ``topic``
    (str), ``payload`` (bytes), ``qos``, ``retain``, ``dup``, ``packet_id`` (None at QoS 0). PUBACK, UNSUBACK:
    ``packet_id``. SUBACK: ``packet_id``, ``return_codes`` (one per filter in SUBSCRIBE order; 0/1/2 = granted
    QoS, 0x80 = refused). PINGRESP: nothing. One class for all (not one per type) because classes are what
    costs a node's heap; equality compares every field (tests).
    """

    def __init__(self, type, **fields):
        self.type = type
        for k in fields:
            setattr(self, k, fields[k])

    def __eq__(self, other):
        return isinstance(other, Packet) and self.__dict__ == other.__dict__

    def __repr__(self):
        return "Packet(%s, %r)" % (packet_name(self.type), self.__dict__)


# ---- shared checks (also used by mqttserver) ---------------------------------------------------------------

def check_int(v, i, n, field):
    """``LocalProtocolError`` unless ``v`` is an int in ``i..n``."""
    if not isinstance(v, int) or not i <= v <= n:
        raise LocalProtocolError("must be an int in %d..%d, got %r" % (i, n, v), field)


def check_utf8(data, field, err=MQTTPacketError):
    """UTF-8 Encoded String rules of §1.5.3: well-formed UTF-8, no surrogates (U+D800..U+DFFF), no U+0000.

    Written out by hand so both runtimes apply exactly the same rules (MicroPython's decoder is more lenient).
    """
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        why = None if b else "U+0000"
        need = 0
        if b > 0x7F:
            need = 1 if 0xC2 <= b < 0xE0 else 2 if 0xE0 <= b < 0xF0 else 3 if 0xF0 <= b < 0xF5 else 0
            if not need:
                why = "lead byte 0x%02x" % b
            elif i + need >= n:
                why = "truncated"
            else:
                cp = b & (0x3F >> need)
                for c in data[i + 1:i + need + 1]:
                    if c & 0xC0 != 0x80:
                        why = "continuation byte 0x%02x" % c
                    cp = cp << 6 | c & 0x3F
                if not why and (cp < (0x80, 0x800, 0x10000)[need - 1] or cp > 0x10FFFF
                                or 0xD7FF < cp < 0xE000):
                    why = "U+%04X overlong, surrogate or > U+10FFFF" % cp
        if why:
            raise err("bad UTF-8 at byte %d: %s" % (i, why), field)  # §1.5.3
        i += need + 1


def check_topic(b, field, err=MQTTPacketError, kind=False):
    """Topic name rules (§4.7.3, §3.3.2.1: 1..65535 bytes of UTF-8, no '+'/'#'), or with ``kind`` true the
    topic filter rules (§4.7.1: '#' only as the whole last level, '+' only as a whole level). Returns
    ``b``."""
    if not b:
        raise err("empty", field)  # §4.7.3
    check_utf8(b, field, err)
    s = b.split(b"/")
    for i, v in enumerate(s):
        # a name has no wildcard (§3.3.2.1); a filter has '#' only as the whole last level, '+' as a level
        if (b"#" in v or b"+" in v) and not (kind and (v == b"+" or v == b"#" and i == len(s) - 1)):
            raise err("%r: misplaced wildcard" % (b,), field)
    return b


def check_flags(b, n):
    if b & 15 != n:
        raise MQTTPacketError("%s: 0x%x, must be 0x%x" % (packet_name(b >> 4), b & 15, n), "flags")  # §2.2.2


def _field(s, field, kind=0):
    """str -> UTF-8 bytes (bytes-like passed through) with the two-byte length prefix of §1.5.3; ``kind`` 1
    checks it as a topic name, 2 as a topic filter (§4.7); -1: a payload (no prefix, no 64 KiB limit)."""
    if isinstance(s, str):
        s = s.encode()
    elif isinstance(s, (bytes, bytearray, memoryview)):
        s = bytes(s)
    else:
        raise LocalProtocolError("not str/bytes: %s" % type(s).__name__, field)
    if kind < 0:
        return s
    if len(s) > 65535:
        raise LocalProtocolError("%d bytes > 65535" % len(s), field)  # §1.5.3
    if kind:
        check_topic(s, field, LocalProtocolError, kind > 1)
    return bytes((len(s) >> 8, len(s) & 255)) + s


# ---- framing -----------------------------------------------------------------------------------------------

def encode_varint(n):
    """Remaining Length, §2.2.3: 7 bits per byte, least significant first, high bit = more bytes follow."""
    check_int(n, 0, MAX_REMAINING_LENGTH, "remaining_length")
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def decode_varint(buf, offset=0):
    """Return ``(value, next_offset)``, or None if ``buf`` ends inside the number.

    §2.2.3 allows at most four bytes: a fourth byte with its continuation bit set is rejected at once (no need
    to wait for a fifth). A non-minimal encoding (e.g. 0x80 0x00) is accepted; 3.1.1 does not forbid it.
    """
    value = shift = 0
    i = offset
    while i < len(buf):
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7
        if shift == 28:
            # §2.2.3
            raise MQTTPacketError("4th byte 0x%02x continues; 4 bytes at most" % b, "remaining_length")
    return None


def frame(b, data):
    """First byte ``b`` + Remaining Length + ``data``."""
    return bytes((b,)) + encode_varint(len(data)) + data


def encode_packet_id(v):
    """Packet identifier, §2.3.1: 1..65535, two bytes big-endian."""
    check_int(v, 1, 65535, "packet_id")
    return bytes((v >> 8, v & 255))


def read_packet_id(t, data, i):
    n = data[i] << 8 | data[i + 1]
    if not n:
        raise MQTTPacketError("0 in %s, must be 1..65535" % packet_name(t), "packet_id")  # §2.3.1
    return n


# ---- client -> broker --------------------------------------------------------------------------------------

def encode_connect(client_id, clean_session=True, keepalive=60, username=None, password=None, will_topic=None,
                   will_payload=b"", will_qos=0, will_retain=False):
    """CONNECT, §3.1. ``keepalive`` in seconds (0 disables it, §3.1.2.10)."""
    body = _field(client_id, "client_id")
    if len(body) == 2 and not clean_session:
        raise LocalProtocolError("empty needs clean_session", "client_id")  # §3.1.3.1
    check_int(keepalive, 0, 65535, "keepalive")
    flags = 2 if clean_session else 0
    if will_topic is not None:
        check_int(will_qos, 0, 2, "will_qos")
        flags |= 4 | will_qos << 3 | (0x20 if will_retain else 0)
        body += _field(will_topic, "will_topic", 1) + _field(will_payload, "will_payload")
    elif will_qos or will_retain:
        raise LocalProtocolError("missing for will_qos/will_retain", "will_topic")  # §3.1.2.6
    if username is not None:
        flags |= 0x80
        body += _field(username, "username")
    if password is not None:
        if username is None:
            raise LocalProtocolError("needs a username", "password")  # §3.1.2.9
        flags |= 0x40
        body += _field(password, "password")
    # §3.1.2.1 protocol name "MQTT", §3.1.2.2 level 4 (= 3.1.1), flags, keepalive
    return frame(0x10, b"\x00\x04MQTT\x04" + bytes((flags, keepalive >> 8, keepalive & 255)) + body)


def encode_publish(topic, payload=b"", qos=0, retain=False, dup=False, packet_id=None):
    """PUBLISH, §3.3 (QoS 0 or 1; also what a broker sends). A QoS 1 resend uses the same ``packet_id`` with
    ``dup=True`` (§3.3.1.1)."""
    var = _field(topic, "topic", 1)
    check_int(qos, 0, 1, "qos")  # QoS 2 is not implemented
    if qos:
        var += encode_packet_id(packet_id)
    elif dup or packet_id is not None:
        raise LocalProtocolError("must be unset at QoS 0, got dup=%r packet_id=%r" % (dup, packet_id),
                                 "dup" if dup else "packet_id")  # §3.3.1.1, §2.3.1
    return frame(0x30 | (8 if dup else 0) | qos << 1 | (1 if retain else 0),
                 var + _field(payload, "payload", -1))


def encode_subscribe(packet_id, topics, b=0x82):
    """SUBSCRIBE, §3.8: ``topics`` is a non-empty list of ``(filter, qos)``. Fixed-header flags are 0b0010.
    With ``b`` (first byte) 0xA2: UNSUBSCRIBE, see ``encode_unsubscribe``."""
    body = encode_packet_id(packet_id)
    if not topics:
        raise LocalProtocolError("needs at least one filter", "topics")  # §3.8.3, §3.10.3
    for it in topics:
        if b == 0x82:
            check_int(it[1], 0, 2, "qos")
            body += _field(it[0], "topic_filter", 2) + bytes((it[1],))
        else:
            body += _field(it, "topic_filter", 2)
    return frame(b, body)


def encode_unsubscribe(packet_id, topics):
    """UNSUBSCRIBE, §3.10: a non-empty list of filters. Fixed-header flags are 0b0010."""
    return encode_subscribe(packet_id, topics, 0xA2)


def encode_puback(packet_id):
    """PUBACK, §3.4 (the same bytes both ways)."""
    return b"\x40\x02" + encode_packet_id(packet_id)


# Packets without a variable part: constants, not functions (each def costs a node's heap).
PINGREQ_BYTES = b"\xc0\x00"  # §3.12
DISCONNECT_BYTES = b"\xe0\x00"  # §3.14


# ---- broker -> client --------------------------------------------------------------------------------------

def decode_packet(b, data):
    """Decode one broker-to-client packet (or a PUBLISH/PUBACK either way) from its first byte ``b`` and its
    body ``data`` (after the Remaining Length)."""
    t = b >> 4
    n = len(data)
    if t == PUBLISH:  # §3.3
        qos = b >> 1 & 3
        if qos > 1:
            raise MQTTPacketError("%d, must be 0 or 1 (QoS 2 not implemented)" % qos, "qos")  # §3.3.1.2
        if b & 8 and not qos:
            raise MQTTPacketError("1 at QoS 0, must be 0", "dup")  # §3.3.1.1
        end = 2 + (data[0] << 8 | data[1]) if n > 1 else n + 3
        if end + 2 * qos > n:
            raise MQTTPacketError("%d: topic (+ packet id) runs past it" % n, "remaining_length")
        topic = check_topic(bytes(data[2:end]), "topic")
        pid = None
        if qos:
            pid = read_packet_id(t, data, end)
            end += 2
        return Packet(t, topic=topic.decode(), payload=bytes(data[end:]), qos=qos, retain=bool(b & 1),
                      dup=bool(b & 8), packet_id=pid)
    if 5 <= t <= 7:
        raise MQTTPacketError("%s: QoS 2 not implemented" % packet_name(t), "packet_type")  # §3.8.4
    if t not in (CONNACK, PUBACK, SUBACK, UNSUBACK, PINGRESP):
        raise MQTTPacketError("%d (%s) not sent by a broker" % (t, packet_name(t)), "packet_type")  # §2.2.1
    check_flags(b, 0)
    want = 0 if t == PINGRESP else 3 if t == SUBACK else 2
    if n != want and not (t == SUBACK and n > want):
        raise MQTTPacketError("%s: %d, must be %s%d" % (packet_name(t), n, ">= " if t == SUBACK else "",
                                                          want), "remaining_length")
    if t == PINGRESP:
        return Packet(t)
    if t == CONNACK:
        if data[0] & 0xFE:
            raise MQTTPacketError("0x%02x, bits 7-1 must be 0" % data[0], "connack_flags")  # §3.2.2.1
        rc = data[1]
        if rc > 5:
            raise MQTTPacketError("%d, must be 0..5" % rc, "connack_return_code")  # §3.2.2.3
        if data[0] and rc:
            raise MQTTPacketError("1 with return code %d, must be 0" % rc, "session_present")  # §3.2.2.2
        return Packet(t, session_present=bool(data[0]), return_code=rc)
    pid = read_packet_id(t, data, 0)
    if t != SUBACK:
        return Packet(t, packet_id=pid)
    codes = list(data[2:])
    for c in codes:
        if c not in (0, 1, 2, 0x80):
            raise MQTTPacketError("0x%02x, must be 0, 1, 2 or 0x80" % c, "suback_return_code")  # §3.9.3
    return Packet(t, packet_id=pid, return_codes=codes)


class PacketReader:
    """Stream decoder: ``receive_data(b)`` (b"" = end of stream), then ``next_event()`` until ``NEED_DATA``.

    ``decode(first_byte, body)`` turns one framed packet into a ``Packet`` (default: the broker-to-client
    packets; ``mqttserver.server_reader`` passes the client-to-broker decoder). After an ``MQTTPacketError``
    the reader is broken for good (sticky, as in h11): MQTT cannot resynchronise a byte stream, so the caller
    closes the connection (§4.8).
    """

    def __init__(self, max_packet_size=None, decode=decode_packet):
        if max_packet_size is None:
            from .defaults import MQTT_MAX_PACKET_SIZE as max_packet_size
        check_int(max_packet_size, 2, MAX_REMAINING_LENGTH + 5, "max_packet_size")
        self.max_packet_size = max_packet_size
        self.decode = decode
        self._buf = bytearray()
        self._eof = False
        self._error = None
        self._head = None  # (header length, total length) of the packet at the front, once known

    def receive_data(self, data):
        if self._error is None:
            if self._eof:
                raise LocalProtocolError("data after end of stream", "receive_data")
            if data:
                self._buf.extend(data)
            else:
                self._eof = True
        self.next_event(True)  # re-raises a sticky error; rejects an oversized packet from its header alone

    def next_event(self, _header_only=False):
        if self._error is not None:
            raise self._error
        buf = self._buf
        try:
            if self._head is None and len(buf) > 1:
                r = decode_varint(buf, 1)
                if r is not None:
                    total = r[0] + r[1]
                    if total > self.max_packet_size:
                        raise MQTTPacketError("%d bytes announced, limit is %d"
                                              % (total, self.max_packet_size), "remaining_length")
                    self._head = (r[1], total)
            if _header_only:
                return None
            h = self._head
            if h is None or len(buf) < h[1]:
                if not self._eof:
                    return NEED_DATA
                if buf:
                    raise MQTTPacketError("ended inside a packet (%d bytes)" % len(buf), "stream")
                return CLOSED
            self._buf = buf[h[1]:]
            self._head = None
            # a view, not a copy: decode copies out only what it keeps (a 4 KB clip chunk is copied once, not
            # three times, which on a node's fragmented heap is the difference between fitting and not)
            return self.decode(buf[0], memoryview(buf)[h[0]:h[1]])
        except MQTTPacketError as e:
            self._error = e
            self._buf = bytearray()
            raise
