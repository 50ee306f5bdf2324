"""Loudspeaker role: broadcasts with priority and pre-emption, stop within 200 ms, schedules, clip download.

Theory of operation:
- A ``Broadcast`` is one play request (clip, repeats, volume, priority 0..3). One player task (``run``) plays
  ``current`` chunk by chunk (``CHUNK_MS`` of audio per write); between chunks it checks ``cut``, so ``stop``
  takes effect within one chunk (60 ms of audio + the I2S DMA buffer, well under the 200 ms requirement).
- Priority (FIELD.md, PA practice): a request with a *higher* priority than the one playing interrupts it; the
  interrupted broadcast is parked and resumes when the higher one ends, restarting the repetition it was in
  (half a spoken warning is useless). A request with equal or lower priority is refused with ``busy``.
  Priority 3 (emergency) ignores quiet hours and plays at volume 100 unless a volume is given; lower priorities
  are refused during quiet hours with ``quiet_hours``.
- "Device answers but no sound" is the field's top complaint, so a play command reports three things: the
  ``accepted`` result when the command passed its checks, a second ``accepted`` carrying
  ``{"phase": "playing"}`` once the first audio chunk went to the DAC, and ``done`` with ``played_ms`` (audio
  actually written) at the end, or ``failed`` with ``stopped``/``preempted``/``no_audio`` and ``played_ms``.
- Clips live in ``clips/<id>`` (WAV, or raw 8 kHz 16-bit mono PCM). ``fetch_clip`` receives chunks on
  ``dl/<tid>`` into ``clips/<id>.part`` and renames it over the old clip only after the SHA-256 from the
  signed command matched (protocols/cliptransfer), so a failed download never replaces a good clip.
"""

import struct

from protocols import defaults
from protocols.errors import LocalProtocolError, TransferError
from lookout_node.commands import Failed, Rejected
from lookout_node.hal import asyncio, sleep_ms, ticks_diff, ticks_ms

CHUNK_MS = 60  # audio per write: bounds stop latency (requirement: 200 ms)
MAX_REPEAT = 100
FETCH_IDLE_MS = 15000  # no chunk for this long: ask for the missing ranges (status on up/<tid>)
FETCH_RETRIES = 3  # status requests before the download fails with "incomplete"
SCHED_TICK_MS = 1000  # how often the scheduler looks for due broadcasts
RAW_FORMAT = (8000, 16, 1)  # rate, bits, channels of a headerless clip (G.711-class voice rate)


def _cliptransfer():
    """Deferred import: the transfer codec costs ~20 KB of heap and is only needed while fetching a clip."""
    from protocols import cliptransfer

    return cliptransfer


def is_safe_clip_id(s):
    """Same rule as protocols.cliptransfer.is_safe_clip_id: [A-Za-z0-9_.-]{1,48}, no leading dot."""
    if type(s) is not str or not 1 <= len(s) <= 48 or s[0] == ".":
        return False
    for c in s:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "_.-"):
            return False
    return True


def in_quiet_hours(quiet, tz_min, now_ms):
    """``quiet`` = [start_hour, end_hour] local time (may wrap midnight); unknown time -> not quiet (a warning
    that cannot be proven to fall in quiet hours is played)."""
    if not quiet or now_ms is None or quiet[0] == quiet[1]:
        return False
    h = ((now_ms // 1000 + tz_min * 60) // 3600) % 24
    a, b = quiet
    if a < b:
        return a <= h < b
    return h >= a or h < b


def parse_wav(head):
    """(rate, bits, channels, data_offset, data_len) from the first bytes of a file; None if not RIFF/WAVE."""
    if len(head) < 12 or head[0:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    fmt = None
    while pos + 8 <= len(head):
        cid = head[pos:pos + 4]
        n = struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt " and pos + 24 <= len(head):
            tag, ch, rate = struct.unpack_from("<HHI", head, pos + 8)
            bits = struct.unpack_from("<H", head, pos + 22)[0]
            if tag != 1 or bits not in (8, 16) or ch not in (1, 2) or not 4000 <= rate <= 48000:
                raise ValueError("unsupported WAV: format %d, %d bits, %d ch, %d Hz" % (tag, bits, ch, rate))
            fmt = (rate, bits, ch)
        elif cid == b"data":
            if fmt is None:
                raise ValueError("WAV data before fmt")
            return fmt[0], fmt[1], fmt[2], pos + 8, n
        pos += 8 + n + (n & 1)
    raise ValueError("WAV header longer than the first %d bytes" % len(head))


class Broadcast:
    def __init__(self, cid, clip, repeat, volume, prio, progress=None, sid=None):
        self.cid = cid
        self.clip = clip
        self.repeat = repeat
        self.volume = volume
        self.prio = prio
        self.progress = progress
        self.sid = sid  # schedule id when started by the scheduler
        self.rep = 0  # completed repetitions
        self.played_ms = 0
        self.preempted = 0
        self.started = False
        self.cut = None  # None, "stopped" or "preempted": polled by the player between chunks
        self.state = "queued"  # -> playing -> done | stopped | preempted | no_audio
        self.ended = asyncio.Event()

    def data(self):
        return {"clip": self.clip, "played_ms": self.played_ms, "repeats": self.rep, "preempted": self.preempted}


class FileSink:
    """cliptransfer sink on flash: chunks at their offsets in ``<name>.part``; commit renames over ``name``."""

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


class Speaker:
    CAPS = ("play", "stop", "set_volume", "schedule", "cancel", "cancel_schedule", "fetch_clip")

    def __init__(self, hal, cfg, emit_event=None, save_cfg=None, publish_up=None, on_error=None):
        self.hal = hal
        self.fs = hal.fs
        self.cfg = cfg
        self.emit_event = emit_event  # (kind, sev, detail) -> None
        self.save_cfg = save_cfg  # (key, value) -> None: persist a live setting
        self.publish_up = publish_up  # async (tid, payload) -> None: status/resume requests
        self.on_error = on_error
        self.volume = cfg.get("volume", 80)
        self.current = None
        self.paused = []
        self.downloads = {}  # tid -> [receiver, Event, ticks of last chunk]
        self.schedules = {}
        self.sched_tick_ms = SCHED_TICK_MS
        self._wake = asyncio.Event()
        self._buf = None
        self.fs.makedirs("clips")
        self._load_schedules()

    # ---- commands -----------------------------------------------------------------------------------------
    def register(self, proc):
        proc.register("play", self.play, self.check_play, progress=True)
        proc.register("stop", self.stop, self.check_stop)
        proc.register("set_volume", self.set_volume, self.check_volume)
        proc.register("schedule", self.schedule, self.check_schedule)
        proc.register("cancel", self.cancel, self.check_cancel)
        proc.register("cancel_schedule", self.cancel, self.check_cancel)  # the same, by its longer name
        proc.register("fetch_clip", self.fetch_clip, self.check_fetch)

    def clip_path(self, clip):
        return "clips/" + clip

    def has_clip(self, clip):
        return is_safe_clip_id(clip) and self.fs.exists(self.clip_path(clip))

    def policy(self, prio):
        """Quiet hours and priority; raises Rejected."""
        if prio < 3 and in_quiet_hours(self.cfg.get("quiet_hours"), self.cfg.get("tz_min", 480),
                                       self.hal.time_ms()):
            raise Rejected("quiet_hours", "priority %d broadcast refused in quiet hours %r; emergency (3) overrides"
                           % (prio, self.cfg.get("quiet_hours")))
        cur = self.current
        if cur is not None and cur.prio >= prio:
            raise Rejected("busy", "playing %s at priority %d; priority %d cannot interrupt it"
                           % (cur.clip, cur.prio, prio))

    def check_play(self, args, cmd):
        clip = args.get("clip")
        if not is_safe_clip_id(clip):
            raise Rejected("bad_args", "clip: expected a clip id, got %r" % (clip,))
        if not self.has_clip(clip):
            raise Rejected("no_clip", "clip %r is not stored on this node" % clip)
        repeat = _int_arg(args, "repeat", 1, 1, MAX_REPEAT)
        prio = cmd.get("prio", 1)
        volume = _int_arg(args, "volume", 100 if prio == 3 else self.volume, 0, 100)
        self.policy(prio)
        return {"clip": clip, "repeat": repeat, "volume": volume, "prio": prio}

    async def play(self, args, cmd, progress=None):
        b = Broadcast(cmd["id"], args["clip"], args["repeat"], args["volume"], args["prio"], progress)
        self.submit(b)
        await b.ended.wait()
        if b.state == "done":
            return b.data()
        raise Failed(b.state, "broadcast ended: %s" % b.state, b.data())

    def submit(self, b):
        """Start ``b`` now, parking (pre-empting) a lower-priority broadcast."""
        cur = self.current
        if cur is not None:
            if cur.prio >= b.prio:
                raise Rejected("busy", "priority %d is playing" % cur.prio)
            cur.cut = "preempted"
            cur.preempted += 1
            self.paused.append(cur)
        self.current = b
        self._wake.set()

    def check_stop(self, args, cmd):
        return {"all": bool(args.get("all", True))}

    async def stop(self, args, cmd):
        t0 = ticks_ms()
        n = 0
        if args["all"]:
            while self.paused:
                p = self.paused.pop()
                p.cut = None
                p.state = "stopped"
                p.ended.set()
                n += 1
        cur = self.current
        if cur is not None:
            cur.cut = "stopped"
            n += 1
            await cur.ended.wait()
        return {"stopped": n, "cut_ms": ticks_diff(ticks_ms(), t0)}

    def check_volume(self, args, cmd):
        return {"volume": _int_arg(args, "volume", None, 0, 100)}

    async def set_volume(self, args, cmd):
        self.volume = args["volume"]
        if self.save_cfg is not None:
            self.save_cfg("volume", self.volume)
        if self.current is not None:
            self.current.volume = self.volume
            self.hal.audio.set_volume(self.volume)
        return {"volume": self.volume}

    # ---- the player ---------------------------------------------------------------------------------------
    async def run(self):
        """The player task (supervised by the node)."""
        while True:
            b = self.current
            if b is None:
                if self.paused:
                    self.current = self.paused.pop()
                    continue
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._play(b)
            except Exception as e:  # a bad clip file must end this broadcast, not the player
                b.cut = None
                b.state = "no_audio"
                self.hal.audio.stop()
                if self.on_error is not None:
                    self.on_error("player", e)
            if b.cut == "preempted":
                b.cut = None
                continue
            if b.state != "no_audio":
                b.state = "done" if b.cut is None else b.cut
            if self.current is b:
                self.current = None
            b.ended.set()
            if b.sid is not None and self.emit_event is not None:
                self.emit_event("broadcast", "info", "schedule %s: %s, %d ms" % (b.sid, b.state, b.played_ms))

    async def _play(self, b):
        audio = self.hal.audio
        with self.fs.open(self.clip_path(b.clip), "rb") as f:
            head = f.read(64)
            wav = parse_wav(head)
            if wav is None:
                rate, bits, ch = RAW_FORMAT
                start, length = 0, self.fs.size(self.clip_path(b.clip))
            else:
                rate, bits, ch, start, length = wav
            frame = bits // 8 * ch
            bps = rate * frame
            n = bps * CHUNK_MS // 1000 // frame * frame
            if self._buf is None or len(self._buf) != n:
                self._buf = None
                self._buf = bytearray(n)
            buf = self._buf
            mv = memoryview(buf)
            audio.set_volume(b.volume)
            audio.start(rate, bits, ch, b.clip)
            b.state = "playing"
            try:
                while b.rep < b.repeat:
                    f.seek(start)
                    left = length
                    while left > 0:
                        if b.cut is not None:
                            audio.stop(True)
                            return
                        k = f.readinto(mv[:min(n, left)]) if left < n else f.readinto(buf)
                        if not k:
                            break
                        left -= k
                        await audio.write(mv[:k])
                        b.played_ms += k * 1000 // bps
                        if not b.started:
                            b.started = True
                            if b.progress is not None:
                                b.progress({"phase": "playing", "clip": b.clip})
                    b.rep += 1
            finally:
                if b.cut is None:
                    audio.stop()
        if b.played_ms == 0:
            b.state = "no_audio"

    # ---- schedules ----------------------------------------------------------------------------------------
    def _load_schedules(self):
        import json

        raw = self.fs.read("schedules.json")
        try:
            self.schedules = json.loads(raw) if raw else {}
        except ValueError:
            self.schedules = {}

    def _save_schedules(self):
        import json

        self.fs.write("schedules.json", json.dumps(self.schedules).encode())

    def check_schedule(self, args, cmd):
        sid = args.get("sid")
        if not is_safe_clip_id(sid):
            raise Rejected("bad_args", "sid: expected an id, got %r" % (sid,))
        clip = args.get("clip")
        if not self.has_clip(clip):
            raise Rejected("no_clip", "clip %r is not stored on this node" % (clip,))
        every = _int_arg(args, "every_s", None, 60, 86400)
        if len(self.schedules) >= 16 and sid not in self.schedules:
            raise Rejected("full", "16 schedules at most")
        now = self.hal.time_ms()
        if now is None:
            raise Rejected("no_clock", "schedules need the wall clock (GPS or NTP) and it is not set")
        prio = cmd.get("prio", 1)  # an emergency schedule (3) plays through quiet hours, at volume 100 by default
        return {"sid": sid, "clip": clip, "every_s": every, "repeat": _int_arg(args, "repeat", 1, 1, MAX_REPEAT),
                "volume": _int_arg(args, "volume", 100 if prio == 3 else self.volume, 0, 100), "prio": prio,
                "count": _int_arg(args, "count", 0, 0, 100000),
                "next_ms": _int_arg(args, "start_ms", now, 0, 2 ** 47)}

    async def schedule(self, args, cmd):
        sid = args.pop("sid")
        self.schedules[sid] = args
        self._save_schedules()
        self._wake.set()
        return {"sid": sid, "next_ms": args["next_ms"]}

    def check_cancel(self, args, cmd):
        sid = args.get("sid")
        if sid not in self.schedules:
            raise Rejected("no_schedule", "no schedule %r" % (sid,))
        return {"sid": sid}

    async def cancel(self, args, cmd):
        del self.schedules[args["sid"]]
        self._save_schedules()
        return {"sid": args["sid"], "left": len(self.schedules)}

    async def run_scheduler(self):
        """Start due scheduled broadcasts (checked every ``sched_tick_ms``). A slot missed while the node was off
        or busy is not made up: the next one is the first slot of the schedule's grid after now."""
        while True:
            await sleep_ms(self.sched_tick_ms)
            now = self.hal.time_ms()
            if now is None or not self.schedules:
                continue
            changed = False
            for sid in list(self.schedules):
                s = self.schedules[sid]
                if s["next_ms"] > now:
                    continue
                changed = True
                every = s["every_s"] * 1000
                s["next_ms"] += every * ((now - s["next_ms"]) // every + 1)  # strictly after now, same phase
                try:
                    self.policy(s["prio"])
                    if not self.has_clip(s["clip"]):
                        raise Rejected("no_clip")
                    self.submit(Broadcast(None, s["clip"], s["repeat"], s["volume"], s["prio"], sid=sid))
                except Rejected as e:  # quiet hours are expected, not news: no event every period all night
                    if self.emit_event is not None and e.code != "quiet_hours":
                        self.emit_event("broadcast", "info", "schedule %s skipped: %s" % (sid, e.code))
                if s["count"]:
                    s["count"] -= 1
                    if s["count"] == 0:
                        del self.schedules[sid]
            if changed:
                self._save_schedules()

    # ---- clip download ------------------------------------------------------------------------------------
    def check_fetch(self, args, cmd):
        cliptransfer = _cliptransfer()
        try:
            m = cliptransfer.Manifest(args.get("clip"), args.get("tid"), args.get("size"),
                                      args.get("chunk", defaults.CLIP_CHUNK_SIZE_MQTT), args.get("sha256"),
                                      "audio", args.get("mime", "audio/wav"), 0)
        except LocalProtocolError as e:
            raise Rejected("bad_args", str(e))
        if m.size > defaults.CLIP_MAX_SIZE_NODE:
            raise Rejected("too_large", "clip of %d bytes, node limit %d" % (m.size, defaults.CLIP_MAX_SIZE_NODE))
        if m.tid in self.downloads:
            raise Rejected("busy", "transfer %d already in progress" % m.tid)
        return {"manifest": m}

    def on_dl(self, tid, payload):
        """A chunk arrived on dl/<tid>."""
        d = self.downloads.get(tid)
        if d is None:
            return None
        cliptransfer = _cliptransfer()
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

    async def fetch_clip(self, args, cmd):
        cliptransfer = _cliptransfer()
        m = args["manifest"]
        name = self.clip_path(m.clip_id)
        sink = FileSink(self.fs, name)
        rx = cliptransfer.ClipReceiver(m, defaults.CLIP_MAX_SIZE_NODE, sink)
        done = asyncio.Event()
        d = [rx, done, ticks_ms(), None]
        self.downloads[m.tid] = d
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
                    if self.publish_up is not None:
                        try:
                            await self.publish_up(m.tid, cliptransfer.encode_status(rx))
                        except Exception as e:  # offline: the next idle period asks again
                            if self.on_error is not None:
                                self.on_error("fetch", e)
        finally:
            del self.downloads[m.tid]
        if d[3] is not None:
            raise Failed("hash_mismatch", str(d[3]), {"have": rx.received})
        return {"clip": m.clip_id, "size": m.size, "sha256": m.sha256}


def _int_arg(args, name, default, lo, hi):
    v = args.get(name, default)
    if v is None or isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise Rejected("bad_args", "%s: expected an integer %d..%d, got %r" % (name, lo, hi, v))
    return v
