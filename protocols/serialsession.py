"""Recorder link session over serial frames: authenticated handshake, frame tags, sliding window (sans-IO).

Theory of operation
-------------------
``serialframe`` turns a noisy byte stream into frames; this module turns frames into a *session*: who is on the
other end (proved with the recorder's key), which frames are genuine (a tag on each), and reliable in-order
delivery with a window of frames in flight and selective retransmission (docs/PROTOCOL.md §20).

Handshake (HELLO frames, seq 0, outside the window; canonical JSON, ``hs`` says which step):

    recorder -> gateway  hs 1  {dev, fw, v: [versions], mtu, win, nr, boot, hb_s[, officer]}    every 1 s
    gateway -> recorder  hs 2  {gw, v, mtu, win, ng, nr, mac}  MAC with the recorder's key, purpose "hello"
                               (or {gw, nr, err} when it refuses: unknown_device, version)
    recorder -> gateway  hs 3  {dev, ng, nr, mac}                MAC with the recorder's key
    gateway -> recorder  hs 0  {gw}  "say hello": sent when the gateway opens a port or hears session frames
                               it has no session for (after its restart)

Each side proves it holds the key over the other's fresh 16-byte nonce, so neither an old recording of a
handshake nor a device without the key gets a session. The session key is ``Ks = HMAC(K, "lookout/1|serial|" ng
nr)``; each direction has its own ``HMAC(Ks, "R>G")`` / ``HMAC(Ks, "G>R")``. Version, largest payload (``mtu``) and
window are the smaller of the two offers.

In a session every frame but HELLO ends with a 4-byte tag: the first bytes of ``HMAC-SHA256(K_dir, n(u32 BE)
type(u8) body)``, where ``n`` is the 32-bit extension of the frame's 16-bit ``seq`` (data frames), or of the
acknowledged seq (ACK, NACK). A forged, replayed or CRC-passing corrupted frame fails the tag and is dropped.

Sequencing: data frames (every type but HELLO/ACK/NACK) are numbered n = 1, 2, ... per session and direction.
The receiver accepts ``[next, next + win)``, keeps early ones, delivers in order, and answers with an ACK whose
``seq`` is the last frame delivered in order (cumulative) and whose mask marks the frames held beyond it
(selective). A frame with a valid header but a bad payload CRC is NACKed at once. The sender keeps up to
``win`` frames in flight and resends a frame when (a) it is NACKed, (b) a frame sent after it was acknowledged
(a serial line never reorders, so it was lost), or (c) its retransmission timeout (RFC 6298 estimator, Karn's
rule) passes. Acknowledgements are built when ``data_to_send`` is called and cover only frames the caller has
taken with ``next_event``: the caller handles a frame (e.g. writes a clip piece to disk) before it is confirmed.

Clip data: ``piece_len()`` is the clip bytes per CLIP_DATA frame that maximise goodput for the bit error rate
this session has observed: L = sqrt(H^2/4 + H/(8p)) - H/2 for H = 24 bytes of overhead per frame (frame 12, tag 4,
piece header 8) and p the estimated bit error rate, capped by the mtu (ZMODEM shortens its blocks the same way).
``ClipPush`` drives one outgoing clip: offer, resume from the receiver's confirmed offset, stream, completion.

API (h11 shape): ``receive_data(bytes, now_ms)``; ``next_event()`` -> an event or NEED_DATA; ``send(type,
payload, ref)``; ``data_to_send(now_ms, limit=None)`` -> bytes to write; ``next_timer(now_ms)`` -> ms until it
must be called again. Time is passed in (integer ms); randomness comes from the ``rand(n)`` callable.
"""

import hashlib
import json
import struct

from . import canonical, cliptransfer, defaults, signing, topics
from . import serialframe as sf
from .errors import AuthError, FrameError, LocalProtocolError, SessionError, TransferError

RECORDER = "recorder"
GATEWAY = "gateway"
VERSIONS = (1,)
NONCE_LEN = 16
TAG_LEN = defaults.SERIAL_TAG_LEN
PIECE_OVERHEAD = sf.OVERHEAD + TAG_LEN + cliptransfer.DATA_HEADER_LEN
MAX_WINDOW = 64  # the widest ACK mask reaches 64 frames past the cumulative point
MAX_HELLO = 512
MIN_MTU = MAX_HELLO  # a HELLO must fit in any session's frames
IDLE = "idle"
HELLO = "hello"
OPEN = "open"
# frames kept across a session loss and sent again in the next session (the receiver de-duplicates by id);
# clip offers, pieces and statuses are not: a transfer resumes with a new offer instead
CARRY = (sf.TYPE_EVENT, sf.TYPE_RESULT, sf.TYPE_COMMAND, sf.TYPE_CATALOG, sf.TYPE_HEARTBEAT, sf.TYPE_LOCATION)
HELLO_FIELDS = {
    0: ("gw",),
    1: ("dev", "fw", "v", "mtu", "win", "nr", "boot", "hb_s", "officer"),
    2: ("gw", "v", "mtu", "win", "ng", "nr", "mac", "err"),
    3: ("dev", "ng", "nr", "mac"),
}
HELLO_REQUIRED = {0: ("gw",), 1: ("dev", "fw", "v", "mtu", "win", "nr"), 2: ("gw", "nr"),
                  3: ("dev", "ng", "nr", "mac")}
ERR_CHARS = "abcdefghijklmnopqrstuvwxyz_"
_HEX = "0123456789abcdef"


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")


# ---- events ---------------------------------------------------------------------------------------------------

class Established:
    """A session is up with ``peer``; ``info`` is the recorder's hs1 (gateway side) or the gateway's hs2."""

    def __init__(self, peer, info):
        self.peer = peer
        self.info = info

    def __repr__(self):
        return "Established(%s)" % self.peer


class Received:
    """An authenticated data frame, in order: ``type`` (TYPE_*), ``payload`` (bytes, tag removed), ``seq``."""

    def __init__(self, type, payload, seq, epoch=0):
        self.type = type
        self.payload = payload
        self.seq = seq
        self.epoch = epoch

    def __repr__(self):
        return "Received(%s, %d bytes)" % (sf.TYPE_NAMES.get(self.type, self.type), len(self.payload))


class Acked:
    """The peer confirmed the frame sent with ``ref``."""

    def __init__(self, ref):
        self.ref = ref

    def __repr__(self):
        return "Acked(%r)" % (self.ref,)


class Dropped:
    """The frame sent with ``ref`` will not be delivered (``reason``: the session ended, the peer refused it)."""

    def __init__(self, ref, reason):
        self.ref = ref
        self.reason = reason

    def __repr__(self):
        return "Dropped(%r, %s)" % (self.ref, self.reason)


class Lost:
    """The session ended (``reason``: rehello, probe, closed); a new handshake follows."""

    def __init__(self, reason):
        self.reason = reason

    def __repr__(self):
        return "Lost(%s)" % self.reason


class Refused:
    """A handshake failed: ``code`` (unknown_device, bad_mac, version, bad_hello), ``peer`` if known."""

    def __init__(self, peer, code, message):
        self.peer = peer
        self.code = code
        self.message = message

    def __repr__(self):
        return "Refused(%s, %s: %s)" % (self.peer, self.code, self.message)


# ---- HELLO and CATALOG payloads -------------------------------------------------------------------------------

def _is_hex(v, nbytes):
    if type(v) is not str or len(v) != 2 * nbytes:
        return False
    for c in v:
        if c not in _HEX:
            return False
    return True


def _int_ok(v, lo, hi):
    return type(v) is int and lo <= v <= hi


def _text_ok(v, n):
    if type(v) is not str or not 1 <= len(v) <= n:
        return False
    for c in v:
        if c < " " or c == "\x7f":
            return False
    return True


def _load(payload, limit, what):
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("must be bytes, got %s" % type(payload).__name__, field=what)
    if len(payload) > limit:
        raise SessionError("%d bytes, at most %d" % (len(payload), limit), field=what)
    payload = bytes(payload)
    if payload.count(b"[") + payload.count(b"{") > 40:  # bound nesting before json recurses
        raise SessionError("too deeply nested", field=what)
    try:
        d = json.loads(payload.decode())
    except (ValueError, UnicodeError, TypeError, RuntimeError, IndexError, KeyError):
        raise SessionError("is not UTF-8 JSON", field=what)
    if not isinstance(d, dict):
        raise SessionError("must be a JSON object", field=what)
    return d


def validate_hello(d, err=SessionError):
    """Check a HELLO object (see the module doc); raise ``err`` naming the field."""
    hs = d.get("hs")
    if type(hs) is not int or hs not in HELLO_FIELDS:
        raise err("step %r, expected 0..3" % (hs,), field="hs")
    allowed = HELLO_FIELDS[hs]
    for k in d:
        if k != "hs" and k not in allowed and not (type(k) is str and k.startswith("x_")):
            raise err("unknown field in a step-%d HELLO" % hs, field=str(k)[:32])
    for k in HELLO_REQUIRED[hs]:
        if k not in d:
            raise err("required in a step-%d HELLO" % hs, field=k)
    if hs == 2 and "err" not in d:
        for k in ("v", "mtu", "win", "ng", "mac"):
            if k not in d:
                raise err("required in a step-2 HELLO without err", field=k)
    for k in ("dev", "gw", "officer"):
        if k in d and not topics.is_valid_id(d[k]):
            raise err("%r is not an id (1-32 chars [a-z0-9_-])" % (d[k],), field=k)
    if "fw" in d and not _text_ok(d["fw"], 32):
        raise err("must be 1..32 printable chars", field="fw")
    if "v" in d:
        v = d["v"]
        if hs == 1:
            ok = type(v) is list and 1 <= len(v) <= 8 and all(_int_ok(x, 1, 255) for x in v)
        else:
            ok = _int_ok(v, 1, 255)
        if not ok:
            raise err("%r: expected %s" % (v, "a list of 1..8 versions" if hs == 1 else "a version 1..255"),
                      field="v")
    if "mtu" in d and not _int_ok(d["mtu"], MIN_MTU, sf.MAX_WIRE_PAYLOAD):
        raise err("%r out of range %d..%d" % (d["mtu"], MIN_MTU, sf.MAX_WIRE_PAYLOAD), field="mtu")
    if "win" in d and not _int_ok(d["win"], 1, MAX_WINDOW):
        raise err("%r out of range 1..%d" % (d["win"], MAX_WINDOW), field="win")
    for k in ("nr", "ng"):
        if k in d and not _is_hex(d[k], NONCE_LEN):
            raise err("must be %d lower-case hex digits" % (2 * NONCE_LEN), field=k)
    if "mac" in d and not _is_hex(d["mac"], 32):
        raise err("must be 64 lower-case hex digits", field="mac")
    if "boot" in d and not _int_ok(d["boot"], 0, 2147483647):
        raise err("%r out of range 0..2147483647" % (d["boot"],), field="boot")
    if "hb_s" in d and not _int_ok(d["hb_s"], 1, 86400):
        raise err("%r out of range 1..86400" % (d["hb_s"],), field="hb_s")
    if "err" in d:
        e = d["err"]
        if type(e) is not str or not 1 <= len(e) <= 32 or any(c not in ERR_CHARS for c in e):
            raise err("must be 1..32 chars of [a-z_]", field="err")
    return d


def decode_hello(payload):
    """A HELLO payload -> validated dict; SessionError otherwise."""
    return validate_hello(_load(payload, MAX_HELLO, "hello"))


def encode_hello(d):
    validate_hello(d, LocalProtocolError)
    return canonical.dumpb(d)


CATALOG_ENTRY = ("id", "sha256", "size", "start", "end", "kind", "mime", "up", "mark")
MAX_CATALOG_ENTRIES = 16


def validate_catalog(d, err=SessionError):
    """``{"v": 1, "part": i, "parts": n, "clips": [entry, ...]}``; an entry describes one closed recording."""
    for k in d:
        if k not in ("v", "part", "parts", "clips") and not (type(k) is str and k.startswith("x_")):
            raise err("unknown field in a catalogue", field=str(k)[:32])
    if d.get("v") != 1 or type(d.get("v")) is not int:
        raise err("version %r, expected 1" % (d.get("v"),), field="v")
    parts = d.get("parts", 1)
    part = d.get("part", 0)
    if not _int_ok(parts, 1, 4096) or not _int_ok(part, 0, parts - 1 if type(parts) is int else 0):
        raise err("part %r of %r: expected 0 <= part < parts <= 4096" % (part, parts), field="part")
    clips = d.get("clips")
    if type(clips) is not list or len(clips) > MAX_CATALOG_ENTRIES:
        raise err("must be a list of at most %d entries" % MAX_CATALOG_ENTRIES, field="clips")
    for i, c in enumerate(clips):
        f = "clips[%d]" % i
        if not isinstance(c, dict):
            raise err("must be an object", field=f)
        for k in c:
            if k not in CATALOG_ENTRY and not (type(k) is str and k.startswith("x_")):
                raise err("unknown field", field=f + "." + str(k)[:32])
        if not cliptransfer.is_safe_clip_id(c.get("id")):
            raise err("not a safe clip id", field=f + ".id")
        if not _is_hex(c.get("sha256"), 32):
            raise err("must be 64 lower-case hex digits", field=f + ".sha256")
        if not _int_ok(c.get("size"), 1, cliptransfer.UINT32):
            raise err("must be 1..%d" % cliptransfer.UINT32, field=f + ".size")
        if not _int_ok(c.get("start"), 0, cliptransfer.MS_MAX) or not _int_ok(c.get("end"), c["start"],
                                                                                cliptransfer.MS_MAX):
            raise err("start/end must be Unix ms with start <= end", field=f + ".end")
        if c.get("kind") not in cliptransfer.KINDS:
            raise err("must be one of %s" % ",".join(cliptransfer.KINDS), field=f + ".kind")
        m = c.get("mime")
        if type(m) is not str or not 3 <= len(m) <= cliptransfer.MAX_MIME_LEN or m.count("/") != 1:
            raise err("must be a type/subtype", field=f + ".mime")
        for k in ("up", "mark"):
            if k in c and type(c[k]) is not bool:
                raise err("must be true or false", field=f + "." + k)
    return d


def decode_catalog(payload, limit=sf.DEFAULT_MAX_PAYLOAD):
    return validate_catalog(_load(payload, limit, "catalog"))


def encode_catalog(d):
    validate_catalog(d, LocalProtocolError)
    return canonical.dumpb(d)


# ---- the session ------------------------------------------------------------------------------------------------

class _Mac:
    """HMAC-SHA256 (RFC 2104) with the padded keys prepared once: a tag costs two short SHA-256 runs."""

    def __init__(self, key):
        key = bytes(key) + bytes(64 - len(key))
        self._i = bytes(b ^ 0x36 for b in key)
        self._o = bytes(b ^ 0x5C for b in key)

    def tag(self, head, body):
        h = hashlib.sha256(self._i)
        h.update(head)
        h.update(body)
        h2 = hashlib.sha256(self._o)
        h2.update(h.digest())
        return h2.digest()[:TAG_LEN]


class _Out:
    """A data frame of this session: built once (tag and CRC), resent byte for byte."""

    def __init__(self, ftype, body, ref):
        self.type = ftype
        self.body = body
        self.ref = ref
        self.n = 0
        self.wire = None
        self.sent_ms = 0
        self.tx = 0
        self.order = 0
        self.queued = False  # waiting in the retransmission queue
        self.sacked = False  # the peer holds it out of order (selective ACK); Acked only once in order


def _hx(b):
    return b.hex()


class SerialSession:
    """One end of a recorder link. ``role``: RECORDER or GATEWAY; ``my_id``: this end's device / gateway id.

    ``win`` is this end's *receive* window (frames it buffers out of order), announced in its HELLO; it sends
    with the window the peer announced (``tx_win``).

    A recorder passes its ``key`` (32 bytes); a gateway passes ``key_for(device_id) -> key or None``.
    ``rand(n)`` returns n random bytes (nonces). ``mtu``/``win``: this end's largest payload and window.
    A recorder also passes what its hs1 says: ``fw``, ``boot`` (boot counter), ``hb_s``, ``officer``.
    ``repair``: fix single flipped bits from the CRC syndrome (serialframe; the tag checks the result).
    """

    def __init__(self, role, my_id, key=None, key_for=None, rand=None, mtu=sf.DEFAULT_MAX_PAYLOAD, win=None,
                 fw="0", boot=0, hb_s=30, officer=None, versions=VERSIONS, repair=True):
        if role not in (RECORDER, GATEWAY):
            raise LocalProtocolError("role %r, expected recorder or gateway" % (role,), field="role")
        if not topics.is_valid_id(my_id):
            raise LocalProtocolError("%r is not an id" % (my_id,), field="my_id")
        if role == RECORDER and (key is None or len(key) != signing.KEY_LEN):
            raise LocalProtocolError("a recorder needs its 32-byte key", field="key")
        if role == GATEWAY and key_for is None:
            raise LocalProtocolError("a gateway needs key_for(device_id)", field="key_for")
        if rand is None:
            raise LocalProtocolError("rand(n) is required for nonces", field="rand")
        if win is None:
            win = defaults.SERIAL_WINDOW
        if type(mtu) is not int or not MIN_MTU <= mtu <= sf.MAX_WIRE_PAYLOAD:
            raise LocalProtocolError("mtu %r outside %d..%d" % (mtu, MIN_MTU, sf.MAX_WIRE_PAYLOAD), field="mtu")
        if type(win) is not int or not 1 <= win <= MAX_WINDOW:
            raise LocalProtocolError("win %r outside 1..%d" % (win, MAX_WINDOW), field="win")
        self.role = role
        self.my_id = my_id
        self._key = key
        self._key_for = key_for
        self._rand = rand
        self.mtu = mtu
        self.win = win
        self.versions = tuple(versions)
        self.hello_info = {"fw": fw, "boot": boot, "hb_s": hb_s}
        if officer:
            self.hello_info["officer"] = officer
        self.decoder = sf.FrameDecoder(max_payload=mtu, correct=repair)  # 1-bit repairs are checked by the tag
        self.state = IDLE
        self.peer = None
        self.peer_info = None
        self.version = None
        self.mtu_eff = mtu
        self.tx_win = 1
        self._events = []
        self._out = []  # _Out waiting for the window
        self._inflight = {}  # n -> _Out
        self._rtx = []  # n to resend, in order
        self._nacks = []
        self._ctl = []  # one-shot HELLO frames to send
        self._ack_due = False
        self._reset_window()
        self._hello_due = None  # recorder: when hs1 goes (again)
        self._probe_at = None  # gateway: when a probe goes (None: none wanted)
        self._probe_ok = 0  # gateway: earliest time the next probe may go
        self._epoch = 0  # sessions opened so far; events of an older one never count for the new one
        self._session_nr = None  # the recorder nonce of the open session (a resent hs1 of it is ignored)
        self._refused = False
        self._pending = None  # gateway: (dev, nr, ng, key, info) between hs2 and hs3
        self._nr = None
        self._ng = None
        self._tx_mac = None
        self._rx_mac = None
        self.last_rx_ms = None
        self._bits = 0.0  # transmitted data-frame bits (decayed) and losses over them, for piece_len()
        self._loss = 0.0
        self.stats = {"frames_in": 0, "frames_out": 0, "bytes_out": 0, "frames_resent": 0, "bytes_resent": 0,
                      "losses": 0, "nacks_in": 0, "nacks_out": 0, "rto": 0, "bad_tags": 0, "duplicates": 0,
                      "out_of_window": 0, "no_session": 0, "frame_errors": 0, "bytes_skipped": 0,
                      "handshakes": 0, "refused": 0, "bad_hello": 0, "bad_ack": 0, "corrected": 0}

    def _reset_window(self):
        self.tx_next = 1
        self.tx_base = 1
        self.rx_next = 1
        self.rx_done = 1
        self._rx_buf = {}
        self._order = 0
        self._srtt = None
        self._rttvar = 0
        self.rto = defaults.SERIAL_RTO_INIT_MS

    # -- public ---------------------------------------------------------------------------------------------------
    @property
    def established(self):
        return self.state == OPEN

    def start(self, now):
        """Recorder: begin (or restart) the handshake. Gateway: ask the recorder for a HELLO (a probe)."""
        if self.role == RECORDER:
            if self.state == OPEN:
                self._lose("restart")
            self.state = HELLO
            self._nr = self._rand(NONCE_LEN)
            self._hello_due = now
        else:
            self._probe_at = now

    def close(self, reason="closed"):
        """The line is gone: end the session; every frame with a ``ref`` is reported Dropped."""
        if self.state == OPEN:
            self._lose(reason)
        for o in self._out:
            if o.ref is not None:
                self._events.append(Dropped(o.ref, reason))
        self._out = []
        self.state = IDLE
        self._pending = None

    def send(self, ftype, payload, ref=None):
        """Queue a data frame (any type but HELLO/ACK/NACK); it goes out inside the window. Returns nothing;
        an ``Acked(ref)`` event follows when the peer confirms it. Raises LocalProtocolError when the queue is
        full (``room()`` says how much is left) or the payload cannot fit the negotiated mtu."""
        if ftype in (sf.TYPE_HELLO, sf.TYPE_ACK, sf.TYPE_NACK) or ftype not in sf.TYPE_NAMES:
            raise LocalProtocolError("type %r is not a session data frame" % (ftype,), field="type")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise LocalProtocolError("must be bytes", field="payload")
        limit = (self.mtu_eff if self.state == OPEN else self.mtu) - TAG_LEN
        if len(payload) > limit:
            raise LocalProtocolError("payload of %d bytes over the %d this session carries" % (len(payload), limit),
                                     field="payload")
        if len(self._out) >= defaults.SERIAL_MAX_QUEUE:
            raise LocalProtocolError("send queue full (%d frames)" % len(self._out), field="queue")
        self._out.append(_Out(ftype, bytes(payload), ref))

    def room(self):
        return defaults.SERIAL_MAX_QUEUE - len(self._out)

    def can_send_data(self):
        """True when a bulk frame (a clip piece) would go out at once: open, nothing queued, window not full."""
        return self.state == OPEN and not self._out and self.tx_next - self.tx_base < self.tx_win

    @property
    def in_flight(self):
        return len(self._inflight)

    def piece_len(self):
        """Clip bytes per CLIP_DATA frame for the bit error rate observed so far (see the module doc)."""
        cap = self.mtu_eff - TAG_LEN - cliptransfer.DATA_HEADER_LEN
        if self._loss <= 0 or self._bits <= 0:
            return cap
        p = self._loss / self._bits
        h = PIECE_OVERHEAD
        best = int((h * h / 4 + h / (8 * p)) ** 0.5 - h / 2)
        return max(defaults.SERIAL_MIN_PIECE, min(best, cap))

    def receive_data(self, data, now):
        """Bytes from the line (any chunking)."""
        self._now = now
        dec = self.decoder
        step = defaults.SERIAL_RX_CHUNK
        for i in range(0, len(data), step):
            dec.receive_data(data[i:i + step])
            self._drain(now)

    def line_idle(self, now):
        """The line went quiet: a partial frame held now is reported and dropped (see FrameDecoder)."""
        self.decoder.line_idle()
        self._drain(now)

    def next_event(self):
        if not self._events:
            return NEED_DATA
        ev = self._events.pop(0)
        if isinstance(ev, Received) and ev.epoch == self._epoch and self.state == OPEN:
            self.rx_done += 1
            self._ack_due = True
        return ev

    def data_to_send(self, now, limit=None):
        """Bytes to write now: acknowledgements, HELLOs, resends, then new frames while the window allows.

        ``limit`` (bytes) caps the data frames (control frames always go): a paced writer passes the room left in
        its transmit FIFO, so a frame is stamped when it really starts to leave.
        """
        out = []
        if self.state == OPEN and self._ack_due:
            out.append(self._build_ack())
            self._ack_due = False
        if self._nacks:
            if self.state == OPEN:
                for n, reason in self._nacks:
                    out.append(self._wire(sf.TYPE_NACK, n, sf.encode_nack(n & 0xFFFF, reason), self.tx_next))
                    self.stats["nacks_out"] += 1
            self._nacks = []
        out += self._ctl
        self._ctl = []
        h = self._due_hello(now)
        if h is not None:
            out.append(h)
        if self.state == OPEN:
            self._check_rto(now)
        if self.state == HELLO and self.role == RECORDER:  # _check_rto may have ended the session
            h = self._due_hello(now)
            if h is not None:
                out.append(h)
        if self.state == OPEN:
            budget = limit
            while self._rtx:
                o = self._inflight.get(self._rtx[0])
                if o is None or not o.queued:
                    self._rtx.pop(0)
                    continue
                if budget is not None and len(o.wire) > budget:
                    break
                self._rtx.pop(0)
                o.queued = False
                self._transmit(o, now)
                out.append(o.wire)
                if budget is not None:
                    budget -= len(o.wire)
            while self._out and self.tx_next - self.tx_base < self.tx_win:
                o = self._out[0]
                size = sf.OVERHEAD + len(o.body) + TAG_LEN
                if budget is not None and size > budget:
                    break
                self._out.pop(0)
                o.n = self.tx_next
                self.tx_next += 1
                o.wire = self._wire(o.type, o.n, o.body, o.n)
                o.tx = 0
                self._inflight[o.n] = o
                self._transmit(o, now)
                out.append(o.wire)
                if budget is not None:
                    budget -= size
        return b"".join(out)

    def next_timer(self, now):
        """Milliseconds until ``data_to_send`` has something new to do on its own (0 = now), or None."""
        if self._ctl or (self._ack_due and self.state == OPEN) or self._nacks:
            return 0
        t = None
        if self._hello_due is not None and self.role == RECORDER and self.state == HELLO:
            t = max(0, self._hello_due - now)
        if self._probe_at is not None:
            d = max(0, self._probe_at - now)
            t = d if t is None or d < t else t
        if self.state == OPEN:
            if self._rtx or (self._out and self.tx_next - self.tx_base < self.tx_win):
                return 0
            for o in self._inflight.values():
                if not o.queued and not o.sacked:
                    d = max(0, o.sent_ms + self.rto - now)
                    t = d if t is None or d < t else t
        return t

    # -- receiving ----------------------------------------------------------------------------------------------
    def _drain(self, now):
        dec = self.decoder
        while True:
            ev = dec.next_event()
            if ev is sf.NEED_DATA or ev is sf.CLOSED:
                return
            if isinstance(ev, sf.Frame):
                self.stats["frames_in"] += 1
                if ev.corrected:
                    self.stats["corrected"] += 1
                self._on_frame(ev, now)
            else:
                self.stats["frame_errors"] += 1
                self.stats["bytes_skipped"] += ev.skipped
                if (self.state == OPEN and ev.seq is not None and ev.reason in (sf.BAD_CRC, sf.TRUNCATED)
                        and ev.type not in (sf.TYPE_HELLO, sf.TYPE_ACK, sf.TYPE_NACK)):
                    n = self._rx_ext(ev.seq)
                    if self.rx_next <= n < self.rx_next + self.win and n not in self._rx_buf:
                        self._nacks.append((n, sf.NACK_BAD_CRC))

    def _on_frame(self, f, now):
        self.last_rx_ms = now
        if f.type == sf.TYPE_HELLO:
            self._on_hello(f.payload, now)
            return
        if self.state != OPEN:
            self.stats["no_session"] += 1
            if self.role == GATEWAY and self._probe_at is None:
                self._probe_at = max(now, self._probe_ok)  # a probe: "say HELLO"
            return
        p = f.payload
        if len(p) < TAG_LEN:
            self.stats["bad_tags"] += 1
            return
        body = p[:-TAG_LEN]
        tag = p[-TAG_LEN:]
        if f.type == sf.TYPE_ACK or f.type == sf.TYPE_NACK:
            self._on_ack_frame(f.type, body, tag, now)
            return
        n = self._rx_ext(f.seq)
        if not signing.compare_digest(tag, self._rx_mac.tag(struct.pack(">IB", n & 0xFFFFFFFF, f.type), body)):
            self.stats["bad_tags"] += 1
            return
        if n < self.rx_next:
            self.stats["duplicates"] += 1
            self._ack_due = True
            return
        if n >= self.rx_next + self.win:
            self.stats["out_of_window"] += 1
            return
        if n not in self._rx_buf:
            self._rx_buf[n] = (f.type, body, f.seq)
        else:
            self.stats["duplicates"] += 1
        self._ack_due = True
        while self.rx_next in self._rx_buf:
            t, b, s = self._rx_buf.pop(self.rx_next)
            self.rx_next += 1
            self._events.append(Received(t, b, s, self._epoch))

    def _rx_ext(self, seq):
        r = self.rx_next
        d = (seq - r) & 0xFFFF
        return r + d if d < 0x8000 else r + d - 0x10000

    def _tx_ext(self, seq):
        r = self.tx_base - 1
        d = (seq - r) & 0xFFFF
        if d <= self.tx_next - 1 - r:
            return r + d
        return r - ((r - seq) & 0xFFFF)

    def _on_ack_frame(self, ftype, body, tag, now):
        try:
            if ftype == sf.TYPE_ACK:
                seq, mask = sf.decode_ack(body)
            else:
                seq, reason = sf.decode_nack(body)
        except FrameError:
            self.stats["bad_ack"] += 1
            return
        n = self._tx_ext(seq)
        if not signing.compare_digest(tag, self._rx_mac.tag(struct.pack(">IB", n & 0xFFFFFFFF, ftype), body)):
            self.stats["bad_tags"] += 1
            return
        if ftype == sf.TYPE_NACK:
            self.stats["nacks_in"] += 1
            o = self._inflight.get(n)
            if o is None or o.queued or o.sacked:
                return
            if reason == sf.NACK_BAD_CRC or reason == sf.NACK_BUSY:
                guard = (self._srtt or 0) // 2
                if reason == sf.NACK_BUSY or now - o.sent_ms >= guard:
                    self._queue_rtx(o, loss=reason == sf.NACK_BAD_CRC)
            else:  # the peer will never take it: give it up
                del self._inflight[n]
                self._update_base()
                if o.ref is not None:
                    self._events.append(Dropped(o.ref, sf.NACK_REASONS.get(reason, str(reason))))
            return
        if n < self.tx_base - 1:
            return  # an old acknowledgement, superseded
        # Cumulative part: delivered to the peer's application -> Acked. Selective part: only held in the peer's
        # reorder buffer, which a lost session discards, so such a frame is no longer resent but not yet Acked.
        hi = 0
        acked = False
        for k in sorted(self._inflight):
            o = self._inflight[k]
            if k <= n:
                del self._inflight[k]
                if o.ref is not None:
                    self._events.append(Acked(o.ref))
            elif not o.sacked and k - n - 1 < MAX_WINDOW and (mask >> (k - n - 1)) & 1:
                o.sacked = True
            else:
                continue
            if o.tx == 1 and not (k <= n and o.sacked):
                self._rtt_sample(now - o.sent_ms)
            if o.order > hi:
                hi = o.order
            acked = True
        if acked:
            self._update_base()
            self._rto_from_rtt()
            for k in sorted(self._inflight):  # a FIFO line: anything sent before an acknowledged frame is lost
                o = self._inflight[k]
                if o.order < hi and not o.queued and not o.sacked:
                    self._queue_rtx(o, loss=True)

    def _update_base(self):
        self.tx_base = min(self._inflight) if self._inflight else self.tx_next

    def _queue_rtx(self, o, loss):
        o.queued = True
        self._rtx.append(o.n)
        if loss:
            self.stats["losses"] += 1
            self._loss += 1

    def _rtt_sample(self, r):
        # RFC 6298 §2 with alpha 1/8, beta 1/4, in integer ms
        if self._srtt is None:
            self._srtt = r
            self._rttvar = r // 2
        else:
            self._rttvar = (3 * self._rttvar + abs(self._srtt - r)) // 4
            self._srtt = (7 * self._srtt + r) // 8

    def _rto_from_rtt(self):
        if self._srtt is None:
            return
        # RFC 6298's srtt + 4 rttvar, but at least 1.5 srtt: a serial line's round trip hardly varies, and a
        # timeout just above it fired before the ACK that shows the loss (SACK) could arrive
        rto = self._srtt + max(4 * self._rttvar, self._srtt // 2)
        self.rto = max(defaults.SERIAL_RTO_MIN_MS, min(defaults.SERIAL_RTO_MAX_MS, rto))

    def _check_rto(self, now):
        fired = False
        for k in sorted(self._inflight):
            o = self._inflight[k]
            if not o.queued and not o.sacked and now - o.sent_ms >= self.rto:
                if o.tx >= defaults.SERIAL_MAX_TRIES:
                    self._lose("timeout")
                    if self.role == RECORDER:
                        self.start(now)
                    return
                self._queue_rtx(o, loss=False)
                fired = True
        if fired:
            self.stats["rto"] += 1
            self.rto = min(self.rto * 2, defaults.SERIAL_RTO_MAX_MS)  # RFC 6298 §5.5

    # -- sending ------------------------------------------------------------------------------------------------
    def _wire(self, ftype, n, body, seq_field):
        tag = self._tx_mac.tag(struct.pack(">IB", n & 0xFFFFFFFF, ftype), body)
        return sf.encode_frame(ftype, seq_field & 0xFFFF, body + tag, self.mtu_eff)

    def _transmit(self, o, now):
        o.sent_ms = now
        o.tx += 1
        self._order += 1
        o.order = self._order
        n = len(o.wire)
        self.stats["frames_out"] += 1
        self.stats["bytes_out"] += n
        if o.tx > 1:
            self.stats["frames_resent"] += 1
            self.stats["bytes_resent"] += n
        self._bits += 8 * n
        if self._bits > 2 * defaults.SERIAL_LOSS_HALFLIFE_BITS:
            self._bits /= 2
            self._loss /= 2

    def _build_ack(self):
        cum = self.rx_done - 1
        mask = 0
        for k in self._rx_buf:
            i = k - self.rx_done
            if 0 <= i < MAX_WINDOW:
                mask |= 1 << i
        return self._wire(sf.TYPE_ACK, cum, sf.encode_ack(cum & 0xFFFF, mask), self.tx_next)

    # -- handshake ----------------------------------------------------------------------------------------------
    def _hello_frame(self, d):
        return sf.encode_frame(sf.TYPE_HELLO, 0, encode_hello(d), MAX_HELLO)

    def _due_hello(self, now):
        if self.role == GATEWAY:
            if self._probe_at is None or now < self._probe_at:
                return None
            self._probe_at = None
            self._probe_ok = now + defaults.SERIAL_PROBE_MS
            return self._hello_frame({"hs": 0, "gw": self.my_id})
        if self._hello_due is None or now < self._hello_due:
            return None
        if self.role == RECORDER:
            if self.state != HELLO:
                self._hello_due = None
                return None
            d = {"hs": 1, "dev": self.my_id, "v": list(self.versions), "mtu": self.mtu, "win": self.win,
                 "nr": _hx(self._nr)}
            for k in self.hello_info:
                d[k] = self.hello_info[k]
            self._hello_due = now + (defaults.SERIAL_HELLO_REFUSED_MS if self._refused
                                     else defaults.SERIAL_HELLO_MS)
            return self._hello_frame(d)
        return None

    def _on_hello(self, payload, now):
        try:
            d = decode_hello(payload)
        except SessionError as e:
            self.stats["bad_hello"] += 1
            self._events.append(Refused(None, "bad_hello", str(e)))
            return
        hs = d["hs"]
        if self.role == GATEWAY:
            if hs == 1:
                self._on_hs1(d, now)
            elif hs == 3:
                self._on_hs3(d, now)
            return
        if hs == 0:
            if self.state == OPEN:
                self._lose("probe")
                self.state = HELLO
                self._nr = self._rand(NONCE_LEN)
            if self.state == HELLO:
                self._hello_due = now
        elif hs == 2:
            self._on_hs2(d, now)

    def _refuse_hs1(self, d, code, message):
        self.stats["refused"] += 1
        self._events.append(Refused(d.get("dev"), code, message))
        self._ctl.append(self._hello_frame({"hs": 2, "gw": self.my_id, "nr": d["nr"], "err": code}))

    def _on_hs1(self, d, now):
        nr = bytes.fromhex(d["nr"])
        if self._pending is not None and self._pending[1] == nr:
            self._ctl.append(self._pending[8])  # the same hs1 again (it crossed our hs2): the same answer
            return
        if self.state == OPEN and self._session_nr == nr:
            return  # a resent hs1 of the session we already have
        # An open session stays open until the new handshake has proved the key (hs3, _on_hs3): anyone who can
        # write to the line can send a step-1 HELLO, and it must not knock the recorder offline.
        if self.state != OPEN:
            self.state = IDLE
        self._pending = None
        common = [v for v in d["v"] if v in self.versions]
        if not common:
            self._refuse_hs1(d, "version", "recorder speaks %r, gateway %r" % (d["v"], list(self.versions)))
            return
        key = self._key_for(d["dev"])
        if key is None:
            self._refuse_hs1(d, "unknown_device", "no recorder key for %r" % d["dev"])
            return
        ng = self._rand(NONCE_LEN)
        v = max(common)
        mtu = min(d["mtu"], self.mtu)
        win = d["win"]  # we send with the recorder's receive window; hs2 announces ours
        hs2 = {"hs": 2, "gw": self.my_id, "v": v, "mtu": mtu, "win": self.win, "ng": _hx(ng), "nr": d["nr"]}
        signing.sign(key, "hello", hs2)
        frame = self._hello_frame(hs2)
        self._pending = (d["dev"], nr, ng, key, d, v, mtu, win, frame)
        if self.state != OPEN:
            self.state = HELLO
        self._ctl.append(frame)

    def _on_hs3(self, d, now):
        p = self._pending
        if p is None:
            self.stats["bad_hello"] += 1
            return
        dev, nr, ng, key, info, v, mtu, win, _frame = p
        if d["dev"] != dev or d["ng"] != _hx(ng) or d["nr"] != _hx(nr):
            self.stats["bad_hello"] += 1
            return
        try:
            signing.verify(key, "hello", d)
        except AuthError as e:
            self.stats["refused"] += 1
            self._pending = None
            if self.state != OPEN:
                self.state = IDLE
            self._events.append(Refused(dev, "bad_mac", str(e)))
            return
        self._pending = None
        if self.state == OPEN:  # proved: the recorder (rebooted, or re-docked) replaces its old session
            self._lose("rehello")
        self._open(dev, info, key, ng, nr, v, mtu, win)

    def _on_hs2(self, d, now):
        if self.state != HELLO or self._nr is None or d["nr"] != _hx(self._nr):
            return  # stale or duplicate
        if "err" in d:
            self._refused = True
            self.stats["refused"] += 1
            self._hello_due = now + defaults.SERIAL_HELLO_REFUSED_MS
            self._events.append(Refused(d["gw"], d["err"], "the gateway refused the session"))
            return
        try:
            signing.verify(self._key, "hello", d)
        except AuthError as e:
            self.stats["refused"] += 1
            self._events.append(Refused(d["gw"], "bad_mac", str(e)))
            return
        if d["v"] not in self.versions or d["mtu"] > self.mtu:
            self.stats["refused"] += 1
            self._events.append(Refused(d["gw"], "bad_hello", "gateway chose v%r mtu %r win %r outside our offer"
                                        % (d["v"], d["mtu"], d["win"])))
            return
        ng = bytes.fromhex(d["ng"])
        hs3 = signing.sign(self._key, "hello", {"hs": 3, "dev": self.my_id, "ng": d["ng"], "nr": d["nr"]})
        self._ctl.append(self._hello_frame(hs3))
        self._refused = False
        self._open(d["gw"], d, self._key, ng, self._nr, d["v"], d["mtu"], d["win"])

    def _open(self, peer, info, key, ng, nr, v, mtu, win):
        self._session_nr = nr
        ks = signing.hmac_sha256(key, b"lookout/1|serial|" + ng + nr)
        k_rg = _Mac(signing.hmac_sha256(ks, b"R>G"))
        k_gr = _Mac(signing.hmac_sha256(ks, b"G>R"))
        if self.role == RECORDER:
            self._tx_mac, self._rx_mac = k_rg, k_gr
        else:
            self._tx_mac, self._rx_mac = k_gr, k_rg
        carried = self._out
        self._reset_window()
        self._out = carried
        self.state = OPEN
        self.peer = peer
        self.peer_info = info
        self.version = v
        self.mtu_eff = mtu
        self.tx_win = win
        self._hello_due = None
        self._probe_at = None
        self._epoch += 1
        self.stats["handshakes"] += 1
        keep = []
        for o in self._out:  # queued while no session, or carried over: they must fit the negotiated mtu
            if sf.OVERHEAD + len(o.body) + TAG_LEN <= sf.OVERHEAD + mtu:
                keep.append(o)
            elif o.ref is not None:
                self._events.append(Dropped(o.ref, "too_large"))
        self._out = keep
        self._events.append(Established(peer, info))

    def _lose(self, reason):
        carry = []
        for k in sorted(self._inflight):
            carry.append(self._inflight[k])
        carry += self._out
        keep = []
        for o in carry:
            if o.type in CARRY:
                o.wire = None
                o.queued = False
                o.sacked = False
                keep.append(o)
            elif o.ref is not None:
                self._events.append(Dropped(o.ref, reason))
        self._inflight = {}
        self._rtx = []
        self._nacks = []
        self._ack_due = False
        self._out = keep
        self.state = IDLE
        self.peer = None
        self._events.append(Lost(reason))


# ---- one outgoing clip ------------------------------------------------------------------------------------------

class ClipPush:
    """Send one clip over a session: CLIP_OFFER, then pieces (from 0 at once for a fresh transfer, else from the
    receiver's confirmed offset), until its CLIP_DONE says ``complete`` (or ``failed``).

    ``offer`` is the manifest payload to send (canonical JSON; a recorder signs it, purpose ``up``). The caller
    routes to it: ``on_status(status_dict)`` for CLIP_DONE frames of this tid, ``on_acked(ref)`` for Acked
    events whose ref is a tuple starting with ``"data"``, ``on_session()`` after a new Established (the offer
    goes again: the receiver answers with its confirmed offset), and calls ``pump()`` after each event batch.
    """

    OFFERED = "offered"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"

    def __init__(self, session, sender, offer):
        self.session = session
        self.stream = cliptransfer.StreamSender(sender)
        self.manifest = sender.manifest
        self.offer = offer
        self.state = None
        self.error = None
        self.offers = 0

    @property
    def tid(self):
        return self.manifest.tid

    def start(self, fresh=True):
        """Offer the clip. A ``fresh`` transfer (never offered before) streams from offset 0 at once, without
        waiting a round trip for the status (the link delivers the offer first); a renewed offer waits for the
        receiver's confirmed offset."""
        self.offers += 1
        self.session.send(sf.TYPE_CLIP_OFFER, self.offer)
        if fresh and self.offers == 1:
            self.state = self.SENDING
        else:
            self.state = self.OFFERED

    def on_session(self):
        if self.state in (self.OFFERED, self.SENDING):
            self.start(fresh=False)

    def on_status(self, st):
        if st["tid"] != self.manifest.tid or self.state in (self.DONE, self.FAILED):
            return
        if st["state"] == cliptransfer.COMPLETE:
            self.stream.confirmed(self.manifest.size)
            self.state = self.DONE
        elif st["state"] == cliptransfer.FAILED:
            self.state = self.FAILED
            self.error = st.get("err") or "failed"
        elif self.state == self.OFFERED or st.get("off", 0) > self.stream.next:
            # the receiver's confirmed offset (after a renewed offer, or it held more than we sent: resumed)
            try:
                self.stream.resume(st.get("off", 0))
            except TransferError:
                self.state = self.FAILED
                self.error = "bad_offset"
                return
            self.state = self.SENDING

    def on_acked(self, ref):
        if ref[1] == self.manifest.tid:
            self.stream.confirmed(ref[2])

    def pump(self):
        """Queue pieces while the window has room; returns how many were queued."""
        k = 0
        s = self.session
        while self.state == self.SENDING and not self.stream.done_sending and s.can_send_data():
            off, data = self.stream.next_piece(s.piece_len())
            s.send(sf.TYPE_CLIP_DATA, cliptransfer.encode_data(self.manifest.tid, off, data),
                   ("data", self.manifest.tid, off + len(data)))
            k += 1
        return k
