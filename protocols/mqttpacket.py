"""MQTT 3.1.1 packet codec for the client side (sans-IO; runs unchanged on MicroPython).

Theory of operation: a node's MQTT client writes CONNECT, SUBSCRIBE, UNSUBSCRIBE, PUBLISH (QoS 0/1), PUBACK,
PINGREQ and DISCONNECT with the ``encode_*`` functions, and feeds the bytes it reads from the broker into a
``PacketReader``, which hands back one event per complete packet: ``ConnAck``, ``SubAck``, ``Publish``,
``PubAck``, ``UnsubAck``, ``PingResp``. The reader never buffers more than one packet's worth of unparsed
bytes: the fixed header is decoded as soon as it arrives and a packet that announces more than
``max_packet_size`` bytes is rejected before its body is buffered.

QoS 2 is not implemented: the client never asks for it (it subscribes with at most QoS 1, MQTT 3.1.1
§3.8.4 "granted QoS ... never higher than requested"), so a QoS 2 PUBLISH, PUBREC, PUBREL or PUBCOMP from the
broker is a protocol violation here. The broker-side encoders at the end (CONNACK, SUBACK, ...) exist for
tests and simulators that play the broker.

Every error from bad bytes is an ``MQTTPacketError`` naming the field, the observed value and the rule; API
misuse (an invalid topic to publish, a packet id of 0, ...) is a ``LocalProtocolError``. Section numbers
refer to the OASIS MQTT Version 3.1.1 standard (29 October 2014).
"""

from protocols.errors import LocalProtocolError, MQTTPacketError

# Control packet types, §2.2.1 Table 2.1
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PACKET_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK", PUBREC: "PUBREC",
    PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}

# CONNACK return codes, §3.2.2.3 Table 3.1
CONNACK_ACCEPTED = 0
CONNACK_NAMES = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

SUBACK_FAILURE = 0x80  # §3.9.3 return code for a refused subscription

MAX_REMAINING_LENGTH = 268435455  # §2.2.3: four length bytes, 0xFF 0xFF 0xFF 0x7F
PROTOCOL_LEVEL = 4  # §3.1.2.2: 4 means 3.1.1


class _NeedData:
    def __repr__(self):
        return "NEED_DATA"


class _Closed:
    def __repr__(self):
        return "CLOSED"


NEED_DATA = _NeedData()  # next_event(): feed more bytes
CLOSED = _Closed()  # next_event(): the broker ended the stream cleanly between packets


# ---- events ------------------------------------------------------------------------------------------------

class Event:
    """Base of the decoded packets; equality compares the fields (handy in tests)."""

    _fields = ()

    def __eq__(self, other):
        if type(self) is not type(other):
            return False
        for f in self._fields:
            if getattr(self, f) != getattr(other, f):
                return False
        return True

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        args = ", ".join("%s=%r" % (f, getattr(self, f)) for f in self._fields)
        return "%s(%s)" % (type(self).__name__, args)


class ConnAck(Event):
    _fields = ("session_present", "return_code")

    def __init__(self, session_present, return_code):
        self.session_present = session_present
        self.return_code = return_code

    @property
    def name(self):
        return CONNACK_NAMES.get(self.return_code, "reserved")

    @property
    def accepted(self):
        return self.return_code == CONNACK_ACCEPTED


class SubAck(Event):
    """``return_codes``: one per filter in SUBSCRIBE order; 0/1/2 = granted QoS, 0x80 = refused."""

    _fields = ("packet_id", "return_codes")

    def __init__(self, packet_id, return_codes):
        self.packet_id = packet_id
        self.return_codes = return_codes


class Publish(Event):
    """An application message. ``topic`` is a str, ``payload`` bytes; ``packet_id`` is None for QoS 0."""

    _fields = ("topic", "payload", "qos", "retain", "dup", "packet_id")

    def __init__(self, topic, payload, qos=0, retain=False, dup=False, packet_id=None):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id


class PubAck(Event):
    _fields = ("packet_id",)

    def __init__(self, packet_id):
        self.packet_id = packet_id


class UnsubAck(Event):
    _fields = ("packet_id",)

    def __init__(self, packet_id):
        self.packet_id = packet_id


class PingResp(Event):
    _fields = ()


# ---- primitives --------------------------------------------------------------------------------------------

def encode_varint(n):
    """Remaining Length, §2.2.3: 7 bits per byte, least significant first, high bit = more bytes follow."""
    if not isinstance(n, int) or n < 0 or n > MAX_REMAINING_LENGTH:
        raise LocalProtocolError("must be an int in 0..%d, got %r" % (MAX_REMAINING_LENGTH, n),
                                 field="remaining_length")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(buf, offset=0):
    """Return ``(value, next_offset)``, or None if ``buf`` ends inside the number.

    §2.2.3 allows at most four bytes: a fourth byte with its continuation bit set is rejected at once (there
    is no need to wait for a fifth). A non-minimal encoding (e.g. 0x80 0x00) is accepted; 3.1.1 does not
    forbid it.
    """
    value = 0
    shift = 0
    i = offset
    n = len(buf)
    while i < n:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
        if i - offset == 4:
            raise MQTTPacketError("a 4th byte with the continuation bit set (0x%02x); at most 4 bytes "
                                  "allowed (§2.2.3)" % b, field="remaining_length")
    return None


def _check_utf8(data, field):
    """UTF-8 Encoded String rules of §1.5.3: well-formed UTF-8, no surrogates (U+D800..U+DFFF), no U+0000.

    Written out by hand so both runtimes apply exactly the same rules (MicroPython's decoder is more lenient).
    """
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            if b == 0:
                raise MQTTPacketError("contains U+0000 at byte %d; not allowed (§1.5.3)" % i, field=field)
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            need, cp, low = 1, b & 0x1F, 0x80
        elif 0xE0 <= b <= 0xEF:
            need, cp, low = 2, b & 0x0F, 0x800
        elif 0xF0 <= b <= 0xF4:
            need, cp, low = 3, b & 0x07, 0x10000
        else:
            raise MQTTPacketError("invalid UTF-8 lead byte 0x%02x at byte %d (§1.5.3)" % (b, i), field=field)
        if i + need >= n:
            raise MQTTPacketError("truncated UTF-8 sequence at byte %d (§1.5.3)" % i, field=field)
        for k in range(1, need + 1):
            c = data[i + k]
            if c & 0xC0 != 0x80:
                raise MQTTPacketError("invalid UTF-8 continuation byte 0x%02x at byte %d (§1.5.3)"
                                      % (c, i + k), field=field)
            cp = (cp << 6) | (c & 0x3F)
        if cp < low or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
            raise MQTTPacketError("invalid code point U+%04X at byte %d: overlong, surrogate or beyond "
                                  "U+10FFFF (§1.5.3)" % (cp, i), field=field)
        i += need + 1


def _to_bytes(s, field):
    """str -> UTF-8 bytes (bytes-like passed through), length-checked for a two-byte length prefix."""
    if isinstance(s, str):
        b = s.encode("utf-8")
    elif isinstance(s, (bytes, bytearray, memoryview)):
        b = bytes(s)
    else:
        raise LocalProtocolError("must be str or bytes, got %s" % type(s).__name__, field=field)
    if len(b) > 65535:
        raise LocalProtocolError("is %d bytes; at most 65535 fit a length prefix (§1.5.3)" % len(b),
                                 field=field)
    return b


def _lp(b):
    """Two-byte big-endian length prefix + data (§1.5.3)."""
    n = len(b)
    return bytes((n >> 8, n & 0xFF)) + b


def _payload_bytes(payload, field="payload"):
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise LocalProtocolError("must be bytes or str, got %s" % type(payload).__name__, field=field)


def _check_packet_id(pid):
    if not isinstance(pid, int) or not 1 <= pid <= 65535:
        raise LocalProtocolError("must be an int in 1..65535, got %r (§2.3.1)" % (pid,), field="packet_id")


def _packet(first_byte, body):
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def validate_topic_name(topic):
    """A topic to PUBLISH to (§4.7.3, §3.3.2.1): 1..65535 bytes of UTF-8, no wildcards, no U+0000.

    Raises LocalProtocolError (this is checked on what *we* are about to send).
    """
    b = _to_bytes(topic, "topic")
    if not b:
        raise LocalProtocolError("is empty; a topic name is at least one character (§4.7.3)", field="topic")
    if b"+" in b or b"#" in b:
        raise LocalProtocolError("%r contains a wildcard; not allowed in a topic name (§3.3.2.1)" % (topic,),
                                 field="topic")
    try:
        _check_utf8(b, "topic")
    except MQTTPacketError as e:
        raise LocalProtocolError(e.msg, field="topic") from None
    return b


def validate_topic_filter(flt):
    """A SUBSCRIBE/UNSUBSCRIBE filter (§4.7.1): '#' only as the whole last level, '+' only as a level."""
    b = _to_bytes(flt, "topic_filter")
    if not b:
        raise LocalProtocolError("is empty; a topic filter is at least one character (§4.7.3)",
                                 field="topic_filter")
    try:
        _check_utf8(b, "topic_filter")
    except MQTTPacketError as e:
        raise LocalProtocolError(e.msg, field="topic_filter") from None
    levels = b.split(b"/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if b"#" in level and (level != b"#" or i != last):
            raise LocalProtocolError("%r: '#' must be a whole level and the last one (§4.7.1.2)" % (flt,),
                                     field="topic_filter")
        if b"+" in level and level != b"+":
            raise LocalProtocolError("%r: '+' must occupy a whole level (§4.7.1.3)" % (flt,),
                                     field="topic_filter")
    return b


def topic_matches(flt, topic):
    """True if topic name ``topic`` matches topic filter ``flt`` (§4.7).

    '+' matches exactly one level (possibly empty), '#' matches the parent level and any number of children,
    and a filter that starts with a wildcard does not match a topic starting with '$' (§4.7.2).
    """
    if topic[:1] == "$" and flt[:1] in ("+", "#"):
        return False
    fl = flt.split("/")
    tl = topic.split("/")
    nf = len(fl)
    for i in range(nf):
        f = fl[i]
        if f == "#":
            return True  # matches the parent ("a/#" matches "a") and everything below
        if i >= len(tl):
            return False
        if f != "+" and f != tl[i]:
            return False
    return nf == len(tl)


# ---- client -> broker encoders -----------------------------------------------------------------------------

def encode_connect(client_id, clean_session=True, keepalive=60, username=None, password=None, will_topic=None,
                   will_payload=b"", will_qos=0, will_retain=False):
    """CONNECT, §3.1. ``keepalive`` in seconds (0 disables it, §3.1.2.10)."""
    cid = _to_bytes(client_id, "client_id")
    if not cid and not clean_session:
        raise LocalProtocolError("is empty with clean_session=False; the server must reject it (§3.1.3.1)",
                                 field="client_id")
    if not isinstance(keepalive, int) or not 0 <= keepalive <= 65535:
        raise LocalProtocolError("must be an int in 0..65535 seconds, got %r" % (keepalive,),
                                 field="keepalive")
    flags = 0x02 if clean_session else 0
    payload = _lp(cid)
    if will_topic is not None:
        if will_qos not in (0, 1, 2):
            raise LocalProtocolError("must be 0, 1 or 2, got %r (§3.1.2.6)" % (will_qos,), field="will_qos")
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        payload += _lp(validate_topic_name(will_topic)) + _lp(_to_bytes(_payload_bytes(will_payload,
                                                                                       "will_payload"),
                                                                         "will_payload"))
    elif will_qos or will_retain:
        raise LocalProtocolError("will_qos/will_retain set without a will_topic (§3.1.2.6, §3.1.2.7)",
                                 field="will_topic")
    if username is not None:
        flags |= 0x80
        payload += _lp(_to_bytes(username, "username"))
    if password is not None:
        if username is None:
            raise LocalProtocolError("a password needs a username (§3.1.2.9)", field="password")
        flags |= 0x40
        payload += _lp(_to_bytes(password, "password"))
    var = b"\x00\x04MQTT" + bytes((PROTOCOL_LEVEL, flags, keepalive >> 8, keepalive & 0xFF))
    return _packet(CONNECT << 4, var + payload)


def encode_publish(topic, payload=b"", qos=0, retain=False, dup=False, packet_id=None):
    """PUBLISH, §3.3 (QoS 0 or 1). A QoS 1 resend uses the same ``packet_id`` with ``dup=True`` (§3.3.1.1)."""
    t = validate_topic_name(topic)
    body = _payload_bytes(payload)
    if qos == 0:
        if dup:
            raise LocalProtocolError("DUP must be 0 for a QoS 0 message (§3.3.1.1)", field="dup")
        if packet_id is not None:
            raise LocalProtocolError("a QoS 0 PUBLISH has no packet id (§2.3.1), got %r" % (packet_id,),
                                     field="packet_id")
        var = _lp(t)
    elif qos == 1:
        _check_packet_id(packet_id)
        var = _lp(t) + bytes((packet_id >> 8, packet_id & 0xFF))
    else:
        raise LocalProtocolError("must be 0 or 1 (QoS 2 is not implemented), got %r" % (qos,), field="qos")
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return _packet(first, var + body)


def encode_subscribe(packet_id, topics):
    """SUBSCRIBE, §3.8: ``topics`` is a non-empty list of ``(filter, qos)``. Fixed-header flags are 0b0010."""
    _check_packet_id(packet_id)
    if not topics:
        raise LocalProtocolError("must name at least one filter (§3.8.3)", field="topics")
    body = bytes((packet_id >> 8, packet_id & 0xFF))
    for flt, qos in topics:
        if qos not in (0, 1, 2):
            raise LocalProtocolError("must be 0, 1 or 2, got %r (§3.8.3.1)" % (qos,), field="qos")
        body += _lp(validate_topic_filter(flt)) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_unsubscribe(packet_id, filters):
    """UNSUBSCRIBE, §3.10: a non-empty list of filters. Fixed-header flags are 0b0010."""
    _check_packet_id(packet_id)
    if not filters:
        raise LocalProtocolError("must name at least one filter (§3.10.3)", field="filters")
    body = bytes((packet_id >> 8, packet_id & 0xFF))
    for flt in filters:
        body += _lp(validate_topic_filter(flt))
    return _packet((UNSUBSCRIBE << 4) | 0x02, body)


def encode_puback(packet_id):
    """PUBACK, §3.4 (also sent by the broker; the bytes are the same both ways)."""
    _check_packet_id(packet_id)
    return bytes((PUBACK << 4, 2, packet_id >> 8, packet_id & 0xFF))


def encode_pingreq():
    return b"\xc0\x00"  # §3.12


def encode_disconnect():
    return b"\xe0\x00"  # §3.14


# ---- broker -> client encoders (for tests and simulators playing the broker) -------------------------------

def encode_connack(return_code=0, session_present=False):
    if return_code not in CONNACK_NAMES:
        raise LocalProtocolError("must be 0..5, got %r (§3.2.2.3)" % (return_code,), field="return_code")
    if return_code and session_present:
        raise LocalProtocolError("session_present must be 0 with a non-zero return code (§3.2.2.2)",
                                 field="session_present")
    return bytes((CONNACK << 4, 2, 1 if session_present else 0, return_code))


def encode_suback(packet_id, return_codes):
    _check_packet_id(packet_id)
    if not return_codes:
        raise LocalProtocolError("must hold one code per filter, got none (§3.9.3)", field="return_codes")
    for c in return_codes:
        if c not in (0, 1, 2, SUBACK_FAILURE):
            raise LocalProtocolError("must be 0, 1, 2 or 0x80, got %r (§3.9.3)" % (c,), field="return_codes")
    return _packet(SUBACK << 4, bytes((packet_id >> 8, packet_id & 0xFF)) + bytes(return_codes))


def encode_unsuback(packet_id):
    _check_packet_id(packet_id)
    return bytes((UNSUBACK << 4, 2, packet_id >> 8, packet_id & 0xFF))


def encode_pingresp():
    return b"\xd0\x00"  # §3.13


# ---- broker -> client decoding -----------------------------------------------------------------------------

def _u16(body, i):
    return (body[i] << 8) | body[i + 1]


def _expect_flags(ptype, flags, expected):
    if flags != expected:
        raise MQTTPacketError("%s fixed-header flags are 0x%x, must be 0x%x (§2.2.2)"
                              % (PACKET_NAMES[ptype], flags, expected), field="flags")


def _expect_len(ptype, body, n):
    if len(body) != n:
        raise MQTTPacketError("%s remaining length is %d, must be %d" % (PACKET_NAMES[ptype], len(body), n),
                              field="remaining_length")


def _packet_id(ptype, body, i):
    pid = _u16(body, i)
    if pid == 0:
        raise MQTTPacketError("%s packet id is 0; must be non-zero (§2.3.1)" % PACKET_NAMES[ptype],
                              field="packet_id")
    return pid


def decode_packet(first_byte, body):
    """Decode one broker-to-client packet from its first byte and its body (after the Remaining Length)."""
    ptype = first_byte >> 4
    flags = first_byte & 0x0F
    if ptype == PUBLISH:
        return _decode_publish(flags, body)
    if ptype == PUBACK or ptype == UNSUBACK:
        _expect_flags(ptype, flags, 0)
        _expect_len(ptype, body, 2)
        pid = _packet_id(ptype, body, 0)
        return PubAck(pid) if ptype == PUBACK else UnsubAck(pid)
    if ptype == SUBACK:
        _expect_flags(ptype, flags, 0)
        if len(body) < 3:
            raise MQTTPacketError("SUBACK remaining length is %d, must be at least 3 (§3.9)" % len(body),
                                  field="remaining_length")
        pid = _packet_id(ptype, body, 0)
        codes = list(body[2:])
        for c in codes:
            if c not in (0, 1, 2, SUBACK_FAILURE):
                raise MQTTPacketError("0x%02x is reserved; must be 0x00, 0x01, 0x02 or 0x80 (§3.9.3)" % c,
                                      field="suback_return_code")
        return SubAck(pid, codes)
    if ptype == CONNACK:
        _expect_flags(ptype, flags, 0)
        _expect_len(ptype, body, 2)
        if body[0] & 0xFE:
            raise MQTTPacketError("acknowledge flags are 0x%02x; bits 7-1 are reserved, must be 0 (§3.2.2.1)"
                                  % body[0], field="connack_flags")
        rc = body[1]
        if rc not in CONNACK_NAMES:
            raise MQTTPacketError("%d is reserved; must be 0..5 (§3.2.2.3)" % rc, field="connack_return_code")
        sp = bool(body[0] & 1)
        if sp and rc:
            raise MQTTPacketError("session present is 1 with return code %d; must be 0 (§3.2.2.2)" % rc,
                                  field="session_present")
        return ConnAck(sp, rc)
    if ptype == PINGRESP:
        _expect_flags(ptype, flags, 0)
        _expect_len(ptype, body, 0)
        return PingResp()
    if ptype in (PUBREC, PUBREL, PUBCOMP):
        raise MQTTPacketError("%s received; QoS 2 is never requested by this client" % PACKET_NAMES[ptype],
                              field="packet_type")
    if ptype in PACKET_NAMES:
        raise MQTTPacketError("%s is sent by clients, not by a broker (§2.2.1)" % PACKET_NAMES[ptype],
                              field="packet_type")
    raise MQTTPacketError("%d is reserved; must be 1..14 (§2.2.1)" % ptype, field="packet_type")


def _decode_publish(flags, body):
    dup = bool(flags & 0x08)
    qos = (flags >> 1) & 0x03
    retain = bool(flags & 0x01)
    if qos == 3:
        raise MQTTPacketError("QoS bits are 3; must be 0, 1 or 2 (§3.3.1.2)", field="qos")
    if qos == 2:
        raise MQTTPacketError("QoS 2 PUBLISH received; this client subscribes with at most QoS 1 (§3.8.4)",
                              field="qos")
    if qos == 0 and dup:
        raise MQTTPacketError("DUP is 1 on a QoS 0 PUBLISH; must be 0 (§3.3.1.1)", field="dup")
    if len(body) < 2:
        raise MQTTPacketError("PUBLISH remaining length is %d, too short for the topic length" % len(body),
                              field="remaining_length")
    tlen = _u16(body, 0)
    end = 2 + tlen
    if end + (2 if qos else 0) > len(body):
        raise MQTTPacketError("topic length %d (+ packet id) runs past the remaining length %d"
                              % (tlen, len(body)), field="topic")
    raw = bytes(body[2:end])
    if not raw:
        raise MQTTPacketError("is empty; a topic name is at least one character (§4.7.3)", field="topic")
    _check_utf8(raw, "topic")
    if b"+" in raw or b"#" in raw:
        raise MQTTPacketError("%r contains a wildcard; not allowed in a topic name (§3.3.2.1)" % raw,
                              field="topic")
    pid = None
    if qos:
        pid = _packet_id(PUBLISH, body, end)
        end += 2
    return Publish(raw.decode("utf-8"), bytes(body[end:]), qos, retain, dup, pid)


class PacketReader:
    """Stream decoder: ``receive_data(b)`` (b"" = end of stream), then ``next_event()`` until ``NEED_DATA``.

    After an ``MQTTPacketError`` the reader is broken for good (the error is sticky, as in h11): MQTT has no
    way to resynchronise a byte stream, so the caller closes the connection (§4.8).
    """

    def __init__(self, max_packet_size=None):
        if max_packet_size is None:
            from protocols.defaults import MQTT_MAX_PACKET_SIZE

            max_packet_size = MQTT_MAX_PACKET_SIZE
        if max_packet_size < 2:
            raise LocalProtocolError("must be at least 2 bytes, got %r" % (max_packet_size,),
                                     field="max_packet_size")
        self.max_packet_size = max_packet_size
        self._buf = bytearray()
        self._eof = False
        self._error = None
        self._head = None  # (first_byte, header_len, total_len) of the packet at the front, once known

    def receive_data(self, data):
        if self._error is not None:
            raise self._error
        if self._eof:
            raise LocalProtocolError("data after the end of stream", field="receive_data")
        if not data:
            self._eof = True
            return
        self._buf.extend(data)
        self._parse_head()  # reject an oversized packet before the caller hands us its body

    def _fail(self, err):
        self._error = err
        self._buf = bytearray()
        raise err

    def _parse_head(self):
        if self._head is not None or len(self._buf) < 2:
            return
        try:
            r = decode_varint(self._buf, 1)
        except MQTTPacketError as e:
            self._fail(e)
        if r is None:
            return
        length, hlen = r
        total = hlen + length
        if total > self.max_packet_size:
            self._fail(MQTTPacketError("packet of %d bytes announced; the limit is %d bytes"
                                       % (total, self.max_packet_size), field="remaining_length"))
        self._head = (self._buf[0], hlen, total)

    def next_event(self):
        if self._error is not None:
            raise self._error
        self._parse_head()
        if self._head is None or len(self._buf) < self._head[2]:
            if self._eof:
                if self._buf:
                    self._fail(MQTTPacketError("stream ended inside a packet (%d bytes pending)"
                                               % len(self._buf), field="stream"))
                return CLOSED
            return NEED_DATA
        first, hlen, total = self._head
        body = bytes(self._buf[hlen:total])
        self._buf = self._buf[total:]
        self._head = None
        try:
            return decode_packet(first, body)
        except MQTTPacketError as e:
            self._fail(e)
