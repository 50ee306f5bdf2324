"""Audio clips: operator upload to the gateway, and distribution to loudspeaker nodes.

Theory of operation
-------------------
*Upload* (operator -> gateway). The operator CLI runs on another machine and may only publish its own ``opreq``
(broker ACL), so a WAV file travels as ``clip_put`` requests (protocols/opapi.py): each carries the clip id, the
whole clip's size and SHA-256, the piece size and one base64 piece (<= 8 KiB). The gateway feeds the pieces to a
``cliptransfer.ClipReceiver`` (any order, repeats harmless) and, when the SHA-256 matches, checks the WAV (PCM as
the loudspeaker's ``parse_wav`` plays it, with the data chunk starting within the 64 bytes the node reads first),
writes ``data_dir/clips/audio/<id>.wav`` via a temp file + fsync + rename and journals the upload. A clip id is
``[a-z0-9_.-]``, no leading dot (``cliptransfer.is_safe_clip_id`` guards every path).

*Distribution* (gateway -> speakers): ``clips distribute --to <node|zone|site>`` issues one ``fetch_clip``
command per target through the ordinary command path (id, counter, MAC, durable queue for offline targets, per
device results), all with the same transfer id ``tid``. When a node answers ``accepted`` (its receiver exists),
the gateway publishes the chunks QoS 1 on that node's ``dl/<tid>`` with up to ``WINDOW`` PUBACKs outstanding.
The node verifies the SHA-256 from the *signed command* and only then replaces its clip; it answers ``done``.
If it misses chunks it publishes a status on ``up/<tid>`` (gateway/clipstore.py routes it here) and the gateway
re-sends exactly the listed ranges. A queued target gets its command on its next birth; its ``accepted`` starts
the stream then, even after a gateway restart (the clip is found again by id and SHA-256).

Progress (``clips progress``): per device the command status, chunks sent/re-sent and the node's last reported
``have``; the CLI polls it to draw its progress line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import secrets
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from lookout.gateway.core.commands import CommandService
from lookout.gateway.core.journal import Journal
from lookout.protocols import cliptransfer, defaults, opapi, topics
from lookout.protocols.errors import LocalProtocolError, TransferError

log = logging.getLogger("lookout.clipdist")

# (op_id, op, args, command name, command args, request id) -> operator response
IssueFn = Callable[[str, str, dict[str, Any], str, dict[str, Any], str | None], Awaitable[dict[str, Any]]]
PublishFn = Callable[[str, bytes, int, float], Awaitable[None]]  # (topic, payload, qos, timeout)
SpawnFn = Callable[..., "asyncio.Task[Any]"]  # (coroutine, name=...) -> task

CHUNK = defaults.CLIP_CHUNK_SIZE_MQTT  # 4096: what fetch_clip defaults to on the node
WINDOW = 16  # chunks in flight (unacknowledged QoS 1) per device stream; paho's default max_inflight is 20
PUBACK_S = 10.0
PUT_IDLE_MS = 300000  # an operator upload with no piece for 5 min is dropped
MAX_PUTS_PER_OPERATOR = 2
MAX_PUTS = 8  # each holds up to 2 MiB in memory
MAX_DISTS = 64  # distributions remembered for progress queries (oldest dropped)
WAV_HEAD = 64  # the loudspeaker reads this many bytes to find fmt and data (firmware speaker.py)


class ClipError(Exception):
    """An audio clip the loudspeakers could not play."""


def check_wav(data: bytes) -> dict[str, int]:
    """Validate a WAV the way the node's ``parse_wav`` reads it; return rate, bits, channels, ms."""
    head = data[:WAV_HEAD]
    if len(head) < 12 or head[0:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ClipError("not a RIFF/WAVE file")
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        cid = head[pos:pos + 4]
        n = struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt ":
            if pos + 24 > len(head):
                break
            tag, ch, rate = struct.unpack_from("<HHI", head, pos + 8)
            bits = struct.unpack_from("<H", head, pos + 22)[0]
            if tag != 1 or bits not in (8, 16) or ch not in (1, 2) or not 4000 <= rate <= 48000:
                raise ClipError(f"unsupported WAV: format {tag}, {bits} bits, {ch} channel(s), {rate} Hz "
                                "(loudspeakers play PCM, 8/16-bit, mono/stereo, 4-48 kHz; 8 or 16 kHz 16-bit mono "
                                "recommended)")
            fmt = (rate, bits, ch)
        elif cid == b"data":
            if fmt is None:
                raise ClipError("WAV data chunk before fmt")
            start = pos + 8
            if n == 0 or start + n > len(data):
                raise ClipError(f"WAV data chunk of {n} bytes, file has {len(data) - start} after the header")
            rate, bits, ch = fmt
            return {"rate": rate, "bits": bits, "channels": ch, "ms": n * 1000 // (rate * bits // 8 * ch)}
        pos += 8 + n + (n & 1)
    raise ClipError(f"WAV fmt/data headers must lie within the first {WAV_HEAD} bytes (nodes read only those); "
                    "strip LIST/INFO chunks (e.g. ffmpeg -map_metadata -1 -fflags +bitexact)")


class AudioStore:
    """``data_dir/clips/audio/<id>.wav``: the clips the gateway can distribute.

    Reading and hashing a clip is disk work: each file is read once per (size, mtime) and its SHA-256 and WAV
    facts cached; the distributor calls the methods that may read from a worker thread (``asyncio.to_thread``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._facts: dict[str, tuple[int, int, str, dict[str, int]]] = {}  # id -> (size, mtime_ns, sha256, wav)

    def path(self, clip: str) -> Path:
        if not cliptransfer.is_safe_clip_id(clip):
            raise ClipError(f"{clip!r} is not a clip id ([A-Za-z0-9_.-]{{1,48}}, no leading dot)")
        return self.root / f"{clip}.wav"

    def _cached(self, clip: str, p: Path) -> tuple[int, int, str, dict[str, int]] | None:
        """The clip's cached facts, (re)read when the file changed; None if it is missing."""
        try:
            st = p.stat()
        except FileNotFoundError:
            self._facts.pop(clip, None)
            return None
        c = self._facts.get(clip)
        if c is None or c[:2] != (st.st_size, st.st_mtime_ns):
            data = p.read_bytes()
            try:
                info = check_wav(data)
            except ClipError:
                info = {}
            c = (st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest(), info)
            self._facts[clip] = c
        return c

    def sha256(self, clip: str) -> str | None:
        c = self._cached(clip, self.path(clip))
        return None if c is None else c[2]

    def read(self, clip: str, sha256: str | None = None) -> bytes | None:
        """The clip's bytes; None if missing or (given ``sha256``) if it changed since."""
        try:
            data = self.path(clip).read_bytes()
        except (FileNotFoundError, ClipError):
            return None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            return None
        return data

    def put(self, clip: str, data: bytes) -> dict[str, Any]:
        info = check_wav(data)
        final = self.path(clip)
        tmp = self.root / f".{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        return {"id": clip, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **info}

    def list(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.root.glob("*.wav")):
            cid = p.name[:-4]
            if not cliptransfer.is_safe_clip_id(cid):
                continue
            c = self._cached(cid, p)
            if c is not None:
                out.append({"id": cid, "size": c[0], "sha256": c[2], **c[3]})
        return out


class _Put:
    def __init__(self, op_id: str, rx: cliptransfer.ClipReceiver, now: int):
        self.op_id, self.rx, self.last_ms = op_id, rx, now


class DeviceProgress:
    def __init__(self, device: str):
        self.device = device
        self.cmd: str | None = None
        self.sent = 0  # distinct chunks acknowledged by the broker
        self.resent = 0
        self.have: int | None = None  # the node's own count (status messages)
        self.streaming = False
        self.stream: asyncio.Task[Any] | None = None


class Distribution:
    def __init__(self, tid: int, clip: str, sha256: str, size: int, op_id: str | None):
        self.tid, self.clip, self.sha256, self.size, self.op_id = tid, clip, sha256, size, op_id
        self.n = (size + CHUNK - 1) // CHUNK
        self.devices: dict[str, DeviceProgress] = {}
        self._sender: cliptransfer.ClipSender | None = None

    def args(self) -> dict[str, Any]:
        return {"clip": self.clip, "tid": self.tid, "size": self.size, "chunk": CHUNK, "sha256": self.sha256,
                "mime": "audio/wav"}

    def sender(self, audio: AudioStore) -> cliptransfer.ClipSender | None:
        if self._sender is None:
            data = audio.read(self.clip, self.sha256)
            if data is None:
                return None
            self._sender = cliptransfer.ClipSender(data, CHUNK, self.clip, self.tid, "audio", "audio/wav", 0)
        return self._sender

    def release(self) -> None:
        self._sender = None



class ClipDistributor:
    """Operator ops ``clips`` (list/distribute/progress/evidence) and ``clip_put``; streams to speakers."""

    def __init__(self, audio_dir: Path, journal: Journal, commands: CommandService, evidence: Any,
                 issue: IssueFn, publish: PublishFn, spawn: SpawnFn, clock: Callable[[], int]) -> None:
        """``issue``: the operator API's command path (journaled, per-operator); ``publish``: QoS 1 publish that
        returns after the PUBACK; ``spawn``: start a named background task; ``evidence``: the node-upload store
        (``ClipStore``: listed by the ``evidence`` action, ticked here)."""
        self.journal = journal
        self.commands = commands
        self.evidence = evidence
        self.issue = issue
        self.publish = publish
        self.spawn = spawn
        self.clock = clock
        self.audio = AudioStore(audio_dir)
        self.puts: dict[tuple[str, str, str], _Put] = {}
        self.dists: dict[int, Distribution] = {}

    # -- operator API ----------------------------------------------------------------------------------------
    async def handle_op(self, op_id: str, op: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]:
        if op == "clip_put":
            return await self._put(op_id, a, rid)
        action = a["action"]
        if action == "list":  # reads every changed WAV: in a worker thread
            return opapi.response(rid, "ok", {"clips": await asyncio.to_thread(self.audio.list)})
        if action == "evidence":
            ev = self.evidence.list(a["limit"], a.get("sha256"))
            self.journal.append("operator", f"{op_id} listed evidence", operator=op_id,
                                   detail={"sha256": a.get("sha256"), "count": len(ev)})
            return opapi.response(rid, "ok", {"evidence": ev})
        if action == "custody":
            return self._custody(op_id, a, rid)
        if action == "progress":
            d = self.dists.get(a["dist"])
            if d is None:
                return opapi.response(rid, "bad_request", error=f"no distribution {a['dist']} on this gateway")
            return opapi.response(rid, "ok", self.view(d))
        return await self._distribute(op_id, a, rid)

    def _custody(self, op_id: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]:
        """One evidence file with its custody trail (the journal's ``custody`` entries naming its hash); a
        ``view`` or ``download`` is itself a custody event, journaled under the operator before the trail is
        read, so the trail an operator sees already names their own access (evidence practice: every access is logged)."""
        sha = a["sha256"]
        ev = self.evidence.get(sha)
        if ev is None:
            return opapi.response(rid, "bad_request", error=f"no evidence {sha[:16]} on this gateway")
        if a["access"] != "none":
            did = "viewed" if a["access"] == "view" else "downloaded"
            self.journal.append("custody", f"evidence {sha[:16]} {did} by {op_id}", operator=op_id,
                                device=ev["device"], detail={"action": did, "sha256": sha, "file": ev["file"]})
        trail = [e.to_dict() for e in self.journal.entries(kind="custody", detail_has=f'"sha256":"{sha}"')]
        return opapi.response(rid, "ok", {"evidence": ev, "custody": trail})

    async def _put(self, op_id: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]:
        clip, sha, size, chunk = a["clip"], a["sha256"], a["size"], a["chunk"]
        if not cliptransfer.is_safe_clip_id(clip):
            return opapi.response(rid, "bad_request", error=f"args.clip: {clip!r} may not start with a dot")
        key = (op_id, clip, sha)
        now = self.clock()
        p = self.puts.get(key)
        if p is None:
            if await asyncio.to_thread(self.audio.sha256, clip) == sha:  # stored already: a retried last piece
                return opapi.response(rid, "ok", {"state": "complete", "id": clip, "sha256": sha, "size": size})
            p = self.puts.get(key)  # another piece may have started it meanwhile
        if p is None:
            if sum(1 for q in self.puts.values() if q.op_id == op_id) >= MAX_PUTS_PER_OPERATOR \
                    or len(self.puts) >= MAX_PUTS:
                return opapi.response(rid, "failed", error="too many clip uploads in progress; retry later")
            try:
                m = cliptransfer.Manifest(clip, 0, size, chunk, sha, "audio", "audio/wav", 0)
                rx = cliptransfer.ClipReceiver(m, opapi.CLIP_PUT_MAX_SIZE)
            except (LocalProtocolError, TransferError) as e:
                return opapi.response(rid, "bad_request", error=str(e))
            p = self.puts[key] = _Put(op_id, rx, now)
            self.journal.append("operator", f"{op_id} started uploading clip {clip} ({size} B)", operator=op_id,
                                   detail={"clip": clip, "sha256": sha, "size": size})
        m = p.rx.manifest
        if (m.size, m.chunk_size) != (size, chunk):
            return opapi.response(rid, "bad_request", error=f"size/chunk differ from the upload in progress "
                                  f"({m.size}/{m.chunk_size})")
        try:
            data = base64.b64decode(a["data"], validate=True)
        except (binascii.Error, ValueError):
            return opapi.response(rid, "bad_request", error="args.data: not base64")
        p.last_ms = now
        try:
            r = p.rx.receive(cliptransfer.Chunk(0, a["index"], data))
        except TransferError as e:
            if p.rx.state == cliptransfer.FAILED:
                del self.puts[key]
                self.journal.append("operator", f"{op_id} upload of clip {clip} failed: sha256 mismatch",
                                       operator=op_id, detail={"clip": clip, "sha256": sha})
                return opapi.response(rid, "failed", error=f"the uploaded bytes do not hash to {sha}")
            return opapi.response(rid, "bad_request", error=str(e))
        if r != cliptransfer.COMPLETE:
            return opapi.response(rid, "ok", {"state": "receiving", "have": p.rx.received, "n": m.chunks})
        del self.puts[key]
        old = await asyncio.to_thread(self.audio.sha256, clip)
        try:
            info = await asyncio.to_thread(self.audio.put, clip, p.rx.sink.data)  # write + fsync
        except ClipError as e:
            self.journal.append("operator", f"{op_id} upload of clip {clip} refused: {e}", operator=op_id,
                                   detail={"clip": clip, "sha256": sha})
            return opapi.response(rid, "failed", error=f"{clip}: {e}")
        self.journal.append("operator", f"{op_id} uploaded clip {clip} ({size} B, {info['ms']} ms)",
                               operator=op_id, detail={**info, "replaced_sha256": old})
        return opapi.response(rid, "ok", {"state": "complete", **info})

    async def _distribute(self, op_id: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]:
        clip = a["clip"]
        sha = await asyncio.to_thread(self.audio.sha256, clip) if cliptransfer.is_safe_clip_id(clip) else None
        data = await asyncio.to_thread(self.audio.read, clip, sha) if sha else None
        if data is None:
            return opapi.response(rid, "bad_request", error=f"no clip {clip!r} on the gateway: "
                                  "upload it first (lookout clips upload FILE --id ...)")
        d = Distribution(secrets.randbits(32), clip, sha, len(data), op_id)  # type: ignore[arg-type]
        self._remember(d)
        r = await self.issue(op_id, "clips", a, "fetch_clip", d.args(), rid)
        for res in (r.get("data") or {}).get("results", []):
            d.devices.setdefault(res["device"], DeviceProgress(res["device"])).cmd = res["id"]
        if r.get("data") is not None:
            r["data"].update({"dist": d.tid, "clip": clip, "sha256": sha, "size": d.size, "n": d.n})
        return r

    def _remember(self, d: Distribution) -> None:
        self.dists[d.tid] = d
        while len(self.dists) > MAX_DISTS:
            self.dists.pop(next(iter(self.dists)))

    def view(self, d: Distribution) -> dict[str, Any]:
        devs, done = [], 0
        for p in d.devices.values():
            c = self.commands.get(p.cmd) if p.cmd else None
            v: dict[str, Any] = {"device": p.device, "cmd": p.cmd, "status": c.status if c else "unknown",
                                 "sent": p.sent, "resent": p.resent, "have": p.have}
            if c is not None and c.code and c.code != c.status:
                v["code"] = c.code
            if c is not None and c.detail:
                v["detail"] = c.detail
            done += v["status"] == "done"
            devs.append(v)
        final = all(v["status"] in ("done", "failed", "rejected", "expired", "timeout", "refused", "queued")
                    for v in devs)
        return {"dist": d.tid, "clip": d.clip, "sha256": d.sha256, "size": d.size, "n": d.n, "devices": devs,
                "done": done, "total": len(devs), "final": final}

    # -- command results and node status --------------------------------------------------------------------
    def _find(self, tid: Any, clip: Any, sha: Any) -> Distribution | None:
        d = self.dists.get(tid) if isinstance(tid, int) else None
        if d is not None:
            return d
        if not isinstance(clip, str) or not cliptransfer.is_safe_clip_id(clip) or self.audio.sha256(clip) != sha:
            return None
        d = Distribution(tid, clip, sha, self.audio.path(clip).stat().st_size, None)  # after a gateway restart
        self._remember(d)
        return d

    def on_command(self, c: Any, old: str) -> None:
        """CommandService listener: a fetch_clip accepted by its node starts the chunk stream."""
        if c.name != "fetch_clip":
            return
        d = self._find(c.args.get("tid"), c.args.get("clip"), c.args.get("sha256"))
        if d is None:
            return
        p = d.devices.setdefault(c.device, DeviceProgress(c.device))
        p.cmd = c.id
        if c.status == "accepted" and not p.streaming:
            self.spawn(self._stream(d, p, c.site, None), name=f"clip-{d.tid}-{c.device}")
        elif c.final and p.stream is not None and c.status != "done":
            p.stream.cancel()

    def on_status(self, site: str, device: str, tid: int, st: dict[str, Any], now: int) -> None:
        """A loudspeaker's download status (``up/<tid>``): re-send the ranges it lists."""
        d = self.dists.get(tid)
        if d is None:
            c = next((c for c in self.commands.active_for(device, "fetch_clip") if c.args.get("tid") == tid), None)
            if c is None:
                return
            d = self._find(tid, c.args.get("clip"), c.args.get("sha256"))
        p = d.devices.get(device) if d is not None else None
        if d is None or p is None:
            return
        p.have = st["have"]
        log.info("%s asks for %d range(s) of clip %s (tid %d, has %d/%d)", device, len(st["missing"]), d.clip,
                 tid, st["have"], d.n)
        if st["state"] == cliptransfer.RECEIVING and st["missing"] and not p.streaming:
            self.spawn(self._stream(d, p, site, st["missing"]), name=f"clip-{tid}-{device}-resend")

    async def _stream(self, d: Distribution, p: DeviceProgress, site: str, ranges: list[tuple[int, int]] | None
                      ) -> None:
        sender = d.sender(self.audio)
        if sender is None:
            log.error("clip %s changed or vanished since distribution %d; %s will fail incomplete", d.clip, d.tid,
                      p.device)
            return
        p.streaming = True
        p.stream = asyncio.current_task()
        topic = topics.topic(site, p.device, "dl", str(d.tid))
        pending: set[asyncio.Task[Any]] = set()
        resend = ranges is not None
        try:
            for _i, payload in sender.chunks(ranges):
                pending.add(asyncio.ensure_future(self.publish(topic, payload, 1, PUBACK_S)))
                if len(pending) >= WINDOW:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    self._count(p, done, resend)
            if pending:
                done, pending = await asyncio.wait(pending)
                self._count(p, done, resend)
        except Exception as e:  # noqa: BLE001 - link lost: the node asks for what it misses, or fails incomplete
            log.info("streaming clip %s to %s stopped: %s", d.clip, p.device, e)
        finally:
            for t in pending:
                t.cancel()
            p.streaming = False
            p.stream = None

    @staticmethod
    def _count(p: DeviceProgress, done: set[asyncio.Task[Any]], resend: bool) -> None:
        for t in done:
            t.result()  # re-raise a publish failure
            if resend:
                p.resent += 1
            else:
                p.sent += 1

    # -- housekeeping ----------------------------------------------------------------------------------------
    def tick(self, now: int | None = None) -> None:
        now = self.clock() if now is None else now
        for key, p in list(self.puts.items()):
            if now - p.last_ms > PUT_IDLE_MS:
                del self.puts[key]
        for d in self.dists.values():
            if d._sender is not None and not any(q.streaming for q in d.devices.values()):
                cmds = [self.commands.get(q.cmd) for q in d.devices.values() if q.cmd]
                if all(c is None or c.final for c in cmds):
                    d.release()

    async def run(self) -> None:
        """Housekeeping for uploads in both directions (a gateway background task)."""
        while True:
            await asyncio.sleep(1.0)
            self.tick()
            self.evidence.tick()


__all__ = ["AudioStore", "ClipDistributor", "ClipError", "Distribution", "check_wav"]
