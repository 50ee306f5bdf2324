"""The hardware layer: what the node app needs from a board, and the parts every board shares.

Theory of operation: the app (node.py, speaker.py, sensor.py) never imports ``machine`` or ``network``; it talks
to one ``Hal`` object. ``hal_esp32.Esp32Hal`` drives a real board, ``hal_host.HostHal`` fakes one for tests and
simulators. A board provides:

- clocks: ``time_ms()`` Unix ms or None (no NTP/GPS time yet), ``ticks_ms()``/``ticks_diff()`` (module functions
  here), ``await sleep_ms(n)``;
- ``audio``: an ``AudioOut`` (I2S on ESP32): ``start(rate, bits, channels)``, ``await write(buf)`` which returns
  once the chunk has been handed to the DAC (so it paces playback in real time), ``stop()``, ``set_volume(pct)``;
  completion is signalled by the player in speaker.py (an Event), because only it knows where a clip ends;
- ``gps``: ``await read()`` -> bytes from the GNSS UART (or None when the board has no GPS);
- ``pir``: ``await wait()`` -> ticks of the next rising edge (or None: no presence sensor);
- ``camera``: ``snapshot()`` -> JPEG bytes or None;
- ``wdt_start(timeout_ms)``, ``wdt_feed()``; ``reboot()``;
- ``fs``: a ``FileStore`` rooted on flash (config.json, cmdstate.json, outbox.json, clips/...);
- figures for the heartbeat: ``rssi()``, ``battery_mv()``, ``temperature_dc()``, ``free_heap()`` (each may
  return None when the board cannot tell);
- ``open_connection(host, port, ssl=None, server_hostname=None)`` -> (reader, writer) asyncio streams to the
  broker (the MQTT client's transport); ``ssl`` is a context from ``tls_context``;
- ``tls_context(ca_path, cert_path=None, key_path=None)`` -> an SSL context that trusts ONLY the site CA at
  ``ca_path`` (CA pinning: no system store), requires the server's certificate, and optionally presents a client
  certificate; raises ``HalError`` when the board has no TLS;
- ``network_up()`` -> bool and ``await connect_network(cfg)`` (WiFi/4G bring-up; no-op on the host).

Everything here runs on MicroPython and CPython alike.
"""

import os

try:
    import asyncio
except ImportError:  # pragma: no cover - very old MicroPython
    import uasyncio as asyncio

try:
    from time import ticks_ms as _ticks_ms, ticks_diff as _ticks_diff, ticks_add as _ticks_add

    def ticks_ms():
        return _ticks_ms()

    def ticks_diff(a, b):
        return _ticks_diff(a, b)

    def ticks_add(a, d):
        return _ticks_add(a, d)

except ImportError:  # CPython
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, d):
        return a + d


async def sleep_ms(ms):
    """``asyncio.sleep_ms`` where it exists (MicroPython: no float), else ``asyncio.sleep``."""
    f = getattr(asyncio, "sleep_ms", None)
    if f is not None:
        await f(ms)
    else:
        await asyncio.sleep(ms / 1000)


def create_task(coro):
    return asyncio.create_task(coro)


class HalError(Exception):
    pass


class AudioOut:
    """Interface of the audio output; see the module docstring. This base is silent and instant."""

    volume = 80

    def start(self, rate, bits, channels):
        pass

    async def write(self, buf):
        pass

    def stop(self, cut=False):
        """End playback; ``cut`` = interrupted (stop/pre-emption) rather than finished."""

    def set_volume(self, pct):
        self.volume = pct


def _join(a, b):
    if not a or a == "/":
        return (a or "") + b
    return a + "/" + b


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class FileStore:
    """Files on flash under ``root``. Writes go to ``<name>.tmp`` then rename: a power cut mid-write leaves
    the old file intact (LittleFS and POSIX rename both replace atomically)."""

    def __init__(self, root="/"):
        self.root = root
        if root not in ("", "/"):
            self._mkdirs(root)

    def _mkdirs(self, path):
        cur = ""
        for part in path.split("/"):
            if not part:
                cur = "/" if not cur else cur
                continue
            cur = _join(cur, part) if cur else part
            if not _exists(cur):
                try:
                    os.mkdir(cur)
                except OSError:
                    pass

    def path(self, name):
        return _join(self.root, name)

    def makedirs(self, name):
        self._mkdirs(self.path(name))

    def exists(self, name):
        return _exists(self.path(name))

    def size(self, name):
        try:
            return os.stat(self.path(name))[6]
        except OSError:
            return None

    def read(self, name):
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except OSError:
            return None

    def write(self, name, data):
        p = self.path(name)
        with open(p + ".tmp", "wb") as f:
            f.write(data)
        self._replace(p + ".tmp", p)

    def _replace(self, src, dst):
        try:
            os.rename(src, dst)
        except OSError:  # a FAT volume will not rename over an existing file
            self._remove_path(dst)
            os.rename(src, dst)

    def rename(self, src, dst):
        self._replace(self.path(src), self.path(dst))

    def _remove_path(self, p):
        try:
            os.remove(p)
            return True
        except OSError:
            return False

    def remove(self, name):
        return self._remove_path(self.path(name))

    def open(self, name, mode="rb"):
        return open(self.path(name), mode)

    def listdir(self, name=""):
        try:
            return sorted(os.listdir(self.path(name) if name else (self.root or "/")))
        except OSError:
            return []


class Hal:
    """Base board: no peripherals. Subclasses override what their board has."""

    fw = "lookout-node/0.1.0"

    def __init__(self, fs):
        self.fs = fs
        self.audio = AudioOut()
        self.gps = None
        self.pir = None
        self.camera = None
        self.boot_ticks = ticks_ms()

    # clocks
    def time_ms(self):
        return None

    def uptime_s(self):
        return ticks_diff(ticks_ms(), self.boot_ticks) // 1000

    def set_time_ms(self, unix_ms):
        """A trusted time source (GPS RMC) sets the clock; boards without an RTC ignore it."""

    # watchdog / power
    def wdt_start(self, timeout_ms):
        pass

    def wdt_feed(self):
        pass

    def reboot(self):
        raise HalError("reboot not supported on this board")

    # figures
    def rssi(self):
        return None

    def battery_mv(self):
        return None

    def temperature_dc(self):
        return None

    def free_heap(self):
        try:
            import gc

            return gc.mem_free()
        except (ImportError, AttributeError):
            return None

    # network
    def network_up(self):
        return True

    async def connect_network(self, cfg):
        return True

    def tls_context(self, ca_path, cert_path=None, key_path=None):
        raise HalError("TLS is not supported on this board")

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        if ssl:
            return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname or host)
        return await asyncio.open_connection(host, port)
