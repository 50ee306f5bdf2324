"""Recorder clips in the evidence store: resumable uploads across a restart, refusals, custody trail, retention
and holds, and ``lookout clips list --recorded / show / export / verify / hold / release``."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_recorder
from lookout.gateway.cli.main import main as cli_main
from lookout.gateway.clips.custody import DAY_MS
from lookout.gateway.clips.store import ClipStore
from lookout.gateway.core.journal import Journal
from lookout.protocols import canonical, cliptransfer, signing
from lookout.simulators.recorder import clip_bytes

SITE = "dongshan"
T0 = 1_780_000_000_000


class Clock:
    def __init__(self):
        self.t = T0

    def __call__(self):
        return self.t


@pytest.fixture
def env(tmp_path):
    ks = KeyStore(tmp_path / "data" / "keystore.db")
    key = provision_recorder(ks, "bwc-0001", SITE, officer="p-0421").hmac_key
    clock = Clock()
    j = Journal(tmp_path / "data" / "journal.db")
    store = ClipStore(tmp_path / "data" / "clips", j, ks, clock=clock)
    yield {"ks": ks, "key": key, "clock": clock, "j": j, "store": store, "dir": tmp_path / "data"}
    store.close()
    j.close()
    ks.close()


def manifest(key, data, tid=5, clip="20260601-0830.mp4", mark=False, sha=None, sign=True):
    s = cliptransfer.ClipSender(data, 4096, clip, tid, "video", "video/mp4", T0 - 60_000)
    d = s.manifest.to_dict()
    if sha:
        d["sha256"] = sha
    d.update({"x_start": T0 - 60_000, "x_end": T0, "x_track": [301234560, 1201234560, 301240000, 1201240000, 12]})
    if mark:
        d["x_mark"] = True
    if sign:
        signing.sign(key, "up", d)
    return canonical.dumpb(d)


def feed(store, data, start, end, tid=5, step=700):
    st = None
    for off in range(start, end, step):
        st = store.recorder_piece("bwc-0001", tid, off, data[off:min(off + step, end)])
    return st


def test_partial_upload_survives_a_gateway_restart_and_resumes_at_the_offset(env, tmp_path):
    data = clip_bytes(50_000, "a")
    sha = hashlib.sha256(data).hexdigest()
    st = env["store"].recorder_offer(SITE, "bwc-0001", manifest(env["key"], data))
    assert st["state"] == "receiving" and st["off"] == 0
    assert feed(env["store"], data, 0, 21_000) is None
    env["store"].close()  # the gateway stops (or is killed: the file and the partials row are what survive)
    store = ClipStore(env["dir"] / "clips", env["j"], env["ks"], clock=env["clock"])
    env["store"] = store
    st = store.recorder_offer(SITE, "bwc-0001", manifest(env["key"], data))  # the recorder offers again
    assert st["state"] == "receiving" and st["off"] == 21_000  # ... and continues from what was written
    assert store.custody.get(sha)["state"] == "recorded"  # not visible yet
    st = feed(store, data, 21_000, len(data))
    assert st["state"] == "complete"
    assert store.custody.path(sha).read_bytes() == data
    [up] = [t for t in store.custody.trail(sha) if t["action"] == "uploaded"]
    assert up["restored"] is True and up["duplicate_bytes"] == 0 and up["bytes_in"] == len(data) - 21_000
    assert [t["action"] for t in store.custody.trail(sha)] == ["recorded", "uploaded", "verified"]
    assert list((env["dir"] / "clips" / "evidence" / ".part").iterdir()) == []
    # offered once more (the recorder missed the complete status): answered complete, nothing stored twice
    st = store.recorder_offer(SITE, "bwc-0001", manifest(env["key"], data, tid=6))
    assert st["state"] == "complete" and st["off"] == len(data)
    assert [t["action"] for t in store.custody.trail(sha)][-1] == "duplicate"


def test_unsigned_forged_or_lying_manifests_never_file_anything(env):
    store = env["store"]
    data = clip_bytes(10_000, "b")
    assert store.recorder_offer(SITE, "bwc-0001", manifest(env["key"], data, sign=False))["err"] == "unsigned"
    assert store.recorder_offer(SITE, "bwc-0001", manifest(bytes(32), data))["err"] == "bad_mac"
    assert store.recorder_offer(SITE, "bwc-0002", manifest(env["key"], data))["err"] == "unknown_device"
    assert store.recorder_offer(SITE, "bwc-0001", b'{"v":1')["err"] == "bad_manifest"
    # a signed manifest whose hash the bytes do not have: every byte arrives, nothing is filed
    st = store.recorder_offer(SITE, "bwc-0001", manifest(env["key"], data, sha="ab" * 32))
    assert st["state"] == "receiving"
    st = feed(store, data, 0, len(data))
    assert st["state"] == "failed" and st["err"] == "hash_mismatch"
    assert store.custody.find() == [] and store.get("ab" * 32) is None
    assert [p for p in store.dir.iterdir() if p.name != ".part"] == []
    assert store._db.execute("SELECT COUNT(*) FROM partials").fetchone()[0] == 0
    sec = [e.summary for e in env["j"].entries(kind="security")]
    assert any("hash_mismatch" in s for s in sec) and any("bad_mac" in s for s in sec)
    # a piece for a transfer the gateway does not have: it says so, the recorder offers again
    assert store.recorder_piece("bwc-0001", 77, 0, b"x")["err"] == "unknown_transfer"


def _stored(env, data, tid=5, mark=False):
    st = env["store"].recorder_offer(SITE, "bwc-0001", manifest(env["key"], data, tid=tid, mark=mark,
                                                                clip=f"c{tid}.mp4"), officer="p-0421")
    assert st["state"] == "receiving"
    assert feed(env["store"], data, 0, len(data), tid=tid)["state"] == "complete"
    return hashlib.sha256(data).hexdigest()


def test_retention_removes_old_clips_unless_held_and_release_is_journaled(env):
    store, clock = env["store"], env["clock"]
    old = _stored(env, clip_bytes(3000, "old"), tid=1)
    kept = _stored(env, clip_bytes(3000, "kept"), tid=2, mark=True)  # marked on the recorder: held
    c = store.custody
    assert c.get(kept)["hold"] and not c.get(old)["hold"]
    clock.t = T0 + 182 * DAY_MS
    assert c.sweep() == []  # not yet 6 months
    clock.t = T0 + 184 * DAY_MS
    assert c.sweep() == [old]
    assert c.get(old)["state"] == "expired" and not (store.dir / f"{old}.mp4").exists()
    assert c.get(kept)["state"] == "stored" and (store.dir / f"{kept}.mp4").exists()
    assert c.release(kept, "op-1", "case 2026-017 closed") is True
    assert c.sweep() == [kept]
    acts = [t["action"] for t in c.trail(kept)]
    assert acts == ["recorded", "held", "uploaded", "verified", "released", "expired"]
    assert [t["action"] for t in c.trail(old)][-1] == "expired"
    assert env["j"].verify().ok


def test_cli_list_show_export_verify_hold_release(env, tmp_path, capsys, monkeypatch):
    data = clip_bytes(2 * 1024 * 1024 + 17, "cli")
    sha = _stored(env, data)
    env["store"].close()
    env["j"].close()  # the gateway stopped; the tool is the journal's owner now (a guest if it ran)
    monkeypatch.setenv("LOOKOUT_DATA_DIR", str(env["dir"]))
    monkeypatch.setenv("LOOKOUT_OPERATOR", "op-7")
    monkeypatch.delenv("LANG", raising=False)
    assert cli_main(["clips", "list", "--recorded", "--officer", "p-0421"]) == 0
    out = capsys.readouterr().out
    assert sha[:16] in out and "bwc-0001" in out and "1 recorder clip(s)" in out
    assert cli_main(["clips", "list", "--recorded", "--officer", "p-9999"]) == 0
    assert "0 recorder clip(s)" in capsys.readouterr().out
    assert cli_main(["clips", "show", sha[:10], "--lang", "zh"]) == 0
    out = capsys.readouterr().out
    assert "警员" in out and "p-0421" in out and "保管链" in out and "verified" in out
    dest = tmp_path / "out"
    dest.mkdir()
    assert cli_main(["clips", "export", sha[:12], str(dest)]) == 0
    [f] = list(dest.iterdir())
    assert f.read_bytes() == data and oct(f.stat().st_mode & 0o777) == "0o444"
    assert cli_main(["clips", "export", sha[:12], str(f)]) == 1  # never overwrites
    assert cli_main(["clips", "verify", sha]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli_main(["clips", "hold", sha, "--reason", "case 2026-017"]) == 0
    assert cli_main(["clips", "list", "--recorded", "--held", "--json"]) == 0
    assert [r["sha256"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])] == [sha]
    assert cli_main(["clips", "release", sha, "--reason", "closed"]) == 0
    assert cli_main(["clips", "show", "00000000"]) == 2  # unknown clip: usage
    # someone edits the stored original: verify says so and fails
    p = env["dir"] / "clips" / "evidence" / f"{sha}.mp4"
    os.chmod(p, 0o644)
    with open(p, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00")
    assert cli_main(["clips", "verify", sha, "--json"]) == 1
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not rep["ok"] and "hashes to" in rep["problems"][0]
    j = Journal(env["dir"] / "journal.db")
    try:
        steps = [(json.loads(e.detail)["action"], e.operator) for e in j.entries(kind="custody")
                 if json.loads(e.detail).get("sha256") == sha]
        assert steps == [("recorded", None), ("uploaded", None), ("verified", None), ("accessed", "op-7"),
                         ("exported", "op-7"), ("verified", "op-7"), ("held", "op-7"), ("released", "op-7"),
                         ("verified", "op-7")]
        assert j.verify().ok
    finally:
        j.close()
