"""Chunked clip transfer over MQTT or serial (sans-IO; runs unchanged on MicroPython).

Theory of operation
-------------------
A clip (an audio file for a loudspeaker, a snapshot or video from a camera node or a recorder) is described by a
*manifest* (canonical JSON: clip id, transfer id, size, chunk size, chunk count, SHA-256, kind, MIME type,
creation time) and sent as *chunks*: a 10-byte binary header (version, reserved, transfer id, index) followed by
the raw bytes. On MQTT a chunk is one message payload; on serial it is a CLIP_CHUNK frame payload.

``ClipReceiver`` accepts chunks in any order and any number of times: a duplicate is ignored (idempotent, so the
sender may resend freely), a chunk of another transfer, an index out of range or a wrong length is rejected with
TransferError and leaves the state unchanged. Data goes to a caller-supplied *sink* at its byte offset
(``write_at``), so a node streams straight to flash. ``missing()`` lists the indexes still needed as half-open
ranges, which is what a resume request carries. When the last chunk arrives the SHA-256 is checked: if every
chunk came in order the hash was computed on the way in; otherwise the receiver asks the sink to replay the
content (``read_all(callback)``). A mismatch makes the transfer FAILED for good (sticky), calls the sink's
``discard()`` and raises TransferError: the clip must not be played or filed as evidence. A match calls the
sink's ``commit()`` (e.g. rename ``clip.part`` to ``clip``).

``ClipSender`` builds the manifest from bytes or a seekable reader and produces any chunk on demand (for resends
of the ranges a status message lists), optionally into a preallocated buffer.

Clip ids become file names on a node, so they are restricted to ``[A-Za-z0-9_.-]{1,48}`` without a leading dot.

Streams (the serial link, protocols/serialsession.py): the link below is already reliable and in order, so data
travels as *pieces* addressed by byte offset (``encode_data``: tid, offset, bytes) whose length the sender picks
per frame (short pieces on a noisy line, long ones on a clean line, as ZMODEM does), instead of fixed chunks.
``ClipReceiver.receive_at`` takes them; what the receiver holds is then a prefix of the clip, and its length
``offset`` is the *confirmed offset* a transfer resumes from after a cable pull or a restart (the status carries
it as ``off``, like ZMODEM's ZRPOS). ``ClipReceiver(..., offset=n)`` resumes a receiver whose sink already holds
the first ``n`` bytes. ``StreamSender`` is the sending half: it hands out the next piece, tracks the confirmed
offset, and counts bytes it sent twice, so a test can check that a resume never re-sends confirmed data.
"""

import binascii
import hashlib
import json
import struct

from . import canonical, defaults
from .errors import LocalProtocolError, TransferError

VERSION = 1
CHUNK_HEADER_LEN = 10
CHUNK_HEADER_FMT = ">BBII"  # version, reserved (0), transfer id, index
MAX_ID_LEN = 48
MAX_MIME_LEN = 64
MS_MAX = 2 ** 47  # same bound as protocols/messages.py: rejects µs/ns timestamps
UINT32 = 0xFFFFFFFF
KINDS = ("audio", "snapshot", "video", "other")
MANIFEST_KEYS = ("v", "tid", "id", "size", "chunk", "n", "sha256", "kind", "mime", "ts")

# Error codes (TransferError.code)
E_MANIFEST = "bad_manifest"
E_TOO_LARGE = "too_large"
E_CHUNK = "bad_chunk"
E_WRONG_TRANSFER = "wrong_transfer"
E_HASH = "hash_mismatch"
E_STATUS = "bad_status"
E_OFFSET = "bad_offset"
DATA_HEADER_LEN = 8
DATA_HEADER_FMT = ">II"  # transfer id, byte offset

# ClipReceiver.receive results and states
ACCEPTED = "accepted"
DUPLICATE = "duplicate"
COMPLETE = "complete"
RECEIVING = "receiving"
FAILED = "failed"
STATES = (RECEIVING, COMPLETE, FAILED)

_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
_MIME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.+-"
_HEX = "0123456789abcdef"


def is_safe_clip_id(s):
    """True if ``s`` is usable as a file name on a node: ``[A-Za-z0-9_.-]{1,48}``, not starting with a dot."""
    if type(s) is not str or not 1 <= len(s) <= MAX_ID_LEN or s[0] == ".":
        return False
    for c in s:
        if c not in _ID_CHARS:
            return False
    return True


def _bad(err, code, field, msg):
    if err is LocalProtocolError:
        return LocalProtocolError(msg, field=field)
    return err(msg, field=field, code=code)


def _int(d, key, lo, hi, err):
    v = d.get(key)
    if type(v) is not int or v < lo or v > hi:
        raise _bad(err, E_MANIFEST, key, "must be an integer %d..%d, got %r" % (lo, hi, v))
    return v


def _validate_manifest(d, err):
    """Check a manifest dict; raise ``err`` (TransferError for wire input, LocalProtocolError for ours)."""
    if not isinstance(d, dict):
        raise _bad(err, E_MANIFEST, "manifest", "must be a JSON object, got %s" % type(d).__name__)
    for k in d:
        if k == "mac":  # node-signed upload manifest (signing.py, purpose "up"); verified by the receiver
            m = d[k]
            if type(m) is not str or len(m) != 64:
                raise _bad(err, E_MANIFEST, "mac", "must be 64 hex digits, got %r" % (str(m)[:80],))
            continue
        if k not in MANIFEST_KEYS and not (type(k) is str and k.startswith("x_")):
            raise _bad(err, E_MANIFEST, str(k)[:32], "unknown field, expected one of %s or x_*"
                       % ",".join(MANIFEST_KEYS))
    v = d.get("v")
    if type(v) is not int or v != VERSION:
        raise _bad(err, E_MANIFEST, "v", "version %r, expected %d" % (v, VERSION))
    _int(d, "tid", 0, UINT32, err)
    cid = d.get("id")
    if not is_safe_clip_id(cid):
        raise _bad(err, E_MANIFEST, "id", "%r is not a safe clip id ([A-Za-z0-9_.-]{1,48}, no leading dot)"
                   % (cid if type(cid) is not str else cid[:64],))
    size = _int(d, "size", 1, UINT32, err)
    chunk = _int(d, "chunk", defaults.CLIP_MIN_CHUNK, defaults.CLIP_MAX_CHUNK, err)
    n = _int(d, "n", 1, defaults.CLIP_MAX_CHUNKS, err)
    want = (size + chunk - 1) // chunk
    if n != want:
        raise _bad(err, E_MANIFEST, "n", "%d chunks, expected ceil(size %d / chunk %d) = %d" % (n, size, chunk, want))
    h = d.get("sha256")
    if type(h) is not str or len(h) != 64 or any(c not in _HEX for c in h):
        raise _bad(err, E_MANIFEST, "sha256", "must be 64 lower-case hex digits, got %r"
                   % (h if type(h) is not str else h[:80],))
    kind = d.get("kind")
    if kind not in KINDS:
        raise _bad(err, E_MANIFEST, "kind", "%r, expected one of %s" % (kind, ",".join(KINDS)))
    mime = d.get("mime")
    ok = type(mime) is str and 3 <= len(mime) <= MAX_MIME_LEN and mime.count("/") == 1
    if ok:
        a, b = mime.split("/")
        ok = bool(a) and bool(b) and all(c in _MIME_CHARS for c in a + b)
    if not ok:
        raise _bad(err, E_MANIFEST, "mime", "%r is not a lower-case type/subtype of at most %d chars"
                   % (mime if type(mime) is not str else mime[:80], MAX_MIME_LEN))
    _int(d, "ts", 0, MS_MAX, err)


class Manifest:
    """What a receiver needs to know before the first chunk. ``created_ms``: Unix ms (0 = node had no clock)."""

    def __init__(self, clip_id, tid, size, chunk_size, sha256, kind, mime, created_ms, chunks=None):
        if chunks is None and type(size) is int and type(chunk_size) is int and chunk_size > 0:
            chunks = (size + chunk_size - 1) // chunk_size
        self.clip_id = clip_id
        self.tid = tid
        self.size = size
        self.chunk_size = chunk_size
        self.chunks = chunks
        self.sha256 = sha256
        self.kind = kind
        self.mime = mime
        self.created_ms = created_ms
        _validate_manifest(self.to_dict(), LocalProtocolError)

    def to_dict(self):
        return {"v": VERSION, "tid": self.tid, "id": self.clip_id, "size": self.size, "chunk": self.chunk_size,
                "n": self.chunks, "sha256": self.sha256, "kind": self.kind, "mime": self.mime,
                "ts": self.created_ms}

    @classmethod
    def from_dict(cls, d):
        """Validate a decoded manifest object from the wire; raise TransferError."""
        _validate_manifest(d, TransferError)
        return cls(d["id"], d["tid"], d["size"], d["chunk"], d["sha256"], d["kind"], d["mime"], d["ts"], d["n"])

    def encode(self):
        """Canonical JSON bytes (sorted keys, no spaces)."""
        return canonical.dumpb(self.to_dict())

    def chunk_len(self, index):
        """Length of chunk ``index``: ``chunk_size`` except for the last one."""
        if index == self.chunks - 1:
            return self.size - index * self.chunk_size
        return self.chunk_size

    def __eq__(self, other):
        return isinstance(other, Manifest) and self.to_dict() == other.to_dict()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Manifest(%s tid=%d size=%d chunk=%d n=%d %s)" % (self.clip_id, self.tid, self.size,
                                                                 self.chunk_size, self.chunks, self.kind)


def _loads(payload, limit, max_open, code, what):
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("must be bytes, got %s" % type(payload).__name__, field=what)
    if len(payload) > limit:
        raise TransferError("%d bytes, at most %d" % (len(payload), limit), field=what, code=code)
    payload = bytes(payload)
    # Bound nesting before parsing: CPython's json recurses (RecursionError is not a ValueError).
    opened = payload.count(b"[") + payload.count(b"{")
    if opened > max_open:
        raise TransferError("%d JSON arrays/objects, at most %d" % (opened, max_open), field=what, code=code)
    try:
        return json.loads(payload.decode())
    except (ValueError, UnicodeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors on CPython
        raise TransferError("is not UTF-8 JSON", field=what, code=code)


def decode_manifest(payload):
    """Manifest from its JSON bytes, or TransferError(code bad_manifest)."""
    return Manifest.from_dict(_loads(payload, defaults.CLIP_MAX_MANIFEST, 16, E_MANIFEST, "manifest"))


def encode_manifest(manifest):
    return manifest.encode()


class Chunk:
    """One chunk. ``data`` is a memoryview into the decoded payload (no copy); ``bytes(c.data)`` keeps it."""

    def __init__(self, tid, index, data):
        self.tid = tid
        self.index = index
        self.data = data

    def __repr__(self):
        return "Chunk(tid=%d, index=%d, %d bytes)" % (self.tid, self.index, len(self.data))


def encode_chunk_into(buf, tid, index, data):
    """Write the chunk payload into ``buf`` (bytearray/memoryview) at offset 0; return its length."""
    if type(tid) is not int or not 0 <= tid <= UINT32:
        raise LocalProtocolError("must be an integer 0..%d, got %r" % (UINT32, tid), field="tid")
    if type(index) is not int or not 0 <= index < defaults.CLIP_MAX_CHUNKS:
        raise LocalProtocolError("must be an integer 0..%d, got %r" % (defaults.CLIP_MAX_CHUNKS - 1, index),
                                 field="index")
    end = CHUNK_HEADER_LEN + len(data)
    if end > len(buf):
        raise LocalProtocolError("buffer of %d bytes too small for a %d-byte chunk" % (len(buf), end), field="buf")
    struct.pack_into(CHUNK_HEADER_FMT, buf, 0, VERSION, 0, tid, index)
    memoryview(buf)[CHUNK_HEADER_LEN:end] = data
    return end


def encode_chunk(tid, index, data):
    """The binary chunk payload: version(1) reserved(1)=0 tid(u32 BE) index(u32 BE) data."""
    buf = bytearray(CHUNK_HEADER_LEN + len(data))
    encode_chunk_into(buf, tid, index, data)
    return bytes(buf)


def decode_chunk(payload):
    """Chunk from its binary payload, or TransferError(code bad_chunk). Length checks need the manifest."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("must be bytes, got %s" % type(payload).__name__, field="chunk")
    if len(payload) < CHUNK_HEADER_LEN:
        raise TransferError("%d bytes, shorter than the %d-byte header" % (len(payload), CHUNK_HEADER_LEN),
                            field="chunk", code=E_CHUNK)
    ver, rsv, tid, index = struct.unpack_from(CHUNK_HEADER_FMT, payload, 0)
    if ver != VERSION:
        raise TransferError("version %d, expected %d" % (ver, VERSION), field="version", code=E_CHUNK)
    if rsv != 0:
        raise TransferError("reserved byte 0x%02x, expected 0" % rsv, field="reserved", code=E_CHUNK)
    return Chunk(tid, index, memoryview(payload)[CHUNK_HEADER_LEN:])


class DataPiece:
    """Bytes of a stream at a byte offset. ``data`` is a memoryview into the decoded payload (no copy)."""

    def __init__(self, tid, offset, data):
        self.tid = tid
        self.offset = offset
        self.data = data

    def __repr__(self):
        return "DataPiece(tid=%d, offset=%d, %d bytes)" % (self.tid, self.offset, len(self.data))


def encode_data_into(buf, tid, offset, data):
    """Write a piece payload (tid u32 BE, offset u32 BE, data) into ``buf`` at 0; return its length."""
    if type(tid) is not int or not 0 <= tid <= UINT32:
        raise LocalProtocolError("must be an integer 0..%d, got %r" % (UINT32, tid), field="tid")
    if type(offset) is not int or not 0 <= offset <= UINT32:
        raise LocalProtocolError("must be an integer 0..%d, got %r" % (UINT32, offset), field="offset")
    end = DATA_HEADER_LEN + len(data)
    if not data:
        raise LocalProtocolError("a piece carries at least one byte", field="data")
    if end > len(buf):
        raise LocalProtocolError("buffer of %d bytes too small for a %d-byte piece" % (len(buf), end), field="buf")
    struct.pack_into(DATA_HEADER_FMT, buf, 0, tid, offset)
    memoryview(buf)[DATA_HEADER_LEN:end] = data
    return end


def encode_data(tid, offset, data):
    """The binary piece payload of a stream (serial frame type CLIP_DATA): tid(u32 BE) offset(u32 BE) data."""
    buf = bytearray(DATA_HEADER_LEN + len(data))
    encode_data_into(buf, tid, offset, data)
    return bytes(buf)


def decode_data(payload):
    """DataPiece from its payload, or TransferError(code bad_chunk). Range checks need the manifest."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("must be bytes, got %s" % type(payload).__name__, field="data")
    if len(payload) <= DATA_HEADER_LEN:
        raise TransferError("%d bytes, a piece is the %d-byte header and at least one byte"
                            % (len(payload), DATA_HEADER_LEN), field="data", code=E_CHUNK)
    tid, offset = struct.unpack_from(DATA_HEADER_FMT, payload, 0)
    return DataPiece(tid, offset, memoryview(payload)[DATA_HEADER_LEN:])


class MemorySink:
    """In-memory sink (tests, small snapshots). A node's flash sink implements the same methods on a file."""

    def __init__(self, size):
        self.buf = bytearray(size)
        self.committed = False
        self.discarded = False

    def write_at(self, offset, data):
        end = offset + len(data)
        if offset < 0 or end > len(self.buf):
            raise LocalProtocolError("write of %d bytes at %d beyond size %d" % (len(data), offset, len(self.buf)),
                                     field="offset")
        memoryview(self.buf)[offset:end] = data

    def read_all(self, callback, block=1024):
        mv = memoryview(self.buf)
        for i in range(0, len(self.buf), block):
            callback(mv[i:i + block])

    def commit(self):
        self.committed = True

    def discard(self):
        self.discarded = True
        self.buf = bytearray(0)

    @property
    def data(self):
        return bytes(self.buf)


def _hexdigest(h):
    return binascii.hexlify(h.digest()).decode()


class ClipReceiver:
    """Receive one clip. ``manifest``: Manifest, dict or JSON bytes; ``max_size``: bytes this node accepts.

    ``sink`` needs ``write_at(offset, data)`` and ``read_all(callback)``; ``commit()`` and ``discard()`` are
    called if present. Defaults to a MemorySink of the clip's size.
    """

    def __init__(self, manifest, max_size, sink=None, offset=0):
        if isinstance(manifest, (bytes, bytearray, memoryview)):
            manifest = decode_manifest(manifest)
        elif isinstance(manifest, dict):
            manifest = Manifest.from_dict(manifest)
        elif not isinstance(manifest, Manifest):
            raise LocalProtocolError("must be a Manifest, dict or bytes, got %s" % type(manifest).__name__,
                                     field="manifest")
        if type(max_size) is not int or max_size < 1:
            raise LocalProtocolError("must be a positive integer, got %r" % (max_size,), field="max_size")
        if manifest.size > max_size:
            raise TransferError("clip of %d bytes exceeds this receiver's max_size %d" % (manifest.size, max_size),
                                field="size", code=E_TOO_LARGE)
        self.manifest = manifest
        self.sink = sink if sink is not None else MemorySink(manifest.size)
        self._bits = bytearray((manifest.chunks + 7) // 8)
        self.received = 0  # distinct chunks stored
        self.duplicates = 0
        self.state = RECEIVING
        self.error = None  # TransferError code once FAILED
        self._h = hashlib.sha256()  # in-order running hash; None once a chunk arrived out of order
        self._next = 0
        self.offset = 0  # bytes held as one prefix (pieces and in-order chunks): the confirmed offset
        self.stream = False  # True once resumed or fed pieces: the status then carries ``off``
        self._marked = 0  # chunks below this index are known to lie inside the prefix
        if offset:
            if type(offset) is not int or not 0 < offset < manifest.size:
                raise LocalProtocolError("resume offset %r outside 1..%d" % (offset, manifest.size - 1),
                                         field="offset")
            self.offset = offset
            self.stream = True
            self._h = None  # the prefix is hashed again from the sink at completion
            self._mark_prefix()

    @property
    def complete(self):
        return self.state == COMPLETE

    @property
    def usable(self):
        """True only once every chunk arrived and the SHA-256 matched."""
        return self.state == COMPLETE

    def has(self, index):
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def receive_payload(self, payload):
        """Decode a binary chunk payload and ``receive`` it."""
        return self.receive(decode_chunk(payload))

    def receive(self, chunk):
        """Store one chunk; return ACCEPTED, DUPLICATE or COMPLETE (the chunk that completed a verified clip).

        Raises TransferError for a chunk of another transfer, an index out of range or a wrong length (state
        unchanged), or when the completed clip fails its SHA-256 (state becomes FAILED).
        """
        if self.state == FAILED:
            raise LocalProtocolError("transfer %d already failed (%s); drop this receiver"
                                     % (self.manifest.tid, self.error), field="state")
        m = self.manifest
        if chunk.tid != m.tid:
            raise TransferError("transfer id %d, expected %d" % (chunk.tid, m.tid), field="tid",
                                code=E_WRONG_TRANSFER)
        i = chunk.index
        if not 0 <= i < m.chunks:
            raise TransferError("index %d out of range 0..%d" % (i, m.chunks - 1), field="index", code=E_CHUNK)
        want = m.chunk_len(i)
        if len(chunk.data) != want:
            raise TransferError("chunk %d has %d bytes, expected %d" % (i, len(chunk.data), want),
                                field="data", code=E_CHUNK)
        if self.has(i):
            self.duplicates += 1
            return DUPLICATE
        self.sink.write_at(i * m.chunk_size, chunk.data)
        self._bits[i >> 3] |= 1 << (i & 7)
        self.received += 1
        if i * m.chunk_size == self.offset:
            self.offset += len(chunk.data)
            while self.offset < m.size and self.has(self.offset // m.chunk_size) \
                    and self.offset % m.chunk_size == 0:
                self.offset += m.chunk_len(self.offset // m.chunk_size)
        if self._h is not None:
            if i == self._next:
                self._h.update(chunk.data)
                self._next += 1
            else:
                self._h = None
        if self.received < m.chunks:
            return ACCEPTED
        return self._verify()

    def _mark_prefix(self):
        """Set the bit of every chunk that lies wholly inside the prefix ``[0, offset)``."""
        m = self.manifest
        end = m.chunks if self.offset >= m.size else self.offset // m.chunk_size
        i = self._marked
        while i < end:
            if not self.has(i):
                self._bits[i >> 3] |= 1 << (i & 7)
                self.received += 1
            i += 1
        if end > self._marked:
            self._marked = end

    def receive_at(self, offset, data):
        """Store a piece of a stream (``decode_data``) at byte ``offset``; return ACCEPTED, DUPLICATE or COMPLETE.

        Pieces must extend the prefix held: a piece starting beyond ``self.offset`` is a gap (TransferError
        ``bad_offset``, state unchanged: the link below delivers in order, so a gap is a peer's bug); bytes before
        ``self.offset`` are duplicates and skipped. The hash is computed on the way in unless the receiver was
        resumed or took chunks out of order; completion verifies it exactly like ``receive``.
        """
        if self.state == FAILED:
            raise LocalProtocolError("transfer %d already failed (%s); drop this receiver"
                                     % (self.manifest.tid, self.error), field="state")
        m = self.manifest
        n = len(data)
        if type(offset) is not int or offset < 0 or offset + n > m.size or n == 0:
            raise TransferError("piece of %d bytes at %r outside the %d-byte clip" % (n, offset, m.size),
                                field="offset", code=E_OFFSET)
        if offset > self.offset:
            raise TransferError("piece at %d leaves a gap after the %d bytes held" % (offset, self.offset),
                                field="offset", code=E_OFFSET)
        end = offset + n
        self.stream = True
        if end <= self.offset or self.state == COMPLETE:
            self.duplicates += 1
            return DUPLICATE
        skip = self.offset - offset
        piece = memoryview(data)[skip:] if skip else data
        self.sink.write_at(self.offset, piece)
        if self._h is not None:
            self._h.update(piece)
        self.offset = end
        self._mark_prefix()
        if self.offset < m.size:
            return ACCEPTED
        return self._verify()

    def _verify(self):
        h = self._h
        if h is None:
            h = hashlib.sha256()
            self.sink.read_all(h.update)
        got = _hexdigest(h)
        self._h = None
        if got != self.manifest.sha256:
            self.state = FAILED
            self.error = E_HASH
            if hasattr(self.sink, "discard"):
                self.sink.discard()
            raise TransferError("clip %s sha256 %s, manifest says %s: clip not usable"
                                % (self.manifest.clip_id, got, self.manifest.sha256), field="sha256", code=E_HASH)
        self.state = COMPLETE
        if hasattr(self.sink, "commit"):
            self.sink.commit()
        return COMPLETE

    def missing(self, limit=None):
        """Indexes still needed as half-open ranges [(start, stop), ...], at most ``limit`` ranges."""
        out = []
        n = self.manifest.chunks
        i = 0
        while i < n:
            if limit is not None and len(out) >= limit:
                break
            b = self._bits[i >> 3]
            if b == 0xFF and not i & 7:
                i += 8
                continue
            if self.has(i):
                i += 1
                continue
            start = i
            while i < n and not self.has(i):
                i += 1
            out.append((start, i))
        return out

    @property
    def missing_count(self):
        return self.manifest.chunks - self.received

    def status(self, limit=None):
        """Status object for a resume request / CLIP_DONE: see encode_status."""
        if limit is None:
            limit = defaults.CLIP_MAX_MISSING_RANGES
        d = {"v": VERSION, "tid": self.manifest.tid, "id": self.manifest.clip_id, "state": self.state,
             "have": self.received}
        if self.stream:
            d["off"] = self.offset
        if self.state == RECEIVING:
            d["missing"] = [[a, b] for a, b in self.missing(limit)]
        if self.error:
            d["err"] = self.error
        return d


def encode_status(receiver_or_dict):
    """Canonical JSON of a receiver's status (a ClipReceiver or a dict from ``ClipReceiver.status()``)."""
    d = receiver_or_dict.status() if isinstance(receiver_or_dict, ClipReceiver) else receiver_or_dict
    return canonical.dumpb(d)


def decode_status(payload):
    """Validate a status message; return the dict (``missing`` as a list of (start, stop) tuples)."""
    d = _loads(payload, 1024, defaults.CLIP_MAX_MISSING_RANGES + 2, E_STATUS, "status")
    if not isinstance(d, dict):
        raise TransferError("must be a JSON object", field="status", code=E_STATUS)
    for k in d:
        if k not in ("v", "tid", "id", "state", "have", "missing", "err", "off"):
            raise TransferError("unknown field %r" % (str(k)[:32],), field="status", code=E_STATUS)
    if d.get("v") != VERSION or type(d.get("v")) is not int:
        raise TransferError("version %r, expected %d" % (d.get("v"), VERSION), field="v", code=E_STATUS)
    tid = d.get("tid")
    if type(tid) is not int or not 0 <= tid <= UINT32:
        raise TransferError("must be an integer 0..%d, got %r" % (UINT32, tid), field="tid", code=E_STATUS)
    if not is_safe_clip_id(d.get("id")):
        raise TransferError("not a safe clip id", field="id", code=E_STATUS)
    if d.get("state") not in STATES:
        raise TransferError("%r, expected one of %s" % (d.get("state"), ",".join(STATES)), field="state",
                            code=E_STATUS)
    have = d.get("have")
    if type(have) is not int or not 0 <= have <= defaults.CLIP_MAX_CHUNKS:
        raise TransferError("must be an integer 0..%d, got %r" % (defaults.CLIP_MAX_CHUNKS, have), field="have",
                            code=E_STATUS)
    off = d.get("off", 0)
    if type(off) is not int or not 0 <= off <= UINT32:
        raise TransferError("must be an integer 0..%d, got %r" % (UINT32, off), field="off", code=E_STATUS)
    d["off"] = off
    err = d.get("err")
    if err is not None and (type(err) is not str or not 1 <= len(err) <= 32):
        raise TransferError("must be a short error code", field="err", code=E_STATUS)
    ranges = []
    miss = d.get("missing", [])
    if type(miss) is not list or len(miss) > defaults.CLIP_MAX_MISSING_RANGES:
        raise TransferError("must be a list of at most %d [start, stop] pairs" % defaults.CLIP_MAX_MISSING_RANGES,
                            field="missing", code=E_STATUS)
    last = 0
    for r in miss:
        if (type(r) is not list or len(r) != 2 or type(r[0]) is not int or type(r[1]) is not int
                or not last <= r[0] < r[1] <= defaults.CLIP_MAX_CHUNKS):
            raise TransferError("range %r is not an ascending [start, stop) pair within 0..%d"
                                % (r, defaults.CLIP_MAX_CHUNKS), field="missing", code=E_STATUS)
        last = r[1]
        ranges.append((r[0], r[1]))
    d["missing"] = ranges
    return d


class ClipSender:
    """Produce the manifest and chunks of one clip.

    ``data_or_reader``: bytes-like, or a binary file object with ``read(n)`` and ``seek(pos)`` (``readinto``
    is used when present); it is read once to size and hash it, then chunks are read on demand.
    """

    def __init__(self, data_or_reader, chunk_size, clip_id, tid, kind, mime, created_ms):
        if type(chunk_size) is not int or not defaults.CLIP_MIN_CHUNK <= chunk_size <= defaults.CLIP_MAX_CHUNK:
            raise LocalProtocolError("must be an integer %d..%d, got %r"
                                     % (defaults.CLIP_MIN_CHUNK, defaults.CLIP_MAX_CHUNK, chunk_size),
                                     field="chunk_size")
        if not is_safe_clip_id(clip_id):
            raise LocalProtocolError("%r is not a safe clip id" % (clip_id,), field="clip_id")
        h = hashlib.sha256()
        if isinstance(data_or_reader, (bytes, bytearray, memoryview)):
            self._data = memoryview(data_or_reader)
            self._reader = None
            size = len(self._data)
            h.update(self._data)
        else:
            self._data = None
            self._reader = data_or_reader
            data_or_reader.seek(0)
            size = 0
            while True:
                piece = data_or_reader.read(chunk_size)
                if not piece:
                    break
                size += len(piece)
                h.update(piece)
        self.manifest = Manifest(clip_id, tid, size, chunk_size, _hexdigest(h), kind, mime, created_ms)

    def chunk_data(self, index):
        """The raw bytes of chunk ``index``."""
        m = self.manifest
        if type(index) is not int or not 0 <= index < m.chunks:
            raise LocalProtocolError("index %r out of range 0..%d" % (index, m.chunks - 1), field="index")
        off = index * m.chunk_size
        n = m.chunk_len(index)
        if self._data is not None:
            return self._data[off:off + n]
        self._reader.seek(off)
        piece = self._reader.read(n)
        if len(piece) != n:
            raise LocalProtocolError("reader returned %d bytes at %d, expected %d (file changed?)"
                                     % (len(piece), off, n), field="reader")
        return piece

    def chunk_into(self, index, buf):
        """Write chunk ``index`` payload into ``buf`` (>= CHUNK_HEADER_LEN + chunk_size bytes); return length."""
        m = self.manifest
        if self._data is None and hasattr(self._reader, "readinto"):
            if type(index) is not int or not 0 <= index < m.chunks:
                raise LocalProtocolError("index %r out of range 0..%d" % (index, m.chunks - 1), field="index")
            n = m.chunk_len(index)
            end = CHUNK_HEADER_LEN + n
            if end > len(buf):
                raise LocalProtocolError("buffer of %d bytes too small for %d" % (len(buf), end), field="buf")
            struct.pack_into(CHUNK_HEADER_FMT, buf, 0, VERSION, 0, m.tid, index)
            self._reader.seek(index * m.chunk_size)
            got = self._reader.readinto(memoryview(buf)[CHUNK_HEADER_LEN:end])
            if got != n:
                raise LocalProtocolError("reader returned %r bytes, expected %d (file changed?)" % (got, n),
                                         field="reader")
            return end
        return encode_chunk_into(buf, m.tid, index, self.chunk_data(index))

    def chunk(self, index):
        """The binary payload of chunk ``index``."""
        return encode_chunk(self.manifest.tid, index, self.chunk_data(index))

    def chunks(self, ranges=None):
        """Yield (index, payload) for every chunk, or for the half-open ``ranges`` of a status message."""
        if ranges is None:
            ranges = [(0, self.manifest.chunks)]
        for start, stop in ranges:
            for i in range(start, min(stop, self.manifest.chunks)):
                yield i, self.chunk(i)

    def data_at(self, offset, n):
        """Up to ``n`` bytes of the clip from byte ``offset`` (a stream piece)."""
        m = self.manifest
        if type(offset) is not int or not 0 <= offset < m.size:
            raise LocalProtocolError("offset %r outside 0..%d" % (offset, m.size - 1), field="offset")
        n = min(n, m.size - offset)
        if self._data is not None:
            return self._data[offset:offset + n]
        self._reader.seek(offset)
        piece = self._reader.read(n)
        if len(piece) != n:
            raise LocalProtocolError("reader returned %d bytes at %d, expected %d (file changed?)"
                                     % (len(piece), offset, n), field="reader")
        return piece


class StreamSender:
    """The sending half of a stream transfer: which bytes go next, which are confirmed, what was sent twice.

    ``sender`` is a ClipSender. ``resume(off)`` (the receiver's status ``off``) restarts from that offset;
    ``next_piece(max_len)`` returns ``(offset, data)`` or None when everything was handed out; ``confirmed(end)``
    records that the receiver holds ``[0, end)`` (the link acknowledged the piece ending there).
    ``resent_confirmed`` counts bytes handed out again although already confirmed (a correct resume keeps it
    0); ``resent`` counts every byte handed out more than once (after a resume below what was sent).
    """

    def __init__(self, sender):
        self.sender = sender
        self.manifest = sender.manifest
        self.next = 0  # next offset to hand out
        self.acked = 0  # confirmed prefix
        self.high = 0  # highest offset ever handed out
        self.sent = 0
        self.resent = 0
        self.resent_confirmed = 0
        self.resumes = 0

    @property
    def done_sending(self):
        return self.next >= self.manifest.size

    def resume(self, off):
        if type(off) is not int or not 0 <= off <= self.manifest.size:
            raise TransferError("resume offset %r outside 0..%d" % (off, self.manifest.size), field="off",
                                code=E_STATUS)
        self.resumes += 1
        self.next = off
        if off > self.acked:
            self.acked = off

    def next_piece(self, max_len):
        if self.next >= self.manifest.size:
            return None
        off = self.next
        data = self.sender.data_at(off, max_len)
        end = off + len(data)
        if off < self.high:
            dup = min(end, self.high) - off
            self.resent += dup
            if off < self.acked:
                self.resent_confirmed += min(end, self.acked) - off
        self.high = max(self.high, end)
        self.sent += len(data)
        self.next = end
        return off, data

    def confirmed(self, end):
        if end > self.acked:
            self.acked = end
