"""Key files of simulated hardware: what ``lookout provision drone|recorder --out`` writes, read as a real device
would hold its key (a simulator never reads the gateway's key store)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_keys(files: list[str], kind: str, name: Callable[[dict[str, Any]], Any]) -> dict[Any, bytes]:
    """``name(file's JSON)`` -> 32-byte key for each ``--key FILE``; a clear ValueError naming the file otherwise."""
    out: dict[Any, bytes] = {}
    for f in files:
        try:
            d = json.loads(Path(f).read_text())
            ident, key = name(d), bytes.fromhex(d["key"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--key {f}: expected the JSON of `lookout provision {kind} --out` ({e})") from None
        if d.get("kind", kind) != kind or len(key) != 32:
            raise ValueError(f"--key {f}: not a {kind}'s 32-byte key")
        out[ident] = key
    return out
