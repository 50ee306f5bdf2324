"""docs/RELIABILITY.md names, for every guarantee, the test that checks it: each one named there must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_reliability_md_exists():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    refs = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(refs) >= 40, refs
    missing = []
    for path, name in refs:
        f = ROOT / path
        if not f.exists():
            missing.append(path)
        elif name and not re.search(rf"^(async )?def {name}\(", f.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing
