"""ESP32 board: I2S audio, UART GPS, PIR pin, hardware watchdog, WiFi, LittleFS. Compiled in CI, run on boards.

Theory of operation: every ``machine``/``network`` import happens inside a method, so importing this module on
CPython (or in the wasm test runtime) is harmless. Pins come from ``cfg["pins"]`` with the defaults below
(ESP32-WROVER audio boards: MAX98357A I2S amplifier, NEO-6M/M8N GNSS on UART2, HC-SR501 PIR or an LD2410
radar's OUT pin).

Audio: ``machine.I2S`` in TX mode with a small DMA buffer (``ibuf`` = 2 x 60 ms of 16 kHz mono 16-bit, 3840 B)
so that ``stop()`` (``deinit``) cuts sound within one chunk. Volume is applied in software with
``I2S.shift`` (each step of -1 halves the amplitude); 0 mutes. Writes go through ``asyncio.StreamWriter``
so the event loop keeps running (MQTT keepalive, a ``stop`` command) while audio plays.
"""

from lookout_node import hal
from lookout_node.hal import asyncio

PINS = {"i2s_sck": 26, "i2s_ws": 25, "i2s_sd": 22, "gps_tx": 17, "gps_rx": 16, "pir": 27, "bat_adc": 35,
        "amp_en": 21}
IBUF = 3840


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class Esp32Audio:
    def __init__(self, pins):
        self.pins = pins
        self.i2s = None
        self.writer = None
        self.volume = 80
        self.bits = 16
        self.amp = None

    def start(self, rate, bits, channels, tag=None):
        from machine import I2S, Pin

        self.stop()
        self.bits = bits
        self.i2s = I2S(0, sck=Pin(self.pins["i2s_sck"]), ws=Pin(self.pins["i2s_ws"]), sd=Pin(self.pins["i2s_sd"]),
                       mode=I2S.TX, bits=bits, format=I2S.MONO if channels == 1 else I2S.STEREO, rate=rate,
                       ibuf=IBUF)
        self.writer = asyncio.StreamWriter(self.i2s)
        if self.pins.get("amp_en") is not None:
            self.amp = Pin(self.pins["amp_en"], Pin.OUT, value=1)

    async def write(self, buf):
        from machine import I2S

        v = self.volume  # software volume: each shift step of -1 halves the amplitude, 0 mutes
        s = 0 if v >= 90 else -16 if v <= 0 else -1
        while -15 < s < 0 and v * 2 < 90:
            v *= 2
            s -= 1
        if s and self.bits == 16:
            I2S.shift(buf=buf, bits=16, shift=s)
        self.writer.out_buf = buf
        await self.writer.drain()

    def stop(self, cut=False):
        if self.amp is not None:
            self.amp.value(0)
        if self.i2s is not None:
            self.i2s.deinit()
        self.i2s = None
        self.writer = None

    def set_volume(self, pct):
        self.volume = pct


class UartLines:
    def __init__(self, uart):
        self.reader = asyncio.StreamReader(uart)

    async def read(self):
        return await self.reader.read(128)


class PinEdges:
    """Rising edges of a PIR/radar output, from an IRQ through a ThreadSafeFlag (no polling)."""

    def __init__(self, pin_no):
        import time

        from machine import Pin

        self.flag = asyncio.ThreadSafeFlag()
        self.pending = []
        self.pin = Pin(pin_no, Pin.IN)
        self._ticks = time.ticks_ms

        def _irq(p):
            if len(self.pending) < 8:
                self.pending.append(self._ticks())
            self.flag.set()

        self.pin.irq(trigger=Pin.IRQ_RISING, handler=_irq)

    async def wait(self):
        while not self.pending:
            await self.flag.wait()
        return self.pending.pop(0)


class Esp32Hal(hal.Hal):
    def __init__(self, cfg):
        hal.Hal.__init__(self, hal.FileStore("/"))
        pins = dict(PINS)
        pins.update(cfg.get("pins") or {})
        self.pins = pins
        self.audio = Esp32Audio(pins)
        feats = cfg.get("hw") or {}
        if feats.get("gps", True):
            from machine import UART

            self.gps = UartLines(UART(2, baudrate=9600, tx=pins["gps_tx"], rx=pins["gps_rx"]))
        if feats.get("pir", cfg.get("role") in ("sensor", "camera")):
            self.pir = PinEdges(pins["pir"])
        self.camera = None  # a camera module driver (e.g. an ESP32-CAM build) plugs in here
        self.wdt = None
        self.wlan = None
        self._time_ok = False

    def time_ms(self):
        import time

        t = time.time()
        if t < 1420070400 and not self._time_ok:  # epoch 2000 or 1970 boards: unset clock before NTP/GPS
            return None
        return int(t) * 1000 + time.ticks_ms() % 1000

    def set_time_ms(self, unix_ms):
        import time

        from machine import RTC

        tm = time.gmtime(unix_ms // 1000 - (946684800 if time.gmtime(0)[0] == 2000 else 0))
        RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
        self._time_ok = True

    def wdt_start(self, timeout_ms):
        from machine import WDT

        self.wdt = WDT(timeout=timeout_ms)

    def wdt_feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def reboot(self):
        import machine

        machine.reset()

    def rssi(self):
        try:
            return self.wlan.status("rssi") if self.wlan is not None else None
        except (OSError, ValueError):
            return None

    def battery_mv(self):
        try:
            from machine import ADC, Pin

            adc = ADC(Pin(self.pins["bat_adc"]), atten=ADC.ATTN_11DB)
            return adc.read_uv() * 2 // 1000  # 1:1 divider on the battery input
        except (ImportError, OSError, AttributeError):
            return None

    def temperature_dc(self):
        try:
            import esp32

            return (esp32.mcu_temperature()) * 10
        except (ImportError, AttributeError):
            return None

    def network_up(self):
        return self.wlan is not None and self.wlan.isconnected()

    async def connect_network(self, cfg):
        import network

        w = cfg.get("wifi") or {}
        if not w.get("ssid"):
            return True  # 4G modem boards bring up PPP in boot.py
        if self.wlan is None:
            self.wlan = network.WLAN(network.STA_IF)
            self.wlan.active(True)
        if not self.wlan.isconnected():
            self.wlan.connect(w["ssid"], w.get("password", ""))
            for _ in range(100):
                if self.wlan.isconnected():
                    break
                await hal.sleep_ms(100)
        if self.wlan.isconnected() and not self._time_ok:
            try:
                import ntptime

                ntptime.settime()
                self._time_ok = True
            except (ImportError, OSError):
                pass
        return self.wlan.isconnected()

    def tls_context(self, cadata, cert_path=None, key_path=None):
        """MicroPython ``ssl``: trust only the site CA, require the broker's certificate.

        mbedtls verifies only with ``CERT_REQUIRED`` (CERT_NONE/OPTIONAL check nothing). ``cadata`` is the CA's
        DER exactly as node_tls checked it against the pin; this layer reads no CA file of its own. Client
        certificate and key are passed as bytes.
        """
        import ssl

        if not cadata:
            raise hal.HalError("no CA certificate given")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=cadata)
        if cert_path:
            cert, key = _read(cert_path), _read(key_path)
            if cert is None or key is None:
                raise hal.HalError("client certificate or key missing")
            ctx.load_cert_chain(cert, key)
        return ctx

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        await self.connect_network(self._cfg_for_net)
        if ssl:
            # asyncio.open_connection wraps the socket with ctx.wrap_socket(server_hostname=...): SNI and the
            # name check against the broker certificate
            return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname or host)
        return await asyncio.open_connection(host, port)

    _cfg_for_net = {}
