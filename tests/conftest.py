from __future__ import annotations

import pytest
from broker import Mosquitto

from lookout.tools import firmware_host

# The dual-runtime tests (tests/protocols, tests/firmware_unit) import ``protocols`` and ``lookout_node`` by the
# names they have on a board, exactly as under MicroPython; on CPython those names are the installed package's.
firmware_host.install()


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh Mosquitto per test: tests never share retained state or sessions."""
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """``lookout firmware build`` once per run: the .mpy tree and the ROMFS images (read-only for tests)."""
    from lookout.gateway.cli.main import main as lookout

    out = tmp_path_factory.mktemp("fw")
    assert lookout(["firmware", "build", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def mpy32():
    """MicroPython's Unix port, 32-bit, plain and with the firmware frozen (tests/support/mpy32.py builds it
    once and caches it); the test fails, naming what is missing, when the source or the toolchain is not here."""
    import mpy32 as m

    try:
        return m.interpreters()
    except m.Mpy32Unavailable as e:
        pytest.fail(str(e), pytrace=False)
