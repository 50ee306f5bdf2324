"""Loudspeaker role: broadcasts with priority and pre-emption, stop within 200 ms, quiet hours.

Theory of operation:
- A ``Broadcast`` is one play request (clip, repeats, volume, priority 0..3). One player task (``run``) plays
  ``current`` chunk by chunk (``CHUNK_MS`` of audio per write); between chunks it checks ``cut``, so ``stop``
  takes effect within one chunk (60 ms of audio + the I2S DMA buffer, well under the 200 ms requirement).
- Priority (public-address practice): a request with a *higher* priority than the one playing interrupts it; the
  interrupted broadcast is parked and resumes when the higher one ends, restarting the repetition it was in
  (half a spoken warning is useless). A request with equal or lower priority is refused with ``busy``.
  Priority 3 (emergency) ignores quiet hours and plays at volume 100 unless a volume is given; lower priorities
  are refused during quiet hours with ``quiet_hours``.
- "Device answers but no sound" is the field's top complaint, so a play command reports three things: the
  ``accepted`` result when the command passed its checks, a second ``accepted`` carrying
  ``{"phase": "playing"}`` once the first audio chunk went to the DAC, and ``done`` with ``played_ms`` (audio
  actually written) at the end, or ``failed`` with ``stopped``/``preempted``/``no_audio`` and ``played_ms``.
- Clips live in ``clips/<id>`` (WAV, or raw 8 kHz 16-bit mono PCM).
- Rare work lives in modules loaded on first use, so a node that never gets such a command does not hold their
  code: recurring broadcasts (``schedule``/``cancel``, and the scheduler's tick) in ``speaker_sched``, loaded
  by the first such command or, after a reboot, by the first tick that finds persisted schedules; clip
  download (``fetch_clip`` and its ``dl/<tid>`` chunks) in ``speaker_fetch``.
"""

import json
import struct

from lookout_node.commands import Failed, Rejected, int_arg, is_safe_clip_id, load
from lookout_node.hal import asyncio, sleep_ms, ticks_diff, ticks_ms

CHUNK_MS = 60  # audio per write: bounds stop latency (requirement: 200 ms)
MAX_REPEAT = 100
SCHEDULES = "schedules.json"


def local_time(now_ms, tz_min):
    """``HH:MM +hh:mm``: the node's local clock time and UTC offset, for refusals an operator reads."""
    m = (now_ms // 60000 + tz_min) % 1440
    t = abs(tz_min)
    return "%02d:%02d %s%02d:%02d" % (m // 60, m % 60, "-" if tz_min < 0 else "+", t // 60, t % 60)


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
    def __init__(self, clip, repeat, volume, prio, progress=None, sid=None):
        self.clip = clip
        self.repeat = repeat
        self.volume = volume
        self.prio = prio
        self.progress = progress  # called once, when the first chunk went to the DAC
        self.sid = sid  # schedule id when started by the scheduler
        self.rep = 0  # completed repetitions
        self.played_ms = 0
        self.preempted = 0
        self.cut = None  # None, "stopped" or "preempted": polled by the player between chunks
        self.state = None  # queued; -> playing -> done | stopped | preempted | no_audio
        self.ended = asyncio.Event()


class Speaker:
    CAPS = ("play", "stop", "set_volume", "schedule", "cancel", "cancel_schedule", "fetch_clip")
    # what the lazily loaded speaker_sched needs of this module, reached through the instance (no import back)
    Broadcast = Broadcast
    MAX_REPEAT = MAX_REPEAT
    SCHEDULES = SCHEDULES

    def __init__(self, hal, cfg, emit_event=None, save_cfg=None, publish_up=None, on_error=None):
        self.hal = hal
        self.fs = fs = hal.fs
        self.cfg = cfg
        self.emit_event = emit_event  # (kind, sev, detail) -> None
        self.save_cfg = save_cfg  # (key, value) -> None: persist a live setting
        self.publish_up = publish_up  # async (tid, payload) -> None: status/resume requests
        self.on_error = on_error
        self.volume = cfg.get("volume", 80)
        self.current = None
        self.paused = []
        self.downloads = {}  # tid -> [receiver, Event, ticks of last chunk, error] (speaker_fetch)
        self.sched_tick_ms = 1000  # how often the scheduler looks for due broadcasts
        self._wake = asyncio.Event()
        self._buf = None
        fs.makedirs("clips")
        raw = fs.read(SCHEDULES)  # sid -> schedule (speaker_sched); kept across reboots
        try:
            self.schedules = json.loads(raw) if raw else {}
        except ValueError:
            self.schedules = {}

    # ---- commands -----------------------------------------------------------------------------------------
    def register(self, proc):
        proc.register("play", self.play, self.check_play, True)
        proc.register("stop", self.stop)
        proc.register("set_volume", self.set_volume, self.check_volume)
        proc.lazy(("schedule", "cancel", "cancel_schedule"), lambda p: load("speaker_sched").register(self, p))
        proc.lazy(("fetch_clip",), lambda p: load("speaker_fetch").register(self, p))

    def has_clip(self, clip):
        return is_safe_clip_id(clip) and self.fs.exists("clips/" + clip)

    def policy(self, prio):
        """Quiet hours and priority; raises Rejected."""
        q = self.cfg.get("quiet_hours")
        tz = self.cfg.get("tz_min", 480)
        now = self.hal.time_ms()
        if prio < 3 and in_quiet_hours(q, tz, now):
            raise Rejected("quiet_hours", "priority %d broadcast refused in quiet hours %02d:00\u2013%02d:00, node "
                           "time %s; emergency (3) overrides" % (prio, q[0], q[1], local_time(now, tz)))
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
        prio = cmd.get("prio", 1)
        r = {"clip": clip, "repeat": int_arg(args, "repeat", 1, 1, MAX_REPEAT), "prio": prio,
             "volume": int_arg(args, "volume", 100 if prio == 3 else self.volume, 0, 100)}
        self.policy(prio)
        return r

    async def play(self, args, cmd, progress=None):
        b = Broadcast(args["clip"], args["repeat"], args["volume"], args["prio"], progress)
        self.submit(b)
        await b.ended.wait()
        d = {"clip": b.clip, "played_ms": b.played_ms, "repeats": b.rep, "preempted": b.preempted}
        if b.state == "done":
            return d
        raise Failed(b.state, "broadcast ended: %s" % b.state, d)

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

    async def stop(self, args, cmd):
        """``all`` (default true): the parked broadcasts too."""
        t0 = ticks_ms()
        n = 0
        if args.get("all", True):
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
        return {"volume": int_arg(args, "volume", None, 0, 100)}

    async def set_volume(self, args, cmd):
        self.volume = args["volume"]
        if self.save_cfg is not None:
            self.save_cfg("volume", self.volume)
        if self.current is not None:
            self.current.volume = self.volume
            self.hal.audio.set_volume(self.volume)
        return {"volume": self.volume}

    def on_dl(self, tid, payload):
        """A chunk arrived on dl/<tid>: for a running download (speaker_fetch is loaded), else ignored."""
        if tid in self.downloads:
            from lookout_node.speaker_fetch import on_dl

            return on_dl(self, tid, payload)
        return None

    async def run_scheduler(self):
        """The scheduler task: every ``sched_tick_ms``, while schedules exist, start the due ones."""
        while True:
            await sleep_ms(self.sched_tick_ms)
            if self.schedules:
                from lookout_node.speaker_sched import tick

                tick(self)

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
        path = "clips/" + b.clip
        with self.fs.open(path, "rb") as f:
            wav = parse_wav(f.read(64))
            if wav is None:  # headerless: raw 8 kHz 16-bit mono (G.711-class voice rate)
                rate, bits, ch, start, length = 8000, 16, 1, 0, self.fs.size(path)
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
                        if b.progress is not None:
                            b.progress({"phase": "playing", "clip": b.clip})
                            b.progress = None
                    b.rep += 1
            finally:
                if b.cut is None:
                    audio.stop()
        if b.played_ms == 0:
            b.state = "no_audio"
