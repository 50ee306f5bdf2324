"""Clip download of the loudspeaker (``fetch_clip``; its chunks arrive on ``dl/<tid>``).

Theory of operation: the signed command carries the clip's manifest (id, transfer id, size, chunk size,
SHA-256). Chunks go through ``protocols.cliptransfer.ClipReceiver`` into ``clips/<id>.part`` at their offsets,
in any order, duplicates harmless; the part file is renamed over the old clip only after the SHA-256
matched, so a failed download never replaces a good clip. No chunk for ``FETCH_IDLE_MS``: the node publishes
a status (the ranges it is missing) on ``up/<tid>`` and the gateway re-sends them; after ``FETCH_RETRIES``
such requests the command fails with ``incomplete``.

This module (and the transfer codec, ~20 KB of heap) is loaded lazily by the first ``fetch_clip`` command
(speaker.py); ``Speaker.on_dl`` hands chunks here only while a download runs.
"""

from protocols import cliptransfer, defaults
from protocols.errors import LocalProtocolError, TransferError
from lookout_node.commands import Failed, Rejected
from lookout_node.hal import asyncio, ticks_diff, ticks_ms

FETCH_IDLE_MS = 15000  # no chunk for this long: ask for the missing ranges (status on up/<tid>)
FETCH_RETRIES = 3  # status requests before the download fails with "incomplete"


class FileSink:
    """cliptransfer sink on flash: chunks at their offsets in ``<name>.part``; commit renames to ``name``."""

    def __init__(self, fs, name):
        self.fs = fs
        self.name = name
        self.part = name + ".part"
        with fs.open(self.part, "wb"):
            pass
        self.committed = False

    def write_at(self, offset, data):
        with self.fs.open(self.part, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def read_all(self, callback, block=1024):
        buf = bytearray(block)
        mv = memoryview(buf)
        with self.fs.open(self.part, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                callback(mv[:n])

    def commit(self):
        self.fs.rename(self.part, self.name)
        self.committed = True

    def discard(self):
        self.fs.remove(self.part)


def check_fetch(sp, args, cmd):
    try:
        m = cliptransfer.Manifest(args.get("clip"), args.get("tid"), args.get("size"),
                                  args.get("chunk", defaults.CLIP_CHUNK_SIZE_MQTT), args.get("sha256"),
                                  "audio", args.get("mime", "audio/wav"), 0)
    except LocalProtocolError as e:
        raise Rejected("bad_args", str(e))
    if m.size > defaults.CLIP_MAX_SIZE_NODE:
        raise Rejected("too_large", "clip of %d bytes, node limit %d" % (m.size, defaults.CLIP_MAX_SIZE_NODE))
    if m.tid in sp.downloads:
        raise Rejected("busy", "transfer %d already in progress" % m.tid)
    return {"manifest": m}


def on_dl(sp, tid, payload):
    """A chunk arrived on dl/<tid>; returns the receiver's answer (None: not ours, or refused)."""
    d = sp.downloads.get(tid)
    if d is None:
        return None
    rx = d[0]
    d[2] = ticks_ms()
    try:
        r = rx.receive_payload(payload)
    except TransferError as e:
        if rx.state == cliptransfer.FAILED:
            d[3] = e
            d[1].set()
        return None
    if r == cliptransfer.COMPLETE:
        d[1].set()
    return r


async def fetch_clip(sp, args, cmd):
    m = args["manifest"]
    sink = FileSink(sp.fs, "clips/" + m.clip_id)
    rx = cliptransfer.ClipReceiver(m, defaults.CLIP_MAX_SIZE_NODE, sink)
    done = asyncio.Event()
    d = [rx, done, ticks_ms(), None]  # receiver, completion, ticks of the last chunk, hash error
    sp.downloads[m.tid] = d
    asks = 0
    try:
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), FETCH_IDLE_MS / 1000)
            except asyncio.TimeoutError:
                if ticks_diff(ticks_ms(), d[2]) < FETCH_IDLE_MS:
                    continue
                asks += 1
                if asks > FETCH_RETRIES:
                    sink.discard()
                    raise Failed("incomplete", "%d of %d chunks after %d status requests"
                                 % (rx.received, m.chunks, FETCH_RETRIES),
                                 {"have": rx.received, "n": m.chunks})
                if sp.publish_up is not None:
                    try:
                        await sp.publish_up(m.tid, cliptransfer.encode_status(rx))
                    except Exception as e:  # offline: the next idle period asks again
                        if sp.on_error is not None:
                            sp.on_error("fetch", e)
    finally:
        del sp.downloads[m.tid]
    if d[3] is not None:
        raise Failed("hash_mismatch", str(d[3]), {"have": rx.received})
    return {"clip": m.clip_id, "size": m.size, "sha256": m.sha256}


def register(sp, proc):
    """Put the real handler in place of the lazy entry (speaker.Speaker.register)."""
    proc.register("fetch_clip", lambda a, c: fetch_clip(sp, a, c), lambda a, c: check_fetch(sp, a, c))
