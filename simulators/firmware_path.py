"""Make the node firmware importable from CPython: ``import simulators.firmware_path`` (or call ``add()``).

On a device ``lookout_node`` sits at the top of /lib; here it lives in ``firmware/lib``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE_LIB = ROOT / "firmware" / "lib"


def add() -> Path:
    p = str(FIRMWARE_LIB)
    if p not in sys.path:
        sys.path.insert(0, p)
    r = str(ROOT)
    if r not in sys.path:
        sys.path.insert(0, r)
    return FIRMWARE_LIB


add()
