"""Host board for tests and simulators: a fake speaker that records what it played, a scripted PIR, a GPS fed
with NMEA bytes, a camera returning fixed bytes, files in a directory, and a switchable "network".

Runs on CPython and on MicroPython (no sockets are touched until ``open_connection`` is called).
"""

import time

from lookout_node import hal
from lookout_node.hal import asyncio, sleep_ms, ticks_diff, ticks_ms


WDT_LOG = 64


def _wall_ms():
    f = getattr(time, "time_ns", None)
    if f is not None:
        return f() // 1000000
    return int(time.time() * 1000)


class FakeSpeaker(hal.AudioOut):
    """Records every playback session: ``plays`` is a list of dicts
    ``{"tag", "t_start", "t_end", "bytes", "ms", "volume", "volumes", "cut"}`` (times Unix ms).
    ``write`` sleeps for the chunk's audio duration divided by ``speed`` so playback takes (scaled) real time."""

    def __init__(self, clock, speed=1):
        self.clock = clock
        self.speed = speed
        self.plays = []
        self.cur = None
        self.volume = 80
        self.playing = False

    def start(self, rate, bits, channels, tag=None):
        self.bps = rate * (bits // 8) * channels
        self.cur = {"tag": tag, "t_start": self.clock(), "t_end": None, "bytes": 0, "ms": 0,
                    "volume": self.volume, "volumes": [self.volume], "cut": False}
        self.plays.append(self.cur)
        self.playing = True

    async def write(self, buf):
        if self.cur is None:
            raise hal.HalError("write() before start()")
        n = len(buf)
        ms = n * 1000 // self.bps
        await sleep_ms(max(1, ms // self.speed))
        self.cur["bytes"] += n
        self.cur["ms"] += ms

    def stop(self, cut=False):
        if self.cur is not None:
            self.cur["t_end"] = self.clock()
            self.cur["cut"] = cut
        self.cur = None
        self.playing = False

    def set_volume(self, pct):
        self.volume = pct
        if self.cur is not None:
            self.cur["volumes"].append(pct)


class ScriptedGPS:
    """``feed(bytes)`` queues NMEA bytes (e.g. from protocols.nmea.encode_gga); ``read()`` hands them out."""

    def __init__(self):
        self._q = []
        self._ev = asyncio.Event()

    def feed(self, data):
        self._q.append(bytes(data))
        self._ev.set()

    async def read(self):
        while not self._q:
            self._ev.clear()
            await self._ev.wait()
        return self._q.pop(0)


class ScriptedPIR:
    """``trigger()`` makes one rising edge; ``wait()`` returns the ticks of the next edge."""

    def __init__(self):
        self._q = []
        self._ev = asyncio.Event()
        self.level = 0

    def trigger(self, at_ticks=None):
        self._q.append(ticks_ms() if at_ticks is None else at_ticks)
        self._ev.set()

    async def wait(self):
        while not self._q:
            self._ev.clear()
            await self._ev.wait()
        return self._q.pop(0)


class FakeCamera:
    def __init__(self, image=None):
        self.image = image if image is not None else b"\xff\xd8\xff\xe0FAKEJPEG" + bytes(range(256)) * 8 + b"\xff\xd9"
        self.count = 0

    def snapshot(self):
        self.count += 1
        return self.image


class HostHal(hal.Hal):
    """A board in a directory. ``clock`` (callable -> Unix ms or None) lets tests fake time; ``speed`` speeds up
    audio; ``on_reboot`` is called by ``reboot()`` (SimNode restarts the app)."""

    def __init__(self, root, clock=None, speed=1, gps=False, pir=False, camera=False):
        hal.Hal.__init__(self, hal.FileStore(root))
        self.clock = clock or _wall_ms
        self.audio = FakeSpeaker(self.time_ms, speed)
        self.gps = ScriptedGPS() if gps else None
        self.pir = ScriptedPIR() if pir else None
        self.camera = FakeCamera() if camera else None
        self.wdt_timeout = None
        self.wdt_feeds = 0
        self.wdt_log = []  # ticks of the last WDT_LOG feeds
        self.lose_tx = None  # test hook: callable (topic, payload) -> True drops that publish ("lost on air")
        self.reboots = 0
        self.on_reboot = None
        self.net = True
        self.writers = []
        self.figures = {"rssi": -61, "bat_mv": 12400, "temp_dc": 215}

    def time_ms(self):
        return self.clock()

    def wdt_start(self, timeout_ms):
        self.wdt_timeout = timeout_ms

    def wdt_feed(self):
        self.wdt_feeds += 1
        self.wdt_log.append(ticks_ms())
        if len(self.wdt_log) > WDT_LOG:
            self.wdt_log.pop(0)

    def feeds_between(self, t0, t1):
        """How many watchdog feeds were recorded at ticks t0 < t < t1."""
        return len([t for t in self.wdt_log if ticks_diff(t, t0) > 0 and ticks_diff(t1, t) > 0])

    def block_ms(self, ms):
        """A stuck task: hold the CPU (the event loop) for ``ms`` without yielding; returns (t0, t1) ticks."""
        t0 = ticks_ms()
        while ticks_diff(ticks_ms(), t0) < ms:
            pass
        return t0, ticks_ms()

    def reboot(self):
        self.reboots += 1
        if self.on_reboot is not None:
            self.on_reboot()
        else:
            raise hal.HalError("reboot requested")

    def rssi(self):
        return self.figures.get("rssi")

    def battery_mv(self):
        return self.figures.get("bat_mv")

    def temperature_dc(self):
        return self.figures.get("temp_dc")

    def network_up(self):
        return self.net

    def tls_context(self, ca_path, cert_path=None, key_path=None):
        """CPython: a client context trusting only ``ca_path`` (not the system store), hostname checked."""
        import ssl

        ctx = ssl.create_default_context(cafile=ca_path)  # CERT_REQUIRED + check_hostname
        if cert_path:
            ctx.load_cert_chain(cert_path, key_path)
        return ctx

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        if not self.net:
            raise OSError("network down (host hal)")
        if ssl:
            r, w = await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname or host)
        else:
            r, w = await asyncio.open_connection(host, port)
        self.writers.append(w)
        return r, w

    def kill_connections(self):
        """Drop every open connection without a DISCONNECT, like a modem losing power (last will fires)."""
        ws, self.writers = self.writers, []
        for w in ws:
            t = getattr(w, "transport", None)
            if t is not None:
                t.abort()
            else:
                try:
                    w.close()
                except Exception:
                    pass

