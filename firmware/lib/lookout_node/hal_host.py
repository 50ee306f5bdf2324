"""Host board for tests and simulators: a fake speaker that records what it played, a scripted PIR, a GPS fed
with NMEA bytes, a camera returning fixed bytes and files in a directory. Network stand-ins (a switchable link,
dropping connections, simulated loss) belong to the simulator (simulators/node.py ``SimHal``).

Runs on CPython and on MicroPython (no sockets are touched until ``open_connection`` is called).
"""

import time

from lookout_node import hal
from lookout_node.hal import asyncio, sleep_ms, ticks_ms


class FakeSpeaker:
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


class Scripted:
    """A scripted peripheral. GPS: ``feed(bytes)`` queues NMEA bytes, ``read()`` hands them out. PIR:
    ``trigger()`` makes one rising edge, ``wait()`` returns the ticks of the next edge. Camera: ``snapshot()``
    returns ``image`` (a fixed fake JPEG) and counts in ``count``."""

    def __init__(self):
        self.q = []
        self.ev = asyncio.Event()
        self.count = 0
        self.image = b"\xff\xd8\xff\xe0FAKEJPEG" + bytes(range(256)) * 8 + b"\xff\xd9"

    def feed(self, data):
        self.q.append(data)
        self.ev.set()

    def trigger(self, at_ticks=None):
        self.feed(ticks_ms() if at_ticks is None else at_ticks)

    async def read(self):
        while not self.q:
            self.ev.clear()
            await self.ev.wait()
        return self.q.pop(0)

    wait = read

    def snapshot(self):
        self.count += 1
        return self.image


class HostHal(hal.Hal):
    """A board in a directory. ``clock`` (callable -> Unix ms or None) lets tests fake time; ``speed`` speeds up
    audio; ``on_reboot`` is called by ``reboot()`` (SimNode restarts the app). The watchdog is recorded:
    ``wdt_timeout``, ``wdt_feeds`` (count) and ``wdt_log`` (ticks of the last 64 feeds)."""

    def __init__(self, root, clock=None, speed=1, gps=False, pir=False, camera=False):
        hal.Hal.__init__(self, hal.FileStore(root))
        self.clock = clock
        self.audio = FakeSpeaker(self.time_ms, speed)
        if gps:
            self.gps = Scripted()
        if pir:
            self.pir = Scripted()
        if camera:
            self.camera = Scripted()
        self.wdt_timeout = None
        self.wdt_feeds = 0
        self.wdt_log = []
        self.reboots = 0
        self.on_reboot = None

    def time_ms(self):
        return self.clock() if self.clock else time.time_ns() // 1000000

    def wdt_start(self, timeout_ms):
        self.wdt_timeout = timeout_ms

    def wdt_feed(self):
        self.wdt_feeds += 1
        self.wdt_log.append(ticks_ms())
        del self.wdt_log[:-64]

    def reboot(self):
        self.reboots += 1
        if self.on_reboot is None:
            raise hal.HalError("reboot requested")
        self.on_reboot()

    # heartbeat figures of a healthy board (a real board may answer None: the base class)
    def rssi(self):
        return -61

    def battery_mv(self):
        return 12400

    def temperature_dc(self):
        return 215

    def network_up(self):
        return True

    def tls_context(self, cadata, cert_path=None, key_path=None):
        """CPython: a client context trusting only the CA ``cadata`` (its DER, as node_tls pinned it; not the
        system store), hostname checked."""
        import ssl

        if not cadata:
            raise hal.HalError("no CA certificate given")
        ctx = ssl.create_default_context(cadata=bytes(cadata))  # CERT_REQUIRED + check_hostname
        if cert_path:
            ctx.load_cert_chain(cert_path, key_path)
        return ctx

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        if ssl:
            return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname or host)
        return await asyncio.open_connection(host, port)
