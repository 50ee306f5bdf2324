"""Node libraries in flash instead of RAM: the ROMFS image (`flash --romfs`), the frozen manifest (`--frozen`).

No board here has ROMFS or a frozen image, so these tests check what can be checked on the host: the image is a
valid ROMFS holding exactly the role's compiled files byte for byte (read back with an independent reader of the
format), the mpremote command lines, the clean-up script run under real MicroPython, and that the manifest
freezes every module a role imports.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from fwdeploy import write_config
from mpyrun import run_micropython

from lookout.gateway.cli.main import main as lookout
from lookout.tools import firmware_build as fb

# ---- an independent reader of the ROMFS format (MicroPython docs, "Working with ROMFS") ---------------------

def _uint(buf: bytes, i: int) -> tuple[int, int]:
    v = 0
    while True:
        b = buf[i]
        i += 1
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            return v, i


def _records(buf: bytes, i: int, end: int, prefix: str, files: dict) -> None:
    while i < end:
        kind, i = _uint(buf, i)
        length, i = _uint(buf, i)
        body_end = i + length
        if kind in (4, 5):  # directory, file: name then nested records
            nlen, j = _uint(buf, i)
            name = buf[j:j + nlen].decode()
            j += nlen
            if kind == 4:
                _records(buf, j, body_end, prefix + name + "/", files)
            else:
                dkind, k = _uint(buf, j)
                dlen, k = _uint(buf, k)
                assert dkind == 2, "file %s: data record kind %d, expected verbatim (2)" % (name, dkind)
                files[prefix + name] = buf[k:k + dlen]
        i = body_end


def read_romfs(image: bytes) -> dict[str, bytes]:
    assert image[:3] == b"\xd2\xcd\x31", "not a ROMFS image: %r" % image[:3]
    length, i = _uint(image, 3)
    assert i + length == len(image), "header length %d, image holds %d bytes after it" % (length, len(image) - i)
    files: dict[str, bytes] = {}
    _records(image, i, i + length, "", files)
    return files


# ---- ROMFS -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["speaker", "sensor"])
def test_romfs_image_holds_exactly_the_roles_compiled_files(built, role):
    files = read_romfs(fb.romfs_path(role, built).read_bytes())
    expected = {fb.device_path(src): (built / fb.device_path(src)).read_bytes() for src in fb.role_sources(role)}
    assert set(files) == set(expected)
    for path, data in expected.items():
        assert files[path] == data, path
        fb.check_mpy(built / path)
    assert "lib/lookout_node/hal_host.mpy" not in files  # host-only layer stays off the board


def test_build_reports_the_images(tmp_path, capsys):
    assert lookout(["firmware", "build", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    size = (tmp_path / "speaker.romfs").stat().st_size
    assert "ROMFS image for speaker nodes: speaker.romfs (%d bytes)" % size in out


def _steps(line: str) -> list[str]:
    return " ".join(shlex.split(line)).split(" + ")


def test_flash_romfs_deploys_the_image_and_copies_no_library(built, tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert lookout(["firmware", "flash", "--port", "/dev/ttyUSB0", "--role", "speaker", "--config", str(cfg),
                    "--out", str(built), "--romfs", "--dry-run"]) == 0
    steps = _steps(capsys.readouterr().out.strip())
    assert steps[0].endswith("connect /dev/ttyUSB0 romfs deploy %s" % fb.romfs_path("speaker", built))
    assert steps[1] == "exec " + fb.PREP_NO_LIB_SCRIPT
    cps = [s for s in steps if s.startswith("fs cp ")]
    assert cps == ["fs cp %s :/main.py" % (built / "speaker" / "main.py"), "fs cp %s :/config.json" % cfg]
    assert steps[-1] == "reset"


def test_flash_frozen_copies_only_main_and_config(built, tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert lookout(["firmware", "flash", "--port", "COM5", "--role", "speaker", "--config", str(cfg),
                    "--out", str(built), "--frozen", "--dry-run"]) == 0
    steps = _steps(capsys.readouterr().out.strip())
    assert "romfs" not in " ".join(steps)
    assert steps[0].endswith("connect COM5 exec " + fb.PREP_NO_LIB_SCRIPT)
    assert [s.split()[-1] for s in steps if s.startswith("fs cp ")] == [":/main.py", ":/config.json"]


def test_romfs_and_frozen_are_exclusive(built, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lookout(["firmware", "flash", "--port", "COM5", "--role", "speaker", "--config", str(write_config(tmp_path)),
                 "--out", str(built), "--romfs", "--frozen", "--dry-run"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_unknown_code_place_is_refused():
    with pytest.raises(ValueError, match="code 'flash': expected one of files, romfs, frozen"):
        fb.flash_commands("COM5", "speaker", Path("config.json"), code="flash")


def test_clean_up_script_removes_library_copies_under_micropython():
    """The board-side script, run by the real MicroPython runtime on a filesystem with /lib/protocols and
    /lib/lookout_node (the runner installs both there), twice: the second run must find nothing to do."""
    probe = ("import os\n"
             "print('@@BEFORE@@', sorted(d for d in os.listdir('/lib') if d in ('protocols', 'lookout_node')))\n"
             + fb.PREP_NO_LIB_SCRIPT + "\n" + fb.PREP_NO_LIB_SCRIPT + "\n"
             "print('@@AFTER@@', sorted(d for d in os.listdir('/lib') if d in ('protocols', 'lookout_node')))\n")
    out = run_micropython(code=[probe], timeout=60)["output"]
    assert "@@BEFORE@@ ['lookout_node', 'protocols']" in out
    assert "@@AFTER@@ []" in out


# ---- frozen manifest ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["manifest.py", "manifest_unix.py"])  # a board's, and the Unix port's (tests)
def test_manifest_freezes_every_module_a_role_imports(name):
    manifest = fb.ROOT / "firmware" / name
    calls: list[tuple] = []
    env = {name: (lambda *a, _n=name, **kw: calls.append((_n, a, kw)))
           for name in ("include", "require", "package", "module", "freeze")}
    exec(compile(manifest.read_text(), str(manifest), "exec"), env)
    frozen: set[Path] = set()
    for name, args, kw in calls:
        if name == "package":
            pkg_dir = (manifest.parent / kw.get("base_path", ".") / args[0]).resolve()
            assert (pkg_dir / "__init__.py").exists(), pkg_dir
            frozen.update(p.resolve() for p in pkg_dir.rglob("*.py"))
    assert ("require", ("ntptime",), {}) in calls  # the mip dependency of package.json, frozen too
    assert [d[0] for d in fb.MIP_DEPS] == ["ntptime"]
    for role in fb.ROLES:
        missing = [str(p) for p in fb.role_sources(role) if p.resolve() not in frozen]
        assert not missing, "%s imports modules the manifest does not freeze: %s" % (role, missing)


# ---- the image under real MicroPython --------------------------------------------------------------------

BOOT_FROM_ROM = r'''
import sys, vfs, os, json, asyncio
f = open(%(img)r, "rb")
IMG = f.read()
f.close()
vfs.mount(vfs.VfsRom(memoryview(IMG)), "/rom")
sys.path[:0] = ["/rom/lib", %(host)r]
from lookout_node import hal_host
from lookout_node.node import Node
from protocols import messages, signing
from loopback_broker import LoopbackBroker
print("@@FROM@@" + json.dumps(sorted(set(m.__file__.rsplit("/", 1)[0] for m in
      (sys.modules[n] for n in list(sys.modules) if n.split(".")[0] in ("protocols", "lookout_node"))))))
root = %(root)r
KEY = bytes(range(32))
cfg = {"id": "spk-01", "site": "dongshan", "role": "speaker", "key": KEY.hex(),
       "broker": {"host": "loopback", "port": 1883}, "quiet_hours": [],
       "position": {"lat": 300000000, "lon": 1200000000}}
for d in (root, root + "/clips"):
    try:
        os.mkdir(d)
    except OSError:
        pass
with open(root + "/config.json", "w") as f:
    f.write(json.dumps(cfg))
with open(root + "/clips/nofish", "wb") as f:
    f.write(bytes(4000))

async def main():
    h = hal_host.HostHal(root, speed=8)
    broker = LoopbackBroker()
    h.open_connection = broker.open_connection
    node = Node(h)
    task = asyncio.create_task(node.run())
    for _ in range(300):
        if node.client is not None and node.client.is_connected():
            break
        await asyncio.sleep_ms(10)
    now = h.time_ms()
    cmd = messages.command("r1", "spk-01", "play", {"clip": "nofish"}, now, now + 60000, 1, 1)
    signing.sign(KEY, "cmd", cmd)
    broker.inject("lookout/v1/dongshan/spk-01/cmd", messages.encode("cmd", cmd))
    statuses = []
    for _ in range(300):
        statuses = [[r["status"], r.get("data", {}).get("phase")] for r in
                    (messages.decode("res", p) for t, p in broker.published if t.endswith("/res"))]
        if ["done", None] in statuses:
            break
        await asyncio.sleep_ms(10)
    print("@@RES@@" + json.dumps({"statuses": statuses, "played_ms": [p["ms"] for p in h.audio.plays]}))
    node.request_exit("stop")
    await task

asyncio.run(main())
'''


def test_speaker_boots_and_plays_from_its_romfs_image(built, tmp_path):
    """MicroPython's Unix port mounts the speaker's image (plus the host hardware layer a PC needs instead of
    hal_esp32) as /rom, imports every node module from it in place, comes online and plays a signed command."""
    from mpyunix import run_unix

    host = tmp_path / "host"
    host.mkdir()
    (host / "loopback_broker.py").write_text((Path(__file__).parent / "support" / "loopback_broker.py").read_text())
    extra = (fb.FIRMWARE_LIB / "lookout_node/hal_host.py", fb.PROTOCOLS / "mqttserver.py")
    img = tmp_path / "speaker-host.romfs"
    img.write_bytes(fb.romfs_image("speaker", built, extra=extra))
    proc = run_unix(BOOT_FROM_ROM % {"img": str(img), "host": str(host), "root": str(tmp_path / "node")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    dirs = json.loads(next(ln for ln in lines if ln.startswith("@@FROM@@"))[8:])
    assert dirs == ["/rom/lib/lookout_node", "/rom/lib/protocols"]  # nothing came from the filesystem
    res = json.loads(next(ln for ln in lines if ln.startswith("@@RES@@"))[7:])
    assert res["statuses"] == [["accepted", None], ["accepted", "playing"], ["done", None]]
    assert res["played_ms"] == [250]  # 4000 bytes of 8 kHz 16-bit mono
