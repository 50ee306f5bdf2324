from __future__ import annotations

import pytest

from broker import Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh Mosquitto per test: tests never share retained state or sessions."""
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()
