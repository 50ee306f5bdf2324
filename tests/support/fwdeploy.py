"""A provisioned node's config.json as ``lookout firmware flash`` takes it (the deploy and code-in-flash tests)."""

from __future__ import annotations

import json
from pathlib import Path

KEY = "ab" * 32


def node_config(**over) -> dict:
    """A valid speaker config; ``over`` replaces top-level keys."""
    cfg = {"id": "spk-01", "site": "dongshan", "role": "speaker", "key": KEY,
           "broker": {"host": "10.0.0.2", "port": 1883, "user": "spk-01", "password": "pw", "tls": False,
                      "keepalive": 60},
           "transport": "mqtt", "hb_s": 30, "loc_s": 5, "position": {"lat": 302734000, "lon": 1202175000}}
    cfg.update(over)
    return cfg


def write_config(directory: Path, **over) -> Path:
    p = directory / "config.json"
    p.write_text(json.dumps(node_config(**over)))
    return p
