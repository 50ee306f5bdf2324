"""Two serialsession ends over a virtual serial line: paced, delayed, with seeded bit errors and drops.

Runs on CPython and MicroPython (tests/protocols use it), so it carries its own small PRNG and uses virtual time
(integer ms): a 200 KB transfer at 115,200 baud takes milliseconds of CPU, not 20 s.
"""

from protocols import cliptransfer, serialsession
from protocols import serialframe as sf

KEY = bytes(range(32))


class Rng:
    """A Weyl sequence through the murmur3 finaliser: the same stream on both runtimes, and no clustering of
    small values (plain xorshift32 gave runs of bit errors in consecutive frames)."""

    def __init__(self, seed):
        self.s = (seed * 2654435761) & 0xFFFFFFFF

    def next(self):
        self.s = (self.s + 0x9E3779B9) & 0xFFFFFFFF
        z = self.s
        z = ((z ^ (z >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
        z = ((z ^ (z >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
        return z ^ (z >> 16)

    def below(self, n):
        return self.next() % n

    def bytes(self, n):
        return bytes(self.next() & 0xFF for _ in range(n))


class VLine:
    """One direction of a line: bytes leave at ``bps`` bytes/s one after another, arrive ``latency_ms`` later.

    ``ber``: probability that a data bit flips; ``drop``: probability that a byte is lost. Both applied per byte
    as it is pushed (1e-9 resolution). ``cut``: while True nothing passes (a cable pulled).
    """

    def __init__(self, bps, latency_ms=0, ber=0.0, drop=0.0, seed=1):
        self.bps = bps  # time is kept in ns: whole bytes never drift from the nominal rate
        self.latency_ns = latency_ms * 1000000
        self.p_flip = int(ber * 8 * 1e9)
        self.p_drop = int(drop * 1e9)
        self.rng = Rng(seed)
        self.free_ns = 0  # when the transmitter is free again
        self.queue = []  # (arrival_us, bytes)
        self.cut = False
        self.flipped = 0
        self.dropped = 0
        self.sent = 0

    def backlog(self, now_ms):
        """Bytes still waiting to leave."""
        left = self.free_ns - now_ms * 1000000
        return 0 if left <= 0 else left * self.bps // 1000000000 + 1

    def push(self, data, now_ms):
        if not data:
            return
        t = max(self.free_ns, now_ms * 1000000)
        if self.cut:
            self.free_ns = t + len(data) * 1000000000 // self.bps
            return
        out = bytearray(data)
        if self.p_flip or self.p_drop:
            keep = bytearray()
            for b in out:
                if self.p_drop and self.rng.below(1000000000) < self.p_drop:
                    self.dropped += 1
                    continue
                if self.p_flip and self.rng.below(1000000000) < self.p_flip:
                    b ^= 1 << self.rng.below(8)
                    self.flipped += 1
                keep.append(b)
            out = keep
        self.sent += len(data)
        self.free_ns = t + len(data) * 1000000000 // self.bps
        self.queue.append((self.free_ns + self.latency_ns, bytes(out)))

    def pop(self, now_ms):
        now = now_ms * 1000000
        got = []
        while self.queue and self.queue[0][0] <= now:
            got.append(self.queue.pop(0)[1])
        return b"".join(got)

    def next_arrival(self):
        return (self.queue[0][0] + 999999) // 1000000 if self.queue else None


def pair(mtu=1024, win=None, key=KEY, dev="bwc-0001", gw="gw-1", seed=7, **rec):
    r = Rng(seed)
    rec_s = serialsession.SerialSession(serialsession.RECORDER, dev, key=key, rand=r.bytes, mtu=mtu, win=win,
                                        fw="1.0", **rec)
    keys = {dev: key}
    gw_s = serialsession.SerialSession(serialsession.GATEWAY, gw, key_for=keys.get, rand=r.bytes, mtu=mtu,
                                       win=win)
    return rec_s, gw_s


class Link:
    """Recorder and gateway sessions on two VLines; ``run`` steps virtual time and hands events to callbacks."""

    FIFO = 2048  # bytes a writer may have queued in its UART at most

    def __init__(self, rec, gw, bps=11520, latency_ms=25, ber=0.0, drop=0.0, seed=3):
        self.rec = rec
        self.gw = gw
        self.up = VLine(bps, latency_ms, ber, drop, seed)  # recorder -> gateway
        self.down = VLine(bps, latency_ms, ber, drop, seed + 1)
        self.now = 0
        self.rec_events = []
        self.gw_events = []
        self.on_rec = None  # callable(event) -> None
        self.on_gw = None

    def _side(self, s, line_out, line_in, sink, cb):
        data = line_in.pop(self.now)
        if data:
            s.receive_data(data, self.now)
        elif s.decoder.buffered:
            s.line_idle(self.now)  # the UART's idle-line interrupt
        while True:
            ev = s.next_event()
            if ev is serialsession.NEED_DATA:
                break
            sink.append(ev)
            if cb is not None:
                cb(ev)
        if cb is not None:
            cb(None)  # a chance to queue more (the window may have opened)
        room = self.FIFO - line_out.backlog(self.now)
        out = s.data_to_send(self.now, limit=max(0, room))
        line_out.push(out, self.now)

    def step(self):
        self._side(self.rec, self.up, self.down, self.rec_events, self.on_rec)
        self._side(self.gw, self.down, self.up, self.gw_events, self.on_gw)

    def run(self, until, limit_ms=600000, tick_ms=5):
        """Step until ``until()`` is true (or ``limit_ms`` of virtual time); returns the virtual time."""
        end = self.now + limit_ms
        while self.now < end:
            self.step()
            if until():
                return self.now
            self.now += tick_ms
        raise AssertionError("not done after %d ms of virtual time" % limit_ms)


def connect(link, limit_ms=20000):
    """Handshake, then one HEARTBEAT: a recorder's first frame (a lost hs3 is noticed on it)."""
    link.rec.start(link.now)
    link.run(lambda: link.rec.established, limit_ms)
    link.rec.send(sf.TYPE_HEARTBEAT, b"{}")
    link.run(lambda: link.rec.established and link.gw.established and not link.rec.in_flight, limit_ms)


class Catcher:
    """Gateway-side clip receiver for tests: CLIP_OFFER -> ClipReceiver on a MemorySink, CLIP_DATA pieces."""

    def __init__(self, session, offset=None):
        self.s = session
        self.rx = None
        self.pieces = 0
        self.offset = offset

    def __call__(self, ev):
        if not isinstance(ev, serialsession.Received):
            return
        if ev.type == sf.TYPE_CLIP_OFFER:
            m = cliptransfer.decode_manifest(ev.payload)
            if self.rx is None or self.rx.manifest.tid != m.tid:
                self.rx = cliptransfer.ClipReceiver(m, 1 << 30)
            self.s.send(sf.TYPE_CLIP_DONE, cliptransfer.encode_status(self.status()))
        elif ev.type == sf.TYPE_CLIP_DATA:
            p = cliptransfer.decode_data(ev.payload)
            self.pieces += 1
            if self.rx.receive_at(p.offset, p.data) == cliptransfer.COMPLETE:
                self.s.send(sf.TYPE_CLIP_DONE, cliptransfer.encode_status(self.status()))

    def status(self):
        d = self.rx.status()
        d["off"] = self.rx.offset
        d.pop("missing", None)
        return d


class Pusher:
    """Recorder-side: one ClipPush routed from the session's events."""

    def __init__(self, session, data, tid=1, chunk=4096):
        self.s = session
        sender = cliptransfer.ClipSender(data, chunk, "clip-1.mp4", tid, "video", "video/mp4", 1764000000000)
        self.push = serialsession.ClipPush(session, sender, sender.manifest.encode())

    def __call__(self, ev):
        if isinstance(ev, serialsession.Received) and ev.type == sf.TYPE_CLIP_DONE:
            self.push.on_status(cliptransfer.decode_status(ev.payload))
        elif isinstance(ev, serialsession.Acked) and isinstance(ev.ref, tuple):
            self.push.on_acked(ev.ref)
        elif isinstance(ev, serialsession.Established):
            self.push.on_session()
        self.push.pump()
