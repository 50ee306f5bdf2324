"""MQTT 3.1.1, broker side (sans-IO; runs unchanged on MicroPython).

Theory of operation: what a program playing the broker needs on top of the client codec in
``protocols/mqttpacket.py`` (whose ``Packet``, ``PacketReader``, checks and PUBLISH/PUBACK encoders it reuses,
those bytes being the same in both directions): encoders for CONNACK, SUBACK, UNSUBACK and PINGRESP, a decoder
for the packets a client sends (CONNECT, PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT) with
``server_reader()`` as its stream reader, and ``topic_matches`` (§4.7). Used by the tests' loopback broker,
simulators and the fuzz/property tests; nodes never import it, so it costs them no heap.

Decoded client packets are ``mqttpacket.Packet`` objects: CONNECT has ``level`` (protocol level; a broker
answers CONNACK 1 unless it is 4, §3.1.2.2), ``client_id``, ``clean_session``, ``keepalive``, ``will_topic``,
``will_payload``, ``will_qos``, ``will_retain``, ``username``, ``password`` (None when absent); SUBSCRIBE has
``packet_id`` and ``topics`` (list of ``(filter, qos)``); UNSUBSCRIBE ``packet_id`` and ``filters``; PINGREQ
and DISCONNECT nothing; PUBLISH and PUBACK as in mqttpacket. Bad bytes raise ``MQTTPacketError`` naming field,
value and rule; misuse of an encoder ``LocalProtocolError``. Section numbers: OASIS MQTT 3.1.1 (2014).
"""

from . import mqttpacket as mp
from .errors import LocalProtocolError, MQTTPacketError

# Control packet types, §2.2.1 Table 2.1
(CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK,
 PINGREQ, PINGRESP, DISCONNECT) = range(1, 15)
SUBACK_FAILURE = 0x80  # §3.9.3 return code for a refused subscription


# ---- broker -> client encoders -----------------------------------------------------------------------------

def encode_connack(return_code=0, session_present=False):
    """CONNACK, §3.2: ``return_code`` 0..5 (``mqttpacket.CONNACK_NAMES``)."""
    mp.check_int(return_code, 0, 5, "return_code")
    if return_code and session_present:
        raise LocalProtocolError("must be 0 with a non-zero return code (§3.2.2.2)", field="session_present")
    return bytes((0x20, 2, 1 if session_present else 0, return_code))


def encode_suback(packet_id, return_codes):
    """SUBACK, §3.9: one code per filter of the SUBSCRIBE, 0/1/2 = granted QoS, 0x80 = refused."""
    pid = mp.encode_packet_id(packet_id)
    if not return_codes:
        raise LocalProtocolError("must hold one code per filter, got none (§3.9.3)", field="return_codes")
    for c in return_codes:
        if c not in (0, 1, 2, SUBACK_FAILURE):
            raise LocalProtocolError("must be 0, 1, 2 or 0x80, got %r (§3.9.3)" % (c,), field="return_codes")
    return mp.frame(0x90, pid + bytes(return_codes))


def encode_unsuback(packet_id):
    return b"\xb0\x02" + mp.encode_packet_id(packet_id)  # §3.11


def encode_pingresp():
    return b"\xd0\x00"  # §3.13


# ---- client -> broker decoding -----------------------------------------------------------------------------

def _string(body, i, field):
    """The length-prefixed field at ``body[i:]`` (§1.5.3) -> ``(bytes, next offset)``."""
    if i + 2 > len(body) or i + 2 + (body[i] << 8 | body[i + 1]) > len(body):
        raise MQTTPacketError("runs past the remaining length %d (field at byte %d)" % (len(body), i),
                              field=field)
    end = i + 2 + (body[i] << 8 | body[i + 1])
    return bytes(body[i + 2:end]), end


def _text(body, i, field):
    s, i = _string(body, i, field)
    mp.check_utf8(s, field)
    return s.decode(), i


def decode_client_packet(first, body):
    """Decode one client-to-broker packet from its first byte and its body (after the Remaining Length)."""
    t = first >> 4
    if PUBLISH <= t <= PUBCOMP:
        return mp.decode_packet(first, body)  # PUBLISH/PUBACK read the same both ways; QoS 2 is rejected
    if t == CONNECT:
        return _decode_connect(first, body)
    n = len(body)
    if t == SUBSCRIBE or t == UNSUBSCRIBE:
        mp.check_flags(first, 2)
        if n < 2:
            raise MQTTPacketError("%s remaining length is %d, too short for a packet id"
                                  % (mp.packet_name(t), n), field="remaining_length")
        p = mp.Packet(t, packet_id=mp.read_packet_id(t, body, 0))
        items = []
        i = 2
        while i < n:
            flt, i = _string(body, i, "topic_filter")
            flt = mp.check_topic(flt, "topic_filter", MQTTPacketError, True).decode()
            if t == UNSUBSCRIBE:
                items.append(flt)
                continue
            if i >= n or body[i] > 2:
                raise MQTTPacketError("requested QoS of %r is %s; must be 0, 1 or 2 (§3.8.3.1)"
                                      % (flt, "missing" if i >= n else body[i]), field="qos")
            items.append((flt, body[i]))
            i += 1
        if not items:
            raise MQTTPacketError("%s names no topic filter; at least one is required (§3.8.3, §3.10.3)"
                                  % mp.packet_name(t), field="topic_filter")
        if t == SUBSCRIBE:
            p.topics = items
        else:
            p.filters = items
        return p
    if t == PINGREQ or t == DISCONNECT:
        mp.check_flags(first, 0)
        if n:
            raise MQTTPacketError("%s remaining length is %d, must be 0" % (mp.packet_name(t), n),
                                  field="remaining_length")
        return mp.Packet(t)
    raise MQTTPacketError("type %d (%s) is not sent by a client; 1..14 are defined (§2.2.1)"
                          % (t, mp.packet_name(t)), field="packet_type")


def _decode_connect(first, body):
    """CONNECT, §3.1: protocol name "MQTT", level, flags, keepalive, then the payload fields the flags
    name."""
    mp.check_flags(first, 0)
    name, i = _string(body, 0, "protocol_name")
    if name != b"MQTT":
        raise MQTTPacketError("is %r; must be 'MQTT' (§3.1.2.1)" % (name,), field="protocol_name")
    if i + 4 > len(body):
        raise MQTTPacketError("CONNECT remaining length is %d, too short for its variable header" % len(body),
                              field="remaining_length")
    flags = body[i + 1]
    wq = flags >> 3 & 3
    if flags & 1 or wq == 3 or (not flags & 4 and flags & 0x38) or (flags & 0x40 and not flags & 0x80):
        raise MQTTPacketError("are 0x%02x; bit 0 must be 0, will QoS < 3, will QoS/retain only with a will, "
                              "password only with a user name (§3.1.2.3-9)" % flags, field="connect_flags")
    p = mp.Packet(CONNECT, level=body[i], clean_session=bool(flags & 2),
                  keepalive=body[i + 2] << 8 | body[i + 3], will_topic=None, will_payload=None, will_qos=wq,
                  will_retain=bool(flags & 0x20), username=None, password=None)
    p.client_id, i = _text(body, i + 4, "client_id")
    if flags & 4:
        wt, i = _string(body, i, "will_topic")
        p.will_topic = mp.check_topic(wt, "will_topic").decode()
        p.will_payload, i = _string(body, i, "will_payload")
    if flags & 0x80:
        p.username, i = _text(body, i, "username")
    if flags & 0x40:
        p.password, i = _string(body, i, "password")
    if i != len(body):
        raise MQTTPacketError("%d bytes after the last CONNECT field; the flags name no more (§3.1.3)"
                              % (len(body) - i), field="remaining_length")
    return p


def server_reader(max_packet_size=None):
    """A ``mqttpacket.PacketReader`` over the bytes a client sends (events from ``decode_client_packet``)."""
    return mp.PacketReader(max_packet_size, decode_client_packet)


def topic_matches(flt, topic):
    """True if topic name ``topic`` matches topic filter ``flt`` (§4.7).

    '+' matches exactly one level (possibly empty), '#' matches the parent level and any number of children,
    and a filter that starts with a wildcard does not match a topic starting with '$' (§4.7.2).
    """
    if topic[:1] == "$" and flt[:1] in ("+", "#"):
        return False
    fl = flt.split("/")
    tl = topic.split("/")
    for i, f in enumerate(fl):
        if f == "#":
            return True  # matches the parent ("a/#" matches "a") and everything below
        if i >= len(tl) or (f != "+" and f != tl[i]):
            return False
    return len(fl) == len(tl)
