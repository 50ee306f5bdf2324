"""`lookout demo` end to end, as a user runs it: embedded broker, the gateway with the default scenario's rules,
firmware nodes, recorders, drones; the story; the live view as plain text (stdout is a pipe); the summary."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_plays_the_whole_scenario_and_exits_0(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "lookout", "demo", "--speed", "30", "--duration", "80", "--data-dir",
                        str(tmp_path / "data"), "--web", "127.0.0.1:0"],
                       cwd=ROOT, check=False, env=env, capture_output=True, text=True, timeout=100)
    out = p.stdout
    assert p.returncode == 0, out[-4000:] + p.stderr[-3000:]
    assert re.search(r"web console  http://127\.0\.0\.1:\d+/  \(sign in as op-demo", out), out[:2000]
    # the live view in a pipe: plain text blocks of the three tables, no terminal escapes
    assert "\x1b[" not in out and "commands (newest 8)" in out
    assert len(re.findall(r"^incidents *$", out, re.MULTILINE)) >= 2 and len(re.findall(r"^devices *$", out, re.MULTILINE)) >= 2
    # the story, told by the world (WORLD) and decided by the gateway (GATEWAY: its duty journal)
    story = out[:out.index("══ Summary")]
    order = ["WORLD   someone walks onto the bank", "GATEWAY incident inc-1 opened", "rule night-ferry broadcasts",
             "GATEWAY incident inc-1 escalated by rule night-ferry", "dispatch officer p-li (recorder bwc-01)",
             "-> on_scene", "stops recording", "verified: SHA-256 matches", "on_scene -> closed by gateway"]
    at = [story.find(s) for s in order]
    assert all(i >= 0 for i in at) and at == sorted(at), list(zip(order, at))
    for s in ("dispatch drone uav-1", "PHONE   cadre-wang's phone", "WORLD   李警官 Officer Li (p-li) reads the order"):
        assert s in story, s
    assert re.search(r"STATE   cam-inlet online -> stale \(timeout\).*STATE   cam-inlet stale -> offline \(timeout\)",
                     story, re.DOTALL)
    summary = out[out.index("══ Summary"):]
    assert "inc-1: general presence at ferry" in summary and "open -> warned -> dispatched -> on_scene -> closed" in summary
    # the times: detection -> warning -> dispatch -> on scene -> closed
    assert re.search(r"warning\s+\+\s*\d+ ms wall\s+spk-ferry playing the warning; 1 warning\(s\)", summary), summary
    for step in ("dispatch", "on scene", "closed"):
        assert re.search(rf"  {step}\s+\+\s*\d+ s", summary), (step, summary)
    assert re.search(r"ranking      officers by ETA: p-li \(bwc-01\) \d+ s, p-zhang", summary), summary
    assert "skipped uav-2: battery" in summary
    sha = re.search(r"  sha256     ([0-9a-f]{64})\n", summary).group(1)
    assert "custody    recorded -> uploaded -> verified" in summary
    assert re.search(r"silent node  cam-inlet: online -> stale at t\+[\d.]+ s wall \(timeout\), stale -> offline", summary)
    assert re.search(r"journal\s+\d+ entries .*chain verified OK", summary), summary
    assert "✗" not in summary and re.search(r"result       OK: every expected outcome held \((\d+)/\1\)", summary)
    # what was filed is what the recorder hashed: the clip is on disk under that hash
    [clip] = [f for f in (tmp_path / "data").rglob(f"{sha}*") if f.is_file()]
    assert hashlib.sha256(clip.read_bytes()).hexdigest() == sha
    # the journal is on disk, as `lookout journal verify` would read it
    from lookout.gateway.core.journal import Journal

    j = Journal(tmp_path / "data" / "journal.db")
    try:
        assert j.verify().ok
        kinds = {e.kind for e in j.entries()}
        assert {"alert", "command", "result", "state", "operator", "incident", "custody"} <= kinds
    finally:
        j.close()


def test_demo_refuses_a_bad_scenario_with_the_key_named(tmp_path):
    (tmp_path / "s.toml").write_text('[scenario]\nname = "x"\nsite = "dongshan"\nspeed = 3\n')
    p = subprocess.run([sys.executable, "-m", "lookout", "demo", "--scenario", str(tmp_path / "s.toml")], cwd=ROOT, check=False,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "[scenario].speed: unknown key" in p.stderr and "[[node]]" in p.stderr, p.stderr
