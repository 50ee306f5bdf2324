"""Evidence store: node uploads on ``lookout/v1/<site>/<dev>/up/<tid>`` reassembled, verified and filed.

Theory of operation
-------------------
A camera/sensor node (or a recorder bridge) sends one *manifest* (canonical JSON, protocols/cliptransfer.py, with
``mac`` = HMAC of the device key, purpose ``up``) and then binary *chunks* on ``up/<tid>``. For each ``(device,
tid)`` the store keeps one ``ClipReceiver`` whose sink is a temp file under ``evidence/.part/`` with a name the
gateway chose (random hex): nothing from the wire ever becomes a path. When the last chunk arrives the receiver
checks the SHA-256 from the manifest (hashed at the source, as evidence practice asks); only then is the temp
file fsynced, made read-only and hard-linked to ``evidence/<sha256>.<ext>`` (``ext`` from a fixed MIME
table) — ``link`` never overwrites, so an original is never replaced or edited; a second upload of the same
bytes is recorded as a duplicate. A hash mismatch, a forged MAC, an unknown device, a manifest over
``max_size`` or a bad tid never leaves a file behind, and no input raises out of ``on_message``.

Custody (evidence practice: custody starts at upload, each custody event hashed with the previous one): every
stored file, duplicate, abandoned upload and link to an event is a ``custody`` entry in the duty journal, whose
SHA-256 chain provides the ordering and tamper evidence. The entry names the device, the clip and transfer ids,
the SHA-256, size, MIME type, the node's creation time and the authenticity (``signed``: manifest MAC verified
with the device key; ``unsigned``: the node sent no MAC). A small SQLite index (``clips/evidence.db``) answers
listings and remembers event references (``evidence: ["sha256:<hex>"]``) that arrive before their file.

Off the event loop: with a ``spawn`` function (the running service) the chunk that completes an upload is
stored, the file hashed (read back when chunks came out of order), fsynced and linked in a worker thread; the
custody entry and the index row follow on the loop (``_record``). ``close`` waits for such a filing to finish and
records it, so a stored file never lacks its custody entry.

Across a restart (a crash included): each open upload's manifest and temp file name are a row of ``uploads`` in
``evidence.db``, written when the manifest is accepted and deleted when the upload ends (filed, failed,
abandoned). At start the store reopens those temp files with every chunk counted missing (which ones reached the
file before a crash is unknown; writing a chunk again is harmless) and asks the node for them at the first
housekeeping tick, so an upload resumes as long as its node still holds the file (a camera keeps a snapshot
120 s). Temp files without a row are leftovers and removed.

Delivery policy: chunks come QoS 1 and may repeat or arrive out of order (the receiver is idempotent). If no chunk
arrived for ``stall_ms`` the store publishes the receiver's status (missing ranges) on the node's ``dl/<tid>`` —
the only topic the node may read besides ``cmd`` — at most ``max_asks`` times; a transfer silent for
``expire_ms`` is abandoned and its temp file removed. Status messages a loudspeaker sends on ``up/<tid>`` while
*downloading* a clip are handed to ``on_status`` (gateway/clipdist.py).

Recorder uploads (the serial recorder bridge, gateway/links/recorder.py, calls ``recorder_offer`` and
``recorder_piece``) are *streams*: pieces arrive in order by byte offset, so the temp file's length is the
confirmed offset. They are resumable across cable pulls, recorder power losses and gateway restarts: the
manifest and the temp file's name are kept in the ``partials`` table, the temp file is kept at start, and an offer
of the same transfer is answered with the offset held (``off``), from which the recorder continues. A piece is
written (``pwrite``, in the OS before the link acknowledges it) so a gateway crash never loses confirmed bytes.
The manifest must carry the recorder's MAC (purpose ``up``); its ``x_*`` fields give start/end time, track
summary, officer and the recorder's evidence mark. The custody steps of such a clip (recorded, uploaded,
verified, ...), its metadata, holds and retention are gateway/clips/custody.py's; ``on_recording(info)`` is called
when one is filed (the service announces it on MQTT). A partial upload silent for ``partial_expire_ms`` (a recorder
left undocked for a week) is abandoned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lookout.gateway.clips.custody import RETENTION_DAYS, Custody
from lookout.gateway.core.clock import now_ms
from lookout.gateway.core.commands import check_signature
from lookout.protocols import cliptransfer
from lookout.protocols.errors import LocalProtocolError, TransferError

log = logging.getLogger("lookout.clipstore")

MAX_SIZE = 64 * 1024 * 1024  # one evidence file over MQTT: a 1-minute 720p clip at ~8 Mbit/s; 16,384 4-KiB chunks
MAX_OPEN_PER_DEVICE = 4  # concurrent uploads one device may hold open (a camera sends one snapshot at a time)
MAX_OPEN = 64  # concurrent uploads in all: bounds open files and temp-file disk use
STALL_MS = 5000  # no chunk for this long: ask for the missing ranges
MAX_ASKS = 3  # status requests before waiting out the expiry
EXPIRE_MS = 120000  # abandoned after this long without a chunk
FREE_MARGIN = 64 * 1024 * 1024  # keep this much disk free beyond an upload's size
RECENT = 256  # finished (device, tid) pairs remembered so redelivered chunks are ignored quietly
RECORDER_MAX_SIZE = 0xFFFFFFFF  # a recorder clip: the manifest's size field limit (4 GiB, ~2.5 h of 1080p)
PARTIAL_EXPIRE_MS = 7 * 86_400_000  # a recorder's partial upload waits this long for the recorder to come back

EXT = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "video/mp4": "mp4", "video/h264": "h264",
       "audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/g711a": "g711a",
       "application/json": "json"}
HEX = frozenset("0123456789abcdef")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    sha256 TEXT PRIMARY KEY, file TEXT NOT NULL, size INTEGER NOT NULL, mime TEXT NOT NULL, kind TEXT NOT NULL,
    device TEXT NOT NULL, site TEXT NOT NULL, clip TEXT NOT NULL, tid INTEGER NOT NULL, auth TEXT NOT NULL,
    created_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, journal_seq INTEGER
);
CREATE TABLE IF NOT EXISTS links (
    sha256 TEXT NOT NULL, device TEXT NOT NULL, event_seq INTEGER NOT NULL, event_kind TEXT, ts INTEGER NOT NULL,
    linked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS links_sha ON links (sha256);
CREATE TABLE IF NOT EXISTS partials (
    device TEXT NOT NULL, tid INTEGER NOT NULL, site TEXT NOT NULL, manifest TEXT NOT NULL, auth TEXT NOT NULL,
    part TEXT NOT NULL, started_ms INTEGER NOT NULL, officer TEXT, PRIMARY KEY (device, tid)
);
CREATE TABLE IF NOT EXISTS uploads (
    device TEXT NOT NULL, tid INTEGER NOT NULL, site TEXT NOT NULL, manifest BLOB NOT NULL, auth TEXT NOT NULL,
    part TEXT NOT NULL, started_ms INTEGER NOT NULL, PRIMARY KEY (device, tid)
);
"""



def is_sha256(s: Any) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in HEX for c in s)


def ext_for(mime: str) -> str:
    return EXT.get(mime, "bin")


class TempSink:
    """cliptransfer sink on a gateway-named temp file; ``on_commit(sink)`` files it after the hash matched."""

    def __init__(self, path: Path, size: int, on_commit: Callable[[TempSink], None], resume: bool = False):
        self.path = path
        self.size = size
        self.on_commit = on_commit
        flags = os.O_RDWR if resume else os.O_RDWR | os.O_CREAT | os.O_EXCL
        self.fd: int | None = os.open(path, flags, 0o600)
        self.committed = False

    def close(self) -> None:
        """Close without removing the file (a resumable upload outlives this process)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def write_at(self, offset: int, data: Any) -> None:
        if self.fd is None or offset < 0 or offset + len(data) > self.size:
            raise LocalProtocolError(f"write of {len(data)} bytes at {offset} outside the {self.size}-byte file")
        os.pwrite(self.fd, data, offset)

    def read_all(self, callback: Callable[[Any], Any], block: int = 65536) -> None:
        assert self.fd is not None
        off = 0
        while off < self.size:
            piece = os.pread(self.fd, min(block, self.size - off), off)
            if not piece:
                break
            callback(piece)
            off += len(piece)

    def commit(self) -> None:
        assert self.fd is not None
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        self.committed = True
        self.on_commit(self)

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class Upload:
    def __init__(self, site: str, device: str, tid: int, manifest: cliptransfer.Manifest, auth: str,
                 rx: cliptransfer.ClipReceiver, sink: TempSink, now: int):
        self.site, self.device, self.tid, self.manifest, self.auth = site, device, tid, manifest, auth
        self.rx, self.sink = rx, sink
        self.started_ms = self.last_ms = self.last_ask_ms = now
        self.asks = 0
        self.rejected_chunks = 0
        self.finishing: concurrent.futures.Future[None] | None = None  # the last chunk, being filed in a thread
        self.filed: tuple[Path, bool] | None = None  # (final path, duplicate) once the file is in place
        self.recorded = False  # custody journaled
        self.stream = False  # a recorder's resumable stream (recorder_offer / recorder_piece)
        self.officer: str | None = None
        self.meta: dict[str, Any] = {}
        self.offers = 0
        self.bytes_in = 0
        self.dup_bytes = 0
        self.restored = False


class ClipStore:
    """``on_message(site, dev, sub, payload, now)`` for every ``up/<tid>`` message; ``tick(now)`` periodically."""

    def __init__(self, root: str | Path, journal: Any, keystore: Any, *,
                 send: Callable[[str, str, int, bytes], None] | None = None,
                 on_status: Callable[[str, str, int, dict[str, Any], int], None] | None = None,
                 clock: Callable[[], int] = now_ms, max_size: int = MAX_SIZE, stall_ms: int = STALL_MS,
                 expire_ms: int = EXPIRE_MS, max_asks: int = MAX_ASKS, recorder_max_size: int = RECORDER_MAX_SIZE,
                 partial_expire_ms: int = PARTIAL_EXPIRE_MS, retention_days: int = RETENTION_DAYS,
                 spawn: Callable[..., Any] | None = None):
        self.root = Path(root)
        self.dir = self.root / "evidence"
        self.tmp = self.dir / ".part"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.recorder_max_size, self.partial_expire_ms = recorder_max_size, partial_expire_ms
        self.on_recording: Callable[[dict[str, Any]], None] | None = None
        self.journal = journal
        self.keystore = keystore
        self.send = send  # (site, device, tid, status payload) -> publish on the node's dl/<tid>
        self.on_status = on_status  # a loudspeaker's download status (clipdist)
        self.clock = clock
        self.max_size, self.stall_ms, self.expire_ms, self.max_asks = max_size, stall_ms, expire_ms, max_asks
        self.uploads: dict[tuple[str, int], Upload] = {}
        self._recent: dict[tuple[str, int], str] = {}
        self._refusals: dict[str, int] = {}
        self.stats = {"stored": 0, "duplicates": 0, "refused": 0, "failed": 0, "abandoned": 0,
                      "stray_chunks": 0, "bad_chunks": 0, "errors": 0}
        self.spawn = spawn  # with a running service: the chunk completing an upload is filed in a worker thread
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="clipstore")
        self._db = sqlite3.connect(str(self.root / "evidence.db"), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # the project's storage policy (docs/ARCHITECTURE.md)
        self._db.execute("PRAGMA busy_timeout = 10000")  # `lookout clips` on the same host writes holds
        self._db.executescript(_SCHEMA)
        self.custody = Custody(self._db, journal, self.dir, clock, retention_days)
        keep = {r[0] for r in self._db.execute("SELECT part FROM partials UNION SELECT part FROM uploads")}
        for stale in self.tmp.iterdir():  # node temp files of a previous run can never complete: not evidence
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
        self._restore_partials()
        self._resume()

    def _resume(self) -> None:
        """Node uploads that were open when the gateway stopped: reopened, and every chunk asked for again."""
        now = self.clock()
        for device, tid, site, raw, auth, part, started in self._db.execute(
                "SELECT device, tid, site, manifest, auth, part, started_ms FROM uploads").fetchall():
            path = self.tmp / part
            try:
                m = cliptransfer.decode_manifest(bytes(raw))
                sink = TempSink(path, m.size, self._file_fs, resume=True)
                rx = cliptransfer.ClipReceiver(m, self.max_size, sink)
            except (TransferError, OSError) as e:
                log.warning("upload %d from %s cannot resume: %s", tid, device, e)
                self._db.execute("DELETE FROM uploads WHERE device = ? AND tid = ?", (device, tid))
                continue
            u = Upload(site, device, tid, m, auth, rx, sink, started)
            u.last_ms = u.last_ask_ms = now - self.stall_ms  # ask for every chunk at the first tick
            sink.upload = u  # type: ignore[attr-defined]
            self.uploads[(device, tid)] = u
            log.info("upload %s/%d from %s resumes (%d bytes): asking for its chunks", m.clip_id, tid, device,
                     m.size)

    def _open(self, u: Upload, manifest: bytes) -> None:
        self.uploads[(u.device, u.tid)] = u
        self._db.execute("INSERT OR REPLACE INTO uploads VALUES (?,?,?,?,?,?,?)",
                         (u.device, u.tid, u.site, manifest, u.auth, u.sink.path.name, u.started_ms))

    def _drop(self, key: tuple[str, int]) -> None:
        """The upload has ended (filed, failed or abandoned): no longer resumed after a restart."""
        if self.uploads.pop(key, None) is not None:
            self._db.execute("DELETE FROM uploads WHERE device = ? AND tid = ?", key)

    def close(self) -> None:
        self._pool.shutdown(wait=True)  # a file being filed is completed, and its custody recorded below
        for u in list(self.uploads.values()):
            if u.stream:
                u.sink.close()  # resumable: the file and its partials row wait for the recorder
            elif u.finishing is not None and u.finishing.exception() is None and u.filed is not None:
                self._record(u)
            elif u.finishing is None and u.sink.fd is not None:  # kept with its row: resumed at the next start
                os.close(u.sink.fd)
                u.sink.fd = None
        self.uploads.clear()
        self._db.close()

    # -- input -----------------------------------------------------------------------------------------------
    def on_message(self, site: str, device: str, sub: str | None, payload: bytes, now: int | None = None) -> None:
        """One message from ``up/<sub>``; never raises (a bad upload must not take the gateway down)."""
        now = self.clock() if now is None else now
        try:
            if sub is None or not sub.isdigit() or len(sub) > 10 or int(sub) > cliptransfer.UINT32:
                self._refuse(device, None, "bad_tid", f"up/{sub!r}: transfer id must be decimal 0..2^32-1")
                return
            tid = int(sub)
            if payload[:1] == b"{":
                self._on_json(site, device, tid, payload, now)
            else:
                self._on_chunk(device, tid, payload, now)
        except Exception:  # last line of defence; the input is untrusted
            self.stats["errors"] += 1
            log.exception("upload message from %s on up/%s failed", device, sub)

    def _on_json(self, site: str, device: str, tid: int, payload: bytes, now: int) -> None:
        if len(payload) <= 1024:
            try:
                d = json.loads(payload)
            except ValueError:
                d = None
            if isinstance(d, dict) and "state" in d:  # a loudspeaker's download status, not an upload
                try:
                    st = cliptransfer.decode_status(payload)
                except TransferError as e:
                    log.warning("bad clip status from %s: %s", device, e)
                    return
                if st["tid"] != tid:
                    log.warning("clip status from %s for tid %d on up/%d ignored", device, st["tid"], tid)
                elif self.on_status is not None:
                    self.on_status(site, device, tid, st, now)
                return
        self._on_manifest(site, device, tid, payload, now)

    def _on_manifest(self, site: str, device: str, tid: int, payload: bytes, now: int) -> None:
        key = (device, tid)
        try:
            m = cliptransfer.decode_manifest(payload)
        except TransferError as e:
            self._refuse(device, tid, e.code or "bad_manifest", str(e))
            return
        d = json.loads(payload)  # decode_manifest accepted it: valid, bounded JSON
        if m.tid != tid:
            self._refuse(device, tid, "bad_manifest", f"manifest tid {m.tid} sent on up/{tid}")
            return
        old = self.uploads.get(key)
        if old is not None:
            if old.manifest == m:
                return  # QoS 1 redelivery of the same manifest
            self._refuse(device, tid, "busy", f"transfer {tid} already open with another manifest")
            return
        if self._recent.get(key) == m.sha256:
            return  # redelivered manifest of a finished transfer
        p = check_signature(self.keystore, device, "up", d)
        if p is not None and p.code != "unsigned":
            self._refuse(device, tid, p.code, p.detail)
            return
        auth = "signed" if p is None else "unsigned"
        if m.size > self.max_size:
            self._refuse(device, tid, "too_large", f"{m.size} bytes, gateway limit {self.max_size}")
            return
        if sum(1 for u in self.uploads.values() if u.device == device) >= MAX_OPEN_PER_DEVICE \
                or len(self.uploads) >= MAX_OPEN:
            self._refuse(device, tid, "busy", "too many open uploads")
            return
        if shutil.disk_usage(self.dir).free < m.size + FREE_MARGIN:
            self._refuse(device, tid, "no_space", f"{m.size} bytes would leave less than {FREE_MARGIN} free")
            return
        sink = TempSink(self.tmp / (secrets.token_hex(8) + ".part"), m.size, self._file_fs)
        try:
            rx = cliptransfer.ClipReceiver(m, self.max_size, sink)
        except TransferError as e:
            sink.discard()
            self._refuse(device, tid, e.code or "bad_manifest", str(e))
            return
        u = Upload(site, device, tid, m, auth, rx, sink, now)
        sink.upload = u  # type: ignore[attr-defined]  # _file needs to know whose file it is
        self._open(u, payload)
        log.debug("upload %s/%d from %s: %d bytes in %d chunks (%s)", m.clip_id, tid, device, m.size, m.chunks, auth)

    def _on_chunk(self, device: str, tid: int, payload: bytes, now: int) -> None:
        key = (device, tid)
        u = self.uploads.get(key)
        if u is None:
            if key not in self._recent:
                self.stats["stray_chunks"] += 1
            return
        if u.finishing is not None:  # every chunk is in; this one is a redelivery
            return
        u.last_ms = now
        if self.spawn is not None and self._completes(u, payload):
            # the last missing chunk: writing it, hashing the file (again, if chunks came out of order: up to
            # MAX_SIZE read back) and fsyncing take disk time, so they run in a worker thread
            u.finishing = self._pool.submit(self._receive, u, payload)
            self.spawn(self._finished(key, u), name=f"evidence-{device}-{tid}")
            return
        try:
            self._receive(u, payload)
        except (TransferError, OSError) as e:
            self._receive_failed(key, u, e)
            return
        if u.filed is not None:
            self._record(u)

    @staticmethod
    def _completes(u: Upload, payload: bytes) -> bool:
        try:
            i = cliptransfer.decode_chunk(payload).index
        except TransferError:
            return False
        return u.rx.received == u.manifest.chunks - 1 and 0 <= i < u.manifest.chunks and not u.rx.has(i)

    def _receive(self, u: Upload, payload: bytes) -> None:
        """Store a chunk; the one completing a verified clip also files it (``_file_fs``, via the sink)."""
        u.rx.receive_payload(payload)

    async def _finished(self, key: tuple[str, int], u: Upload) -> None:
        assert u.finishing is not None
        try:
            await asyncio.wrap_future(u.finishing)
        except (TransferError, OSError) as e:
            self._receive_failed(key, u, e)
            u.finishing = None
            return
        except Exception:  # a bug in the thread: drop the upload (never a half file), keep the gateway up
            self.stats["errors"] += 1
            log.exception("upload %s/%d from %s", u.manifest.clip_id, u.tid, u.device)
            self._drop(key)
            u.sink.discard()
            return
        if u.filed is not None:
            self._record(u)
        else:
            u.finishing = None  # not the completing chunk after all

    def _receive_failed(self, key: tuple[str, int], u: Upload, e: Exception) -> None:
        device, tid = key
        if isinstance(e, TransferError):
            if u.rx.state == cliptransfer.FAILED:  # hash mismatch: the sink was discarded, nothing filed
                self._drop(key)
                self._remember(key, "failed")
                self.stats["failed"] += 1
                self._security(device, f"upload {u.manifest.clip_id}/{tid} from {device} failed: {e.code}",
                               {"code": e.code, "tid": tid, "clip": u.manifest.clip_id, "why": str(e)[:200],
                                "sha256": u.manifest.sha256})
                return
            u.rejected_chunks += 1
            self.stats["bad_chunks"] += 1
            log.warning("chunk from %s on up/%d rejected: %s", device, tid, e)
            return
        # disk full / filing failed: drop the transfer, never a half file
        self._drop(key)
        u.sink.discard()
        self.stats["errors"] += 1
        log.error("upload %s/%d from %s: %s", u.manifest.clip_id, tid, device, e)

    # -- filing ----------------------------------------------------------------------------------------------
    def path_for(self, sha256: str, ext: str) -> Path:
        if not is_sha256(sha256) or ext not in EXT.values() and ext != "bin":
            raise ValueError("not a sha256/extension")
        return self.dir / f"{sha256}.{ext}"

    def _file_fs(self, sink: TempSink) -> None:
        """Called by the receiver after the SHA-256 matched (sink fsynced): link the temp file to its content
        address. File-system work only (it may run in a worker thread); ``_record`` does the bookkeeping."""
        u: Upload = sink.upload  # type: ignore[attr-defined]
        m = u.manifest
        final = self.path_for(m.sha256, ext_for(m.mime))
        os.chmod(sink.path, 0o444)
        dup = False
        try:
            os.link(sink.path, final)  # never overwrites: an original is never replaced
        except FileExistsError:
            dup = True
        sink.path.unlink()
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        u.filed = (final, dup)

    def _file(self, sink: TempSink) -> None:
        """Both steps at once, on the caller's thread: a recorder stream's completing piece (the serial session
        hands pieces over one at a time on the event loop; its acknowledgement waits for the filing)."""
        self._file_fs(sink)
        self._record(sink.upload)  # type: ignore[attr-defined]

    def _record(self, u: Upload) -> None:
        """The filed upload's custody entry, index row and event links (on the event loop)."""
        if u.recorded or u.filed is None:
            return
        u.recorded = True
        final, dup = u.filed
        m = u.manifest
        now = self.clock()
        self._drop((u.device, u.tid))
        self._remember((u.device, u.tid), m.sha256)
        if u.stream:
            self._file_recording(u, final, dup, now)
            return
        detail = {"action": "duplicate" if dup else "stored", "sha256": m.sha256, "size": m.size, "mime": m.mime,
                  "kind": m.kind, "clip": m.clip_id, "tid": u.tid, "auth": u.auth,
                  "file": final.name, "created_ms": m.created_ms, "received_ms": now,
                  "transfer_ms": now - u.started_ms, "chunks": m.chunks, "duplicate_chunks": u.rx.duplicates}
        e = self.journal.append("custody", f"evidence {m.sha256[:16]} ({m.kind}, {m.size} B) from {u.device} "
                                + ("received again (same content)" if dup else "stored"),
                                device=u.device, detail=detail, ts=now)
        if dup:
            self.stats["duplicates"] += 1
        else:
            self.stats["stored"] += 1
            self._db.execute("INSERT OR IGNORE INTO evidence VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             (m.sha256, final.name, m.size, m.mime, m.kind, u.device, u.site, m.clip_id, u.tid,
                              u.auth, m.created_ms, now, e.seq))
        self._link_pending(m.sha256, now)
        log.info("evidence %s from %s %s (%s)", m.sha256[:16], u.device, "duplicate" if dup else "stored", u.auth)

    def _file_recording(self, u: Upload, final: Path, dup: bool, now: int) -> None:
        """A recorder clip matched its hash and is filed: index it, journal uploaded + verified, announce it."""
        m = u.manifest
        self._db.execute("DELETE FROM partials WHERE device = ? AND tid = ?", (u.device, u.tid))
        self._db.execute("INSERT OR IGNORE INTO evidence VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (m.sha256, final.name, m.size, m.mime, m.kind, u.device, u.site, m.clip_id, u.tid,
                          u.auth, m.created_ms, now, None))
        self.custody.recorded(u.site, u.device, self._entry(u), u.officer, "offer", now)
        transfer = {"clip": m.clip_id, "tid": u.tid, "size": m.size, "bytes_in": u.bytes_in,
                    "duplicate_bytes": u.dup_bytes, "offers": u.offers, "transfer_ms": now - u.started_ms,
                    "restored": u.restored, "auth": u.auth, "officer": u.officer, "same_content_stored": dup}
        self.custody.stored(u.device, m.sha256, final.name, transfer, now)
        self.stats["stored"] += 1
        self._link_pending(m.sha256, now)
        log.info("recorder clip %s from %s filed (%d B)", m.sha256[:16], u.device, m.size)
        if self.on_recording is not None:
            info = self.custody.get(m.sha256) or {}
            try:
                self.on_recording({**info, "tid": u.tid, "transfer_ms": now - u.started_ms})
            except Exception:  # an announcement failing must not undo the filing
                log.exception("announcing clip %s failed", m.sha256[:16])

    @staticmethod
    def _entry(u: Upload) -> dict[str, Any]:
        m, x = u.manifest, u.meta
        return {"id": m.clip_id, "sha256": m.sha256, "size": m.size, "kind": m.kind, "mime": m.mime,
                "start": x.get("x_start", m.created_ms), "end": x.get("x_end"), "track": x.get("x_track"),
                "mark": x.get("x_mark") is True}

    # -- recorder streams (gateway/links/recorder.py) ------------------------------------------------------------
    @staticmethod
    def _stream_status(u: Upload) -> dict[str, Any]:
        d = u.rx.status()
        d.pop("missing", None)
        d["off"] = u.rx.offset
        return d

    @staticmethod
    def _failed(tid: int, clip: str, code: str) -> dict[str, Any]:
        return {"v": cliptransfer.VERSION, "tid": tid, "id": clip if cliptransfer.is_safe_clip_id(clip) else "x",
                "state": cliptransfer.FAILED, "have": 0, "err": code[:32]}

    def recorder_offer(self, site: str, device: str, payload: bytes, officer: str | None = None,
                       now: int | None = None) -> dict[str, Any]:
        """A recorder's CLIP_OFFER: the status to answer (``receiving`` with ``off``, ``complete``, or ``failed``
        with ``err``). Never raises."""
        now = self.clock() if now is None else now
        try:
            return self._recorder_offer(site, device, payload, officer, now)
        except Exception:  # the input is untrusted: a bug here must not take the bridge down
            self.stats["errors"] += 1
            log.exception("recorder offer from %s failed", device)
            return self._failed(0, "x", "internal")

    def _recorder_offer(self, site: str, device: str, payload: bytes, officer: str | None,
                        now: int) -> dict[str, Any]:
        try:
            m = cliptransfer.decode_manifest(payload)
        except TransferError as e:
            self._refuse(device, None, e.code or "bad_manifest", str(e))
            return self._failed(0, "x", e.code or "bad_manifest")
        d = json.loads(payload)
        p = check_signature(self.keystore, device, "up", d)
        if p is not None:  # a recorder always signs: an unsigned manifest is refused like a forged one
            self._refuse(device, m.tid, p.code, p.detail)
            return self._failed(m.tid, m.clip_id, p.code)
        meta = {k: d[k] for k in ("x_start", "x_end", "x_track", "x_officer", "x_mark") if k in d}
        who = d.get("x_officer") if isinstance(d.get("x_officer"), str) else officer
        key = (device, m.tid)
        u = self.uploads.get(key)
        if u is not None and u.stream and u.manifest == m:
            u.offers += 1
            u.last_ms = now
            return self._stream_status(u)
        if u is not None:  # the recorder reused a transfer id (it lost its state): the old partial cannot finish
            self._abandon(key, u, now, "transfer id reused with another manifest")
        entry = {"id": m.clip_id, "sha256": m.sha256, "size": m.size, "kind": m.kind, "mime": m.mime,
                 "start": meta.get("x_start", m.created_ms), "end": meta.get("x_end"), "track": meta.get("x_track"),
                 "mark": meta.get("x_mark") is True}
        self.custody.recorded(site, device, entry, who, "offer", now)
        stored = self.get(m.sha256)
        if stored is not None and (self.dir / stored["file"]).exists():
            self.custody.duplicate(device, m.sha256, m.clip_id, now)
            self.custody.db.execute("UPDATE recordings SET state = 'stored', file = ?, stored_ms = "
                                    "COALESCE(stored_ms, ?) WHERE sha256 = ? AND state = 'recorded'",
                                    (stored["file"], now, m.sha256))
            return {"v": cliptransfer.VERSION, "tid": m.tid, "id": m.clip_id, "state": cliptransfer.COMPLETE,
                    "have": m.chunks, "off": m.size}
        if m.size > self.recorder_max_size:
            self._refuse(device, m.tid, "too_large", f"{m.size} bytes, gateway limit {self.recorder_max_size}")
            return self._failed(m.tid, m.clip_id, "too_large")
        if sum(1 for x in self.uploads.values() if x.device == device) >= MAX_OPEN_PER_DEVICE \
                or len(self.uploads) >= MAX_OPEN:
            return self._failed(m.tid, m.clip_id, "busy")
        if shutil.disk_usage(self.dir).free < m.size + FREE_MARGIN:
            self._refuse(device, m.tid, "no_space", f"{m.size} bytes would leave less than {FREE_MARGIN} free")
            return self._failed(m.tid, m.clip_id, "no_space")
        name = secrets.token_hex(8) + ".part"
        sink = TempSink(self.tmp / name, m.size, self._file)
        rx = cliptransfer.ClipReceiver(m, self.recorder_max_size, sink)
        u = Upload(site, device, m.tid, m, "signed", rx, sink, now)
        u.stream, u.officer, u.meta, u.offers = True, who, meta, 1
        sink.upload = u  # type: ignore[attr-defined]
        self.uploads[key] = u
        self._db.execute("INSERT OR REPLACE INTO partials VALUES (?,?,?,?,?,?,?,?)",
                         (device, m.tid, site, payload.decode(), "signed", name, now, who))
        log.debug("recorder upload %s/%d from %s: %d bytes", m.clip_id, m.tid, device, m.size)
        return self._stream_status(u)

    def recorder_piece(self, device: str, tid: int, offset: int, data: Any,
                       now: int | None = None) -> dict[str, Any] | None:
        """One CLIP_DATA piece, written before this returns. Returns a status to send (complete, failed, or
        ``receiving`` with the offset to go on from after a gap), or None while the transfer simply goes on."""
        now = self.clock() if now is None else now
        key = (device, tid)
        u = self.uploads.get(key)
        if u is None or not u.stream:
            self.stats["stray_chunks"] += 1
            return self._failed(tid, "x", "unknown_transfer")  # the recorder offers it again
        u.last_ms = now
        n = len(data)
        u.bytes_in += n  # counted before receive_at: the piece that completes the clip files it (and journals)
        if 0 <= offset <= u.rx.offset:
            u.dup_bytes += n - max(0, offset + n - u.rx.offset)
        try:
            r = u.rx.receive_at(offset, data)
        except TransferError as e:
            if u.rx.state == cliptransfer.FAILED:  # hash mismatch: the sink was discarded, nothing filed
                self.uploads.pop(key, None)
                self._db.execute("DELETE FROM partials WHERE device = ? AND tid = ?", key)
                self._remember(key, "failed")
                self.stats["failed"] += 1
                self._security(device, f"recorder clip {u.manifest.clip_id}/{tid} from {device} failed: {e.code}",
                               {"code": e.code, "tid": tid, "clip": u.manifest.clip_id, "why": str(e)[:200],
                                "sha256": u.manifest.sha256})
                return self._failed(tid, u.manifest.clip_id, e.code or "failed")
            self.stats["bad_chunks"] += 1
            log.warning("piece from %s on transfer %d rejected: %s", device, tid, e)
            return self._stream_status(u)  # where to go on from
        except OSError as e:  # disk full: keep the partial (what is written is confirmed); the recorder retries
            self.stats["errors"] += 1
            log.error("recorder upload %s/%d from %s: %s", u.manifest.clip_id, tid, device, e)
            return self._failed(tid, u.manifest.clip_id, "busy")
        if r == cliptransfer.COMPLETE:
            return {"v": cliptransfer.VERSION, "tid": tid, "id": u.manifest.clip_id, "state": cliptransfer.COMPLETE,
                    "have": u.manifest.chunks, "off": u.manifest.size}
        return None

    def _restore_partials(self) -> None:
        """Recorder uploads that were in progress when the gateway stopped: the temp file's length is the offset."""
        for device, tid, site, manifest, auth, part, started, officer in self._db.execute(
                "SELECT device, tid, site, manifest, auth, part, started_ms, officer FROM partials").fetchall():
            path = self.tmp / part
            try:
                m = cliptransfer.decode_manifest(manifest.encode())
                held = path.stat().st_size
                sink = TempSink(path, m.size, self._file, resume=True)
            except (TransferError, OSError) as e:
                log.warning("partial upload %s/%d cannot resume (%s); dropped", device, tid, e)
                self._db.execute("DELETE FROM partials WHERE device = ? AND tid = ?", (device, tid))
                continue
            off = min(held, m.size - 1)
            rx = cliptransfer.ClipReceiver(m, self.recorder_max_size, sink, offset=off) if off > 0 else \
                cliptransfer.ClipReceiver(m, self.recorder_max_size, sink)
            rx.stream = True
            u = Upload(site, device, tid, m, auth, rx, sink, self.clock())
            u.started_ms = started
            d = json.loads(manifest)
            u.stream, u.officer, u.restored = True, officer, True
            u.meta = {k: d[k] for k in ("x_start", "x_end", "x_track", "x_officer", "x_mark") if k in d}
            sink.upload = u  # type: ignore[attr-defined]
            self.uploads[(device, tid)] = u
            log.info("resumable upload %s/%d from %s: %d of %d bytes held", m.clip_id, tid, device, off, m.size)

    def _abandon(self, key: tuple[str, int], u: Upload, now: int, why: str) -> None:
        self._drop(key)
        u.sink.discard()
        if u.stream:
            self._db.execute("DELETE FROM partials WHERE device = ? AND tid = ?", key)
        self._remember(key, "abandoned")
        self.stats["abandoned"] += 1
        self.journal.append("custody", f"upload {u.manifest.clip_id}/{u.tid} from {u.device} abandoned "
                            f"({u.rx.received}/{u.manifest.chunks} chunks): {why}; nothing stored",
                            device=u.device, ts=now,
                            detail={"action": "abandoned", "sha256": u.manifest.sha256, "tid": u.tid,
                                    "clip": u.manifest.clip_id, "have": u.rx.received, "n": u.manifest.chunks,
                                    "asks": u.asks, "why": why, "offset": u.rx.offset})

    def _remember(self, key: tuple[str, int], what: str) -> None:
        self._recent[key] = what
        if len(self._recent) > RECENT:
            self._recent.pop(next(iter(self._recent)))

    # -- refusals --------------------------------------------------------------------------------------------
    def _refuse(self, device: str, tid: int | None, code: str, why: str) -> None:
        self.stats["refused"] += 1
        n = self._refusals[device] = self._refusals.get(device, 0) + 1
        log.warning("upload from %s (tid %s) refused: %s: %s", device, tid, code, why[:200])
        if n <= 10 or n & (n - 1) == 0:  # a misbehaving node cannot flood the journal: 1..10, then powers of 2
            self._security(device, f"upload from {device} refused: {code}",
                           {"code": code, "tid": tid, "why": why[:200], "refusals": n})

    def _security(self, device: str, summary: str, detail: dict[str, Any]) -> None:
        self.journal.append("security", summary, device=device, detail=detail)

    # -- housekeeping ----------------------------------------------------------------------------------------
    def tick(self, now: int | None = None) -> None:
        now = self.clock() if now is None else now
        for key, u in list(self.uploads.items()):
            if u.finishing is not None:
                continue  # complete, being filed
            idle = now - u.last_ms
            if u.stream:  # the recorder drives its resumes; it may be away from any dock for days
                if idle >= self.partial_expire_ms:
                    self._abandon(key, u, now, f"no piece for {idle // 3_600_000} h")
                continue
            if idle >= self.expire_ms:
                self._abandon(key, u, now, "silent")
            elif idle >= self.stall_ms and now - u.last_ask_ms >= self.stall_ms and u.asks < self.max_asks:
                u.asks += 1
                u.last_ask_ms = now
                if self.send is not None:
                    try:
                        self.send(u.site, u.device, u.tid, cliptransfer.encode_status(u.rx))
                    except Exception as e:  # noqa: BLE001 - link down: the next stall period asks again
                        log.info("status request to %s failed: %s", u.device, e)

    # -- events and queries ----------------------------------------------------------------------------------
    def link_event(self, device: str, msg: dict[str, Any], event_seq: int, now: int | None = None) -> list[str]:
        """Record the ``sha256:<hex>`` refs of an event (journal seq ``event_seq``); returns the refs linked now."""
        now = self.clock() if now is None else now
        linked = []
        for ref in msg.get("evidence") or ():
            if not isinstance(ref, str) or not ref.startswith("sha256:") or not is_sha256(ref[7:]):
                continue
            sha = ref[7:]
            self._db.execute("INSERT INTO links (sha256, device, event_seq, event_kind, ts) VALUES (?,?,?,?,?)",
                             (sha, device, event_seq, str(msg.get("kind")), now))
            if self.get(sha) is not None:
                self._link_pending(sha, now)
                linked.append(sha)
        return linked

    def _link_pending(self, sha: str, now: int) -> None:
        rows = self._db.execute("SELECT rowid, device, event_seq, event_kind FROM links WHERE sha256 = ? AND "
                                "linked = 0", (sha,)).fetchall()
        ev = self.get(sha)
        for rowid, device, seq, kind in rows:
            self.journal.append("custody", f"evidence {sha[:16]} linked to {kind} event #{seq} from {device}",
                                device=device, ts=now,
                                detail={"action": "linked", "sha256": sha, "event_seq": seq,
                                        "file": ev["file"] if ev else None,
                                        "same_device": bool(ev and ev["device"] == device)})
            self._db.execute("UPDATE links SET linked = 1 WHERE rowid = ?", (rowid,))

    def get(self, sha: str) -> dict[str, Any] | None:
        if not is_sha256(sha):
            return None
        cur = self._db.execute("SELECT * FROM evidence WHERE sha256 = ?", (sha,))
        row = cur.fetchone()
        if row is None:
            return None
        d = dict(zip([c[0] for c in cur.description], row))
        d["events"] = [r[0] for r in self._db.execute("SELECT event_seq FROM links WHERE sha256 = ? ORDER BY "
                                                      "event_seq", (sha,))]
        return d

    def path(self, sha: str) -> Path | None:
        ev = self.get(sha)
        return None if ev is None else self.dir / ev["file"]

    def list(self, limit: int = 100, sha: str | None = None) -> list[dict[str, Any]]:
        if sha is not None:
            ev = self.get(sha)
            return [ev] if ev else []
        shas = [r[0] for r in self._db.execute("SELECT sha256 FROM evidence ORDER BY received_ms DESC LIMIT ?",
                                                (limit,))]
        return [e for e in (self.get(s) for s in shas) if e]


__all__ = ["ClipStore", "TempSink", "ext_for", "is_sha256"]
