"""The hardware layer: what the node app needs from a board, and the parts every board shares.

Theory of operation: the app (node.py, speaker.py, sensor.py) never imports ``machine`` or ``network``; it talks
to one ``Hal`` object. ``hal_esp32.Esp32Hal`` drives a real board, ``hal_host.HostHal`` fakes one for tests and
simulators. A board provides:

- clocks: ``time_ms()`` Unix ms or None (no NTP/GPS time yet), ``ticks_ms()``/``ticks_diff()`` (module functions
  here: MicroPython's own, or monotonic stand-ins on CPython), ``await sleep_ms(n)``;
- ``audio`` (I2S on ESP32): ``start(rate, bits, channels, tag=None)``, ``await write(buf)`` which returns once the
  chunk has been handed to the DAC (so it paces playback in real time), ``stop(cut=False)`` (``cut`` =
  interrupted by stop/pre-emption rather than finished), ``set_volume(pct)``, attribute ``volume``; completion
  is signalled by the player in speaker.py (an Event), because only it knows where a clip ends;
- ``gps``: ``await read()`` -> bytes from the GNSS UART (or None when the board has no GPS);
- ``pir``: ``await wait()`` -> ticks of the next rising edge (or None: no presence sensor);
- ``camera``: ``snapshot()`` -> JPEG bytes or None;
- ``wdt_start(timeout_ms)``, ``wdt_feed()``; ``reboot()``;
- ``fs``: a ``FileStore`` rooted on flash (config.json, cmdstate.json, outbox.0/.1, clips/...);
- figures for the heartbeat: ``rssi()``, ``battery_mv()``, ``temperature_dc()``, ``free_heap()`` (each may
  return None when the board cannot tell);
- ``open_connection(host, port, ssl=None, server_hostname=None)`` -> (reader, writer) asyncio streams to the
  broker (the MQTT client's transport); ``ssl`` is a context from ``tls_context``;
- ``tls_context(cadata, cert_path=None, key_path=None)`` -> an SSL context that trusts ONLY the site CA whose
  DER is ``cadata`` (the bytes node_tls checked against the pin: a board reads no CA file itself; no system
  store), requires the server's certificate, and optionally presents a client certificate; raises ``HalError``
  when the board has no TLS;
- ``network_up()`` -> bool and ``await connect_network(cfg)`` (WiFi/4G bring-up; no-op on the host).

Everything here runs on MicroPython and CPython alike.
"""

import asyncio
import os
from hashlib import sha256

try:  # MicroPython: the runtime's own functions, no wrappers (each def costs heap on a node)
    from time import ticks_diff, ticks_ms

    sleep_ms = asyncio.sleep_ms  # returns one shared generator: always ``await sleep_ms(n)`` at once
except ImportError:  # CPython (tests, simulators, the gateway's tools)
    from operator import sub as ticks_diff
    from time import monotonic as _monotonic

    def ticks_ms():
        return int(_monotonic() * 1000)

    async def sleep_ms(ms):
        await asyncio.sleep(ms / 1000)


class HalError(Exception):
    pass


def seal(data):
    """``data`` (bytes) behind a check a torn write or a flipped bit does not keep: 8 hex chars, the first 4
    bytes of its SHA-256 (hashlib is resident for the MACs anyway)."""
    return sha256(data).digest()[:4].hex().encode() + data


def unseal(raw):
    """The bytes ``seal`` wrapped, or None when ``raw`` is missing, short or fails its check."""
    if not raw or len(raw) < 8:
        return None
    data = bytes(raw[8:])
    try:
        ok = sha256(data).digest()[:4].hex() == bytes(raw[:8]).decode()
    except (UnicodeError, ValueError):
        return None
    return data if ok else None


def _none(*args, **kwargs):
    """Shared body of every "this board has nothing here" method below (returns None)."""


class FileStore:
    """Files on flash under ``root``. Writes go to ``<name>.tmp`` then rename: a power cut mid-write leaves
    the old file intact (LittleFS and POSIX rename both replace atomically). FAT will not rename over a file:
    there the old file is first renamed to ``<name>.old`` and removed only once the new one is in place, and
    ``read`` falls back to ``<name>.old`` while ``<name>`` is missing, so at every step a read returns the old
    or the new content, never nothing."""

    def __init__(self, root="/"):
        self.pre = root if root in ("", "/") else root + "/"
        self.makedirs("")

    def path(self, name):
        return self.pre + name

    def makedirs(self, name):
        cur = ""
        for part in self.path(name).split("/"):
            cur += part
            if cur:
                try:
                    os.mkdir(cur)
                except OSError:  # exists (or cannot be made: the next open says so)
                    pass
            cur += "/"

    def exists(self, name):
        return self.size(name) is not None

    def size(self, name):
        try:
            return os.stat(self.path(name))[6]
        except OSError:
            return None

    def read(self, name):
        for n in (name, name + ".old"):  # .old: a power cut in FAT's rename, below
            try:
                with open(self.path(n), "rb") as f:
                    return f.read()
            except OSError:
                pass
        return None

    def write(self, name, data):
        with open(self.path(name + ".tmp"), "wb") as f:
            f.write(data)
        self.rename(name + ".tmp", name)

    def append(self, name, data):
        """Add ``data`` at the end of ``name`` (created if missing); closing the file commits it to flash."""
        with open(self.path(name), "ab") as f:
            f.write(data)

    def rename(self, src, dst):
        a, b = self.path(src), self.path(dst)
        try:
            os.rename(a, b)
            return
        except OSError:  # a FAT volume will not rename over an existing file
            if self.size(src) is None or self.size(dst) is None:
                raise
        self._rm(dst + ".old")  # keep the current file as .old until the new one is in place
        os.rename(b, b + ".old")
        os.rename(a, b)
        self._rm(dst + ".old")

    def _rm(self, name):
        try:
            os.remove(self.path(name))
            return True
        except OSError:
            return False

    def remove(self, name):
        old = self._rm(name + ".old")  # what read() would fall back to
        return self._rm(name) or old

    def open(self, name, mode="rb"):
        return open(self.path(name), mode)


class Hal:
    """Base board: no peripherals, no clock, no figures. A board class overrides what it has and provides
    ``audio``, ``reboot``, ``network_up``, ``tls_context`` and ``open_connection`` itself (each board's own)."""

    gps = pir = camera = None
    # Nothing here: no clock yet (time_ms None), no watchdog, no figures (each may be None on a real board too).
    # set_time_ms(unix_ms): a trusted time source (GPS RMC) sets the clock; boards without an RTC ignore it.
    time_ms = set_time_ms = wdt_start = wdt_feed = rssi = battery_mv = temperature_dc = _none

    def __init__(self, fs):
        self.fs = fs
        self.boot_ticks = ticks_ms()

    def uptime_s(self):
        return ticks_diff(ticks_ms(), self.boot_ticks) // 1000

    def free_heap(self):
        try:
            import gc

            return gc.mem_free()
        except (ImportError, AttributeError):
            return None
