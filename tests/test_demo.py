"""`lookout demo` end to end: embedded broker, gateway, real firmware nodes, scripted incident, summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from lookout.gateway.demo.script import SPOTS, haversine_m, rank_speakers

ROOT = Path(__file__).resolve().parents[1]


def test_haversine_and_ranking():
    # 0.001 deg of latitude is ~111.2 m everywhere
    assert abs(haversine_m(299000000, 1196000000, 299010000, 1196000000) - 111.2) < 0.5
    spots = {s.id: s for s in SPOTS}
    ev = spots["sen-ferry"]
    devs = [
        {"id": s.id, "state": "online", "loc": {"lat": s.lat, "lon": s.lon}}
        for s in SPOTS
        if s.role == "speaker"
    ]
    devs.append(
        {"id": "spk-x", "state": "offline", "loc": {"lat": ev.lat, "lon": ev.lon}}
    )  # offline: skipped
    ranked = rank_speakers(ev.lat, ev.lon, devs, spots)
    assert [c.id for c in ranked][:2] == ["spk-ferry", "spk-west"]
    assert "spk-x" not in [c.id for c in ranked]
    west = next(c for c in ranked if c.id == "spk-west")
    assert west.in_range and west.walk_s > 10 * 60  # close across the water, far on foot
    assert not next(c for c in ranked if c.id == "spk-dam").in_range


def test_demo_runs_the_script_and_exits_0(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "lookout",
            "demo",
            "--speed",
            "30",
            "--duration",
            "80",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    assert re.search(r"web console  http://127\.0\.0\.1:\d+/  \(sign in as op-demo", out), out[:2000]
    summary = out[out.index("══ Summary") :]
    # the detection event, signed by the sensor
    assert re.search(r"events\s+1\n\s+t\+\s*[\d.]+s\s+sen-ferry presence .*\(MAC ok\)", summary), summary
    # the broadcast went to the nearest speaker and finished playing
    assert "nearest loudspeaker spk-ferry" in summary
    assert re.search(
        r"broadcast nofish -> spk-ferry: done \(accepted after \d+ ms, playing after \d+ ms, "
        r"final after \d+ ms, played \d+ ms of audio\)",
        summary,
    ), summary
    # the silent node: stale, then offline, by heartbeat timeout (no last will)
    assert re.search(r"cam-inlet online -> stale \(timeout\)", summary), summary
    assert re.search(r"cam-inlet stale -> offline \(timeout\)", summary), summary
    # journal chain verified
    assert re.search(r"journal\s+\d+ entries .*chain verified OK", summary), summary
    assert "result       OK" in summary
    # the journal is on disk, as `lookout journal verify` would read it
    from lookout.gateway.core.journal import Journal

    j = Journal(tmp_path / "data" / "journal.db")
    try:
        assert j.verify().ok
        kinds = {e.kind for e in j.entries()}
        assert {"alert", "command", "result", "state", "operator"} <= kinds
    finally:
        j.close()
