"""The ESP32 board layer (hal_esp32.py) under real MicroPython, against stand-ins for what only a board has:
machine (I2S, Pin, UART, ADC, WDT), network, esp32, ssl. No radio or DAC here; this executes the layer's own
logic (volume shifts, pin map, PIR edges, watchdog, battery and temperature readings, WiFi bring-up, TLS
context). MicroPython only (its asyncio streams and ticks, which the wasm runtime's asyncio lacks too):
tests/test_board_layer.py runs it on MicroPython's Unix port; pytest does not collect it on CPython.
"""

import asyncio
import sys

from fwtest import tmpdir
from ptest import raises

CALLS = []


class _Rec:
    """A stand-in class whose instances and static calls are recorded in CALLS."""

    results = {}

    def __init__(self, *a, **kw):
        CALLS.append((type(self).__name__, a, kw))

    def __getattr__(self, name):
        def call(*a, **kw):
            CALLS.append((type(self).__name__ + "." + name, a, kw))
            return self.results.get(name)
        return call


class Pin(_Rec):
    OUT = 1
    IN = 2
    IRQ_RISING = 4


class I2S(_Rec):
    TX = 0
    MONO = 0
    STEREO = 1

    @staticmethod
    def shift(buf, bits, shift):
        CALLS.append(("I2S.shift", (), {"bits": bits, "shift": shift}))


class UART(_Rec):
    pass


class ADC(_Rec):
    ATTN_11DB = 3
    results = {"read_uv": 1900000}


class WDT(_Rec):
    pass


class _Machine:
    Pin = Pin
    I2S = I2S
    UART = UART
    ADC = ADC
    WDT = WDT

    def reset(self):
        CALLS.append(("machine.reset", (), {}))


class _WLAN(_Rec):
    up = [False, False, True]  # connected on the third look

    def isconnected(self):
        return self.up[0] if len(self.up) == 1 else self.up.pop(0)

    def status(self, what):
        return -67 if what == "rssi" else None


class _Network:
    STA_IF = 0
    WLAN = _WLAN


class _Esp32:
    @staticmethod
    def mcu_temperature():
        return 41


class _Ctx(_Rec):
    pass


class _Ssl:
    PROTOCOL_TLS_CLIENT = 16
    CERT_REQUIRED = 2
    SSLContext = _Ctx


FAKES = {"machine": _Machine(), "network": _Network(), "esp32": _Esp32()}  # "ssl" only around tls_context:
# CPython's asyncio imports the real one lazily


def _with_board(fn):
    saved = {k: sys.modules.get(k) for k in FAKES}
    sys.modules.update(FAKES)
    sys.modules.pop("lookout_node.hal_esp32", None)
    del CALLS[:]
    try:
        from lookout_node import hal_esp32

        return fn(hal_esp32)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        sys.modules.pop("lookout_node.hal_esp32", None)


def _calls(name):
    return [c for c in CALLS if c[0] == name]


def test_pins_from_config_override_defaults_and_features_choose_peripherals():
    def check(m):
        h = m.Esp32Hal({"role": "speaker", "pins": {"gps_rx": 4}, "hw": {"gps": True}})
        assert h.pins["gps_rx"] == 4 and h.pins["i2s_sck"] == 26
        assert _calls("UART") == [("UART", (2,), {"baudrate": 9600, "tx": 17, "rx": 4})]
        assert h.pir is None  # a speaker has no PIR unless hw.pir says so
        del CALLS[:]
        s = m.Esp32Hal({"role": "sensor", "hw": {"gps": False}})
        assert s.gps is None and s.pir is not None
        assert ("Pin", (27, Pin.IN), {}) in CALLS
        irq = _calls("Pin.irq")
        assert len(irq) == 1 and irq[0][2]["trigger"] == Pin.IRQ_RISING
        for _ in range(10):  # a burst of edges: at most 8 are kept until the task reads them
            irq[0][2]["handler"](None)
        assert len(s.pir.pending) == 8
        assert isinstance(asyncio.run(s.pir.wait()), int) and len(s.pir.pending) == 7
    _with_board(check)


def test_volume_maps_to_i2s_shifts_and_mute():
    def check(m):
        a = m.Esp32Audio(dict(m.PINS))
        a.start(16000, 16, 1)
        i2s = _calls("I2S")[0]
        assert i2s[1] == (0,) and i2s[2]["rate"] == 16000 and i2s[2]["ibuf"] == m.IBUF
        assert i2s[2]["format"] == I2S.MONO and i2s[2]["mode"] == I2S.TX

        class Writer:
            out_buf = None

            async def drain(self):
                CALLS.append(("drain", (), {}))

        a.writer = Writer()
        got = {}
        for vol in (100, 90, 80, 40, 20, 1, 0):
            del CALLS[:]
            a.set_volume(vol)
            asyncio.run(a.write(bytearray(8)))
            shifts = _calls("I2S.shift")
            got[vol] = shifts[0][2]["shift"] if shifts else 0
            assert _calls("drain")
        assert got == {100: 0, 90: 0, 80: -1, 40: -2, 20: -3, 1: -7, 0: -16}
        a.stop()
        assert a.i2s is None and a.writer is None
        assert ("Pin.value", (0,), {}) in CALLS  # the amplifier is switched off
    _with_board(check)


def test_watchdog_battery_temperature_and_reboot():
    def check(m):
        h = m.Esp32Hal({"role": "speaker", "hw": {"gps": False}})
        h.wdt_feed()  # before start: nothing to feed, no error
        h.wdt_start(8000)
        h.wdt_feed()
        assert ("WDT", (), {"timeout": 8000}) in CALLS and _calls("WDT.feed")
        assert h.battery_mv() == 3800  # 1.9 V at the pin behind a 1:1 divider
        assert h.temperature_dc() == 410
        assert h.rssi() is None  # no WiFi yet
        h.reboot()
        assert _calls("machine.reset")
    _with_board(check)


def test_wifi_bring_up_and_rssi():
    def check(m):
        _WLAN.up = [False, False, True]
        h = m.Esp32Hal({"role": "speaker", "hw": {"gps": False}})
        assert asyncio.run(h.connect_network({"wifi": {"ssid": "reservoir-ap", "password": "pw"}})) is True
        assert ("_WLAN.connect", ("reservoir-ap", "pw"), {}) in CALLS
        assert h.network_up() and h.rssi() == -67
        assert asyncio.run(h.connect_network({})) is True  # no ssid: a 4G board brings its link up itself
    _with_board(check)


def test_tls_context_trusts_only_the_given_ca_and_refuses_none():
    def check(m):
        import os

        d = tmpdir()
        os.mkdir(d)
        h = m.Esp32Hal({"role": "speaker", "hw": {"gps": False}})
        real = sys.modules.get("ssl")
        sys.modules["ssl"] = _Ssl()
        try:
            ctx = h.tls_context(b"\x30\x03DER")
            assert ctx.verify_mode == _Ssl.CERT_REQUIRED
            assert _calls("_Ctx.load_verify_locations") == [("_Ctx.load_verify_locations", (),
                                                             {"cadata": b"\x30\x03DER"})]
            with raises(m.hal.HalError, match="no CA"):
                h.tls_context(b"")
            with raises(m.hal.HalError, match="client certificate"):
                h.tls_context(b"\x30\x03DER", d + "/client.crt", d + "/client.key")
        finally:
            if real is None:
                sys.modules.pop("ssl", None)
            else:
                sys.modules["ssl"] = real
    _with_board(check)


def _with_ssl(fn):
    real = sys.modules.get("ssl")
    sys.modules["ssl"] = _Ssl()
    try:
        return fn()
    finally:
        if real is None:
            sys.modules.pop("ssl", None)
        else:
            sys.modules["ssl"] = real


def test_ca_pin_covers_exactly_the_bytes_handed_to_the_tls_context():
    """The pin (broker.ca_sha256) was checked on ca.crt while this layer loaded ca.der when it existed: another
    CA in ca.der passed the pin. Now node_tls reads the CA once, checks the pin on those bytes and hands exactly
    them to the context; a ca.der beside it is never read, and a swapped ca.crt is refused before any context."""
    import binascii
    import hashlib
    import os

    from lookout_node import node_tls

    def check(m):
        d = tmpdir()
        os.mkdir(d)
        site = b"\x30\x0aSITE-CA-DER"
        evil = b"\x30\x0aEVIL-CA-DER"

        def pem(der):
            return b"-----BEGIN CERTIFICATE-----\n" + binascii.b2a_base64(der) + b"-----END CERTIFICATE-----\n"

        with open(d + "/ca.crt", "wb") as f:
            f.write(pem(site))
        with open(d + "/ca.der", "wb") as f:
            f.write(evil)
        pin = hashlib.sha256(site).digest().hex()
        cfg = {"broker": {"host": "gw.local", "tls": True, "ca": "ca.crt", "ca_sha256": pin}}
        h = m.Esp32Hal({"role": "speaker", "hw": {"gps": False}})
        fs = m.hal.FileStore(d)
        opts = _with_ssl(lambda: node_tls.tls_opts(cfg, fs, h))
        loaded = [c[2].get("cadata") for c in _calls("_Ctx.load_verify_locations")]
        assert loaded == [site], loaded
        assert hashlib.sha256(loaded[0]).digest().hex() == pin
        assert opts["server_hostname"] == "gw.local" and opts["ssl"].verify_mode == _Ssl.CERT_REQUIRED
        # a DER file named as the CA is pinned and loaded as it is
        cfg["broker"]["ca"] = "ca.der"
        cfg["broker"]["ca_sha256"] = hashlib.sha256(evil).digest().hex()
        del CALLS[:]
        _with_ssl(lambda: node_tls.tls_opts(cfg, fs, h))
        assert [c[2].get("cadata") for c in _calls("_Ctx.load_verify_locations")] == [evil]
        # another CA in the pinned file: refused before a context exists
        cfg["broker"]["ca"] = "ca.crt"
        cfg["broker"]["ca_sha256"] = pin
        with open(d + "/ca.crt", "wb") as f:
            f.write(pem(evil))
        del CALLS[:]
        with raises(node_tls.TLSConfigError, match="ca_sha256"):
            _with_ssl(lambda: node_tls.tls_opts(cfg, fs, h))
        assert not _calls("_Ctx")
    _with_board(check)
