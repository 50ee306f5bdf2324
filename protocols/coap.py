"""CoAP (RFC 7252) message codec and the confirmable-message retransmission state machine, sans-IO.

Theory of operation
-------------------
A CoAP message is one UDP datagram (RFC 7252 §3)::

    byte 0   Ver(2) | Type(2) | TKL(4)     Ver must be 1; Type CON=0 NON=1 ACK=2 RST=3; TKL 0..8
    byte 1   Code = class(3) . detail(5)   0.00 Empty, 0.xx request, 2.xx-5.xx response
    byte 2-3 Message ID (big endian)
    TKL bytes of token
    options  delta(4) | length(4) [ext delta 0-2 bytes] [ext length 0-2 bytes] value
    0xFF     payload marker, then the payload (at least one byte)

``decode(data)`` turns a datagram into a ``Message`` or raises ``CoAPError``; the error carries what
§4.2/§4.3 say the receiver must do (``action`` is ``"rst"`` for a Confirmable message whose header could be
read, ``"ignore"`` otherwise) and ``rst_for(data)`` builds that Reset. ``encode(msg)`` is the inverse; the
option encoding is canonical, so ``encode(decode(d)) == d`` for every datagram ``decode`` accepts.

``Transmitter`` runs one Confirmable exchange (§4.2, §4.8): ``start`` gives the first datagram,
``poll(now_ms)`` gives a retransmission when the (doubling) timeout expires, ``on_datagram`` matches the
ACK/RST (by message id) or a separate response (by token). ``DedupCache`` is the server half: a message id
seen again from the same endpoint within EXCHANGE_LIFETIME is answered with the reply cached for it instead of
being processed twice (§4.5).

Nothing here reads a clock, a socket or a random source: time is an int of monotonic milliseconds and the
random fraction for the initial timeout is passed in. Runs unchanged on MicroPython.
"""

import struct

from .defaults import (
    COAP_ACK_RANDOM_FACTOR,
    COAP_ACK_TIMEOUT_MS,
    COAP_DEDUP_CAPACITY,
    COAP_EXCHANGE_LIFETIME_MS,
    COAP_MAX_OPTIONS,
    COAP_MAX_RETRANSMIT,
    COAP_NON_LIFETIME_MS,
)
from .errors import CoAPError, LocalProtocolError

VERSION = 1

# Message types (§3)
CON = 0
NON = 1
ACK = 2
RST = 3
TYPE_NAMES = ("CON", "NON", "ACK", "RST")

# Codes (§12.1): class << 5 | detail
EMPTY = 0x00
GET = 0x01
POST = 0x02
PUT = 0x03
DELETE = 0x04
CREATED = 0x41  # 2.01
DELETED = 0x42  # 2.02
VALID = 0x43  # 2.03
CHANGED = 0x44  # 2.04
CONTENT = 0x45  # 2.05
BAD_REQUEST = 0x80  # 4.00
UNAUTHORIZED = 0x81  # 4.01
BAD_OPTION = 0x82  # 4.02
FORBIDDEN = 0x83  # 4.03
NOT_FOUND = 0x84  # 4.04
METHOD_NOT_ALLOWED = 0x85  # 4.05
NOT_ACCEPTABLE = 0x86  # 4.06
PRECONDITION_FAILED = 0x8C  # 4.12
REQUEST_ENTITY_TOO_LARGE = 0x8D  # 4.13
UNSUPPORTED_CONTENT_FORMAT = 0x8F  # 4.15
INTERNAL_SERVER_ERROR = 0xA0  # 5.00
NOT_IMPLEMENTED = 0xA1  # 5.01
SERVICE_UNAVAILABLE = 0xA3  # 5.03

# Option numbers (§12.2); odd numbers are critical (§5.4.1)
IF_MATCH = 1
URI_HOST = 3
ETAG = 4
IF_NONE_MATCH = 5
OBSERVE = 6  # RFC 7641
URI_PORT = 7
LOCATION_PATH = 8
URI_PATH = 11
CONTENT_FORMAT = 12
MAX_AGE = 14
URI_QUERY = 15
ACCEPT = 17
LOCATION_QUERY = 20
BLOCK2 = 23  # RFC 7959
BLOCK1 = 27  # RFC 7959
SIZE2 = 28  # RFC 7959
PROXY_URI = 35
PROXY_SCHEME = 39
SIZE1 = 60
KNOWN_OPTIONS = (IF_MATCH, URI_HOST, ETAG, IF_NONE_MATCH, OBSERVE, URI_PORT, LOCATION_PATH, URI_PATH,
                 CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT, LOCATION_QUERY, BLOCK2, BLOCK1, SIZE2, PROXY_URI,
                 PROXY_SCHEME, SIZE1)

# Content-Format numbers (§12.3)
TEXT_PLAIN = 0
LINK_FORMAT = 40
OCTET_STREAM = 42
JSON = 50
CBOR = 60

PAYLOAD_MARKER = 0xFF
MAX_OPTION_NUMBER = 0xFFFF
MAX_EXT_VALUE = 65535 + 269  # largest delta/length the 14-nibble form can carry

# What the receiver of a bad datagram must do (§4.2, §4.3)
ACTION_RST = "rst"  # reject a Confirmable message with a matching Reset
ACTION_IGNORE = "ignore"  # silently ignore (NON, ACK, RST, unknown version, unreadable header)

# Transmitter states (§4.2)
IDLE = "idle"  # built, not sent yet
WAITING = "waiting"  # CON sent, retransmitting until ACK/RST/response
ACKED = "acked"  # empty ACK received: no more retransmissions, a separate response is still to come
DONE = "done"  # response received (piggybacked or separate)
RESET = "reset"  # peer answered RST
TIMEOUT = "timeout"  # gave up after MAX_RETRANSMIT retransmissions
CANCELLED = "cancelled"  # the caller stopped the exchange


def code_str(code):
    """``0x45`` -> ``"2.05"`` (the dotted form used by the RFC and every log line)."""
    return "%d.%02d" % (code >> 5, code & 0x1F)


def _error(field, msg, action=ACTION_IGNORE, mid=None, mtype=None):
    e = CoAPError(msg, field=field)
    e.action = action
    e.mid = mid
    e.mtype = mtype
    return e


class Message:
    """One CoAP message. ``options`` is a list of ``(number, value_bytes)``; repeated numbers keep their
    order."""

    def __init__(self, mtype=CON, code=EMPTY, mid=0, token=b"", options=None, payload=b""):
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = [] if options is None else options
        self.payload = payload

    def add_option(self, number, value=b""):
        """Append an option; ``value`` is bytes, str (UTF-8) or a non-negative int (minimal uint, §3.2)."""
        if isinstance(value, int):
            value = encode_uint(value)
        elif isinstance(value, str):
            value = value.encode()
        self.options.append((number, bytes(value)))
        return self

    def option(self, number):
        """Value of the first option ``number`` or None."""
        for n, v in self.options:
            if n == number:
                return v
        return None

    def option_values(self, number):
        return [v for n, v in self.options if n == number]

    def is_request(self):
        return 0 < self.code < 0x20

    def is_response(self):
        return self.code >= 0x40

    def __eq__(self, other):
        return (isinstance(other, Message) and self.mtype == other.mtype and self.code == other.code
                and self.mid == other.mid and bytes(self.token) == bytes(other.token)
                and _sorted_options(self.options) == _sorted_options(other.options)
                and bytes(self.payload) == bytes(other.payload))

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "<Message %s %s mid=%d token=%r options=%r payload=%d bytes>" % (
            TYPE_NAMES[self.mtype & 3], code_str(self.code), self.mid, self.token, self.options,
            len(self.payload))


def encode_uint(n):
    """Minimal big-endian unsigned integer option value (§3.2: zero is the empty string)."""
    if n < 0:
        raise LocalProtocolError("uint option value must be >= 0, got %d" % n, field="option")
    size = 0
    while n >> (8 * size):
        size += 1
    return bytes((n >> (8 * i)) & 0xFF for i in range(size - 1, -1, -1))


def decode_uint(b):
    n = 0
    for x in b:
        n = (n << 8) | x
    return n


def _sorted_options(options):
    # MicroPython's list.sort is not stable: sort on (number, original index) so that repeated options
    # (Uri-Path segments) keep the order the caller gave them (§5.4.5).
    idx = list(range(len(options)))
    idx.sort(key=lambda i: (options[i][0], i))
    return [options[i] for i in idx]


def _nibble(v):
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes((v - 13,))
    return 14, struct.pack(">H", v - 269)


def encode(msg):
    """Message -> datagram bytes. Options sorted by number (stable); LocalProtocolError if invalid."""
    if not 0 <= msg.mtype <= 3:
        raise LocalProtocolError("must be 0..3 (CON/NON/ACK/RST), got %r" % (msg.mtype,), field="type")
    if not 0 <= msg.code <= 0xFF or (msg.code >> 5) in (1, 6, 7):
        raise LocalProtocolError("must be a byte outside the reserved classes 1, 6, 7, got %r" % (msg.code,),
                                 field="code")
    if not 0 <= msg.mid <= 0xFFFF:
        raise LocalProtocolError("must be 0..65535, got %r" % (msg.mid,), field="message id")
    token = bytes(msg.token)
    if len(token) > 8:
        raise LocalProtocolError("must be 0..8 bytes, got %d" % len(token), field="token")
    if msg.code == EMPTY and (token or msg.options or msg.payload):
        raise LocalProtocolError("an Empty message (0.00) has no token, options or payload (§3)",
                                 field="code")
    if msg.mtype == RST and msg.code != EMPTY:
        raise LocalProtocolError("a Reset must be Empty (§4.2), got code %s" % code_str(msg.code),
                                 field="code")
    out = bytearray(struct.pack(">BBH", (VERSION << 6) | (msg.mtype << 4) | len(token), msg.code, msg.mid))
    out += token
    prev = 0
    for number, value in _sorted_options(msg.options):
        if not 0 <= number <= MAX_OPTION_NUMBER:
            raise LocalProtocolError("must be 0..65535, got %r" % (number,), field="option number")
        if len(value) > MAX_EXT_VALUE:
            raise LocalProtocolError("value of option %d is %d bytes, max %d"
                                     % (number, len(value), MAX_EXT_VALUE), field="option length")
        dn, dx = _nibble(number - prev)
        ln, lx = _nibble(len(value))
        out.append((dn << 4) | ln)
        out += dx
        out += lx
        out += value
        prev = number
    if msg.payload:
        out.append(PAYLOAD_MARKER)
        out += msg.payload
    return bytes(out)


def _ext(data, pos, nib, field, mid, mtype, action):
    if nib < 13:
        return nib, pos
    n = len(data)
    if nib == 13:
        if pos >= n:
            raise _error(field, "nibble 13 needs 1 extension byte at offset %d, datagram ends there" % pos,
                         action, mid, mtype)
        return data[pos] + 13, pos + 1
    if pos + 2 > n:
        raise _error(field, "nibble 14 needs 2 extension bytes at offset %d, only %d left" % (pos, n - pos),
                     action, mid, mtype)
    return ((data[pos] << 8) | data[pos + 1]) + 269, pos + 2


def decode(data, max_options=COAP_MAX_OPTIONS):
    """Datagram -> Message. Raises CoAPError (field, observed value, rule; ``.action``, ``.mid``)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    if n < 4:
        raise _error("header", "datagram is %d bytes, a CoAP header needs 4 (§3)" % n)
    b0 = data[0]
    version = b0 >> 6
    mtype = (b0 >> 4) & 3
    mid = (data[2] << 8) | data[3]
    if version != VERSION:
        # §3: messages with unknown version numbers MUST be silently ignored
        raise _error("version", "is %d, expected 1 (§3: unknown versions are silently ignored)" % version,
                     ACTION_IGNORE, mid, mtype)
    action = ACTION_RST if mtype == CON else ACTION_IGNORE
    tkl = b0 & 0x0F
    code = data[1]
    if tkl > 8:
        raise _error("token length", "is %d, expected 0..8 (§3: 9..15 are a message format error)" % tkl,
                     action, mid, mtype)
    if 4 + tkl > n:
        raise _error("token", "length %d declared, only %d bytes follow the header" % (tkl, n - 4),
                     action, mid, mtype)
    cls = code >> 5
    if code == EMPTY:
        if n != 4:
            raise _error("code", "Empty message (0.00) must end after the message id (§3), got %d more bytes"
                         % (n - 4), action, mid, mtype)
        if mtype == NON:
            raise _error("code", "a Non-confirmable message must not be Empty (§4.3)", action, mid, mtype)
    elif cls in (1, 6, 7):
        raise _error("code", "class %d is reserved (code %s), expected 0, 2, 4 or 5 (§4.2: reject)"
                     % (cls, code_str(code)), action, mid, mtype)
    elif mtype == RST:
        raise _error("code", "a Reset must be Empty (§4.2), got %s" % code_str(code), action, mid, mtype)
    elif mtype == ACK and cls == 0:
        raise _error("code", "an ACK must be Empty or carry a response (§4.2), got request %s"
                     % code_str(code), action, mid, mtype)
    token = data[4:4 + tkl]
    options = []
    payload = b""
    pos = 4 + tkl
    number = 0
    while pos < n:
        b = data[pos]
        if b == PAYLOAD_MARKER:
            if pos + 1 == n:
                raise _error("payload", "marker 0xFF at offset %d is followed by an empty payload (§3)" % pos,
                             action, mid, mtype)
            payload = data[pos + 1:]
            break
        dn = b >> 4
        ln = b & 0x0F
        if dn == 15:
            raise _error("option delta", "nibble 15 in byte 0x%02x at offset %d is reserved for the payload "
                         "marker 0xFF (§3.1)" % (b, pos), action, mid, mtype)
        if ln == 15:
            raise _error("option length", "nibble 15 in byte 0x%02x at offset %d is reserved (§3.1)"
                         % (b, pos), action, mid, mtype)
        pos += 1
        delta, pos = _ext(data, pos, dn, "option delta", mid, mtype, action)
        length, pos = _ext(data, pos, ln, "option length", mid, mtype, action)
        number += delta
        if number > MAX_OPTION_NUMBER:
            raise _error("option number", "%d after delta %d, expected <= 65535" % (number, delta),
                         action, mid, mtype)
        if pos + length > n:
            raise _error("option length", "option %d declares %d bytes, only %d left"
                         % (number, length, n - pos), action, mid, mtype)
        if len(options) >= max_options:
            raise _error("options", "more than %d options (implementation limit)" % max_options,
                         action, mid, mtype)
        options.append((number, data[pos:pos + length]))
        pos += length
    return Message(mtype, code, mid, token, options, payload)


def encode_empty(mtype, mid):
    """Empty ACK or RST echoing ``mid`` (§4.2) -- 4 bytes."""
    return struct.pack(">BBH", (VERSION << 6) | (mtype << 4), EMPTY, mid)


def rst_for(data):
    """The Reset to send back for ``data``, or None (§4.2, §4.3).

    A Confirmable message that is unparsable past its header, or that uses a reserved code class, is rejected
    with a Reset; so is an Empty CON ("CoAP ping", §4.3). Everything else -- good messages, and bad
    NON/ACK/RST or unknown-version datagrams, which are silently ignored -- gets None.
    """
    try:
        msg = decode(data)
    except CoAPError as e:
        if e.action == ACTION_RST:
            return encode_empty(RST, e.mid)
        return None
    if msg.mtype == CON and msg.code == EMPTY:
        return encode_empty(RST, msg.mid)
    return None


def ack_for(msg):
    """Empty ACK for a received CON (e.g. a separate response, §5.2.2)."""
    return encode_empty(ACK, msg.mid)


def unknown_critical(msg, known=KNOWN_OPTIONS):
    """First critical (odd, §5.4.1) option number not in ``known``, or None.

    A server answers such a CON/NON request with 4.02 Bad Option; a client rejects such a response (§5.4.1).
    """
    for n, _ in msg.options:
        if n & 1 and n not in known:
            return n
    return None


def content_format(msg):
    """Content-Format as int, or None if absent or longer than its 0..2 bytes (§5.4.3: then it is ignored)."""
    v = msg.option(CONTENT_FORMAT)
    if v is None or len(v) > 2:
        return None
    return decode_uint(v)


def _quote(seg):
    return seg.replace("%", "%25").replace("/", "%2F").replace("?", "%3F")


def uri_path(msg):
    """Uri-Path options as ``"/a/b"`` (``"/"`` when none); ``%``, ``/`` and ``?`` inside a segment are
    percent-encoded so the result is unambiguous. Raises CoAPError for a segment that is not UTF-8."""
    segs = []
    for v in msg.option_values(URI_PATH):
        try:
            segs.append(_quote(str(v, "utf-8")))
        except UnicodeError:
            raise _error("Uri-Path", "segment %r is not UTF-8 (§5.10.1)" % (v,), ACTION_IGNORE, msg.mid,
                         msg.mtype)
    return "/" + "/".join(segs)


def uri_query(msg):
    """Uri-Query options as a list of str, e.g. ``["unit=c", "n=3"]``."""
    out = []
    for v in msg.option_values(URI_QUERY):
        try:
            out.append(str(v, "utf-8"))
        except UnicodeError:
            raise _error("Uri-Query", "argument %r is not UTF-8 (§5.10.1)" % (v,), ACTION_IGNORE, msg.mid,
                         msg.mtype)
    return out


def _hexval(c):
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


def _unquote(seg):
    b = seg.encode()
    if b"%" not in b:
        return b
    out = bytearray()
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c == 0x25:
            hi = _hexval(b[i + 1]) if i + 1 < n else -1
            lo = _hexval(b[i + 2]) if i + 2 < n else -1
            if hi < 0 or lo < 0:
                raise LocalProtocolError("bad percent-escape in %r" % seg, field="path")
            out.append(hi * 16 + lo)
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def make_request(method, path="/", mid=0, token=b"", payload=b"", confirmable=True, content_format=None,
                 query=None, accept=None):
    """A request message. ``path`` ``"/a/b"`` becomes Uri-Path ``a``, ``b`` (percent-escapes decoded);
    ``query`` is a list of ``"k=v"`` strings (or one ``"k=v&k2=v2"`` str). MID and token are the caller's:
    this module has no randomness (§5.3.1 wants tokens the peer cannot guess)."""
    if not 0 < method < 0x20:
        raise LocalProtocolError("must be a request code 0.01..0.31, got %r" % (method,), field="method")
    msg = Message(CON if confirmable else NON, method, mid, token)
    for seg in path.split("/"):
        if seg:
            v = _unquote(seg)
            if len(v) > 255:
                raise LocalProtocolError("segment is %d bytes, max 255 (§5.10)" % len(v), field="Uri-Path")
            msg.add_option(URI_PATH, v)
    if content_format is not None:
        msg.add_option(CONTENT_FORMAT, content_format)
    if query:
        if isinstance(query, str):
            query = query.split("&")
        for q in query:
            if len(q.encode()) > 255:
                raise LocalProtocolError("argument is %d bytes, max 255 (§5.10)" % len(q.encode()),
                                         field="Uri-Query")
            msg.add_option(URI_QUERY, q)
    if accept is not None:
        msg.add_option(ACCEPT, accept)
    msg.payload = payload
    return msg


def make_response(request, code, payload=b"", content_format=None, mid=None):
    """The response to ``request``: for a CON a piggybacked ACK with the same MID and token (§5.2.1); for a
    NON a NON with the same token and a fresh ``mid`` the caller supplies (§5.2.3)."""
    if code < 0x40 or code > 0xBF:
        raise LocalProtocolError("must be a response code 2.00..5.31, got %r" % (code,), field="code")
    if request.mtype == CON:
        mtype, rmid = ACK, request.mid
    elif request.mtype == NON:
        if mid is None:
            raise LocalProtocolError("a response to a NON needs a new message id (§5.2.3)",
                                     field="message id")
        mtype, rmid = NON, mid
    else:
        raise LocalProtocolError("can only answer CON or NON, got %s" % TYPE_NAMES[request.mtype],
                                 field="type")
    msg = Message(mtype, code, rmid, request.token)
    if content_format is not None:
        msg.add_option(CONTENT_FORMAT, content_format)
    msg.payload = payload
    return msg


# ---- Confirmable retransmission (§4.2, §4.8) ------------------------------------------------------------

# state machine as a table: (state, event) -> next state; a missing entry is an illegal transition.
_TRANSITIONS = {
    (IDLE, "start"): WAITING,
    (WAITING, "retransmit"): WAITING,
    (WAITING, "give_up"): TIMEOUT,
    (WAITING, "empty_ack"): ACKED,
    (WAITING, "response"): DONE,
    (WAITING, "reset"): RESET,
    (ACKED, "response"): DONE,
    (ACKED, "reset"): RESET,
    (IDLE, "cancel"): CANCELLED,
    (WAITING, "cancel"): CANCELLED,
    (ACKED, "cancel"): CANCELLED,
}


class Transmitter:
    """One Confirmable exchange with one peer.

    ``start(now_ms, rand01)`` -> first datagram; the initial timeout is ACK_TIMEOUT * (1 + rand01 *
    (ACK_RANDOM_FACTOR - 1)) with ``rand01`` in [0, 1]. ``poll(now_ms)`` -> the datagram again when the
    timeout expired (timeout then doubles), None otherwise; after MAX_RETRANSMIT retransmissions the next
    expiry moves the state to ``"timeout"``. ``on_datagram(data)`` -> the matched Message (ACK/RST by
    message id, a response by token) or None; when it returns a CON separate response, ``self.ack`` holds the
    empty ACK to send back.
    ``now_ms`` must be monotonic and must not wrap (accumulate ``ticks_diff`` on a node).
    The caller only feeds datagrams from the peer the request went to (§5.3.2 matches on endpoint too).
    """

    def __init__(self, msg, ack_timeout_ms=COAP_ACK_TIMEOUT_MS, random_factor=COAP_ACK_RANDOM_FACTOR,
                 max_retransmit=COAP_MAX_RETRANSMIT):
        if msg.mtype != CON:
            raise LocalProtocolError("Transmitter sends Confirmable messages, got %s"
                                     % TYPE_NAMES[msg.mtype & 3], field="type")
        self.message = msg
        self.datagram = encode(msg)
        self.ack_timeout_ms = ack_timeout_ms
        self.random_factor = random_factor
        self.max_retransmit = max_retransmit
        self.state = IDLE
        self.retransmits = 0
        self.timeout_ms = 0
        self.deadline_ms = None
        self.response = None
        self.ack = None

    def _to(self, event):
        nxt = _TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise LocalProtocolError("cannot %s in state %r" % (event, self.state), field="transmitter")
        self.state = nxt

    def start(self, now_ms, rand01):
        if not 0 <= rand01 <= 1:
            raise LocalProtocolError("must be in [0, 1], got %r" % (rand01,), field="rand01")
        self._to("start")
        self.timeout_ms = self.ack_timeout_ms + int(self.ack_timeout_ms * (self.random_factor - 1) * rand01)
        self.deadline_ms = now_ms + self.timeout_ms
        return self.datagram

    def poll(self, now_ms):
        if self.state != WAITING or now_ms < self.deadline_ms:
            return None
        if self.retransmits >= self.max_retransmit:
            self._to("give_up")
            self.deadline_ms = None
            return None
        self._to("retransmit")
        self.retransmits += 1
        self.timeout_ms *= 2
        self.deadline_ms = now_ms + self.timeout_ms
        return self.datagram

    def cancel(self):
        self._to("cancel")
        self.deadline_ms = None

    def on_datagram(self, data):
        if self.state == IDLE:
            raise LocalProtocolError("on_datagram before start", field="transmitter")
        self.ack = None
        try:
            msg = decode(data)
        except CoAPError:
            return None
        req = self.message
        if self.response is not None:
            # duplicate of a CON separate response already taken: ACK it again, report nothing new (§4.5)
            if msg.mtype == CON and msg.mid == self.response.mid and self.response.mtype == CON:
                self.ack = ack_for(msg)
            return None
        if self.state not in (WAITING, ACKED):
            return None
        if msg.mtype in (ACK, RST):
            if msg.mid != req.mid or self.state != WAITING:
                return None
            if msg.mtype == RST:
                self._to("reset")
                self.deadline_ms = None
                return msg
            if msg.code == EMPTY:
                self._to("empty_ack")
                self.deadline_ms = None
                return msg
            if bytes(msg.token) != bytes(req.token):
                return None  # piggybacked response must echo the token (§5.3.2)
        elif not msg.is_response() or bytes(msg.token) != bytes(req.token):
            return None
        # a response: piggybacked (ACK) or separate (CON/NON; an implicit ACK when the ACK was lost, §5.2.2)
        self._to("response")
        self.deadline_ms = None
        self.response = msg
        if msg.mtype == CON:
            self.ack = ack_for(msg)
        return msg


# ---- Server-side duplicate detection (§4.5) ------------------------------------------------------------

class DedupCache:
    """Remembers (endpoint, message id) for EXCHANGE_LIFETIME (CON) / NON_LIFETIME (NON) with the reply sent.

    ``seen(endpoint, msg, now_ms)`` -> None for a new message (it is recorded), else the cached reply bytes
    for a duplicate (``b""`` when no reply was recorded: ignore the duplicate).
    ``remember(endpoint, msg, reply)`` stores the reply to resend. At most ``capacity`` entries: expired ones
    go first, then the one closest to expiry; ``evicted`` counts live entries dropped that way (a duplicate of
    one may then be processed twice).
    """

    def __init__(self, capacity=COAP_DEDUP_CAPACITY, exchange_lifetime_ms=COAP_EXCHANGE_LIFETIME_MS,
                 non_lifetime_ms=COAP_NON_LIFETIME_MS):
        if capacity < 1:
            raise LocalProtocolError("must be >= 1, got %r" % (capacity,), field="capacity")
        self.capacity = capacity
        self.exchange_lifetime_ms = exchange_lifetime_ms
        self.non_lifetime_ms = non_lifetime_ms
        self.evicted = 0
        self._entries = {}  # (endpoint, mid) -> [expires_ms, reply_bytes]

    def __len__(self):
        return len(self._entries)

    def seen(self, endpoint, msg, now_ms):
        if msg.mtype not in (CON, NON):
            return None  # ACK and RST are matched by the Transmitter, not deduplicated here
        key = (endpoint, msg.mid)
        e = self._entries.get(key)
        if e is not None and now_ms < e[0]:
            return e[1]
        self._make_room(now_ms, key)
        life = self.exchange_lifetime_ms if msg.mtype == CON else self.non_lifetime_ms
        self._entries[key] = [now_ms + life, b""]
        return None

    def remember(self, endpoint, msg, reply):
        e = self._entries.get((endpoint, msg.mid))
        if e is None:
            raise LocalProtocolError("remember() for a message seen() did not record", field="dedup")
        e[1] = bytes(reply)

    def _make_room(self, now_ms, key):
        ents = self._entries
        if key in ents or len(ents) < self.capacity:
            return
        for k in [k for k, e in ents.items() if now_ms >= e[0]]:
            del ents[k]
        if len(ents) >= self.capacity:
            oldest = None
            for k, e in ents.items():
                if oldest is None or e[0] < ents[oldest][0]:
                    oldest = k
            del ents[oldest]
            self.evicted += 1
