"""Sensor/camera role: PIR/radar edges -> debounced, rate-limited detection events; arm/disarm; snapshots.

Theory of operation:
- ``Detector`` is pure logic (ticks in, decisions out) so it is unit-tested on both runtimes. Edges closer
  than ``debounce_ms`` are contact bounce and ignored. A *detection* needs ``need`` edges within
  ``WINDOW_MS``, where ``need`` falls as sensitivity rises (100 -> 1 edge, 50 -> 2, 0 -> 3): a single PIR
  blip from a bird is not a person at a sensitive setting of 0. Detections closer than ``min_interval_s`` to
  the last *event* are not sent but counted; the next event carries ``count`` = detections it stands for.
- A camera node takes a snapshot with each event and uploads it in chunks (protocols/cliptransfer) on
  ``up/<tid>``: the manifest (JSON, with SHA-256, MAC'd with the device key, purpose ``up``) first, then the
  binary chunks, each QoS 1 (the chunks need no MAC: the signed SHA-256 covers them). The event lists
  ``sha256:<hex>`` in ``evidence``, hashed at the source (evidence custody practice).
- Resume: the node keeps each snapshot (the image bytes it already holds, via its ``ClipSender``) after sending
  it. The gateway's clip store publishes a cliptransfer *status* on ``dl/<tid>`` when an upload stalls; the
  node then re-sends exactly the chunks in its ``missing`` ranges. A status with state ``complete`` or
  ``failed`` ends the transfer. Kept snapshots are bounded (``UPLOAD_KEEP`` transfers, ``UPLOAD_KEEP_BYTES``,
  oldest forgotten first) and forgotten ``UPLOAD_KEEP_MS`` after the last activity (the clip store abandons a
  silent upload after 120 s, so nothing asks later).
- Local warning: if configured, a detection while the gateway has been unreachable for ``offline_after_s``
  plays the configured clip on the node's own speaker (priority 2, quiet hours respected).
"""

from protocols import canonical, cliptransfer, defaults, signing
from protocols.errors import TransferError
from lookout_node.commands import Failed, Rejected
from lookout_node.hal import asyncio, ticks_diff, ticks_ms

WINDOW_MS = 3000
UPLOAD_KEEP = 2  # snapshots kept for resume requests
UPLOAD_KEEP_BYTES = 65536  # ... and their bytes in all; a bigger image is sent once, without resume
UPLOAD_KEEP_MS = 120000  # = the gateway clip store's expiry (gateway/clipstore.py EXPIRE_MS)


def need_edges(sensitivity):
    return 1 if sensitivity >= 75 else (2 if sensitivity >= 25 else 3)


class Detector:
    def __init__(self, debounce_ms=200, min_interval_s=30, sensitivity=50):
        self.debounce_ms = debounce_ms
        self.min_interval_ms = min_interval_s * 1000
        self.sensitivity = sensitivity
        self.edges = []
        self.last_edge = None
        self.last_event = None
        self.suppressed = 0
        self.bounces = 0

    def feed(self, t):
        """One rising edge at ticks ``t``. Returns None, or ``(count, conf)`` when an event should be sent."""
        if self.last_edge is not None and ticks_diff(t, self.last_edge) < self.debounce_ms:
            self.last_edge = t
            self.bounces += 1
            return None
        self.last_edge = t
        self.edges = [e for e in self.edges if ticks_diff(t, e) < WINDOW_MS]
        self.edges.append(t)
        need = need_edges(self.sensitivity)
        if len(self.edges) < need:
            return None
        conf = min(100, 40 + 20 * len(self.edges) + self.sensitivity // 5)
        self.edges = []
        if self.last_event is not None and ticks_diff(t, self.last_event) < self.min_interval_ms:
            self.suppressed += 1
            return None
        count = 1 + self.suppressed
        self.suppressed = 0
        self.last_event = t
        return count, conf


def signed_manifest(key, manifest):
    """Canonical JSON of the manifest with ``mac`` = HMAC(device key, purpose ``up``) over the manifest itself."""
    d = manifest.to_dict()
    signing.sign(key, "up", d)
    return canonical.dumpb(d)


async def upload(publish, topic_for, data, clip_id, tid, kind, mime, created_ms,
                 chunk=defaults.CLIP_CHUNK_SIZE_MQTT, key=None, sender=None):
    """Send ``data`` as manifest + chunks on ``topic_for(tid)`` (QoS 1 each); returns the Manifest.
    ``key``: the device key that signs the manifest (purpose ``up``); None sends it unsigned (tests only).
    ``sender``: an existing ClipSender for ``data`` (the caller keeps it to answer resume requests)."""
    s = sender or cliptransfer.ClipSender(data, chunk, clip_id, tid, kind, mime, created_ms)
    t = topic_for(tid)
    await publish(t, signed_manifest(key, s.manifest) if key is not None else s.manifest.encode(), 1)
    await send_chunks(publish, t, s, ((0, s.manifest.chunks),))
    return s.manifest


async def send_chunks(publish, topic, sender, ranges):
    """Publish the chunks of ``sender`` in the half-open index ``ranges`` (QoS 1 each); returns how many."""
    m = sender.manifest
    buf = bytearray(cliptransfer.CHUNK_HEADER_LEN + m.chunk_size)
    n = 0
    for a, b in ranges:
        for i in range(max(0, a), min(b, m.chunks)):
            k = sender.chunk_into(i, buf)
            await publish(topic, bytes(buf[:k]), 1)
            n += 1
    return n


class Sensor:
    CAPS = ("arm", "disarm", "sensitivity", "snapshot")

    def __init__(self, hal, cfg, node):
        self.hal = hal
        self.cfg = cfg
        self.node = node  # emit_event, position(), online_for_ms(), publish(), upload_topic(), save_cfg()
        s = cfg.get("sensor", {})
        self.armed = s.get("armed", True)
        self.det = Detector(s.get("debounce_ms", 200), s.get("min_interval_s", 30), s.get("sensitivity", 50))
        self.events = 0
        self.local_warnings = 0
        self.uploads = {}  # tid -> [ClipSender, ticks of last activity, resend task or None]
        self.resent = 0  # chunks re-sent on resume requests

    def _save(self):
        s = dict(self.cfg.get("sensor", {}))
        s["armed"] = self.armed
        s["sensitivity"] = self.det.sensitivity
        self.node.save_cfg("sensor", s)

    def register(self, proc):
        proc.register("arm", self.arm)
        proc.register("disarm", self.disarm)
        proc.register("sensitivity", self.set_sensitivity, self.check_sensitivity)
        proc.register("snapshot", self.snapshot, self.check_snapshot)

    async def arm(self, args, cmd):
        self.armed = True
        self._save()
        return {"armed": True}

    async def disarm(self, args, cmd):
        self.armed = False
        self._save()
        return {"armed": False}

    def check_sensitivity(self, args, cmd):
        v = args.get("value")
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100:
            raise Rejected("bad_args", "value: expected an integer 0..100, got %r" % (v,))
        return {"value": v}

    async def set_sensitivity(self, args, cmd):
        self.det.sensitivity = args["value"]
        self._save()
        return {"sensitivity": args["value"], "need_edges": need_edges(args["value"])}

    def check_snapshot(self, args, cmd):
        if self.hal.camera is None:
            raise Rejected("no_camera", "this node has no camera")
        return args

    async def take_snapshot(self):
        img = self.hal.camera.snapshot()
        if not img:
            raise Failed("camera", "camera returned no image")
        ts = self.hal.time_ms() or 0
        tid = self.node.new_tid()
        s = cliptransfer.ClipSender(img, defaults.CLIP_CHUNK_SIZE_MQTT, "snap-%d" % tid, tid, "snapshot",
                                    "image/jpeg", ts)
        self._keep(tid, s)  # before the first send: a link lost mid-upload is resumed from the gateway's status
        m = await upload(self.node.publish, self.node.upload_topic, img, s.manifest.clip_id, tid, "snapshot",
                         "image/jpeg", ts, key=self.node.key, sender=s)
        return m

    # ---- upload resume ------------------------------------------------------------------------------------
    def _forget(self, tid):
        u = self.uploads.pop(tid, None)
        if u is not None and u[2] is not None and not u[2].done():
            u[2].cancel()

    def expire_uploads(self):
        now = ticks_ms()
        for tid in list(self.uploads):
            if ticks_diff(now, self.uploads[tid][1]) >= UPLOAD_KEEP_MS:
                self._forget(tid)

    def _keep(self, tid, sender):
        size = sender.manifest.size
        if size > UPLOAD_KEEP_BYTES:
            return
        self.expire_uploads()
        while self.uploads and (len(self.uploads) >= UPLOAD_KEEP or
                                size + sum(u[0].manifest.size for u in self.uploads.values()) > UPLOAD_KEEP_BYTES):
            oldest = None
            for t in self.uploads:
                if oldest is None or ticks_diff(self.uploads[oldest][1], self.uploads[t][1]) > 0:
                    oldest = t
            self._forget(oldest)
        self.uploads[tid] = [sender, ticks_ms(), None]

    def on_dl(self, tid, payload):
        """A message on ``dl/<tid>``; True if it was a status for one of our uploads (handled here)."""
        u = self.uploads.get(tid)
        if u is None or payload[:1] != b"{":
            return False
        try:
            st = cliptransfer.decode_status(payload)
        except TransferError as e:  # a bad status must not hurt the node
            self.node.record_error("upload status", e)
            return True
        if st["tid"] != tid or st["id"] != u[0].manifest.clip_id:
            return True
        if st["state"] != cliptransfer.RECEIVING:  # the gateway's final word: filed, or failed for good
            self._forget(tid)
            return True
        u[1] = ticks_ms()
        if st["missing"] and (u[2] is None or u[2].done()):
            u[2] = asyncio.create_task(self._resend(tid, u[0], st["missing"]))
        return True

    async def _resend(self, tid, sender, missing):
        try:
            self.resent += await send_chunks(self.node.publish, self.node.upload_topic(tid), sender, missing)
        except Exception as e:  # offline again: the gateway asks again after its stall period
            self.node.record_error("upload resume", e)
        u = self.uploads.get(tid)
        if u is not None:
            u[1] = ticks_ms()

    async def snapshot(self, args, cmd):
        m = await self.take_snapshot()
        return {"clip": m.clip_id, "tid": m.tid, "size": m.size, "sha256": m.sha256}

    async def run(self):
        """Wait for PIR/radar edges and turn them into events (supervised task)."""
        if self.hal.pir is None:
            return
        while True:
            t = await self.hal.pir.wait()
            if not self.armed:
                continue
            r = self.det.feed(t)
            if r is None:
                continue
            count, conf = r
            await self._detected(count, conf)

    async def _detected(self, count, conf):
        self.events += 1
        evidence = None
        lw = self.cfg.get("local_warning") or {}
        offline_ms = self.node.offline_for_ms()
        limit = (self.cfg.get("sensor") or {}).get("offline_after_s", 60) * 1000
        played = False
        if lw.get("enabled") and offline_ms is not None and offline_ms >= limit:
            played = self.node.local_warning(lw.get("clip"))
            if played:
                self.local_warnings += 1
        if self.hal.camera is not None and offline_ms is None:
            try:
                m = await self.take_snapshot()
                evidence = ["sha256:" + m.sha256]
            except Exception as e:  # the event matters more than its picture
                self.node.record_error("snapshot", e)
        self.node.emit_event("presence", "general", conf=conf, count=count, evidence=evidence,
                             detail="local warning played" if played else None)
