"""`lookout firmware build/flash` and the mip package.json files (gateway/firmware_build.py, gateway/cli_firmware.py).

No board is needed: build runs the real mpy-cross; flash is checked with --dry-run and the config refusal path; the
package.json files are installed with mpremote's own mip code into a fake board filesystem, from the local
path and over HTTP.
"""

from __future__ import annotations

import functools
import http.server
import json
import shlex
import threading
from pathlib import Path

import pytest
from fwdeploy import node_config, write_config

from lookout.gateway.cli.main import main as lookout
from lookout.tools import firmware_build as fb


def test_build_compiles_every_source_with_mpy_magic(built, capsys):
    sources = fb.library_sources()
    assert sources
    for src in sources:
        mpy = built / fb.device_path(src)
        assert mpy.exists(), mpy
        fb.check_mpy(mpy)  # b"M" + format 6
    mpys = sorted(p.relative_to(built).as_posix() for p in built.rglob("*.mpy"))
    assert mpys == sorted(fb.device_path(s) for s in sources)  # nothing else, nothing missing
    assert (built / "speaker" / "main.py").read_bytes() == (fb.ROOT / "firmware/speaker/main.py").read_bytes()
    assert "lib/protocols/coap.mpy" in mpys and "lib/lookout_node/coap_link.mpy" in mpys
    assert fb.is_built(built)


def test_build_table_total_matches(tmp_path, capsys):
    assert lookout(["firmware", "build", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.startswith(("lib/", "speaker/", "sensor/"))]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".romfs"]  # images: own test file
    assert len(rows) == len(files)
    for dest, _src, size in rows:
        assert (tmp_path / dest).stat().st_size == int(size)
    total = next(line for line in out if line.startswith("total")).split()
    assert int(total[2]) == sum(p.stat().st_size for p in files)


def test_build_failure_names_the_file(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "src" / "protocols" / "broken.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f(:\n")
    monkeypatch.setattr(fb, "ROOT", tmp_path / "src")
    monkeypatch.setattr(fb, "PROTOCOLS", tmp_path / "src" / "protocols")
    monkeypatch.setattr(fb, "FIRMWARE_LIB", tmp_path / "src" / "firmware" / "lib")
    assert lookout(["firmware", "build", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "protocols/broken.py" in err and "does not compile" in err


def test_flash_dry_run_prints_the_mpremote_command(built, tmp_path, capsys):
    cfg = write_config(tmp_path)
    rc = lookout(["firmware", "flash", "--port", "/dev/ttyUSB0", "--role", "speaker", "--config", str(cfg),
                  "--out", str(built), "--dry-run"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1
    argv = shlex.split(lines[0])
    assert argv[1:5] == ["-m", "mpremote", "connect", "/dev/ttyUSB0"]
    steps = " ".join(argv).split(" + ")
    assert steps[0].split()[-1] != "+"
    cps = [s.split()[2:] for s in steps if s.startswith("fs cp ")]
    dests = {c[-1]: c[:-1] for c in cps}
    assert dests[":/lib/protocols/"] == [str(built / fb.device_path(p)) for p in fb.role_sources("speaker")
                                         if fb.device_path(p).startswith("lib/protocols/")]
    assert str(built / "lib/lookout_node/speaker.mpy") in dests[":/lib/lookout_node/"]
    assert str(built / "lib/lookout_node/node.mpy") in dests[":/lib/lookout_node/"]
    assert not any("hal_host" in f for f in dests[":/lib/lookout_node/"])  # host-only layer stays off the board
    assert dests[":/main.py"] == [str(built / "speaker" / "main.py")]
    assert dests[":/config.json"] == [str(cfg)]
    assert steps[-1] == "reset"
    for files in dests.values():
        for f in files:
            assert Path(f).exists(), f


def test_flash_camera_uses_sensor_app_and_copies_named_ca(built, tmp_path, capsys):
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    b = dict(node_config()["broker"], tls=True, ca="ca.crt", port=8883)
    cfg = write_config(tmp_path, id="cam-01", role="camera", broker=b)
    assert lookout(["firmware", "flash", "--port", "COM5", "--role", "camera", "--config", str(cfg),
                    "--out", str(built), "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert "%s :/main.py" % shlex.quote(str(built / "sensor" / "main.py")) in line
    assert "%s :/ca.crt" % shlex.quote(str(tmp_path / "ca.crt")) in line


@pytest.mark.parametrize("patch, field", [
    ({"hb_s": 2}, "hb_s"),
    ({"key": "abc"}, "key"),
    ({"broker": {"port": 1883}}, "broker.host"),
    ({"transport": "coap"}, "coap"),
    ({"role": "sensor"}, "role"),  # a sensor config on a board flashed as a speaker
    ({"position": {"lat": 999999999, "lon": 0}}, "position.lat"),
])
def test_bad_config_is_refused_naming_the_key(tmp_path, capsys, monkeypatch, patch, field):
    ran = []
    monkeypatch.setattr(fb.subprocess, "run", lambda *a, **k: ran.append(a))
    cfg = write_config(tmp_path, **patch)
    rc = lookout(["firmware", "flash", "--port", "/dev/ttyUSB0", "--role", "speaker", "--config", str(cfg),
                  "--out", str(tmp_path / "never-built")])
    err = capsys.readouterr().err
    assert rc == 2
    assert (": %s:" % field) in err and "nothing was written" in err
    assert ran == [] and not (tmp_path / "never-built").exists()  # refused before building or touching a board


def test_missing_ca_file_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path, broker=dict(node_config()["broker"], tls=True, ca="ca.crt"))
    assert lookout(["firmware", "flash", "--port", "p", "--role", "speaker", "--config", str(cfg),
                    "--dry-run"]) == 2
    assert "broker.ca" in capsys.readouterr().err


def test_unreadable_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{nope")
    assert lookout(["firmware", "flash", "--port", "p", "--role", "sensor", "--config",
                    str(tmp_path / "config.json"), "--dry-run"]) == 2
    assert "not JSON" in capsys.readouterr().err


# ---- package.json --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("app", ["speaker", "sensor"])
def test_package_json_valid_and_in_sync(app):
    path = fb.ROOT / "firmware" / app / "package.json"
    pkg = json.loads(path.read_text())
    assert set(pkg) >= {"urls", "version", "deps"}
    for dest, src in pkg["urls"]:
        assert (path.parent / src).resolve().is_file(), src  # every listed file exists
        assert dest.split("/")[0] in ("protocols", "lookout_node") and dest.endswith(".py")
    for name, version in pkg["deps"]:
        assert isinstance(name, str) and isinstance(version, str)
    # exactly the import closure of the app: run `lookout firmware package` after adding a module
    assert pkg == fb.package_json(app)


def test_modules_loaded_by_name_count_as_imports(tmp_path):
    """`load("x")` (lookout_node/commands.py) imports lookout_node.x on first use: the board must get it too."""
    src = tmp_path / "m.py"
    src.write_text("from lookout_node.commands import load\n"
                   "def f(p):\n    return load('speaker_fetch').register(p)\n"
                   "def g(name):\n    return load(name)\n")  # a computed name cannot be followed
    got = {m for m in fb._imports(src) if fb.module_source(m) is not None}  # drop "commands.load" (a name)
    assert got == {"lookout_node.commands", "lookout_node.speaker_fetch"}
    speaker = {fb.device_path(p) for p in fb.role_sources("speaker")}
    assert {"lib/lookout_node/speaker_fetch.mpy", "lib/lookout_node/speaker_sched.mpy",
            "lib/lookout_node/node_admin.mpy"} <= speaker


class FakeBoard:
    """The transport surface mpremote's mip uses, over a dict."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.dirs = {"/lib"}

    def fs_exists(self, p):
        return p in self.dirs or p in self.files

    def fs_mkdir(self, p):
        self.dirs.add(p)

    def fs_writefile(self, p, data, progress_callback=None):
        self.files[p] = bytes(data)


def _mip_install(monkeypatch, url):
    from mpremote import mip

    deps = []
    monkeypatch.setattr(mip, "_install_package", lambda _t, name, *_a: deps.append(name))  # no internet
    board = FakeBoard()
    mip._install_json(board, url, mip._PACKAGE_INDEX, "/lib", None, True)
    return board, deps


def _expected(app):
    return {"/lib/" + fb.device_path(s, compiled=False)[4:]: s.read_bytes() for s in fb.role_sources(app)}


@pytest.mark.parametrize("app", ["speaker", "sensor"])
def test_mpremote_mip_installs_local_package_json(app, monkeypatch):
    board, deps = _mip_install(monkeypatch, str(fb.ROOT / "firmware" / app / "package.json"))
    assert board.files == _expected(app)
    assert deps == ["ntptime"]


def test_mpremote_mip_installs_package_json_over_http(monkeypatch):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(fb.ROOT))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = "http://127.0.0.1:%d/firmware/sensor/package.json" % srv.server_address[1]
        board, _ = _mip_install(monkeypatch, url)
    finally:
        srv.shutdown()
        srv.server_close()
    assert board.files == _expected("sensor")
