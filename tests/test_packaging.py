"""The distribution is honest: a wheel installs only ``lookout`` at the top of site-packages, carries the firmware
sources the builder needs, and works from outside the checkout.

The wheel is built from this tree (no build isolation: setuptools comes with ``lookout[test]``) and installed with
``--no-deps`` into a fresh venv; the runtime dependencies come from the test venv through a path entry, so the
test needs no network and checks only what *our* wheel contributes.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240, env=env, check=False, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tracked files, so the build neither sees stray files nor leaves build/ behind."""
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        cwd=out)
    (w,) = out.glob("lookout-*.whl")
    return w


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheel) -> Path:
    """A new venv with only our wheel installed; dependencies visible through a .pth line."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent)
    py = venv / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=venv.parent)
    purelib = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    return venv


def test_wheel_has_only_lookout_at_the_top(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"lookout", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    # the firmware builder's inputs are in it: every device-side source and the mip manifests
    for rel in ("lookout/protocols/messages.py", "lookout/firmware/lib/lookout_node/node.py",
                "lookout/firmware/speaker/main.py", "lookout/firmware/speaker/package.json",
                "lookout/firmware/manifest.py", "lookout/gateway/service/app.py", "lookout/tools/firmware_build.py",
                "lookout/gateway/web/templates/map.html", "lookout/gateway/web/static/sitemap.js",
                "lookout/gateway/web/static/console.css", "lookout/gateway/web/i18n/zh-CN.json",
                "lookout/gateway/demo/scenarios/night_ferry.toml"):
        assert rel in names, rel
    assert not [n for n in names if "/tests/" in n or n.startswith("build/") or "__pycache__" in n]


def test_installed_outside_the_checkout(fresh, tmp_path):
    bin_ = fresh / "bin"
    shown = run([str(bin_ / "python"), "-m", "pip", "show", "-f", "lookout"], cwd=tmp_path).stdout
    files = shown.split("Files:", 1)[1].split()
    assert files, shown
    tops = {f.split("/")[0] for f in files if not f.startswith("..")}  # ../../../bin/lookout is the script
    assert tops == {"lookout", "lookout-0.1.0.dist-info"}, tops

    assert "firmware" in run([str(bin_ / "lookout"), "--help"], cwd=tmp_path).stdout
    imported = run([str(bin_ / "python"), "-c",
                    "import lookout.gateway.service.app, lookout.protocols.messages, lookout.simulators.node, "
                    "lookout.tools.firmware_build as fb; print(fb.PROTOCOLS)"], cwd=tmp_path).stdout
    assert str(fresh) in imported and str(ROOT) not in imported  # the installed copy, not the checkout
    shipped = run([str(bin_ / "python"), "-c", "from lookout.gateway.demo import scenario as s; "
                   "print(s.load().name, s.shipped())"], cwd=tmp_path).stdout
    assert shipped.startswith("night-ferry ") and "north_bank_busy.toml" in shipped  # `lookout demo`'s scenarios

    out = tmp_path / "fw"
    run([str(bin_ / "lookout"), "firmware", "build", "--out", str(out)], cwd=tmp_path)
    assert (out / "lib" / "protocols" / "messages.mpy").is_file()
    assert (out / "lib" / "lookout_node" / "node.mpy").is_file()
    assert (out / "speaker.romfs").is_file() and (out / "speaker" / "main.py").is_file()
    # the default output goes under the directory the command runs in, never into site-packages
    run([str(bin_ / "lookout"), "firmware", "build"], cwd=tmp_path)
    assert (tmp_path / "build" / "firmware" / "lib" / "protocols" / "messages.mpy").is_file()
    assert not list(fresh.rglob("*.mpy"))
