"""The CPython side's type hints hold: mypy over gateway/, simulators/ and protocols/ ([tool.mypy])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
                           "--no-error-summary", "--hide-error-context"], cwd=ROOT, capture_output=True,
                          text=True, timeout=110, check=False)
    errors = [ln for ln in proc.stdout.splitlines() if ": error:" in ln]
    assert proc.returncode == 0 and not errors, "\n".join(errors) or proc.stdout + proc.stderr
