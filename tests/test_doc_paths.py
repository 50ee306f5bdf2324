"""The documents name files so a newcomer can find a behaviour; every path they name must exist (a file moved by
a refactor is a doc that lies). Paths of generated output (bench results) and module references written without
their ``.py`` are accepted as long as the module exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("gateway", "protocols", "firmware", "simulators", "tests", "bench", "scripts", "deploy", "docs", "tools", ".ci")
PATH = re.compile(r"(?<![\w/.])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./-]*\w)")
GENERATED = ("bench/results",)


def _exists(p: str) -> bool:
    if p.startswith(GENERATED) or (ROOT / p).exists():
        return True
    parts = p.split(".")[0] if p.count("/") else p  # protocols/mqttpacket.PacketReader -> protocols/mqttpacket
    return (ROOT / (parts + ".py")).exists() or any(ROOT.glob(parts + "*"))  # tests/test_faults_ -> a prefix


def missing_paths(files: list[Path]) -> list[str]:
    out = []
    for f in files:
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            for m in PATH.finditer(line):
                if not _exists(m.group(1)):
                    out.append(f"{f.name}:{i}: {m.group(1)}")
    return out


def test_every_path_the_documents_name_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(docs) >= 8
    assert missing_paths(docs) == []


def test_a_moved_file_is_caught(tmp_path):
    doc = tmp_path / "probe.md"
    doc.write_text("the registry: `gateway/registry.py`, now `gateway/core/registry.py` (tests/test_faults_)\n")
    assert missing_paths([doc]) == ["probe.md:1: gateway/registry.py"]
