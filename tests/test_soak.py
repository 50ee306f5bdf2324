"""Slow soak runs, excluded by default (pytest -m slow): bench/fuzz_soak.py with many inputs per decoder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_fuzz_soak_both_runtimes():
    import fuzz_soak

    r = fuzz_soak.run(5000)
    assert r["cpython_ok"], r["cpython_tail"]
    assert r["micropython_ok"], r["micropython_failed"]
    assert r["tests"] >= 9
